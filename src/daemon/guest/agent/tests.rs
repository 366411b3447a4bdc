//! The daemon's end of the agent protocol against fake agents on a Unix
//! socket (where QEMU's port would be): a well-behaved one, and hostile
//! ones that send garbage, giant frames, nothing at all, output beyond
//! their credit, or close the channel. The daemon must come out unharmed:
//! clear errors within deadlines, nothing buffered beyond a window.

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::Arc;
use std::thread;
use std::time::{Duration, Instant};

use fcm_proto::{self as proto, FromAgent, Next, ToAgent};

use super::super::{ExecSpec, Guest, GuestError, Target, output};
use super::{AgentGuest, AgentGuests};
use crate::host::vmm::AgentChannel;
use crate::names::{VmId, VmName};

/// A fake agent's behaviour, given the daemon's stream.
type Behaviour = fn(UnixStream);

struct Fake {
    _dir: tempfile::TempDir,
    target: Target,
}

/// Listens where the VM's port would be; each connection is handed to
/// `behave` on a thread of its own.
fn fake(behave: Behaviour) -> Fake {
    let dir = tempfile::tempdir().expect("tempdir");
    let path: PathBuf = dir.path().join("agent.sock");
    let l = UnixListener::bind(&path).expect("bind");
    thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            thread::spawn(move || behave(c));
        }
    });
    Fake {
        target: Target {
            id: VmId::parse("t3st0000").expect("id"),
            name: VmName::parse("fake").expect("name"),
            ip: "127.0.0.1".parse().expect("ip"),
            dir: dir.path().to_owned(),
            agent: Some(AgentChannel::Serial(path)),
        },
        _dir: dir,
    }
}

fn send(s: &mut UnixStream, m: &FromAgent) -> bool {
    proto::frame(m)
        .ok()
        .is_some_and(|f| s.write_all(&f).is_ok())
}

/// Reads messages from the daemon, calling `on` for each; returns when
/// the daemon closes or `on` says stop.
fn serve(mut s: UnixStream, mut on: impl FnMut(&mut UnixStream, ToAgent) -> bool) {
    let mut dec = proto::Decoder::new();
    let mut buf = vec![0u8; 65536];
    loop {
        let room = dec.room().min(buf.len());
        let n = match s.read(&mut buf[..room]) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        dec.push(&buf[..n]);
        loop {
            match dec.decode::<ToAgent>() {
                Next::More => break,
                Next::Unknown => {}
                Next::Message(m) => {
                    if !on(&mut s, m) {
                        return;
                    }
                }
            }
        }
    }
}

/// Answers hellos and pings; runs `sh -c` commands for real on the host
/// (only `echo`-like test programs).
fn honest(s: UnixStream) {
    serve(s, |s, m| {
        match m {
            ToAgent::Hello { session, .. } => {
                send(
                    s,
                    &FromAgent::Hello {
                        version: proto::VERSION,
                        session,
                        agent: "fake".into(),
                    },
                );
            }
            ToAgent::Ping { id } => {
                send(s, &FromAgent::Pong { id, uptime_ms: 1 });
            }
            ToAgent::Exec(e) => {
                let out = std::process::Command::new(&e.argv[0])
                    .args(&e.argv[1..])
                    .output();
                let Ok(out) = out else {
                    return send(
                        s,
                        &FromAgent::Failed {
                            id: e.id,
                            failure: proto::Failure {
                                kind: proto::FailKind::NotFound,
                                message: format!("no program {}", e.argv[0]),
                            },
                        },
                    );
                };
                send(s, &FromAgent::Started { id: e.id, pid: 1 });
                send(
                    s,
                    &FromAgent::Stdout {
                        id: e.id,
                        data: out.stdout,
                    },
                );
                send(
                    s,
                    &FromAgent::Stderr {
                        id: e.id,
                        data: out.stderr,
                    },
                );
                send(
                    s,
                    &FromAgent::Exited {
                        id: e.id,
                        code: out.status.code(),
                        signal: None,
                        timed_out: false,
                    },
                );
            }
            _ => {}
        }
        true
    })
}

fn hello_then(s: &mut UnixStream) -> Option<ToAgent> {
    let mut got = None;
    let mut dec = proto::Decoder::new();
    let mut buf = [0u8; 4096];
    while got.is_none() {
        let n = s.read(&mut buf).ok().filter(|n| *n > 0)?;
        dec.push(&buf[..n]);
        while let Next::Message(m) = dec.decode::<ToAgent>() {
            if let ToAgent::Hello { session, .. } = m {
                send(
                    s,
                    &FromAgent::Hello {
                        version: proto::VERSION,
                        session,
                        agent: "hostile".into(),
                    },
                );
                got = Some(m);
            }
        }
    }
    got
}

fn exec_spec(argv: &[&str]) -> ExecSpec {
    ExecSpec {
        argv: argv.iter().map(|s| (*s).to_owned()).collect(),
        timeout: Some(Duration::from_secs(30)),
        ..ExecSpec::default()
    }
}

fn guest(f: &Fake) -> AgentGuest {
    AgentGuest::new(f.target.clone(), Arc::new(AgentGuests::new()))
}

#[test]
fn an_honest_agent_runs_programs_and_a_missing_one_is_127() {
    let f = fake(honest);
    let g = guest(&f);
    assert!(g.wait_ready(Duration::from_secs(5)));
    let o = output(
        &g,
        &exec_spec(&["sh", "-c", "echo out; echo err >&2; exit 3"]),
        b"",
        1 << 20,
    )
    .expect("exec");
    assert_eq!(
        (o.exit.code, o.stdout.as_slice(), o.stderr.as_slice()),
        (3, &b"out\n"[..], &b"err\n"[..])
    );
    let o = output(&g, &exec_spec(&["no-such-program-here"]), b"", 1 << 20).expect("exec");
    assert_eq!(o.exit.code, 127);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no program"));
}

