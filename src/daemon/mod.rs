//! `fcm daemon`: owns the VMs. HTTP API on 127.0.0.1:7777 (bearer token),
//! terminal streaming on 127.0.0.1:7778; TLS on both when either listens
//! beyond loopback (or `tls` is `on`).
//!
//! | module | owns |
//! |---|---|
//! | `http` | the HTTP transport: fcm's own bounded HTTP/1.1 server, token check |
//! | `poller` | each port's pre-authentication phase: one thread, non-blocking (accept, TLS, request, token), kept-alive connections |
//! | `gate` | slots of authenticated connections: requests, streams, consoles, kept-alive |
//! | `tls` | the daemon's certificate (made on first run) and TLS settings |
//! | `api` | `(method, path)` → typed route; handlers; error → status |
//! | `auth` | the token file and constant-time comparison |
//! | `manager` | the VM table and every VM operation |
//! | `events` | state changes and operations as they happen (`GET /events`), operation numbers |
//! | `metrics` | the sampler of VM resource use; `/stats`, `/metrics` |
//! | `lifecycle` | VM states and the transitions every operation goes through |
//! | `store` | the per-VM record `<state>/<id>/config.json` |
//! | `sessions` | tmux sessions in guests; attached-stream registry |
//! | `guest` | exec, files and archives in a running guest over the daemon's SSH |
//! | `stream` | the terminal-stream server (port 7778) |

pub mod api;
pub mod auth;
pub mod cluster;
pub mod e2b;
pub mod events;
pub mod fault;
pub mod gate;
pub mod guest;
pub mod http;
pub mod lifecycle;
pub mod manager;
pub mod metrics;
pub mod poller;
pub mod sessions;
pub mod store;
pub mod stream;
pub mod tls;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::thread;
use std::time::{Duration, Instant};

use thiserror::Error;

use crate::config::{ConfigError, DaemonConfig};
use crate::error::chain;
use crate::host;
use crate::host::caddy::{Caddy, PublicIpSource, WakeHook};
use crate::host::network::{self, NetworkError};
use manager::{Manager, ManagerError, Pass};
use sessions::Sessions;

