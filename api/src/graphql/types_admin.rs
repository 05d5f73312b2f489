//! Object types of the administrative tables: Domain, Group, User, KeyPair,
//! KeyPairResourcePolicy, ResourcePreset, ScalingGroup.
//!
//! Each wraps a row struct that is both `sqlx::FromRow` (queries) and `Deserialize` (the
//! item a worker returns in a mutation payload), so both paths render the same object.

use std::collections::HashMap;

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::context::{db_err, GqlResult, ReqCtx};
use super::scalars::{dt, js, BigInt, JsonString, PyDateTime};

pub fn rc<'a>(ctx: &'a Context<'_>) -> &'a ReqCtx {
    ctx.data_unchecked::<std::sync::Arc<ReqCtx>>()
}

// ------------------------------------------------------------------------------ Domain

pub const DOMAIN_COLS: &str = "d.name, d.description, d.is_active, d.created_at, d.modified_at, \
    d.total_resource_slots, d.allowed_vfolder_hosts, d.allowed_docker_registries, d.integration_id";

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct DomainRow {
    pub name: String,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub created_at: Option<DateTime<Utc>>,
    pub modified_at: Option<DateTime<Utc>>,
    pub total_resource_slots: Option<Value>,
    #[serde(default)]
    pub allowed_vfolder_hosts: Vec<String>,
    #[serde(default)]
    pub allowed_docker_registries: Vec<String>,
    pub integration_id: Option<String>,
}

pub struct Domain {
    pub row: DomainRow,
    /// Filled by list resolvers in one query; otherwise loaded on demand.
    pub scaling_groups: Option<Vec<String>>,
}

impl From<DomainRow> for Domain {
    fn from(row: DomainRow) -> Self {
        Self {
            row,
            scaling_groups: None,
        }
    }
}

/// Scaling-group names per domain, for many domains at once.
pub async fn sgroups_for_domains(
    rc: &ReqCtx,
    names: &[String],
) -> GqlResult<HashMap<String, Vec<String>>> {
    let rows: Vec<(String, String)> = sqlx::query_as(
        "SELECT domain, scaling_group FROM sgroups_for_domains WHERE domain = ANY($1) ORDER BY scaling_group",
    )
    .bind(names)
    .fetch_all(&mut **rc.db().await?)
    .await
    .map_err(db_err)?;
    let mut out: HashMap<String, Vec<String>> = HashMap::new();
    for (d, s) in rows {
        out.entry(d).or_default().push(s);
    }
    Ok(out)
}

