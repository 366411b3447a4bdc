//! Fork: new running VMs from a running VM's present state, memory, devices
//! and disk; the source pauses for a moment and runs on.
//!
//! 1. The source is held (`Transition::Fork`, recorded `forking`) and N
//!    new VMs are reserved like creates (names, addresses, ids, dirs with
//!    their records `creating`, marked `identity_pending`): a `--count`
//!    past the pool or the VM limit makes nothing.
//! 2. The source's guest is stopped; its device state goes to
//!    `<source>/.fork.tmp/` (only the devices: its RAM is shared), its RAM
//!    is copied into a sealed memfd (the image), its disk is copied once
//!    (reflink or sparse); the guest continues (`running`).
//! 3. Each fork: its disk from that copy, its own config drive (new host
//!    key, the source's authorized keys), a **quarantined** tap (its rules,
//!    on no bridge, down), a VMM mapping the image copy-on-write and
//!    loading the devices; then through its own agent its identity
//!    (hostname, machine id, MAC, address, route, host key), the clock and
//!    fresh entropy; only then is its tap put on the bridge and up, and
//!    its record `running`. A fork's failure undoes that fork alone.
//!
//! Recovery undoes a fork whose identity is pending, whatever runs
//! (`recover.rs`): a clone is never on the bridge as someone else.

use std::cell::Cell;
use std::collections::BTreeSet;
use std::fs;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use super::create::step;
use super::launch::Boot;
use super::operation::{Held, Op};
use super::{Cause, Entry, Manager, ManagerError};
use crate::daemon::fault;
use crate::daemon::lifecycle::{Transition, VmState};
use crate::daemon::lock;
use crate::daemon::store::VmRecord;
use crate::error::chain;
use crate::host::vmm::{self, Backend};
use crate::host::{self, config_drive, disk, network, ssh};
use crate::names::{VmId, VmName};
use crate::wire::api::{Expose, ForkRequest, VmView};

/// What a new VM is made from: its disk and the state its VMM loads.
pub(super) enum Origin<'a> {
    /// A running VM's devices and disk in `stage`, its RAM the image.
    Fork {
        stage: &'a Path,
        image: &'a fs::File,
    },
    /// A checkpoint's directory: its whole saved state and its disk.
    Checkpoint(&'a Path),
    /// A template (warm create): its devices and disk in `dir`, its RAM
    /// the image; the disk grown to the record's size and the user's keys
    /// put in place once it runs.
    Template {
        dir: &'a Path,
        image: &'a fs::File,
        disk_bytes: u64,
        keys: &'a [&'a str],
        /// Moves a copy of the disk made ahead to the path given (false:
        /// none was ready).
        spare: &'a (dyn Fn(&Path) -> bool + Sync),
    },
}

impl<'a> Origin<'a> {
    fn disk(&self) -> PathBuf {
        match self {
            Self::Fork { stage, .. } => stage.join("rootfs.img"),
            Self::Checkpoint(dir) => dir.join("rootfs.img"),
            Self::Template { dir, .. } => dir.join("rootfs.img"),
        }
    }

    /// Whether it is a warm create (its crash points are `warm:`).
    fn warm(&self) -> bool {
        matches!(self, Self::Template { .. })
    }

    fn boot(&self) -> Boot<'a> {
        match *self {
            Self::Fork { stage, image } => Boot::Fork {
                from: stage,
                image,
                own: false,
            },
            Self::Checkpoint(dir) => Boot::Saved(dir),
            // A warm VM owns a copy of the template's memory (a little
            // slower than sharing its pages): it is forked like any VM.
            Self::Template { dir, image, .. } => Boot::Fork {
                from: dir,
                image,
                own: true,
            },
        }
    }
}

/// The most forks one request makes.
pub(super) const FORK_MAX: u32 = 64;
/// How many forks are brought up at once.
const PARALLEL: usize = 4;
/// The staging directory of a fork under way, in the source's directory.
pub(super) const STAGE: &str = ".fork.tmp";

