//! Checkpoints and restore: the record from freeze to thaw, the warnings
//! of a guest that cannot freeze, thaw or set its clock, failures that
//! leave the VM running (checkpoint) or stopped with the checkpoint intact
//! (restore).

use std::io::{Read, Seek, Write};

use super::fake_vmm::{Change, Launch, STATE_FILE};
use super::{Harness, run, status};
use crate::daemon::manager::ManagerError;
use crate::error::chain;
use crate::wire::api::{CheckpointRequest, CheckpointView, ResizeRequest, VmView};

fn named(name: &str) -> CheckpointRequest {
    CheckpointRequest {
        name: Some(name.into()),
    }
}

/// A running VM `web` and a checkpoint `first` of it (journal emptied).
fn with_checkpoint(h: &Harness) -> (VmView, CheckpointView) {
    let v = h.create("web");
    let cp = h.m.checkpoint("web", named("first")).expect("checkpoint");
    h.take_journal();
    (v, cp)
}

/// The first byte of the VM's disk; `set` writes it first.
fn disk_byte(h: &Harness, v: &VmView, set: Option<u8>) -> u8 {
    let mut f = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(h.dir(v).join("rootfs.img"))
        .expect("disk");
    if let Some(b) = set {
        f.write_all(&[b]).expect("write");
        f.rewind().expect("rewind");
    }
    let mut b = [0u8];
    f.read_exact(&mut b).expect("read");
    b[0]
}

fn operation_failed(e: &ManagerError, action: &str) -> String {
    assert_eq!(status(e), 500, "{e}");
    match e {
        ManagerError::Operation {
            action: a, cause, ..
        } => {
            assert_eq!(*a, action, "{e}");
            chain(cause)
        }
        other => panic!("not a failed {action}: {other:?}"),
    }
}

#[test]
fn checkpoint_records_checkpointing_from_freeze_to_thaw() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        let cp = h.m.checkpoint("web", named("first")).expect("checkpoint");
        assert_eq!((cp.name.as_deref(), cp.vm.as_str()), (Some("first"), "web"));
        assert!(cp.warnings.is_empty(), "{:?}", cp.warnings);
        // Frozen, saved, continued and thawed while the record said
        // checkpointing; the clock set once it said running again.
        assert_eq!(
            h.take_journal(),
            [
                "freeze web: checkpointing",
                "vmm save_state web: checkpointing",
                "vmm continue_guest web: checkpointing",
                "thaw web: checkpointing",
                "after_restore web: running"
            ]
        );
        h.assert_running(&v);
        assert_eq!(h.record(&v).pid, v.pid, "the same VMM runs on");
        let dir = h.dir(&v).join("checkpoints").join(&cp.id);
        for f in ["checkpoint.json", "rootfs.img", STATE_FILE] {
            assert!(dir.join(f).is_file(), "{f} missing");
        }
        let listed = h.m.checkpoints("web").expect("list");
        assert_eq!(listed.len(), 1);
        assert_eq!(listed[0].id, cp.id);
        assert!(!h.guests.calls().iter().any(|c| c.starts_with("forget")));
    });
}

#[test]
fn a_guest_that_cannot_freeze_or_thaw_gives_warnings() {
    run(|h| {
        let v = h.create("web");
        h.guests.set(|s| s.freeze = Ok(false));
        h.take_journal();
        let cp = h.m.checkpoint("web", named("synced")).expect("checkpoint");
        assert_eq!(
            cp.warnings,
            ["the guest has no fsfreeze: its file systems were synced, not frozen"]
        );
        // Synced only, it is thawed all the same (the guest's script ends).
        assert!(
            h.take_journal()
                .contains(&"thaw web: checkpointing".to_string())
        );

        h.guests.set(|s| s.freeze = Err("no shell".into()));
        let cp =
            h.m.checkpoint("web", named("unsynced"))
                .expect("checkpoint");
        assert_eq!(cp.warnings.len(), 1, "{:?}", cp.warnings);
        let w = &cp.warnings[0];
        assert!(
            w.starts_with("the guest's file systems were not synced (")
                && w.contains("no shell")
                && w.ends_with("the checkpoint's disk is as the VMM saw it"),
            "{w}"
        );
        let journal = h.take_journal();
        assert!(
            !journal.iter().any(|j| j.starts_with("thaw")),
            "{journal:?}"
        );
        assert!(journal.contains(&"vmm save_state web: checkpointing".to_string()));

        h.guests.set(|s| {
            s.freeze = Ok(true);
            s.thaw_fails = true;
            s.clock_fails = Some("no date".into());
        });
        let cp =
            h.m.checkpoint("web", named("thawless"))
                .expect("checkpoint");
        assert_eq!(cp.warnings.len(), 2, "{:?}", cp.warnings);
        assert!(cp.warnings[0].contains("thaw fails"), "{:?}", cp.warnings);
        assert!(
            cp.warnings[1].starts_with("the guest's clock could not be set: "),
            "{:?}",
            cp.warnings
        );
        // Each was made, and the VM runs on.
        assert_eq!(h.m.checkpoints("web").expect("list").len(), 3);
        assert_eq!(h.state(&v), "running");
        h.assert_running(&v);
    });
}

