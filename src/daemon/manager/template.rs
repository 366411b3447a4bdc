//! Templates for warm create: the default-sized VM booted once to
//! agent-ready and saved like a fork's source (devices, RAM image, disk),
//! so a plain `fcm create` restores it (`warm.rs`) instead of booting.
//!
//! A template is keyed by what its guest was made of (kernel, initrd,
//! base rootfs: path, size and mtime; the agent drive; vCPUs, memory,
//! disk size): `<state>/.templates/<key>/` holds `devices.state`,
//! `ram.img`, `rootfs.img` and, written last, `template.json` (its
//! presence means complete). It is made in `<state>/.template/` by a
//! hidden VM that is in no record: never listed, never recovered; a
//! leftover of a crash (its VMM, cgroups, files) is removed before the
//! next one is made, its tap by recovery (a tap of no VM). Templates of
//! other keys are removed once the current one is ready.

use std::cell::Cell;
use std::fs;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::launch::Boot;
use super::{Cause, Manager, lock};
use crate::daemon::guest;
use crate::daemon::lifecycle::VmState;
use crate::daemon::store::{VmImage, VmRecord};
use crate::error::chain;
use crate::host::vmm::{self, Backend};
use crate::host::{self, cgroup, config_drive, disk, network};
use crate::names::{VmId, VmName};

/// Where templates live, and where one is made.
const TEMPLATES: &str = ".templates";
const BUILDING: &str = ".template";
const META: &str = "template.json";
const RAM: &str = "ram.img";
/// How long a template's guest gets to boot to agent-ready and sshd.
const BOOT_TIMEOUT: Duration = Duration::from_secs(240);

/// `template.json`.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Meta {
    key: String,
    cpus: u8,
    memory_mib: u32,
    disk_bytes: u64,
    agent_drive: String,
    /// A template of an image (`images.rs`): what its VMs keep of it.
    #[serde(default)]
    image: Option<VmImage>,
}

/// A copy of the template's disk made ahead, taken by the next warm
/// create in one rename (`take_spare_disk`), then made again.
const SPARE: &str = "spare.img";
const SPARE_TMP: &str = ".spare.tmp";

/// A ready template: its directory and its RAM image, in memory.
pub(super) struct Template {
    /// A spare disk is being made.
    refilling: Arc<AtomicBool>,
    pub(super) key: String,
    pub(super) dir: PathBuf,
    pub(super) image: fs::File,
    pub(super) cpus: u8,
    pub(super) memory_mib: u32,
    pub(super) disk_bytes: u64,
    pub(super) agent_drive: String,
    /// The image it was made from (none: the base image).
    pub(super) vm_image: Option<VmImage>,
}

/// The daemon's templates: what `GET /health` says of the base image's,
/// the ready one, and one per image VMs were made from.
#[derive(Default)]
pub(super) struct Slot {
    status: String,
    ready: Option<Arc<Template>>,
    /// By image name: its ready template, or none while it is made.
    images: std::collections::BTreeMap<String, Option<Arc<Template>>>,
}

impl Manager {
    /// What `GET /health` says of the template: `ready`, `building`,
    /// `off` or `failed: why`.
    pub fn template_status(&self) -> String {
        let s = lock(&self.template).status.clone();
        match s.as_str() {
            // Not begun yet (its thread starts with the daemon).
            "" if self.cfg.templates => "building".into(),
            "" => "off".into(),
            _ => s,
        }
    }

    fn set_template(&self, status: &str, ready: Option<Arc<Template>>) {
        let mut slot = lock(&self.template);
        slot.status = status.into();
        slot.ready = ready;
    }

    /// The ready template a create of this image and size can restore.
    /// For an image without one, one is made in the background (of the
    /// default size) for the creates after this one.
    pub(super) fn template_for(
        &self,
        image: Option<&VmImage>,
        cpus: u8,
        memory_mib: u32,
        disk: u64,
    ) -> Option<Arc<Template>> {
        let t = match image {
            None => lock(&self.template).ready.clone()?,
            Some(i) => {
                let found = lock(&self.template).images.get(&i.name).cloned();
                match found {
                    Some(Some(t)) if t.vm_image.as_ref() == Some(i) => t,
                    // Being made.
                    Some(None) => return None,
                    // None yet, or of an older build of the image.
                    _ => {
                        self.image_template_later(i.clone());
                        return None;
                    }
                }
            }
        };
        (t.cpus == cpus
            && t.memory_mib == memory_mib
            && disk >= t.disk_bytes
            && self.agent_drive.as_deref() == Some(t.agent_drive.as_str()))
        .then_some(t)
    }

