//! New VMs' names claimed across the cluster (`daemon::cluster`) before a
//! create's or a fork's first side effect: 409 when a VM of another host
//! has the name, 503 while etcd is out of reach. A single host claims
//! nothing. A claim not kept (the create failed) is given back. Each new
//! VM's id is claimed too (picked here, then used by the reservation): an
//! id another host holds is picked again.

use super::{Manager, ManagerError, lock};
use crate::daemon::cluster::ClaimError;
use crate::names::{VmId, VmName};

/// Ids tried for one VM before a create gives up (a clash of random ids
/// of 36^8 is already rare).
const ID_TRIES: usize = 8;

/// Names claimed for VMs being made; released on drop unless kept.
pub(super) struct Claims<'a> {
    m: &'a Manager,
    names: Vec<VmName>,
    /// The new VMs' ids, claimed in a cluster (empty alone: picked at reservation).
    ids: Vec<VmId>,
    kept: bool,
}

impl Claims<'_> {
    /// The names the new VMs get (in a cluster, random ones were picked).
    pub(super) fn names(&self) -> Vec<VmName> {
        self.names.clone()
    }

    /// The ids the new VMs get (in a cluster; empty alone).
    pub(super) fn ids(&self) -> Vec<VmId> {
        self.ids.clone()
    }

    /// The VMs exist: their names stay claimed (destroy gives them back).
    pub(super) fn keep(mut self) {
        self.kept = true;
    }
}

impl Drop for Claims<'_> {
    fn drop(&mut self) {
        if self.kept {
            return;
        }
        if let Some(c) = self.m.cluster() {
            for n in &self.names {
                c.release_name(n.as_str());
            }
            for id in &self.ids {
                c.release_id(id.as_str());
            }
        }
    }
}

impl Manager {
    /// Claims the names of `count` new VMs: `wanted` (one each), the rest
    /// picked at random now, unused on this host. Without a cluster,
    /// `wanted` as it is (the rest are picked at reservation).
    pub(super) fn claim_names(
        &self,
        wanted: Vec<VmName>,
        count: usize,
    ) -> Result<Claims<'_>, ManagerError> {
        let mut claims = Claims {
            m: self,
            names: Vec::new(),
            ids: Vec::new(),
            kept: false,
        };
        let Some(c) = self.cluster().filter(|c| c.enabled()) else {
            claims.names = wanted;
            return Ok(claims);
        };
        let mut names = wanted;
        {
            let vms = lock(&self.vms);
            while names.len() < count {
                let taken = |n: &VmName| vms.values().any(|e| &e.name == n) || names.contains(n);
                let n = VmName::random_unique(&taken);
                names.push(n);
            }
        }
        for n in names {
            let id = self.claim_id(c, &claims.ids)?;
            claims.ids.push(id);
            match c.claim_name(n.as_str()) {
                Ok(()) => claims.names.push(n),
                Err(ClaimError::Taken { host }) => {
                    return Err(ManagerError::NameTaken(format!("{n} (on host {host})")));
                }
                Err(ClaimError::Unreachable(why)) => {
                    return Err(ManagerError::ClusterUnreachable {
                        name: n.to_string(),
                        why,
                    });
                }
            }
        }
        Ok(claims)
    }

    /// A new id, unused on this host, claimed across the cluster: one
    /// another host holds is refused there and another picked.
    fn claim_id(
        &self,
        c: &crate::daemon::cluster::Cluster,
        picked: &[VmId],
    ) -> Result<VmId, ManagerError> {
        let mut clash = String::new();
        for _ in 0..ID_TRIES {
            let id = {
                let vms = lock(&self.vms);
                let mut id = VmId::random();
                while vms.contains_key(&id) || self.dir(&id).exists() || picked.contains(&id) {
                    id = VmId::random();
                }
                id
            };
            match c.claim_id(id.as_str()) {
                Ok(()) => return Ok(id),
                Err(ClaimError::Taken { host }) => clash = format!("{id} (on host {host})"),
                Err(ClaimError::Unreachable(why)) => {
                    return Err(ManagerError::ClusterUnreachable {
                        name: format!("a new VM's id {id}"),
                        why,
                    });
                }
            }
        }
        Err(ManagerError::NameTaken(format!(
            "{ID_TRIES} random ids in a row, the last {clash}"
        )))
    }

    /// A destroyed VM's name and id, given back to the cluster.
    pub(super) fn release_name(&self, name: &VmName, id: &VmId) {
        if let Some(c) = self.cluster() {
            c.release_name(name.as_str());
            c.release_id(id.as_str());
        }
    }
}
