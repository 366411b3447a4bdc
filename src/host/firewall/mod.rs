//! The guests' network policy, in nftables: anti-spoofing and guest-to-guest
//! isolation at layer 2 (a `bridge` table), and what guests may reach at
//! layer 3 (an `inet` table, which also does the NAT for the VM subnet).
//!
//! Both tables carry the configured table name (`fcm` by default) and are
//! owned by fcm alone; nothing else on the host is touched. The rules match
//! only traffic that comes from the bridge or from its ports (`tap_*`), so
//! other interfaces are never affected.
//!
//! Per-VM state is a chain `from_<tap>` in the bridge table plus one element
//! `"<tap>" : jump from_<tap>` in its `ports` map, both named from the tap
//! alone, so [`add_vm`] and [`remove_vm`] are idempotent and a restarted
//! daemon can re-apply or undo them without remembering anything else.
//! Frames from a `tap_*` port that has no element are dropped.
//!
//! Rendering is pure ([`ruleset`], [`vm_script`], [`remove_script`]); the
//! functions that change the host run `nft -f -` once each, so every change is
//! one transaction. See `docs/network.md` for the policy in prose.

use std::fmt::{self, Write as _};
use std::net::Ipv4Addr;
use std::str::FromStr;
use std::time::Duration;

use thiserror::Error;

pub use crate::config::NetworkPolicy;
use crate::host::{self, HostError};

/// Deadline of every `nft` and `ip` call: they take milliseconds, but a
/// wedged netlink or a stuck lock must not hang a daemon operation.
pub const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Every tap fcm makes is called `tap_<id>`; the bridge table drops frames
/// from such ports unless they belong to a VM it knows.
pub const TAP_PREFIX: &str = "tap_";

/// Private IPv4 ranges guests may not reach unless `allow_private_ranges`.
pub const PRIVATE_RANGES: [&str; 4] = [
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
];

/// Link-local IPv4 (cloud metadata services live here): always denied.
pub const LINK_LOCAL: &str = "169.254.0.0/16";

/// Private and link-local IPv6 ranges, denied like [`PRIVATE_RANGES`] when
/// IPv6 is allowed at all.
pub const PRIVATE_RANGES_V6: [&str; 2] = ["fc00::/7", "fe80::/10"];

#[derive(Debug, Error)]
pub enum FirewallError {
    #[error("invalid {what} {value:?}: {reason}")]
    Invalid {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("could not apply the nftables change to table {table}")]
    Nft {
        table: String,
        #[source]
        source: HostError,
    },
    #[error("could not list the nftables tables {table}")]
    List {
        table: String,
        #[source]
        source: HostError,
    },
    #[error("could not set port isolation on {tap}")]
    Isolate {
        tap: String,
        #[source]
        source: std::io::Error,
    },
}

fn invalid(what: &'static str, value: &str, reason: &'static str) -> FirewallError {
    FirewallError::Invalid {
        what,
        value: value.chars().take(64).collect(),
        reason,
    }
}

/// A name nftables and the kernel will take verbatim: an interface
/// (1-15 of `[A-Za-z0-9_-]`) or a table (1-32 of `[A-Za-z0-9_]`, starting
/// with a letter). Nothing else is ever put into a ruleset or a command.
fn check_ifname(what: &'static str, s: &str) -> Result<(), FirewallError> {
    if s.is_empty() || s.len() > 15 {
        return Err(invalid(what, s, "must be 1-15 characters"));
    }
    if !s
        .bytes()
        .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
    {
        return Err(invalid(what, s, "only ASCII letters, digits, '_' and '-'"));
    }
    Ok(())
}

fn check_table(s: &str) -> Result<(), FirewallError> {
    let b = s.as_bytes();
    let ok = !b.is_empty()
        && b.len() <= 32
        && b[0].is_ascii_alphabetic()
        && b.iter().all(|&c| c.is_ascii_alphanumeric() || c == b'_');
    if ok {
        Ok(())
    } else {
        Err(invalid(
            "table name",
            s,
            "must be 1-32 of ASCII letters, digits and '_', starting with a letter",
        ))
    }
}

/// The fixed inputs of the policy: the names fcm owns, the VM subnet and the
/// policy. Built only through [`Params::new`], which checks every name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Params {
    table: String,
    bridge: String,
    gateway: Ipv4Addr,
    prefix_len: u8,
    policy: NetworkPolicy,
}

