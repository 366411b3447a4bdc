//! Checkpoints and restore: a running VM's disk and memory saved while it
//! keeps running, and a VM returned to one (see `pause.rs` for the files).

use std::fs;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::pause::{commit_dir, now_secs};
use super::{Cause, Manager, ManagerError};
use crate::daemon::fault;
use crate::daemon::lifecycle::{Transition, VmState};
use crate::daemon::lock;
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::host::vmm::Backend;
use crate::host::{self, disk, network};
use crate::names::{CheckpointId, CheckpointName};
use crate::wire::api::{CheckpointRequest, CheckpointView, VmView};

/// `checkpoints/<cp>/checkpoint.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(super) struct CheckpointMeta {
    id: CheckpointId,
    name: Option<CheckpointName>,
    created_at: u64,
    pub(super) backend: Backend,
    disk_copy: String,
    /// The VM's size when it was taken: a restore returns to it (the saved
    /// memory only loads into a VMM of the same shape).
    pub(super) cpus: u8,
    pub(super) memory_mib: u32,
    #[serde(default)]
    pub(super) disk_bytes: Option<u64>,
    /// The agent drive the VM had (its saved devices include it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) agent_drive: Option<String>,
    /// The RAM model its saved memory needs (`VmRecord::shared_ram`);
    /// absent in checkpoints made before it: the VM's own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(super) shared_ram: Option<bool>,
}

const META: &str = "checkpoint.json";

/// Space the files of a directory take (allocated blocks).
fn allocated(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.blocks() * 512)
        .sum()
}

impl Manager {
    pub(super) fn checkpoints_dir(&self, id: &crate::names::VmId) -> PathBuf {
        self.dir(id).join("checkpoints")
    }

