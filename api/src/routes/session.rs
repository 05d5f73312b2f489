//! `/session` (api-rest.md §2, errata §1-§2): create (through the worker fleet), info,
//! destroy and restart (commands), and the agent interactions that change no state —
//! execute, interrupt, complete, logs, upload, download, files — which call the main
//! kernel's agent directly.

use std::time::Duration;

use axum::body::Body;
use axum::extract::{Multipart, Path, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use chrono::{DateTime, Utc};
use futures::StreamExt;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use bai_agent_proto::client::DEFAULT_FLUSH_TIMEOUT_MS;
use bai_agent_proto::{ExecMode, ExecResult, ExecuteParams};
use bai_core::redis::redis;
use bai_events::{Command, Envelope, Event};

use crate::auth::middleware::ApiVersion;
use crate::auth::{owner_access_key_param, resolve_owner, Auth, AuthUser, Owner, UserRole};
use crate::commands::{self, ReqId};
use crate::error::{ApiError, ApiResult};
use crate::params::{de, Params};
use crate::routes::manager::ensure_not_frozen;
use crate::session::create::{plan, CreateParams, Plan};
use crate::session::kernel::{kernel_gone, map_rpc_error, rpc_client, target, KernelTarget};
use crate::session::lookup::{self, find_session, SessionRow};
use crate::session::{access, kernel_execution_failed};
use crate::state::AppState;

/// How long `POST /session` waits for the session to start when `maxWaitSeconds` is 0
/// ("wait") — bounded so a request never hangs on a session that cannot be scheduled.
pub const DEFAULT_MAX_WAIT: Duration = Duration::from_secs(600);
/// Upper bound of an explicit `maxWaitSeconds`.
pub const MAX_WAIT_CAP: Duration = Duration::from_secs(3600);
/// Upload limits of the original: at most 20 files per request, each < 1 MiB.
pub const MAX_UPLOAD_FILES: usize = 20;
pub const MAX_UPLOAD_FILE_SIZE: usize = 1024 * 1024;
/// Request body limit of the upload route (20 files just under 1 MiB, plus headers).
pub const UPLOAD_BODY_LIMIT: usize = MAX_UPLOAD_FILES * MAX_UPLOAD_FILE_SIZE + 1024 * 1024;
/// Files per download request (the original asserted this, answering 500).
pub const MAX_DOWNLOAD_FILES: usize = 5;

async fn owner_of(state: &AppState, user: &AuthUser, uri: &Uri) -> ApiResult<Owner> {
    resolve_owner(state, user, owner_access_key_param(uri).as_deref()).await
}

/// Looks a live session up for the request's owner.
async fn lookup_session(
    state: &AppState,
    owner: &Owner,
    name: &str,
    allow_stale: bool,
) -> ApiResult<SessionRow> {
    let mut txn = state.db.begin_readonly().await?;
    let row = find_session(&mut txn, name, &owner.access_key, allow_stale).await?;
    txn.commit().await?;
    Ok(row)
}

// ---------------------------------------------------------------------------------------
// create
// ---------------------------------------------------------------------------------------

/// `POST /session` and `POST /session/_/create`.
pub async fn create(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Params(p): Params<CreateParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    let owner = owner_of(&state, &user, &uri).await?;
    let enqueue_only = p.enqueue_only;
    let wait = max_wait(p.max_wait_seconds);
    let requester_is_owner = owner.access_key == user.access_key;
    let spec = match plan(&state, requester_is_owner, user.is_superadmin(), &owner, p).await? {
        Plan::Reuse(row) => {
            return Ok((
                StatusCode::OK,
                Json(json!({
                    "sessionId": row.session_id,
                    "sessionName": row.name,
                    "status": row.status,
                    "service_ports": row.service_ports.unwrap_or_else(|| json!([])),
                    "created": false,
                })),
            )
                .into_response())
        }
        Plan::Create(spec) => spec,
    };
    let session_id = spec.session_id;
    let name = spec.name.clone();
    let (status, ports) = enqueue_and_wait(&state, &req_id, spec, enqueue_only, wait).await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "sessionId": session_id,
            "sessionName": name,
            "status": status,
            "servicePorts": ports,
            "created": true,
        })),
    )
        .into_response())
}

