//! Warm create: a plain `fcm create` whose size has a ready template
//! (`template.rs`) restores it instead of booting. It is a fork's
//! bring-up (`fork.rs`) from the template: reserved like a create (name,
//! address, id, its record `creating` with its identity pending), its
//! disk the template's copied, its config drive its own, a quarantined
//! tap; once its VMM runs, through its agent: its identity (hostname,
//! machine id, MAC, address, host key), the clock and fresh entropy, then
//! here its disk grown to the size asked and the user's key where sshd
//! reads it; only then is its tap on the bridge and its record `running`.
//! Recovery undoes one whose identity is pending, like a fork's.
//!
//! A failure after the reservation falls back to a cold boot (the reason
//! logged): the user gets the VM they asked for either way.

use std::time::{Duration, Instant};

use super::create::step;
use super::fork::Origin;
use super::template::Template;
use super::{Manager, ManagerError};
use crate::daemon::guest::{self, Guest};
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::host::ssh::shell_quote;
use crate::names::VmName;
use crate::wire::api::VmView;

/// How long the guest gets to see its grown disk and grow its file system.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What came of trying a warm create.
pub(super) enum Warm {
    Made(VmView),
    /// Refused as a cold create would be (the name is taken, the VM
    /// limit): the create's answer.
    Refused(ManagerError),
    /// It failed once under way (undone): boot cold instead.
    Failed(ManagerError),
}

impl Manager {
    /// A warm create of `like` (a create's record, not yet reserved) from
    /// `t`, with the daemon's key and the user's.
    pub(super) fn create_warm(
        &self,
        t: &Template,
        like: &VmRecord,
        name: Option<VmName>,
        user_key: Option<&str>,
    ) -> Warm {
        let started = Instant::now();
        let mut reserved = match self.reserve_forks(like, 1, name.into_iter().collect()) {
            Ok(r) => r,
            Err(e @ (ManagerError::NameTaken(_) | ManagerError::TooManyVms(_))) => {
                return Warm::Refused(e);
            }
            // The cold path says it in a create's words (a full pool…).
            Err(e) => return Warm::Failed(e),
        };
        let Some(held) = reserved.pop() else {
            return Warm::Failed(ManagerError::BadRequest("nothing was reserved".into()));
        };
        let keys: Vec<&str> = std::iter::once(self.key_pub.trim())
            .chain(user_key)
            .collect();
        let authorized = keys.join("\n");
        let origin = Origin::Template {
            dir: &t.dir,
            image: &t.image,
            disk_bytes: t.disk_bytes,
            keys: &keys,
        };
        match self.bring_up_fork(held, &origin, &authorized) {
            Ok(mut view) => {
                eprintln!(
                    "fcm: {}: warm create from template {} in {:.0} ms",
                    view.name,
                    t.key,
                    started.elapsed().as_secs_f64() * 1000.0
                );
                view.set_ready(true);
                Warm::Made(view)
            }
            Err(e) => Warm::Failed(e),
        }
    }

    /// A warm VM's own disk size and keys, through its agent: the disk
    /// grown (the VMM tells the guest) and its file system with it when
    /// it is larger than the template's; the authorized keys where the
    /// guest's sshd reads them (`/run/fcm/authorized_keys`, which the
    /// guest's rc.sh fills from the config drive at a boot).
    pub(super) fn warm_settle(
        &self,
        rec: &VmRecord,
        g: &dyn Guest,
        template_disk: u64,
        keys: &[&str],
    ) -> Result<(), ManagerError> {
        let grow = rec.disk_bytes.filter(|b| *b > template_disk);
        if let Some(bytes) = grow {
            self.vmm_for(rec.backend)
                .resize_disk(&self.dir(&rec.id), bytes)
                .map_err(step("grow the disk"))?;
        }
        let quoted: Vec<String> = keys.iter().map(|k| shell_quote(k)).collect();
        let mut script = format!(
            "umask 077 && mkdir -p /run/fcm && printf '%s\\n' {} >/run/fcm/.keys && \
             mv -f /run/fcm/.keys /run/fcm/authorized_keys",
            quoted.join(" ")
        );
        if let Some(bytes) = grow {
            // The new size reaches the guest as an interrupt: wait for it.
            script.push_str(&format!(
                " && i=0 && until [ $(($(cat /sys/class/block/vda/size) * 512)) -ge {bytes} ]; \
                 do i=$((i+1)); [ $i -lt 400 ] || exit 3; sleep 0.05; done && \
                 resize2fs /dev/vda >/dev/null 2>&1"
            ));
        }
        match guest::script(g, &script, SETTLE_TIMEOUT) {
            Ok((0, _)) => Ok(()),
            Ok((code, out)) => Err(step("install keys and grow the file system")(
                super::Cause::Several(vec![format!(
                    "the guest's script exited {code}: {}",
                    out.trim()
                )]),
            )),
            Err(e) => Err(step("install keys and grow the file system")(e)),
        }
    }
}

/// The log line of a warm create that fell back to a cold boot.
pub(super) fn fell_back(name: Option<&VmName>, e: &ManagerError) {
    eprintln!(
        "fcm: {}: warm create failed, booting cold: {}",
        name.map_or("(unnamed)".into(), |n| n.to_string()),
        chain(e)
    );
}
