//! The scheduler: one pass per scaling group, driven by coalesced triggers and the tick.
//!
//! *Schedule* (PENDING → SCHEDULED): in batches, each one SERIALIZABLE transaction holding
//! the scaling group's advisory lock. Everything a batch needs (policies, occupancy of the
//! keypairs, groups and domains involved, concurrency counts, agents) is read with a few
//! aggregate queries; predicates and placement run in memory; results are written with bulk
//! updates. Agent occupancy is then recomputed from the kernels.
//!
//! *Prepare* (SCHEDULED → PREPARING): claims the group's SCHEDULED sessions in a short
//! transaction and enqueues one durable `start_session` command per session, so agent RPCs
//! run outside any lock, in parallel across the fleet, and survive a worker crash.

use std::collections::{BTreeSet, HashMap};
use std::sync::Arc;

use chrono::{DateTime, Utc};
use futures::future::BoxFuture;
use rust_decimal::Decimal;
use serde_json::{json, Value};
use uuid::Uuid;

use bai_core::db::lock_scaling_group;
use bai_core::slots::ResourceSlot;
use bai_events::{Command, Envelope, Event};

use crate::agents::derived_id;
use crate::agents::kernels::{recalc_concurrency_used, USER_RESOURCE_OCCUPYING};
use crate::runtime::WorkerContext;
use crate::scheduling::PassRunner;

/// Sessions considered per transaction: large enough to amortise the aggregate reads,
/// small enough to keep the transaction (and its conflict window) short.
const BATCH: i64 = 1000;

pub struct SessionScheduler {
    ctx: Arc<WorkerContext>,
}

impl SessionScheduler {
    pub fn new(ctx: Arc<WorkerContext>) -> Self {
        Self { ctx }
    }
}

impl PassRunner for SessionScheduler {
    fn run_pass<'a>(&'a self, scaling_group: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            let n = schedule(&self.ctx, scaling_group).await?;
            self.ctx
                .metrics
                .placements
                .with_label_values(&[scaling_group])
                .inc_by(n as u64);
            let m = prepare(&self.ctx, scaling_group).await?;
            if n > 0 || m > 0 {
                tracing::debug!(
                    scaling_group,
                    scheduled = n,
                    prepared = m,
                    "scheduling pass"
                );
            }
            Ok(())
        })
    }
}

#[derive(Clone, Debug)]
struct Pending {
    session_id: Uuid,
    creation_id: String,
    access_key: String,
    domain_name: String,
    group_id: Uuid,
    session_type: String,
    cluster_mode: String,
    starts_at: Option<DateTime<Utc>>,
    retries: i64,
    created_at: DateTime<Utc>,
    /// (kernel id, requested slots), main first.
    kernels: Vec<(Uuid, ResourceSlot)>,
    requested: ResourceSlot,
}

#[derive(Clone, Debug)]
struct AgentCap {
    id: String,
    addr: String,
    available: ResourceSlot,
    /// available − occupied, kept up to date as kernels are placed (placement compares
    /// thousands of agents per session, so it must not allocate per comparison).
    free: ResourceSlot,
}

impl AgentCap {
    fn take(&mut self, req: &ResourceSlot) {
        self.free = self.free.sub(req);
    }
}

#[derive(Clone, Debug)]
struct Policy {
    total: ResourceSlot,
    unlimited_default: bool,
    max_sessions: i64,
    max_containers: i64,
}

/// Scheduler configuration of a scaling group.
#[derive(Clone, Debug)]
struct SchedConfig {
    algorithm: String,
    num_retries_to_skip: i64,
    /// `packed` (best fit: fill agents) or `dispersed` (most free capacity first).
    selection: String,
}

