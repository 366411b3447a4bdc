//! `exec` and `cp`: programs and files in a running guest (woken first if
//! it sleeps), through the guest seam. An exec is either buffered (the
//! JSON answer holds stdout and stderr, each cut at [`EXEC_OUTPUT_CAP`])
//! or streamed (the caller pumps the [`Process`]: `daemon::http::exec`).

use std::io::Read;
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::{Manager, ManagerError};
use crate::daemon::guest::{self, Download, ExecSpec, GuestError, Process, Tty, check_path};
use crate::daemon::store::VmRecord;
use crate::wire::api::{Encoding, ExecRequest, ExecResponse, Written};

/// Output kept of each of stdout and stderr of a buffered exec.
pub const EXEC_OUTPUT_CAP: usize = 1 << 20;
/// Largest stdin of a buffered exec (after base64 decoding).
pub const EXEC_STDIN_MAX: usize = 8 << 20;
/// Largest command line of an exec (all arguments together).
pub const EXEC_ARGV_MAX: usize = 256 * 1024;
/// Default and largest timeout of an exec.
pub const EXEC_TIMEOUT_DEFAULT: u64 = 60;
pub const EXEC_TIMEOUT_MAX: u64 = 3600;
/// Terminal sizes are clamped to this range in both dimensions.
const TTY_SIZE: (u16, u16) = (2, 1000);

fn bad(m: impl Into<String>) -> ManagerError {
    ManagerError::BadRequest(m.into())
}

/// A `$TERM` value that can go to a guest: letters, digits, `-.+`.
pub fn valid_term(t: &str) -> bool {
    !t.is_empty()
        && t.len() <= 32
        && t.bytes()
            .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'.' || c == b'+')
}

/// The program of an exec request, checked. `streamed`: its stdin comes
/// as a stream, a terminal may be asked for, and `timeout_secs: 0` means
/// no deadline (the client's connection bounds it).
pub fn exec_spec(req: &ExecRequest, streamed: bool) -> Result<ExecSpec, ManagerError> {
    if req.cmd.is_empty() || req.cmd[0].is_empty() {
        return Err(bad("cmd must name a program: [\"program\", \"arg\", ...]"));
    }
    if req.cmd.iter().map(|a| a.len() + 3).sum::<usize>() > EXEC_ARGV_MAX {
        return Err(GuestError::TooLarge {
            what: "the command line",
            max: EXEC_ARGV_MAX as u64,
        }
        .into());
    }
    if req.cmd.iter().any(|a| a.contains('\0')) {
        return Err(bad("an argument must not contain a NUL byte"));
    }
    let timeout = match req.timeout_secs {
        Some(0) if streamed => None,
        Some(t) if !(1..=EXEC_TIMEOUT_MAX).contains(&t) => {
            return Err(bad(if streamed {
                format!("timeout_secs must be between 1 and {EXEC_TIMEOUT_MAX}, or 0 for none")
            } else {
                format!("timeout_secs must be between 1 and {EXEC_TIMEOUT_MAX}")
            }));
        }
        t => Some(Duration::from_secs(t.unwrap_or(EXEC_TIMEOUT_DEFAULT))),
    };
    let tty = if req.tty.unwrap_or(false) {
        if !streamed {
            return Err(bad("a terminal (tty) needs the streamed form of exec"));
        }
        let clamp = |v: Option<u16>, d: u16| v.unwrap_or(d).clamp(TTY_SIZE.0, TTY_SIZE.1);
        Some(Tty {
            cols: clamp(req.cols, 80),
            rows: clamp(req.rows, 24),
            term: req
                .term
                .clone()
                .filter(|t| valid_term(t))
                .unwrap_or_else(|| "xterm-256color".into()),
        })
    } else {
        None
    };
    if streamed && (req.stdin.is_some() || req.stdin_base64.is_some()) {
        return Err(bad(
            "the streamed form takes stdin as frames, not in the request",
        ));
    }
    for (k, v) in &req.env {
        let name_ok = !k.is_empty()
            && k.len() <= 256
            && !k.starts_with(|c: char| c.is_ascii_digit())
            && k.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_');
        if !name_ok {
            return Err(bad(format!(
                "env: {:?} is not a variable name (letters, digits and _, not starting with a digit)",
                k.chars().take(64).collect::<String>()
            )));
        }
        if v.contains('\0') {
            return Err(bad("env: a value must not contain a NUL byte"));
        }
    }
    if let Some(cwd) = &req.cwd {
        check_path(cwd).map_err(|_| bad("cwd must be 1 to 4096 bytes, no NUL"))?;
    }
    if let Some(u) = &req.user {
        let ok = !u.is_empty()
            && u.len() <= 32
            && u.bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-' || b == b'.');
        if !ok {
            return Err(bad("user must be a user name or number"));
        }
    }
    Ok(ExecSpec {
        argv: req.cmd.clone(),
        tty,
        timeout,
        env: req
            .env
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect(),
        cwd: req.cwd.clone(),
        user: req.user.clone(),
    })
}

fn stdin_of(req: &ExecRequest) -> Result<Vec<u8>, ManagerError> {
    let stdin = match (&req.stdin, &req.stdin_base64) {
        (Some(_), Some(_)) => return Err(bad("give stdin or stdin_base64, not both")),
        (Some(s), None) => s.clone().into_bytes(),
        (None, Some(b)) => B64
            .decode(b.trim())
            .map_err(|e| bad(format!("stdin_base64 is not base64: {e}")))?,
        (None, None) => Vec::new(),
    };
    if stdin.len() > EXEC_STDIN_MAX {
        return Err(GuestError::TooLarge {
            what: "stdin",
            max: EXEC_STDIN_MAX as u64,
        }
        .into());
    }
    Ok(stdin)
}

