//! Several hosts, one fcm (docs/cluster.md): this host's membership of a
//! cluster kept in etcd. The host registers a record (address, certificate
//! fingerprint, capacity, load) and a key under a lease it keeps alive from
//! a thread; a host whose lease expired is `dead`. The disk stays the truth
//! of what runs here: a daemon that loses etcd serves its own VMs and says
//! so (`GET /health`, `GET /hosts`), and rejoins when etcd is back.
//!
//! | file | what |
//! |---|---|
//! | `etcd.rs` | the synchronous JSON client of etcd's v3 API |
//! | `join.rs` | joining: the name, subnet, bridge and token claimed in transactions |
//! | `capacity.rs` | what the host has, what its VMs take |
//! | `forward.rs` | requests for another host's VM forwarded there (pinned TLS); placement |
//! | `placement.rs` | where a create goes: free memory, images, reservations |
//! | `vms.rs` | the VMs' records mirrored to etcd, their names claimed, every host's VMs listed |

mod capacity;
pub mod etcd;
mod forward;
mod join;
mod placement;
mod vms;

pub use forward::{FORWARDED_HEADER, Owner, mark_host, splice};
pub use placement::{PlaceError, Reservation};
pub use vms::ClaimError;

use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use thiserror::Error;

use super::lock;
use crate::config::{ClusterConfig, DaemonConfig};
use crate::wire::api::VmView;
use crate::wire::cluster::{ClusterStatus, HostRecord, HostView, HostsResponse};
use etcd::{Etcd, EtcdError};

#[derive(Debug, Error)]
pub enum ClusterError {
    /// etcd answered, and this host may not join as configured.
    #[error("this host may not join the cluster: {message}")]
    Refused { message: String, hint: String },
    #[error("cluster: {0}")]
    Setup(String),
    #[error(transparent)]
    Etcd(#[from] EtcdError),
}

impl ClusterError {
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::Refused { hint, .. } => Some(hint.clone()),
            _ => None,
        }
    }
}

pub(crate) fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The keys of one cluster in etcd.
struct Keys(String);

impl Keys {
    fn host(&self, name: &str) -> String {
        format!("{}hosts/{name}", self.0)
    }
    fn hosts(&self) -> String {
        format!("{}hosts/", self.0)
    }
    fn alive(&self, name: &str) -> String {
        format!("{}alive/{name}", self.0)
    }
    fn alives(&self) -> String {
        format!("{}alive/", self.0)
    }
    fn claims(&self) -> String {
        format!("{}claims/", self.0)
    }
    fn claim(&self, what: &str, value: &str) -> String {
        format!("{}claims/{what}/{}", self.0, value.replace('/', "_"))
    }
    fn token(&self) -> String {
        format!("{}token-sha256", self.0)
    }
}

/// This daemon's link to etcd.
struct Link {
    state: &'static str,
    message: Option<String>,
    since: u64,
    /// The lease of this host's `alive` key; 0 while not joined.
    lease: i64,
    /// The hosts as last listed (shown as `unknown` while etcd is unreachable).
    seen: Vec<HostView>,
}

type LoadFn = Box<dyn Fn() -> Vec<VmView> + Send + Sync>;
type ImagesFn = Box<dyn Fn() -> Vec<String> + Send + Sync>;

pub struct Cluster {
    cfg: ClusterConfig,
    state_dir: PathBuf,
    keys: Keys,
    /// `None`: a single host (no `--cluster`).
    etcd: Option<Etcd>,
    /// This host's record; the load refreshed before each write.
    me: Mutex<HostRecord>,
    link: Mutex<Link>,
    /// SHA-256 (hex) of the API token: every host of a cluster has the same.
    token_digest: String,
    /// The token itself, presented to the host a request is forwarded to.
    token: String,
    /// This host's VMs (the manager's listing), once the manager exists.
    vms: OnceLock<LoadFn>,
    /// This host's images' names, once the manager exists.
    images: OnceLock<ImagesFn>,
    /// Memory reserved by creates placed from here (placement.rs).
    reserved: Mutex<Vec<placement::Held>>,
    /// What this host last wrote of its VMs to etcd.
    mirror: Mutex<vms::Mirror>,
    /// Wakes the keep-alive thread early (a VM's record changed).
    wake: (Mutex<bool>, Condvar),
}

