//! ComputeSession (main kernel + session aggregates), ComputeContainer (one kernel) and
//! LegacyComputeSession (v4 clients), all read from `kernels`.

use async_graphql::{Context, Object};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::context::{db_err, GqlResult, ReqCtx};
use super::scalars::{dt, js, BigInt, JsonString, PyDateTime};
use super::slots::{slot_f64, sum_slots};
use super::sql::{Bind, Sql};
use super::types_admin::rc;
use super::types_infra::live_stat;

/// Columns of `kernels` (aliased `k`) joined with the group name and owner email.
pub const KERNEL_COLS: &str = "k.id, k.session_id, k.session_name, k.session_type::text AS session_type, \
    k.cluster_mode, k.cluster_size, k.cluster_role, k.cluster_idx, k.cluster_hostname, k.scaling_group, \
    k.agent, k.agent_addr, k.domain_name, k.group_id, k.user_uuid, k.access_key, k.image, k.registry, \
    k.tag, k.container_id, k.occupied_slots, k.occupied_shares, array_to_json(k.mounts)::jsonb AS mounts, \
    k.resource_opts, k.service_ports, k.created_at, k.terminated_at, k.starts_at, \
    k.status::text AS status, k.status_changed, k.status_info, k.status_data, k.startup_command, \
    k.result::text AS result, k.num_queries, k.last_stat, g.name AS group_name, u.email AS user_email";
pub const KERNEL_FROM: &str =
    "kernels k LEFT JOIN groups g ON g.id = k.group_id LEFT JOIN users u ON u.uuid = k.user_uuid";

/// `greatest(created_at, terminated_at, status_changed)`: the default order of sessions.
pub const KERNEL_DEFAULT_ORDER: &str =
    "greatest(k.created_at, k.terminated_at, k.status_changed) DESC";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct KernelRow {
    pub id: Uuid,
    pub session_id: Uuid,
    pub session_name: Option<String>,
    pub session_type: String,
    pub cluster_mode: String,
    pub cluster_size: i32,
    pub cluster_role: String,
    pub cluster_idx: i32,
    pub cluster_hostname: String,
    pub scaling_group: Option<String>,
    pub agent: Option<String>,
    pub agent_addr: Option<String>,
    pub domain_name: String,
    pub group_id: Uuid,
    pub user_uuid: Uuid,
    pub access_key: Option<String>,
    pub image: Option<String>,
    pub registry: Option<String>,
    pub tag: Option<String>,
    pub container_id: Option<String>,
    pub occupied_slots: Value,
    pub occupied_shares: Value,
    pub mounts: Option<Value>,
    pub resource_opts: Option<Value>,
    pub service_ports: Option<Value>,
    pub created_at: Option<DateTime<Utc>>,
    pub terminated_at: Option<DateTime<Utc>>,
    pub starts_at: Option<DateTime<Utc>>,
    pub status: String,
    pub status_changed: Option<DateTime<Utc>>,
    pub status_info: Option<String>,
    pub status_data: Option<Value>,
    pub startup_command: Option<String>,
    pub result: String,
    pub num_queries: Option<i64>,
    pub last_stat: Option<Value>,
    pub group_name: Option<String>,
    pub user_email: Option<String>,
}

/// `kernels.num_queries` of a row: the Redis count of a live kernel, else the column.
async fn live_num_queries(ctx: &Context<'_>, row: &KernelRow) -> i64 {
    let column = row.num_queries.unwrap_or(0);
    if row.status == "CANCELLED" || row.status == "PENDING" {
        return column;
    }
    crate::session::access::num_queries(&rc(ctx).state, row.id, row.num_queries).await
}

/// Runs a kernel query built from `KERNEL_COLS`/`KERNEL_FROM`.
pub async fn fetch_kernels(rc: &ReqCtx, sql: &Sql) -> GqlResult<Vec<KernelRow>> {
    sql.query_as::<KernelRow>()
        .fetch_all(&mut **rc.db().await?)
        .await
        .map_err(db_err)
}

/// Python's repr of a list of strings: `['a', 'b']` (the quirk of `ComputeSession.mounts`).
fn py_list_repr(items: &[Value]) -> String {
    let parts: Vec<String> = items
        .iter()
        .map(|v| match v {
            Value::String(s) => format!("'{}'", s.replace('\\', "\\\\").replace('\'', "\\'")),
            Value::Null => "None".to_string(),
            other => other.to_string(),
        })
        .collect();
    format!("[{}]", parts.join(", "))
}

