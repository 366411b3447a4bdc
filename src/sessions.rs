//! Console sessions: tmux sessions inside the guest, reached over SSH with
//! the daemon's key. tmux is the source of truth; the daemon keeps no
//! session table that could disagree with it.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::daemon::manager::{Manager, ManagerError};
use crate::host::{self, HostError};
use crate::names::{NameError, SessionId};
use crate::ssh;
use crate::store::VmRecord;

/// The session `fcm console` opens when none is named.
pub const DEFAULT_SESSION: &str = "main";

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
        source: HostError,
    },
}

impl SessionError {
    pub fn status(&self) -> u16 {
        match self {
            Self::Vm(e) => crate::daemon::api::status_of(e),
            Self::InvalidId(_) => 400,
            Self::NotFound { .. } => 404,
            Self::Exists { .. } => 409,
            Self::Guest { .. } => 502,
        }
    }

    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Vm(e) => e.hint().map(Into::into),
            Self::NotFound { vm, .. } => Some(format!("list sessions with: fcm sessions {vm}")),
            Self::Guest { .. } => {
                Some("the guest may still be booting; try again in a few seconds".into())
            }
            _ => None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    /// Unix seconds.
    pub created: u64,
    pub attached: u32,
    /// The command running in the session's active pane.
    pub command: String,
}

/// Live terminal connections, for leak checks.
#[derive(Default)]
pub struct Sessions {
    pub streams: AtomicUsize,
}

const TMUX_FORMAT: &str =
    "#{session_name}|#{session_created}|#{session_attached}|#{pane_current_command}";

impl Sessions {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn active_streams(&self) -> usize {
        self.streams.load(Ordering::Relaxed)
    }

    /// Runs a command in the guest with the daemon's key; returns stdout.
    fn guest(m: &Manager, rec: &VmRecord, remote: &str) -> Result<String, SessionError> {
        let mut args = ssh::daemon_ssh_args(m.daemon_key(), &m.known_hosts(&rec.id), rec.ip);
        args.push(remote.to_owned());
        host::run("ssh", &args).map_err(|source| SessionError::Guest {
            vm: rec.name.to_string(),
            source,
        })
    }

    pub fn list(&self, m: &Manager, vm: &str) -> Result<Vec<SessionInfo>, SessionError> {
        let rec = m.running(vm)?;
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
        let rec = m.running(vm)?;
        let id = match name {
            Some(n) => SessionId::parse(n)?,
            None => fresh_id(),
        };
        let existing = Self::list_of(m, &rec)?;
        if existing.iter().any(|s| s.id == id.as_str()) {
            return Err(SessionError::Exists {
                vm: rec.name.to_string(),
                session: id.to_string(),
            });
        }
        Self::guest(
            m,
            &rec,
            &format!("tmux new-session -d -s {id} -x 120 -y 40"),
        )?;
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs())
            .unwrap_or(0);
        Ok(Self::list_of(m, &rec)?
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
        let rec = m.running(vm)?;
        let id = SessionId::parse(session)?;
        let found = Self::list_of(m, &rec)?
            .into_iter()
            .find(|s| s.id == id.as_str())
            .ok_or_else(|| SessionError::NotFound {
                vm: rec.name.to_string(),
                session: id.to_string(),
            })?;
        Self::guest(m, &rec, &format!("tmux kill-session -t ={id}"))?;
        Ok(found)
    }

    /// Checks that a session exists (for attach).
    pub fn require(&self, m: &Manager, rec: &VmRecord, id: &SessionId) -> Result<(), SessionError> {
        let exists = Self::list_of(m, rec)?.iter().any(|s| s.id == id.as_str());
        if exists {
            Ok(())
        } else {
            Err(SessionError::NotFound {
                vm: rec.name.to_string(),
                session: id.to_string(),
            })
        }
    }

    /// Sessions end with their VM; nothing is cached here to forget, but
    /// the hook keeps the API layer honest about when that happens.
    pub fn forget_vm(&self, _vm: &str) {}
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
            command: (*command).to_owned(),
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

/// How long a handshake may take before the daemon drops the connection.
pub const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

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

    #[test]
    fn fresh_ids_are_valid() {
        for _ in 0..50 {
            let id = fresh_id();
            assert!(id.as_str().starts_with("s-") && id.as_str().len() == 6);
        }
    }
}
