//! Tests of the Caddy handle that need files on disk (the text itself is
//! tested in `site.rs`).

use super::reload::{admin_unreachable, caddy_stderr_summary};
use super::*;

fn name(s: &str) -> VmName {
    VmName::parse(s).expect("valid name")
}

fn caddy_in(dir: &Path) -> Caddy {
    Caddy::new(CaddyConfig {
        caddyfile: dir.join("Caddyfile"),
        sites_dir: dir.join("fcm.d"),
        caddy_bin: PathBuf::from("/nonexistent/caddy"),
        public_ip: Some(Ipv4Addr::new(64, 34, 93, 45)),
        ..CaddyConfig::default()
    })
}

#[test]
fn domain_and_url_follow_the_spec() {
    let caddy = Caddy::new(CaddyConfig {
        public_ip: Some(Ipv4Addr::new(64, 34, 93, 45)),
        ..Default::default()
    });
    let n = name("cosmic-nova");
    assert_eq!(caddy.domain(&n), "cosmic-nova.64-34-93-45.sslip.io");
    assert_eq!(caddy.url(&n), "https://cosmic-nova.64-34-93-45.sslip.io");
    assert_eq!(
        caddy.site_path(&n),
        PathBuf::from("/etc/caddy/fcm.d/cosmic-nova.caddy")
    );
    assert_eq!(caddy.public_ip_source(), &PublicIpSource::Configured);

    let odd = Caddy::new(CaddyConfig {
        public_ip: Some(Ipv4Addr::new(10, 0, 0, 1)),
        domain_suffix: ".Example.COM.".into(),
        ..Default::default()
    });
    assert_eq!(odd.domain(&n), "cosmic-nova.10-0-0-1.example.com");
}

#[test]
fn rendered_domains_are_rechecked() {
    for ok in [
        "a.1-2-3-4.sslip.io",
        "cosmic-nova.64-34-93-45.nip.io",
        "x.1-2-3-4",
    ] {
        assert!(check_domain(ok).is_ok(), "{ok} rejected");
    }
    let long_label = format!("{}.io", "a".repeat(64));
    for bad in [
        "a.1-2-3-4.ssl ip.io",
        "a.1-2-3-4.sslip.io {",
        "a.1-2-3-4.sslip.io\nimport /etc/passwd",
        "a..io",
        "a.io.",
        "a.-io",
        "A.io",
        "a.\"io\"",
        "a.é.io",
        long_label.as_str(),
    ] {
        assert!(check_domain(bad).is_err(), "{bad:?} accepted");
    }
    let hostile = Caddy::new(CaddyConfig {
        public_ip: Some(Ipv4Addr::LOCALHOST),
        domain_suffix: "io {\n}\n:80 {".into(),
        ..Default::default()
    });
    let err = hostile
        .render(&name("vm"), SiteState::Stopped)
        .expect_err("must reject");
    assert!(matches!(err, CaddyError::UnsafeDomain { .. }), "{err}");
}

#[test]
fn ensure_import_touches_the_main_file_once() {
    let dir = tempfile::tempdir().expect("tempdir");
    let caddy = caddy_in(dir.path());
    let main = dir.path().join("Caddyfile");

    let err = caddy.ensure_import().expect_err("no Caddyfile yet");
    assert!(matches!(err, CaddyError::NoCaddyfile { .. }), "{err}");
    assert!(
        !dir.path().join("fcm.d").exists(),
        "nothing made without a Caddyfile"
    );

    fs::write(&main, "example.com {\n\trespond hi\n}\n").expect("write");
    fs::set_permissions(&main, fs::Permissions::from_mode(0o640)).expect("chmod");
    caddy.ensure_import().expect("first");
    let after_first = fs::read(&main).expect("read");
    let line = format!("import {}/fcm.d/*.caddy", dir.path().display());
    assert!(String::from_utf8_lossy(&after_first).contains(&line));
    assert!(dir.path().join("fcm.d").is_dir());
    assert_eq!(
        fs::metadata(&main).expect("stat").permissions().mode() & 0o777,
        0o640
    );

    caddy.ensure_import().expect("second");
    assert_eq!(fs::read(&main).expect("read"), after_first);
    let entries: Vec<_> = fs::read_dir(dir.path())
        .expect("ls")
        .map(|e| e.expect("entry").file_name())
        .collect();
    assert_eq!(entries.len(), 2, "temp files left behind: {entries:?}");
}

#[test]
fn ensure_import_writes_through_a_symlink() {
    let dir = tempfile::tempdir().expect("tempdir");
    let real = dir.path().join("real-Caddyfile");
    fs::write(&real, ":80 {\n}\n").expect("write");
    std::os::unix::fs::symlink(&real, dir.path().join("Caddyfile")).expect("symlink");
    caddy_in(dir.path()).ensure_import().expect("import");
    assert!(
        fs::symlink_metadata(dir.path().join("Caddyfile"))
            .expect("stat")
            .file_type()
            .is_symlink()
    );
    assert!(fs::read_to_string(&real).expect("read").contains("import "));
}

