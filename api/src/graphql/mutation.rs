//! Root `Mutations`. The API never writes: each field validates and normalises its input,
//! checks the caller's role, and publishes one [`AdminCommand`]; a worker performs it in a
//! SERIALIZABLE transaction and replies with the original's `{ok, msg, <item>}` payload.
//!
//! Refusals follow graphene 21.03.6: a role that may not run a mutation gets a normal
//! payload `ok: false, msg: "no permission to execute <field>"`; input the original
//! rejected by raising (bad slug on create_group, bad enum values) is a GraphQL error.

use std::time::Duration;

use async_graphql::{Context, InputObject, Object, SimpleObject};
use serde_json::Value;
use uuid::Uuid;

use bai_events::admin::{
    DomainProps, GroupProps, ImageProps, ImageResourceLimit, KeyPairProps, ResourcePolicyProps,
    ResourcePresetProps, ScalingGroupProps, UserProps, REJECTED_KEY,
};
use bai_events::{AdminCaller, AdminCommand, AdminOp, Command, CommandOutcome, CommandReply};

use crate::auth::UserRole;
use crate::error::ApiError;

use super::context::{gql_err, internal, invalid_params, GqlResult, ReqCtx};
use super::scalars::{BigInt, JsonString};
use super::slots::{parse_binary_size, parse_slots};
use super::types_admin::*;

pub struct Mutations;

/// What came back from the worker.
struct MutResult {
    ok: bool,
    msg: String,
    item: Option<Value>,
}

impl MutResult {
    fn refused(msg: impl Into<String>) -> Self {
        Self {
            ok: false,
            msg: msg.into(),
            item: None,
        }
    }

    fn item<T: serde::de::DeserializeOwned>(&self) -> Option<T> {
        let v = self.item.clone()?;
        match serde_json::from_value(v) {
            Ok(t) => Some(t),
            Err(e) => {
                tracing::error!(error = %e, "cannot decode the item of a mutation result");
                None
            }
        }
    }
}

/// `^[a-zA-Z0-9]([a-zA-Z0-9._-]*[a-zA-Z0-9])?$`
pub fn is_slug(s: &str) -> bool {
    let b = s.as_bytes();
    let edge = |c: u8| c.is_ascii_alphanumeric();
    !b.is_empty()
        && edge(b[0])
        && edge(b[b.len() - 1])
        && b.iter()
            .all(|&c| c.is_ascii_alphanumeric() || c == b'.' || c == b'_' || c == b'-')
}

fn slots_opt(v: Option<JsonString>) -> GqlResult<Option<Value>> {
    v.map(|j| parse_slots(&j.0).map_err(invalid_params))
        .transpose()
}

fn json_opt(v: Option<JsonString>) -> Option<Value> {
    v.map(|j| j.0)
}

fn uuids(v: Option<Vec<String>>, what: &str) -> GqlResult<Option<Vec<Uuid>>> {
    v.map(|list| {
        list.iter()
            .map(|s| {
                Uuid::parse_str(s.trim())
                    .map_err(|_| invalid_params(format!("invalid {what}: {s}")))
            })
            .collect()
    })
    .transpose()
}

async fn bcrypt(plain: String) -> GqlResult<String> {
    tokio::task::spawn_blocking(move || bai_core::keypair::hash_password(&plain))
        .await
        .map_err(internal)?
        .map_err(internal)
}

/// Publishes one admin command and waits for its result.
async fn run(ctx: &Context<'_>, op: AdminOp, allowed: &[UserRole]) -> GqlResult<MutResult> {
    let rc = rc(ctx);
    // A frozen manager refuses every mutation (GraphQL error, as the original).
    match rc.state.etcd.get("manager/status").await {
        Ok(Some(s)) if s.trim().eq_ignore_ascii_case("frozen") => {
            return Err(gql_err(ApiError::server_frozen()));
        }
        Ok(_) => {}
        Err(e) => tracing::warn!(error = %e, "cannot read manager/status from etcd"),
    }
    let field = op.field_name();
    if !allowed.contains(&rc.role()) {
        return Ok(MutResult::refused(format!(
            "no permission to execute {field}"
        )));
    }
    let caller = caller_of(rc);
    let deadline = Duration::from_millis(rc.state.config.manager.command_timeout_ms.max(1000));
    let outcome = rc
        .state
        .bus
        .publish_command(
            Command::Admin(Box::new(AdminCommand { caller, op })),
            deadline,
        )
        .await
        .map_err(|e| gql_err(ApiError::from(e)))?;
    match outcome {
        CommandOutcome::Completed(CommandReply::Ok { result }) => {
            if let Some(rej) = result.get(REJECTED_KEY) {
                let msg = rej.as_str().map(String::from).unwrap_or_else(|| rej.to_string());
                return Err(async_graphql::Error::new(msg));
            }
            Ok(MutResult {
                ok: result.get("ok").and_then(Value::as_bool).unwrap_or(false),
                msg: result
                    .get("msg")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                item: result.get("item").filter(|v| !v.is_null()).cloned(),
            })
        }
        CommandOutcome::Completed(CommandReply::Rejected { title, msg, .. }) => Err(async_graphql::Error::new(match msg {
            Some(m) => format!("{title} ({m})"),
            None => title,
        })),
        CommandOutcome::Completed(CommandReply::Failed { error }) => {
            Ok(MutResult::refused(format!("unexpected error: {error}")))
        }
        CommandOutcome::Accepted { command_id } => Ok(MutResult::refused(format!(
            "the request was accepted but did not complete in time (command {command_id}); check again later"
        ))),
    }
}

