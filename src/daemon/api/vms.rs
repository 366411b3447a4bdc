//! Handlers of `/health` and `/vms[/{vm}[/…]]`.

use super::{ApiError, Reply, ok};
use crate::daemon::manager::Manager;
use crate::daemon::sessions::Sessions;
use crate::wire::api::{CreateRequest, Health, StartRequest};

pub(super) fn health(m: &Manager) -> Result<Reply, ApiError> {
    ok(
        200,
        Health {
            ok: true,
            version: env!("CARGO_PKG_VERSION").into(),
            backend: m.backend().as_str().into(),
        },
    )
}

pub(super) fn create(m: &Manager, req: CreateRequest) -> Result<Reply, ApiError> {
    let wait = req.wait_ready.unwrap_or(true);
    let mut view = m.create(req)?;
    if wait {
        let ready = m.wait_ready(&view.id);
        view.set_ready(ready);
        if !ready {
            view.warnings.push(format!(
                "the VM is running but its guest did not answer within {} s; see {}/{}/console.log",
                m.config().ssh_timeout_secs,
                m.config().state_dir.display(),
                view.id
            ));
        }
    }
    ok(201, view)
}

pub(super) fn stop(
    m: &Manager,
    s: &Sessions,
    vm: &str,
    _req: StartRequest,
) -> Result<Reply, ApiError> {
    s.forget_vm(vm);
    ok(200, m.stop(vm)?)
}

pub(super) fn start(m: &Manager, vm: &str, req: StartRequest) -> Result<Reply, ApiError> {
    let mut view = m.start(vm)?;
    if req.wait_ready.unwrap_or(true) {
        view.set_ready(m.wait_ready(&view.id));
    }
    ok(200, view)
}

pub(super) fn destroy(m: &Manager, s: &Sessions, vm: &str) -> Result<Reply, ApiError> {
    s.forget_vm(vm);
    ok(200, m.destroy(vm)?)
}
