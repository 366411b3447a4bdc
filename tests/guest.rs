//! The default guest image, booted for real (QEMU backend): Python ≥ 3.14
//! with venv and pip (a local wheel installs, with no package index), Ruby
//! and bundler answer. See docs/guest.md.

mod common;

use common::{Fcm, e2e_ready};

/// Makes the tiny wheel in the guest (guest/tests/make-tiny-wheel.py, sent
/// on stdin), a venv, installs the wheel with --no-index and imports it.
const WHEEL_CHECK: &str = "set -e; cat > /root/make-tiny-wheel.py; cd /root; \
     python3 /root/make-tiny-wheel.py /root >/dev/null; \
     python3 -m venv /root/venv; \
     /root/venv/bin/pip install -q --no-index --disable-pip-version-check /root/fcm_tiny-1.0-py3-none-any.whl; \
     /root/venv/bin/python -c 'import fcm_tiny; print(fcm_tiny.hello())'";

#[test]
fn the_guest_has_python_3_14_with_pip_and_ruby_with_bundler() {
    if !e2e_ready() {
        return;
    }
    let f = Fcm::start("guestimg", &[]);
    f.create(&["--name", "img"]);
    let out = f.ssh(
        "img",
        "python3 -c 'import sys; print(\"%d.%d\" % sys.version_info[:2])'",
    );
    let version = String::from_utf8_lossy(&out.stdout).trim().to_string();
    let (major, minor) = version
        .split_once('.')
        .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
        .unwrap_or_else(|| panic!("no python3 version: {version:?}"));
    assert!((major, minor) >= (3, 14), "python3 is {version}");
    println!("guest python3 {version}");

    let script =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("guest/tests/make-tiny-wheel.py");
    let out = f
        .cli()
        .args(["ssh", "img", "--", WHEEL_CHECK])
        .stdin(std::fs::File::open(&script).expect("wheel script"))
        .output()
        .expect("fcm ssh");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.lines().any(|l| l == "fcm-wheel-ok"),
        "venv + pip install of a local wheel: {text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // `ruby 3.3.8 (...)`; bundler 2 says `Bundler version 2.6.7`, 4 just `4.0.22`.
    for (cmd, prefixes) in [
        ("ruby -v", &["ruby "][..]),
        ("bundle -v", &["Bundler version ", ""][..]),
    ] {
        let out = f.ssh("img", cmd);
        let text = String::from_utf8_lossy(&out.stdout).trim().to_string();
        let versioned = prefixes.iter().any(|p| {
            text.strip_prefix(p)
                .is_some_and(|rest| rest.starts_with(|c: char| c.is_ascii_digit()))
        });
        assert!(out.status.success() && versioned, "{cmd}: {text:?}");
        println!("guest {cmd}: {text}");
    }
}
