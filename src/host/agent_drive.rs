//! The agent drive: a small read-only block device holding `fcm-agent`
//! (docs/agent.md), attached after the config drive. One file per agent
//! build, named by its content's hash and shared by every VM that booted
//! with it (`<state>/agent/agent-<hash>.img`, root's, mode 0444: it holds
//! nothing secret). A VM keeps the drive it booted with for as long as it
//! runs from that boot (pause, resume, checkpoints); its next cold boot
//! takes the current one.
//!
//! Format: a ustar archive, zero-padded to a multiple of 4 KiB, whose
//! first member `fcm-agent-drive` says `fcm-agent-drive 1`, then the
//! executable `fcm-agent`. The guest's boot script copies it to `/run`.

use std::collections::BTreeSet;
use std::fs;
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use thiserror::Error;

/// The drives' directory in the state dir.
pub const DIR: &str = "agent";
/// The first member of the archive, and its content.
pub const MAGIC: (&str, &str) = ("fcm-agent-drive", "fcm-agent-drive 1\n");
/// The agent's member.
pub const BINARY: &str = "fcm-agent";
/// Larger agents are refused (a static agent is a few MiB).
const MAX_BINARY: u64 = 64 << 20;

#[derive(Debug, Error)]
pub enum AgentDriveError {
    #[error("cannot read the agent binary {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the agent binary {path} is larger than {MAX_BINARY} bytes")]
    TooLarge { path: PathBuf },
    #[error("cannot write the agent drive {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where the drive named `name` is.
pub fn path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join(DIR).join(name)
}

/// The drive's bytes for an agent binary.
fn image(binary: &[u8]) -> io::Result<Vec<u8>> {
    super::config_drive::padded_tar(&[
        (MAGIC.0, MAGIC.1.as_bytes(), 0o644),
        (BINARY, binary, 0o755),
    ])
}

/// The drive of the agent at `bin`, made once: its name.
pub fn ensure(state_dir: &Path, bin: &Path) -> Result<String, AgentDriveError> {
    let read = |source| AgentDriveError::Read {
        path: bin.to_owned(),
        source,
    };
    let len = fs::metadata(bin).map_err(read)?.len();
    if len > MAX_BINARY {
        return Err(AgentDriveError::TooLarge {
            path: bin.to_owned(),
        });
    }
    let binary = fs::read(bin).map_err(read)?;
    let digest = ring::digest::digest(&ring::digest::SHA256, &binary);
    let hex: String = digest.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    let name = format!("agent-{hex}.img");
    let dest = path(state_dir, &name);
    if dest.is_file() {
        return Ok(name);
    }
    let write = |source| AgentDriveError::Write {
        path: dest.clone(),
        source,
    };
    let dir = state_dir.join(DIR);
    fs::create_dir_all(&dir).map_err(write)?;
    crate::host::set_mode(&dir, 0o755).map_err(write)?;
    let bytes = image(&binary).map_err(write)?;
    let tmp = dir.join(format!(".{name}.tmp"));
    let made = (|| {
        let mut f = fs::File::create(&tmp)?;
        f.write_all(&bytes)?;
        f.sync_all()?;
        crate::host::set_mode(&tmp, 0o444)?;
        fs::rename(&tmp, &dest)?;
        crate::host::fs::sync_dir(&dir)
    })();
    if let Err(e) = made {
        let _ = fs::remove_file(&tmp);
        return Err(write(e));
    }
    Ok(name)
}

/// Removes the drives no VM uses any more (`keep`: the names in use).
pub fn sweep(state_dir: &Path, keep: &BTreeSet<String>) -> Vec<String> {
    let mut removed = Vec::new();
    for e in fs::read_dir(state_dir.join(DIR))
        .into_iter()
        .flatten()
        .flatten()
    {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with("agent-") && name.ends_with(".img") && !keep.contains(&name) {
            if fs::remove_file(e.path()).is_ok() {
                removed.push(name);
            }
        } else if name.starts_with('.') && name.ends_with(".tmp") {
            let _ = fs::remove_file(e.path());
        }
    }
    removed
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_drive_holds_the_agent_once_per_build() {
        let dir = tempfile::tempdir().expect("tempdir");
        let bin = dir.path().join("fcm-agent");
        fs::write(&bin, b"\x7fELF pretend agent").expect("bin");
        let state = dir.path().join("state");
        let name = ensure(&state, &bin).expect("ensure");
        assert_eq!(ensure(&state, &bin).expect("again"), name);
        let img = path(&state, &name);
        let meta = fs::metadata(&img).expect("img");
        assert_eq!(meta.len() % 4096, 0);
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(meta.permissions().mode() & 0o777, 0o444);
        let mut a = tar::Archive::new(fs::File::open(&img).expect("open"));
        let mut seen = Vec::new();
        for e in a.entries().expect("entries") {
            let mut e = e.expect("entry");
            let mut data = Vec::new();
            e.read_to_end(&mut data).expect("read");
            seen.push((e.path().expect("path").display().to_string(), data));
        }
        assert_eq!(seen[0], (MAGIC.0.into(), MAGIC.1.as_bytes().to_vec()));
        assert_eq!(seen[1], (BINARY.into(), b"\x7fELF pretend agent".to_vec()));
        // Another build, another drive; the unused one is swept.
        fs::write(&bin, b"\x7fELF newer agent").expect("bin");
        let newer = ensure(&state, &bin).expect("newer");
        assert_ne!(newer, name);
        let keep: BTreeSet<String> = [newer.clone()].into();
        assert_eq!(sweep(&state, &keep), vec![name]);
        assert!(path(&state, &newer).is_file());
    }
}
