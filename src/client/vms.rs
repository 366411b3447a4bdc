//! create, ls, stop, start, resize, destroy.

use super::api::{Client, seg, user_ssh_key};
use super::progress::spinner;
use super::{Failure, or_dash, out, out_json, warnings};
use crate::cli::{CreateArgs, ResizeArgs};
use crate::wire::api::{
    CreateRequest, ForkRequest, ForkResponse, ResizeRequest, StartRequest, StopRequest, VmView,
};
use crate::wire::size::human;
use crate::wire::text::visible;

pub(super) fn create(a: CreateArgs) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let mut req = CreateRequest {
        name: a.name,
        cpus: a.cpus,
        memory_mib: a.memory,
        ssh_public_key: None,
        wait_ready: Some(!a.no_wait),
        disk: a.disk,
        idle_pause_secs: a.idle_pause,
        from: a.from,
        cold: a.cold.then_some(true),
        image: a.image,
        url: None,
        host: a.host,
    };
    match user_ssh_key() {
        Some((_, public)) => req.ssh_public_key = Some(public),
        None => eprintln!(
            "warning: no ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; `fcm ssh` will not log you in"
        ),
    }
    let v: VmView = {
        let _s = spinner(format!(
            "creating VM{}",
            if a.no_wait {
                ""
            } else {
                " (then waiting for SSH)"
            }
        ));
        c.post("/vms", &req)?
    };
    warnings(&v.warnings);
    if a.json {
        return out_json(&v);
    }
    out(&format!("created {}", v.name));
    if let Some(h) = &v.host {
        out(&format!("  host:  {}", visible(h)));
    }
    out(&format!("  id:    {}", v.id));
    out(&format!("  ip:    {}", v.ip));
    if let Some(d) = v.disk_bytes {
        out(&format!("  disk:  {}", human(d)));
    }
    if let Some(u) = &v.url {
        out(&format!("  url:   {u}"));
    }
    out(&format!("  ssh:   fcm ssh {}", v.name));
    Ok(())
}

pub(super) fn fork(vm: &str, count: u32, name: Option<String>, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let req = ForkRequest {
        count: Some(count),
        name,
    };
    let r: ForkResponse = {
        let _s = spinner(format!(
            "forking {} into {count} (it pauses for a moment)",
            visible(vm)
        ));
        c.post(&format!("/vms/{}/fork", seg(vm)), &req)?
    };
    let failed = r.forks.iter().filter(|f| f.vm.is_none()).count();
    if json {
        out_json(&r)?;
    } else {
        for f in &r.forks {
            match (&f.vm, &f.error) {
                (Some(v), _) => {
                    warnings(&v.warnings);
                    out(&format!(
                        "forked {}  id {}  ip {}{}",
                        v.name,
                        v.id,
                        v.ip,
                        v.url.as_ref().map(|u| format!("  {u}")).unwrap_or_default()
                    ));
                }
                (None, Some(e)) => eprintln!("error: a fork failed: {}", visible(&e.error)),
                (None, None) => eprintln!("error: a fork failed"),
            }
        }
    }
    if failed > 0 {
        return Err(Failure::new(
            format!("{failed} of {} forks failed", r.forks.len()),
            None,
        ));
    }
    Ok(())
}

