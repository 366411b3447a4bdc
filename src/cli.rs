//! Command-line interface: parsing, and each command's client-side work.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::os::unix::process::CommandExt;
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};
use serde_json::{Value, json};

use crate::client::{self, Client, ClientError, seg};
use crate::config::{BackendChoice, DaemonConfig};
use crate::console::{self, ConsoleError};

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
    /// Terminal stream address (default 0.0.0.0:7778).
    #[arg(long)]
    pub stream_listen: Option<SocketAddr>,
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

/// An error as the user sees it: the message and, where it helps, a hint.
pub struct Failure {
    pub message: String,
    pub hint: Option<String>,
}

impl From<ClientError> for Failure {
    fn from(e: ClientError) -> Self {
        Self {
            hint: e.hint(),
            message: e.to_string(),
        }
    }
}

impl From<ConsoleError> for Failure {
    fn from(e: ConsoleError) -> Self {
        match e {
            ConsoleError::Refused { error, hint } => Self {
                message: error,
                hint,
            },
            ConsoleError::Client(c) => c.into(),
            other => Self {
                hint: other.hint(),
                message: crate::daemon::manager::chain(&other),
            },
        }
    }
}

fn out(line: &str) {
    let mut o = std::io::stdout().lock();
    // A closed pipe (e.g. `fcm ls | head`) is not an error worth reporting.
    let _ = writeln!(o, "{line}");
}

fn s(v: &Value, k: &str) -> String {
    match &v[k] {
        Value::String(x) => x.clone(),
        Value::Null => "-".into(),
        other => other.to_string(),
    }
}

fn warnings(v: &Value) {
    for w in v["warnings"].as_array().into_iter().flatten() {
        eprintln!("warning: {}", w.as_str().unwrap_or_default());
    }
}

pub fn run(cli: Cli) -> Result<(), Failure> {
    match cli.command {
        Cmd::Daemon(args) => {
            let cfg = (*args).into_config().map_err(|e| Failure {
                message: crate::daemon::manager::chain(&e),
                hint: None,
            })?;
            crate::daemon::run(cfg).map_err(|e| {
                let hint = match &e {
                    crate::daemon::DaemonError::NotRoot => {
                        Some("run it with sudo: sudo fcm daemon".into())
                    }
                    crate::daemon::DaemonError::Locked(_) => {
                        Some("stop the other daemon, or use another --state-dir".into())
                    }
                    _ => None,
                };
                Failure {
                    message: crate::daemon::manager::chain(&e),
                    hint,
                }
            })
        }
        Cmd::Create(a) => create(a),
        Cmd::Ls { json } => ls(json),
        Cmd::Ssh { vm, command } => ssh(&vm, &command),
        Cmd::Stop { vm } => simple("stopping", "POST", &format!("/vms/{}/stop", seg(&vm)), None),
        Cmd::Start { vm, no_wait } => simple(
            "starting",
            "POST",
            &format!("/vms/{}/start", seg(&vm)),
            Some(json!({"wait_ssh": !no_wait})),
        ),
        Cmd::Destroy { vm } => simple("destroying", "DELETE", &format!("/vms/{}", seg(&vm)), None),
        Cmd::Console { vm, new } => {
            let c = Client::from_env()?;
            let session = if new {
                let v = c.request(
                    "POST",
                    &format!("/vms/{}/sessions", seg(&vm)),
                    Some(&json!({})),
                )?;
                Some(s(&v, "id"))
            } else {
                None
            };
            let a = console::attach(c.token(), &vm, session.as_deref(), !new)?;
            eprintln!("\r\n{}", a.message(&vm));
            Ok(())
        }
        Cmd::Attach { vm, session } => {
            let c = Client::from_env()?;
            let a = console::attach(c.token(), &vm, Some(&session), false)?;
            eprintln!("\r\n{}", a.message(&vm));
            Ok(())
        }
        Cmd::Sessions { vm, json } => {
            let c = Client::from_env()?;
            let v = c.request("GET", &format!("/vms/{}/sessions", seg(&vm)), None)?;
            if json {
                out(&v.to_string());
                return Ok(());
            }
            let list = v.as_array().cloned().unwrap_or_default();
            if list.is_empty() {
                eprintln!("no sessions in {vm}; open one with: fcm console {vm}");
                return Ok(());
            }
            out(&format!(
                "{:<12} {:<20} {:<9} COMMAND",
                "SESSION", "CREATED", "ATTACHED"
            ));
            for x in list {
                let created = x["created"]
                    .as_u64()
                    .map(format_time)
                    .unwrap_or_else(|| "-".into());
                out(&format!(
                    "{:<12} {:<20} {:<9} {}",
                    s(&x, "id"),
                    created,
                    s(&x, "attached"),
                    s(&x, "command")
                ));
            }
            Ok(())
        }
        Cmd::Kill { vm, session } => simple(
            "killing session",
            "DELETE",
            &format!("/vms/{}/sessions/{}", seg(&vm), seg(&session)),
            None,
        ),
    }
}

