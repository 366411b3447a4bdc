//! Forwarding a request to the host that owns its VM (docs/cluster.md):
//! over TLS, accepting only the certificate whose fingerprint that host
//! registered in etcd, presenting the cluster's token; the answer is
//! handed back as it came. Placement: the live host with the most free
//! memory.

use std::io::Read;
use std::sync::Arc;
use std::time::Duration;

use rustls::pki_types::ServerName;
use serde_json::Value;

use super::Cluster;
use crate::wire::api::VmView;
use crate::wire::cluster::{HostRecord, HostView};
use crate::wire::pin::{self, Pin};
use crate::wire::tls::{DeadlineStream, Link, TlsLink, handshake};

/// The header a forwarded request carries (the host it came from): a
/// host never forwards such a request again.
pub const FORWARDED_HEADER: &str = "X-Fcm-Forwarded";
/// The largest answer taken from another host (an exec's output is at most
/// 1 MiB per stream, base64).
const MAX_ANSWER: u64 = 16 << 20;

/// Accepts exactly one certificate: the one a host registered.
#[derive(Debug)]
struct Registered(String);

impl Pin for Registered {
    fn accept(&self, presented: String) -> Result<(), String> {
        if presented == self.0 {
            Ok(())
        } else {
            Err("the host's certificate is not the one it registered in the cluster".into())
        }
    }
}

/// A TLS client configuration that trusts only `fingerprint`.
pub fn pinned_config(fingerprint: &str) -> Result<Arc<rustls::ClientConfig>, String> {
    pin::client_config(Arc::new(Registered(fingerprint.to_owned()))).map_err(|e| e.to_string())
}

/// A VM in an answer (an object with `id` and `state`) says which host it
/// is on, unless it already does.
pub fn mark_host(v: &mut Value, host: &str) {
    if let Some(o) = v.as_object_mut()
        && o.contains_key("id")
        && o.contains_key("state")
        && !o.contains_key("host")
    {
        o.insert("host".into(), Value::String(host.to_owned()));
    }
}

/// Where a VM is, as the cluster sees it.
pub enum Owner {
    /// On a live host: forward there.
    Live(Box<HostRecord>),
    /// On a host whose lease expired.
    Dead(String),
}

impl Cluster {
    /// The other host that has VM `vm` (a name or an id), if any.
    pub fn owner_of(&self, vm: &str) -> Option<Owner> {
        let me = self.name();
        let found: Vec<VmView> = self
            .list_vms(Vec::new())
            .into_iter()
            .filter(|v| (v.name == vm || v.id == vm) && v.host.as_deref() != Some(me.as_str()))
            .collect();
        let v = found.first()?;
        let host = v.host.clone()?;
        if v.state == "unreachable" {
            return Some(Owner::Dead(host));
        }
        match self.host(&host) {
            Some(h) if h.state == "live" => Some(Owner::Live(Box::new(h.record))),
            _ => Some(Owner::Dead(host)),
        }
    }

    /// One host of the cluster, as listed now.
    pub fn host(&self, name: &str) -> Option<HostView> {
        self.hosts()
            .hosts
            .into_iter()
            .find(|h| h.record.name == name)
    }

    /// Sends `method target` with `body` to `host` as this host's client:
    /// the answer's status and JSON body.
    pub fn forward(
        &self,
        host: &HostRecord,
        method: &str,
        target: &str,
        body: &[u8],
        timeout: Duration,
    ) -> Result<(u16, Value), String> {
        let mut agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(timeout)
            .timeout_write(Duration::from_secs(60));
        let scheme = if host.tls {
            agent = agent.tls_config(pinned_config(&host.fingerprint)?);
            "https"
        } else {
            "http"
        };
        let url = format!("{scheme}://{}{target}", host.address);
        let req = agent
            .build()
            .request(method, &url)
            .set("Authorization", &format!("Bearer {}", self.token))
            .set(FORWARDED_HEADER, &self.name())
            .set("Content-Type", "application/json");
        let resp = match req.send_bytes(body) {
            Ok(r) => r,
            Err(ureq::Error::Status(_, r)) => r,
            Err(e) => return Err(format!("host {} at {}: {e}", host.name, host.address)),
        };
        let status = resp.status();
        let mut text = Vec::new();
        resp.into_reader()
            .take(MAX_ANSWER)
            .read_to_end(&mut text)
            .map_err(|e| format!("host {}: reading its answer: {e}", host.name))?;
        let mut v: Value = serde_json::from_slice(&text)
            .map_err(|e| format!("host {}: its answer is not JSON: {e}", host.name))?;
        mark_host(&mut v, &host.name);
        Ok((status, v))
    }
}

