//! The on-disk record of each VM: `<state>/<id>/config.json`, written atomically.

use std::collections::BTreeMap;
use std::fs;
use std::io;
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use thiserror::Error;

use super::lifecycle::VmState;
use crate::host;
use crate::host::network::VmNic;
use crate::host::vmm::Backend;
use crate::names::{VmId, VmName};
use crate::wire::api::{Expose, VmView};
use crate::wire::e2b::E2bInfo;

#[derive(Debug, Error)]
pub enum StoreError {
    #[error("could not write {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not read {path}")]
    Read {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{path} is not a valid VM record")]
    Parse {
        path: PathBuf,
        #[source]
        source: serde_json::Error,
    },
}

/// `config.json`: the spec's fields (`id`, `name`, `ip`, `state`, `expose`) and
/// what fcm needs besides to restart and clean up a VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmRecord {
    pub id: VmId,
    pub name: VmName,
    pub ip: Ipv4Addr,
    pub state: VmState,
    pub expose: Option<Expose>,
    pub backend: Backend,
    pub mac: String,
    pub cpus: u8,
    pub memory_mib: u32,
    pub tap: String,
    /// Unix seconds.
    pub created_at: u64,
    /// VMM process while running.
    #[serde(default)]
    pub pid: Option<u32>,
    /// The guest's SSH host public key, pinned by clients.
    #[serde(default)]
    pub host_key: Option<String>,
    /// Size of `rootfs.img` in bytes (absent in records made before it was kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_bytes: Option<u64>,
    /// Idle sleep: paused after this many idle seconds (none: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause_secs: Option<u64>,
    /// Paused (or pausing, resuming) by idle sleep rather than by a user:
    /// a use of the VM wakes it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle_paused: bool,
    /// The agent drive this boot of the VM has (`host::agent_drive`), and
    /// with it the agent's channel; none: the VM is reached over SSH only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub agent_drive: Option<String>,
    /// The guest's RAM is a memfd its VMM maps shared (`vmm::Ram::Shared`):
    /// the VM can be forked, and its saved states need that RAM model.
    /// VMs made before forks (false) keep their VMM's own RAM.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub shared_ram: bool,
    /// A fork (or a VM restored from another's memory) that has not yet
    /// taken its own identity: its guest still believes it is its source.
    /// Recovery undoes it, never puts it on the bridge.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub identity_pending: bool,
    /// The image the VM was made from, with what a boot of it needs
    /// (absent: the base image, booted by its own init).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<VmImage>,
    /// No public URL through Caddy, ever (an E2B sandbox: reached by its
    /// own names, and a Caddy reload in the middle of its requests would
    /// cut them). Its forks inherit it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub no_url: bool,
}

/// What a VM keeps of its image: enough to boot it again (its config goes
/// on the config drive at every boot) even after the image is rebuilt
/// under the same name.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VmImage {
    pub name: String,
    #[serde(default)]
    pub digest: Option<String>,
    #[serde(default)]
    pub config: fcm_proto::ImageConfig,
    /// The image has tmux (`fcm console`).
    #[serde(default)]
    pub tmux: bool,
    /// The image has sshd (`fcm ssh`).
    #[serde(default)]
    pub sshd: bool,
}

impl VmRecord {
    /// The VM's tap, MAC and address, for the network layer.
    pub fn nic(&self) -> VmNic {
        VmNic {
            id: self.id.clone(),
            ip: self.ip,
            mac: self.mac.clone(),
        }
    }

