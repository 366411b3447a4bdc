//! Wire types: what travels between `fcm` (the client) and `fcm daemon`.
//!
//! Both sides use these serde types and nothing else of each other: the
//! client never reads a JSON field by hand, and a change of a field is a
//! change in one place. `api` is the HTTP API (docs/openapi.yaml), `exec` the
//! streamed exec's frames, `stream` the terminal stream on port 7778
//! (docs/console.md), `e2b` what a VM made through the E2B API shows, `tls` what both
//! ends of a TLS connection share (fingerprints, deadlines, a split stream),
//! `pin` a TLS client that trusts one certificate by its fingerprint.

pub mod api;
pub mod cluster;
pub mod e2b;
pub mod exec;
pub mod pin;
pub mod size;
pub mod stats;
pub mod stream;
pub mod text;
pub mod tls;

/// Where the daemon keeps its state (and its token) by default.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/firecracker";
/// The HTTP API's port (on 127.0.0.1 by default).
pub const DEFAULT_API_PORT: u16 = 7777;
/// The terminal stream's port.
pub const DEFAULT_STREAM_PORT: u16 = 7778;
/// The console session `fcm console` opens when none is named.
pub const DEFAULT_SESSION: &str = "main";
