//! `/stream` WebSockets (api-rest.md §4). `GET /stream/session/{name}/execute` is what
//! `backend.ai run` uses: the first client frame is JSON `{"code", "mode", "options"}`
//! (`query` or `batch`); the server answers with result frames
//! `{"status", "console", "exitCode", "options", "files"}` until `finished`, feeding the
//! run with `continue` in between and with the client's next (plain text) frame after a
//! `waiting-input`. Streams always act on the requester's own sessions
//! (`owner_access_key` is ignored, as in the original).

use std::time::Duration;

use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, State};
use axum::response::Response;
use axum::Extension;
use serde_json::{json, Value};

use bai_agent_proto::{ExecMode, ExecuteParams};

use crate::auth::middleware::ApiVersion;
use crate::auth::Auth;
use crate::error::ApiResult;
use crate::routes::session::{exec_result_json, vanished_result};
use crate::session::kernel::{kernel_gone, target, KernelTarget};
use crate::session::{access, lookup};
use crate::state::AppState;

/// How long the agent collects output before a `continued` step: short enough to stream
/// output to the terminal as it comes, long enough not to spin on idle runs.
const STREAM_FLUSH: Duration = Duration::from_millis(1000);

/// `GET /stream/session/{name}/execute` (WebSocket).
pub async fn execute(
    State(state): State<AppState>,
    Auth(user): Auth,
    version: Option<Extension<ApiVersion>>,
    Path(name): Path<String>,
    ws: WebSocketUpgrade,
) -> ApiResult<Response> {
    // Resolved before the upgrade, so an unknown session is a plain 404.
    let mut txn = state.db.begin_readonly().await?;
    let session = lookup::find_session(&mut txn, &name, &user.access_key, false).await?;
    txn.commit().await?;
    let t = target(&state, &session)?;
    let api = version.map(|Extension(v)| v.major).unwrap_or(6);
    // The socket runs in a task of its own: carry the request id into it for agent RPCs.
    let request_id = bai_agent_proto::request_id::current();
    Ok(ws.on_upgrade(move |socket| {
        bai_agent_proto::request_id::scope(request_id, run_execute(state, t, api, socket))
    }))
}

/// The next text frame (binary frames are read as UTF-8), or `None` when the client left.
async fn next_text(socket: &mut WebSocket) -> Option<String> {
    while let Some(msg) = socket.recv().await {
        match msg.ok()? {
            Message::Text(t) => return Some(t.to_string()),
            Message::Binary(b) => return Some(String::from_utf8_lossy(&b).into_owned()),
            Message::Close(_) => return None,
            Message::Ping(_) | Message::Pong(_) => {}
        }
    }
    None
}

async fn send_json(socket: &mut WebSocket, v: &Value) -> bool {
    socket
        .send(Message::Text(v.to_string().into()))
        .await
        .is_ok()
}

async fn run_execute(state: AppState, t: KernelTarget, api: u32, mut socket: WebSocket) {
    let error = |msg: String| json!({"status": "error", "msg": msg});
    let Some(first) = next_text(&mut socket).await else {
        return;
    };
    let params: Value = match serde_json::from_str(&first) {
        Ok(v @ Value::Object(_)) => v,
        _ => {
            send_json(
                &mut socket,
                &error("The first frame must be a JSON object.".into()),
            )
            .await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let mut mode = match params.get("mode").and_then(Value::as_str) {
        Some("query") => ExecMode::Query,
        Some("batch") => ExecMode::Batch,
        Some("") | None => {
            send_json(&mut socket, &error("mode is missing or empty!".into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
        Some(_) => {
            send_json(&mut socket, &error("mode has an invalid value.".into())).await;
            let _ = socket.send(Message::Close(None)).await;
            return;
        }
    };
    let mut code = match params.get("code") {
        Some(Value::String(s)) => s.clone(),
        None | Some(Value::Null) => String::new(),
        Some(other) => other.to_string(),
    };
    let mut opts = match params.get("options") {
        None | Some(Value::Null) => json!({}),
        Some(v) => v.clone(),
    };
    let mut run_id: Option<String> = None;
    // One streamed run is one query (its continuation steps are not counted again).
    access::touch_and_count(&state, t.session_id, t.kernel_id).await;
    let mut first = true;
    loop {
        if !std::mem::take(&mut first) {
            access::touch(&state, t.session_id).await;
        }
        let res = t
            .rpc
            .execute(
                &t.agent,
                ExecuteParams {
                    kernel_id: t.kernel_id,
                    api_version: api,
                    run_id: run_id.clone(),
                    mode,
                    code: std::mem::take(&mut code),
                    opts: std::mem::replace(&mut opts, json!({})),
                    flush_timeout_ms: Some(STREAM_FLUSH.as_millis() as u64),
                },
            )
            .await;
        let r = match res {
            Ok(r) => r,
            Err(e) if kernel_gone(&e) => {
                let mut v = vanished_result(None);
                if let Some(o) = v.as_object_mut() {
                    o.remove("runId");
                }
                send_json(&mut socket, &v).await;
                break;
            }
            Err(e) => {
                tracing::warn!(error = %e, session_id = %t.session_id, "streaming execute failed");
                send_json(&mut socket, &error(e.to_string())).await;
                break;
            }
        };
        run_id = r.run_id.clone().or(run_id);
        // Idle steps carry nothing for the client; skip them instead of flooding it.
        let idle = r.status == "continued" && r.console.is_empty() && r.files.is_empty();
        if !idle && !send_json(&mut socket, &exec_result_json(&r, false)).await {
            return;
        }
        match r.status.as_str() {
            "finished" => break,
            "waiting-input" => {
                let Some(input) = next_text(&mut socket).await else {
                    return;
                };
                mode = ExecMode::Input;
                code = input;
            }
            _ => mode = ExecMode::Continue,
        }
    }
    let _ = socket.send(Message::Close(None)).await;
}
