//! QMP, QEMU's control socket: one bounded session per call, and a
//! descriptor passed along (SCM_RIGHTS) for `getfd`.

use std::path::Path;
use std::time::Duration;

/// One message from QMP: the answer to a command, or an event in between.
#[derive(serde::Deserialize)]
struct QmpMessage {
    #[serde(default)]
    r#return: Option<serde_json::Value>,
    #[serde(default)]
    error: Option<QmpError>,
}

#[derive(serde::Deserialize)]
struct QmpError {
    class: String,
    desc: String,
}

/// Runs one QMP command: read the greeting, negotiate, send, read the
/// answer (skipping events), each read and write within 3 s. QMP serves one
/// client at a time; the connection is closed on return.
pub(super) fn qmp(socket: &Path, command: &serde_json::Value) -> Result<serde_json::Value, String> {
    qmp_session(socket, std::slice::from_ref(command), None)
}

/// Runs QMP commands in order on one connection and returns the last
/// answer; `fd` travels (SCM_RIGHTS) with the first command, for `getfd`.
pub(super) fn qmp_session(
    socket: &Path,
    commands: &[serde_json::Value],
    fd: Option<std::os::fd::BorrowedFd<'_>>,
) -> Result<serde_json::Value, String> {
    use std::io::{BufRead, BufReader, Read, Write};
    use std::os::unix::net::UnixStream;
    let s = UnixStream::connect(socket).map_err(|e| format!("QMP {}: {e}", socket.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(Duration::from_secs(3)))
        .map_err(|e| e.to_string())?;
    let mut r = BufReader::new((&s).take(1 << 20));
    let mut line = String::new();
    let mut w = &s;
    r.read_line(&mut line)
        .map_err(|e| format!("QMP greeting: {e}"))?;
    let mut answer = serde_json::Value::Null;
    let negotiate = serde_json::json!({"execute": "qmp_capabilities"});
    for (i, cmd) in std::iter::once(&negotiate).chain(commands).enumerate() {
        let text = format!("{cmd}\n");
        match fd {
            Some(fd) if i == 1 => send_with_fd(&s, text.as_bytes(), fd)
                .map_err(|e| format!("QMP write (with a descriptor): {e}"))?,
            _ => w
                .write_all(text.as_bytes())
                .map_err(|e| format!("QMP write: {e}"))?,
        }
        answer = loop {
            line.clear();
            r.read_line(&mut line)
                .map_err(|e| format!("QMP read: {e}"))?;
            if line.is_empty() {
                return Err("QMP closed the connection".into());
            }
            let msg: QmpMessage = serde_json::from_str(&line)
                .map_err(|e| format!("QMP sent something that is not JSON ({e})"))?;
            if let Some(e) = msg.error {
                return Err(format!("QMP {}: {}", e.class, e.desc));
            }
            if let Some(v) = msg.r#return {
                break v;
            }
            // An asynchronous event: keep reading for the answer.
        };
    }
    Ok(answer)
}

/// Writes all of `bytes` on a Unix socket, `fd` attached to the first part.
fn send_with_fd(
    s: &std::os::unix::net::UnixStream,
    bytes: &[u8],
    fd: std::os::fd::BorrowedFd<'_>,
) -> std::io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags, sendmsg};
    use std::io::{IoSlice, Write};
    let fds = [fd];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(&fds)) {
        return Err(std::io::Error::other("no room for the descriptor"));
    }
    let sent = loop {
        match sendmsg(s, &[IoSlice::new(bytes)], &mut control, SendFlags::NOSIGNAL) {
            Ok(n) => break n,
            Err(rustix::io::Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    };
    let mut w = s;
    w.write_all(&bytes[sent..])
}

/// The state of an outgoing migration, from `query-migrate`: `Some(Ok)`
/// once completed, `Some(Err)` when it failed, `None` while it runs.
pub(super) fn migration_done(v: &serde_json::Value) -> Option<Result<(), String>> {
    match v.get("status").and_then(|s| s.as_str()) {
        Some("completed") => Some(Ok(())),
        Some("failed" | "cancelled") => Some(Err(v
            .get("error-desc")
            .and_then(|d| d.as_str())
            .unwrap_or("migration failed")
            .to_owned())),
        _ => None,
    }
}

/// Whether a migration (a save) is still under way, from `query-migrate`.
pub(super) fn migration_active(socket: &Path) -> bool {
    qmp(socket, &serde_json::json!({"execute": "query-migrate"})).is_ok_and(|v| {
        matches!(
            v.get("status").and_then(|s| s.as_str()),
            Some("setup" | "active" | "pre-switchover" | "device" | "wait-unplug" | "cancelling")
        )
    })
}
