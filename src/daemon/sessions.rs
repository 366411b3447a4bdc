//! Console sessions: tmux sessions inside the guest, listed, made and
//! killed with short scripts through the guest seam, attached to on a
//! terminal of the guest's (`daemon::stream`). tmux is the source of
//! truth; the daemon keeps no session table that could disagree with it.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use thiserror::Error;

use super::guest::{self, Control, GuestError};
use super::lock;
use super::manager::{Manager, ManagerError};
use super::store::VmRecord;
use crate::names::{NameError, SessionId};
use crate::wire::api::SessionInfo;
use crate::wire::text::printable;

/// How long one tmux command in the guest may take (connect included).
pub const GUEST_TIMEOUT: Duration = Duration::from_secs(20);

#[derive(Debug, Error)]
pub enum SessionError {
    #[error(transparent)]
    Vm(#[from] ManagerError),
    #[error(transparent)]
    InvalidId(#[from] NameError),
    #[error("VM {vm} has no session {session}")]
    NotFound { vm: String, session: String },
    #[error("VM {vm} already has a session {session}")]
    Exists { vm: String, session: String },
    #[error("could not reach tmux in VM {vm}")]
    Guest {
        vm: String,
        #[source]
        source: Box<GuestError>,
    },
    #[error("tmux in VM {vm} failed: `{cmd}` exited with {code}")]
    Tmux { vm: String, cmd: String, code: i32 },
}

impl SessionError {
    /// What the user should do next, naming the VM where that helps.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Vm(e) => e.hint(),
            Self::InvalidId(_) => Some("list sessions with: fcm sessions <vm>".into()),
            Self::NotFound { vm, .. } => Some(format!(
                "list sessions with: fcm sessions {vm}, or open one with: fcm console {vm}"
            )),
            Self::Exists { vm, session } => {
                Some(format!("join it with: fcm attach {vm} {session}"))
            }
            Self::Guest { .. } | Self::Tmux { .. } => {
                Some("the guest may still be booting; try again in a few seconds".into())
            }
        }
    }
}

/// One attached terminal connection, so that stopping its VM can end it.
struct Live {
    vm_id: String,
    vm_name: String,
    /// Ends the `tmux attach` of the connection.
    control: Arc<dyn Control>,
    vm_gone: Arc<AtomicBool>,
}

/// The attached terminal connections: which VM each is on (the caps are
/// the stream server's `Gate`).
/// tmux in the guest stays the source of truth about sessions themselves.
#[derive(Default)]
pub struct Sessions {
    next: AtomicU64,
    live: Mutex<HashMap<u64, Live>>,
}

/// An attached stream in the registry; removed on drop.
pub struct Registration<'a> {
    sessions: &'a Sessions,
    key: u64,
    /// Set when the VM is being stopped or destroyed.
    pub vm_gone: Arc<AtomicBool>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        lock(&self.sessions.live).remove(&self.key);
    }
}

