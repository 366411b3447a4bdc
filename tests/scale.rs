//! Scale: 50 VMs on record, 20 of them running (QEMU, 128 MiB each), the
//! rest stopped. `fcm ls` answers within 2 s, a create and a console still
//! work, the daemon's background passes (housekeeping, idle sleep, the
//! recovery after a restart) are timed (`GET /passes`), and an `ls` sent
//! while a restarted daemon is still recovering the 51 VMs is answered at
//! once. The state dir is on a small XFS file system of the test's own (a
//! loop mount), so the 51 disks are reflinks of the base image: the test
//! costs the machine CPU for the guests, not 15 GB of copies.

mod common;
#[path = "soak/probe.rs"]
mod probe;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use common::outer::Outer;
use common::{Fcm, assets, e2e_ready, tmp_root};
use probe::{Cli, percentile};

const STOPPED: usize = 30;
const RUNNING: usize = 20;

/// An XFS file system with reflinks on a sparse image, loop-mounted;
/// unmounted (its loop device released) on drop, also when the test fails.
struct Xfs {
    _dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Xfs {
    fn mount(size_gib: u64) -> Self {
        let dir = tempfile::Builder::new()
            .prefix("fcm-scale-")
            .tempdir_in(tmp_root())
            .expect("tempdir");
        let img = dir.path().join("xfs.img");
        let mnt = dir.path().join("mnt");
        fs::create_dir(&mnt).expect("mount point");
        fs::File::create(&img)
            .and_then(|f| f.set_len(size_gib << 30))
            .expect("image");
        let run = |c: &mut Command| {
            let out = c.output().expect("run");
            assert!(out.status.success(), "{c:?}: {out:?}");
        };
        run(Command::new("mkfs.xfs")
            .args(["-q", "-m", "reflink=1"])
            .arg(&img));
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt));
        Self { _dir: dir, mnt }
    }
}

impl Drop for Xfs {
    fn drop(&mut self) {
        let ok = Command::new("umount")
            .arg(&self.mnt)
            .status()
            .is_ok_and(|s| s.success());
        if !ok {
            let _ = Command::new("umount").arg("-l").arg(&self.mnt).status();
        }
    }
}

/// Whether mkfs.xfs is here (scripts/setup.sh installs xfsprogs).
fn xfs_ready() -> bool {
    if Path::new("/usr/sbin/mkfs.xfs").exists() || Path::new("/sbin/mkfs.xfs").exists() {
        return true;
    }
    let msg = "the scale test needs mkfs.xfs (apt-get install xfsprogs; scripts/setup.sh does)";
    if std::env::var("FCM_E2E_OPTIONAL").as_deref() == Ok("1") {
        eprintln!("skipping: {msg}");
        false
    } else {
        panic!("{msg}");
    }
}

/// Runs `job` on every item, `threads` at a time; panics naming failures.
fn parallel(threads: usize, items: Vec<usize>, job: &(dyn Fn(usize) -> Result<(), String> + Sync)) {
    let queue = std::sync::Mutex::new(items);
    let failures = std::sync::Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for _ in 0..threads {
            s.spawn(|| {
                loop {
                    let next = queue.lock().unwrap_or_else(|e| e.into_inner()).pop();
                    let Some(i) = next else { break };
                    if let Err(e) = job(i) {
                        failures.lock().unwrap_or_else(|e| e.into_inner()).push(e);
                    }
                }
            });
        }
    });
    let failures = failures.into_inner().unwrap_or_default();
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn fcm(cli: &Cli, args: &[&str]) -> Result<String, String> {
    let run = cli.run(args, Duration::from_secs(120));
    if run.ok {
        Ok(run.stdout)
    } else {
        Err(format!("fcm {args:?}: {}", run.stderr.trim()))
    }
}

