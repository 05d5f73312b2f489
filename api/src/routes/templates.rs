//! `/template/session` and `/template/cluster` (api-rest.md §6.8, errata #10): stored task
//! and cluster templates. Payloads are JSON or YAML text (see [`crate::yaml`] for the
//! limits), validated against the original's trafaret schemas and stored normalised
//! (aliases resolved, defaults filled) in `session_templates.template`.
//!
//! Fixes over 21.03.6: `GET` answers the document (the original crashed on JSON-decoding
//! a JSONB value), and get/update/delete check who may see or change the template (the
//! original let any user act on any template id).

use axum::extract::{Path, State};
use axum::http::{header, Uri};
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use bai_events::rest::{RestOp, TemplateKind};

use crate::auth::{owner_access_key_param, resolve_owner, Auth, AuthUser, Owner, UserRole};
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::{de, Params};
use crate::routes::manager::ensure_not_frozen;
use crate::routes::rest_cmd::{self, task_template_not_found};
use crate::routes::usage::py_datetime;
use crate::state::AppState;
use crate::yaml::{self, YamlError};

fn default_name() -> String {
    "default".into()
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    #[serde(default = "default_name", alias = "groupName", alias = "group_name")]
    pub group: String,
    #[serde(default = "default_name", alias = "domainName", alias = "domain_name")]
    pub domain: String,
    pub payload: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ListParams {
    #[serde(default, deserialize_with = "de::tobool")]
    pub all: bool,
    #[serde(default, alias = "groupId")]
    pub group_id: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    #[serde(default)]
    pub format: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UpdateParams {
    pub payload: String,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::invalid_api_params().with_msg(msg)
}

fn field(path: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_api_params()
        .with_msg("Input validation error")
        .with_data(json!({ path: msg.into() }))
}

/// Decodes a payload (JSON, else YAML) with the safe loader's limits: any failure is 400.
pub fn decode_payload(text: &str) -> ApiResult<Value> {
    yaml::parse_payload(text).map_err(|e| match e {
        YamlError::Syntax(_) => invalid(format!("Malformed payload: {e}")),
        _ => invalid(format!("Rejected payload: {e}")),
    })
}

// ---------------------------------------------------------------- schema checks

/// A strict dict: takes the known keys (with aliases) out of `obj`; what remains is an
/// error ("x is not allowed key", as trafaret says).
struct Strict<'a> {
    path: &'a str,
    obj: Map<String, Value>,
}

impl<'a> Strict<'a> {
    fn new(path: &'a str, v: Value) -> ApiResult<Self> {
        match v {
            Value::Object(obj) => Ok(Self { path, obj }),
            _ => Err(field(path, "value is not a dict")),
        }
    }
    /// A required nested object (`key` of this one), checked as strictly as its parent.
    fn required_object<'b>(&mut self, path: &'b str, key: &str) -> ApiResult<Strict<'b>> {
        let v = self
            .take(&[key])
            .ok_or_else(|| field(path, "is required"))?;
        Strict::new(path, v)
    }

    fn take(&mut self, names: &[&str]) -> Option<Value> {
        names.iter().find_map(|n| self.obj.remove(*n))
    }
    fn p(&self, key: &str) -> String {
        if self.path.is_empty() {
            key.to_string()
        } else {
            format!("{}.{key}", self.path)
        }
    }
    fn string(&mut self, names: &[&str]) -> ApiResult<String> {
        match self.take(names) {
            Some(Value::String(s)) => Ok(s),
            Some(_) => Err(field(&self.p(names[0]), "value is not a string")),
            None => Err(field(&self.p(names[0]), "is required")),
        }
    }
    fn opt_string(&mut self, names: &[&str]) -> ApiResult<Value> {
        match self.take(names) {
            None | Some(Value::Null) => Ok(Value::Null),
            Some(v @ Value::String(_)) => Ok(v),
            Some(_) => Err(field(&self.p(names[0]), "value is not a string")),
        }
    }
    /// `t.Null | t.Mapping(t.String, <string values or anything>)`.
    fn opt_mapping(&mut self, names: &[&str], default: Value, strings: bool) -> ApiResult<Value> {
        match self.take(names) {
            None => Ok(default),
            Some(Value::Null) => Ok(Value::Null),
            Some(Value::Object(m)) => {
                if strings {
                    if let Some((k, _)) = m.iter().find(|(_, v)| !v.is_string()) {
                        return Err(field(
                            &self.p(names[0]),
                            format!("value of {k} is not a string"),
                        ));
                    }
                }
                Ok(Value::Object(m))
            }
            Some(_) => Err(field(&self.p(names[0]), "value is not a dict")),
        }
    }
    fn finish(self) -> ApiResult<Map<String, Value>> {
        Ok(self.obj)
    }
    fn strict(self) -> ApiResult<()> {
        match self.obj.keys().next() {
            Some(k) => Err(field(&self.p(k), format!("{k} is not allowed key"))),
            None => Ok(()),
        }
    }
}

