//! Test harness: a fresh network namespace per test, the real `fcm daemon`
//! on a temp state dir inside it, and the real `fcm` CLI driving it.
//! Everything is undone on drop, also when the test fails: VMM processes
//! are killed by PID, the namespace (with its bridge and taps) is deleted.
#![allow(dead_code)]

pub mod caddy;
pub mod cluster;
pub mod outer;
pub mod pty;
pub mod ws;

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

/// The `fcm` binary under test: this build's, or `FCM_TEST_BIN` (a
/// benchmark drives another build with the same harness).
pub fn fcm_bin() -> &'static str {
    static BIN: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BIN.get_or_init(|| {
        std::env::var("FCM_TEST_BIN").unwrap_or_else(|_| env!("CARGO_BIN_EXE_fcm").to_string())
    })
}

/// Where tests make their temp dirs: `/var/tmp` (not a tmpfs: VM disks
/// are large), or `FCM_TEST_TMPDIR` (a benchmark's own dir, to clean up).
pub fn tmp_root() -> PathBuf {
    std::env::var_os("FCM_TEST_TMPDIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/tmp"))
}

/// Where `scripts/setup.sh` put the kernel, initrd and rootfs.
pub fn assets() -> PathBuf {
    std::env::var_os("FCM_ASSETS")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/var/lib/firecracker"))
}

/// Whether end-to-end tests can run here; prints why not. Missing pieces
/// fail the test unless FCM_E2E_OPTIONAL=1 (a developer without the set-up).
pub fn e2e_ready() -> bool {
    let mut missing = Vec::new();
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        missing.push("root".to_string());
    }
    for f in ["vmlinux.bin", "initrd.img", "base-rootfs.img", "fcm-agent"] {
        if !assets().join(f).is_file() {
            missing.push(assets().join(f).display().to_string());
        }
    }
    if missing.is_empty() {
        return true;
    }
    let msg = format!(
        "end-to-end test needs {} (run scripts/setup.sh, then scripts/build-agent.sh, as root)",
        missing.join(", ")
    );
    if std::env::var("FCM_E2E_OPTIONAL").as_deref() == Ok("1") {
        eprintln!("skipping: {msg}");
        false
    } else {
        panic!("{msg}");
    }
}

