//! Server-sent events (api-rest.md §3, orchestration.md §4.2/§4.4):
//! `GET /events/session` and `GET /events/background-task`, plus starting background
//! tasks from other handlers ([`start_background_task`]).
//!
//! ## Wire format
//! aiohttp-sse's framing, byte for byte: `id:` (ours: the JetStream stream sequence),
//! `event:`, one `data:` line, optional `retry:`, each line ended by CRLF, a blank line
//! after each message, and a `: ping` comment every 15 s. The session stream never sends
//! `server_close` (the client reconnects after `retry`, default 5 s, when it ends, e.g. at
//! server shutdown); the background-task stream sends `retry: 5` with every live event and
//! ends with `event: server_close` / `data: {}` after the outcome.
//!
//! ## Delivery
//! Connections read through the process's [`EventHub`]: one ordered consumer over the
//! whole EVENTS stream that routes each event by the session/task id in its subject to
//! the connections about that id (and to the `*` connections, filtered here). The SSE
//! `id:` is the JetStream stream sequence; a `Last-Event-ID` header replays from right
//! after it, reading the stored events of that id (`<p>.evt.*.<id>`, or `<p>.evt.>`) up
//! to the hub's position before switching to the hub, so a client that reconnects with it
//! misses nothing (within the stream's retention) and sees nothing twice.
//!
//! ## Cost and backpressure
//! Per connection: a bounded channel of 64 shared (`Arc`) events and the response body,
//! which is produced only as fast as the client reads it. The hub never waits for a
//! connection: one that falls 64 events behind is dropped from the routing table and
//! catches up from the stream by itself, so a slow client never blocks another one, the
//! hub, the bus or a publisher, and never grows this process's memory. Envelopes are
//! decoded once per event, and session metadata lookups (name, owner, domain, group,
//! cluster role of a kernel) go through process-wide caches, so a thousand subscribers of
//! one session cost one read-only query, not a thousand.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode, Uri};
use axum::response::Response;
use bytes::Bytes;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_core::redis::redis;
use bai_events::{
    bgtask, keys, Command, CommandOutcome, CommandReply, Event, EventHub, FeedItem, FeedStart,
    HubOptions, Subscription,
};

use crate::auth::cache::TtlCache;
use crate::auth::{owner_access_key_param, Auth, AuthUser, UserRole};
use crate::commands::{self, ReqId};
use crate::error::{ApiError, ApiResult};
use crate::params;
use crate::state::AppState;

/// Keep-alive comment period (aiohttp-sse's default).
pub const PING_INTERVAL: Duration = Duration::from_secs(15);
/// `retry:` sent with background-task events (seconds, as the official client reads it).
pub const BGTASK_RETRY: u32 = 5;
/// How long session/kernel metadata is trusted. It never changes after creation, so this
/// only bounds the cache's memory.
const META_TTL: Duration = Duration::from_secs(300);
/// Consecutive feed failures after which a connection is ended (the client reconnects).
const MAX_FEED_ERRORS: u32 = 5;

/// The 14 session-stream event names of the original (`session_preparing` and
/// `kernel_enqueued` were never relayed).
pub const SESSION_EVENT_NAMES: &[&str] = &[
    "session_enqueued",
    "session_scheduled",
    "kernel_preparing",
    "kernel_pulling",
    "kernel_creating",
    "kernel_started",
    "session_started",
    "kernel_terminating",
    "kernel_terminated",
    "kernel_cancelled",
    "session_terminated",
    "session_cancelled",
    "session_success",
    "session_failure",
];

const PING: &[u8] = b": ping\r\n\r\n";

/// One SSE message in aiohttp-sse's framing.
pub fn sse_frame(id: Option<u64>, event: &str, data: &str, retry: Option<u32>) -> Bytes {
    let mut out = String::with_capacity(data.len() + event.len() + 48);
    if let Some(id) = id {
        out.push_str(&format!("id: {id}\r\n"));
    }
    out.push_str("event: ");
    out.push_str(event);
    out.push_str("\r\n");
    for line in data.split(['\r', '\n']) {
        out.push_str("data: ");
        out.push_str(line);
        out.push_str("\r\n");
    }
    if let Some(r) = retry {
        out.push_str(&format!("retry: {r}\r\n"));
    }
    out.push_str("\r\n");
    Bytes::from(out)
}

