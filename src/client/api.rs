//! The CLI's side of the API: where the daemon is, the token, and typed
//! requests (the wire types in `crate::wire::api`).

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use serde::Serialize;
use serde::de::DeserializeOwned;
use thiserror::Error;

use super::trust::Trust;
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
    #[error(
        "the fcm daemon at {daemon} presented a different TLS certificate from the one pinned for it\n  pinned:    {pinned} ({path}, line {line})\n  presented: {presented}"
    )]
    CertChanged {
        daemon: String,
        pinned: String,
        presented: String,
        path: String,
        line: usize,
    },
    #[error(
        "the fcm daemon at {daemon} presented TLS certificate {presented}, not the one FCM_FINGERPRINT names ({given})"
    )]
    NotGivenCert {
        daemon: String,
        given: String,
        presented: String,
    },
    #[error("FCM_FINGERPRINT is not a certificate fingerprint: {0:?}")]
    BadFingerprint(String),
    #[error("refusing to send the API token in clear text to {url}")]
    Insecure { url: String },
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
            Self::CertChanged {
                presented,
                path,
                line,
                ..
            } => Some(format!(
                "if the daemon's certificate was replaced on purpose (`sudo fcm daemon --print-fingerprint` on its host shows the current one), accept the new one: delete line {line} of {path}, or run once with FCM_FINGERPRINT={presented}; if not, someone may be intercepting the connection"
            )),
            Self::NotGivenCert { .. } => Some(
                "compare with `sudo fcm daemon --print-fingerprint` on the daemon's host".into(),
            ),
            Self::BadFingerprint(_) => Some(
                "give it as the daemon prints it: FCM_FINGERPRINT=sha256:<64 hex digits>".into(),
            ),
            Self::Insecure { .. } => Some(
                "a daemon beyond loopback speaks TLS: use https:// in FCM_HOST (or leave the scheme out)".into(),
            ),
        }
    }
}

/// `FCM_HOST` (`host`, `host:port` or a URL); default `http://127.0.0.1:7777`.
/// Without a scheme, a loopback host is reached over `http` and any other
/// over `https` (a daemon listening beyond loopback always speaks TLS).
pub fn daemon_url() -> String {
    url_of(std::env::var("FCM_HOST").ok().as_deref())
}

fn url_of(fcm_host: Option<&str>) -> String {
    match fcm_host {
        Some(h) if !h.trim().is_empty() => {
            let h = h.trim().trim_end_matches('/');
            let (scheme, authority) = match h.split_once("://") {
                Some((s, a)) => (Some(s.to_ascii_lowercase()), a),
                None => (None, h),
            };
            let has_port = authority
                .rsplit_once(':')
                .is_some_and(|(_, p)| p.parse::<u16>().is_ok() && !p.is_empty())
                && (!authority.starts_with('[') || authority.contains("]:"));
            let authority = if has_port {
                authority.to_owned()
            } else {
                format!("{authority}:{DEFAULT_API_PORT}")
            };
            let scheme = scheme.unwrap_or_else(|| {
                if is_loopback(&host_of(&authority)) {
                    "http".into()
                } else {
                    "https".into()
                }
            });
            format!("{scheme}://{authority}")
        }
        _ => format!("http://127.0.0.1:{DEFAULT_API_PORT}"),
    }
}

/// The host part of `host:port` or `[v6]:port`.
fn host_of(authority: &str) -> String {
    match authority.rsplit_once(':') {
        Some((h, _)) => h.trim_start_matches('[').trim_end_matches(']').to_owned(),
        None => authority.to_owned(),
    }
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host
            .parse::<std::net::IpAddr>()
            .is_ok_and(|ip| ip.is_loopback())
}

/// Whether the daemon is reached over TLS (API and terminal stream).
pub fn daemon_tls() -> bool {
    daemon_url().starts_with("https://")
}

