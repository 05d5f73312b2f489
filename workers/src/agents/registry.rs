//! Heartbeats: register agents, keep them alive, and write the database only on change.
//!
//! Per heartbeat:
//! 1. `ZADD agent.last_seen <now> <agent>` in Redis — the liveness record. Its reply says
//!    whether the agent was *absent* from the set: new, or removed by the liveness
//!    monitor after marking it LOST. Absence is the cross-worker signal that the row may
//!    have changed behind this worker's back.
//! 2. If the agent was present and this worker's cache says the row already matches the
//!    heartbeat (same slots, address, scaling group, region, version, compute plugins;
//!    status ALIVE), stop: **no database access at all** — the steady state.
//! 3. Otherwise read the row (a cache miss costs one SELECT, never a write). If it matches
//!    and is ALIVE, remember that and stop.
//! 4. Otherwise upsert it in a SERIALIZABLE transaction (`Db::transact`, retried on
//!    conflicts): insert a new agent, update changed fields, or revive a LOST/TERMINATED
//!    agent (status ALIVE, `lost_at` NULL, `status_changed` set — the original forgot the
//!    latter). After the commit: `agent_started(revived)` for a revival, slot types to
//!    etcd when slots changed, and a scheduling request for the agent's scaling group(s).
//!
//! The liveness monitor marks an agent LOST *then* removes it from the sorted set, so a
//! heartbeat racing with it either sees the LOST row or finds itself absent next time and
//! re-checks; a revived agent is never stuck LOST in the database while heartbeating.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde_json::Value;

use bai_agent_proto::AgentInfo;
use bai_core::redis::redis;
use bai_events::Event;

use super::{derived_id, AgentsRuntime};

/// The agent fields a heartbeat can change.
#[derive(Clone, Debug, PartialEq)]
pub struct AgentRecord {
    pub region: String,
    pub scaling_group: String,
    pub addr: String,
    pub available_slots: Value,
    pub version: String,
    pub compute_plugins: Value,
}

impl AgentRecord {
    pub fn from_info(info: &AgentInfo) -> Self {
        Self {
            region: info.region.clone(),
            scaling_group: info.scaling_group.clone(),
            addr: info.addr.clone(),
            available_slots: serde_json::to_value(&info.available_slots).unwrap_or_default(),
            version: info.version.clone(),
            compute_plugins: info.compute_plugins.clone(),
        }
    }
}

#[derive(sqlx::FromRow)]
struct AgentRow {
    status: String,
    status_changed: Option<DateTime<Utc>>,
    region: String,
    scaling_group: String,
    addr: String,
    available_slots: Value,
    version: String,
    compute_plugins: Value,
}

impl AgentRow {
    fn record(&self) -> AgentRecord {
        AgentRecord {
            region: self.region.clone(),
            scaling_group: self.scaling_group.clone(),
            addr: self.addr.clone(),
            available_slots: self.available_slots.clone(),
            version: self.version.clone(),
            compute_plugins: self.compute_plugins.clone(),
        }
    }
}

struct CacheEntry {
    record: AgentRecord,
    at: Instant,
    /// The database refused this record (e.g. unknown scaling group): do not retry it on
    /// every heartbeat.
    rejected: bool,
}

/// Last record this worker knows to be in the database, per agent.
pub(crate) struct HeartbeatCache {
    map: Mutex<HashMap<String, CacheEntry>>,
    ttl: Duration,
}

