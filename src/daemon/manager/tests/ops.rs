//! Stop, start and destroy; requests in the wrong state or while the
//! daemon shuts down; a VMM that dies on its own; a daemon restart with
//! VMMs running on.

use std::time::Duration;

use super::fake_vmm::{Launch, Shutdown};
use super::{assert_wrong_state, run, run_with, status};
use crate::daemon::lifecycle::VmState;
use crate::daemon::manager::ManagerError;
use crate::daemon::store;
use crate::error::chain;
use crate::host::disk_lock::DiskLock;
use crate::wire::api::{CheckpointRequest, CreateRequest, DiskSize, ExecRequest, ResizeRequest};

#[test]
fn stop_records_stopping_while_the_guest_shuts_down() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        let s = h.m.stop("web").expect("stop");
        assert_eq!((s.state.as_str(), s.pid), ("stopped", None));
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        // The VMM's Ctrl-Alt-Del ended it: the guest was not asked, and
        // its connection was dropped once it was down.
        assert_eq!(
            h.take_journal(),
            ["vmm request_shutdown web: stopping", "forget web: stopping"]
        );
        assert_eq!(h.state(&v), "stopped");
        h.assert_down(&v);
    });
}

#[test]
fn stop_asks_the_guest_when_the_vmm_cannot() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        h.vmms.set(|s| s.shutdown = Shutdown::Fails);
        h.guest_powers_off(true);
        let s = h.m.stop("web").expect("stop");
        assert!(s.warnings.is_empty(), "a clean stop: {:?}", s.warnings);
        assert_eq!(
            h.take_journal(),
            [
                "vmm request_shutdown web: stopping",
                "shutdown web: stopping",
                "forget web: stopping"
            ]
        );
        assert_eq!(h.state(&v), "stopped");
        h.assert_down(&v);
    });
}

#[test]
fn a_guest_that_ignores_ctrl_alt_del_gets_time_to_shut_down_when_asked() {
    // A short stop timeout: the guest's own shutdown still gets its share.
    run_with(
        |cfg| cfg.stop_timeout_secs = 2,
        |h| {
            let v = h.create("web");
            h.take_journal();
            h.vmms.set(|s| s.shutdown = Shutdown::Ignored);
            h.guest_powers_off(true);
            let s = h.m.stop("web").expect("stop");
            assert!(s.warnings.is_empty(), "a clean stop: {:?}", s.warnings);
            assert_eq!(
                h.take_journal(),
                [
                    "vmm request_shutdown web: stopping",
                    "shutdown web: stopping",
                    "forget web: stopping"
                ]
            );
            h.assert_down(&v);
        },
    );
}

#[test]
fn stop_kills_a_guest_that_does_not_shut_down() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        h.vmms.set(|s| s.shutdown = Shutdown::Ignored);
        h.guests.set(|s| s.shutdown_fails = true);
        let s = h.m.stop("web").expect("stop");
        assert_eq!(
            s.warnings,
            ["the guest did not shut down within 1 s and was killed"]
        );
        assert_eq!(
            h.take_journal(),
            [
                "vmm request_shutdown web: stopping",
                "shutdown web: stopping",
                "forget web: stopping"
            ]
        );
        assert_eq!(h.state(&v), "stopped");
        h.assert_down(&v);
    });
}

#[test]
fn start_records_starting_before_the_vmm() {
    run(|h| {
        let v = h.create("web");
        h.m.stop("web").expect("stop");
        h.take_journal();
        let s = h.m.start("web").expect("start");
        assert_eq!(s.state, "running");
        assert!(s.warnings.is_empty(), "{:?}", s.warnings);
        assert_eq!(h.take_journal(), ["vmm launch web: starting"]);
        h.assert_running(&v);
        assert_ne!(s.pid, v.pid, "a new VMM");
        assert_eq!(s.pid, h.record(&v).pid);
    });
}