/// `host:port` of the daemon's API, as pinned in known_daemons.
pub fn daemon_authority() -> String {
    let url = daemon_url();
    url.split("://")
        .nth(1)
        .unwrap_or_default()
        .split('/')
        .next()
        .unwrap_or_default()
        .to_ascii_lowercase()
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
    is_loopback(&daemon_host())
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

/// The daemon's API for one command. Its one `ureq` agent keeps the
/// connection the daemon keeps alive (HTTP/1.1), so a command's requests
/// (`fcm cp`'s checks and transfer, `fcm logs -f`'s polls) share one TCP
/// connection and one TLS handshake.
pub struct Client {
    base: String,
    token: String,
    agent: ureq::Agent,
    /// The daemon's pinned certificate, over TLS.
    trust: Option<Arc<Trust>>,
}

impl Client {
    pub fn from_env() -> Result<Self, ClientError> {
        let base = daemon_url();
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            // create waits for the guest's SSH; under TCG that can take minutes.
            .timeout_read(Duration::from_secs(900))
            .timeout_write(Duration::from_secs(60));
        let trust = if daemon_tls() {
            let t = Trust::for_daemon(&daemon_authority())?;
            agent = agent.tls_config(t.client_config()?);
            Some(t)
        } else {
            if !daemon_is_local() {
                return Err(ClientError::Insecure { url: base });
            }
            None
        };
        Ok(Self {
            base,
            token: load_token()?,
            agent: agent.build(),
            trust,
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
        admitted(|| {
            let req = self.request("POST", path).timeout(timeout);
            self.answer(req.send_json(body))
        })
    }

    /// A GET whose answer is raw bytes: (length if known, reader).
    pub fn get_bytes(
        &self,
        path: &str,
    ) -> Result<(Option<u64>, Box<dyn std::io::Read + Send + Sync>), ClientError> {
        admitted(|| self.get_bytes_once(path))
    }

    fn get_bytes_once(
        &self,
        path: &str,
    ) -> Result<(Option<u64>, Box<dyn std::io::Read + Send + Sync>), ClientError> {
        let resp = self.request("GET", path).call();
        if let Some(e) = self.pinned(&resp) {
            return Err(e);
        }
        match resp {
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
        self.answer(req.send(body))
    }

    /// A POST of raw bytes streamed from `body` (chunked); the answer is
    /// a stream too (`fcm image build`: the build's log as it runs).
    pub fn post_stream(
        &self,
        path: &str,
        body: impl std::io::Read,
    ) -> Result<Box<dyn std::io::Read + Send + Sync>, ClientError> {
        let req = self
            .request("POST", path)
            .set("Content-Type", "application/x-tar");
        let resp = req.send(body);
        if let Some(e) = self.pinned(&resp) {
            return Err(e);
        }
        match resp {
            Ok(r) => Ok(r.into_reader()),
            Err(e) => Err(Self::failure(e, &self.base)),
        }
    }

    fn request(&self, method: &str, path: &str) -> ureq::Request {
        self.agent
            .request(method, &format!("{}{}", self.base, path))
            .set("Authorization", &format!("Bearer {}", self.token))
    }

    /// Over TLS: a connection refused for its certificate is explained
    /// (changed, or not the one given); one that got through pins it.
    fn pinned(&self, resp: &Result<ureq::Response, ureq::Error>) -> Option<ClientError> {
        let t = self.trust.as_ref()?;
        match resp {
            Err(ureq::Error::Transport(_)) => t.failure(),
            _ => {
                t.commit();
                None
            }
        }
    }

    fn answer<T: DeserializeOwned>(
        &self,
        resp: Result<ureq::Response, ureq::Error>,
    ) -> Result<T, ClientError> {
        if let Some(e) = self.pinned(&resp) {
            return Err(e);
        }
        match resp {
            Ok(r) => r
                .into_json()
                .map_err(|e| ClientError::Protocol(e.to_string())),
            Err(e) => Err(Self::failure(e, &self.base)),
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
        admitted(|| {
            let req = self.request(method, path);
            let resp = match body {
                Some(b) => req.send_json(b),
                None => req.call(),
            };
            self.answer(resp)
        })
    }
}

/// Whether the daemon turned the connection away at the door (too many
/// connections at once): nothing of the request was done.
pub fn refused_at_admission(e: &ClientError) -> bool {
    matches!(e, ClientError::Api { status: 503, message, .. }
        if message.starts_with("too many") || message.contains("serving too many requests"))
}

/// Runs `f` again, for up to [`ADMISSION_RETRY`], while the daemon turns
/// it away at the door (many `fcm` started at once, e.g. by `xargs -P`).
pub fn admitted<T>(mut f: impl FnMut() -> Result<T, ClientError>) -> Result<T, ClientError> {
    let until = std::time::Instant::now() + ADMISSION_RETRY;
    let mut pause = Duration::from_millis(20);
    loop {
        match f() {
            Err(e) if refused_at_admission(&e) && std::time::Instant::now() < until => {
                let jitter = Duration::from_millis(u64::from(rand::random::<u8>() % 50));
                std::thread::sleep(pause + jitter);
                pause = (pause * 2).min(Duration::from_millis(500));
            }
            other => return other,
        }
    }
}

/// How long a request turned away at the door is tried again.
const ADMISSION_RETRY: Duration = Duration::from_secs(15);

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
    fn the_scheme_follows_the_host() {
        assert_eq!(url_of(None), "http://127.0.0.1:7777");
        assert_eq!(url_of(Some("localhost")), "http://localhost:7777");
        assert_eq!(url_of(Some("10.1.2.3")), "https://10.1.2.3:7777");
        assert_eq!(url_of(Some("server:8000")), "https://server:8000");
        assert_eq!(url_of(Some("http://10.1.2.3")), "http://10.1.2.3:7777");
        assert_eq!(
            url_of(Some("https://127.0.0.1:7777/")),
            "https://127.0.0.1:7777"
        );
        assert_eq!(url_of(Some("[::1]")), "http://[::1]:7777");
        assert_eq!(url_of(Some("[fd00::1]:9")), "https://[fd00::1]:9");
    }

    #[test]
    fn segments_are_encoded() {
        assert_eq!(seg("cosmic-nova"), "cosmic-nova");
        assert_eq!(seg("../../etc"), "..%2F..%2Fetc");
        assert_eq!(seg("a b;c"), "a%20b%3Bc");
    }
}
