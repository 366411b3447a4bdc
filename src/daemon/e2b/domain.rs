//! E2B through Caddy (`E2B_DOMAIN=<a-b-c-d>.<suffix>`, docs/e2b.md): the
//! daemon keeps one fcm-owned site file, `api.<domain>` and
//! `49983-<sandbox>.<domain>` proxied to its own API with the `Host` kept
//! (the door routes by it: `classify`). Published at start and retried by
//! housekeeping until Caddy takes it; removed when it is not wanted
//! (`e2b.caddy: false`). The create answer names the domain.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use super::{E2b, ENVD_PORT};
use crate::error::chain;

/// How Caddy reaches the daemon's API: its address, and the daemon's
/// certificate to trust when the API speaks TLS.
#[derive(Debug, Clone)]
pub struct Upstream {
    pub dial: SocketAddr,
    pub tls_ca: Option<PathBuf>,
}

/// Whether the site is wanted, and where it stands.
pub(super) struct Site {
    /// `None`: E2B through Caddy is not wanted (or Caddy cannot reach the API).
    upstream: Option<Upstream>,
    /// The file is written and Caddy took it (or it is removed, if unwanted).
    done: AtomicBool,
    /// A failure was reported already (housekeeping retries quietly).
    warned: AtomicBool,
}

impl Site {
    pub(super) fn new(upstream: Option<Upstream>) -> Self {
        Self {
            upstream,
            done: AtomicBool::new(false),
            warned: AtomicBool::new(false),
        }
    }
}

impl E2b {
    /// The domain sandboxes are reached under (`domain` in the create
    /// answer), while the site is wanted.
    pub(super) fn domain(&self) -> Option<String> {
        self.site.upstream.as_ref()?;
        self.m.caddy().map(|c| c.base_domain())
    }

    /// Writes (or removes, when not wanted) the E2B site, once it has not
    /// been done: at start, then on every housekeeping pass until Caddy
    /// takes it. Caddy being down is reported once.
    pub fn publish_site(&self) {
        if self.site.done.load(Ordering::Relaxed) {
            return;
        }
        let Some(caddy) = self.m.caddy() else {
            self.site.done.store(true, Ordering::Relaxed);
            return;
        };
        let result = match &self.site.upstream {
            Some(u) => caddy.put_e2b_site(ENVD_PORT, u.dial, u.tls_ca.as_deref()),
            None => caddy.remove_e2b_site(),
        };
        match result {
            Ok(()) => {
                self.site.done.store(true, Ordering::Relaxed);
                if self.site.upstream.is_some() {
                    let domain = caddy.base_domain();
                    eprintln!(
                        "fcm daemon: E2B through Caddy: E2B_DOMAIN={domain} (https://api.{domain}, https://{ENVD_PORT}-<sandbox>.{domain})"
                    );
                }
            }
            Err(e) => {
                if !self.site.warned.swap(true, Ordering::Relaxed) {
                    eprintln!(
                        "fcm: warning: E2B through Caddy is not live yet (retried every few seconds): {}",
                        chain(&e)
                    );
                }
            }
        }
    }
}
