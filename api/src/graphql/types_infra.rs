//! Agent, Image, StorageVolume and VirtualFolder.

use async_graphql::{Context, Object, SimpleObject};
use chrono::{DateTime, Utc};
use serde_json::Value;
use uuid::Uuid;

use super::context::{db_err, GqlResult, ReqCtx};
use super::images::ImageInfo;
use super::scalars::{dt, BigInt, JsonString, PyDateTime};
use super::slots::slot_f64;
use super::types_admin::rc;

/// Reads a live-stat document from Redis (key = agent or kernel id). Agents write it as
/// msgpack in the original; JSON is accepted too.
pub async fn live_stat(rc: &ReqCtx, key: &str) -> Option<Value> {
    let mut conn = rc.state.redis.get().await.ok()?;
    let raw: Option<Vec<u8>> = bai_core::redis::redis::cmd("GET")
        .arg(key)
        .query_async(&mut *conn)
        .await
        .ok()?;
    decode_stat(&raw?)
}

pub fn decode_stat(raw: &[u8]) -> Option<Value> {
    if let Ok(v) = serde_json::from_slice::<Value>(raw) {
        return Some(v);
    }
    rmp_serde::from_slice::<Value>(raw).ok()
}

fn stat_f64(v: Option<&Value>) -> Option<f64> {
    match v? {
        Value::Number(n) => n.as_f64(),
        Value::String(s) => s.parse().ok(),
        _ => None,
    }
}

// ------------------------------------------------------------------------------- Agent

pub const AGENT_COLS: &str = "a.id, a.status::text AS status, a.status_changed, a.region, a.scaling_group, \
    a.schedulable, a.available_slots, a.occupied_slots, a.addr, a.first_contact, a.lost_at, a.version, \
    a.compute_plugins";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct AgentRow {
    pub id: String,
    pub status: String,
    pub status_changed: Option<DateTime<Utc>>,
    pub region: String,
    pub scaling_group: String,
    pub schedulable: bool,
    pub available_slots: Value,
    pub occupied_slots: Value,
    pub addr: String,
    pub first_contact: Option<DateTime<Utc>>,
    pub lost_at: Option<DateTime<Utc>>,
    pub version: String,
    pub compute_plugins: Value,
}

pub struct Agent {
    pub row: AgentRow,
    stat: tokio::sync::OnceCell<Option<Value>>,
}

impl From<AgentRow> for Agent {
    fn from(row: AgentRow) -> Self {
        Self {
            row,
            stat: tokio::sync::OnceCell::new(),
        }
    }
}

impl Agent {
    async fn stat(&self, ctx: &Context<'_>) -> Option<&Value> {
        self.stat
            .get_or_init(|| live_stat(rc(ctx), &self.row.id))
            .await
            .as_ref()
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl Agent {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.row.id.clone()))
    }
    async fn status(&self) -> Option<&str> {
        Some(&self.row.status)
    }
    async fn status_changed(&self) -> Option<PyDateTime> {
        dt(self.row.status_changed)
    }
    async fn region(&self) -> Option<&str> {
        Some(&self.row.region)
    }
    async fn scaling_group(&self) -> Option<&str> {
        Some(&self.row.scaling_group)
    }
    async fn schedulable(&self) -> Option<bool> {
        Some(self.row.schedulable)
    }
    async fn available_slots(&self) -> Option<JsonString> {
        Some(JsonString(self.row.available_slots.clone()))
    }
    async fn occupied_slots(&self) -> Option<JsonString> {
        Some(JsonString(self.row.occupied_slots.clone()))
    }
    async fn addr(&self) -> Option<&str> {
        Some(&self.row.addr)
    }
    async fn first_contact(&self) -> Option<PyDateTime> {
        dt(self.row.first_contact)
    }
    async fn lost_at(&self) -> Option<PyDateTime> {
        dt(self.row.lost_at)
    }
    async fn version(&self) -> Option<&str> {
        Some(&self.row.version)
    }
    async fn compute_plugins(&self) -> Option<JsonString> {
        Some(JsonString(self.row.compute_plugins.clone()))
    }
    async fn live_stat(&self, ctx: &Context<'_>) -> Option<JsonString> {
        self.stat(ctx).await.cloned().map(JsonString)
    }
    /// Device health as reported by the agent (`{device: {status, status_info, metadata}}`).
    /// Gathering it needs an agent RPC; until then each compute plugin is reported
    /// `healthy` with no metadata, which is what a local process agent would say.
    async fn hardware_metadata(&self) -> Option<JsonString> {
        let mut out = serde_json::Map::new();
        if let Value::Object(plugins) = &self.row.compute_plugins {
            for k in plugins.keys() {
                out.insert(
                    k.clone(),
                    serde_json::json!({"status": "healthy", "status_info": null, "metadata": {}}),
                );
            }
        }
        Some(JsonString(Value::Object(out)))
    }
    async fn cpu_cur_pct(&self, ctx: &Context<'_>) -> Option<f64> {
        let s = self.stat(ctx).await;
        Some(stat_f64(s.and_then(|v| v.pointer("/node/cpu_util/pct"))).unwrap_or(0.0))
    }
    async fn mem_cur_bytes(&self, ctx: &Context<'_>) -> Option<f64> {
        let s = self.stat(ctx).await;
        Some(stat_f64(s.and_then(|v| v.pointer("/node/mem/current"))).unwrap_or(0.0))
    }
    async fn mem_slots(&self) -> Option<i64> {
        Some((slot_f64(&self.row.available_slots, "mem") / 1048576.0) as i64)
    }
    async fn cpu_slots(&self) -> Option<f64> {
        Some(slot_f64(&self.row.available_slots, "cpu"))
    }
    async fn gpu_slots(&self) -> Option<f64> {
        Some(slot_f64(&self.row.available_slots, "cuda.device"))
    }
    async fn tpu_slots(&self) -> Option<f64> {
        Some(slot_f64(&self.row.available_slots, "tpu.device"))
    }
    async fn used_mem_slots(&self) -> Option<i64> {
        Some((slot_f64(&self.row.occupied_slots, "mem") / 1048576.0) as i64)
    }
    async fn used_cpu_slots(&self) -> Option<f64> {
        Some(slot_f64(&self.row.occupied_slots, "cpu"))
    }
    async fn used_gpu_slots(&self) -> Option<f64> {
        Some(slot_f64(&self.row.occupied_slots, "cuda.device"))
    }
    async fn used_tpu_slots(&self) -> Option<f64> {
        Some(slot_f64(&self.row.occupied_slots, "tpu.device"))
    }
    /// Kernels on this agent (no resolver in 21.03.6; working here).
    async fn compute_containers(
        &self,
        ctx: &Context<'_>,
        status: Option<String>,
    ) -> GqlResult<Option<Vec<super::types_session::ComputeContainer>>> {
        super::types_session::ComputeContainer::of_agent(rc(ctx), &self.row.id, status)
            .await
            .map(Some)
    }
}

