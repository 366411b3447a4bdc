//! Public HTTPS URLs through Caddy (issue 4).
//!
//! Every VM gets `https://<name>.<public-ip-with-dashes>.<suffix>` (for example
//! `https://cosmic-nova.64-34-93-45.sslip.io`), which Caddy reverse-proxies to
//! `<guest-ip>:<guest_port>`. Wildcard DNS services such as sslip.io resolve the
//! name to the IP written in it, so no DNS record has to be made, and Caddy
//! obtains the certificate itself.
//!
//! # What fcm owns
//!
//! fcm owns one file per VM, `<sites_dir>/<name>.caddy`, and nothing else. The
//! user's main Caddyfile gets a single `import <sites_dir>/*.caddy` line,
//! appended once by [`Caddy::ensure_import`] when no line reads exactly that;
//! after that first append fcm never writes the main Caddyfile again, so it stays
//! byte-identical while VMs come and go, and the user's own sites are never
//! rewritten. `sites_dir` must be an absolute path of `[A-Za-z0-9._/-]` so that
//! the import line needs no quoting.
//!
//! # Changing a site
//!
//! A change writes the VM's file atomically, runs `caddy validate` on the main
//! Caddyfile, then `caddy reload --address <admin>`. If either fails (Caddy not
//! installed, not running, or rejecting the result), the VM's file is put back as
//! it was (removed, or its previous content restored) and the error is returned;
//! the daemon reports it as a warning ("URL not live: ...") and the VM works
//! without its URL. Every Caddy command runs with a deadline. Changes are
//! serialised by a lock inside [`Caddy`], so one value can be shared by threads.
//!
//! # Stopped VMs
//!
//! While a VM is stopped its site file is rewritten to a static response,
//! `503 VM <name> is stopped: run `fcm start <name>``, so the URL answers at once
//! instead of waiting for a guest that is not there ([`Caddy::set_stopped`]).
//! A running VM's site proxies to the guest, and a `handle_errors` block turns a
//! guest that does not answer (still booting, no web server on the port) into a
//! `502` page that says so, rather than Caddy's empty error.
//!
//! # Names
//!
//! Only a [`VmName`] (`[a-z0-9-]`) and IP addresses reach a site file, and the
//! rendered domain is checked again to be dot-separated `[a-z0-9-]` labels, since
//! the suffix comes from the configuration.
//!
//! # Public IP
//!
//! `caddy.public_ip` when set; otherwise it is detected once, in [`Caddy::new`],
//! from the `src` of `ip -4 route get 1.1.1.1` (a route lookup: no packet is
//! sent). Behind NAT this is a private address and `public_ip` should be set.
//! Without a default route fcm falls back to 127.0.0.1 and says so through
//! [`Caddy::public_ip_source`].

use std::ffi::OsStr;
use std::fmt;
use std::fs;
use std::io;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use std::sync::{Mutex, MutexGuard};

use std::time::Duration;

use thiserror::Error;

mod reload;
mod site;

use reload::run_bounded;
pub use site::WakeHook;
use site::{SiteState, check_domain, import_line, render_e2b_site, render_site, with_import_line};

pub use crate::config::CaddyConfig;
use crate::host::{self, HostError};
use crate::names::VmName;

/// `ip route get` answers from the kernel's tables.
const ROUTE_TIMEOUT: Duration = Duration::from_secs(2);
/// Any address outside the host works; the lookup sends nothing to it.
const ROUTE_PROBE: &str = "1.1.1.1";
/// How long Caddy waits for a guest to accept a connection.
pub(super) const DIAL_TIMEOUT: &str = "5s";
/// Mode of the files fcm writes; Debian's caddy service reads them as user caddy.
const SITE_MODE: u32 = 0o644;