/// Enqueues a validated session and, unless `enqueue_only`, waits up to `wait` for it to
/// start, be cancelled or end: the status to answer (`PENDING`, `TIMEOUT`, the status then)
/// and the service ports of a RUNNING session. Shared by every create endpoint.
pub async fn enqueue_and_wait(
    state: &AppState,
    req_id: &ReqId,
    spec: Box<bai_events::session::SessionSpec>,
    enqueue_only: bool,
    wait: Duration,
) -> ApiResult<(String, Value)> {
    let session_id = spec.session_id;
    // Subscribe before publishing, so a session that starts at once is not missed.
    let mut events = if enqueue_only {
        None
    } else {
        Some(
            state
                .bus
                .client()
                .subscribe(state.bus.subjects().events_about(session_id))
                .await
                .map_err(|e| {
                    tracing::error!(error = %e, "cannot subscribe to session events");
                    ApiError::service_unavailable().with_msg("The event bus is unavailable.")
                })?,
        )
    };
    commands::send(state, req_id, Command::CreateSession(spec)).await?;
    let Some(sub) = events.as_mut() else {
        return Ok(("PENDING".into(), json!([])));
    };
    let settled = tokio::time::timeout(wait, async {
        while let Some(msg) = sub.next().await {
            let Ok(env) = Envelope::<Event>::from_slice(&msg.payload) else {
                continue;
            };
            if matches!(
                env.body,
                Event::SessionStarted { .. }
                    | Event::SessionCancelled { .. }
                    | Event::SessionTerminated { .. }
            ) {
                return true;
            }
        }
        false
    })
    .await;
    drop(events);
    if !matches!(settled, Ok(true)) {
        return Ok(("TIMEOUT".into(), json!([])));
    }
    let mut txn = state.db.begin_readonly().await?;
    let row = lookup::by_id(&mut txn, session_id).await?;
    txn.commit().await?;
    Ok(match row {
        Some(r) => {
            let ports = if r.status == "RUNNING" {
                r.service_ports.unwrap_or_else(|| json!([]))
            } else {
                json!([])
            };
            (r.status, ports)
        }
        None => ("PENDING".into(), json!([])),
    })
}

/// The `maxWaitSeconds` of a create request as a bound (0 = "wait", bounded anyway).
pub fn max_wait(seconds: Option<i64>) -> Duration {
    match seconds.unwrap_or(0) {
        0 => DEFAULT_MAX_WAIT,
        s => Duration::from_secs(s.max(0) as u64).min(MAX_WAIT_CAP),
    }
}

// ---------------------------------------------------------------------------------------
// info, destroy, restart
// ---------------------------------------------------------------------------------------

/// Python's `repr()` of a string.
fn py_str(s: &str) -> String {
    let quote = if s.contains('\'') && !s.contains('"') {
        '"'
    } else {
        '\''
    };
    let mut out = String::with_capacity(s.len() + 2);
    out.push(quote);
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c == quote => {
                out.push('\\');
                out.push(c);
            }
            c if (c as u32) < 0x20 || c as u32 == 0x7f => {
                out.push_str(&format!("\\x{:02x}", c as u32))
            }
            c => out.push(c),
        }
    }
    out.push(quote);
    out
}

