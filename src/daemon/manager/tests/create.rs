//! Create: the record before and after the VMM, undo of a failed create,
//! bad requests, missing prerequisites, a guest that never becomes ready.

use std::sync::{Arc, Mutex};

use super::fake_vmm::{DYING_WORDS, Launch};
use super::{run, run_with, status};
use crate::daemon::manager::ManagerError;
use crate::daemon::sessions::Sessions;
use crate::daemon::store;
use crate::daemon::{api, lock};
use crate::error::chain;
use crate::host::vmm;
use crate::wire::api::{CreateRequest, DiskSize, VmView};

fn named(name: &str) -> CreateRequest {
    CreateRequest {
        name: Some(name.into()),
        ..Default::default()
    }
}

/// The host as a VMM found it at its launch.
#[derive(Clone)]
struct AtLaunch {
    /// The host key in the VM's record.
    host_key: Option<String>,
    /// Its disk and config drive were there.
    drive: bool,
}

#[test]
fn create_records_creating_before_the_vmm_and_running_after() {
    run(|h| {
        // What the VMM finds when it is launched.
        let at_launch: Arc<Mutex<Option<AtLaunch>>> = Arc::default();
        let seen = Arc::clone(&at_launch);
        h.vmms.set(|s| {
            s.hook = Some(Arc::new(move |op, dir| {
                if op == "launch" {
                    let r = store::load(&dir.join("config.json")).expect("record");
                    let drive =
                        dir.join("config.img").is_file() && dir.join("rootfs.img").is_file();
                    *lock(&seen) = Some(AtLaunch {
                        host_key: r.host_key,
                        drive,
                    });
                }
            }));
        });
        let v = h.create("web");
        assert_eq!(v.state, "running");
        assert!(v.warnings.is_empty(), "{:?}", v.warnings);
        // When the VMM was launched, the record said `creating`, and it
        // already held the guest's host key (a VM adopted after a crash
        // is reachable); its disk and config drive were there.
        assert_eq!(h.take_journal(), ["vmm launch web: creating"]);
        let r = h.record(&v);
        let AtLaunch {
            host_key: key,
            drive,
        } = lock(&at_launch).clone().expect("launched");
        assert!(
            key.is_some() && key == r.host_key,
            "host key at launch: {key:?}"
        );
        assert!(drive, "no disk or config drive at launch");
        assert_eq!(v.pid, r.pid);
        h.assert_running(&v);
        let dir = h.dir(&v);
        for f in ["rootfs.img", "config.img", "known_hosts", "console.log"] {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        // Its disk is the base image's copy, grown to the default size.
        let disk = dir.join("rootfs.img");
        let len = std::fs::metadata(&disk).expect("disk").len();
        assert_eq!(len, r.disk_bytes.expect("disk size"));
        let mut head = vec![0u8; 1 << 20];
        std::io::Read::read_exact(&mut std::fs::File::open(&disk).expect("disk"), &mut head)
            .expect("read");
        assert!(head.iter().all(|b| *b == 7));
        // Listed, by name and by id.
        assert_eq!(h.m.get("web").expect("get").id, v.id);
        assert_eq!(h.m.get(&v.id).expect("get").name, "web");
        assert_eq!(h.m.list().len(), 1);
    });
}

#[test]
fn a_create_whose_vmm_fails_is_undone() {
    run(|h| {
        for how in [Launch::Fails, Launch::DiesAfterSpawn] {
            h.vmms.set(|s| s.launch = how);
            let e = h.m.create(named("web")).expect_err("create must fail");
            match &e {
                ManagerError::CreateStep { step, cause } => {
                    assert_eq!(*step, "start VMM", "{how:?}");
                    let message = chain(cause);
                    assert!(message.contains("fake VMM"), "{message}");
                    // The VM's directory is gone: its VMM's last words are
                    // in the error.
                    if how == Launch::DiesAfterSpawn {
                        assert!(
                            message.ends_with(&format!("; its log ends: {}", DYING_WORDS.trim())),
                            "{message}"
                        );
                    }
                }
                other => panic!("{how:?}: {other:?}"),
            }
            assert_eq!(status(&e), 500);
            // Nothing is left: no VM, no directory, no VMM, no tap.
            assert!(h.m.list().is_empty(), "{how:?}");
            assert!(matches!(h.m.get("web"), Err(ManagerError::NotFound(_))));
            let dirs: Vec<_> = std::fs::read_dir(&h.cfg.state_dir)
                .expect("state dir")
                .flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.len() == 8 || n.starts_with(".new-") || n.starts_with(".trash-"))
                .collect();
            assert!(dirs.is_empty(), "{how:?} left {dirs:?}");
            assert!(crate::host::network::list_taps().is_empty(), "{how:?}");
        }
        // The name and address are free again.
        h.vmms.set(|s| s.launch = Launch::Works);
        let v = h.create("web");
        h.assert_running(&v);
        assert_eq!(v.ip.to_string(), "172.16.0.50");
    });
}

