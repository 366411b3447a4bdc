//! A tmux server on the host side, for driving the real `fcm console` /
//! `fcm attach` in a real terminal (its panes), read back with
//! capture-pane.

use std::fs;
use std::process::{Command, Stdio};
use std::time::Duration;

use super::{Fcm, fcm_bin, wait_for};

fn text(o: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

/// A tmux server on the host side, started inside the test's namespace so
/// its panes reach the daemon at 127.0.0.1:7778 there. Each pane runs one
/// `fcm` client; panes stay after their program exits so the last words
/// can be read. The server (and so every client in it) is killed on drop.
pub struct Outer<'a> {
    f: &'a Fcm,
    sock: String,
    path: String,
}

impl<'a> Outer<'a> {
    pub fn new(f: &'a Fcm, tag: &str) -> Self {
        let sock = format!("fcmtest-{}-{tag}", std::process::id());
        let mut o = Self {
            f,
            sock,
            path: String::new(),
        };
        let ok =
            o.f.ns
                .cmd("tmux")
                .args(["-L", &o.sock, "-f", "/dev/null", "new-session", "-d"])
                .args(["-s", "t", "-x", "120", "-y", "40", "exec sleep 86400"])
                .status()
                .map(|s| s.success())
                .unwrap_or(false);
        assert!(ok, "could not start the outer tmux");
        o.tmux(&["set-option", "-g", "remain-on-exit", "on"]);
        o.tmux(&["set-option", "-g", "default-size", "120x40"]);
        o.tmux(&["set-option", "-g", "history-limit", "5000"]);
        o.path = o
            .tmux(&["display", "-p", "#{socket_path}"])
            .trim()
            .to_string();
        o
    }

    pub fn tmux(&self, args: &[&str]) -> String {
        let out = Command::new("tmux")
            .arg("-L")
            .arg(&self.sock)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .expect("tmux");
        assert!(out.status.success(), "tmux {args:?}: {}", text(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Opens a window running `fcm <args>` with extra environment; returns
    /// its target.
    pub fn open_env(&self, env: &[(&str, &str)], args: &str) -> String {
        let mut cmd = format!(
            "exec env -u FCM_TOKEN -u FCM_HOST -u FCM_STREAM HOME={} FCM_STATE_DIR={}",
            self.f.home().display(),
            self.f.state().display()
        );
        for (k, v) in env {
            cmd.push_str(&format!(" {k}={v}"));
        }
        cmd.push_str(&format!(" {} {args}", fcm_bin()));
        self.tmux(&[
            "new-window",
            "-d",
            "-t",
            "t:",
            "-P",
            "-F",
            "#{window_id}",
            &cmd,
        ])
        .trim()
        .to_string()
    }

    pub fn open(&self, args: &str) -> String {
        self.open_env(&[], args)
    }

    pub fn keys(&self, w: &str, keys: &[&str]) {
        let mut a = vec!["send-keys", "-t", w];
        a.extend_from_slice(keys);
        self.tmux(&a);
    }

    pub fn line(&self, w: &str, line: &str) {
        self.tmux(&["send-keys", "-t", w, "-l", line]);
        self.tmux(&["send-keys", "-t", w, "Enter"]);
    }

    /// The pane's screen and scrollback, joined lines.
    pub fn screen(&self, w: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-J", "-S", "-2000", "-t", w])
    }

    /// Like [`Self::screen`] with colour escapes kept.
    pub fn screen_escapes(&self, w: &str) -> String {
        self.tmux(&["capture-pane", "-p", "-e", "-t", w])
    }

    pub fn wait_screen(&self, w: &str, what: &str, secs: u64) -> String {
        let found = wait_for(Duration::from_secs(secs), || {
            let s = self.screen(w);
            s.contains(what).then_some(s)
        });
        found.unwrap_or_else(|| {
            panic!(
                "{what:?} did not appear in {w} within {secs} s:\n{}",
                self.screen(w)
            )
        })
    }

    pub fn pane_pid(&self, w: &str) -> u32 {
        self.tmux(&["display", "-p", "-t", w, "#{pane_pid}"])
            .trim()
            .parse()
            .expect("pane pid")
    }

    pub fn dead(&self, w: &str) -> bool {
        self.tmux(&["display", "-p", "-t", w, "#{pane_dead}"])
            .trim()
            == "1"
    }

    pub fn wait_dead(&self, w: &str, secs: u64) -> String {
        let d = wait_for(Duration::from_secs(secs), || self.dead(w).then_some(()));
        let s = self.screen(w);
        assert!(d.is_some(), "client in {w} still running:\n{s}");
        s
    }
}

impl Drop for Outer<'_> {
    fn drop(&mut self) {
        let _ = Command::new("tmux")
            .args(["-L", &self.sock, "kill-server"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        if !self.path.is_empty() {
            let _ = fs::remove_file(&self.path);
        }
    }
}
