//! Daemon configuration (long because every knob, its default and checks are here).
//! Defaults, an optional JSON config file, and flags. Every path, port and name
//! the daemon touches comes from here so tests can point it at a temp dir and a
//! network namespace.

use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use crate::wire::{DEFAULT_API_PORT, DEFAULT_STATE_DIR, DEFAULT_STREAM_PORT};

mod cluster;
pub use cluster::{ClusterConfig, host_name_problem};

mod images;
mod metrics;
pub use images::{ImageBuilder, ImagesConfig};
pub use metrics::MetricsConfig;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("could not read config file {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("config file {path} is not valid")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// Which VMM runs the guests.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum BackendChoice {
    /// Firecracker where hardware virtualisation is usable, QEMU otherwise.
    Auto,
    Firecracker,
    Qemu,
}

/// When the API and the terminal stream speak TLS (both do, or neither).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum TlsMode {
    /// TLS when either port listens beyond loopback; plain on loopback.
    Auto,
    /// TLS on both ports, loopback too.
    On,
    /// Never TLS: then both ports must listen on loopback.
    Off,
}

/// Bounds on the servers (`"limits": {...}` in the config file). Each
/// port has its own pre-authentication budget, so unauthenticated clients
/// never take the slots of authenticated ones.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Limits {
    /// Connections per port that have not yet shown the token (they cost
    /// no thread); when all are held, the oldest is pushed out for a new one.
    pub pre_auth_connections: usize,
    /// Unused (a per-address cap locked out users sharing an address with a flood); still parsed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pre_auth_per_peer: Option<usize>,
    /// Seconds an HTTP client has from connecting to the end of its request
    /// headers, TLS handshake included.
    pub http_pre_auth_secs: u64,
    /// HTTP requests authorised and being read, queued or served.
    pub http_requests: usize,
    /// Long-lived HTTP streams at once (streamed execs, file transfers),
    /// each on a thread of its own, apart from `http_requests`.
    pub http_streams: usize,
    /// Attached terminal connections.
    pub stream_connections: usize,
    /// Idle kept-alive API connections (waiting, threadless, for a next request); 0: off.
    pub http_keepalive: usize,
    /// Seconds a kept-alive API connection may wait for its next request.
    pub http_idle_secs: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            pre_auth_connections: 4096,
            pre_auth_per_peer: None,
            http_pre_auth_secs: 10,
            http_requests: 64,
            http_streams: 256,
            stream_connections: 256,
            http_keepalive: 256,
            http_idle_secs: 30,
        }
    }
}

/// Everything the daemon needs to know. Field names are the config file's keys.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DaemonConfig {
    /// VM directories, the token, the lock and (by default) the guest assets.
    pub state_dir: PathBuf,
    /// HTTP API address.
    pub listen: SocketAddr,
    /// Terminal streaming address.
    pub stream_listen: SocketAddr,
    /// TLS on the API and the stream: `auto` (beyond loopback), `on`, `off`.
    pub tls: TlsMode,
    /// Connection caps, deadlines and per-peer limits of both servers.
    pub limits: Limits,
    pub bridge: String,
    /// Gateway address on the bridge; the subnet is gateway/prefix_len.
    pub gateway: Ipv4Addr,
    pub prefix_len: u8,
    /// First and last VM address handed out.
    pub pool_start: Ipv4Addr,
    pub pool_end: Ipv4Addr,
    /// Name of the nftables tables fcm owns (families `inet` and `bridge`).
    pub nft_table: String,
    /// What guests may reach (docs/network.md); everything optional is off.
    pub network_policy: NetworkPolicy,
    /// DNS server written into guests.
    pub dns: Ipv4Addr,
    /// Guest assets; relative paths are taken from the state dir.
    pub kernel: PathBuf,
    /// Optional initramfs; used when the file exists.
    pub initrd: PathBuf,
    pub rootfs: PathBuf,
    /// The guest agent (a static `fcm-agent`); relative to the state dir.
    /// Missing: VMs are reached over SSH only.
    pub agent: PathBuf,
    pub firecracker_bin: PathBuf,
    pub qemu_bin: PathBuf,
    pub backend: BackendChoice,
    pub default_cpus: u8,
    pub default_memory_mib: u32,
    /// Seconds a guest gets to shut down cleanly before it is killed.
    pub stop_timeout_secs: u64,
    /// Idle sleep for VMs created without `--idle-pause`: pause a VM after
    /// this many seconds with no console attached and no network traffic.
    /// Off unless set.
    pub idle_pause_secs: Option<u64>,
    /// Seconds `create` waits for SSH when asked to.
    pub ssh_timeout_secs: u64,
    /// Serial console log cap per VM, in bytes.
    pub console_log_max_bytes: u64,
    /// At most this many VMs (unset: no limit); creates beyond it get 409.
    pub max_vms: Option<u32>,
    /// Public HTTPS URLs through Caddy.
    pub caddy: CaddyConfig,
    /// The E2B API (docs/e2b.md).
    pub e2b: E2bConfig,
    /// Firecracker under its jailer.
    pub jailer: JailerConfig,
    /// QEMU under its seccomp sandbox, as the VM's own user.
    pub qemu_sandbox: QemuSandboxConfig,
    /// The per-VM user a jailed or sandboxed VMM runs as.
    pub vm_users: VmUsersConfig,
    /// CPU and memory limits of each VMM.
    pub cgroup: CgroupConfig,
    /// Several hosts on etcd (docs/cluster.md); off unless endpoints are given.
    pub cluster: ClusterConfig,
    /// Warm create: keep a template of the default-sized VM (booted once to
    /// agent-ready and saved) and make plain creates from it (QEMU only).
    pub templates: bool,
    /// Building and importing images (`fcm image`).
    pub images: ImagesConfig,
    /// The sampler of VM resource use (`fcm stats`, `/metrics`).
    pub metrics: MetricsConfig,
}

