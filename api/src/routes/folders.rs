//! `/folders` (api-rest.md §5 and errata #8): virtual folders.
//!
//! Writes to the database (create, delete, rename, options, invitations, shares, clone)
//! are `Command::Vfolder` commands; the worker checks every rule again in its transaction.
//! Reads (list, info, files) and file operations that change no database state (mkdir,
//! rename-file, delete-files, upload/download tokens) check access in a read-only
//! transaction and call the folder's storage proxy directly.

use std::collections::BTreeSet;

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use bai_core::vfolder::{self as vf, Caller, Entry, Perm};
use bai_events::{Command, VfolderCommand, VfolderOp};
use bai_storage::client::StorageError;
use bai_storage::registry::{Proxy, StorageProxies};

use crate::auth::{Admin, Auth, AuthUser, SuperAdmin};
use crate::commands::{self, ReqId};
use crate::error::{ApiError, ApiResult};
use crate::params::{de, Params};
use crate::routes::manager::ensure_not_frozen;
use crate::state::AppState;

// ------------------------------------------------------------------ helpers

pub fn caller(u: &AuthUser) -> Caller {
    Caller {
        user_uuid: u.user_uuid,
        email: u.email.clone(),
        access_key: u.access_key.clone(),
        role: u.role.as_str().to_string(),
        is_admin: u.is_admin,
        domain_name: u.domain_name.clone(),
        resource_policy: u.resource_policy.clone(),
    }
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::invalid_api_params().with_msg(msg)
}

pub fn vfolder_not_found() -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "vfolder-not-found",
        "No such virtual folder.",
    )
}

fn operation_failed() -> ApiError {
    ApiError::new(
        StatusCode::BAD_REQUEST,
        "vfolder-operation-failed",
        "Virtual folder operation has failed.",
    )
}

/// A storage-proxy failure as the client sees it: 400 `vfolder-operation-failed` with the
/// proxy's message (bad paths, missing files, quota), 503 when the proxy is unreachable.
fn proxy_err(e: StorageError) -> ApiError {
    match e {
        StorageError::Proxy { .. } => operation_failed().with_msg(e.message()),
        StorageError::UnknownHost(h) => {
            operation_failed().with_msg(format!("Unknown storage host: {h}"))
        }
        StorageError::Unreachable { .. }
        | StorageError::BadResponse { .. }
        | StorageError::Discovery(_) => {
            tracing::warn!(error = %e, "storage proxy unreachable");
            ApiError::service_unavailable().with_msg("The storage proxy is unavailable.")
        }
    }
}

fn etcd_err(e: anyhow::Error) -> ApiError {
    ApiError::internal_from(format!("etcd: {e:#}"))
}

fn proxies(state: &AppState) -> StorageProxies {
    StorageProxies::shared(&state.etcd)
}

async fn types(state: &AppState) -> ApiResult<Vec<String>> {
    vf::allowed_types(&state.etcd).await.map_err(etcd_err)
}

/// The folder `name` the caller may use with at least `need` (perm-X), else 404.
async fn require(state: &AppState, c: &Caller, name: &str, need: Perm) -> ApiResult<Entry> {
    let types = types(state).await?;
    let mut txn = state.db.begin_readonly().await?;
    let e = vf::find_with_perm(&mut txn, c, &types, name, need).await?;
    txn.commit().await?;
    e.ok_or_else(|| vfolder_not_found().with_msg("Your operation may be permission denied."))
}

async fn proxy_of(state: &AppState, e: &Entry) -> ApiResult<(std::sync::Arc<Proxy>, String)> {
    proxies(state).for_host(&e.host).await.map_err(proxy_err)
}

async fn send(state: &AppState, req_id: &ReqId, c: Caller, op: VfolderOp) -> ApiResult<Value> {
    let cmd = Command::Vfolder(Box::new(VfolderCommand { caller: c, op }));
    match commands::send(state, req_id, cmd).await? {
        Some(v) => Ok(v),
        None => Err(ApiError::service_unavailable()
            .with_msg("The operation is queued but did not finish in time.")),
    }
}

