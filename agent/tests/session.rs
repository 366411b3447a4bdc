//! Sessions and robustness: nothing before `Hello`, garbage and cut frames
//! between messages, random bytes and nonsense messages, a closed stream.

mod common;

use common::{Daemon, Noise, exec};
use fcm_agent::Config;
use fcm_proto::{FromAgent, ToAgent, VERSION, frame};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

#[test]
fn nothing_is_done_before_hello() {
    let mut d = Daemon::connect(Config::default());
    d.send(&ToAgent::Ping { id: 1 });
    let mut e = exec(&["touch", "/tmp/fcm-agent-must-not-exist"]);
    e.id = 2;
    d.send(&ToAgent::Exec(e));
    assert!(d.recv(Duration::from_millis(300)).is_none());
    d.hello(5);
    d.ping();
    assert!(!std::path::Path::new("/tmp/fcm-agent-must-not-exist").exists());
}

#[test]
fn garbage_and_cut_frames_between_messages_cost_nothing() {
    let mut d = Daemon::start();
    let ping = frame(&ToAgent::Ping { id: 1 }).expect("frame");
    d.raw(b"\x00\xffgarbage\xfc\xa9\xfc");
    d.raw(&ping[..ping.len() - 3]); // cut short
    d.ping();
    let mut bad = frame(&ToAgent::Ping { id: 2 }).expect("frame");
    let last = bad.len() - 1;
    bad[last] ^= 0x40; // checksum broken
    d.raw(&bad);
    // A length that claims more than a frame can hold.
    d.raw(&[0xFC, 0xA9, 0xff, 0xff, 0xff, 0x0f, 1, 2, 3, 4]);
    d.ping();
    assert!(d.silent_for(2, Duration::from_millis(100)));
    // A frame from a newer daemon: skipped whole.
    let payload = [77u8, 1, 2, 3];
    let mut unknown = vec![0xFC, 0xA9];
    unknown.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    unknown.extend_from_slice(&crc32(&payload).to_le_bytes());
    unknown.extend_from_slice(&payload);
    d.raw(&unknown);
    let r = d.run(exec(&["echo", "still"]));
    assert_eq!(r.out(), "still\n");
}

/// CRC-32 (IEEE), as the frames use.
fn crc32(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &b in bytes {
        crc ^= u32::from(b);
        for _ in 0..8 {
            crc = (crc >> 1) ^ (0xEDB8_8320 & (crc & 1).wrapping_neg());
        }
    }
    !crc
}

/// Messages that mean nothing sensible but harm nothing (no path a
/// write, remove or rename could reach).
fn nonsense(n: &mut Noise) -> ToAgent {
    let id = n.below(6);
    let paths = [
        "",
        "\0",
        "/nonexistent/x",
        "/proc/self/status",
        "relative/none",
        "/dev/null",
    ];
    let path = paths[n.below(paths.len() as u64) as usize].to_string();
    let bad = ["", "a\0b"][n.below(2) as usize].to_string();
    match n.below(22) {
        0 => ToAgent::Data {
            id,
            data: n.some(3000),
        },
        1 => ToAgent::End { id },
        2 => ToAgent::Credit {
            id,
            bytes: n.next() as u32,
        },
        3 => ToAgent::Resize {
            id,
            cols: n.next() as u16,
            rows: n.next() as u16,
        },
        4 => ToAgent::Signal {
            id,
            signal: n.below(80) as i32 - 5,
        },
        5 => ToAgent::Cancel { id },
        6 => ToAgent::Stat { id, path },
        7 => ToAgent::List { id, path },
        8 => ToAgent::ReadFile { id, path },
        9 => ToAgent::ReadTree { id, path },
        10 => ToAgent::Exec(fcm_proto::Exec {
            id,
            argv: [
                vec![],
                vec!["true".into()],
                vec!["/nonexistent".into()],
                vec![bad.clone()],
            ][n.below(4) as usize]
                .clone(),
            env: vec![(bad.clone(), "x".into())]
                .into_iter()
                .take(n.below(2) as usize)
                .collect(),
            cwd: None,
            user: [None, Some(bad.clone()), Some("99999999999".into())][n.below(3) as usize]
                .clone(),
            tty: None,
            timeout_ms: Some(n.below(50)),
        }),
        11 => ToAgent::Mkdir {
            id,
            path: bad,
            parents: true,
        },
        12 => ToAgent::Remove {
            id,
            path: bad,
            recursive: true,
        },
        13 => ToAgent::Rename {
            id,
            from: bad.clone(),
            to: bad,
        },
        14 => ToAgent::WriteFile {
            id,
            path: bad,
            mode: n.next() as u32,
        },
        15 => ToAgent::WriteTree { id, path: bad },
        16 => ToAgent::SetClock {
            id,
            unix_secs: n.next() as i64,
            nanos: n.next() as u32,
        },
        17 => ToAgent::Freeze {
            id,
            watchdog_secs: 1,
        },
        18 => ToAgent::Thaw { id },
        19 => ToAgent::Reseed {
            id,
            entropy: n.some(100),
        },
        20 => ToAgent::Hello {
            version: n.next() as u32,
            session: n.next(),
        },
        _ => ToAgent::Ping { id },
    }
}

