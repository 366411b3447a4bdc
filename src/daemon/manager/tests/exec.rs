//! Exec and cp through the manager: what reaches the guest, what comes
//! back (exit code, both streams, the cap, base64), bad requests refused
//! before the guest is asked, guest errors kept as their kind.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;

use super::{Harness, assert_wrong_state, run, status};
use crate::daemon::guest::fake::FakeRun;
use crate::daemon::guest::{ExecSpec, GuestError};
use crate::daemon::lock;
use crate::daemon::manager::ManagerError;
use crate::daemon::manager::exec::EXEC_OUTPUT_CAP;
use crate::wire::api::{Encoding, ExecRequest};

fn cmd(argv: &[&str]) -> ExecRequest {
    ExecRequest {
        cmd: argv.iter().map(|a| (*a).to_owned()).collect(),
        ..Default::default()
    }
}

/// Every program prints `stdout`/`stderr` and exits `code`; the specs the
/// guest got are kept.
fn programs(h: &Harness, stdout: Vec<u8>, stderr: Vec<u8>, code: i32) -> Arc<Mutex<Vec<ExecSpec>>> {
    let seen: Arc<Mutex<Vec<ExecSpec>>> = Arc::default();
    let s = Arc::clone(&seen);
    h.guests.set(move |g| {
        g.exec = Arc::new(move |spec| {
            lock(&s).push(spec.clone());
            Ok(FakeRun {
                stdout: stdout.clone(),
                stderr: stderr.clone(),
                code,
            })
        });
    });
    seen
}

fn execs(h: &Harness) -> usize {
    h.guests
        .calls()
        .iter()
        .filter(|c| c.starts_with("exec "))
        .count()
}

#[test]
fn exec_returns_the_exit_code_and_both_streams() {
    run(|h| {
        h.create("web");
        let seen = programs(h, b"out\n".to_vec(), b"err\n".to_vec(), 3);
        let mut req = cmd(&["sh", "-c", "echo out; echo err >&2; exit 3", "a b"]);
        req.timeout_secs = Some(5);
        let o = h.m.exec("web", req).expect("exec");
        assert_eq!(o.exit_code, 3);
        assert_eq!((o.stdout.as_str(), o.stderr.as_str()), ("out\n", "err\n"));
        assert_eq!(o.encoding, Encoding::Utf8);
        assert!(!o.truncated && !o.timed_out);
        // The program and its arguments reach the guest as they were given,
        // with the timeout asked for, and no terminal.
        let specs = lock(&seen).clone();
        assert_eq!(specs.len(), 1);
        assert_eq!(
            specs[0].argv,
            ["sh", "-c", "echo out; echo err >&2; exit 3", "a b"]
        );
        assert_eq!(specs[0].timeout, Some(Duration::from_secs(5)));
        assert!(specs[0].tty.is_none());
        // The default timeout is a minute.
        h.m.exec("web", cmd(&["true"])).expect("exec");
        assert_eq!(lock(&seen)[1].timeout, Some(Duration::from_secs(60)));
    });
}

#[test]
fn exec_output_is_cut_at_the_cap() {
    run(|h| {
        h.create("web");
        programs(h, vec![b'x'; EXEC_OUTPUT_CAP + 10], b"short".to_vec(), 0);
        let o = h.m.exec("web", cmd(&["yes"])).expect("exec");
        assert!(o.truncated);
        assert_eq!(o.stdout.len(), EXEC_OUTPUT_CAP);
        assert_eq!(o.stderr, "short");
        programs(h, vec![b'x'; EXEC_OUTPUT_CAP], Vec::new(), 0);
        let o = h.m.exec("web", cmd(&["yes"])).expect("exec");
        assert!(!o.truncated, "exactly the cap is not cut");
        assert_eq!(o.stdout.len(), EXEC_OUTPUT_CAP);
    });
}

#[test]
fn output_that_is_not_utf8_comes_as_base64() {
    run(|h| {
        h.create("web");
        programs(h, vec![0xff, 0, 1], b"fine".to_vec(), 0);
        let o = h.m.exec("web", cmd(&["cat", "/bin/true"])).expect("exec");
        assert_eq!(o.encoding, Encoding::Base64);
        // Both streams, so the client decodes them alike.
        assert_eq!(B64.decode(&o.stdout).expect("base64"), [0xff, 0, 1]);
        assert_eq!(B64.decode(&o.stderr).expect("base64"), b"fine");
    });
}

#[test]
fn stdin_reaches_the_program_as_text_or_bytes() {
    run(|h| {
        h.create("web");
        let mut req = cmd(&["cat"]);
        req.stdin = Some("hello\n".into());
        h.m.exec("web", req).expect("exec");
        assert_eq!(lock(&h.guests.stdin).as_slice(), b"hello\n");
        lock(&h.guests.stdin).clear();
        let mut req = cmd(&["cat"]);
        req.stdin_base64 = Some(B64.encode([0u8, 255, 10]));
        h.m.exec("web", req).expect("exec");
        assert_eq!(lock(&h.guests.stdin).as_slice(), [0u8, 255, 10]);
    });
}

