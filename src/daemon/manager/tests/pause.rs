//! Pause and resume: the record through the save and the load, failures
//! that leave the VM as it was, the guest's clock afterwards.

use super::fake_vmm::{Change, Launch, STATE_FILE};
use super::{run, status};
use crate::daemon::manager::ManagerError;
use crate::error::chain;

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
fn pause_records_pausing_through_the_save_and_paused_after() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        let p = h.m.pause("web").expect("pause");
        assert_eq!((p.state.as_str(), p.pid), ("paused", None));
        assert!(p.warnings.is_empty(), "{:?}", p.warnings);
        assert!(!p.idle_paused, "a user's pause");
        // Saved while the record said pausing; the connection dropped once
        // the state was safe, before the VMM went.
        assert_eq!(
            h.take_journal(),
            ["vmm save_state web: pausing", "forget web: pausing"]
        );
        let r = h.record(&v);
        assert_eq!(
            (r.state.as_str(), r.pid, r.idle_paused),
            ("paused", None, false)
        );
        h.assert_down(&v);
        let saved = std::fs::read_to_string(h.dir(&v).join("paused").join(STATE_FILE))
            .expect("the saved state");
        assert_eq!(saved, "memory of web\n");
        assert!(!h.dir(&v).join(".paused.tmp").exists());
    });
}

#[test]
fn a_pause_whose_save_fails_keeps_the_vm_running() {
    run(|h| {
        let v = h.create("web");
        h.take_journal();
        h.vmms.set(|s| s.save_fails = true);
        let e = h.m.pause("web").expect_err("pause must fail");
        let message = operation_failed(&e, "pause");
        assert!(message.contains("fake VMM: save fails"), "{message}");
        // The guest was let go on, and is recorded running again.
        assert_eq!(
            h.take_journal(),
            [
                "vmm save_state web: pausing",
                "vmm continue_guest web: pausing"
            ]
        );
        h.assert_running(&v);
        assert_eq!(h.record(&v).pid, v.pid, "the same VMM");
        for left in ["paused", ".paused.tmp"] {
            assert!(!h.dir(&v).join(left).exists(), "{left} is left");
        }
        // And when it cannot even continue, the error says so too.
        h.vmms.set(|s| s.continue_fails = true);
        let e = h.m.pause("web").expect_err("pause must fail");
        let message = operation_failed(&e, "pause");
        assert!(
            message.contains("save fails; and the guest could not continue: ")
                && message.contains("fake VMM: the guest does not continue"),
            "{message}"
        );
        assert_eq!(h.state(&v), "running");
    });
}

#[test]
fn resume_records_resuming_until_the_guest_runs_then_sets_its_clock() {
    run(|h| {
        let v = h.create("web");
        h.m.pause("web").expect("pause");
        h.take_journal();
        let r = h.m.resume("web").expect("resume");
        assert_eq!(r.state, "running");
        assert!(r.warnings.is_empty(), "{:?}", r.warnings);
        assert_eq!(
            h.take_journal(),
            [
                "vmm launch_saved(paused) web: resuming",
                "vmm continue_guest web: resuming",
                "after_restore web: running"
            ]
        );
        h.assert_running(&v);
        assert!(
            !h.dir(&v).join("paused").exists(),
            "the saved state is kept"
        );
    });
}

#[test]
fn a_clock_that_cannot_be_set_after_a_resume_is_a_warning() {
    run(|h| {
        let v = h.create("web");
        h.m.pause("web").expect("pause");
        h.guests
            .set(|s| s.clock_fails = Some("date: invalid".into()));
        let r = h.m.resume("web").expect("resume");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        let w = &r.warnings[0];
        assert!(
            w.starts_with("the guest's clock could not be set: ") && w.contains("date: invalid"),
            "{w}"
        );
        h.assert_running(&v);

        h.m.pause("web").expect("pause");
        h.guests.set(|s| {
            s.clock_fails = None;
            s.clock_unreachable = Some("connection refused".into());
        });
        let r = h.m.resume("web").expect("resume");
        assert_eq!(r.warnings.len(), 1, "{:?}", r.warnings);
        let w = &r.warnings[0];
        assert!(
            w.starts_with("the guest's clock was not corrected (")
                && w.contains("connection refused")
                && w.ends_with("it lags by the time it was paused"),
            "{w}"
        );
        h.assert_running(&v);
    });
}

#[test]
fn a_resume_whose_vmm_fails_leaves_the_vm_paused() {
    run(|h| {
        let v = h.create("web");
        h.m.pause("web").expect("pause");
        let faults: [(&str, Change); 3] = [
            ("launch fails", |s| s.launch_saved = Launch::Fails),
            ("did not come up", |s| {
                s.launch_saved = Launch::DiesAfterSpawn
            }),
            ("does not continue", |s| {
                s.launch_saved = Launch::Works;
                s.continue_fails = true;
            }),
        ];
        for (said, fault) in faults {
            h.vmms.set(fault);
            h.take_journal();
            let e = h.m.resume("web").expect_err("resume must fail");
            let message = operation_failed(&e, "resume");
            assert!(message.contains(said), "{message}");
            assert_eq!(h.state(&v), "paused", "{said}");
            h.assert_down(&v);
            assert!(
                h.dir(&v).join("paused").join(STATE_FILE).is_file(),
                "{said}: the saved state is gone"
            );
            let journal = h.take_journal();
            assert_eq!(journal[0], "vmm launch_saved(paused) web: resuming");
            assert!(
                !journal.iter().any(|j| j.starts_with("after_restore")),
                "{journal:?}"
            );
        }
        h.vmms.set(|s| s.continue_fails = false);
        h.m.resume("web").expect("resume");
        h.assert_running(&v);
    });
}

#[test]
fn a_resume_without_its_saved_state_fails_and_changes_nothing() {
    run(|h| {
        let v = h.create("web");
        h.m.pause("web").expect("pause");
        std::fs::remove_dir_all(h.dir(&v).join("paused")).expect("rm");
        h.take_journal();
        let e = h.m.resume("web").expect_err("nothing to resume from");
        let message = operation_failed(&e, "resume");
        assert!(message.contains("paused is missing"), "{message}");
        assert_eq!(h.state(&v), "paused");
        assert!(h.take_journal().is_empty());
        h.assert_down(&v);
    });
}

#[test]
fn start_resumes_a_paused_vm_and_stop_discards_its_memory() {
    run(|h| {
        let v = h.create("web");
        h.m.pause("web").expect("pause");
        h.take_journal();
        h.m.start("web").expect("start");
        let journal = h.take_journal();
        assert_eq!(
            journal[0], "vmm launch_saved(paused) web: resuming",
            "{journal:?}"
        );
        h.assert_running(&v);

        h.m.pause("web").expect("pause");
        h.take_journal();
        let s = h.m.stop("web").expect("stop");
        assert_eq!(
            s.warnings,
            [
                "the VM was paused: its memory state (running programs) was discarded; \
                 it boots from its disk on the next start"
            ]
        );
        // No VMM to ask.
        assert_eq!(h.take_journal(), ["forget web: stopping"]);
        assert_eq!(h.state(&v), "stopped");
        assert!(!h.dir(&v).join("paused").exists());
        h.m.start("web").expect("start");
        assert_eq!(h.take_journal(), ["vmm launch web: starting"]);
    });
}
