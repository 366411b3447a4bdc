//! Images: VMs from a Dockerfile or an OCI image (issue 20), the host side.
//!
//! | module | what |
//! |---|---|
//! | `name` | image names, checked at the boundary |
//! | `scan` | the hostile-input pre-scan of uploads and their layers, format detection |
//! | `builder` | running buildah (or podman/docker for a build): deadlines, logs, clean-up |
//! | `convert` | an image in the builder's storage → an ext4 `rootfs.img`, its config and facts |
//! | `base` | `fcm/base` in the builder's storage, made from the base guest's rootfs |
//! | `store` | `<state>/images/`: written whole or not at all |
//!
//! The flow of a build: the daemon saves the client's context (a tar) →
//! [`build`] pre-scans and unpacks it into a private stage dir → the builder
//! builds it as a temporary image → [`convert`] makes `rootfs.img` in the
//! store's stage dir → the store renames it into place. An import takes the
//! same path from [`import`], loading the archive with the builder.

mod base;
mod builder;
mod convert;
mod name;
mod scan;
mod store;

use std::path::PathBuf;

use thiserror::Error;

pub use base::{BASE_IMAGE, ensure_base};
pub use builder::{Builder, BuilderKind, LogSink};
pub use convert::{Tools, image_size_for};
pub use name::ImageName;
pub use scan::{ArchiveFormat, Scanned, scan_archive};
pub use store::{ImageMeta, Source, Store};

/// The caps on what an upload may be and unpack to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The upload itself (the daemon enforces it while receiving).
    pub max_upload_bytes: u64,
    /// The unpacked size of an archive (every layer counted) and of the
    /// image's tree before conversion.
    pub max_unpacked_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_upload_bytes: 4 << 30,
            max_unpacked_bytes: 8 << 30,
        }
    }
}

impl Limits {
    pub fn from_config(c: &crate::config::ImagesConfig) -> Self {
        Self {
            max_upload_bytes: c.max_upload_bytes,
            max_unpacked_bytes: c.max_unpacked_bytes,
        }
    }
}

impl Builder {
    /// The builder the daemon's `images` section asks for.
    pub fn from_config(c: &crate::config::ImagesConfig) -> Self {
        use crate::config::ImageBuilder as B;
        let kind = match c.builder {
            B::Buildah => BuilderKind::Buildah,
            B::Podman => BuilderKind::Podman,
            B::Docker => BuilderKind::Docker,
        };
        Self::new(
            kind,
            c.storage.clone(),
            std::time::Duration::from_secs(c.build_timeout_secs),
        )
    }
}

/// A build: a context the daemon saved from the client's upload.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub name: ImageName,
    /// A tar file of the build context (optionally gzip).
    pub context: PathBuf,
    /// The Dockerfile's path inside the context (default `Dockerfile`).
    pub dockerfile: Option<String>,
    pub limits: Limits,
}

/// An import: an archive the daemon saved from the client's upload.
#[derive(Debug, Clone)]
pub struct ImportRequest {
    pub name: ImageName,
    /// An OCI archive, a `docker save` archive or a root file-system tar
    /// (optionally gzip).
    pub archive: PathBuf,
    pub limits: Limits,
}

fn gib(n: u64) -> String {
    if n.is_multiple_of(1 << 30) {
        format!("{} GiB", n >> 30)
    } else {
        format!("{n} bytes")
    }
}

