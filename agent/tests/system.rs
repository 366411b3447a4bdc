//! Clock, entropy, freeze, shutdown and identity: through the session with
//! a recording system, and the real freeze on a file system the test makes
//! (never the host's own).

mod common;

use common::{Daemon, wait_until};
use fcm_agent::system::{Call, Linux, System};
use fcm_proto::{Done, FailKind, FromAgent, Identity, ToAgent};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

#[test]
fn clock_and_entropy() {
    let mut d = Daemon::start();
    let done = d.ask(|id| ToAgent::SetClock {
        id,
        unix_secs: 1_800_000_000,
        nanos: 5,
    });
    assert_eq!(
        done,
        Ok(Done::Clock {
            unix_secs: 1_800_000_000,
            nanos: 5
        })
    );
    let bad = d.ask(|id| ToAgent::SetClock {
        id,
        unix_secs: 1,
        nanos: 1_000_000_000,
    });
    assert_eq!(bad.map_err(|f| f.kind), Err(FailKind::Invalid));
    assert_eq!(
        d.ask(|id| ToAgent::Reseed {
            id,
            entropy: vec![1, 2, 3]
        }),
        Ok(Done::Ok)
    );
    assert_eq!(
        d.system.calls(),
        [
            Call::SetClock(1_800_000_000, 5),
            Call::Reseed(vec![1, 2, 3])
        ]
    );
    let id = d.id();
    d.send(&ToAgent::Ping { id });
    match d.expect_for(id) {
        FromAgent::Pong { uptime_ms, .. } => assert!(uptime_ms > 0),
        other => panic!("{other:?}"),
    }
}

#[test]
fn freeze_thaw_and_the_watchdog() {
    let mut d = Daemon::start();
    let frozen = |f| Ok(Done::Frozen { frozen: f });
    assert_eq!(
        d.ask(|id| ToAgent::Freeze {
            id,
            watchdog_secs: 30
        }),
        frozen(true)
    );
    assert_eq!(d.system.calls(), [Call::Sync, Call::Freeze]);
    assert!(d.system.is_frozen());
    assert_eq!(d.ask(|id| ToAgent::Thaw { id }), frozen(false));
    assert!(!d.system.is_frozen());
    // Thawing what is not frozen is fine.
    assert_eq!(d.ask(|id| ToAgent::Thaw { id }), frozen(false));

    // The watchdog thaws by itself.
    let t = Instant::now();
    assert_eq!(
        d.ask(|id| ToAgent::Freeze {
            id,
            watchdog_secs: 1
        }),
        frozen(true)
    );
    assert!(wait_until(Duration::from_secs(5), || !d.system.is_frozen()));
    assert!(
        t.elapsed() >= Duration::from_millis(900),
        "{:?}",
        t.elapsed()
    );

    // A new session thaws what the last one froze.
    assert_eq!(
        d.ask(|id| ToAgent::Freeze {
            id,
            watchdog_secs: 30
        }),
        frozen(true)
    );
    d.hello(2);
    assert!(!d.system.is_frozen());

    // A file system that cannot freeze: synced only.
    d.system.no_freeze.store(true, Ordering::SeqCst);
    assert_eq!(
        d.ask(|id| ToAgent::Freeze {
            id,
            watchdog_secs: 30
        }),
        frozen(false)
    );
    assert_eq!(d.system.calls().last(), Some(&Call::Freeze));
}

#[test]
fn shutdown_answers_first() {
    let mut d = Daemon::start();
    assert_eq!(d.ask(|id| ToAgent::Shutdown { id }), Ok(Done::Ok));
    assert!(wait_until(Duration::from_secs(5), || d.system.calls()
        == [Call::Shutdown]));
}

#[test]
fn identity_is_checked_then_set() {
    let mut d = Daemon::start();
    let id_ = Identity {
        hostname: Some("fork-2".into()),
        machine_id: Some("0123456789abcdef0123456789abcdef".into()),
        ssh_host_keys: vec![("ssh_host_ed25519_key".into(), "KEY".into())],
        ..Identity::default()
    };
    let sent = id_.clone();
    assert_eq!(
        d.ask(|id| ToAgent::SetIdentity { id, identity: sent }),
        Ok(Done::Ok)
    );
    let bad = Identity {
        hostname: Some("no spaces".into()),
        ..id_.clone()
    };
    let r = d.ask(|id| ToAgent::SetIdentity { id, identity: bad });
    assert_eq!(r.map_err(|f| f.kind), Err(FailKind::Invalid));
    assert_eq!(d.system.calls(), [Call::SetIdentity(id_)]);
}

