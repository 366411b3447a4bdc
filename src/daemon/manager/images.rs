//! Images VMs are made from: the daemon's side of `host::image` (the
//! builder, the archive checks, the conversion, the store). Lists them
//! with the built-in base image, removes one no VM uses, receives an
//! upload (a build context or an archive) and runs the build or import on
//! a thread of its own whose log is the answer's stream
//! ([`ImageJob`]), and resolves `create --image`.

use std::fs;
use std::io::{self, Read};
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender};
use std::time::{Duration, Instant};

use super::{Manager, ManagerError, lock};
use crate::daemon::store::VmImage;
use crate::host::image::{self, ImageError, ImageMeta, ImageName};
use crate::wire::api::{ErrorBody, ImageEvent, ImageView};

/// The base image's names: `create --image fcm/base` is a plain create.
pub const BASE: &str = "fcm/base";
/// Log lines queued for a slow client before the build waits for it.
const LOG_QUEUE: usize = 256;
/// The answer's stream says something at least this often (a blank
/// line), so that neither end takes a quiet `RUN` for a dead connection.
const KEEPALIVE: Duration = Duration::from_secs(15);
/// How long an upload waits for the build before it to end.
const BUILD_WAIT: Duration = Duration::from_secs(1800);

/// What an upload asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ImageSource {
    /// A build context (a tar): `dockerfile` is the path of the Dockerfile
    /// inside it (default `Dockerfile`).
    Build { dockerfile: Option<String> },
    /// An image archive or a root file-system tarball.
    Import,
}

/// One build or import at a time: the builder's storage and the CPU are
/// the host's; a second waits for the first.
#[derive(Default)]
pub(super) struct Builds(Mutex<()>);

/// An image as the API shows it.
fn view_of(m: &ImageMeta) -> ImageView {
    let mut command = m.config.entrypoint.clone();
    command.extend(m.config.cmd.iter().cloned());
    ImageView {
        name: m.name.to_string(),
        digest: Some(m.digest.clone()).filter(|d| !d.is_empty()),
        size_bytes: m.size_bytes,
        created_at: m.created_at,
        source: serde_json::to_value(m.source)
            .ok()
            .and_then(|v| v.as_str().map(str::to_owned))
            .unwrap_or_default(),
        command,
        tmux: m.tools.tmux,
        sshd: m.tools.sshd,
    }
}

/// Whether `name` means the built-in base image.
pub fn is_base(name: &str) -> bool {
    matches!(name, BASE | "fcm/base:latest" | "base")
}

impl Manager {
    /// The image store, opened once (its opening sweeps what a crash
    /// left half-made, so never while a build runs).
    pub(super) fn store(&self) -> Result<&image::Store, ManagerError> {
        let opened = self
            .images
            .get_or_init(|| image::Store::open(&self.cfg.state_dir).map_err(|e| e.to_string()));
        opened
            .as_ref()
            .map_err(|e| ManagerError::BadRequest(format!("the image store cannot be used: {e}")))
    }

    /// Every image, the base image first.
    pub fn images(&self) -> Result<Vec<ImageView>, ManagerError> {
        let rootfs = self.cfg.asset(&self.cfg.rootfs);
        let base = fs::metadata(&rootfs).ok().map(|md| {
            use std::os::unix::fs::MetadataExt;
            ImageView {
                name: BASE.into(),
                digest: None,
                size_bytes: md.blocks() * 512,
                created_at: md.mtime().max(0) as u64,
                source: "base".into(),
                command: Vec::new(),
                tmux: true,
                sshd: true,
            }
        });
        let mut all: Vec<ImageView> = base.into_iter().collect();
        all.extend(self.store()?.list().iter().map(view_of));
        Ok(all)
    }

    /// One image, by name.
    pub fn image(&self, name: &str) -> Result<ImageView, ManagerError> {
        if is_base(name) {
            return self
                .images()?
                .into_iter()
                .next()
                .filter(|i| i.name == BASE)
                .ok_or_else(|| ManagerError::ImageNotFound(name.to_owned()));
        }
        Ok(view_of(&self.image_named(name)?))
    }

    /// The stored image `name` (not the base image).
    fn image_named(&self, name: &str) -> Result<ImageMeta, ManagerError> {
        self.store()?
            .get(name)
            .ok_or_else(|| ManagerError::ImageNotFound(name.to_owned()))
    }

    /// For a create: the image asked for (none: the base image), what the
    /// VM keeps of it, and its disk.
    pub(super) fn image_for_create(
        &self,
        name: Option<&str>,
    ) -> Result<Option<(VmImage, PathBuf)>, ManagerError> {
        let Some(name) = name.filter(|n| !is_base(n)) else {
            return Ok(None);
        };
        let meta = self.image_named(name)?;
        if self.agent_drive.is_none() {
            return Err(ManagerError::BadRequest(format!(
                "VMs from images need the guest agent, and the daemon has none: \
                 start it with --agent (scripts/build-agent.sh builds it); image {name}"
            )));
        }
        let disk = self.store()?.rootfs(&meta);
        Ok(Some((
            VmImage {
                name: meta.name.to_string(),
                digest: Some(meta.digest.clone()).filter(|d| !d.is_empty()),
                config: meta.config.clone(),
                tmux: meta.tools.tmux,
                sshd: meta.tools.sshd,
            },
            disk,
        )))
    }

