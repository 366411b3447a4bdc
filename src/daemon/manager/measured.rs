//! Every public operation of the manager, timed and told: its begin and
//! its end (with how long it took, and its error) go to the events
//! (`daemon::events`), and its latency to the operation histograms, from
//! this one wrapper, whoever asked (the API, E2B, idle sleep). The work
//! itself is in the operation's own file (`do_<op>`). Also the records
//! the metrics sampler reads (never waiting for a VM's lock).

use std::sync::Arc;

use super::{Entry, Manager, ManagerError};
use crate::daemon::events::Telemetry;
use crate::daemon::guest::Process;
use crate::daemon::lock;
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::wire::api::{
    CheckpointRequest, CheckpointView, CreateRequest, ExecRequest, ExecResponse, ForkRequest,
    ResizeRequest, VmView,
};

impl Manager {
    /// The daemon's events and operation numbers.
    pub fn telemetry(&self) -> &Arc<Telemetry> {
        &self.telemetry
    }

    /// Runs operation `op` on `vm`, told and timed.
    fn measured<T>(
        &self,
        op: &'static str,
        vm: &str,
        f: impl FnOnce() -> Result<T, ManagerError>,
    ) -> Result<T, ManagerError> {
        let run = self.telemetry.begin(op, vm);
        let r = f();
        run.end(vm, r.as_ref().err().map(|e| chain(e)));
        r
    }

    pub(super) fn told_created(&self, r: &VmRecord) {
        let (name, id) = (r.name.as_str(), r.id.as_str());
        self.telemetry.lifetime("created", name, id);
        self.telemetry.state(name, id, None, r.state.as_str());
    }

    pub(super) fn told_destroyed(&self, r: &VmRecord) {
        self.telemetry
            .lifetime("destroyed", r.name.as_str(), r.id.as_str());
    }

    pub fn create(&self, req: CreateRequest) -> Result<VmView, ManagerError> {
        self.create_told("create", req, |m, req| m.do_create(req))
    }

    pub fn create_from(&self, req: CreateRequest) -> Result<VmView, ManagerError> {
        self.create_told("create", req, |m, req| m.do_create_from(req))
    }

    /// A create's events: the VM is named at its end (a random name).
    fn create_told(
        &self,
        op: &'static str,
        req: CreateRequest,
        f: impl FnOnce(&Self, CreateRequest) -> Result<VmView, ManagerError>,
    ) -> Result<VmView, ManagerError> {
        let asked = req.name.clone().unwrap_or_default();
        let run = self.telemetry.begin(op, &asked);
        let r = f(self, req);
        match &r {
            Ok(v) => run.end(&v.name, None),
            Err(e) => run.end(&asked, Some(chain(e))),
        }
        r
    }

    pub fn stop(&self, vm: &str) -> Result<VmView, ManagerError> {
        self.measured("stop", vm, || self.do_stop(vm))
    }

    pub fn start(&self, vm: &str) -> Result<VmView, ManagerError> {
        self.measured("start", vm, || self.do_start(vm))
    }

    pub fn destroy(&self, vm: &str) -> Result<VmView, ManagerError> {
        self.measured("destroy", vm, || self.do_destroy(vm))
    }

    pub fn pause(&self, vm: &str) -> Result<VmView, ManagerError> {
        self.measured("pause", vm, || self.do_pause(vm))
    }

    pub fn resume(&self, vm: &str) -> Result<VmView, ManagerError> {
        self.measured("resume", vm, || self.do_resume(vm))
    }

    pub fn checkpoint(
        &self,
        vm: &str,
        req: CheckpointRequest,
    ) -> Result<CheckpointView, ManagerError> {
        self.measured("checkpoint", vm, || self.do_checkpoint(vm, req))
    }

    pub fn restore(&self, vm: &str, cp: &str) -> Result<VmView, ManagerError> {
        self.measured("restore", vm, || self.do_restore(vm, cp))
    }

    pub fn delete_checkpoint(&self, vm: &str, cp: &str) -> Result<CheckpointView, ManagerError> {
        self.measured("checkpoint_rm", vm, || self.do_delete_checkpoint(vm, cp))
    }

    pub fn fork(
        &self,
        vm: &str,
        req: ForkRequest,
    ) -> Result<Vec<Result<VmView, ManagerError>>, ManagerError> {
        self.measured("fork", vm, || self.do_fork(vm, req))
    }

    pub fn resize(&self, vm: &str, req: ResizeRequest) -> Result<VmView, ManagerError> {
        self.measured("resize", vm, || self.do_resize(vm, req))
    }

    pub fn exec(&self, vm: &str, req: ExecRequest) -> Result<ExecResponse, ManagerError> {
        self.measured("exec", vm, || self.do_exec(vm, req))
    }

    /// A streamed exec: timed up to its program's start.
    pub fn exec_start(
        &self,
        vm: &str,
        req: &ExecRequest,
    ) -> Result<(VmRecord, Box<dyn Process>), ManagerError> {
        self.measured("exec", vm, || self.do_exec_start(vm, req))
    }

    /// Every VM's record as it is now (the metrics sampler; never waits).
    pub fn records(&self) -> Vec<VmRecord> {
        let entries: Vec<Arc<Entry>> = lock(&self.vms).values().cloned().collect();
        entries.iter().map(|e| lock(&e.rec).clone()).collect()
    }

    /// One VM's record as it is now (a name or an id; never waits).
    pub fn record_now(&self, vm: &str) -> Result<VmRecord, ManagerError> {
        let (_, e) = self.resolve_now(vm)?;
        Ok(lock(&e.rec).clone())
    }
}
