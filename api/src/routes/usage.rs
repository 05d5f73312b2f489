//! Usage accounting (api-rest.md §6.2, orchestration.md §6.4, api-rest-errata #9):
//! `GET /resource/usage/month`, `GET /resource/usage/period`,
//! `GET /resource/stats/user/month`, `GET /resource/stats/admin/month`, and
//! `POST /resource/recalculate-usage` (a background task in the worker fleet).
//!
//! Everything is read from kernel rows in one read-only transaction. The response shapes
//! are the original's; on top of them (see CHANGELOG):
//!
//! * **slots × duration.** The original summed allocations with no time weighting. Each
//!   container record also carries `used_seconds` (its lifetime clipped to the requested
//!   period; running kernels count up to now) and `slot_seconds` (every occupied slot ×
//!   `used_seconds`), with `cpu_seconds`, `mem_byte_seconds` and `gpu_seconds` spelled out;
//!   groups carry the sums (`g_used_seconds`, `g_cpu_seconds`, ...).
//! * Force-terminated kernels have `terminated_at` now, so they are counted.
//! * `mem_used` is the memory actually used (`mem.stats.max`, else `mem.current`), not the
//!   limit (`mem.capacity`) the original read by mistake.
//! * The monthly time series counts a kernel in every 15-minute bin it was alive in, and
//!   running kernels too (the original counted each kernel in its first bin only, and
//!   only terminated ones).
//!
//! Dates are read in the timezone of etcd `config/system/timezone` (default UTC). Only
//! `UTC` and fixed offsets (`+09:00`, `UTC+9`, `-0530`) are understood; a region name such
//! as `Asia/Seoul` is logged and treated as UTC.

use std::collections::BTreeSet;
use std::time::Duration;

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Datelike, FixedOffset, NaiveDate, TimeZone, Utc};
use rust_decimal::prelude::ToPrimitive;
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use bai_events::bgtask;

use crate::auth::{Auth, SuperAdmin};
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::routes::events::{start_background_task, wait_for_task};
use crate::state::AppState;

/// Longest period `/resource/usage/period` accepts.
const MAX_PERIOD_DAYS: i64 = 100;
/// The monthly time series: 15-minute bins over the last 30 days.
const BIN_SECONDS: i64 = 900;
const STATS_DAYS: i64 = 30;

// ------------------------------------------------------------------ recalculation

/// `POST /resource/recalculate-usage` (superadmin): runs the `recalculate_usage`
/// background task and, like the original's synchronous call, answers when it is done —
/// or, on a very large fleet, after the command deadline with the task still running
/// (its progress is on `/events/background-task?task_id=`).
pub async fn recalculate_usage(
    State(state): State<AppState>,
    SuperAdmin(_user): SuperAdmin,
    req_id: ReqId,
) -> ApiResult<Json<Value>> {
    crate::routes::manager::ensure_not_frozen(&state).await?;
    let task_id =
        start_background_task(&state, &req_id, bgtask::KIND_RECALCULATE_USAGE, json!({})).await?;
    let within = Duration::from_millis(state.config.manager.command_timeout_ms.max(1000));
    match wait_for_task(&state, task_id, within).await? {
        Some((status, msg)) if status == bgtask::STATUS_FAILED => {
            Err(ApiError::internal().with_msg(format!("Usage recalculation failed: {msg}")))
        }
        Some((status, _)) => Ok(Json(json!({"task_id": task_id, "status": status}))),
        None => Ok(Json(
            json!({"task_id": task_id, "status": bgtask::STATUS_STARTED}),
        )),
    }
}

// ------------------------------------------------------------------ time helpers

/// The configured local timezone (`config/system/timezone`), as a fixed offset.
pub async fn local_tz(state: &AppState) -> FixedOffset {
    let raw = match state.etcd.get("config/system/timezone").await {
        Ok(v) => v.unwrap_or_default(),
        Err(e) => {
            tracing::warn!(error = %e, "cannot read config/system/timezone; using UTC");
            String::new()
        }
    };
    parse_tz(&raw).unwrap_or_else(|| {
        tracing::warn!(timezone = %raw, "unsupported timezone (only UTC and fixed offsets); using UTC");
        utc()
    })
}

