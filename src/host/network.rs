//! Host networking: the bridge, one tap per VM, IPv4 forwarding, and the
//! guests' network policy (`firewall`: fcm's own `inet` and `bridge`
//! nftables tables, port isolation). Every change is idempotent, and names
//! come from the config and the VM id, so a restarted daemon can find its
//! leftovers. Every command runs under [`firewall::COMMAND_TIMEOUT`].

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use thiserror::Error;

use crate::config::DaemonConfig;
use crate::host::firewall::{self, COMMAND_TIMEOUT, FirewallError, Params, VmPort};
use crate::host::{self, HostError};
use crate::names::VmId;

#[derive(Debug, Error)]
pub enum NetworkError {
    #[error("could not set up bridge {bridge}")]
    Bridge {
        bridge: String,
        #[source]
        source: HostError,
    },
    #[error("could not install the guests' network policy")]
    Policy(#[source] Box<FirewallError>),
    #[error("could not set the network rules of tap device {tap}")]
    PortRules {
        tap: String,
        #[source]
        source: Box<FirewallError>,
    },
    #[error("could not enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
    #[error("could not create tap device {tap}")]
    Tap {
        tap: String,
        #[source]
        source: HostError,
    },
    #[error("could not {step} tap device {tap}")]
    Link {
        tap: String,
        step: &'static str,
        #[source]
        source: std::io::Error,
    },
    #[error("could not delete tap device {tap}")]
    TapDelete {
        tap: String,
        #[source]
        source: HostError,
    },
    #[error("no free address left in {start}-{end}")]
    PoolExhausted { start: Ipv4Addr, end: Ipv4Addr },
}

/// One VM's place on the bridge: its tap is `tap_<id>`, and it may send as
/// `mac`/`ip` only.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmNic {
    pub id: VmId,
    pub ip: Ipv4Addr,
    pub mac: String,
}

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

fn ip(args: &[&str]) -> Result<String, HostError> {
    host::run_timeout("ip", args, COMMAND_TIMEOUT)
}

/// The policy's inputs, from the daemon config.
pub fn policy_params(cfg: &DaemonConfig) -> Result<Params, NetworkError> {
    Params::new(
        &cfg.nft_table,
        &cfg.bridge,
        cfg.gateway,
        cfg.prefix_len,
        cfg.network_policy.clone(),
    )
    .map_err(policy_err)
}

fn policy_err(e: FirewallError) -> NetworkError {
    NetworkError::Policy(Box::new(e))
}

fn rules_err(tap: &str) -> impl Fn(FirewallError) -> NetworkError + '_ {
    move |e| NetworkError::PortRules {
        tap: tap.to_owned(),
        source: Box::new(e),
    }
}

/// Bridge with the gateway address, forwarding on, and the network policy
/// (NAT included) with the rules of every VM in `vms`, installed in one
/// transaction that replaces whatever fcm had installed: taps of VMs that
/// keep running across a daemon restart are never without their rules. A
/// VM whose address or MAC does not fit the config is left out (its frames
/// are dropped); [`create_tap`] reports why when it is brought up.
pub fn setup(cfg: &DaemonConfig, vms: &[VmNic]) -> Result<(), NetworkError> {
    let br = cfg.bridge.as_str();
    let bridge_err = |source| NetworkError::Bridge {
        bridge: br.to_owned(),
        source,
    };
    let params = policy_params(cfg)?;
    let ports: Vec<VmPort> = vms
        .iter()
        .filter_map(|v| VmPort::new(&params, &v.id.tap_name(), &v.mac, v.ip).ok())
        .collect();
    // The policy first: a bridge that already has ports never runs
    // without it once the daemon is up.
    firewall::apply(&params, &ports).map_err(policy_err)?;
    if !link_exists(br) {
        ip(&["link", "add", br, "type", "bridge"]).map_err(bridge_err)?;
    }
    let addr = format!("{}/{}", cfg.gateway, cfg.prefix_len);
    ip(&["addr", "replace", &addr, "dev", br]).map_err(bridge_err)?;
    ip(&["link", "set", br, "up"]).map_err(bridge_err)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetworkError::Forwarding)?;
    Ok(())
}