#[test]
fn a_start_whose_vmm_fails_leaves_the_vm_stopped() {
    run(|h| {
        let v = h.create("web");
        h.m.stop("web").expect("stop");
        for how in [Launch::Fails, Launch::DiesAfterSpawn] {
            h.vmms.set(|s| s.launch = how);
            h.take_journal();
            let e = h.m.start("web").expect_err("start must fail");
            match &e {
                ManagerError::Operation { action, cause, .. } => {
                    assert_eq!(*action, "start");
                    let message = chain(cause);
                    assert!(message.contains("fake VMM"), "{message}");
                }
                other => panic!("{how:?}: {other:?}"),
            }
            assert_eq!(status(&e), 500);
            assert_eq!(h.take_journal(), ["vmm launch web: starting"]);
            assert_eq!(h.state(&v), "stopped", "{how:?}");
            h.assert_down(&v);
        }
        h.vmms.set(|s| s.launch = Launch::Works);
        h.m.start("web").expect("start");
        h.assert_running(&v);
    });
}

#[test]
fn a_start_on_a_disk_another_process_holds_is_a_conflict_that_changes_nothing() {
    run(|h| {
        let v = h.create("web");
        h.m.stop("web").expect("stop");
        // Another process takes the disk's lock, as another VMM would.
        let other = DiskLock::acquire(&h.dir(&v).join("rootfs.img")).expect("lock the disk");
        h.take_journal();
        let e = h.m.start("web").expect_err("start on a held disk");
        assert_eq!(status(&e), 409, "{e}");
        let message = chain(&e);
        assert!(message.contains("in use by another VMM"), "{message}");
        let hint = e.hint().expect("a hint");
        assert!(
            hint.contains(&format!(
                "fuser -v {}",
                h.dir(&v).join("rootfs.img").display()
            )),
            "{hint}"
        );
        // No VMM was asked, nothing of the VM runs, its record is as before.
        assert!(h.take_journal().is_empty());
        assert_eq!(h.state(&v), "stopped");
        assert!(h.vmm_pids(&v).is_empty());
        assert!(!h.tap_exists(&v), "the refused start left its tap");
        drop(other);
        h.m.start("web").expect("start once the disk is free");
        h.assert_running(&v);
    });
}

#[test]
fn requests_in_the_wrong_state_are_refused_and_change_nothing() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        let before = h.record(&v);
        let e = h.m.start("web").expect_err("start a running VM");
        assert_wrong_state(&e, "running", "stopped", "start it");
        assert_eq!(
            e.hint().as_deref(),
            Some("stop it first with: fcm stop web")
        );
        let e = h.m.resume("web").expect_err("resume a running VM");
        assert_wrong_state(&e, "running", "paused", "resume it");
        assert_eq!(
            e.hint().as_deref(),
            Some("pause it first with: fcm pause web")
        );
        let resize = ResizeRequest {
            cpus: Some(2),
            ..Default::default()
        };
        let e =
            h.m.resize("web", resize.clone())
                .expect_err("resize a running VM");
        assert_wrong_state(&e, "running", "stopped", "resize it");
        assert_eq!(h.record(&v), before);
        h.assert_running(&v);

        h.m.stop("web").expect("stop");
        h.take_journal();
        let before = h.record(&v);
        let e = h.m.stop("web").expect_err("stop a stopped VM");
        assert_wrong_state(&e, "stopped", "running or paused", "stop it");
        assert_eq!(e.hint().as_deref(), Some("start it with: fcm start web"));
        let e = h.m.pause("web").expect_err("pause a stopped VM");
        assert_wrong_state(&e, "stopped", "running", "pause it");
        let e =
            h.m.checkpoint("web", CheckpointRequest::default())
                .expect_err("checkpoint a stopped VM");
        assert_wrong_state(&e, "stopped", "running", "checkpoint it");
        let exec = ExecRequest {
            cmd: vec!["true".into()],
            ..Default::default()
        };
        let e = h.m.exec("web", exec).expect_err("exec in a stopped VM");
        assert_wrong_state(&e, "stopped", "running", "use it");
        assert_eq!(h.record(&v), before);
        assert!(h.take_journal().is_empty(), "something was asked");
        h.assert_down(&v);
        // A stopped VM may be resized, within bounds; its disk only grows.
        let bad = [
            ResizeRequest::default(),
            ResizeRequest {
                cpus: Some(0),
                ..Default::default()
            },
            ResizeRequest {
                disk: Some(DiskSize(1 << 30)),
                ..Default::default()
            },
        ];
        for req in bad {
            let e = h.m.resize("web", req.clone()).expect_err("bad resize");
            assert!(matches!(e, ManagerError::BadRequest(_)), "{req:?}: {e:?}");
        }
        assert_eq!(h.record(&v), before);
        let r = h.m.resize("web", resize).expect("resize");
        assert_eq!((r.cpus, h.record(&v).cpus), (2, 2));
    });
}

