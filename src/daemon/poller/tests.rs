//! The poller on real sockets, with a line protocol for a door: a client
//! sends `secret\n` (the token) and is answered `ok\n` on a thread; a
//! wrong line is answered `no\n`.

use std::io::{self, Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{ClientConfig, ClientConnection, DigitallySignedStruct, SignatureScheme, StreamOwned};

use super::*;
use crate::config::DaemonConfig;
use crate::daemon::gate::{Gate, GateLimits};
use crate::wire::tls::provider;

struct LineDoor {
    /// The input each passed connection had.
    passed: Sender<Vec<u8>>,
    /// Set: answered connections are kept alive.
    keep: Option<(Handback, Arc<Gate>)>,
}

impl Door for LineDoor {
    fn max_input(&self) -> usize {
        64
    }

    fn step(&self, input: &[u8], eof: bool) -> Step {
        let Some(end) = input.iter().position(|&b| b == b'\n') else {
            return if eof || input.len() >= 64 {
                Step::Answer(b"no\n".to_vec())
            } else {
                Step::More
            };
        };
        if &input[..end] != b"secret" {
            return Step::Answer(b"no\n".to_vec());
        }
        let _ = self.passed.send(input.to_vec());
        let keep = self.keep.clone();
        Step::Pass(Box::new(move |mut o: Opened| {
            thread::spawn(move || {
                let rest = o.input.split_off(end + 1);
                let ok = match &mut o.tls {
                    None => (&o.sock).write_all(b"ok\n"),
                    Some(tls) => rustls::Stream::new(tls, &mut o.sock).write_all(b"ok\n"),
                };
                if let (Ok(()), Some((handback, gate))) = (ok, keep)
                    && let Some(slot) = gate.keep_alive()
                {
                    o.input = rest;
                    handback.keep(o, slot);
                }
            });
            Ok(())
        }))
    }

    fn late(&self) -> Option<Vec<u8>> {
        Some(b"late\n".to_vec())
    }

    fn not_tls(&self) -> Vec<u8> {
        b"plain\n".to_vec()
    }

    fn pushed_out(&self) -> Vec<u8> {
        b"out\n".to_vec()
    }
}

fn settings(pre_auth: usize, request_ms: u64) -> Settings {
    Settings {
        pre_auth,
        request: Duration::from_millis(request_ms),
        idle: Duration::from_millis(400),
        kept: 4,
    }
}

/// A poller with the line door on a free port of 127.0.0.1 (its thread
/// ends with the test process); the inputs it passed come on the receiver.
fn start(
    s: Settings,
    tls: Option<Arc<rustls::ServerConfig>>,
    keep: bool,
) -> (SocketAddr, Receiver<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let (handback, returns) = handback(s.kept).expect("poller");
    let gate = Gate::new(GateLimits {
        authed: 8,
        streams: 0,
        kept: s.kept,
    });
    let (passed, rx) = channel();
    let door = LineDoor {
        passed,
        keep: keep.then_some((handback, gate)),
    };
    let server = Server::new("test port", l, tls, door, s, returns).expect("server");
    thread::spawn(move || server.run());
    (addr, rx)
}

fn connect_from(addr: SocketAddr, from: &str) -> TcpStream {
    let sock =
        socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).expect("socket");
    let ip: IpAddr = from.parse().expect("ip");
    sock.bind(&SocketAddr::new(ip, 0).into()).expect("bind");
    sock.connect(&addr.into()).expect("connect");
    let s: TcpStream = sock.into();
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    s
}