const TMUX_FORMAT: &str =
    "#{session_name}|#{session_created}|#{session_attached}|#{pane_current_command}";

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an attached stream of `rec`, ended through `control`.
    pub fn register(&self, rec: &VmRecord, control: Arc<dyn Control>) -> Registration<'_> {
        let key = self.next.fetch_add(1, Ordering::Relaxed);
        let vm_gone = Arc::new(AtomicBool::new(false));
        lock(&self.live).insert(
            key,
            Live {
                vm_id: rec.id.to_string(),
                vm_name: rec.name.to_string(),
                control,
                vm_gone: Arc::clone(&vm_gone),
            },
        );
        Registration {
            sessions: self,
            key,
            vm_gone,
        }
    }

    /// Consoles attached to the VM with id `vm_id` right now.
    pub fn attached_to(&self, vm_id: &str) -> usize {
        lock(&self.live)
            .values()
            .filter(|l| l.vm_id == vm_id)
            .count()
    }

    /// Attached streams right now.
    pub fn attached_streams(&self) -> usize {
        lock(&self.live).len()
    }

    /// Runs a script of fcm's own in the guest, bounded in time; returns
    /// (exit code, stdout).
    fn guest_status(
        m: &Manager,
        rec: &VmRecord,
        script: &str,
    ) -> Result<(i32, String), SessionError> {
        guest::script(&*m.guest(rec), script, GUEST_TIMEOUT).map_err(|source| SessionError::Guest {
            vm: rec.name.to_string(),
            source: Box::new(source),
        })
    }

    /// Like [`Self::guest_status`], failing on a non-zero exit.
    fn guest(m: &Manager, rec: &VmRecord, script: &str) -> Result<String, SessionError> {
        match Self::guest_status(m, rec, script)? {
            (0, out) => Ok(out),
            (code, _) => Err(SessionError::Tmux {
                vm: rec.name.to_string(),
                cmd: script.chars().take(60).collect(),
                code,
            }),
        }
    }

    pub fn list(&self, m: &Manager, vm: &str) -> Result<Vec<SessionInfo>, SessionError> {
        let rec = m.running_console(vm)?;
        Self::list_of(m, &rec)
    }

    fn list_of(m: &Manager, rec: &VmRecord) -> Result<Vec<SessionInfo>, SessionError> {
        // `|| true`: with no sessions tmux exits 1 ("no server running").
        let out = Self::guest(
            m,
            rec,
            &format!(
                "tmux list-panes -a -F '{TMUX_FORMAT}|#{{window_active}}#{{pane_active}}' 2>/dev/null || true"
            ),
        )?;
        Ok(parse_sessions(&out))
    }

    /// Creates a detached session; `name` or a fresh `s-xxxx` id.
    pub fn create(
        &self,
        m: &Manager,
        vm: &str,
        name: Option<&str>,
    ) -> Result<SessionInfo, SessionError> {
        let rec = m.running_console(vm)?;
        let id = match name {
            Some(n) => SessionId::parse(n)?,
            None => fresh_id(),
        };
        // One round trip: check, create, list. (Should another client
        // create the same name in between, tmux refuses the duplicate.)
        let (code, out) = Self::guest_status(
            m,
            &rec,
            &format!(
                "tmux has-session -t ={id} 2>/dev/null && exit 3; \
                 tmux new-session -d -s {id} -x 120 -y 40 || exit 4; \
                 tmux list-panes -a -F '{TMUX_FORMAT}|#{{window_active}}#{{pane_active}}'"
            ),
        )?;
        match code {
            0 => {}
            3 => {
                return Err(SessionError::Exists {
                    vm: rec.name.to_string(),
                    session: id.to_string(),
                });
            }
            code => {
                return Err(SessionError::Tmux {
                    vm: rec.name.to_string(),
                    cmd: format!("tmux new-session -d -s {id}"),
                    code,
                });
            }
        }
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(parse_sessions(&out)
            .into_iter()
            .find(|s| s.id == id.as_str())
            .unwrap_or(SessionInfo {
                id: id.to_string(),
                created: now,
                attached: 0,
                command: String::new(),
            }))
    }

    pub fn kill(&self, m: &Manager, vm: &str, session: &str) -> Result<SessionInfo, SessionError> {
        let rec = m.running_console(vm)?;
        let id = SessionId::parse(session)?;
        // One round trip: the listing (for the reply), then the kill.
        let (code, out) = Self::guest_status(
            m,
            &rec,
            &format!(
                "tmux list-panes -a -F '{TMUX_FORMAT}|#{{window_active}}#{{pane_active}}' 2>/dev/null; \
                 tmux kill-session -t ={id} 2>/dev/null || exit 3"
            ),
        )?;
        let not_found = || SessionError::NotFound {
            vm: rec.name.to_string(),
            session: id.to_string(),
        };
        if code != 0 {
            return Err(not_found());
        }
        parse_sessions(&out)
            .into_iter()
            .find(|s| s.id == id.as_str())
            .ok_or_else(not_found)
    }

    /// Ends the attached streams of a VM that is being stopped or destroyed
    /// (its sessions end with it). `vm` is a name or an id.
    pub fn forget_vm(&self, vm: &str) {
        for l in lock(&self.live).values() {
            if l.vm_id == vm || l.vm_name == vm {
                l.vm_gone.store(true, Ordering::Release);
                // The stream then says why and closes.
                l.control.kill();
            }
        }
    }
}