/// Mount targets must be under `/home/work/` and not a reserved name (errata #10).
fn check_mounts(mounts: &Value) -> ApiResult<()> {
    let Some(m) = mounts.as_object() else {
        return Ok(());
    };
    for (name, path) in m {
        let Some(p) = path.as_str() else {
            if path.is_null() {
                continue;
            }
            return Err(field(
                "spec.mounts",
                format!("path of {name} is not a string"),
            ));
        };
        let Some(rest) = p.strip_prefix("/home/work/") else {
            return Err(invalid(format!("Path {p} must start with /home/work/.")));
        };
        if rest.is_empty()
            || rest.split('/').any(|s| s == "..")
            || crate::routes::dotfiles::is_reserved_vfolder_name(rest)
        {
            return Err(invalid(format!(
                "Path {p} is reserved for internal operations."
            )));
        }
    }
    Ok(())
}

/// The task template schema (`task_template_v1`), normalised as the original stores it.
pub fn check_task_template(raw: Value) -> ApiResult<Value> {
    let mut top = Strict::new("", raw)?;
    let api_version = top.string(&["api_version", "apiVersion"])?;
    let kind = top.string(&["kind"])?;
    if kind != "taskTemplate" && kind != "task_template" {
        return Err(field("kind", "value doesn't match any variant"));
    }
    let mut meta = top.required_object("metadata", "metadata")?;
    let name = meta.string(&["name"])?;
    let tag = meta.opt_string(&["tag"])?;
    meta.strict()?;
    let mut spec = top.required_object("spec", "spec")?;
    // `session_type` / `dest_dir` / `startup_command` (the stored spellings) are accepted
    // too, so a stored template validates to itself (GET as JSON, PUT it back).
    let session_type = match spec.take(&["type", "sessionType", "session_type"]) {
        None | Some(Value::Null) => "interactive".to_string(),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("interactive") => "interactive".into(),
        Some(Value::String(s)) if s.eq_ignore_ascii_case("batch") => "batch".into(),
        Some(_) => return Err(field("spec.type", "value doesn't match any variant")),
    };
    let mut kernel = spec.required_object("spec.kernel", "kernel")?;
    let image = kernel.string(&["image"])?;
    let environ = kernel.opt_mapping(&["environ"], json!({}), true)?;
    let run = match kernel.take(&["run"]) {
        None | Some(Value::Null) => Value::Null,
        Some(v) => {
            let mut run = Strict::new("spec.kernel.run", v)?;
            let bootstrap = run.opt_string(&["bootstrap"])?;
            let startup = run.opt_string(&["startup", "startup_command", "startupCommand"])?;
            run.strict()?;
            json!({ "bootstrap": bootstrap, "startup_command": startup })
        }
    };
    let git = match kernel.take(&["git"]) {
        None | Some(Value::Null) => Value::Null,
        Some(v) => {
            let mut git = Strict::new("spec.kernel.git", v)?;
            let repository = git.string(&["repository"])?;
            let commit = git.opt_string(&["commit"])?;
            let branch = git.opt_string(&["branch"])?;
            let credential = match git.take(&["credential"]) {
                None | Some(Value::Null) => Value::Null,
                Some(v) => {
                    let mut c = Strict::new("spec.kernel.git.credential", v)?;
                    let username = c.string(&["username"])?;
                    let password = c.string(&["password"])?;
                    c.strict()?;
                    json!({ "username": username, "password": password })
                }
            };
            let dest_dir = git.opt_string(&["destination_dir", "destinationDir", "dest_dir"])?;
            git.strict()?;
            json!({ "repository": repository, "commit": commit, "branch": branch,
                    "credential": credential, "dest_dir": dest_dir })
        }
    };
    kernel.strict()?;
    let mounts = spec.opt_mapping(&["mounts"], json!({}), false)?;
    check_mounts(&mounts)?;
    let resources = spec.opt_mapping(&["resources"], Value::Null, false)?;
    spec.strict()?;
    // Extra top-level keys are allowed (`allow_extra('*')`) and kept.
    let mut out = top.finish()?;
    out.insert("api_version".into(), json!(api_version));
    out.insert("kind".into(), json!(kind));
    out.insert("metadata".into(), json!({ "name": name, "tag": tag }));
    out.insert(
        "spec".into(),
        json!({
            "session_type": session_type,
            "kernel": { "image": image, "environ": environ, "run": run, "git": git },
            "mounts": mounts,
            "resources": resources,
        }),
    );
    Ok(Value::Object(out))
}

