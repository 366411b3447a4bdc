//! Handlers of `/vms/{vm}/pause`, `/vms/{vm}/resume` and
//! `/vms/{vm}/checkpoints[/{cp}[/restore]]`.

use super::{ApiError, Reply, ok};
use crate::daemon::manager::Manager;
use crate::daemon::sessions::Sessions;
use crate::wire::api::{CheckpointRequest, PauseRequest, StartRequest, VmView};

pub(super) fn pause(
    m: &Manager,
    s: &Sessions,
    vm: &str,
    _req: PauseRequest,
) -> Result<Reply, ApiError> {
    // Attached consoles cannot outlive the VMM.
    s.forget_vm(vm);
    ok(200, m.pause(vm)?)
}

fn wait_ready(m: &Manager, mut view: VmView, wait: Option<bool>) -> VmView {
    if wait.unwrap_or(true) {
        view.set_ready(m.wait_ready(&view.id));
    }
    view
}

pub(super) fn resume(m: &Manager, vm: &str, req: StartRequest) -> Result<Reply, ApiError> {
    let view = m.resume(vm)?;
    ok(200, wait_ready(m, view, req.wait_ready))
}

pub(super) fn list(m: &Manager, vm: &str) -> Result<Reply, ApiError> {
    ok(200, m.checkpoints(vm)?)
}

pub(super) fn create(m: &Manager, vm: &str, req: CheckpointRequest) -> Result<Reply, ApiError> {
    ok(201, m.checkpoint(vm, req)?)
}

pub(super) fn restore(
    m: &Manager,
    s: &Sessions,
    vm: &str,
    cp: &str,
    req: StartRequest,
) -> Result<Reply, ApiError> {
    s.forget_vm(vm);
    let view = m.restore(vm, cp)?;
    ok(200, wait_ready(m, view, req.wait_ready))
}

pub(super) fn delete(m: &Manager, vm: &str, cp: &str) -> Result<Reply, ApiError> {
    ok(200, m.delete_checkpoint(vm, cp)?)
}
