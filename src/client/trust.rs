//! Which daemon certificate the client trusts, like SSH's known_hosts.
//! The daemon's certificate is self-signed, so it is pinned: the first
//! connection to `host:port` records its SHA-256 fingerprint in
//! `~/.config/fcm/known_daemons` (`$XDG_CONFIG_HOME` honoured; one
//! `host:port sha256:…` per line), and later connections accept only that
//! certificate. `FCM_FINGERPRINT=sha256:…` names the certificate to
//! accept instead (and pins it). Both the API client and the console use
//! this; the handshake's signatures are still checked, so only the holder
//! of the pinned certificate's key gets through.

use std::fmt;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use super::api::ClientError;
use crate::host;
use crate::wire::pin::{self, Pin};
use crate::wire::tls::parse_fingerprint;

/// The file of pinned daemons.
pub fn known_daemons_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CONFIG_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| {
            std::env::var_os("HOME")
                .filter(|h| !h.is_empty())
                .map(|h| PathBuf::from(h).join(".config"))
        })?;
    Some(base.join("fcm").join("known_daemons"))
}

#[derive(Debug, Clone)]
enum Expect {
    /// `FCM_FINGERPRINT`.
    Given(String),
    /// A line of known_daemons (1-based).
    Pinned {
        fp: String,
        line: usize,
    },
    FirstUse,
}

/// Trust in one daemon (`host:port`) for one command.
#[derive(Debug)]
pub struct Trust {
    daemon: String,
    path: Option<PathBuf>,
    expect: Expect,
    /// What the daemon presented, once it has.
    seen: Mutex<Option<String>>,
}

/// The pinned fingerprint of `daemon` in a known_daemons text, and its line.
fn find(text: &str, daemon: &str) -> Option<(String, usize)> {
    text.lines().enumerate().find_map(|(i, l)| {
        let mut parts = l.split_whitespace();
        let (k, v) = (parts.next()?, parts.next()?);
        (!k.starts_with('#') && k.eq_ignore_ascii_case(daemon))
            .then(|| parse_fingerprint(v).map(|fp| (fp, i + 1)))
            .flatten()
    })
}

