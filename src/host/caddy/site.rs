//! The text fcm writes for Caddy: a VM's site block and the main
//! Caddyfile's `import` line. Pure functions, so every byte is tested.

use std::net::SocketAddr;
use std::path::Path;

use super::{CaddyError, DIAL_TIMEOUT};
use crate::names::VmName;

/// What a VM's site file serves.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum SiteState<'a> {
    /// Proxy to the guest.
    Running { upstream: SocketAddr },
    /// Proxy to the guest of a VM with idle sleep: each request first asks
    /// the daemon to wake the VM (Caddy's `forward_auth` holds the request
    /// until the daemon answers), then goes to the guest.
    Waking {
        upstream: SocketAddr,
        wake_uri: &'a str,
        hook: &'a WakeHook,
    },
    /// A static 503 page.
    Stopped,
    /// A static 503 page naming `fcm resume` (a VM a user paused).
    Paused,
}

/// Where Caddy asks the daemon to wake a VM: the API's address, the token
/// that may only wake VMs, and, when the API speaks TLS, the daemon's
/// certificate for Caddy to trust (with the name `localhost` it holds).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WakeHook {
    pub dial: SocketAddr,
    pub token: String,
    pub tls_ca: Option<std::path::PathBuf>,
}

impl WakeHook {
    /// Defence in depth before interpolation: a token of letters and
    /// digits, a CA path of safe characters.
    pub(super) fn check(&self) -> Result<(), CaddyError> {
        let token_ok =
            !self.token.is_empty() && self.token.bytes().all(|c| c.is_ascii_alphanumeric());
        let ca_ok = self
            .tls_ca
            .as_deref()
            .is_none_or(|p| import_line(p).is_ok());
        if token_ok && ca_ok {
            Ok(())
        } else {
            Err(CaddyError::UnsafeWakeHook)
        }
    }
}

/// `import <dir>/*.caddy`, for a directory that needs no quoting.
pub(super) fn import_line(dir: &Path) -> Result<String, CaddyError> {
    let unsafe_dir = || CaddyError::UnsafeSitesDir {
        path: dir.to_path_buf(),
    };
    let text = dir.to_str().ok_or_else(unsafe_dir)?;
    let safe = text.starts_with('/')
        && text
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'/' | b'-'));
    if !safe {
        return Err(unsafe_dir());
    }
    Ok(format!("import {}/*.caddy", text.trim_end_matches('/')))
}

/// The main Caddyfile with the import block appended, or `None` when a line
/// already reads exactly `line` (surrounding blanks aside).
pub(super) fn with_import_line(text: &[u8], line: &str) -> Option<Vec<u8>> {
    let present = text
        .split(|&c| c == b'\n')
        .any(|l| l.trim_ascii() == line.as_bytes());
    if present {
        return None;
    }
    let mut out = text.to_vec();
    if !out.is_empty() {
        if !out.ends_with(b"\n") {
            out.push(b'\n');
        }
        out.push(b'\n');
    }
    out.extend_from_slice(b"# Added once by fcm: one site per VM, written and removed by fcm.\n");
    out.extend_from_slice(line.as_bytes());
    out.push(b'\n');
    Some(out)
}

/// Defence in depth: a domain is dot-separated labels of `[a-z0-9-]`, each
/// 1-63 long and not starting or ending with `-`, 253 characters at most.
pub(super) fn check_domain(domain: &str) -> Result<(), CaddyError> {
    let label_ok = |l: &str| {
        !l.is_empty()
            && l.len() <= 63
            && !l.starts_with('-')
            && !l.ends_with('-')
            && l.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'-')
    };
    if domain.len() <= 253 && domain.split('.').all(label_ok) {
        Ok(())
    } else {
        Err(CaddyError::UnsafeDomain {
            domain: domain.chars().take(300).collect(),
        })
    }
}

