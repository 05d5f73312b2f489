//! The manager-facing API: JSON over HTTP, every request authenticated by the shared
//! secret in `X-BackendAI-Storage-Auth-Token`.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

use axum::extract::{FromRequest, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::de::DeserializeOwned;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::proto::*;
use crate::token::{TokenOp, Tokens};
use crate::volume::VolumeBackend;

/// Shared by both servers.
pub struct AppState {
    pub volumes: BTreeMap<String, Arc<dyn VolumeBackend>>,
    pub tokens: Tokens,
    pub secret: String,
    /// Public base URL of the client-facing API (tus `Location`).
    pub client_url: String,
    /// One lock per upload session: PATCHes of one upload must not interleave (they append
    /// to the same file at an offset they checked first); different uploads run in parallel.
    pub uploads: std::sync::Mutex<HashMap<Uuid, Arc<tokio::sync::Mutex<()>>>>,
}

impl AppState {
    pub fn volume(&self, name: &str) -> ApiResult<Arc<dyn VolumeBackend>> {
        self.volumes
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::no_such_volume(name))
    }

    pub fn upload_lock(&self, session: Uuid) -> Arc<tokio::sync::Mutex<()>> {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.entry(session).or_default().clone()
    }

    pub fn forget_upload(&self, session: Uuid) {
        let mut map = self.uploads.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&session);
    }
}

/// JSON body whose rejection is our problem+json 400, not axum's plain text.
pub struct JsonReq<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for JsonReq<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::Bytes::from_request(req, state)
            .await
            .map_err(|e| ApiError::invalid_params(e.body_text()))?;
        serde_json::from_slice(&bytes)
            .map(JsonReq)
            .map_err(|e| ApiError::invalid_params(format!("invalid request body: {e}")))
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(State(st): State<Arc<AppState>>, req: Request, next: Next) -> Response {
    let ok = req
        .headers()
        .get(AUTH_HEADER)
        .map(|v| constant_time_eq(v.as_bytes(), st.secret.as_bytes()))
        .unwrap_or(false);
    if !ok {
        return ApiError::unauthorized("missing or wrong storage proxy auth token").into_response();
    }
    next.run(req).await
}

pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/", get(status))
        .route("/volumes", get(volumes))
        .route("/volume/usage", post(volume_usage))
        .route("/folder/create", post(folder_create))
        .route("/folder/delete", post(folder_delete))
        .route("/folder/clone", post(folder_clone))
        .route("/folder/usage", post(folder_usage))
        .route("/folder/mount", post(folder_mount))
        .route("/folder/file/mkdir", post(file_mkdir))
        .route("/folder/file/list", post(file_list))
        .route("/folder/file/rename", post(file_rename))
        .route("/folder/file/move", post(file_move))
        .route("/folder/file/delete", post(file_delete))
        .route("/folder/file/upload", post(file_upload))
        .route("/folder/file/download", post(file_download))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                problem::NOT_FOUND,
                "Not found",
                "no such storage proxy API",
            )
        })
        .layer(axum::middleware::from_fn_with_state(state.clone(), auth))
        // Outside the auth layer, like the API's `/metrics`: scrapers carry no secret, so
        // restrict this port at the network level (docs/DEPLOYMENT.md).
        .route("/metrics", get(metrics))
        .with_state(state)
}

type St = State<Arc<AppState>>;

/// `GET /metrics` (Prometheus text): capacity and use of every volume, read on scrape.
async fn metrics(State(st): St) -> Response {
    use bai_core::metrics::{gauge_vec, register, render};
    let capacity = gauge_vec(
        "bai_storage_volume_capacity_bytes",
        "Capacity of the filesystem holding each volume",
        &["volume"],
    );
    let used = gauge_vec(
        "bai_storage_volume_used_bytes",
        "Bytes used on the filesystem holding each volume",
        &["volume"],
    );
    for (name, v) in &st.volumes {
        match v.usage().await {
            Ok(u) => {
                let as_i64 = |b: u64| i64::try_from(b).unwrap_or(i64::MAX);
                capacity
                    .with_label_values(&[name.as_str()])
                    .set(as_i64(u.capacity_bytes));
                used.with_label_values(&[name.as_str()])
                    .set(as_i64(u.used_bytes));
            }
            Err(e) => tracing::warn!(volume = %name, error = %e, "volume usage unavailable"),
        }
    }
    // A fresh registry per scrape: the values are read now, nothing accumulates.
    let registry = bai_core::metrics::prometheus::Registry::new();
    register(&registry, capacity);
    register(&registry, used);
    (
        [(
            axum::http::header::CONTENT_TYPE,
            bai_core::metrics::CONTENT_TYPE,
        )],
        render(&registry),
    )
        .into_response()
}

