//! The real `fcm-agent` binary on `--unix`: a new connection replaces the
//! current one, and the command line's manners. (Only `Ping` and `echo`
//! are asked of it: it runs with the real system, on the host.)

mod common;

use common::{Daemon, exec, wait_until};
use std::os::unix::net::UnixStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_fcm-agent");

/// The agent process, killed (by its pid) when dropped.
struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn each_connection_replaces_the_one_before() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sock = dir.path().join("agent.sock");
    let _agent = Running(
        Command::new(BIN)
            .arg("--unix")
            .arg(&sock)
            .stderr(Stdio::null())
            .spawn()
            .expect("fcm-agent"),
    );
    assert!(wait_until(Duration::from_secs(5), || UnixStream::connect(
        &sock
    )
    .is_ok()));
    // (That probe was a connection too; the next replaces it.)
    let mut first = Daemon::over(UnixStream::connect(&sock).expect("connect"));
    first.hello(1);
    first.ping();
    let mut second = Daemon::over(UnixStream::connect(&sock).expect("connect"));
    assert!(
        first.closed(Duration::from_secs(5)),
        "the first connection was not ended"
    );
    second.hello(2);
    let r = second.run(exec(&["echo", "hi"]));
    assert_eq!(r.out(), "hi\n");
}

#[test]
fn the_command_line() {
    let help = Command::new(BIN).arg("--help").output().expect("run");
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--unix PATH"));
    let version = Command::new(BIN).arg("--version").output().expect("run");
    assert!(String::from_utf8_lossy(&version.stdout).starts_with("fcm-agent 0."));
    let bad = Command::new(BIN).arg("--bogus").output().expect("run");
    assert_eq!(bad.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&bad.stderr).contains("usage:"));
}