fn utc() -> FixedOffset {
    FixedOffset::east_opt(0).expect("zero offset")
}

/// `UTC`, `Etc/UTC`, `GMT`, `Z`, `+09:00`, `+0900`, `-05`, `UTC+9`, `GMT-3:30`.
pub fn parse_tz(raw: &str) -> Option<FixedOffset> {
    let t = raw.trim();
    let upper = t.to_ascii_uppercase();
    if matches!(
        upper.as_str(),
        "" | "UTC" | "ETC/UTC" | "GMT" | "ETC/GMT" | "Z" | "UCT" | "ZULU"
    ) {
        return Some(utc());
    }
    let rest = ["UTC", "GMT"]
        .iter()
        .find_map(|p| upper.strip_prefix(p))
        .unwrap_or(&upper);
    let (sign, digits) = match rest.chars().next()? {
        '+' => (1, &rest[1..]),
        '-' => (-1, &rest[1..]),
        _ => return None,
    };
    let (h, m) = match digits.split_once(':') {
        Some((h, m)) => (h.parse::<i32>().ok()?, m.parse::<i32>().ok()?),
        None if digits.len() == 4 => (digits[..2].parse().ok()?, digits[2..].parse().ok()?),
        None => (digits.parse().ok()?, 0),
    };
    if h > 14 || m > 59 {
        return None;
    }
    FixedOffset::east_opt(sign * (h * 3600 + m * 60))
}

/// Python's `str(datetime)` of an aware UTC timestamp: `2021-06-07 10:11:12.123456+00:00`
/// (no fraction when the microseconds are 0); `None` as Python's `str(None)`.
pub fn py_datetime(dt: Option<DateTime<Utc>>) -> String {
    match dt {
        None => "None".into(),
        Some(d) if d.timestamp_subsec_micros() == 0 => {
            d.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
        }
        Some(d) => d.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string(),
    }
}

/// Python's `str(timedelta)`: `H:MM:SS[.ffffff]`, with `N day(s), ` in front.
pub fn py_timedelta(d: chrono::TimeDelta) -> String {
    let total_us = d.num_microseconds().unwrap_or(i64::MAX);
    let days = total_us.div_euclid(86_400_000_000);
    let rem = total_us.rem_euclid(86_400_000_000);
    let (secs, us) = (rem / 1_000_000, rem % 1_000_000);
    let clock = format!("{}:{:02}:{:02}", secs / 3600, (secs % 3600) / 60, secs % 60);
    let clock = if us == 0 {
        clock
    } else {
        format!("{clock}.{us:06}")
    };
    match days {
        0 => clock,
        1 | -1 => format!("{days} day, {clock}"),
        _ => format!("{days} days, {clock}"),
    }
}

// ------------------------------------------------------------------ value helpers

fn dec(v: Option<&Value>) -> Decimal {
    match v {
        Some(Value::Number(n)) => Decimal::from_str_exact(&n.to_string())
            .or_else(|_| Decimal::from_scientific(&n.to_string()))
            .unwrap_or_default(),
        Some(Value::String(s)) => s
            .trim()
            .parse::<Decimal>()
            .ok()
            .or_else(|| bai_core::slots::parse_binary_size(s.trim()).ok())
            .unwrap_or_default(),
        _ => Decimal::ZERO,
    }
}

fn float(v: Option<&Value>) -> f64 {
    dec(v).to_f64().unwrap_or(0.0)
}

fn int(v: Option<&Value>) -> i64 {
    dec(v).trunc().to_i64().unwrap_or(0)
}

/// `nmget(obj, "a.b")`, with `/` as the separator when a key contains dots.
fn path<'a>(obj: Option<&'a Value>, keys: &[&str]) -> Option<&'a Value> {
    let mut cur = obj?;
    for k in keys {
        cur = cur.get(*k)?;
    }
    Some(cur)
}

// ------------------------------------------------------------------ container stats

