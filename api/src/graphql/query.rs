//! Root `Queries`: the 21.03.6 fields plus the 21.03.18 superset (`filter`/`order` on the
//! paginated lists, `groups_by_name`, `group(domain_name)`), with the original's role
//! scoping. Every statement runs in the request's read-only transaction.

use async_graphql::{Context, Object, SimpleObject};
use sqlx::postgres::PgRow;
use sqlx::{FromRow, Row};
use uuid::Uuid;

use crate::auth::UserRole;
use crate::error::ApiError;

use super::context::{
    db_err, gql_err, insufficient_privilege, invalid_params, scoped, unknown_role, GqlResult,
    ReqCtx, UserKey,
};
use super::sql::{compile_filter, compile_order, legacy_order, Bind, Field, Kind, Sql, Where};
use super::types_admin::*;
use super::types_infra::*;
use super::types_session::*;

pub struct Queries;

// ------------------------------------------------------------------ filterable fields

const AGENT_FIELDS: &[Field] = &[
    ("id", "a.id", Kind::Text),
    ("status", "a.status::text", Kind::Text),
    ("status_changed", "a.status_changed", Kind::Timestamp),
    ("region", "a.region", Kind::Text),
    ("scaling_group", "a.scaling_group", Kind::Text),
    ("schedulable", "a.schedulable", Kind::Bool),
    ("addr", "a.addr", Kind::Text),
    ("first_contact", "a.first_contact", Kind::Timestamp),
    ("lost_at", "a.lost_at", Kind::Timestamp),
    ("version", "a.version", Kind::Text),
];

const SESSION_FIELDS: &[Field] = &[
    ("id", "k.id::text", Kind::Uuid),
    ("session_id", "k.session_id::text", Kind::Uuid),
    ("type", "k.session_type::text", Kind::Text),
    ("name", "k.session_name", Kind::Text),
    ("image", "k.image", Kind::Text),
    ("tag", "k.tag", Kind::Text),
    ("domain_name", "k.domain_name", Kind::Text),
    ("group_name", "g.name", Kind::Text),
    ("user_email", "u.email", Kind::Text),
    ("access_key", "k.access_key", Kind::Text),
    ("scaling_group", "k.scaling_group", Kind::Text),
    ("cluster_mode", "k.cluster_mode", Kind::Text),
    ("cluster_template", "NULL::text", Kind::Text),
    ("cluster_size", "k.cluster_size", Kind::Int),
    ("status", "k.status::text", Kind::Text),
    ("status_info", "k.status_info", Kind::Text),
    ("status_changed", "k.status_changed", Kind::Timestamp),
    ("result", "k.result::text", Kind::Text),
    ("created_at", "k.created_at", Kind::Timestamp),
    ("terminated_at", "k.terminated_at", Kind::Timestamp),
    ("starts_at", "k.starts_at", Kind::Timestamp),
    ("startup_command", "k.startup_command", Kind::Text),
];

const CONTAINER_FIELDS: &[Field] = &[
    ("id", "k.id::text", Kind::Uuid),
    ("image", "k.image", Kind::Text),
    ("agent", "k.agent", Kind::Text),
    ("cluster_idx", "k.cluster_idx", Kind::Int),
    ("cluster_role", "k.cluster_role", Kind::Text),
    ("cluster_hostname", "k.cluster_hostname", Kind::Text),
    ("status", "k.status::text", Kind::Text),
    ("status_info", "k.status_info", Kind::Text),
    ("created_at", "k.created_at", Kind::Timestamp),
    ("status_changed", "k.status_changed", Kind::Timestamp),
    ("terminated_at", "k.terminated_at", Kind::Timestamp),
];

/// Base-table columns accepted by the 21.03.6 `order_key` for kernels.
const KERNEL_ORDER_KEYS: &[Field] = &[
    ("id", "k.id", Kind::Uuid),
    ("session_id", "k.session_id", Kind::Uuid),
    ("session_name", "k.session_name", Kind::Text),
    ("session_type", "k.session_type", Kind::Text),
    ("cluster_role", "k.cluster_role", Kind::Text),
    ("cluster_idx", "k.cluster_idx", Kind::Int),
    ("cluster_hostname", "k.cluster_hostname", Kind::Text),
    ("scaling_group", "k.scaling_group", Kind::Text),
    ("agent", "k.agent", Kind::Text),
    ("domain_name", "k.domain_name", Kind::Text),
    ("group_id", "k.group_id", Kind::Uuid),
    ("user_uuid", "k.user_uuid", Kind::Uuid),
    ("access_key", "k.access_key", Kind::Text),
    ("image", "k.image", Kind::Text),
    ("tag", "k.tag", Kind::Text),
    ("created_at", "k.created_at", Kind::Timestamp),
    ("terminated_at", "k.terminated_at", Kind::Timestamp),
    ("starts_at", "k.starts_at", Kind::Timestamp),
    ("status", "k.status", Kind::Text),
    ("status_changed", "k.status_changed", Kind::Timestamp),
    ("status_info", "k.status_info", Kind::Text),
    ("result", "k.result", Kind::Text),
    ("num_queries", "k.num_queries", Kind::Int),
];

const KEYPAIR_FIELDS: &[Field] = &[
    ("access_key", "k.access_key", Kind::Text),
    ("user_id", "k.user_id", Kind::Text),
    ("email", "u.email", Kind::Text),
    ("is_active", "k.is_active", Kind::Bool),
    ("is_admin", "k.is_admin", Kind::Bool),
    ("resource_policy", "k.resource_policy", Kind::Text),
    ("created_at", "k.created_at", Kind::Timestamp),
    ("last_used", "k.last_used", Kind::Timestamp),
    ("concurrency_limit", "0", Kind::Int),
    ("concurrency_used", "k.concurrency_used", Kind::Int),
    ("rate_limit", "k.rate_limit", Kind::Int),
    ("num_queries", "k.num_queries", Kind::Int),
    ("ssh_public_key", "k.ssh_public_key", Kind::Text),
    ("modified_at", "k.modified_at", Kind::Timestamp),
    ("user", "k.\"user\"::text", Kind::Uuid),
];

const USER_FIELDS: &[Field] = &[
    ("uuid", "u.uuid::text", Kind::Uuid),
    ("username", "u.username", Kind::Text),
    ("email", "u.email", Kind::Text),
    ("need_password_change", "u.need_password_change", Kind::Bool),
    ("full_name", "u.full_name", Kind::Text),
    ("description", "u.description", Kind::Text),
    ("is_active", "(u.status = 'active')", Kind::Bool),
    ("status", "u.status::text", Kind::Text),
    ("status_info", "u.status_info", Kind::Text),
    ("created_at", "u.created_at", Kind::Timestamp),
    ("modified_at", "u.modified_at", Kind::Timestamp),
    ("domain_name", "u.domain_name", Kind::Text),
    ("role", "u.role::text", Kind::Text),
    ("integration_id", "u.integration_id", Kind::Text),
];