async fn load_config(ctx: &WorkerContext, sg: &str) -> anyhow::Result<SchedConfig> {
    let row: Option<(String, Value)> =
        sqlx::query_as("SELECT scheduler, scheduler_opts FROM scaling_groups WHERE name = $1")
            .bind(sg)
            .fetch_optional(ctx.db.pool())
            .await?;
    let (algorithm, opts) = row.unwrap_or_else(|| ("fifo".into(), json!({})));
    let mut skip = 0;
    if let Some(etcd) = &ctx.etcd {
        if let Ok(Some(v)) = etcd
            .get(&format!(
                "config/plugins/scheduler/{algorithm}/num_retries_to_skip"
            ))
            .await
        {
            skip = v.trim().parse::<i64>().unwrap_or(0).max(0);
        }
    }
    let selection = opts
        .get("agent_selection")
        .and_then(Value::as_str)
        .unwrap_or(if algorithm == "mof" {
            "dispersed"
        } else {
            "packed"
        })
        .to_string();
    Ok(SchedConfig {
        algorithm,
        num_retries_to_skip: skip,
        selection,
    })
}

/// PENDING → SCHEDULED for one scaling group. Returns the number of sessions scheduled.
pub async fn schedule(ctx: &Arc<WorkerContext>, sg: &str) -> anyhow::Result<usize> {
    let cfg = load_config(ctx, sg).await?;
    let mut cursor: Option<(DateTime<Utc>, Uuid)> = None;
    let mut total = 0;
    loop {
        let sg_owned = sg.to_string();
        let cfg2 = cfg.clone();
        let outcome = ctx
            .db
            .transact(move |txn| {
                let sg = sg_owned.clone();
                let cfg = cfg2.clone();
                Box::pin(async move { schedule_batch(txn, &sg, &cfg, cursor).await })
            })
            .await?;
        for s in &outcome.scheduled {
            let ev = Event::SessionScheduled {
                session_id: s.0,
                creation_id: s.1.clone(),
                reason: String::new(),
            };
            crate::sessions::publish(ctx, derived_id(s.0, "session_scheduled"), ev).await;
        }
        total += outcome.scheduled.len();
        match outcome.next_cursor {
            Some(c) if !outcome.stop => cursor = Some(c),
            _ => break,
        }
    }
    Ok(total)
}

struct BatchOutcome {
    scheduled: Vec<(Uuid, String)>,
    next_cursor: Option<(DateTime<Utc>, Uuid)>,
    stop: bool,
}

type Row = (
    Uuid,
    Option<String>,
    Option<String>,
    String,
    Uuid,
    String,
    String,
    Option<DateTime<Utc>>,
    Option<Value>,
    Option<DateTime<Utc>>,
    Value,
);