pub fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return Some(v);
        }
        if Instant::now() > deadline {
            return None;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A network namespace with loopback up; deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Self {
        let name = format!("fcmt-{tag}-{}", std::process::id() % 100_000);
        // A namespace left by a killed earlier run of this test; usually none.
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let ok = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ip netns add {name} failed");
        let ns = Self { name };
        ns.exec(&["ip", "link", "set", "lo", "up"]);
        ns
    }

    /// A command run inside the namespace.
    pub fn cmd(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    pub fn exec(&self, argv: &[&str]) -> Output {
        self.cmd(argv[0])
            .args(&argv[1..])
            .output()
            .expect("ip netns exec")
    }

    /// Names of links inside the namespace.
    pub fn links(&self) -> Vec<String> {
        let out = self.exec(&["ip", "-o", "link", "show"]);
        String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter_map(|l| {
                l.split(": ")
                    .nth(1)
                    .map(|n| n.split('@').next().unwrap_or(n).to_string())
            })
            .collect()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The real daemon in a namespace, with a temp state dir and a client home.
pub struct Fcm {
    pub ns: Netns,
    pub dir: tempfile::TempDir,
    pub daemon: Option<Child>,
    pub extra_args: Vec<String>,
}

impl Fcm {
    /// The daemon's state dir: `--state-dir` from the extra args, else one in the temp dir.
    pub fn state(&self) -> PathBuf {
        let given = self
            .extra_args
            .iter()
            .position(|a| a == "--state-dir")
            .and_then(|i| self.extra_args.get(i + 1));
        given
            .map(PathBuf::from)
            .unwrap_or_else(|| self.dir.path().join("state"))
    }

    /// The API's `ip:port`: `--listen` from the extra args, else the default.
    pub fn api_addr(&self) -> String {
        self.extra_args
            .iter()
            .position(|a| a == "--listen")
            .and_then(|i| self.extra_args.get(i + 1))
            .cloned()
            .unwrap_or_else(|| "127.0.0.1:7777".into())
    }

    pub fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    pub fn log(&self) -> PathBuf {
        self.dir.path().join("daemon.log")
    }

    /// Starts a daemon with the QEMU backend and no Caddy, unless
    /// `extra_args` say otherwise.
    pub fn start(tag: &str, extra_args: &[&str]) -> Self {
        Self::start_with(tag, extra_args, |_| {})
    }

    /// Like [`Self::start`], with `before` run on the namespace before the
    /// daemon starts (to add links the daemon will listen on).
    pub fn start_with(tag: &str, extra_args: &[&str], before: impl FnOnce(&Netns)) -> Self {
        let ns = Netns::new(tag);
        before(&ns);
        let dir = tempfile::Builder::new()
            .prefix("fcm-test-")
            .tempdir_in(tmp_root())
            .expect("tempdir");
        let mut f = Self {
            ns,
            dir,
            daemon: None,
            extra_args: extra_args.iter().map(|s| s.to_string()).collect(),
        };
        fs::create_dir_all(f.home().join(".ssh")).expect("home");
        let key = f.home().join(".ssh/id_ed25519");
        let ok = Command::new("ssh-keygen")
            .args(["-q", "-t", "ed25519", "-N", "", "-C", "tester", "-f"])
            .arg(&key)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "ssh-keygen failed");
        f.spawn_daemon();
        f
    }

    pub fn daemon_args(&self) -> Vec<String> {
        let a = assets();
        let mut v: Vec<String> = vec!["daemon".into()];
        if !self.extra_args.iter().any(|x| x == "--state-dir") {
            v.extend(["--state-dir".into(), self.state().display().to_string()]);
        }
        for (flag, file) in [
            ("--kernel", "vmlinux.bin"),
            ("--initrd", "initrd.img"),
            ("--rootfs", "base-rootfs.img"),
            ("--agent", "fcm-agent"),
        ] {
            if !self.extra_args.iter().any(|x| x == flag) {
                v.extend([flag.into(), a.join(file).display().to_string()]);
            }
        }
        if !self.extra_args.iter().any(|x| x == "--backend") {
            v.extend(["--backend".into(), "qemu".into()]);
        }
        if !self.extra_args.iter().any(|x| x == "--config") {
            v.push("--no-caddy".into());
        }
        // No template (a hidden VM booting in the background) unless the
        // test is about warm create: the others boot cold, on a quiet CPU.
        if !self.extra_args.iter().any(|x| x == "--templates") {
            v.extend(["--templates".into(), "off".into()]);
        }
        v.extend(self.extra_args.iter().cloned());
        v
    }

    pub fn spawn_daemon(&mut self) {
        self.spawn_daemon_env(&[]);
    }

    /// Starts the daemon with extra environment (e.g. the test fault
    /// switch `FCM_TEST_CRASH_AT`) and waits until its API answers and it
    /// has recovered the VMs on record.
    pub fn spawn_daemon_env(&mut self, env: &[(&str, &str)]) {
        self.spawn_daemon_serving(env);
        if !self.wait_recovered(Duration::from_secs(180)) {
            panic!(
                "the daemon did not finish its recovery:\n{}",
                fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }

    /// `GET /health` of the daemon (plain HTTP, else HTTPS unverified), as JSON.
    pub fn health(&self) -> Option<serde_json::Value> {
        ["http", "https"].iter().find_map(|scheme| {
            let url = format!("{scheme}://{}/health", self.api_addr());
            let out = self.ns.exec(&["curl", "-sk", "--max-time", "5", &url]);
            serde_json::from_slice::<serde_json::Value>(&out.stdout)
                .ok()
                .filter(|v| v["ok"] == true)
        })
    }

    /// Waits until `/health` no longer says `recovering` (a daemon without
    /// the field recovers before it serves).
    pub fn wait_recovered(&self, timeout: Duration) -> bool {
        wait_for(timeout, || {
            self.health()
                .filter(|h| h["recovering"] != true)
                .map(|_| ())
        })
        .is_some()
    }

    /// Starts the daemon and returns once its API answers: the recovery of
    /// the VMs on record may still be under way.
    pub fn spawn_daemon_serving(&mut self, env: &[(&str, &str)]) {
        let log = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.log())
            .expect("log");
        let child = self
            .ns
            .cmd(fcm_bin())
            .args(self.daemon_args())
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn daemon");
        self.daemon = Some(child);
        let (ip, port) = self.api_addr().rsplit_once(':').map_or_else(
            || ("127.0.0.1".to_string(), "7777".to_string()),
            |(i, p)| (i.to_string(), p.to_string()),
        );
        let probe = format!("exec 3<>/dev/tcp/{ip}/{port} && echo up");
        let up = wait_for(Duration::from_secs(20), || {
            let out = self.ns.exec(&["bash", "-c", &probe]);
            String::from_utf8_lossy(&out.stdout)
                .contains("up")
                .then_some(())
        });
        if up.is_none() {
            panic!(
                "daemon did not come up:\n{}",
                fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }

    /// Kills the daemon (SIGKILL), leaving its VMs running.
    pub fn kill_daemon(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            // `ip netns exec` execs the daemon, so this is the daemon's pid.
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Waits for the daemon to exit by itself; its status, or `None` if it
    /// is still running at the deadline.
    pub fn wait_daemon_exit(&mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        let child = self.daemon.as_mut()?;
        let status = wait_for(timeout, || child.try_wait().ok().flatten());
        if status.is_some() {
            self.daemon = None;
        }
        status
    }

    /// The daemon's pid, while it runs.
    pub fn daemon_pid(&self) -> Option<u32> {
        self.daemon.as_ref().map(|c| c.id())
    }

    /// VMM processes (QEMU or Firecracker) running the VM with this id,
    /// found on the host whatever the daemon says: by the VM dir in their
    /// command line, or (jailed Firecracker) by their root directory being
    /// the VM's chroot.
    pub fn vmms_of(&self, id: &str) -> Vec<u32> {
        let marker = format!("{}/{id}/", self.state().display());
        let jails = jail_roots(&self.state().join(id));
        let mut v = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            let Ok(c) = fs::read(e.path().join("cmdline")) else {
                continue;
            };
            let argv0 = String::from_utf8_lossy(c.split(|b| *b == 0).next().unwrap_or_default())
                .into_owned();
            let c = String::from_utf8_lossy(&c).replace('\0', " ");
            let is_vmm = argv0.ends_with("qemu-system-x86_64") || argv0.ends_with("firecracker");
            let jailed =
                argv0.ends_with("firecracker") && root_of(pid).is_some_and(|r| jails.contains(&r));
            if is_vmm && (c.contains(&marker) || jailed) && is_alive(pid) {
                v.push(pid);
            }
        }
        v
    }

    /// Every VMM process of this test's state dir, by VM id.
    pub fn all_vmms(&self) -> Vec<(String, u32)> {
        let mut v = Vec::new();
        for e in fs::read_dir(self.state()).into_iter().flatten().flatten() {
            let id = e.file_name().to_string_lossy().into_owned();
            // The daemon's own directories: its SSH key, the agent drives
            // (whose path is in every VMM's command line).
            if id.starts_with('.') || id == "ssh" || id == "agent" {
                continue;
            }
            for pid in self.vmms_of(&id) {
                v.push((id.clone(), pid));
            }
        }
        v
    }

    /// The `tap_*` devices in the namespace.
    pub fn taps(&self) -> Vec<String> {
        self.ns
            .links()
            .into_iter()
            .filter(|l| l.starts_with("tap_"))
            .collect()
    }

    pub fn token(&self) -> String {
        fs::read_to_string(self.state().join(".token"))
            .expect("token")
            .trim()
            .to_string()
    }

    /// The `fcm` CLI inside the namespace, as a user with its own home.
    pub fn cli(&self) -> Command {
        let mut c = self.ns.cmd("env");
        c.args(["-u", "FCM_TOKEN", "-u", "FCM_HOST", "-u", "FCM_STREAM"])
            .arg(format!("HOME={}", self.home().display()))
            .arg(format!("FCM_STATE_DIR={}", self.state().display()))
            .arg(fcm_bin());
        c
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.cli()
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("run fcm")
    }

    /// `fcm args...` with `stdin` fed to it (from a thread, so a command
    /// that writes much before it reads cannot block on it).
    pub fn run_with_stdin(&self, args: &[&str], stdin: &[u8]) -> Output {
        use std::io::Write;
        let mut child = self
            .cli()
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("fcm");
        let mut w = child.stdin.take().expect("stdin");
        let data = stdin.to_vec();
        let feeder = std::thread::spawn(move || {
            let _ = w.write_all(&data);
        });
        let out = child.wait_with_output().expect("fcm");
        let _ = feeder.join();
        out
    }

    /// Runs fcm and panics with its output unless it succeeds.
    pub fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args);
        assert!(
            out.status.success(),
            "fcm {args:?} failed: {}\n{}\n--- daemon log ---\n{}",
            out.status,
            String::from_utf8_lossy(&out.stderr),
            fs::read_to_string(self.log()).unwrap_or_default()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// `fcm create --json`, returning the VM as JSON.
    pub fn create(&self, extra: &[&str]) -> serde_json::Value {
        let mut args = vec!["create", "--json"];
        args.extend_from_slice(extra);
        let out = self.ok(&args);
        serde_json::from_str(out.trim()).expect("create --json output")
    }

    pub fn vms(&self) -> Vec<serde_json::Value> {
        serde_json::from_str(self.ok(&["ls", "--json"]).trim()).expect("ls --json")
    }

    pub fn vm(&self, name: &str) -> serde_json::Value {
        self.vms()
            .into_iter()
            .find(|v| v["name"] == name)
            .unwrap_or_else(|| panic!("{name} not listed"))
    }

    /// Waits until `GET /health` says the warm-create template is ready
    /// (panics with the daemon's log if it failed or took too long).
    pub fn wait_template(&self) {
        let token = self.token();
        let status = wait_for(Duration::from_secs(300), || {
            let (code, body) = self.api("GET", "/health", Some(&token), None);
            let v: serde_json::Value = serde_json::from_str(&body).ok()?;
            let s = v["template"].as_str()?.to_string();
            (code == 200 && s != "building").then_some(s)
        });
        if status.as_deref() != Some("ready") {
            panic!(
                "the template is {status:?}, not ready\n--- daemon log ---\n{}",
                fs::read_to_string(self.log()).unwrap_or_default()
            );
        }
    }

    /// `fcm ssh <vm> -- cmd` output.
    pub fn ssh(&self, vm: &str, cmd: &str) -> Output {
        self.cli()
            .args(["ssh", vm, "--", cmd])
            .stdin(Stdio::null())
            .output()
            .expect("fcm ssh")
    }

    /// A raw API call with curl inside the namespace: (status, body).
    pub fn api(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<&[u8]>,
    ) -> (u16, String) {
        let mut c = self.ns.cmd("curl");
        c.args(["-s", "-o", "-", "-w", "\n%{http_code}", "-X", method]);
        if let Some(t) = token {
            c.args(["-H", &format!("Authorization: Bearer {t}")]);
        }
        if body.is_some() {
            c.args([
                "-H",
                "Content-Type: application/json",
                "--data-binary",
                "@-",
            ]);
        }
        c.arg(format!("http://127.0.0.1:7777{path}"));
        c.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = c.spawn().expect("curl");
        if let Some(b) = body {
            use std::io::Write;
            let mut stdin = child.stdin.take().expect("stdin");
            stdin.write_all(b).expect("write body");
        } else {
            drop(child.stdin.take());
        }
        let out = child.wait_with_output().expect("curl");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let (body, code) = text.rsplit_once('\n').unwrap_or(("", "0"));
        (code.trim().parse().unwrap_or(0), body.to_string())
    }

    /// PIDs of every VMM this test's daemon started (from the pid files).
    pub fn vmm_pids(&self) -> Vec<u32> {
        let mut pids = Vec::new();
        if let Ok(rd) = fs::read_dir(self.state()) {
            for e in rd.flatten() {
                for f in ["qemu.pid", "firecracker.pid"] {
                    if let Ok(p) = fs::read_to_string(e.path().join(f))
                        && let Ok(p) = p.trim().parse()
                    {
                        pids.push(p);
                    }
                }
            }
        }
        pids
    }

    /// Processes whose command line mentions this test's state dir.
    pub fn processes(&self) -> Vec<u32> {
        let marker = self.state().display().to_string();
        let mut v = Vec::new();
        for e in fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
                continue;
            };
            if Some(pid) == self.daemon.as_ref().map(|c| c.id()) {
                continue;
            }
            if let Ok(c) = fs::read(e.path().join("cmdline")) {
                let c = String::from_utf8_lossy(&c).replace('\0', " ");
                if c.contains(&marker) && !c.contains(" daemon ") {
                    v.push(pid);
                }
            }
        }
        v
    }
}

pub fn kill_pid(pid: u32) {
    // SAFETY: kill(2) has no memory-safety preconditions.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

/// (device, inode) of the chroots under a VM dir (`jail/*/<id>/root`).
pub fn jail_roots(vm_dir: &Path) -> Vec<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let id = vm_dir.file_name().unwrap_or_default().to_owned();
    fs::read_dir(vm_dir.join("jail"))
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| fs::metadata(e.path().join(&id).join("root")).ok())
        .map(|m| (m.dev(), m.ino()))
        .collect()
}

/// (device, inode) of a process's root directory.
pub fn root_of(pid: u32) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    let m = fs::metadata(format!("/proc/{pid}/root")).ok()?;
    Some((m.dev(), m.ino()))
}

/// A field of /proc/<pid>/status (e.g. "Uid", "Seccomp"), as text.
pub fn proc_status(pid: u32, field: &str) -> Option<String> {
    fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()?
        .lines()
        .find_map(|l| {
            l.strip_prefix(&format!("{field}:"))
                .map(|v| v.trim().to_string())
        })
}

/// The memory limit (bytes) and CPU quota (microseconds of CPU per 100 ms)
/// of the cgroups a process is in, read from the cgroup files (v1 or v2),
/// with the directories they came from.
pub fn cgroup_limits(pid: u32) -> (Option<u64>, Option<u64>, Vec<PathBuf>) {
    let dirs = fcm::host::cgroup::of_process(Path::new("/sys/fs/cgroup"), pid);
    let read = |f: &Path| fs::read_to_string(f).ok().map(|s| s.trim().to_string());
    let mut mem = None;
    let mut cpu = None;
    for d in &dirs {
        if let Some(v) =
            read(&d.join("memory.max")).or_else(|| read(&d.join("memory.limit_in_bytes")))
        {
            mem = v.parse().ok();
        }
        if let Some(v) = read(&d.join("cpu.max")) {
            let mut it = v.split_whitespace();
            let (q, p) = (
                it.next().and_then(|q| q.parse::<u64>().ok()),
                it.next().and_then(|p| p.parse::<u64>().ok()),
            );
            if let (Some(q), Some(p)) = (q, p) {
                cpu = Some(q * 100_000 / p);
            }
        } else if let (Some(q), Some(p)) = (
            read(&d.join("cpu.cfs_quota_us")),
            read(&d.join("cpu.cfs_period_us")),
        ) && let (Ok(q), Ok(p)) = (q.parse::<u64>(), p.parse::<u64>())
        {
            cpu = Some(q * 100_000 / p);
        }
    }
    (mem, cpu, dirs)
}

impl Drop for Fcm {
    fn drop(&mut self) {
        self.kill_daemon();
        let jailed: Vec<u32> = fs::read_dir(self.state())
            .into_iter()
            .flatten()
            .flatten()
            .flat_map(|e| self.vmms_of(&e.file_name().to_string_lossy()))
            .collect();
        for pid in self
            .vmm_pids()
            .into_iter()
            .chain(self.processes())
            .chain(jailed)
        {
            kill_pid(pid);
        }
        // The VMs' cgroups, once their processes are gone.
        for e in fs::read_dir(self.state()).into_iter().flatten().flatten() {
            let listing = fs::read_to_string(e.path().join("cgroups")).unwrap_or_default();
            for dir in listing.lines().filter(|l| l.starts_with("/sys/fs/cgroup/")) {
                let _ = wait_for(Duration::from_secs(3), || {
                    fs::remove_dir(dir)
                        .ok()
                        .or_else(|| (!Path::new(dir).exists()).then_some(()))
                });
            }
        }
        if std::thread::panicking() {
            eprintln!(
                "--- daemon log ---\n{}",
                fs::read_to_string(self.log()).unwrap_or_default()
            );
            for e in fs::read_dir(self.state()).into_iter().flatten().flatten() {
                let log = e.path().join("console.log");
                if let Ok(s) = fs::read_to_string(&log) {
                    let tail: String = s
                        .chars()
                        .rev()
                        .take(3000)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect();
                    eprintln!("--- {} (tail) ---\n{tail}", log.display());
                }
            }
        }
    }
}

/// True when something at ip:port answers from inside the namespace.
pub fn tcp_open(ns: &Netns, ip: &str, port: u16) -> bool {
    let out = ns.exec(&[
        "bash",
        "-c",
        &format!("exec 3<>/dev/tcp/{ip}/{port} && echo open"),
    ]);
    String::from_utf8_lossy(&out.stdout).contains("open")
}

pub fn is_alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
        && !fs::read_to_string(format!("/proc/{pid}/stat"))
            .unwrap_or_default()
            .contains(") Z")
}

/// A tmpfs of `size_mib` mounted on `dir` (made if missing), unmounted when
/// dropped: a small file system to fill up.
pub struct SmallTmpfs(PathBuf);

impl SmallTmpfs {
    pub fn mount(dir: &Path, size_mib: u64, tag: &str) -> Self {
        std::fs::create_dir_all(dir).expect("mkdir");
        let mounted = Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), tag])
            .arg(dir)
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(mounted, "could not mount a tmpfs on {}", dir.display());
        Self(dir.to_path_buf())
    }
}

impl Drop for SmallTmpfs {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg(&self.0).status();
    }
}