#[test]
fn a_daemon_shutting_down_takes_no_new_operations() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        assert!(h.m.shut_down(Duration::ZERO), "nothing was under way");
        for e in [
            h.m.stop("web").expect_err("stop"),
            h.m.pause("web").expect_err("pause"),
            h.m.destroy("web").expect_err("destroy"),
            h.m.create(CreateRequest::default()).expect_err("create"),
        ] {
            assert!(matches!(e, ManagerError::ShuttingDown), "{e:?}");
            assert_eq!(status(&e), 503);
        }
        assert!(h.take_journal().is_empty());
        h.assert_running(&v);
    });
}

#[test]
fn unknown_vms_are_404() {
    run(|h| {
        let e = h.m.stop("nothing").expect_err("no such VM");
        assert!(matches!(e, ManagerError::NotFound(_)), "{e:?}");
        assert_eq!(status(&e), 404);
        assert_eq!(e.hint().as_deref(), Some("list VMs with: fcm ls"));
        assert!(matches!(
            h.m.destroy("nothing"),
            Err(ManagerError::NotFound(_))
        ));
        assert!(matches!(
            h.m.stop("Not A Name!"),
            Err(ManagerError::InvalidName(_))
        ));
    });
}

#[test]
fn destroy_records_destroying_and_leaves_nothing() {
    run(|h| {
        let v = h.create("web");
        let stopped = h.create("db");
        h.m.stop("db").expect("stop");
        h.take_journal();
        let d = h.m.destroy("web").expect("destroy");
        assert_eq!((d.state.as_str(), d.pid), ("destroyed", None));
        assert!(d.warnings.is_empty(), "{:?}", d.warnings);
        // Its connection was dropped with the record saying destroying,
        // before the VMM was killed.
        assert_eq!(h.take_journal(), ["forget web: destroying"]);
        assert!(!h.dir(&v).exists());
        h.assert_down(&v);
        assert!(matches!(h.m.get("web"), Err(ManagerError::NotFound(_))));
        h.m.destroy("db").expect("destroy a stopped VM");
        assert!(!h.dir(&stopped).exists());
        assert!(h.m.list().is_empty());
        // Nothing of either is left in the state dir.
        let left: Vec<String> = std::fs::read_dir(&h.cfg.state_dir)
            .expect("state dir")
            .flatten()
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.starts_with(".trash-") || n.len() == 8)
            .collect();
        assert!(left.is_empty(), "{left:?}");
    });
}

#[test]
fn a_broken_vm_directory_is_listed_and_destroyed() {
    run(|h| {
        let id = "brok3n00";
        let dir = h.cfg.state_dir.join(id);
        std::fs::create_dir(&dir).expect("dir");
        std::fs::write(dir.join("config.json"), "{not json").expect("record");
        h.restart();
        let list = h.m.list();
        assert_eq!(list.len(), 1);
        assert_eq!(
            (list[0].id.as_str(), list[0].state.as_str()),
            (id, "broken")
        );
        let e = h.m.start(id).expect_err("a broken VM cannot start");
        assert!(matches!(e, ManagerError::Broken { .. }), "{e:?}");
        assert_eq!(status(&e), 409);
        assert_eq!(
            e.hint().as_deref(),
            Some("nothing can be done with it but remove it: fcm destroy brok3n00")
        );
        let d = h.m.destroy(id).expect("destroy");
        assert_eq!(d.state, "destroyed");
        assert!(!dir.exists());
        assert!(h.m.list().is_empty());
    });
}

