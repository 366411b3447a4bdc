//! Create: validate the request, reserve a name, an address and an id
//! under the table lock, then build the VM step by step; a failure at any
//! step undoes everything made so far and names the step.

use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use super::operation::Op;
use super::warm::{Warm, fell_back};
use super::{Cause, Entry, Manager, ManagerError};
use crate::daemon::fault;
use crate::daemon::lifecycle::{Transition, VmState};
use crate::daemon::lock;
use crate::daemon::store::{self, VmRecord};
use crate::host::{self, config_drive, disk, network, ssh};
use crate::names::{VmId, VmName};
use crate::wire::api::{CreateRequest, Expose, VmView};

pub(super) const CPUS_MAX: u8 = 32;
pub(super) const MEMORY_RANGE: std::ops::RangeInclusive<u32> = 64..=262_144;
/// An OpenSSH public key line (an RSA-16384 key is under 3 KB). Small
/// enough that any key line, JSON-escaped, fits in a request body.
const KEY_MAX: usize = 4 * 1024;
/// The longest idle sleep delay accepted: a year.
const IDLE_PAUSE_MAX_SECS: u64 = 365 * 24 * 3600;

impl Manager {
    pub(super) fn do_create(&self, req: CreateRequest) -> Result<VmView, ManagerError> {
        let timing = Timing::start();
        if self.cfg.cgroup.enabled {
            crate::host::cgroup::warm_up(&self.cfg.cgroup);
        }
        let in_flight = self.begin()?;
        let cpus = req.cpus.unwrap_or(self.cfg.default_cpus);
        if cpus == 0 || cpus > CPUS_MAX {
            return Err(ManagerError::BadRequest(format!(
                "cpus must be between 1 and {CPUS_MAX}"
            )));
        }
        let memory_mib = req.memory_mib.unwrap_or(self.cfg.default_memory_mib);
        if !MEMORY_RANGE.contains(&memory_mib) {
            return Err(ManagerError::BadRequest(format!(
                "memory_mib must be between {} and {}",
                MEMORY_RANGE.start(),
                MEMORY_RANGE.end()
            )));
        }
        let wanted_name = req.name.as_deref().map(VmName::parse).transpose()?;
        let user_key = req
            .ssh_public_key
            .as_deref()
            .map(validate_public_key)
            .transpose()?;
        let backend = self.backend;
        self.check_prerequisites(backend)?;
        let disk_bytes = self.disk_size(req.disk, None)?;
        let image = self.image_for_create(req.image.as_deref())?;
        if let Some((i, disk)) = &image {
            let at_least = host::disk::size(disk).unwrap_or(0);
            if disk_bytes < at_least {
                return Err(ManagerError::BadRequest(format!(
                    "disk must be at least {at_least} bytes (the size of image {})",
                    i.name
                )));
            }
        }
        let (vm_image, source_disk) = match image {
            Some((i, disk)) => (Some(i), disk),
            None => (None, self.cfg.asset(&self.cfg.rootfs)),
        };
        let idle_pause_secs = match req.idle_pause_secs.or(self.cfg.idle_pause_secs) {
            Some(0) | None => None,
            Some(s) if s > IDLE_PAUSE_MAX_SECS => {
                return Err(ManagerError::BadRequest(format!(
                    "idle_pause_secs must be at most {IDLE_PAUSE_MAX_SECS} (a year), or 0 for off"
                )));
            }
            Some(s) => Some(s),
        };
        // In a cluster the name is claimed across the hosts first (a
        // random one picked now); given back if the create fails.
        let claim = self.claim_names(wanted_name.into_iter().collect(), 1)?;
        let wanted_name = claim.names().pop();
        let claimed_id = claim.ids().pop();

        if !req.cold.unwrap_or(false)
            && backend == crate::host::vmm::Backend::Qemu
            && let Some(t) = self.template_for(vm_image.as_ref(), cpus, memory_mib, disk_bytes)
        {
            // Reserved like a fork: all but these fields are its own.
            let like = VmRecord {
                id: claimed_id.clone().unwrap_or_else(VmId::random),
                name: VmName::random_unique(&|_: &VmName| false),
                ip: self.cfg.pool_start,
                state: VmState::Creating,
                expose: None,
                backend,
                mac: String::new(),
                cpus,
                memory_mib,
                tap: String::new(),
                created_at: 0,
                pid: None,
                host_key: None,
                disk_bytes: Some(disk_bytes),
                idle_pause_secs,
                idle_paused: false,
                agent_drive: self.agent_drive.clone(),
                shared_ram: true,
                identity_pending: true,
                image: vm_image.clone(),
                no_url: req.url == Some(false),
            };
            match self.create_warm(&t, &like, wanted_name.clone(), user_key.as_deref()) {
                Warm::Made(view) => {
                    claim.keep();
                    return Ok(*view);
                }
                Warm::Refused(e) => return Err(e),
                Warm::Failed(e) => fell_back(wanted_name.as_ref(), &e),
            }
        }

        // Reserve id, name and address while holding the table lock.
        let held;
        {
            let mut vms = lock(&self.vms);
            if let Some(max) = self.cfg.max_vms
                && vms.len() >= max as usize
            {
                return Err(ManagerError::TooManyVms(max));
            }
            let taken = |n: &VmName| vms.values().any(|e| &e.name == n);
            let name = match wanted_name {
                Some(n) if taken(&n) => return Err(ManagerError::NameTaken(n.to_string())),
                Some(n) => n,
                None => VmName::random_unique(&taken),
            };
            let used: BTreeSet<Ipv4Addr> = vms.values().map(|e| e.ip).collect();
            let ip = network::allocate_ip(&self.cfg, &used).map_err(|_| {
                ManagerError::PoolExhausted(format!(
                    "{}-{}",
                    self.cfg.pool_start, self.cfg.pool_end
                ))
            })?;
            // In a cluster the id was claimed across the hosts with the name.
            let mut id = claimed_id.unwrap_or_else(VmId::random);
            while vms.contains_key(&id) || self.dir(&id).exists() {
                id = VmId::random();
            }
            let no_url = req.url == Some(false);
            let expose = self
                .caddy
                .as_ref()
                .filter(|c| c.enabled() && !no_url)
                .map(|c| Expose {
                    port: self.cfg.caddy.guest_port,
                    domain: c.domain(&name),
                });
            // A new VM's record starts `creating`, the state a create's
            // launch (`Transition::Launched`) starts from.
            let rec = VmRecord {
                tap: id.tap_name(),
                mac: network::mac_for(ip),
                id: id.clone(),
                name,
                ip,
                state: VmState::Creating,
                expose,
                backend,
                cpus,
                memory_mib,
                created_at: SystemTime::now()
                    .duration_since(UNIX_EPOCH)
                    .map(|d| d.as_secs())
                    .unwrap_or(0),
                pid: None,
                host_key: None,
                disk_bytes: Some(disk_bytes),
                idle_pause_secs,
                idle_paused: false,
                agent_drive: self.agent_drive.clone(),
                // QEMU's RAM is shared, so the VM can be forked.
                shared_ram: backend == crate::host::vmm::Backend::Qemu,
                identity_pending: false,
                image: vm_image,
                no_url,
            };
            // The directory appears with its record in it, or not at all.
            self.make_vm_dir(&rec)?;
            self.told_created(&rec);
            let entry = Entry::new(rec);
            vms.insert(id, Arc::clone(&entry));
            // Its operation lock is taken (a new lock: no wait) before the
            // table's is let go, so no other operation finds it half-made.
            held = self.held(entry, in_flight);
        }
        fault::crash_point("create:after-record");
        let abandon = |r: &VmRecord| {
            self.undo_create(r);
            lock(&self.vms).remove(&r.id);
            self.told_destroyed(r);
        };
        let rec = held.record();
        let mut op = match held.check(Transition::Launched) {
            Ok(op) => op,
            Err(e) => {
                abandon(&rec);
                return Err(e);
            }
        };
        match self.build(&mut op, &source_disk, user_key.as_deref(), timing) {
            Ok(view) => {
                claim.keep();
                Ok(view)
            }
            Err(e) => {
                abandon(&op.r);
                Err(e)
            }
        }
    }

