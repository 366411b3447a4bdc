//! Commands and files in a running guest, over the daemon's own SSH (its
//! key, the guest's pinned host key). Every argument and path is quoted
//! with `host::ssh::shell_quote` before it reaches the guest's shell;
//! nothing of a guest path ever names a host path.
//!
//! Limits: exec output is cut at [`EXEC_OUTPUT_CAP`] per stream, its stdin
//! at [`EXEC_STDIN_MAX`]; a file or archive transfer at [`TRANSFER_MAX`]
//! bytes, each within [`TRANSFER_TIMEOUT`].

use std::fs;
use std::io::{self, Read, Write};
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use thiserror::Error;

use super::manager::{Manager, ManagerError};
use super::store::VmRecord;
use crate::host::{self, HostError, Piped, ssh};
use crate::wire::api::{Encoding, ExecRequest, ExecResponse, Written};

/// Output kept of each of stdout and stderr of an exec.
pub const EXEC_OUTPUT_CAP: usize = 1 << 20;
/// Largest stdin of an exec (after base64 decoding).
pub const EXEC_STDIN_MAX: usize = 8 << 20;
/// Largest command line of an exec (all arguments together).
pub const EXEC_ARGV_MAX: usize = 256 * 1024;
/// Default and largest timeout of an exec.
pub const EXEC_TIMEOUT_DEFAULT: u64 = 60;
pub const EXEC_TIMEOUT_MAX: u64 = 3600;
/// Largest file or archive moved in one request.
pub const TRANSFER_MAX: u64 = 1 << 30;
/// How long one transfer may take.
pub const TRANSFER_TIMEOUT: Duration = Duration::from_secs(1800);
/// Longest guest path accepted.
pub const PATH_MAX: usize = 4096;

#[derive(Debug, Error)]
pub enum GuestError {
    #[error(transparent)]
    Vm(#[from] ManagerError),
    #[error("invalid request: {0}")]
    BadRequest(String),
    #[error("could not reach VM {vm} over SSH: {detail}")]
    Unreachable { vm: String, detail: String },
    #[error("could not run ssh for VM {vm}")]
    Host {
        vm: String,
        #[source]
        source: HostError,
    },
    #[error("VM {vm} has no {what} {path}")]
    NotFound {
        vm: String,
        what: &'static str,
        path: String,
    },
    #[error("{path} in VM {vm} {problem}")]
    Refused {
        vm: String,
        path: String,
        problem: String,
    },
    #[error("{what} is larger than {max} bytes")]
    TooLarge { what: &'static str, max: u64 },
    #[error("{action} {path} in VM {vm} failed: {detail}")]
    Failed {
        vm: String,
        action: &'static str,
        path: String,
        detail: String,
    },
}

impl GuestError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Vm(e) => e.hint(),
            Self::Unreachable { .. } => {
                Some("the guest may still be booting; try again in a few seconds".into())
            }
            Self::NotFound { vm, .. } => Some(format!("look with: fcm exec {vm} -- ls -la DIR")),
            Self::TooLarge { .. } => Some("split it, or copy a directory (sent as tar)".into()),
            _ => None,
        }
    }
}

/// The ssh command line of the daemon into `rec`, ssh's own messages
/// going to `log` (so the remote stderr stays the command's alone).
fn ssh_args(m: &Manager, rec: &VmRecord, log: &std::path::Path, remote: String) -> Vec<String> {
    let mut args = vec![
        "-T".into(),
        "-E".into(),
        log.display().to_string(),
        "-o".into(),
        "ServerAliveInterval=5".into(),
        "-o".into(),
        "ServerAliveCountMax=3".into(),
    ];
    args.extend(ssh::daemon_ssh_args(
        m.daemon_key(),
        &m.known_hosts(&rec.id),
        rec.ip,
    ));
    args.push(remote);
    args
}

/// A per-call file for ssh's own messages, removed on drop.
struct SshLog(PathBuf);

impl SshLog {
    fn new(m: &Manager, rec: &VmRecord) -> Self {
        let dir = m.config().state_dir.join(rec.id.as_str());
        Self(dir.join(format!(".ssh-{:016x}.log", rand::random::<u64>())))
    }

    fn text(&self) -> String {
        fs::read_to_string(&self.0)
            .unwrap_or_default()
            .trim()
            .to_owned()
    }
}

impl Drop for SshLog {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.0);
    }
}

