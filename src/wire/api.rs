//! Requests and responses of the HTTP API (see docs/openapi.yaml).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

pub use super::size::DiskSize;

/// Body of `POST /vms`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_public_key: Option<String>,
    /// Return only once the guest takes operations (exec, cp, consoles)
    /// (default true). `wait_ssh` is the same, by its older name.
    #[serde(default, alias = "wait_ssh", skip_serializing_if = "Option::is_none")]
    pub wait_ready: Option<bool>,
    /// Disk size: bytes, or a size such as `"20G"` (default 10 GiB).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskSize>,
    /// Pause the VM after this many seconds with no console attached and
    /// no network traffic; 0 turns it off. Default: the daemon's
    /// `idle_pause_secs` (off unless set).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause_secs: Option<u64>,
    /// `VM:CHECKPOINT`: a new VM from that checkpoint's saved state
    /// (running on from it, with its own identity) instead of a boot; its
    /// size is the checkpoint's.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<String>,
    /// `false`: no public URL through Caddy for this VM (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<bool>,
    /// Boot the kernel even where the daemon has a template of this size
    /// (default false: a warm create restores the template).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cold: Option<bool>,
    /// The image to make the VM from (`fcm image ls`; default: the base
    /// image, `fcm/base`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// In a cluster: the host to make it on (default: the live host with
    /// the most free memory; with `from`, the checkpoint's VM's host).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

/// Body of `POST /vms/{vm}/start`, `/resume` and `/checkpoints/{cp}/restore`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    /// As in [`CreateRequest::wait_ready`] (alias `wait_ssh`).
    #[serde(default, alias = "wait_ssh", skip_serializing_if = "Option::is_none")]
    pub wait_ready: Option<bool>,
}

/// Body of `POST /vms/{vm}/stop` (empty: no options yet; a stop has no
/// guest to wait for).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StopRequest {}

/// Body of `POST /vms/{vm}/pause` (empty: no options yet).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PauseRequest {}

/// Body of `POST /vms/{vm}/checkpoints`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Body of `POST /vms/{vm}/fork`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ForkRequest {
    /// How many forks (default 1).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub count: Option<u32>,
    /// The fork's name; with a count above 1, the forks are NAME-1,
    /// NAME-2… (default: random names, as create gives).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// The answer of `POST /vms/{vm}/fork`: one entry per fork asked, in
/// order, each the new VM or why that fork failed (the others stand).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkResponse {
    pub forks: Vec<ForkResult>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ForkResult {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmView>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorBody>,
}

/// A checkpoint as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct CheckpointView {
    pub id: String,
    pub name: Option<String>,
    /// The VM's name.
    pub vm: String,
    /// Unix seconds.
    pub created_at: u64,
    /// Space its files take on the host (allocated blocks; a reflinked
    /// disk's shared extents are counted too).
    pub size_bytes: u64,
    /// How its disk was copied: `reflink` or `sparse`.
    pub disk_copy: String,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
}

/// Body of `POST /vms/{vm}/sessions`.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
}

/// Where a VM's guest port is published.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Expose {
    pub port: u16,
    pub domain: String,
}

/// A VM as the API shows it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct VmView {
    pub id: String,
    pub name: String,
    pub ip: Ipv4Addr,
    /// `creating`, `running`, `stopped`, or `destroyed` (in the answer to a destroy).
    pub state: String,
    pub backend: String,
    pub cpus: u8,
    pub memory_mib: u32,
    /// Size of the VM's disk in bytes (`null` for VMs made before it was recorded).
    #[serde(default)]
    pub disk_bytes: Option<u64>,
    pub mac: String,
    pub tap: String,
    pub created_at: u64,
    pub pid: Option<u32>,
    pub url: Option<String>,
    pub expose: Option<Expose>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    /// After a wait (create, start, resume, restore): whether the guest
    /// took operations in time.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ready: Option<bool>,
    /// The same as `ready`, by its older name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ready: Option<bool>,
    /// Seconds of idleness after which the VM is paused (absent: never).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_pause_secs: Option<u64>,
    /// Paused by idle sleep: console, attach, ssh, exec, cp or a request to
    /// its URL resume it.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub idle_paused: bool,
    /// The VM runs with fcm-agent (exec, cp, consoles go through it);
    /// false: over SSH.
    #[serde(default)]
    pub agent: bool,
    /// A sandbox of the E2B API (docs/e2b.md): its id, template, metadata.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub e2b: Option<Box<super::e2b::E2bInfo>>,
    /// In a cluster: the host the VM is on (docs/cluster.md).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
    /// The image the VM was made from (absent: the base image).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
}

impl VmView {
    /// Records the outcome of a readiness wait, under both names.
    pub fn set_ready(&mut self, ready: bool) {
        self.ready = Some(ready);
        self.ssh_ready = Some(ready);
    }
}

/// What `fcm ssh` needs (`GET /vms/{vm}/ssh`).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SshInfo {
    pub id: String,
    pub name: String,
    pub ip: Ipv4Addr,
    pub user: String,
    pub port: u16,
    pub state: String,
    pub host_key: Option<String>,
}

/// A console session (a tmux session in the guest).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct SessionInfo {
    pub id: String,
    /// Unix seconds (the guest's clock).
    pub created: u64,
    /// Clients attached to the session.
    pub attached: u32,
    /// The command running in the session's active pane.
    pub command: String,
}

/// Body of `POST /vms/{vm}/resize` (a stopped VM). Unset fields keep
/// their value; the disk only grows.
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ResizeRequest {
    /// New disk size: bytes, or a size such as `"20G"`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk: Option<DiskSize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u8>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory_mib: Option<u32>,
}

