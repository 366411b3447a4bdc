//! `fcm exec <vm> -- cmd...`: a command in the guest without a terminal,
//! through the daemon (`POST /vms/{vm}/exec`). Stdout and stderr stay
//! apart and byte-exact when they go to a file or a pipe; on a terminal,
//! control characters from the guest are shown escaped. stdin is sent
//! when it is not a terminal. The exit status is the command's.

use std::io::{IsTerminal, Read, Write};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::api::{Client, seg};
use super::{Failure, out_json};
use crate::cli::ExecArgs;
use crate::wire::api::{Encoding, ExecRequest, ExecResponse};
use crate::wire::text::visible;

/// The daemon's limits (documented in docs/openapi.yaml).
const STDIN_MAX: usize = 8 << 20;
const DEFAULT_TIMEOUT: u64 = 60;
/// Exit status of a command killed at its timeout (as timeout(1) uses).
pub const TIMED_OUT: i32 = 124;

pub(super) fn exec(a: ExecArgs) -> Result<i32, Failure> {
    let c = Client::from_env()?;
    let stdin = read_stdin()?;
    let mut req = ExecRequest {
        cmd: a.command,
        timeout_secs: a.timeout,
        ..Default::default()
    };
    match stdin.map(String::from_utf8) {
        Some(Ok(text)) => req.stdin = Some(text),
        Some(Err(bytes)) => req.stdin_base64 = Some(B64.encode(bytes.into_bytes())),
        None => {}
    }
    let wait = Duration::from_secs(a.timeout.unwrap_or(DEFAULT_TIMEOUT) + 60);
    let r: ExecResponse = c.post_within(&format!("/vms/{}/exec", seg(&a.vm)), &req, wait)?;
    if a.json {
        out_json(&r)?;
    } else {
        let (stdout, stderr) = match r.encoding {
            Encoding::Utf8 => (r.stdout.into_bytes(), r.stderr.into_bytes()),
            Encoding::Base64 => (
                B64.decode(&r.stdout).unwrap_or_default(),
                B64.decode(&r.stderr).unwrap_or_default(),
            ),
        };
        emit(
            &mut std::io::stdout().lock(),
            std::io::stdout().is_terminal(),
            &stdout,
        );
        emit(
            &mut std::io::stderr().lock(),
            std::io::stderr().is_terminal(),
            &stderr,
        );
    }
    if r.truncated {
        eprintln!("warning: output was cut at 1 MiB per stream");
    }
    if r.timed_out {
        eprintln!(
            "error: the command did not finish within {} s and was killed",
            a.timeout.unwrap_or(DEFAULT_TIMEOUT)
        );
        eprintln!("hint: give it more time with --timeout SECS (at most 3600)");
        return Ok(TIMED_OUT);
    }
    Ok(r.exit_code)
}

/// Writes guest bytes: exact to a pipe or file, escaped on a terminal.
fn emit(w: &mut dyn Write, terminal: bool, bytes: &[u8]) {
    let _ = if terminal {
        w.write_all(visible(&String::from_utf8_lossy(bytes)).as_bytes())
    } else {
        w.write_all(bytes)
    };
    let _ = w.flush();
}

/// All of stdin when it is not a terminal (at most 8 MiB), else nothing.
fn read_stdin() -> Result<Option<Vec<u8>>, Failure> {
    let stdin = std::io::stdin();
    if stdin.is_terminal() {
        return Ok(None);
    }
    let mut buf = Vec::new();
    stdin
        .lock()
        .take(STDIN_MAX as u64 + 1)
        .read_to_end(&mut buf)
        .map_err(|e| Failure::new(format!("could not read standard input: {e}"), None))?;
    if buf.len() > STDIN_MAX {
        return Err(Failure::new(
            "standard input is larger than 8 MiB",
            Some("copy big inputs with fcm cp, then run the command on the file".into()),
        ));
    }
    Ok((!buf.is_empty()).then_some(buf))
}