    /// Has the template of `image` made (or loaded) on a thread of its
    /// own, unless templates are off or it is under way.
    pub(super) fn image_template_later(&self, image: VmImage) {
        if !self.cfg.templates || self.backend != Backend::Qemu || self.agent_drive.is_none() {
            return;
        }
        let Some(m) = self.me.get().and_then(std::sync::Weak::upgrade) else {
            return;
        };
        let name = image.name.clone();
        {
            let mut slot = lock(&self.template);
            if matches!(slot.images.get(&name), Some(None)) {
                return;
            }
            slot.images.insert(name.clone(), None);
        }
        let spawned = std::thread::Builder::new()
            .name("fcm-template".into())
            .spawn(move || {
                let name = image.name.clone();
                let made = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
                    m.prepare_image_template(image)
                }));
                if !matches!(made, Ok(true)) {
                    lock(&m.template).images.remove(&name);
                }
            });
        if spawned.is_err() {
            lock(&self.template).images.remove(&name);
        }
    }

    /// An image was stored (built, imported, or replaced): its template
    /// is made anew.
    pub(super) fn image_stored(&self, meta: &crate::host::image::ImageMeta) {
        lock(&self.template).images.remove(meta.name.as_str());
        if let Ok(Some((image, _))) = self.image_for_create(Some(meta.name.as_str())) {
            self.image_template_later(image);
        }
    }

    /// An image was removed: so is its template.
    pub(super) fn forget_image_templates(&self, name: &str) {
        let gone = lock(&self.template).images.remove(name).flatten();
        if let Some(t) = gone {
            let _ = fs::remove_dir_all(&t.dir);
        }
    }

    /// Loads or makes the template of an image, of the default size;
    /// true once it is ready.
    fn prepare_image_template(&self, image: VmImage) -> bool {
        let _one = lock(&self.template_builds);
        let Some(agent) = self.agent_drive.clone() else {
            return false;
        };
        let name = image.name.clone();
        let started = std::time::Instant::now();
        match self.load_or_make(agent, Some(image), || {}) {
            Ok(t) => {
                eprintln!(
                    "fcm daemon: template of image {name} ready in {:.1} s",
                    started.elapsed().as_secs_f64()
                );
                t.refill_spare();
                let mut slot = lock(&self.template);
                if let Some(entry) = slot.images.get_mut(&name) {
                    *entry = Some(Arc::new(t));
                    true
                } else {
                    // The image went meanwhile.
                    let _ = fs::remove_dir_all(&t.dir);
                    false
                }
            }
            Err(c) => {
                eprintln!(
                    "fcm daemon: warning: no template of image {name}, its creates boot cold: {}",
                    chain(&c)
                );
                false
            }
        }
    }

    /// The template of the default size of `image` (none: the base
    /// image): loaded if made before, else made (`making` is told first).
    fn load_or_make(
        &self,
        agent_drive: String,
        image: Option<VmImage>,
        making: impl FnOnce(),
    ) -> Result<Template, Cause> {
        let meta = Meta {
            key: String::new(),
            cpus: self.cfg.default_cpus,
            memory_mib: self.cfg.default_memory_mib,
            disk_bytes: super::resize::DEFAULT_DISK,
            agent_drive,
            image,
        };
        let meta = Meta {
            key: self.template_key(&meta),
            ..meta
        };
        let dir = self.cfg.state_dir.join(TEMPLATES).join(&meta.key);
        match Self::load_template(&dir) {
            Some(t) => Ok(t),
            None => {
                making();
                let _ = fs::remove_dir_all(&dir);
                self.make_template(&meta, &dir)
            }
        }
    }

    /// Makes the template of the default size ready: loads it if made
    /// before, else makes it. Runs on a thread of its own at start-up.
    pub fn prepare_template(&self) {
        let _one = lock(&self.template_builds);
        self.sweep_template_build();
        if !self.cfg.templates {
            return self.set_template("off", None);
        }
        if self.backend != Backend::Qemu {
            return self.set_template("off (QEMU only)", None);
        }
        let Some(agent) = self.agent_drive.clone() else {
            return self.set_template("off (no guest agent)", None);
        };
        let started = std::time::Instant::now();
        match self.load_or_make(agent, None, || self.set_template("building", None)) {
            Ok(t) => {
                eprintln!(
                    "fcm daemon: template {} ready in {:.1} s (warm create: {} vCPU, {} MiB)",
                    t.key,
                    started.elapsed().as_secs_f64(),
                    t.cpus,
                    t.memory_mib
                );
                self.sweep_other_templates(&t.key);
                t.refill_spare();
                self.set_template("ready", Some(Arc::new(t)));
            }
            Err(c) => {
                let why = chain(&c);
                eprintln!("fcm daemon: warning: no template, creates boot cold: {why}");
                self.set_template(&format!("failed: {why}"), None);
            }
        }
    }

    /// A hash of what the template's guest is made of.
    fn template_key(&self, m: &Meta) -> String {
        let id = |p: PathBuf| match fs::metadata(&p) {
            Ok(md) => format!(
                "{}:{}:{}.{}",
                p.display(),
                md.len(),
                md.mtime(),
                md.mtime_nsec()
            ),
            Err(_) => format!("{}:-", p.display()),
        };
        let disk = match &m.image {
            None => id(self.cfg.asset(&self.cfg.rootfs)),
            Some(i) => format!("image {} {}", i.name, i.digest.as_deref().unwrap_or("-")),
        };
        let text = format!(
            "fcm-template 1\n{}\n{}\n{}\n{}\n{} {} {}\n",
            id(self.cfg.asset(&self.cfg.kernel)),
            id(self.cfg.asset(&self.cfg.initrd)),
            disk,
            m.agent_drive,
            m.cpus,
            m.memory_mib,
            m.disk_bytes
        );
        let d = ring::digest::digest(&ring::digest::SHA256, text.as_bytes());
        d.as_ref()[..8].iter().map(|b| format!("{b:02x}")).collect()
    }

    fn load_template(dir: &Path) -> Option<Template> {
        let meta: Meta = serde_json::from_str(&fs::read_to_string(dir.join(META)).ok()?).ok()?;
        let image = vmm::qemu::fork::load_image(&dir.join(RAM)).ok()?;
        Some(Template {
            refilling: Arc::default(),
            key: meta.key,
            dir: dir.to_owned(),
            image,
            cpus: meta.cpus,
            memory_mib: meta.memory_mib,
            disk_bytes: meta.disk_bytes,
            agent_drive: meta.agent_drive,
            vm_image: meta.image,
        })
    }

    /// Removes what a template being made left (a crash, a failure, a
    /// daemon shutting down): its VMM, its cgroups, its tap, its files.
    pub(super) fn sweep_template_build(&self) {
        let dir = self.cfg.state_dir.join(BUILDING);
        if !dir.exists() {
            return;
        }
        for pid in vmm::find_vmms(&dir) {
            self.kill(pid, &dir);
        }
        for e in cgroup::release(&self.cfg.cgroup, &dir) {
            eprintln!("fcm daemon: warning: template leftovers: {e}");
        }
        if let Ok(id) = fs::read_to_string(dir.join("id"))
            && let Ok(id) = VmId::parse(id.trim())
        {
            let _ = network::delete_tap(&self.cfg, &id.tap_name());
        }
        if let Err(e) = fs::remove_dir_all(&dir) {
            eprintln!("fcm daemon: warning: {}: {e}", dir.display());
        }
    }

    /// Removes the base image's templates of other keys, and those of
    /// images that are gone or were rebuilt.
    fn sweep_other_templates(&self, keep: &str) {
        let root = self.cfg.state_dir.join(TEMPLATES);
        let images: Vec<VmImage> = self
            .store()
            .map(|s| s.list())
            .unwrap_or_default()
            .iter()
            .filter_map(|m| self.image_for_create(Some(m.name.as_str())).ok().flatten())
            .map(|(i, _)| i)
            .collect();
        for e in fs::read_dir(&root).into_iter().flatten().flatten() {
            if e.file_name().to_string_lossy() == keep {
                continue;
            }
            let meta: Option<Meta> = fs::read_to_string(e.path().join(META))
                .ok()
                .and_then(|t| serde_json::from_str(&t).ok());
            let current = meta
                .and_then(|m| m.image)
                .is_some_and(|i| images.contains(&i));
            if !current {
                let _ = fs::remove_dir_all(e.path());
            }
        }
    }

    /// Boots the hidden VM, waits for its agent and sshd, saves it like a
    /// fork's source and moves the result into `dest` in one rename.
    fn make_template(&self, meta: &Meta, dest: &Path) -> Result<Template, Cause> {
        let dir = self.cfg.state_dir.join(BUILDING);
        let made = self.build_template(meta, &dir);
        // Whatever happened, the hidden VM goes (its RAM is in the image).
        let id = fs::read_to_string(dir.join("id")).unwrap_or_default();
        for pid in vmm::find_vmms(&dir) {
            self.kill(pid, &dir);
        }
        if let Ok(id) = VmId::parse(id.trim()) {
            let _ = network::delete_tap(&self.cfg, &id.tap_name());
        }
        for e in cgroup::release(&self.cfg.cgroup, &dir) {
            eprintln!("fcm daemon: warning: template: {e}");
        }
        let image = match made {
            Ok(image) => image,
            Err(c) => {
                let _ = fs::remove_dir_all(&dir);
                return Err(c);
            }
        };
        let done = (|| {
            crate::daemon::fault::crash_point("template:after-save");
            vmm::qemu::fork::store_image(&image, &dir.join(RAM))
                .map_err(Cause::file(&dir.join(RAM)))?;
            vmm::sync_file(&dir.join("rootfs.img"))
                .map_err(Cause::file(&dir.join("rootfs.img")))?;
            for f in [
                "id",
                "qemu.pid",
                "qmp.sock",
                "agent.sock",
                config_drive::FILE,
                "cgroups",
            ] {
                let _ = fs::remove_file(dir.join(f));
            }
            let json = serde_json::to_vec_pretty(meta).map_err(|e| Cause::File {
                path: dir.join(META),
                source: std::io::Error::other(e),
            })?;
            host::write_atomic(&dir.join(META), &json, 0o600)
                .map_err(Cause::file(&dir.join(META)))?;
            let root = self.cfg.state_dir.join(TEMPLATES);
            fs::create_dir_all(&root).map_err(Cause::file(&root))?;
            fs::rename(&dir, dest).map_err(Cause::file(dest))?;
            host::fs::sync_dir(&root).map_err(Cause::file(&root))
        })();
        if let Err(c) = done {
            let _ = fs::remove_dir_all(&dir);
            let _ = fs::remove_dir_all(dest);
            return Err(c);
        }
        Ok(Template {
            refilling: Arc::default(),
            key: meta.key.clone(),
            dir: dest.to_owned(),
            image,
            cpus: meta.cpus,
            memory_mib: meta.memory_mib,
            disk_bytes: meta.disk_bytes,
            agent_drive: meta.agent_drive.clone(),
            vm_image: meta.image.clone(),
        })
    }

    /// The hidden VM's life up to its saved state; its RAM image is the
    /// answer. Its tap is quarantined (on no bridge) all along.
    fn build_template(&self, meta: &Meta, dir: &Path) -> Result<fs::File, Cause> {
        let id = VmId::random();
        fs::create_dir_all(dir).map_err(Cause::file(dir))?;
        host::set_mode(dir, 0o700).map_err(Cause::file(dir))?;
        fs::write(dir.join("id"), id.as_str()).map_err(Cause::file(&dir.join("id")))?;
        let name = VmName::parse("fcm-template").map_err(|e| Cause::File {
            path: dir.to_owned(),
            source: std::io::Error::other(e.to_string()),
        })?;
        let ip = self.cfg.pool_start;
        let rec = VmRecord {
            tap: id.tap_name(),
            mac: network::mac_for(ip),
            id,
            name,
            ip,
            state: VmState::Creating,
            expose: None,
            backend: Backend::Qemu,
            cpus: meta.cpus,
            memory_mib: meta.memory_mib,
            created_at: 0,
            pid: None,
            host_key: None,
            disk_bytes: Some(meta.disk_bytes),
            idle_pause_secs: None,
            idle_paused: false,
            agent_drive: Some(meta.agent_drive.clone()),
            shared_ram: true,
            identity_pending: true,
            image: meta.image.clone(),
            no_url: false,
        };
        let rootfs = dir.join("rootfs.img");
        let source = match &meta.image {
            None => self.cfg.asset(&self.cfg.rootfs),
            Some(i) => match self.image_for_create(Some(&i.name)) {
                Ok(Some((now, disk))) if &now == i => disk,
                _ => {
                    return Err(Cause::Several(vec![format!(
                        "image {} was removed or rebuilt",
                        i.name
                    )]));
                }
            },
        };
        disk::copy_rootfs(&source, &rootfs)?;
        disk::grow(&rootfs, meta.disk_bytes)?;
        let host_key = config_drive::host_key("fcm-template")?;
        config_drive::write(
            &dir.join(config_drive::FILE),
            &config_drive::Identity {
                host_key: &host_key,
                authorized_keys: &[self.key_pub.as_str()],
                image: rec.image.as_ref().map(|i| &i.config),
            },
        )?;
        crate::daemon::fault::crash_point("template:after-disk");
        network::create_tap_quarantined(&self.cfg, &rec.nic())?;
        let pid = self.launch_in(dir, &rec, Boot::Cold, &Cell::new(None))?;
        crate::daemon::fault::crash_point("template:after-launch");
        let g = self.guests.guest(&self.target_in(dir.to_owned(), &rec));
        let not_ready = |why: &str| Cause::File {
            path: dir.join("console.log"),
            source: std::io::Error::other(format!("the template's guest {why}")),
        };
        if !g.wait_ready(BOOT_TIMEOUT) {
            return Err(not_ready("did not answer through its agent"));
        }
        // An image's guest: its agent answers, its service started; it
        // may have no shell to wait for more with.
        if rec.image.is_some() {
            std::thread::sleep(Duration::from_secs(1));
            self.guests.forget(&self.target_in(dir.to_owned(), &rec));
            return Ok(self.vmm_for(Backend::Qemu).save_for_fork(dir, pid, dir)?);
        }
        // Its sshd up, its disk grown and everything on it written: a
        // warm VM starts from a guest that has finished booting.
        let settle = "i=0; until pidof sshd >/dev/null 2>&1; do i=$((i+1)); \
                      [ $i -lt 600 ] || exit 3; sleep 0.1; done; sync";
        match guest::script(g.as_ref(), settle, BOOT_TIMEOUT) {
            Ok((0, _)) => {}
            Ok((code, out)) => return Err(not_ready(&format!("did not settle ({code}): {out}"))),
            Err(e) => return Err(not_ready(&format!("did not settle: {}", chain(&e)))),
        }
        self.guests.forget(&self.target_in(dir.to_owned(), &rec));
        let vmm = self.vmm_for(Backend::Qemu);
        Ok(vmm.save_for_fork(dir, pid, dir)?)
    }
}

