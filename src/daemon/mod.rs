//! `fcm daemon`: owns the VMs. HTTP API on 127.0.0.1:7777 (bearer token),
//! terminal streaming on :7778.

pub mod api;
pub mod manager;

use std::fs::{self, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;
use std::sync::Arc;
use std::thread;
use std::time::Duration;

use rand::Rng;
use thiserror::Error;

use crate::caddy::Caddy;
use crate::config::{ConfigError, DaemonConfig};
use crate::host;
use crate::network::{self, NetworkError};
use crate::sessions::Sessions;
use crate::stream;
use api::{ApiError, MAX_BODY};
use manager::{Manager, ManagerError, chain};

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
}

const WORKERS: usize = 16;

/// Reads or creates the API token (32 random alphanumerics, mode 0600).
pub fn ensure_token(path: &Path) -> std::io::Result<String> {
    if let Ok(t) = fs::read_to_string(path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            return Ok(t);
        }
    }
    // rand's ThreadRng is a CSPRNG seeded from the OS.
    let token: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    host::write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(token)
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
    // SAFETY: flock on an fd we own; no memory is passed.
    let rc = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
    if rc != 0 {
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

pub fn run(cfg: DaemonConfig) -> Result<(), DaemonError> {
    if !host::is_root() {
        return Err(DaemonError::NotRoot);
    }
    cfg.validate()?;
    let sd = cfg.state_dir.clone();
    fs::create_dir_all(&sd).map_err(|source| DaemonError::StateDir {
        path: sd.display().to_string(),
        source,
    })?;
    let _lock = take_lock(&sd)?;
    let token = ensure_token(&cfg.token_path()).map_err(|source| DaemonError::StateDir {
        path: cfg.token_path().display().to_string(),
        source,
    })?;
    network::setup(&cfg)?;

    let caddy = if cfg.caddy.enabled {
        let c = Caddy::new(cfg.caddy.clone());
        if let crate::caddy::PublicIpSource::Fallback { .. } = c.public_ip_source() {
            eprintln!("fcm: warning: public IP for URLs: {}", c.public_ip_source());
        }
        if let Err(e) = c.ensure_import() {
            eprintln!("fcm: warning: public URLs will not be live: {}", chain(&e));
        }
        Some(c)
    } else {
        None
    };
    let cfg = Arc::new(cfg);
    let manager = Arc::new(Manager::new(Arc::clone(&cfg), caddy)?);
    manager.prune_sites();
    let sessions = Arc::new(Sessions::new());
    let token = Arc::new(token);

    let server = tiny_http::Server::http(cfg.listen).map_err(|e| DaemonError::Listen {
        addr: cfg.listen.to_string(),
        message: e.to_string(),
    })?;
    let stream_listener =
        std::net::TcpListener::bind(cfg.stream_listen).map_err(|e| DaemonError::Listen {
            addr: cfg.stream_listen.to_string(),
            message: e.to_string(),
        })?;
    eprintln!(
        "fcm daemon: API on http://{} (token in {}), terminals on {}, backend {}, state in {}",
        cfg.listen,
        cfg.token_path().display(),
        cfg.stream_listen,
        manager.backend().as_str(),
        cfg.state_dir.display()
    );

    {
        let m = Arc::clone(&manager);
        thread::spawn(move || {
            loop {
                thread::sleep(Duration::from_secs(5));
                m.tick();
            }
        });
    }
    {
        let (m, s, t) = (
            Arc::clone(&manager),
            Arc::clone(&sessions),
            Arc::clone(&token),
        );
        thread::spawn(move || stream::serve(stream_listener, m, s, t));
    }

    let server = Arc::new(server);
    let workers: Vec<_> = (0..WORKERS)
        .map(|_| {
            let (srv, m, s, t) = (
                Arc::clone(&server),
                Arc::clone(&manager),
                Arc::clone(&sessions),
                Arc::clone(&token),
            );
            thread::spawn(move || {
                while let Ok(req) = srv.recv() {
                    serve_one(req, &m, &s, &t);
                }
            })
        })
        .collect();
    for w in workers {
        let _ = w.join();
    }
    Ok(())
}

fn serve_one(mut req: tiny_http::Request, m: &Manager, s: &Sessions, token: &str) {
    let method = req.method().as_str().to_owned();
    let url = req.url().to_owned();
    let result = (|| {
        let route = api::route(&method, &url)?;
        if route != api::Route::Health {
            let auth = req
                .headers()
                .iter()
                .find(|h| h.field.equiv("Authorization"))
                .map(|h| h.value.as_str().to_owned());
            match api::bearer(auth.as_deref()) {
                Some(t) if api::token_matches(t, token) => {}
                Some(_) => return Err(ApiError::new(401, "invalid token").with_hint(TOKEN_HINT)),
                None => {
                    return Err(ApiError::new(401, "missing bearer token").with_hint(TOKEN_HINT));
                }
            }
        }
        if req.body_length().is_some_and(|n| n > MAX_BODY) {
            return Err(ApiError::new(
                413,
                format!("request body is larger than {MAX_BODY} bytes"),
            ));
        }
        let mut body = Vec::new();
        req.as_reader()
            .take(MAX_BODY as u64 + 1)
            .read_to_end(&mut body)
            .map_err(|e| ApiError::new(400, format!("could not read the request body: {e}")))?;
        if body.len() > MAX_BODY {
            return Err(ApiError::new(
                413,
                format!("request body is larger than {MAX_BODY} bytes"),
            ));
        }
        api::handle(m, s, route, &body)
    })();
    let (status, body) = match result {
        Ok(r) => (r.status, r.body),
        Err(e) => {
            if e.status >= 500 {
                eprintln!("fcm daemon: {method} {url}: {}", e.message);
            }
            (e.status, e.body())
        }
    };
    let mut data = body.to_string();
    data.push('\n');
    let header = tiny_http::Header::from_bytes(&b"Content-Type"[..], &b"application/json"[..]);
    let mut resp = tiny_http::Response::from_string(data).with_status_code(status);
    if let Ok(h) = header {
        resp = resp.with_header(h);
    }
    // The client may have gone away; nothing to do about it.
    let _ = req.respond(resp);
}

const TOKEN_HINT: &str = "set FCM_TOKEN or copy the daemon's <state>/.token to ~/.fcm-token";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".token");
        let a = ensure_token(&p).expect("token");
        let b = ensure_token(&p).expect("token");
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }

    #[test]
    fn second_lock_is_refused() {
        let dir = tempfile::tempdir().expect("tempdir");
        let _a = take_lock(dir.path()).expect("first");
        let e = take_lock(dir.path()).expect_err("second must fail");
        assert!(e.to_string().contains("another fcm daemon"), "{e}");
    }
}