#[test]
fn bad_exec_requests_never_reach_the_guest() {
    run(|h| {
        h.create("web");
        let mut both = cmd(&["cat"]);
        both.stdin = Some("a".into());
        both.stdin_base64 = Some("YQ==".into());
        let mut not_b64 = cmd(&["cat"]);
        not_b64.stdin_base64 = Some("%%%".into());
        let mut tty = cmd(&["bash"]);
        tty.tty = Some(true);
        let mut no_deadline = cmd(&["sleep", "9"]);
        no_deadline.timeout_secs = Some(0);
        let mut too_long = cmd(&["sleep", "9"]);
        too_long.timeout_secs = Some(3601);
        let bad = [
            cmd(&[]),
            cmd(&["", "x"]),
            cmd(&["echo", "a\0b"]),
            both,
            not_b64,
            tty,
            no_deadline,
            too_long,
        ];
        for req in bad {
            let e =
                h.m.exec("web", req.clone())
                    .expect_err("bad request accepted");
            assert!(matches!(e, ManagerError::BadRequest(_)), "{req:?}: {e:?}");
            assert_eq!(status(&e), 400);
        }
        let huge = "x".repeat(300 * 1024);
        let e =
            h.m.exec("web", cmd(&["echo", &huge]))
                .expect_err("too long");
        assert!(
            matches!(e, ManagerError::Guest(GuestError::TooLarge { .. })),
            "{e:?}"
        );
        assert_eq!(status(&e), 413);
        assert_eq!(execs(h), 0, "the guest was asked: {:?}", h.guests.calls());
        // The VM comes first: an unknown or stopped VM says so.
        let e = h.m.exec("nothing", cmd(&[])).expect_err("unknown VM");
        assert_eq!(status(&e), 404);
        h.m.stop("web").expect("stop");
        let e = h.m.exec("web", cmd(&[])).expect_err("stopped VM");
        assert_wrong_state(&e, "stopped", "running", "use it");
    });
}

#[test]
fn guest_errors_keep_their_kind() {
    run(|h| {
        h.create("web");
        h.guests.set(|g| {
            g.exec = Arc::new(|_| {
                Err(GuestError::Unreachable {
                    vm: "web".into(),
                    transport: "fake",
                    detail: "connection refused".into(),
                })
            });
        });
        let e = h.m.exec("web", cmd(&["true"])).expect_err("unreachable");
        assert!(
            matches!(e, ManagerError::Guest(GuestError::Unreachable { .. })),
            "{e:?}"
        );
        assert_eq!(status(&e), 502);
        assert!(e.hint().is_some_and(|t| t.contains("booting")));
        // A streamed exec starts the program and hands it over.
        programs(h, b"streamed".to_vec(), Vec::new(), 0);
        let mut req = cmd(&["bash"]);
        req.tty = Some(true);
        req.timeout_secs = Some(0);
        let (rec, mut p) = h.m.exec_start("web", &req).expect("exec_start");
        assert_eq!(rec.name.as_str(), "web");
        let mut out = String::new();
        std::io::Read::read_to_string(&mut p.stdout().expect("stdout"), &mut out).expect("read");
        assert_eq!(out, "streamed");
        assert_eq!(p.wait().expect("exit").code, 0);
    });
}

#[test]
fn files_and_archives_go_through_the_guest() {
    run(|h| {
        h.create("web");
        let w =
            h.m.write_file("web", "/root/a.txt", &mut &b"twelve bytes"[..])
                .expect("write");
        assert_eq!((w.path.as_str(), w.bytes), ("/root/a.txt", 12));
        let w =
            h.m.write_archive("web", "/srv", &mut &[0u8; 1024][..])
                .expect("write archive");
        assert_eq!(w.bytes, 1024);
        let e = h.m.read_file("web", "/nope").err().expect("no such file");
        assert!(
            matches!(e, ManagerError::Guest(GuestError::NotFound { .. })),
            "{e:?}"
        );
        assert_eq!(status(&e), 404);
        let e = h.m.read_archive("web", "/nope").err().expect("no such dir");
        assert_eq!(status(&e), 404);
        assert_eq!(
            h.guests.calls(),
            [
                "write_file web",
                "write_tree web",
                "read_file web",
                "read_tree web"
            ]
        );
        // Bad paths never reach the guest.
        for path in ["", "a\0b"] {
            let e = h.m.read_file("web", path).err().expect("bad path");
            assert!(
                matches!(e, ManagerError::Guest(GuestError::BadRequest(_))),
                "{e:?}"
            );
            assert_eq!(status(&e), 400);
            let e =
                h.m.write_file("web", path, &mut &b"x"[..])
                    .expect_err("bad path");
            assert_eq!(status(&e), 400);
        }
        let long = "/".repeat(4097);
        assert_eq!(
            status(&h.m.read_archive("web", &long).err().expect("long")),
            400
        );
        assert_eq!(h.guests.calls().len(), 4, "{:?}", h.guests.calls());
        h.m.stop("web").expect("stop");
        let e =
            h.m.read_file("web", "/etc/hostname")
                .err()
                .expect("stopped");
        assert_wrong_state(&e, "stopped", "running", "use it");
    });
}
