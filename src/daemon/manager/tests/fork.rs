//! Fork and create --from: what is refused is refused before anything is
//! made (the real forks run against real QEMU guests in tests/fork.rs).

use super::{assert_wrong_state, run, status};
use crate::wire::api::{CreateRequest, ForkRequest};

fn fork(count: u32) -> ForkRequest {
    ForkRequest {
        count: Some(count),
        name: None,
    }
}

/// The entries of the state dir (VM directories, leftovers).
fn entries(h: &super::Harness) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(&h.cfg.state_dir)
        .expect("state")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    v.sort();
    v
}

#[test]
fn a_bad_fork_is_refused_and_makes_nothing() {
    run(|h| {
        let v = h.create("web");
        let before = entries(h);
        for (req, want) in [(fork(0), 400), (fork(65), 400)] {
            let e = h.m.fork("web", req).expect_err("refused");
            assert_eq!(status(&e), want, "{e}");
        }
        let e =
            h.m.fork(
                "web",
                ForkRequest {
                    count: Some(2),
                    name: Some("Bad Name".into()),
                },
            )
            .expect_err("a bad name");
        assert_eq!(status(&e), 400, "{e}");
        let e = h.m.fork("nosuch", fork(1)).expect_err("unknown VM");
        assert_eq!(status(&e), 404, "{e}");
        // The fake VMM's VM has neither shared RAM nor an agent: 409, with
        // how to make it forkable.
        let e = h.m.fork("web", fork(1)).expect_err("not forkable");
        assert_eq!(status(&e), 409, "{e}");
        assert!(e.hint().is_some_and(|h| h.contains("fcm start web")), "{e}");
        assert_eq!(entries(h), before, "a refused fork left something");
        assert_eq!(h.m.list().len(), 1);
        assert_eq!(h.state(&v), "running");

        h.m.stop("web").expect("stop");
        let e = h.m.fork("web", fork(1)).expect_err("stopped");
        assert_wrong_state(&e, "stopped", "running", "fork it");
        assert_eq!(h.m.list().len(), 1);
    });
}

#[test]
fn a_create_from_an_unknown_checkpoint_or_with_a_size_is_refused() {
    run(|h| {
        h.create("web");
        let from = |f: &str| CreateRequest {
            from: Some(f.into()),
            ..Default::default()
        };
        let e =
            h.m.create_from(from("web:nope"))
                .expect_err("no checkpoint");
        assert_eq!(status(&e), 404, "{e}");
        let e = h.m.create_from(from("nosuch:cp")).expect_err("no VM");
        assert_eq!(status(&e), 404, "{e}");
        let e =
            h.m.create_from(from("web"))
                .expect_err("no checkpoint named");
        assert_eq!(status(&e), 400, "{e}");
        let e =
            h.m.create_from(CreateRequest {
                cpus: Some(2),
                ..from("web:cp")
            })
            .expect_err("a size");
        assert_eq!(status(&e), 400, "{e}");
        assert_eq!(h.m.list().len(), 1);
    });
}
