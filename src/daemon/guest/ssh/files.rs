//! Files and directories over SSH: a remote script checks the path, then
//! `cat` or `tar` moves the bytes, streamed both ways (at most
//! [`TRANSFER_MAX`] bytes, each transfer within [`TRANSFER_TIMEOUT`]). An
//! exit before any data names the problem by its exit code. Guest paths
//! reach the guest's shell only quoted, and never name a host path.

use std::io::{self, Read, Write};

use super::super::{Download, GuestError, TRANSFER_MAX, TRANSFER_TIMEOUT, check_path};
use super::{SshGuest, SshLog};
use crate::host::{Piped, ssh};

/// Exit codes of the transfer scripts below, before any data.
const NO_SUCH: i32 = 4;
const NOT_THAT_KIND: i32 = 3;
const TOO_BIG: i32 = 5;

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

/// A transfer's ssh whose early end (before any data) is an error.
fn early_error(
    g: &SshGuest,
    action: &'static str,
    (what, refused): (&'static str, &'static str),
    path: &str,
    code: Option<i32>,
    stderr: String,
    ssh_said: String,
) -> GuestError {
    let vm = g.vm();
    let path = path.to_owned();
    match code {
        Some(255) if !ssh_said.is_empty() => g.unreachable(ssh_said),
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

/// `remote` running over the daemon's SSH, for a transfer of `path`.
fn transfer(g: &SshGuest, path: &str, remote: String) -> Result<(SshLog, Piped), GuestError> {
    check_path(path)?;
    let log = SshLog::new(&g.t);
    let p = Piped::spawn("ssh", g.args(&log, &["-T"], remote), TRANSFER_TIMEOUT)
        .map_err(|e| g.host_error(e))?;
    Ok((log, p))
}

/// Starts a download: `remote` prints the length on its first line (for a
/// file) or nothing (an archive), then the bytes; an exit before any
/// byte is an error named by its exit code.
fn download(
    g: &SshGuest,
    path: &str,
    what: (&'static str, &'static str),
    remote: String,
    sized: bool,
) -> Result<Download, GuestError> {
    let (log, mut p) = transfer(g, path, remote)?;
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
                vm: g.vm(),
                action: "reading",
                path: path.to_owned(),
                detail: "tar sent nothing".into(),
            });
        }
        return Err(early_error(
            g,
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

pub(super) fn read_file(g: &SshGuest, path: &str) -> Result<Download, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; [ -e \"$p\" ] || exit {NO_SUCH}; [ -f \"$p\" ] || exit {NOT_THAT_KIND}; \
         n=$(stat -c %s -- \"$p\") || exit 1; [ \"$n\" -le {TRANSFER_MAX} ] || exit {TOO_BIG}; \
         echo \"$n\" && exec cat -- \"$p\""
    );
    download(g, path, ("file", "is not a regular file"), remote, true)
}

pub(super) fn read_tree(g: &SshGuest, path: &str) -> Result<Download, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; [ -e \"$p\" ] || exit {NO_SUCH}; [ -d \"$p\" ] || exit {NOT_THAT_KIND}; \
         exec tar -c -C \"$p\" ."
    );
    download(g, path, ("directory", "is not a directory"), remote, false)
}

/// Streams `body` into `remote`'s stdin (at most [`TRANSFER_MAX`] bytes).
fn upload(
    g: &SshGuest,
    path: &str,
    what: (&'static str, &'static str),
    remote: String,
    body: &mut dyn Read,
) -> Result<u64, GuestError> {
    let (log, mut p) = transfer(g, path, remote)?;
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
    if end.code == Some(0) {
        return Ok(sent);
    }
    // Read what the client still sends, so that it gets to read the
    // answer instead of a reset connection.
    let left = (TRANSFER_MAX + 1).saturating_sub(sent);
    let _ = io::copy(&mut body.take(left), &mut io::sink());
    Err(early_error(
        g,
        "writing",
        what,
        path,
        end.code,
        end.stderr,
        log.text(),
    ))
}

pub(super) fn write_file(g: &SshGuest, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; case \"$p\" in */*) d=\"${{p%/*}}\";; *) d=.;; esac; [ -d \"${{d:-/}}\" ] || exit {NO_SUCH}; \
         [ -d \"$p\" ] && exit {NOT_THAT_KIND}; t=\"$p.fcm-part.$$\"; \
         if cat > \"$t\"; then mv -f -- \"$t\" \"$p\"; else s=$?; rm -f -- \"$t\"; exit $s; fi"
    );
    upload(g, path, ("directory for", "is a directory"), remote, body)
}

pub(super) fn write_tree(g: &SshGuest, path: &str, body: &mut dyn Read) -> Result<u64, GuestError> {
    let q = ssh::shell_quote(path);
    let remote = format!(
        "p={q}; [ -e \"$p\" ] && [ ! -d \"$p\" ] && exit {NOT_THAT_KIND}; \
         mkdir -p -- \"$p\" && exec tar -x --no-same-owner -C \"$p\""
    );
    upload(g, path, ("directory", "is not a directory"), remote, body)
}