impl Cluster {
    /// This host as a member (or, without endpoints, alone). Nothing is
    /// sent yet: [`Self::join_at_start`] does.
    pub fn new(
        cfg: &DaemonConfig,
        fingerprint: &str,
        tls: bool,
        token: &str,
    ) -> Result<Self, ClusterError> {
        let c = &cfg.cluster;
        // A single host never fails on its name or id: they only matter
        // in a cluster.
        let name = match (&c.host_name, c.enabled()) {
            (Some(n), _) => n.clone(),
            (None, true) => join::machine_name()?,
            (None, false) => join::machine_name().unwrap_or_else(|_| "localhost".into()),
        };
        let advertise = match c.advertise {
            Some(a) => a,
            None if cfg.cluster.enabled() && cfg.listen.ip().is_unspecified() => {
                return Err(ClusterError::Setup(format!(
                    "the API listens on {}: give the address other hosts reach it at (--advertise IP:PORT)",
                    cfg.listen
                )));
            }
            None => cfg.listen,
        };
        let stream = std::net::SocketAddr::new(advertise.ip(), cfg.stream_listen.port());
        let capacity = capacity::capacity(c, &cfg.state_dir);
        let started = unix_now();
        let me = HostRecord {
            host_id: if c.enabled() {
                join::host_id(&cfg.state_dir)?
            } else {
                String::new()
            },
            name,
            address: advertise.to_string(),
            stream_address: stream.to_string(),
            tls,
            fingerprint: fingerprint.to_owned(),
            subnet: cfg.subnet_cidr(),
            bridge: cfg.bridge.clone(),
            load: capacity::load(&capacity, &cfg.state_dir, &[]),
            capacity,
            version: env!("CARGO_PKG_VERSION").into(),
            started,
            updated: started,
            images: Vec::new(),
        };
        let etcd = c
            .enabled()
            .then(|| Etcd::new(&c.endpoints, Duration::from_millis(c.request_timeout_ms)));
        Ok(Self {
            keys: Keys(c.prefix.clone()),
            cfg: c.clone(),
            state_dir: cfg.state_dir.clone(),
            etcd,
            me: Mutex::new(me),
            link: Mutex::new(Link {
                state: if c.enabled() { "joining" } else { "off" },
                message: None,
                since: started,
                lease: 0,
                seen: Vec::new(),
            }),
            token_digest: join::digest(token),
            token: token.trim().to_owned(),
            vms: OnceLock::new(),
            images: OnceLock::new(),
            reserved: Mutex::new(Vec::new()),
            mirror: Mutex::new(vms::Mirror::default()),
            wake: (Mutex::new(false), Condvar::new()),
        })
    }

    pub fn enabled(&self) -> bool {
        self.etcd.is_some()
    }

    pub fn name(&self) -> String {
        lock(&self.me).name.clone()
    }

    /// Where the load comes from: the manager's listing of this host's VMs.
    pub fn set_vms(&self, f: impl Fn() -> Vec<VmView> + Send + Sync + 'static) {
        let _ = self.vms.set(Box::new(f));
    }

    /// Where the image names of this host's record come from.
    pub fn set_images(&self, f: impl Fn() -> Vec<String> + Send + Sync + 'static) {
        let _ = self.images.set(Box::new(f));
    }

    /// This host's VMs now (none before the manager is set).
    fn local_vms(&self) -> Vec<VmView> {
        self.vms.get().map(|f| f()).unwrap_or_default()
    }

    /// This host's record with its load now.
    fn fresh(&self) -> HostRecord {
        self.fresh_with(&self.local_vms())
    }

    fn fresh_with(&self, vms: &[VmView]) -> HostRecord {
        // Read before the record is locked (the manager's image store).
        let images = self.images.get().map(|f| f());
        let mut me = lock(&self.me);
        me.load = capacity::load(&me.capacity, &self.state_dir, vms);
        if let Some(images) = images {
            me.images = images;
        }
        me.updated = unix_now();
        me.clone()
    }

    fn set_state(&self, state: &'static str, message: Option<String>) {
        let mut l = lock(&self.link);
        if l.state != state {
            match (state, &message) {
                ("connected", _) => eprintln!(
                    "fcm daemon: cluster: {} as {} (lease {} s)",
                    if l.state == "joining" {
                        "joined"
                    } else {
                        "reachable again: rejoined"
                    },
                    lock(&self.me).name,
                    self.cfg.lease_ttl_secs
                ),
                (_, Some(m)) => eprintln!(
                    "fcm daemon: cluster {state}: {m}; this host's VMs are served as usual"
                ),
                _ => {}
            }
            l.since = unix_now();
        }
        l.state = state;
        l.message = message;
    }

    /// Joins at start-up: a refusal (name, subnet, bridge or token taken)
    /// ends the daemon; etcd out of reach does not (the keep-alive thread
    /// joins once it answers).
    pub fn join_at_start(self: &Arc<Self>) -> Result<(), ClusterError> {
        let Some(etcd) = &self.etcd else {
            return Ok(());
        };
        match self.join(etcd) {
            Ok(()) => {}
            Err(e @ ClusterError::Refused { .. }) => return Err(e),
            Err(e) => self.set_state("unreachable", Some(crate::error::chain(&e))),
        }
        let me = Arc::clone(self);
        thread::Builder::new()
            .name("fcm-cluster".into())
            .spawn(move || me.keep_alive_loop())
            .map_err(|e| ClusterError::Setup(format!("could not start its thread: {e}")))?;
        Ok(())
    }