#[test]
fn a_checkpoint_whose_save_fails_leaves_the_vm_running() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        h.vmms.set(|s| s.save_fails = true);
        let e =
            h.m.checkpoint("web", named("first"))
                .expect_err("must fail");
        let message = operation_failed(&e, "checkpoint");
        assert!(message.contains("fake VMM: save fails"), "{message}");
        // Whatever happened, the guest runs on, thawed.
        assert_eq!(
            h.take_journal(),
            [
                "freeze web: checkpointing",
                "vmm save_state web: checkpointing",
                "vmm continue_guest web: checkpointing",
                "thaw web: checkpointing"
            ]
        );
        h.assert_running(&v);
        assert_eq!(h.record(&v).pid, v.pid);
        assert!(h.m.checkpoints("web").expect("list").is_empty());
        let left: Vec<_> = std::fs::read_dir(h.dir(&v).join("checkpoints"))
            .expect("checkpoints dir")
            .flatten()
            .map(|e| e.file_name())
            .collect();
        assert!(left.is_empty(), "{left:?}");

        h.vmms.set(|s| s.continue_fails = true);
        let e =
            h.m.checkpoint("web", named("first"))
                .expect_err("must fail");
        let message = operation_failed(&e, "checkpoint");
        assert!(
            message.ends_with("; the guest could not continue"),
            "{message}"
        );
        assert_eq!(h.state(&v), "running");

        // Saved, but the guest does not continue: made, with a warning.
        h.vmms.set(|s| s.save_fails = false);
        let cp = h.m.checkpoint("web", named("first")).expect("checkpoint");
        assert!(
            cp.warnings
                .iter()
                .any(|w| w.starts_with("the guest could not continue: ")),
            "{:?}",
            cp.warnings
        );
        assert_eq!(h.state(&v), "running");
    });
}

#[test]
fn checkpoint_names_are_checked_and_unique() {
    run(|h| {
        let (v, cp) = with_checkpoint(h);
        let e =
            h.m.checkpoint("web", named("first"))
                .expect_err("same name");
        assert!(
            matches!(&e, ManagerError::CheckpointExists { name, .. } if name == "first"),
            "{e:?}"
        );
        assert_eq!(status(&e), 409);
        let e =
            h.m.checkpoint("web", named("No Spaces"))
                .expect_err("bad name");
        assert!(matches!(e, ManagerError::InvalidName(_)), "{e:?}");
        assert_eq!(status(&e), 400);
        assert!(h.take_journal().is_empty(), "nothing was asked");
        assert_eq!(h.state(&v), "running");
        // Without a name: its id is how to name it.
        let anon =
            h.m.checkpoint("web", CheckpointRequest::default())
                .expect("checkpoint");
        assert_eq!(anon.name, None);
        let ids: Vec<String> =
            h.m.checkpoints("web")
                .expect("list")
                .into_iter()
                .map(|c| c.id)
                .collect();
        assert_eq!(ids.len(), 2);
        assert!(ids.contains(&cp.id) && ids.contains(&anon.id));
    });
}

#[test]
fn restore_records_restoring_until_the_guest_runs() {
    run(|h| {
        let (v, cp) = with_checkpoint(h);
        assert_eq!(disk_byte(h, &v, Some(9)), 9, "written after the checkpoint");
        let r = h.m.restore("web", "first").expect("restore");
        assert_eq!(r.state, "running");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(
            h.take_journal(),
            [
                "forget web: restoring".to_string(),
                format!("vmm launch_saved({}) web: restoring", cp.id),
                "vmm continue_guest web: restoring".into(),
                "after_restore web: running".into()
            ]
        );
        h.assert_running(&v);
        assert_ne!(h.record(&v).pid, v.pid, "a new VMM");
        assert_eq!(disk_byte(h, &v, None), 7, "the disk is the checkpoint's");
        assert!(!h.dir(&v).join("rootfs.img.restore").exists());
        // The checkpoint stays, and by its id too.
        h.m.restore("web", &cp.id).expect("restore by id");
        assert_eq!(h.m.checkpoints("web").expect("list").len(), 1);
    });
}

