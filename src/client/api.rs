//! The CLI's side of the API: where the daemon is, the token, and typed
//! requests (the wire types in `crate::wire::api`).

use std::path::PathBuf;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use crate::wire::api::ErrorBody;
use crate::wire::{DEFAULT_API_PORT, DEFAULT_STATE_DIR, DEFAULT_STREAM_PORT};

#[derive(Debug, Error)]
pub enum ClientError {
    #[error("cannot reach the fcm daemon at {url}: {message}")]
    Connect { url: String, message: String },
    #[error("{message}")]
    Api {
        status: u16,
        message: String,
        hint: Option<String>,
    },
    #[error("no API token found")]
    NoToken,
    #[error("the token file {path} can be read by others (mode {mode:o}); refusing to use it")]
    TokenTooOpen { path: String, mode: u32 },
    #[error("unexpected response from the daemon: {0}")]
    Protocol(String),
}

impl ClientError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Connect { .. } => {
                Some("is the daemon running? try: sudo fcm daemon (or set FCM_HOST)".into())
            }
            Self::Api { hint, .. } => hint.clone(),
            Self::NoToken => Some(format!(
                "set FCM_TOKEN, or copy the daemon's token: sudo cat {DEFAULT_STATE_DIR}/.token > ~/.fcm-token"
            )),
            Self::TokenTooOpen { path, .. } => Some(format!("make it private: chmod 600 {path}")),
            Self::Protocol(_) => None,
        }
    }
}

/// `FCM_HOST` (`host`, `host:port` or a URL); default `http://127.0.0.1:7777`.
pub fn daemon_url() -> String {
    match std::env::var("FCM_HOST") {
        Ok(h) if !h.trim().is_empty() => {
            let h = h.trim().trim_end_matches('/');
            let with_scheme = if h.contains("://") {
                h.to_owned()
            } else {
                format!("http://{h}")
            };
            let authority = with_scheme.split("://").nth(1).unwrap_or_default();
            let has_port = authority
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok());
            if has_port {
                with_scheme
            } else {
                format!("{with_scheme}:{DEFAULT_API_PORT}")
            }
        }
        _ => format!("http://127.0.0.1:{DEFAULT_API_PORT}"),
    }
}

/// The daemon's host name or address, from [`daemon_url`].
pub fn daemon_host() -> String {
    let url = daemon_url();
    let authority = url
        .split("://")
        .nth(1)
        .unwrap_or("127.0.0.1")
        .split('/')
        .next()
        .unwrap_or("127.0.0.1");
    match authority.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => authority.to_owned(),
    }
}

/// Whether the daemon is on this machine.
pub fn daemon_is_local() -> bool {
    matches!(daemon_host().as_str(), "127.0.0.1" | "localhost" | "::1")
        || daemon_host().starts_with("127.")
}

/// The terminal stream address: `FCM_STREAM` (`host:port`), else the
/// daemon's host on port 7778.
pub fn stream_addr() -> String {
    match std::env::var("FCM_STREAM") {
        Ok(a) if !a.trim().is_empty() => a.trim().to_owned(),
        _ => {
            let h = daemon_host();
            if h.contains(':') {
                format!("[{h}]:{DEFAULT_STREAM_PORT}")
            } else {
                format!("{h}:{DEFAULT_STREAM_PORT}")
            }
        }
    }
}

fn home() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

/// `FCM_TOKEN`, else `~/.fcm-token`, else (for root on the daemon's host)
/// the daemon's own token file.
pub fn load_token() -> Result<String, ClientError> {
    if let Ok(t) = std::env::var("FCM_TOKEN")
        && !t.trim().is_empty()
    {
        return Ok(t.trim().to_owned());
    }
    let mut candidates: Vec<PathBuf> = home().map(|h| h.join(".fcm-token")).into_iter().collect();
    if daemon_is_local() {
        let state = std::env::var_os("FCM_STATE_DIR")
            .map(PathBuf::from)
            .unwrap_or_else(|| DEFAULT_STATE_DIR.into());
        candidates.push(state.join(".token"));
    }
    for p in &candidates {
        let Ok(t) = std::fs::read_to_string(p) else {
            continue;
        };
        let t = t.trim();
        if t.is_empty() {
            continue;
        }
        check_private(p)?;
        return Ok(t.to_owned());
    }
    Err(ClientError::NoToken)
}