impl Default for DaemonConfig {
    fn default() -> Self {
        Self {
            state_dir: PathBuf::from(DEFAULT_STATE_DIR),
            listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_API_PORT)),
            stream_listen: SocketAddr::from(([127, 0, 0, 1], DEFAULT_STREAM_PORT)),
            tls: TlsMode::Auto,
            limits: Limits::default(),
            bridge: "fcm0".into(),
            gateway: Ipv4Addr::new(172, 16, 0, 1),
            prefix_len: 24,
            pool_start: Ipv4Addr::new(172, 16, 0, 50),
            pool_end: Ipv4Addr::new(172, 16, 0, 254),
            nft_table: "fcm".into(),
            network_policy: NetworkPolicy::default(),
            dns: Ipv4Addr::new(1, 1, 1, 1),
            kernel: PathBuf::from("vmlinux.bin"),
            agent: PathBuf::from("fcm-agent"),
            initrd: PathBuf::from("initrd.img"),
            rootfs: PathBuf::from("base-rootfs.img"),
            firecracker_bin: PathBuf::from("firecracker"),
            qemu_bin: PathBuf::from("qemu-system-x86_64"),
            backend: BackendChoice::Auto,
            default_cpus: 1,
            default_memory_mib: 512,
            stop_timeout_secs: 20,
            idle_pause_secs: None,
            ssh_timeout_secs: 180,
            console_log_max_bytes: 1 << 20,
            max_vms: None,
            caddy: CaddyConfig::default(),
            e2b: E2bConfig::default(),
            jailer: JailerConfig::default(),
            qemu_sandbox: QemuSandboxConfig::default(),
            vm_users: VmUsersConfig::default(),
            cluster: ClusterConfig::default(),
            cgroup: CgroupConfig::default(),
            templates: true,
            images: ImagesConfig::default(),
            metrics: MetricsConfig::default(),
        }
    }
}

impl DaemonConfig {
    /// Reads a JSON config file; missing keys keep their defaults.
    pub fn from_file(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        serde_json::from_str(&text).map_err(|source| ConfigError::Parse {
            path: path.to_owned(),
            source,
        })
    }