fn created_empty() -> Response {
    (StatusCode::CREATED, "").into_response()
}

fn check_perm(p: &str) -> ApiResult<String> {
    Perm::parse(p)
        .map(|p| p.as_str().to_string())
        .ok_or_else(|| invalid(format!("Invalid permission: {p}")))
}

fn check_usage_mode(m: &str) -> ApiResult<String> {
    match m {
        "general" | "model" | "data" => Ok(m.to_string()),
        _ => Err(invalid(format!("Invalid usage mode: {m}"))),
    }
}

fn check_name(name: &str) -> ApiResult<()> {
    if vf::RESERVED_NAMES.contains(&name) {
        return Err(invalid(format!(
            "{name} is reserved for internal operations."
        )));
    }
    if !vf::valid_name(name) {
        return Err(invalid("Input validation error")
            .with_data(json!({"name": "value is not a valid slug"})));
    }
    Ok(())
}

/// A quota as a byte count: a number or a binary-size string (`10g`); `0` (what the
/// client sends by default) means no quota.
fn parse_quota(v: &Value) -> ApiResult<Option<i64>> {
    let q = match v {
        Value::Null => Ok(None),
        Value::Number(n) => n
            .as_i64()
            .map(Some)
            .ok_or_else(|| invalid("quota must be a byte count")),
        Value::String(s) => {
            let d = bai_core::slots::parse_binary_size(s).map_err(invalid)?;
            use rust_decimal::prelude::ToPrimitive;
            d.to_i64()
                .map(Some)
                .ok_or_else(|| invalid("quota is out of range"))
        }
        _ => Err(invalid("quota must be a byte count")),
    }?;
    Ok(q.filter(|q| *q > 0))
}

fn default_perm() -> String {
    "rw".into()
}
fn default_usage() -> String {
    "general".into()
}
fn default_true() -> bool {
    true
}

// ------------------------------------------------------------------ create / list / delete

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    name: String,
    #[serde(default)]
    host: Option<String>,
    #[serde(default = "default_usage")]
    usage_mode: String,
    #[serde(default = "default_perm")]
    permission: String,
    #[serde(default, alias = "unmanagedPath")]
    unmanaged_path: Option<String>,
    #[serde(default, alias = "groupId", alias = "group_id")]
    group: Option<String>,
    #[serde(default)]
    quota: Value,
    /// A strict JSON boolean in the original (errata §2.5).
    #[serde(default)]
    cloneable: bool,
}

async fn default_host(state: &AppState) -> ApiResult<String> {
    proxies(state)
        .default_host()
        .await
        .map_err(etcd_err)?
        .ok_or_else(|| {
            invalid("You must specify the vfolder host because the default host is not configured.")
        })
}

/// `POST /folders` → 201 with the new folder.
pub async fn create(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<CreateParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    check_name(&p.name)?;
    let usage_mode = check_usage_mode(&p.usage_mode)?;
    let permission = check_perm(&p.permission)?;
    let quota = parse_quota(&p.quota)?;
    if p.unmanaged_path.is_some() && !user.is_admin {
        return Err(ApiError::forbidden().with_msg("Insufficient permission"));
    }
    if p.name.starts_with('.') && p.name != ".local" && p.group.is_some() {
        return Err(invalid("dot-prefixed vfolders cannot be a group folder."));
    }
    let host = match p.host.filter(|h| !h.is_empty()) {
        Some(h) => h,
        None => default_host(&state).await?,
    };
    let op = VfolderOp::Create {
        name: p.name,
        host,
        usage_mode,
        permission,
        unmanaged_path: p.unmanaged_path,
        group: p.group,
        quota,
        cloneable: p.cloneable,
    };
    let v = send(&state, &req_id, caller(&user), op).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default, deserialize_with = "de::tobool")]
    all: bool,
    #[serde(default, alias = "groupId")]
    group_id: Option<String>,
}