/// The cluster template schema (`cluster_template_v1`).
pub fn check_cluster_template(raw: Value) -> ApiResult<Value> {
    let mut top = Strict::new("", raw)?;
    let api_version = top.string(&["api_version", "apiVersion"])?;
    let kind = top.string(&["kind"])?;
    if kind != "clusterTemplate" && kind != "cluster_template" {
        return Err(field("kind", "value doesn't match any variant"));
    }
    let mode = top.string(&["mode"])?;
    if mode != "single-node" && mode != "multi-node" {
        return Err(field("mode", "value doesn't match any variant"));
    }
    let mut meta = top.required_object("metadata", "metadata")?;
    let name = meta.string(&["name"])?;
    meta.strict()?;
    let mut spec = top.required_object("spec", "spec")?;
    let environ = spec.opt_mapping(&["environ"], json!({}), true)?;
    let mounts = spec.opt_mapping(&["mounts"], json!({}), false)?;
    check_mounts(&mounts)?;
    let nodes_raw = match spec.take(&["nodes"]) {
        Some(Value::Array(a)) => a,
        Some(_) => return Err(field("spec.nodes", "value is not a list")),
        None => return Err(field("spec.nodes", "is required")),
    };
    let mut nodes = Vec::with_capacity(nodes_raw.len());
    for (i, n) in nodes_raw.into_iter().enumerate() {
        let path = format!("spec.nodes.{i}");
        let mut node = Strict::new(&path, n)?;
        let role = node.string(&["role"])?;
        let tpl = node.string(&["session_template", "sessionTemplate"])?;
        let tpl = Uuid::parse_str(&tpl)
            .map_err(|_| field(&format!("{path}.session_template"), "value is not a UUID"))?;
        let replicas = match node.take(&["replicas"]) {
            None => 1,
            Some(v) => v
                .as_i64()
                .ok_or_else(|| field(&format!("{path}.replicas"), "value is not int"))?,
        };
        node.strict()?;
        nodes.push(
            json!({ "role": role, "session_template": tpl.to_string(), "replicas": replicas }),
        );
    }
    spec.strict()?;
    let mut out = top.finish()?;
    out.insert("api_version".into(), json!(api_version));
    out.insert("kind".into(), json!(kind));
    out.insert("mode".into(), json!(mode));
    out.insert("metadata".into(), json!({ "name": name }));
    out.insert(
        "spec".into(),
        json!({ "environ": environ, "mounts": mounts, "nodes": nodes }),
    );
    Ok(Value::Object(out))
}

fn check(kind: TemplateKind, raw: Value) -> ApiResult<Value> {
    match kind {
        TemplateKind::Task => check_task_template(raw),
        TemplateKind::Cluster => check_cluster_template(raw),
    }
}

fn not_found(kind: TemplateKind) -> ApiError {
    match kind {
        TemplateKind::Task => task_template_not_found(),
        TemplateKind::Cluster => ApiError::not_found().with_msg("No such cluster template."),
    }
}

// ---------------------------------------------------------------- handlers