/// The site file of one VM. Only checked domains, VM names and socket
/// addresses are interpolated, none of which can hold a quote, brace or blank.
pub(super) fn render_site(domain: &str, name: &VmName, state: SiteState) -> String {
    match state {
        SiteState::Running { upstream } => format!(
            "# Written by fcm for VM {name} (running); fcm rewrites and removes this file.\n\
             {domain} {{\n\
             {}\
             }}\n",
            proxy(name, upstream, "")
        ),
        SiteState::Waking {
            upstream,
            wake_uri,
            hook,
        } => {
            let (scheme, tls) = match &hook.tls_ca {
                Some(ca) => (
                    "https://",
                    format!(
                        "\t\t\ttls_trusted_ca_certs {}\n\t\t\ttls_server_name localhost\n",
                        ca.display()
                    ),
                ),
                None => ("", String::new()),
            };
            format!(
                "# Written by fcm for VM {name} (idle sleep: a request wakes it); fcm rewrites and removes this file.\n\
                 {domain} {{\n\
                 \tforward_auth {scheme}{dial} {{\n\
                 \t\turi {wake_uri}\n\
                 \t\theader_up Authorization \"Bearer {token}\"\n\
                 \t\ttransport http {{\n\
                 \t\t\tdial_timeout {DIAL_TIMEOUT}\n\
                 {tls}\
                 \t\t}}\n\
                 \t}}\n\
                 {proxy}\
                 }}\n",
                dial = hook.dial,
                token = hook.token,
                // The guest may take a moment to answer once resumed.
                proxy = proxy(name, upstream, "\t\tlb_try_duration 10s\n"),
            )
        }
        SiteState::Paused => format!(
            "# Written by fcm for VM {name} (paused); fcm rewrites and removes this file.\n\
             {domain} {{\n\
             \trespond \"VM {name} is paused: run `fcm resume {name}`\" 503\n\
             }}\n"
        ),
        SiteState::Stopped => format!(
            "# Written by fcm for VM {name} (stopped); fcm rewrites and removes this file.\n\
             {domain} {{\n\
             \trespond \"VM {name} is stopped: run `fcm start {name}`\" 503\n\
             }}\n"
        ),
    }
}

/// The E2B API's site file (`<sites_dir>/_e2b.caddy`): `api.<domain>` is
/// the control API, `*.<domain>` answers only `49983-<sandbox>.<domain>`
/// (certificates made per name on demand: no wildcard certificate, so an
/// ACME CA's HTTP challenge works), both proxied to the daemon's API at
/// `dial` with the `Host` kept (Caddy's default), which is how the daemon routes them. The
/// domain is checked and `dial` is a socket address; `tls_ca` (the
/// daemon's certificate, when its API speaks TLS) was checked by the caller.
pub(super) fn render_e2b_site(
    domain: &str,
    envd_port: u16,
    dial: SocketAddr,
    tls_ca: Option<&Path>,
) -> String {
    let (scheme, tls) = match tls_ca {
        Some(ca) => (
            "https://",
            format!(
                "\t\t\ttls_trusted_ca_certs {}\n\t\t\ttls_server_name localhost\n",
                ca.display()
            ),
        ),
        None => ("", String::new()),
    };
    let proxy = |indent: &str| {
        format!(
            "{indent}\treverse_proxy {scheme}{dial} {{\n\
             {indent}\t\tflush_interval -1\n\
             {indent}\t\ttransport http {{\n\
             {indent}\t\t\tdial_timeout {DIAL_TIMEOUT}\n\
             {tls}\
             {indent}\t\t}}\n\
             {indent}\t}}\n"
        )
    };
    let host_re = domain.replace('.', "[.]");
    format!(
        "# Written by fcm for the E2B API (e2b.caddy in fcm's config); fcm rewrites and removes this file.\n\
         api.{domain} {{\n\
         {api}\
         }}\n\
         \n\
         *.{domain} {{\n\
         \ttls {{\n\
         \t\ton_demand\n\
         \t}}\n\
         \t@envd header_regexp Host ^{envd_port}-[a-z0-9-]+[.]{host_re}(:[0-9]+)?$\n\
         \thandle @envd {{\n\
         {envd}\
         \t}}\n\
         \thandle {{\n\
         \t\trespond \"no such E2B sandbox address: names here are {envd_port}-<sandbox id>.{domain}\" 404\n\
         \t}}\n\
         }}\n",
        api = proxy(""),
        envd = proxy("\t"),
    )
}