    /// The VM as the API shows it.
    pub fn view(&self) -> VmView {
        VmView {
            id: self.id.to_string(),
            name: self.name.to_string(),
            ip: self.ip,
            state: self.state.as_str().into(),
            backend: self.backend.as_str().into(),
            cpus: self.cpus,
            memory_mib: self.memory_mib,
            disk_bytes: self.disk_bytes,
            mac: self.mac.clone(),
            tap: self.tap.clone(),
            created_at: self.created_at,
            pid: self.pid,
            url: self
                .expose
                .as_ref()
                .map(|e| format!("https://{}", e.domain)),
            expose: self.expose.clone(),
            warnings: Vec::new(),
            ready: None,
            ssh_ready: None,
            idle_pause_secs: self.idle_pause_secs,
            idle_paused: self.idle_paused,
            agent: self.agent_drive.is_some(),
            e2b: None,
            image: self.image.as_ref().map(|i| i.name.clone()),
            host: None,
        }
    }
}

pub fn vm_dir(state_dir: &Path, id: &VmId) -> PathBuf {
    state_dir.join(id.as_str())
}

pub fn record_path(state_dir: &Path, id: &VmId) -> PathBuf {
    vm_dir(state_dir, id).join("config.json")
}

pub fn save(state_dir: &Path, rec: &VmRecord) -> Result<(), StoreError> {
    save_in(&vm_dir(state_dir, &rec.id), rec)
}

/// Writes the record into `dir` (a VM directory, or one about to become
/// one), atomically.
pub fn save_in(dir: &Path, rec: &VmRecord) -> Result<(), StoreError> {
    let path = dir.join("config.json");
    let mut data = serde_json::to_vec_pretty(rec).map_err(|e| StoreError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    data.push(b'\n');
    host::write_atomic(&path, &data, 0o600).map_err(|source| StoreError::Write { path, source })
}

pub fn load(path: &Path) -> Result<VmRecord, StoreError> {
    let text = fs::read_to_string(path).map_err(|source| StoreError::Read {
        path: path.to_owned(),
        source,
    })?;
    serde_json::from_str(&text).map_err(|source| StoreError::Parse {
        path: path.to_owned(),
        source,
    })
}

/// Entries of the state dir: directories named like VM ids, with their
/// record if it parses. Other files (the token, assets) are ignored.
pub fn scan(state_dir: &Path) -> io::Result<Vec<(VmId, Result<VmRecord, StoreError>)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(state_dir)? {
        let entry = entry?;
        let name = entry.file_name();
        let Some(id) = name.to_str().and_then(|n| VmId::parse(n).ok()) else {
            continue;
        };
        if !entry.file_type()?.is_dir() {
            continue;
        }
        let rec = load(&record_path(state_dir, &id));
        out.push((id, rec));
    }
    out.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(out)
}

/// A sandbox of the E2B API (`daemon::e2b`): the VM's record's E2B block,
/// kept beside it in `<state>/<id>/e2b.json` (atomic, 0600), gone with
/// the VM's directory.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2bRecord {
    pub sandbox_id: String,
    pub template: String,
    #[serde(default)]
    pub metadata: BTreeMap<String, String>,
    /// Given to every process the sandbox starts through the E2B API.
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Unix seconds.
    pub started_at: u64,
    /// When housekeeping ends it (Unix seconds); none while paused.
    #[serde(default)]
    pub end_at: Option<u64>,
    #[serde(default)]
    pub auto_pause: bool,
}

impl E2bRecord {
    pub fn info(&self) -> E2bInfo {
        E2bInfo {
            sandbox_id: self.sandbox_id.clone(),
            template: self.template.clone(),
            metadata: self.metadata.clone(),
            end_at: self.end_at,
            auto_pause: self.auto_pause,
        }
    }
}

pub fn e2b_path(state_dir: &Path, id: &VmId) -> PathBuf {
    vm_dir(state_dir, id).join("e2b.json")
}

/// The VM's E2B block, if it has one (and it parses).
pub fn load_e2b(state_dir: &Path, id: &VmId) -> Option<E2bRecord> {
    let text = fs::read(e2b_path(state_dir, id)).ok()?;
    serde_json::from_slice(&text).ok()
}