#[derive(Debug, Error)]
pub enum ImageError {
    #[error(
        "image name {0:?} is not valid: it must start with [a-z0-9], then [a-z0-9._/:-], at most 128 characters, without `..`"
    )]
    BadName(String),
    #[error("{0} is the built-in base image: choose another name")]
    ReservedName(String),
    #[error("{program} is not installed on the daemon's host: apt-get install {package}")]
    NotInstalled { program: String, package: String },
    #[error("{what}: entry {entry} leaves the image")]
    Escapes { what: String, entry: String },
    #[error("{what}: entry {entry} is an absolute path")]
    Absolute { what: String, entry: String },
    #[error("{what}: hard link {entry} points outside the image ({target})")]
    LinkEscapes {
        what: String,
        entry: String,
        target: String,
    },
    #[error(
        "{what} is compressed with {compression}, which fcm cannot check before unpacking: save the image with gzip or uncompressed layers"
    )]
    Unscannable { what: String, compression: String },
    #[error("the image unpacks to more than {} (images.max_unpacked_bytes)", gib(*limit))]
    TooBig { limit: u64 },
    #[error("the upload is larger than {} (images.max_upload_bytes)", gib(*limit))]
    UploadTooBig { limit: u64 },
    #[error(
        "the upload is not a tar archive ({0}): send a build context, an OCI or docker archive, or a root file-system tarball"
    )]
    NotTar(String),
    #[error("the context has no {0}: name the Dockerfile with -f")]
    NoDockerfile(String),
    #[error("the build failed: `{cmd}` {status}; its last lines:\n{tail}")]
    BuildFailed {
        cmd: String,
        status: String,
        tail: String,
    },
    #[error("`{cmd}` failed: {detail}")]
    Tool { cmd: String, detail: String },
    #[error("the build was stopped: its log could not be delivered (the client went away)")]
    LogGone(#[source] std::io::Error),
    #[error("the builder's output could not be read: {0}")]
    BadOutput(String),
    #[error("no image named {0}: see fcm image ls")]
    NotFound(String),
    #[error("{what} {path}")]
    Io {
        what: &'static str,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// What an [`ImageError`] is, for the daemon's status codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// The user's input: a name, an upload, a Dockerfile, a failing build
    /// (400).
    BadInput,
    /// No such image (404).
    NotFound,
    /// A prerequisite is missing on the daemon's host (503).
    Unavailable,
    /// The client went away mid-build: nobody to answer.
    ClientGone,
    /// The host failed (500).
    Host,
}

impl ImageError {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Self::BadName(_)
            | Self::ReservedName(_)
            | Self::Escapes { .. }
            | Self::Absolute { .. }
            | Self::LinkEscapes { .. }
            | Self::Unscannable { .. }
            | Self::TooBig { .. }
            | Self::UploadTooBig { .. }
            | Self::NotTar(_)
            | Self::NoDockerfile(_)
            | Self::BuildFailed { .. } => ErrorKind::BadInput,
            Self::NotFound(_) => ErrorKind::NotFound,
            Self::NotInstalled { .. } => ErrorKind::Unavailable,
            Self::LogGone(_) => ErrorKind::ClientGone,
            Self::Tool { .. } | Self::BadOutput(_) | Self::Io { .. } => ErrorKind::Host,
        }
    }

    pub(crate) fn io(
        what: &'static str,
        path: impl Into<PathBuf>,
    ) -> impl FnOnce(std::io::Error) -> Self {
        let path = path.into();
        move |source| Self::Io { what, path, source }
    }
}

/// The daemon caps an upload while receiving it; this checks the file it saved.
fn check_upload(path: &std::path::Path, limits: &Limits) -> Result<(), ImageError> {
    let len = std::fs::metadata(path)
        .map_err(ImageError::io("could not read", path))?
        .len();
    if len > limits.max_upload_bytes {
        return Err(ImageError::UploadTooBig {
            limit: limits.max_upload_bytes,
        });
    }
    Ok(())
}

/// Builds the request's context into an image and stores it under its name.
/// The builder's output lines go to `log` as they come; when `log` fails
/// the build is killed. On any error nothing is stored and the builder's
/// temporary image and container are gone.
pub fn build(
    store: &Store,
    builder: &Builder,
    req: &BuildRequest,
    log: &mut LogSink<'_>,
) -> Result<ImageMeta, ImageError> {
    check_upload(&req.context, &req.limits)?;
    let stage = store.stage()?;
    let unpacked = stage.dir().join("context");
    scan::unpack_context(&req.context, &unpacked, &req.limits)?;
    let dockerfile = req.dockerfile.as_deref().unwrap_or("Dockerfile");
    let df = scan::inside(&unpacked, dockerfile)
        .ok_or_else(|| ImageError::NoDockerfile(dockerfile.to_owned()))?;
    if !df.is_file() {
        return Err(ImageError::NoDockerfile(dockerfile.to_owned()));
    }
    let tmp = builder::temp_name();
    let result = builder
        .build(&unpacked, &df, &tmp, log)
        .and_then(|()| convert::convert(builder, &tmp, stage.dir(), &req.limits, log));
    builder.remove_image(&tmp);
    let _ = std::fs::remove_dir_all(&unpacked);
    let _ = std::fs::remove_dir_all(builder::scratch_of(&unpacked));
    let (config, tools, digest) = result?;
    stage.commit(&req.name, Source::Build, digest, config, tools)
}

/// Imports the request's archive as an image stored under its name.
pub fn import(
    store: &Store,
    builder: &Builder,
    req: &ImportRequest,
    log: &mut LogSink<'_>,
) -> Result<ImageMeta, ImageError> {
    check_upload(&req.archive, &req.limits)?;
    let scanned = scan_archive(&req.archive, &req.limits)?;
    let stage = store.stage()?;
    let tmp = builder::temp_name();
    let result = builder
        .load(&req.archive, scanned.format, &tmp, log)
        .and_then(|()| convert::convert(builder, &tmp, stage.dir(), &req.limits, log));
    builder.remove_image(&tmp);
    let (config, tools, digest) = result?;
    let source = match scanned.format {
        ArchiveFormat::Oci => Source::OciArchive,
        ArchiveFormat::Docker => Source::DockerArchive,
        ArchiveFormat::RootfsTar => Source::RootfsTar,
    };
    stage.commit(&req.name, source, digest, config, tools)
}