fn mounts_rows(mounts: &Option<Value>) -> Vec<Vec<Value>> {
    match mounts {
        Some(Value::Array(rows)) => rows
            .iter()
            .map(|r| match r {
                Value::Array(cells) => cells.clone(),
                other => vec![other.clone()],
            })
            .collect(),
        _ => Vec::new(),
    }
}

/// Whether agent identity is hidden from this caller (`manager.hide-agents`).
fn hide_agents(rc: &ReqCtx) -> bool {
    rc.state.config.manager.hide_agents && !rc.is_superadmin()
}

/// Kernel live stat: Redis while RUNNING, otherwise the stored last_stat.
async fn kernel_live_stat(rc: &ReqCtx, row: &KernelRow) -> Option<Value> {
    if row.status == "RUNNING" {
        if let Some(v) = live_stat(rc, &row.id.to_string()).await {
            return Some(v);
        }
    }
    row.last_stat.clone()
}

// ---------------------------------------------------------------------- ComputeSession

pub struct ComputeSession {
    pub row: KernelRow,
}

impl ComputeSession {
    pub async fn of_access_key(
        rc: &ReqCtx,
        access_key: &str,
        status: Option<String>,
    ) -> GqlResult<Vec<Self>> {
        let mut sql = Sql::new(format!("SELECT {KERNEL_COLS} FROM {KERNEL_FROM} WHERE k.cluster_role = 'main' AND k.access_key = "));
        sql.push_bind(Bind::Text(access_key.to_string()));
        if let Some(st) = status {
            let list: Vec<String> = st
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            sql.push(" AND k.status::text = ANY(")
                .push_bind(Bind::TextArr(list))
                .push(")");
        }
        sql.push(&format!(" ORDER BY {KERNEL_DEFAULT_ORDER}"));
        Ok(fetch_kernels(rc, &sql)
            .await?
            .into_iter()
            .map(|row| Self { row })
            .collect())
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl ComputeSession {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.row.id.to_string()))
    }
    async fn session_id(&self) -> Option<Uuid> {
        Some(self.row.session_id)
    }
    async fn tag(&self) -> Option<&str> {
        self.row.tag.as_deref()
    }
    async fn name(&self) -> Option<&str> {
        self.row.session_name.as_deref()
    }
    #[graphql(name = "type")]
    async fn session_type(&self) -> Option<&str> {
        Some(&self.row.session_type)
    }
    async fn image(&self) -> Option<&str> {
        self.row.image.as_deref()
    }
    async fn registry(&self) -> Option<&str> {
        self.row.registry.as_deref()
    }
    async fn cluster_template(&self) -> Option<String> {
        None
    }
    async fn cluster_mode(&self) -> Option<&str> {
        Some(&self.row.cluster_mode)
    }
    async fn cluster_size(&self) -> Option<i32> {
        Some(self.row.cluster_size)
    }
    /// Not in any 21.03 schema, but `ps -f cluster_hostname` of client 21.3.6 asks for it.
    async fn cluster_hostname(&self) -> Option<&str> {
        Some(&self.row.cluster_hostname)
    }
    async fn domain_name(&self) -> Option<&str> {
        Some(&self.row.domain_name)
    }
    async fn group_name(&self) -> Option<&str> {
        self.row.group_name.as_deref()
    }
    async fn group_id(&self) -> Option<Uuid> {
        Some(self.row.group_id)
    }
    async fn user_email(&self) -> Option<&str> {
        self.row.user_email.as_deref()
    }
    async fn user_id(&self) -> Option<Uuid> {
        Some(self.row.user_uuid)
    }
    async fn access_key(&self) -> Option<&str> {
        self.row.access_key.as_deref()
    }
    async fn created_user_email(&self) -> Option<String> {
        None
    }
    async fn created_user_id(&self) -> Option<Uuid> {
        None
    }
    async fn status(&self) -> Option<&str> {
        Some(&self.row.status)
    }
    async fn status_changed(&self) -> Option<PyDateTime> {
        dt(self.row.status_changed)
    }
    async fn status_info(&self) -> Option<&str> {
        self.row.status_info.as_deref()
    }
    async fn status_data(&self) -> Option<JsonString> {
        js(self.row.status_data.clone())
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn terminated_at(&self) -> Option<PyDateTime> {
        dt(self.row.terminated_at)
    }
    async fn starts_at(&self) -> Option<PyDateTime> {
        dt(self.row.starts_at)
    }
    async fn startup_command(&self) -> Option<&str> {
        self.row.startup_command.as_deref()
    }
    async fn result(&self) -> Option<&str> {
        Some(&self.row.result)
    }
    async fn resource_opts(&self) -> Option<JsonString> {
        js(self.row.resource_opts.clone())
    }
    async fn scaling_group(&self) -> Option<&str> {
        self.row.scaling_group.as_deref()
    }
    async fn service_ports(&self) -> Option<JsonString> {
        js(self.row.service_ports.clone())
    }
    async fn mounts(&self) -> Option<Vec<String>> {
        Some(
            mounts_rows(&self.row.mounts)
                .iter()
                .map(|r| py_list_repr(r))
                .collect(),
        )
    }
    /// The sum over all kernels of the session.
    async fn occupied_slots(&self, ctx: &Context<'_>) -> GqlResult<Option<JsonString>> {
        if self.row.cluster_size <= 1 {
            return Ok(Some(JsonString(self.row.occupied_slots.clone())));
        }
        let all: Vec<(Value,)> =
            sqlx::query_as("SELECT occupied_slots FROM kernels WHERE session_id = $1")
                .bind(self.row.session_id)
                .fetch_all(&mut **rc(ctx).db().await?)
                .await
                .map_err(db_err)?;
        Ok(Some(JsonString(sum_slots(all.iter().map(|(v,)| v)))))
    }
    /// The execute calls counted in Redis while the kernel lives (copied into the column
    /// at termination).
    async fn num_queries(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(live_num_queries(ctx, &self.row).await))
    }
    async fn containers(&self, ctx: &Context<'_>) -> GqlResult<Option<Vec<ComputeContainer>>> {
        let mut sql = Sql::new(format!(
            "SELECT {KERNEL_COLS} FROM {KERNEL_FROM} WHERE k.session_id = "
        ));
        sql.push_bind(Bind::Uuid(self.row.session_id));
        sql.push(" ORDER BY (k.cluster_role = 'main') DESC, k.cluster_role, k.cluster_idx");
        let rows = fetch_kernels(rc(ctx), &sql).await?;
        Ok(Some(
            rows.into_iter()
                .map(|row| ComputeContainer { row })
                .collect(),
        ))
    }
    async fn dependencies(&self, ctx: &Context<'_>) -> GqlResult<Option<Vec<ComputeSession>>> {
        let mut sql = Sql::new(format!(
            "SELECT {KERNEL_COLS} FROM {KERNEL_FROM} JOIN session_dependencies sd ON sd.depends_on = k.id \
             WHERE k.cluster_role = 'main' AND sd.session_id = "
        ));
        sql.push_bind(Bind::Uuid(self.row.id));
        let rows = fetch_kernels(rc(ctx), &sql).await?;
        Ok(Some(
            rows.into_iter().map(|row| ComputeSession { row }).collect(),
        ))
    }
}