async fn schedule_batch(
    txn: &mut bai_core::Txn,
    sg: &str,
    cfg: &SchedConfig,
    cursor: Option<(DateTime<Utc>, Uuid)>,
) -> anyhow::Result<BatchOutcome> {
    lock_scaling_group(&mut *txn, sg).await?;
    let lifo = cfg.algorithm == "lifo";
    let order = if lifo { "DESC" } else { "ASC" };
    let cmp = if lifo { "<" } else { ">" };
    let sql = format!(
        "SELECT k.session_id, k.session_creation_id, k.access_key, k.domain_name, k.group_id, \
         k.session_type::text, k.cluster_mode, k.starts_at, k.status_data, k.created_at, \
         (SELECT jsonb_agg(jsonb_build_array(s.id, s.occupied_slots) ORDER BY s.cluster_role <> 'main', s.cluster_idx) \
            FROM kernels s WHERE s.session_id = k.session_id) \
         FROM kernels k WHERE k.status = 'PENDING' AND k.cluster_role = 'main' AND k.scaling_group = $1 \
         AND ($2::timestamptz IS NULL OR (k.created_at, k.session_id) {cmp} ($2, $3)) \
         ORDER BY k.created_at {order}, k.session_id {order} LIMIT $4"
    );
    let rows: Vec<Row> = sqlx::query_as(&sql)
        .bind(sg)
        .bind(cursor.map(|c| c.0))
        .bind(cursor.map(|c| c.1).unwrap_or_else(Uuid::nil))
        .bind(BATCH)
        .fetch_all(&mut **txn)
        .await?;
    let full = rows.len() as i64 == BATCH;
    let next_cursor = rows.last().and_then(|r| r.9.map(|t| (t, r.0)));
    let mut pending: Vec<Pending> = Vec::with_capacity(rows.len());
    for (sid, cid, ak, dom, gid, stype, mode, starts_at, sdata, created, kernels) in rows {
        let mut ks = Vec::new();
        let mut requested = ResourceSlot::new();
        for pair in kernels.as_array().into_iter().flatten() {
            let id = pair
                .get(0)
                .and_then(Value::as_str)
                .and_then(|s| Uuid::parse_str(s).ok());
            let slots =
                ResourceSlot::from_json(pair.get(1).unwrap_or(&Value::Null)).unwrap_or_default();
            if let Some(id) = id {
                requested = requested.add(&slots);
                ks.push((id, slots));
            }
        }
        let retries = sdata
            .as_ref()
            .and_then(|d| d.pointer("/scheduler/retries"))
            .and_then(Value::as_i64)
            .unwrap_or(0);
        pending.push(Pending {
            session_id: sid,
            creation_id: cid.unwrap_or_default(),
            access_key: ak.unwrap_or_default(),
            domain_name: dom,
            group_id: gid,
            session_type: stype,
            cluster_mode: mode,
            starts_at,
            retries,
            created_at: created.unwrap_or_else(Utc::now),
            kernels: ks,
            requested,
        });
    }
    if pending.is_empty() {
        return Ok(BatchOutcome {
            scheduled: Vec::new(),
            next_cursor: None,
            stop: true,
        });
    }

    // --- aggregate reads for the whole batch ---
    let keys: Vec<String> = pending
        .iter()
        .map(|p| p.access_key.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let groups: Vec<Uuid> = pending
        .iter()
        .map(|p| p.group_id)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let domains: Vec<String> = pending
        .iter()
        .map(|p| p.domain_name.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    let occupying: Vec<String> = USER_RESOURCE_OCCUPYING
        .iter()
        .map(|s| s.to_string())
        .collect();

    let mut policies: HashMap<String, Policy> = HashMap::new();
    let prow: Vec<(String, Value, String, i32, i32)> = sqlx::query_as(
        "SELECT k.access_key, p.total_resource_slots, p.default_for_unspecified::text, \
         p.max_concurrent_sessions, p.max_containers_per_session \
         FROM keypairs k JOIN keypair_resource_policies p ON p.name = k.resource_policy WHERE k.access_key = ANY($1)",
    )
    .bind(&keys)
    .fetch_all(&mut **txn)
    .await?;
    for (ak, total, dfu, maxs, maxc) in prow {
        policies.insert(
            ak,
            Policy {
                total: ResourceSlot::from_json(&total).unwrap_or_default(),
                unlimited_default: dfu == "UNLIMITED",
                max_sessions: maxs as i64,
                max_containers: maxc as i64,
            },
        );
    }
    // Live sessions per keypair (sessions, not kernels: the limit is on sessions).
    let mut sessions_used: HashMap<String, i64> = sqlx::query_as::<_, (String, i64)>(
        "SELECT access_key, count(*) FROM kernels WHERE access_key = ANY($1) AND cluster_role = 'main' \
         AND status::text = ANY($2) GROUP BY access_key",
    )
    .bind(&keys)
    .bind(&occupying)
    .fetch_all(&mut **txn)
    .await?
    .into_iter()
    .collect();
    let mut key_occ = occupancy_by(
        &mut *txn,
        "access_key",
        "access_key = ANY($1)",
        &keys,
        &occupying,
    )
    .await?;
    let mut group_occ: HashMap<String, ResourceSlot> = {
        let g: Vec<String> = groups.iter().map(Uuid::to_string).collect();
        occupancy_by(
            &mut *txn,
            "group_id::text",
            "group_id::text = ANY($1)",
            &g,
            &occupying,
        )
        .await?
    };
    let mut domain_occ = occupancy_by(
        &mut *txn,
        "domain_name",
        "domain_name = ANY($1)",
        &domains,
        &occupying,
    )
    .await?;
    let group_limits: HashMap<String, ResourceSlot> = sqlx::query_as::<_, (Uuid, Option<Value>)>(
        "SELECT id, total_resource_slots FROM groups WHERE id = ANY($1)",
    )
    .bind(&groups)
    .fetch_all(&mut **txn)
    .await?
    .into_iter()
    .map(|(id, v)| {
        (
            id.to_string(),
            ResourceSlot::from_json(&v.unwrap_or(Value::Null)).unwrap_or_default(),
        )
    })
    .collect();
    let domain_limits: HashMap<String, ResourceSlot> =
        sqlx::query_as::<_, (String, Option<Value>)>(
            "SELECT name, total_resource_slots FROM domains WHERE name = ANY($1)",
        )
        .bind(&domains)
        .fetch_all(&mut **txn)
        .await?
        .into_iter()
        .map(|(n, v)| {
            (
                n,
                ResourceSlot::from_json(&v.unwrap_or(Value::Null)).unwrap_or_default(),
            )
        })
        .collect();
    // Scaling groups allowed through the domain, the group or the keypair (active only).
    let allowed: BTreeSet<(String, String)> = sqlx::query_as::<_, (String, String)>(
        "SELECT 'd:' || d.domain, d.scaling_group FROM sgroups_for_domains d JOIN scaling_groups s ON s.name = d.scaling_group \
           WHERE s.is_active AND d.domain = ANY($1) \
         UNION SELECT 'g:' || g.\"group\"::text, g.scaling_group FROM sgroups_for_groups g JOIN scaling_groups s ON s.name = g.scaling_group \
           WHERE s.is_active AND g.\"group\" = ANY($2) \
         UNION SELECT 'k:' || k.access_key, k.scaling_group FROM sgroups_for_keypairs k JOIN scaling_groups s ON s.name = k.scaling_group \
           WHERE s.is_active AND k.access_key = ANY($3)",
    )
    .bind(&domains)
    .bind(&groups)
    .bind(&keys)
    .fetch_all(&mut **txn)
    .await?
    .into_iter()
    .collect();
    let deps: HashMap<Uuid, Vec<(String, String)>> = {
        let ids: Vec<Uuid> = pending.iter().map(|p| p.session_id).collect();
        let rows: Vec<(Uuid, String, String)> = sqlx::query_as(
            "SELECT d.session_id, k.status::text, k.result::text FROM session_dependencies d \
             JOIN kernels k ON k.id = d.depends_on WHERE d.session_id = ANY($1)",
        )
        .bind(&ids)
        .fetch_all(&mut **txn)
        .await?;
        let mut m: HashMap<Uuid, Vec<(String, String)>> = HashMap::new();
        for (s, st, res) in rows {
            m.entry(s).or_default().push((st, res));
        }
        m
    };
    let mut agents: Vec<AgentCap> = sqlx::query_as::<_, (String, String, Value, Value)>(
        "SELECT id, addr, available_slots, occupied_slots FROM agents \
         WHERE status = 'ALIVE' AND schedulable AND scaling_group = $1 ORDER BY id",
    )
    .bind(sg)
    .fetch_all(&mut **txn)
    .await?
    .into_iter()
    .map(|(id, addr, a, o)| {
        let available = ResourceSlot::from_json(&a).unwrap_or_default();
        let free = available.sub(&ResourceSlot::from_json(&o).unwrap_or_default());
        AgentCap {
            id,
            addr,
            available,
            free,
        }
    })
    .collect();

    // --- pick order ---
    let order = pick_order(&pending, cfg);
    let now = Utc::now();
    let mut placements: Vec<(Uuid, String, String)> = Vec::new();
    let mut scheduled: Vec<(Uuid, String)> = Vec::new();
    let mut bookkeeping: Vec<(Uuid, String, Value, Value)> = Vec::new();
    let mut stop = false;
    for idx in order {
        let p = &pending[idx];
        let mut passed = Vec::new();
        let mut failed = Vec::new();
        let mut check = |name: &str, ok: Result<(), String>| match ok {
            Ok(()) => passed.push(json!({"name": name})),
            Err(msg) => failed.push(json!({"name": name, "msg": msg})),
        };
        check(
            "reserved_time",
            match p.starts_at {
                Some(t) if p.session_type == "BATCH" && t > now => Err("Before start time".into()),
                _ => Ok(()),
            },
        );
        let policy = policies.get(&p.access_key).cloned().unwrap_or(Policy {
            total: ResourceSlot::new(),
            unlimited_default: true,
            max_sessions: i64::MAX,
            max_containers: i64::MAX,
        });
        let used = sessions_used.get(&p.access_key).copied().unwrap_or(0);
        check(
            "concurrency",
            if used >= policy.max_sessions {
                Err(format!(
                    "You cannot run more than {} concurrent sessions",
                    policy.max_sessions
                ))
            } else {
                Ok(())
            },
        );
        check(
            "dependencies",
            match deps.get(&p.session_id) {
                Some(list)
                    if list
                        .iter()
                        .any(|(st, res)| st != "TERMINATED" || res == "FAILURE") =>
                {
                    Err("Waiting for dependency sessions to finish successfully".into())
                }
                _ => Ok(()),
            },
        );
        let kocc = key_occ.get(&p.access_key).cloned().unwrap_or_default();
        check(
            "keypair_resource_limit",
            if p.kernels.len() as i64 > policy.max_containers {
                Err(format!(
                    "You cannot create session with more than {} containers.",
                    policy.max_containers
                ))
            } else if !within(
                &kocc.add(&p.requested),
                &policy.total,
                policy.unlimited_default,
            ) {
                Err(format!(
                    "Your keypair resource quota is exceeded. ({})",
                    humanize(&policy.total)
                ))
            } else {
                Ok(())
            },
        );
        let gkey = p.group_id.to_string();
        let glimit = group_limits.get(&gkey).cloned().unwrap_or_default();
        let gocc = group_occ.get(&gkey).cloned().unwrap_or_default();
        check(
            "user_group_resource_limit",
            if within(&gocc.add(&p.requested), &glimit, true) {
                Ok(())
            } else {
                Err(format!(
                    "Your group resource quota is exceeded. ({})",
                    humanize(&glimit)
                ))
            },
        );
        let dlimit = domain_limits
            .get(&p.domain_name)
            .cloned()
            .unwrap_or_default();
        let docc = domain_occ.get(&p.domain_name).cloned().unwrap_or_default();
        check(
            "domain_resource_limit",
            if within(&docc.add(&p.requested), &dlimit, true) {
                Ok(())
            } else {
                Err(format!(
                    "Your domain resource quota is exceeded. ({})",
                    humanize(&dlimit)
                ))
            },
        );
        let allowed_here = [
            format!("d:{}", p.domain_name),
            format!("g:{}", p.group_id),
            format!("k:{}", p.access_key),
        ]
        .iter()
        .any(|scope| allowed.contains(&(scope.clone(), sg.to_string())));
        check(
            "scaling_group_resource_limit",
            if allowed_here {
                Ok(())
            } else {
                Err(format!(
                    "The given preferred scaling group is not allowed to use. ({sg})"
                ))
            },
        );
        if !failed.is_empty() {
            bookkeeping.push((
                p.session_id,
                "predicate-checks-failed".into(),
                json!(failed),
                json!(passed),
            ));
            continue;
        }
        // --- placement ---
        let chosen: Option<Vec<usize>> = if p.cluster_mode == "multi-node" {
            place_multi(&agents, &p.kernels, &cfg.selection)
        } else {
            place_single(&agents, &p.requested, &cfg.selection).map(|a| vec![a; p.kernels.len()])
        };
        let Some(chosen) = chosen else {
            bookkeeping.push((
                p.session_id,
                "no-available-instances".into(),
                json!([]),
                json!(passed),
            ));
            // Strict FIFO keeps the order: nothing behind a head that does not fit may pass.
            // With num_retries_to_skip > 0 (or other algorithms) the pass goes on, so a big
            // session cannot block smaller ones (head-of-line blocking, #415).
            if cfg.algorithm == "fifo" && cfg.num_retries_to_skip == 0 {
                stop = true;
                break;
            }
            continue;
        };
        for ((kid, slots), ai) in p.kernels.iter().zip(chosen) {
            let a = &mut agents[ai];
            a.take(slots);
            placements.push((*kid, a.id.clone(), a.addr.clone()));
        }
        *sessions_used.entry(p.access_key.clone()).or_default() += 1;
        let add = |m: &mut HashMap<String, ResourceSlot>, k: &str| {
            let e = m.entry(k.to_string()).or_default();
            *e = e.add(&p.requested);
        };
        add(&mut key_occ, &p.access_key);
        add(&mut group_occ, &gkey);
        add(&mut domain_occ, &p.domain_name);
        scheduled.push((p.session_id, p.creation_id.clone()));
    }

    // --- bulk writes ---
    if !placements.is_empty() {
        let ids: Vec<Uuid> = placements.iter().map(|p| p.0).collect();
        let ags: Vec<String> = placements.iter().map(|p| p.1.clone()).collect();
        let addrs: Vec<String> = placements.iter().map(|p| p.2.clone()).collect();
        sqlx::query(
            "UPDATE kernels k SET status = 'SCHEDULED', agent = u.agent, agent_addr = u.addr, \
             status_info = 'scheduled', status_data = '{}'::jsonb, status_changed = now() \
             FROM unnest($1::uuid[], $2::text[], $3::text[]) AS u(id, agent, addr) \
             WHERE k.id = u.id AND k.status = 'PENDING'",
        )
        .bind(&ids)
        .bind(&ags)
        .bind(&addrs)
        .execute(&mut **txn)
        .await?;
        let used: Vec<String> = ags
            .iter()
            .cloned()
            .collect::<BTreeSet<_>>()
            .into_iter()
            .collect();
        recalc_agents_occupancy(txn, &used).await?;
        let touched: BTreeSet<&String> = scheduled
            .iter()
            .filter_map(|(sid, _)| {
                pending
                    .iter()
                    .find(|p| p.session_id == *sid)
                    .map(|p| &p.access_key)
            })
            .collect();
        for ak in touched {
            recalc_concurrency_used(txn, ak).await?;
        }
    }
    if !bookkeeping.is_empty() {
        let ids: Vec<Uuid> = bookkeeping.iter().map(|b| b.0).collect();
        let infos: Vec<String> = bookkeeping.iter().map(|b| b.1.clone()).collect();
        let failed: Vec<Value> = bookkeeping.iter().map(|b| b.2.clone()).collect();
        let passed: Vec<Value> = bookkeeping.iter().map(|b| b.3.clone()).collect();
        // Retries are incremented in SQL from the row's own value: no read-modify-write race.
        sqlx::query(
            "UPDATE kernels k SET status_info = u.info, status_data = jsonb_build_object('scheduler', \
               jsonb_build_object('retries', COALESCE((k.status_data #>> '{scheduler,retries}')::int, 0) + 1, \
                 'last_try', to_jsonb(now()), 'failed_predicates', u.failed, 'passed_predicates', u.passed)) \
             FROM unnest($1::uuid[], $2::text[], $3::jsonb[], $4::jsonb[]) AS u(id, info, failed, passed) \
             WHERE k.id = u.id AND k.status = 'PENDING'",
        )
        .bind(&ids)
        .bind(&infos)
        .bind(&failed)
        .bind(&passed)
        .execute(&mut **txn)
        .await?;
    }
    Ok(BatchOutcome {
        scheduled,
        next_cursor,
        stop: stop || !full,
    })
}

/// Recomputes `occupied_slots` of many agents with one read and one bulk write (the
/// per-agent helper costs two round trips per agent).
async fn recalc_agents_occupancy(txn: &mut bai_core::Txn, agents: &[String]) -> anyhow::Result<()> {
    let occupying: Vec<String> = crate::agents::kernels::AGENT_RESOURCE_OCCUPYING
        .iter()
        .map(|s| s.to_string())
        .collect();
    let rows: Vec<(String, Value)> = sqlx::query_as(
        "SELECT agent, occupied_slots FROM kernels WHERE agent = ANY($1) AND status::text = ANY($2)",
    )
    .bind(agents)
    .bind(&occupying)
    .fetch_all(&mut **txn)
    .await?;
    let mut sums: HashMap<&str, ResourceSlot> = agents
        .iter()
        .map(|a| (a.as_str(), ResourceSlot::new()))
        .collect();
    for (agent, slots) in &rows {
        if let Some(e) = sums.get_mut(agent.as_str()) {
            *e = e.add(&ResourceSlot::from_json(slots).unwrap_or_default());
        }
    }
    let ids: Vec<String> = sums.keys().map(|s| s.to_string()).collect();
    let vals: Vec<Value> = ids.iter().map(|id| sums[id.as_str()].to_json()).collect();
    sqlx::query(
        "UPDATE agents a SET occupied_slots = u.slots FROM unnest($1::text[], $2::jsonb[]) AS u(id, slots) WHERE a.id = u.id",
    )
    .bind(&ids)
    .bind(&vals)
    .execute(&mut **txn)
    .await?;
    Ok(())
}

/// Σ occupied_slots of live kernels, grouped by `key_expr`, summed by PostgreSQL so a
/// busy keypair's thousands of kernels cost a handful of result rows.
async fn occupancy_by(
    txn: &mut bai_core::Txn,
    key_expr: &str,
    filter: &str,
    keys: &[String],
    occupying: &[String],
) -> anyhow::Result<HashMap<String, ResourceSlot>> {
    let sql = format!(
        "SELECT {key_expr}, e.key, sum(e.value::numeric)::text FROM kernels, jsonb_each_text(occupied_slots) e \
         WHERE {filter} AND status::text = ANY($2) GROUP BY 1, 2"
    );
    let rows: Vec<(String, String, String)> = sqlx::query_as(&sql)
        .bind(keys)
        .bind(occupying)
        .fetch_all(&mut **txn)
        .await?;
    let mut out: HashMap<String, ResourceSlot> = HashMap::new();
    for (k, slot, total) in rows {
        if let Ok(d) = total.parse::<Decimal>() {
            out.entry(k).or_default().0.insert(slot, d);
        }
    }
    Ok(out)
}

/// `used` fits under `limit`; slots missing from the limit are unlimited or zero.
fn within(used: &ResourceSlot, limit: &ResourceSlot, unlimited_default: bool) -> bool {
    used.0.iter().all(|(k, v)| match limit.0.get(k) {
        Some(l) => v <= l,
        None => unlimited_default || v.is_zero(),
    })
}

fn humanize(s: &ResourceSlot) -> String {
    s.0.iter()
        .map(|(k, v)| format!("{k}={}", bai_core::slots::format_amount(k, *v)))
        .collect::<Vec<_>>()
        .join(" ")
}

/// Indexes of `pending` in the order the algorithm tries them.
fn pick_order(pending: &[Pending], cfg: &SchedConfig) -> Vec<usize> {
    let mut idx: Vec<usize> = (0..pending.len()).collect();
    match cfg.algorithm.as_str() {
        "fifo" if cfg.num_retries_to_skip > 0 => {
            // Sessions that failed often go last, so they cannot hold the head (#415).
            idx.sort_by_key(|&i| {
                (
                    pending[i].retries >= cfg.num_retries_to_skip,
                    pending[i].created_at,
                )
            });
        }
        "drf" => {
            // Fewest sessions already picked per user first, oldest first within a user: an
            // approximation of dominant-resource fairness over this batch.
            let mut seen: HashMap<&str, usize> = HashMap::new();
            let mut keyed: Vec<(usize, DateTime<Utc>, usize)> = idx
                .iter()
                .map(|&i| {
                    let n = seen.entry(pending[i].access_key.as_str()).or_default();
                    *n += 1;
                    (*n, pending[i].created_at, i)
                })
                .collect();
            keyed.sort();
            idx = keyed.into_iter().map(|k| k.2).collect();
        }
        _ => {}
    }
    idx
}

/// Score of putting `req` on `a`: fewest unneeded device types first, then by policy.
fn better(a: &AgentCap, b: &AgentCap, req: &ResourceSlot, selection: &str) -> bool {
    let (ea, eb) = (a.available.extras_for(req), b.available.extras_for(req));
    if ea != eb {
        return ea < eb;
    }
    // Compare remaining capacity on the slots the request uses.
    let left = |x: &AgentCap| -> Decimal {
        req.0
            .keys()
            .map(|k| {
                let cap = x.available.get(k);
                if cap.is_zero() {
                    Decimal::ZERO
                } else {
                    (x.free.get(k) - req.get(k)) / cap
                }
            })
            .sum()
    };
    let (la, lb) = (left(a), left(b));
    if selection == "dispersed" {
        la > lb
    } else {
        la < lb
    }
}

fn place_single(agents: &[AgentCap], req: &ResourceSlot, selection: &str) -> Option<usize> {
    let mut best: Option<usize> = None;
    for (i, a) in agents.iter().enumerate() {
        if !req.fits_in(&a.free) {
            continue;
        }
        best = match best {
            Some(b) if !better(a, &agents[b], req, selection) => Some(b),
            _ => Some(i),
        };
    }
    best
}

/// Each kernel on its own agent when possible (a multi-node session spreads out), all in
/// one decision so either every kernel is placed or none.
fn place_multi(
    agents: &[AgentCap],
    kernels: &[(Uuid, ResourceSlot)],
    selection: &str,
) -> Option<Vec<usize>> {
    let mut trial: Vec<AgentCap> = agents.to_vec();
    let mut used: BTreeSet<usize> = BTreeSet::new();
    let mut out = Vec::new();
    for (_, req) in kernels {
        let fresh: Vec<AgentCap> = trial
            .iter()
            .enumerate()
            .map(|(i, a)| {
                let mut a = a.clone();
                if used.contains(&i) {
                    // Already hosts a kernel of this session: only as a last resort.
                    a.free = ResourceSlot::new();
                }
                a
            })
            .collect();
        let pick = place_single(&fresh, req, selection)
            .or_else(|| place_single(&trial, req, selection))?;
        trial[pick].take(req);
        used.insert(pick);
        out.push(pick);
    }
    Some(out)
}

/// SCHEDULED → PREPARING for one scaling group, then one durable `start_session` command
/// per claimed session. Sessions stuck in PREPARING (a worker died between the claim and
/// the enqueue) are re-enqueued after a grace period; the command is idempotent.
pub async fn prepare(ctx: &Arc<WorkerContext>, sg: &str) -> anyhow::Result<usize> {
    let sg_owned = sg.to_string();
    let claimed: Vec<(Uuid, String)> = ctx
        .db
        .transact(move |txn| {
            let sg = sg_owned.clone();
            Box::pin(async move {
                lock_scaling_group(txn, &sg).await?;
                let rows: Vec<(Uuid, Option<String>)> = sqlx::query_as(
                    "WITH claimed AS ( \
                       UPDATE kernels SET status = 'PREPARING', status_changed = now(), status_info = '', status_data = '{}'::jsonb \
                       WHERE scaling_group = $1 AND status = 'SCHEDULED' RETURNING session_id, session_creation_id) \
                     SELECT DISTINCT session_id, session_creation_id FROM claimed \
                     UNION SELECT DISTINCT session_id, session_creation_id FROM kernels \
                       WHERE scaling_group = $1 AND status = 'PREPARING' AND container_id IS NULL \
                       AND status_changed < now() - interval '2 minutes'",
                )
                .bind(&sg)
                .fetch_all(&mut **txn)
                .await?;
                Ok(rows.into_iter().map(|(s, c)| (s, c.unwrap_or_default())).collect())
            })
        })
        .await?;
    let mut seen = BTreeSet::new();
    for (session_id, creation_id) in &claimed {
        if !seen.insert(*session_id) {
            continue;
        }
        crate::sessions::publish(
            ctx,
            derived_id(*session_id, "session_preparing"),
            Event::SessionPreparing {
                session_id: *session_id,
                creation_id: creation_id.clone(),
                reason: String::new(),
            },
        )
        .await;
        // Derived id: a re-claim within the duplicate window is stored once.
        let env = Envelope::new(
            derived_id(
                *session_id,
                &format!("start-{}", Utc::now().timestamp() / 120),
            ),
            ctx.bus.originator().to_string(),
            Command::StartSession {
                session_id: *session_id,
            },
        );
        if let Err(e) = ctx.bus.enqueue_command(&env).await {
            tracing::warn!(error = %e, %session_id, "could not enqueue start_session; the sweep will retry");
        }
    }
    Ok(seen.len())
}
