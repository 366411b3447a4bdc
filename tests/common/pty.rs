//! `fcm` on a terminal of the test's own (a pty): what it prints, keys
//! typed into it, window size changes; for `exec -t` and the like.

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::process::Child;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::Duration;

use super::{Fcm, wait_for};

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// `fcm` on a terminal of the test's: what it prints, keys typed into it,
/// window size changes.
pub struct OnPty {
    master: File,
    child: Child,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl OnPty {
    pub fn start(f: &Fcm, args: &[&str], cols: u16, rows: u16) -> Self {
        let mut cmd = f.cli();
        cmd.args(args);
        Self::start_cmd(cmd, cols, rows)
    }

    /// `cmd` (an `fcm` command line made by the caller) on a pty.
    pub fn start_cmd(mut cmd: std::process::Command, cols: u16, rows: u16) -> Self {
        let (master, slave) = fcm::host::pty::open_cooked(cols, rows).expect("pty");
        cmd.env("TERM", "xterm-256color");
        let child = fcm::host::pty::spawn_on(cmd, slave).expect("spawn on pty");
        let seen = Arc::new(Mutex::new(Vec::new()));
        let mut reader = master.try_clone().expect("clone");
        let s = Arc::clone(&seen);
        thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                s.lock().expect("seen").extend_from_slice(&buf[..n]);
            }
        });
        Self {
            master,
            child,
            seen,
        }
    }

    pub fn screen(&self) -> String {
        text(&self.seen.lock().expect("seen"))
    }

    pub fn wait_for(&self, what: &str, secs: u64) -> String {
        let ok = wait_for(Duration::from_secs(secs), || {
            self.screen().contains(what).then_some(())
        });
        assert!(
            ok.is_some(),
            "never saw {what:?}; screen: {:?}",
            self.screen()
        );
        self.screen()
    }

    pub fn type_keys(&mut self, keys: &[u8]) {
        self.master.write_all(keys).expect("type");
    }

    pub fn resize(&self, cols: u16, rows: u16) {
        fcm::host::pty::set_size(&self.master.as_fd(), cols, rows).expect("resize");
    }

    pub fn wait_exit(&mut self, secs: u64) -> Option<i32> {
        let st = wait_for(Duration::from_secs(secs), || {
            self.child.try_wait().ok().flatten()
        });
        if st.is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        st.and_then(|s| s.code())
    }
}
