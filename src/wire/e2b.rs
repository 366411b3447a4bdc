//! What `fcm ls` and `GET /vms` show of a VM made through the E2B API
//! (docs/e2b.md): its sandbox id, template, metadata and deadline. Its
//! environment variables stay in the daemon.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct E2bInfo {
    pub sandbox_id: String,
    pub template: String,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub metadata: BTreeMap<String, String>,
    /// When the sandbox ends (Unix seconds); none while it is paused.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_at: Option<u64>,
    /// At its deadline it is paused rather than destroyed.
    #[serde(default)]
    pub auto_pause: bool,
}