#[derive(sqlx::FromRow)]
struct ContainerRow {
    id: Uuid,
    container_id: Option<String>,
    domain_name: String,
    group_id: Uuid,
    group_name: String,
    session_name: Option<String>,
    access_key: Option<String>,
    email: Option<String>,
    agent: Option<String>,
    occupied_slots: Value,
    last_stat: Option<Value>,
    resource_opts: Option<Value>,
    attached_devices: Option<Value>,
    nfs: Option<Vec<String>>,
    image: Option<String>,
    created_at: Option<DateTime<Utc>>,
    terminated_at: Option<DateTime<Utc>>,
    status: String,
    status_changed: Option<DateTime<Utc>>,
}

const CONTAINER_COLUMNS: &str = "k.id, k.container_id, k.domain_name, k.group_id, g.name AS group_name, \
     k.session_name, k.access_key, u.email, k.agent, k.occupied_slots, k.last_stat, k.resource_opts, \
     k.attached_devices, \
     CASE WHEN k.mounts IS NULL THEN NULL ELSE COALESCE((SELECT array_agg(DISTINCT k.mounts[i][2]) \
       FROM generate_subscripts(k.mounts, 1) i WHERE k.mounts[i][2] IS NOT NULL), '{}') END AS nfs, \
     k.image, k.created_at, k.terminated_at, k.status::text AS status, k.status_changed";

/// GPU amount of a kernel: `cuda.shares` if present, else `cuda.devices`.
fn gpu_allocated(slots: &Value) -> f64 {
    if slots.get("cuda.shares").is_some() {
        float(slots.get("cuda.shares"))
    } else {
        float(slots.get("cuda.devices"))
    }
}

/// Memory actually used according to the last statistics.
fn mem_used(last_stat: Option<&Value>) -> i64 {
    let mem = path(last_stat, &["mem"]);
    [
        path(mem, &["stats.max"]),
        path(mem, &["current"]),
        path(mem, &["capacity"]),
    ]
    .into_iter()
    .flatten()
    .find(|v| !v.is_null())
    .map(|v| int(Some(v)))
    .unwrap_or(0)
}

/// Seconds of `[from, to)` within `[start, end)`.
fn overlap_seconds(
    from: DateTime<Utc>,
    to: DateTime<Utc>,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
) -> f64 {
    let a = from.max(start);
    let b = to.min(end);
    if b <= a {
        0.0
    } else {
        (b - a).num_microseconds().unwrap_or(0) as f64 / 1e6
    }
}

/// `get_container_stats_for_period` of the original, plus the slot × duration fields.
async fn container_stats(
    state: &AppState,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    group_ids: Option<Vec<Uuid>>,
    tz: FixedOffset,
) -> ApiResult<Vec<Value>> {
    let mut txn = state.db.begin_readonly().await?;
    let rows: Vec<ContainerRow> = sqlx::query_as(&format!(
        "SELECT {CONTAINER_COLUMNS} FROM kernels k \
         JOIN groups g ON k.group_id = g.id JOIN users u ON k.user_uuid = u.uuid \
         WHERE ((k.terminated_at >= $1 AND k.created_at < $2 AND k.status IN ('TERMINATED', 'RUNNING')) \
                OR (k.created_at < $2 AND k.status = 'RUNNING')) \
           AND ($3::uuid[] IS NULL OR k.group_id = ANY($3)) \
         ORDER BY k.terminated_at ASC, k.created_at ASC"
    ))
    .bind(start)
    .bind(end)
    .bind(group_ids)
    .fetch_all(&mut *txn)
    .await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *txn)
        .await?;
    txn.commit().await?;

    let mut groups: Vec<(Uuid, Map<String, Value>)> = Vec::new();
    for row in rows {
        let c = container_info(&row, start, end, now, tz);
        let entry = match groups.iter_mut().find(|(g, _)| *g == row.group_id) {
            Some((_, m)) => m,
            None => {
                groups.push((row.group_id, new_group(&row)));
                &mut groups.last_mut().expect("just pushed").1
            }
        };
        add_to_group(entry, &c);
        if let Some(Value::Array(list)) = entry.get_mut("c_infos") {
            list.push(Value::Object(c));
        }
    }
    Ok(groups.into_iter().map(|(_, m)| Value::Object(m)).collect())
}

