//! A test-only fault switch: `FCM_TEST_CRASH_AT=<op>:<step>` makes the
//! daemon abort (as a SIGKILL would end it) when an operation reaches that
//! step, so the crash-safety tests can stop it at every step of every
//! operation. Unset, it does nothing; it is never read from the config
//! and is not a feature.
//!
//! Steps are named `create:after-record`, `start:after-tap`, … (see the
//! calls of [`crash_point`]); `tests/crash.rs` walks them all.

use std::sync::OnceLock;

/// The environment variable that arms the switch.
pub const VAR: &str = "FCM_TEST_CRASH_AT";

fn armed() -> Option<&'static str> {
    static AT: OnceLock<Option<String>> = OnceLock::new();
    AT.get_or_init(|| std::env::var(VAR).ok().filter(|s| !s.is_empty()))
        .as_deref()
}

/// Aborts the daemon here when the switch names `step`.
pub fn crash_point(step: &str) {
    if armed() == Some(step) {
        eprintln!("fcm daemon: {VAR}={step}: aborting here (test fault switch)");
        std::process::abort();
    }
}

/// Panics here when the switch names `step`: how the tests prove that a
/// panicking handler answers 500 and its worker lives on.
pub fn panic_point(step: &str) {
    if armed() == Some(step) {
        panic!("{VAR}={step}: a test-only panic");
    }
}