impl Template {
    /// Moves the spare copy of the template's disk to `to` (false: none
    /// there, copy it instead) and has the next one made.
    pub(super) fn take_spare_disk(&self, to: &Path) -> bool {
        let taken = fs::rename(self.dir.join(SPARE), to).is_ok();
        self.refill_spare();
        taken
    }

    /// Makes a spare copy of the disk on a thread, unless there is one or
    /// one is being made: `.spare.tmp`, renamed `spare.img` once complete.
    fn refill_spare(&self) {
        if self.dir.join(SPARE).exists() || self.refilling.swap(true, Ordering::AcqRel) {
            return;
        }
        let (dir, busy) = (self.dir.clone(), Arc::clone(&self.refilling));
        std::thread::spawn(move || {
            let tmp = dir.join(SPARE_TMP);
            let _ = fs::remove_file(&tmp);
            let made = disk::copy_rootfs(&dir.join("rootfs.img"), &tmp)
                .map_err(|e| chain(&e))
                .and_then(|_| fs::rename(&tmp, dir.join(SPARE)).map_err(|e| e.to_string()));
            if let Err(e) = made {
                let _ = fs::remove_file(&tmp);
                eprintln!("fcm daemon: warning: a spare disk of the template: {e}");
            }
            busy.store(false, Ordering::Release);
        });
    }
}