fn check_word(what: &str, s: &str) -> Result<(), GuestError> {
    if s.contains('\0') {
        return Err(GuestError::BadRequest(format!(
            "{what} must not contain a NUL byte"
        )));
    }
    Ok(())
}

/// A guest path from a request: non-empty, bounded, no NUL.
pub fn check_path(path: &str) -> Result<(), GuestError> {
    if path.is_empty() || path.len() > PATH_MAX {
        return Err(GuestError::BadRequest(format!(
            "path must be 1 to {PATH_MAX} bytes"
        )));
    }
    check_word("path", path)
}

/// Runs `req.cmd` in the guest: no terminal, stdin fed, stdout and stderr
/// kept apart (each cut at [`EXEC_OUTPUT_CAP`]), killed at its timeout.
pub fn exec(m: &Manager, vm: &str, req: ExecRequest) -> Result<ExecResponse, GuestError> {
    // An unknown or stopped VM is the first thing to say.
    let rec = m.running(vm)?;
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(GuestError::BadRequest(
            "cmd must name a program: [\"program\", \"arg\", ...]".into(),
        ));
    }
    if req.cmd.iter().map(|a| a.len() + 3).sum::<usize>() > EXEC_ARGV_MAX {
        return Err(GuestError::TooLarge {
            what: "the command line",
            max: EXEC_ARGV_MAX as u64,
        });
    }
    for a in &req.cmd {
        check_word("an argument", a)?;
    }
    let stdin = match (req.stdin, req.stdin_base64) {
        (Some(_), Some(_)) => {
            return Err(GuestError::BadRequest(
                "give stdin or stdin_base64, not both".into(),
            ));
        }
        (Some(s), None) => Some(s.into_bytes()),
        (None, Some(b)) => Some(
            B64.decode(b.trim())
                .map_err(|e| GuestError::BadRequest(format!("stdin_base64 is not base64: {e}")))?,
        ),
        (None, None) => None,
    };
    if stdin.as_ref().is_some_and(|s| s.len() > EXEC_STDIN_MAX) {
        return Err(GuestError::TooLarge {
            what: "stdin",
            max: EXEC_STDIN_MAX as u64,
        });
    }
    let timeout = req.timeout_secs.unwrap_or(EXEC_TIMEOUT_DEFAULT);
    if !(1..=EXEC_TIMEOUT_MAX).contains(&timeout) {
        return Err(GuestError::BadRequest(format!(
            "timeout_secs must be between 1 and {EXEC_TIMEOUT_MAX}"
        )));
    }
    let argv = ssh::remote_command(&req.cmd);
    // The guest's `timeout` kills the command's whole process group; the
    // local deadline (a little later) covers a guest without it.
    let remote = format!(
        "if command -v timeout >/dev/null 2>&1; then timeout -k 5 {timeout} {argv}; else {argv}; fi; exit $?"
    );
    let log = SshLog::new(m, &rec);
    let o = host::capture(
        "ssh",
        ssh_args(m, &rec, &log.0, remote),
        Some(stdin.unwrap_or_default()),
        Duration::from_secs(timeout + 15),
        EXEC_OUTPUT_CAP,
    )
    .map_err(|source| GuestError::Host {
        vm: rec.name.to_string(),
        source,
    })?;
    let ssh_said = log.text();
    if o.code == Some(255) && !ssh_said.is_empty() {
        return Err(GuestError::Unreachable {
            vm: rec.name.to_string(),
            detail: ssh_said,
        });
    }
    let late = o.elapsed >= Duration::from_secs(timeout);
    let (exit_code, timed_out) = match o.code {
        None => (124, true),
        Some(c @ (124 | 137)) if late => (c.min(124), true),
        Some(c) => (c, false),
    };
    let (stdout, stderr, encoding) = match (
        String::from_utf8(o.stdout.clone()),
        String::from_utf8(o.stderr.clone()),
    ) {
        (Ok(a), Ok(b)) => (a, b, Encoding::Utf8),
        _ => (
            B64.encode(&o.stdout),
            B64.encode(&o.stderr),
            Encoding::Base64,
        ),
    };
    Ok(ExecResponse {
        exit_code,
        stdout,
        stderr,
        encoding,
        truncated: o.truncated,
        timed_out,
    })
}

/// What a download sends: its length when known, and the bytes.
pub struct Download {
    pub length: Option<u64>,
    pub body: Box<dyn Read + Send>,
}

/// The bytes of a transfer's ssh, ending it when they end.
struct PipedReader {
    first: io::Cursor<Vec<u8>>,
    rest: io::Take<std::process::ChildStdout>,
    _ssh: Piped,
    _log: SshLog,
}