#[derive(Debug, Error)]
pub enum CaddyError {
    #[error(
        "refusing to serve the domain {domain:?}: it must be dot-separated labels of [a-z0-9-] (check caddy.domain_suffix)"
    )]
    UnsafeDomain { domain: String },
    #[error(
        "refusing to write a wake hook whose token is not letters and digits, or whose certificate path is not [A-Za-z0-9._/-]"
    )]
    UnsafeWakeHook,
    #[error(
        "the Caddy sites directory {path:?} must be an absolute path of [A-Za-z0-9._/-] characters to be imported"
    )]
    UnsafeSitesDir { path: PathBuf },
    #[error("the main Caddyfile {path} does not exist (is Caddy installed?)")]
    NoCaddyfile { path: PathBuf },
    #[error("could not {action} {path}")]
    Io {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("caddy is not installed (could not run {bin})")]
    NotInstalled {
        bin: PathBuf,
        #[source]
        source: HostError,
    },
    #[error("Caddy rejected the configuration with {site}")]
    Invalid {
        site: PathBuf,
        #[source]
        source: HostError,
    },
    #[error("caddy is not running (reload failed: nothing answers on its admin address {admin})")]
    NotRunning {
        admin: String,
        #[source]
        source: HostError,
    },
    #[error("caddy did not accept the configuration with {site}")]
    Reload {
        site: PathBuf,
        #[source]
        source: HostError,
    },
    #[error("{failure}; then {site} could not be put back as it was")]
    Restore {
        site: PathBuf,
        failure: Box<CaddyError>,
        #[source]
        source: io::Error,
    },
}

/// Where [`Caddy::public_ip`] came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PublicIpSource {
    /// `caddy.public_ip` in the configuration.
    Configured,
    /// The source address of the default route.
    Detected,
    /// Detection was impossible or skipped; the IP is 127.0.0.1.
    Fallback { reason: String },
}

impl fmt::Display for PublicIpSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Configured => f.write_str("set by caddy.public_ip"),
            Self::Detected => f.write_str("detected from the default route"),
            Self::Fallback { reason } => {
                write!(f, "fallback to 127.0.0.1 ({reason}); set caddy.public_ip")
            }
        }
    }
}

/// fcm's handle on Caddy: the configuration, the public IP chosen once, and a
/// lock that serialises changes to the sites directory.
#[derive(Debug)]
pub struct Caddy {
    cfg: CaddyConfig,
    suffix: String,
    public_ip: Ipv4Addr,
    public_ip_source: PublicIpSource,
    lock: Mutex<()>,
}

impl Caddy {
    /// Takes the configuration; detects the public IP when it is not set and
    /// URLs are enabled (one route lookup, bounded by a short timeout).
    pub fn new(cfg: CaddyConfig) -> Self {
        let (public_ip, public_ip_source) = match cfg.public_ip {
            Some(ip) => (ip, PublicIpSource::Configured),
            None if !cfg.enabled => (
                Ipv4Addr::LOCALHOST,
                PublicIpSource::Fallback {
                    reason: "URLs are disabled".into(),
                },
            ),
            None => match detect_public_ip() {
                Ok(ip) => (ip, PublicIpSource::Detected),
                Err(reason) => (Ipv4Addr::LOCALHOST, PublicIpSource::Fallback { reason }),
            },
        };
        let suffix = cfg.domain_suffix.trim_matches('.').to_ascii_lowercase();
        Self {
            cfg,
            suffix,
            public_ip,
            public_ip_source,
            lock: Mutex::new(()),
        }
    }

    /// Whether URLs are on. When they are off, every change is a no-op.
    pub fn enabled(&self) -> bool {
        self.cfg.enabled
    }

    pub fn config(&self) -> &CaddyConfig {
        &self.cfg
    }

    /// The IP written into domains.
    pub fn public_ip(&self) -> Ipv4Addr {
        self.public_ip
    }

    /// Where [`Self::public_ip`] came from; a [`PublicIpSource::Fallback`]
    /// deserves a warning, as URLs with 127.0.0.1 only work on this host.
    pub fn public_ip_source(&self) -> &PublicIpSource {
        &self.public_ip_source
    }

