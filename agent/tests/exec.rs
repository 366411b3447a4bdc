//! Programs through the agent: output, exit codes, signals, the deadline,
//! stdin, flow control, concurrency, terminals, users, cwd and env.

mod common;

use common::{Daemon, Noise, WAIT, exec, wait_until};
use fcm_proto::{CHUNK, FailKind, FromAgent, ToAgent, Tty, WINDOW};
use std::path::Path;
use std::time::{Duration, Instant};

#[test]
fn echo_and_exit_codes() {
    let mut d = Daemon::start();
    let r = d.run(exec(&["echo", "hello", "world"]));
    assert_eq!(r.out(), "hello world\n");
    assert_eq!((r.code, r.signal, r.timed_out), (Some(0), None, false));
    assert!(r.pid.is_some());

    let r = d.run(exec(&["sh", "-c", "echo out; echo err >&2; exit 3"]));
    assert_eq!(
        (r.out().as_str(), r.stderr.as_slice()),
        ("out\n", &b"err\n"[..])
    );
    assert_eq!(r.code, Some(3));

    let r = d.run(exec(&["/bin/sh", "-c", "kill -9 $$"]));
    assert_eq!((r.code, r.signal), (None, Some(9)));

    let r = d.run(exec(&["no-such-program-anywhere"]));
    assert_eq!(r.failed.map(|f| f.kind), Some(FailKind::NotFound));
    let r = d.run(exec(&[]));
    assert_eq!(r.failed.map(|f| f.kind), Some(FailKind::Invalid));
    let r = d.run(exec(&["id"]).tap(|e| e.user = Some("no-such-user-here".into())));
    assert_eq!(r.failed.map(|f| f.kind), Some(FailKind::Invalid));
}

trait Tap: Sized {
    fn tap(self, f: impl FnOnce(&mut Self)) -> Self;
}

impl<T> Tap for T {
    fn tap(mut self, f: impl FnOnce(&mut Self)) -> Self {
        f(&mut self);
        self
    }
}

#[test]
fn a_signal_reaches_the_whole_process_group() {
    let mut d = Daemon::start();
    let id = d.id();
    // The sleep holds stdout: only a signal to the group ends it soon.
    let mut e = exec(&["sh", "-c", "sleep 30; echo never"]);
    e.id = id;
    d.send(&ToAgent::Exec(e));
    assert!(matches!(d.expect_for(id), FromAgent::Started { .. }));
    let t = Instant::now();
    d.send(&ToAgent::Signal { id, signal: 15 });
    let r = d.collect(id);
    assert_eq!(r.signal, Some(15));
    assert!(r.stdout.is_empty());
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());

    // Cancel: SIGKILL.
    let id = d.id();
    let mut e = exec(&["sleep", "30"]);
    e.id = id;
    d.send(&ToAgent::Exec(e));
    assert!(matches!(d.expect_for(id), FromAgent::Started { .. }));
    d.send(&ToAgent::Cancel { id });
    let r = d.collect(id);
    assert_eq!((r.signal, r.timed_out), (Some(9), false));
}

#[test]
fn the_deadline_kills_the_group() {
    let mut d = Daemon::start();
    let t = Instant::now();
    let r = d.run(
        exec(&["sh", "-c", "echo started; sleep 30 & sleep 30"]).tap(|e| e.timeout_ms = Some(300)),
    );
    assert!(r.timed_out);
    assert_eq!(r.signal, Some(9));
    assert_eq!(r.out(), "started\n");
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
    assert!(t.elapsed() >= Duration::from_millis(300));
}