    /// Makes `<state>/<id>/` holding the record (state `creating`): written
    /// in `.new-<id>`, then renamed, so a crash leaves no directory without
    /// a record. Recovery removes `.new-*` leftovers.
    pub(super) fn make_vm_dir(&self, rec: &VmRecord) -> Result<(), ManagerError> {
        let tmp = self.cfg.state_dir.join(format!(".new-{}", rec.id));
        let result = (|| {
            fs::create_dir_all(&tmp).map_err(Cause::file(&tmp))?;
            host::set_mode(&tmp, 0o700).map_err(Cause::file(&tmp))?;
            store::save_in(&tmp, rec)?;
            let dir = self.dir(&rec.id);
            fs::rename(&tmp, &dir).map_err(Cause::file(&dir))?;
            host::fs::sync_dir(&self.cfg.state_dir).map_err(Cause::file(&self.cfg.state_dir))
        })();
        if result.is_err() {
            let _ = fs::remove_dir_all(&tmp);
        }
        result.map_err(step("create VM directory"))
    }

    /// The steps of create after reservation, the record `creating`
    /// since. An error names its step. Logs where the host's time before
    /// the VMM went (`timing`, begun when the request arrived).
    fn build(
        &self,
        op: &mut Op<'_>,
        source_disk: &Path,
        user_key: Option<&str>,
        mut timing: Timing,
    ) -> Result<VmView, ManagerError> {
        let rec = op.r.clone();
        let dir = self.dir(&rec.id);
        timing.lap("reserve");
        let rootfs = dir.join("rootfs.img");
        disk::copy_rootfs(source_disk, &rootfs).map_err(step("copy rootfs"))?;
        if let Some(bytes) = rec.disk_bytes {
            disk::grow(&rootfs, bytes).map_err(step("size the disk"))?;
        }
        timing.lap("disk");
        fault::crash_point("create:after-copy");
        let host_key = config_drive::host_key(&format!("fcm-{}", rec.id))
            .map_err(step("generate host key"))?;
        timing.lap("keys");
        // The guest's identity goes on its config drive; the disk stays
        // the base image's copy.
        let authorized: Vec<&str> = std::iter::once(self.key_pub.as_str())
            .chain(user_key)
            .collect();
        config_drive::write(
            &dir.join(config_drive::FILE),
            &config_drive::Identity {
                host_key: &host_key,
                authorized_keys: &authorized,
                image: rec.image.as_ref().map(|i| &i.config),
            },
        )
        .map_err(step("write config drive"))?;
        timing.lap("config drive");
        let known_hosts = self.known_hosts(&rec.id);
        host::write_atomic(
            &known_hosts,
            ssh::known_hosts_line(rec.ip, &host_key.public).as_bytes(),
            0o644,
        )
        .map_err(|e| step("write known_hosts")(Cause::file(&known_hosts)(e)))?;
        op.r.host_key = Some(host_key.public);
        // Saved with the host key: a VM adopted after a crash is reachable.
        op.save().map_err(step("save record"))?;
        timing.lap("record");
        fault::crash_point("create:after-inject");
        network::create_tap_for(&self.cfg, &rec.nic(), self.tap_owner(&rec))
            .map_err(step("create tap device"))?;
        timing.lap("tap");
        fault::crash_point("create:after-tap");
        let spawned_at = std::cell::Cell::new(None);
        let launched = self.launch(&rec, &spawned_at);
        if let Some(at) = spawned_at.get() {
            // Disk lock, cgroup, descriptors, up to the VMM's fork.
            timing.lap_at("VMM prep", at);
            eprintln!("fcm: {}: {}", rec.name, timing.report());
        }
        let pid = launched.map_err(step("start VMM"))?;
        fault::crash_point("create:after-launch");
        sync_in_background(&dir);
        op.r.pid = Some(pid);
        op.done().map_err(|e| match e {
            ManagerError::Operation { cause, .. } => ManagerError::CreateStep {
                step: "save record",
                cause,
            },
            other => other,
        })?;
        fault::crash_point("create:after-save");
        let mut view = op.r.view();
        view.warnings.extend(self.apply_url(op.entry(), true));
        Ok(view)
    }