pub fn save_e2b(state_dir: &Path, id: &VmId, rec: &E2bRecord) -> Result<(), StoreError> {
    let path = e2b_path(state_dir, id);
    let data = serde_json::to_vec_pretty(rec).map_err(|e| StoreError::Write {
        path: path.clone(),
        source: io::Error::other(e),
    })?;
    host::write_atomic(&path, &data, 0o600).map_err(|source| StoreError::Write { path, source })
}

#[cfg(test)]
mod tests {
    use super::*;

    pub fn sample(id: &str, name: &str) -> VmRecord {
        VmRecord {
            id: VmId::parse(id).expect("id"),
            name: VmName::parse(name).expect("name"),
            ip: Ipv4Addr::new(172, 16, 0, 50),
            state: VmState::Running,
            expose: Some(Expose {
                port: 8000,
                domain: format!("{name}.1-2-3-4.sslip.io"),
            }),
            backend: Backend::Qemu,
            mac: "06:00:ac:10:00:32".into(),
            cpus: 1,
            memory_mib: 512,
            tap: format!("tap_{id}"),
            created_at: 1,
            pid: Some(42),
            host_key: None,
            disk_bytes: Some(10 << 30),
            idle_pause_secs: None,
            idle_paused: false,
            agent_drive: None,
            shared_ram: false,
            identity_pending: false,
            image: None,
            no_url: false,
        }
    }

    #[test]
    fn save_load_scan_round_trip() {
        let dir = tempfile::tempdir().expect("tempdir");
        let rec = sample("8i5agfx2", "cosmic-nova");
        fs::create_dir(vm_dir(dir.path(), &rec.id)).expect("mkdir");
        save(dir.path(), &rec).expect("save");
        fs::write(dir.path().join(".token"), "x").expect("token");
        fs::create_dir(dir.path().join("not-an-id")).expect("mkdir");
        let found = scan(dir.path()).expect("scan");
        assert_eq!(found.len(), 1);
        assert_eq!(found[0].1.as_ref().expect("record"), &rec);
        let json: serde_json::Value =
            serde_json::from_slice(&fs::read(record_path(dir.path(), &rec.id)).expect("read"))
                .expect("json");
        for key in ["id", "name", "ip", "state", "expose"] {
            assert!(json.get(key).is_some(), "config.json lacks {key}");
        }
        assert_eq!(json["state"], "running");
        assert_eq!(json["expose"]["port"], 8000);
    }

    #[test]
    fn an_e2b_block_lives_beside_the_record() {
        let dir = tempfile::tempdir().expect("tempdir");
        let id = VmId::parse("8i5agfx2").expect("id");
        fs::create_dir(vm_dir(dir.path(), &id)).expect("mkdir");
        assert_eq!(load_e2b(dir.path(), &id), None);
        let b = E2bRecord {
            sandbox_id: "iabc".into(),
            template: "base".into(),
            metadata: [("k".to_owned(), "v".to_owned())].into(),
            env_vars: [("SECRET".to_owned(), "x".to_owned())].into(),
            started_at: 10,
            end_at: Some(25),
            auto_pause: true,
        };
        save_e2b(dir.path(), &id, &b).expect("save");
        assert_eq!(load_e2b(dir.path(), &id).as_ref(), Some(&b));
        // The view shows no environment variables.
        let shown = serde_json::to_string(&b.info()).expect("json");
        assert!(
            shown.contains("\"k\":\"v\"") && !shown.contains("SECRET"),
            "{shown}"
        );
    }

    #[test]
    fn corrupt_record_is_reported_not_fatal() {
        let dir = tempfile::tempdir().expect("tempdir");
        fs::create_dir(dir.path().join("abcdefgh")).expect("mkdir");
        fs::write(dir.path().join("abcdefgh/config.json"), "{").expect("write");
        let found = scan(dir.path()).expect("scan");
        assert!(matches!(found[0].1, Err(StoreError::Parse { .. })));
    }
}
