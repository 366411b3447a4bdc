//! The streamed `fcm exec`, end to end, on one real guest (QEMU, TCG) in
//! its own namespace: output as it comes, stdout and stderr apart, exit
//! codes and signals, the deadline, 100 MiB through with the daemon's and
//! the client's memory flat, exact bytes both ways, `-i` with 10 MiB of
//! stdin, `-t` on a terminal (tty, size, resize, Ctrl-C), a dropped
//! client ending the command, and many streams at once while `ls` answers.

mod common;

use std::fs::{self, File};
use std::io::{BufRead, BufReader, Read, Write};

use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use common::pty::OnPty;
use common::{Fcm, e2e_ready, kill_pid, wait_for};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn sha256(data: &[u8]) -> String {
    let mut c = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("sha256sum");
    let mut w = c.stdin.take().expect("stdin");
    let data = data.to_vec();
    let t = thread::spawn(move || w.write_all(&data));
    let out = c.wait_with_output().expect("sha256sum");
    let _ = t.join();
    text(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

fn random(n: usize) -> Vec<u8> {
    let mut v = vec![0u8; n];
    File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut v))
        .expect("urandom");
    v
}

/// Resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Option<u64> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// Samples the RSS of `pids` until stopped; the peaks, in KiB.
struct RssWatch {
    stop: Arc<AtomicBool>,
    handle: thread::JoinHandle<Vec<u64>>,
}

impl RssWatch {
    fn start(pids: Vec<u32>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let s = Arc::clone(&stop);
        let handle = thread::spawn(move || {
            let mut peaks = vec![0u64; pids.len()];
            while !s.load(Ordering::Acquire) {
                for (i, p) in pids.iter().enumerate() {
                    peaks[i] = peaks[i].max(rss_kib(*p).unwrap_or(0));
                }
                thread::sleep(Duration::from_millis(50));
            }
            peaks
        });
        Self { stop, handle }
    }

    fn peaks(self) -> Vec<u64> {
        self.stop.store(true, Ordering::Release);
        self.handle.join().expect("rss thread")
    }
}

/// How long `GET /vms` takes, measured by curl inside the namespace.
fn ls_seconds(f: &Fcm, token: &str) -> f64 {
    let out = f.ns.exec(&[
        "curl",
        "-s",
        "-o",
        "/dev/null",
        "-w",
        "%{http_code} %{time_total}",
        "-H",
        &format!("Authorization: Bearer {token}"),
        "http://127.0.0.1:7777/vms",
    ]);
    let s = text(&out.stdout);
    let mut it = s.split_whitespace();
    assert_eq!(it.next(), Some("200"), "GET /vms: {s}");
    it.next().and_then(|t| t.parse().ok()).expect("time_total")
}

/// Processes in the guest whose command line holds `marker`.
fn guest_processes(f: &Fcm, vm: &str, marker: &str) -> usize {
    let out = f.ok(&["exec", vm, "--", "ps", "-eo", "args"]);
    out.lines()
        .filter(|l| l.contains(marker) && !l.contains("ps -eo"))
        .count()
}

