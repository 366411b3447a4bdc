//! The units fcm's init runs: the agent, sshd when the image has one (with
//! the config drive's identity), and the image's service.

use super::supervise::{Program, Restart, Unit};
use crate::image;
use crate::process::DEFAULT_PATH;
use crate::users;
use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const AGENT: &str = "/run/fcm/fcm-agent";
const AGENT_OFF: &str = "/run/fcm/agent.off";
const SSHD: &str = "/usr/sbin/sshd";
/// Where the initramfs put the config drive's members.
const CONFIG: &str = "/run/fcm/config";
/// Where sshd reads the config drive's keys (beside ~/.ssh/authorized_keys),
/// as in the base image (its sshd_config.d/fcm.conf).
const AUTHORIZED: &str = "/run/fcm/authorized_keys";

fn root_program(argv: &[&str]) -> Program {
    Program {
        argv: argv.iter().map(|s| s.to_string()).collect(),
        env: vec![("PATH".into(), DEFAULT_PATH.into())],
        cwd: "/".into(),
        user: None,
    }
}

pub(super) fn units() -> Vec<Unit> {
    let mut agent = Unit::new("fcm-agent", root_program(&[AGENT]), Restart::Always);
    agent.off_switch = Some(AGENT_OFF.into());
    let mut units = vec![agent];
    if Path::new(SSHD).exists() {
        install_identity();
        units.push(Unit::new("sshd", sshd_program(), Restart::Always));
    }
    match image::load(Path::new(fcm_proto::IMAGE_CONFIG_PATH)) {
        Ok(Some(config)) => match service(&config) {
            Ok(Some(program)) => units.push(Unit::new("service", program, Restart::OnFailure)),
            Ok(None) => say!("the image has no entrypoint or cmd: no service"),
            Err(e) => say!("warning: no service: {e}"),
        },
        Ok(None) => say!("warning: no {}: no service", fcm_proto::IMAGE_CONFIG_PATH),
        Err(e) => say!("warning: {e}: no service"),
    }
    units
}

/// The image's service: `entrypoint ++ cmd` as its user in its workdir,
/// with `PATH` (unless the image sets it) and the user's `HOME`, then the
/// image's env.
pub(super) fn service(config: &fcm_proto::ImageConfig) -> Result<Option<Program>, String> {
    service_in(config, Path::new("/etc"))
}

fn service_in(config: &fcm_proto::ImageConfig, etc: &Path) -> Result<Option<Program>, String> {
    let Some(argv) = image::service_argv(config) else {
        return Ok(None);
    };
    let passwd = fs::read_to_string(etc.join("passwd")).unwrap_or_default();
    let group = fs::read_to_string(etc.join("group")).unwrap_or_default();
    let user = users::lookup_spec(config.user.as_deref(), &passwd, &group)
        .map_err(|e| format!("the image's user: {}", e.message))?;
    let env = image::layer_env(
        vec![
            ("PATH".into(), DEFAULT_PATH.into()),
            ("HOME".into(), user.home.clone()),
        ],
        &[&image::env_pairs(config)],
    );
    let cwd = PathBuf::from(image::workdir(config));
    if !cwd.is_dir() && etc == Path::new("/etc") {
        // As Docker does for a WORKDIR that is not there.
        if let Err(e) = fs::create_dir_all(&cwd) {
            say!("warning: cannot make the workdir {}: {e}", cwd.display());
        }
    }
    Ok(Some(Program {
        argv,
        env,
        cwd,
        user: Some(user),
    }))
}

/// The config drive's host key and authorized keys where sshd reads them
/// (as the base image's rc.sh does).
fn install_identity() {
    let config = Path::new(CONFIG);
    let copy = |from: &str, to: &Path, mode: u32| -> std::io::Result<()> {
        let text = fs::read(config.join(from))?;
        if let Some(dir) = to.parent() {
            fs::create_dir_all(dir)?;
        }
        let _ = fs::remove_file(to);
        fs::write(to, text)?;
        fs::set_permissions(to, fs::Permissions::from_mode(mode))
    };
    for (from, to, mode) in [
        (
            "ssh_host_ed25519_key",
            "/etc/ssh/ssh_host_ed25519_key",
            0o600,
        ),
        (
            "ssh_host_ed25519_key.pub",
            "/etc/ssh/ssh_host_ed25519_key.pub",
            0o644,
        ),
        ("authorized_keys", AUTHORIZED, 0o600),
    ] {
        if let Err(e) = copy(from, Path::new(to), mode) {
            say!("warning: cannot install {to} from the config drive: {e}");
        }
    }
    if let Err(e) = fs::create_dir_all("/run/sshd") {
        say!("warning: cannot make /run/sshd: {e}");
    }
}

/// `sshd -D -e`; an image without the base image's sshd configuration
/// (its sshd_config.d/fcm.conf) is told what it needs with `-o`.
fn sshd_program() -> Program {
    let mut argv = vec![SSHD, "-D", "-e"];
    if !Path::new("/etc/ssh/sshd_config").exists() {
        argv.extend(["-f", "/dev/null"]);
    }
    if !Path::new("/etc/ssh/sshd_config.d/fcm.conf").exists() {
        argv.extend([
            "-o",
            "HostKey=/etc/ssh/ssh_host_ed25519_key",
            "-o",
            "AuthorizedKeysFile=.ssh/authorized_keys /run/fcm/authorized_keys",
            "-o",
            "PermitRootLogin=prohibit-password",
            "-o",
            "PasswordAuthentication=no",
            "-o",
            "UseDNS=no",
        ]);
    }
    root_program(&argv)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_service_runs_as_the_image_says() {
        let etc = tempfile::tempdir().expect("tempdir");
        fs::write(etc.path().join("passwd"), "www:x:33:33::/var/www:/bin/sh\n").expect("passwd");
        fs::write(etc.path().join("group"), "www:x:33:\n").expect("group");
        let config: fcm_proto::ImageConfig = serde_json::from_str(
            r#"{"entrypoint":["httpd"],"cmd":["-f","-p","8000"],"env":["GREETING=hi"],"workdir":"/www","user":"www"}"#,
        )
        .expect("json");
        let p = service_in(&config, etc.path())
            .expect("ok")
            .expect("a service");
        assert_eq!(p.argv, ["httpd", "-f", "-p", "8000"]);
        assert_eq!(p.cwd, Path::new("/www"));
        assert_eq!(p.user.as_ref().map(|u| (u.uid, u.gid)), Some((33, 33)));
        assert_eq!(
            p.env,
            [
                ("PATH".to_string(), DEFAULT_PATH.to_string()),
                ("HOME".into(), "/var/www".into()),
                ("GREETING".into(), "hi".into())
            ]
        );
        let none: fcm_proto::ImageConfig = serde_json::from_str("{}").expect("json");
        assert!(service_in(&none, etc.path()).expect("ok").is_none());
        let bad: fcm_proto::ImageConfig =
            serde_json::from_str(r#"{"cmd":["x"],"user":"nobody-here"}"#).expect("json");
        assert!(service_in(&bad, etc.path()).is_err());
    }
}