/// The group a template (or session) is filed under, with the original's checks (errata
/// #2: acting for yourself means acting as a plain user).
pub async fn resolve_group(
    state: &AppState,
    requester: &AuthUser,
    owner: &Owner,
    domain: &str,
    group: &str,
) -> ApiResult<Uuid> {
    let role = if owner.access_key == requester.access_key {
        UserRole::User
    } else {
        owner.role
    };
    let mut txn = state.db.begin_readonly().await?;
    let id: Option<Uuid> = match role {
        UserRole::Superadmin => {
            sqlx::query_scalar(
                "SELECT id FROM groups WHERE domain_name = $1 AND name = $2 AND is_active",
            )
            .bind(domain)
            .bind(group)
            .fetch_optional(&mut *txn)
            .await?
        }
        UserRole::Admin => {
            if domain != owner.domain_name {
                return Err(invalid(
                    "You can only set the domain to the owner's domain.",
                ));
            }
            sqlx::query_scalar(
                "SELECT id FROM groups WHERE domain_name = $1 AND name = $2 AND is_active",
            )
            .bind(domain)
            .bind(group)
            .fetch_optional(&mut *txn)
            .await?
        }
        _ => {
            if domain != owner.domain_name {
                return Err(invalid("You can only set the domain to your domain."));
            }
            sqlx::query_scalar(
                "SELECT g.id FROM groups g JOIN association_groups_users a ON a.group_id = g.id \
                 WHERE a.user_id = $1 AND g.domain_name = $2 AND g.name = $3 AND g.is_active",
            )
            .bind(owner.user_uuid)
            .bind(domain)
            .bind(group)
            .fetch_optional(&mut *txn)
            .await?
        }
    };
    txn.commit().await?;
    id.ok_or_else(|| invalid("Invalid group"))
}

async fn create(
    kind: TemplateKind,
    state: AppState,
    user: AuthUser,
    req_id: ReqId,
    uri: Uri,
    p: CreateParams,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let owner = resolve_owner(&state, &user, owner_access_key_param(&uri).as_deref()).await?;
    let group_id = resolve_group(&state, &user, &owner, &p.domain, &p.group).await?;
    let template = check(kind, decode_payload(&p.payload)?)?;
    let name = template
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let id = Uuid::new_v4();
    let result = rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::CreateTemplate {
            id,
            kind,
            domain_name: p.domain,
            group_id: Some(group_id),
            user_uuid: owner.user_uuid,
            name,
            template,
        },
    )
    .await?;
    Ok(Json(result))
}

#[derive(sqlx::FromRow)]
struct ListRow {
    id: Uuid,
    name: Option<String>,
    created_at: Option<DateTime<Utc>>,
    user_uuid: Uuid,
    group_id: Option<Uuid>,
    email: Option<String>,
    group_name: Option<String>,
}

async fn list(
    kind: TemplateKind,
    state: AppState,
    user: AuthUser,
    p: ListParams,
) -> ApiResult<Json<Value>> {
    let group_filter = match p.group_id.as_deref().filter(|g| !g.is_empty()) {
        None => None,
        Some(g) => Some(Uuid::parse_str(g).map_err(|_| field("group_id", "value is not a UUID"))?),
    };
    let base = "SELECT t.id, t.name, t.created_at, t.user_uuid, t.group_id, u.email, g.name AS group_name \
         FROM session_templates t LEFT JOIN users u ON u.uuid = t.user_uuid \
         LEFT JOIN groups g ON g.id = t.group_id \
         WHERE t.is_active AND t.type = $1::templatetype";
    let mut txn = state.db.begin_readonly().await?;
    let rows: Vec<ListRow> = if user.is_superadmin() && p.all {
        sqlx::query_as(&format!("{base} ORDER BY t.created_at"))
            .bind(kind.as_sql())
            .fetch_all(&mut *txn)
            .await?
    } else {
        // Own templates, plus those filed under a group the caller can see: member groups,
        // every group of the domain for domain admins, every group for superadmins.
        let groups_sql = match user.role {
            UserRole::Superadmin => "SELECT id FROM groups",
            UserRole::Admin => "SELECT id FROM groups WHERE domain_name = $3",
            _ => "SELECT group_id FROM association_groups_users WHERE user_id = $2",
        };
        sqlx::query_as(&format!(
            "{base} AND (t.user_uuid = $2 OR t.group_id IN ({groups_sql})) \
             AND ($4::uuid IS NULL OR t.group_id = $4) ORDER BY t.created_at"
        ))
        .bind(kind.as_sql())
        .bind(user.user_uuid)
        .bind(&user.domain_name)
        .bind(group_filter)
        .fetch_all(&mut *txn)
        .await?
    };
    txn.commit().await?;
    let items: Vec<Value> = rows
        .into_iter()
        .map(|r| {
            let is_owner = r.user_uuid == user.user_uuid;
            json!({
                "name": r.name,
                "id": r.id.simple().to_string(),
                "created_at": py_datetime(r.created_at),
                "is_owner": is_owner,
                "user": r.user_uuid.to_string(),
                "group": r.group_id.map(|g| g.to_string()).unwrap_or_else(|| "None".into()),
                "user_email": r.email,
                "group_name": r.group_name,
                "type": if is_owner { "user" } else { "group" },
            })
        })
        .collect();
    Ok(Json(Value::Array(items)))
}

