//! The command line of both modes: what `fcm` and `fcm daemon` accept.
//! Definitions only; `main` dispatches `daemon` to `crate::daemon` and
//! every other command to `crate::client`.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::{BackendChoice, DaemonConfig, TlsMode};
use crate::wire::api::DiskSize;

/// Exit codes: 0 success, 1 an operation failed, 2 bad usage.
#[derive(Parser, Debug)]
#[command(name = "fcm", version, about = "Firecracker microVM manager", long_about = None)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Cmd,
}

/// A VM: its name or its id.
const VM_HELP: &str = "The VM: its name or its id";

#[derive(Subcommand, Debug)]
pub enum Cmd {
    /// Create a VM with a random name; waits until its SSH answers.
    Create(CreateArgs),
    /// List VMs (in a cluster: every host's, with a HOST column).
    Ls {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
        /// Only the VMs of this host of the cluster.
        #[arg(long)]
        host: Option<String>,
    },
    /// SSH into a VM, or run a command in it: fcm ssh <vm> [-- cmd...].
    Ssh {
        #[arg(help = VM_HELP)]
        vm: String,
        /// The command to run instead of a login shell (after --).
        #[arg(last = true)]
        command: Vec<String>,
    },
    /// Run a command in a VM: fcm exec [-i] [-t] <vm> -- cmd...
    ///
    /// Its output is printed as it comes, stdout and stderr apart; stdin is
    /// streamed to it with -i, or when it is not a terminal; -t runs it on a
    /// terminal in the guest (exec -it vm -- bash). fcm exits with the
    /// command's exit code (124 when it was killed at its timeout).
    Exec(ExecArgs),
    /// Copy files or directories between this machine and a VM.
    ///
    /// Either side may be <vm>:<path>: fcm cp notes.txt cosmic-nova:/root/,
    /// fcm cp cosmic-nova:/var/log ./guest-logs. Directories are copied
    /// whole (as tar). A destination that is an existing directory, or that
    /// ends in /, receives the source under its own name.
    Cp(CpArgs),
    /// Print a VM's console log (boot messages); -f follows it.
    Logs(LogsArgs),
    /// Resource use of VMs, one line each (CPU, memory, disk, network); -w refreshes.
    Stats(StatsArgs),
    /// Follow the daemon's events (state changes, operations) until Ctrl-C.
    Events {
        /// Only this VM's events (its name or id).
        #[arg(long)]
        vm: Option<String>,
        /// Print each event as it comes, one JSON object a line (NDJSON).
        #[arg(long)]
        json: bool,
    },
    /// Shut a VM down cleanly (killed after a deadline).
    Stop {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Print the VM as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Boot a stopped VM again (same name, IP and disk).
    Start {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Return once the VMM runs, without waiting for SSH.
        #[arg(long)]
        no_wait: bool,
        /// Print the VM as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Change the disk size, vCPUs or memory of a stopped VM.
    ///
    /// The disk only grows; the guest grows its file system to the new size
    /// at its next boot.
    Resize(ResizeArgs),
    /// Remove a VM and everything it had on the host (its checkpoints too).
    Destroy {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Print the destroyed VM as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Save a running VM's memory to its directory and end its VMM (RAM freed).
    Pause {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Print the VM as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Bring a paused VM back as it was (processes, sessions, IP, MAC, tap).
    Resume {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Return once the VMM runs, without waiting for SSH.
        #[arg(long)]
        no_wait: bool,
        /// Print the VM as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Save a running VM's disk and memory (it keeps running); prints the id.
    ///
    /// `fcm checkpoint rm <vm> <checkpoint>` removes one.
    Checkpoint(CheckpointArgs),
    /// New running VMs from a running VM's present state: memory, processes,
    /// sessions and disk. Each fork has its own name, IP, MAC, host key,
    /// hostname and machine id; the VM pauses for a moment and runs on.
    Fork {
        #[arg(help = VM_HELP)]
        vm: String,
        /// How many forks (default 1).
        #[arg(long, default_value_t = 1)]
        count: u32,
        /// The fork's name (with --count above 1: NAME-1, NAME-2…).
        #[arg(long)]
        name: Option<String>,
        /// Print the results as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List a VM's checkpoints: id, name, created, size.
    Checkpoints {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Return a VM to a checkpoint: its disk and its running programs.
    Restore {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Checkpoint id or name.
        checkpoint: String,
        /// Return once the VMM runs, without waiting for SSH.
        #[arg(long)]
        no_wait: bool,
        /// Print the VM as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Open the VM's persistent console (tmux session "main", or a new one).
    Console {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Start an extra session instead of the default one.
        #[arg(long)]
        new: bool,
    },
    /// List a VM's console sessions.
    Sessions {
        #[arg(help = VM_HELP)]
        vm: String,
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Rejoin a console session.
    Attach {
        #[arg(help = VM_HELP)]
        vm: String,
        /// The session's id (see fcm sessions <vm>).
        session: String,
    },
    /// End a console session.
    Kill {
        #[arg(help = VM_HELP)]
        vm: String,
        /// The session's id (see fcm sessions <vm>).
        session: String,
        /// Print the ended session as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Images VMs are made from: build one from a Dockerfile, import an
    /// archive, list, remove (fcm create --image NAME).
    Image {
        #[command(subcommand)]
        action: ImageAction,
    },
    /// Print a shell completion script: fcm completions bash > /etc/bash_completion.d/fcm
    Completions {
        /// The shell to complete for.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff): fcm man | man -l -
    Man,
    /// List the hosts of the cluster: state, address, capacity and load.
    Hosts {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Run the daemon (root).
    Daemon(Box<DaemonArgs>),
}

#[derive(Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct CheckpointArgs {
    #[command(subcommand)]
    pub action: Option<CheckpointAction>,
    /// The VM to checkpoint: its name or its id.
    #[arg(required = true)]
    pub vm: Option<String>,
    /// Name the checkpoint (as a VM is named), to restore it by name.
    #[arg(long)]
    pub name: Option<String>,
    /// Print the checkpoint as JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Subcommand, Debug)]
pub enum CheckpointAction {
    /// Remove a checkpoint.
    Rm {
        #[arg(help = VM_HELP)]
        vm: String,
        /// The checkpoint: its id or its name.
        checkpoint: String,
    },
}

#[derive(Subcommand, Debug)]
pub enum ImageAction {
    /// Build an image from a Dockerfile: fcm image build [PATH] -t NAME.
    ///
    /// The context (PATH, default .) is sent to the daemon, whose builder
    /// (buildah) runs the Dockerfile; its log is printed as it runs. `FROM
    /// fcm/base` starts from fcm's own base image (no registry needed).
    Build {
        /// The build context: a directory (default: the current one).
        #[arg(default_value = ".")]
        path: PathBuf,
        /// The Dockerfile (default: PATH/Dockerfile).
        #[arg(short = 'f', long = "file", value_name = "DOCKERFILE")]
        file: Option<PathBuf>,
        /// The image's name, e.g. web or web:1.
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        tag: String,
        /// Print the stored image as JSON for scripts (the log goes to stderr).
        #[arg(long)]
        json: bool,
    },
    /// Import an image: an OCI archive or layout directory, a `docker
    /// save` archive, or a root file-system tarball (.tar, .tar.gz).
    Import {
        /// The archive, tarball or OCI layout directory.
        file: PathBuf,
        /// The image's name.
        #[arg(short = 't', long = "tag", value_name = "NAME")]
        tag: String,
        /// Print the stored image as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// List images: name, digest, size, created, source.
    Ls {
        /// Print JSON for scripts.
        #[arg(long)]
        json: bool,
    },
    /// Remove an image no VM was made from.
    Rm {
        /// The image's name.
        name: String,
        /// Print the removed image as JSON for scripts.
        #[arg(long)]
        json: bool,
    },
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
    /// Disk size, e.g. 20G or 512M (default 10G; sparse, so only what the
    /// guest writes takes space).
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<DiskSize>,
    /// Wait until SSH answers (the default).
    #[arg(long, conflicts_with = "no_wait")]
    pub wait_ssh: bool,
    /// Return once the VM is running, without waiting for SSH.
    #[arg(long)]
    pub no_wait: bool,
    /// Pause the VM after it has been idle this long (no console attached,
    /// no network traffic), e.g. 10m; it wakes on console, attach, ssh,
    /// exec, cp and on a request to its URL. `off` (or 0) disables it.
    /// Default: the daemon's `idle_pause_secs` (off unless set).
    #[arg(long, value_name = "DURATION", value_parser = parse_idle)]
    pub idle_pause: Option<u64>,
    /// Print the created VM as JSON for scripts.
    #[arg(long)]
    pub json: bool,
    /// Make it from a checkpoint instead of booting: VM:CHECKPOINT (id or
    /// name). It runs on from the checkpoint's memory and disk, with its
    /// own name, IP, MAC, host key, hostname and machine id.
    #[arg(long, value_name = "VM:CHECKPOINT", conflicts_with_all = ["cpus", "memory", "disk"])]
    pub from: Option<String>,
    /// Boot the kernel, even where the daemon has a template of this size
    /// (a warm create restores it instead: same VM, faster).
    #[arg(long, conflicts_with = "from")]
    pub cold: bool,
    /// The image to make it from (fcm image ls; default: fcm/base). Its
    /// CMD runs as the VM's service; its ENV, WORKDIR and USER hold for
    /// exec too.
    #[arg(long, value_name = "NAME", conflicts_with = "from")]
    pub image: Option<String>,
    /// In a cluster: the host to make it on (default: the live host with
    /// the most free memory).
    #[arg(long)]
    pub host: Option<String>,
}

/// `--idle-pause`: a duration (`90s`, `10m`, `1h 30m`) in whole seconds,
/// or `off`/`0` (returned as 0).
fn parse_idle(s: &str) -> Result<u64, String> {
    let s = s.trim();
    if s.eq_ignore_ascii_case("off") || s == "0" {
        return Ok(0);
    }
    let d = humantime::parse_duration(s)
        .map_err(|e| format!("{e} (expected a duration such as 30s, 10m or 2h, or off)"))?;
    if d.as_secs() == 0 {
        return Err("shorter than a second (use e.g. 30s, or off)".into());
    }
    Ok(d.as_secs())
}

#[derive(Args, Debug)]
pub struct ResizeArgs {
    #[arg(help = VM_HELP)]
    pub vm: String,
    /// New disk size, e.g. 20G (it only grows).
    #[arg(long, value_name = "SIZE")]
    pub disk: Option<DiskSize>,
    /// New number of vCPUs.
    #[arg(long)]
    pub cpus: Option<u8>,
    /// New memory in MiB.
    #[arg(long)]
    pub memory: Option<u32>,
    /// Print the VM as JSON for scripts.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct ExecArgs {
    #[arg(help = VM_HELP)]
    pub vm: String,
    /// Stream standard input to the command (it always is when it is not a
    /// terminal), end of file included.
    #[arg(short = 'i', long)]
    pub interactive: bool,
    /// Run the command on a terminal in the guest: this terminal in raw
    /// mode, window size followed, Ctrl-C to the command.
    #[arg(short = 't', long, conflicts_with = "json")]
    pub tty: bool,
    /// Kill the command after this many seconds (default 60, at most 3600;
    /// with -i or -t, none unless given; 0 for none).
    #[arg(long, value_name = "SECS")]
    pub timeout: Option<u64>,
    /// Set an environment variable for the command (repeatable).
    #[arg(short = 'e', long = "env", value_name = "NAME=VALUE")]
    pub env: Vec<String>,
    /// The command's working directory in the guest.
    #[arg(short = 'w', long = "workdir", value_name = "DIR")]
    pub workdir: Option<String>,
    /// Run the command as this guest user (a name or a number; default root).
    #[arg(short = 'u', long, value_name = "USER")]
    pub user: Option<String>,
    /// Wait for the end and print {exit_code, stdout, stderr, encoding,
    /// truncated, timed_out} as JSON (each stream cut at 1 MiB).
    #[arg(long)]
    pub json: bool,
    /// The program and its arguments, after --; each argument reaches the
    /// guest as it is (quoted, never parsed by a shell).
    #[arg(last = true, required = true, value_name = "CMD")]
    pub command: Vec<String>,
}

#[derive(Args, Debug)]
pub struct CpArgs {
    /// What to copy: a local path, or <vm>:<path>.
    pub src: String,
    /// Where to: a local path, or <vm>:<path>.
    pub dst: String,
    /// No progress display, even on a terminal.
    #[arg(long, short)]
    pub quiet: bool,
}

#[derive(Args, Debug)]
pub struct LogsArgs {
    #[arg(help = VM_HELP)]
    pub vm: String,
    /// Keep printing what the console writes (until Ctrl-C).
    #[arg(long, short)]
    pub follow: bool,
    /// Print each piece as a JSON line {offset, next_offset, size, data, reset}.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct StatsArgs {
    /// One VM (its name or id); all of them if left out.
    pub vm: Option<String>,
    /// Print JSON: one object for a VM, an array for all (with -w, one line per refresh).
    #[arg(long)]
    pub json: bool,
    /// Refresh every sampling interval until Ctrl-C.
    #[arg(long, short = 'w')]
    pub watch: bool,
    /// In a cluster: only the VMs of this host (all live hosts' if left out).
    #[arg(long, conflicts_with = "vm")]
    pub host: Option<String>,
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// JSON config file (keys as in docs/config.md); flags override it.
    #[arg(long, env = "FCM_CONFIG")]
    pub config: Option<PathBuf>,
    /// State directory: VMs, token, keys (default /var/lib/firecracker).
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
    /// The VMM (default: firecracker where hardware virtualisation works, else qemu).
    #[arg(long, value_enum)]
    pub backend: Option<BackendChoice>,
    /// Bridge the VMs' taps join (default fcm0).
    #[arg(long)]
    pub bridge: Option<String>,
    /// Guest kernel, an ELF vmlinux (default <state>/vmlinux.bin).
    #[arg(long)]
    pub kernel: Option<PathBuf>,
    /// Guest initramfs (default <state>/initrd.img).
    #[arg(long)]
    pub initrd: Option<PathBuf>,
    /// Base root file system every VM's disk is copied from (default <state>/base-rootfs.img).
    #[arg(long)]
    pub rootfs: Option<PathBuf>,
    /// The guest agent, a static fcm-agent (default <state>/fcm-agent;
    /// scripts/build-agent.sh puts it there). Without it, VMs are reached
    /// over SSH only.
    #[arg(long)]
    pub agent: Option<PathBuf>,
    /// The firecracker binary (default: firecracker on PATH).
    #[arg(long)]
    pub firecracker_bin: Option<PathBuf>,
    /// The QEMU binary (default: qemu-system-x86_64 on PATH).
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
    /// Warm create from a template of the default size: on (default) or off.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub templates: Option<bool>,
    /// Join a cluster: etcd's client URLs, comma-separated (docs/cluster.md).
    #[arg(long, value_name = "URLS", value_delimiter = ',')]
    pub cluster: Option<Vec<String>>,
    /// This host's name in the cluster (default: the machine's hostname).
    #[arg(long)]
    pub host_name: Option<String>,
    /// The API address other hosts and clients reach this host at
    /// (default: --listen's).
    #[arg(long, value_name = "ADDR:PORT")]
    pub advertise: Option<SocketAddr>,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err("expected on or off".into()),
    }
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
            agent,
            firecracker_bin,
            qemu_bin,
            templates
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
        if let Some(e) = self.cluster {
            c.cluster.endpoints = e.into_iter().filter(|e| !e.is_empty()).collect();
        }
        if self.host_name.is_some() {
            c.cluster.host_name = self.host_name;
        }
        if self.advertise.is_some() {
            c.cluster.advertise = self.advertise;
        }
        Ok(c)
    }
}