#[test]
fn a_silent_agent_is_a_clear_error_in_time() {
    let f = fake(|s| {
        // Reads and never answers.
        let mut s = s;
        let _ = std::io::copy(&mut s, &mut std::io::sink());
    });
    let g = guest(&f);
    let t = Instant::now();
    assert!(!g.wait_ready(Duration::from_secs(2)));
    assert!(t.elapsed() < Duration::from_secs(4));
    let e = g.exec(&exec_spec(&["true"])).err().expect("no answer");
    assert!(matches!(e, GuestError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("did not answer"), "{e}");
}

#[test]
fn an_agent_that_reads_nothing_is_a_clear_error_in_time() {
    let f = fake(|s| {
        // Holds its end and never reads: the daemon's writes fill it.
        thread::sleep(Duration::from_secs(15));
        drop(s);
    });
    let g = guest(&f);
    let t = Instant::now();
    let e = g.exec(&exec_spec(&["true"])).err().expect("no answer");
    assert!(matches!(e, GuestError::Unreachable { .. }), "{e}");
    assert!(e.to_string().contains("did not answer"), "{e}");
    assert!(
        t.elapsed() < super::HELLO_TIMEOUT + Duration::from_secs(1),
        "{:?}",
        t.elapsed()
    );
}

#[test]
fn garbage_and_giant_frames_never_make_a_session() {
    let f = fake(|mut s| {
        // A flood: random bytes, then headers announcing giant frames.
        let junk: Vec<u8> = (0..1 << 20).map(|i| (i * 7919 % 251) as u8).collect();
        let mut giant = vec![0xFC, 0xA9, 0xff, 0xff, 0xff, 0x0f, 0, 0, 0, 0];
        giant.extend(vec![0u8; 1 << 16]);
        let until = Instant::now() + Duration::from_secs(4);
        while Instant::now() < until {
            if s.write_all(&junk).is_err() || s.write_all(&giant).is_err() {
                return;
            }
        }
    });
    let g = guest(&f);
    let t = Instant::now();
    assert!(!g.wait_ready(Duration::from_secs(2)));
    assert!(t.elapsed() < Duration::from_secs(5));
}

#[test]
fn output_beyond_the_credit_breaks_only_that_connection() {
    let f = fake(|mut s| {
        if hello_then(&mut s).is_none() {
            return;
        }
        // Whatever is asked: endless output, no heed of credit.
        let mut dec = proto::Decoder::new();
        let mut buf = [0u8; 4096];
        let id = loop {
            let Ok(n) = s.read(&mut buf) else { return };
            if n == 0 {
                return;
            }
            dec.push(&buf[..n]);
            if let Next::Message(ToAgent::Exec(e)) = dec.decode::<ToAgent>() {
                break e.id;
            }
        };
        send(&mut s, &FromAgent::Started { id, pid: 1 });
        let chunk = vec![b'x'; proto::CHUNK];
        for _ in 0..1000 {
            if !send(
                &mut s,
                &FromAgent::Stdout {
                    id,
                    data: chunk.clone(),
                },
            ) {
                return;
            }
        }
    });
    let g = guest(&f);
    let mut p = g.exec(&exec_spec(&["yes"])).expect("started");
    // The daemon's consumer reads slowly: the flood must not pile up.
    let mut out = p.stdout().expect("stdout");
    thread::sleep(Duration::from_millis(500));
    let mut all = Vec::new();
    let read = out.read_to_end(&mut all);
    assert!(
        read.is_err() || all.len() <= (proto::WINDOW as usize) * 2,
        "{} bytes taken from an agent beyond its credit",
        all.len()
    );
    let e = p.wait().expect_err("protocol broken");
    assert!(
        e.to_string().contains("credit") || e.to_string().contains("window"),
        "{e}"
    );
}

#[test]
fn a_channel_closed_mid_operation_fails_it_cleanly() {
    let f = fake(|mut s| {
        if hello_then(&mut s).is_none() {
            return;
        }
        thread::sleep(Duration::from_millis(300));
        // Gone, with an exec under way.
    });
    let g = guest(&f);
    let t = Instant::now();
    let e = g.exec(&exec_spec(&["sleep", "9"])).err().expect("closed");
    assert!(matches!(e, GuestError::Unreachable { .. }), "{e}");
    assert!(t.elapsed() < Duration::from_secs(10));
}

#[test]
fn an_agent_too_old_is_named() {
    let f = fake(|mut s| {
        let mut dec = proto::Decoder::new();
        let mut buf = [0u8; 4096];
        loop {
            let Ok(n) = s.read(&mut buf) else { return };
            if n == 0 {
                return;
            }
            dec.push(&buf[..n]);
            if let Next::Message(ToAgent::Hello { session, .. }) = dec.decode::<ToAgent>() {
                send(
                    &mut s,
                    &FromAgent::Hello {
                        version: 0,
                        session,
                        agent: "fcm-agent 0.0.1".into(),
                    },
                );
            }
        }
    });
    let g = guest(&f);
    let e = g.exec(&exec_spec(&["true"])).err().expect("too old");
    let m = e.to_string();
    assert!(m.contains("protocol 0") && m.contains("next boot"), "{m}");
}
