//! New VMs' names claimed across the cluster (`daemon::cluster`) before a
//! create's or a fork's first side effect: 409 when a VM of another host
//! has the name, 503 while etcd is out of reach. A single host claims
//! nothing. A claim not kept (the create failed) is given back.

use super::{Manager, ManagerError, lock};
use crate::daemon::cluster::ClaimError;
use crate::names::VmName;

/// Names claimed for VMs being made; released on drop unless kept.
pub(super) struct Claims<'a> {
    m: &'a Manager,
    names: Vec<VmName>,
    kept: bool,
}

impl Claims<'_> {
    /// The names the new VMs get (in a cluster, random ones were picked).
    pub(super) fn names(&self) -> Vec<VmName> {
        self.names.clone()
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

    /// A destroyed VM's name, given back to the cluster.
    pub(super) fn release_name(&self, name: &VmName) {
        if let Some(c) = self.cluster() {
            c.release_name(name.as_str());
        }
    }
}