#[derive(Debug, Error)]
pub enum DaemonError {
    #[error("fcm daemon must run as root (it creates tap devices, bridges and nftables rules)")]
    NotRoot,
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("another fcm daemon already owns {0}")]
    Locked(String),
    #[error("could not prepare the state dir {path}")]
    StateDir {
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Network(#[from] NetworkError),
    #[error(transparent)]
    Manager(#[from] ManagerError),
    #[error("could not listen on {addr}: {message}")]
    Listen { addr: String, message: String },
    #[error(
        "refusing to listen on {0} without TLS: the API token and keystrokes would cross the network in clear text"
    )]
    PlainBeyondLoopback(std::net::SocketAddr),
    #[error(transparent)]
    Tls(#[from] tls::TlsError),
    #[error("could not handle termination signals")]
    Signals(#[source] std::io::Error),
    #[error(transparent)]
    Cluster(#[from] cluster::ClusterError),
    #[error("the HTTP API stopped serving")]
    Stopped,
}

/// How long SIGTERM waits for operations under way to reach a recorded
/// state (a clean stop can take `stop_timeout_secs`, 20 s by default).
const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Ends the daemon on SIGTERM or SIGINT: new operations are refused, those
/// under way get [`SHUTDOWN_GRACE`] to reach a recorded state, then the
/// daemon exits 0. VMs keep running; the next daemon adopts them.
fn handle_signals(m: Arc<Manager>) -> Result<(), DaemonError> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals =
        signal_hook::iterator::Signals::new([SIGTERM, SIGINT]).map_err(DaemonError::Signals)?;
    thread::Builder::new()
        .name("fcm-signals".into())
        .spawn(move || {
            if let Some(sig) = signals.forever().next() {
                eprintln!(
                    "fcm daemon: signal {sig}: shutting down (VMs keep running); waiting up to {} s for operations under way",
                    SHUTDOWN_GRACE.as_secs()
                );
                let finished = m.shut_down(SHUTDOWN_GRACE);
                if let Some(c) = m.cluster() {
                    c.leave();
                }
                if finished {
                    eprintln!("fcm daemon: every operation reached a recorded state; exiting");
                } else {
                    eprintln!(
                        "fcm daemon: operations still under way after {} s; recovery will finish or undo them",
                        SHUTDOWN_GRACE.as_secs()
                    );
                }
                std::process::exit(0);
            }
        })
        .map_err(DaemonError::Signals)?;
    Ok(())
}

impl DaemonError {
    /// What the user should do next.
    pub fn hint(&self) -> Option<String> {
        match self {
            Self::NotRoot => Some("run it with sudo: sudo fcm daemon".into()),
            Self::Locked(_) => Some("stop the other daemon, or use another --state-dir".into()),
            Self::PlainBeyondLoopback(_) => Some(
                "drop `\"tls\": \"off\"` (or --tls off): beyond loopback TLS is used by default; or listen on 127.0.0.1 and reach it through ssh -L"
                    .into(),
            ),
            Self::Cluster(e) => e.hint(),
            _ => None,
        }
    }
}

/// Locks a mutex, ignoring poison: a panic in one request must not take
/// the daemon's shared state down with it.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Takes the state dir's lock for the life of the process.
fn take_lock(state_dir: &Path) -> Result<fs::File, DaemonError> {
    let path = state_dir.join(".lock");
    let mut f = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .mode(0o600)
        .open(&path)
        .map_err(|source| DaemonError::StateDir {
            path: path.display().to_string(),
            source,
        })?;
    let locked = host::fs::try_lock_exclusive(&f).map_err(|source| DaemonError::StateDir {
        path: path.display().to_string(),
        source,
    })?;
    if !locked {
        let mut pid = String::new();
        let _ = f.read_to_string(&mut pid);
        let who = pid.trim();
        let what = if who.is_empty() {
            state_dir.display().to_string()
        } else {
            format!("{} (pid {who})", state_dir.display())
        };
        return Err(DaemonError::Locked(what));
    }
    let _ = f.set_len(0);
    let _ = writeln!(f, "{}", std::process::id());
    Ok(f)
}

fn start_caddy(cfg: &DaemonConfig) -> Option<Caddy> {
    if !cfg.caddy.enabled {
        return None;
    }
    let c = Caddy::new(cfg.caddy.clone());
    if let PublicIpSource::Fallback { .. } = c.public_ip_source() {
        eprintln!("fcm: warning: public IP for URLs: {}", c.public_ip_source());
    }
    if let Err(e) = c.ensure_import() {
        eprintln!("fcm: warning: public URLs will not be live: {}", chain(&e));
    }
    Some(c)
}

/// The taps, MACs and addresses of every VM with a valid record, so the
/// policy installed at start-up already holds the rules of VMs that kept
/// running while no daemon ran. Recovery then re-asserts them for the VMs it
/// keeps and removes them with the taps it releases.
fn recorded_nics(cfg: &DaemonConfig) -> Vec<network::VmNic> {
    store::scan(&cfg.state_dir)
        .map(|found| {
            found
                .into_iter()
                .filter_map(|(id, rec)| rec.ok().filter(|r| r.id == id))
                .map(|r| r.nic())
                .collect()
        })
        .unwrap_or_default()
}

/// The fingerprint of the daemon's certificate (made now if there is none),
/// for `fcm daemon --print-fingerprint`.
pub fn fingerprint(cfg: &DaemonConfig) -> Result<String, DaemonError> {
    fs::create_dir_all(&cfg.state_dir).map_err(|source| DaemonError::StateDir {
        path: cfg.state_dir.display().to_string(),
        source,
    })?;
    Ok(tls::ensure_identity(cfg)?.fingerprint)
}

/// How Caddy reaches the API to wake a VM: the API's port on loopback
/// (the API listens there, or on every address), the wake-only token, and,
/// when the API speaks TLS, the daemon's certificate copied beside the
/// sites for Caddy to trust. `None` (a warning) when Caddy cannot reach it.
fn wake_hook(cfg: &DaemonConfig, caddy: &Caddy, use_tls: bool, token: &str) -> Option<WakeHook> {
    let ip = cfg.listen.ip();
    let dial = match ip {
        _ if ip.is_loopback() => cfg.listen,
        std::net::IpAddr::V4(v4) if v4.is_unspecified() => {
            std::net::SocketAddr::from(([127, 0, 0, 1], cfg.listen.port()))
        }
        std::net::IpAddr::V6(v6) if v6.is_unspecified() => {
            std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, cfg.listen.port()))
        }
        _ => cfg.listen,
    };
    let tls_ca = if use_tls {
        let dst = caddy.config().sites_dir.join("fcm-daemon-cert.pem");
        let copied = fs::create_dir_all(&caddy.config().sites_dir)
            .and_then(|()| fs::read(cfg.tls_dir().join("cert.pem")))
            .and_then(|pem| host::write_atomic(&dst, &pem, 0o644));
        if let Err(e) = copied {
            eprintln!(
                "fcm: warning: idle sleep: a request to a sleeping VM's URL will not wake it \
                 (could not copy the daemon's certificate to {}: {e})",
                dst.display()
            );
            return None;
        }
        Some(dst)
    } else {
        None
    };
    Some(WakeHook {
        dial,
        token: token.to_owned(),
        tls_ca,
    })
}