fn container_info(
    row: &ContainerRow,
    start: DateTime<Utc>,
    end: DateTime<Utc>,
    now: DateTime<Utc>,
    tz: FixedOffset,
) -> Map<String, Value> {
    let last_stat = row.last_stat.as_ref();
    let slots = &row.occupied_slots;
    let (used_time, used_days) = match (row.terminated_at, row.created_at) {
        (Some(t), Some(c)) => {
            let days = t.with_timezone(&tz).date_naive().num_days_from_ce()
                - c.with_timezone(&tz).date_naive().num_days_from_ce()
                + 1;
            (json!(py_timedelta(t - c)), json!(days))
        }
        _ => (Value::Null, Value::Null),
    };
    let mut device_type = BTreeSet::new();
    let (mut smp, mut gpu_mem) = (0.0, 0.0);
    if let Some(Value::Array(devs)) = row.attached_devices.as_ref().and_then(|d| d.get("cuda")) {
        for d in devs {
            if let Some(m) = d.get("model_name").and_then(Value::as_str) {
                device_type.insert(m.to_string());
            }
            smp += float(d.get("smp"));
            gpu_mem += float(d.get("mem"));
        }
    }
    let cpu = float(slots.get("cpu"));
    let mem = int(slots.get("mem"));
    let gpu = gpu_allocated(slots);
    let used_seconds = match row.created_at {
        Some(c) => overlap_seconds(c, row.terminated_at.unwrap_or(now), start, end),
        None => 0.0,
    };
    let mut slot_seconds = Map::new();
    if let Some(obj) = slots.as_object() {
        for (k, v) in obj {
            slot_seconds.insert(k.clone(), json!(float(Some(v)) * used_seconds));
        }
    }
    let mut c = Map::new();
    let mut put = |k: &str, v: Value| {
        c.insert(k.to_string(), v);
    };
    put("id", json!(row.id.to_string()));
    put("container_id", json!(row.container_id));
    put("domain_name", json!(row.domain_name));
    put("group_id", json!(row.group_id.to_string()));
    put("group_name", json!(row.group_name));
    put("name", json!(row.session_name));
    put("access_key", json!(row.access_key));
    put("email", json!(row.email));
    put("agent", json!(row.agent));
    put("cpu_allocated", json!(cpu));
    put(
        "cpu_used",
        json!(float(path(last_stat, &["cpu_used", "current"]))),
    );
    put("mem_allocated", json!(mem));
    put("mem_used", json!(mem_used(last_stat)));
    put(
        "shared_memory",
        json!(int(path(row.resource_opts.as_ref(), &["shmem"]))),
    );
    put("disk_allocated", json!(0));
    put(
        "disk_used",
        json!(int(path(last_stat, &["io_scratch_size", "stats.max"]))),
    );
    put(
        "io_read",
        json!(int(path(last_stat, &["io_read", "current"]))),
    );
    put(
        "io_write",
        json!(int(path(last_stat, &["io_write", "current"]))),
    );
    put("used_time", used_time);
    put("used_days", used_days);
    put(
        "device_type",
        json!(device_type.into_iter().collect::<Vec<_>>()),
    );
    put("smp", json!(smp));
    put("gpu_mem_allocated", json!(gpu_mem));
    put("gpu_allocated", json!(gpu));
    put("nfs", json!(row.nfs));
    put("image_id", json!(row.image));
    put("image_name", json!(row.image));
    put("created_at", json!(py_datetime(row.created_at)));
    put("terminated_at", json!(py_datetime(row.terminated_at)));
    put("status", json!(row.status));
    put("status_changed", json!(py_datetime(row.status_changed)));
    // slots × duration (ours).
    put("used_seconds", json!(used_seconds));
    put("cpu_seconds", json!(cpu * used_seconds));
    put("mem_byte_seconds", json!(mem as f64 * used_seconds));
    put("gpu_seconds", json!(gpu * used_seconds));
    put("slot_seconds", Value::Object(slot_seconds));
    c
}

