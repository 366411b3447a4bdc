//! The client: every `fcm` command but `daemon`. It talks to the daemon
//! through the HTTP API (`api`) and the terminal stream (`console`), with
//! the wire types of `crate::wire`, and never reaches into the daemon.
//!
//! | module | commands |
//! |---|---|
//! | `vms` | create, ls, stop, start, resize, destroy |
//! | `ssh` | ssh (the user's own ssh, pinned host key) |
//! | `sessions` | console, attach, sessions, kill |
//! | `checkpoints` | pause, resume, checkpoint [rm], checkpoints, restore |
//! | `exec` | exec (a command without a terminal, through the daemon) |
//! | `files` | cp (files and directories, both ways) |
//! | `logs` | logs (the console log, followed with -f) |
//! | `manual` | completions, man (from the clap definitions) |
//! | `progress` | spinners and transfer progress on a terminal |
//!
//! `trust` pins the daemon's TLS certificate (known_daemons) for both the
//! API client and the console; `unpack` makes a directory copied out of a
//! guest from its tar, keeping only what is safe to make.

pub mod api;
mod checkpoints;
pub mod console;
mod exec;
mod files;
mod hosts;
mod images;
mod logs;
mod manual;
mod progress;
mod sessions;
mod ssh;
mod stats;
mod terminal;
pub mod trust;
mod unpack;
mod vms;

use std::io::Write;

use crate::cli::Cmd;
use crate::error::chain;
use crate::wire::text::printable;
pub use api::{Client, ClientError};
use console::ConsoleError;

/// An error as the user sees it: the message and, where it helps, a hint.
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
    /// The exit status: 1 (the operation failed) or 2 (bad usage).
    pub code: i32,
}

impl Failure {
    pub fn new(message: impl Into<String>, hint: Option<String>) -> Self {
        Self {
            message: message.into(),
            hint,
            code: 1,
        }
    }

    /// A usage error (exit status 2).
    pub fn usage(message: impl Into<String>, hint: Option<String>) -> Self {
        Self {
            code: 2,
            ..Self::new(message, hint)
        }
    }
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self::new(e.to_string(), e.hint())
    }
}

impl From<ConsoleError> for Failure {
    fn from(e: ConsoleError) -> Self {
        match e {
            ConsoleError::Refused { error, hint } => Self::new(error, hint),
            ConsoleError::Client(c) => c.into(),
            other => Self::new(chain(&other), other.hint()),
        }
    }
}

/// Prints one line of data on stdout. A closed pipe (`fcm ls | head`) is
/// not an error worth reporting.
pub(crate) fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    let _ = writeln!(o, "{line}");
}

/// Prints a value as JSON on stdout.
pub(crate) fn out_json<T: serde::Serialize>(v: &T) -> Result<(), Failure> {
    let s = serde_json::to_string(v)
        .map_err(|e| Failure::new(format!("could not encode JSON: {e}"), None))?;
    out(&s);
    Ok(())
}

/// Prints the daemon's warnings on stderr (escaped: they may quote a guest).
pub(crate) fn warnings(list: &[String]) {
    for w in list {
        eprintln!("warning: {}", printable(w));
    }
}

/// Runs one client command; the exit status on success (0, or the
/// command's own for `exec`).
pub fn run(cmd: Cmd) -> Result<i32, Failure> {
    match cmd {
        Cmd::Exec(a) => exec::exec(a),
        other => run_plain(other).map(|()| 0),
    }
}

fn run_plain(cmd: Cmd) -> Result<(), Failure> {
    match cmd {
        Cmd::Daemon(_) => Err(Failure::new(
            "`fcm daemon` is not a client command",
            Some("run it as: sudo fcm daemon".into()),
        )),
        Cmd::Create(a) => vms::create(a),
        Cmd::Ls { json, host } => vms::ls(json, host.as_deref()),
        Cmd::Hosts { json } => hosts::list(json),
        Cmd::Ssh { vm, command } => ssh::ssh(&vm, &command),
        Cmd::Exec(_) => Err(Failure::new("exec is run by client::run", None)),
        Cmd::Cp(a) => files::cp(a),
        Cmd::Logs(a) => logs::logs(a),
        Cmd::Stats(a) => stats::stats(a),
        Cmd::Events { vm, json } => stats::events(vm.as_deref(), json),
        Cmd::Stop { vm, json } => vms::stop(&vm, json),
        Cmd::Start { vm, no_wait, json } => vms::start(&vm, no_wait, json),
        Cmd::Resize(a) => vms::resize(a),
        Cmd::Destroy { vm, json } => vms::destroy(&vm, json),
        Cmd::Console { vm, new } => sessions::console(&vm, new),
        Cmd::Attach { vm, session } => sessions::attach(&vm, &session),
        Cmd::Sessions { vm, json } => sessions::list(&vm, json),
        Cmd::Kill { vm, session, json } => sessions::kill(&vm, &session, json),
        Cmd::Completions { shell } => manual::completions(shell),
        Cmd::Man => manual::man(),
        Cmd::Image { action } => images::image(action),
        Cmd::Pause { vm, json } => checkpoints::pause(&vm, json),
        Cmd::Resume { vm, no_wait, json } => checkpoints::resume(&vm, no_wait, json),
        Cmd::Checkpoint(a) => checkpoints::checkpoint(a),
        Cmd::Fork {
            vm,
            count,
            name,
            json,
        } => vms::fork(&vm, count, name, json),
        Cmd::Checkpoints { vm, json } => checkpoints::list(&vm, json),
        Cmd::Restore {
            vm,
            checkpoint,
            no_wait,
            json,
        } => checkpoints::restore(&vm, &checkpoint, no_wait, json),
    }
}

/// "3m ago" for a Unix time.
pub(crate) fn format_time(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ago = now.saturating_sub(secs);
    match ago {
        0..60 => format!("{ago}s ago"),
        60..3600 => format!("{}m ago", ago / 60),
        3600..86400 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86400),
    }
}

/// `-` for a missing value in a table.
pub(crate) fn or_dash<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".into(), |v| v.to_string())
}