#[derive(sqlx::FromRow)]
struct TemplateRow {
    template: Value,
    user_uuid: Uuid,
    group_id: Option<Uuid>,
    domain_name: String,
}

/// Loads a live template the caller may read (`write`: may change). Invisible and missing
/// templates are the same 404, so ids of others' templates are not disclosed.
async fn load_accessible(
    state: &AppState,
    kind: TemplateKind,
    user: &AuthUser,
    owner: &Owner,
    id: &str,
    write: bool,
) -> ApiResult<(Uuid, TemplateRow)> {
    let id = Uuid::parse_str(id).map_err(|_| not_found(kind))?;
    let mut txn = state.db.begin_readonly().await?;
    let row: Option<TemplateRow> = sqlx::query_as(
        "SELECT template, user_uuid, group_id, domain_name FROM session_templates \
         WHERE id = $1 AND is_active AND type = $2::templatetype",
    )
    .bind(id)
    .bind(kind.as_sql())
    .fetch_optional(&mut *txn)
    .await?;
    let Some(row) = row else {
        return Err(not_found(kind));
    };
    let allowed = row.user_uuid == owner.user_uuid
        || user.is_superadmin()
        || (user.role == UserRole::Admin && row.domain_name == user.domain_name)
        || (!write
            && {
                let member: Option<Uuid> = sqlx::query_scalar(
                "SELECT group_id FROM association_groups_users WHERE user_id = $1 AND group_id = $2",
            )
            .bind(owner.user_uuid)
            .bind(row.group_id)
            .fetch_optional(&mut *txn)
            .await?;
                member.is_some()
            });
    txn.commit().await?;
    if !allowed {
        return Err(not_found(kind));
    }
    Ok((id, row))
}

async fn get_one(
    kind: TemplateKind,
    state: AppState,
    user: AuthUser,
    uri: Uri,
    id: String,
    p: GetParams,
) -> ApiResult<Response> {
    let format = p.format.unwrap_or_else(|| "yaml".into());
    if format != "yaml" && format != "json" {
        return Err(invalid("format should be \"yaml\" or \"json\""));
    }
    let owner = resolve_owner(&state, &user, owner_access_key_param(&uri).as_deref()).await?;
    let (_, row) = load_accessible(&state, kind, &user, &owner, &id, false).await?;
    if format == "json" {
        return Ok(Json(row.template).into_response());
    }
    let text = yaml::dump(&row.template).map_err(ApiError::internal_from)?;
    Ok(([(header::CONTENT_TYPE, "text/yaml; charset=utf-8")], text).into_response())
}

async fn update(
    kind: TemplateKind,
    state: AppState,
    user: AuthUser,
    req_id: ReqId,
    uri: Uri,
    id: String,
    p: UpdateParams,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let owner = resolve_owner(&state, &user, owner_access_key_param(&uri).as_deref()).await?;
    let (id, _) = load_accessible(&state, kind, &user, &owner, &id, true).await?;
    let template = check(kind, decode_payload(&p.payload)?)?;
    let name = template
        .pointer("/metadata/name")
        .and_then(Value::as_str)
        .map(str::to_string);
    let result = rest_cmd::send(
        &state,
        &req_id,
        &user,
        RestOp::UpdateTemplate {
            id,
            kind,
            name,
            template,
        },
    )
    .await?;
    Ok(Json(result))
}

async fn delete(
    kind: TemplateKind,
    state: AppState,
    user: AuthUser,
    req_id: ReqId,
    uri: Uri,
    id: String,
) -> ApiResult<Json<Value>> {
    ensure_not_frozen(&state).await?;
    let owner = resolve_owner(&state, &user, owner_access_key_param(&uri).as_deref()).await?;
    let (id, _) = load_accessible(&state, kind, &user, &owner, &id, true).await?;
    let result =
        rest_cmd::send(&state, &req_id, &user, RestOp::DeleteTemplate { id, kind }).await?;
    Ok(Json(result))
}