/// `fcm ls --json`: its time and the VMs as (name, state, warnings).
fn timed_ls(cli: &Cli) -> (Duration, Vec<(String, String, String)>) {
    let run = cli.run(&["ls", "--json"], Duration::from_secs(30));
    assert!(run.ok, "fcm ls: {}", run.stderr);
    let vms: Vec<serde_json::Value> = serde_json::from_str(run.stdout.trim()).expect("ls --json");
    let vms = vms
        .iter()
        .map(|v| {
            (
                v["name"].as_str().unwrap_or_default().to_string(),
                v["state"].as_str().unwrap_or_default().to_string(),
                v["warnings"].to_string(),
            )
        })
        .collect();
    (run.took, vms)
}

fn count(vms: &[(String, String, String)], state: &str) -> usize {
    vms.iter().filter(|v| v.1 == state).count()
}

/// `GET /passes`, printed.
fn passes(f: &Fcm, when: &str) -> serde_json::Value {
    let (status, body) = f.api("GET", "/passes", Some(&f.token()), None);
    assert_eq!(status, 200, "GET /passes: {body}");
    let p: serde_json::Value = serde_json::from_str(&body).expect("passes JSON");
    let line = |k: &str| {
        let t = &p[k];
        format!(
            "{k} {} passes, last {:.1} ms, mean {:.1} ms, max {:.1} ms",
            t["passes"],
            t["last_ms"].as_f64().unwrap_or(0.0),
            t["mean_ms"].as_f64().unwrap_or(0.0),
            t["max_ms"].as_f64().unwrap_or(0.0)
        )
    };
    println!(
        "scale: passes {when}: recovery of {} VMs {:.0} ms (done: {}); {}; {}",
        p["recovery"]["vms"],
        p["recovery"]["ms"].as_f64().unwrap_or(0.0),
        p["recovery"]["done"],
        line("housekeeping"),
        line("idle")
    );
    p
}