    /// Checks the values that would otherwise fail late and obscurely.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |m: &str| Err(ConfigError::Invalid(m.to_owned()));
        if self.bridge.is_empty()
            || self.bridge.len() > 15
            || !self
                .bridge
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'-' || c == b'_')
        {
            return bad("bridge must be 1-15 characters of [A-Za-z0-9_-]");
        }
        let table = self.nft_table.as_bytes();
        if table.is_empty()
            || table.len() > 32
            || !table[0].is_ascii_alphabetic()
            || !table
                .iter()
                .all(|c| c.is_ascii_alphanumeric() || *c == b'_')
        {
            return bad("nft_table must be 1-32 of [A-Za-z0-9_], starting with a letter");
        }
        if !(8..=30).contains(&self.prefix_len) {
            return bad("prefix_len must be between 8 and 30");
        }
        let (s, e) = (u32::from(self.pool_start), u32::from(self.pool_end));
        if s > e {
            return bad("pool_start must not be after pool_end");
        }
        if !self.in_subnet(self.pool_start) || !self.in_subnet(self.pool_end) {
            return bad("the address pool must lie inside the gateway's subnet");
        }
        if (s..=e).contains(&u32::from(self.gateway)) {
            return bad("the gateway must not be inside the address pool");
        }
        if let Some(p) = self.images.problem() {
            return bad(p);
        }
        if let Some(p) = self.cluster.problem() {
            return Err(ConfigError::Invalid(p));
        }
        let l = &self.limits;
        if l.pre_auth_connections == 0
            || l.http_requests == 0
            || l.stream_connections == 0
            || l.http_pre_auth_secs == 0
            || l.http_idle_secs == 0
        {
            return bad("every limit must be at least 1 (but http_keepalive, which may be 0)");
        }
        if l.pre_auth_connections > 1 << 20 || l.http_keepalive > 1 << 20 {
            return bad(
                "limits.pre_auth_connections and limits.http_keepalive are at most 1048576",
            );
        }
        if self.default_cpus == 0 || self.default_memory_mib < 64 {
            return bad("default_cpus must be at least 1 and default_memory_mib at least 64");
        }
        // Every address of the subnet maps to its own uid and gid.
        let span = 1u64 << (32 - u32::from(self.prefix_len));
        for (what, base) in [
            ("vm_users.uid_base", self.vm_users.uid_base),
            ("vm_users.gid_base", self.vm_users.gid_base),
        ] {
            if base < 1000 || u64::from(base) + span >= u64::from(u32::MAX) {
                return Err(ConfigError::Invalid(format!(
                    "{what} must be at least 1000 and leave room for {span} ids below 2^32-1"
                )));
            }
        }
        let parent = self.cgroup.parent.trim_start_matches('/');
        if parent.is_empty()
            || !parent.split('/').all(|c| {
                !c.is_empty()
                    && c != "."
                    && c != ".."
                    && c.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"-_.".contains(&b))
            })
        {
            return bad("cgroup.parent must be a path of [A-Za-z0-9._-] components");
        }
        Ok(())
    }

    /// The uid and gid of the VM with this address: the bases plus the
    /// address's host part, so each VM of the subnet has its own, and a
    /// restarted daemon derives the same ones.
    pub fn vm_user(&self, ip: Ipv4Addr) -> (u32, u32) {
        let host = u32::from(ip) & !u32::from(self.netmask());
        (
            self.vm_users.uid_base.saturating_add(host),
            self.vm_users.gid_base.saturating_add(host),
        )
    }

    pub fn netmask(&self) -> Ipv4Addr {
        Ipv4Addr::from(
            u32::MAX
                .checked_shl(32 - u32::from(self.prefix_len))
                .unwrap_or(0),
        )
    }

    /// The VM subnet in CIDR form, e.g. `172.16.0.0/24`.
    pub fn subnet_cidr(&self) -> String {
        let net = u32::from(self.gateway) & u32::from(self.netmask());
        format!("{}/{}", Ipv4Addr::from(net), self.prefix_len)
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        let m = u32::from(self.netmask());
        u32::from(ip) & m == u32::from(self.gateway) & m
    }

    /// Resolves an asset path against the state dir.
    pub fn asset(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_owned()
        } else {
            self.state_dir.join(p)
        }
    }

    pub fn token_path(&self) -> PathBuf {
        self.state_dir.join(".token")
    }

    /// The token that may only read `GET /metrics` (docs/metrics.md).
    pub fn metrics_token_path(&self) -> PathBuf {
        self.state_dir.join(".metrics-token")
    }

    /// The token that may only wake VMs (written into Caddy's sites of VMs
    /// with idle sleep).
    pub fn wake_token_path(&self) -> PathBuf {
        self.state_dir.join(".wake-token")
    }

    /// The daemon's TLS certificate and key live here.
    pub fn tls_dir(&self) -> PathBuf {
        self.state_dir.join(".tls")
    }

    /// Whether both ports speak TLS; `Err` names a port that would carry
    /// the token in clear text beyond loopback.
    pub fn tls_active(&self) -> Result<bool, SocketAddr> {
        let beyond = [self.listen, self.stream_listen]
            .into_iter()
            .find(|a| !a.ip().is_loopback());
        match (self.tls, beyond) {
            (TlsMode::On, _) => Ok(true),
            (TlsMode::Auto, b) => Ok(b.is_some()),
            (TlsMode::Off, Some(a)) => Err(a),
            (TlsMode::Off, None) => Ok(false),
        }
    }
}