/// Reads a live task template for `create-from-template` (same visibility as `GET`).
pub async fn load_task_template(
    state: &AppState,
    user: &AuthUser,
    owner: &Owner,
    id: &str,
) -> ApiResult<(Value, String, Option<String>)> {
    let (_, row) = load_accessible(state, TemplateKind::Task, user, owner, id, false).await?;
    let mut txn = state.db.begin_readonly().await?;
    let group_name: Option<String> = sqlx::query_scalar("SELECT name FROM groups WHERE id = $1")
        .bind(row.group_id)
        .fetch_optional(&mut *txn)
        .await?;
    txn.commit().await?;
    Ok((row.template, row.domain_name, group_name))
}

macro_rules! template_routes {
    ($kind:expr, $create:ident, $list:ident, $get:ident, $update:ident, $delete:ident) => {
        pub async fn $create(
            State(state): State<AppState>,
            Auth(user): Auth,
            req_id: ReqId,
            uri: Uri,
            Params(p): Params<CreateParams>,
        ) -> ApiResult<Json<Value>> {
            create($kind, state, user, req_id, uri, p).await
        }
        pub async fn $list(
            State(state): State<AppState>,
            Auth(user): Auth,
            Params(p): Params<ListParams>,
        ) -> ApiResult<Json<Value>> {
            list($kind, state, user, p).await
        }
        pub async fn $get(
            State(state): State<AppState>,
            Auth(user): Auth,
            uri: Uri,
            Path(id): Path<String>,
            Params(p): Params<GetParams>,
        ) -> ApiResult<Response> {
            get_one($kind, state, user, uri, id, p).await
        }
        pub async fn $update(
            State(state): State<AppState>,
            Auth(user): Auth,
            req_id: ReqId,
            uri: Uri,
            Path(id): Path<String>,
            Params(p): Params<UpdateParams>,
        ) -> ApiResult<Json<Value>> {
            update($kind, state, user, req_id, uri, id, p).await
        }
        pub async fn $delete(
            State(state): State<AppState>,
            Auth(user): Auth,
            req_id: ReqId,
            uri: Uri,
            Path(id): Path<String>,
            Params(_p): Params<DeleteParams>,
        ) -> ApiResult<Json<Value>> {
            delete($kind, state, user, req_id, uri, id).await
        }
    };
}

template_routes!(
    TemplateKind::Task,
    create_session_template,
    list_session_templates,
    get_session_template,
    update_session_template,
    delete_session_template
);
template_routes!(
    TemplateKind::Cluster,
    create_cluster_template,
    list_cluster_templates,
    get_cluster_template,
    update_cluster_template,
    delete_cluster_template
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn task_template_schema() {
        let t = check_task_template(json!({
            "apiVersion": "v1", "kind": "taskTemplate", "extra": 1,
            "metadata": {"name": "t1"},
            "spec": {"sessionType": "batch", "kernel": {"image": "python:3.9",
                "run": {"startupCommand": "ls"}}, "mounts": {"data": "/home/work/data"}}
        }))
        .unwrap();
        assert_eq!(t["api_version"], "v1");
        assert_eq!(t["extra"], 1);
        assert_eq!(t["spec"]["session_type"], "batch");
        assert_eq!(t["spec"]["kernel"]["run"]["startup_command"], "ls");
        assert_eq!(t["spec"]["kernel"]["environ"], json!({}));
        assert_eq!(t["metadata"]["tag"], Value::Null);
        // Idempotent: a stored template validates to itself.
        assert_eq!(check_task_template(t.clone()).unwrap(), t);
        let bad = |v: Value| check_task_template(v).unwrap_err();
        let base = json!({"apiVersion": "v1", "kind": "taskTemplate", "metadata": {"name": "x"},
            "spec": {"kernel": {"image": "i"}}});
        let mut v = base.clone();
        v["spec"]["kernel"]["bogus"] = json!(1);
        assert_eq!(bad(v).slug, "invalid-api-params");
        let mut v = base.clone();
        v["kind"] = json!("other");
        bad(v);
        let mut v = base.clone();
        v["spec"]["mounts"] = json!({"a": "/etc"});
        bad(v);
        let mut v = base;
        v["spec"]["mounts"] = json!({"a": "/home/work/.ssh"});
        bad(v);
    }
}