/// Kernel/session metadata an event is rendered and filtered with.
#[derive(Clone, Debug, sqlx::FromRow)]
pub struct KernelMeta {
    pub id: Uuid,
    pub session_id: Uuid,
    pub session_name: Option<String>,
    pub access_key: Option<String>,
    pub domain_name: String,
    pub user_uuid: Uuid,
    pub group_name: Option<String>,
    pub cluster_role: String,
    pub cluster_idx: i32,
}

const META_COLUMNS: &str = "k.id, k.session_id, k.session_name, k.access_key, k.domain_name, \
     k.user_uuid, g.name AS group_name, k.cluster_role, k.cluster_idx";

/// Per-process state of the event streams: the event hub every connection reads through
/// (one consumer on the NATS server for the whole process), the shutdown signal that ends
/// every stream (so graceful shutdown is not held up by endless responses), the metadata
/// caches and a gauge of open streams.
pub struct StreamHub {
    hub: Arc<EventHub>,
    stop: CancellationToken,
    sessions: TtlCache<Uuid, Arc<KernelMeta>>,
    kernels: TtlCache<Uuid, Arc<KernelMeta>>,
    open: Arc<AtomicUsize>,
}

impl StreamHub {
    pub fn new(bus: &bai_events::Bus) -> Self {
        Self {
            hub: EventHub::new(bus.clone(), HubOptions::default()),
            stop: CancellationToken::new(),
            sessions: TtlCache::new(META_TTL),
            kernels: TtlCache::new(META_TTL),
            open: Arc::default(),
        }
    }

    /// The process's event hub.
    pub fn hub(&self) -> &Arc<EventHub> {
        &self.hub
    }

    /// Ends every open stream (called when the server starts shutting down).
    pub fn stop_token(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Streams currently open in this process.
    pub fn open_streams(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn guard(&self) -> OpenGuard {
        self.open.fetch_add(1, Ordering::Relaxed);
        OpenGuard(self.open.clone())
    }
}

struct OpenGuard(Arc<AtomicUsize>);

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

/// `Last-Event-ID` as a stream sequence (anything else is ignored: start live).
fn last_event_id(headers: &HeaderMap) -> Option<u64> {
    headers
        .get("last-event-id")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

fn sse_response(body: Body) -> Response {
    let mut resp = Response::new(body);
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        "text/event-stream".parse().expect("static"),
    );
    h.insert(header::CACHE_CONTROL, "no-cache".parse().expect("static"));
    h.insert(header::CONNECTION, "keep-alive".parse().expect("static"));
    resp
}

fn group_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "group-not-found",
        "No such user group.",
    )
}

// ------------------------------------------------------------------ session events

/// Query of `GET /events/session` (strict, like the original's trafaret dict).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SessionEventParams {
    #[serde(default = "star", alias = "sessionName")]
    pub name: String,
    #[serde(default, rename = "ownerAccessKey")]
    pub owner_access_key: Option<String>,
    #[serde(default, rename = "sessionId")]
    pub session_id: Option<Uuid>,
    #[serde(default = "star", alias = "groupName")]
    pub group: String,
    #[serde(default = "star")]
    pub scope: String,
}

fn star() -> String {
    "*".into()
}

/// What one connection wants to see.
#[derive(Clone, Debug)]
struct SessionFilter {
    session_id: Option<Uuid>,
    session_name: String,
    access_key: String,
    group_name: Option<String>,
    scope: String,
}

/// `GET /events/session`.
pub async fn session_events(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let mut raw = params::query_map(uri.query());
    if let Value::Object(m) = &mut raw {
        // Read from the URI below (the original stripped it before validation).
        m.remove("owner_access_key");
    }
    let p: SessionEventParams = params::parse_value(raw)?;
    if !matches!(p.scope.as_str(), "*" | "session" | "kernel") {
        return Err(params::validation_error(
            "invalid value for `scope`: expected one of *, session, kernel",
        ));
    }
    // `ownerAccessKey` as the original; the snake-case `owner_access_key` the official
    // client sends (and the original silently dropped) is honoured as well.
    let owner = p
        .owner_access_key
        .clone()
        .or_else(|| owner_access_key_param(&uri))
        .filter(|k| !k.is_empty());
    let is_admin = matches!(user.role, UserRole::Superadmin | UserRole::Admin);
    if let Some(k) = &owner {
        if !is_admin && *k != user.access_key {
            return Err(ApiError::forbidden());
        }
    }
    let group_name = if p.group == "*" {
        None
    } else {
        let mut txn = state.db.begin_readonly().await?;
        let found: Option<String> = sqlx::query_scalar("SELECT name FROM groups WHERE name = $1")
            .bind(&p.group)
            .fetch_optional(&mut *txn)
            .await?;
        txn.commit().await?;
        Some(found.ok_or_else(group_not_found)?)
    };
    let filter = SessionFilter {
        session_id: p.session_id,
        session_name: p.name,
        access_key: owner.unwrap_or_else(|| user.access_key.clone()),
        group_name,
        scope: p.scope,
    };
    let start = last_event_id(&headers).map_or(FeedStart::New, FeedStart::After);
    let sub = state
        .streams
        .hub
        .subscribe(filter.session_id, start)
        .await?;
    let conn = SessionStream {
        guard: state.streams.guard(),
        stop: state.streams.stop_token(),
        ping: ping_timer(),
        sub,
        errors: 0,
        filter,
        user,
        state,
    };
    let body = futures::stream::unfold(conn, |mut c| async move {
        let frame = c.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), c))
    });
    Ok(sse_response(Body::from_stream(body)))
}