    pub(super) fn undo_create(&self, r: &VmRecord) {
        self.kill_vmms(r);
        for e in self.release_runtime(r) {
            eprintln!("fcm: warning: undoing create of {}: {e}", r.name);
        }
        if let Some(c) = &self.caddy {
            let _ = c.remove_site(&r.name);
        }
        if let Err(e) = fs::remove_dir_all(self.dir(&r.id)) {
            eprintln!("fcm: warning: undoing create of {}: {e}", r.name);
        }
    }
}

/// A `map_err` naming the create step that failed.
pub(super) fn step<E: Into<Cause>>(step: &'static str) -> impl FnOnce(E) -> ManagerError {
    move |e| ManagerError::CreateStep {
        step,
        cause: Box::new(e.into()),
    }
}

/// Makes the new disk and config drive durable off the create's path (the
/// guest runs meanwhile; QEMU reads through the same page cache). Until
/// then a host crash, not a daemon crash, could lose them: the guest's own
/// first flush would sync them too.
fn sync_in_background(dir: &Path) {
    let dir = dir.to_owned();
    std::thread::spawn(move || {
        for f in [config_drive::FILE, "rootfs.img"] {
            if let Err(e) = fs::File::open(dir.join(f)).and_then(|f| f.sync_all()) {
                eprintln!("fcm: warning: syncing {}: {e}", dir.join(f).display());
            }
        }
        let _ = host::fs::sync_dir(&dir);
    });
}