/// Pending connections the kernel may hold for a port before the poller
/// accepts them (clamped by `net.core.somaxconn`).
const BACKLOG: i32 = 4096;

fn bind(addr: std::net::SocketAddr) -> Result<std::net::TcpListener, DaemonError> {
    use socket2::{Domain, Socket, Type};
    let listen = || -> std::io::Result<std::net::TcpListener> {
        let s = Socket::new(Domain::for_address(addr), Type::STREAM, None)?;
        s.set_reuse_address(true)?;
        s.bind(&addr.into())?;
        s.listen(BACKLOG)?;
        Ok(s.into())
    };
    listen().map_err(|e| DaemonError::Listen {
        addr: addr.to_string(),
        message: e.to_string(),
    })
}

/// Descriptors the connection limits may hold at once: every
/// pre-authentication and kept-alive connection of both ports, every
/// request and stream (a stream or console also holds pipes, a pty, an
/// ssh), and room for the VMs' own (disk locks, logs, QMP, agents).
fn descriptors_needed(l: &crate::config::Limits) -> u64 {
    let n = |v: usize| v as u64;
    2 * n(l.pre_auth_connections)
        + n(l.http_keepalive)
        + 2 * n(l.http_requests)
        + 8 * (n(l.http_streams) + n(l.stream_connections))
        + 1024
}

/// Raises the open-file limit to what the connection limits need (root
/// may raise the hard limit too, up to `fs.nr_open`), and says so.
fn raise_fd_limit(l: &crate::config::Limits) {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let need = descriptors_needed(l);
    let old = getrlimit(Resource::Nofile);
    let cur = old.current.unwrap_or(u64::MAX);
    if cur >= need {
        eprintln!("fcm daemon: open files: limit {cur}, the connection limits need {need}");
        return;
    }
    let nr_open = fs::read_to_string("/proc/sys/fs/nr_open")
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(need);
    let hard = old.maximum.unwrap_or(u64::MAX);
    let set = |current: u64, maximum: u64| {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: Some(current),
                maximum: Some(maximum),
            },
        )
        .map(|()| current)
    };
    // The hard limit too if it is lower (needs CAP_SYS_RESOURCE), else up
    // to the hard limit.
    let max = hard.max(need.min(nr_open));
    let set = set(need.min(max), max).or_else(|e| {
        if hard > cur {
            set(need.min(hard), hard)
        } else {
            Err(e)
        }
    });
    match set {
        Ok(new) if new >= need => eprintln!(
            "fcm daemon: open files: limit raised from {cur} to {new} for the connection limits (docs/config.md, limits)"
        ),
        Ok(new) => eprintln!(
            "fcm daemon: warning: open files: limit raised from {cur} to {new} only, below the {need} the connection limits need; under a flood the daemon may run out of descriptors"
        ),
        Err(e) => eprintln!(
            "fcm daemon: warning: open files: limit {cur} is below the {need} the connection limits need, and could not be raised ({e}); under a flood the daemon may run out of descriptors"
        ),
    }
}

pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    if !host::is_root() {
        return Err(DaemonError::NotRoot);
    }
    cfg.validate()?;
    let use_tls = cfg.tls_active().map_err(DaemonError::PlainBeyondLoopback)?;
    let sd = cfg.state_dir.clone();
    fs::create_dir_all(&sd).map_err(|source| DaemonError::StateDir {
        path: sd.display().to_string(),
        source,
    })?;
    // Nothing of the state dir is anyone else's business.
    host::set_mode(&sd, 0o700).map_err(|source| DaemonError::StateDir {
        path: sd.display().to_string(),
        source,
    })?;
    let _lock = take_lock(&sd)?;
    let token = auth::ensure_token(&cfg.token_path()).map_err(|source| DaemonError::StateDir {
        path: cfg.token_path().display().to_string(),
        source,
    })?;
    network::setup(&cfg, &recorded_nics(&cfg))?;

    let wake_token =
        auth::ensure_token(&cfg.wake_token_path()).map_err(|source| DaemonError::StateDir {
            path: cfg.wake_token_path().display().to_string(),
            source,
        })?;
    // A Prometheus scraper's token: `GET /metrics` only (docs/metrics.md).
    let metrics_token =
        auth::ensure_token(&cfg.metrics_token_path()).map_err(|source| DaemonError::StateDir {
            path: cfg.metrics_token_path().display().to_string(),
            source,
        })?;
    // The certificate is made on every first run, TLS or not, so that
    // `--print-fingerprint` and a later switch to TLS find the same one.
    let identity = tls::ensure_identity(&cfg)?;
    // A cluster (docs/cluster.md): a host that may not join stops here;
    // etcd out of reach only delays the join.
    let cluster = Arc::new(cluster::Cluster::new(
        &cfg,
        &identity.fingerprint,
        use_tls,
        &token,
    )?);
    cluster.join_at_start()?;

    let caddy = start_caddy(&cfg);
    let hook = caddy
        .as_ref()
        .filter(|c| c.enabled())
        .and_then(|c| wake_hook(&cfg, c, use_tls, &wake_token));
    // E2B through Caddy reaches the API as the wake hook does.
    let e2b_site = hook
        .as_ref()
        .filter(|_| cfg.e2b.caddy)
        .map(|h| e2b::Upstream {
            dial: h.dial,
            tls_ca: h.tls_ca.clone(),
        });
    let cfg = Arc::new(cfg);
    // The VMs on record, as recorded: recovery runs once the API serves.
    let manager = Arc::new(Manager::new(Arc::clone(&cfg), caddy, hook)?);
    manager.set_handle();
    {
        let weak = Arc::downgrade(&manager);
        cluster.set_vms(move || weak.upgrade().map(|m| m.list()).unwrap_or_default());
        let weak = Arc::downgrade(&manager);
        cluster.set_images(move || {
            weak.upgrade()
                .and_then(|m| m.images().ok())
                .map(|l| l.into_iter().map(|i| i.name).collect())
                .unwrap_or_default()
        });
        manager.set_cluster(cluster);
    }
    let sessions = Arc::new(Sessions::new());
    let token = Arc::new(token);

    let server_tls = if use_tls {
        Some(identity.server_config()?)
    } else {
        None
    };
    raise_fd_limit(&cfg.limits);
    if cfg.limits.pre_auth_per_peer.is_some() {
        eprintln!(
            "fcm daemon: limits.pre_auth_per_peer is no longer used (ignored): strangers share one large budget per port, the oldest pushed out first"
        );
    }
    let api_listener = bind(cfg.listen)?;
    let stream_listener = bind(cfg.stream_listen)?;
    let scheme = if use_tls { "https" } else { "http" };
    eprintln!(
        "fcm daemon: API on {scheme}://{} (token in {}), terminals on {}{}, backend {}, state in {}",
        cfg.listen,
        cfg.token_path().display(),
        cfg.stream_listen,
        if use_tls { " (TLS)" } else { "" },
        manager.backend().as_str(),
        cfg.state_dir.display()
    );
    eprintln!(
        "fcm daemon: TLS certificate fingerprint {}{}",
        identity.fingerprint,
        if use_tls {
            ""
        } else {
            " (not in use: loopback only)"
        }
    );

    handle_signals(Arc::clone(&manager))?;
    {
        // Every VM on record brought in line with the host, one at a time,
        // while the API serves (an operation on a VM not yet reached waits);
        // then the warm-create template, loaded or made by booting a hidden
        // VM (after recovery, which removes taps and agent drives of no VM).
        let m = Arc::clone(&manager);
        thread::spawn(move || {
            m.recover();
            m.prune_sites();
            if std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| m.prepare_template()))
                .is_err()
            {
                eprintln!("fcm daemon: making the template panicked (a bug); creates boot cold");
            }
        });
    }
    metrics::start(Arc::clone(&manager));
    let e2b = Arc::new(e2b::E2b::new(
        Arc::clone(&manager),
        Arc::clone(&sessions),
        Arc::clone(&token),
        e2b_site,
    ));
    {
        let m = Arc::clone(&manager);
        let e2b = Arc::clone(&e2b);
        thread::spawn(move || {
            // E2B's site first (Caddy's validate and reload take a moment).
            e2b.publish_site();
            let mut trimmed = Instant::now();
            loop {
                m.wait_for_work(Duration::from_secs(5));
                let began = Instant::now();
                // A bug in housekeeping must not end housekeeping.
                let tick = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    m.tick();
                    // E2B sandboxes past their timeout end.
                    e2b.expire();
                    e2b.publish_site();
                }));
                if tick.is_err() {
                    eprintln!("fcm daemon: housekeeping panicked (a bug); it goes on");
                }
                if trimmed.elapsed() >= Duration::from_secs(30) {
                    // Freed memory back to the kernel, so that RSS follows
                    // what the daemon holds, not what it once held.
                    host::process::trim_heap();
                    trimmed = Instant::now();
                }
                m.note_pass(Pass::Housekeeping, began.elapsed());
            }
        });
    }
    {
        let (m, s) = (Arc::clone(&manager), Arc::clone(&sessions));
        thread::spawn(move || {
            loop {
                thread::sleep(Duration::from_secs(1));
                let began = Instant::now();
                let tick = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    m.idle_tick(&|id| s.attached_to(id.as_str()));
                }));
                if tick.is_err() {
                    eprintln!("fcm daemon: idle sleep panicked (a bug); it goes on");
                }
                m.note_pass(Pass::Idle, began.elapsed());
            }
        });
    }
    {
        let (m, s, t, tls, limits) = (
            Arc::clone(&manager),
            Arc::clone(&sessions),
            Arc::clone(&token),
            server_tls.clone(),
            cfg.limits.clone(),
        );
        thread::spawn(move || {
            let e = stream::serve(stream_listener, tls, &limits, m, s, t);
            // The terminal port cannot serve any more: exit, so that a
            // supervisor restarts the daemon (VMs keep running).
            eprintln!("fcm daemon: the terminal port stopped serving: {e}");
            std::process::exit(1);
        });
    }
    let e = http::serve(
        api_listener,
        server_tls,
        &cfg.limits,
        manager,
        sessions,
        token,
        Some(Arc::new(wake_token)),
        Some(Arc::new(metrics_token)),
        e2b,
    );
    // The poller only returns when it fails: the daemon cannot serve.
    eprintln!("fcm daemon: the API port stopped serving: {e}");
    Err(DaemonError::Stopped)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = take_lock(dir.path()).expect("first");
        let e = take_lock(dir.path()).expect_err("second must fail");
        assert!(e.to_string().contains("another fcm daemon"), "{e}");
    }
}
