//! The config drive: a small read-only block device holding a guest's
//! identity, attached beside its disk at every launch, so create never
//! rewrites the disk image. The guest's boot script (`/etc/fcm/rc.sh`)
//! reads it before sshd starts.
//!
//! Format: a ustar archive, zero-padded to a multiple of 4 KiB (block
//! devices come in whole sectors), with these regular files, mode 0600,
//! owned by root:
//!
//! | member | content |
//! |---|---|
//! | `fcm-config` | `fcm-config 1` (the format's name and version) |
//! | `ssh_host_ed25519_key` | the guest's SSH host key, OpenSSH private key format |
//! | `ssh_host_ed25519_key.pub` | its public half, one line |
//! | `authorized_keys` | the keys that may log in as root, one per line |
//! | `fcm-image.json` | a VM made from an image only: how to run it (`fcm_proto::ImageConfig`) |
//!
//! The guest treats every member as data: it copies the files it knows
//! into place and runs nothing from the drive.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The file name of the drive in a VM's directory.
pub const FILE: &str = "config.img";
/// The first member of the archive, and its content.
pub const MAGIC: (&str, &str) = ("fcm-config", "fcm-config 1\n");
/// Drive sizes are a multiple of this.
const ALIGN: usize = 4096;

#[derive(Debug, Error)]
pub enum ConfigDriveError {
    #[error("could not generate an SSH host key")]
    KeyGen(#[source] io::Error),
    #[error("could not encode the SSH host key: {0}")]
    KeyEncode(String),
    #[error("could not write the config drive {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// A guest's SSH host key pair in OpenSSH formats.
pub struct HostKey {
    /// The private key file (`-----BEGIN OPENSSH PRIVATE KEY-----`…).
    pub private: String,
    /// The public key line, `ssh-ed25519 AAAA… <comment>`, no newline.
    pub public: String,
}

/// Makes an ed25519 host key in process from 32 bytes of the kernel's
/// randomness (no `ssh-keygen`: a process costs more than the key).
pub fn host_key(comment: &str) -> Result<HostKey, ConfigDriveError> {
    use rand::RngCore;
    use ssh_key::private::{Ed25519Keypair, KeypairData};
    let mut seed = zeroize::Zeroizing::new([0u8; 32]);
    rand::rngs::OsRng
        .try_fill_bytes(seed.as_mut())
        .map_err(|e| ConfigDriveError::KeyGen(io::Error::other(e)))?;
    let pair = Ed25519Keypair::from_seed(&seed);
    let key = ssh_key::PrivateKey::new(KeypairData::Ed25519(pair), comment)
        .map_err(|e| ConfigDriveError::KeyEncode(e.to_string()))?;
    let private = key
        .to_openssh(ssh_key::LineEnding::LF)
        .map_err(|e| ConfigDriveError::KeyEncode(e.to_string()))?;
    let public = key
        .public_key()
        .to_openssh()
        .map_err(|e| ConfigDriveError::KeyEncode(e.to_string()))?;
    Ok(HostKey {
        private: private.to_string(),
        public,
    })
}

/// What the drive holds.
pub struct Identity<'a> {
    pub host_key: &'a HostKey,
    /// Public key lines; each is written on a line of its own.
    pub authorized_keys: &'a [&'a str],
    /// A VM made from an image: how to run it
    /// (`fcm_proto::IMAGE_CONFIG_MEMBER`, JSON).
    pub image: Option<&'a fcm_proto::ImageConfig>,
}

/// The drive's bytes: the archive, padded.
pub fn image(id: &Identity<'_>) -> io::Result<Vec<u8>> {
    let mut authorized = String::new();
    for k in id.authorized_keys {
        authorized.push_str(k.trim_end());
        authorized.push('\n');
    }
    let public = format!("{}\n", id.host_key.public);
    let image = id
        .image
        .map(serde_json::to_vec)
        .transpose()
        .map_err(io::Error::other)?;
    let mut members = vec![
        (MAGIC.0, MAGIC.1.as_bytes(), 0o600),
        (
            "ssh_host_ed25519_key",
            id.host_key.private.as_bytes(),
            0o600,
        ),
        ("ssh_host_ed25519_key.pub", public.as_bytes(), 0o600),
        ("authorized_keys", authorized.as_bytes(), 0o600),
    ];
    if let Some(json) = &image {
        members.push((fcm_proto::IMAGE_CONFIG_MEMBER, json.as_slice(), 0o600));
    }
    padded_tar(&members)
}

/// A ustar archive of regular files (name, content, mode), owned by
/// root, time 0, zero-padded to whole 4 KiB blocks: what fcm's drives are.
pub fn padded_tar(members: &[(&str, &[u8], u32)]) -> io::Result<Vec<u8>> {
    let size: usize = members.iter().map(|m| m.1.len() + 1024).sum();
    let mut tar = tar::Builder::new(Vec::with_capacity(size + ALIGN * 2));
    for (name, data, mode) in members {
        let mut h = tar::Header::new_ustar();
        h.set_path(name)?;
        h.set_size(data.len() as u64);
        h.set_mode(*mode);
        h.set_uid(0);
        h.set_gid(0);
        h.set_mtime(0);
        h.set_entry_type(tar::EntryType::Regular);
        h.set_cksum();
        tar.append(&h, *data)?;
    }
    let mut bytes = tar.into_inner()?;
    bytes.resize(bytes.len().div_ceil(ALIGN) * ALIGN, 0);
    Ok(bytes)
}

