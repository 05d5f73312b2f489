//! Dotfiles and the bootstrap script (api-rest.md §6.7): `/user-config/dotfiles`,
//! `/domain-config/dotfiles`, `/group-config/dotfiles` and `/user-config/bootstrap-script`.
//!
//! Dotfiles are stored as the original stores them (a msgpack list of `{path, perm, data}`
//! in `keypairs|domains|groups.dotfiles`), at most 100 per owner and 64 KiB packed. They
//! are delivered into every new kernel through the kernel config's
//! `internal_data.dotfiles` (domain < group < user on the same path), and the agent writes
//! them under the kernel's work directory with their mode before the kernel starts.
//!
//! Paths: relative to `/home/work`, or absolute under `/home/work/`. The original also
//! accepted other absolute paths (written into the container's root); our kernels are
//! host processes, so such paths are refused (400) rather than written onto the host.

use std::collections::BTreeMap;

use axum::extract::State;
use axum::http::Uri;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};
use uuid::Uuid;

use bai_events::rest::{
    unpack_dotfiles, Dotfile, DotfileAction, DotfileOwner, RestOp, MAX_DOTFILE_BYTES,
};

use crate::auth::{owner_access_key_param, resolve_owner, Admin, Auth, AuthUser, UserRole};
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::routes::rest_cmd::{self, dotfile_creation_failed, dotfile_not_found};
use crate::state::AppState;

/// The original's `RESERVED_DOTFILES`.
const RESERVED_DOTFILES: &[&str] = &[
    ".terminfo",
    ".jupyter",
    ".ssh",
    ".ssh/authorized_keys",
    ".local",
    ".config",
];

/// The original's `RESERVED_VFOLDERS` (shared with vfolder name checks).
use bai_core::vfolder::RESERVED_NAMES as RESERVED_VFOLDERS;

/// `verify_vfolder_name`: reserved names and `^\.[a-z0-9]+rc$` / `^\.[a-z0-9]+_profile$`.
pub fn is_reserved_vfolder_name(name: &str) -> bool {
    if RESERVED_VFOLDERS.contains(&name) {
        return true;
    }
    let dotted_word = |s: &str| {
        s.strip_prefix('.').is_some_and(|w| {
            !w.is_empty()
                && w.bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        })
    };
    name.strip_suffix("rc").is_some_and(dotted_word)
        || name.strip_suffix("_profile").is_some_and(dotted_word)
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::invalid_api_params().with_msg(msg)
}

fn field(name: &str, msg: &str) -> ApiError {
    ApiError::invalid_api_params()
        .with_msg("Input validation error")
        .with_data(json!({ name: msg }))
}

/// Checks a dotfile's path, permission and size (the parts that need no row).
fn check_dotfile(path: &str, permission: &str, data: &str) -> ApiResult<()> {
    if data.len() > MAX_DOTFILE_BYTES {
        return Err(field(
            "data",
            &format!("String is longer than {MAX_DOTFILE_BYTES} characters"),
        ));
    }
    if !(permission.len() == 3 && permission.bytes().all(|b| (b'0'..=b'7').contains(&b))) {
        return Err(field("permission", "does not match pattern ^[0-7]{3}$"));
    }
    if RESERVED_DOTFILES.contains(&path) {
        return Err(invalid("dotfile path is reserved for internal operations."));
    }
    let rel = path.strip_prefix("/home/work/").unwrap_or(path);
    if rel.is_empty()
        || rel.starts_with('/')
        || rel.contains('\0')
        || rel.split('/').any(|s| s == ".." || s.is_empty())
    {
        return Err(invalid(
            "dotfile path must be a relative path or a path under /home/work/ without '..'.",
        ));
    }
    if RESERVED_DOTFILES.contains(&rel) {
        return Err(invalid("dotfile path is reserved for internal operations."));
    }
    Ok(())
}

