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
use crate::daemon::guest::{self, ExecSpec, Guest};
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::names::VmName;
use crate::wire::api::VmView;

/// How long the guest gets to see its grown disk and grow its file system.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(60);

/// What came of trying a warm create.
pub(super) enum Warm {
    /// (Boxed: a VmView is large beside the other variants.)
    Made(Box<VmView>),
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
        let mut reserved =
            match self.reserve_forks(like, 1, name.into_iter().collect(), vec![like.id.clone()]) {
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
            spare: &|to: &std::path::Path| t.take_spare_disk(to),
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
                Warm::Made(Box::new(view))
            }
            Err(e) => Warm::Failed(e),
        }
    }

    /// A warm VM's MAC, address and default route, in one guest program
    /// (`ip -batch`, no shell), after the agent's SetIdentity of its
    /// hostname, machine id and host key (`fork.rs`); its tap is
    /// quarantined meanwhile.
    pub(super) fn warm_network(&self, rec: &VmRecord, g: &dyn Guest) -> Result<(), ManagerError> {
        let what = "set its MAC and address";
        let fail = |e: String| step(what)(super::Cause::Several(vec![e]));
        let batch = format!(
            "link set dev eth0 down\n\
             link set dev eth0 address {mac}\n\
             link set dev eth0 up\n\
             addr flush dev eth0\n\
             addr add {ip}/{prefix} dev eth0\n\
             route replace default via {gw} dev eth0\n",
            mac = rec.mac,
            ip = rec.ip,
            prefix = self.cfg.prefix_len,
            gw = self.cfg.gateway,
        );
        let spec = ExecSpec {
            argv: vec!["ip".into(), "-batch".into(), "-".into()],
            timeout: Some(SETTLE_TIMEOUT),
            ..ExecSpec::default()
        };
        let o = guest::output(g, &spec, batch.as_bytes(), 64 << 10).map_err(step(what))?;
        if o.exit.code != 0 {
            return Err(fail(format!(
                "ip -batch exited {}: {}",
                o.exit.code,
                String::from_utf8_lossy(&o.stderr).trim()
            )));
        }
        Ok(())
    }

    /// A warm VM's own disk size and keys, through its
    /// agent: the authorized keys where the guest's sshd reads them
    /// (`/run/fcm/authorized_keys`, which rc.sh fills from the config
    /// drive at a boot), written by the agent; the disk grown (the VMM
    /// tells the guest) and its file system with it (`resize2fs`) when it
    /// is larger than the template's.
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
        // No shell: each program the guest starts costs tens of ms under
        // TCG. The keys are a file the agent writes itself.
        let what = "install keys, grow its file system";
        let fail = |e: String| step(what)(super::Cause::Several(vec![e]));
        let authorized: String = keys.iter().map(|k| format!("{k}\n")).collect();
        g.write_file("/run/fcm/authorized_keys", &mut authorized.as_bytes())
            .map_err(step(what))?;
        if let (Some(bytes), Some(_)) = (grow, &rec.image) {
            // An image may have no shell nor resize2fs: the agent grows
            // the file system itself, once the device has its new size.
            let spec = ExecSpec {
                argv: vec![
                    "/run/fcm/fcm-agent".into(),
                    "grow-root".into(),
                    "--min-bytes".into(),
                    bytes.to_string(),
                ],
                timeout: Some(SETTLE_TIMEOUT),
                ..ExecSpec::default()
            };
            let o = guest::output(g, &spec, &[], 64 << 10).map_err(step(what))?;
            if o.exit.code != 0 {
                return Err(fail(format!(
                    "growing the file system exited {}: {}",
                    o.exit.code,
                    String::from_utf8_lossy(&o.stderr).trim()
                )));
            }
        } else if let Some(bytes) = grow {
            // The new size reaches the guest as an interrupt: wait for it.
            let script = format!(
                "i=0\nwhile [ $(($(cat /sys/class/block/vda/size) * 512)) -lt {bytes} ]; do \
                 i=$((i+1)); [ $i -lt 400 ] || exit 3; sleep 0.05; done\n\
                 resize2fs /dev/vda >/dev/null 2>&1\n"
            );
            match guest::script(g, &script, SETTLE_TIMEOUT) {
                Ok((0, _)) => {}
                Ok((code, out)) => {
                    return Err(fail(format!(
                        "growing the file system exited {code}: {}",
                        out.trim()
                    )));
                }
                Err(e) => return Err(step(what)(e)),
            }
        }
        Ok(())
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