fn ping_timer() -> tokio::time::Interval {
    let mut t =
        tokio::time::interval_at(tokio::time::Instant::now() + PING_INTERVAL, PING_INTERVAL);
    t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    t
}

struct SessionStream {
    state: AppState,
    user: AuthUser,
    filter: SessionFilter,
    sub: Subscription,
    /// Consecutive subscription errors.
    errors: u32,
    ping: tokio::time::Interval,
    stop: CancellationToken,
    #[allow(dead_code)]
    guard: OpenGuard,
}

impl SessionStream {
    /// The next bytes to send; `None` ends the response.
    async fn next_frame(&mut self) -> Option<Bytes> {
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                item = self.sub.next() => match item {
                    Some(Ok(item)) => {
                        self.errors = 0;
                        if let Some(frame) = render(&self.state, &self.user, &self.filter, &item).await {
                            return Some(frame);
                        }
                    }
                    Some(Err(e)) => {
                        self.errors += 1;
                        tracing::warn!(error = %e, errors = self.errors, "session event subscription failed");
                        if self.errors >= MAX_FEED_ERRORS {
                            return None; // the client reconnects
                        }
                        tokio::time::sleep(Duration::from_millis(100 << self.errors)).await;
                    }
                    None => return None,
                },
                _ = self.ping.tick() => return Some(Bytes::from_static(PING)),
            }
        }
    }
}

/// Filters and renders one stored event (`None`: not for this connection). A free
/// function over `Sync` parts: the connection itself holds a feed, which is not `Sync`.
async fn render(
    state: &AppState,
    user: &AuthUser,
    filter: &SessionFilter,
    item: &FeedItem,
) -> Option<Bytes> {
    let name = item.name();
    if !SESSION_EVENT_NAMES.contains(&name) {
        return None;
    }
    match filter.scope.as_str() {
        "session" if !name.starts_with("session_") => return None,
        "kernel" if !name.starts_with("kernel_") => return None,
        _ => {}
    }
    let Some(env) = item.event() else {
        tracing::debug!(subject = %item.subject, "skipping an undecodable event");
        return None;
    };
    let (session_id, kernel_id, reason) = session_event_parts(&env.body)?;
    if filter.session_id.is_some_and(|s| s != session_id) {
        return None;
    }
    let meta = match kernel_id {
        Some(k) => kernel_meta(state, k).await,
        None => session_meta(state, session_id).await,
    };
    let meta = match meta {
        Ok(Some(m)) => m,
        Ok(None) => return None,
        Err(e) => {
            tracing::warn!(error = %e, %session_id, "cannot look the session of an event up; skipped");
            return None;
        }
    };
    if !visible(user, &meta) || !filter.matches(&meta) {
        return None;
    }
    let data = SessionEventData {
        reason,
        session_name: meta.session_name.as_deref(),
        owner_access_key: meta.access_key.as_deref(),
        session_id: meta.session_id.to_string(),
        // The main kernel's id for session events (== the session id).
        kernel_id: kernel_id.unwrap_or(session_id).to_string(),
        cluster_role: kernel_id.map(|_| meta.cluster_role.as_str()),
        cluster_idx: kernel_id.map(|_| meta.cluster_idx),
    };
    let data = serde_json::to_string(&data).ok()?;
    Some(sse_frame(Some(item.sequence), name, &data, None))
}