#[test]
fn streamed_exec_end_to_end() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("exec", &[]);
    let token = f.token();
    let v = f.create(&[]);
    let vm = v["name"].as_str().expect("name").to_owned();
    let vm = vm.as_str();

    // The first line arrives while the command still runs.
    let t0 = Instant::now();
    let mut child = f
        .cli()
        .args([
            "exec",
            vm,
            "--",
            "sh",
            "-c",
            "echo first; sleep 5; echo second",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fcm exec");
    let mut lines = BufReader::new(child.stdout.take().expect("stdout"));
    let mut first = String::new();
    lines.read_line(&mut first).expect("first line");
    let first_at = t0.elapsed();
    assert_eq!(first, "first\n");
    assert!(
        child.try_wait().expect("try_wait").is_none(),
        "the first line came only once the command had ended ({first_at:?})"
    );
    let mut rest = String::new();
    lines.read_to_string(&mut rest).expect("rest");
    let status = child.wait().expect("wait");
    assert_eq!((rest.as_str(), status.code()), ("second\n", Some(0)));
    println!(
        "first line after {:.2} s of a {:.2} s command",
        first_at.as_secs_f64(),
        t0.elapsed().as_secs_f64()
    );

    // stdout and stderr apart; exit codes; a signal's 128 + N.
    let out = f.run(&[
        "exec",
        vm,
        "--",
        "sh",
        "-c",
        "echo to-out; echo to-err >&2; exit 7",
    ]);
    assert_eq!(
        (out.status.code(), text(&out.stdout), text(&out.stderr)),
        (Some(7), "to-out\n".into(), "to-err\n".into())
    );
    let out = f.run(&["exec", vm, "--", "sh", "-c", "kill -9 $$"]);
    assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "the shell's own messages leak");
    let out = f.run(&["exec", vm, "--", "sh", "-c", "kill -TERM $$"]);
    assert_eq!(out.status.code(), Some(143));

    // The deadline: killed, 124, said so, nothing left running.
    let t = Instant::now();
    let out = f.run(&[
        "exec",
        vm,
        "--timeout",
        "2",
        "--",
        "sh",
        "-c",
        "sleep 300; echo late",
    ]);
    assert_eq!(out.status.code(), Some(124), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("did not finish within 2 s"));
    assert!(!text(&out.stdout).contains("late"));
    assert!(t.elapsed() < Duration::from_secs(20), "{:?}", t.elapsed());
    assert_eq!(guest_processes(&f, vm, "sleep 300"), 0);

    // An unknown VM: a clear error, no stream.
    let out = f.run(&["exec", "no-such-vm", "--", "true"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out.stderr).contains("no VM named"),
        "{}",
        text(&out.stderr)
    );
    assert!(text(&out.stderr).contains("hint: list VMs with: fcm ls"));

    // 100 MiB of output through, counted exactly, memory flat on both
    // sides of the daemon's stream.
    let mut child = f
        .cli()
        .args(["exec", vm, "--", "head", "-c", "104857600", "/dev/zero"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("fcm exec");
    let daemon = f.daemon_pid().expect("daemon pid");
    let before = (
        rss_kib(daemon).unwrap_or(0),
        rss_kib(child.id()).unwrap_or(0),
    );
    let watch = RssWatch::start(vec![daemon, child.id()]);
    let mut out = child.stdout.take().expect("stdout");
    let t = Instant::now();
    let mut buf = vec![0u8; 1 << 16];
    let mut total = 0u64;
    let mut zeros = true;
    loop {
        let n = out.read(&mut buf).expect("read");
        if n == 0 {
            break;
        }
        zeros &= buf[..n].iter().all(|b| *b == 0);
        total += n as u64;
    }
    let status = child.wait().expect("wait");
    let took = t.elapsed();
    let peaks = watch.peaks();
    assert_eq!((total, zeros, status.code()), (100 << 20, true, Some(0)));
    println!(
        "100 MiB in {:.1} s ({:.1} MiB/s); RSS daemon {} -> peak {} KiB, client {} -> peak {} KiB",
        took.as_secs_f64(),
        100.0 / took.as_secs_f64(),
        before.0,
        peaks[0],
        before.1,
        peaks[1]
    );
    assert!(peaks[0] < before.0 + 32 * 1024, "the daemon's memory grew");
    assert!(peaks[1] < 32 * 1024, "the client's memory grew");

    // Exact bytes both ways: random data through the guest's cat.
    let data = random(3 << 20);
    let out = f.run_with_stdin(&["exec", vm, "--", "cat"], &data);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert!(out.stdout == data, "bytes changed on the way through cat");

    // -i: 10 MiB of stdin, end of file included.
    let data = random(10 << 20);
    let out = f.run_with_stdin(&["exec", "-i", vm, "--", "sha256sum"], &data);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(
        text(&out.stdout).split_whitespace().next(),
        Some(sha256(&data).as_str())
    );

    // -t: a terminal in the guest, its size, a resize followed.
    let mut p = OnPty::start(&f, &["exec", "-it", vm, "--", "sh"], 100, 30);
    thread::sleep(Duration::from_secs(2));
    p.type_keys(b"tty; stty size\n");
    p.wait_for("30 100", 30);
    assert!(p.screen().contains("/dev/pts/"), "{:?}", p.screen());
    p.resize(132, 43);
    thread::sleep(Duration::from_secs(1));
    p.type_keys(b"stty size\n");
    p.wait_for("43 132", 30);
    p.type_keys(b"exit 5\n");
    assert_eq!(p.wait_exit(30), Some(5), "{:?}", p.screen());

    // Ctrl-C reaches the guest's command.
    let mut p = OnPty::start(
        &f,
        &["exec", "-it", vm, "--", "sh", "-c", "echo ready; sleep 120"],
        80,
        24,
    );
    p.wait_for("ready", 30);
    let t = Instant::now();
    p.type_keys(b"\x03");
    assert_eq!(p.wait_exit(30), Some(130), "{:?}", p.screen());
    assert!(t.elapsed() < Duration::from_secs(15));
    assert_eq!(guest_processes(&f, vm, "sleep 120"), 0);

    // A client that goes away ends its command in the guest.
    let child = f
        .cli()
        .args(["exec", vm, "--", "sh", "-c", "echo up; sleep 99"])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("fcm exec");
    let mut child = child;
    let mut line = String::new();
    BufReader::new(child.stdout.take().expect("stdout"))
        .read_line(&mut line)
        .expect("up");
    kill_pid(child.id());
    let _ = child.wait();
    let gone = wait_for(Duration::from_secs(20), || {
        (guest_processes(&f, vm, "sleep 99") == 0).then_some(())
    });
    assert!(gone.is_some(), "the command outlived its client");

    many_streams(&f, vm, &token);
}

/// 20 execs streaming output at once, then 100 streams held open: every
/// byte arrives, and `ls` answers in under 100 ms all along.
fn many_streams(f: &Fcm, vm: &str, token: &str) {
    let spawn = |script: &str| {
        f.cli()
            .args(["exec", vm, "--", "sh", "-c", script])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fcm exec")
    };
    let counted = Arc::new(AtomicU64::new(0));
    let mut readers = Vec::new();
    for _ in 0..20 {
        let mut c = spawn("echo started; sleep 3; head -c 5000000 /dev/zero");
        let mut out = c.stdout.take().expect("stdout");
        let counted = Arc::clone(&counted);
        readers.push(thread::spawn(move || {
            let mut buf = vec![0u8; 65536];
            let mut n_all = 0u64;
            while let Ok(n) = out.read(&mut buf) {
                if n == 0 {
                    break;
                }
                n_all += n as u64;
            }
            counted.fetch_add(n_all, Ordering::AcqRel);
            c.wait().map(|s| (s.code(), n_all)).expect("wait")
        }));
    }
    let mut worst: f64 = 0.0;
    let mut samples = 0;
    while readers.iter().any(|r| !r.is_finished()) {
        worst = worst.max(ls_seconds(f, token));
        samples += 1;
        thread::sleep(Duration::from_millis(200));
    }
    for r in readers {
        let (code, n) = r.join().expect("reader");
        assert_eq!((code, n), (Some(0), 5_000_000 + "started\n".len() as u64));
    }
    println!(
        "20 streamed execs: ls at worst {:.1} ms ({samples} samples)",
        worst * 1e3
    );
    assert!(worst < 0.1, "ls took {worst:.3} s during 20 streams");

    // 100 streams open at once.
    let mut held: Vec<Child> = (0..100)
        .map(|_| spawn("echo started; exec sleep 300"))
        .collect();
    let started = Arc::new(AtomicU64::new(0));
    for c in &mut held {
        let mut out = BufReader::new(c.stdout.take().expect("stdout"));
        let started = Arc::clone(&started);
        thread::spawn(move || {
            let mut l = String::new();
            if out.read_line(&mut l).is_ok() && l == "started\n" {
                started.fetch_add(1, Ordering::AcqRel);
            }
            // Keep the pipe open (and drained) until the command ends.
            let _ = std::io::copy(&mut out, &mut std::io::sink());
        });
    }
    let all = wait_for(Duration::from_secs(180), || {
        (started.load(Ordering::Acquire) == 100).then_some(())
    });
    assert!(
        all.is_some(),
        "only {} of 100 streams started",
        started.load(Ordering::Acquire)
    );
    let mut worst: f64 = 0.0;
    for _ in 0..10 {
        worst = worst.max(ls_seconds(f, token));
        thread::sleep(Duration::from_millis(100));
    }
    println!("100 streams open: ls at worst {:.1} ms", worst * 1e3);
    assert!(worst < 0.1, "ls took {worst:.3} s with 100 streams open");
    for c in &mut held {
        kill_pid(c.id());
        let _ = c.wait();
    }
    let gone = wait_for(Duration::from_secs(60), || {
        (guest_processes(f, vm, "sleep 300") == 0).then_some(())
    });
    assert!(gone.is_some(), "commands outlived their clients");
}