fn create(a: CreateArgs) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let mut body = json!({ "wait_ssh": !a.no_wait });
    if let Some(n) = a.name {
        body["name"] = json!(n);
    }
    if let Some(n) = a.cpus {
        body["cpus"] = json!(n);
    }
    if let Some(n) = a.memory {
        body["memory_mib"] = json!(n);
    }
    match client::user_ssh_key() {
        Some((_, public)) => body["ssh_public_key"] = json!(public),
        None => eprintln!(
            "warning: no ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; `fcm ssh` will not log you in"
        ),
    }
    eprintln!(
        "creating VM{}...",
        if a.no_wait { "" } else { " (waiting for SSH)" }
    );
    let v = c.request("POST", "/vms", Some(&body))?;
    warnings(&v);
    if a.json {
        out(&v.to_string());
        return Ok(());
    }
    let name = s(&v, "name");
    out(&format!("created {name}"));
    out(&format!("  id:    {}", s(&v, "id")));
    out(&format!("  ip:    {}", s(&v, "ip")));
    if let Some(u) = v["url"].as_str() {
        out(&format!("  url:   {u}"));
    }
    out(&format!("  ssh:   fcm ssh {name}"));
    Ok(())
}

fn ls(json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let v = c.request("GET", "/vms", None)?;
    if json {
        out(&v.to_string());
        return Ok(());
    }
    let list = v.as_array().cloned().unwrap_or_default();
    if list.is_empty() {
        eprintln!("no VMs; create one with: fcm create");
        return Ok(());
    }
    out(&format!(
        "{:<22} {:<9} {:<9} {:<15} URL",
        "NAME", "ID", "STATE", "IP"
    ));
    for x in list {
        out(&format!(
            "{:<22} {:<9} {:<9} {:<15} {}",
            s(&x, "name"),
            s(&x, "id"),
            s(&x, "state"),
            s(&x, "ip"),
            s(&x, "url")
        ));
    }
    Ok(())
}

fn simple(doing: &str, method: &str, path: &str, body: Option<Value>) -> Result<(), Failure> {
    let c = Client::from_env()?;
    eprintln!("{doing}...");
    let v = c.request(method, path, body.as_ref())?;
    warnings(&v);
    let what = if v["name"].is_string() {
        s(&v, "name")
    } else {
        s(&v, "id")
    };
    let state = if v["state"].is_string() {
        s(&v, "state")
    } else {
        "done".into()
    };
    out(&format!("{what}: {state}"));
    Ok(())
}

fn ssh(vm: &str, command: &[String]) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let info = c.request("GET", &format!("/vms/{}/ssh", seg(vm)), None)?;
    if info["state"].as_str() != Some("running") {
        return Err(Failure {
            message: format!("VM {} is {}", s(&info, "name"), s(&info, "state")),
            hint: Some(format!("start it with: fcm start {}", s(&info, "name"))),
        });
    }
    let ip = s(&info, "ip");
    let mut args: Vec<String> = Vec::new();
    if let Some((private, _)) = client::user_ssh_key()
        && private.exists()
    {
        args.extend([
            "-i".into(),
            private.display().to_string(),
            "-o".into(),
            "IdentitiesOnly=yes".into(),
        ]);
    }
    if let Some(key) = info["host_key"].as_str() {
        let kh = known_hosts_file(&ip, key)?;
        args.extend([
            "-o".into(),
            format!("UserKnownHostsFile={}", kh.display()),
            "-o".into(),
            "StrictHostKeyChecking=yes".into(),
        ]);
    } else {
        args.extend(["-o".into(), "StrictHostKeyChecking=accept-new".into()]);
    }
    args.extend(["-o".into(), "LogLevel=ERROR".into()]);
    if !client::daemon_is_local() {
        // The VM's address lives on the daemon host's bridge: jump through it.
        let user = std::env::var("FCM_JUMP_USER").unwrap_or_else(|_| "root".into());
        args.extend(["-J".into(), format!("{user}@{}", client::daemon_host())]);
    }
    args.push(format!("{}@{ip}", s(&info, "user")));
    args.extend(command.iter().cloned());
    let err = std::process::Command::new("ssh").args(&args).exec();
    Err(Failure {
        message: format!("could not run ssh: {err}"),
        hint: Some("install openssh-client".into()),
    })
}

/// Writes the pinned host key to the user's fcm known_hosts file.
fn known_hosts_file(ip: &str, key: &str) -> Result<PathBuf, Failure> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join("fcm");
    let io = |e: std::io::Error| Failure {
        message: format!("could not write {}: {e}", dir.display()),
        hint: None,
    };
    std::fs::create_dir_all(&dir).map_err(io)?;
    let path = dir.join("known_hosts");
    let ip: Ipv4Addr = ip.parse().map_err(|_| Failure {
        message: format!("bad VM address {ip}"),
        hint: None,
    })?;
    let line = crate::ssh::known_hosts_line(ip, key);
    let existing = std::fs::read_to_string(&path).unwrap_or_default();
    let prefix = format!("{ip} ");
    let mut kept: String = existing
        .lines()
        .filter(|l| !l.starts_with(&prefix))
        .map(|l| format!("{l}\n"))
        .collect();
    kept.push_str(&line);
    crate::host::write_atomic(&path, kept.as_bytes(), 0o644).map_err(io)?;
    Ok(path)
}

fn format_time(secs: u64) -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let ago = now.saturating_sub(secs);
    match ago {
        0..60 => format!("{ago}s ago"),
        60..3600 => format!("{}m ago", ago / 60),
        3600..86400 => format!("{}h ago", ago / 3600),
        _ => format!("{}d ago", ago / 86400),
    }
}