impl SessionFilter {
    /// The original's row filter (errata #8): by session id when given; otherwise by name
    /// *and* owner access key unless the name is `*`; and by group name.
    fn matches(&self, meta: &KernelMeta) -> bool {
        if let Some(g) = &self.group_name {
            if meta.group_name.as_ref() != Some(g) {
                return false;
            }
        }
        match self.session_id {
            Some(id) => meta.session_id == id,
            None => {
                self.session_name == "*"
                    || (meta.session_name.as_deref() == Some(self.session_name.as_str())
                        && meta.access_key.as_deref() == Some(self.access_key.as_str()))
            }
        }
    }
}

/// Role visibility: superadmins see everything, domain admins their domain, everyone
/// else (users, monitors) only their own sessions.
fn visible(user: &AuthUser, meta: &KernelMeta) -> bool {
    match user.role {
        UserRole::Superadmin => true,
        UserRole::Admin => meta.domain_name == user.domain_name,
        UserRole::User | UserRole::Monitor => {
            meta.domain_name == user.domain_name && meta.user_uuid == user.user_uuid
        }
    }
}

/// `(session id, kernel id for kernel_* events, reason)` of a relayed event.
fn session_event_parts(ev: &Event) -> Option<(Uuid, Option<Uuid>, &str)> {
    Some(match ev {
        Event::KernelPreparing {
            kernel_id,
            session_id,
            reason,
            ..
        }
        | Event::KernelPulling {
            kernel_id,
            session_id,
            reason,
            ..
        }
        | Event::KernelCreating {
            kernel_id,
            session_id,
            reason,
            ..
        }
        | Event::KernelStarted {
            kernel_id,
            session_id,
            reason,
            ..
        }
        | Event::KernelCancelled {
            kernel_id,
            session_id,
            reason,
            ..
        }
        | Event::KernelTerminating {
            kernel_id,
            session_id,
            reason,
            ..
        }
        | Event::KernelTerminated {
            kernel_id,
            session_id,
            reason,
            ..
        } => (*session_id, Some(*kernel_id), reason.as_str()),
        Event::SessionEnqueued {
            session_id, reason, ..
        }
        | Event::SessionScheduled {
            session_id, reason, ..
        }
        | Event::SessionCancelled {
            session_id, reason, ..
        }
        | Event::SessionStarted {
            session_id, reason, ..
        }
        | Event::SessionTerminated { session_id, reason }
        | Event::SessionSuccess {
            session_id, reason, ..
        }
        | Event::SessionFailure {
            session_id, reason, ..
        } => (*session_id, None, reason.as_str()),
        _ => return None,
    })
}

/// The `data:` of a session-stream event, keys in the original's order.
#[derive(Serialize)]
struct SessionEventData<'a> {
    reason: &'a str,
    #[serde(rename = "sessionName")]
    session_name: Option<&'a str>,
    #[serde(rename = "ownerAccessKey")]
    owner_access_key: Option<&'a str>,
    #[serde(rename = "sessionId")]
    session_id: String,
    #[serde(rename = "kernelId")]
    kernel_id: String,
    #[serde(rename = "clusterRole", skip_serializing_if = "Option::is_none")]
    cluster_role: Option<&'a str>,
    #[serde(rename = "clusterIdx", skip_serializing_if = "Option::is_none")]
    cluster_idx: Option<i32>,
}

/// The main kernel of a session (cached; `None` if unknown).
pub async fn session_meta(
    state: &AppState,
    session_id: Uuid,
) -> ApiResult<Option<Arc<KernelMeta>>> {
    if let Some(hit) = state.streams.sessions.get(&session_id) {
        return Ok(Some(hit));
    }
    let mut txn = state.db.begin_readonly().await?;
    let row: Option<KernelMeta> = sqlx::query_as(&format!(
        "SELECT {META_COLUMNS} FROM kernels k LEFT JOIN groups g ON g.id = k.group_id \
         WHERE k.session_id = $1 ORDER BY (k.cluster_role <> 'main'), k.cluster_idx LIMIT 1"
    ))
    .bind(session_id)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    // Unknown ids are not cached: the row may be committed by the time the next event
    // arrives (events are published after the commit, so this is rare).
    let row = row.map(Arc::new);
    if let Some(r) = &row {
        state.streams.sessions.insert(session_id, r.clone());
    }
    Ok(row)
}