    /// `<name>.<a-b-c-d>.<suffix>`, e.g. `cosmic-nova.64-34-93-45.sslip.io`.
    pub fn domain(&self, name: &VmName) -> String {
        format!("{name}.{}", self.base_domain())
    }

    /// `<a-b-c-d>.<suffix>`, the domain under which every name lives (the
    /// E2B API's `E2B_DOMAIN`).
    pub fn base_domain(&self) -> String {
        let [a, b, c, d] = self.public_ip.octets();
        if self.suffix.is_empty() {
            format!("{a}-{b}-{c}-{d}")
        } else {
            format!("{a}-{b}-{c}-{d}.{}", self.suffix)
        }
    }

    /// The fcm-owned file of the E2B API's site. `_` keeps it apart from
    /// VM names (`[a-z0-9-]`), so pruning VM sites never takes it.
    pub fn e2b_site_path(&self) -> PathBuf {
        self.cfg.sites_dir.join("_e2b.caddy")
    }

    /// Publishes the E2B API ([`render_e2b_site`]): `api.<base domain>` and
    /// `<envd_port>-<sandbox>.<base domain>` proxied to the daemon's API at
    /// `dial` (over TLS trusting `tls_ca` when given). Atomic like a VM's
    /// site: a file Caddy refuses is put back as it was.
    pub fn put_e2b_site(
        &self,
        envd_port: u16,
        dial: SocketAddr,
        tls_ca: Option<&Path>,
    ) -> Result<(), CaddyError> {
        if !self.enabled() {
            return Ok(());
        }
        if tls_ca.is_some_and(|p| import_line(p).is_err()) {
            return Err(CaddyError::UnsafeWakeHook);
        }
        let domain = self.base_domain();
        check_domain(&format!("api.{domain}"))?;
        let content = render_e2b_site(&domain, envd_port, dial, tls_ca);
        self.put_file(&self.e2b_site_path(), &content)
    }

    /// Removes the E2B API's site (E2B through Caddy is not wanted).
    pub fn remove_e2b_site(&self) -> Result<(), CaddyError> {
        self.remove_file(&self.e2b_site_path())
    }

    /// `https://` and [`Self::domain`].
    pub fn url(&self, name: &VmName) -> String {
        format!("https://{}", self.domain(name))
    }

    /// The fcm-owned file of this VM: `<sites_dir>/<name>.caddy`.
    pub fn site_path(&self, name: &VmName) -> PathBuf {
        self.cfg.sites_dir.join(format!("{name}.caddy"))
    }

    /// The line that imports fcm's sites into the main Caddyfile.
    pub fn import_line(&self) -> Result<String, CaddyError> {
        import_line(&self.cfg.sites_dir)
    }

    /// Creates the sites directory and appends the import line to the main
    /// Caddyfile unless a line already reads exactly that (atomic write, mode
    /// and symlinks kept). Does not reload Caddy.
    pub fn ensure_import(&self) -> Result<(), CaddyError> {
        if !self.enabled() {
            return Ok(());
        }
        let _guard = self.lock();
        self.ensure_import_locked()
    }

    /// Makes the URL of a running VM proxy to `<ip>:<guest_port>`.
    pub fn add_site(&self, name: &VmName, ip: Ipv4Addr) -> Result<(), CaddyError> {
        self.add_site_upstream(name, SocketAddr::from((ip, self.cfg.guest_port)))
    }

    /// Like [`Self::add_site`] with any upstream address (tests, or a guest
    /// reached through a forwarded port).
    pub fn add_site_upstream(&self, name: &VmName, upstream: SocketAddr) -> Result<(), CaddyError> {
        self.put_site(name, SiteState::Running { upstream })
    }