/// Where a create's host time goes before its VMM starts: laps since the
/// request arrived, logged as one line per create.
pub(super) struct Timing {
    start: Instant,
    last: Instant,
    laps: Vec<(&'static str, Duration)>,
}

impl Timing {
    pub(super) fn start() -> Self {
        let now = Instant::now();
        Self {
            start: now,
            last: now,
            laps: Vec::new(),
        }
    }

    pub(super) fn lap(&mut self, what: &'static str) {
        self.lap_at(what, Instant::now());
    }

    fn lap_at(&mut self, what: &'static str, at: Instant) {
        self.laps
            .push((what, at.saturating_duration_since(self.last)));
        self.last = at.max(self.last);
    }

    /// `host work before the VMM: 7.9 ms (disk 2.1 ms, …)`.
    pub(super) fn report(&self) -> String {
        let ms = |d: Duration| format!("{:.1} ms", d.as_secs_f64() * 1000.0);
        let laps: Vec<String> = self
            .laps
            .iter()
            .map(|(what, d)| format!("{what} {}", ms(*d)))
            .collect();
        format!(
            "host work before the VMM: {} ({})",
            ms(self.last - self.start),
            laps.join(", ")
        )
    }
}

/// Accepts one OpenSSH public key line.
fn validate_public_key(k: &str) -> Result<String, ManagerError> {
    let k = k.trim();
    let bad = |m: &str| Err(ManagerError::BadRequest(format!("ssh_public_key {m}")));
    if k.is_empty() || k.len() > KEY_MAX {
        return bad("must be one OpenSSH public key line of at most 4 KiB");
    }
    if k.chars().any(|c| c.is_control()) {
        return bad("must be a single line without control characters");
    }
    let mut parts = k.split_whitespace();
    let kind = parts.next().unwrap_or_default();
    let body = parts.next().unwrap_or_default();
    let known =
        kind.starts_with("ssh-") || kind.starts_with("ecdsa-sha2-") || kind.starts_with("sk-");
    if !known
        || body.is_empty()
        || !body
            .bytes()
            .all(|c| c.is_ascii_alphanumeric() || b"+/=".contains(&c))
    {
        return bad(
            "is not an OpenSSH public key (expected e.g. \"ssh-ed25519 AAAA... user@host\")",
        );
    }
    Ok(k.to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timing_reports_each_lap_and_the_total() {
        let mut t = Timing::start();
        t.lap("disk");
        t.lap("tap");
        let r = t.report();
        assert!(r.starts_with("host work before the VMM: "), "{r}");
        assert!(
            r.contains(" ms (disk ") && r.contains(" ms, tap ") && r.ends_with(" ms)"),
            "{r}"
        );
    }

    #[test]
    fn public_keys_are_checked() {
        assert!(validate_public_key("ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAI me@host").is_ok());
        assert!(validate_public_key("ssh-rsa AAAAB3Nza== ").is_ok());
        for bad in [
            "",
            "hello",
            "ssh-ed25519",
            "ssh-ed25519 AAAA\ncommand=\"x\" ssh-rsa AAAA",
            "ssh-ed25519 $(reboot)",
        ] {
            assert!(validate_public_key(bad).is_err(), "{bad:?} accepted");
        }
    }
}
