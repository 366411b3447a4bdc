//! `fcm create --from <vm>:<checkpoint>`: a new VM from a checkpoint's
//! saved state (the whole migration stream: its RAM its own), with a fork's
//! identity rules (`fork.rs`): quarantined until its agent has applied its
//! own hostname, machine id, MAC, address, route and host key. Its disk is
//! a copy (reflink or sparse) and its memory is loaded at create time, so
//! removing the checkpoint or its VM later breaks nothing.

use super::fork::Origin;
use super::{Manager, ManagerError};
use crate::daemon::store::VmRecord;
use crate::host::config_drive;
use crate::host::vmm::Backend;
use crate::names::VmName;
use crate::wire::api::{CreateRequest, VmView};

impl Manager {
    /// A create whose `from` is `VM:CHECKPOINT`.
    pub(super) fn do_create_from(&self, req: CreateRequest) -> Result<VmView, ManagerError> {
        let from = req.from.as_deref().unwrap_or_default();
        let (vm, cp) = from.split_once(':').ok_or_else(|| {
            ManagerError::BadRequest(format!(
                "from must be VM:CHECKPOINT, not {:?}",
                from.chars().take(64).collect::<String>()
            ))
        })?;
        if req.cpus.is_some() || req.memory_mib.is_some() || req.disk.is_some() {
            return Err(ManagerError::BadRequest(
                "a VM from a checkpoint has the checkpoint's vCPUs, memory and disk size \
                 (resize it once stopped)"
                    .into(),
            ));
        }
        let names: Vec<VmName> = req
            .name
            .as_deref()
            .map(VmName::parse)
            .transpose()?
            .into_iter()
            .collect();
        // The source is held while its checkpoint is copied and loaded: a
        // `checkpoint rm` or a destroy waits until then.
        let held = self.hold(vm)?;
        let source = held.record();
        let (cp_dir, meta) = self.find_checkpoint(&source, cp)?;
        if meta.backend != Backend::Qemu {
            return Err(ManagerError::BadRequest(format!(
                "checkpoint {cp} was taken with {}: only QEMU checkpoints can make new VMs so far",
                meta.backend.as_str()
            )));
        }
        if meta.agent_drive.is_none() {
            return Err(ManagerError::BadRequest(format!(
                "checkpoint {cp} has no fcm-agent, which gives a new VM its identity"
            )));
        }
        self.check_prerequisites(meta.backend)?;
        let like = VmRecord {
            cpus: meta.cpus,
            memory_mib: meta.memory_mib,
            disk_bytes: meta.disk_bytes,
            agent_drive: meta.agent_drive.clone(),
            shared_ram: meta.shared_ram.unwrap_or(source.shared_ram),
            idle_pause_secs: match req.idle_pause_secs {
                Some(0) => None,
                Some(s) => Some(s),
                None => source.idle_pause_secs,
            },
            ..source.clone()
        };
        // In a cluster the name and id are claimed across the hosts (kept
        // once reserved, as a fork's: a failure later is released by the
        // cluster's reconcile pass).
        let claim = self.claim_names(names, 1)?;
        let mut reserved = self.reserve_forks(&like, 1, claim.names(), claim.ids())?;
        claim.keep();
        let Some(new) = reserved.pop() else {
            return Err(ManagerError::BadRequest("nothing was reserved".into()));
        };
        // The guest's keys are those it had at the checkpoint.
        let authorized =
            config_drive::read_authorized_keys(&self.dir(&source.id).join(config_drive::FILE))
                .unwrap_or_else(|_| self.key_pub.clone());
        let made = self.bring_up_fork(new, &Origin::Checkpoint(&cp_dir), &authorized);
        drop(held);
        let mut view = made?;
        view.set_ready(true);
        Ok(view)
    }
}