    /// Makes the URL of a running VM with idle sleep proxy to
    /// `<ip>:<guest_port>`, each request first waking the VM through
    /// `hook` at `wake_uri` (the VM's `/vms/<id>/wake`).
    pub fn add_waking_site(
        &self,
        name: &VmName,
        ip: Ipv4Addr,
        wake_uri: &str,
        hook: &WakeHook,
    ) -> Result<(), CaddyError> {
        hook.check()?;
        if !wake_uri
            .bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'/')
        {
            return Err(CaddyError::UnsafeWakeHook);
        }
        self.put_site(
            name,
            SiteState::Waking {
                upstream: SocketAddr::from((ip, self.cfg.guest_port)),
                wake_uri,
                hook,
            },
        )
    }

    /// Gives a VM a user paused its static "paused" page.
    pub fn set_paused(&self, name: &VmName) -> Result<(), CaddyError> {
        self.put_site(name, SiteState::Paused)
    }

    /// Switches a VM's site between the static "stopped" page and the proxy to
    /// `<ip>:<guest_port>`.
    pub fn set_stopped(
        &self,
        name: &VmName,
        stopped: bool,
        ip: Ipv4Addr,
    ) -> Result<(), CaddyError> {
        if stopped {
            self.put_site(name, SiteState::Stopped)
        } else {
            self.add_site(name, ip)
        }
    }

    /// Removes a VM's site and reloads; a VM without a site file is fine.
    pub fn remove_site(&self, name: &VmName) -> Result<(), CaddyError> {
        self.remove_file(&self.site_path(name))
    }

    fn remove_file(&self, path: &Path) -> Result<(), CaddyError> {
        if !self.enabled() {
            return Ok(());
        }
        let _guard = self.lock();
        let Some(previous) = read_optional(path)? else {
            return Ok(());
        };
        remove_optional(path)?;
        self.apply_or_restore(path, Some(previous))
    }

    /// The VMs that have a site file, by name.
    pub fn list_sites(&self) -> Result<Vec<VmName>, CaddyError> {
        let dir = &self.cfg.sites_dir;
        let entries = match fs::read_dir(dir) {
            Ok(entries) => entries,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(source) => return Err(io_err("list", dir, source)),
        };
        let mut names = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|source| io_err("list", dir, source))?;
            let file = entry.file_name();
            let Some(stem) = file.to_str().and_then(|f| f.strip_suffix(".caddy")) else {
                continue;
            };
            if let Ok(name) = VmName::parse(stem) {
                names.push(name);
            }
        }
        names.sort();
        Ok(names)
    }

    /// Removes the site files of VMs for which `keep` is false (left behind by
    /// a crash) and reloads once if any went. Returns the names removed. The
    /// files stay removed when the reload fails: their VMs are gone, and a
    /// Caddy that starts later must not serve them.
    pub fn prune_sites(&self, keep: &dyn Fn(&VmName) -> bool) -> Result<Vec<VmName>, CaddyError> {
        if !self.enabled() {
            return Ok(Vec::new());
        }
        let _guard = self.lock();
        let stale: Vec<VmName> = self
            .list_sites()?
            .into_iter()
            .filter(|n| !keep(n))
            .collect();
        for name in &stale {
            remove_optional(&self.site_path(name))?;
        }
        if !stale.is_empty() {
            self.validate_and_reload(&self.cfg.sites_dir)?;
        }
        Ok(stale)
    }

    fn lock(&self) -> MutexGuard<'_, ()> {
        // The lock guards no data, only the order of file changes.
        self.lock
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn ensure_import_locked(&self) -> Result<(), CaddyError> {
        let line = self.import_line()?;
        let main = &self.cfg.caddyfile;
        let text = match fs::read(main) {
            Ok(text) => text,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Err(CaddyError::NoCaddyfile { path: main.clone() });
            }
            Err(source) => return Err(io_err("read", main, source)),
        };
        let dir = &self.cfg.sites_dir;
        fs::create_dir_all(dir).map_err(|source| io_err("create", dir, source))?;
        let Some(new) = with_import_line(&text, &line) else {
            return Ok(());
        };
        // Write through a symlink rather than replacing it, keeping the mode.
        let target = fs::canonicalize(main).map_err(|source| io_err("resolve", main, source))?;
        let mode = fs::metadata(&target)
            .map_err(|source| io_err("inspect", &target, source))?
            .permissions()
            .mode()
            & 0o7777;
        host::write_atomic(&target, &new, mode).map_err(|source| io_err("write", &target, source))
    }

    fn render(&self, name: &VmName, state: SiteState) -> Result<String, CaddyError> {
        let domain = self.domain(name);
        check_domain(&domain)?;
        Ok(render_site(&domain, name, state))
    }

    fn put_site(&self, name: &VmName, state: SiteState) -> Result<(), CaddyError> {
        if !self.enabled() {
            return Ok(());
        }
        let content = self.render(name, state)?;
        self.put_file(&self.site_path(name), &content)
    }

    /// Writes one fcm-owned site file and reloads, or puts it back.
    fn put_file(&self, path: &Path, content: &str) -> Result<(), CaddyError> {
        let _guard = self.lock();
        self.ensure_import_locked()?;
        let previous = read_optional(path)?;
        if previous.as_deref() != Some(content.as_bytes())
            && let Some(source) = self.admin_refused()
        {
            // Caddy is down: fail before the site directory changes at all
            // (housekeeping retries, and must not flicker a file in and out).
            return Err(CaddyError::NotRunning {
                admin: self.cfg.admin.clone(),
                source: HostError::Failed {
                    cmd: format!("connect {}", self.cfg.admin),
                    status: "refused".into(),
                    stderr: source.to_string(),
                },
            });
        }
        if previous.as_deref() == Some(content.as_bytes()) {
            // A site file exists only once Caddy took it (a failed change
            // puts the old one back), so the same content is live already.
            return Ok(());
        }
        host::write_atomic(path, content.as_bytes(), SITE_MODE)
            .map_err(|source| io_err("write", path, source))?;
        self.apply_or_restore(path, previous)
    }

    /// Validates and reloads; on failure puts `site` back to `previous`
    /// (`None`: the file did not exist).
    fn apply_or_restore(&self, site: &Path, previous: Option<Vec<u8>>) -> Result<(), CaddyError> {
        let Err(failure) = self.validate_and_reload(site) else {
            return Ok(());
        };
        let restored = match &previous {
            Some(old) => host::write_atomic(site, old, SITE_MODE),
            None => match fs::remove_file(site) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(()),
            },
        };
        match restored {
            Ok(()) => Err(failure),
            Err(source) => Err(CaddyError::Restore {
                site: site.to_path_buf(),
                failure: Box::new(failure),
                source,
            }),
        }
    }
}

