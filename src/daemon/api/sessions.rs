//! Handlers of `/vms/{vm}/sessions[/{id}]` that need more than a call.

use super::{ApiError, Reply, ok};
use crate::daemon::manager::Manager;
use crate::daemon::sessions::Sessions;
use crate::wire::api::SessionRequest;

pub(super) fn create(
    m: &Manager,
    s: &Sessions,
    vm: &str,
    req: SessionRequest,
) -> Result<Reply, ApiError> {
    ok(201, s.create(m, vm, req.name.as_deref())?)
}