impl Params {
    /// `table` names both nftables tables (`inet` and `bridge`); `bridge`
    /// carries `gateway/prefix_len`.
    pub fn new(
        table: &str,
        bridge: &str,
        gateway: Ipv4Addr,
        prefix_len: u8,
        policy: NetworkPolicy,
    ) -> Result<Self, FirewallError> {
        check_table(table)?;
        check_ifname("bridge name", bridge)?;
        if !(8..=30).contains(&prefix_len) {
            return Err(invalid(
                "prefix length",
                &prefix_len.to_string(),
                "must be 8-30",
            ));
        }
        Ok(Self {
            table: table.to_owned(),
            bridge: bridge.to_owned(),
            gateway,
            prefix_len,
            policy,
        })
    }

    pub fn table(&self) -> &str {
        &self.table
    }

    pub fn bridge(&self) -> &str {
        &self.bridge
    }

    pub fn policy(&self) -> &NetworkPolicy {
        &self.policy
    }

    fn mask(&self) -> u32 {
        u32::MAX << (32 - u32::from(self.prefix_len))
    }

    /// The VM subnet, e.g. `172.16.0.0/24`.
    pub fn subnet(&self) -> String {
        let net = Ipv4Addr::from(u32::from(self.gateway) & self.mask());
        format!("{net}/{}", self.prefix_len)
    }

    fn in_subnet(&self, ip: Ipv4Addr) -> bool {
        u32::from(ip) & self.mask() == u32::from(self.gateway) & self.mask()
    }
}

/// A unicast Ethernet address, e.g. `06:00:ac:10:00:32`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Mac([u8; 6]);

impl FromStr for Mac {
    type Err = FirewallError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let mut out = [0u8; 6];
        let mut parts = s.split(':');
        for byte in &mut out {
            let part = parts.next().unwrap_or_default();
            if part.len() != 2 {
                return Err(invalid("MAC address", s, "expected six hex pairs"));
            }
            *byte = u8::from_str_radix(part, 16)
                .map_err(|_| invalid("MAC address", s, "expected six hex pairs"))?;
        }
        if parts.next().is_some() {
            return Err(invalid("MAC address", s, "expected six hex pairs"));
        }
        if out[0] & 1 == 1 || out == [0; 6] {
            return Err(invalid("MAC address", s, "must be a unicast address"));
        }
        Ok(Self(out))
    }
}

impl fmt::Display for Mac {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let m = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            m[0], m[1], m[2], m[3], m[4], m[5]
        )
    }
}

/// One VM's bridge port: its tap and the only MAC and IPv4 source address
/// it may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmPort {
    tap: String,
    mac: Mac,
    ip: Ipv4Addr,
}

impl VmPort {
    /// Checks that the tap is named `tap_…`, the MAC is unicast and the
    /// address is a host address of the subnet other than the gateway.
    pub fn new(params: &Params, tap: &str, mac: &str, ip: Ipv4Addr) -> Result<Self, FirewallError> {
        check_tap(tap)?;
        let mac = mac.parse()?;
        let host_bits = u32::from(ip) & !params.mask();
        if !params.in_subnet(ip)
            || ip == params.gateway
            || host_bits == 0
            || host_bits == !params.mask()
        {
            return Err(invalid(
                "VM address",
                &ip.to_string(),
                "must be a host address of the VM subnet other than the gateway",
            ));
        }
        Ok(Self {
            tap: tap.to_owned(),
            mac,
            ip,
        })
    }

    pub fn tap(&self) -> &str {
        &self.tap
    }
}

fn check_tap(tap: &str) -> Result<(), FirewallError> {
    check_ifname("tap name", tap)?;
    if tap.len() <= TAP_PREFIX.len() || !tap.starts_with(TAP_PREFIX) {
        return Err(invalid("tap name", tap, "must be tap_<id>"));
    }
    Ok(())
}

/// The bridge-table chain that holds one port's rules.
fn port_chain(tap: &str) -> String {
    format!("from_{tap}")
}