async fn status() -> Json<serde_json::Value> {
    Json(serde_json::json!({"status": "ok", "type": "maintainer", "api_version": 1}))
}

async fn volumes(State(st): St) -> Json<VolumeList> {
    Json(VolumeList {
        volumes: st.volumes.values().map(|v| v.info()).collect(),
    })
}

async fn volume_usage(
    State(st): St,
    JsonReq(r): JsonReq<VolumeReq>,
) -> ApiResult<Json<VolumeUsage>> {
    Ok(Json(st.volume(&r.volume)?.usage().await?))
}

async fn folder_create(
    State(st): St,
    JsonReq(r): JsonReq<FolderCreateReq>,
) -> ApiResult<StatusCode> {
    let quota = r.options.and_then(|o| o.quota);
    st.volume(&r.volume)?.create_folder(r.vfid, quota).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn folder_delete(State(st): St, JsonReq(r): JsonReq<FolderReq>) -> ApiResult<StatusCode> {
    st.volume(&r.volume)?.delete_folder(r.vfid).await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn folder_clone(State(st): St, JsonReq(r): JsonReq<FolderCloneReq>) -> ApiResult<StatusCode> {
    st.volume(&r.volume)?
        .clone_folder(r.src_vfid, r.dst_vfid)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn folder_usage(
    State(st): St,
    JsonReq(r): JsonReq<FolderReq>,
) -> ApiResult<Json<FolderUsage>> {
    Ok(Json(st.volume(&r.volume)?.folder_usage(r.vfid).await?))
}

async fn folder_mount(State(st): St, JsonReq(r): JsonReq<FolderReq>) -> ApiResult<Json<MountInfo>> {
    let p = st.volume(&r.volume)?.mount_path(r.vfid).await?;
    Ok(Json(MountInfo {
        path: p.display().to_string(),
    }))
}

async fn file_mkdir(State(st): St, JsonReq(r): JsonReq<MkdirReq>) -> ApiResult<StatusCode> {
    st.volume(&r.volume)?
        .mkdir(r.vfid, &r.relpath, r.parents, r.exist_ok)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn file_list(State(st): St, JsonReq(r): JsonReq<ListReq>) -> ApiResult<Json<DirList>> {
    let items = st.volume(&r.volume)?.list(r.vfid, &r.relpath).await?;
    Ok(Json(DirList { items }))
}

async fn file_rename(State(st): St, JsonReq(r): JsonReq<RenameReq>) -> ApiResult<StatusCode> {
    st.volume(&r.volume)?
        .rename(r.vfid, &r.relpath, &r.new_name, r.is_dir)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn file_move(State(st): St, JsonReq(r): JsonReq<MoveReq>) -> ApiResult<StatusCode> {
    st.volume(&r.volume)?
        .move_file(r.vfid, &r.src_relpath, &r.dst_relpath)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn file_delete(State(st): St, JsonReq(r): JsonReq<DeleteFilesReq>) -> ApiResult<StatusCode> {
    st.volume(&r.volume)?
        .delete_files(r.vfid, &r.relpaths, r.recursive)
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

async fn file_upload(State(st): St, JsonReq(r): JsonReq<UploadReq>) -> ApiResult<Json<TokenResp>> {
    let vol = st.volume(&r.volume)?;
    vol.prepare_upload(r.vfid, &r.relpath, r.size).await?;
    let relpath = crate::path::normalize(&r.relpath)?.display().to_string();
    let token = st
        .tokens
        .issue(TokenOp::Upload, &r.volume, r.vfid, &relpath, r.size, false)?;
    Ok(Json(TokenResp { token }))
}

async fn file_download(
    State(st): St,
    JsonReq(r): JsonReq<DownloadReq>,
) -> ApiResult<Json<TokenResp>> {
    let vol = st.volume(&r.volume)?;
    // Fail early (404, bad path) instead of handing out a token that cannot work.
    let target = vol.open_download(r.vfid, &r.relpath).await?;
    drop(target);
    let relpath = crate::path::normalize(&r.relpath)?.display().to_string();
    let token = st
        .tokens
        .issue(TokenOp::Download, &r.volume, r.vfid, &relpath, 0, r.archive)?;
    Ok(Json(TokenResp { token }))
}
