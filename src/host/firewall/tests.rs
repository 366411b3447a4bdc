//! Unit tests of the rendering and input checks (no host changes).

use super::*;

fn params(policy: NetworkPolicy) -> Params {
    Params::new("fcm", "fcm0", Ipv4Addr::new(172, 16, 0, 1), 24, policy).expect("params")
}

fn vm(p: &Params) -> VmPort {
    VmPort::new(
        p,
        "tap_aaaaaaaa",
        "06:00:AC:10:00:32",
        Ipv4Addr::new(172, 16, 0, 50),
    )
    .expect("vm")
}

#[test]
fn default_policy_denies_everything_optional() {
    let p: NetworkPolicy = serde_json::from_str("{}").expect("parse");
    assert_eq!(p, NetworkPolicy::default());
    assert!(!p.allow_guest_to_guest && !p.allow_private_ranges && !p.allow_ipv6);
    assert!(p.allow_host_ports.is_empty());
    let p: NetworkPolicy =
        serde_json::from_str(r#"{"allow_host_ports": [8080], "allow_ipv6": true}"#).expect("parse");
    assert_eq!(p.allow_host_ports, vec![8080]);
    assert!(p.allow_ipv6);
    assert!(serde_json::from_str::<NetworkPolicy>(r#"{"allow_all": true}"#).is_err());
}

#[test]
fn ruleset_replaces_its_own_tables_only() {
    let r = ruleset(&params(NetworkPolicy::default()));
    for family in ["ip", "inet", "bridge"] {
        assert!(
            r.contains(&format!(
                "table {family} fcm {{}}\ndelete table {family} fcm\n"
            )),
            "{r}"
        );
    }
    let tables: Vec<&str> = r
        .lines()
        .filter(|l| l.starts_with("table ") && l.ends_with('{'))
        .collect();
    assert_eq!(tables, ["table inet fcm {", "table bridge fcm {"]);
    assert!(r.contains("ip saddr 172.16.0.0/24 ip daddr != 172.16.0.0/24 masquerade"));
}

#[test]
fn default_ruleset_blocks_host_private_metadata_and_neighbours() {
    let r = ruleset(&params(NetworkPolicy::default()));
    // Guest to host: only replies, only from the bridge.
    assert!(r.contains("iifname \"fcm0\" jump guest_to_host"));
    let g2h = section(&r, "chain guest_to_host {");
    assert_eq!(g2h, ["ct state established,related accept", "drop"]);
    let fwd = section(&r, "chain from_guests {");
    assert_eq!(
        fwd,
        [
            "ip daddr 169.254.0.0/16 drop",
            "oifname \"fcm0\" drop",
            "ip daddr { 10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16, 100.64.0.0/10 } drop",
            "meta nfproto ipv6 drop",
            "accept",
        ]
    );
    // Nothing from outside may open connections to guests.
    assert!(r.contains(
        "oifname \"fcm0\" ct state established,related accept\n\t\toifname \"fcm0\" drop"
    ));
    // Layer 2: unknown taps dropped, no bridging between taps.
    assert_eq!(
        section(&r, "chain prerouting {")[1..],
        ["iifname vmap @ports", "iifname \"tap_*\" drop"]
    );
    assert_eq!(
        section(bridge_part(&r), "chain forward {")[1..],
        ["iifname \"tap_*\" drop"]
    );
}

#[test]
fn opt_ins_change_only_their_rules() {
    let open = params(NetworkPolicy {
        allow_guest_to_guest: true,
        allow_private_ranges: true,
        allow_ipv6: true,
        allow_host_ports: vec![8080, 53, 8080],
    });
    let r = ruleset(&open);
    let fwd = section(&r, "chain from_guests {");
    assert_eq!(
        fwd,
        [
            "ip daddr 169.254.0.0/16 drop",
            "oifname \"fcm0\" accept",
            "accept"
        ]
    );
    let g2h = section(&r, "chain guest_to_host {");
    assert_eq!(
        g2h,
        [
            "ct state established,related accept",
            "icmpv6 type { nd-neighbor-solicit, nd-neighbor-advert } accept",
            "ip daddr 172.16.0.1 tcp dport { 53, 8080 } accept",
            "drop",
        ]
    );
    assert_eq!(section(bridge_part(&r), "chain forward {").len(), 1, "{r}");

    let v6_private = params(NetworkPolicy {
        allow_ipv6: true,
        ..Default::default()
    });
    let fwd = section(&ruleset(&v6_private), "chain from_guests {");
    assert!(fwd.contains(&"ip6 daddr { fc00::/7, fe80::/10 } drop".to_string()));
    assert!(!fwd.contains(&"meta nfproto ipv6 drop".to_string()));
}

#[test]
fn vm_script_pins_mac_and_address() {
    let p = params(NetworkPolicy::default());
    let s = vm_script(&p, &vm(&p));
    let expected = "add chain bridge fcm from_tap_aaaaaaaa\n\
        flush chain bridge fcm from_tap_aaaaaaaa\n\
        add rule bridge fcm from_tap_aaaaaaaa ether saddr != 06:00:ac:10:00:32 drop\n\
        add rule bridge fcm from_tap_aaaaaaaa ether type ip ip saddr 172.16.0.50 accept\n\
        add rule bridge fcm from_tap_aaaaaaaa ether type arp arp htype 1 arp ptype ip \
        arp hlen 6 arp plen 4 arp operation { request, reply } \
        arp saddr ether 06:00:ac:10:00:32 arp saddr ip 172.16.0.50 accept\n\
        add rule bridge fcm from_tap_aaaaaaaa drop\n\
        add element bridge fcm ports { \"tap_aaaaaaaa\" : jump from_tap_aaaaaaaa }\n";
    assert_eq!(s, expected);
    let v6 = params(NetworkPolicy {
        allow_ipv6: true,
        ..Default::default()
    });
    let s = vm_script(&v6, &vm(&v6));
    assert!(s.contains("ether type ip6 accept\nadd rule bridge fcm from_tap_aaaaaaaa drop\n"));
}

#[test]
fn remove_script_works_whether_or_not_present() {
    let p = params(NetworkPolicy::default());
    let s = remove_script(&p, "tap_aaaaaaaa").expect("script");
    let lines: Vec<&str> = s.lines().collect();
    assert_eq!(lines[0], "add chain bridge fcm from_tap_aaaaaaaa");
    assert!(lines[1].starts_with("add element"));
    assert_eq!(
        lines[2],
        "delete element bridge fcm ports { \"tap_aaaaaaaa\" }"
    );
    assert_eq!(lines[4], "delete chain bridge fcm from_tap_aaaaaaaa");
    assert!(remove_script(&p, "eth0").is_err());
}

#[test]
fn inputs_are_checked_before_rendering() {
    let gw = Ipv4Addr::new(172, 16, 0, 1);
    let pol = NetworkPolicy::default;
    for bad in [
        "",
        "fcm0\"; flush ruleset",
        "a b",
        "sixteen-chars-xx",
        "brü",
    ] {
        assert!(Params::new("fcm", bad, gw, 24, pol()).is_err(), "{bad:?}");
    }
    for bad in ["", "1fcm", "fcm-x", "f;cm", &"a".repeat(33)] {
        assert!(Params::new(bad, "fcm0", gw, 24, pol()).is_err(), "{bad:?}");
    }
    assert!(Params::new("fcm", "fcm0", gw, 31, pol()).is_err());
    let p = params(pol());
    assert_eq!(p.subnet(), "172.16.0.0/24");
    let ip = Ipv4Addr::new(172, 16, 0, 50);
    let mac = "06:00:ac:10:00:32";
    assert!(VmPort::new(&p, "tap_x", mac, ip).is_ok());
    for tap in ["tap_", "eth0", "tap_\"x", "tap_0123456789ab"] {
        assert!(VmPort::new(&p, tap, mac, ip).is_err(), "{tap:?}");
    }
    for mac in [
        "",
        "06:00:ac:10:00",
        "06:00:ac:10:00:32:01",
        "07:00:ac:10:00:32",
        "00:00:00:00:00:00",
        "6:00:ac:10:00:32",
        "0g:00:ac:10:00:32",
    ] {
        assert!(VmPort::new(&p, "tap_x", mac, ip).is_err(), "{mac:?}");
    }
    for ip in [
        Ipv4Addr::new(172, 16, 1, 50),
        Ipv4Addr::new(172, 16, 0, 1),
        Ipv4Addr::new(172, 16, 0, 0),
        Ipv4Addr::new(172, 16, 0, 255),
    ] {
        assert!(VmPort::new(&p, "tap_x", mac, ip).is_err(), "{ip}");
    }
    assert_eq!(
        "06:00:AC:10:00:32".parse::<Mac>().expect("mac").to_string(),
        "06:00:ac:10:00:32"
    );
}

fn bridge_part(r: &str) -> &str {
    r.split_once("table bridge fcm {\n")
        .expect("bridge table")
        .1
}

/// The trimmed lines of the block that starts with `header` (up to its
/// closing brace), without the header.
fn section(r: &str, header: &str) -> Vec<String> {
    let start = r.find(header).expect(header) + header.len();
    let body = &r[start..];
    let end = body.find("\n\t}").expect("end");
    body[..end]
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .map(str::to_owned)
        .collect()
}
