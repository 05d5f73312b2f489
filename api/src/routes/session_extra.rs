//! The remaining `/session` endpoints of api-rest.md §2.3–§2.4 and the app listing of
//! §4: `POST /session/_/create-cluster`, `GET /session/_/match`,
//! `POST /session/{name}/shutdown-service`, `GET /session/{name}/download_single` and
//! `GET /stream/session/{name}/apps`.

use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{header, HeaderValue, StatusCode, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use crate::auth::{owner_access_key_param, resolve_owner, Auth, AuthUser, Owner};
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::routes::manager::ensure_not_frozen;
use crate::routes::session::{enqueue_and_wait, max_wait, MAX_UPLOAD_FILE_SIZE};
use crate::session::cluster::{plan_cluster, CreateClusterParams};
use crate::session::create::valid_session_name;
use crate::session::kernel::{map_rpc_error, target, KernelTarget};
use crate::session::lookup::{find_session, match_sessions};
use crate::session::{access, kernel_execution_failed};
use crate::state::AppState;

async fn owner_of(state: &AppState, user: &AuthUser, uri: &Uri) -> ApiResult<Owner> {
    resolve_owner(state, user, owner_access_key_param(uri).as_deref()).await
}

async fn kernel_of(
    state: &AppState,
    user: &AuthUser,
    uri: &Uri,
    name: &str,
) -> ApiResult<KernelTarget> {
    let owner = owner_of(state, user, uri).await?;
    let mut txn = state.db.begin_readonly().await?;
    let row = find_session(&mut txn, name, &owner.access_key, false).await?;
    txn.commit().await?;
    target(state, &row)
}

/// `POST /session/_/create-cluster` → 201 `{kernelId, status, servicePorts, created}`.
pub async fn create_cluster(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Params(p): Params<CreateClusterParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    if !valid_session_name(&p.name) {
        return Err(ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({"clientSessionToken": format!(
                "value does not match pattern: {:?}",
                r"^(?=.{4,64}$)\w[\w.-]*\w$"
            )})));
    }
    if p.max_wait_seconds.is_some_and(|w| w < 0) {
        return Err(ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({"maxWaitSeconds": "must be >= 0"})));
    }
    let owner = owner_of(&state, &user, &uri).await?;
    let requester_is_owner = owner.access_key == user.access_key;
    let spec = plan_cluster(&state, requester_is_owner, user.is_superadmin(), &owner, &p).await?;
    let kernel_id = spec.session_id;
    let (status, ports) = enqueue_and_wait(
        &state,
        &req_id,
        spec,
        p.enqueue_only,
        max_wait(p.max_wait_seconds),
    )
    .await?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "kernelId": kernel_id,
            "status": status,
            "servicePorts": ports,
            "created": true,
        })),
    )
        .into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MatchParams {
    pub id: String,
}

/// `GET /session/_/match?id=<prefix>` → `{"matches": [{id, name, status}]}`: the live
/// sessions a `{session_name}` prefix designates (for auto-completion).
pub async fn match_prefix(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Params(p): Params<MatchParams>,
) -> ApiResult<Json<Value>> {
    let owner = owner_of(&state, &user, &uri).await?;
    let mut txn = state.db.begin_readonly().await?;
    let rows = match_sessions(&mut txn, &p.id, &owner.access_key).await?;
    txn.commit().await?;
    let matches: Vec<Value> = rows
        .iter()
        .map(|r| json!({"id": r.session_id.to_string(), "name": r.name, "status": r.status}))
        .collect();
    Ok(Json(json!({ "matches": matches })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownServiceParams {
    #[serde(alias = "serviceName", alias = "service")]
    pub service_name: String,
}

/// `POST /session/{name}/shutdown-service` with `{"service_name"}` → 204.
pub async fn shutdown_service(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
    Params(p): Params<ShutdownServiceParams>,
) -> ApiResult<StatusCode> {
    if p.service_name.is_empty() {
        return Err(ApiError::invalid_api_params().with_msg("service_name is empty"));
    }
    let t = kernel_of(&state, &user, &uri, &name).await?;
    access::touch(&state, t.session_id).await;
    t.rpc
        .shutdown_service(&t.agent, t.kernel_id, &p.service_name)
        .await
        .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
    Ok(StatusCode::NO_CONTENT)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadSingleParams {
    pub file: String,
}

/// `GET /session/{name}/download_single` with `file` → the tar archive of that path as
/// raw bytes (small files only: an archive of 1 MiB or more is refused).
pub async fn download_single(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
    Params(p): Params<DownloadSingleParams>,
) -> ApiResult<Response> {
    let t = kernel_of(&state, &user, &uri, &name).await?;
    access::touch(&state, t.session_id).await;
    let tar = t
        .rpc
        .download_file(&t.agent, t.kernel_id, &p.file)
        .await
        .map_err(|e| map_rpc_error(e, kernel_execution_failed()))?;
    if tar.len() >= MAX_UPLOAD_FILE_SIZE {
        return Err(ApiError::invalid_api_params().with_msg("Too large file"));
    }
    let mut resp = Response::new(Body::from(tar));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/octet-stream"),
    );
    Ok(resp)
}

/// `GET /stream/session/{name}/apps` → the main kernel's service apps
/// `[{name, protocol, ports, url_template?, allowed_arguments?, allowed_envs?}]`.
pub async fn apps(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let owner = owner_of(&state, &user, &uri).await?;
    let mut txn = state.db.begin_readonly().await?;
    let row = find_session(&mut txn, &name, &owner.access_key, false).await?;
    txn.commit().await?;
    let mut out = Vec::new();
    for item in row
        .service_ports
        .as_ref()
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
    {
        let mut app = json!({
            "name": item.get("name").cloned().unwrap_or(Value::Null),
            "protocol": item.get("protocol").cloned().unwrap_or(Value::Null),
            "ports": item.get("container_ports").or_else(|| item.get("ports")).cloned().unwrap_or(json!([])),
        });
        for k in ["url_template", "allowed_arguments", "allowed_envs"] {
            if let Some(v) = item.get(k) {
                app[k] = v.clone();
            }
        }
        out.push(app);
    }
    Ok(Json(Value::Array(out)))
}