/// An ext4 image loop-mounted in a temp dir, unmounted when dropped.
struct Mounted {
    dir: tempfile::TempDir,
    mnt: PathBuf,
}

impl Mounted {
    fn make() -> Result<Mounted, String> {
        if !rustix::process::geteuid().is_root() {
            return Err("not root".into());
        }
        let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
        let img = dir.path().join("fs.img");
        let mnt = dir.path().join("mnt");
        std::fs::create_dir(&mnt).map_err(|e| e.to_string())?;
        std::fs::File::create(&img)
            .and_then(|f| f.set_len(32 << 20))
            .map_err(|e| e.to_string())?;
        let run = |cmd: &mut Command| match cmd.output() {
            Ok(o) if o.status.success() => Ok(()),
            Ok(o) => Err(String::from_utf8_lossy(&o.stderr).into_owned()),
            Err(e) => Err(e.to_string()),
        };
        run(Command::new("mkfs.ext4").args(["-q", "-F"]).arg(&img))?;
        run(Command::new("mount")
            .args(["-o", "loop"])
            .arg(&img)
            .arg(&mnt))?;
        Ok(Mounted { dir, mnt })
    }

    fn system(&self) -> Linux {
        Linux {
            freeze_root: self.mnt.clone(),
            ..Linux::default()
        }
    }
}

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = self.system().thaw();
        let _ = Command::new("umount").arg(&self.mnt).status();
        let _ = &self.dir;
    }
}

fn errno(r: std::io::Result<()>) -> Option<i32> {
    r.err().and_then(|e| e.raw_os_error())
}

#[test]
fn the_real_freeze_on_a_file_system_of_our_own() {
    let m = match Mounted::make() {
        Ok(m) => m,
        Err(e) => {
            eprintln!("skipped: cannot loop-mount an ext4 image: {}", e.trim());
            return;
        }
    };
    assert_ne!(m.mnt, Path::new("/"));
    let sys = m.system();
    let agent = fcm_agent::Agent::new(
        fcm_agent::Config::default(),
        std::sync::Arc::new(sys.clone()),
    );
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("pair");
    let w = theirs.try_clone().expect("clone");
    std::thread::spawn(move || agent.serve(theirs, w));
    let mut d = Daemon::over(ours);
    d.hello(1);

    assert_eq!(
        d.ask(|id| ToAgent::Freeze {
            id,
            watchdog_secs: 30
        }),
        Ok(Done::Frozen { frozen: true })
    );
    // Frozen: a second FIFREEZE is EBUSY.
    assert_eq!(errno(sys.freeze()), Some(libc::EBUSY));
    assert_eq!(
        d.ask(|id| ToAgent::Thaw { id }),
        Ok(Done::Frozen { frozen: false })
    );
    // Thawed: FITHAW has nothing to thaw.
    assert_eq!(errno(sys.thaw()), Some(libc::EINVAL));
    std::fs::write(m.mnt.join("after"), b"writable").expect("the file system is writable again");

    assert_eq!(
        d.ask(|id| ToAgent::Freeze {
            id,
            watchdog_secs: 1
        }),
        Ok(Done::Frozen { frozen: true })
    );
    assert!(wait_until(Duration::from_secs(5), || errno(sys.thaw())
        == Some(libc::EINVAL)));
}

#[test]
fn the_real_reseed_is_taken_by_the_kernel() {
    if !rustix::process::geteuid().is_root() {
        eprintln!("skipped: RNDADDENTROPY needs root");
        return;
    }
    // Mixing bytes into the pool harms nothing; the struct's layout is
    // what is checked (EINVAL otherwise).
    Linux::default()
        .reseed(&[7u8; 37])
        .expect("RNDADDENTROPY and RNDRESEEDCRNG");
}
