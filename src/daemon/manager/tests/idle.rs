//! Idle sleep: an idle VM is paused through the ordinary, journalled
//! pause and woken by its next use; a console keeps a VM awake; a VM a
//! user paused is not woken by use.

use std::time::Duration;

use super::{assert_wrong_state, run};
use crate::wire::api::{CreateRequest, ExecRequest};

fn exec_true() -> ExecRequest {
    ExecRequest {
        cmd: vec!["true".into()],
        ..Default::default()
    }
}

#[test]
fn an_idle_vm_sleeps_and_wakes_on_use_while_one_with_a_console_stays_up() {
    run(|h| {
        let sleepy = |name: &str| CreateRequest {
            name: Some(name.into()),
            idle_pause_secs: Some(1),
            ..Default::default()
        };
        let idle = h.m.create(sleepy("idle")).expect("create");
        let watched = h.m.create(sleepy("watched")).expect("create");
        let consoles = |id: &crate::names::VmId| usize::from(id.as_str() == watched.id);
        h.m.idle_tick(&consoles);
        assert_eq!(h.state(&idle), "running", "just created");
        std::thread::sleep(Duration::from_millis(1100));
        h.take_journal();
        h.m.idle_tick(&consoles);
        // The ordinary pause, journalled as a user's, marked as idle sleep.
        assert_eq!(
            h.take_journal(),
            ["vmm save_state idle: pausing", "forget idle: pausing"]
        );
        let r = h.record(&idle);
        assert_eq!((r.state.as_str(), r.idle_paused), ("paused", true));
        assert!(h.m.get("idle").expect("get").idle_paused);
        h.assert_down(&idle);
        h.assert_running(&watched);
        // Any use wakes it: the exec runs once it is resumed.
        let out = h.m.exec("idle", exec_true()).expect("exec wakes it");
        assert_eq!(out.exit_code, 0);
        let journal = h.take_journal();
        assert_eq!(
            journal,
            [
                "vmm launch_saved(paused) idle: resuming",
                "vmm continue_guest idle: resuming",
                "after_restore idle: running",
                "exec [\"true\"] idle: running"
            ]
        );
        let r = h.record(&idle);
        assert_eq!((r.state.as_str(), r.idle_paused), ("running", false));
        h.assert_running(&idle);
        // Used just now: the next round leaves it running.
        h.m.idle_tick(&consoles);
        assert_eq!(h.state(&idle), "running");
    });
}

#[test]
fn a_vm_paused_by_a_user_is_not_woken_by_use() {
    run(|h| {
        let v = h.create("web");
        assert_eq!(h.m.wake("web").expect("a running VM").state, "running");
        h.m.pause("web").expect("pause");
        h.take_journal();
        let e = h.m.exec("web", exec_true()).expect_err("paused by a user");
        assert_wrong_state(&e, "paused", "running", "use it");
        let e = h.m.wake("web").expect_err("paused by a user");
        assert_wrong_state(&e, "paused", "running", "use it");
        assert!(h.take_journal().is_empty(), "something was asked");
        assert_eq!(h.state(&v), "paused");
        h.assert_down(&v);
    });
}