#[test]
fn stdin_streams_with_credit_returned_as_written() {
    let mut d = Daemon::start();
    let data = Noise::new(7).bytes(6 * 1024 * 1024 + 123);
    let id = d.id();
    let mut e = exec(&["cat"]);
    e.id = id;
    d.send(&ToAgent::Exec(e));
    let mut returned = d.upload(id, &data);
    let mut out = Vec::new();
    let mut exited = None;
    while exited.is_none() {
        match d.expect_for(id) {
            FromAgent::Stdout { data, .. } => out.extend(data),
            FromAgent::Credit { bytes, .. } => returned += u64::from(bytes),
            FromAgent::Exited { code, .. } => exited = Some(code),
            FromAgent::Started { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(exited, Some(Some(0)));
    assert_eq!(out.len(), data.len());
    assert!(out == data, "cat's output differs from its input");
    assert_eq!(
        returned,
        data.len() as u64,
        "every byte of stdin is credited back"
    );

    // The same through sha256sum, checked against the host's own.
    let data = Noise::new(8).bytes(3 * 1024 * 1024);
    let id = d.id();
    let mut e = exec(&["sha256sum"]);
    e.id = id;
    d.send(&ToAgent::Exec(e));
    d.upload(id, &data);
    let r = d.collect(id);
    let mut host = std::process::Command::new("sha256sum")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("sha256sum");
    std::io::Write::write_all(&mut host.stdin.take().expect("stdin"), &data).expect("write");
    let want = host.wait_with_output().expect("wait").stdout;
    assert_eq!(r.stdout, want);
}

#[test]
fn output_stops_at_the_window_until_credit_comes() {
    let mut d = Daemon::start();
    d.auto_credit = false;
    let total = 8 * 1024 * 1024;
    let id = d.id();
    let mut e = exec(&["head", "-c", &total.to_string(), "/dev/zero"]);
    e.id = id;
    d.send(&ToAgent::Exec(e));
    d.send(&ToAgent::End { id });
    let mut got = 0usize;
    let mut pending = Vec::new();
    while let Some(m) = d.recv_for(id, Duration::from_millis(500)) {
        match m {
            FromAgent::Stdout { data, .. } => {
                assert!(data.len() <= CHUNK);
                got += data.len();
                pending.push(data.len());
            }
            FromAgent::Started { .. } => {}
            other => panic!("before any credit: {other:?}"),
        }
    }
    assert!(got <= WINDOW as usize + CHUNK, "{got} bytes with no credit");
    assert!(
        got >= WINDOW as usize - CHUNK,
        "only {got} bytes of the first window"
    );

    // A stalled program stalls nothing else.
    d.ping();
    d.auto_credit = true;
    let r = d.run(exec(&["echo", "beside"]));
    assert_eq!(r.out(), "beside\n");

    // Credit flows: the rest arrives.
    for n in pending {
        d.send(&ToAgent::Credit {
            id,
            bytes: n as u32,
        });
    }
    let r = d.collect(id);
    assert_eq!(got + r.stdout.len(), total);
    assert_eq!(r.code, Some(0));
}

#[test]
fn programs_run_at_the_same_time() {
    let mut d = Daemon::start();
    let t = Instant::now();
    let ids: Vec<_> = (0..12)
        .map(|n| {
            let id = d.id();
            let mut e = exec(&["sh", "-c", &format!("sleep 0.5; echo {n}")]);
            e.id = id;
            d.send(&ToAgent::Exec(e));
            d.send(&ToAgent::End { id });
            (id, n)
        })
        .collect();
    for (id, n) in ids {
        let r = d.collect(id);
        assert_eq!(r.out(), format!("{n}\n"));
    }
    assert!(t.elapsed() < Duration::from_secs(3), "{:?}", t.elapsed());
}

fn tty(cols: u16, rows: u16) -> Option<Tty> {
    Some(Tty {
        cols,
        rows,
        term: "xterm-256color".into(),
    })
}

#[test]
fn a_terminal_with_its_size_and_resizes() {
    let mut d = Daemon::start();
    let r = d.run(
        exec(&["sh", "-c", "tty; stty size; echo $TERM; echo err >&2"])
            .tap(|e| e.tty = tty(80, 24)),
    );
    let out = r.out();
    assert!(out.starts_with("/dev/pts/"), "{out:?}");
    assert!(out.contains("24 80\r\n"), "{out:?}");
    assert!(out.contains("xterm-256color\r\n"), "{out:?}");
    assert!(
        out.contains("err\r\n"),
        "stderr is on the terminal too: {out:?}"
    );
    assert!(r.stderr.is_empty());
    assert_eq!(r.code, Some(0));

    let id = d.id();
    let mut e = exec(&["sh", "-c", "stty size; read x; stty size"]);
    e.id = id;
    e.tty = tty(80, 24);
    d.send(&ToAgent::Exec(e));
    let mut out = String::new();
    while !out.contains("24 80") {
        match d.expect_for(id) {
            FromAgent::Stdout { data, .. } => out.push_str(&String::from_utf8_lossy(&data)),
            FromAgent::Started { .. } => {}
            other => panic!("{other:?}"),
        }
    }
    d.send(&ToAgent::Resize {
        id,
        cols: 132,
        rows: 43,
    });
    d.send(&ToAgent::Data {
        id,
        data: b"\n".to_vec(),
    });
    let r = d.collect(id);
    assert!(r.out().contains("43 132"), "{:?}", r.out());
    assert_eq!(r.code, Some(0));

    // ^C on a terminal: SIGINT to its foreground group.
    let id = d.id();
    let mut e = exec(&["sh", "-c", "sleep 30"]);
    e.id = id;
    e.tty = tty(80, 24);
    d.send(&ToAgent::Exec(e));
    assert!(matches!(d.expect_for(id), FromAgent::Started { .. }));
    std::thread::sleep(Duration::from_millis(100));
    d.send(&ToAgent::Signal { id, signal: 2 });
    let r = d.collect(id);
    assert_eq!(r.signal, Some(2), "{r:?}");
}

#[test]
fn users_cwd_and_environment() {
    let mut d = Daemon::start();
    let r = d.run(
        exec(&["sh", "-c", "id -u; id -g; pwd; echo $USER $HOME"])
            .tap(|e| e.user = Some("nobody".into())),
    );
    let lines: Vec<&str> = r
        .stdout
        .split(|&b| b == b'\n')
        .map(|l| std::str::from_utf8(l).unwrap_or("?"))
        .collect();
    assert_eq!(lines[0], "65534", "{:?}", r.out());
    assert_eq!(lines[1], "65534", "{:?}", r.out());
    // nobody's home does not exist: the program starts in /.
    assert_eq!(lines[2], "/");
    assert!(lines[3].starts_with("nobody "), "{:?}", lines[3]);

    let r = d.run(exec(&["id", "-u"]).tap(|e| e.user = Some("4242".into())));
    assert_eq!(r.out(), "4242\n");

    let dir = tempfile::tempdir().expect("tempdir");
    let cwd = dir.path().to_str().expect("utf-8").to_string();
    let r = d.run(
        exec(&["sh", "-c", "pwd; echo $FOO; echo $HOME; echo $PATH"]).tap(|e| {
            e.cwd = Some(cwd.clone());
            e.env = vec![("FOO".into(), "bar baz".into())];
        }),
    );
    let want_home = if Path::new("/root").is_dir() {
        "/root"
    } else {
        "/"
    };
    let out = r.out();
    let lines: Vec<&str> = out.lines().collect();
    assert_eq!(lines[..3], [cwd.as_str(), "bar baz", want_home]);
    assert!(lines[3].contains("/usr/bin"), "{out}");

    let r = d.run(exec(&["pwd"]).tap(|e| e.cwd = Some("/no/such/dir".into())));
    assert_eq!(r.failed.map(|f| f.kind), Some(FailKind::NotFound));
}

/// How many processes are in the session `sid`.
fn session_members(sid: u32) -> usize {
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| {
        let stat = std::fs::read_to_string(e.ok()?.path().join("stat")).ok()?;
        let rest = &stat[stat.rfind(')')? + 1..];
        let session: u32 = rest.split_whitespace().nth(3)?.parse().ok()?;
        (session == sid).then_some(())
    })
    .count()
}

#[test]
fn a_second_hello_ends_the_first_sessions_programs() {
    let mut d = Daemon::start();
    let id = d.id();
    let mut e = exec(&["sh", "-c", "sleep 30 & sleep 30"]);
    e.id = id;
    d.send(&ToAgent::Exec(e));
    let Some(FromAgent::Started { pid, .. }) = d.recv_for(id, WAIT) else {
        panic!("not started");
    };
    let proc_entry = format!("/proc/{pid}");
    assert!(wait_until(Duration::from_secs(5), || session_members(pid) == 3));
    d.hello(2);
    assert!(
        wait_until(Duration::from_secs(5), || !Path::new(&proc_entry).exists()),
        "the first session's program is still there (or not reaped)"
    );
    assert!(
        wait_until(Duration::from_secs(5), || session_members(pid) == 0),
        "its children live on"
    );
    // Nothing of the old operation follows the new Hello.
    assert!(d.silent_for(id, Duration::from_millis(300)));
    // The new session works, and may reuse the id.
    let r = d.run(exec(&["true"]).tap(|e| e.id = id));
    assert_eq!(r.code, Some(0));
}

#[test]
fn a_running_id_is_refused_and_unknown_ids_ignored() {
    let mut d = Daemon::start();
    let id = d.id();
    let mut e = exec(&["sleep", "30"]);
    e.id = id;
    d.send(&ToAgent::Exec(e.clone()));
    assert!(matches!(d.expect_for(id), FromAgent::Started { .. }));
    d.send(&ToAgent::Exec(e));
    match d.expect_for(id) {
        FromAgent::Failed { failure, .. } => assert_eq!(failure.kind, FailKind::Invalid),
        other => panic!("{other:?}"),
    }
    let ghost = 987_654;
    for m in [
        ToAgent::Data {
            id: ghost,
            data: vec![1],
        },
        ToAgent::End { id: ghost },
        ToAgent::Credit {
            id: ghost,
            bytes: 5,
        },
        ToAgent::Resize {
            id: ghost,
            cols: 1,
            rows: 1,
        },
        ToAgent::Signal {
            id: ghost,
            signal: 9,
        },
        ToAgent::Cancel { id: ghost },
    ] {
        d.send(&m);
    }
    assert!(d.silent_for(ghost, Duration::from_millis(200)));
    d.send(&ToAgent::Cancel { id });
    let r = d.collect(id);
    assert_eq!(r.signal, Some(9));
}
