//! The Caddy module against a real Caddy on loopback: each test starts its own
//! `caddy run` on free 127.0.0.1 ports with a temp main Caddyfile (internal CA,
//! no ACME, storage in the temp dir), a user site fcm must leave alone, and
//! loopback upstreams standing in for guests. Pages are fetched with curl
//! `--resolve <domain>:<port>:127.0.0.1`, so no name is looked up and nothing
//! leaves the host. Caddy is killed by PID on drop, also when a test fails.

use std::fs;
use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use fcm::host::caddy::{Caddy, CaddyConfig, CaddyError};
use fcm::names::VmName;

const DEADLINE: Duration = Duration::from_secs(15);

fn caddy_installed() -> bool {
    if fcm::host::find_program(Path::new("caddy")).is_some() {
        return true;
    }
    eprintln!("skipping: caddy is not on PATH");
    false
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

fn name(s: &str) -> VmName {
    VmName::parse(s).expect("valid name")
}

fn wait_for<T>(timeout: Duration, mut f: impl FnMut() -> Option<T>) -> Option<T> {
    fcm::host::wait_until(timeout, Duration::from_millis(100), &mut f)
}

/// A guest stand-in: answers every request with a fixed page.
struct Upstream {
    addr: SocketAddr,
    stop: Arc<AtomicBool>,
    thread: Option<thread::JoinHandle<()>>,
}

impl Upstream {
    fn start(page: &str) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind upstream");
        let addr = listener.local_addr().expect("addr");
        let stop = Arc::new(AtomicBool::new(false));
        let response = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{page}",
            page.len()
        );
        let flag = stop.clone();
        let thread = thread::spawn(move || {
            for conn in listener.incoming() {
                if flag.load(Ordering::SeqCst) {
                    break;
                }
                let Ok(mut conn) = conn else { continue };
                let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
                let mut request = Vec::new();
                let mut buf = [0u8; 1024];
                while !request.windows(4).any(|w| w == b"\r\n\r\n") {
                    match conn.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => request.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = conn.write_all(response.as_bytes());
            }
        });
        Self {
            addr,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        // Wake the accept loop so it sees the flag; the listener closes with it.
        let _ = TcpStream::connect_timeout(&self.addr, Duration::from_secs(1));
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// A `caddy run` child, stopped by PID on drop.
struct CaddyProcess {
    child: Child,
}

impl Drop for CaddyProcess {
    fn drop(&mut self) {
        fcm::host::signal(self.child.id(), fcm::host::Signal::TERM);
        let exited = wait_for(Duration::from_secs(5), || {
            self.child.try_wait().ok().flatten()
        });
        if exited.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// A temp dir with a main Caddyfile and a running Caddy.
struct Env {
    dir: tempfile::TempDir,
    main: PathBuf,
    sites: PathBuf,
    admin: String,
    http_port: u16,
    https_port: u16,
    process: Option<CaddyProcess>,
}

impl Env {
    fn new() -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let main = dir.path().join("Caddyfile");
        let sites = dir.path().join("fcm.d");
        let admin = format!("127.0.0.1:{}", free_port());
        let (http_port, https_port) = (free_port(), free_port());
        let storage = dir.path().join("storage");
        let caddyfile = format!(
            "{{\n\
             \tadmin {admin}\n\
             \thttp_port {http_port}\n\
             \thttps_port {https_port}\n\
             \tdefault_bind 127.0.0.1\n\
             \tlocal_certs\n\
             \tskip_install_trust\n\
             \tauto_https disable_redirects\n\
             \tstorage file_system {{\n\
             \t\troot {}\n\
             \t}}\n\
             }}\n\
             \n\
             # The user's own site; fcm must never touch it.\n\
             http://user.example:{http_port} {{\n\
             \trespond \"user site\"\n\
             }}\n",
            storage.display()
        );
        fs::write(&main, caddyfile).expect("write Caddyfile");
        let mut env = Self {
            dir,
            main,
            sites,
            admin,
            http_port,
            https_port,
            process: None,
        };
        env.start_caddy();
        env
    }

    fn start_caddy(&mut self) {
        let log = fs::File::create(self.dir.path().join("caddy.log")).expect("log");
        let child = Command::new("caddy")
            .args(["run", "--adapter", "caddyfile", "--config"])
            .arg(&self.main)
            .current_dir(self.dir.path())
            // Keep autosave.json and friends out of the real home.
            .env("HOME", self.dir.path())
            .env("XDG_CONFIG_HOME", self.dir.path().join("xdg-config"))
            .env("XDG_DATA_HOME", self.dir.path().join("xdg-data"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("spawn caddy");
        self.process = Some(CaddyProcess { child });
        let up = wait_for(DEADLINE, || TcpStream::connect(&self.admin).ok());
        assert!(up.is_some(), "caddy did not start:\n{}", self.log());
    }

    fn stop_caddy(&mut self) {
        self.process = None;
        let down = wait_for(DEADLINE, || TcpStream::connect(&self.admin).err());
        assert!(down.is_some(), "caddy still answers on {}", self.admin);
    }

    fn log(&self) -> String {
        fs::read_to_string(self.dir.path().join("caddy.log")).unwrap_or_default()
    }

    fn config(&self, guest_port: u16) -> CaddyConfig {
        CaddyConfig {
            enabled: true,
            caddyfile: self.main.clone(),
            sites_dir: self.sites.clone(),
            caddy_bin: PathBuf::from("caddy"),
            admin: self.admin.clone(),
            public_ip: Some(Ipv4Addr::LOCALHOST),
            domain_suffix: "sslip.io".into(),
            guest_port,
            reload_command: Vec::new(),
        }
    }

    fn caddy(&self) -> Caddy {
        Caddy::new(self.config(8000))
    }

    /// `(status, body)` of `https://<domain>:<https_port>/`, or `None` when no
    /// HTTP answer came (connection or TLS refused).
    fn fetch(&self, domain: &str) -> Option<(u16, String)> {
        let port = self.https_port;
        curl(&[
            "-k".to_string(),
            "--resolve".to_string(),
            format!("{domain}:{port}:127.0.0.1"),
            format!("https://{domain}:{port}/"),
        ])
    }

    fn fetch_user_site(&self) -> Option<(u16, String)> {
        let port = self.http_port;
        curl(&[
            "--resolve".to_string(),
            format!("user.example:{port}:127.0.0.1"),
            format!("http://user.example:{port}/"),
        ])
    }

    /// Polls until the page of `domain` is `(status, body containing text)`.
    fn expect_page(&self, domain: &str, status: u16, text: &str) {
        let mut last = None;
        let ok = wait_for(DEADLINE, || {
            last = self.fetch(domain);
            match &last {
                Some((s, body)) if *s == status && body.contains(text) => Some(()),
                _ => None,
            }
        });
        assert!(
            ok.is_some(),
            "{domain}: wanted {status} {text:?}, last got {last:?}\n{}",
            self.log()
        );
    }

    /// Polls until `domain` no longer serves `text` with a 200.
    fn expect_gone(&self, domain: &str, text: &str) {
        let mut last = None;
        let gone = wait_for(DEADLINE, || {
            last = self.fetch(domain);
            match &last {
                Some((200, body)) if body.contains(text) => None,
                _ => Some(()),
            }
        });
        assert!(gone.is_some(), "{domain} still serves {text:?}: {last:?}");
    }

    fn site_files(&self) -> Vec<String> {
        let mut names: Vec<String> = match fs::read_dir(&self.sites) {
            Ok(entries) => entries
                .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
                .collect(),
            Err(_) => Vec::new(),
        };
        names.sort();
        names
    }
}

fn curl(args: &[String]) -> Option<(u16, String)> {
    let out = Command::new("curl")
        .args([
            "-s",
            "--noproxy",
            "*",
            "--max-time",
            "5",
            "-w",
            "\n%{http_code}",
        ])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run curl");
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let (body, code) = text.rsplit_once('\n')?;
    Some((code.trim().parse().ok()?, body.to_owned()))
}

#[test]
fn site_serves_the_guest_page_and_leaves_the_main_caddyfile_alone() {
    if !caddy_installed() {
        return;
    }
    let env = Env::new();
    let guest = Upstream::start("Hello from cosmic-nova");
    // The production path: add_site(name, guest ip) with the configured guest port.
    let caddy = Caddy::new(env.config(guest.addr.port()));
    let vm = name("cosmic-nova");
    let domain = caddy.domain(&vm);
    assert_eq!(domain, "cosmic-nova.127-0-0-1.sslip.io");
    assert_eq!(caddy.url(&vm), "https://cosmic-nova.127-0-0-1.sslip.io");

    let user_file = fs::read(&env.main).expect("read");
    caddy.ensure_import().expect("ensure_import");
    let with_import = fs::read(&env.main).expect("read");
    assert!(
        with_import.starts_with(&user_file),
        "the user's text must be kept"
    );
    let appended = String::from_utf8_lossy(&with_import[user_file.len()..]).into_owned();
    assert_eq!(appended.matches("import ").count(), 1, "{appended}");
    caddy.ensure_import().expect("ensure_import again");
    assert_eq!(fs::read(&env.main).expect("read"), with_import);

    caddy.add_site(&vm, Ipv4Addr::LOCALHOST).expect("add_site");
    assert_eq!(env.site_files(), ["cosmic-nova.caddy"]);
    env.expect_page(&domain, 200, "Hello from cosmic-nova");
    assert_eq!(
        fs::read(&env.main).expect("read"),
        with_import,
        "main Caddyfile changed by add_site"
    );
    assert_eq!(env.fetch_user_site(), Some((200, "user site".to_string())));
    // Adding again (e.g. on daemon restart) is harmless.
    caddy
        .add_site(&vm, Ipv4Addr::LOCALHOST)
        .expect("add_site again");
    env.expect_page(&domain, 200, "Hello from cosmic-nova");

    caddy.remove_site(&vm).expect("remove_site");
    assert!(env.site_files().is_empty(), "{:?}", env.site_files());
    env.expect_gone(&domain, "Hello from cosmic-nova");
    assert_eq!(
        fs::read(&env.main).expect("read"),
        with_import,
        "main Caddyfile changed by remove_site"
    );
    assert_eq!(env.fetch_user_site(), Some((200, "user site".to_string())));
    caddy
        .remove_site(&vm)
        .expect("removing a missing site is fine");
}

#[test]
fn two_sites_reach_their_own_upstreams() {
    if !caddy_installed() {
        return;
    }
    let env = Env::new();
    let caddy = env.caddy();
    let (nova, comet) = (name("cosmic-nova"), name("stellar-comet"));
    let nova_guest = Upstream::start("Hello from cosmic-nova");
    let comet_guest = Upstream::start("Hello from stellar-comet");

    caddy
        .add_site_upstream(&nova, nova_guest.addr)
        .expect("add nova");
    caddy
        .add_site_upstream(&comet, comet_guest.addr)
        .expect("add comet");
    assert_eq!(
        env.site_files(),
        ["cosmic-nova.caddy", "stellar-comet.caddy"]
    );
    assert_eq!(
        caddy.list_sites().expect("list"),
        vec![nova.clone(), comet.clone()]
    );
    env.expect_page(&caddy.domain(&nova), 200, "Hello from cosmic-nova");
    env.expect_page(&caddy.domain(&comet), 200, "Hello from stellar-comet");

    caddy.remove_site(&nova).expect("remove nova");
    env.expect_gone(&caddy.domain(&nova), "Hello from cosmic-nova");
    env.expect_page(&caddy.domain(&comet), 200, "Hello from stellar-comet");
}

#[test]
fn stopped_vm_answers_with_a_clear_status() {
    if !caddy_installed() {
        return;
    }
    let env = Env::new();
    let guest = Upstream::start("Hello from cosmic-nova");
    let caddy = Caddy::new(env.config(guest.addr.port()));
    let vm = name("cosmic-nova");
    let domain = caddy.domain(&vm);

    caddy.add_site(&vm, Ipv4Addr::LOCALHOST).expect("add_site");
    env.expect_page(&domain, 200, "Hello from cosmic-nova");

    caddy
        .set_stopped(&vm, true, Ipv4Addr::LOCALHOST)
        .expect("stop");
    let t = Instant::now();
    env.expect_page(
        &domain,
        503,
        "VM cosmic-nova is stopped: run `fcm start cosmic-nova`",
    );
    assert!(
        t.elapsed() < Duration::from_secs(5),
        "the stopped page must not wait for a guest"
    );

    caddy
        .set_stopped(&vm, false, Ipv4Addr::LOCALHOST)
        .expect("start");
    env.expect_page(&domain, 200, "Hello from cosmic-nova");

    // Running, but nothing answers on the guest port: a page that says so.
    drop(guest);
    env.expect_page(&domain, 502, "VM cosmic-nova is not answering on port");
}

#[test]
fn caddy_not_running_leaves_nothing_behind() {
    if !caddy_installed() {
        return;
    }
    let mut env = Env::new();
    let guest = Upstream::start("Hello from cosmic-nova");
    let caddy = env.caddy();
    let (nova, comet) = (name("cosmic-nova"), name("stellar-comet"));
    caddy
        .add_site_upstream(&nova, guest.addr)
        .expect("add nova");
    env.expect_page(&caddy.domain(&nova), 200, "Hello from cosmic-nova");
    let nova_file = fs::read(caddy.site_path(&nova)).expect("read");
    let main = fs::read(&env.main).expect("read");

    env.stop_caddy();
    let err = caddy
        .add_site_upstream(&comet, guest.addr)
        .expect_err("caddy is down");
    assert!(matches!(err, CaddyError::NotRunning { .. }), "{err:?}");
    assert!(
        err.to_string()
            .starts_with("caddy is not running (reload failed"),
        "{err}"
    );
    assert_eq!(
        env.site_files(),
        ["cosmic-nova.caddy"],
        "no file for comet, no temp file"
    );

    // A change to an existing site puts the old content back.
    caddy
        .set_stopped(&nova, true, Ipv4Addr::LOCALHOST)
        .expect_err("caddy is down");
    assert_eq!(fs::read(caddy.site_path(&nova)).expect("read"), nova_file);
    caddy.remove_site(&nova).expect_err("caddy is down");
    assert_eq!(fs::read(caddy.site_path(&nova)).expect("read"), nova_file);
    assert_eq!(fs::read(&env.main).expect("read"), main);

    // Once Caddy is back, the same calls work.
    env.start_caddy();
    caddy
        .add_site_upstream(&comet, guest.addr)
        .expect("add comet");
    env.expect_page(&caddy.domain(&comet), 200, "Hello from cosmic-nova");
    env.expect_page(&caddy.domain(&nova), 200, "Hello from cosmic-nova");
}

#[test]
fn broken_main_caddyfile_fails_cleanly() {
    if !caddy_installed() {
        return;
    }
    let env = Env::new();
    let guest = Upstream::start("Hello from cosmic-nova");
    let caddy = env.caddy();
    let vm = name("cosmic-nova");
    caddy.ensure_import().expect("ensure_import");
    let good = fs::read(&env.main).expect("read");

    let mut broken = good.clone();
    broken.extend_from_slice(b"\nhttp://broken.example {\n\tthis_is_not_a_directive\n");
    fs::write(&env.main, &broken).expect("break the Caddyfile");
    let err = caddy
        .add_site_upstream(&vm, guest.addr)
        .expect_err("invalid config");
    assert!(matches!(err, CaddyError::Invalid { .. }), "{err:?}");
    let chain = std::error::Error::source(&err)
        .map(|s| s.to_string())
        .unwrap_or_default();
    assert!(
        chain.contains("Error:"),
        "Caddy's own message should be kept: {chain}"
    );
    assert!(
        !chain.contains("\"level\""),
        "log lines should be dropped: {chain}"
    );
    assert!(env.site_files().is_empty(), "{:?}", env.site_files());
    assert_eq!(
        fs::read(&env.main).expect("read"),
        broken,
        "fcm must not touch the user's file"
    );
    // The running Caddy kept its last good configuration.
    assert_eq!(env.fetch_user_site(), Some((200, "user site".to_string())));
    assert!(env.fetch(&caddy.domain(&vm)).is_none_or(|(s, _)| s != 200));

    fs::write(&env.main, &good).expect("repair");
    caddy
        .add_site_upstream(&vm, guest.addr)
        .expect("add_site after repair");
    env.expect_page(&caddy.domain(&vm), 200, "Hello from cosmic-nova");
}

#[test]
fn stale_sites_are_pruned() {
    if !caddy_installed() {
        return;
    }
    let env = Env::new();
    let guest = Upstream::start("Hello from cosmic-nova");
    let caddy = env.caddy();
    let (nova, comet) = (name("cosmic-nova"), name("stellar-comet"));
    caddy
        .add_site_upstream(&nova, guest.addr)
        .expect("add nova");
    caddy
        .add_site_upstream(&comet, guest.addr)
        .expect("add comet");

    let removed = caddy.prune_sites(&|n| n == &nova).expect("prune");
    assert_eq!(removed, vec![comet.clone()]);
    assert_eq!(env.site_files(), ["cosmic-nova.caddy"]);
    env.expect_gone(&caddy.domain(&comet), "Hello");
    env.expect_page(&caddy.domain(&nova), 200, "Hello from cosmic-nova");
}

#[test]
fn missing_caddy_binary_is_reported() {
    // Needs no Caddy: the binary is the thing missing.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("Caddyfile"), ":8080 {\n}\n").expect("write");
    let caddy = Caddy::new(CaddyConfig {
        caddyfile: dir.path().join("Caddyfile"),
        sites_dir: dir.path().join("fcm.d"),
        caddy_bin: dir.path().join("no-caddy-here"),
        public_ip: Some(Ipv4Addr::LOCALHOST),
        ..CaddyConfig::default()
    });
    let vm = name("cosmic-nova");
    let err = caddy
        .add_site(&vm, Ipv4Addr::new(172, 16, 0, 2))
        .expect_err("no caddy");
    assert!(matches!(err, CaddyError::NotInstalled { .. }), "{err:?}");
    assert!(err.to_string().contains("caddy is not installed"), "{err}");
    assert_eq!(
        fs::read_dir(dir.path().join("fcm.d")).expect("ls").count(),
        0
    );
}

#[test]
fn a_configured_reload_command_is_used_and_its_failure_rolls_back() {
    if !caddy_installed() {
        return;
    }
    let env = Env::new();
    let vm = name("cosmic-nova");
    let guest = Upstream::start("Hello from cosmic-nova");
    // A reload command that fails: nothing may stay behind.
    let failing = Caddy::new(CaddyConfig {
        reload_command: vec!["false".into()],
        ..env.config(guest.addr.port())
    });
    let err = failing
        .add_site_upstream(&vm, guest.addr)
        .expect_err("reload fails");
    assert!(matches!(err, CaddyError::Reload { .. }), "{err:?}");
    assert!(env.site_files().is_empty(), "{:?}", env.site_files());
    // The same reload spelled out as a custom command works.
    let custom = Caddy::new(CaddyConfig {
        reload_command: vec![
            "caddy".into(),
            "reload".into(),
            "--config".into(),
            env.main.display().to_string(),
            "--adapter".into(),
            "caddyfile".into(),
            "--address".into(),
            env.admin.clone(),
        ],
        ..env.config(guest.addr.port())
    });
    custom
        .add_site_upstream(&vm, guest.addr)
        .expect("custom reload");
    env.expect_page(&custom.domain(&vm), 200, "Hello from cosmic-nova");
}