#[test]
fn failed_change_leaves_no_site_file() {
    // caddy_bin does not exist: validation cannot run, the new file goes.
    let dir = tempfile::tempdir().expect("tempdir");
    fs::write(dir.path().join("Caddyfile"), "").expect("write");
    let caddy = caddy_in(dir.path());
    let n = name("cosmic-nova");
    let err = caddy
        .add_site(&n, Ipv4Addr::new(172, 16, 0, 2))
        .expect_err("no caddy");
    assert!(matches!(err, CaddyError::NotInstalled { .. }), "{err}");
    assert!(!caddy.site_path(&n).exists());
    assert_eq!(
        fs::read_dir(dir.path().join("fcm.d")).expect("ls").count(),
        0
    );

    // An existing file gets its old content back.
    fs::write(caddy.site_path(&n), "old").expect("write");
    caddy
        .set_stopped(&n, true, Ipv4Addr::new(172, 16, 0, 2))
        .expect_err("no caddy");
    assert_eq!(
        fs::read_to_string(caddy.site_path(&n)).expect("read"),
        "old"
    );
    caddy.remove_site(&n).expect_err("no caddy");
    assert_eq!(
        fs::read_to_string(caddy.site_path(&n)).expect("read"),
        "old"
    );
    assert_eq!(caddy.list_sites().expect("list"), vec![n.clone()]);
    caddy
        .remove_site(&name("never-made"))
        .expect("missing file is fine");
}

#[test]
fn disabled_caddy_changes_nothing() {
    let dir = tempfile::tempdir().expect("tempdir");
    let caddy = Caddy::new(CaddyConfig {
        enabled: false,
        caddyfile: dir.path().join("Caddyfile"),
        sites_dir: dir.path().join("fcm.d"),
        ..CaddyConfig::default()
    });
    assert!(!caddy.enabled());
    assert!(matches!(
        caddy.public_ip_source(),
        PublicIpSource::Fallback { .. }
    ));
    caddy.ensure_import().expect("no-op");
    caddy
        .add_site(&name("a"), Ipv4Addr::LOCALHOST)
        .expect("no-op");
    assert_eq!(fs::read_dir(dir.path()).expect("ls").count(), 0);
}

#[test]
fn route_src_is_parsed() {
    let out = "1.1.1.1 via 192.0.2.1 dev eth0 src 192.0.2.2 uid 0 \n    cache \n";
    assert_eq!(parse_route_src(out), Some(Ipv4Addr::new(192, 0, 2, 2)));
    assert_eq!(
        parse_route_src("1.1.1.1 dev wg0 table 51820 src 10.8.0.3 uid 0\n"),
        Some(Ipv4Addr::new(10, 8, 0, 3))
    );
    assert_eq!(
        parse_route_src("1.1.1.1 via 192.0.2.1 dev eth0 uid 0\n"),
        None
    );
    assert_eq!(parse_route_src("src"), None);
    assert_eq!(parse_route_src("src nonsense"), None);
}

#[test]
fn detection_gives_an_address_or_a_reason() {
    // A route lookup only; nothing is sent.
    let caddy = Caddy::new(CaddyConfig::default());
    match caddy.public_ip_source() {
        PublicIpSource::Detected => assert!(!caddy.public_ip().is_unspecified()),
        PublicIpSource::Fallback { reason } => {
            assert!(!reason.is_empty());
            assert_eq!(caddy.public_ip(), Ipv4Addr::LOCALHOST);
        }
        PublicIpSource::Configured => panic!("nothing was configured"),
    }
}

#[test]
fn caddy_errors_are_summarised() {
    let stderr = "{\"level\":\"info\",\"msg\":\"using provided configuration\"}\n\
                  Error: sending configuration to instance: performing request: Post \"http://127.0.0.1:2019/load\": \
                  dial tcp 127.0.0.1:2019: connect: connection refused\n";
    let summary = caddy_stderr_summary(stderr);
    assert!(
        summary.starts_with("Error: sending configuration"),
        "{summary}"
    );
    assert!(!summary.contains("level"), "{summary}");
    assert!(admin_unreachable(&summary));
    assert!(!admin_unreachable(
        "Error: loading new config: http app module: start: listening on :443: bind: permission denied"
    ));
    assert_eq!(caddy_stderr_summary("  plain failure \n"), "plain failure");
}

#[test]
fn bounded_run_kills_at_the_deadline() {
    let start = std::time::Instant::now();
    let err = run_bounded(
        Path::new("sleep"),
        &[OsStr::new("10")],
        Duration::from_millis(200),
    )
    .expect_err("timeout");
    assert!(err.to_string().contains("timed out"), "{err}");
    assert!(start.elapsed() < Duration::from_secs(5));
    assert_eq!(
        run_bounded(
            Path::new("echo"),
            &[OsStr::new("hi")],
            Duration::from_secs(5)
        )
        .expect("echo"),
        "hi\n"
    );
}

#[test]
fn caddy_is_shareable_between_threads() {
    fn shareable<T: Send + Sync>() {}
    shareable::<Caddy>();
}