/// Both tables, replaced as a whole: each is created empty, deleted and
/// created again, so the script works whether or not the tables exist. The
/// `ip` table of the same name (what fcm installed before this module) is
/// removed the same way. Per-VM state is not included; see [`vm_script`].
pub fn ruleset(p: &Params) -> String {
    let t = &p.table;
    let br = &p.bridge;
    let net = p.subnet();
    let pol = &p.policy;
    let mut s = String::new();
    let mut line = |text: &str| {
        s.push_str(text);
        s.push('\n');
    };
    line("# fcm's network policy; generated, replaced as a whole.");
    for family in ["ip", "inet", "bridge"] {
        line(&format!("table {family} {t} {{}}"));
        line(&format!("delete table {family} {t}"));
    }

    // Layer 3: what guests reach, and the NAT.
    line(&format!("table inet {t} {{"));
    line("\tchain postrouting {");
    line("\t\ttype nat hook postrouting priority srcnat; policy accept;");
    line(&format!("\t\tip saddr {net} ip daddr != {net} masquerade"));
    line("\t}");
    line("\tchain input {");
    line("\t\ttype filter hook input priority filter; policy accept;");
    line(&format!("\t\tiifname \"{br}\" jump guest_to_host"));
    line("\t}");
    line("\tchain guest_to_host {");
    line("\t\tct state established,related accept");
    if pol.allow_ipv6 {
        line("\t\ticmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept");
    }
    if !pol.allow_host_ports.is_empty() {
        let mut ports = pol.allow_host_ports.clone();
        ports.sort_unstable();
        ports.dedup();
        let ports: Vec<String> = ports.iter().map(u16::to_string).collect();
        line(&format!(
            "\t\tip daddr {} tcp dport {{ {} }} accept",
            p.gateway,
            ports.join(", ")
        ));
    }
    line("\t\tdrop");
    line("\t}");
    line("\tchain forward {");
    line("\t\ttype filter hook forward priority filter; policy accept;");
    line(&format!("\t\tiifname \"{br}\" jump from_guests"));
    line(&format!(
        "\t\toifname \"{br}\" ct state established,related accept"
    ));
    line(&format!("\t\toifname \"{br}\" drop"));
    line("\t}");
    line("\tchain from_guests {");
    line(&format!("\t\tip daddr {LINK_LOCAL} drop"));
    let verdict = if pol.allow_guest_to_guest {
        "accept"
    } else {
        "drop"
    };
    line(&format!("\t\toifname \"{br}\" {verdict}"));
    if !pol.allow_private_ranges {
        line(&format!(
            "\t\tip daddr {{ {} }} drop",
            PRIVATE_RANGES.join(", ")
        ));
    }
    if pol.allow_ipv6 {
        if !pol.allow_private_ranges {
            line(&format!(
                "\t\tip6 daddr {{ {} }} drop",
                PRIVATE_RANGES_V6.join(", ")
            ));
        }
    } else {
        line("\t\tmeta nfproto ipv6 drop");
    }
    line("\t\taccept");
    line("\t}");
    line("}");

    // Layer 2: anti-spoofing per port, guest-to-guest isolation.
    line(&format!("table bridge {t} {{"));
    line("\tmap ports {");
    line("\t\ttype ifname : verdict");
    line("\t}");
    line("\tchain prerouting {");
    line("\t\ttype filter hook prerouting priority filter; policy accept;");
    line("\t\tiifname vmap @ports");
    line(&format!("\t\tiifname \"{TAP_PREFIX}*\" drop"));
    line("\t}");
    line("\tchain forward {");
    line("\t\ttype filter hook forward priority filter; policy accept;");
    if !pol.allow_guest_to_guest {
        line(&format!("\t\tiifname \"{TAP_PREFIX}*\" drop"));
    }
    line("\t}");
    line("}");
    s
}

/// The commands that (re)install one VM's port rules: its chain is created
/// or emptied, refilled, and pointed to from the `ports` map. Running it
/// again, or with a new MAC or address for the same tap, is fine.
pub fn vm_script(p: &Params, vm: &VmPort) -> String {
    let t = &p.table;
    let tap = &vm.tap;
    let chain = port_chain(tap);
    let (mac, ip) = (vm.mac, vm.ip);
    let mut s = String::new();
    let _ = writeln!(s, "add chain bridge {t} {chain}");
    let _ = writeln!(s, "flush chain bridge {t} {chain}");
    let rule = format!("add rule bridge {t} {chain}");
    let _ = writeln!(s, "{rule} ether saddr != {mac} drop");
    let _ = writeln!(s, "{rule} ether type ip ip saddr {ip} accept");
    let _ = writeln!(
        s,
        "{rule} ether type arp arp htype 1 arp ptype ip arp hlen 6 arp plen 4 \
         arp operation {{ request, reply }} arp saddr ether {mac} arp saddr ip {ip} accept"
    );
    if p.policy.allow_ipv6 {
        let _ = writeln!(s, "{rule} ether type ip6 accept");
    }
    let _ = writeln!(s, "{rule} drop");
    let _ = writeln!(
        s,
        "add element bridge {t} ports {{ \"{tap}\" : jump {chain} }}"
    );
    s
}