/// The `authorized_keys` member of the drive at `path` (a fork gets its
/// source's), at most 64 KiB.
pub fn read_authorized_keys(path: &Path) -> io::Result<String> {
    use std::io::Read;
    let mut archive = tar::Archive::new(File::open(path)?);
    for entry in archive.entries()? {
        let entry = entry?;
        if entry.path()?.as_os_str() == "authorized_keys" {
            let mut text = String::new();
            entry.take(64 << 10).read_to_string(&mut text)?;
            return Ok(text);
        }
    }
    Err(io::Error::new(
        io::ErrorKind::NotFound,
        format!("{} has no authorized_keys", path.display()),
    ))
}

/// Writes the drive to `path` (which must not exist), mode 0600. Not
/// synced here: the caller syncs it with the disk, off the create's path.
pub fn write(path: &Path, id: &Identity<'_>) -> Result<(), ConfigDriveError> {
    let err = |source| ConfigDriveError::Write {
        path: path.to_owned(),
        source,
    };
    let bytes = image(id).map_err(err)?;
    let result = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f: File| f.write_all(&bytes));
    if let Err(e) = result {
        let _ = fs::remove_file(path);
        return Err(err(e));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn members(bytes: &[u8]) -> Vec<(String, u32, u64, Vec<u8>)> {
        let mut a = tar::Archive::new(bytes);
        a.entries()
            .expect("entries")
            .map(|e| {
                let mut e = e.expect("entry");
                let h = e.header().clone();
                let mut data = Vec::new();
                e.read_to_end(&mut data).expect("read");
                (
                    h.path().expect("path").display().to_string(),
                    h.mode().expect("mode"),
                    h.uid().expect("uid"),
                    data,
                )
            })
            .collect()
    }

    #[test]
    fn the_drive_is_a_padded_archive_of_the_identity() {
        let key = host_key("fcm-test").expect("key");
        assert!(
            key.private
                .starts_with("-----BEGIN OPENSSH PRIVATE KEY-----\n")
        );
        assert!(key.public.starts_with("ssh-ed25519 AAAA"), "{}", key.public);
        assert!(key.public.ends_with(" fcm-test"), "{}", key.public);
        let bytes = image(&Identity {
            host_key: &key,
            authorized_keys: &["ssh-ed25519 AAAAdaemon fcm-daemon", "ssh-rsa AAAAuser me\n"],
            image: None,
        })
        .expect("image");
        assert_eq!(bytes.len() % ALIGN, 0);
        assert_eq!(&bytes[257..262], b"ustar", "not a ustar archive");
        let m = members(&bytes);
        let names: Vec<&str> = m.iter().map(|(n, ..)| n.as_str()).collect();
        assert_eq!(
            names,
            [
                "fcm-config",
                "ssh_host_ed25519_key",
                "ssh_host_ed25519_key.pub",
                "authorized_keys"
            ]
        );
        assert!(
            m.iter()
                .all(|(_, mode, uid, _)| *mode == 0o600 && *uid == 0)
        );
        assert_eq!(m[0].3, MAGIC.1.as_bytes());
        assert_eq!(m[1].3, key.private.as_bytes());
        assert_eq!(m[2].3, format!("{}\n", key.public).as_bytes());
        assert_eq!(
            m[3].3,
            b"ssh-ed25519 AAAAdaemon fcm-daemon\nssh-rsa AAAAuser me\n"
        );
    }

    #[test]
    fn keys_are_fresh_and_openssh_reads_them() {
        let a = host_key("a").expect("key");
        let b = host_key("b").expect("key");
        assert_ne!(a.public.split(' ').nth(1), b.public.split(' ').nth(1));
        if crate::host::find_program(Path::new("ssh-keygen")).is_none() {
            eprintln!("skipping the ssh-keygen check: not installed");
            return;
        }
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("k");
        fs::write(&path, &a.private).expect("write");
        crate::host::set_mode(&path, 0o600).expect("chmod");
        let derived = crate::host::run(
            "ssh-keygen",
            ["-y".as_ref(), "-f".as_ref(), path.as_os_str()],
        )
        .expect("ssh-keygen -y");
        assert_eq!(
            derived.split_whitespace().take(2).collect::<Vec<_>>(),
            a.public.split_whitespace().take(2).collect::<Vec<_>>()
        );
    }

    #[test]
    fn write_is_0600_and_never_overwrites() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join(FILE);
        let key = host_key("t").expect("key");
        let id = Identity {
            host_key: &key,
            authorized_keys: &[],
            image: None,
        };
        write(&path, &id).expect("write");
        let meta = fs::metadata(&path).expect("meta");
        assert_eq!(meta.permissions().mode() & 0o777, 0o600);
        assert_eq!(meta.len() as usize % ALIGN, 0);
        assert!(
            write(&path, &id).is_err(),
            "an existing drive was overwritten"
        );
    }
}
