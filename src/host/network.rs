//! Host networking: the bridge, one tap per VM, IPv4 forwarding and the
//! nftables table fcm owns alone. Every change is idempotent, and names come
//! from the config and the VM id, so a restarted daemon can find its leftovers.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;

use thiserror::Error;

use crate::config::DaemonConfig;
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
    #[error("could not install the nftables table {table}")]
    Nft {
        table: String,
        #[source]
        source: HostError,
    },
    #[error("could not enable IPv4 forwarding")]
    Forwarding(#[source] std::io::Error),
    #[error("could not create tap device {tap}")]
    Tap {
        tap: String,
        #[source]
        source: HostError,
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

fn link_exists(name: &str) -> bool {
    std::path::Path::new("/sys/class/net").join(name).exists()
}

/// Bridge with the gateway address, forwarding on, NAT for the VM subnet.
pub fn setup(cfg: &DaemonConfig) -> Result<(), NetworkError> {
    let br = cfg.bridge.as_str();
    let bridge_err = |source| NetworkError::Bridge {
        bridge: br.to_owned(),
        source,
    };
    if !link_exists(br) {
        host::run("ip", ["link", "add", br, "type", "bridge"]).map_err(bridge_err)?;
    }
    let addr = format!("{}/{}", cfg.gateway, cfg.prefix_len);
    host::run("ip", ["addr", "replace", &addr, "dev", br]).map_err(bridge_err)?;
    host::run("ip", ["link", "set", br, "up"]).map_err(bridge_err)?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(NetworkError::Forwarding)?;
    host::run_with_stdin("nft", ["-f", "-"], Some(nft_ruleset(cfg).as_bytes())).map_err(
        |source| NetworkError::Nft {
            table: cfg.nft_table.clone(),
            source,
        },
    )?;
    Ok(())
}

/// The whole fcm table, replaced in one transaction (add, delete, re-add).
pub fn nft_ruleset(cfg: &DaemonConfig) -> String {
    let t = &cfg.nft_table;
    let net = cfg.subnet_cidr();
    let br = &cfg.bridge;
    format!(
        "table ip {t} {{}}\n\
         delete table ip {t}\n\
         table ip {t} {{\n\
         \tchain postrouting {{\n\
         \t\ttype nat hook postrouting priority srcnat; policy accept;\n\
         \t\tip saddr {net} ip daddr != {net} masquerade\n\
         \t}}\n\
         \tchain forward {{\n\
         \t\ttype filter hook forward priority filter; policy accept;\n\
         \t\tiifname \"{br}\" accept\n\
         \t\toifname \"{br}\" ct state established,related accept\n\
         \t}}\n\
         }}\n"
    )
}

/// Removes the bridge and fcm's nftables table (used by tests and uninstall).
pub fn teardown(cfg: &DaemonConfig) -> Vec<NetworkError> {
    let mut errors = Vec::new();
    let script = format!(
        "table ip {t} {{}}\ndelete table ip {t}\n",
        t = cfg.nft_table
    );
    if let Err(source) = host::run_with_stdin("nft", ["-f", "-"], Some(script.as_bytes())) {
        errors.push(NetworkError::Nft {
            table: cfg.nft_table.clone(),
            source,
        });
    }
    if link_exists(&cfg.bridge)
        && let Err(source) = host::run("ip", ["link", "del", &cfg.bridge])
    {
        errors.push(NetworkError::Bridge {
            bridge: cfg.bridge.clone(),
            source,
        });
    }
    errors
}

/// Creates (or reuses) the VM's tap and attaches it to the bridge.
pub fn create_tap(cfg: &DaemonConfig, id: &VmId) -> Result<String, NetworkError> {
    create_tap_for(cfg, id, None)
}

/// Like [`create_tap`], the tap owned by `owner` (uid, gid), so a VMM
/// running as that user may attach to it. Only before a launch: a tap of
/// another owner is made anew.
pub fn create_tap_for(
    cfg: &DaemonConfig,
    id: &VmId,
    owner: Option<(u32, u32)>,
) -> Result<String, NetworkError> {
    let tap = id.tap_name();
    let err = |source| NetworkError::Tap {
        tap: tap.clone(),
        source,
    };
    let wanted = owner.map_or(-1, |(uid, _)| i64::from(uid));
    if link_exists(&tap) && owner.is_some() && tap_owner(&tap) != Some(wanted) {
        host::run("ip", ["link", "del", &tap]).map_err(err)?;
    }
    if !link_exists(&tap) {
        let mut args: Vec<String> = ["tuntap", "add", "dev", &tap, "mode", "tap"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        if let Some((uid, gid)) = owner {
            args.extend(["user".into(), uid.to_string()]);
            args.extend(["group".into(), gid.to_string()]);
        }
        host::run("ip", &args).map_err(err)?;
    }
    host::run("ip", ["link", "set", &tap, "master", &cfg.bridge]).map_err(err)?;
    host::run("ip", ["link", "set", &tap, "up"]).map_err(err)?;
    Ok(tap)
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
    use std::os::fd::AsRawFd;
    let err = |e: std::io::Error| NetworkError::Tap {
        tap: tap.to_owned(),
        source: HostError::Spawn {
            cmd: format!("open /dev/net/tun for {tap}"),
            source: e,
        },
    };
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/net/tun")
        .map_err(err)?;
    #[repr(C)]
    struct IfReq {
        name: [u8; 16],
        flags: libc::c_short,
        pad: [u8; 22],
    }
    let mut req = IfReq {
        name: [0; 16],
        flags: (libc::IFF_TAP | libc::IFF_NO_PI | libc::IFF_VNET_HDR) as libc::c_short,
        pad: [0; 22],
    };
    let n = tap.len().min(15);
    req.name[..n].copy_from_slice(&tap.as_bytes()[..n]);
    // SAFETY: TUNSETIFF reads (and writes back) an ifreq-sized struct we
    // own, on a descriptor we own.
    let rc = unsafe { libc::ioctl(file.as_raw_fd(), libc::TUNSETIFF, &mut req) };
    if rc == -1 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(file)
}

/// Deletes a tap; one that does not exist is fine.
pub fn delete_tap(tap: &str) -> Result<(), NetworkError> {
    if !link_exists(tap) {
        return Ok(());
    }
    host::run("ip", ["link", "del", tap])
        .map(|_| ())
        .map_err(|source| NetworkError::TapDelete {
            tap: tap.to_owned(),
            source,
        })
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

    #[test]
    fn ruleset_is_self_contained_and_idempotent() {
        let r = nft_ruleset(&DaemonConfig::default());
        assert!(r.starts_with("table ip fcm {}\ndelete table ip fcm\n"));
        assert!(r.contains("ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 masquerade"));
    }
}