    fn keep_alive_loop(&self) {
        let Some(etcd) = &self.etcd else {
            return;
        };
        let every = Duration::from_millis((self.cfg.lease_ttl_secs * 1000 / 3).max(500));
        loop {
            let lease = lock(&self.link).lease;
            let vms = self.local_vms();
            let r = if lease == 0 {
                self.join(etcd)
            } else {
                match etcd.keep_alive(lease) {
                    // Expired: cut off longer than the lease. Join anew.
                    Ok(0) => {
                        eprintln!(
                            "fcm daemon: cluster: this host's lease expired while etcd was out of reach; joining again"
                        );
                        lock(&self.link).lease = 0;
                        self.join(etcd)
                    }
                    Ok(_) => etcd
                        .put(&self.keys.host(&self.name()), &self.record_json(&vms), 0)
                        .map_err(ClusterError::from)
                        .map(|()| self.set_state("connected", None)),
                    Err(e) => Err(e.into()),
                }
            };
            // Joined: the VMs' records and names in line with the disk.
            let r = r.and_then(|()| self.reconcile(etcd, &vms).map_err(ClusterError::from));
            match r {
                Ok(()) => {}
                Err(ClusterError::Refused { message, .. }) => {
                    self.set_state("refused", Some(message));
                }
                Err(e) => self.set_state("unreachable", Some(crate::error::chain(&e))),
            }
            self.sleep(every);
        }
    }

    /// Waits `d`, or less if [`Self::nudge`]d (but at least a moment, so
    /// a burst of changes makes one pass).
    fn sleep(&self, d: Duration) {
        thread::sleep(Duration::from_millis(200));
        let (flag, cv) = &self.wake;
        let mut woken = lock(flag);
        if !*woken {
            woken = cv
                .wait_timeout(woken, d)
                .map(|(g, _)| g)
                .unwrap_or_else(|p| p.into_inner().0);
        }
        *woken = false;
    }

    /// A VM's record changed: mirror it now rather than at the next beat.
    pub fn nudge(&self) {
        if self.etcd.is_some() {
            let (flag, cv) = &self.wake;
            *lock(flag) = true;
            cv.notify_one();
        }
    }

    fn record_json(&self, vms: &[VmView]) -> Vec<u8> {
        serde_json::to_vec(&self.fresh_with(vms)).unwrap_or_default()
    }

    /// One word and why, for `GET /health`: `None` for a single host.
    pub fn health(&self) -> Option<String> {
        self.etcd.as_ref()?;
        let l = lock(&self.link);
        Some(match (&l.state, &l.message) {
            (s, Some(m)) => format!("{s}: {m}"),
            (s, None) => (*s).to_owned(),
        })
    }

    pub fn status(&self) -> ClusterStatus {
        let l = lock(&self.link);
        ClusterStatus {
            state: l.state.into(),
            host: lock(&self.me).name.clone(),
            message: l.message.clone(),
            since: l.since,
        }
    }

    /// `GET /hosts`: every host with its state; this host alone without a
    /// cluster; the hosts as last seen (`unknown`) while etcd is out of reach.
    pub fn hosts(&self) -> HostsResponse {
        let me = HostView {
            record: self.fresh(),
            state: "live".into(),
        };
        let Some(etcd) = &self.etcd else {
            return HostsResponse {
                cluster: self.status(),
                hosts: vec![me],
            };
        };
        // Out of reach: the keep-alive thread retries; a listing answers
        // at once from what was last seen rather than wait for etcd.
        let connected = lock(&self.link).state == "connected";
        let listed = if connected {
            self.list_hosts(etcd)
        } else {
            Err(EtcdError::Unreachable("not connected".into()))
        };
        match listed {
            Ok(hosts) => {
                lock(&self.link).seen = hosts.clone();
                HostsResponse {
                    cluster: self.status(),
                    hosts,
                }
            }
            Err(e) => {
                if lock(&self.link).state == "connected" {
                    self.set_state("unreachable", Some(crate::error::chain(&e)));
                }
                let mut hosts: Vec<HostView> = lock(&self.link)
                    .seen
                    .iter()
                    .filter(|h| h.record.name != me.record.name)
                    .map(|h| HostView {
                        record: h.record.clone(),
                        state: "unknown".into(),
                    })
                    .collect();
                hosts.push(me);
                hosts.sort_by(|a, b| a.record.name.cmp(&b.record.name));
                HostsResponse {
                    cluster: self.status(),
                    hosts,
                }
            }
        }
    }

    fn list_hosts(&self, etcd: &Etcd) -> Result<Vec<HostView>, EtcdError> {
        let records = etcd.list(&self.keys.hosts())?;
        let alive = etcd.list(&self.keys.alives())?;
        let mut out = Vec::new();
        for kv in records {
            // A record another host wrote is untrusted input: skip what does not parse.
            let Ok(record) = serde_json::from_slice::<HostRecord>(&kv.value) else {
                continue;
            };
            let live = alive.iter().any(|a| {
                a.key == self.keys.alive(&record.name) && a.value == record.host_id.as_bytes()
            });
            out.push(HostView {
                record,
                state: if live { "live" } else { "dead" }.into(),
            });
        }
        Ok(out)
    }

    /// Leaves the cluster on a clean shutdown: the lease revoked, so the
    /// host shows `dead` at once rather than after the lease time.
    pub fn leave(&self) {
        let lease = std::mem::take(&mut lock(&self.link).lease);
        if let (Some(etcd), true) = (&self.etcd, lease != 0) {
            let _ = etcd.revoke(lease);
        }
    }
}