#[test]
fn fifty_vms_on_record_twenty_running_answer_quickly_and_recovery_blocks_nothing() {
    if !e2e_ready() || !xfs_ready() {
        return;
    }
    let t0 = Instant::now();
    let xfs = Xfs::mount(64);
    let base = xfs.mnt.join("base-rootfs.img");
    let copied = Command::new("cp")
        .arg("--sparse=always")
        .arg(assets().join("base-rootfs.img"))
        .arg(&base)
        .status()
        .is_ok_and(|s| s.success());
    assert!(copied, "copy the base rootfs onto the XFS");
    let cfg = xfs.mnt.join("fcm-scale.json");
    let cfg_text = serde_json::json!({ "stop_timeout_secs": 3, "caddy": { "enabled": false } });
    fs::write(&cfg, cfg_text.to_string()).expect("config");
    let state = xfs.mnt.join("state").display().to_string();
    let (cfg, base) = (cfg.display().to_string(), base.display().to_string());
    let mut f = Fcm::start(
        "scale",
        &["--config", &cfg, "--state-dir", &state, "--rootfs", &base],
    );
    let cli = Cli::of(&f);

    // 30 VMs made and stopped (most while still booting), then 20 running,
    // with idle sleep far off so the idle pass has work on each.
    let made = Instant::now();
    parallel(6, (0..STOPPED).collect(), &|i| {
        let name = format!("s{i}");
        fcm(
            &cli,
            &["create", "--no-wait", "--memory", "128", "--name", &name],
        )?;
        fcm(&cli, &["stop", &name]).map(|_| ())
    });
    parallel(4, (0..RUNNING).collect(), &|i| {
        let name = format!("r{i}");
        let args = [
            "create",
            "--no-wait",
            "--memory",
            "128",
            "--idle-pause",
            "1h",
            "--name",
            &name,
        ];
        fcm(&cli, &args).map(|_| ())
    });
    println!(
        "scale: {STOPPED} VMs made and stopped, {RUNNING} made running, in {:.1} s",
        made.elapsed().as_secs_f64()
    );

    // `ls` with 50 on record, 20 guests booting or idle.
    let mut times = Vec::new();
    for _ in 0..10 {
        let (took, vms) = timed_ls(&cli);
        assert_eq!(vms.len(), STOPPED + RUNNING, "{vms:?}");
        assert_eq!(count(&vms, "running"), RUNNING, "{vms:?}");
        assert_eq!(count(&vms, "stopped"), STOPPED, "{vms:?}");
        times.push(took.as_secs_f64() * 1000.0);
        std::thread::sleep(Duration::from_millis(300));
    }
    times.sort_by(f64::total_cmp);
    println!(
        "scale: fcm ls --json with 50 VMs: p50 {:.0} ms, max {:.0} ms (10 runs)",
        percentile(&times, 0.5),
        percentile(&times, 1.0)
    );
    assert!(
        times.iter().all(|t| *t < 2000.0),
        "fcm ls took over 2 s: {times:?} ms"
    );

    // One more create, waiting for its guest, and a console on it.
    let one = Instant::now();
    fcm(&cli, &["create", "--memory", "128", "--name", "extra"]).unwrap_or_else(|e| panic!("{e}"));
    println!(
        "scale: fcm create (to a ready guest) with 50 on record: {:.1} s",
        one.elapsed().as_secs_f64()
    );
    {
        let o = Outer::new(&f, "scale");
        let w = o.open("console extra");
        o.wait_screen(&w, "[main]", 90);
        o.line(&w, "echo scale-console-$((6*7))");
        o.wait_screen(&w, "scale-console-42", 30);
        println!("scale: fcm console attached to extra and echoed");
    }
    let p = passes(&f, "with 51 VMs");
    if let Some(fig) = f.daemon_pid().and_then(probe::figures) {
        println!("scale: the daemon with 51 VMs: {fig}");
    }
    assert!(p["housekeeping"]["passes"].as_u64().unwrap_or(0) > 0, "{p}");
    assert!(p["idle"]["passes"].as_u64().unwrap_or(0) > 0, "{p}");

    // A restart: `ls` tried from the moment the daemon starts, answered
    // while it still recovers the VMs, within 2 s.
    f.kill_daemon();
    let restarted = Instant::now();
    let probe = std::thread::scope(|s| {
        let prober = s.spawn(|| {
            let deadline = Instant::now() + Duration::from_secs(60);
            loop {
                let run = cli.run(&["ls", "--json"], Duration::from_secs(30));
                if run.ok || Instant::now() > deadline {
                    return (restarted.elapsed(), run);
                }
                std::thread::sleep(Duration::from_millis(10));
            }
        });
        f.spawn_daemon_serving(&[]);
        prober.join().expect("prober")
    });
    let (at, run) = probe;
    assert!(run.ok, "fcm ls after the restart: {}", run.stderr);
    let vms: Vec<serde_json::Value> = serde_json::from_str(run.stdout.trim()).expect("ls --json");
    let recovering = vms
        .iter()
        .filter(|v| v["warnings"].to_string().contains("after a restart"))
        .count();
    println!(
        "scale: after a SIGKILL and restart, fcm ls answered in {:.0} ms ({:.0} ms after the start), \
         {} VMs listed, {recovering} of them still being recovered",
        run.took.as_secs_f64() * 1000.0,
        at.as_secs_f64() * 1000.0,
        vms.len()
    );
    assert_eq!(
        vms.len(),
        STOPPED + RUNNING + 1,
        "VMs listed during recovery"
    );
    assert!(
        run.took < Duration::from_secs(2),
        "ls during recovery took {:?}",
        run.took
    );
    assert!(
        recovering > 0,
        "the ls came after the recovery: nothing shown while recovering"
    );
    assert!(
        f.wait_recovered(Duration::from_secs(120)),
        "recovery did not end"
    );
    let p = passes(&f, "after the restart");
    assert_eq!(p["recovery"]["vms"], STOPPED + RUNNING + 1, "{p}");

    // Recovered: the same VMs in the same states; the guest still answers.
    let (took, vms) = timed_ls(&cli);
    assert_eq!(count(&vms, "running"), RUNNING + 1, "{vms:?}");
    assert_eq!(count(&vms, "stopped"), STOPPED, "{vms:?}");
    assert!(
        took < Duration::from_secs(2),
        "ls after recovery took {took:?}"
    );
    let out = fcm(&cli, &["exec", "extra", "--", "echo", "after-recovery"])
        .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(out.trim(), "after-recovery");
    println!("scale: done in {:.0} s", t0.elapsed().as_secs_f64());
    drop(f);
    drop(xfs);
}