    fn read_checkpoint(&self, dir: &Path) -> Option<CheckpointMeta> {
        let text = fs::read_to_string(dir.join(META)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn checkpoint_view(r: &VmRecord, dir: &Path, m: &CheckpointMeta) -> CheckpointView {
        CheckpointView {
            id: m.id.to_string(),
            name: m.name.as_ref().map(|n| n.to_string()),
            vm: r.name.to_string(),
            created_at: m.created_at,
            size_bytes: allocated(dir),
            disk_copy: m.disk_copy.clone(),
            warnings: Vec::new(),
        }
    }

    /// The checkpoints of a VM, oldest first.
    fn checkpoints_of(&self, r: &VmRecord) -> Vec<(PathBuf, CheckpointMeta)> {
        let mut v: Vec<(PathBuf, CheckpointMeta)> = fs::read_dir(self.checkpoints_dir(&r.id))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| {
                let m = self.read_checkpoint(&e.path())?;
                (m.id.as_str() == e.file_name().to_string_lossy()).then(|| (e.path(), m))
            })
            .collect();
        v.sort_by(|a, b| (a.1.created_at, a.1.id.as_str()).cmp(&(b.1.created_at, b.1.id.as_str())));
        v
    }

    /// A checkpoint by id or name.
    pub(super) fn find_checkpoint(
        &self,
        r: &VmRecord,
        cp: &str,
    ) -> Result<(PathBuf, CheckpointMeta), ManagerError> {
        let as_id = CheckpointId::parse(cp).ok();
        let as_name = CheckpointName::parse(cp).ok();
        if as_id.is_none() && as_name.is_none() {
            CheckpointName::parse(cp)?;
        }
        let all = self.checkpoints_of(r);
        let by_id = all.iter().find(|(_, m)| Some(&m.id) == as_id.as_ref());
        let by_name = all
            .iter()
            .find(|(_, m)| m.name.is_some() && m.name == as_name);
        by_id
            .or(by_name)
            .cloned()
            .ok_or_else(|| ManagerError::CheckpointNotFound {
                vm: r.name.to_string(),
                checkpoint: cp.chars().take(64).collect(),
            })
    }

    /// The agent drives a VM's checkpoints need.
    pub(super) fn checkpoint_agent_drives(&self, r: &VmRecord) -> Vec<String> {
        self.checkpoints_of(r)
            .into_iter()
            .filter_map(|(_, m)| m.agent_drive)
            .collect()
    }

    pub fn checkpoints(&self, vm: &str) -> Result<Vec<CheckpointView>, ManagerError> {
        let (_, e) = self.resolve(vm)?;
        let r = lock(&e.rec).clone();
        Ok(self
            .checkpoints_of(&r)
            .iter()
            .map(|(d, m)| Self::checkpoint_view(&r, d, m))
            .collect())
    }

    /// `fcm checkpoint`: with the guest's file system frozen (or synced)
    /// and its vCPUs stopped, the memory state is saved and the disk
    /// reflinked (or sparse-copied); then the guest runs on.
    pub(super) fn do_checkpoint(
        &self,
        vm: &str,
        req: CheckpointRequest,
    ) -> Result<CheckpointView, ManagerError> {
        let name = req.name.as_deref().map(CheckpointName::parse).transpose()?;
        let mut op = self.operation(vm, Transition::Checkpoint)?;
        if let Some(n) = &name
            && self
                .checkpoints_of(&op.r)
                .iter()
                .any(|(_, m)| m.name.as_ref() == Some(n))
        {
            return Err(ManagerError::CheckpointExists {
                vm: op.r.name.to_string(),
                name: n.to_string(),
            });
        }
        let cps = self.checkpoints_dir(&op.r.id);
        if let Err(err) = fs::create_dir_all(&cps) {
            return Err(op.fail(Cause::file(&cps)(err)));
        }
        let mut id = CheckpointId::random();
        while cps.join(id.as_str()).exists() {
            id = CheckpointId::random();
        }
        let tmp = cps.join(format!(".tmp-{id}"));
        op.begin()?;
        let r = op.r.clone();
        fault::crash_point("checkpoint:after-record");
        let mut warnings = Vec::new();
        let freeze = match self.guest(&r).freeze() {
            Ok(f) => {
                if !f.frozen() {
                    warnings.push(
                        "the guest has no fsfreeze: its file systems were synced, not frozen"
                            .into(),
                    );
                }
                Some(f)
            }
            Err(why) => {
                warnings.push(format!(
                    "the guest's file systems were not synced ({}); the checkpoint's disk is as the VMM saw it",
                    chain(&why)
                ));
                None
            }
        };
        fault::crash_point("checkpoint:after-freeze");
        let dir = self.dir(&r.id);
        let vmm = self.vmm_for(r.backend);
        let made = (|| -> Result<CheckpointMeta, Cause> {
            fs::create_dir(&tmp).map_err(Cause::file(&tmp))?;
            vmm.save_state(&dir, &tmp)?;
            fault::crash_point("checkpoint:after-memory");
            let disk_copy = tmp.join("rootfs.img");
            let method = disk::copy_rootfs(&dir.join("rootfs.img"), &disk_copy)?;
            crate::host::vmm::sync_file(&disk_copy).map_err(Cause::file(&disk_copy))?;
            fault::crash_point("checkpoint:after-disk");
            let meta = CheckpointMeta {
                id: id.clone(),
                name: name.clone(),
                created_at: now_secs(),
                backend: r.backend,
                cpus: r.cpus,
                memory_mib: r.memory_mib,
                disk_bytes: r.disk_bytes,
                agent_drive: r.agent_drive.clone(),
                shared_ram: Some(r.shared_ram),
                disk_copy: match method {
                    disk::CopyMethod::Reflink => "reflink".into(),
                    disk::CopyMethod::Sparse => "sparse".into(),
                },
            };
            let meta_file = tmp.join(META);
            let json = serde_json::to_vec_pretty(&meta)
                .map_err(|err| Cause::file(&meta_file)(err.into()))?;
            host::write_atomic(&meta_file, &json, 0o600).map_err(Cause::file(&meta_file))?;
            commit_dir(&tmp, &cps.join(id.as_str())).map_err(Cause::file(&tmp))?;
            Ok(meta)
        })();
        if made.is_ok() {
            fault::crash_point("checkpoint:after-commit");
        }
        // Whatever happened, the guest runs on.
        let continued = vmm.continue_guest(&dir);
        if let Some(f) = freeze
            && let Err(e) = f.thaw()
        {
            warnings.push(chain(&e));
        }
        let meta = match made {
            Ok(m) => {
                op.done()?;
                m
            }
            Err(mut cause) => {
                if continued.is_err() {
                    cause = cause.also("; the guest could not continue");
                }
                let err = op.fail(cause);
                let _ = fs::remove_dir_all(&tmp);
                return Err(err);
            }
        };
        if let Err(err) = &continued {
            warnings.push(format!("the guest could not continue: {}", chain(err)));
        }
        warnings.extend(self.guest_after_load(&op.r));
        let mut view = Self::checkpoint_view(&op.r, &cps.join(id.as_str()), &meta);
        view.warnings = warnings;
        Ok(view)
    }

    /// `fcm restore`: the VMM (if any) ends, the disk becomes a copy of
    /// the checkpoint's, and a VMM loads the checkpoint's memory state.
    pub(super) fn do_restore(&self, vm: &str, cp: &str) -> Result<VmView, ManagerError> {
        // An unknown checkpoint is the first thing to say, in any state.
        let held = self.hold(vm)?;
        let (cp_dir, meta) = self.find_checkpoint(&held.record(), cp)?;
        let mut op = held.check(Transition::Restore)?;
        let r = &mut op.r;
        if meta.backend != r.backend {
            return Err(ManagerError::BadRequest(format!(
                "checkpoint {} was taken with {}; the VM runs on {}",
                meta.id,
                meta.backend.as_str(),
                r.backend.as_str()
            )));
        }
        self.check_prerequisites(r.backend)?;
        let was_paused = r.state == VmState::Paused;
        let resized =
            (r.cpus, r.memory_mib, r.disk_bytes) != (meta.cpus, meta.memory_mib, meta.disk_bytes);
        // Back to the checkpoint's shape too (a resize since is undone),
        // its devices included.
        (r.cpus, r.memory_mib, r.disk_bytes) = (meta.cpus, meta.memory_mib, meta.disk_bytes);
        r.agent_drive = meta.agent_drive.clone();
        op.begin()?;
        let r = op.r.clone();
        fault::crash_point("restore:after-record");
        self.forget_guest(&r);
        self.kill_vmms(&r);
        let _ = fs::remove_dir_all(self.saved_dir(&r.id));
        fault::crash_point("restore:after-kill");
        let dir = self.dir(&r.id);
        let rootfs = dir.join("rootfs.img");
        let staged = dir.join("rootfs.img.restore");
        let _ = fs::remove_file(&staged);
        let vmm = self.vmm_for(r.backend);
        let restored = disk::copy_rootfs(&cp_dir.join("rootfs.img"), &staged)
            .map_err(Cause::from)
            .and_then(|_| {
                crate::host::vmm::sync_file(&staged)
                    .and_then(|_| fs::rename(&staged, &rootfs))
                    .and_then(|_| host::fs::sync_dir(&dir))
                    .map_err(Cause::file(&staged))
            })
            .and_then(|_| {
                fault::crash_point("restore:after-disk");
                network::create_tap_for(&self.cfg, &r.nic(), self.tap_owner(&r))
                    .map_err(Cause::from)
            })
            .and_then(|_| self.launch_from(&r, Some(&cp_dir)))
            .and_then(|pid| {
                fault::crash_point("restore:after-launch");
                vmm.continue_guest(&dir).map(|_| pid).map_err(Cause::from)
            });
        let pid = match restored {
            Ok(pid) => pid,
            Err(cause) => {
                let _ = fs::remove_file(&staged);
                self.kill_vmms(&r);
                self.release_runtime(&r);
                op.r.pid = None;
                return Err(op.fail(
                    cause.also(" (the VM is stopped; the checkpoint is intact: try again)"),
                ));
            }
        };
        op.r.pid = Some(pid);
        op.done()?;
        let r = &op.r;
        let mut view = r.view();
        if resized {
            view.warnings.push(format!(
                "the VM has the size it had at the checkpoint again: {} vCPUs, {} MiB",
                r.cpus, r.memory_mib
            ));
        }
        if was_paused {
            view.warnings.push(
                "the VM was paused: that saved state was replaced by the checkpoint's".into(),
            );
        }
        view.warnings.extend(self.guest_after_load(r));
        view.warnings.extend(self.apply_url(op.entry(), true));
        Ok(view)
    }

    /// `fcm checkpoint rm`.
    pub(super) fn do_delete_checkpoint(
        &self,
        vm: &str,
        cp: &str,
    ) -> Result<CheckpointView, ManagerError> {
        // A checkpoint changes no state of its VM: held, not checked.
        let held = self.hold(vm)?;
        let r = held.record();
        let (cp_dir, meta) = self.find_checkpoint(&r, cp)?;
        let view = Self::checkpoint_view(&r, &cp_dir, &meta);
        // Out of sight in one rename; recovery removes a `.tmp-*` left behind.
        let trash = self
            .checkpoints_dir(&r.id)
            .join(format!(".tmp-{}", meta.id));
        fs::rename(&cp_dir, &trash)
            .and_then(|_| fs::remove_dir_all(&trash))
            .map_err(|err| ManagerError::Operation {
                action: "checkpoint rm",
                name: r.name.to_string(),
                cause: Box::new(Cause::file(&cp_dir)(err)),
            })?;
        Ok(view)
    }
}