/// Removes the bridge and fcm's nftables tables (used by tests and uninstall).
pub fn teardown(cfg: &DaemonConfig) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    match policy_params(cfg) {
        Ok(p) => {
            if let Err(e) = firewall::teardown(&p) {
                errors.push(policy_err(e));
            }
        }
        Err(e) => errors.push(e),
    }
    if link_exists(&cfg.bridge)
        && let Err(source) = ip(&["link", "del", &cfg.bridge])
    {
        errors.push(NetworkError::Bridge {
            bridge: cfg.bridge.clone(),
            source,
        });
    }
    errors
}

/// Creates (or reuses) the VM's tap and attaches it to the bridge, with the
/// VM's rules (only its MAC and address may send) and port isolation set
/// before the tap is up, so the VMM never sends a frame without them.
/// Idempotent: also how a running VM's rules are re-asserted after a
/// daemon restart (a changed policy, e.g. isolation, takes effect).
pub fn create_tap(cfg: &DaemonConfig, vm: &VmNic) -> Result<String, NetworkError> {
    create_tap_for(cfg, vm, None)
}

/// Like [`create_tap`], the tap owned by `owner` (uid, gid), so a VMM
/// running as that user may attach to it (jailed Firecracker). Only before
/// a launch: a tap of another owner is made anew.
pub fn create_tap_for(
    cfg: &DaemonConfig,
    vm: &VmNic,
    owner: Option<(u32, u32)>,
) -> Result<String, NetworkError> {
    let tap = vm.id.tap_name();
    let err = |source| NetworkError::Tap {
        tap: tap.clone(),
        source,
    };
    let params = policy_params(cfg)?;
    // Rules match the tap by name: they may exist before the tap does.
    firewall::add_vm(&params, &tap, &vm.mac, vm.ip).map_err(rules_err(&tap))?;
    let wanted = owner.map_or(-1, |(uid, _)| i64::from(uid));
    if link_exists(&tap) && owner.is_some() && tap_owner(&tap) != Some(wanted) {
        ip(&["link", "del", &tap]).map_err(err)?;
    }
    if !link_exists(&tap) {
        host::tap::create(&tap, owner).map_err(link_err(&tap, "create"))?;
    }
    // In process (rtnetlink), in this order: on the bridge, isolated, up.
    let mut links = host::tap::Links::open().map_err(link_err(&tap, "open rtnetlink"))?;
    let index = host::tap::index(&tap).map_err(link_err(&tap, "find"))?;
    let bridge = host::tap::index(&cfg.bridge).map_err(link_err(&tap, "find the bridge for"))?;
    links
        .set_master(index, bridge)
        .map_err(link_err(&tap, "put on the bridge"))?;
    firewall::isolate_port_with(&mut links, &params, &tap, index).map_err(rules_err(&tap))?;
    links.set_up(index).map_err(link_err(&tap, "bring up"))?;
    Ok(tap)
}

/// Makes the VM's tap **quarantined**: its rules (only its own MAC and
/// address may send) are installed, but the tap is on no bridge and down,
/// so a VMM on it reaches no one. For a VM made from another's memory,
/// whose guest still has that VM's MAC and address until it takes its
/// own; [`create_tap_for`] later puts it on the bridge and up.
pub fn create_tap_quarantined(cfg: &DaemonConfig, vm: &VmNic) -> Result<String, NetworkError> {
    let tap = vm.id.tap_name();
    let params = policy_params(cfg)?;
    firewall::add_vm(&params, &tap, &vm.mac, vm.ip).map_err(rules_err(&tap))?;
    if link_exists(&tap) {
        // Not one of ours to reuse: it could be on the bridge.
        ip(&["link", "del", &tap]).map_err(|source| NetworkError::Tap {
            tap: tap.clone(),
            source,
        })?;
    }
    host::tap::create(&tap, None).map_err(link_err(&tap, "create"))?;
    Ok(tap)
}