impl HeartbeatCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        Self {
            map: Mutex::new(HashMap::new()),
            ttl,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, CacheEntry>> {
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// `Some(rejected)` when the cache holds exactly this record and is still fresh.
    fn check(&self, agent_id: &str, record: &AgentRecord) -> Option<bool> {
        let map = self.lock();
        let e = map.get(agent_id)?;
        let ttl = if e.rejected {
            Duration::from_secs(60)
        } else {
            self.ttl
        };
        (e.record == *record && e.at.elapsed() < ttl).then_some(e.rejected)
    }

    fn put(&self, agent_id: &str, record: AgentRecord, rejected: bool) {
        self.lock().insert(
            agent_id.to_string(),
            CacheEntry {
                record,
                at: Instant::now(),
                rejected,
            },
        );
    }

    pub(crate) fn forget(&self, agent_id: &str) {
        self.lock().remove(agent_id);
    }
}

/// What a heartbeat did to the database.
#[derive(Debug, Clone, PartialEq)]
pub enum HeartbeatOutcome {
    /// Nothing to write (the steady state).
    Unchanged,
    Inserted,
    Updated {
        previous_scaling_group: String,
    },
    Revived {
        previous_status: String,
    },
    /// The database refused the agent (logged once a minute).
    Rejected,
    /// A heartbeat sent before the agent was marked LOST/TERMINATED (it was queued
    /// behind the agent's own `agent_terminated`, say): it does not revive the agent.
    Stale,
}

impl AgentRow {
    /// Whether a heartbeat sent at `sent_at` predates the row's last status change to a
    /// non-ALIVE status.
    fn outdates(&self, sent_at: DateTime<Utc>) -> bool {
        self.status != "ALIVE" && self.status_changed.is_some_and(|t| sent_at < t)
    }
}

/// Seconds since the Unix epoch, as the liveness score.
pub fn now_secs() -> f64 {
    let now = chrono::Utc::now();
    now.timestamp() as f64 + f64::from(now.timestamp_subsec_millis()) / 1000.0
}

/// Handles one heartbeat sent at `sent_at` (the message's timestamp; see the module docs).
pub async fn handle_heartbeat(
    rt: &AgentsRuntime,
    agent_id: &str,
    info: &AgentInfo,
    sent_at: DateTime<Utc>,
) -> anyhow::Result<HeartbeatOutcome> {
    use std::sync::atomic::Ordering::Relaxed;
    let added: i64 = {
        let mut conn = rt.redis.get().await?;
        redis::cmd("ZADD")
            .arg(rt.keys.last_seen())
            .arg(now_secs())
            .arg(agent_id)
            .query_async(&mut *conn)
            .await?
    };
    let record = AgentRecord::from_info(info);
    if added == 0 {
        match rt.cache.check(agent_id, &record) {
            Some(false) => return Ok(HeartbeatOutcome::Unchanged),
            Some(true) => return Ok(HeartbeatOutcome::Rejected),
            None => {}
        }
    }
    rt.metrics.heartbeat_db_reads.fetch_add(1, Relaxed);
    let row: Option<AgentRow> = sqlx::query_as(
        "SELECT status::text AS status, status_changed, region, scaling_group, addr, available_slots, version, \
         compute_plugins FROM agents WHERE id = $1",
    )
    .bind(agent_id)
    .fetch_optional(rt.ctx.db.pool())
    .await?;
    if let Some(r) = &row {
        if r.status == "ALIVE" && r.record() == record {
            rt.cache.put(agent_id, record, false);
            return Ok(HeartbeatOutcome::Unchanged);
        }
        if r.outdates(sent_at) {
            return Ok(HeartbeatOutcome::Stale);
        }
    }
    let outcome = match upsert(rt, agent_id, &record, sent_at).await {
        Ok(o) => o,
        Err(e) if is_permanent(&e) => {
            tracing::warn!(agent_id, scaling_group = %record.scaling_group, error = %format!("{e:#}"), "agent refused by the database (checked again in 60 s)");
            rt.cache.put(agent_id, record, true);
            return Ok(HeartbeatOutcome::Rejected);
        }
        Err(e) => return Err(e),
    };
    if outcome == HeartbeatOutcome::Stale {
        return Ok(outcome);
    }
    rt.cache.put(agent_id, record.clone(), false);
    if outcome != HeartbeatOutcome::Unchanged {
        rt.metrics.heartbeat_db_writes.fetch_add(1, Relaxed);
        after_write(rt, agent_id, info, &record, &outcome).await;
    }
    Ok(outcome)
}

async fn upsert(
    rt: &AgentsRuntime,
    agent_id: &str,
    record: &AgentRecord,
    sent_at: DateTime<Utc>,
) -> anyhow::Result<HeartbeatOutcome> {
    let agent_id = agent_id.to_string();
    let record = record.clone();
    let out = rt
        .ctx
        .db
        .transact(move |txn| {
            let agent_id = agent_id.clone();
            let r = record.clone();
            Box::pin(async move {
                let row: Option<AgentRow> = sqlx::query_as(
                    "SELECT status::text AS status, status_changed, region, scaling_group, addr, available_slots, \
                     version, compute_plugins FROM agents WHERE id = $1 FOR UPDATE",
                )
                .bind(&agent_id)
                .fetch_optional(&mut **txn)
                .await?;
                let Some(row) = row else {
                    let inserted: Option<String> = sqlx::query_scalar(
                        "INSERT INTO agents (id, status, status_changed, region, scaling_group, schedulable, \
                         available_slots, occupied_slots, addr, first_contact, lost_at, version, compute_plugins) \
                         VALUES ($1, 'ALIVE', now(), $2, $3, true, $4, '{}'::jsonb, $5, now(), NULL, $6, $7) \
                         ON CONFLICT (id) DO NOTHING RETURNING id",
                    )
                    .bind(&agent_id)
                    .bind(&r.region)
                    .bind(&r.scaling_group)
                    .bind(&r.available_slots)
                    .bind(&r.addr)
                    .bind(&r.version)
                    .bind(&r.compute_plugins)
                    .fetch_optional(&mut **txn)
                    .await?;
                    return Ok(if inserted.is_some() {
                        HeartbeatOutcome::Inserted
                    } else {
                        HeartbeatOutcome::Unchanged
                    });
                };
                let alive = row.status == "ALIVE";
                if alive && row.record() == r {
                    return Ok(HeartbeatOutcome::Unchanged);
                }
                if row.outdates(sent_at) {
                    return Ok(HeartbeatOutcome::Stale);
                }
                sqlx::query(
                    "UPDATE agents SET region = $2, scaling_group = $3, available_slots = $4, addr = $5, \
                     version = $6, compute_plugins = $7, \
                     status = 'ALIVE', lost_at = NULL, \
                     status_changed = CASE WHEN status = 'ALIVE' THEN status_changed ELSE now() END \
                     WHERE id = $1",
                )
                .bind(&agent_id)
                .bind(&r.region)
                .bind(&r.scaling_group)
                .bind(&r.available_slots)
                .bind(&r.addr)
                .bind(&r.version)
                .bind(&r.compute_plugins)
                .execute(&mut **txn)
                .await?;
                Ok(if alive {
                    HeartbeatOutcome::Updated {
                        previous_scaling_group: row.scaling_group,
                    }
                } else {
                    HeartbeatOutcome::Revived {
                        previous_status: row.status,
                    }
                })
            })
        })
        .await?;
    Ok(out)
}

/// Integrity or data errors (unknown scaling group, value too long): retrying the same
/// heartbeat cannot help.
fn is_permanent(e: &anyhow::Error) -> bool {
    e.chain().any(|c| {
        let db = c.downcast_ref::<sqlx::Error>().or_else(|| {
            match c.downcast_ref::<bai_core::TxnError>() {
                Some(bai_core::TxnError::Database(d)) => Some(d),
                _ => None,
            }
        });
        db.and_then(|d| d.as_database_error())
            .and_then(|d| d.code())
            .is_some_and(|code| code.starts_with("23") || code.starts_with("22"))
    })
}

async fn after_write(
    rt: &AgentsRuntime,
    agent_id: &str,
    info: &AgentInfo,
    record: &AgentRecord,
    outcome: &HeartbeatOutcome,
) {
    tracing::info!(agent_id, outcome = ?outcome, scaling_group = %record.scaling_group, "agent registered/updated");
    if let HeartbeatOutcome::Revived { .. } = outcome {
        rt.publish(
            derived_id(uuid::Uuid::new_v4(), "agent_started"),
            Event::AgentStarted {
                agent_id: agent_id.to_string(),
                reason: "revived".into(),
            },
        )
        .await;
    }
    if let (Some(etcd), false) = (&rt.ctx.etcd, info.slot_types.is_empty()) {
        // The original keeps slot types in etcd (`config/resource_slots/<slot>`).
        for (slot, kind) in &info.slot_types {
            let key = format!("config/resource_slots/{slot}");
            if let Err(e) = etcd.put(&key, kind).await {
                tracing::warn!(error = %format!("{e:#}"), key, "cannot record a slot type in etcd");
            }
        }
    }
    rt.request_schedule(&record.scaling_group).await;
    if let HeartbeatOutcome::Updated {
        previous_scaling_group,
    } = outcome
    {
        if previous_scaling_group != &record.scaling_group {
            rt.request_schedule(previous_scaling_group).await;
        }
    }
}