/// Everything until EOF (or the read timeout).
fn read_all(mut s: impl Read) -> Vec<u8> {
    let mut out = Vec::new();
    let mut buf = [0u8; 256];
    loop {
        match s.read(&mut buf) {
            Ok(0) | Err(_) => return out,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
}

/// Whether the connection is still open and silent for `ms`.
fn still_open(s: &TcpStream, ms: u64) -> bool {
    s.set_read_timeout(Some(Duration::from_millis(ms)))
        .expect("timeout");
    let mut b = [0u8; 16];
    let open = matches!(
        (&*s).read(&mut b),
        Err(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut)
    );
    s.set_read_timeout(Some(Duration::from_secs(3)))
        .expect("timeout");
    open
}

#[test]
fn a_request_split_in_many_packets_is_read_whole() {
    let (addr, passed) = start(settings(16, 5000), None, false);
    let mut c = connect_from(addr, "127.0.0.1");
    for b in b"secret\n" {
        c.write_all(&[*b]).expect("write");
        thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(read_all(&c), b"ok\n");
    assert_eq!(
        passed.recv_timeout(Duration::from_secs(1)).expect("passed"),
        b"secret\n"
    );
    // A wrong one is answered and closed; one sent early is whole too.
    let mut c = connect_from(addr, "127.0.0.1");
    c.write_all(b"guess\n").expect("write");
    assert_eq!(read_all(&c), b"no\n");
    let mut c = connect_from(addr, "127.0.0.1");
    c.write_all(b"secret\n").expect("write");
    assert_eq!(read_all(&c), b"ok\n");
}

#[test]
fn when_full_the_oldest_is_pushed_out_whatever_its_address() {
    let (addr, _passed) = start(settings(3, 10_000), None, false);
    let held: Vec<TcpStream> = ["127.0.0.2", "127.0.0.1", "127.0.0.3"]
        .iter()
        .map(|from| {
            let mut c = connect_from(addr, from);
            c.write_all(b"sec").expect("write");
            // Admitted in this order.
            thread::sleep(Duration::from_millis(100));
            c
        })
        .collect();
    // A fourth, from the same address as the second: the first goes.
    let mut d = connect_from(addr, "127.0.0.1");
    d.write_all(b"secret\n").expect("write");
    assert_eq!(read_all(&d), b"ok\n");
    assert_eq!(read_all(&held[0]), b"out\n");
    assert!(still_open(&held[1], 200) && still_open(&held[2], 200));
    // The fourth has left the budget with its token: the next newcomer
    // fills it again, the one after pushes out the next oldest.
    let _e = connect_from(addr, "127.0.0.4");
    assert!(still_open(&held[1], 200));
    let _f = connect_from(addr, "127.0.0.4");
    assert_eq!(read_all(&held[1]), b"out\n");
    assert!(still_open(&held[2], 200));
}

#[test]
fn the_deadline_ends_idle_and_trickling_clients_and_blocks_nobody() {
    let (addr, _passed) = start(settings(16, 400), None, false);
    let t0 = Instant::now();
    let idle = connect_from(addr, "127.0.0.1");
    let trickle = connect_from(addr, "127.0.0.1");
    let trickler = {
        let mut t = trickle.try_clone().expect("clone");
        thread::spawn(move || {
            for _ in 0..40 {
                if t.write_all(b"s").is_err() {
                    return;
                }
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    // Meanwhile a prompt client is served at once.
    let mut c = connect_from(addr, "127.0.0.1");
    c.write_all(b"secret\n").expect("write");
    assert_eq!(read_all(&c), b"ok\n");
    assert!(
        t0.elapsed() < Duration::from_millis(300),
        "{:?}",
        t0.elapsed()
    );
    assert_eq!(read_all(&idle), b"late\n");
    let took = t0.elapsed();
    assert!(
        took >= Duration::from_millis(400) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    // A byte every 50 ms does not stretch it.
    assert_eq!(read_all(&trickle), b"late\n");
    assert!(t0.elapsed() < Duration::from_millis(1500));
    let _ = trickler.join();
}

/// A client that trusts any certificate (the pin is fcm's client's
/// business; this tests the server's side).
#[derive(Debug)]
struct AnyCert;

impl ServerCertVerifier for AnyCert {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        Ok(ServerCertVerified::assertion())
    }
    fn verify_tls12_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn verify_tls13_signature(
        &self,
        _: &[u8],
        _: &CertificateDer<'_>,
        _: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Ok(HandshakeSignatureValid::assertion())
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}

fn tls_client(addr: SocketAddr) -> StreamOwned<ClientConnection, TcpStream> {
    let cfg = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .expect("versions")
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(AnyCert))
        .with_no_client_auth();
    let name = ServerName::try_from("localhost").expect("name");
    let conn = ClientConnection::new(Arc::new(cfg), name).expect("client");
    StreamOwned::new(conn, connect_from(addr, "127.0.0.1"))
}

fn server_tls() -> (tempfile::TempDir, Arc<rustls::ServerConfig>) {
    let dir = tempfile::tempdir().expect("tempdir");
    let cfg = DaemonConfig {
        state_dir: dir.path().to_owned(),
        ..Default::default()
    };
    let id = crate::daemon::tls::ensure_identity(&cfg).expect("identity");
    (dir, id.server_config().expect("server config"))
}

#[test]
fn tls_handshakes_run_without_blocking_and_plain_clients_are_told() {
    let (_dir, cfg) = server_tls();
    let (addr, _passed) = start(settings(16, 3000), Some(cfg), false);
    // A client stalled in the middle of its ClientHello...
    let mut stalled = connect_from(addr, "127.0.0.1");
    stalled.write_all(&[0x16, 0x03, 0x01, 0x00]).expect("write");
    // ...and one that only connects: neither holds up a whole handshake.
    let _silent = connect_from(addr, "127.0.0.1");
    let t0 = Instant::now();
    let mut c = tls_client(addr);
    c.write_all(b"secret\n").expect("write");
    let mut got = [0u8; 3];
    c.read_exact(&mut got).expect("read");
    assert_eq!(&got, b"ok\n");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());
    // A wrong token is answered inside TLS.
    let mut c = tls_client(addr);
    c.write_all(b"guess\n").expect("write");
    assert_eq!(read_all(&mut c), b"no\n");
    // A plain client on the TLS port is told so in plain text.
    let mut p = connect_from(addr, "127.0.0.1");
    p.write_all(b"secret\n").expect("write");
    assert_eq!(read_all(&p), b"plain\n");
    // The stalled one is cut at the deadline, without a word (it cannot
    // read one before its handshake).
    stalled
        .set_read_timeout(Some(Duration::from_secs(8)))
        .expect("timeout");
    assert_eq!(read_all(&stalled), b"");
    assert!(t0.elapsed() < Duration::from_secs(4), "{:?}", t0.elapsed());
}

#[test]
fn kept_alive_connections_come_back_and_time_out_when_idle() {
    let (addr, passed) = start(settings(16, 3000), None, true);
    let mut c = connect_from(addr, "127.0.0.1");
    let mut got = [0u8; 3];
    for _ in 0..3 {
        c.write_all(b"secret\n").expect("write");
        c.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ok\n");
    }
    // Two requests in one write: the second is read from what came back.
    c.write_all(b"secret\nsecret\n").expect("write");
    let mut two = [0u8; 6];
    c.read_exact(&mut two).expect("read");
    assert_eq!(&two, b"ok\nok\n");
    assert_eq!(passed.try_iter().count(), 5);
    // Idle past its time: closed.
    let t0 = Instant::now();
    assert_eq!(read_all(&c), b"");
    assert!(t0.elapsed() < Duration::from_secs(2), "{:?}", t0.elapsed());

    // The same under TLS: the session goes back and forth.
    let (_dir, cfg) = server_tls();
    let (addr, _passed) = start(settings(16, 3000), Some(cfg), true);
    let mut c = tls_client(addr);
    for _ in 0..3 {
        c.write_all(b"secret\n").expect("write");
        c.read_exact(&mut got).expect("read");
        assert_eq!(&got, b"ok\n");
    }
}
