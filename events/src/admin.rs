//! Admin commands: every GraphQL mutation becomes one [`AdminCommand`], handled by a worker.
//!
//! The API validates and normalises the input (JSONString decoding, ResourceSlot parsing,
//! enum values) and checks the caller's role; the worker re-checks what depends on rows
//! (e.g. a domain admin may only touch groups of their own domain) inside its
//! SERIALIZABLE transaction and answers with the original's payload `{ok, msg, <item>?}`.
//!
//! Field names mirror the GraphQL input types of Backend.AI Manager 21.03.6 (§2.5 of the
//! schema notes). `None` always means "not given": graphene treated an explicit `null` as
//! absent, and so do we.

use serde::{Deserialize, Serialize};
use serde_json::Value;
use uuid::Uuid;

/// Who asked, as the worker needs it for row-dependent privilege checks.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminCaller {
    pub access_key: String,
    pub user_uuid: Uuid,
    pub email: String,
    /// `superadmin`, `admin`, `user` or `monitor`.
    pub role: String,
    pub domain_name: String,
}

impl AdminCaller {
    pub fn is_superadmin(&self) -> bool {
        self.role == "superadmin"
    }
}

/// One admin mutation with its caller.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct AdminCommand {
    pub caller: AdminCaller,
    pub op: AdminOp,
}