/// The commands that remove one VM's port state, whether or not it exists:
/// the chain and element are first created (a no-op when present), so the
/// deletes always find them.
pub fn remove_script(p: &Params, tap: &str) -> Result<String, FirewallError> {
    check_tap(tap)?;
    let t = &p.table;
    let chain = port_chain(tap);
    Ok(format!(
        "add chain bridge {t} {chain}\n\
         add element bridge {t} ports {{ \"{tap}\" : jump {chain} }}\n\
         delete element bridge {t} ports {{ \"{tap}\" }}\n\
         flush chain bridge {t} {chain}\n\
         delete chain bridge {t} {chain}\n"
    ))
}

fn nft(p: &Params, script: &str) -> Result<(), FirewallError> {
    host::run_full(
        "nft",
        ["-f", "-"],
        Some(script.as_bytes()),
        Some(COMMAND_TIMEOUT),
    )
    .map(|_| ())
    .map_err(|source| FirewallError::Nft {
        table: p.table.clone(),
        source,
    })
}

/// Installs both tables and the given VMs' ports in one transaction,
/// replacing whatever fcm had installed before. Safe to run again; a
/// restarted daemon passes every VM it knows so no port is ever left
/// without its rules.
pub fn apply(p: &Params, vms: &[VmPort]) -> Result<(), FirewallError> {
    let mut script = ruleset(p);
    for vm in vms {
        script.push_str(&vm_script(p, vm));
    }
    nft(p, &script)
}

/// Lets `tap` send as `mac`/`ip` only (one transaction; idempotent). The
/// tap need not exist yet: rules match its name.
pub fn add_vm(p: &Params, tap: &str, mac: &str, ip: Ipv4Addr) -> Result<VmPort, FirewallError> {
    let vm = VmPort::new(p, tap, mac, ip)?;
    nft(p, &vm_script(p, &vm))?;
    Ok(vm)
}

/// Removes `tap`'s port state; an absent one is fine. Frames from the tap,
/// if it still exists, are dropped from then on.
pub fn remove_vm(p: &Params, tap: &str) -> Result<(), FirewallError> {
    nft(p, &remove_script(p, tap)?)
}

/// Turns bridge port isolation on for `tap` (off when the policy allows
/// guest-to-guest traffic): isolated ports never exchange frames, whatever
/// the nftables rules say. The tap must already be a port of the bridge.
pub fn isolate_port(p: &Params, tap: &str) -> Result<(), FirewallError> {
    check_tap(tap)?;
    let err = |source| FirewallError::Isolate {
        tap: tap.to_owned(),
        source,
    };
    let mut links = host::tap::Links::open().map_err(err)?;
    let index = host::tap::index(tap).map_err(err)?;
    isolate_port_with(&mut links, p, tap, index)
}

/// [`isolate_port`] on an open rtnetlink socket, for the tap with
/// interface index `index` (in process: what `ip link set dev <tap> type
/// bridge_slave isolated on` sends).
pub fn isolate_port_with(
    links: &mut host::tap::Links,
    p: &Params,
    tap: &str,
    index: u32,
) -> Result<(), FirewallError> {
    check_tap(tap)?;
    links
        .set_isolated(index, !p.policy.allow_guest_to_guest)
        .map_err(|source| FirewallError::Isolate {
            tap: tap.to_owned(),
            source,
        })
}

/// Both tables as `nft list` prints them (for diagnostics and tests).
pub fn list(p: &Params) -> Result<String, FirewallError> {
    let mut out = String::new();
    for family in ["inet", "bridge"] {
        let text = host::run_timeout("nft", ["list", "table", family, &p.table], COMMAND_TIMEOUT)
            .map_err(|source| FirewallError::List {
            table: p.table.clone(),
            source,
        })?;
        out.push_str(&text);
    }
    Ok(out)
}

/// Deletes both tables (and the legacy `ip` one); absent ones are fine.
pub fn teardown(p: &Params) -> Result<(), FirewallError> {
    let t = &p.table;
    let mut script = String::new();
    for family in ["ip", "inet", "bridge"] {
        let _ = writeln!(script, "table {family} {t} {{}}\ndelete table {family} {t}");
    }
    nft(p, &script)
}

#[cfg(test)]
mod tests;