/// Body of `POST /vms/{vm}/exec`: a program and its arguments, run in the
/// guest without a terminal (each argument quoted, never parsed by a shell).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ExecRequest {
    pub cmd: Vec<String>,
    /// Standard input as text.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin: Option<String>,
    /// Standard input as base64, for bytes that are not UTF-8 (not with `stdin`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stdin_base64: Option<String>,
    /// Seconds before the command is killed (default 60, at most 3600;
    /// in the streamed form, 0 for no deadline).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeout_secs: Option<u64>,
    /// Environment variables for the command (names: letters, digits, `_`).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub env: std::collections::BTreeMap<String, String>,
    /// Its working directory in the guest (default: the user's home).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<String>,
    /// Run it as this guest user, a name or a number (default root; another
    /// user needs fcm-agent in the guest).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Streamed form only: run the command on a terminal (stdout and
    /// stderr are then one stream).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tty: Option<bool>,
    /// The terminal's size (default 80x24) and `$TERM` (default
    /// `xterm-256color`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cols: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rows: Option<u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub term: Option<String>,
}

/// How `stdout` and `stderr` of an [`ExecResponse`] are encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Encoding {
    /// The bytes were valid UTF-8 and are the strings as they are.
    #[default]
    Utf8,
    /// At least one stream was not UTF-8: both are base64 of the exact bytes.
    Base64,
}

/// The answer to `POST /vms/{vm}/exec`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ExecResponse {
    /// The command's exit code; 124 when it was killed at its timeout,
    /// 128+N when a signal N ended it.
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    #[serde(default)]
    pub encoding: Encoding,
    /// A stream was longer than the cap (1 MiB each) and was cut there.
    pub truncated: bool,
    /// The command outlived `timeout_secs` and was killed.
    pub timed_out: bool,
}

/// The answer to `GET /vms/{vm}/logs?offset=N`: a piece of the console log.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LogChunk {
    /// Where `data` starts in the log (0 again after the log was rotated).
    pub offset: u64,
    /// Pass this as `offset` to get what follows.
    pub next_offset: u64,
    /// The log's current size in bytes.
    pub size: u64,
    /// The guest's bytes as text (invalid UTF-8 replaced); raw: control
    /// characters are the reader's to escape before showing them.
    pub data: String,
    /// The log was rotated since `offset`: `data` starts at its beginning.
    #[serde(default)]
    pub reset: bool,
}

/// The answer to `PUT /vms/{vm}/files` and `PUT /vms/{vm}/archive`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Written {
    pub path: String,
    /// Bytes received.
    pub bytes: u64,
}

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub version: String,
    pub backend: String,
    /// The daemon serves, but is still bringing the VMs it found at
    /// start-up in line with the host (operations on those wait for it).
    #[serde(default)]
    pub recovering: bool,
    /// The warm-create template of the default size: `ready`, `building`,
    /// `off` or `failed: why`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// With `--cluster`: `connected`, `joining`, or `unreachable: why`
    /// (this host's VMs are served all the same), `refused: why`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
}

/// `GET /passes`: how long the daemon's background passes take.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Passes {
    pub recovery: RecoveryPass,
    /// Liveness refresh, deferred tap and URL work, console log caps
    /// (every 5 s, or when woken).
    pub housekeeping: PassTimes,
    /// Idle sleep's round (every second).
    pub idle: PassTimes,
}

/// The recovery of the VMs found at start-up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RecoveryPass {
    pub done: bool,
    /// VMs (and broken directories) it started with.
    pub vms: u32,
    /// Its time, so far while it runs.
    pub ms: f64,
}

/// The passes of one background loop since the daemon started.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct PassTimes {
    pub passes: u64,
    pub last_ms: f64,
    pub mean_ms: f64,
    pub max_ms: f64,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ErrorBody {
    pub error: String,
    pub status: u16,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hint: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn create_request_omits_unset_fields_and_rejects_unknown_ones() {
        let r = CreateRequest {
            cpus: Some(2),
            ..Default::default()
        };
        assert_eq!(serde_json::to_string(&r).expect("json"), r#"{"cpus":2}"#);
        assert!(serde_json::from_str::<CreateRequest>(r#"{"cpu":2}"#).is_err());
    }

    #[test]
    fn error_body_round_trips() {
        let e: ErrorBody =
            serde_json::from_str(r#"{"error":"no VM","status":404,"hint":"fcm ls"}"#)
                .expect("json");
        assert_eq!((e.status, e.hint.as_deref()), (404, Some("fcm ls")));
    }
}

/// An image VMs can be made from (`GET /images`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct ImageView {
    /// As given to `fcm image build -t` / `import -t`, e.g. `web:1`.
    pub name: String,
    /// The builder's digest of the image (`sha256:…`; absent for the
    /// built-in base image).
    #[serde(default)]
    pub digest: Option<String>,
    /// Bytes the image's disk takes on the host.
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    /// `base` (built in), `build`, `oci-archive`, `docker-archive` or
    /// `rootfs-tar`.
    pub source: String,
    /// What the image runs as its service (entrypoint + cmd), if anything.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Whether the image has tmux (`fcm console` needs it) and sshd
    /// (`fcm ssh` needs it).
    #[serde(default)]
    pub tmux: bool,
    #[serde(default)]
    pub sshd: bool,
}

/// One line of the NDJSON stream answering `POST /images`: the builder's
/// log as it runs, then exactly one `image` (stored) or `error` (nothing
/// stored).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ImageEvent {
    /// A line of the builder's output.
    Log(String),
    /// The image is stored: the last line.
    Image(ImageView),
    /// The build or import failed; nothing was stored: the last line.
    Error(ErrorBody),
}
