//! Commands of the remaining REST surface (issue 11): session/cluster templates, dotfiles
//! and the bootstrap script, error logs, account operations and scheduler operations.
//!
//! The API validates shapes (template schema, dotfile path/permission, sizes) and checks
//! the caller's role; the worker re-checks what depends on rows (dotfile count and packed
//! size, duplicates, template ownership) inside its SERIALIZABLE transaction, so two
//! concurrent writes of the same dotfile list can never lose one another.
//!
//! A refusal is answered as `Ok` with a [`REST_ERROR_KEY`] object (`{code, msg}`), which
//! the API maps to the original's exact problem+json (some of them carry titles that
//! are not the generic ones, e.g. "Dotfile already exists.").

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

pub use crate::admin::AdminCaller as RestCaller;

/// Key of a refusal inside an `Ok` result.
pub const REST_ERROR_KEY: &str = "__rest_error";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RestCommand {
    pub caller: RestCaller,
    pub op: RestOp,
}

/// `TASK` (session templates) or `CLUSTER` (cluster templates): the `templatetype` enum.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum TemplateKind {
    Task,
    Cluster,
}

impl TemplateKind {
    pub fn as_sql(self) -> &'static str {
        match self {
            Self::Task => "TASK",
            Self::Cluster => "CLUSTER",
        }
    }
}

/// Whose dotfiles: a keypair's, a domain's or a group's.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "scope", rename_all = "snake_case")]
pub enum DotfileOwner {
    /// A keypair (`keypairs.dotfiles`); `user_uuid` is its user (for the dot-vfolder clash).
    User {
        access_key: String,
        user_uuid: Uuid,
    },
    Domain {
        name: String,
    },
    Group {
        id: Uuid,
    },
}

/// One dotfile as stored (msgpack map `{path, perm, data}`).
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Dotfile {
    pub path: String,
    pub perm: String,
    pub data: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum DotfileAction {
    Create(Dotfile),
    Update(Dotfile),
    Delete { path: String },
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum RestOp {
    /// Insert a template (validated and normalised by the API).
    CreateTemplate {
        id: Uuid,
        kind: TemplateKind,
        domain_name: String,
        group_id: Option<Uuid>,
        user_uuid: Uuid,
        name: Option<String>,
        template: Value,
    },
    /// Replace a live template's document (the API checked who may edit it).
    UpdateTemplate {
        id: Uuid,
        kind: TemplateKind,
        name: Option<String>,
        template: Value,
    },
    /// Soft delete (`is_active = false`).
    DeleteTemplate {
        id: Uuid,
        kind: TemplateKind,
    },
    Dotfile {
        owner: DotfileOwner,
        action: DotfileAction,
    },
    SetBootstrapScript {
        access_key: String,
        script: String,
    },
    PostErrorLog {
        id: Uuid,
        user: Uuid,
        severity: String,
        source: String,
        message: String,
        context_lang: String,
        context_env: Value,
        request_url: Option<String>,
        request_status: Option<i32>,
        traceback: Option<String>,
    },
    MarkErrorLogsRead {
        ids: Vec<Uuid>,
    },
    ClearErrorLog {
        id: Uuid,
    },
    /// A self-service account; the keypair and password hash are made by the API.
    Signup {
        domain: String,
        email: String,
        username: String,
        password_hash: String,
        full_name: String,
        description: String,
        access_key: String,
        secret_key: String,
        group: String,
    },
    /// Deactivate the caller's user and every keypair of it.
    Signout {
        user_uuid: Uuid,
        email: String,
    },
    UpdatePassword {
        user_uuid: Uuid,
        password_hash: String,
    },
    /// Generate and store a new SSH keypair for `access_key` (the worker generates it, so
    /// the private key never travels through the command stream).
    RegenerateSshKeypair {
        access_key: String,
    },
    /// `include-agents` / `exclude-agents`: set `agents.schedulable` for every id, all or
    /// nothing.
    SetAgentsSchedulable {
        agents: Vec<String>,
        schedulable: bool,
    },
}

impl RestOp {
    pub fn name(&self) -> &'static str {
        match self {
            Self::CreateTemplate { .. } => "create_template",
            Self::UpdateTemplate { .. } => "update_template",
            Self::DeleteTemplate { .. } => "delete_template",
            Self::Dotfile { .. } => "dotfile",
            Self::SetBootstrapScript { .. } => "set_bootstrap_script",
            Self::PostErrorLog { .. } => "post_error_log",
            Self::MarkErrorLogsRead { .. } => "mark_error_logs_read",
            Self::ClearErrorLog { .. } => "clear_error_log",
            Self::Signup { .. } => "signup",
            Self::Signout { .. } => "signout",
            Self::UpdatePassword { .. } => "update_password",
            Self::RegenerateSshKeypair { .. } => "regenerate_ssh_keypair",
            Self::SetAgentsSchedulable { .. } => "set_agents_schedulable",
        }
    }
}

/// Limits of the dotfile store (the original's `MAXIMUM_DOTFILE_SIZE` and count).
pub const MAX_DOTFILE_BYTES: usize = 64 * 1024;
pub const MAX_DOTFILES: usize = 100;

/// Decodes a stored msgpack dotfile list (`\x90` = empty). Corrupt data reads as empty
/// rather than failing every session of its owner.
pub fn unpack_dotfiles(raw: &[u8]) -> Vec<Dotfile> {
    if raw.is_empty() {
        return Vec::new();
    }
    rmp_serde::from_slice(raw).unwrap_or_default()
}

/// Encodes a dotfile list as the original stores it (a msgpack array of maps).
pub fn pack_dotfiles(files: &[Dotfile]) -> Vec<u8> {
    // Maps with field names (`to_vec_named`), as Python's `msgpack.packb(list_of_dicts)`.
    rmp_serde::to_vec_named(files).unwrap_or_else(|_| vec![0x90])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dotfiles_pack_like_python_msgpack() {
        assert!(unpack_dotfiles(&[0x90]).is_empty());
        let files = vec![Dotfile {
            path: ".bashrc".into(),
            perm: "644".into(),
            data: "echo hi".into(),
        }];
        let packed = pack_dotfiles(&files);
        // fixarray(1), fixmap(3), fixstr "path"...
        assert_eq!(&packed[..3], &[0x91, 0x83, 0xa4]);
        assert_eq!(unpack_dotfiles(&packed), files);
    }
}