/// Whether a tap is on a bridge or up (a quarantined one is neither).
pub fn tap_reachable(tap: &str) -> bool {
    let base = std::path::Path::new("/sys/class/net").join(tap);
    let up = std::fs::read_to_string(base.join("flags"))
        .ok()
        .and_then(|f| u32::from_str_radix(f.trim().trim_start_matches("0x"), 16).ok())
        .is_some_and(|f| f & 1 != 0);
    up || base.join("master").exists()
}

/// The uid that owns a tap (-1: none).
fn tap_owner(tap: &str) -> Option<i64> {
    std::fs::read_to_string(format!("/sys/class/net/{tap}/owner"))
        .ok()?
        .trim()
        .parse()
        .ok()
}

/// Opens an existing tap as root and returns its queue descriptor
/// (`IFF_TAP | IFF_NO_PI | IFF_VNET_HDR`), for a VMM that gets the tap as
/// a descriptor instead of opening `/dev/net/tun` itself.
pub fn open_tap(tap: &str) -> Result<std::fs::File, NetworkError> {
    host::tap::open(tap).map_err(link_err(tap, "open /dev/net/tun"))
}

fn link_err<'a>(tap: &'a str, step: &'static str) -> impl Fn(std::io::Error) -> NetworkError + 'a {
    move |source| NetworkError::Link {
        tap: tap.to_owned(),
        step,
        source,
    }
}

/// Deletes a tap and its rules; either being absent is fine. The rules are
/// removed even when the tap could not be (its frames are then dropped).
pub fn delete_tap(cfg: &DaemonConfig, tap: &str) -> Result<(), NetworkError> {
    let deleted = if link_exists(tap) {
        ip(&["link", "del", tap])
            .map(|_| ())
            .map_err(|source| NetworkError::TapDelete {
                tap: tap.to_owned(),
                source,
            })
    } else {
        Ok(())
    };
    let rules =
        policy_params(cfg).and_then(|p| firewall::remove_vm(&p, tap).map_err(rules_err(tap)));
    deleted.and(rules)
}

/// Taps on this host that look like fcm's (`tap_<id>`).
pub fn list_taps() -> Vec<VmId> {
    let Ok(dir) = std::fs::read_dir("/sys/class/net") else {
        return Vec::new();
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            VmId::parse(name.strip_prefix("tap_")?).ok()
        })
        .collect()
}

/// The first address of the pool not in `used`.
pub fn allocate_ip(
    cfg: &DaemonConfig,
    used: &BTreeSet<Ipv4Addr>,
) -> Result<Ipv4Addr, NetworkError> {
    (u32::from(cfg.pool_start)..=u32::from(cfg.pool_end))
        .map(Ipv4Addr::from)
        .find(|ip| !used.contains(ip))
        .ok_or(NetworkError::PoolExhausted {
            start: cfg.pool_start,
            end: cfg.pool_end,
        })
}

/// A locally administered unicast MAC that embeds the IPv4 address, as
/// Firecracker's examples do: `06:00:AC:10:00:32` for 172.16.0.50.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("06:00:{:02x}:{:02x}:{:02x}:{:02x}", o[0], o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocation_skips_used_and_reports_exhaustion() {
        let cfg = DaemonConfig {
            pool_start: Ipv4Addr::new(172, 16, 0, 50),
            pool_end: Ipv4Addr::new(172, 16, 0, 52),
            ..Default::default()
        };
        let mut used = BTreeSet::new();
        used.insert(Ipv4Addr::new(172, 16, 0, 50));
        assert_eq!(
            allocate_ip(&cfg, &used).expect("free"),
            Ipv4Addr::new(172, 16, 0, 51)
        );
        used.insert(Ipv4Addr::new(172, 16, 0, 51));
        used.insert(Ipv4Addr::new(172, 16, 0, 52));
        assert!(matches!(
            allocate_ip(&cfg, &used),
            Err(NetworkError::PoolExhausted { .. })
        ));
    }

    #[test]
    fn mac_embeds_ip() {
        assert_eq!(mac_for(Ipv4Addr::new(172, 16, 0, 50)), "06:00:ac:10:00:32");
    }
}