// ------------------------------------------------------------------------------- Image

#[derive(Debug, Clone, SimpleObject)]
#[graphql(name = "KVPair", rename_fields = "snake_case")]
pub struct KvPair {
    pub key: Option<String>,
    pub value: Option<String>,
}

#[derive(Debug, Clone, SimpleObject)]
#[graphql(rename_fields = "snake_case")]
pub struct ResourceLimit {
    pub key: Option<String>,
    pub min: Option<String>,
    pub max: Option<String>,
}

pub struct Image {
    pub info: ImageInfo,
    pub installed_agents: Vec<String>,
    /// `installed_agents` is hidden from non-superadmins when `hide-agents` is set.
    pub hide_agents: bool,
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl Image {
    async fn name(&self) -> Option<&str> {
        Some(&self.info.name)
    }
    async fn humanized_name(&self) -> Option<&str> {
        Some(&self.info.name)
    }
    async fn tag(&self) -> Option<&str> {
        Some(&self.info.tag)
    }
    async fn registry(&self) -> Option<&str> {
        Some(&self.info.registry)
    }
    async fn digest(&self) -> Option<&str> {
        Some(&self.info.digest)
    }
    async fn hash(&self) -> Option<&str> {
        Some(&self.info.digest)
    }
    async fn labels(&self) -> Option<Vec<KvPair>> {
        Some(
            self.info
                .labels
                .iter()
                .map(|(k, v)| KvPair {
                    key: Some(k.clone()),
                    value: Some(v.clone()),
                })
                .collect(),
        )
    }
    async fn aliases(&self) -> Option<Vec<String>> {
        Some(self.info.aliases.clone())
    }
    async fn size_bytes(&self) -> Option<BigInt> {
        Some(BigInt(self.info.size_bytes))
    }
    async fn resource_limits(&self) -> Option<Vec<ResourceLimit>> {
        Some(
            self.info
                .resources
                .iter()
                .map(|(k, (min, max))| ResourceLimit {
                    key: Some(k.clone()),
                    min: Some(min.clone().unwrap_or_else(|| "0".into())),
                    max: Some(max.clone().unwrap_or_else(|| "Infinity".into())),
                })
                .collect(),
        )
    }
    async fn supported_accelerators(&self) -> Option<Vec<String>> {
        Some(self.info.accelerators.clone())
    }
    async fn installed(&self) -> Option<bool> {
        Some(!self.installed_agents.is_empty())
    }
    async fn installed_agents(&self) -> Option<Vec<String>> {
        if self.hide_agents {
            None
        } else {
            Some(self.installed_agents.clone())
        }
    }
}

// ----------------------------------------------------------------------- StorageVolume

pub struct StorageVolume {
    /// `<proxy>:<volume>`.
    pub id: String,
    pub backend: Option<String>,
    pub fsprefix: Option<String>,
    pub path: Option<String>,
    pub capabilities: Vec<String>,
    /// The volume's proxy (for `usage`) and its name there.
    pub proxy: Option<std::sync::Arc<bai_storage::registry::Proxy>>,
    pub volume: String,
}

impl StorageVolume {
    pub fn from_info(
        host: String,
        info: bai_storage::proto::VolumeInfo,
        proxy: std::sync::Arc<bai_storage::registry::Proxy>,
    ) -> Self {
        Self {
            id: host,
            backend: Some(info.backend),
            fsprefix: Some(info.fsprefix),
            path: Some(info.path),
            capabilities: info.capabilities,
            proxy: Some(proxy),
            volume: info.name,
        }
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl StorageVolume {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.id.clone()))
    }
    async fn backend(&self) -> Option<&str> {
        self.backend.as_deref()
    }
    async fn fsprefix(&self) -> Option<&str> {
        self.fsprefix.as_deref()
    }
    async fn path(&self) -> Option<&str> {
        self.path.as_deref()
    }
    async fn capabilities(&self) -> Option<Vec<String>> {
        Some(self.capabilities.clone())
    }
    /// Our proxy has no hardware-info route: always `{}`.
    async fn hardware_metadata(&self) -> Option<JsonString> {
        Some(JsonString(serde_json::json!({})))
    }
    /// Our proxy has no performance-metric route: always `{}`.
    async fn performance_metric(&self) -> Option<JsonString> {
        Some(JsonString(serde_json::json!({})))
    }
    /// `{"capacity_bytes", "used_bytes"}` from the proxy (21.03 #389); null when the
    /// proxy cannot answer.
    async fn usage(&self) -> Option<JsonString> {
        let proxy = self.proxy.as_ref()?;
        match proxy.client().volume_usage(&self.volume).await {
            Ok(u) => Some(JsonString(
                serde_json::json!({"capacity_bytes": u.capacity_bytes, "used_bytes": u.used_bytes}),
            )),
            Err(e) => {
                tracing::warn!(volume = %self.id, error = %e, "cannot read volume usage");
                None
            }
        }
    }
}