const VFOLDER_FIELDS: &[Field] = &[
    ("id", "v.id::text", Kind::Uuid),
    ("host", "v.host", Kind::Text),
    ("name", "v.name", Kind::Text),
    ("group", "v.\"group\"::text", Kind::Uuid),
    ("user", "v.\"user\"::text", Kind::Uuid),
    ("user_email", "u.email", Kind::Text),
    ("creator", "v.creator", Kind::Text),
    ("unmanaged_path", "v.unmanaged_path", Kind::Text),
    ("usage_mode", "v.usage_mode::text", Kind::Text),
    ("permission", "v.permission::text", Kind::Text),
    ("ownership_type", "v.ownership_type::text", Kind::Text),
    ("max_files", "v.max_files", Kind::Int),
    ("max_size", "v.max_size", Kind::Int),
    ("created_at", "v.created_at", Kind::Timestamp),
    ("last_used", "v.last_used", Kind::Timestamp),
    ("cloneable", "v.cloneable", Kind::Bool),
];

const KERNEL_STATUSES: &[&str] = &[
    "PENDING",
    "SCHEDULED",
    "PREPARING",
    "BUILDING",
    "PULLING",
    "RUNNING",
    "RESTARTING",
    "RESIZING",
    "SUSPENDED",
    "TERMINATING",
    "TERMINATED",
    "ERROR",
    "CANCELLED",
];
const AGENT_STATUSES: &[&str] = &["ALIVE", "LOST", "RESTARTING", "TERMINATED"];
const USER_STATUSES: &[&str] = &["active", "inactive", "deleted", "before-verification"];

// --------------------------------------------------------------------- list helpers

macro_rules! paginated {
    ($name:ident, $item:ty, $gql:literal) => {
        #[derive(SimpleObject)]
        #[graphql(name = $gql, rename_fields = "snake_case")]
        pub struct $name {
            pub items: Vec<$item>,
            pub total_count: i32,
        }
    };
}

paginated!(AgentList, Agent, "AgentList");
paginated!(UserList, User, "UserList");
paginated!(KeyPairList, KeyPair, "KeyPairList");
paginated!(VirtualFolderList, VirtualFolder, "VirtualFolderList");
paginated!(ComputeSessionList, ComputeSession, "ComputeSessionList");
paginated!(
    ComputeContainerList,
    ComputeContainer,
    "ComputeContainerList"
);
paginated!(
    LegacyComputeSessionList,
    LegacyComputeSession,
    "LegacyComputeSessionList"
);
paginated!(StorageVolumeList, StorageVolume, "StorageVolumeList");

/// The ordering/filtering arguments of a paginated query.
struct ListArgs {
    limit: i32,
    offset: i32,
    order_key: Option<String>,
    order_asc: Option<bool>,
    filter: Option<String>,
    order: Option<String>,
}

impl ListArgs {
    fn check(&self) -> GqlResult<()> {
        if self.limit < 0 || self.offset < 0 {
            return Err(invalid_params("limit and offset must not be negative"));
        }
        Ok(())
    }

    /// Adds the filter to `w` and returns the ORDER BY list.
    fn apply(
        &self,
        sql: &mut Sql,
        w: &mut Where,
        fields: &[Field],
        order_keys: &[Field],
        default_order: &str,
    ) -> GqlResult<String> {
        if let Some(f) = self.filter.as_deref().filter(|f| !f.trim().is_empty()) {
            let cond = compile_filter(f, fields, sql)
                .map_err(|e| invalid_params(format!("invalid filter: {e}")))?;
            w.add(cond);
        }
        if let Some(o) = self.order.as_deref().filter(|o| !o.trim().is_empty()) {
            let ord = compile_order(o, fields)
                .map_err(|e| invalid_params(format!("invalid order: {e}")))?;
            if !ord.is_empty() {
                return Ok(ord);
            }
        }
        if let Some(k) = &self.order_key {
            return legacy_order(k, self.order_asc.unwrap_or(true), order_keys)
                .map_err(invalid_params);
        }
        Ok(default_order.to_string())
    }
}

/// One round trip for a page and its total (`count(*) OVER ()`); a second only when the
/// page is empty past the first row.
#[allow(clippy::too_many_arguments)]
async fn paginate<T>(
    rc: &ReqCtx,
    mut sql: Sql,
    cols: &str,
    from: &str,
    w: &Where,
    order: &str,
    limit: i32,
    offset: i32,
) -> GqlResult<(Vec<T>, i32)>
where
    T: for<'r> FromRow<'r, PgRow>,
{
    let where_sql = w.render();
    sql.text = format!(
        "SELECT {cols}, count(*) OVER () AS __total FROM {from}{where_sql} ORDER BY {order} LIMIT {limit} OFFSET {offset}"
    );
    let rows: Vec<PgRow> = sql
        .query()
        .fetch_all(&mut **rc.db().await?)
        .await
        .map_err(db_err)?;
    let mut total: i64 = 0;
    let mut items = Vec::with_capacity(rows.len());
    for r in &rows {
        total = r.try_get("__total").map_err(db_err)?;
        items.push(T::from_row(r).map_err(db_err)?);
    }
    if rows.is_empty() && offset > 0 {
        sql.text = format!("SELECT count(*) FROM {from}{where_sql}");
        let row: PgRow = sql
            .query()
            .fetch_one(&mut **rc.db().await?)
            .await
            .map_err(db_err)?;
        total = row.try_get(0).map_err(db_err)?;
    }
    Ok((items, total as i32))
}

async fn fetch_all<T>(rc: &ReqCtx, sql: &Sql) -> GqlResult<Vec<T>>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    sql.query_as::<T>()
        .fetch_all(&mut **rc.db().await?)
        .await
        .map_err(db_err)
}

async fn fetch_opt<T>(rc: &ReqCtx, sql: &Sql) -> GqlResult<Option<T>>
where
    T: for<'r> FromRow<'r, PgRow> + Send + Unpin,
{
    sql.query_as::<T>()
        .fetch_optional(&mut **rc.db().await?)
        .await
        .map_err(db_err)
}

fn parse_statuses(status: &str, allowed: &[&str]) -> GqlResult<Vec<String>> {
    let list: Vec<String> = status
        .split(',')
        .map(|s| s.trim().to_string())
        .filter(|s| !s.is_empty())
        .collect();
    for s in &list {
        if !allowed.contains(&s.as_str()) {
            return Err(invalid_params(format!("invalid status: {s}")));
        }
    }
    Ok(list)
}

fn parse_uuid(s: &str, what: &str) -> GqlResult<Uuid> {
    Uuid::parse_str(s.trim()).map_err(|_| invalid_params(format!("invalid {what}: {s}")))
}

