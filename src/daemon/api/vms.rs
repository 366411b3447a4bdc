//! Handlers of `/health`, `/passes` and `/vms[/{vm}[/…]]`.

use super::{ApiError, Reply, ok};
use crate::daemon::manager::Manager;
use crate::daemon::sessions::Sessions;
use crate::wire::api::{
    CreateRequest, ErrorBody, ForkRequest, ForkResponse, ForkResult, Health, StartRequest,
    StopRequest,
};

pub(super) fn health(m: &Manager) -> Result<Reply, ApiError> {
    ok(
        200,
        Health {
            ok: true,
            version: env!("CARGO_PKG_VERSION").into(),
            backend: m.backend().as_str().into(),
            recovering: m.recovering(),
            template: Some(m.template_status()),
            cluster: m.cluster().and_then(|c| c.health()),
        },
    )
}

/// What `fcm ssh` needs. A running VM is ready for operations once its
/// agent answers, which can be a moment before its sshd listens: the
/// answer waits (a little) for the SSH banner, so that `fcm create` then
/// `fcm ssh` works.
pub(super) fn ssh_info(m: &Manager, vm: &str) -> Result<Reply, ApiError> {
    let info = m.ssh_info(vm)?;
    if info.state == "running" {
        crate::host::ssh::wait_ready(info.ip, SSH_WAIT);
    }
    ok(200, info)
}

/// How long `GET /vms/{vm}/ssh` waits for the guest's SSH banner.
const SSH_WAIT: std::time::Duration = std::time::Duration::from_secs(20);

pub(super) fn create(m: &Manager, req: CreateRequest) -> Result<Reply, ApiError> {
    if req.from.is_some() {
        // Answered through its agent before it was let out: ready.
        return ok(201, m.create_from(req)?);
    }
    let wait = req.wait_ready.unwrap_or(true);
    let mut view = m.create(req)?;
    // A warm VM answered through its agent before it was let out.
    if wait && view.ready != Some(true) {
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

/// `POST /vms/{vm}/fork`: 201 with one result per fork (a VM, or why
/// that fork failed); an error of the whole (the source cannot be
/// forked, the pool is too small) is the answer's own status.
pub(super) fn fork(m: &Manager, vm: &str, req: ForkRequest) -> Result<Reply, ApiError> {
    let forks = m
        .fork(vm, req)?
        .into_iter()
        .map(|r| match r {
            Ok(mut view) => {
                // Each answered through its agent before it was let out.
                view.set_ready(true);
                ForkResult {
                    vm: Some(view),
                    error: None,
                }
            }
            Err(e) => {
                let a = ApiError::from(e);
                ForkResult {
                    vm: None,
                    error: Some(ErrorBody {
                        error: a.message,
                        status: a.status,
                        hint: a.hint,
                    }),
                }
            }
        })
        .collect();
    ok(201, ForkResponse { forks })
}

pub(super) fn stop(
    m: &Manager,
    s: &Sessions,
    vm: &str,
    _req: StopRequest,
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
