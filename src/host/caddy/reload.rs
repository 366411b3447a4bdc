//! Applying a change: `caddy validate`, then a reload (through the admin
//! endpoint, or the configured `reload_command`), each under a deadline,
//! with Caddy's errors summarised.

use std::ffi::OsStr;
use std::io;
use std::path::Path;
use std::time::Duration;

use super::{Caddy, CaddyError};
use crate::host::{self, HostError};

/// `caddy validate` only adapts and provisions the configuration.
const VALIDATE_TIMEOUT: Duration = Duration::from_secs(20);
/// A reload waits for Caddy to swap configurations, old servers included.
const RELOAD_TIMEOUT: Duration = Duration::from_secs(30);
/// A connection to Caddy's admin endpoint is refused at once when it is down.
const ADMIN_PROBE_TIMEOUT: Duration = Duration::from_secs(1);

impl Caddy {
    /// With the default reload (through the admin endpoint): the error if
    /// every address of the admin endpoint refuses a connection, i.e.
    /// Caddy is certainly not running. Anything less certain is `None`.
    pub(super) fn admin_refused(&self) -> Option<io::Error> {
        use std::net::{TcpStream, ToSocketAddrs};
        // A custom reload may not go through the admin endpoint; a missing
        // binary is reported as such by the ordinary path.
        if !self.cfg.reload_command.is_empty() || host::find_program(&self.cfg.caddy_bin).is_none()
        {
            return None;
        }
        let addrs: Vec<_> = self.cfg.admin.to_socket_addrs().ok()?.collect();
        let mut last = None;
        for a in addrs {
            match TcpStream::connect_timeout(&a, ADMIN_PROBE_TIMEOUT) {
                Ok(_) => return None,
                Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => last = Some(e),
                Err(_) => return None,
            }
        }
        last
    }

    pub(super) fn validate_and_reload(&self, site: &Path) -> Result<(), CaddyError> {
        let bin = &self.cfg.caddy_bin;
        let main = self.cfg.caddyfile.as_os_str();
        let validate = [
            OsStr::new("validate"),
            "--config".as_ref(),
            main,
            "--adapter".as_ref(),
            "caddyfile".as_ref(),
        ];
        run_bounded(bin, &validate, VALIDATE_TIMEOUT).map_err(|source| match source {
            HostError::Spawn { .. } => CaddyError::NotInstalled {
                bin: bin.clone(),
                source,
            },
            HostError::Failed { .. } => CaddyError::Invalid {
                site: site.to_path_buf(),
                source,
            },
        })?;
        let default_reload = [
            OsStr::new("reload"),
            "--config".as_ref(),
            main,
            "--adapter".as_ref(),
            "caddyfile".as_ref(),
            "--address".as_ref(),
            self.cfg.admin.as_ref(),
        ];
        let custom: Vec<&OsStr> = self
            .cfg
            .reload_command
            .iter()
            .skip(1)
            .map(OsStr::new)
            .collect();
        let (program, args): (&Path, &[&OsStr]) = match self.cfg.reload_command.first() {
            Some(p) => (Path::new(p), &custom),
            None => (bin, &default_reload),
        };
        run_bounded(program, args, RELOAD_TIMEOUT).map_err(|source| match &source {
            HostError::Spawn { .. } => CaddyError::NotInstalled {
                bin: bin.clone(),
                source,
            },
            HostError::Failed { stderr, .. } if admin_unreachable(stderr) => {
                CaddyError::NotRunning {
                    admin: self.cfg.admin.clone(),
                    source,
                }
            }
            HostError::Failed { .. } => CaddyError::Reload {
                site: site.to_path_buf(),
                source,
            },
        })?;
        Ok(())
    }
}

/// Whether `caddy reload` failed because nothing listens on the admin address.
pub(super) fn admin_unreachable(stderr: &str) -> bool {
    // Go's dialer: `dial tcp 127.0.0.1:2019: connect: connection refused`, or
    // `dial unix /run/caddy.sock: connect: no such file or directory`.
    stderr.contains("dial ") && stderr.contains("connect: ")
}

/// Caddy logs JSON lines on stderr and ends a failure with `Error: ...`; keep
/// just those lines when there are any.
pub(super) fn caddy_stderr_summary(stderr: &str) -> String {
    let errors: Vec<&str> = stderr
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("Error:"))
        .collect();
    if errors.is_empty() {
        stderr.trim().to_owned()
    } else {
        errors.join("\n")
    }
}

/// Runs a program with a deadline (a wedged Caddy must not hang a VM
/// operation), keeping only Caddy's `Error:` lines of its stderr.
pub(super) fn run_bounded(
    program: &Path,
    args: &[&OsStr],
    timeout: Duration,
) -> Result<String, HostError> {
    host::run_timeout(&program.to_string_lossy(), args, timeout).map_err(|e| match e {
        HostError::Failed {
            cmd,
            status,
            stderr,
        } => HostError::Failed {
            cmd,
            status,
            stderr: caddy_stderr_summary(&stderr),
        },
        other => other,
    })
}