#[test]
fn random_bytes_and_nonsense_never_break_the_agent() {
    static PANICS: AtomicUsize = AtomicUsize::new(0);
    let previous = Arc::new(std::panic::take_hook());
    let chained = previous.clone();
    std::panic::set_hook(Box::new(move |info| {
        PANICS.fetch_add(1, Ordering::SeqCst);
        chained(info);
    }));

    let mut d = Daemon::start();
    let mut n = Noise::new(0x5eed);
    for round in 0..1500 {
        match n.below(4) {
            0 => {
                let bytes = n.some(400);
                d.raw(&bytes);
            }
            1 => {
                // A whole frame whose payload is no known message.
                let mut payload = n.some(40);
                payload.push(0);
                payload[0] = 26 + n.below(100) as u8;
                let mut f = vec![0xFC, 0xA9];
                f.extend_from_slice(&(payload.len() as u32).to_le_bytes());
                f.extend_from_slice(&crc32(&payload).to_le_bytes());
                f.extend_from_slice(&payload);
                d.raw(&f);
            }
            _ => {
                let m = nonsense(&mut n);
                let bytes = frame(&m).expect("frame");
                let cut = n.below(bytes.len() as u64) as usize;
                if n.below(10) == 0 {
                    // Cut short.
                    d.raw(&bytes[..cut]);
                } else {
                    d.raw(&bytes);
                }
            }
        }
        if round % 100 == 0 {
            // Drain what came back, so the agent never waits on us.
            while d.recv(Duration::from_millis(1)).is_some() {}
        }
    }
    // Whatever state it is in, a Hello brings a clean session that works.
    // Random bytes may have looked like a header with a plausible length:
    // the decoder then holds them until that many bytes came; zeros (never
    // a frame's start) flush them out, as a reconnect would.
    d.raw(&vec![0u8; fcm_proto::Decoder::CAPACITY]);
    while d.recv(Duration::from_millis(50)).is_some() {}
    d.hello(77);
    d.ping();
    let r = d.run(exec(&["echo", "alive"]));
    assert_eq!(r.out(), "alive\n");
    let _ = std::panic::take_hook();
    assert_eq!(PANICS.load(Ordering::SeqCst), 0, "the agent panicked");
}

#[test]
fn a_closed_stream_ends_the_session_and_its_programs() {
    let mut d = Daemon::start();
    let mut e = exec(&["sleep", "30"]);
    e.id = 1;
    d.send(&ToAgent::Exec(e));
    let Some(FromAgent::Started { pid, .. }) = d.recv_for(1, common::WAIT) else {
        panic!("not started");
    };
    let entry = format!("/proc/{pid}");
    drop(d);
    assert!(
        common::wait_until(Duration::from_secs(5), || !std::path::Path::new(&entry)
            .exists()),
        "the program outlived its connection"
    );
}

#[test]
fn hello_answers_with_the_same_session() {
    let mut d = Daemon::connect(Config::default());
    d.send(&ToAgent::Hello {
        version: VERSION + 5,
        session: 0xDEAD_BEEF,
    });
    match d.recv(common::WAIT) {
        Some(FromAgent::Hello {
            version,
            session,
            agent,
        }) => {
            assert_eq!((version, session), (VERSION, 0xDEAD_BEEF));
            assert_eq!(agent, format!("fcm-agent {}", env!("CARGO_PKG_VERSION")));
        }
        other => panic!("{other:?}"),
    }
}
