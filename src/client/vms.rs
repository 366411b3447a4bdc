//! create, ls, stop, start, destroy.

use super::api::{Client, seg, user_ssh_key};
use super::{Failure, or_dash, out, out_json, warnings};
use crate::cli::CreateArgs;
use crate::wire::api::{CreateRequest, StartRequest, VmView};

pub(super) fn create(a: CreateArgs) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let mut req = CreateRequest {
        name: a.name,
        cpus: a.cpus,
        memory_mib: a.memory,
        ssh_public_key: None,
        wait_ssh: Some(!a.no_wait),
    };
    match user_ssh_key() {
        Some((_, public)) => req.ssh_public_key = Some(public),
        None => eprintln!(
            "warning: no ~/.ssh/id_ed25519.pub, id_ecdsa.pub or id_rsa.pub; `fcm ssh` will not log you in"
        ),
    }
    eprintln!(
        "creating VM{}...",
        if a.no_wait { "" } else { " (waiting for SSH)" }
    );
    let v: VmView = c.post("/vms", &req)?;
    warnings(&v.warnings);
    if a.json {
        return out_json(&v);
    }
    out(&format!("created {}", v.name));
    out(&format!("  id:    {}", v.id));
    out(&format!("  ip:    {}", v.ip));
    if let Some(u) = &v.url {
        out(&format!("  url:   {u}"));
    }
    out(&format!("  ssh:   fcm ssh {}", v.name));
    Ok(())
}

pub(super) fn ls(json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let list: Vec<VmView> = c.get("/vms")?;
    if json {
        return out_json(&list);
    }
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
            x.name,
            x.id,
            x.state,
            x.ip,
            or_dash(x.url)
        ));
    }
    Ok(())
}

/// Prints `name: state` of the VM an operation answered with.
pub(super) fn done(v: &VmView) {
    warnings(&v.warnings);
    out(&format!("{}: {}", v.name, v.state));
}

pub(super) fn stop(vm: &str) -> Result<(), Failure> {
    let c = Client::from_env()?;
    if let Ok(v) = c.get::<VmView>(&format!("/vms/{}", seg(vm)))
        && v.state == "paused"
    {
        eprintln!(
            "warning: {} is paused: stopping it discards its memory state (running programs); \
             its disk is kept (to keep both: fcm resume {0}, or fcm checkpoint {0} first)",
            v.name
        );
    }
    eprintln!("stopping...");
    done(&c.post(&format!("/vms/{}/stop", seg(vm)), &StartRequest::default())?);
    Ok(())
}

pub(super) fn start(vm: &str, no_wait: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    eprintln!("starting...");
    let req = StartRequest {
        wait_ssh: Some(!no_wait),
    };
    done(&c.post(&format!("/vms/{}/start", seg(vm)), &req)?);
    Ok(())
}

pub(super) fn destroy(vm: &str) -> Result<(), Failure> {
    let c = Client::from_env()?;
    eprintln!("destroying...");
    done(&c.delete(&format!("/vms/{}", seg(vm)))?);
    Ok(())
}