/// What guests may do on the network (`"network_policy": {...}` in the
/// config file). Everything is denied unless listed here; the defaults are
/// the safe ones. `host::firewall` turns it into nftables rules.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct NetworkPolicy {
    /// Let guests talk to each other (bridged and routed). Off: ports are
    /// isolated on the bridge and guest-to-guest frames and packets dropped.
    pub allow_guest_to_guest: bool,
    /// Let guests reach 10/8, 172.16/12, 192.168/16, 100.64/10 (and fc00::/7
    /// with IPv6) through the host. Off by default: guests get the internet
    /// only, not the networks the host sits in. 169.254/16 is always denied.
    pub allow_private_ranges: bool,
    /// Let IPv6 frames from guests onto the bridge. Off by default: they
    /// are dropped at layer 2.
    pub allow_ipv6: bool,
    /// TCP ports on the gateway (bridge) address that guests may connect
    /// to. Empty by default: guests reach no service on the host.
    pub allow_host_ports: Vec<u16>,
}

/// Caddy settings of the daemon config (`"caddy": {...}` in the config file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CaddyConfig {
    /// Turn URLs off entirely.
    pub enabled: bool,
    /// The main Caddyfile; fcm only adds one `import` line to it, once.
    pub caddyfile: PathBuf,
    /// Directory holding one fcm-owned file per VM.
    pub sites_dir: PathBuf,
    pub caddy_bin: PathBuf,
    /// Caddy's admin endpoint, used to reload.
    pub admin: String,
    /// Public IPv4 for `<name>.<a-b-c-d>.<suffix>`; detected when unset.
    pub public_ip: Option<Ipv4Addr>,
    pub domain_suffix: String,
    /// Guest port the URL proxies to.
    pub guest_port: u16,
    /// How to reload Caddy: an argv run instead of `caddy reload --config
    /// <caddyfile> --adapter caddyfile --address <admin>` (for example
    /// `["systemctl", "reload", "caddy"]`). Empty means the default.
    pub reload_command: Vec<String>,
}

impl Default for CaddyConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            caddyfile: PathBuf::from("/etc/caddy/Caddyfile"),
            sites_dir: PathBuf::from("/etc/caddy/fcm.d"),
            caddy_bin: PathBuf::from("caddy"),
            admin: "localhost:2019".into(),
            public_ip: None,
            domain_suffix: "sslip.io".into(),
            guest_port: 8000,
            reload_command: Vec::new(),
        }
    }
}

/// `"e2b": {...}`: the E2B API's settings.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct E2bConfig {
    /// Publish `api.<domain>` and `49983-<id>.<domain>` through Caddy, so
    /// `E2B_DOMAIN=<domain>` works (only while Caddy is enabled).
    pub caddy: bool,
}

impl Default for E2bConfig {
    fn default() -> Self {
        Self { caddy: true }
    }
}

/// `"jailer": {...}`: Firecracker runs under its jailer (chroot, own uid
/// and gid, new mount namespace) unless turned off.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JailerConfig {
    pub enabled: bool,
    /// The jailer binary, of the same version as Firecracker.
    pub bin: PathBuf,
}

impl Default for JailerConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            bin: PathBuf::from("jailer"),
        }
    }
}

/// `"qemu_sandbox": {...}`: QEMU runs as the VM's user with
/// `-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct QemuSandboxConfig {
    pub enabled: bool,
}

impl Default for QemuSandboxConfig {
    fn default() -> Self {
        Self { enabled: true }
    }
}

/// `"vm_users": {...}`: VM at address `a.b.c.d` of a /24 runs as uid
/// `uid_base + d`, gid `gid_base + d` (the host part of the address in
/// general). The ranges must be unused on the host.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct VmUsersConfig {
    pub uid_base: u32,
    pub gid_base: u32,
}

impl Default for VmUsersConfig {
    fn default() -> Self {
        Self {
            uid_base: 300_000,
            gid_base: 300_000,
        }
    }
}

/// `"cgroup": {...}`: each VMM in its own cgroup, `<parent>/<id>`, with a
/// CPU quota of its vCPUs and a memory limit of its memory plus an overhead.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CgroupConfig {
    pub enabled: bool,
    /// Where the cgroup file systems are mounted.
    pub root: PathBuf,
    /// A relative path is taken below the daemon's own cgroup (per
    /// controller on cgroup v1); `/x` is `x` below the hierarchy's root.
    pub parent: String,
    /// Memory a VMM may use beyond its guest's (its own code, TCG's
    /// translation cache, page cache of the disk).
    pub memory_overhead_mib: u32,
}

