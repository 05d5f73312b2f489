//! Virtual-folder commands (`/folders` writes). The worker re-checks every rule inside its
//! SERIALIZABLE transaction, so the API only forwards what the caller asked for.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

pub use bai_core::vfolder::Caller;

/// Background-task kind of a clone (`params`: `{host, src, dst}`).
pub const KIND_CLONE: &str = "vfolder_clone";

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VfolderCommand {
    pub caller: Caller,
    pub op: VfolderOp,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum VfolderOp {
    Create {
        name: String,
        /// Resolved by the API (the request's, else etcd `volumes/default_host`).
        host: String,
        usage_mode: String,
        permission: String,
        unmanaged_path: Option<String>,
        /// A group id or name (group folder).
        group: Option<String>,
        quota: Option<i64>,
        cloneable: bool,
    },
    /// `DELETE /folders/{name}`.
    Delete {
        name: String,
    },
    /// `DELETE /folders` (superadmin, by id).
    DeleteById {
        id: Uuid,
    },
    Rename {
        name: String,
        new_name: String,
    },
    UpdateOptions {
        name: String,
        cloneable: Option<bool>,
        permission: Option<String>,
    },
    Invite {
        name: String,
        permission: String,
        emails: Vec<String>,
    },
    UpdateInvitation {
        inv_id: Uuid,
        permission: String,
    },
    AcceptInvitation {
        inv_id: Uuid,
    },
    DeleteInvitation {
        inv_id: Uuid,
    },
    Leave {
        name: String,
    },
    Share {
        name: String,
        permission: String,
        emails: Vec<String>,
    },
    Unshare {
        name: String,
        emails: Vec<String>,
    },
    /// `POST /folders/_/shared`: set (`Some`) or remove (`None`) a user's share.
    SetShared {
        vfolder: Uuid,
        user: Uuid,
        permission: Option<String>,
    },
    /// Registers the target row; the API then starts the copy as a background task
    /// ([`KIND_CLONE`]).
    Clone {
        name: String,
        target_name: String,
        target_host: String,
        usage_mode: String,
        permission: String,
        cloneable: bool,
    },
}
