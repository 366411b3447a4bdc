//! The hostile-input pre-scan: every upload (and every layer inside an
//! OCI or docker archive) is read with the `tar` crate before the builder
//! sees it. Refused, naming the entry: paths with `..` components or
//! absolute paths, hard links whose target is absolute or has `..`, an
//! unpacked total over the cap, layers compressed with what cannot be read
//! here (zstd, xz, bzip2). Allowed (they stay inside the image's own disk):
//! absolute symlinks, device nodes, setuid files.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::{Path, PathBuf};

use flate2::read::GzDecoder;
use tar::{Archive, EntryType};

use super::{ImageError, Limits};

/// What an upload is, by its content.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ArchiveFormat {
    /// A tar with `oci-layout` and `index.json` (also how the CLI sends
    /// an OCI layout directory).
    Oci,
    /// A `docker save` archive: a tar with `manifest.json`.
    Docker,
    /// Anything else: a root file system as a tar (optionally gzip).
    RootfsTar,
}

/// What the pre-scan found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Scanned {
    pub format: ArchiveFormat,
    /// The unpacked size of every layer, in bytes.
    pub unpacked_bytes: u64,
    /// The outer file is gzip.
    pub gzip: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Tar,
    Gzip,
    /// Metadata (JSON, or anything that is no layer).
    Json,
    Other(&'static str),
}

fn sniff(head: &[u8]) -> Kind {
    match head {
        [0x1f, 0x8b, ..] => Kind::Gzip,
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Kind::Other("zstd"),
        [0xfd, b'7', b'z', b'X', b'Z', 0, ..] => Kind::Other("xz"),
        [b'B', b'Z', b'h', ..] => Kind::Other("bzip2"),
        _ if head.len() >= 262 && &head[257..262] == b"ustar" => Kind::Tar,
        _ if head
            .iter()
            .find(|c| !c.is_ascii_whitespace())
            .is_some_and(|c| *c == b'{' || *c == b'[') =>
        {
            Kind::Json
        }
        // Not a layer (a `VERSION` file of a docker archive): a layer in
        // a format the builder does not know fails there.
        _ => Kind::Json,
    }
}

/// Reads up to 512 bytes, then gives them back in front of the rest.
/// A stream with its first bytes read and given back.
type Peeked<R> = io::Chain<io::Cursor<Vec<u8>>, R>;

fn peek<R: Read>(mut r: R) -> io::Result<(Vec<u8>, Peeked<R>)> {
    let mut head = vec![0u8; 512];
    let mut n = 0;
    while n < head.len() {
        let got = r.read(&mut head[n..])?;
        if got == 0 {
            break;
        }
        n += got;
    }
    head.truncate(n);
    Ok((head.clone(), io::Cursor::new(head).chain(r)))
}

fn components(raw: &[u8]) -> impl Iterator<Item = &[u8]> {
    raw.split(|c| *c == b'/')
}

/// Checks one tar stream (a layer, a rootfs tar, a context): paths, hard
/// links, and the running total against `budget`.
fn scan_tar<R: Read>(r: R, what: &str, used: &mut u64, limit: u64) -> Result<(), ImageError> {
    let bad = |e: io::Error| ImageError::NotTar(format!("{what}: {e}"));
    let mut ar = Archive::new(r);
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let path = entry.path_bytes().into_owned();
        let shown = String::from_utf8_lossy(&path).into_owned();
        if components(&path).any(|c| c == b"..") {
            return Err(ImageError::Escapes {
                what: what.to_owned(),
                entry: shown,
            });
        }
        if path.starts_with(b"/") {
            return Err(ImageError::Absolute {
                what: what.to_owned(),
                entry: shown,
            });
        }
        if entry.header().entry_type() == EntryType::Link {
            let target = entry
                .link_name_bytes()
                .map(|t| t.into_owned())
                .unwrap_or_default();
            if target.starts_with(b"/") || components(&target).any(|c| c == b"..") {
                return Err(ImageError::LinkEscapes {
                    what: what.to_owned(),
                    entry: shown,
                    target: String::from_utf8_lossy(&target).into_owned(),
                });
            }
        }
        *used = used.saturating_add(entry.size()).saturating_add(512);
        if *used > limit {
            return Err(ImageError::TooBig { limit });
        }
    }
    Ok(())
}

fn open(path: &Path) -> Result<(Kind, Box<dyn Read>), ImageError> {
    let f = File::open(path).map_err(ImageError::io("could not open", path))?;
    let (head, r) = peek(BufReader::new(f)).map_err(ImageError::io("could not read", path))?;
    match sniff(&head) {
        Kind::Gzip => {
            let (inner, r) =
                peek(GzDecoder::new(r)).map_err(ImageError::io("could not read", path))?;
            match sniff(&inner) {
                Kind::Tar => Ok((Kind::Gzip, Box::new(r))),
                _ => Err(ImageError::NotTar("gzip of something else".into())),
            }
        }
        Kind::Tar => Ok((Kind::Tar, Box::new(r))),
        Kind::Other(c) => Err(ImageError::NotTar(c.to_owned())),
        Kind::Json => Err(ImageError::NotTar("text".to_owned())),
    }
}