fn list_item(e: &Entry) -> Value {
    json!({
        "name": e.name,
        "id": e.id.simple().to_string(),
        "host": e.host,
        "usage_mode": e.usage_mode,
        "created_at": vf::py_datetime(e.created_at),
        "is_owner": e.is_owner,
        "permission": e.permission,
        "user": e.user.map(|u| u.to_string()),
        "group": e.group.map(|g| g.to_string()),
        "creator": e.creator,
        "user_email": e.user_email,
        "group_name": e.group_name,
        "ownership_type": e.ownership_type,
        "type": e.ownership_type,
        "cloneable": e.cloneable,
    })
}

/// `GET /folders` → the accessible folders (`all`: every folder, superadmin only).
pub async fn list(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<ListParams>,
) -> ApiResult<Json<Value>> {
    let c = caller(&user);
    let group_id = match p.group_id.as_deref().filter(|g| !g.is_empty()) {
        None => None,
        Some(g) => Some(Uuid::parse_str(g).map_err(|_| {
            invalid("Input validation error")
                .with_data(json!({"group_id": "value is not a valid UUID"}))
        })?),
    };
    let types = types(&state).await?;
    let mut txn = state.db.begin_readonly().await?;
    let entries: Vec<Entry> = if p.all && user.is_superadmin() {
        sqlx::query_as(
            "SELECT v.id, v.name, v.host, v.usage_mode::text AS usage_mode, \
             v.permission::text AS vf_permission, COALESCE(v.permission::text, 'rw') AS permission, \
             v.created_at, v.creator, v.unmanaged_path, v.ownership_type::text AS ownership_type, \
             v.\"user\", v.\"group\", v.cloneable, COALESCE(v.\"user\" = $1, false) AS is_owner, \
             u.email AS user_email, g.name AS group_name \
             FROM vfolders v LEFT JOIN users u ON u.uuid = v.\"user\" \
             LEFT JOIN groups g ON g.id = v.\"group\" ORDER BY v.created_at",
        )
        .bind(user.user_uuid)
        .fetch_all(&mut *txn)
        .await?
    } else {
        vf::accessible(&mut txn, &c, &types, None).await?
    };
    txn.commit().await?;
    let items: Vec<Value> = entries
        .iter()
        // User folders are listed even when a group is given (as the original).
        .filter(|e| group_id.is_none() || e.user.is_some() || e.group == group_id)
        .map(list_item)
        .collect();
    Ok(Json(Value::Array(items)))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IdParams {
    id: String,
}

/// `DELETE /folders` `{"id"}` (superadmin) → 204.
pub async fn delete_by_id(
    State(state): State<AppState>,
    SuperAdmin(user): SuperAdmin,
    req_id: ReqId,
    Params(p): Params<IdParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    let id = Uuid::parse_str(&p.id).map_err(|_| invalid("Invalid vfolder id"))?;
    send(&state, &req_id, caller(&user), VfolderOp::DeleteById { id }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `DELETE /folders/{name}` → 204 (owner or `wd`; unknown name: 400, errata §2.2).
pub async fn delete(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(name): Path<String>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    send(&state, &req_id, caller(&user), VfolderOp::Delete { name }).await?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

/// `GET /folders/{name}` → info with usage from the proxy.
pub async fn info(
    State(state): State<AppState>,
    Auth(user): Auth,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    let e = require(&state, &caller(&user), &name, Perm::Ro).await?;
    let (files, used) = if e.unmanaged_path.as_deref().is_some_and(|p| !p.is_empty()) {
        (0, 0)
    } else {
        let (p, volume) = proxy_of(&state, &e).await?;
        let u = p
            .client()
            .folder_usage(&volume, e.id)
            .await
            .map_err(proxy_err)?;
        (u.file_count, u.used_bytes)
    };
    let created = vf::py_datetime(e.created_at);
    // `user`/`group` are Python's str() of nullable UUIDs: "None" when absent.
    let s = |u: Option<Uuid>| u.map(|u| u.to_string()).unwrap_or_else(|| "None".into());
    Ok(Json(json!({
        "name": e.name,
        "id": e.id.simple().to_string(),
        "host": e.host,
        "numFiles": files,
        "num_files": files,
        "used_bytes": used,
        "created": created,
        "created_at": created,
        "last_used": created,
        "user": s(e.user),
        "group": s(e.group),
        "type": if e.user.is_some() { "user" } else { "group" },
        "is_owner": e.is_owner,
        "permission": e.permission,
        "usage_mode": e.usage_mode,
        "cloneable": e.cloneable,
    })))
}

// ------------------------------------------------------------------ hosts and types

#[derive(Debug, Deserialize)]
pub struct HostsParams {
    #[serde(default, alias = "groupId")]
    group_id: Option<String>,
}

/// `GET /folders/_/hosts` → `{"default", "allowed"}` (allowed ∩ hosts the proxies serve).
pub async fn hosts(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<HostsParams>,
) -> ApiResult<Json<Value>> {
    let c = caller(&user);
    let gid = p.group_id.as_deref().and_then(|g| Uuid::parse_str(g).ok());
    let mut txn = state.db.begin_readonly().await?;
    let allowed = vf::allowed_hosts(&mut txn, &c, gid).await?;
    txn.commit().await?;
    let store = proxies(&state);
    let served: BTreeSet<String> = store
        .all_volumes()
        .await
        .map_err(etcd_err)?
        .into_iter()
        .map(|(h, _, _)| h)
        .collect();
    let allowed: Vec<String> = allowed.into_iter().filter(|h| served.contains(h)).collect();
    let default = store
        .default_host()
        .await
        .map_err(etcd_err)?
        .filter(|d| allowed.contains(d));
    Ok(Json(json!({ "default": default, "allowed": allowed })))
}

/// `GET /folders/_/all-hosts` (superadmin) → every host of every proxy.
pub async fn all_hosts(
    State(state): State<AppState>,
    SuperAdmin(_): SuperAdmin,
) -> ApiResult<Json<Value>> {
    let store = proxies(&state);
    let all: BTreeSet<String> = store
        .all_volumes()
        .await
        .map_err(etcd_err)?
        .into_iter()
        .map(|(h, _, _)| h)
        .collect();
    let default = store
        .default_host()
        .await
        .map_err(etcd_err)?
        .filter(|d| all.contains(d));
    Ok(Json(json!({ "default": default, "allowed": all })))
}

/// `GET /folders/_/allowed-types` → etcd `volumes/_types` (default `["user"]`).
pub async fn allowed_types(State(state): State<AppState>, Auth(_): Auth) -> ApiResult<Json<Value>> {
    Ok(Json(json!(types(&state).await?)))
}

// ------------------------------------------------------------------ rename / options

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameParams {
    new_name: String,
}

/// `POST /folders/{name}/rename` → 201, empty body.
pub async fn rename(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(name): Path<String>,
    Params(p): Params<RenameParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    check_name(&p.new_name)?;
    let op = VfolderOp::Rename {
        name,
        new_name: p.new_name,
    };
    send(&state, &req_id, caller(&user), op).await?;
    Ok(created_empty())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptionsParams {
    #[serde(default)]
    cloneable: Option<bool>,
    #[serde(default)]
    permission: Option<String>,
}

/// `POST /folders/{name}/update-options` → 201, empty body.
pub async fn update_options(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(name): Path<String>,
    Params(p): Params<OptionsParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    let permission = p.permission.as_deref().map(check_perm).transpose()?;
    let op = VfolderOp::UpdateOptions {
        name,
        cloneable: p.cloneable,
        permission,
    };
    send(&state, &req_id, caller(&user), op).await?;
    Ok(created_empty())
}

// ------------------------------------------------------------------ files

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MkdirParams {
    path: String,
    #[serde(default = "default_true", deserialize_with = "de::tobool")]
    parents: bool,
    #[serde(default, deserialize_with = "de::tobool")]
    exist_ok: bool,
}

/// `POST /folders/{name}/mkdir` (perm-rw) → 201, empty body.
pub async fn mkdir(
    State(state): State<AppState>,
    Auth(user): Auth,
    Path(name): Path<String>,
    Params(p): Params<MkdirParams>,
) -> ApiResult<Response> {
    let e = require(&state, &caller(&user), &name, Perm::Rw).await?;
    let (px, volume) = proxy_of(&state, &e).await?;
    px.client()
        .mkdir(&volume, e.id, &p.path, p.parents, p.exist_ok)
        .await
        .map_err(proxy_err)?;
    Ok(created_empty())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FilesParams {
    #[serde(default)]
    path: Option<String>,
}

/// Seconds since the epoch, as Python's `stat().st_mtime` (the legacy listing's unit).
fn epoch(t: &chrono::DateTime<chrono::Utc>) -> f64 {
    t.timestamp_micros() as f64 / 1e6
}

/// `GET /folders/{name}/files` (perm-ro) → `{"items", "files"}` (`files` is the legacy JSON
/// string the CLI's `vfolder ls` reads).
pub async fn files(
    State(state): State<AppState>,
    Auth(user): Auth,
    Path(name): Path<String>,
    Params(p): Params<FilesParams>,
) -> ApiResult<Json<Value>> {
    let e = require(&state, &caller(&user), &name, Perm::Ro).await?;
    let (px, volume) = proxy_of(&state, &e).await?;
    let path = p.path.unwrap_or_default();
    let entries = px
        .client()
        .list_files(&volume, e.id, &path)
        .await
        .map_err(proxy_err)?;
    let items: Vec<Value> = entries
        .iter()
        .map(|i| {
            let octal = format!("{:o}", i.stat.mode);
            let mode = &octal[octal.len().saturating_sub(3)..];
            json!({
                "name": i.name,
                "type": i.kind,
                "size": i.stat.size,
                "mode": mode,
                "created": i.stat.created,
                "modified": i.stat.modified,
            })
        })
        .collect();
    let legacy: Vec<Value> = entries
        .iter()
        .map(|i| {
            json!({
                "filename": i.name,
                "size": i.stat.size,
                "mode": vf::filemode(i.stat.mode, i.kind.as_str()),
                "ctime": epoch(&i.stat.created),
                "atime": 0,
                "mtime": epoch(&i.stat.modified),
            })
        })
        .collect();
    Ok(Json(json!({
        "items": items,
        "files": Value::Array(legacy).to_string(),
    })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RenameFileParams {
    target_path: String,
    new_name: String,
    /// Required by the 21.03 original, which no 21.3.x client sends: default false (#397).
    #[serde(default, deserialize_with = "de::tobool")]
    is_dir: bool,
}

/// `POST /folders/{name}/rename-file` (perm-rw) → 200 `{}`.
pub async fn rename_file(
    State(state): State<AppState>,
    Auth(user): Auth,
    Path(name): Path<String>,
    Params(p): Params<RenameFileParams>,
) -> ApiResult<Json<Value>> {
    let e = require(&state, &caller(&user), &name, Perm::Rw).await?;
    let (px, volume) = proxy_of(&state, &e).await?;
    px.client()
        .rename_file(&volume, e.id, &p.target_path, &p.new_name, p.is_dir)
        .await
        .map_err(proxy_err)?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteFilesParams {
    files: Vec<String>,
    #[serde(default, deserialize_with = "de::tobool")]
    recursive: bool,
}

/// `DELETE /folders/{name}/delete-files` (perm-rw) → 200 `{}`.
pub async fn delete_files(
    State(state): State<AppState>,
    Auth(user): Auth,
    Path(name): Path<String>,
    Params(p): Params<DeleteFilesParams>,
) -> ApiResult<Json<Value>> {
    let e = require(&state, &caller(&user), &name, Perm::Rw).await?;
    let (px, volume) = proxy_of(&state, &e).await?;
    px.client()
        .delete_files(&volume, e.id, &p.files, p.recursive)
        .await
        .map_err(proxy_err)?;
    Ok(Json(json!({})))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UploadParams {
    path: String,
    #[serde(deserialize_with = "de::int")]
    size: i64,
}

/// `POST /folders/{name}/request-upload` (perm-rw) → `{"token", "url"}` (tus endpoint).
pub async fn request_upload(
    State(state): State<AppState>,
    Auth(user): Auth,
    Path(name): Path<String>,
    Params(p): Params<UploadParams>,
) -> ApiResult<Json<Value>> {
    let e = require(&state, &caller(&user), &name, Perm::Rw).await?;
    // The proxy's body takes an unsigned size; it refused negative ones as a bad body.
    let size = u64::try_from(p.size)
        .map_err(|_| operation_failed().with_msg("size must not be negative"))?;
    let (px, volume) = proxy_of(&state, &e).await?;
    let token = px
        .client()
        .create_upload_token(&volume, e.id, &p.path, size)
        .await
        .map_err(proxy_err)?;
    Ok(Json(json!({ "token": token, "url": px.info.upload_url() })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DownloadParams {
    #[serde(alias = "file")]
    path: String,
    #[serde(default, deserialize_with = "de::tobool")]
    archive: bool,
}

/// `POST /folders/{name}/request-download` (perm-ro) → `{"token", "url"}`.
pub async fn request_download(
    State(state): State<AppState>,
    Auth(user): Auth,
    Path(name): Path<String>,
    Params(p): Params<DownloadParams>,
) -> ApiResult<Json<Value>> {
    let e = require(&state, &caller(&user), &name, Perm::Ro).await?;
    let (px, volume) = proxy_of(&state, &e).await?;
    let token = px
        .client()
        .create_download_token(&volume, e.id, &p.path, p.archive)
        .await
        .map_err(proxy_err)?;
    Ok(Json(
        json!({ "token": token, "url": px.info.download_url() }),
    ))
}

// ------------------------------------------------------------------ invitations

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InviteParams {
    #[serde(default = "default_perm", alias = "permission")]
    perm: String,
    #[serde(alias = "user_ids", alias = "userIDs")]
    emails: Vec<String>,
}

/// `POST /folders/{name}/invite` → 201 `{"invited_ids"}`.
pub async fn invite(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(name): Path<String>,
    Params(p): Params<InviteParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    let op = VfolderOp::Invite {
        name,
        permission: check_perm(&p.perm)?,
        emails: p.emails,
    };
    let v = send(&state, &req_id, caller(&user), op).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

/// Invitations where `column` (`invitee` or `inviter`) is the caller, pending ones only.
async fn invitations(state: &AppState, email: &str, column: &str) -> ApiResult<Json<Value>> {
    let mut txn = state.db.begin_readonly().await?;
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        Uuid,
        Option<String>,
        String,
        Option<String>,
        Option<String>,
        Option<chrono::DateTime<chrono::Utc>>,
        Option<chrono::DateTime<chrono::Utc>>,
        Uuid,
        String,
    )> = sqlx::query_as(&format!(
        "SELECT i.id, i.inviter, i.invitee, i.permission::text, i.state::text, i.created_at, \
         i.modified_at, i.vfolder, v.name FROM vfolder_invitations i \
         JOIN vfolders v ON v.id = i.vfolder WHERE i.{column} = $1 AND i.state = 'pending' \
         ORDER BY i.created_at"
    ))
    .bind(email)
    .fetch_all(&mut *txn)
    .await?;
    txn.commit().await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            // Dashed UUIDs here (errata #8): the client passes `id` back as `inv_id`.
            json!({
                "id": r.0.to_string(),
                "inviter": r.1,
                "invitee": r.2,
                "perm": r.3,
                "state": r.4,
                "created_at": vf::py_datetime(r.5),
                "modified_at": vf::py_datetime(r.6),
                "vfolder_id": r.7.to_string(),
                "vfolder_name": r.8,
            })
        })
        .collect();
    Ok(Json(json!({ "invitations": items })))
}

/// `GET /folders/invitations/list` → pending invitations to me.
pub async fn list_invitations(
    State(state): State<AppState>,
    Auth(user): Auth,
) -> ApiResult<Json<Value>> {
    invitations(&state, &user.email, "invitee").await
}

/// `GET /folders/invitations/list-sent` → pending invitations I sent.
pub async fn list_sent_invitations(
    State(state): State<AppState>,
    Auth(user): Auth,
) -> ApiResult<Json<Value>> {
    invitations(&state, &user.email, "inviter").await
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PermParams {
    #[serde(alias = "permission")]
    perm: String,
}

fn parse_inv(s: &str) -> ApiResult<Uuid> {
    Uuid::parse_str(s).map_err(|_| ApiError::not_found().with_msg("No such vfolder invitation"))
}

/// `POST /folders/invitations/update/{inv_id}` → `{"msg"}`.
pub async fn update_invitation(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(inv_id): Path<String>,
    Params(p): Params<PermParams>,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let op = VfolderOp::UpdateInvitation {
        inv_id: parse_inv(&inv_id)?,
        permission: check_perm(&p.perm)?,
    };
    Ok(Json(send(&state, &req_id, caller(&user), op).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InvIdParams {
    inv_id: String,
}

/// `POST /folders/invitations/accept` → `{}`.
pub async fn accept_invitation(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<InvIdParams>,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let op = VfolderOp::AcceptInvitation {
        inv_id: parse_inv(&p.inv_id)?,
    };
    Ok(Json(send(&state, &req_id, caller(&user), op).await?))
}

/// `DELETE /folders/invitations/delete` → `{}` (inviter: canceled; invitee: rejected).
pub async fn delete_invitation(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<InvIdParams>,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let op = VfolderOp::DeleteInvitation {
        inv_id: parse_inv(&p.inv_id)?,
    };
    Ok(Json(send(&state, &req_id, caller(&user), op).await?))
}

/// `POST /folders/{name}/leave` → `{"msg"}`.
pub async fn leave(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(name): Path<String>,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    Ok(Json(
        send(&state, &req_id, caller(&user), VfolderOp::Leave { name }).await?,
    ))
}

// ------------------------------------------------------------------ group shares

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShareParams {
    #[serde(default = "default_perm", alias = "perm")]
    permission: String,
    emails: Vec<String>,
}

/// `POST /folders/{name}/share` (admin; group folders) → 201 `{"shared_emails"}`.
pub async fn share(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Path(name): Path<String>,
    Params(p): Params<ShareParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    let op = VfolderOp::Share {
        name,
        permission: check_perm(&p.permission)?,
        emails: p.emails,
    };
    let v = send(&state, &req_id, caller(&user), op).await?;
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnshareParams {
    emails: Vec<String>,
}

/// `DELETE /folders/{name}/unshare` (admin) → `{"unshared_emails"}`.
pub async fn unshare(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Path(name): Path<String>,
    Params(p): Params<UnshareParams>,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let op = VfolderOp::Unshare {
        name,
        emails: p.emails,
    };
    Ok(Json(send(&state, &req_id, caller(&user), op).await?))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SharedListParams {
    #[serde(default, alias = "vfolderId")]
    vfolder_id: Option<String>,
}

/// `GET /folders/_/shared` → `{"shared": [...]}`: superadmins see every share; others the
/// shares of folders they own, and domain admins those of their domain's group folders.
pub async fn list_shared(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<SharedListParams>,
) -> ApiResult<Json<Value>> {
    let vfid = match p.vfolder_id.as_deref().filter(|s| !s.is_empty()) {
        None => None,
        Some(s) => Some(Uuid::parse_str(s).map_err(|_| invalid("Invalid vfolder id"))?),
    };
    let mut txn = state.db.begin_readonly().await?;
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        Option<String>,
        Uuid,
        String,
        Option<Uuid>,
        Option<Uuid>,
        Option<String>,
        Uuid,
        String,
    )> = sqlx::query_as(
        "SELECT p.permission::text, p.vfolder, v.name, v.\"group\", v.\"user\", \
             COALESCE(g.name, o.email), u.uuid, u.email \
             FROM vfolder_permissions p JOIN vfolders v ON v.id = p.vfolder \
             JOIN users u ON u.uuid = p.\"user\" LEFT JOIN users o ON o.uuid = v.\"user\" \
             LEFT JOIN groups g ON g.id = v.\"group\" \
             WHERE ($1::uuid IS NULL OR v.id = $1) \
             AND ($2 OR v.\"user\" = $3 OR ($4 AND g.domain_name = $5)) \
             ORDER BY v.name, u.email",
    )
    .bind(vfid)
    .bind(user.is_superadmin())
    .bind(user.user_uuid)
    .bind(user.is_admin)
    .bind(&user.domain_name)
    .fetch_all(&mut *txn)
    .await?;
    txn.commit().await?;
    let shared: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let owner = r.3.or(r.4).map(|u| u.to_string());
            json!({
                "vfolder_id": r.1.to_string(),
                "vfolder_name": r.2,
                "shared_by": r.5,
                "owner": owner,
                "type": if r.3.is_some() { "project" } else { "user" },
                "shared_to": {"uuid": r.6.to_string(), "email": r.7},
                "perm": r.0,
            })
        })
        .collect();
    Ok(Json(json!({ "shared": shared })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetSharedParams {
    vfolder: Uuid,
    user: Uuid,
    #[serde(default, alias = "permission")]
    perm: Option<String>,
}

/// `POST /folders/_/shared` → `{"msg"}` (`perm: null` removes the share).
pub async fn set_shared(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Params(p): Params<SetSharedParams>,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let op = VfolderOp::SetShared {
        vfolder: p.vfolder,
        user: p.user,
        permission: p.perm.as_deref().map(check_perm).transpose()?,
    };
    Ok(Json(send(&state, &req_id, caller(&user), op).await?))
}

// ------------------------------------------------------------------ clone

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloneParams {
    target_name: String,
    #[serde(default)]
    target_host: Option<String>,
    #[serde(default = "default_usage")]
    usage_mode: String,
    #[serde(default = "default_perm")]
    permission: String,
    #[serde(default)]
    cloneable: bool,
}

/// `POST /folders/{name}/clone` → 201 like create, plus `bgtask_id`: the copy runs as a
/// background task (21.03.31 behaviour, followed by the client ≥ 21.3.11).
pub async fn clone(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    Path(name): Path<String>,
    Params(p): Params<CloneParams>,
) -> ApiResult<Response> {
    ensure_not_frozen(&state).await?;
    check_name(&p.target_name)?;
    let target_host = match p.target_host.filter(|h| !h.is_empty()) {
        Some(h) => h,
        None => default_host(&state).await?,
    };
    let op = VfolderOp::Clone {
        name,
        target_name: p.target_name,
        target_host: target_host.clone(),
        usage_mode: check_usage_mode(&p.usage_mode)?,
        permission: check_perm(&p.permission)?,
        cloneable: p.cloneable,
    };
    let mut v = send(&state, &req_id, caller(&user), op).await?;
    let src = v
        .as_object_mut()
        .and_then(|o| o.remove("source_id"))
        .unwrap_or(Value::Null);
    if let Some(o) = v.as_object_mut() {
        o.remove("source_host");
    }
    let dst = v["id"]
        .as_str()
        .and_then(|s| Uuid::parse_str(s).ok())
        .ok_or_else(|| ApiError::internal_from("clone reply without the new folder id"))?;
    let task_id = crate::routes::events::start_background_task(
        &state,
        &req_id,
        bai_events::vfolder::KIND_CLONE,
        json!({ "host": target_host, "src": src, "dst": dst }),
    )
    .await?;
    v["bgtask_id"] = json!(task_id.to_string());
    Ok((StatusCode::CREATED, Json(v)).into_response())
}

// ------------------------------------------------------------------ host administration

/// `GET /folders/_/perf-metric`, `GET /folders/_/fstab`, `GET|POST|DELETE /folders/_/mounts`
/// (superadmin): host-level administration of the original's agents and storage proxies
/// (fstab editing, mounting file systems). Our storage proxy has no such routes and process
/// agents mount nothing, so these answer 503 `not-implemented` rather than pretend.
pub async fn host_admin_not_implemented(SuperAdmin(_): SuperAdmin) -> ApiError {
    ApiError::not_implemented()
        .with_msg("Host mount/fstab administration and performance metrics are not supported by this storage proxy.")
}
