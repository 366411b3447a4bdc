//! Requests and responses of the HTTP API (see docs/openapi.yaml).

use std::net::Ipv4Addr;

use serde::{Deserialize, Serialize};

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
    /// Return only once the guest's SSH answers (default true).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ssh: Option<bool>,
}

/// Body of `POST /vms/{vm}/start` (and, empty, of `stop`).
#[derive(Debug, Default, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StartRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_ssh: Option<bool>,
}

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
    pub mac: String,
    pub tap: String,
    pub created_at: u64,
    pub pid: Option<u32>,
    pub url: Option<String>,
    pub expose: Option<Expose>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub warnings: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ssh_ready: Option<bool>,
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

/// `GET /health`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Health {
    pub ok: bool,
    pub version: String,
    pub backend: String,
}

/// The body of every error answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
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
