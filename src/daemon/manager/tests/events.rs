//! The events and operation numbers every operation leaves, whoever asked:
//! state changes from the one record write, begin and end of each
//! operation (with its error), created and destroyed.

use std::time::Duration;

use super::run;
use crate::daemon::events::Next;
use crate::wire::stats::Event;

fn drain(sub: &crate::daemon::events::Subscription) -> Vec<Event> {
    let mut out = Vec::new();
    while let Next::Event(e) = sub.next(Duration::ZERO) {
        out.push(*e);
    }
    out
}

fn line(e: &Event) -> String {
    match e.kind.as_str() {
        "state" => format!(
            "state {} {}->{}",
            e.vm.as_deref().unwrap_or("?"),
            e.from.as_deref().unwrap_or("-"),
            e.to.as_deref().unwrap_or("?")
        ),
        "operation" => format!(
            "op {} {} {}{}",
            e.op.as_deref().unwrap_or("?"),
            e.vm.as_deref().unwrap_or("-"),
            e.phase.as_deref().unwrap_or("?"),
            match e.ok {
                Some(true) => " ok",
                Some(false) => " error",
                None => "",
            }
        ),
        k => format!("{k} {}", e.vm.as_deref().unwrap_or("-")),
    }
}

#[test]
fn operations_and_state_changes_are_told_in_order() {
    run(|h| {
        let sub = h.m.telemetry().hub.subscribe(None).expect("subscribe");
        h.create("web");
        h.m.stop("web").expect("stop");
        let refused = h.m.pause("web").expect_err("a stopped VM cannot pause");
        h.m.start("web").expect("start");
        h.m.destroy("web").expect("destroy");
        let events = drain(&sub);
        let lines: Vec<String> = events.iter().map(line).collect();
        assert_eq!(
            lines,
            [
                "op create web begin",
                "created web",
                "state web -->creating",
                "state web creating->running",
                "op create web end ok",
                "op stop web begin",
                "state web running->stopping",
                "state web stopping->stopped",
                "op stop web end ok",
                "op pause web begin",
                "op pause web end error",
                "op start web begin",
                "state web stopped->starting",
                "state web starting->running",
                "op start web end ok",
                "op destroy web begin",
                "state web running->destroying",
                "destroyed web",
                "op destroy web end ok",
            ]
        );
        let seqs: Vec<u64> = events.iter().filter_map(|e| e.seq).collect();
        assert!(seqs.windows(2).all(|w| w[1] == w[0] + 1), "{seqs:?}");
        let failed = events
            .iter()
            .find(|e| e.op.as_deref() == Some("pause") && e.ok == Some(false))
            .expect("the refused pause");
        assert_eq!(
            failed.error.as_deref(),
            Some(crate::error::chain(&refused).as_str())
        );
        let ops = h.m.telemetry().ops.snapshot();
        assert_eq!(ops[&("stop", true)].count, 1);
        assert_eq!(ops[&("pause", false)].count, 1);
        assert_eq!(ops[&("create", true)].count, 1);
    });
}