pub(super) fn ls(json: bool, host: Option<&str>) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let mut list: Vec<VmView> = c.get("/vms")?;
    if let Some(h) = host {
        list.retain(|x| x.host.as_deref() == Some(h));
    }
    if json {
        return out_json(&list);
    }
    if list.is_empty() {
        eprintln!("no VMs; create one with: fcm create");
        return Ok(());
    }
    // Sandboxes of the E2B API show their template and metadata; in a
    // cluster, each VM its host.
    let e2b = list.iter().any(|x| x.e2b.is_some());
    let hosts = list.iter().any(|x| x.host.is_some());
    let host_col = |h: &str| {
        if hosts {
            format!("{:<16} ", visible(h))
        } else {
            String::new()
        }
    };
    // "unreachable" (a VM of a dead host) is wider than the other states.
    let sw = if hosts { 11 } else { 9 };
    out(&format!(
        "{}{:<22} {:<9} {:<sw$} {:<15} {:<9} {:<24}{}",
        host_col("HOST"),
        "NAME",
        "ID",
        "STATE",
        "IP",
        "DISK",
        "URL",
        if e2b { " E2B" } else { "" }
    ));
    for x in list {
        let sandbox = x.e2b.as_deref().map(e2b_column).unwrap_or_default();
        let line = format!(
            "{}{:<22} {:<9} {:<sw$} {:<15} {:<9} {:<24}{}",
            host_col(x.host.as_deref().unwrap_or("-")),
            x.name,
            x.id,
            x.state,
            x.ip,
            or_dash(x.disk_bytes.map(short_size)),
            or_dash(x.url),
            if e2b {
                format!(" {sandbox}")
            } else {
                String::new()
            }
        );
        out(line.trim_end());
    }
    Ok(())
}

/// `template=base k=v ...`: an E2B sandbox in the table (names and values
/// escaped: they come from an API client).
fn e2b_column(i: &crate::wire::e2b::E2bInfo) -> String {
    let mut s = format!("template={}", visible(&i.template));
    for (k, v) in &i.metadata {
        s.push_str(&format!(" {}={}", visible(k), visible(v)));
    }
    s
}

/// `10G`, `512M`: sizes in a table.
fn short_size(b: u64) -> String {
    human(b)
        .replace(" GiB", "G")
        .replace(" MiB", "M")
        .replace(" TiB", "T")
}

/// Prints the VM an operation answered with: `name: state`, or JSON.
pub(super) fn done(v: &VmView, json: bool) -> Result<(), Failure> {
    warnings(&v.warnings);
    if json {
        return out_json(v);
    }
    out(&format!("{}: {}", v.name, v.state));
    Ok(())
}

pub(super) fn stop(vm: &str, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    if let Ok(v) = c.get::<VmView>(&format!("/vms/{}", seg(vm)))
        && v.state == "paused"
    {
        eprintln!(
            "warning: {} is paused: stopping it discards its memory state (running programs); \
             its disk is kept (to keep both: fcm resume {0}, or fcm checkpoint {0} first)",
            visible(&v.name)
        );
    }
    let v: VmView = {
        let _s = spinner(format!("stopping {}", visible(vm)));
        c.post(&format!("/vms/{}/stop", seg(vm)), &StopRequest::default())?
    };
    done(&v, json)
}

pub(super) fn start(vm: &str, no_wait: bool, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let req = StartRequest {
        wait_ready: Some(!no_wait),
    };
    let v: VmView = {
        let _s = spinner(format!("starting {}", visible(vm)));
        c.post(&format!("/vms/{}/start", seg(vm)), &req)?
    };
    done(&v, json)
}

pub(super) fn resize(a: ResizeArgs) -> Result<(), Failure> {
    if a.disk.is_none() && a.cpus.is_none() && a.memory.is_none() {
        return Err(Failure::usage(
            "nothing to change",
            Some(format!(
                "give --disk, --cpus or --memory, e.g. fcm resize {} --disk 20G",
                visible(&a.vm)
            )),
        ));
    }
    let c = Client::from_env()?;
    let req = ResizeRequest {
        disk: a.disk,
        cpus: a.cpus,
        memory_mib: a.memory,
    };
    let v: VmView = c.post(&format!("/vms/{}/resize", seg(&a.vm)), &req)?;
    warnings(&v.warnings);
    if a.json {
        return out_json(&v);
    }
    out(&format!(
        "{}: {} vCPU, {} MiB, disk {}",
        v.name,
        v.cpus,
        v.memory_mib,
        or_dash(v.disk_bytes.map(human))
    ));
    Ok(())
}

pub(super) fn destroy(vm: &str, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let v: VmView = {
        let _s = spinner(format!("destroying {}", visible(vm)));
        c.delete(&format!("/vms/{}", seg(vm)))?
    };
    done(&v, json)
}