pub async fn sgroups_for_groups(
    rc: &ReqCtx,
    ids: &[Uuid],
) -> GqlResult<HashMap<Uuid, Vec<String>>> {
    let rows: Vec<(Uuid, String)> = sqlx::query_as(
        "SELECT \"group\", scaling_group FROM sgroups_for_groups WHERE \"group\" = ANY($1) ORDER BY scaling_group",
    )
    .bind(ids)
    .fetch_all(&mut **rc.db().await?)
    .await
    .map_err(db_err)?;
    let mut out: HashMap<Uuid, Vec<String>> = HashMap::new();
    for (g, s) in rows {
        out.entry(g).or_default().push(s);
    }
    Ok(out)
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl Domain {
    async fn name(&self) -> Option<&str> {
        Some(&self.row.name)
    }
    async fn description(&self) -> Option<&str> {
        self.row.description.as_deref()
    }
    async fn is_active(&self) -> Option<bool> {
        self.row.is_active
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn modified_at(&self) -> Option<PyDateTime> {
        dt(self.row.modified_at)
    }
    async fn total_resource_slots(&self) -> Option<JsonString> {
        js(self.row.total_resource_slots.clone())
    }
    async fn allowed_vfolder_hosts(&self) -> Option<Vec<String>> {
        Some(self.row.allowed_vfolder_hosts.clone())
    }
    async fn allowed_docker_registries(&self) -> Option<Vec<String>> {
        Some(self.row.allowed_docker_registries.clone())
    }
    async fn integration_id(&self) -> Option<&str> {
        self.row.integration_id.as_deref()
    }
    async fn scaling_groups(&self, ctx: &Context<'_>) -> GqlResult<Option<Vec<String>>> {
        if let Some(s) = &self.scaling_groups {
            return Ok(Some(s.clone()));
        }
        let mut m = sgroups_for_domains(rc(ctx), std::slice::from_ref(&self.row.name)).await?;
        Ok(Some(m.remove(&self.row.name).unwrap_or_default()))
    }
}

// ------------------------------------------------------------------------------- Group

pub const GROUP_COLS: &str =
    "g.id, g.name, g.description, g.is_active, g.created_at, g.modified_at, \
    g.integration_id, g.domain_name, g.total_resource_slots, g.allowed_vfolder_hosts";

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct GroupRow {
    pub id: Uuid,
    pub name: String,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub created_at: Option<DateTime<Utc>>,
    pub modified_at: Option<DateTime<Utc>>,
    pub integration_id: Option<String>,
    pub domain_name: String,
    pub total_resource_slots: Option<Value>,
    #[serde(default)]
    pub allowed_vfolder_hosts: Vec<String>,
}

pub struct Group {
    pub row: GroupRow,
    pub scaling_groups: Option<Vec<String>>,
}

impl From<GroupRow> for Group {
    fn from(row: GroupRow) -> Self {
        Self {
            row,
            scaling_groups: None,
        }
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl Group {
    async fn id(&self) -> Option<Uuid> {
        Some(self.row.id)
    }
    async fn name(&self) -> Option<&str> {
        Some(&self.row.name)
    }
    async fn description(&self) -> Option<&str> {
        self.row.description.as_deref()
    }
    async fn is_active(&self) -> Option<bool> {
        self.row.is_active
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn modified_at(&self) -> Option<PyDateTime> {
        dt(self.row.modified_at)
    }
    async fn domain_name(&self) -> Option<&str> {
        Some(&self.row.domain_name)
    }
    async fn integration_id(&self) -> Option<&str> {
        self.row.integration_id.as_deref()
    }
    async fn total_resource_slots(&self) -> Option<JsonString> {
        js(self.row.total_resource_slots.clone())
    }
    async fn allowed_vfolder_hosts(&self) -> Option<Vec<String>> {
        Some(self.row.allowed_vfolder_hosts.clone())
    }
    async fn scaling_groups(&self, ctx: &Context<'_>) -> GqlResult<Option<Vec<String>>> {
        if let Some(s) = &self.scaling_groups {
            return Ok(Some(s.clone()));
        }
        let mut m = sgroups_for_groups(rc(ctx), &[self.row.id]).await?;
        Ok(Some(m.remove(&self.row.id).unwrap_or_default()))
    }
}

// -------------------------------------------------------------------------------- User

pub const USER_COLS: &str = "u.uuid, u.username, u.email, u.need_password_change, u.full_name, \
    u.description, u.status::text AS status, u.status_info, u.created_at, u.modified_at, \
    u.domain_name, u.role::text AS role, u.integration_id";

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct UserRow {
    pub uuid: Uuid,
    pub username: Option<String>,
    pub email: String,
    pub need_password_change: Option<bool>,
    pub full_name: Option<String>,
    pub description: Option<String>,
    pub status: String,
    pub status_info: Option<String>,
    pub created_at: Option<DateTime<Utc>>,
    pub modified_at: Option<DateTime<Utc>>,
    pub domain_name: Option<String>,
    pub role: Option<String>,
    pub integration_id: Option<String>,
}

#[derive(Debug, Clone, SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct UserGroup {
    pub id: Option<Uuid>,
    pub name: Option<String>,
}

pub struct User {
    pub row: UserRow,
    pub groups: Option<Vec<UserGroup>>,
}

impl From<UserRow> for User {
    fn from(row: UserRow) -> Self {
        Self { row, groups: None }
    }
}

pub async fn groups_of_users(
    rc: &ReqCtx,
    ids: &[Uuid],
) -> GqlResult<HashMap<Uuid, Vec<UserGroup>>> {
    let rows: Vec<(Uuid, Uuid, String)> = sqlx::query_as(
        "SELECT a.user_id, g.id, g.name FROM association_groups_users a \
         JOIN groups g ON g.id = a.group_id WHERE a.user_id = ANY($1) ORDER BY g.name",
    )
    .bind(ids)
    .fetch_all(&mut **rc.db().await?)
    .await
    .map_err(db_err)?;
    let mut out: HashMap<Uuid, Vec<UserGroup>> = HashMap::new();
    for (u, id, name) in rows {
        out.entry(u).or_default().push(UserGroup {
            id: Some(id),
            name: Some(name),
        });
    }
    Ok(out)
}

/// Fills `groups` of many users with one query when the selection asks for them.
pub async fn prefetch_user_groups(rc: &ReqCtx, users: &mut [User]) -> GqlResult<()> {
    let ids: Vec<Uuid> = users.iter().map(|u| u.row.uuid).collect();
    let mut m = groups_of_users(rc, &ids).await?;
    for u in users {
        u.groups = Some(m.remove(&u.row.uuid).unwrap_or_default());
    }
    Ok(())
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl User {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.row.uuid.to_string()))
    }
    async fn uuid(&self) -> Option<Uuid> {
        Some(self.row.uuid)
    }
    async fn username(&self) -> Option<&str> {
        self.row.username.as_deref()
    }
    async fn email(&self) -> Option<&str> {
        Some(&self.row.email)
    }
    /// Always null (the hash is never exposed); removed from the schema in 21.03.13+.
    async fn password(&self) -> Option<String> {
        None
    }
    async fn need_password_change(&self) -> Option<bool> {
        self.row.need_password_change
    }
    async fn full_name(&self) -> Option<&str> {
        self.row.full_name.as_deref()
    }
    async fn description(&self) -> Option<&str> {
        self.row.description.as_deref()
    }
    async fn is_active(&self) -> Option<bool> {
        Some(self.row.status == "active")
    }
    async fn status(&self) -> Option<&str> {
        Some(&self.row.status)
    }
    async fn status_info(&self) -> Option<&str> {
        self.row.status_info.as_deref()
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn modified_at(&self) -> Option<PyDateTime> {
        dt(self.row.modified_at)
    }
    async fn domain_name(&self) -> Option<&str> {
        self.row.domain_name.as_deref()
    }
    async fn role(&self) -> Option<&str> {
        self.row.role.as_deref()
    }
    async fn groups(&self, ctx: &Context<'_>) -> GqlResult<Option<Vec<UserGroup>>> {
        if let Some(g) = &self.groups {
            return Ok(Some(g.clone()));
        }
        let mut m = groups_of_users(rc(ctx), &[self.row.uuid]).await?;
        Ok(Some(m.remove(&self.row.uuid).unwrap_or_default()))
    }
}

// ----------------------------------------------------------------------------- KeyPair

/// Keypair columns plus the owner's email/full name/domain (one join instead of a query
/// per item for `user_info`).
pub const KEYPAIR_COLS: &str = "k.user_id, k.access_key, k.secret_key, k.is_active, k.is_admin, \
    k.resource_policy, k.created_at, k.last_used, k.concurrency_used, k.rate_limit, k.\"user\", \
    k.ssh_public_key, u.email AS owner_email, u.full_name AS owner_full_name";
pub const KEYPAIR_FROM: &str = "keypairs k LEFT JOIN users u ON u.uuid = k.\"user\"";

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct KeyPairRow {
    pub user_id: Option<String>,
    pub access_key: String,
    pub secret_key: Option<String>,
    pub is_active: Option<bool>,
    pub is_admin: Option<bool>,
    pub resource_policy: String,
    pub created_at: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
    pub concurrency_used: Option<i32>,
    pub rate_limit: Option<i32>,
    pub user: Uuid,
    pub ssh_public_key: Option<String>,
    #[serde(default)]
    pub owner_email: Option<String>,
    #[serde(default)]
    pub owner_full_name: Option<String>,
}

pub struct KeyPair {
    pub row: KeyPairRow,
}

#[derive(Debug, Clone, SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct UserInfo {
    pub email: Option<String>,
    pub full_name: Option<String>,
}

/// `kp:{access_key}:num_queries` from Redis; 0 when missing or Redis is away.
pub async fn num_queries(rc: &ReqCtx, access_key: &str) -> i64 {
    let Ok(mut conn) = rc.state.redis.get().await else {
        return 0;
    };
    bai_core::redis::redis::cmd("GET")
        .arg(format!("kp:{access_key}:num_queries"))
        .query_async::<Option<i64>>(&mut *conn)
        .await
        .ok()
        .flatten()
        .unwrap_or(0)
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl KeyPair {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.row.access_key.clone()))
    }
    async fn user_id(&self) -> Option<&str> {
        self.row.user_id.as_deref()
    }
    async fn access_key(&self) -> Option<&str> {
        Some(&self.row.access_key)
    }
    async fn secret_key(&self) -> Option<&str> {
        self.row.secret_key.as_deref()
    }
    async fn is_active(&self) -> Option<bool> {
        self.row.is_active
    }
    async fn is_admin(&self) -> Option<bool> {
        self.row.is_admin
    }
    async fn resource_policy(&self) -> Option<&str> {
        Some(&self.row.resource_policy)
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn last_used(&self) -> Option<PyDateTime> {
        dt(self.row.last_used)
    }
    /// Deprecated; always 0 as in 21.03.
    async fn concurrency_limit(&self) -> Option<i32> {
        Some(0)
    }
    async fn concurrency_used(&self) -> Option<i32> {
        self.row.concurrency_used
    }
    async fn rate_limit(&self) -> Option<i32> {
        self.row.rate_limit
    }
    /// From Redis (`kp:{access_key}:num_queries`), not from the DB column.
    async fn num_queries(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(num_queries(rc(ctx), &self.row.access_key).await))
    }
    async fn user(&self) -> Option<Uuid> {
        Some(self.row.user)
    }
    async fn ssh_public_key(&self) -> Option<&str> {
        self.row.ssh_public_key.as_deref()
    }
    async fn user_info(&self, ctx: &Context<'_>) -> GqlResult<Option<UserInfo>> {
        if self.row.owner_email.is_some() {
            return Ok(Some(UserInfo {
                email: self.row.owner_email.clone(),
                full_name: self.row.owner_full_name.clone(),
            }));
        }
        let row: Option<(String, Option<String>)> =
            sqlx::query_as("SELECT email, full_name FROM users WHERE uuid = $1")
                .bind(self.row.user)
                .fetch_optional(&mut **rc(ctx).db().await?)
                .await
                .map_err(db_err)?;
        Ok(row.map(|(email, full_name)| UserInfo {
            email: Some(email),
            full_name,
        }))
    }
    /// The owner's virtual folders (broken in 21.03.6, working here).
    async fn vfolders(
        &self,
        ctx: &Context<'_>,
    ) -> GqlResult<Option<Vec<super::types_infra::VirtualFolder>>> {
        super::types_infra::VirtualFolder::of_user(rc(ctx), self.row.user)
            .await
            .map(Some)
    }
    /// Sessions of this keypair (broken in 21.03.6, working here).
    async fn compute_sessions(
        &self,
        ctx: &Context<'_>,
        status: Option<String>,
    ) -> GqlResult<Option<Vec<super::types_session::ComputeSession>>> {
        super::types_session::ComputeSession::of_access_key(rc(ctx), &self.row.access_key, status)
            .await
            .map(Some)
    }
}