impl Read for PipedReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        match self.first.read(buf)? {
            0 => self.rest.read(buf),
            n => Ok(n),
        }
    }
}

/// Exit codes of the transfer scripts below, before any data.
const NO_SUCH: i32 = 4;
const NOT_THAT_KIND: i32 = 3;
const TOO_BIG: i32 = 5;

/// A transfer's ssh whose early end (before any data) is an error.
fn early_error(
    rec: &VmRecord,
    action: &'static str,
    (what, refused): (&'static str, &'static str),
    path: &str,
    code: Option<i32>,
    stderr: String,
    ssh_said: String,
) -> GuestError {
    let vm = rec.name.to_string();
    let path = path.to_owned();
    match code {
        Some(255) if !ssh_said.is_empty() => GuestError::Unreachable {
            vm,
            detail: ssh_said,
        },
        Some(NO_SUCH) => GuestError::NotFound { vm, what, path },
        Some(NOT_THAT_KIND) => GuestError::Refused {
            vm,
            path,
            problem: refused.to_owned(),
        },
        Some(TOO_BIG) => GuestError::TooLarge {
            what: "the file",
            max: TRANSFER_MAX,
        },
        None => GuestError::Failed {
            vm,
            action,
            path,
            detail: format!("no end within {} s", TRANSFER_TIMEOUT.as_secs()),
        },
        Some(c) => GuestError::Failed {
            vm,
            action,
            path,
            detail: if stderr.is_empty() {
                format!("exit status {c}")
            } else {
                stderr
            },
        },
    }
}

/// The start of a transfer of `path`: the running VM (woken if asleep),
/// the path checked, `remote` running over the daemon's SSH.
fn transfer(
    m: &Manager,
    vm: &str,
    path: &str,
    remote: String,
) -> Result<(VmRecord, SshLog, Piped), GuestError> {
    let rec = m.running(vm)?;
    check_path(path)?;
    let log = SshLog::new(m, &rec);
    let p = Piped::spawn("ssh", ssh_args(m, &rec, &log.0, remote), TRANSFER_TIMEOUT).map_err(
        |source| GuestError::Host {
            vm: rec.name.to_string(),
            source,
        },
    )?;
    Ok((rec, log, p))
}

/// Starts a download: `remote` prints the length on its first line (for a
/// file) or nothing (an archive), then the bytes; an exit before any
/// byte is an error named by its exit code.
fn download(
    m: &Manager,
    vm: &str,
    path: &str,
    what: (&'static str, &'static str),
    remote: String,
    sized: bool,
) -> Result<Download, GuestError> {
    let (rec, log, mut p) = transfer(m, vm, path, remote)?;
    let Some(mut out) = p.stdout() else {
        return Err(GuestError::BadRequest("no stdout".into()));
    };
    // The first bytes (or the end): for a file the length line, for an
    // archive its first block.
    let mut first = Vec::new();
    let mut length = None;
    let mut buf = [0u8; 8192];
    loop {
        let n = out.read(&mut buf).unwrap_or(0);
        if n == 0 {
            break;
        }
        first.extend_from_slice(&buf[..n]);
        if !sized {
            break;
        }
        if let Some(i) = first.iter().position(|b| *b == b'\n') {
            let line = String::from_utf8_lossy(&first[..i]).trim().to_owned();
            length = line.parse::<u64>().ok();
            first.drain(..=i);
            break;
        }
        if first.len() > 64 {
            break;
        }
    }
    if (sized && length.is_none()) || (!sized && first.is_empty()) {
        let end = p.finish();
        if end.code == Some(0) && !sized {
            // An archive is never empty; this is a guest without tar output.
            return Err(GuestError::Failed {
                vm: rec.name.to_string(),
                action: "reading",
                path: path.to_owned(),
                detail: "tar sent nothing".into(),
            });
        }
        return Err(early_error(
            &rec,
            "reading",
            what,
            path,
            end.code.filter(|c| *c != 0).or(Some(1)),
            end.stderr,
            log.text(),
        ));
    }
    let limit = length
        .unwrap_or(TRANSFER_MAX)
        .saturating_sub(first.len() as u64);
    Ok(Download {
        length,
        body: Box::new(PipedReader {
            first: io::Cursor::new(first),
            rest: out.take(limit),
            _ssh: p,
            _log: log,
        }),
    })
}