#[test]
fn a_vmm_that_dies_is_found_stopped_and_cleaned_up() {
    run(|h| {
        let v = h.create("web");
        // The guest powers off by itself.
        h.vmms.power_off(&h.dir(&v));
        h.wait_gone(&v);
        h.take_journal();
        let g = h.m.get("web").expect("get");
        assert_eq!((g.state.as_str(), g.pid), ("stopped", None));
        assert_eq!(h.state(&v), "stopped");
        // A lookup never waits for the host: housekeeping releases its
        // tap and runtime files, and drops the connection kept to its guest.
        assert!(h.take_journal().is_empty());
        h.m.tick();
        h.assert_down(&v);
        assert_eq!(h.take_journal(), ["forget web: stopped"]);
        h.m.start("web").expect("start again");
        h.assert_running(&v);
    });
}

#[test]
fn a_restarted_daemon_adopts_running_vmms_and_continues_interrupted_saves() {
    run(|h| {
        let a = h.create("alive");
        let b = h.create("dead");
        let c = h.create("saving");
        // b's VMM ends while no daemon runs; c's daemon died in a checkpoint.
        h.vmms.power_off(&h.dir(&b));
        h.wait_gone(&b);
        let mut rc = h.record(&c);
        rc.state = VmState::Checkpointing;
        store::save(&h.cfg.state_dir, &rc).expect("save");
        h.take_journal();
        h.restart();
        h.assert_running(&a);
        assert_eq!(h.record(&a).pid, a.pid, "the same VMM");
        assert_eq!(h.state(&b), "stopped");
        h.assert_down(&b);
        h.assert_running(&c);
        // The guest interrupted in a checkpoint continues before it is
        // recorded running; housekeeping then fixes its clock.
        assert_eq!(
            h.take_journal(),
            ["vmm continue_guest saving: checkpointing"]
        );
        h.m.tick();
        assert_eq!(h.take_journal(), ["after_restore saving: running"]);
        h.m.tick();
        assert!(h.take_journal().is_empty(), "only once");
    });
}

#[test]
fn a_restarted_daemon_lists_at_once_and_an_operation_waits_for_its_recovery() {
    run(|h| {
        let v = h.create("slowpoke");
        h.guest_powers_off(true);
        h.restart_unrecovered();
        assert!(h.m.recovering());
        // Listed as recorded, with a word, before its recovery.
        let l = h.m.list();
        assert_eq!((l.len(), l[0].state.as_str()), (1, "running"));
        assert!(
            l[0].warnings.iter().any(|w| w.contains("after a restart")),
            "{l:?}"
        );
        let g = h.m.get("slowpoke").expect("get never waits");
        assert!(!g.warnings.is_empty(), "{g:?}");
        let m = &h.m;
        std::thread::scope(|s| {
            let stop = s.spawn(|| m.stop("slowpoke"));
            std::thread::sleep(Duration::from_millis(300));
            assert!(
                !stop.is_finished(),
                "the stop did not wait for the recovery"
            );
            m.recover();
            let stopped = stop.join().expect("stop thread").expect("stop");
            assert_eq!(stopped.state, "stopped");
        });
        assert!(!h.m.recovering());
        let p = h.m.passes().recovery;
        assert!(p.done && p.vms == 1, "{p:?}");
        assert!(h.m.list()[0].warnings.is_empty());
        h.assert_down(&v);
    });
}

#[test]
fn without_caddy_housekeeping_has_no_url_to_retry_after_a_restart() {
    run(|h| {
        h.create("quiet");
        h.restart();
        // Recovery leaves the URL to housekeeping; with no Caddy there is
        // none, so one pass settles it (it used to stay pending, and every
        // pass logged "the URL of quiet now shows it running" again).
        let pending = |h: &super::Harness| {
            crate::daemon::lock(&h.m.vms)
                .values()
                .filter(|e| e.url_pending.load(std::sync::atomic::Ordering::Acquire))
                .count()
        };
        assert_eq!(pending(h), 1, "recovery leaves the URL to housekeeping");
        h.m.tick();
        assert_eq!(pending(h), 0, "the URL is still pending after a pass");
    });
}