/// Python's `str()` of a JSON-decoded value (dicts and lists render their items' repr).
fn py_repr(v: &Value) -> String {
    match v {
        Value::Null => "None".into(),
        Value::Bool(true) => "True".into(),
        Value::Bool(false) => "False".into(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => py_str(s),
        Value::Array(a) => format!("[{}]", a.iter().map(py_repr).collect::<Vec<_>>().join(", ")),
        Value::Object(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| format!("{}: {}", py_str(k), py_repr(v)))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

/// `str(ResourceSlot)`: `{'cpu': Decimal('1'), 'mem': Decimal('268435456')}`.
fn py_slots(v: &Value) -> String {
    match v.as_object() {
        Some(o) => format!(
            "{{{}}}",
            o.iter()
                .map(|(k, v)| {
                    let amount = match v {
                        Value::String(s) => s.clone(),
                        other => other.to_string(),
                    };
                    format!("{}: Decimal({})", py_str(k), py_str(&amount))
                })
                .collect::<Vec<_>>()
                .join(", ")
        ),
        None => py_repr(v),
    }
}

/// `str(datetime)` of an aware UTC datetime: `2021-06-07 12:34:56.123456+00:00`.
fn py_datetime(t: &DateTime<Utc>) -> String {
    if t.timestamp_subsec_micros() == 0 {
        t.format("%Y-%m-%d %H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%d %H:%M:%S%.6f+00:00").to_string()
    }
}

#[derive(sqlx::FromRow)]
struct InfoRow {
    domain_name: String,
    group_id: Uuid,
    user_uuid: Uuid,
    image: Option<String>,
    registry: Option<String>,
    tag: Option<String>,
    container_id: Option<String>,
    occupied_slots: Value,
    occupied_shares: Value,
    environ: Option<Vec<String>>,
    status: String,
    status_info: Option<String>,
    status_data: Option<Value>,
    created_at: Option<DateTime<Utc>>,
    terminated_at: Option<DateTime<Utc>>,
    num_queries: Option<i64>,
    last_stat: Option<Value>,
}

/// `GET /session/{name}`: the main kernel's details, with the original's Python `str()`
/// renderings (§2.4).
pub async fn info(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let owner = owner_of(&state, &user, &uri).await?;
    let mut txn = state.db.begin_readonly().await?;
    let s = find_session(&mut txn, &name, &owner.access_key, false).await?;
    let row: InfoRow = sqlx::query_as(
        "SELECT domain_name, group_id, user_uuid, image, registry, tag, container_id, occupied_slots, \
         occupied_shares, environ, status::text AS status, status_info, status_data, created_at, \
         terminated_at, num_queries, last_stat FROM kernels WHERE id = $1",
    )
    .bind(s.kernel_id)
    .fetch_one(&mut *txn)
    .await?;
    txn.commit().await?;
    let num_queries = access::num_queries(&state, s.kernel_id, row.num_queries).await;
    let str_or_none = |v: &Option<String>| v.clone().unwrap_or_else(|| "None".into());
    let age = row
        .created_at
        .map(|c| (Utc::now() - c).num_milliseconds())
        .unwrap_or(0);
    Ok(Json(json!({
        "domainName": row.domain_name,
        "groupId": row.group_id.to_string(),
        "userId": row.user_uuid.to_string(),
        "lang": row.image,
        "image": row.image,
        "registry": row.registry,
        "tag": row.tag,
        "containerId": str_or_none(&row.container_id),
        "occupiedSlots": py_slots(&row.occupied_slots),
        "occupiedShares": py_repr(&row.occupied_shares),
        "environ": row.environ.as_ref().map(|e| py_repr(&json!(e))).unwrap_or_else(|| "None".into()),
        "status": row.status,
        "statusInfo": str_or_none(&row.status_info),
        "statusData": row.status_data,
        "age": age,
        "creationTime": row.created_at.as_ref().map(py_datetime),
        "terminationTime": row.terminated_at.as_ref().map(py_datetime),
        "numQueriesExecuted": num_queries,
        "lastStat": row.last_stat,
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DestroyParams {
    #[serde(default, deserialize_with = "de::tobool")]
    pub forced: bool,
}

/// The last live statistics of a kernel (Redis key = kernel id, written by the agent
/// event ingest), reduced to metric objects, or `None`.
async fn live_stats(state: &AppState, kernel_id: Uuid) -> Option<Map<String, Value>> {
    let mut conn = state.redis.get().await.ok()?;
    let raw: Option<String> = redis::cmd("GET")
        .arg(kernel_id.to_string())
        .query_async(&mut *conn)
        .await
        .ok()?;
    let v: Value = serde_json::from_str(&raw?).ok()?;
    let metrics: Map<String, Value> = v
        .as_object()?
        .iter()
        .filter(|(_, m)| m.get("unit_hint").is_some() && m.get("current").is_some())
        .map(|(k, m)| (k.clone(), m.clone()))
        .collect();
    (!metrics.is_empty()).then_some(metrics)
}

/// `DELETE /session/{name}?forced=` → 200 `{"stats": {...}}` with `status` always present
/// (errata §2.4): the last live metrics (`version: 2`) when the session ran.
pub async fn destroy(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Path(name): Path<String>,
    Params(p): Params<DestroyParams>,
) -> ApiResult<Json<Value>> {
    if p.forced && !matches!(user.role, UserRole::Admin | UserRole::Superadmin) {
        return Err(
            ApiError::insufficient_privilege().with_msg("You are not allowed to force-terminate")
        );
    }
    let owner = owner_of(&state, &user, &uri).await?;
    let session = lookup_session(&state, &owner, &name, false).await?;
    let stats = live_stats(&state, session.kernel_id).await;
    let reply = commands::send(
        &state,
        &req_id,
        Command::DestroySession {
            session_id: session.session_id,
            forced: p.forced,
            // As the original: forced destroys differ in the statuses they accept, and
            // the worker marks force-terminated kernels itself.
            reason: "user-requested".into(),
        },
    )
    .await?;
    let status = reply
        .as_ref()
        .and_then(|r| r.pointer("/stats/status"))
        .and_then(Value::as_str)
        .unwrap_or(if session.status == "PENDING" {
            "cancelled"
        } else {
            "terminated"
        })
        .to_string();
    let mut out = Map::new();
    if let (Some(metrics), "terminated") = (stats, status.as_str()) {
        out.extend(metrics);
        out.insert("version".into(), json!(2));
    }
    out.insert("status".into(), json!(status));
    Ok(Json(json!({ "stats": out })))
}

/// `PATCH /session/{name}` → 204, through the worker's `restart_session`.
pub async fn restart(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let owner = owner_of(&state, &user, &uri).await?;
    let session = lookup_session(&state, &owner, &name, false).await?;
    commands::send(
        &state,
        &req_id,
        Command::RestartSession {
            session_id: session.session_id,
        },
    )
    .await?;
    Ok(StatusCode::NO_CONTENT)
}

// ---------------------------------------------------------------------------------------
// execute, interrupt, complete
// ---------------------------------------------------------------------------------------

/// The client-facing shape of an execute result (§2.5, errata §2.3): `console` always a
/// list, `options` an object on `waiting-input`, `files` a list.
pub fn exec_result_json(r: &ExecResult, with_run_id: bool) -> Value {
    let options = match (&r.options, r.status.as_str()) {
        (Some(o), _) => o.clone(),
        (None, "waiting-input") => json!({}),
        (None, _) => Value::Null,
    };
    let mut out = json!({
        "status": r.status,
        "exitCode": r.exit_code,
        "options": options,
        "files": r.files,
        "console": r.console.iter().map(|(k, v)| json!([k, v])).collect::<Vec<_>>(),
    });
    if with_run_id {
        out["runId"] = json!(r.run_id);
    }
    out
}

/// What an execute call on a vanished kernel answers (the original's exit code 130).
pub fn vanished_result(run_id: Option<&str>) -> Value {
    json!({"status": "finished", "runId": run_id, "exitCode": 130, "options": {}, "files": [], "console": []})
}

pub fn exec_mode(mode: &str) -> Option<ExecMode> {
    Some(match mode {
        "query" => ExecMode::Query,
        "batch" => ExecMode::Batch,
        "continue" => ExecMode::Continue,
        "input" => ExecMode::Input,
        "complete" => ExecMode::Complete,
        _ => return None,
    })
}

fn api_major(v: &Option<Extension<ApiVersion>>) -> u32 {
    v.as_ref().map(|Extension(v)| v.major).unwrap_or(6)
}

/// `POST /session/{name}`: one step of a run (§2.5).
pub async fn execute(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    version: Option<Extension<ApiVersion>>,
    Path(name): Path<String>,
    Params(body): Params<Value>,
) -> ApiResult<Json<Value>> {
    let bad = |m: &str| ApiError::invalid_api_params().with_msg(m.to_string());
    let params = body.as_object().ok_or_else(|| bad("Malformed body"))?;
    if !params.contains_key("runId") {
        return Err(bad("runId is missing!"));
    }
    let run_id = match params.get("runId") {
        Some(Value::Null) | None => None,
        Some(Value::String(s)) => Some(s.clone()),
        Some(other) => Some(other.to_string()),
    };
    let mode_raw = params
        .get("mode")
        .and_then(Value::as_str)
        .filter(|m| !m.is_empty())
        .ok_or_else(|| bad("mode is missing or empty!"))?;
    let mode = exec_mode(mode_raw).ok_or_else(|| bad("mode has an invalid value."))?;
    if matches!(mode, ExecMode::Continue | ExecMode::Input) && run_id.is_none() {
        return Err(bad("continuation requires explicit run ID"));
    }
    let code = match params.get("code") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(s)) => s.clone(),
        Some(other) => other.to_string(),
    };
    let opts = match params.get("options") {
        None | Some(Value::Null) => json!({}),
        Some(v) => v.clone(),
    };
    let owner = owner_of(&state, &user, &uri).await?;
    let session = lookup_session(&state, &owner, &name, false).await?;
    let t = target(&state, &session)?;
    // Every execute call counts, as in the original (`increment_session_usage`).
    access::touch_and_count(&state, t.session_id, t.kernel_id).await;
    if mode == ExecMode::Complete {
        let r = t
            .rpc
            .get_completions(&t.agent, t.kernel_id, &code, opts)
            .await
            .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
        return Ok(Json(json!({ "result": r })));
    }
    let res = t
        .rpc
        .execute(
            &t.agent,
            ExecuteParams {
                kernel_id: t.kernel_id,
                api_version: api_major(&version),
                run_id: run_id.clone(),
                mode,
                code,
                opts,
                flush_timeout_ms: Some(DEFAULT_FLUSH_TIMEOUT_MS),
            },
        )
        .await;
    match res {
        Ok(r) => Ok(Json(json!({ "result": exec_result_json(&r, true) }))),
        Err(e) if kernel_gone(&e) => Ok(Json(
            json!({ "result": vanished_result(run_id.as_deref()) }),
        )),
        Err(e) => Err(map_rpc_error(e, kernel_execution_failed())),
    }
}

/// Resolves the main kernel of `{name}` for the request's owner.
async fn kernel_of(
    state: &AppState,
    user: &AuthUser,
    uri: &Uri,
    name: &str,
) -> ApiResult<KernelTarget> {
    let owner = owner_of(state, user, uri).await?;
    let session = lookup_session(state, &owner, name, false).await?;
    target(state, &session)
}

/// `POST /session/{name}/interrupt` → 204.
pub async fn interrupt(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<StatusCode> {
    let t = kernel_of(&state, &user, &uri, &name).await?;
    access::touch(&state, t.session_id).await;
    t.rpc
        .interrupt_kernel(&t.agent, t.kernel_id)
        .await
        .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
pub struct CompleteParams {
    #[serde(default)]
    pub code: Option<String>,
    #[serde(default)]
    pub options: Option<Value>,
}

/// `POST /session/{name}/complete` → `{"result": {"status", "completions"}}`.
pub async fn complete(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
    Params(p): Params<CompleteParams>,
) -> ApiResult<Json<Value>> {
    let t = kernel_of(&state, &user, &uri, &name).await?;
    access::touch(&state, t.session_id).await;
    let r = t
        .rpc
        .get_completions(
            &t.agent,
            t.kernel_id,
            p.code.as_deref().unwrap_or(""),
            p.options.unwrap_or_else(|| json!({})),
        )
        .await
        .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
    Ok(Json(json!({ "result": r })))
}

// ---------------------------------------------------------------------------------------
// logs and files
// ---------------------------------------------------------------------------------------

/// `GET /session/{name}/logs` → `{"result": {"logs": "..."}}`; terminated sessions answer
/// with their stored log (if the agent kept one), live ones ask the agent.
pub async fn logs(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let owner = owner_of(&state, &user, &uri).await?;
    let session = lookup_session(&state, &owner, &name, true).await?;
    let live = !crate::session::DEAD_STATUSES.contains(&session.status.as_str())
        && session.agent.is_some();
    if live {
        let rpc = rpc_client(&state)?;
        let agent = session.agent.clone().unwrap_or_default();
        match rpc.get_logs(&agent, session.kernel_id).await {
            Ok(logs) => return Ok(Json(json!({ "result": { "logs": logs } }))),
            Err(e) if kernel_gone(&e) => {}
            Err(e) => return Err(map_rpc_error(e, kernel_execution_failed())),
        }
    }
    let mut txn = state.db.begin_readonly().await?;
    let stored: Option<Vec<u8>> =
        sqlx::query_scalar("SELECT container_log FROM kernels WHERE id = $1")
            .bind(session.kernel_id)
            .fetch_optional(&mut *txn)
            .await?
            .flatten();
    txn.commit().await?;
    let logs = stored
        .map(|b| String::from_utf8_lossy(&b).into_owned())
        .unwrap_or_default();
    Ok(Json(json!({ "result": { "logs": logs } })))
}

fn too_large_file() -> ApiError {
    ApiError::invalid_api_params().with_msg("Too large file")
}

/// `POST /session/{name}/upload` (multipart/form-data, field `src`, filename = path
/// relative to `/home/work`) → 204. At most 20 files, each smaller than 1 MiB.
pub async fn upload(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
    mut form: Multipart,
) -> ApiResult<StatusCode> {
    let t = kernel_of(&state, &user, &uri, &name).await?;
    access::touch(&state, t.session_id).await;
    let bad_form = |e: axum::extract::multipart::MultipartError| {
        ApiError::invalid_api_params()
            .with_msg(format!("Malformed multipart body: {}", e.body_text()))
    };
    let mut files: Vec<(String, Vec<u8>)> = Vec::new();
    while let Some(mut field) = form.next_field().await.map_err(bad_form)? {
        if files.len() >= MAX_UPLOAD_FILES {
            return Err(ApiError::invalid_api_params().with_msg("Too many files"));
        }
        let Some(filename) = field
            .file_name()
            .map(str::to_string)
            .filter(|f| !f.is_empty())
        else {
            return Err(ApiError::invalid_api_params().with_msg("Each part needs a filename"));
        };
        let mut data = Vec::new();
        while let Some(chunk) = field.chunk().await.map_err(bad_form)? {
            if data.len() + chunk.len() >= MAX_UPLOAD_FILE_SIZE {
                return Err(too_large_file());
            }
            data.extend_from_slice(&chunk);
        }
        files.push((filename, data));
    }
    for (filename, data) in &files {
        t.rpc
            .upload_file(&t.agent, t.kernel_id, filename, data)
            .await
            .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
    }
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    pub files: Vec<String>,
}

/// `GET /session/{name}/download` with `{"files": [...]}` → `multipart/mixed`, one part
/// per path holding a tar archive of it, each with `Content-Encoding: identity`.
pub async fn download(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
    Params(p): Params<DownloadParams>,
) -> ApiResult<Response> {
    if p.files.len() > MAX_DOWNLOAD_FILES {
        return Err(ApiError::invalid_api_params().with_msg(format!(
            "Too many files (at most {MAX_DOWNLOAD_FILES} per request)"
        )));
    }
    let t = kernel_of(&state, &user, &uri, &name).await?;
    access::touch(&state, t.session_id).await;
    let mut archives = Vec::with_capacity(p.files.len());
    for f in &p.files {
        let tar = t
            .rpc
            .download_file(&t.agent, t.kernel_id, f)
            .await
            .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
        archives.push(tar);
    }
    let boundary = Uuid::new_v4().simple().to_string();
    let mut body = Vec::new();
    for tar in &archives {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Encoding: identity\r\n\
                 Content-Length: {}\r\n\r\n",
                tar.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(tar);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let mut resp = Response::new(Body::from(body));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_str(&format!("multipart/mixed; boundary={boundary}"))
            .map_err(ApiError::internal_from)?,
    );
    Ok(resp)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesParams {
    #[serde(default = "dot")]
    pub path: String,
}

fn dot() -> String {
    ".".into()
}

/// `GET /session/{name}/files` with `{"path"}` → `{"files": "<JSON string>", "errors",
/// "abspath"}` (the agent's answer, passed through).
pub async fn files(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
    Params(p): Params<FilesParams>,
) -> ApiResult<Json<Value>> {
    let t = kernel_of(&state, &user, &uri, &name).await?;
    access::touch(&state, t.session_id).await;
    let list = t
        .rpc
        .list_files(&t.agent, t.kernel_id, &p.path)
        .await
        .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
    Ok(Json(json!({
        "files": list.files,
        "errors": list.errors,
        "abspath": list.abspath,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn python_renderings() {
        assert_eq!(
            py_slots(&json!({"cpu": "1", "mem": "268435456"})),
            "{'cpu': Decimal('1'), 'mem': Decimal('268435456')}"
        );
        assert_eq!(py_repr(&json!(["A=B", "it's"])), "['A=B', \"it's\"]");
        assert_eq!(py_repr(&json!({})), "{}");
        assert_eq!(
            py_repr(&json!({"a": null, "b": true, "c": [1]})),
            "{'a': None, 'b': True, 'c': [1]}"
        );
        let t = DateTime::parse_from_rfc3339("2021-06-07T01:02:03.000450Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(py_datetime(&t), "2021-06-07 01:02:03.000450+00:00");
        let t = DateTime::parse_from_rfc3339("2021-06-07T01:02:03Z")
            .unwrap()
            .with_timezone(&Utc);
        assert_eq!(py_datetime(&t), "2021-06-07 01:02:03+00:00");
    }

    #[test]
    fn exec_shapes() {
        let r = ExecResult {
            run_id: Some("r1".into()),
            status: "waiting-input".into(),
            console: vec![("stdout".into(), json!("x"))],
            exit_code: None,
            options: None,
            files: vec![],
        };
        let v = exec_result_json(&r, true);
        assert_eq!(v["options"], json!({}));
        assert_eq!(v["console"], json!([["stdout", "x"]]));
        assert_eq!(v["runId"], "r1");
        assert_eq!(v["files"], json!([]));
        let v = exec_result_json(&r, false);
        assert!(v.get("runId").is_none());
        assert_eq!(vanished_result(Some("r"))["exitCode"], 130);
    }
}