// --------------------------------------------------------------- KeyPairResourcePolicy

pub const POLICY_COLS: &str =
    "p.name, p.created_at, p.default_for_unspecified::text AS default_for_unspecified, \
    p.total_resource_slots, p.max_concurrent_sessions, p.max_containers_per_session, \
    p.max_vfolder_count, p.max_vfolder_size, p.idle_timeout, p.allowed_vfolder_hosts";

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct PolicyRow {
    pub name: String,
    pub created_at: Option<DateTime<Utc>>,
    pub default_for_unspecified: String,
    pub total_resource_slots: Value,
    pub max_concurrent_sessions: i32,
    pub max_containers_per_session: i32,
    pub max_vfolder_count: i32,
    pub max_vfolder_size: i64,
    pub idle_timeout: i64,
    #[serde(default)]
    pub allowed_vfolder_hosts: Vec<String>,
}

pub struct KeyPairResourcePolicy {
    pub row: PolicyRow,
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl KeyPairResourcePolicy {
    async fn name(&self) -> Option<&str> {
        Some(&self.row.name)
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn default_for_unspecified(&self) -> Option<&str> {
        Some(&self.row.default_for_unspecified)
    }
    async fn total_resource_slots(&self) -> Option<JsonString> {
        Some(JsonString(self.row.total_resource_slots.clone()))
    }
    async fn max_concurrent_sessions(&self) -> Option<i32> {
        Some(self.row.max_concurrent_sessions)
    }
    async fn max_containers_per_session(&self) -> Option<i32> {
        Some(self.row.max_containers_per_session)
    }
    async fn idle_timeout(&self) -> Option<BigInt> {
        Some(BigInt(self.row.idle_timeout))
    }
    async fn max_vfolder_count(&self) -> Option<i32> {
        Some(self.row.max_vfolder_count)
    }
    async fn max_vfolder_size(&self) -> Option<BigInt> {
        Some(BigInt(self.row.max_vfolder_size))
    }
    async fn allowed_vfolder_hosts(&self) -> Option<Vec<String>> {
        Some(self.row.allowed_vfolder_hosts.clone())
    }
}

// ------------------------------------------------------------------------ ResourcePreset

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct PresetRow {
    pub name: String,
    pub resource_slots: Value,
    pub shared_memory: Option<i64>,
}

pub struct ResourcePreset {
    pub row: PresetRow,
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl ResourcePreset {
    async fn name(&self) -> Option<&str> {
        Some(&self.row.name)
    }
    async fn resource_slots(&self) -> Option<JsonString> {
        Some(JsonString(self.row.resource_slots.clone()))
    }
    /// null when NULL or 0, as in the original.
    async fn shared_memory(&self) -> Option<BigInt> {
        self.row.shared_memory.filter(|v| *v != 0).map(BigInt)
    }
}

// -------------------------------------------------------------------------- ScalingGroup

pub const SGROUP_COLS: &str =
    "s.name, s.description, s.is_active, s.created_at, s.driver, s.driver_opts, s.scheduler, s.scheduler_opts";

#[derive(Debug, Clone, sqlx::FromRow, Deserialize)]
pub struct ScalingGroupRow {
    pub name: String,
    pub description: Option<String>,
    pub is_active: Option<bool>,
    pub created_at: Option<DateTime<Utc>>,
    pub driver: String,
    pub driver_opts: Value,
    pub scheduler: String,
    pub scheduler_opts: Value,
}

pub struct ScalingGroup {
    pub row: ScalingGroupRow,
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl ScalingGroup {
    async fn name(&self) -> Option<&str> {
        Some(&self.row.name)
    }
    async fn description(&self) -> Option<&str> {
        self.row.description.as_deref()
    }
    async fn is_active(&self) -> Option<bool> {
        self.row.is_active
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn driver(&self) -> Option<&str> {
        Some(&self.row.driver)
    }
    async fn driver_opts(&self) -> Option<JsonString> {
        Some(JsonString(self.row.driver_opts.clone()))
    }
    async fn scheduler(&self) -> Option<&str> {
        Some(&self.row.scheduler)
    }
    async fn scheduler_opts(&self) -> Option<JsonString> {
        Some(JsonString(self.row.scheduler_opts.clone()))
    }
}