    /// Removes an image no VM was made from.
    pub fn remove_image(&self, name: &str) -> Result<ImageView, ManagerError> {
        if is_base(name) {
            return Err(ManagerError::BaseImage(format!(
                "{BASE} is the built-in base image: it cannot be removed"
            )));
        }
        let meta = self.image_named(name)?;
        let users: Vec<String> = lock(&self.vms)
            .values()
            .filter_map(|e| {
                let r = lock(&e.rec);
                r.image
                    .as_ref()
                    .filter(|i| i.name == meta.name.as_str())
                    .map(|_| r.name.to_string())
            })
            .collect();
        if !users.is_empty() {
            return Err(ManagerError::ImageInUse {
                name: meta.name.to_string(),
                vms: users,
            });
        }
        self.store()?
            .remove(meta.name.as_str())
            .map_err(|e| ManagerError::Image(Box::new(e)))?;
        self.forget_image_templates(meta.name.as_str());
        Ok(view_of(&meta))
    }

    /// Checks an upload's request before its body is read.
    pub fn check_image_request(&self, name: &str) -> Result<ImageName, ManagerError> {
        if is_base(name) {
            return Err(ManagerError::BaseImage(format!(
                "{name} names the built-in base image ({BASE}): choose another name"
            )));
        }
        let name = ImageName::new(name).map_err(image_err)?;
        self.store()?;
        Ok(name)
    }

    /// Receives an upload (at most `images.max_upload_bytes`) into the
    /// store's scratch space, then runs the build or import on a thread of
    /// its own: the answer is its log, as NDJSON ([`ImageEvent`]).
    pub fn image_job(
        &self,
        name: &str,
        source: ImageSource,
        body: &mut dyn Read,
    ) -> Result<ImageJob, ManagerError> {
        let name = self.check_image_request(name)?;
        // In the store's own scratch space: a crash leaves nothing the
        // next start does not remove (`.new-*`).
        let scratch = self
            .store()?
            .dir()
            .join(format!(".new-upload-{:016x}", rand::random::<u64>()));
        let upload = scratch.join("upload");
        let made = fs::create_dir_all(&scratch)
            .map_err(|e| image_err(ImageError::io("could not make", &scratch)(e)))
            .and_then(|()| receive(body, &upload, self.cfg.images.max_upload_bytes));
        if let Err(e) = made {
            let _ = fs::remove_dir_all(&scratch);
            return Err(e);
        }
        let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(LOG_QUEUE);
        let m = self
            .me
            .get()
            .and_then(std::sync::Weak::upgrade)
            .ok_or(ManagerError::ShuttingDown)?;
        let spawned = std::thread::Builder::new()
            .name("fcm-image".into())
            .spawn(move || {
                let result = m.run_image_job(&name, &source, &upload, &tx);
                let _ = fs::remove_dir_all(&scratch);
                let last = match result {
                    Ok(meta) => {
                        m.image_stored(&meta);
                        ImageEvent::Image(view_of(&meta))
                    }
                    Err(e) => {
                        let status = crate::daemon::api::status_of(&e);
                        ImageEvent::Error(ErrorBody {
                            error: crate::error::chain(&e),
                            status,
                            hint: e.hint(),
                        })
                    }
                };
                let _ = tx.send(event_line(&last));
            });
        if let Err(e) = spawned {
            return Err(ManagerError::BadRequest(format!(
                "no thread for the build: {e}"
            )));
        }
        Ok(ImageJob {
            rx,
            pending: Vec::new(),
            pos: 0,
            done: false,
        })
    }

    fn run_image_job(
        &self,
        name: &ImageName,
        source: &ImageSource,
        upload: &Path,
        tx: &SyncSender<Vec<u8>>,
    ) -> Result<ImageMeta, ManagerError> {
        let mut log = |line: &str| -> io::Result<()> {
            tx.send(event_line(&ImageEvent::Log(line.to_owned())))
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the client went away"))
        };
        let _turn = {
            let deadline = Instant::now() + BUILD_WAIT;
            let mut said = false;
            loop {
                match self.builds.0.try_lock() {
                    Ok(g) => break g,
                    Err(std::sync::TryLockError::Poisoned(p)) => break p.into_inner(),
                    Err(std::sync::TryLockError::WouldBlock) => {}
                }
                if Instant::now() >= deadline {
                    return Err(ManagerError::BadRequest(
                        "another build kept the builder busy for 30 minutes: try again".into(),
                    ));
                }
                if !said {
                    said = true;
                    log("waiting for another build or import to end")
                        .map_err(|e| image_err(ImageError::LogGone(e)))?;
                }
                std::thread::sleep(Duration::from_millis(200));
            }
        };
        let store = self.store()?;
        let builder = image::Builder::from_config(&self.cfg.images);
        let limits = image::Limits::from_config(&self.cfg.images);
        let made = match source {
            ImageSource::Build { dockerfile } => {
                // `FROM fcm/base` needs the base image in the builder's
                // storage (the set-up puts it there; a newer base rootfs
                // replaces it).
                let base = self.cfg.asset(&self.cfg.rootfs);
                match image::ensure_base(&builder, &base, &self.cfg.state_dir) {
                    Ok(true) => {
                        let _ = log(&format!(
                            "made {} from {}",
                            image::BASE_IMAGE,
                            base.display()
                        ));
                    }
                    Ok(false) => {}
                    Err(e) => {
                        let _ = log(&format!(
                            "warning: no {} in the builder: {e}",
                            image::BASE_IMAGE
                        ));
                    }
                }
                image::build(
                    store,
                    &builder,
                    &image::BuildRequest {
                        name: name.clone(),
                        context: upload.to_owned(),
                        dockerfile: dockerfile.clone(),
                        limits,
                    },
                    &mut log,
                )
            }
            ImageSource::Import => image::import(
                store,
                &builder,
                &image::ImportRequest {
                    name: name.clone(),
                    archive: upload.to_owned(),
                    limits,
                },
                &mut log,
            ),
        };
        made.map_err(image_err)
    }
}