/// The `src` address of `ip -4 route get 1.1.1.1`: the address this host would
/// send from. Only asks the kernel's routing table.
fn detect_public_ip() -> Result<Ipv4Addr, String> {
    let args = [
        OsStr::new("-4"),
        "route".as_ref(),
        "get".as_ref(),
        ROUTE_PROBE.as_ref(),
    ];
    match run_bounded(Path::new("ip"), &args, ROUTE_TIMEOUT) {
        Ok(out) => parse_route_src(&out)
            .ok_or_else(|| format!("no source address in `ip route get`: {}", out.trim())),
        Err(HostError::Failed { stderr, .. }) if !stderr.is_empty() => {
            Err(format!("no route: {stderr}"))
        }
        Err(e) => Err(format!("route lookup failed: {e}")),
    }
}

fn parse_route_src(out: &str) -> Option<Ipv4Addr> {
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word == "src" {
            return words.next()?.parse().ok();
        }
    }
    None
}

fn read_optional(path: &Path) -> Result<Option<Vec<u8>>, CaddyError> {
    match fs::read(path) {
        Ok(data) => Ok(Some(data)),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(io_err("read", path, source)),
    }
}

fn remove_optional(path: &Path) -> Result<(), CaddyError> {
    match fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
        Err(source) => Err(io_err("remove", path, source)),
    }
}

fn io_err(action: &'static str, path: &Path, source: io::Error) -> CaddyError {
    CaddyError::Io {
        action,
        path: path.to_path_buf(),
        source,
    }
}

#[cfg(test)]
mod tests;