impl Cluster {
    /// A connection to `host`'s API port for a relayed stream: TLS with the
    /// certificate it registered (plain for a host without TLS); connect
    /// and handshake within 10 s.
    pub fn connect(&self, host: &HostRecord) -> Result<Link, String> {
        connect_at(host, &host.address)
    }

    /// The same to its terminal-stream port (a console relayed there).
    pub fn connect_stream(&self, host: &HostRecord) -> Result<Link, String> {
        connect_at(host, &host.stream_address)
    }
}

/// Copies both ways between `down` (the client) and `up` (the owner), one
/// thread each way, until either side ends; then closes both.
pub fn splice(down: Link, up: Link) {
    use std::sync::atomic::{AtomicBool, Ordering};
    for l in [&down, &up] {
        crate::wire::stream::keepalive(l.sock(), Duration::from_secs(20), Duration::from_secs(5));
        let _ = l.sock().set_read_timeout(Some(IDLE_TURN));
        let _ = l.sock().set_write_timeout(Some(IDLE_TURN));
    }
    let done = Arc::new(AtomicBool::new(false));
    let upward = {
        let (from, to, done) = (down.clone(), up.clone(), Arc::clone(&done));
        std::thread::Builder::new()
            .name("fcm-relay-up".into())
            .spawn(move || {
                pump(from, to.clone(), &done);
                // The client finished sending: the owner reads the end.
                let _ = to.sock().shutdown(std::net::Shutdown::Write);
            })
    };
    if upward.is_err() {
        down.shutdown();
        up.shutdown();
        return;
    }
    pump(up.clone(), down.clone(), &done);
    done.store(true, Ordering::Release);
    down.close_notify();
    let _ = down.sock().shutdown(std::net::Shutdown::Both);
    up.shutdown();
}

/// How long one side may stay silent before its read gives up a turn (a
/// relay ends when a side closes, or after a whole day idle).
const IDLE_TURN: Duration = Duration::from_secs(60);
const IDLE_MAX_TURNS: u32 = 24 * 60;

/// Copies `from` to `to` until `from` ends (or fails, or the other
/// direction ended and `from` stays idle).
fn pump(mut from: Link, mut to: Link, done: &std::sync::atomic::AtomicBool) {
    use std::io::Write;
    let mut buf = vec![0u8; 64 * 1024];
    let mut idle = 0;
    loop {
        match from.read(&mut buf) {
            Ok(0) => return,
            Ok(n) => {
                idle = 0;
                if to.write_all(&buf[..n]).is_err() {
                    return;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) && !done.load(std::sync::atomic::Ordering::Acquire)
                    && idle < IDLE_MAX_TURNS =>
            {
                idle += 1;
            }
            Err(_) => return,
        }
    }
}

fn connect_at(host: &HostRecord, address: &str) -> Result<Link, String> {
    let addr: std::net::SocketAddr = address
        .parse()
        .map_err(|_| format!("host {} has no valid address ({address})", host.name))?;
    let sock = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5))
        .map_err(|e| format!("host {} at {addr}: {e}", host.name))?;
    let _ = sock.set_nodelay(true);
    if !host.tls {
        return Ok(Link::Plain(Arc::new(sock)));
    }
    let cfg = pinned_config(&host.fingerprint)?;
    let name = ServerName::IpAddress(addr.ip().into());
    let mut conn = rustls::ClientConnection::new(cfg, name)
        .map_err(|e| format!("host {}: TLS: {e}", host.name))?;
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut io = DeadlineStream::new(sock.try_clone().map_err(|e| e.to_string())?, Some(deadline));
    handshake(&mut conn, &mut io).map_err(|e| format!("host {}: TLS: {e}", host.name))?;
    Ok(Link::Tls(TlsLink::new(
        rustls::Connection::Client(conn),
        sock,
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pinned_config_is_made() {
        assert!(pinned_config(&format!("sha256:{}", "a".repeat(64))).is_ok());
    }
}