fn new_group(row: &ContainerRow) -> Map<String, Value> {
    let mut g = Map::new();
    g.insert("domain_name".into(), json!(row.domain_name));
    g.insert("g_id".into(), json!(row.group_id.to_string()));
    g.insert("g_name".into(), json!(row.group_name));
    for k in [
        "g_cpu_allocated",
        "g_cpu_used",
        "g_mem_allocated",
        "g_mem_used",
        "g_shared_memory",
        "g_disk_allocated",
        "g_disk_used",
        "g_io_read",
        "g_io_write",
    ] {
        g.insert(k.into(), json!(0));
    }
    g.insert("g_device_type".into(), json!([]));
    for k in ["g_smp", "g_gpu_mem_allocated", "g_gpu_allocated"] {
        g.insert(k.into(), json!(0.0));
    }
    for k in [
        "g_used_seconds",
        "g_cpu_seconds",
        "g_mem_byte_seconds",
        "g_gpu_seconds",
    ] {
        g.insert(k.into(), json!(0.0));
    }
    g.insert("g_slot_seconds".into(), json!({}));
    g.insert("c_infos".into(), json!([]));
    g
}

/// Adds a container record into its group's totals (plain sums, as the original; the
/// `*_seconds` sums are the time-weighted usage).
fn add_to_group(g: &mut Map<String, Value>, c: &Map<String, Value>) {
    let pairs = [
        ("g_cpu_allocated", "cpu_allocated"),
        ("g_cpu_used", "cpu_used"),
        ("g_mem_allocated", "mem_allocated"),
        ("g_mem_used", "mem_used"),
        ("g_shared_memory", "shared_memory"),
        ("g_disk_allocated", "disk_allocated"),
        ("g_disk_used", "disk_used"),
        ("g_io_read", "io_read"),
        ("g_io_write", "io_write"),
        ("g_smp", "smp"),
        ("g_gpu_mem_allocated", "gpu_mem_allocated"),
        ("g_gpu_allocated", "gpu_allocated"),
        ("g_used_seconds", "used_seconds"),
        ("g_cpu_seconds", "cpu_seconds"),
        ("g_mem_byte_seconds", "mem_byte_seconds"),
        ("g_gpu_seconds", "gpu_seconds"),
    ];
    for (gk, ck) in pairs {
        let sum = match (g.get(gk), c.get(ck)) {
            (Some(Value::Number(a)), Some(Value::Number(b))) => match (a.as_i64(), b.as_i64()) {
                (Some(x), Some(y)) if !a.is_f64() && !b.is_f64() => json!(x.saturating_add(y)),
                _ => json!(a.as_f64().unwrap_or(0.0) + b.as_f64().unwrap_or(0.0)),
            },
            (Some(a), _) => a.clone(),
            (None, _) => continue,
        };
        g.insert(gk.to_string(), sum);
    }
    if let (Some(Value::Array(all)), Some(Value::Array(more))) =
        (g.get("g_device_type"), c.get("device_type"))
    {
        let set: BTreeSet<String> = all
            .iter()
            .chain(more.iter())
            .filter_map(|v| v.as_str().map(str::to_string))
            .collect();
        g.insert(
            "g_device_type".into(),
            json!(set.into_iter().collect::<Vec<_>>()),
        );
    }
    if let (Some(Value::Object(total)), Some(Value::Object(add))) =
        (g.get("g_slot_seconds").cloned(), c.get("slot_seconds"))
    {
        let mut total = total;
        for (k, v) in add {
            let cur = total.get(k).and_then(Value::as_f64).unwrap_or(0.0);
            total.insert(k.clone(), json!(cur + v.as_f64().unwrap_or(0.0)));
        }
        g.insert("g_slot_seconds".into(), Value::Object(total));
    }
}

// ------------------------------------------------------------------ usage endpoints