fn image_err(e: ImageError) -> ManagerError {
    ManagerError::Image(Box::new(e))
}

/// Copies an upload to `to`, refusing it past `max` bytes (413).
fn receive(body: &mut dyn Read, to: &Path, max: u64) -> Result<(), ManagerError> {
    let io_err = |e| image_err(ImageError::io("could not receive the upload into", to)(e));
    let mut f = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .open(to)
        .map_err(io_err)?;
    let copied = io::copy(&mut body.take(max + 1), &mut f).map_err(io_err)?;
    if copied == 0 {
        return Err(ManagerError::BadRequest(
            "the request has no body: send a build context (a tar), or with import=1 an image archive"
                .into(),
        ));
    }
    if copied > max {
        return Err(ManagerError::TooLarge(format!(
            "the upload is larger than images.max_upload_bytes ({max} bytes)"
        )));
    }
    f.sync_all().map_err(io_err)
}

fn event_line(e: &ImageEvent) -> Vec<u8> {
    let mut line = serde_json::to_vec(e).unwrap_or_else(|_| b"{}".to_vec());
    line.push(b'\n');
    line
}

/// A build's or import's answer: its NDJSON lines as they come, a blank
/// line after [`KEEPALIVE`] of quiet; it ends after the last event.
/// Dropping it (the client went away) makes the job's next log line fail,
/// which stops the builder.
pub struct ImageJob {
    rx: Receiver<Vec<u8>>,
    pending: Vec<u8>,
    pos: usize,
    done: bool,
}

impl Read for ImageJob {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.pos >= self.pending.len() {
            if self.done {
                return Ok(0);
            }
            match self.rx.recv_timeout(KEEPALIVE) {
                Ok(line) => {
                    self.pending = line;
                    self.pos = 0;
                }
                Err(RecvTimeoutError::Timeout) => {
                    self.pending = b"\n".to_vec();
                    self.pos = 0;
                }
                Err(RecvTimeoutError::Disconnected) => self.done = true,
            }
        }
        let n = buf.len().min(self.pending.len() - self.pos);
        buf[..n].copy_from_slice(&self.pending[self.pos..self.pos + n]);
        self.pos += n;
        Ok(n)
    }
}

/// The HTTP status of a failed build or import.
pub fn image_status(e: &ImageError) -> u16 {
    use ImageError as E;
    match e {
        E::ReservedName(_) => 409,
        E::BadName(_)
        | E::Escapes { .. }
        | E::Absolute { .. }
        | E::LinkEscapes { .. }
        | E::Unscannable { .. }
        | E::NotTar(_)
        | E::NoDockerfile(_)
        | E::BuildFailed { .. } => 400,
        E::NotFound(_) => 404,
        E::TooBig { .. } | E::UploadTooBig { .. } => 413,
        E::NotInstalled { .. } => 503,
        E::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => 507,
        E::Tool { .. } | E::LogGone(_) | E::BadOutput(_) | E::Io { .. } => 500,
    }
}

/// What to do about a failed build or import.
pub(super) fn image_hint(e: &ImageError) -> Option<String> {
    use ImageError as E;
    match e {
        E::BuildFailed { .. } => {
            Some("fix the Dockerfile (the builder's words are above) and build again".into())
        }
        E::TooBig { .. } => Some(
            "raise images.max_unpacked_bytes in the daemon's config, or make the image smaller"
                .into(),
        ),
        E::Escapes { .. } | E::Absolute { .. } | E::LinkEscapes { .. } => {
            Some("the archive is refused as a whole: nothing of it was unpacked".into())
        }
        E::NotFound(_) => Some("list images with: fcm image ls".into()),
        E::Io { source, .. } if source.raw_os_error() == Some(libc::ENOSPC) => Some(
            "the state directory's file system is full: remove images (fcm image rm) or VMs".into(),
        ),
        _ => None,
    }
}