#[test]
fn restore_of_a_paused_or_stopped_vm() {
    run(|h| {
        let (v, _) = with_checkpoint(h);
        h.m.pause("web").expect("pause");
        let r = h.m.restore("web", "first").expect("restore a paused VM");
        assert_eq!(
            r.warnings,
            ["the VM was paused: that saved state was replaced by the checkpoint's"]
        );
        assert!(!h.dir(&v).join("paused").exists());
        h.assert_running(&v);

        h.m.stop("web").expect("stop");
        h.take_journal();
        h.guests
            .set(|s| s.clock_unreachable = Some("connection refused".into()));
        let r = h.m.restore("web", "first").expect("restore a stopped VM");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        assert!(
            r.warnings[0].starts_with("the guest's clock was not corrected (")
                && r.warnings[0].contains("connection refused"),
            "{:?}",
            r.warnings
        );
        assert_eq!(h.take_journal()[0], "forget web: restoring");
        h.assert_running(&v);
    });
}

#[test]
fn a_restore_whose_vmm_fails_leaves_the_vm_stopped_and_the_checkpoint_intact() {
    run(|h| {
        let (v, cp) = with_checkpoint(h);
        let faults: [Change; 3] = [
            |s| s.launch_saved = Launch::Fails,
            |s| s.launch_saved = Launch::DiesAfterSpawn,
            |s| {
                s.launch_saved = Launch::Works;
                s.continue_fails = true;
            },
        ];
        for fault in faults {
            h.vmms.set(fault);
            h.take_journal();
            let e = h.m.restore("web", "first").expect_err("restore must fail");
            let message = operation_failed(&e, "restore");
            assert!(
                message.ends_with("(the VM is stopped; the checkpoint is intact: try again)"),
                "{message}"
            );
            assert_eq!(h.state(&v), "stopped");
            h.assert_down(&v);
            assert!(!h.dir(&v).join("rootfs.img.restore").exists());
            let cps = h.m.checkpoints("web").expect("list");
            assert_eq!(cps.len(), 1);
            assert_eq!(cps[0].id, cp.id);
            let journal = h.take_journal();
            assert_eq!(journal[0], "forget web: restoring", "{journal:?}");
            assert!(!journal.iter().any(|j| j.starts_with("after_restore")));
        }
        h.vmms.set(|s| s.continue_fails = false);
        h.m.restore("web", "first").expect("the retry works");
        h.assert_running(&v);
    });
}

#[test]
fn restore_returns_to_the_checkpoints_size() {
    run(|h| {
        let (v, _) = with_checkpoint(h);
        h.m.stop("web").expect("stop");
        let resize = ResizeRequest {
            cpus: Some(2),
            memory_mib: Some(1024),
            ..Default::default()
        };
        h.m.resize("web", resize).expect("resize");
        let r = h.m.restore("web", "first").expect("restore");
        assert_eq!(
            r.warnings,
            ["the VM has the size it had at the checkpoint again: 1 vCPUs, 512 MiB"]
        );
        let rec = h.record(&v);
        assert_eq!((rec.cpus, rec.memory_mib), (1, 512));
    });
}

#[test]
fn unknown_checkpoints_and_checkpoint_rm() {
    run(|h| {
        let (v, cp) = with_checkpoint(h);
        let e = h.m.restore("web", "nope").expect_err("no such checkpoint");
        assert!(
            matches!(e, ManagerError::CheckpointNotFound { .. }),
            "{e:?}"
        );
        assert_eq!(status(&e), 404);
        assert_eq!(
            e.hint().as_deref(),
            Some("list its checkpoints with: fcm checkpoints web")
        );
        assert!(h.take_journal().is_empty());
        h.assert_running(&v);
        let gone = h.m.delete_checkpoint("web", "first").expect("rm");
        assert_eq!(gone.id, cp.id);
        assert!(h.m.checkpoints("web").expect("list").is_empty());
        assert!(!h.dir(&v).join("checkpoints").join(&cp.id).exists());
        let e =
            h.m.delete_checkpoint("web", "first")
                .expect_err("already gone");
        assert_eq!(status(&e), 404);
        h.m.checkpoint("web", named("again")).expect("checkpoint");
        h.m.destroy("web").expect("destroy");
        let e = h.m.restore("web", "again").expect_err("destroyed");
        assert!(matches!(e, ManagerError::NotFound(_)), "{e:?}");
    });
}