// ----------------------------------------------------------------------- VirtualFolder

pub const VFOLDER_COLS: &str = "v.id, v.host, v.name, v.usage_mode::text AS usage_mode, \
    v.permission::text AS permission, v.max_files, v.max_size, v.created_at, v.last_used, v.creator, \
    v.unmanaged_path, v.ownership_type::text AS ownership_type, v.\"user\", v.\"group\", v.cloneable";

#[derive(Debug, Clone, sqlx::FromRow)]
pub struct VFolderRow {
    pub id: Uuid,
    pub host: String,
    pub name: String,
    pub usage_mode: String,
    pub permission: Option<String>,
    pub max_files: Option<i32>,
    pub max_size: Option<i32>,
    pub created_at: Option<DateTime<Utc>>,
    pub last_used: Option<DateTime<Utc>>,
    pub creator: Option<String>,
    pub unmanaged_path: Option<String>,
    pub ownership_type: String,
    pub user: Option<Uuid>,
    pub group: Option<Uuid>,
    pub cloneable: bool,
}

pub struct VirtualFolder {
    pub row: VFolderRow,
}

impl VirtualFolder {
    pub async fn of_user(rc: &ReqCtx, user: Uuid) -> GqlResult<Vec<VirtualFolder>> {
        let rows: Vec<VFolderRow> = sqlx::query_as(&format!(
            "SELECT {VFOLDER_COLS} FROM vfolders v WHERE v.\"user\" = $1 ORDER BY v.created_at"
        ))
        .bind(user)
        .fetch_all(&mut **rc.db().await?)
        .await
        .map_err(db_err)?;
        Ok(rows.into_iter().map(|row| VirtualFolder { row }).collect())
    }
}

#[Object(rename_fields = "snake_case", rename_args = "snake_case")]
impl VirtualFolder {
    async fn id(&self) -> Option<async_graphql::ID> {
        Some(async_graphql::ID(self.row.id.to_string()))
    }
    async fn host(&self) -> Option<&str> {
        Some(&self.row.host)
    }
    async fn name(&self) -> Option<&str> {
        Some(&self.row.name)
    }
    async fn user(&self) -> Option<Uuid> {
        self.row.user
    }
    async fn group(&self) -> Option<Uuid> {
        self.row.group
    }
    async fn creator(&self) -> Option<&str> {
        self.row.creator.as_deref()
    }
    async fn unmanaged_path(&self) -> Option<&str> {
        self.row.unmanaged_path.as_deref()
    }
    async fn usage_mode(&self) -> Option<&str> {
        Some(&self.row.usage_mode)
    }
    async fn permission(&self) -> Option<&str> {
        self.row.permission.as_deref()
    }
    async fn ownership_type(&self) -> Option<&str> {
        Some(&self.row.ownership_type)
    }
    async fn max_files(&self) -> Option<i32> {
        self.row.max_files
    }
    async fn max_size(&self) -> Option<i32> {
        self.row.max_size
    }
    async fn created_at(&self) -> Option<PyDateTime> {
        dt(self.row.created_at)
    }
    async fn last_used(&self) -> Option<PyDateTime> {
        dt(self.row.last_used)
    }
    /// Always 0 in 21.03 (usage comes from the storage proxy).
    async fn num_files(&self) -> Option<i32> {
        Some(0)
    }
    async fn cur_size(&self) -> Option<BigInt> {
        Some(BigInt(0))
    }
    async fn cloneable(&self) -> Option<bool> {
        Some(self.row.cloneable)
    }
}