/// A token file that others can read is refused: the token is the
/// daemon's root.
fn check_private(path: &std::path::Path) -> Result<(), ClientError> {
    use std::os::unix::fs::PermissionsExt;
    let mode = std::fs::metadata(path)
        .map(|m| m.permissions().mode() & 0o777)
        .unwrap_or(0);
    if mode & 0o077 != 0 {
        return Err(ClientError::TokenTooOpen {
            path: path.display().to_string(),
            mode,
        });
    }
    Ok(())
}

pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
}

impl Client {
    pub fn from_env() -> Result<Self, ClientError> {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // create waits for the guest's SSH; under TCG that can take minutes.
            .timeout_read(Duration::from_secs(900))
            .build();
        Ok(Self {
            base: daemon_url(),
            token: load_token()?,
            agent,
        })
    }

    pub fn token(&self) -> &str {
        &self.token
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("GET", path, None::<&()>)
    }

    pub fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        self.call("POST", path, Some(body))
    }

    pub fn delete<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        self.call("DELETE", path, None::<&()>)
    }

    /// A POST that may take up to `timeout` (exec), instead of the agent's read timeout.
    pub fn post_within<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
        timeout: Duration,
    ) -> Result<T, ClientError> {
        let req = self.request("POST", path).timeout(timeout);
        Self::answer(req.send_json(body), &self.base)
    }

    /// A GET whose answer is raw bytes: (length if known, reader).
    pub fn get_bytes(
        &self,
        path: &str,
    ) -> Result<(Option<u64>, Box<dyn std::io::Read + Send + Sync>), ClientError> {
        match self.request("GET", path).call() {
            Ok(r) => {
                let len = r.header("Content-Length").and_then(|l| l.parse().ok());
                Ok((len, r.into_reader()))
            }
            Err(e) => Err(Self::failure(e, &self.base)),
        }
    }

    /// A PUT of raw bytes streamed from `body`; the answer is JSON.
    pub fn put_bytes<T: DeserializeOwned>(
        &self,
        path: &str,
        body: impl std::io::Read,
    ) -> Result<T, ClientError> {
        let req = self
            .request("PUT", path)
            .set("Content-Type", "application/octet-stream");
        Self::answer(req.send(body), &self.base)
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{}", self.base, path))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    fn answer<T: DeserializeOwned>(
        resp: Result<ureq::Response, ureq::Error>,
        base: &str,
    ) -> Result<T, ClientError> {
        match resp {
            Ok(r) => r
                .into_json()
                .map_err(|e| ClientError::Protocol(e.to_string())),
            Err(e) => Err(Self::failure(e, base)),
        }
    }

    fn failure(e: ureq::Error, base: &str) -> ClientError {
        match e {
            ureq::Error::Status(status, r) => {
                let (message, hint) = match r.into_json::<ErrorBody>() {
                    Ok(e) => (e.error, e.hint),
                    Err(_) => (format!("HTTP {status}"), None),
                };
                ClientError::Api {
                    status,
                    message,
                    hint,
                }
            }
            ureq::Error::Transport(t) => ClientError::Connect {
                url: base.to_owned(),
                message: t.to_string(),
            },
        }
    }

    /// One request; an error answer becomes [`ClientError::Api`] with the
    /// daemon's message and hint.
    fn call<B: Serialize, T: DeserializeOwned>(
        &self,
        method: &str,
        path: &str,
        body: Option<&B>,
    ) -> Result<T, ClientError> {
        let req = self.request(method, path);
        let resp = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        Self::answer(resp, &self.base)
    }
}

/// Percent-encodes a path segment (a VM argument may hold anything).
pub fn seg(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-_.~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// The user's SSH key pair, most preferred first: (private, public).
pub fn user_ssh_key() -> Option<(PathBuf, String)> {
    let dir = home()?.join(".ssh");
    ["id_ed25519", "id_ecdsa", "id_rsa"].iter().find_map(|k| {
        let public = std::fs::read_to_string(dir.join(format!("{k}.pub"))).ok()?;
        Some((dir.join(k), public.trim().to_owned()))
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("cosmic-nova"), "cosmic-nova");
        assert_eq!(seg("../../etc"), "..%2F..%2Fetc");
        assert_eq!(seg("a b;c"), "a%20b%3Bc");
    }
}