fn looks_ahead(ctx: &Context<'_>, path: &[&str]) -> bool {
    let mut la = ctx.look_ahead();
    for p in path {
        la = la.field(p);
    }
    la.exists()
}

async fn with_domain_sgroups(
    rc: &ReqCtx,
    ctx: &Context<'_>,
    rows: Vec<DomainRow>,
    path: &[&str],
) -> GqlResult<Vec<Domain>> {
    let mut items: Vec<Domain> = rows.into_iter().map(Domain::from).collect();
    if looks_ahead(ctx, path) && !items.is_empty() {
        let names: Vec<String> = items.iter().map(|d| d.row.name.clone()).collect();
        let mut m = sgroups_for_domains(rc, &names).await?;
        for d in &mut items {
            d.scaling_groups = Some(m.remove(&d.row.name).unwrap_or_default());
        }
    }
    Ok(items)
}

async fn with_group_sgroups(
    rc: &ReqCtx,
    ctx: &Context<'_>,
    rows: Vec<GroupRow>,
) -> GqlResult<Vec<Group>> {
    let mut items: Vec<Group> = rows.into_iter().map(Group::from).collect();
    if looks_ahead(ctx, &["scaling_groups"]) && items.len() > 1 {
        let ids: Vec<Uuid> = items.iter().map(|g| g.row.id).collect();
        let mut m = sgroups_for_groups(rc, &ids).await?;
        for g in &mut items {
            g.scaling_groups = Some(m.remove(&g.row.id).unwrap_or_default());
        }
    }
    Ok(items)
}

async fn with_user_groups(
    rc: &ReqCtx,
    ctx: &Context<'_>,
    rows: Vec<UserRow>,
    path: &[&str],
) -> GqlResult<Vec<User>> {
    let mut items: Vec<User> = rows.into_iter().map(User::from).collect();
    if looks_ahead(ctx, path) && items.len() > 1 {
        prefetch_user_groups(rc, &mut items).await?;
    }
    Ok(items)
}

/// The groups a user belongs to.
async fn groups_of(rc: &ReqCtx, user: Uuid, name: Option<&str>) -> GqlResult<Vec<GroupRow>> {
    let mut sql = Sql::default();
    let p = sql.bind(Bind::Uuid(user));
    let mut text = format!(
        "SELECT {GROUP_COLS} FROM groups g JOIN association_groups_users a ON a.group_id = g.id WHERE a.user_id = {p}"
    );
    if let Some(n) = name {
        let p = sql.bind(Bind::Text(n.to_string()));
        text.push_str(&format!(" AND g.name = {p}"));
    }
    text.push_str(" ORDER BY g.name");
    sql.text = text;
    fetch_all(rc, &sql).await
}

/// User WHERE conditions shared by `users` and `user_list`.
fn user_where(
    sql: &mut Sql,
    w: &mut Where,
    domain_name: Option<String>,
    group_id: Option<Uuid>,
    is_active: Option<bool>,
    status: Option<String>,
) -> GqlResult<()> {
    if let Some(d) = domain_name {
        w.eq(sql, "u.domain_name", Bind::Text(d));
    }
    if let Some(g) = group_id {
        let p = sql.bind(Bind::Uuid(g));
        w.add(format!(
            "u.uuid IN (SELECT user_id FROM association_groups_users WHERE group_id = {p})"
        ));
    }
    if let Some(s) = status {
        if !USER_STATUSES.contains(&s.as_str()) {
            return Err(invalid_params(format!("invalid user status: {s}")));
        }
        w.eq(sql, "u.status::text", Bind::Text(s));
    } else if let Some(a) = is_active {
        w.add(if a {
            "u.status = 'active'"
        } else {
            "u.status <> 'active'"
        });
    }
    Ok(())
}

/// `users`/`user_list` access: superadmin all, admin own domain, others refused.
fn users_scope(rc: &ReqCtx, domain_name: Option<String>) -> GqlResult<Option<String>> {
    match rc.role() {
        UserRole::Superadmin => Ok(domain_name),
        UserRole::Admin => {
            if domain_name
                .as_ref()
                .is_some_and(|d| d != &rc.user.domain_name)
            {
                return Err(insufficient_privilege());
            }
            Ok(Some(rc.user.domain_name.clone()))
        }
        UserRole::User => Err(insufficient_privilege()),
        UserRole::Monitor => Err(unknown_role()),
    }
}

fn keypair_where(
    sql: &mut Sql,
    w: &mut Where,
    domain_name: Option<String>,
    email: Option<String>,
    is_active: Option<bool>,
) {
    if let Some(d) = domain_name {
        w.eq(sql, "u.domain_name", Bind::Text(d));
    }
    if let Some(e) = email {
        w.eq(sql, "k.user_id", Bind::Text(e));
    }
    if let Some(a) = is_active {
        w.eq(sql, "k.is_active", Bind::Bool(a));
    }
}

/// Session/container scoping conditions.
fn kernel_scope_where(
    sql: &mut Sql,
    w: &mut Where,
    domain_name: Option<String>,
    group_id: Option<String>,
    access_key: Option<String>,
) -> GqlResult<()> {
    if let Some(d) = domain_name {
        w.eq(sql, "k.domain_name", Bind::Text(d));
    }
    if let Some(g) = group_id {
        w.eq(sql, "k.group_id", Bind::Uuid(parse_uuid(&g, "group_id")?));
    }
    if let Some(a) = access_key {
        w.eq(sql, "k.access_key", Bind::Text(a));
    }
    Ok(())
}

async fn sgroups_where(
    rc: &ReqCtx,
    extra: &str,
    bind: Option<Bind>,
    is_active: Option<bool>,
) -> GqlResult<Vec<ScalingGroup>> {
    let mut sql = Sql::default();
    let mut w = Where::default();
    if let Some(b) = bind {
        let p = sql.bind(b);
        w.add(extra.replace("{}", &p));
    }
    if let Some(a) = is_active {
        w.eq(&mut sql, "s.is_active", Bind::Bool(a));
    }
    sql.text = format!(
        "SELECT {SGROUP_COLS} FROM scaling_groups s{} ORDER BY s.name",
        w.render()
    );
    let rows: Vec<ScalingGroupRow> = fetch_all(rc, &sql).await?;
    Ok(rows.into_iter().map(|row| ScalingGroup { row }).collect())
}

/// Images visible to the caller: superadmins see all; admins and users only those whose
/// registry is in their domain's `allowed_docker_registries`.
async fn visible_images(rc: &ReqCtx) -> GqlResult<Vec<Image>> {
    let cat = rc.images().await?;
    let allowed: Option<Vec<String>> = match rc.role() {
        UserRole::Superadmin => None,
        UserRole::Admin | UserRole::User => {
            let regs: Option<(Vec<String>,)> =
                sqlx::query_as("SELECT allowed_docker_registries FROM domains WHERE name = $1")
                    .bind(&rc.user.domain_name)
                    .fetch_optional(&mut **rc.db().await?)
                    .await
                    .map_err(db_err)?;
            Some(regs.map(|r| r.0).unwrap_or_default())
        }
        UserRole::Monitor => return Err(unknown_role()),
    };
    let hide = rc.state.config.manager.hide_agents && !rc.is_superadmin();
    Ok(cat
        .images
        .values()
        .filter(|img| allowed.as_ref().is_none_or(|a| a.contains(&img.registry)))
        .map(|info| Image {
            info: info.clone(),
            installed_agents: Vec::new(),
            hide_agents: hide,
        })
        .collect())
}

