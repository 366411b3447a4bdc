//! The command line of both modes: what `fcm` and `fcm daemon` accept.
//! Definitions only; `main` dispatches `daemon` to `crate::daemon` and
//! every other command to `crate::client`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{BackendChoice, DaemonConfig, TlsMode};

/// Exit codes: 0 success, 1 an operation failed, 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "fcm", version, about = "Firecracker microVM manager", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a VM with a random name; waits until its SSH answers.
    Create(CreateArgs),
    /// List VMs.
    Ls {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// SSH into a VM, or run a command in it: fcm ssh <vm> [-- cmd...].
    Ssh {
        vm: String,
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Shut a VM down cleanly (killed after a deadline).
    Stop { vm: String },
    /// Boot a stopped VM again (same name, IP and disk).
    Start {
        vm: String,
        /// Return once the VMM runs, without waiting for SSH.
        #[arg(long)]
        no_wait: bool,
    },
    /// Remove a VM and everything it had on the host.
    Destroy { vm: String },
    /// Open the VM's persistent console (tmux session "main", or a new one).
    Console {
        vm: String,
        /// Start an extra session instead of the default one.
        #[arg(long)]
        new: bool,
    },
    /// List a VM's console sessions.
    Sessions {
        vm: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Rejoin a console session.
    Attach { vm: String, session: String },
    /// End a console session.
    Kill { vm: String, session: String },
    /// Run the daemon (root).
    Daemon(Box<DaemonArgs>),
}

#[derive(Args, Debug)]
pub struct CreateArgs {
    /// Name the VM yourself instead of a random adjective-noun.
    #[arg(long)]
    pub name: Option<String>,
    /// vCPUs (default 1).
    #[arg(long)]
    pub cpus: Option<u8>,
    /// Memory in MiB (default 512).
    #[arg(long)]
    pub memory: Option<u32>,
    /// Wait until SSH answers (the default).
    #[arg(long, conflicts_with = "no_wait")]
    pub wait_ssh: bool,
    /// Return once the VM is running, without waiting for SSH.
    #[arg(long)]
    pub no_wait: bool,
    /// Print the created VM as JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// JSON config file (keys as in docs/config.md); flags override it.
    #[arg(long, env = "FCM_CONFIG")]
    pub config: Option<PathBuf>,
    #[arg(long, env = "FCM_STATE_DIR")]
    pub state_dir: Option<PathBuf>,
    /// API address (default 127.0.0.1:7777).
    #[arg(long)]
    pub listen: Option<SocketAddr>,
    /// Terminal stream address (default 127.0.0.1:7778).
    #[arg(long)]
    pub stream_listen: Option<SocketAddr>,
    /// TLS on both ports: auto (when either listens beyond loopback), on, off.
    #[arg(long, value_enum)]
    pub tls: Option<TlsMode>,
    /// Print the fingerprint of the daemon's TLS certificate (made if
    /// missing) and exit.
    #[arg(long)]
    pub print_fingerprint: bool,
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    #[arg(long)]
    pub bridge: Option<String>,
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    #[arg(long)]
    pub firecracker_bin: Option<PathBuf>,
    #[arg(long)]
    pub qemu_bin: Option<PathBuf>,
    /// Public IPv4 used in URLs (default: detected).
    #[arg(long)]
    pub public_ip: Option<Ipv4Addr>,
    /// Domain suffix for URLs (default sslip.io).
    #[arg(long)]
    pub domain_suffix: Option<String>,
    /// Do not publish URLs through Caddy.
    #[arg(long)]
    pub no_caddy: bool,
}

impl DaemonArgs {
    pub fn into_config(self) -> Result<DaemonConfig, crate::config::ConfigError> {
        let mut c = match &self.config {
            Some(p) => DaemonConfig::from_file(p)?,
            None => DaemonConfig::default(),
        };
        macro_rules! set {
            ($($f:ident),*) => { $( if let Some(v) = self.$f { c.$f = v; } )* };
        }
        set!(
            state_dir,
            listen,
            stream_listen,
            tls,
            backend,
            bridge,
            kernel,
            initrd,
            rootfs,
            firecracker_bin,
            qemu_bin
        );
        if let Some(ip) = self.public_ip {
            c.caddy.public_ip = Some(ip);
        }
        if let Some(s) = self.domain_suffix {
            c.caddy.domain_suffix = s;
        }
        if self.no_caddy {
            c.caddy.enabled = false;
        }
        Ok(c)
    }
}