/// `GET /vms/{vm}/files?path=P`: a regular file of the guest.
pub fn read_file(m: &Manager, vm: &str, path: &str) -> Result<Download, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; [ -e \"$p\" ] || exit {NO_SUCH}; [ -f \"$p\" ] || exit {NOT_THAT_KIND}; \
         n=$(stat -c %s -- \"$p\") || exit 1; [ \"$n\" -le {TRANSFER_MAX} ] || exit {TOO_BIG}; \
         echo \"$n\" && exec cat -- \"$p\""
    );
    download(m, vm, path, ("file", "is not a regular file"), remote, true)
}

/// `GET /vms/{vm}/archive?path=DIR`: the contents of a guest directory as tar.
pub fn read_archive(m: &Manager, vm: &str, path: &str) -> Result<Download, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; [ -e \"$p\" ] || exit {NO_SUCH}; [ -d \"$p\" ] || exit {NOT_THAT_KIND}; \
         exec tar -c -C \"$p\" ."
    );
    download(
        m,
        vm,
        path,
        ("directory", "is not a directory"),
        remote,
        false,
    )
}

/// Streams `body` into `remote`'s stdin (at most [`TRANSFER_MAX`] bytes).
fn upload(
    m: &Manager,
    vm: &str,
    path: &str,
    what: (&'static str, &'static str),
    remote: String,
    body: &mut dyn Read,
) -> Result<Written, GuestError> {
    let (rec, log, mut p) = transfer(m, vm, path, remote)?;
    let mut input = p.stdin();
    let mut sent: u64 = 0;
    let mut too_big = false;
    let mut buf = vec![0u8; 256 * 1024];
    let mut read_error = None;
    loop {
        let n = match body.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) => {
                read_error = Some(e);
                break;
            }
        };
        sent += n as u64;
        if sent > TRANSFER_MAX {
            too_big = true;
            break;
        }
        // The guest may have refused already (its exit code says why).
        if input
            .as_mut()
            .is_some_and(|i| i.write_all(&buf[..n]).is_err())
        {
            input = None;
            break;
        }
    }
    if too_big || read_error.is_some() {
        // Kill it before it can commit a partial file (the scripts
        // commit only after a complete stdin).
        drop(p);
        if too_big {
            return Err(GuestError::TooLarge {
                what: "the upload",
                max: TRANSFER_MAX,
            });
        }
        return Err(GuestError::BadRequest(format!(
            "could not read the request body: {}",
            read_error.map(|e| e.to_string()).unwrap_or_default()
        )));
    }
    drop(input);
    let end = p.finish();
    if end.code != Some(0) {
        // Read what the client still sends, so that it gets to read the
        // answer instead of a reset connection.
        let left = (TRANSFER_MAX + 1).saturating_sub(sent);
        let _ = io::copy(&mut body.take(left), &mut io::sink());
    }
    if end.code == Some(0) {
        return Ok(Written {
            path: path.to_owned(),
            bytes: sent,
        });
    }
    Err(early_error(
        &rec,
        "writing",
        what,
        path,
        end.code,
        end.stderr,
        log.text(),
    ))
}

/// `PUT /vms/{vm}/files?path=P`: writes a guest file (to a temporary name
/// beside it, renamed over it once complete). Its directory must exist.
pub fn write_file(
    m: &Manager,
    vm: &str,
    path: &str,
    body: &mut dyn Read,
) -> Result<Written, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; case \"$p\" in */*) d=\"${{p%/*}}\";; *) d=.;; esac; [ -d \"${{d:-/}}\" ] || exit {NO_SUCH}; \
         [ -d \"$p\" ] && exit {NOT_THAT_KIND}; t=\"$p.fcm-part.$$\"; \
         if cat > \"$t\"; then mv -f -- \"$t\" \"$p\"; else s=$?; rm -f -- \"$t\"; exit $s; fi"
    );
    upload(
        m,
        vm,
        path,
        ("directory for", "is a directory"),
        remote,
        body,
    )
}

/// `PUT /vms/{vm}/archive?path=DIR`: unpacks a tar into a guest directory
/// (made if missing), files owned by root.
pub fn write_archive(
    m: &Manager,
    vm: &str,
    path: &str,
    body: &mut dyn Read,
) -> Result<Written, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; [ -e \"$p\" ] && [ ! -d \"$p\" ] && exit {NOT_THAT_KIND}; \
         mkdir -p -- \"$p\" && exec tar -x --no-same-owner -C \"$p\""
    );
    upload(
        m,
        vm,
        path,
        ("directory", "is not a directory"),
        remote,
        body,
    )
}
