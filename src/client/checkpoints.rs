//! pause, resume, checkpoint [rm], checkpoints, restore.

use super::api::{Client, seg};
use super::progress::spinner;
use super::vms::done;
use super::{Failure, format_time, or_dash, out, out_json, warnings};
use crate::cli::{CheckpointAction, CheckpointArgs};
use crate::wire::api::{CheckpointRequest, CheckpointView, PauseRequest, StartRequest, VmView};
use crate::wire::size::human;
use crate::wire::text::visible;

pub(super) fn pause(vm: &str, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let v: VmView = {
        let _s = spinner(format!("pausing {} (saving its memory)", visible(vm)));
        c.post(&format!("/vms/{}/pause", seg(vm)), &PauseRequest {})?
    };
    done(&v, json)
}

pub(super) fn resume(vm: &str, no_wait: bool, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let req = StartRequest {
        wait_ready: Some(!no_wait),
    };
    let v: VmView = {
        let _s = spinner(format!("resuming {}", visible(vm)));
        c.post(&format!("/vms/{}/resume", seg(vm)), &req)?
    };
    done(&v, json)
}

fn size(bytes: u64) -> String {
    human(bytes)
}

pub(super) fn checkpoint(a: CheckpointArgs) -> Result<(), Failure> {
    let c = Client::from_env()?;
    if let Some(CheckpointAction::Rm { vm, checkpoint }) = a.action {
        let cp: CheckpointView = c.delete(&format!(
            "/vms/{}/checkpoints/{}",
            seg(&vm),
            seg(&checkpoint)
        ))?;
        out(&format!(
            "removed checkpoint {} of {}",
            cp.id,
            visible(&cp.vm)
        ));
        return Ok(());
    }
    let vm = a.vm.unwrap_or_default();
    let req = CheckpointRequest { name: a.name };
    let cp: CheckpointView = {
        let _s = spinner(format!(
            "checkpointing {} (it pauses briefly)",
            visible(&vm)
        ));
        c.post(&format!("/vms/{}/checkpoints", seg(&vm)), &req)?
    };
    warnings(&cp.warnings);
    if a.json {
        return out_json(&cp);
    }
    eprintln!(
        "checkpoint of {}: {} ({} disk copy)",
        visible(&cp.vm),
        size(cp.size_bytes),
        cp.disk_copy
    );
    out(&cp.id);
    Ok(())
}

pub(super) fn list(vm: &str, json: bool) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let list: Vec<CheckpointView> = c.get(&format!("/vms/{}/checkpoints", seg(vm)))?;
    if json {
        return out_json(&list);
    }
    if list.is_empty() {
        eprintln!("no checkpoints; take one with: fcm checkpoint {vm}");
        return Ok(());
    }
    out(&format!(
        "{:<9} {:<24} {:<10} {:>9}",
        "ID", "NAME", "CREATED", "SIZE"
    ));
    for cp in list {
        out(&format!(
            "{:<9} {:<24} {:<10} {:>9}",
            cp.id,
            or_dash(cp.name.map(|n| visible(&n))),
            format_time(cp.created_at),
            size(cp.size_bytes)
        ));
    }
    Ok(())
}

pub(super) fn restore(
    vm: &str,
    checkpoint: &str,
    no_wait: bool,
    json: bool,
) -> Result<(), Failure> {
    let c = Client::from_env()?;
    let req = StartRequest {
        wait_ready: Some(!no_wait),
    };
    let v: VmView = {
        let _s = spinner(format!("restoring {}", visible(vm)));
        c.post(
            &format!("/vms/{}/checkpoints/{}/restore", seg(vm), seg(checkpoint)),
            &req,
        )?
    };
    done(&v, json)
}