/// A site's proxy to the guest (`options` inside `reverse_proxy`), and
/// the page Caddy answers when the guest does not.
fn proxy(name: &VmName, upstream: SocketAddr, options: &str) -> String {
    let port = upstream.port();
    format!(
        "\treverse_proxy {upstream} {{\n\
         {options}\
         \t\ttransport http {{\n\
         \t\t\tdial_timeout {DIAL_TIMEOUT}\n\
         \t\t}}\n\
         \t}}\n\
         \thandle_errors {{\n\
         \t\trespond \"VM {name} is not answering on port {port}: is its web server running?\" 502\n\
         \t}}\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn name(s: &str) -> VmName {
        VmName::parse(s).expect("valid name")
    }

    #[test]
    fn a_waking_site_asks_the_daemon_first_with_the_wake_token() {
        let hook = WakeHook {
            dial: "127.0.0.1:7777".parse().expect("addr"),
            token: "wAkE123".into(),
            tls_ca: None,
        };
        let upstream: SocketAddr = "172.16.0.2:8000".parse().expect("addr");
        let text = render_site(
            "cosmic-nova.1-2-3-4.sslip.io",
            &name("cosmic-nova"),
            SiteState::Waking {
                upstream,
                wake_uri: "/vms/ab12cd34/wake",
                hook: &hook,
            },
        );
        assert!(
            text.contains(
                "\tforward_auth 127.0.0.1:7777 {\n\t\turi /vms/ab12cd34/wake\n\t\theader_up Authorization \"Bearer wAkE123\"\n"
            ),
            "{text}"
        );
        assert!(text.contains("\treverse_proxy 172.16.0.2:8000 {\n\t\tlb_try_duration 10s\n"));
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        let tls = WakeHook {
            tls_ca: Some("/etc/caddy/fcm.d/fcm-daemon-cert.pem".into()),
            ..hook.clone()
        };
        let text = render_site(
            "a.1-2-3-4.sslip.io",
            &name("a"),
            SiteState::Waking {
                upstream,
                wake_uri: "/vms/ab12cd34/wake",
                hook: &tls,
            },
        );
        assert!(
            text.contains("forward_auth https://127.0.0.1:7777 {"),
            "{text}"
        );
        assert!(text.contains("tls_trusted_ca_certs /etc/caddy/fcm.d/fcm-daemon-cert.pem\n\t\t\ttls_server_name localhost\n"), "{text}");
        // Nothing that could break out of the Caddyfile gets in.
        for bad in [
            WakeHook {
                token: "a\" }".into(),
                ..hook.clone()
            },
            WakeHook {
                tls_ca: Some("/tmp/x y".into()),
                ..hook.clone()
            },
        ] {
            assert!(bad.check().is_err(), "{bad:?}");
        }
        assert!(hook.check().is_ok());
    }

    #[test]
    fn running_site_proxies_and_explains_errors() {
        let upstream: SocketAddr = "172.16.0.2:8000".parse().expect("addr");
        let text = render_site(
            "cosmic-nova.1-2-3-4.sslip.io",
            &name("cosmic-nova"),
            SiteState::Running { upstream },
        );
        assert_eq!(
            text,
            "# Written by fcm for VM cosmic-nova (running); fcm rewrites and removes this file.\n\
             cosmic-nova.1-2-3-4.sslip.io {\n\
             \treverse_proxy 172.16.0.2:8000 {\n\
             \t\ttransport http {\n\
             \t\t\tdial_timeout 5s\n\
             \t\t}\n\
             \t}\n\
             \thandle_errors {\n\
             \t\trespond \"VM cosmic-nova is not answering on port 8000: is its web server running?\" 502\n\
             \t}\n\
             }\n"
        );
        let braces = text.matches('{').count();
        assert_eq!(braces, text.matches('}').count());
    }

    #[test]
    fn stopped_site_answers_statically() {
        let text = render_site("web.1-2-3-4.sslip.io", &name("web"), SiteState::Stopped);
        assert!(text.contains("web.1-2-3-4.sslip.io {\n"), "{text}");
        assert!(
            text.contains("\trespond \"VM web is stopped: run `fcm start web`\" 503\n"),
            "{text}"
        );
        assert!(!text.contains("reverse_proxy"), "{text}");
    }

    #[test]
    fn import_line_requires_a_plain_absolute_dir() {
        assert_eq!(
            import_line(Path::new("/etc/caddy/fcm.d")).expect("ok"),
            "import /etc/caddy/fcm.d/*.caddy"
        );
        assert_eq!(
            import_line(Path::new("/etc/caddy/fcm.d/")).expect("ok"),
            "import /etc/caddy/fcm.d/*.caddy"
        );
        for bad in [
            "fcm.d",
            "/etc/my sites",
            "/etc/\"x\"",
            "/etc/{x}",
            "/etc/x\nimport /y",
            "/etc/#x",
        ] {
            assert!(import_line(Path::new(bad)).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn import_line_is_appended_once() {
        let line = "import /etc/caddy/fcm.d/*.caddy";
        let user = b":80 {\n\troot * /usr/share/caddy\n\tfile_server\n}";
        let once = with_import_line(user, line).expect("appended");
        assert!(
            once.starts_with(user),
            "user's text must be kept byte for byte"
        );
        assert_eq!(
            String::from_utf8_lossy(&once[user.len()..]),
            "\n\n# Added once by fcm: one site per VM, written and removed by fcm.\nimport /etc/caddy/fcm.d/*.caddy\n"
        );
        assert_eq!(with_import_line(&once, line), None);
        assert_eq!(
            with_import_line(b"  import /etc/caddy/fcm.d/*.caddy  \r\n", line),
            None
        );
        // A commented-out or different import is not ours.
        assert!(with_import_line(b"# import /etc/caddy/fcm.d/*.caddy\n", line).is_some());
        assert!(with_import_line(b"import /etc/caddy/other/*.caddy\n", line).is_some());
        let empty = with_import_line(b"", line).expect("appended");
        assert!(empty.starts_with(b"# Added once by fcm"));
    }

    #[test]
    fn the_e2b_site_proxies_api_and_only_envd_names_to_the_daemon() {
        let dial: SocketAddr = "127.0.0.1:7777".parse().expect("addr");
        let text = render_e2b_site("1-2-3-4.sslip.io", 49983, dial, None);
        assert!(text.contains("\napi.1-2-3-4.sslip.io {\n\treverse_proxy 127.0.0.1:7777 {\n\t\tflush_interval -1\n"), "{text}");
        assert!(
            text.contains("\n*.1-2-3-4.sslip.io {\n\ttls {\n\t\ton_demand\n\t}\n"),
            "{text}"
        );
        assert!(
            text.contains("\t@envd header_regexp Host ^49983-[a-z0-9-]+[.]1-2-3-4[.]sslip[.]io(:[0-9]+)?$\n\thandle @envd {\n\t\treverse_proxy 127.0.0.1:7777 {"),
            "{text}"
        );
        assert!(
            text.contains("\thandle {\n\t\trespond \"no such E2B sandbox address"),
            "{text}"
        );
        assert!(!text.contains("https://"), "{text}");
        assert_eq!(text.matches('{').count(), text.matches('}').count());
        let tls = render_e2b_site(
            "1-2-3-4.sslip.io",
            49983,
            dial,
            Some(Path::new("/etc/caddy/fcm.d/fcm-daemon-cert.pem")),
        );
        assert_eq!(
            tls.matches("reverse_proxy https://127.0.0.1:7777 {")
                .count(),
            2,
            "{tls}"
        );
        assert_eq!(
            tls.matches("tls_trusted_ca_certs /etc/caddy/fcm.d/fcm-daemon-cert.pem\n")
                .count(),
            2,
            "{tls}"
        );
    }
}