impl Default for CgroupConfig {
    fn default() -> Self {
        Self {
            enabled: true,
            root: PathBuf::from("/sys/fs/cgroup"),
            parent: "fcm".into(),
            memory_overhead_mib: 256,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_are_valid_and_match_the_spec() {
        let c = DaemonConfig::default();
        c.validate().expect("defaults valid");
        assert_eq!(c.network_policy, NetworkPolicy::default());
        assert!(
            !c.network_policy.allow_guest_to_guest && c.network_policy.allow_host_ports.is_empty()
        );
        assert_eq!(c.subnet_cidr(), "172.16.0.0/24");
        assert_eq!(c.netmask(), Ipv4Addr::new(255, 255, 255, 0));
        assert_eq!(c.listen.port(), 7777);
        assert!(c.stream_listen.ip().is_loopback());
        assert_eq!(c.tls_active(), Ok(false));
        assert_eq!(
            c.asset(Path::new("vmlinux.bin")),
            PathBuf::from("/var/lib/firecracker/vmlinux.bin")
        );
    }

    #[test]
    fn file_overrides_some_keys_and_rejects_unknown() {
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join("c.json");
        std::fs::write(&p, r#"{"bridge":"br9","default_memory_mib":256}"#).expect("write");
        let c = DaemonConfig::from_file(&p).expect("parse");
        assert_eq!(
            (c.bridge.as_str(), c.default_memory_mib, c.default_cpus),
            ("br9", 256, 1)
        );
        std::fs::write(&p, r#"{"brige":"x"}"#).expect("write");
        assert!(DaemonConfig::from_file(&p).is_err());
        std::fs::write(
            &p,
            r#"{"network_policy":{"allow_guest_to_guest":true,"allow_host_ports":[3128]}}"#,
        )
        .expect("write");
        let c = DaemonConfig::from_file(&p).expect("parse");
        assert!(c.network_policy.allow_guest_to_guest);
        assert!(!c.network_policy.allow_private_ranges && !c.network_policy.allow_ipv6);
        assert_eq!(c.network_policy.allow_host_ports, vec![3128]);
        std::fs::write(&p, r#"{"network_policy":{"allow_all":true}}"#).expect("write");
        assert!(DaemonConfig::from_file(&p).is_err());
    }

    #[test]
    fn tls_follows_the_addresses() {
        let open: SocketAddr = "0.0.0.0:7778".parse().expect("addr");
        let mut c = DaemonConfig {
            stream_listen: open,
            ..Default::default()
        };
        assert_eq!(c.tls_active(), Ok(true));
        c.tls = TlsMode::Off;
        assert_eq!(c.tls_active(), Err(open));
        c.stream_listen = "127.0.0.1:7778".parse().expect("addr");
        assert_eq!(c.tls_active(), Ok(false));
        c.tls = TlsMode::On;
        assert_eq!(c.tls_active(), Ok(true));
    }

    #[test]
    fn validation_catches_bad_networks() {
        let mut c = DaemonConfig {
            bridge: "a;b".into(),
            ..Default::default()
        };
        assert!(c.validate().is_err());
        c.bridge = "fcm0".into();
        c.pool_start = Ipv4Addr::new(10, 0, 0, 5);
        assert!(c.validate().is_err());
        c.pool_start = Ipv4Addr::new(172, 16, 0, 50);
        c.validate().expect("valid again");
        for table in ["", "1fcm", "fcm-x", &"a".repeat(33)] {
            c.nft_table = table.into();
            assert!(c.validate().is_err(), "{table:?}");
        }
    }

    #[test]
    fn each_address_has_its_own_user_and_bad_bases_are_refused() {
        let mut c = DaemonConfig::default();
        assert_eq!(c.vm_user(Ipv4Addr::new(172, 16, 0, 50)), (300_050, 300_050));
        assert_eq!(
            c.vm_user(Ipv4Addr::new(172, 16, 0, 254)),
            (300_254, 300_254)
        );
        c.vm_users.uid_base = 0;
        assert!(c.validate().is_err());
        c.vm_users.uid_base = u32::MAX - 10;
        assert!(c.validate().is_err());
        c.vm_users.uid_base = 300_000;
        c.cgroup.parent = "../escape".into();
        assert!(c.validate().is_err());
        c.cgroup.parent = "/fcm.slice/vms".into();
        c.validate().expect("absolute parent");
    }
}