/// One kernel (cached; `None` if unknown).
pub async fn kernel_meta(state: &AppState, kernel_id: Uuid) -> ApiResult<Option<Arc<KernelMeta>>> {
    if let Some(hit) = state.streams.kernels.get(&kernel_id) {
        return Ok(Some(hit));
    }
    let mut txn = state.db.begin_readonly().await?;
    let row: Option<KernelMeta> = sqlx::query_as(&format!(
        "SELECT {META_COLUMNS} FROM kernels k LEFT JOIN groups g ON g.id = k.group_id WHERE k.id = $1"
    ))
    .bind(kernel_id)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    let row = row.map(Arc::new);
    if let Some(r) = &row {
        state.streams.kernels.insert(kernel_id, r.clone());
    }
    Ok(row)
}

// ------------------------------------------------------------------ background tasks

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TaskParams {
    #[serde(alias = "taskId")]
    pub task_id: Uuid,
}

fn no_such_task() -> ApiError {
    ApiError::not_found().with_msg("No such background task.")
}

/// The task's status hash (empty when unknown or expired).
pub async fn task_info(
    state: &AppState,
    task_id: Uuid,
) -> ApiResult<std::collections::HashMap<String, String>> {
    let mut conn = state
        .redis
        .get()
        .await
        .map_err(|e| ApiError::service_unavailable().with_msg(format!("Redis: {e}")))?;
    redis::cmd("HGETALL")
        .arg(keys::bgtask_key(task_id))
        .query_async(&mut *conn)
        .await
        .map_err(ApiError::internal_from)
}

/// `GET /events/background-task?task_id=` (alias `taskId`).
pub async fn background_task_events(
    State(state): State<AppState>,
    Auth(_user): Auth,
    uri: Uri,
    headers: HeaderMap,
) -> ApiResult<Response> {
    let p: TaskParams = params::parse_value(params::query_map(uri.query()))?;
    let task_id = p.task_id;
    // Subscribe before reading the status: a task that finishes in between has written
    // its final status before publishing the outcome, so either the hash already shows
    // the outcome or the feed will deliver it.
    let start = last_event_id(&headers).map_or(FeedStart::New, FeedStart::After);
    let sub = state.streams.hub.subscribe(Some(task_id), start).await?;
    let info = task_info(&state, task_id).await?;
    let Some(status) = info.get("status").cloned() else {
        // The original meant this 404 but answered 500 (an empty Redis map); see CHANGELOG.
        return Err(no_such_task());
    };
    let guard = state.streams.guard();
    if status != bgtask::STATUS_STARTED {
        let field = |k: &str| info.get(k).cloned().unwrap_or_default();
        let body = json!({
            "task_id": task_id.to_string(),
            "status": status,
            "current_progress": field("current"),
            "total_progress": field("total"),
            "message": field("msg"),
        });
        let frames = vec![
            Ok::<_, std::convert::Infallible>(sse_frame(
                None,
                &format!("task_{status}"),
                &body.to_string(),
                None,
            )),
            Ok(sse_frame(None, "server_close", "{}", None)),
        ];
        drop(sub);
        drop(guard);
        return Ok(sse_response(Body::from_stream(futures::stream::iter(
            frames,
        ))));
    }
    let conn = TaskStream {
        sub,
        ping: ping_timer(),
        stop: state.streams.stop_token(),
        closing: false,
        done: false,
        guard,
    };
    let body = futures::stream::unfold(conn, |mut c| async move {
        let frame = c.next_frame().await?;
        Some((Ok::<_, std::convert::Infallible>(frame), c))
    });
    Ok(sse_response(Body::from_stream(body)))
}

struct TaskStream {
    sub: Subscription,
    ping: tokio::time::Interval,
    stop: CancellationToken,
    /// The outcome was sent; `server_close` is next.
    closing: bool,
    done: bool,
    #[allow(dead_code)]
    guard: OpenGuard,
}

impl TaskStream {
    async fn next_frame(&mut self) -> Option<Bytes> {
        if self.done {
            return None;
        }
        if self.closing {
            self.done = true;
            return Some(sse_frame(None, "server_close", "{}", None));
        }
        let mut errors = 0;
        loop {
            tokio::select! {
                biased;
                _ = self.stop.cancelled() => return None,
                item = self.sub.next() => match item {
                    Some(Ok(item)) => {
                        let Some(env) = item.event() else { continue };
                        let (data, terminal) = match &env.body {
                            Event::BgtaskUpdated { task_id, current_progress, total_progress, message } => (
                                json!({
                                    "task_id": task_id.to_string(),
                                    "message": message,
                                    "current_progress": bgtask::progress_json(*current_progress),
                                    "total_progress": bgtask::progress_json(*total_progress),
                                }),
                                false,
                            ),
                            Event::BgtaskDone { task_id, message }
                            | Event::BgtaskFailed { task_id, message }
                            | Event::BgtaskCancelled { task_id, message } => {
                                (json!({"task_id": task_id.to_string(), "message": message}), true)
                            }
                            _ => continue,
                        };
                        self.closing = terminal;
                        return Some(sse_frame(Some(item.sequence), item.name(), &data.to_string(), Some(BGTASK_RETRY)));
                    }
                    Some(Err(e)) => {
                        errors += 1;
                        tracing::warn!(error = %e, "background task feed failed");
                        if errors >= MAX_FEED_ERRORS {
                            return None;
                        }
                    }
                    None => return None,
                },
                _ = self.ping.tick() => return Some(Bytes::from_static(PING)),
            }
        }
    }
}