/// `group_ids`: a list of strings; a single string is wrapped (trafaret's `MultiKey`);
/// `null` is refused with 400 as in the original (api-rest-errata #9).
fn group_ids<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    use serde::de::Error;
    match Value::deserialize(d)? {
        Value::Array(items) => items
            .into_iter()
            .map(|v| match v {
                Value::String(s) => Ok(s),
                other => Err(D::Error::custom(format!("value is not a string: {other}"))),
            })
            .collect(),
        Value::String(s) => Ok(vec![s]),
        other => Err(D::Error::custom(format!("value is not a list: {other}"))),
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MonthParams {
    #[serde(deserialize_with = "group_ids")]
    pub group_ids: Vec<String>,
    pub month: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PeriodParams {
    #[serde(default)]
    pub group_id: Option<String>,
    pub start_date: String,
    pub end_date: String,
}

fn invalid_dates() -> ApiError {
    ApiError::invalid_api_params().with_msg("Invalid date values")
}

fn parse_uuids(ids: &[String]) -> ApiResult<Vec<Uuid>> {
    ids.iter()
        .map(|s| {
            Uuid::parse_str(s.trim()).map_err(|_| {
                ApiError::invalid_api_params().with_msg(format!("Invalid group id: {s}"))
            })
        })
        .collect()
}

fn local_midnight(tz: FixedOffset, date: NaiveDate) -> ApiResult<DateTime<Utc>> {
    tz.from_local_datetime(&date.and_hms_opt(0, 0, 0).ok_or_else(invalid_dates)?)
        .single()
        .map(|d| d.with_timezone(&Utc))
        .ok_or_else(invalid_dates)
}

fn digits(s: &str, n: usize) -> bool {
    s.len() >= n && s.as_bytes()[..n].iter().all(u8::is_ascii_digit)
}

/// `GET /resource/usage/month` (superadmin): `month` = `YYYYMM`, `group_ids` = list
/// (empty: every group).
pub async fn usage_per_month(
    State(state): State<AppState>,
    SuperAdmin(_user): SuperAdmin,
    Params(p): Params<MonthParams>,
) -> ApiResult<Json<Value>> {
    if !digits(&p.month, 6) {
        return Err(crate::params::validation_error(&format!(
            "`month`: value does not match pattern: {}",
            p.month
        )));
    }
    if p.month.len() != 6 {
        return Err(invalid_dates());
    }
    let year: i32 = p.month[..4].parse().map_err(|_| invalid_dates())?;
    let month: u32 = p.month[4..].parse().map_err(|_| invalid_dates())?;
    let first = NaiveDate::from_ymd_opt(year, month, 1).ok_or_else(invalid_dates)?;
    let next = if month == 12 {
        NaiveDate::from_ymd_opt(year + 1, 1, 1)
    } else {
        NaiveDate::from_ymd_opt(year, month + 1, 1)
    }
    .ok_or_else(invalid_dates)?;
    let tz = local_tz(&state).await;
    let (start, end) = (local_midnight(tz, first)?, local_midnight(tz, next)?);
    let ids = parse_uuids(&p.group_ids)?;
    let ids = (!ids.is_empty()).then_some(ids);
    Ok(Json(Value::Array(
        container_stats(&state, start, end, ids, tz).await?,
    )))
}

/// `GET /resource/usage/period` (superadmin): `start_date`/`end_date` = `YYYYMMDD`, the
/// end date inclusive, at most 100 days; `group_id` optional.
pub async fn usage_per_period(
    State(state): State<AppState>,
    SuperAdmin(_user): SuperAdmin,
    Params(p): Params<PeriodParams>,
) -> ApiResult<Json<Value>> {
    for (k, v) in [("start_date", &p.start_date), ("end_date", &p.end_date)] {
        if v.len() != 8 || !digits(v, 8) {
            return Err(crate::params::validation_error(&format!(
                "`{k}`: value does not match pattern: {v}"
            )));
        }
    }
    let parse = |s: &str| NaiveDate::parse_from_str(s, "%Y%m%d").map_err(|_| invalid_dates());
    let (first, last) = (parse(&p.start_date)?, parse(&p.end_date)?);
    let tz = local_tz(&state).await;
    let start = local_midnight(tz, first)?;
    let end = local_midnight(tz, last)? + chrono::TimeDelta::days(1);
    if end - start > chrono::TimeDelta::days(MAX_PERIOD_DAYS) {
        return Err(ApiError::invalid_api_params().with_msg("Cannot query more than 100 days"));
    }
    if end <= start {
        return Err(
            ApiError::invalid_api_params().with_msg("end_date must be later than start_date.")
        );
    }
    let ids = p.group_id.map(|g| parse_uuids(&[g])).transpose()?;
    Ok(Json(Value::Array(
        container_stats(&state, start, end, ids, tz).await?,
    )))
}

// ------------------------------------------------------------------ monthly time series

#[derive(sqlx::FromRow)]
struct StatRow {
    occupied_slots: Value,
    last_stat: Option<Value>,
    created_at: Option<DateTime<Utc>>,
    terminated_at: Option<DateTime<Utc>>,
}

/// `GET /resource/stats/user/month`: the caller's own kernels.
pub async fn user_month_stats(
    State(state): State<AppState>,
    Auth(user): Auth,
) -> ApiResult<Json<Value>> {
    Ok(Json(monthly_stats(&state, Some(user.user_uuid)).await?))
}

/// `GET /resource/stats/admin/month` (superadmin): every kernel.
pub async fn admin_month_stats(
    State(state): State<AppState>,
    SuperAdmin(_user): SuperAdmin,
) -> ApiResult<Json<Value>> {
    Ok(Json(monthly_stats(&state, None).await?))
}

/// 2,880 bins of 15 minutes over the last 30 days: per bin, the kernels alive in it
/// (count, allocated CPU / memory / GPU, and their last I/O and scratch-disk statistics).
async fn monthly_stats(state: &AppState, user: Option<Uuid>) -> ApiResult<Value> {
    let mut txn = state.db.begin_readonly().await?;
    let now: DateTime<Utc> = sqlx::query_scalar("SELECT now()")
        .fetch_one(&mut *txn)
        .await?;
    let start = now - chrono::TimeDelta::days(STATS_DAYS);
    let rows: Vec<StatRow> = sqlx::query_as(
        "SELECT occupied_slots, last_stat, created_at, terminated_at FROM kernels \
         WHERE ((terminated_at >= $1 AND status IN ('TERMINATED', 'RUNNING')) OR status = 'RUNNING') \
           AND ($2::uuid IS NULL OR user_uuid = $2) \
         ORDER BY created_at",
    )
    .bind(start)
    .bind(user)
    .fetch_all(&mut *txn)
    .await?;
    txn.commit().await?;
    Ok(bin_stats(&rows, start, now))
}

fn bin_stats(rows: &[StatRow], start: DateTime<Utc>, now: DateTime<Utc>) -> Value {
    let span = (now - start).num_seconds();
    let n = ((span + BIN_SECONDS - 1) / BIN_SECONDS).max(0) as usize;
    // Difference arrays: +v at a kernel's first bin, -v after its last.
    let mut d_count = vec![0i64; n + 1];
    let mut d_cpu = vec![0f64; n + 1];
    let mut d_mem = vec![0i64; n + 1];
    let mut d_gpu = vec![0f64; n + 1];
    let mut d_read = vec![0i64; n + 1];
    let mut d_write = vec![0i64; n + 1];
    let mut d_disk = vec![0i64; n + 1];
    let micros = |t: DateTime<Utc>| (t - start).num_microseconds().unwrap_or(0);
    let bin_us = BIN_SECONDS * 1_000_000;
    for r in rows {
        let Some(created) = r.created_at else {
            continue;
        };
        let from = micros(created).max(0);
        let to = micros(r.terminated_at.unwrap_or(now)).min(span * 1_000_000);
        if to < from || n == 0 {
            continue;
        }
        let first = (from / bin_us) as usize;
        // A kernel ending exactly on a bin boundary is not alive in the next bin.
        let last = if to > from && to % bin_us == 0 {
            (to / bin_us - 1) as usize
        } else {
            (to / bin_us) as usize
        }
        .min(n - 1);
        if first > last {
            continue;
        }
        let ls = r.last_stat.as_ref();
        let add = |d: &mut Vec<i64>, v: i64| {
            d[first] += v;
            d[last + 1] -= v;
        };
        add(&mut d_count, 1);
        add(&mut d_mem, int(r.occupied_slots.get("mem")));
        add(&mut d_read, int(path(ls, &["io_read", "current"])));
        add(&mut d_write, int(path(ls, &["io_write", "current"])));
        add(
            &mut d_disk,
            int(path(ls, &["io_scratch_size", "stats.max"])),
        );
        let cpu = float(r.occupied_slots.get("cpu"));
        d_cpu[first] += cpu;
        d_cpu[last + 1] -= cpu;
        let gpu = gpu_allocated(&r.occupied_slots);
        d_gpu[first] += gpu;
        d_gpu[last + 1] -= gpu;
    }
    let start_ts = start.timestamp_micros() as f64 / 1e6;
    let (mut count, mut cpu, mut mem, mut gpu, mut read, mut write, mut disk) =
        (0i64, 0f64, 0i64, 0f64, 0i64, 0i64, 0i64);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        count += d_count[i];
        cpu += d_cpu[i];
        mem += d_mem[i];
        gpu += d_gpu[i];
        read += d_read[i];
        write += d_write[i];
        disk += d_disk[i];
        // Float sums drift by a few ulps; snap values that should be zero back to 0.
        let clean = |v: f64| if v.abs() < 1e-9 { 0.0 } else { v };
        out.push(json!({
            "date": start_ts + (i as i64 * BIN_SECONDS) as f64,
            "num_sessions": {"value": count, "unit_hint": "count"},
            "cpu_allocated": {"value": clean(cpu), "unit_hint": "count"},
            "mem_allocated": {"value": mem, "unit_hint": "bytes"},
            "gpu_allocated": {"value": clean(gpu), "unit_hint": "count"},
            "io_read_bytes": {"value": read, "unit_hint": "bytes"},
            "io_write_bytes": {"value": write, "unit_hint": "bytes"},
            // The original's key has a trailing space; clients read it that way.
            "disk_used": {"value ": disk, "unit_hint": "bytes"},
        }));
    }
    Value::Array(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_renderings() {
        let d = Utc.with_ymd_and_hms(2021, 6, 7, 10, 11, 12).unwrap();
        assert_eq!(py_datetime(Some(d)), "2021-06-07 10:11:12+00:00");
        let d2 = d + chrono::TimeDelta::microseconds(1500);
        assert_eq!(py_datetime(Some(d2)), "2021-06-07 10:11:12.001500+00:00");
        assert_eq!(py_datetime(None), "None");
        assert_eq!(py_timedelta(chrono::TimeDelta::seconds(3600)), "1:00:00");
        assert_eq!(
            py_timedelta(chrono::TimeDelta::seconds(86_400 + 61)),
            "1 day, 0:01:01"
        );
        assert_eq!(
            py_timedelta(chrono::TimeDelta::seconds(3 * 86_400)),
            "3 days, 0:00:00"
        );
        assert_eq!(
            py_timedelta(chrono::TimeDelta::milliseconds(1500)),
            "0:00:01.500000"
        );
    }

    #[test]
    fn timezones() {
        assert_eq!(parse_tz("UTC"), Some(utc()));
        assert_eq!(parse_tz(""), Some(utc()));
        assert_eq!(parse_tz("+09:00").unwrap().local_minus_utc(), 9 * 3600);
        assert_eq!(parse_tz("UTC+9").unwrap().local_minus_utc(), 9 * 3600);
        assert_eq!(
            parse_tz("-0530").unwrap().local_minus_utc(),
            -(5 * 3600 + 1800)
        );
        assert_eq!(parse_tz("Asia/Seoul"), None);
    }

    #[test]
    fn bins_count_every_overlap() {
        let now = Utc.with_ymd_and_hms(2021, 6, 30, 0, 0, 0).unwrap();
        let start = now - chrono::TimeDelta::days(30);
        let row = |from: i64, to: Option<i64>| StatRow {
            occupied_slots: json!({"cpu": "2", "mem": "1024"}),
            last_stat: None,
            created_at: Some(start + chrono::TimeDelta::seconds(from)),
            terminated_at: to.map(|t| start + chrono::TimeDelta::seconds(t)),
        };
        // 45 minutes from the start of bin 1 → bins 1, 2, 3; a running one from bin 2879.
        let out = bin_stats(
            &[row(900, Some(900 + 2700)), row(2879 * 900 + 10, None)],
            start,
            now,
        );
        let bins = out.as_array().unwrap();
        assert_eq!(bins.len(), 2880);
        let count = |i: usize| bins[i]["num_sessions"]["value"].as_i64().unwrap();
        assert_eq!(
            (count(0), count(1), count(2), count(3), count(4)),
            (0, 1, 1, 1, 0)
        );
        assert_eq!(count(2879), 1);
        assert_eq!(bins[2]["cpu_allocated"]["value"].as_f64(), Some(2.0));
        assert!(bins[2]["disk_used"].get("value ").is_some());
    }
}
