//! `fcm-agent`: the small static program fcm runs in every guest, the
//! daemon's own channel into it. It speaks the protocol of `fcm-proto`
//! (documented in `docs/agent.md`) over one byte stream and does what the
//! daemon asks: runs programs (pipes or a terminal), reads and writes files
//! and trees, sets the clock, reseeds the entropy pool, freezes the root
//! file system around a checkpoint, shuts the guest down, and takes a new
//! identity after a fork.
//!
//! The tree shows the design:
//!
//! - [`channel`]: where a connection comes from: the virtio-serial port
//!   named `fcm.agent.0` (QEMU), else vsock port 10789 (Firecracker), or a
//!   Unix socket (`--unix`, for development).
//! - `session`: one connection's frames in, the session a `Hello` opens and
//!   the table of its operations; `op`: one operation's credit, inbox, stop
//!   and its one final message; `outbox`: the one writer; `flow`: the
//!   credit windows and bounded inboxes.
//! - `exec` and `process`: programs, each in its own session and process
//!   group; [`users`]: `/etc/passwd` and `/etc/group` read by hand (the
//!   binary is static: no NSS).
//! - `files` and `tree`: paths, and directories as tar made in process.
//! - [`image`]: the image a VM was made from (`/run/fcm/image.json`): the
//!   defaults of every exec; [`init`]: fcm's own init (`fcm-agent init`),
//!   PID 1 of a VM made from an image.
//! - [`system`]: clock, entropy, freeze, shutdown and identity behind the
//!   [`system::System`] trait, so tests run the agent as a host process
//!   without touching the host.
//!
//! Nothing here panics on what a frame says, every wait ends at a deadline
//! or at a stream's end, and every queue is bounded.

use std::sync::{Mutex, MutexGuard, PoisonError};

/// A line on stderr (the guest's console under init).
macro_rules! log {
    ($($t:tt)*) => { eprintln!("fcm-agent: {}", format_args!($($t)*)) };
}

pub mod channel;
mod error;
mod exec;
mod files;
mod flow;
pub mod image;
pub mod init;
mod op;
mod outbox;
mod process;
mod session;
pub mod system;
mod tree;
pub mod users;

pub use error::OpError;
pub use process::end_leftovers;
pub use session::{Agent, Config};

/// The agent's name and build, as `Hello` reports it.
pub const AGENT: &str = concat!("fcm-agent ", env!("CARGO_PKG_VERSION"));

/// A mutex's guard, also after a thread panicked holding it (the state
/// guarded here stays consistent between statements).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