/// The text with `daemon`'s line set to `fp` (replaced, or appended).
fn with_pin(text: &str, daemon: &str, fp: &str) -> String {
    let mut out = String::new();
    let mut done = false;
    for l in text.lines() {
        let key = l.split_whitespace().next().unwrap_or_default();
        if !key.starts_with('#') && key.eq_ignore_ascii_case(daemon) {
            if !done {
                out.push_str(&format!("{daemon} {fp}\n"));
                done = true;
            }
        } else {
            out.push_str(l);
            out.push('\n');
        }
    }
    if !done {
        out.push_str(&format!("{daemon} {fp}\n"));
    }
    out
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl Trust {
    /// What to expect of the daemon at `daemon` (`host:port`): the
    /// fingerprint given in `FCM_FINGERPRINT`, else the pinned one, else
    /// whatever it shows first.
    pub fn for_daemon(daemon: &str) -> Result<Arc<Self>, ClientError> {
        let path = known_daemons_path();
        let expect = match std::env::var("FCM_FINGERPRINT") {
            Ok(v) if !v.trim().is_empty() => Expect::Given(
                parse_fingerprint(&v).ok_or_else(|| ClientError::BadFingerprint(v.clone()))?,
            ),
            _ => {
                let text = path
                    .as_ref()
                    .and_then(|p| std::fs::read_to_string(p).ok())
                    .unwrap_or_default();
                match find(&text, daemon) {
                    Some((fp, line)) => Expect::Pinned { fp, line },
                    None => Expect::FirstUse,
                }
            }
        };
        Ok(Arc::new(Self {
            daemon: daemon.to_owned(),
            path,
            expect,
            seen: Mutex::new(None),
        }))
    }

    /// A rustls client configuration that checks the daemon against this.
    pub fn client_config(self: &Arc<Self>) -> Result<Arc<rustls::ClientConfig>, ClientError> {
        pin::client_config(Arc::new(TrustPin(Arc::clone(self))))
            .map_err(|e| ClientError::Protocol(e.to_string()))
    }

    /// After a failed connection: the error that explains it, if the
    /// certificate was the cause.
    pub fn failure(&self) -> Option<ClientError> {
        let presented = lock(&self.seen).clone()?;
        let path = self
            .path
            .as_ref()
            .map_or_else(|| "known_daemons".into(), |p| p.display().to_string());
        match &self.expect {
            Expect::Given(given) if *given != presented => Some(ClientError::NotGivenCert {
                daemon: self.daemon.clone(),
                given: given.clone(),
                presented,
            }),
            Expect::Pinned { fp, line } if *fp != presented => Some(ClientError::CertChanged {
                daemon: self.daemon.clone(),
                pinned: fp.clone(),
                presented,
                path,
                line: *line,
            }),
            _ => None,
        }
    }

    /// After a successful TLS handshake: pins a certificate seen for the
    /// first time, or one given in `FCM_FINGERPRINT`, and says so on stderr.
    pub fn commit(&self) {
        let Some(seen) = lock(&self.seen).clone() else {
            return;
        };
        let how = match &self.expect {
            Expect::FirstUse => "first use",
            Expect::Given(_) => "FCM_FINGERPRINT",
            Expect::Pinned { .. } => return,
        };
        let Some(path) = &self.path else {
            return;
        };
        let text = std::fs::read_to_string(path).unwrap_or_default();
        if find(&text, &self.daemon).is_some_and(|(fp, _)| fp == seen) {
            return;
        }
        let written = path
            .parent()
            .map_or(Ok(()), |d| {
                std::fs::create_dir_all(d).and_then(|()| host::set_mode(d, 0o700))
            })
            .and_then(|()| {
                host::write_atomic(path, with_pin(&text, &self.daemon, &seen).as_bytes(), 0o600)
            });
        match written {
            Ok(()) => eprintln!(
                "fcm: pinned the TLS certificate of the daemon at {} ({how}): {seen}\n     in {}; compare it with `sudo fcm daemon --print-fingerprint` on the daemon's host",
                self.daemon,
                path.display()
            ),
            Err(e) => eprintln!(
                "fcm: warning: could not pin the daemon's certificate in {}: {e}",
                path.display()
            ),
        }
    }

    fn check(&self, presented: &str) -> bool {
        match &self.expect {
            Expect::Given(fp) | Expect::Pinned { fp, .. } => fp == presented,
            Expect::FirstUse => true,
        }
    }
}

/// The daemon's certificate as [`Trust`] expects it; remembers what was
/// presented, for [`Trust::failure`].
struct TrustPin(Arc<Trust>);

impl fmt::Debug for TrustPin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TrustPin")
            .field("daemon", &self.0.daemon)
            .finish()
    }
}

impl Pin for TrustPin {
    fn accept(&self, presented: String) -> Result<(), String> {
        let ok = self.0.check(&presented);
        *lock(&self.0.seen) = Some(presented);
        if ok {
            Ok(())
        } else {
            Err("the daemon's certificate is not the pinned one".into())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_are_found_replaced_and_appended() {
        let a = format!("sha256:{}", "a".repeat(64));
        let b = format!("sha256:{}", "b".repeat(64));
        let text = format!("# fcm daemons\nother:7777 {b}\n10.0.0.1:7777 {a}\n");
        assert_eq!(find(&text, "10.0.0.1:7777"), Some((a.clone(), 3)));
        assert_eq!(find(&text, "10.0.0.2:7777"), None);
        let replaced = with_pin(&text, "10.0.0.1:7777", &b);
        assert_eq!(find(&replaced, "10.0.0.1:7777"), Some((b.clone(), 3)));
        assert!(replaced.starts_with("# fcm daemons\nother:7777"));
        let added = with_pin(&text, "new:7777", &a);
        assert_eq!(find(&added, "new:7777"), Some((a, 4)));
    }
}