impl Manager {
    /// Runs `req.cmd` in the guest: no terminal, stdin fed, stdout and
    /// stderr kept apart (each cut at [`EXEC_OUTPUT_CAP`]), killed at its
    /// timeout.
    pub(super) fn do_exec(&self, vm: &str, req: ExecRequest) -> Result<ExecResponse, ManagerError> {
        // An unknown or stopped VM is the first thing to say.
        let rec = self.running(vm)?;
        let spec = exec_spec(&req, false)?;
        let stdin = stdin_of(&req)?;
        let o = guest::output(&*self.guest(&rec), &spec, &stdin, EXEC_OUTPUT_CAP)?;
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
            exit_code: o.exit.code,
            stdout,
            stderr,
            encoding,
            truncated: o.truncated,
            timed_out: o.exit.timed_out,
        })
    }

    /// Starts a streamed exec: the running VM (woken if asleep), its
    /// checked program, started.
    pub(super) fn do_exec_start(
        &self,
        vm: &str,
        req: &ExecRequest,
    ) -> Result<(VmRecord, Box<dyn Process>), ManagerError> {
        let rec = self.running(vm)?;
        let spec = exec_spec(req, true)?;
        let p = self.guest(&rec).exec(&spec)?;
        Ok((rec, p))
    }

    /// Runs `f` on the guest of a running VM (woken if asleep), with a
    /// checked guest path.
    fn at_path<T>(
        &self,
        vm: &str,
        path: &str,
        f: impl FnOnce(&dyn guest::Guest) -> Result<T, GuestError>,
    ) -> Result<T, ManagerError> {
        let rec = self.running(vm)?;
        check_path(path)?;
        Ok(f(&*self.guest(&rec))?)
    }

    /// `GET /vms/{vm}/files?path=P`: a regular file of the guest.
    pub fn read_file(&self, vm: &str, path: &str) -> Result<Download, ManagerError> {
        self.at_path(vm, path, |g| g.read_file(path))
    }

    /// `GET /vms/{vm}/archive?path=DIR`: a guest directory as tar.
    pub fn read_archive(&self, vm: &str, path: &str) -> Result<Download, ManagerError> {
        self.at_path(vm, path, |g| g.read_tree(path))
    }

    /// `PUT /vms/{vm}/files?path=P`.
    pub fn write_file(
        &self,
        vm: &str,
        path: &str,
        body: &mut dyn Read,
    ) -> Result<Written, ManagerError> {
        let bytes = self.at_path(vm, path, |g| g.write_file(path, body))?;
        Ok(Written {
            path: path.to_owned(),
            bytes,
        })
    }

    /// `PUT /vms/{vm}/archive?path=DIR`.
    pub fn write_archive(
        &self,
        vm: &str,
        path: &str,
        body: &mut dyn Read,
    ) -> Result<Written, ManagerError> {
        let bytes = self.at_path(vm, path, |g| g.write_tree(path, body))?;
        Ok(Written {
            path: path.to_owned(),
            bytes,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(cmd: &[&str]) -> ExecRequest {
        ExecRequest {
            cmd: cmd.iter().map(|s| (*s).to_owned()).collect(),
            ..Default::default()
        }
    }

    #[test]
    fn exec_requests_are_checked() {
        assert!(exec_spec(&req(&[]), false).is_err());
        assert!(exec_spec(&req(&[""]), false).is_err());
        assert!(exec_spec(&req(&["a\0b"]), false).is_err());
        let big = "x".repeat(EXEC_ARGV_MAX);
        assert!(matches!(
            exec_spec(&req(&["echo", &big]), false),
            Err(ManagerError::Guest(GuestError::TooLarge { .. }))
        ));
        let s = exec_spec(&req(&["true"]), false).expect("spec");
        assert_eq!(s.timeout, Some(Duration::from_secs(EXEC_TIMEOUT_DEFAULT)));
        // No deadline only for a streamed exec.
        let mut r = req(&["sleep", "9"]);
        r.timeout_secs = Some(0);
        assert!(exec_spec(&r, false).is_err());
        assert_eq!(exec_spec(&r, true).expect("spec").timeout, None);
        r.timeout_secs = Some(EXEC_TIMEOUT_MAX + 1);
        assert!(exec_spec(&r, true).is_err());
        // A terminal only when streamed; its type sanitised, size clamped.
        let mut r = req(&["bash"]);
        r.tty = Some(true);
        r.term = Some("x; reboot".into());
        r.cols = Some(0);
        r.rows = Some(5000);
        assert!(exec_spec(&r, false).is_err());
        let t = exec_spec(&r, true).expect("spec").tty.expect("tty");
        assert_eq!(
            (t.cols, t.rows, t.term.as_str()),
            (2, 1000, "xterm-256color")
        );
        // Streamed stdin comes as frames.
        let mut r = req(&["cat"]);
        r.stdin = Some("x".into());
        assert!(exec_spec(&r, true).is_err());
    }

    #[test]
    fn stdin_is_text_or_base64_and_bounded() {
        let mut r = req(&["cat"]);
        r.stdin_base64 = Some(B64.encode([0u8, 255]));
        assert_eq!(stdin_of(&r).expect("stdin"), vec![0u8, 255]);
        r.stdin = Some("a".into());
        assert!(stdin_of(&r).is_err());
        r.stdin_base64 = Some("%%%".into());
        r.stdin = None;
        assert!(stdin_of(&r).is_err());
    }
}