/// A new session id such as `s-4k2x`.
pub fn fresh_id() -> SessionId {
    use rand::Rng;
    const A: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
    let mut rng = rand::thread_rng();
    let tail: String = (0..4)
        .map(|_| A[rng.gen_range(0..A.len())] as char)
        .collect();
    SessionId::parse(&format!("s-{tail}")).unwrap_or_else(|_| fresh_id())
}

/// Parses `list-panes -a` output, keeping each session's active pane.
fn parse_sessions(out: &str) -> Vec<SessionInfo> {
    let mut v: Vec<SessionInfo> = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.splitn(5, '|').collect();
        let [name, created, attached, command, active] = f.as_slice() else {
            continue;
        };
        if SessionId::parse(name).is_err() {
            continue;
        }
        let info = SessionInfo {
            id: (*name).to_owned(),
            created: created.parse().unwrap_or(0),
            attached: attached.parse().unwrap_or(0),
            command: printable(command),
        };
        match v.iter_mut().find(|s| s.id == info.id) {
            Some(s) if *active == "11" => *s = info,
            Some(_) => {}
            None => v.push(info),
        }
    }
    v.sort_by(|a, b| a.created.cmp(&b.created).then(a.id.cmp(&b.id)));
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_tmux_listing() {
        let out = "main|1700000000|1|bash|11\nmain|1700000000|1|vim|01\ns-ab12|1700000100|0|top|11\nBAD NAME|1|0|x|11\n";
        let s = parse_sessions(out);
        assert_eq!(s.len(), 2);
        assert_eq!(
            s[0],
            SessionInfo {
                id: "main".into(),
                created: 1_700_000_000,
                attached: 1,
                command: "bash".into()
            }
        );
        assert_eq!(s[1].command, "top");
    }

    // Their status codes are checked beside the mapping, in `daemon::api`.
    #[test]
    fn hints_name_the_vm() {
        let stopped = SessionError::Vm(ManagerError::WrongState {
            name: "cosmic-nova".into(),
            state: "stopped",
            wanted: "running",
            action: "use it",
        });
        assert_eq!(
            stopped.hint().as_deref(),
            Some("start it with: fcm start cosmic-nova")
        );
        let missing = SessionError::NotFound {
            vm: "cosmic-nova".into(),
            session: "s-1".into(),
        };
        assert!(
            missing
                .hint()
                .is_some_and(|h| h.contains("fcm sessions cosmic-nova"))
        );
    }

    #[test]
    fn bounded_runs_report_status_and_time_out() {
        use crate::host;
        let o = host::run_outcome(
            "sh",
            ["-c", "echo hi; echo oops >&2; exit 3"],
            None,
            Some(Duration::from_secs(5)),
        )
        .expect("sh");
        let (code, out, err) = (o.code, o.stdout, o.stderr);
        assert_eq!(
            (code, out.as_str(), err.as_str()),
            (Some(3), "hi\n", "oops")
        );
        let t = std::time::Instant::now();
        let code = host::run_outcome("sleep", ["5"], None, Some(Duration::from_millis(200)))
            .expect("sleep")
            .code;
        assert_eq!(code, None);
        assert!(t.elapsed() < Duration::from_secs(2));
    }

    #[test]
    fn fresh_ids_are_valid() {
        for _ in 0..50 {
            let id = fresh_id();
            assert!(id.as_str().starts_with("s-") && id.as_str().len() == 6);
        }
    }
}