/// The validated dotfile of a create or update request.
fn checked_dotfile(path: String, perm: String, data: String) -> ApiResult<Dotfile> {
    check_dotfile(&path, &perm, &data)?;
    Ok(Dotfile { path, perm, data })
}

fn listing(files: Vec<Dotfile>) -> Value {
    Value::Array(
        files
            .into_iter()
            .map(|f| json!({ "path": f.path, "permission": f.perm, "data": f.data }))
            .collect(),
    )
}

/// `GET` answer: the list, or the one file as `{path, perm, data}` (key `perm`, sic).
fn get_answer(files: Vec<Dotfile>, path: Option<String>) -> ApiResult<Json<Value>> {
    match path {
        None => Ok(Json(listing(files))),
        Some(p) => files
            .into_iter()
            .find(|f| f.path == p)
            .map(|f| Json(json!({ "path": f.path, "perm": f.perm, "data": f.data })))
            .ok_or_else(dotfile_not_found),
    }
}

async fn send_action(
    state: &AppState,
    req_id: &ReqId,
    user: &AuthUser,
    owner: DotfileOwner,
    action: DotfileAction,
) -> ApiResult<Json<Value>> {
    crate::routes::manager::ensure_not_frozen(state).await?;
    let r = rest_cmd::send(state, req_id, user, RestOp::Dotfile { owner, action }).await?;
    Ok(Json(r))
}