#[test]
fn bad_create_requests_are_refused_before_anything_is_made() {
    run(|h| {
        let bad = [
            CreateRequest {
                cpus: Some(0),
                ..named("a")
            },
            CreateRequest {
                cpus: Some(33),
                ..named("a")
            },
            CreateRequest {
                memory_mib: Some(10),
                ..named("a")
            },
            CreateRequest {
                ssh_public_key: Some("ssh-ed25519 $(reboot)".into()),
                ..named("a")
            },
            CreateRequest {
                idle_pause_secs: Some(366 * 24 * 3600),
                ..named("a")
            },
            CreateRequest {
                disk: Some(DiskSize(4096)),
                ..named("a")
            },
        ];
        for req in bad {
            let e = h.m.create(req.clone()).expect_err("bad request accepted");
            assert!(matches!(e, ManagerError::BadRequest(_)), "{req:?}: {e:?}");
            assert_eq!(status(&e), 400);
        }
        for name in ["Web", "a b", "", "x/../y"] {
            let e = h.m.create(named(name)).expect_err("bad name accepted");
            assert!(matches!(e, ManagerError::InvalidName(_)), "{name:?}: {e:?}");
            assert_eq!(status(&e), 400);
        }
        assert!(h.m.list().is_empty());
        assert!(h.take_journal().is_empty(), "a VMM was asked");
        let v = h.create("web");
        let e = h.m.create(named("web")).expect_err("same name twice");
        assert!(
            matches!(&e, ManagerError::NameTaken(n) if n == "web"),
            "{e:?}"
        );
        assert_eq!(status(&e), 409);
        assert_eq!(h.m.list().len(), 1);
        h.assert_running(&v);
    });
}

#[test]
fn limits_on_vms_and_addresses_are_kept() {
    run_with(
        |cfg| {
            cfg.max_vms = Some(2);
            cfg.pool_end = cfg.pool_start;
        },
        |h| {
            h.create("one");
            let e = h.m.create(named("two")).expect_err("pool of one address");
            assert!(matches!(e, ManagerError::PoolExhausted(_)), "{e:?}");
            assert_eq!(status(&e), 503);
        },
    );
    run_with(
        |cfg| cfg.max_vms = Some(1),
        |h| {
            h.create("one");
            let e = h.m.create(named("two")).expect_err("limit of one VM");
            assert!(matches!(e, ManagerError::TooManyVms(1)), "{e:?}");
            assert_eq!(status(&e), 409);
            assert!(e.hint().is_some_and(|t| t.contains("max_vms")));
            assert_eq!(h.m.list().len(), 1);
        },
    );
}

fn missing(what: &str, e: ManagerError) {
    assert_eq!(status(&e), 503, "{e}");
    match e {
        ManagerError::Missing { what: w, .. } => assert_eq!(w, what),
        other => panic!("not missing {what}: {other:?}"),
    }
}