fn is_operation_image(img: &Image) -> bool {
    img.info
        .labels
        .get("ai.backend.features")
        .is_some_and(|f| f.split_whitespace().any(|x| x == "operation"))
}

#[Object(
    name = "Queries",
    rename_fields = "snake_case",
    rename_args = "snake_case"
)]
impl Queries {
    // ------------------------------------------------------------------ agents

    async fn agent(&self, ctx: &Context<'_>, agent_id: String) -> GqlResult<Option<Agent>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let mut sql = Sql::new(format!("SELECT {AGENT_COLS} FROM agents a WHERE a.id = "));
        sql.push_bind(Bind::Text(agent_id));
        Ok(fetch_opt::<AgentRow>(rc, &sql).await?.map(Agent::from))
    }

    async fn agents(
        &self,
        ctx: &Context<'_>,
        scaling_group: Option<String>,
        status: Option<String>,
    ) -> GqlResult<Option<Vec<Agent>>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        if let Some(sg) = scaling_group {
            w.eq(&mut sql, "a.scaling_group", Bind::Text(sg));
        }
        if let Some(st) = status {
            let list = parse_statuses(&st, AGENT_STATUSES)?;
            let p = sql.bind(Bind::TextArr(list));
            w.add(format!("a.status::text = ANY({p})"));
        }
        sql.text = format!(
            "SELECT {AGENT_COLS} FROM agents a{} ORDER BY a.id",
            w.render()
        );
        let rows: Vec<AgentRow> = fetch_all(rc, &sql).await?;
        Ok(Some(rows.into_iter().map(Agent::from).collect()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn agent_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        filter: Option<String>,
        order: Option<String>,
        scaling_group: Option<String>,
        status: Option<String>,
    ) -> GqlResult<AgentList> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let args = ListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            filter,
            order,
        };
        args.check()?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        if let Some(sg) = scaling_group {
            w.eq(&mut sql, "a.scaling_group", Bind::Text(sg));
        }
        if let Some(st) = status {
            let list = parse_statuses(&st, AGENT_STATUSES)?;
            let p = sql.bind(Bind::TextArr(list));
            w.add(format!("a.status::text = ANY({p})"));
        }
        let ord = args.apply(&mut sql, &mut w, AGENT_FIELDS, AGENT_FIELDS, "a.id ASC")?;
        let (rows, total) =
            paginate::<AgentRow>(rc, sql, AGENT_COLS, "agents a", &w, &ord, limit, offset).await?;
        Ok(AgentList {
            items: rows.into_iter().map(Agent::from).collect(),
            total_count: total,
        })
    }

    // ------------------------------------------------------------------ domains

    async fn domain(&self, ctx: &Context<'_>, name: Option<String>) -> GqlResult<Option<Domain>> {
        let rc = rc(ctx);
        let name = name.unwrap_or_else(|| rc.user.domain_name.clone());
        if !rc.is_superadmin() && name != rc.user.domain_name {
            return Err(gql_err(ApiError::not_found().with_msg("no such domain")));
        }
        let mut sql = Sql::new(format!(
            "SELECT {DOMAIN_COLS} FROM domains d WHERE d.name = "
        ));
        sql.push_bind(Bind::Text(name));
        Ok(fetch_opt::<DomainRow>(rc, &sql).await?.map(Domain::from))
    }

    async fn domains(
        &self,
        ctx: &Context<'_>,
        is_active: Option<bool>,
    ) -> GqlResult<Option<Vec<Domain>>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        if let Some(a) = is_active {
            w.eq(&mut sql, "d.is_active", Bind::Bool(a));
        }
        sql.text = format!(
            "SELECT {DOMAIN_COLS} FROM domains d{} ORDER BY d.name",
            w.render()
        );
        let rows: Vec<DomainRow> = fetch_all(rc, &sql).await?;
        Ok(Some(
            with_domain_sgroups(rc, ctx, rows, &["scaling_groups"]).await?,
        ))
    }

    // ------------------------------------------------------------------ groups

    async fn group(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        domain_name: Option<String>,
    ) -> GqlResult<Option<Group>> {
        let rc = rc(ctx);
        let mut sql = Sql::new(format!("SELECT {GROUP_COLS} FROM groups g WHERE g.id = "));
        sql.push_bind(Bind::Uuid(id));
        if let Some(d) = domain_name {
            sql.push(" AND g.domain_name = ").push_bind(Bind::Text(d));
        }
        let group: Option<GroupRow> = fetch_opt(rc, &sql).await?;
        match rc.role() {
            UserRole::Superadmin => {}
            UserRole::Admin => {
                if group
                    .as_ref()
                    .is_some_and(|g| g.domain_name != rc.user.domain_name)
                {
                    return Err(insufficient_privilege());
                }
            }
            UserRole::User => {
                if let Some(g) = &group {
                    let mine = groups_of(rc, rc.user.user_uuid, None).await?;
                    if !mine.iter().any(|m| m.id == g.id) {
                        return Err(insufficient_privilege());
                    }
                }
            }
            UserRole::Monitor => return Err(unknown_role()),
        }
        Ok(group.map(Group::from))
    }

    async fn groups(
        &self,
        ctx: &Context<'_>,
        domain_name: Option<String>,
        is_active: Option<bool>,
    ) -> GqlResult<Option<Vec<Group>>> {
        let rc = rc(ctx);
        let domain_name = match rc.role() {
            UserRole::Superadmin => domain_name,
            UserRole::Admin => {
                if domain_name
                    .as_ref()
                    .is_some_and(|d| d != &rc.user.domain_name)
                {
                    return Err(insufficient_privilege());
                }
                Some(rc.user.domain_name.clone())
            }
            UserRole::User => {
                let rows = groups_of(rc, rc.user.user_uuid, None).await?;
                return Ok(Some(with_group_sgroups(rc, ctx, rows).await?));
            }
            UserRole::Monitor => return Err(unknown_role()),
        };
        let mut sql = Sql::default();
        let mut w = Where::default();
        if let Some(d) = domain_name {
            w.eq(&mut sql, "g.domain_name", Bind::Text(d));
        }
        if let Some(a) = is_active {
            w.eq(&mut sql, "g.is_active", Bind::Bool(a));
        }
        sql.text = format!(
            "SELECT {GROUP_COLS} FROM groups g{} ORDER BY g.domain_name, g.name",
            w.render()
        );
        let rows: Vec<GroupRow> = fetch_all(rc, &sql).await?;
        Ok(Some(with_group_sgroups(rc, ctx, rows).await?))
    }

    async fn groups_by_name(
        &self,
        ctx: &Context<'_>,
        name: String,
        domain_name: Option<String>,
    ) -> GqlResult<Option<Vec<Group>>> {
        let rc = rc(ctx);
        let domain_name = match rc.role() {
            UserRole::Superadmin => domain_name,
            UserRole::Admin => {
                if domain_name
                    .as_ref()
                    .is_some_and(|d| d != &rc.user.domain_name)
                {
                    return Err(insufficient_privilege());
                }
                Some(rc.user.domain_name.clone())
            }
            UserRole::User => {
                let rows = groups_of(rc, rc.user.user_uuid, Some(&name)).await?;
                return Ok(Some(with_group_sgroups(rc, ctx, rows).await?));
            }
            UserRole::Monitor => return Err(unknown_role()),
        };
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(&mut sql, "g.name", Bind::Text(name));
        if let Some(d) = domain_name {
            w.eq(&mut sql, "g.domain_name", Bind::Text(d));
        }
        sql.text = format!(
            "SELECT {GROUP_COLS} FROM groups g{} ORDER BY g.domain_name",
            w.render()
        );
        let rows: Vec<GroupRow> = fetch_all(rc, &sql).await?;
        Ok(Some(with_group_sgroups(rc, ctx, rows).await?))
    }

    // ------------------------------------------------------------------ images

    async fn image(&self, ctx: &Context<'_>, reference: String) -> GqlResult<Option<Image>> {
        let rc = rc(ctx);
        let cat = rc.images().await?;
        let Some(info) = cat.resolve(&reference) else {
            return Err(gql_err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "image-not-found",
                "No such environment image.",
            )));
        };
        let canonical = info.canonical();
        let visible = visible_images(rc).await?;
        match visible
            .into_iter()
            .find(|i| i.info.canonical() == canonical)
        {
            Some(img) => Ok(Some(img)),
            None => Err(gql_err(ApiError::new(
                axum::http::StatusCode::NOT_FOUND,
                "image-not-found",
                "No such environment image.",
            ))),
        }
    }

    async fn images(
        &self,
        ctx: &Context<'_>,
        is_installed: Option<bool>,
        is_operation: Option<bool>,
    ) -> GqlResult<Option<Vec<Image>>> {
        let rc = rc(ctx);
        let mut items = visible_images(rc).await?;
        if let Some(inst) = is_installed {
            items.retain(|i| i.installed_agents.is_empty() != inst);
        }
        if is_operation == Some(true) {
            items.retain(is_operation_image);
        }
        Ok(Some(items))
    }

    // ------------------------------------------------------------------ users

    async fn user(
        &self,
        ctx: &Context<'_>,
        domain_name: Option<String>,
        email: Option<String>,
    ) -> GqlResult<Option<User>> {
        let rc = rc(ctx);
        let scope = scoped(rc, domain_name, email, UserKey::Email, true)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(
            &mut sql,
            "u.email",
            Bind::Text(scope.user_key.unwrap_or_default()),
        );
        if let Some(d) = scope.domain_name {
            w.eq(&mut sql, "u.domain_name", Bind::Text(d));
        }
        sql.text = format!("SELECT {USER_COLS} FROM users u{}", w.render());
        Ok(fetch_opt::<UserRow>(rc, &sql).await?.map(User::from))
    }

    async fn user_from_uuid(
        &self,
        ctx: &Context<'_>,
        domain_name: Option<String>,
        user_id: Option<async_graphql::ID>,
    ) -> GqlResult<Option<User>> {
        let rc = rc(ctx);
        let scope = scoped(rc, domain_name, user_id.map(|i| i.0), UserKey::Uuid, true)?;
        let uuid = parse_uuid(&scope.user_key.unwrap_or_default(), "user_id")?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(&mut sql, "u.uuid", Bind::Uuid(uuid));
        if let Some(d) = scope.domain_name {
            w.eq(&mut sql, "u.domain_name", Bind::Text(d));
        }
        sql.text = format!("SELECT {USER_COLS} FROM users u{}", w.render());
        Ok(fetch_opt::<UserRow>(rc, &sql).await?.map(User::from))
    }

    async fn users(
        &self,
        ctx: &Context<'_>,
        domain_name: Option<String>,
        group_id: Option<Uuid>,
        is_active: Option<bool>,
        status: Option<String>,
    ) -> GqlResult<Option<Vec<User>>> {
        let rc = rc(ctx);
        let domain_name = users_scope(rc, domain_name)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        user_where(&mut sql, &mut w, domain_name, group_id, is_active, status)?;
        sql.text = format!(
            "SELECT {USER_COLS} FROM users u{} ORDER BY u.created_at DESC LIMIT 100",
            w.render()
        );
        let rows: Vec<UserRow> = fetch_all(rc, &sql).await?;
        Ok(Some(with_user_groups(rc, ctx, rows, &["groups"]).await?))
    }

    #[allow(clippy::too_many_arguments)]
    async fn user_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        filter: Option<String>,
        order: Option<String>,
        domain_name: Option<String>,
        group_id: Option<Uuid>,
        is_active: Option<bool>,
        status: Option<String>,
    ) -> GqlResult<UserList> {
        let rc = rc(ctx);
        let args = ListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            filter,
            order,
        };
        args.check()?;
        let domain_name = users_scope(rc, domain_name)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        user_where(&mut sql, &mut w, domain_name, group_id, is_active, status)?;
        let ord = args.apply(
            &mut sql,
            &mut w,
            USER_FIELDS,
            USER_FIELDS,
            "u.created_at DESC",
        )?;
        let (rows, total) =
            paginate::<UserRow>(rc, sql, USER_COLS, "users u", &w, &ord, limit, offset).await?;
        Ok(UserList {
            items: with_user_groups(rc, ctx, rows, &["items", "groups"]).await?,
            total_count: total,
        })
    }

    // ------------------------------------------------------------------ keypairs

    async fn keypair(
        &self,
        ctx: &Context<'_>,
        domain_name: Option<String>,
        access_key: Option<String>,
    ) -> GqlResult<Option<KeyPair>> {
        let rc = rc(ctx);
        let scope = scoped(rc, domain_name, access_key, UserKey::AccessKey, true)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(
            &mut sql,
            "k.access_key",
            Bind::Text(scope.user_key.unwrap_or_default()),
        );
        if let Some(d) = scope.domain_name {
            w.eq(&mut sql, "u.domain_name", Bind::Text(d));
        }
        sql.text = format!("SELECT {KEYPAIR_COLS} FROM {KEYPAIR_FROM}{}", w.render());
        Ok(fetch_opt::<KeyPairRow>(rc, &sql)
            .await?
            .map(|row| KeyPair { row }))
    }

    async fn keypairs(
        &self,
        ctx: &Context<'_>,
        domain_name: Option<String>,
        email: Option<String>,
        is_active: Option<bool>,
    ) -> GqlResult<Option<Vec<KeyPair>>> {
        let rc = rc(ctx);
        let scope = scoped(rc, domain_name, email, UserKey::Email, false)?;
        let capped = scope.user_key.is_none();
        let mut sql = Sql::default();
        let mut w = Where::default();
        keypair_where(
            &mut sql,
            &mut w,
            scope.domain_name,
            scope.user_key,
            is_active,
        );
        sql.text = format!(
            "SELECT {KEYPAIR_COLS} FROM {KEYPAIR_FROM}{} ORDER BY k.created_at DESC{}",
            w.render(),
            if capped { " LIMIT 100" } else { "" }
        );
        let rows: Vec<KeyPairRow> = fetch_all(rc, &sql).await?;
        Ok(Some(rows.into_iter().map(|row| KeyPair { row }).collect()))
    }

    #[allow(clippy::too_many_arguments)]
    async fn keypair_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        filter: Option<String>,
        order: Option<String>,
        domain_name: Option<String>,
        email: Option<String>,
        is_active: Option<bool>,
    ) -> GqlResult<KeyPairList> {
        let rc = rc(ctx);
        let args = ListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            filter,
            order,
        };
        args.check()?;
        let scope = scoped(rc, domain_name, email, UserKey::Email, false)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        keypair_where(
            &mut sql,
            &mut w,
            scope.domain_name,
            scope.user_key,
            is_active,
        );
        let ord = args.apply(
            &mut sql,
            &mut w,
            KEYPAIR_FIELDS,
            KEYPAIR_FIELDS,
            "k.created_at DESC",
        )?;
        let (rows, total) =
            paginate::<KeyPairRow>(rc, sql, KEYPAIR_COLS, KEYPAIR_FROM, &w, &ord, limit, offset)
                .await?;
        Ok(KeyPairList {
            items: rows.into_iter().map(|row| KeyPair { row }).collect(),
            total_count: total,
        })
    }

    // ------------------------------------------------------------------ policies & presets

    async fn keypair_resource_policy(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
    ) -> GqlResult<Option<KeyPairResourcePolicy>> {
        let rc = rc(ctx);
        let mut sql = Sql::default();
        match name {
            None => {
                let p = sql.bind(Bind::Text(rc.user.access_key.clone()));
                sql.text = format!(
                    "SELECT {POLICY_COLS} FROM keypair_resource_policies p \
                     JOIN keypairs k ON k.resource_policy = p.name WHERE k.access_key = {p}"
                );
            }
            Some(n) => {
                let p = sql.bind(Bind::Text(n));
                sql.text = format!(
                    "SELECT {POLICY_COLS} FROM keypair_resource_policies p WHERE p.name = {p}"
                );
            }
        }
        Ok(fetch_opt::<PolicyRow>(rc, &sql)
            .await?
            .map(|row| KeyPairResourcePolicy { row }))
    }

    async fn keypair_resource_policies(
        &self,
        ctx: &Context<'_>,
    ) -> GqlResult<Option<Vec<KeyPairResourcePolicy>>> {
        let rc = rc(ctx);
        let mut sql = Sql::default();
        match rc.role() {
            UserRole::Superadmin | UserRole::Admin => {
                sql.text = format!(
                    "SELECT {POLICY_COLS} FROM keypair_resource_policies p ORDER BY p.name"
                );
            }
            UserRole::User => {
                let p = sql.bind(Bind::Text(rc.user.access_key.clone()));
                sql.text = format!(
                    "SELECT {POLICY_COLS} FROM keypair_resource_policies p WHERE p.name IN \
                     (SELECT k.resource_policy FROM keypairs k WHERE k.user_id = \
                      (SELECT user_id FROM keypairs WHERE access_key = {p})) ORDER BY p.name"
                );
            }
            UserRole::Monitor => return Err(unknown_role()),
        }
        let rows: Vec<PolicyRow> = fetch_all(rc, &sql).await?;
        Ok(Some(
            rows.into_iter()
                .map(|row| KeyPairResourcePolicy { row })
                .collect(),
        ))
    }

    async fn resource_preset(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
    ) -> GqlResult<Option<ResourcePreset>> {
        let rc = rc(ctx);
        let Some(name) = name else {
            return Err(invalid_params("name is required"));
        };
        let mut sql = Sql::new(
            "SELECT name, resource_slots, shared_memory FROM resource_presets WHERE name = ",
        );
        sql.push_bind(Bind::Text(name));
        Ok(fetch_opt::<PresetRow>(rc, &sql)
            .await?
            .map(|row| ResourcePreset { row }))
    }

    async fn resource_presets(&self, ctx: &Context<'_>) -> GqlResult<Option<Vec<ResourcePreset>>> {
        let rc = rc(ctx);
        let sql = Sql::new(
            "SELECT name, resource_slots, shared_memory FROM resource_presets ORDER BY name",
        );
        let rows: Vec<PresetRow> = fetch_all(rc, &sql).await?;
        Ok(Some(
            rows.into_iter().map(|row| ResourcePreset { row }).collect(),
        ))
    }

    // ------------------------------------------------------------------ scaling groups

    async fn scaling_group(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
    ) -> GqlResult<Option<ScalingGroup>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let Some(name) = name else {
            return Err(invalid_params("name is required"));
        };
        let mut sql = Sql::new(format!(
            "SELECT {SGROUP_COLS} FROM scaling_groups s WHERE s.name = "
        ));
        sql.push_bind(Bind::Text(name));
        Ok(fetch_opt::<ScalingGroupRow>(rc, &sql)
            .await?
            .map(|row| ScalingGroup { row }))
    }

    /// `name` is accepted and ignored, as in 21.03.
    async fn scaling_groups(
        &self,
        ctx: &Context<'_>,
        name: Option<String>,
        is_active: Option<bool>,
    ) -> GqlResult<Option<Vec<ScalingGroup>>> {
        let _ = name;
        let rc = rc(ctx);
        rc.require_superadmin()?;
        Ok(Some(sgroups_where(rc, "", None, is_active).await?))
    }

    async fn scaling_groups_for_domain(
        &self,
        ctx: &Context<'_>,
        domain: String,
        is_active: Option<bool>,
    ) -> GqlResult<Option<Vec<ScalingGroup>>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        Ok(Some(
            sgroups_where(
                rc,
                "s.name IN (SELECT scaling_group FROM sgroups_for_domains WHERE domain = {})",
                Some(Bind::Text(domain)),
                is_active,
            )
            .await?,
        ))
    }

    /// Had no resolver in 21.03.6 (always null); answers properly here.
    async fn scaling_groups_for_user_group(
        &self,
        ctx: &Context<'_>,
        user_group: String,
        is_active: Option<bool>,
    ) -> GqlResult<Option<Vec<ScalingGroup>>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let gid = parse_uuid(&user_group, "user_group")?;
        Ok(Some(
            sgroups_where(
                rc,
                "s.name IN (SELECT scaling_group FROM sgroups_for_groups WHERE \"group\" = {})",
                Some(Bind::Uuid(gid)),
                is_active,
            )
            .await?,
        ))
    }

    async fn scaling_groups_for_keypair(
        &self,
        ctx: &Context<'_>,
        access_key: String,
        is_active: Option<bool>,
    ) -> GqlResult<Option<Vec<ScalingGroup>>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        Ok(Some(
            sgroups_where(
                rc,
                "s.name IN (SELECT scaling_group FROM sgroups_for_keypairs WHERE access_key = {})",
                Some(Bind::Text(access_key)),
                is_active,
            )
            .await?,
        ))
    }

    // ------------------------------------------------------------------ storage

    /// A volume of a storage proxy by `<proxy>:<volume>` (superadmin).
    async fn storage_volume(
        &self,
        ctx: &Context<'_>,
        id: Option<String>,
    ) -> GqlResult<Option<StorageVolume>> {
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let Some(id) = id else {
            return Ok(None);
        };
        let store = bai_storage::registry::StorageProxies::shared(&rc.state.etcd);
        let (proxy, volume) = store
            .for_host(&id)
            .await
            .map_err(|e| gql_err(ApiError::invalid_api_params().with_msg(format!("{e}"))))?;
        let volumes = proxy
            .client()
            .volumes()
            .await
            .map_err(|e| gql_err(ApiError::service_unavailable().with_msg(format!("{e}"))))?;
        match volumes.into_iter().find(|v| v.name == volume) {
            Some(v) => Ok(Some(StorageVolume::from_info(id, v, proxy))),
            None => Err(gql_err(ApiError::not_found().with_msg(format!(
                "The volume with the given id ({id}) does not exist"
            )))),
        }
    }

    /// Every volume of every reachable storage proxy (superadmin); `filter`/`order` are
    /// accepted and ignored, as the original's `load_slice` did.
    async fn storage_volume_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        filter: Option<String>,
        order: Option<String>,
    ) -> GqlResult<StorageVolumeList> {
        let _ = (filter, order);
        let rc = rc(ctx);
        rc.require_superadmin()?;
        let store = bai_storage::registry::StorageProxies::shared(&rc.state.etcd);
        let all = store
            .all_volumes()
            .await
            .map_err(|e| gql_err(ApiError::internal_from(format!("etcd: {e:#}"))))?;
        let total_count = all.len() as i32;
        let items = all
            .into_iter()
            .skip(offset.max(0) as usize)
            .take(limit.max(0) as usize)
            .map(|(host, info, proxy)| StorageVolume::from_info(host, info, proxy))
            .collect();
        Ok(StorageVolumeList { items, total_count })
    }

    // ------------------------------------------------------------------ vfolders

    #[allow(clippy::too_many_arguments)]
    async fn vfolder_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        filter: Option<String>,
        order: Option<String>,
        domain_name: Option<String>,
        group_id: Option<Uuid>,
        access_key: Option<String>,
    ) -> GqlResult<VirtualFolderList> {
        let rc = rc(ctx);
        let args = ListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            filter,
            order,
        };
        args.check()?;
        let (sql, w, ord) = vfolder_query(rc, &args, domain_name, group_id, access_key).await?;
        let (rows, total) =
            paginate::<VFolderRow>(rc, sql, VFOLDER_COLS, VFOLDER_FROM, &w, &ord, limit, offset)
                .await?;
        Ok(VirtualFolderList {
            items: rows.into_iter().map(|row| VirtualFolder { row }).collect(),
            total_count: total,
        })
    }

    /// Had no resolver in 21.03.6 (always null); the first 100 visible folders here.
    async fn vfolders(
        &self,
        ctx: &Context<'_>,
        domain_name: Option<String>,
        group_id: Option<String>,
        access_key: Option<String>,
    ) -> GqlResult<Option<Vec<VirtualFolder>>> {
        let rc = rc(ctx);
        let args = ListArgs {
            limit: 100,
            offset: 0,
            order_key: None,
            order_asc: None,
            filter: None,
            order: None,
        };
        let gid = group_id.map(|g| parse_uuid(&g, "group_id")).transpose()?;
        let (sql, w, ord) = vfolder_query(rc, &args, domain_name, gid, access_key).await?;
        let (rows, _) =
            paginate::<VFolderRow>(rc, sql, VFOLDER_COLS, VFOLDER_FROM, &w, &ord, 100, 0).await?;
        Ok(Some(
            rows.into_iter().map(|row| VirtualFolder { row }).collect(),
        ))
    }

    // ------------------------------------------------------------------ sessions

    async fn compute_session(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        domain_name: Option<String>,
        access_key: Option<String>,
    ) -> GqlResult<Option<ComputeSession>> {
        let rc = rc(ctx);
        let scope = scoped(rc, domain_name, access_key, UserKey::AccessKey, false)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(&mut sql, "k.id", Bind::Uuid(id));
        w.add("k.cluster_role = 'main'");
        kernel_scope_where(&mut sql, &mut w, scope.domain_name, None, scope.user_key)?;
        sql.text = format!("SELECT {KERNEL_COLS} FROM {KERNEL_FROM}{}", w.render());
        Ok(fetch_opt::<KernelRow>(rc, &sql)
            .await?
            .map(|row| ComputeSession { row }))
    }

    /// Broken in 21.03.6 (resolver parameter mismatch); works here, with session scoping.
    async fn compute_container(
        &self,
        ctx: &Context<'_>,
        id: Uuid,
        domain_name: Option<String>,
        access_key: Option<String>,
    ) -> GqlResult<Option<ComputeContainer>> {
        let rc = rc(ctx);
        let scope = scoped(rc, domain_name, access_key, UserKey::AccessKey, false)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(&mut sql, "k.id", Bind::Uuid(id));
        kernel_scope_where(&mut sql, &mut w, scope.domain_name, None, scope.user_key)?;
        sql.text = format!("SELECT {KERNEL_COLS} FROM {KERNEL_FROM}{}", w.render());
        Ok(fetch_opt::<KernelRow>(rc, &sql)
            .await?
            .map(|row| ComputeContainer { row }))
    }

    #[allow(clippy::too_many_arguments)]
    async fn compute_session_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        filter: Option<String>,
        order: Option<String>,
        domain_name: Option<String>,
        group_id: Option<String>,
        access_key: Option<String>,
        status: Option<String>,
    ) -> GqlResult<ComputeSessionList> {
        let rc = rc(ctx);
        let args = ListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            filter,
            order,
        };
        args.check()?;
        let scope = scoped(rc, domain_name, access_key, UserKey::AccessKey, false)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.add("k.cluster_role = 'main'");
        kernel_scope_where(
            &mut sql,
            &mut w,
            scope.domain_name,
            group_id,
            scope.user_key,
        )?;
        if let Some(st) = status {
            let list = parse_statuses(&st, KERNEL_STATUSES)?;
            let p = sql.bind(Bind::TextArr(list));
            w.add(format!("k.status::text = ANY({p})"));
        }
        let ord = args.apply(
            &mut sql,
            &mut w,
            SESSION_FIELDS,
            KERNEL_ORDER_KEYS,
            KERNEL_DEFAULT_ORDER,
        )?;
        let (rows, total) =
            paginate::<KernelRow>(rc, sql, KERNEL_COLS, KERNEL_FROM, &w, &ord, limit, offset)
                .await?;
        Ok(ComputeSessionList {
            items: rows.into_iter().map(|row| ComputeSession { row }).collect(),
            total_count: total,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn compute_container_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        filter: Option<String>,
        order: Option<String>,
        session_id: async_graphql::ID,
        role: Option<String>,
        domain_name: Option<String>,
        access_key: Option<String>,
    ) -> GqlResult<ComputeContainerList> {
        let rc = rc(ctx);
        let args = ListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            filter,
            order,
        };
        args.check()?;
        let scope = scoped(rc, domain_name, access_key, UserKey::AccessKey, false)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(
            &mut sql,
            "k.session_id",
            Bind::Uuid(parse_uuid(&session_id, "session_id")?),
        );
        if let Some(r) = role {
            w.eq(&mut sql, "k.cluster_role", Bind::Text(r));
        }
        kernel_scope_where(&mut sql, &mut w, scope.domain_name, None, scope.user_key)?;
        let ord = args.apply(
            &mut sql,
            &mut w,
            CONTAINER_FIELDS,
            KERNEL_ORDER_KEYS,
            "(k.cluster_role = 'main') DESC, k.cluster_role ASC, k.cluster_idx ASC",
        )?;
        let (rows, total) =
            paginate::<KernelRow>(rc, sql, KERNEL_COLS, KERNEL_FROM, &w, &ord, limit, offset)
                .await?;
        Ok(ComputeContainerList {
            items: rows
                .into_iter()
                .map(|row| ComputeContainer { row })
                .collect(),
            total_count: total,
        })
    }

    #[allow(clippy::too_many_arguments)]
    async fn legacy_compute_session_list(
        &self,
        ctx: &Context<'_>,
        limit: i32,
        offset: i32,
        order_key: Option<String>,
        order_asc: Option<bool>,
        domain_name: Option<String>,
        group_id: Option<String>,
        access_key: Option<String>,
        status: Option<String>,
    ) -> GqlResult<LegacyComputeSessionList> {
        let rc = rc(ctx);
        let args = ListArgs {
            limit,
            offset,
            order_key,
            order_asc,
            filter: None,
            order: None,
        };
        args.check()?;
        let scope = scoped(rc, domain_name, access_key, UserKey::AccessKey, false)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        kernel_scope_where(
            &mut sql,
            &mut w,
            scope.domain_name,
            group_id,
            scope.user_key,
        )?;
        if let Some(st) = status {
            let list = parse_statuses(&st, KERNEL_STATUSES)?;
            let p = sql.bind(Bind::TextArr(list));
            w.add(format!("k.status::text = ANY({p})"));
        }
        let ord = args.apply(
            &mut sql,
            &mut w,
            SESSION_FIELDS,
            KERNEL_ORDER_KEYS,
            KERNEL_DEFAULT_ORDER,
        )?;
        let (rows, total) =
            paginate::<KernelRow>(rc, sql, KERNEL_COLS, KERNEL_FROM, &w, &ord, limit, offset)
                .await?;
        Ok(LegacyComputeSessionList {
            items: rows.into_iter().map(LegacyComputeSession::from).collect(),
            total_count: total,
        })
    }

    /// The v4 lookup by session name (RUNNING sessions only, as the original's default).
    async fn legacy_compute_session(
        &self,
        ctx: &Context<'_>,
        sess_id: String,
        domain_name: Option<String>,
        access_key: Option<String>,
    ) -> GqlResult<Option<LegacyComputeSession>> {
        let rc = rc(ctx);
        let scope = scoped(rc, domain_name, access_key, UserKey::AccessKey, false)?;
        let mut sql = Sql::default();
        let mut w = Where::default();
        w.eq(&mut sql, "k.session_name", Bind::Text(sess_id));
        w.add("k.cluster_role = 'main' AND k.status = 'RUNNING'");
        kernel_scope_where(&mut sql, &mut w, scope.domain_name, None, scope.user_key)?;
        sql.text = format!(
            "SELECT {KERNEL_COLS} FROM {KERNEL_FROM}{} LIMIT 1",
            w.render()
        );
        Ok(fetch_opt::<KernelRow>(rc, &sql)
            .await?
            .map(LegacyComputeSession::from))
    }
}