// ---------------------------------------------------------------- user

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WriteParams {
    pub data: String,
    pub path: String,
    pub permission: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PathParams {
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RequiredPath {
    pub path: String,
}

async fn user_owner(state: &AppState, user: &AuthUser, uri: &Uri) -> ApiResult<DotfileOwner> {
    let owner = resolve_owner(state, user, owner_access_key_param(uri).as_deref()).await?;
    Ok(DotfileOwner::User {
        access_key: owner.access_key,
        user_uuid: owner.user_uuid,
    })
}

pub async fn create_user_dotfile(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Params(p): Params<WriteParams>,
) -> ApiResult<Json<Value>> {
    write_user_dotfile(state, user, req_id, uri, p, DotfileAction::Create).await
}

pub async fn update_user_dotfile(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Params(p): Params<WriteParams>,
) -> ApiResult<Json<Value>> {
    write_user_dotfile(state, user, req_id, uri, p, DotfileAction::Update).await
}

async fn write_user_dotfile(
    state: AppState,
    user: AuthUser,
    req_id: ReqId,
    uri: Uri,
    p: WriteParams,
    action: fn(Dotfile) -> DotfileAction,
) -> ApiResult<Json<Value>> {
    let f = checked_dotfile(p.path, p.permission, p.data)?;
    let owner = user_owner(&state, &user, &uri).await?;
    send_action(&state, &req_id, &user, owner, action(f)).await
}

pub async fn delete_user_dotfile(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Params(p): Params<RequiredPath>,
) -> ApiResult<Json<Value>> {
    let owner = user_owner(&state, &user, &uri).await?;
    send_action(
        &state,
        &req_id,
        &user,
        owner,
        DotfileAction::Delete { path: p.path },
    )
    .await
}

async fn read_dotfiles(
    state: &AppState,
    sql: &str,
    key: Key<'_>,
) -> ApiResult<Option<Vec<Dotfile>>> {
    let mut txn = state.db.begin_readonly().await?;
    let q = sqlx::query_scalar::<_, Vec<u8>>(sql);
    let raw = match key {
        Key::Text(t) => q.bind(t.to_string()),
        Key::Uuid(u) => q.bind(u),
    }
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    Ok(raw.map(|r| unpack_dotfiles(&r)))
}

enum Key<'a> {
    Text(&'a str),
    Uuid(Uuid),
}

pub async fn get_user_dotfiles(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Params(p): Params<PathParams>,
) -> ApiResult<Json<Value>> {
    let DotfileOwner::User { access_key, .. } = user_owner(&state, &user, &uri).await? else {
        return Err(ApiError::internal());
    };
    let files = read_dotfiles(
        &state,
        "SELECT dotfiles FROM keypairs WHERE access_key = $1",
        Key::Text(&access_key),
    )
    .await?
    .unwrap_or_default();
    get_answer(files, p.path)
}

// ---------------------------------------------------------------- bootstrap script

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ScriptParams {
    #[serde(default)]
    pub script: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NoParams {}

pub async fn set_bootstrap_script(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Params(p): Params<ScriptParams>,
) -> ApiResult<Json<Value>> {
    if p.script.len() > MAX_DOTFILE_BYTES {
        return Err(dotfile_creation_failed().with_msg("Maximum bootstrap script length reached"));
    }
    crate::routes::manager::ensure_not_frozen(&state).await?;
    let owner = resolve_owner(&state, &user, owner_access_key_param(&uri).as_deref()).await?;
    rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::SetBootstrapScript {
            access_key: owner.access_key,
            script: p.script,
        },
    )
    .await?;
    Ok(Json(json!({})))
}

pub async fn get_bootstrap_script(
    State(state): State<AppState>,
    Auth(user): Auth,
    uri: Uri,
    Params(_p): Params<NoParams>,
) -> ApiResult<Json<Value>> {
    let owner = resolve_owner(&state, &user, owner_access_key_param(&uri).as_deref()).await?;
    let mut txn = state.db.begin_readonly().await?;
    let script: Option<String> =
        sqlx::query_scalar("SELECT bootstrap_script FROM keypairs WHERE access_key = $1")
            .bind(&owner.access_key)
            .fetch_optional(&mut *txn)
            .await?;
    txn.commit().await?;
    Ok(Json(json!(script.unwrap_or_default())))
}

// ---------------------------------------------------------------- domain

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainWrite {
    pub domain: String,
    pub data: String,
    pub path: String,
    pub permission: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainRead {
    pub domain: String,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DomainDelete {
    pub domain: String,
    pub path: String,
}

/// Domain admins act on their own domain only; superadmins on any.
fn check_domain_access(user: &AuthUser, domain: &str) -> ApiResult<()> {
    if user.is_superadmin() || user.domain_name == domain {
        Ok(())
    } else if user.is_admin {
        Err(ApiError::forbidden().with_msg("Admins cannot access dotfiles of other domains"))
    } else {
        Err(ApiError::forbidden().with_msg("Users cannot access dotfiles of other domains"))
    }
}

async fn domain_exists(state: &AppState, domain: &str) -> ApiResult<()> {
    let mut txn = state.db.begin_readonly().await?;
    let found: Option<String> = sqlx::query_scalar("SELECT name FROM domains WHERE name = $1")
        .bind(domain)
        .fetch_optional(&mut *txn)
        .await?;
    txn.commit().await?;
    found.map(|_| ()).ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "domain-not-found",
            "No such domain.",
        )
    })
}

pub async fn create_domain_dotfile(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Params(p): Params<DomainWrite>,
) -> ApiResult<Json<Value>> {
    write_domain_dotfile(state, user, req_id, p, DotfileAction::Create).await
}

pub async fn update_domain_dotfile(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Params(p): Params<DomainWrite>,
) -> ApiResult<Json<Value>> {
    write_domain_dotfile(state, user, req_id, p, DotfileAction::Update).await
}

async fn write_domain_dotfile(
    state: AppState,
    user: AuthUser,
    req_id: ReqId,
    p: DomainWrite,
    action: fn(Dotfile) -> DotfileAction,
) -> ApiResult<Json<Value>> {
    check_domain_access(&user, &p.domain)?;
    let f = checked_dotfile(p.path, p.permission, p.data)?;
    domain_exists(&state, &p.domain).await?;
    let owner = DotfileOwner::Domain { name: p.domain };
    send_action(&state, &req_id, &user, owner, action(f)).await
}

pub async fn delete_domain_dotfile(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Params(p): Params<DomainDelete>,
) -> ApiResult<Json<Value>> {
    check_domain_access(&user, &p.domain)?;
    domain_exists(&state, &p.domain).await?;
    let owner = DotfileOwner::Domain { name: p.domain };
    send_action(
        &state,
        &req_id,
        &user,
        owner,
        DotfileAction::Delete { path: p.path },
    )
    .await
}

pub async fn get_domain_dotfiles(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<DomainRead>,
) -> ApiResult<Json<Value>> {
    check_domain_access(&user, &p.domain)?;
    let files = read_dotfiles(
        &state,
        "SELECT dotfiles FROM domains WHERE name = $1",
        Key::Text(&p.domain),
    )
    .await?
    .ok_or_else(|| {
        ApiError::new(
            axum::http::StatusCode::NOT_FOUND,
            "domain-not-found",
            "No such domain.",
        )
    })?;
    get_answer(files, p.path)
}

// ---------------------------------------------------------------- group

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupWrite {
    #[serde(alias = "groupId", alias = "group_id")]
    pub group: String,
    #[serde(default)]
    pub domain: Option<String>,
    pub data: String,
    pub path: String,
    pub permission: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupRead {
    #[serde(alias = "groupId", alias = "group_id")]
    pub group: String,
    #[serde(default)]
    pub domain: Option<String>,
    #[serde(default)]
    pub path: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GroupDelete {
    #[serde(alias = "groupId", alias = "group_id")]
    pub group: String,
    #[serde(default)]
    pub domain: Option<String>,
    pub path: String,
}

fn group_not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "group-not-found",
        "No such user group.",
    )
}

/// Resolves a group (UUID, or name within `domain` or the caller's domain) and checks
/// the caller may act on it: superadmins on any, domain admins within their domain, and
/// (for reads only) members.
async fn resolve_group(
    state: &AppState,
    user: &AuthUser,
    group: &str,
    domain: Option<&str>,
    write: bool,
) -> ApiResult<Uuid> {
    let mut txn = state.db.begin_readonly().await?;
    let row: Option<(Uuid, String)> = match Uuid::parse_str(group) {
        Ok(id) => {
            sqlx::query_as("SELECT id, domain_name FROM groups WHERE id = $1")
                .bind(id)
                .fetch_optional(&mut *txn)
                .await?
        }
        Err(_) => {
            sqlx::query_as(
                "SELECT id, domain_name FROM groups WHERE name = $1 AND domain_name = $2",
            )
            .bind(group)
            .bind(domain.unwrap_or(&user.domain_name))
            .fetch_optional(&mut *txn)
            .await?
        }
    };
    let Some((id, group_domain)) = row else {
        return Err(group_not_found());
    };
    let allowed = match user.role {
        UserRole::Superadmin => true,
        UserRole::Admin if user.is_admin => group_domain == user.domain_name,
        _ if write => false,
        _ => {
            let member: Option<Uuid> = sqlx::query_scalar(
                "SELECT group_id FROM association_groups_users WHERE group_id = $1 AND user_id = $2",
            )
            .bind(id)
            .bind(user.user_uuid)
            .fetch_optional(&mut *txn)
            .await?;
            member.is_some()
        }
    };
    txn.commit().await?;
    if !allowed {
        return Err(ApiError::forbidden().with_msg("You cannot access dotfiles of this group"));
    }
    Ok(id)
}

pub async fn create_group_dotfile(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Params(p): Params<GroupWrite>,
) -> ApiResult<Json<Value>> {
    write_group_dotfile(state, user, req_id, p, DotfileAction::Create).await
}

pub async fn update_group_dotfile(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Params(p): Params<GroupWrite>,
) -> ApiResult<Json<Value>> {
    write_group_dotfile(state, user, req_id, p, DotfileAction::Update).await
}

async fn write_group_dotfile(
    state: AppState,
    user: AuthUser,
    req_id: ReqId,
    p: GroupWrite,
    action: fn(Dotfile) -> DotfileAction,
) -> ApiResult<Json<Value>> {
    let f = checked_dotfile(p.path, p.permission, p.data)?;
    let id = resolve_group(&state, &user, &p.group, p.domain.as_deref(), true).await?;
    send_action(
        &state,
        &req_id,
        &user,
        DotfileOwner::Group { id },
        action(f),
    )
    .await
}

pub async fn delete_group_dotfile(
    State(state): State<AppState>,
    Admin(user): Admin,
    req_id: ReqId,
    Params(p): Params<GroupDelete>,
) -> ApiResult<Json<Value>> {
    let id = resolve_group(&state, &user, &p.group, p.domain.as_deref(), true).await?;
    send_action(
        &state,
        &req_id,
        &user,
        DotfileOwner::Group { id },
        DotfileAction::Delete { path: p.path },
    )
    .await
}

pub async fn get_group_dotfiles(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<GroupRead>,
) -> ApiResult<Json<Value>> {
    let id = resolve_group(&state, &user, &p.group, p.domain.as_deref(), false).await?;
    let files = read_dotfiles(
        &state,
        "SELECT dotfiles FROM groups WHERE id = $1",
        Key::Uuid(id),
    )
    .await?
    .unwrap_or_default();
    get_answer(files, p.path)
}

// ---------------------------------------------------------------- delivery

/// The dotfiles of a new session's kernels, as the original's `enqueue_session` merges
/// them: domain, then group, then the keypair's, a later one replacing an earlier one
/// with the same path. Goes into the kernel config as `internal_data.dotfiles`.
pub async fn session_dotfiles(
    conn: &mut sqlx::PgConnection,
    access_key: &str,
    group_id: Uuid,
    domain_name: &str,
) -> Result<Value, sqlx::Error> {
    type Raw = Option<Vec<u8>>;
    let (domain, group, user): (Raw, Raw, Raw) = sqlx::query_as(
        "SELECT (SELECT dotfiles FROM domains WHERE name = $3), \
                (SELECT dotfiles FROM groups WHERE id = $2), \
                (SELECT dotfiles FROM keypairs WHERE access_key = $1)",
    )
    .bind(access_key)
    .bind(group_id)
    .bind(domain_name)
    .fetch_one(conn)
    .await?;
    let mut merged: BTreeMap<String, Dotfile> = BTreeMap::new();
    for raw in [domain, group, user].into_iter().flatten() {
        for f in unpack_dotfiles(&raw) {
            merged.insert(f.path.clone(), f);
        }
    }
    Ok(Value::Array(
        merged
            .into_values()
            .map(|f| json!({ "path": f.path, "perm": f.perm, "data": f.data }))
            .collect(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_names_and_paths() {
        assert!(is_reserved_vfolder_name(".bashrc"));
        assert!(is_reserved_vfolder_name(".bash_profile"));
        assert!(is_reserved_vfolder_name(".ssh"));
        assert!(!is_reserved_vfolder_name("data"));
        assert!(!is_reserved_vfolder_name(".Xrc"));
        assert!(check_dotfile(".bashrc", "644", "x").is_ok());
        assert!(check_dotfile("/home/work/.vimrc", "600", "x").is_ok());
        assert!(check_dotfile(".ssh", "644", "x").is_err());
        assert!(check_dotfile("/home/work/.ssh/authorized_keys", "644", "x").is_err());
        assert!(check_dotfile("/etc/passwd", "644", "x").is_err());
        assert!(check_dotfile("../x", "644", "x").is_err());
        assert!(check_dotfile("a//b", "644", "x").is_err());
        assert!(check_dotfile(".x", "64", "x").is_err());
        assert!(check_dotfile(".x", "648", "x").is_err());
        assert!(check_dotfile(".x", "644", &"x".repeat(MAX_DOTFILE_BYTES + 1)).is_err());
    }
}