impl Manager {
    /// `fcm fork`: one result per fork asked, in order; an error of the
    /// whole (the source cannot be forked, nothing could be reserved) is
    /// the `Err`.
    pub(super) fn do_fork(
        &self,
        vm: &str,
        req: ForkRequest,
    ) -> Result<Vec<Result<VmView, ManagerError>>, ManagerError> {
        let count = req.count.unwrap_or(1);
        if count == 0 || count > FORK_MAX {
            return Err(ManagerError::BadRequest(format!(
                "count must be between 1 and {FORK_MAX}"
            )));
        }
        let started = std::time::Instant::now();
        let mut op = self.operation(vm, Transition::Fork)?;
        // After the VM: an unknown VM is the first thing to say.
        let names: Vec<VmName> = match &req.name {
            None => Vec::new(),
            Some(n) if count == 1 => vec![VmName::parse(n)?],
            Some(n) => (1..=count)
                .map(|i| VmName::parse(&format!("{n}-{i}")))
                .collect::<Result<_, _>>()?,
        };
        let not = |why| ManagerError::NotForkable {
            name: op.r.name.to_string(),
            why,
        };
        if op.r.backend != Backend::Qemu {
            return Err(not("only QEMU VMs can be forked so far"));
        }
        if op.r.agent_drive.is_none() {
            return Err(not(
                "it has no fcm-agent, which gives each fork its identity",
            ));
        }
        let pid = op.r.pid.unwrap_or(0);
        if !op.r.shared_ram || vmm::qemu::fork::shared_ram_fd(pid).is_none() {
            return Err(not("its memory is not shared"));
        }
        self.check_prerequisites(op.r.backend)?;
        let claim = self.claim_names(names, count as usize)?;
        let forks = self.reserve_forks(&op.r, count, claim.names(), claim.ids())?;
        // Forks that fail later give their names back at the next
        // reconcile pass of the cluster.
        claim.keep();
        op.begin()?;
        fault::crash_point("fork:after-record");
        let src_dir = self.dir(&op.r.id);
        let stage = src_dir.join(STAGE);
        let _ = fs::remove_dir_all(&stage);
        let vmm = self.vmm_for(op.r.backend);
        let saved = fs::create_dir(&stage)
            .map_err(Cause::file(&stage))
            .and_then(|_| {
                vmm.save_for_fork(&src_dir, pid, &stage)
                    .map_err(Cause::from)
            })
            .and_then(|image| {
                fault::crash_point("fork:after-devices");
                disk::copy_rootfs(&src_dir.join("rootfs.img"), &stage.join("rootfs.img"))
                    .map(|_| image)
                    .map_err(Cause::from)
            });
        // The source runs on, whatever happened.
        let continued = vmm.continue_guest(&src_dir);
        let stopped_for = started.elapsed();
        let image = match (saved, continued) {
            (Ok(image), Ok(())) => image,
            (saved, continued) => {
                let mut cause = match saved {
                    Err(c) => c,
                    Ok(_) => Cause::Several(vec![]),
                };
                if let Err(e) = continued {
                    cause =
                        cause.also(format!("; and the guest could not continue: {}", chain(&e)));
                }
                let _ = fs::remove_dir_all(&stage);
                for f in forks {
                    self.abandon(&f.record());
                }
                return Err(op.fail(cause));
            }
        };
        fault::crash_point("fork:after-continue");
        if let Err(e) = op.done() {
            // The source's record could not be saved: no fork goes on.
            let _ = fs::remove_dir_all(&stage);
            for f in forks {
                self.abandon(&f.record());
            }
            return Err(e);
        }
        let source = op.r.clone();
        drop(op);
        let authorized = config_drive::read_authorized_keys(&src_dir.join(config_drive::FILE))
            .unwrap_or_else(|_| self.key_pub.clone());
        let mut results = Vec::with_capacity(forks.len());
        let mut queue = forks.into_iter();
        loop {
            let batch: Vec<Held<'_>> = queue.by_ref().take(PARALLEL).collect();
            if batch.is_empty() {
                break;
            }
            let done: Vec<Result<VmView, ManagerError>> = std::thread::scope(|s| {
                let handles: Vec<_> = batch
                    .into_iter()
                    .map(|held| {
                        let origin = Origin::Fork {
                            stage: &stage,
                            image: &image,
                        };
                        let authorized = &authorized;
                        s.spawn(move || self.bring_up_fork(held, &origin, authorized))
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            Err(ManagerError::BadRequest("a fork's thread panicked".into()))
                        })
                    })
                    .collect()
            });
            results.extend(done);
        }
        if let Err(e) = fs::remove_dir_all(&stage) {
            eprintln!("fcm: warning: {}: {e}", stage.display());
        }
        eprintln!(
            "fcm: {}: forked {} of {count} in {:.0} ms (the source stopped for {:.0} ms)",
            source.name,
            results.iter().filter(|r| r.is_ok()).count(),
            started.elapsed().as_secs_f64() * 1000.0,
            stopped_for.as_secs_f64() * 1000.0
        );
        // The source's clock lags by the moment it was stopped.
        if let Some(w) = self.guest_after_load(&source) {
            eprintln!("fcm: warning: {}: {w}", source.name);
        }
        Ok(results)
    }

    /// Reserves `count` new VMs like `source` (names, addresses, ids,
    /// directories with their records `creating`, identity pending), their
    /// operation locks held; all or none.
    pub(super) fn reserve_forks(
        &self,
        source: &VmRecord,
        count: u32,
        names: Vec<VmName>,
        ids: Vec<VmId>,
    ) -> Result<Vec<Held<'_>>, ManagerError> {
        let mut vms = lock(&self.vms);
        if let Some(max) = self.cfg.max_vms
            && vms.len() + count as usize > max as usize
        {
            return Err(ManagerError::TooManyVms(max));
        }
        let mut picked: Vec<VmName> = Vec::new();
        let mut used: BTreeSet<Ipv4Addr> = vms.values().map(|e| e.ip).collect();
        let mut recs = Vec::new();
        for i in 0..count as usize {
            let taken = |n: &VmName| vms.values().any(|e| &e.name == n) || picked.contains(n);
            let name = match names.get(i) {
                Some(n) if taken(n) => return Err(ManagerError::NameTaken(n.to_string())),
                Some(n) => n.clone(),
                None => VmName::random_unique(&taken),
            };
            picked.push(name.clone());
            let ip = network::allocate_ip(&self.cfg, &used).map_err(|_| {
                ManagerError::BadRequest(format!(
                    "{count} forks need {count} free addresses; the pool {}-{} has {}",
                    self.cfg.pool_start,
                    self.cfg.pool_end,
                    recs.len()
                ))
            })?;
            used.insert(ip);
            // In a cluster: the id claimed across the hosts.
            let mut id = ids.get(i).cloned().unwrap_or_else(VmId::random);
            while vms.contains_key(&id)
                || self.dir(&id).exists()
                || recs.iter().any(|r: &VmRecord| r.id == id)
            {
                id = VmId::random();
            }
            let expose = self
                .caddy
                .as_ref()
                .filter(|c| c.enabled() && !source.no_url)
                .map(|c| Expose {
                    port: self.cfg.caddy.guest_port,
                    domain: c.domain(&name),
                });
            recs.push(VmRecord {
                tap: id.tap_name(),
                mac: network::mac_for(ip),
                id,
                name,
                ip,
                state: VmState::Creating,
                expose,
                created_at: super::pause::now_secs(),
                pid: None,
                host_key: None,
                idle_paused: false,
                identity_pending: true,
                ..source.clone()
            });
        }
        let mut made: Vec<VmRecord> = Vec::new();
        for r in &recs {
            if let Err(e) = self.make_vm_dir(r) {
                for m in &made {
                    let _ = fs::remove_dir_all(self.dir(&m.id));
                }
                return Err(e);
            }
            made.push(r.clone());
        }
        let mut held = Vec::new();
        for r in recs {
            self.told_created(&r);
            let entry = Entry::new(r.clone());
            vms.insert(r.id, Arc::clone(&entry));
            held.push(self.held(entry, self.begin()?));
        }
        Ok(held)
    }

    /// Undoes a fork (or a reserved one) and forgets it.
    fn abandon(&self, r: &VmRecord) {
        self.undo_create(r);
        lock(&self.vms).remove(&r.id);
        self.told_destroyed(r);
    }

    /// One fork, from its reservation to running with its own identity;
    /// undone on failure.
    pub(super) fn bring_up_fork(
        &self,
        held: Held<'_>,
        origin: &Origin<'_>,
        authorized: &str,
    ) -> Result<VmView, ManagerError> {
        let rec = held.record();
        let mut op = match held.check(Transition::Launched) {
            Ok(op) => op,
            Err(e) => {
                self.abandon(&rec);
                return Err(e);
            }
        };
        match self.build_fork(&mut op, origin, authorized) {
            Ok(view) => Ok(view),
            Err(e) => {
                self.abandon(&op.r);
                Err(e)
            }
        }
    }

    fn build_fork(
        &self,
        op: &mut Op<'_>,
        origin: &Origin<'_>,
        authorized: &str,
    ) -> Result<VmView, ManagerError> {
        let rec = op.r.clone();
        let dir = self.dir(&rec.id);
        let mut timing = super::create::Timing::start();
        let spare = match origin {
            Origin::Template { spare, .. } => spare(&dir.join("rootfs.img")),
            _ => false,
        };
        if !spare {
            disk::copy_rootfs(&origin.disk(), &dir.join("rootfs.img"))
                .map_err(step("copy the source's disk"))?;
        }
        timing.lap("disk");
        crash(origin, "fork:after-copy", "warm:after-copy");
        let host_key = config_drive::host_key(&format!("fcm-{}", rec.id))
            .map_err(step("generate host key"))?;
        let keys: Vec<&str> = authorized
            .lines()
            .filter(|l| !l.trim().is_empty())
            .collect();
        config_drive::write(
            &dir.join(config_drive::FILE),
            &config_drive::Identity {
                host_key: &host_key,
                authorized_keys: &keys,
                image: rec.image.as_ref().map(|i| &i.config),
            },
        )
        .map_err(step("write config drive"))?;
        let known_hosts = self.known_hosts(&rec.id);
        host::write_atomic(
            &known_hosts,
            ssh::known_hosts_line(rec.ip, &host_key.public).as_bytes(),
            0o644,
        )
        .map_err(|e| step("write known_hosts")(Cause::file(&known_hosts)(e)))?;
        op.r.host_key = Some(host_key.public.clone());
        op.save().map_err(step("save record"))?;
        timing.lap("keys, config drive, record");
        crash(origin, "fork:after-inject", "warm:after-inject");
        network::create_tap_quarantined(&self.cfg, &rec.nic())
            .map_err(step("create quarantined tap"))?;
        timing.lap("tap");
        crash(origin, "fork:after-tap", "warm:after-tap");
        let pid = self
            .launch_with(&rec, origin.boot(), &Cell::new(None))
            .map_err(step("start VMM"))?;
        op.r.pid = Some(pid);
        op.save().map_err(step("save record"))?;
        timing.lap("VMM");
        crash(origin, "fork:after-launch", "warm:after-launch");
        self.vmm_for(rec.backend)
            .continue_guest(&dir)
            .map_err(step("load the source's state"))?;
        timing.lap("load");
        let guest = self.guest(&rec);
        let g: &dyn crate::daemon::guest::Guest = guest.as_ref();
        // A warm VM's network identity is set apart, in one program of the
        // guest's (`warm_network`): each `ip` the agent runs for
        // SetIdentity costs a program start, slow under TCG.
        // An image may have no `ip`: the agent sets it in process there.
        let net = !origin.warm() || rec.image.is_some();
        let identity = fcm_proto::Identity {
            hostname: Some(rec.name.to_string()),
            machine_id: Some(random_hex(16)),
            mac: net.then(|| rec.mac.clone()),
            address: net.then(|| format!("{}/{}", rec.ip, self.cfg.prefix_len)),
            gateway: net.then(|| self.cfg.gateway.to_string()),
            // An image without sshd may have no /etc/ssh either.
            ssh_host_keys: if rec.image.as_ref().is_some_and(|i| !i.sshd) {
                Vec::new()
            } else {
                vec![
                    ("ssh_host_ed25519_key".into(), host_key.private.clone()),
                    (
                        "ssh_host_ed25519_key.pub".into(),
                        format!("{}\n", host_key.public),
                    ),
                ]
            },
        };
        g.set_identity(&identity)
            .map_err(step("set the fork's identity"))?;
        if !net {
            self.warm_network(&rec, g)?;
        }
        timing.lap("identity");
        crash(origin, "fork:after-identity", "warm:after-identity");
        // The clock and fresh entropy: no fork shares its source's CRNG.
        let entropy: [u8; 64] = std::array::from_fn(|_| rand::random());
        g.after_restore(&entropy)
            .map_err(step("set the clock and reseed"))?;
        timing.lap("clock, entropy");
        if let Origin::Template {
            disk_bytes, keys, ..
        } = origin
        {
            self.warm_settle(&rec, g, *disk_bytes, keys)?;
            timing.lap("user's key, disk");
            fault::crash_point("warm:after-keys");
        }
        network::create_tap_for(&self.cfg, &rec.nic(), self.tap_owner(&rec))
            .map_err(step("put the tap on the bridge"))?;
        crash(origin, "fork:after-attach", "warm:after-attach");
        op.r.identity_pending = false;
        op.done().map_err(|e| match e {
            ManagerError::Operation { cause, .. } => ManagerError::CreateStep {
                step: "save record",
                cause,
            },
            other => other,
        })?;
        timing.lap("bridge, record");
        eprintln!(
            "fcm: {}: bring-up: {}",
            rec.name,
            timing.report().replace("host work before the VMM", "total")
        );
        crash(origin, "fork:after-commit", "warm:after-commit");
        super::idle::touch(op.entry());
        let mut view = op.r.view();
        view.warnings.extend(self.apply_url(op.entry(), true));
        Ok(view)
    }
}

/// The crash point of a step a fork and a warm create share.
fn crash(origin: &Origin<'_>, fork: &str, warm: &str) {
    fault::crash_point(if origin.warm() { warm } else { fork });
}

/// `n` random bytes as lowercase hex.
fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| format!("{:02x}", rand::random::<u8>()))
        .collect()
}