const VFOLDER_FROM: &str = "vfolders v LEFT JOIN users u ON u.uuid = v.\"user\" LEFT JOIN groups gr ON gr.id = v.\"group\"";

/// `vfolder_list` scoping: users see their own folders; admins their domain's; a given
/// `access_key` narrows to that keypair's owner (a TypeError in 21.03.6).
async fn vfolder_query(
    rc: &ReqCtx,
    args: &ListArgs,
    domain_name: Option<String>,
    group_id: Option<Uuid>,
    access_key: Option<String>,
) -> GqlResult<(Sql, Where, String)> {
    let owner: Option<String> = match access_key {
        Some(ak) => {
            let row: Option<(Uuid,)> =
                sqlx::query_as("SELECT \"user\" FROM keypairs WHERE access_key = $1")
                    .bind(&ak)
                    .fetch_optional(&mut **rc.db().await?)
                    .await
                    .map_err(db_err)?;
            Some(
                row.map(|r| r.0.to_string())
                    .unwrap_or_else(|| Uuid::nil().to_string()),
            )
        }
        None => None,
    };
    let scope = scoped(rc, domain_name, owner, UserKey::Uuid, false)?;
    let mut sql = Sql::default();
    let mut w = Where::default();
    if let Some(d) = scope.domain_name {
        w.eq(
            &mut sql,
            "coalesce(u.domain_name, gr.domain_name)",
            Bind::Text(d),
        );
    }
    if let Some(g) = group_id {
        w.eq(&mut sql, "v.\"group\"", Bind::Uuid(g));
    }
    if let Some(u) = scope.user_key {
        w.eq(&mut sql, "v.\"user\"", Bind::Uuid(parse_uuid(&u, "user")?));
    }
    let ord = args.apply(
        &mut sql,
        &mut w,
        VFOLDER_FIELDS,
        VFOLDER_FIELDS,
        "v.created_at ASC",
    )?;
    Ok((sql, w, ord))
}