// -------------------------------------------------------------------- ComputeContainer

pub struct ComputeContainer {
    pub row: KernelRow,
}

impl ComputeContainer {
    pub async fn of_agent(
        rc: &ReqCtx,
        agent: &str,
        status: Option<String>,
    ) -> GqlResult<Vec<Self>> {
        let mut sql = Sql::new(format!(
            "SELECT {KERNEL_COLS} FROM {KERNEL_FROM} WHERE k.agent = "
        ));
        sql.push_bind(Bind::Text(agent.to_string()));
        if let Some(st) = status {
            let list: Vec<String> = st
                .split(',')
                .map(|s| s.trim().to_string())
                .filter(|s| !s.is_empty())
                .collect();
            sql.push(" AND k.status::text = ANY(")
                .push_bind(Bind::TextArr(list))
                .push(")");
        }
        sql.push(" ORDER BY k.created_at");
        Ok(fetch_kernels(rc, &sql)
            .await?
            .into_iter()
            .map(|row| Self { row })
            .collect())
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl ComputeContainer {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.row.id.to_string()))
    }
    async fn idx(&self) -> Option<i32> {
        Some(self.row.cluster_idx)
    }
    async fn role(&self) -> Option<&str> {
        Some(&self.row.cluster_role)
    }
    async fn hostname(&self) -> Option<&str> {
        Some(&self.row.cluster_hostname)
    }
    async fn cluster_idx(&self) -> Option<i32> {
        Some(self.row.cluster_idx)
    }
    async fn cluster_role(&self) -> Option<&str> {
        Some(&self.row.cluster_role)
    }
    async fn cluster_hostname(&self) -> Option<&str> {
        Some(&self.row.cluster_hostname)
    }
    async fn session_id(&self) -> Option<Uuid> {
        Some(self.row.session_id)
    }
    async fn image(&self) -> Option<&str> {
        self.row.image.as_deref()
    }
    async fn registry(&self) -> Option<&str> {
        self.row.registry.as_deref()
    }
    async fn status(&self) -> Option<&str> {
        Some(&self.row.status)
    }
    async fn status_changed(&self) -> Option<PyDateTime> {
        dt(self.row.status_changed)
    }
    async fn status_info(&self) -> Option<&str> {
        self.row.status_info.as_deref()
    }
    async fn status_data(&self) -> Option<JsonString> {
        js(self.row.status_data.clone())
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn terminated_at(&self) -> Option<PyDateTime> {
        dt(self.row.terminated_at)
    }
    async fn starts_at(&self) -> Option<PyDateTime> {
        dt(self.row.starts_at)
    }
    async fn agent(&self, ctx: &Context<'_>) -> Option<String> {
        if hide_agents(rc(ctx)) {
            None
        } else {
            self.row.agent.clone()
        }
    }
    async fn container_id(&self, ctx: &Context<'_>) -> Option<String> {
        if hide_agents(rc(ctx)) {
            None
        } else {
            self.row.container_id.clone()
        }
    }
    async fn resource_opts(&self) -> Option<JsonString> {
        js(self.row.resource_opts.clone())
    }
    async fn occupied_slots(&self) -> Option<JsonString> {
        Some(JsonString(self.row.occupied_slots.clone()))
    }
    async fn live_stat(&self, ctx: &Context<'_>) -> Option<JsonString> {
        kernel_live_stat(rc(ctx), &self.row).await.map(JsonString)
    }
    async fn last_stat(&self) -> Option<JsonString> {
        js(self.row.last_stat.clone())
    }
}