/// Starts a background task in the worker fleet and returns its id once a worker has
/// registered it (its status hash exists), or — if no worker answered within the command
/// deadline — once the command is safely queued.
pub async fn start_background_task(
    state: &AppState,
    req_id: &ReqId,
    kind: &str,
    params: Value,
) -> ApiResult<Uuid> {
    let task_id = Uuid::new_v4();
    let cmd = Command::StartBackgroundTask {
        task_id,
        kind: kind.to_string(),
        params,
    };
    let deadline = Duration::from_millis(state.config.manager.command_timeout_ms.max(1000));
    // The task id is the command id: a retried request cannot start the task twice.
    let outcome = state
        .bus
        .publish_command_with_id(task_id, req_id.0.clone(), cmd, deadline)
        .await?;
    match outcome {
        CommandOutcome::Completed(CommandReply::Ok { .. }) | CommandOutcome::Accepted { .. } => {
            Ok(task_id)
        }
        CommandOutcome::Completed(CommandReply::Rejected {
            http_status,
            error_type,
            title,
            msg,
            ..
        }) => Err(commands::rejected(http_status, &error_type, &title, msg)),
        CommandOutcome::Completed(CommandReply::Failed { error }) => {
            Err(ApiError::internal_from(error))
        }
    }
}

/// Waits up to `within` for a task's outcome: `Some((status, message))` when it ended.
pub async fn wait_for_task(
    state: &AppState,
    task_id: Uuid,
    within: Duration,
) -> ApiResult<Option<(String, String)>> {
    let mut sub = state
        .streams
        .hub
        .subscribe(Some(task_id), FeedStart::New)
        .await?;
    let check = |info: &std::collections::HashMap<String, String>| {
        info.get("status")
            .filter(|s| bgtask::is_terminal(s))
            .map(|s| (s.clone(), info.get("msg").cloned().unwrap_or_default()))
    };
    if let Some(done) = check(&task_info(state, task_id).await?) {
        return Ok(Some(done));
    }
    let outcome = tokio::time::timeout(within, async {
        while let Some(item) = sub.next().await {
            let Ok(item) = item else { continue };
            if matches!(
                item.name(),
                "bgtask_done" | "bgtask_failed" | "bgtask_cancelled"
            ) {
                return true;
            }
        }
        false
    })
    .await;
    if matches!(outcome, Ok(true)) {
        return Ok(check(&task_info(state, task_id).await?));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn framing_is_aiohttp_sse() {
        assert_eq!(
            sse_frame(Some(7), "kernel_started", "{\"a\": 1}", None),
            Bytes::from_static(b"id: 7\r\nevent: kernel_started\r\ndata: {\"a\": 1}\r\n\r\n")
        );
        assert_eq!(
            sse_frame(None, "bgtask_done", "{}", Some(5)),
            Bytes::from_static(b"event: bgtask_done\r\ndata: {}\r\nretry: 5\r\n\r\n")
        );
        assert_eq!(
            sse_frame(None, "x", "a\nb", None),
            Bytes::from_static(b"event: x\r\ndata: a\r\ndata: b\r\n\r\n")
        );
    }

    #[test]
    fn data_key_order() {
        let d = SessionEventData {
            reason: "r",
            session_name: Some("s"),
            owner_access_key: Some("AK"),
            session_id: "sid".into(),
            kernel_id: "kid".into(),
            cluster_role: Some("main"),
            cluster_idx: Some(0),
        };
        assert_eq!(
            serde_json::to_string(&d).unwrap(),
            r#"{"reason":"r","sessionName":"s","ownerAccessKey":"AK","sessionId":"sid","kernelId":"kid","clusterRole":"main","clusterIdx":0}"#
        );
    }
}
