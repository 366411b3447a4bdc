//! The host's public IPv4 for URLs, from the kernel's routing table only
//! (no outside service is asked).

use std::ffi::OsStr;
use std::net::Ipv4Addr;
use std::path::Path;

use super::{ROUTE_PROBE, ROUTE_TIMEOUT, run_bounded};
use crate::host::HostError;

/// The `src` address of `ip -4 route get 1.1.1.1`: the address this host would
/// send from. Only asks the kernel's routing table.
pub(super) fn detect_public_ip() -> Result<Ipv4Addr, String> {
    let args = [
        OsStr::new("-4"),
        "route".as_ref(),
        "get".as_ref(),
        ROUTE_PROBE.as_ref(),
    ];
    match run_bounded(Path::new("ip"), &args, ROUTE_TIMEOUT) {
        Ok(out) => parse_route_src(&out)
            .ok_or_else(|| format!("no source address in `ip route get`: {}", out.trim())),
        Err(HostError::Failed { stderr, .. }) if !stderr.is_empty() => {
            Err(format!("no route: {stderr}"))
        }
        Err(e) => Err(format!("route lookup failed: {e}")),
    }
}

pub(super) fn parse_route_src(out: &str) -> Option<Ipv4Addr> {
    let mut words = out.split_whitespace();
    while let Some(word) = words.next() {
        if word == "src" {
            return words.next()?.parse().ok();
        }
    }
    None
}
