//! Payloads of session commands. The API validates and resolves everything (image,
//! owner, group, scaling group, slots) in a read-only transaction; the worker only writes.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// A session to enqueue: all its kernel rows are inserted in one transaction.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SessionSpec {
    /// Equals the main kernel's id.
    pub session_id: Uuid,
    pub creation_id: String,
    pub name: String,
    /// `INTERACTIVE` or `BATCH` (the PG enum names).
    pub session_type: String,
    /// `single-node` or `multi-node`.
    pub cluster_mode: String,
    pub cluster_size: i32,
    pub scaling_group: String,
    pub domain_name: String,
    pub group_id: Uuid,
    pub user_uuid: Uuid,
    pub access_key: String,
    /// Canonical image reference.
    pub image: String,
    pub registry: String,
    pub tag: Option<String>,
    pub starts_at: Option<DateTime<Utc>>,
    pub startup_command: Option<String>,
    pub bootstrap_script: Option<String>,
    /// `K=V` strings.
    pub environ: Vec<String>,
    /// One row per mount: `[name, host, host_path, perm, unmanaged_path]`.
    pub mounts: Vec<Vec<String>>,
    pub mount_map: Value,
    pub resource_opts: Value,
    pub preopen_ports: Vec<i32>,
    pub internal_data: Value,
    pub dependencies: Vec<Uuid>,
    pub kernels: Vec<KernelSpec>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KernelSpec {
    pub id: Uuid,
    pub cluster_role: String,
    pub cluster_idx: i32,
    pub cluster_hostname: String,
    /// Requested slots (ResourceSlot JSON of decimal strings).
    pub occupied_slots: Value,
    /// Per-kernel values of a cluster-template session, whose nodes come from different
    /// task templates; `None` = the session's value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub registry: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub environ: Option<Vec<String>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bootstrap_script: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub startup_command: Option<String>,
}