fn caller_of(rc: &ReqCtx) -> AdminCaller {
    AdminCaller {
        access_key: rc.user.access_key.clone(),
        user_uuid: rc.user.user_uuid,
        email: rc.user.email.clone(),
        role: rc.user.role.as_str().to_string(),
        domain_name: rc.user.domain_name.clone(),
    }
}

const SUPERADMIN: &[UserRole] = &[UserRole::Superadmin];
const ADMINS: &[UserRole] = &[UserRole::Superadmin, UserRole::Admin];

// ------------------------------------------------------------------------------ inputs

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct DomainInput {
    description: Option<String>,
    is_active: Option<bool>,
    total_resource_slots: Option<JsonString>,
    allowed_vfolder_hosts: Option<Vec<String>>,
    allowed_docker_registries: Option<Vec<String>>,
    integration_id: Option<String>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyDomainInput {
    name: Option<String>,
    description: Option<String>,
    is_active: Option<bool>,
    total_resource_slots: Option<JsonString>,
    allowed_vfolder_hosts: Option<Vec<String>>,
    allowed_docker_registries: Option<Vec<String>>,
    integration_id: Option<String>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct GroupInput {
    description: Option<String>,
    is_active: Option<bool>,
    domain_name: String,
    total_resource_slots: Option<JsonString>,
    allowed_vfolder_hosts: Option<Vec<String>>,
    integration_id: Option<String>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyGroupInput {
    name: Option<String>,
    description: Option<String>,
    is_active: Option<bool>,
    domain_name: Option<String>,
    total_resource_slots: Option<JsonString>,
    user_update_mode: Option<String>,
    user_uuids: Option<Vec<String>>,
    allowed_vfolder_hosts: Option<Vec<String>>,
    integration_id: Option<String>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct UserInput {
    username: String,
    password: String,
    need_password_change: bool,
    full_name: Option<String>,
    description: Option<String>,
    is_active: Option<bool>,
    status: Option<String>,
    domain_name: String,
    role: Option<String>,
    group_ids: Option<Vec<String>>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyUserInput {
    username: Option<String>,
    password: Option<String>,
    need_password_change: Option<bool>,
    full_name: Option<String>,
    description: Option<String>,
    is_active: Option<bool>,
    status: Option<String>,
    domain_name: Option<String>,
    role: Option<String>,
    group_ids: Option<Vec<String>>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct PurgeUserInput {
    purge_shared_vfolders: Option<bool>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct KeyPairInput {
    is_active: Option<bool>,
    is_admin: Option<bool>,
    resource_policy: String,
    /// Ignored (deprecated), as in 21.03.
    concurrency_limit: Option<i32>,
    rate_limit: i32,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyKeyPairInput {
    is_active: Option<bool>,
    is_admin: Option<bool>,
    resource_policy: Option<String>,
    concurrency_limit: Option<i32>,
    rate_limit: Option<i32>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct CreateKeyPairResourcePolicyInput {
    default_for_unspecified: String,
    total_resource_slots: JsonString,
    max_concurrent_sessions: i32,
    max_containers_per_session: i32,
    idle_timeout: BigInt,
    max_vfolder_count: i32,
    max_vfolder_size: BigInt,
    allowed_vfolder_hosts: Option<Vec<String>>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyKeyPairResourcePolicyInput {
    default_for_unspecified: Option<String>,
    total_resource_slots: Option<JsonString>,
    max_concurrent_sessions: Option<i32>,
    max_containers_per_session: Option<i32>,
    idle_timeout: Option<BigInt>,
    max_vfolder_count: Option<i32>,
    max_vfolder_size: Option<BigInt>,
    allowed_vfolder_hosts: Option<Vec<String>>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct CreateResourcePresetInput {
    resource_slots: JsonString,
    shared_memory: Option<String>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyResourcePresetInput {
    resource_slots: Option<JsonString>,
    shared_memory: Option<String>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct CreateScalingGroupInput {
    description: Option<String>,
    is_active: Option<bool>,
    driver: String,
    driver_opts: Option<JsonString>,
    scheduler: String,
    scheduler_opts: Option<JsonString>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyScalingGroupInput {
    description: Option<String>,
    is_active: Option<bool>,
    driver: Option<String>,
    driver_opts: Option<JsonString>,
    scheduler: Option<String>,
    scheduler_opts: Option<JsonString>,
}

#[derive(InputObject)]
#[graphql(name = "KVPairInput", rename_fields = "snake_case")]
pub struct KvPairInput {
    key: String,
    value: String,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ResourceLimitInput {
    key: String,
    min: Option<String>,
    max: Option<String>,
}

#[derive(InputObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ModifyImageInput {
    digest: Option<String>,
    size_bytes: Option<BigInt>,
    labels: Option<Vec<KvPairInput>>,
    resource_limits: Option<Vec<ResourceLimitInput>>,
    supported_accelerators: Option<Vec<String>>,
}

// ----------------------------------------------------------------------------- payloads

macro_rules! simple_payload {
    ($($name:ident),* $(,)?) => {$(
        #[derive(SimpleObject)]
        #[graphql(rename_fields = "snake_case")]
        pub struct $name {
            pub ok: Option<bool>,
            pub msg: Option<String>,
        }
        impl From<MutResult> for $name {
            fn from(r: MutResult) -> Self {
                Self { ok: Some(r.ok), msg: Some(r.msg) }
            }
        }
    )*};
}

simple_payload!(
    DeleteDomain,
    PurgeDomain,
    DeleteGroup,
    PurgeGroup,
    DeleteUser,
    PurgeUser,
    ModifyKeyPair,
    DeleteKeyPair,
    ModifyKeyPairResourcePolicy,
    DeleteKeyPairResourcePolicy,
    ModifyResourcePreset,
    DeleteResourcePreset,
    ModifyScalingGroup,
    DeleteScalingGroup,
    AssociateScalingGroupWithDomain,
    DisassociateScalingGroupWithDomain,
    DisassociateAllScalingGroupsWithDomain,
    AssociateScalingGroupWithUserGroup,
    DisassociateScalingGroupWithUserGroup,
    DisassociateAllScalingGroupsWithGroup,
    AssociateScalingGroupWithKeyPair,
    DisassociateScalingGroupWithKeyPair,
    AliasImage,
    DealiasImage,
    ForgetImage,
    ModifyImage,
);

macro_rules! item_payload {
    ($name:ident, $field:ident, $ty:ty, $row:ty) => {
        #[derive(SimpleObject)]
        #[graphql(rename_fields = "snake_case")]
        pub struct $name {
            pub ok: Option<bool>,
            pub msg: Option<String>,
            pub $field: Option<$ty>,
        }
        impl From<MutResult> for $name {
            fn from(r: MutResult) -> Self {
                let item = r.item::<$row>().map(<$ty>::from);
                Self {
                    ok: Some(r.ok),
                    msg: Some(r.msg),
                    $field: item,
                }
            }
        }
    };
}

impl From<KeyPairRow> for KeyPair {
    fn from(row: KeyPairRow) -> Self {
        KeyPair { row }
    }
}
impl From<PolicyRow> for KeyPairResourcePolicy {
    fn from(row: PolicyRow) -> Self {
        KeyPairResourcePolicy { row }
    }
}
impl From<PresetRow> for ResourcePreset {
    fn from(row: PresetRow) -> Self {
        ResourcePreset { row }
    }
}
impl From<ScalingGroupRow> for ScalingGroup {
    fn from(row: ScalingGroupRow) -> Self {
        ScalingGroup { row }
    }
}

item_payload!(CreateDomain, domain, Domain, DomainRow);
item_payload!(ModifyDomain, domain, Domain, DomainRow);
item_payload!(CreateGroup, group, Group, GroupRow);
item_payload!(ModifyGroup, group, Group, GroupRow);
item_payload!(CreateUser, user, User, UserRow);
item_payload!(ModifyUser, user, User, UserRow);
item_payload!(CreateKeyPair, keypair, KeyPair, KeyPairRow);
item_payload!(
    CreateKeyPairResourcePolicy,
    resource_policy,
    KeyPairResourcePolicy,
    PolicyRow
);
item_payload!(
    CreateResourcePreset,
    resource_preset,
    ResourcePreset,
    PresetRow
);
item_payload!(
    CreateScalingGroup,
    scaling_group,
    ScalingGroup,
    ScalingGroupRow
);

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct RescanImages {
    pub ok: Option<bool>,
    pub msg: Option<String>,
    pub task_id: Option<Uuid>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct PreloadImage {
    pub ok: Option<bool>,
    pub msg: Option<String>,
    pub task_id: Option<String>,
}

#[derive(SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct UnloadImage {
    pub ok: Option<bool>,
    pub msg: Option<String>,
    pub task_id: Option<String>,
}

fn check_role_value(role: &Option<String>) -> GqlResult<()> {
    match role.as_deref() {
        None | Some("superadmin" | "admin" | "user" | "monitor") => Ok(()),
        Some(other) => Err(async_graphql::Error::new(format!(
            "'{other}' is not a valid UserRole"
        ))),
    }
}

fn check_status_value(status: &Option<String>) -> GqlResult<()> {
    match status.as_deref() {
        None | Some("active" | "inactive" | "deleted" | "before-verification") => Ok(()),
        Some(other) => Err(async_graphql::Error::new(format!(
            "'{other}' is not a valid UserStatus"
        ))),
    }
}

fn check_dfu(v: &Option<String>) -> GqlResult<()> {
    match v.as_deref() {
        None | Some("LIMITED" | "UNLIMITED") => Ok(()),
        Some(other) => Err(async_graphql::Error::new(format!(
            "default_for_unspecified must be LIMITED or UNLIMITED, not {other:?}"
        ))),
    }
}

fn shared_memory(v: Option<String>) -> GqlResult<Option<i64>> {
    match v {
        None => Ok(None),
        Some(s) => match parse_binary_size(&s).map_err(invalid_params)? {
            None => Err(invalid_params("shared_memory cannot be infinite")),
            Some(d) => Ok(Some(
                rust_decimal::prelude::ToPrimitive::to_i64(&d)
                    .ok_or_else(|| invalid_params("shared_memory too large"))?,
            )),
        },
    }
}

#[allow(clippy::too_many_arguments)]
fn policy_props(
    dfu: Option<String>,
    slots: Option<JsonString>,
    mcs: Option<i32>,
    mcps: Option<i32>,
    idle: Option<BigInt>,
    mvc: Option<i32>,
    mvs: Option<BigInt>,
    hosts: Option<Vec<String>>,
) -> GqlResult<ResourcePolicyProps> {
    check_dfu(&dfu)?;
    Ok(ResourcePolicyProps {
        default_for_unspecified: dfu,
        total_resource_slots: slots_opt(slots)?,
        max_concurrent_sessions: mcs,
        max_containers_per_session: mcps,
        idle_timeout: idle.map(|b| b.0),
        max_vfolder_count: mvc,
        max_vfolder_size: mvs.map(|b| b.0),
        allowed_vfolder_hosts: hosts,
    })
}

#[Object(
    name = "Mutations",
    rename_fields = "snake_case",
    rename_args = "snake_case"
)]
impl Mutations {
    // ------------------------------------------------------------------ domains

    async fn create_domain(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: DomainInput,
    ) -> GqlResult<CreateDomain> {
        if !is_slug(&name) {
            return Ok(MutResult::refused("invalid name format. slug format required.").into());
        }
        let props = DomainProps {
            name: None,
            description: props.description,
            is_active: props.is_active,
            total_resource_slots: Some(
                slots_opt(props.total_resource_slots)?.unwrap_or_else(|| serde_json::json!({})),
            ),
            allowed_vfolder_hosts: props.allowed_vfolder_hosts,
            allowed_docker_registries: props.allowed_docker_registries,
            integration_id: props.integration_id,
        };
        Ok(run(ctx, AdminOp::CreateDomain { name, props }, SUPERADMIN)
            .await?
            .into())
    }

    async fn modify_domain(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: ModifyDomainInput,
    ) -> GqlResult<ModifyDomain> {
        if props.name.as_deref().is_some_and(|n| !is_slug(n)) {
            return Err(async_graphql::Error::new(
                "invalid name format. slug format required.",
            ));
        }
        let props = DomainProps {
            name: props.name,
            description: props.description,
            is_active: props.is_active,
            total_resource_slots: slots_opt(props.total_resource_slots)?,
            allowed_vfolder_hosts: props.allowed_vfolder_hosts,
            allowed_docker_registries: props.allowed_docker_registries,
            integration_id: props.integration_id,
        };
        Ok(run(ctx, AdminOp::ModifyDomain { name, props }, SUPERADMIN)
            .await?
            .into())
    }

    async fn delete_domain(&self, ctx: &Context<'_>, name: String) -> GqlResult<DeleteDomain> {
        Ok(run(ctx, AdminOp::DeleteDomain { name }, SUPERADMIN)
            .await?
            .into())
    }

    async fn purge_domain(&self, ctx: &Context<'_>, name: String) -> GqlResult<PurgeDomain> {
        Ok(run(ctx, AdminOp::PurgeDomain { name }, SUPERADMIN)
            .await?
            .into())
    }

    // ------------------------------------------------------------------ groups

    async fn create_group(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: GroupInput,
    ) -> GqlResult<CreateGroup> {
        if !is_slug(&name) {
            return Err(async_graphql::Error::new(
                "invalid name format. slug format required.",
            ));
        }
        let rc = rc(ctx);
        if rc.role() == UserRole::Admin && props.domain_name != rc.user.domain_name {
            return Ok(MutResult::refused("no permission to execute create_group").into());
        }
        let props = GroupProps {
            name: None,
            description: props.description,
            is_active: props.is_active,
            domain_name: Some(props.domain_name),
            total_resource_slots: Some(
                slots_opt(props.total_resource_slots)?.unwrap_or_else(|| serde_json::json!({})),
            ),
            allowed_vfolder_hosts: props.allowed_vfolder_hosts,
            integration_id: props.integration_id,
            user_update_mode: None,
            user_uuids: None,
        };
        Ok(run(ctx, AdminOp::CreateGroup { name, props }, ADMINS)
            .await?
            .into())
    }

    async fn modify_group(
        &self,
        ctx: &Context<'_>,
        gid: Uuid,
        props: ModifyGroupInput,
    ) -> GqlResult<ModifyGroup> {
        if props.name.as_deref().is_some_and(|n| !is_slug(n)) {
            return Err(async_graphql::Error::new(
                "invalid name format. slug format required.",
            ));
        }
        if let Some(mode) = props.user_update_mode.as_deref() {
            if mode != "add" && mode != "remove" {
                return Ok(MutResult::refused("invalid user_update_mode").into());
            }
        }
        let props = GroupProps {
            name: props.name,
            description: props.description,
            is_active: props.is_active,
            domain_name: props.domain_name,
            total_resource_slots: slots_opt(props.total_resource_slots)?,
            allowed_vfolder_hosts: props.allowed_vfolder_hosts,
            integration_id: props.integration_id,
            user_update_mode: props.user_update_mode,
            user_uuids: uuids(props.user_uuids, "user uuid")?,
        };
        Ok(run(ctx, AdminOp::ModifyGroup { gid, props }, ADMINS)
            .await?
            .into())
    }

    async fn delete_group(&self, ctx: &Context<'_>, gid: Uuid) -> GqlResult<DeleteGroup> {
        Ok(run(ctx, AdminOp::DeleteGroup { gid }, ADMINS).await?.into())
    }

    async fn purge_group(&self, ctx: &Context<'_>, gid: Uuid) -> GqlResult<PurgeGroup> {
        Ok(run(ctx, AdminOp::PurgeGroup { gid }, ADMINS).await?.into())
    }

    // ------------------------------------------------------------------ users

    async fn create_user(
        &self,
        ctx: &Context<'_>,
        email: String,
        props: UserInput,
    ) -> GqlResult<CreateUser> {
        check_role_value(&props.role)?;
        check_status_value(&props.status)?;
        if rc(ctx).role() != UserRole::Superadmin {
            return Ok(MutResult::refused("no permission to execute create_user").into());
        }
        let props = UserProps {
            username: Some(props.username),
            password_hash: Some(bcrypt(props.password).await?),
            need_password_change: Some(props.need_password_change),
            full_name: props.full_name,
            description: props.description,
            is_active: props.is_active,
            status: props.status,
            domain_name: Some(props.domain_name),
            role: props.role,
            group_ids: uuids(props.group_ids, "group id")?,
        };
        Ok(run(ctx, AdminOp::CreateUser { email, props }, SUPERADMIN)
            .await?
            .into())
    }

    async fn modify_user(
        &self,
        ctx: &Context<'_>,
        email: String,
        props: ModifyUserInput,
    ) -> GqlResult<ModifyUser> {
        check_role_value(&props.role)?;
        check_status_value(&props.status)?;
        if rc(ctx).role() != UserRole::Superadmin {
            return Ok(MutResult::refused("no permission to execute modify_user").into());
        }
        let password_hash = match props.password.filter(|p| !p.is_empty()) {
            Some(p) => Some(bcrypt(p).await?),
            None => None,
        };
        let props = UserProps {
            username: props.username,
            password_hash,
            need_password_change: props.need_password_change,
            full_name: props.full_name,
            description: props.description,
            is_active: props.is_active,
            status: props.status,
            domain_name: props.domain_name,
            role: props.role,
            group_ids: uuids(props.group_ids, "group id")?,
        };
        Ok(run(ctx, AdminOp::ModifyUser { email, props }, SUPERADMIN)
            .await?
            .into())
    }

    async fn delete_user(&self, ctx: &Context<'_>, email: String) -> GqlResult<DeleteUser> {
        Ok(run(ctx, AdminOp::DeleteUser { email }, SUPERADMIN)
            .await?
            .into())
    }

    async fn purge_user(
        &self,
        ctx: &Context<'_>,
        email: String,
        props: PurgeUserInput,
    ) -> GqlResult<PurgeUser> {
        let purge_shared_vfolders = props.purge_shared_vfolders.unwrap_or(false);
        Ok(run(
            ctx,
            AdminOp::PurgeUser {
                email,
                purge_shared_vfolders,
            },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    // ------------------------------------------------------------------ keypairs

    async fn create_keypair(
        &self,
        ctx: &Context<'_>,
        user_id: String,
        props: KeyPairInput,
    ) -> GqlResult<CreateKeyPair> {
        let _ = props.concurrency_limit;
        let props = KeyPairProps {
            is_active: props.is_active,
            is_admin: props.is_admin,
            resource_policy: Some(props.resource_policy),
            rate_limit: Some(props.rate_limit),
        };
        Ok(
            run(ctx, AdminOp::CreateKeypair { user_id, props }, SUPERADMIN)
                .await?
                .into(),
        )
    }

    async fn modify_keypair(
        &self,
        ctx: &Context<'_>,
        access_key: String,
        props: ModifyKeyPairInput,
    ) -> GqlResult<ModifyKeyPair> {
        let _ = props.concurrency_limit;
        let props = KeyPairProps {
            is_active: props.is_active,
            is_admin: props.is_admin,
            resource_policy: props.resource_policy,
            rate_limit: props.rate_limit,
        };
        Ok(run(
            ctx,
            AdminOp::ModifyKeypair { access_key, props },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn delete_keypair(
        &self,
        ctx: &Context<'_>,
        access_key: String,
    ) -> GqlResult<DeleteKeyPair> {
        Ok(run(ctx, AdminOp::DeleteKeypair { access_key }, SUPERADMIN)
            .await?
            .into())
    }

    // ------------------------------------------------------------------ images

    /// Starts the `rescan_images` background task in the worker fleet (registries of type
    /// `local` are read; see `bai_workers::bgtask::rescan`); progress and the outcome are on
    /// `/events/background-task?task_id=`.
    async fn rescan_images(
        &self,
        ctx: &Context<'_>,
        registry: Option<String>,
    ) -> GqlResult<RescanImages> {
        let rc = rc(ctx);
        if !ADMINS.contains(&rc.role()) {
            return Ok(RescanImages {
                ok: Some(false),
                msg: Some("no permission to execute rescan_images".into()),
                task_id: None,
            });
        }
        if let Ok(Some(s)) = rc.state.etcd.get("manager/status").await {
            if s.trim().eq_ignore_ascii_case("frozen") {
                return Err(gql_err(ApiError::server_frozen()));
            }
        }
        let task_id = crate::routes::events::start_background_task(
            &rc.state,
            &crate::commands::ReqId::default(),
            bai_events::bgtask::KIND_RESCAN_IMAGES,
            serde_json::json!({ "registry": registry }),
        )
        .await
        .map_err(gql_err)?;
        Ok(RescanImages {
            ok: Some(true),
            msg: Some(String::new()),
            task_id: Some(task_id),
        })
    }

    async fn preload_image(
        &self,
        references: Vec<String>,
        target_agents: Vec<String>,
    ) -> PreloadImage {
        let _ = (references, target_agents);
        PreloadImage {
            ok: Some(false),
            msg: Some("Not implemented.".into()),
            task_id: None,
        }
    }

    async fn unload_image(
        &self,
        references: Vec<String>,
        target_agents: Vec<String>,
    ) -> UnloadImage {
        let _ = (references, target_agents);
        UnloadImage {
            ok: Some(false),
            msg: Some("Not implemented.".into()),
            task_id: None,
        }
    }

    async fn forget_image(&self, ctx: &Context<'_>, reference: String) -> GqlResult<ForgetImage> {
        Ok(run(ctx, AdminOp::ForgetImage { reference }, SUPERADMIN)
            .await?
            .into())
    }

    async fn alias_image(
        &self,
        ctx: &Context<'_>,
        alias: String,
        target: String,
    ) -> GqlResult<AliasImage> {
        Ok(run(ctx, AdminOp::AliasImage { alias, target }, SUPERADMIN)
            .await?
            .into())
    }

    async fn dealias_image(&self, ctx: &Context<'_>, alias: String) -> GqlResult<DealiasImage> {
        Ok(run(ctx, AdminOp::DealiasImage { alias }, SUPERADMIN)
            .await?
            .into())
    }

    async fn modify_image(
        &self,
        ctx: &Context<'_>,
        target: String,
        props: ModifyImageInput,
    ) -> GqlResult<ModifyImage> {
        let props = ImageProps {
            digest: props.digest,
            size_bytes: props.size_bytes.map(|b| b.0),
            labels: props
                .labels
                .map(|l| l.into_iter().map(|kv| (kv.key, kv.value)).collect()),
            resource_limits: props.resource_limits.map(|l| {
                l.into_iter()
                    .map(|r| ImageResourceLimit {
                        key: r.key,
                        min: r.min,
                        max: r.max,
                    })
                    .collect()
            }),
            supported_accelerators: props.supported_accelerators,
        };
        Ok(run(ctx, AdminOp::ModifyImage { target, props }, SUPERADMIN)
            .await?
            .into())
    }

    // ------------------------------------------------------------------ resource policies

    async fn create_keypair_resource_policy(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: CreateKeyPairResourcePolicyInput,
    ) -> GqlResult<CreateKeyPairResourcePolicy> {
        let props = policy_props(
            Some(props.default_for_unspecified),
            Some(props.total_resource_slots),
            Some(props.max_concurrent_sessions),
            Some(props.max_containers_per_session),
            Some(props.idle_timeout),
            Some(props.max_vfolder_count),
            Some(props.max_vfolder_size),
            Some(props.allowed_vfolder_hosts.unwrap_or_default()),
        )?;
        Ok(run(
            ctx,
            AdminOp::CreateKeypairResourcePolicy { name, props },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn modify_keypair_resource_policy(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: ModifyKeyPairResourcePolicyInput,
    ) -> GqlResult<ModifyKeyPairResourcePolicy> {
        let props = policy_props(
            props.default_for_unspecified,
            props.total_resource_slots,
            props.max_concurrent_sessions,
            props.max_containers_per_session,
            props.idle_timeout,
            props.max_vfolder_count,
            props.max_vfolder_size,
            props.allowed_vfolder_hosts,
        )?;
        Ok(run(
            ctx,
            AdminOp::ModifyKeypairResourcePolicy { name, props },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn delete_keypair_resource_policy(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> GqlResult<DeleteKeyPairResourcePolicy> {
        Ok(run(
            ctx,
            AdminOp::DeleteKeypairResourcePolicy { name },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    // ------------------------------------------------------------------ resource presets

    async fn create_resource_preset(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: CreateResourcePresetInput,
    ) -> GqlResult<CreateResourcePreset> {
        let props = ResourcePresetProps {
            resource_slots: Some(parse_slots(&props.resource_slots.0).map_err(invalid_params)?),
            shared_memory: shared_memory(props.shared_memory)?,
        };
        Ok(run(
            ctx,
            AdminOp::CreateResourcePreset { name, props },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn modify_resource_preset(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: ModifyResourcePresetInput,
    ) -> GqlResult<ModifyResourcePreset> {
        let props = ResourcePresetProps {
            resource_slots: slots_opt(props.resource_slots)?,
            shared_memory: shared_memory(props.shared_memory)?,
        };
        Ok(run(
            ctx,
            AdminOp::ModifyResourcePreset { name, props },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn delete_resource_preset(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> GqlResult<DeleteResourcePreset> {
        Ok(run(ctx, AdminOp::DeleteResourcePreset { name }, SUPERADMIN)
            .await?
            .into())
    }

    // ------------------------------------------------------------------ scaling groups

    async fn create_scaling_group(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: CreateScalingGroupInput,
    ) -> GqlResult<CreateScalingGroup> {
        let props = ScalingGroupProps {
            description: props.description,
            is_active: props.is_active,
            driver: Some(props.driver),
            driver_opts: json_opt(props.driver_opts),
            scheduler: Some(props.scheduler),
            scheduler_opts: json_opt(props.scheduler_opts),
        };
        Ok(
            run(ctx, AdminOp::CreateScalingGroup { name, props }, SUPERADMIN)
                .await?
                .into(),
        )
    }

    async fn modify_scaling_group(
        &self,
        ctx: &Context<'_>,
        name: String,
        props: ModifyScalingGroupInput,
    ) -> GqlResult<ModifyScalingGroup> {
        let props = ScalingGroupProps {
            description: props.description,
            is_active: props.is_active,
            driver: props.driver,
            driver_opts: json_opt(props.driver_opts),
            scheduler: props.scheduler,
            scheduler_opts: json_opt(props.scheduler_opts),
        };
        Ok(
            run(ctx, AdminOp::ModifyScalingGroup { name, props }, SUPERADMIN)
                .await?
                .into(),
        )
    }

    async fn delete_scaling_group(
        &self,
        ctx: &Context<'_>,
        name: String,
    ) -> GqlResult<DeleteScalingGroup> {
        Ok(run(ctx, AdminOp::DeleteScalingGroup { name }, SUPERADMIN)
            .await?
            .into())
    }

    async fn associate_scaling_group_with_domain(
        &self,
        ctx: &Context<'_>,
        scaling_group: String,
        domain: String,
    ) -> GqlResult<AssociateScalingGroupWithDomain> {
        Ok(run(
            ctx,
            AdminOp::AssociateScalingGroupWithDomain {
                scaling_group,
                domain,
            },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn disassociate_scaling_group_with_domain(
        &self,
        ctx: &Context<'_>,
        scaling_group: String,
        domain: String,
    ) -> GqlResult<DisassociateScalingGroupWithDomain> {
        Ok(run(
            ctx,
            AdminOp::DisassociateScalingGroupWithDomain {
                scaling_group,
                domain,
            },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn disassociate_all_scaling_groups_with_domain(
        &self,
        ctx: &Context<'_>,
        domain: String,
    ) -> GqlResult<DisassociateAllScalingGroupsWithDomain> {
        Ok(run(
            ctx,
            AdminOp::DisassociateAllScalingGroupsWithDomain { domain },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn associate_scaling_group_with_user_group(
        &self,
        ctx: &Context<'_>,
        scaling_group: String,
        user_group: Uuid,
    ) -> GqlResult<AssociateScalingGroupWithUserGroup> {
        Ok(run(
            ctx,
            AdminOp::AssociateScalingGroupWithUserGroup {
                scaling_group,
                user_group,
            },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn disassociate_scaling_group_with_user_group(
        &self,
        ctx: &Context<'_>,
        scaling_group: String,
        user_group: Uuid,
    ) -> GqlResult<DisassociateScalingGroupWithUserGroup> {
        Ok(run(
            ctx,
            AdminOp::DisassociateScalingGroupWithUserGroup {
                scaling_group,
                user_group,
            },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn disassociate_all_scaling_groups_with_group(
        &self,
        ctx: &Context<'_>,
        user_group: Uuid,
    ) -> GqlResult<DisassociateAllScalingGroupsWithGroup> {
        Ok(run(
            ctx,
            AdminOp::DisassociateAllScalingGroupsWithGroup { user_group },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn associate_scaling_group_with_keypair(
        &self,
        ctx: &Context<'_>,
        scaling_group: String,
        access_key: String,
    ) -> GqlResult<AssociateScalingGroupWithKeyPair> {
        Ok(run(
            ctx,
            AdminOp::AssociateScalingGroupWithKeypair {
                scaling_group,
                access_key,
            },
            SUPERADMIN,
        )
        .await?
        .into())
    }

    async fn disassociate_scaling_group_with_keypair(
        &self,
        ctx: &Context<'_>,
        scaling_group: String,
        access_key: String,
    ) -> GqlResult<DisassociateScalingGroupWithKeyPair> {
        Ok(run(
            ctx,
            AdminOp::DisassociateScalingGroupWithKeypair {
                scaling_group,
                access_key,
            },
            SUPERADMIN,
        )
        .await?
        .into())
    }
}