// ---------------------------------------------------------------- LegacyComputeSession

pub struct LegacyComputeSession {
    pub row: KernelRow,
    stat: tokio::sync::OnceCell<Option<Value>>,
}

impl From<KernelRow> for LegacyComputeSession {
    fn from(row: KernelRow) -> Self {
        Self {
            row,
            stat: tokio::sync::OnceCell::new(),
        }
    }
}

impl LegacyComputeSession {
    async fn metric(&self, ctx: &Context<'_>, pointer: &str) -> f64 {
        let stat = self
            .stat
            .get_or_init(|| kernel_live_stat(rc(ctx), &self.row))
            .await;
        match stat.as_ref().and_then(|s| s.pointer(pointer)) {
            Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
            Some(Value::String(s)) => s.parse().unwrap_or(0.0),
            _ => 0.0,
        }
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl LegacyComputeSession {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.row.id.to_string()))
    }
    async fn tag(&self) -> Option<&str> {
        self.row.tag.as_deref()
    }
    async fn sess_id(&self) -> Option<&str> {
        self.row.session_name.as_deref()
    }
    async fn sess_type(&self) -> Option<&str> {
        Some(&self.row.session_type)
    }
    async fn session_name(&self) -> Option<&str> {
        self.row.session_name.as_deref()
    }
    async fn session_type(&self) -> Option<&str> {
        Some(&self.row.session_type)
    }
    async fn role(&self) -> Option<&str> {
        Some(&self.row.cluster_role)
    }
    async fn image(&self) -> Option<&str> {
        self.row.image.as_deref()
    }
    async fn registry(&self) -> Option<&str> {
        self.row.registry.as_deref()
    }
    async fn domain_name(&self) -> Option<&str> {
        Some(&self.row.domain_name)
    }
    async fn group_name(&self) -> Option<&str> {
        self.row.group_name.as_deref()
    }
    async fn group_id(&self) -> Option<Uuid> {
        Some(self.row.group_id)
    }
    async fn scaling_group(&self) -> Option<&str> {
        self.row.scaling_group.as_deref()
    }
    async fn user_uuid(&self) -> Option<Uuid> {
        Some(self.row.user_uuid)
    }
    async fn access_key(&self) -> Option<&str> {
        self.row.access_key.as_deref()
    }
    async fn status(&self) -> Option<&str> {
        Some(&self.row.status)
    }
    async fn status_changed(&self) -> Option<PyDateTime> {
        dt(self.row.status_changed)
    }
    async fn status_info(&self) -> Option<&str> {
        self.row.status_info.as_deref()
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn terminated_at(&self) -> Option<PyDateTime> {
        dt(self.row.terminated_at)
    }
    async fn startup_command(&self) -> Option<&str> {
        self.row.startup_command.as_deref()
    }
    async fn result(&self) -> Option<&str> {
        Some(&self.row.result)
    }
    async fn agent(&self, ctx: &Context<'_>) -> Option<String> {
        if hide_agents(rc(ctx)) {
            None
        } else {
            self.row.agent.clone()
        }
    }
    async fn container_id(&self, ctx: &Context<'_>) -> Option<String> {
        if hide_agents(rc(ctx)) {
            None
        } else {
            self.row.container_id.clone()
        }
    }
    async fn service_ports(&self) -> Option<JsonString> {
        js(self.row.service_ports.clone())
    }
    async fn occupied_slots(&self) -> Option<JsonString> {
        Some(JsonString(self.row.occupied_slots.clone()))
    }
    async fn occupied_shares(&self) -> Option<JsonString> {
        Some(JsonString(self.row.occupied_shares.clone()))
    }
    async fn resource_opts(&self) -> Option<JsonString> {
        js(self.row.resource_opts.clone())
    }
    async fn live_stat(&self, ctx: &Context<'_>) -> Option<JsonString> {
        if self.row.status == "RUNNING" {
            live_stat(rc(ctx), &self.row.id.to_string())
                .await
                .map(JsonString)
        } else {
            None
        }
    }
    async fn last_stat(&self) -> Option<JsonString> {
        js(self.row.last_stat.clone())
    }
    async fn mounts(&self) -> Option<Vec<Vec<String>>> {
        Some(
            mounts_rows(&self.row.mounts)
                .into_iter()
                .map(|r| {
                    r.into_iter()
                        .map(|v| match v {
                            Value::String(s) => s,
                            other => other.to_string(),
                        })
                        .collect()
                })
                .collect(),
        )
    }
    /// The execute calls counted in Redis while the kernel lives (copied into the column
    /// at termination).
    async fn num_queries(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(live_num_queries(ctx, &self.row).await))
    }
    async fn user_email(&self) -> Option<&str> {
        self.row.user_email.as_deref()
    }
    async fn lang(&self) -> Option<&str> {
        self.row.image.as_deref()
    }
    async fn mem_slot(&self) -> Option<i64> {
        Some((slot_f64(&self.row.occupied_slots, "mem") / 1048576.0) as i64)
    }
    async fn cpu_slot(&self) -> Option<f64> {
        Some(slot_f64(&self.row.occupied_slots, "cpu"))
    }
    async fn gpu_slot(&self) -> Option<f64> {
        Some(slot_f64(&self.row.occupied_slots, "cuda.device"))
    }
    async fn tpu_slot(&self) -> Option<f64> {
        Some(slot_f64(&self.row.occupied_slots, "tpu.device"))
    }
    async fn cpu_used(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(self.metric(ctx, "/cpu_used/current").await as i64))
    }
    async fn cpu_using(&self, ctx: &Context<'_>) -> Option<f64> {
        Some(self.metric(ctx, "/cpu_util/pct").await)
    }
    async fn mem_max_bytes(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(self.metric(ctx, "/mem/stats.max").await as i64))
    }
    async fn mem_cur_bytes(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(self.metric(ctx, "/mem/current").await as i64))
    }
    async fn net_rx_bytes(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(self.metric(ctx, "/net_rx/stats.rate").await as i64))
    }
    async fn net_tx_bytes(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(self.metric(ctx, "/net_tx/stats.rate").await as i64))
    }
    async fn io_read_bytes(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(self.metric(ctx, "/io_read/current").await as i64))
    }
    async fn io_write_bytes(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(self.metric(ctx, "/io_write/current").await as i64))
    }
    async fn io_max_scratch_size(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(
            self.metric(ctx, "/io_scratch_size/stats.max").await as i64,
        ))
    }
    async fn io_cur_scratch_size(&self, ctx: &Context<'_>) -> Option<BigInt> {
        Some(BigInt(
            self.metric(ctx, "/io_scratch_size/current").await as i64,
        ))
    }
}