impl AdminCommand {
    /// The GraphQL field name of the mutation (also the command kind suffix).
    pub fn field_name(&self) -> &'static str {
        self.op.field_name()
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DomainProps {
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    /// Normalised ResourceSlot JSON (`{"cpu": "4", "mem": "4294967296"}`).
    pub total_resource_slots: Option<Value>,
    pub allowed_vfolder_hosts: Option<Vec<String>>,
    pub allowed_docker_registries: Option<Vec<String>>,
    pub integration_id: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct GroupProps {
    pub name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub domain_name: Option<String>,
    pub total_resource_slots: Option<Value>,
    pub allowed_vfolder_hosts: Option<Vec<String>>,
    pub integration_id: Option<String>,
    /// `add` or `remove` (modify_group only).
    pub user_update_mode: Option<String>,
    pub user_uuids: Option<Vec<Uuid>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct UserProps {
    pub username: Option<String>,
    /// The bcrypt hash (`$2b$12$...`) of the new password. The API hashes it, so plain
    /// passwords never sit in the command stream.
    pub password_hash: Option<String>,
    pub need_password_change: Option<bool>,
    pub full_name: Option<String>,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    /// A `userstatus` value (`active`, `inactive`, `deleted`, `before-verification`).
    pub status: Option<String>,
    pub domain_name: Option<String>,
    /// A `userrole` value.
    pub role: Option<String>,
    pub group_ids: Option<Vec<Uuid>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct KeyPairProps {
    pub is_active: Option<bool>,
    pub is_admin: Option<bool>,
    pub resource_policy: Option<String>,
    pub rate_limit: Option<i32>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResourcePolicyProps {
    /// `LIMITED` or `UNLIMITED`.
    pub default_for_unspecified: Option<String>,
    pub total_resource_slots: Option<Value>,
    pub max_concurrent_sessions: Option<i32>,
    pub max_containers_per_session: Option<i32>,
    pub idle_timeout: Option<i64>,
    pub max_vfolder_count: Option<i32>,
    pub max_vfolder_size: Option<i64>,
    pub allowed_vfolder_hosts: Option<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ResourcePresetProps {
    pub resource_slots: Option<Value>,
    /// Bytes (the API parsed the binary-size string).
    pub shared_memory: Option<i64>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ScalingGroupProps {
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub driver: Option<String>,
    pub driver_opts: Option<Value>,
    pub scheduler: Option<String>,
    pub scheduler_opts: Option<Value>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageResourceLimit {
    pub key: String,
    pub min: Option<String>,
    pub max: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct ImageProps {
    pub digest: Option<String>,
    pub size_bytes: Option<i64>,
    /// Replaces all labels when given.
    pub labels: Option<Vec<(String, String)>>,
    /// Replaces all resource limits when given.
    pub resource_limits: Option<Vec<ImageResourceLimit>>,
    pub supported_accelerators: Option<Vec<String>>,
}

/// The mutations of the 21.03.6 schema (plus `modify_image`), with their exact arguments.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "op", content = "params", rename_all = "snake_case")]
pub enum AdminOp {
    CreateDomain {
        name: String,
        props: DomainProps,
    },
    ModifyDomain {
        name: String,
        props: DomainProps,
    },
    DeleteDomain {
        name: String,
    },
    PurgeDomain {
        name: String,
    },

    CreateGroup {
        name: String,
        props: GroupProps,
    },
    ModifyGroup {
        gid: Uuid,
        props: GroupProps,
    },
    DeleteGroup {
        gid: Uuid,
    },
    PurgeGroup {
        gid: Uuid,
    },

    CreateUser {
        email: String,
        props: UserProps,
    },
    ModifyUser {
        email: String,
        props: UserProps,
    },
    DeleteUser {
        email: String,
    },
    PurgeUser {
        email: String,
        purge_shared_vfolders: bool,
    },

    /// `user_id` is the owner's email.
    CreateKeypair {
        user_id: String,
        props: KeyPairProps,
    },
    ModifyKeypair {
        access_key: String,
        props: KeyPairProps,
    },
    DeleteKeypair {
        access_key: String,
    },

    CreateKeypairResourcePolicy {
        name: String,
        props: ResourcePolicyProps,
    },
    ModifyKeypairResourcePolicy {
        name: String,
        props: ResourcePolicyProps,
    },
    DeleteKeypairResourcePolicy {
        name: String,
    },

    CreateResourcePreset {
        name: String,
        props: ResourcePresetProps,
    },
    ModifyResourcePreset {
        name: String,
        props: ResourcePresetProps,
    },
    DeleteResourcePreset {
        name: String,
    },

    CreateScalingGroup {
        name: String,
        props: ScalingGroupProps,
    },
    ModifyScalingGroup {
        name: String,
        props: ScalingGroupProps,
    },
    DeleteScalingGroup {
        name: String,
    },
    AssociateScalingGroupWithDomain {
        scaling_group: String,
        domain: String,
    },
    DisassociateScalingGroupWithDomain {
        scaling_group: String,
        domain: String,
    },
    DisassociateAllScalingGroupsWithDomain {
        domain: String,
    },
    AssociateScalingGroupWithUserGroup {
        scaling_group: String,
        user_group: Uuid,
    },
    DisassociateScalingGroupWithUserGroup {
        scaling_group: String,
        user_group: Uuid,
    },
    DisassociateAllScalingGroupsWithGroup {
        user_group: Uuid,
    },
    AssociateScalingGroupWithKeypair {
        scaling_group: String,
        access_key: String,
    },
    DisassociateScalingGroupWithKeypair {
        scaling_group: String,
        access_key: String,
    },

    /// etcd `images/_aliases/{alias}` = canonical reference of `target`.
    AliasImage {
        alias: String,
        target: String,
    },
    DealiasImage {
        alias: String,
    },
    /// `target` is a canonical reference or an alias.
    ModifyImage {
        target: String,
        props: ImageProps,
    },
    ForgetImage {
        reference: String,
    },
}

impl AdminOp {
    pub fn field_name(&self) -> &'static str {
        match self {
            AdminOp::CreateDomain { .. } => "create_domain",
            AdminOp::ModifyDomain { .. } => "modify_domain",
            AdminOp::DeleteDomain { .. } => "delete_domain",
            AdminOp::PurgeDomain { .. } => "purge_domain",
            AdminOp::CreateGroup { .. } => "create_group",
            AdminOp::ModifyGroup { .. } => "modify_group",
            AdminOp::DeleteGroup { .. } => "delete_group",
            AdminOp::PurgeGroup { .. } => "purge_group",
            AdminOp::CreateUser { .. } => "create_user",
            AdminOp::ModifyUser { .. } => "modify_user",
            AdminOp::DeleteUser { .. } => "delete_user",
            AdminOp::PurgeUser { .. } => "purge_user",
            AdminOp::CreateKeypair { .. } => "create_keypair",
            AdminOp::ModifyKeypair { .. } => "modify_keypair",
            AdminOp::DeleteKeypair { .. } => "delete_keypair",
            AdminOp::CreateKeypairResourcePolicy { .. } => "create_keypair_resource_policy",
            AdminOp::ModifyKeypairResourcePolicy { .. } => "modify_keypair_resource_policy",
            AdminOp::DeleteKeypairResourcePolicy { .. } => "delete_keypair_resource_policy",
            AdminOp::CreateResourcePreset { .. } => "create_resource_preset",
            AdminOp::ModifyResourcePreset { .. } => "modify_resource_preset",
            AdminOp::DeleteResourcePreset { .. } => "delete_resource_preset",
            AdminOp::CreateScalingGroup { .. } => "create_scaling_group",
            AdminOp::ModifyScalingGroup { .. } => "modify_scaling_group",
            AdminOp::DeleteScalingGroup { .. } => "delete_scaling_group",
            AdminOp::AssociateScalingGroupWithDomain { .. } => {
                "associate_scaling_group_with_domain"
            }
            AdminOp::DisassociateScalingGroupWithDomain { .. } => {
                "disassociate_scaling_group_with_domain"
            }
            AdminOp::DisassociateAllScalingGroupsWithDomain { .. } => {
                "disassociate_all_scaling_groups_with_domain"
            }
            AdminOp::AssociateScalingGroupWithUserGroup { .. } => {
                "associate_scaling_group_with_user_group"
            }
            AdminOp::DisassociateScalingGroupWithUserGroup { .. } => {
                "disassociate_scaling_group_with_user_group"
            }
            AdminOp::DisassociateAllScalingGroupsWithGroup { .. } => {
                "disassociate_all_scaling_groups_with_group"
            }
            AdminOp::AssociateScalingGroupWithKeypair { .. } => {
                "associate_scaling_group_with_keypair"
            }
            AdminOp::DisassociateScalingGroupWithKeypair { .. } => {
                "disassociate_scaling_group_with_keypair"
            }
            AdminOp::AliasImage { .. } => "alias_image",
            AdminOp::DealiasImage { .. } => "dealias_image",
            AdminOp::ModifyImage { .. } => "modify_image",
            AdminOp::ForgetImage { .. } => "forget_image",
        }
    }

    /// Whether the handler writes etcd rather than PostgreSQL.
    pub fn is_etcd_op(&self) -> bool {
        matches!(
            self,
            AdminOp::AliasImage { .. }
                | AdminOp::DealiasImage { .. }
                | AdminOp::ModifyImage { .. }
                | AdminOp::ForgetImage { .. }
        )
    }
}

/// Key under which a handler's result carries a refusal that the API must turn into a
/// GraphQL *error* (the original raised instead of returning `ok: false`), e.g. purging a
/// domain that still has users.
pub const REJECTED_KEY: &str = "__rejected";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip() {
        let cmd = AdminCommand {
            caller: AdminCaller {
                access_key: "AKIAIOSFODNN7EXAMPLE".into(),
                user_uuid: Uuid::nil(),
                email: "admin@lablup.com".into(),
                role: "superadmin".into(),
                domain_name: "default".into(),
            },
            op: AdminOp::ModifyGroup {
                gid: Uuid::nil(),
                props: GroupProps {
                    user_update_mode: Some("add".into()),
                    user_uuids: Some(vec![Uuid::nil()]),
                    ..Default::default()
                },
            },
        };
        let text = serde_json::to_string(&cmd).unwrap();
        assert!(text.contains("\"op\":\"modify_group\""), "{text}");
        let back: AdminCommand = serde_json::from_str(&text).unwrap();
        assert_eq!(back, cmd);
        assert_eq!(back.field_name(), "modify_group");
    }
}