#[test]
fn missing_prerequisites_are_503_with_a_hint() {
    run_with(
        |cfg| cfg.kernel = "/nonexistent/vmlinux".into(),
        |h| {
            missing(
                "guest kernel",
                h.m.create(named("a")).expect_err("no kernel"),
            );
            assert!(h.m.list().is_empty());
        },
    );
    run_with(
        |cfg| cfg.rootfs = "/nonexistent/rootfs.img".into(),
        |h| {
            missing(
                "base rootfs",
                h.m.create(named("a")).expect_err("no rootfs"),
            );
        },
    );
    run(|h| {
        let v = h.create("web");
        h.m.stop("web").expect("stop");
        h.vmms
            .set(|s| s.binary = "/nonexistent/qemu-system-x86_64".into());
        let e = h.m.create(named("a")).expect_err("no VMM binary");
        assert!(e.hint().is_some_and(|t| t.contains("qemu")), "{e:?}");
        missing("qemu-system-x86_64", e);
        // Start and restore check it too, before recording anything.
        h.take_journal();
        missing("qemu-system-x86_64", h.m.start("web").expect_err("start"));
        assert_eq!(h.state(&v), "stopped");
        assert!(h.take_journal().is_empty());
    });
}

/// The API's create waits for the guest: a guest that never answers
/// leaves a running VM with a warning, not an error.
fn api_create(h: &super::Harness, body: &str) -> VmView {
    let reply = api::handle(
        &h.m,
        &Sessions::new(),
        api::Route::CreateVm,
        body.as_bytes(),
    )
    .expect("create");
    assert_eq!(reply.status, 201);
    serde_json::from_value(reply.body).expect("a VM")
}

#[test]
fn a_guest_that_never_becomes_ready() {
    run(|h| {
        h.guests.set(|s| s.ready = false);
        let v = api_create(h, r#"{"name": "web"}"#);
        assert_eq!(v.ready, Some(false));
        assert!(
            v.warnings
                .iter()
                .any(|w| w.contains("did not answer within 1 s") && w.contains("console.log")),
            "{:?}",
            v.warnings
        );
        h.assert_running(&v);
        assert!(!h.m.wait_ready("web"));
        assert!(!h.m.wait_ready("nothing"), "an unknown VM is never ready");
        h.guests.set(|s| s.ready = true);
        assert!(h.m.wait_ready("web"));
        assert!(h.m.wait_ready(&v.id));
        // Not asked when the client does not wait.
        let before = h.guests.calls().len();
        let v2 = api_create(h, r#"{"name": "api", "wait_ready": false}"#);
        assert_eq!(v2.ready, None);
        assert_eq!(h.guests.calls().len(), before);
        assert_eq!(h.guests.calls(), ["wait_ready web"; 4]);
        // The VMM of each runs: the table and the host agree.
        assert_eq!(vmm::find_vmms(&h.dir(&v2)).len(), 1);
    });
}

#[test]
fn templates_off_sweep_a_half_made_one_and_creates_boot() {
    run_with(
        |c| c.templates = false,
        |h| {
            // What a crash while a template was being made leaves.
            let half = h.cfg.state_dir.join(".template");
            std::fs::create_dir_all(&half).expect("dir");
            std::fs::write(half.join("rootfs.img"), b"half").expect("file");
            h.m.prepare_template();
            assert_eq!(h.m.template_status(), "off");
            assert!(!half.exists(), "the half-made template was left");
            let v = h.create("plain");
            assert_eq!(v.state, "running");
        },
    );
}

#[test]
fn without_an_agent_there_is_no_template_and_cold_is_accepted() {
    run(|h| {
        h.m.prepare_template();
        assert!(
            h.m.template_status().starts_with("off"),
            "{}",
            h.m.template_status()
        );
        let v =
            h.m.create(CreateRequest {
                name: Some("boots".into()),
                cold: Some(true),
                ..Default::default()
            })
            .expect("create --cold");
        assert_eq!(v.state, "running");
    });
}

#[test]
fn a_daemon_shutting_down_removes_a_template_being_made() {
    run(|h| {
        let half = h.cfg.state_dir.join(".template");
        std::fs::create_dir_all(&half).expect("dir");
        std::fs::write(half.join("rootfs.img"), b"half").expect("file");
        assert!(h.m.shut_down(std::time::Duration::from_secs(1)));
        assert!(!half.exists(), "the hidden VM's directory was left");
    });
}