fn detect(path: &Path) -> Result<(ArchiveFormat, bool), ImageError> {
    let (kind, r) = open(path)?;
    let bad = |e: io::Error| ImageError::NotTar(e.to_string());
    let mut names = Vec::new();
    let mut ar = Archive::new(r);
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let p = entry.path_bytes();
        let p = p.strip_prefix(b"./").unwrap_or(&p);
        if [&b"oci-layout"[..], b"index.json", b"manifest.json"].contains(&p) {
            names.push(p.to_vec());
        }
    }
    let has = |n: &[u8]| names.iter().any(|x| x == n);
    let format = if has(b"oci-layout") && has(b"index.json") {
        ArchiveFormat::Oci
    } else if has(b"manifest.json") {
        ArchiveFormat::Docker
    } else {
        ArchiveFormat::RootfsTar
    };
    if kind == Kind::Gzip && format != ArchiveFormat::RootfsTar {
        return Err(ImageError::NotTar(
            "a gzip-compressed image archive: gunzip it and import the tar".into(),
        ));
    }
    Ok((format, kind == Kind::Gzip))
}

/// Detects an upload's format and pre-scans it (every layer of an image
/// archive; the whole of a rootfs tar).
pub fn scan_archive(path: &Path, limits: &Limits) -> Result<Scanned, ImageError> {
    let (format, gzip) = detect(path)?;
    let limit = limits.max_unpacked_bytes;
    let mut used = 0u64;
    let (_, r) = open(path)?;
    if format == ArchiveFormat::RootfsTar {
        scan_tar(r, "the archive", &mut used, limit)?;
        return Ok(Scanned {
            format,
            unpacked_bytes: used,
            gzip,
        });
    }
    let bad = |e: io::Error| ImageError::NotTar(e.to_string());
    let mut ar = Archive::new(r);
    let mut layer = 0;
    for entry in ar.entries().map_err(bad)? {
        let entry = entry.map_err(bad)?;
        let member = String::from_utf8_lossy(&entry.path_bytes()).into_owned();
        let raw = entry.path_bytes().into_owned();
        if components(&raw).any(|c| c == b"..") || raw.starts_with(b"/") {
            return Err(ImageError::Escapes {
                what: "the archive".into(),
                entry: member,
            });
        }
        if !matches!(
            entry.header().entry_type(),
            EntryType::Regular | EntryType::Continuous
        ) {
            continue;
        }
        let (head, body) = peek(entry).map_err(bad)?;
        let short: String = member
            .rsplit('/')
            .next()
            .unwrap_or_default()
            .chars()
            .take(19)
            .collect();
        match sniff(&head) {
            Kind::Json => {}
            Kind::Tar => {
                layer += 1;
                scan_tar(body, &format!("layer {layer} ({short})"), &mut used, limit)?;
            }
            Kind::Gzip => {
                layer += 1;
                scan_tar(
                    GzDecoder::new(body),
                    &format!("layer {layer} ({short})"),
                    &mut used,
                    limit,
                )?;
            }
            Kind::Other(compression) => {
                return Err(ImageError::Unscannable {
                    what: format!("archive member {member}"),
                    compression: compression.to_owned(),
                });
            }
        }
    }
    Ok(Scanned {
        format,
        unpacked_bytes: used,
        gzip,
    })
}

/// `root/rel` when `rel` is a relative path without `..` whose every
/// component is a real directory or file (no symlink), else `None`.
pub fn inside(root: &Path, rel: &str) -> Option<PathBuf> {
    let rel = Path::new(rel);
    let mut p = root.to_path_buf();
    for c in rel.components() {
        match c {
            std::path::Component::Normal(n) => p.push(n),
            std::path::Component::CurDir => {}
            _ => return None,
        }
        if std::fs::symlink_metadata(&p).ok()?.file_type().is_symlink() {
            return None;
        }
    }
    Some(p)
}

/// Pre-scans a build context (a tar, optionally gzip) and unpacks it into
/// `dest` (made 0700): directories, files (permission bits only, no
/// setuid), symlinks and hard links inside it; anything else is skipped.
pub fn unpack_context(context: &Path, dest: &Path, limits: &Limits) -> Result<(), ImageError> {
    let (_, r) = open(context)?;
    let mut used = 0;
    scan_tar(r, "the build context", &mut used, limits.max_unpacked_bytes)?;
    std::fs::create_dir(dest).map_err(ImageError::io("could not make", dest))?;
    crate::host::set_mode(dest, 0o700).map_err(ImageError::io("could not protect", dest))?;
    let (_, r) = open(context)?;
    let bad = |e: io::Error| ImageError::NotTar(format!("the build context: {e}"));
    let mut ar = Archive::new(r);
    ar.set_preserve_permissions(false);
    ar.set_preserve_ownerships(false);
    ar.set_unpack_xattrs(false);
    for entry in ar.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if matches!(
            entry.header().entry_type(),
            EntryType::Regular
                | EntryType::Continuous
                | EntryType::Directory
                | EntryType::Symlink
                | EntryType::Link
        ) {
            // unpack_in refuses `..` and writes through no symlink out of dest.
            entry.unpack_in(dest).map_err(bad)?;
        }
    }
    Ok(())
}

#[cfg(test)]
#[path = "scan_tests.rs"]
mod tests;
