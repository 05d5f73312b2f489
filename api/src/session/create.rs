//! `POST /session` validation (api-rest.md §2.1 with errata #1-#4): everything is checked
//! and resolved here, in one read-only transaction plus etcd reads, so the worker only
//! inserts the rows of a [`SessionSpec`].

use std::collections::BTreeMap;

use chrono::{DateTime, Duration, NaiveDateTime, Utc};
use rust_decimal::Decimal;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use bai_core::etcd::Etcd;
use bai_core::slots::ResourceSlot;
use bai_events::session::{KernelSpec, SessionSpec};

use super::lookup::{self, SessionRow};
use super::{image_not_found, scaling_group_not_found, session_already_exists, vfolder_not_found};
use crate::auth::{Owner, UserRole};
use crate::error::{ApiError, ApiResult};
use crate::graphql::images::{parse_reference, quote, ImageCatalog};
use crate::params::de;
use crate::state::AppState;

/// Largest `cluster_size` accepted (the keypair policy's `max_containers_per_session`
/// is enforced by the scheduler; this only bounds the rows one request can insert).
pub const MAX_CLUSTER_SIZE: i64 = 256;

/// Defaults for intrinsic slots when neither the request nor the image says anything.
const DEFAULT_CPU: &str = "1";
const DEFAULT_MEM: &str = "256m";

fn default_group() -> String {
    "default".into()
}
fn default_domain() -> String {
    "default".into()
}
fn default_cluster_size() -> i64 {
    1
}
fn default_true() -> bool {
    true
}

/// The request body. Strict like the original's trafaret dict (unknown keys → 400);
/// `owner_access_key` in a body is accepted and ignored (§1.5).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateParams {
    #[serde(alias = "clientSessionToken")]
    pub name: String,
    #[serde(alias = "lang")]
    pub image: String,
    #[serde(default, rename = "type", alias = "sessionType")]
    pub session_type: Option<String>,
    #[serde(default = "default_group", alias = "groupName", alias = "group_name")]
    pub group: String,
    #[serde(
        default = "default_domain",
        alias = "domainName",
        alias = "domain_name"
    )]
    pub domain: String,
    #[serde(
        default = "default_cluster_size",
        alias = "clusterSize",
        deserialize_with = "de::int"
    )]
    pub cluster_size: i64,
    #[serde(default, alias = "clusterMode")]
    pub cluster_mode: Option<String>,
    #[serde(default)]
    pub config: Option<CreateConfig>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default, rename = "enqueueOnly", deserialize_with = "de::tobool")]
    pub enqueue_only: bool,
    #[serde(default, rename = "maxWaitSeconds", deserialize_with = "de::opt_int")]
    pub max_wait_seconds: Option<i64>,
    #[serde(default, alias = "startsAt")]
    pub starts_at: Option<String>,
    #[serde(
        default = "default_true",
        rename = "reuseIfExists",
        deserialize_with = "de::tobool"
    )]
    pub reuse_if_exists: bool,
    #[serde(default, rename = "startupCommand")]
    pub startup_command: Option<String>,
    #[serde(default, alias = "bootstrapScript")]
    pub bootstrap_script: Option<String>,
    #[serde(default)]
    pub owner_access_key: Option<String>,
}

/// `config` for API v6 (strict).
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateConfig {
    #[serde(default)]
    pub mounts: Option<Vec<String>>,
    #[serde(default, alias = "mountMap")]
    pub mount_map: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub environ: Option<BTreeMap<String, String>>,
    #[serde(default, alias = "scalingGroup")]
    pub scaling_group: Option<String>,
    /// Slot name → amount (strings or numbers). `null` or absent means "image minimums"
    /// (the original crashed with a 500 on `null`, errata #4).
    #[serde(default)]
    pub resources: Option<Value>,
    #[serde(default, alias = "resourceOpts")]
    pub resource_opts: Option<Map<String, Value>>,
    #[serde(default, alias = "preopenPorts")]
    pub preopen_ports: Option<Vec<Value>>,
    /// 21.03.24+ (`--assign-agent`); accepted, superadmin-only when non-null, and not
    /// honoured yet (the scheduler places kernels itself).
    #[serde(default, alias = "agentList")]
    pub agent_list: Option<Vec<String>>,
}

/// What a create request resolves to.
pub enum Plan {
    /// A live session with this name and image exists and may be reused (200).
    Reuse(Box<SessionRow>),
    /// A new session to enqueue.
    Create(Box<SessionSpec>),
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::invalid_api_params().with_msg(msg)
}

fn field_error(field: &str, msg: impl Into<String>) -> ApiError {
    ApiError::invalid_api_params()
        .with_msg("Input validation error")
        .with_data(json!({ field: msg.into() }))
}

/// `^(?=.{4,64}$)\w[\w.-]*\w$` with ASCII `\w`, without a look-ahead.
pub fn valid_session_name(name: &str) -> bool {
    let b = name.as_bytes();
    let word = |c: u8| c.is_ascii_alphanumeric() || c == b'_';
    (4..=64).contains(&b.len())
        && word(b[0])
        && word(b[b.len() - 1])
        && b.iter().all(|&c| word(c) || c == b'.' || c == b'-')
}

/// The original's `str_to_timedelta`: `[+-]?(<n>d)?(<n>h)?(<n>m)?(<n>s)?` with long unit
/// names allowed (`1h30m`, `2days`, `-15min`, `0.5hours`).
pub fn parse_timedelta(s: &str) -> Option<Duration> {
    let mut rest = s.trim();
    let mut sign = 1.0;
    if let Some(r) = rest.strip_prefix('+') {
        rest = r;
    } else if let Some(r) = rest.strip_prefix('-') {
        sign = -1.0;
        rest = r;
    }
    const UNITS: [(&[&str], f64); 4] = [
        (&["d", "day", "days"], 86_400.0),
        (&["h", "hr", "hrs", "hour", "hours"], 3_600.0),
        (&["m", "min", "mins", "minute", "minutes"], 60.0),
        (&["s", "sec", "secs", "second", "seconds"], 1.0),
    ];
    let mut total = 0.0f64;
    let mut next_unit = 0;
    let mut any = false;
    while !rest.is_empty() {
        let n_end = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number = &rest[..n_end];
        if number.is_empty() || number.starts_with('.') || number.ends_with('.') {
            return None;
        }
        let value: f64 = number.parse().ok()?;
        rest = &rest[n_end..];
        let u_end = rest
            .find(|c: char| !c.is_ascii_alphabetic())
            .unwrap_or(rest.len());
        let unit = &rest[..u_end];
        rest = &rest[u_end..];
        let idx = UNITS.iter().position(|(names, _)| names.contains(&unit))?;
        // Each unit at most once, in the order d, h, m, s.
        if idx < next_unit {
            return None;
        }
        next_unit = idx + 1;
        total += value * UNITS[idx].1;
        any = true;
    }
    if !any || !total.is_finite() || total > 1e12 {
        return None;
    }
    Some(Duration::milliseconds(
        (sign * total * 1000.0).round() as i64
    ))
}

/// `starts_at`: ISO-8601 (a time without offset is UTC), else a duration from now.
pub fn parse_starts_at(s: &str, now: DateTime<Utc>) -> Option<DateTime<Utc>> {
    let t = s.trim();
    if let Ok(d) = DateTime::parse_from_rfc3339(t) {
        return Some(d.with_timezone(&Utc));
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M%:z",
    ] {
        if let Ok(d) = NaiveDateTime::parse_from_str(t, fmt) {
            return Some(d.and_utc());
        }
    }
    if let Ok(d) = DateTime::parse_from_str(t, "%Y-%m-%d %H:%M:%S%.f%:z") {
        return Some(d.with_timezone(&Utc));
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(t, "%Y-%m-%d") {
        return d.and_hms_opt(0, 0, 0).map(|d| d.and_utc());
    }
    parse_timedelta(t).map(|d| now + d)
}

/// The original's `secrets.token_urlsafe(16)`.
pub fn new_creation_id() -> String {
    let bytes: [u8; 16] = rand::random();
    data_encoding::BASE64URL_NOPAD.encode(&bytes)
}

/// A catalogued image: where it lives and what it allows.
#[derive(Debug, Clone)]
pub struct ImageSpec {
    pub canonical: String,
    pub registry: String,
    /// `resource/<slot>/min` (or the `ai.backend.resource.min.<slot>` label).
    pub min: ResourceSlot,
    /// `resource/<slot>/max`.
    pub max: ResourceSlot,
}

async fn image_entry(
    etcd: &Etcd,
    registry: &str,
    name: &str,
    tag: &str,
) -> ApiResult<Option<ImageSpec>> {
    let key = format!("images/{}/{}/{}", quote(registry), quote(name), quote(tag));
    let digest = etcd.get(&key).await.map_err(ApiError::internal_from)?;
    let sub = etcd
        .get_prefix(&format!("{key}/"))
        .await
        .map_err(ApiError::internal_from)?;
    if digest.is_none() && sub.is_empty() {
        return Ok(None);
    }
    let mut min = Map::new();
    let mut max = Map::new();
    for (k, v) in &sub {
        let parts: Vec<&str> = k.split('/').collect();
        match parts.as_slice() {
            ["resource", slot, "min"] => {
                min.insert(
                    crate::graphql::images::unquote(slot),
                    Value::String(v.clone()),
                );
            }
            ["resource", slot, "max"] => {
                max.insert(
                    crate::graphql::images::unquote(slot),
                    Value::String(v.clone()),
                );
            }
            ["labels", label] => {
                if let Some(slot) =
                    crate::graphql::images::unquote(label).strip_prefix("ai.backend.resource.min.")
                {
                    min.entry(slot.to_string())
                        .or_insert(Value::String(v.clone()));
                }
            }
            _ => {}
        }
    }
    let parse = |m: Map<String, Value>| {
        ResourceSlot::from_json(&Value::Object(m)).map_err(|e| {
            ApiError::internal_from(format!(
                "image {registry}/{name}:{tag} has bad resource limits: {e}"
            ))
        })
    };
    Ok(Some(ImageSpec {
        canonical: format!("{registry}/{name}:{tag}"),
        registry: registry.to_string(),
        min: parse(min)?,
        max: parse(max)?,
    }))
}

/// Resolves an alias or reference to a catalogued image (404 `image-not-found` if none).
///
/// A reference without a registry (`python:3.9-ubuntu20.04`) that is not on Docker Hub
/// in the catalogue is looked up once more among the `allowed` registries by its
/// last path component (`*/python:3.9-ubuntu20.04`), if exactly one image matches.
pub async fn resolve_image(
    etcd: &Etcd,
    reference: &str,
    allowed: &[String],
) -> ApiResult<ImageSpec> {
    let reference = reference.trim();
    if reference.is_empty() {
        return Err(image_not_found());
    }
    let mut target = None;
    for key in [reference.to_string(), quote(reference)] {
        if let Some(t) = etcd
            .get(&format!("images/_aliases/{key}"))
            .await
            .map_err(ApiError::internal_from)?
        {
            target = Some(t);
            break;
        }
    }
    let canonical = target.unwrap_or_else(|| reference.to_string());
    let (registry, name, tag) = parse_reference(&canonical);
    if let Some(img) = image_entry(etcd, &registry, &name, &tag).await? {
        return Ok(img);
    }
    if registry == "index.docker.io" && !canonical.starts_with("index.docker.io/") {
        let short = name.strip_prefix("library/").unwrap_or(&name);
        let catalog = ImageCatalog::load(etcd)
            .await
            .map_err(ApiError::internal_from)?;
        let suffix = format!("/{short}");
        let found: Vec<_> = catalog
            .images
            .values()
            .filter(|i| i.tag == tag && allowed.contains(&i.registry) && i.name.ends_with(&suffix))
            .collect();
        if let [only] = found.as_slice() {
            if let Some(img) = image_entry(etcd, &only.registry, &only.name, &only.tag).await? {
                return Ok(img);
            }
        }
    }
    Err(image_not_found().with_msg(format!("Unknown image: {reference}")))
}

/// The requested slots of one kernel (§2.1 `resources`): only known slot types; every
/// known slot present (missing ones are 0, like `ResourceSlot.from_user_input`); 0 or
/// absent slots take the image's minimum (cpu/mem default to 1 core / 256 MiB when the
/// image sets none); the result must lie within the image's min/max.
pub fn requested_slots(
    resources: Option<&Value>,
    known: &BTreeMap<String, String>,
    image: &ImageSpec,
) -> ApiResult<ResourceSlot> {
    let empty = Value::Object(Map::new());
    let resources = match resources {
        None | Some(Value::Null) => &empty,
        Some(v @ Value::Object(_)) => v,
        Some(_) => return Err(field_error("config", "resources must be an object")),
    };
    if let Some(obj) = resources.as_object() {
        for k in obj.keys() {
            if !known.contains_key(k) {
                return Err(invalid(format!("Unknown resource slot: {k}")));
            }
        }
    }
    let given = ResourceSlot::from_json(resources).map_err(invalid)?;
    let mut slots = ResourceSlot(known.keys().map(|k| (k.clone(), Decimal::ZERO)).collect());
    for (k, v) in given.0 {
        if v.is_sign_negative() {
            return Err(invalid(format!("Negative resource request: {k}")));
        }
        slots.0.insert(k, v);
    }
    let defaults = ResourceSlot::from_json(&json!({"cpu": DEFAULT_CPU, "mem": DEFAULT_MEM}))
        .map_err(ApiError::internal_from)?;
    for (k, v) in slots.0.iter_mut() {
        if v.is_zero() {
            if let Some(min) = image.min.0.get(k).filter(|m| !m.is_zero()) {
                *v = *min;
            } else if let Some(d) = defaults.0.get(k) {
                *v = *d;
            }
        }
    }
    for (k, v) in &slots.0 {
        if let Some(min) = image.min.0.get(k) {
            if v < min {
                return Err(invalid(format!(
                    "Your resource request is smaller than the minimum required by the image. ({k} < {})",
                    bai_core::slots::format_amount(k, *min)
                )));
            }
        }
        if let Some(max) = image.max.0.get(k).filter(|m| !m.is_zero()) {
            if v > max {
                return Err(invalid(format!(
                    "Your resource request is bigger than the maximum allowed by the image. ({k} > {})",
                    bai_core::slots::format_amount(k, *max)
                )));
            }
        }
    }
    Ok(slots)
}

/// Validates the request and resolves it into a [`Plan`]. `owner` is whom the session is
/// for (the requester unless `?owner_access_key=`); `requester_is_owner` applies errata #2
/// (an owner acting for themselves is treated as a plain user for domain/group checks).
pub async fn plan(
    state: &AppState,
    requester_is_owner: bool,
    requester_is_superadmin: bool,
    owner: &Owner,
    p: CreateParams,
) -> ApiResult<Plan> {
    // --- shape checks (no I/O) ---
    if !valid_session_name(&p.name) {
        return Err(field_error(
            "name",
            format!(
                "value does not match pattern: {:?}",
                r"^(?=.{4,64}$)\w[\w.-]*\w$"
            ),
        ));
    }
    let session_type = match p
        .session_type
        .as_deref()
        .map(str::to_ascii_lowercase)
        .as_deref()
    {
        None | Some("interactive") => "INTERACTIVE",
        Some("batch") => "BATCH",
        Some(other) => {
            return Err(field_error(
                "type",
                format!("{other:?} is not a valid session type"),
            ))
        }
    };
    let cluster_mode = match p.cluster_mode.as_deref() {
        None | Some("single-node") => "single-node",
        Some("multi-node") => "multi-node",
        Some(other) => {
            return Err(field_error(
                "cluster_mode",
                format!("{other:?} is not a valid cluster mode"),
            ))
        }
    };
    if !(1..=MAX_CLUSTER_SIZE).contains(&p.cluster_size) {
        return Err(field_error(
            "cluster_size",
            format!("cluster size must be between 1 and {MAX_CLUSTER_SIZE}"),
        ));
    }
    if let Some(tag) = &p.tag {
        if tag.chars().count() > 64 {
            return Err(field_error("tag", "tag must be at most 64 characters"));
        }
    }
    if let Some(w) = p.max_wait_seconds {
        if w < 0 {
            return Err(field_error("maxWaitSeconds", "must be >= 0"));
        }
    }
    let startup_command = p.startup_command.clone().filter(|c| !c.is_empty());
    if session_type == "BATCH" && startup_command.is_none() {
        return Err(invalid("Batch type session requires startup command."));
    }
    let starts_at_raw = p.starts_at.clone().filter(|s| !s.is_empty());
    if session_type == "INTERACTIVE" && starts_at_raw.is_some() {
        return Err(invalid(
            "Parameter starts_at should be used only for batch sessions",
        ));
    }
    let starts_at = match &starts_at_raw {
        None => None,
        Some(s) => Some(
            parse_starts_at(s, Utc::now())
                .ok_or_else(|| invalid(format!("Invalid starts_at value: {s}")))?,
        ),
    };
    let config = p.config.unwrap_or_default();
    if config.agent_list.as_ref().is_some_and(|l| !l.is_empty()) && !requester_is_superadmin {
        return Err(ApiError::insufficient_privilege()
            .with_msg("You are not allowed to manually assign agents for your session."));
    }
    let mut preopen_ports = Vec::new();
    for v in config.preopen_ports.unwrap_or_default() {
        let port = v
            .as_i64()
            .or_else(|| v.as_str().and_then(|s| s.trim().parse().ok()))
            .filter(|p| (1024..=65535).contains(p))
            .ok_or_else(|| {
                field_error(
                    "preopen_ports",
                    format!("{v} is not a port between 1024 and 65535"),
                )
            })?;
        preopen_ports.push(port as i32);
    }
    let mounts_req = config.mounts.unwrap_or_default();
    let mount_map = config.mount_map.unwrap_or_default();
    for (name, path) in &mount_map {
        if !mounts_req.contains(name) {
            return Err(invalid(format!(
                "The vfolder {name} is not in the mounts list."
            )));
        }
        if !path.starts_with("/home/work/")
            || path.split('/').any(|seg| seg == "..")
            || path == "/home/work/"
        {
            return Err(invalid(format!(
                "Path {path} must be a sub-directory of /home/work/ (mount_map of {name})."
            )));
        }
    }
    let environ: Vec<String> = config
        .environ
        .unwrap_or_default()
        .into_iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let role = if requester_is_owner {
        UserRole::User
    } else {
        owner.role
    };

    // Folder types enabled in etcd (`volumes/_types`), for resolving mounts.
    let vfolder_types = if mounts_req.is_empty() {
        Vec::new()
    } else {
        bai_core::vfolder::allowed_types(&state.etcd)
            .await
            .map_err(|e| ApiError::internal_from(format!("etcd: {e:#}")))?
    };

    // --- database (one read-only transaction) ---
    let mut txn = state.db.begin_readonly().await?;
    // A snapshot is all validation needs (the worker's SERIALIZABLE insert and the unique
    // index decide races): without SERIALIZABLE's predicate locks these reads of `kernels`
    // neither abort nor make the workers' concurrent inserts abort under load.
    sqlx::query("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ")
        .execute(&mut *txn)
        .await?;
    let domain: Option<(String, Vec<String>)> = sqlx::query_as(
        "SELECT name, allowed_docker_registries FROM domains WHERE name = $1 AND is_active",
    )
    .bind(&owner.domain_name)
    .fetch_optional(&mut *txn)
    .await?;
    let Some((domain_name, allowed_registries)) = domain else {
        return Err(invalid("Invalid domain"));
    };
    let group_id: Option<Uuid> = match role {
        UserRole::Superadmin => {
            sqlx::query_scalar(
                "SELECT id FROM groups WHERE domain_name = $1 AND name = $2 AND is_active",
            )
            .bind(&p.domain)
            .bind(&p.group)
            .fetch_optional(&mut *txn)
            .await?
        }
        UserRole::Admin => {
            if p.domain != domain_name {
                return Err(invalid(
                    "You can only set the domain to the owner's domain.",
                ));
            }
            sqlx::query_scalar(
                "SELECT id FROM groups WHERE domain_name = $1 AND name = $2 AND is_active",
            )
            .bind(&domain_name)
            .bind(&p.group)
            .fetch_optional(&mut *txn)
            .await?
        }
        _ => {
            if p.domain != domain_name {
                return Err(invalid("You can only set the domain to your domain."));
            }
            sqlx::query_scalar(
                "SELECT g.id FROM groups g JOIN association_groups_users a ON a.group_id = g.id \
                 WHERE a.user_id = $1 AND g.domain_name = $2 AND g.name = $3 AND g.is_active",
            )
            .bind(owner.user_uuid)
            .bind(&domain_name)
            .bind(&p.group)
            .fetch_optional(&mut *txn)
            .await?
        }
    };
    let Some(group_id) = group_id else {
        return Err(invalid("Invalid group"));
    };

    let image = super::cache::image(&state.etcd, &p.image, &allowed_registries).await?;
    if !allowed_registries.contains(&image.registry) {
        return Err(image_not_found().with_msg(format!(
            "The registry {} of the image is not allowed in the domain {domain_name}.",
            image.registry
        )));
    }

    // An existing live session with the same name (exact match; the original's prefix
    // match made `abc1` collide with a live `abc10`, errata #3).
    if let Some(existing) = lookup::find_by_exact_name(&mut txn, &p.name, &owner.access_key).await?
    {
        let same_image = existing.image.as_deref() == Some(image.canonical.as_str());
        if same_image && p.reuse_if_exists {
            txn.commit().await?;
            return Ok(Plan::Reuse(Box::new(existing)));
        }
        return Err(
            session_already_exists().with_data(json!({ "existingSessionId": existing.session_id }))
        );
    }

    // Virtual folders: names the owner can access (own, shared, group), with the
    // permission the owner has on each (the original's `query_accessible_vfolders`).
    let mut mounts: Vec<Vec<String>> = Vec::new();
    if !mounts_req.is_empty() {
        let mount_caller = bai_core::vfolder::Caller {
            user_uuid: owner.user_uuid,
            email: String::new(),
            access_key: owner.access_key.clone(),
            role: role.as_str().to_string(),
            is_admin: false,
            domain_name: owner.domain_name.clone(),
            resource_policy: String::new(),
        };
        let visible =
            bai_core::vfolder::accessible(&mut txn, &mount_caller, &vfolder_types, None).await?;
        for name in &mounts_req {
            let Some(e) = visible.iter().find(|e| &e.name == name) else {
                return Err(vfolder_not_found().with_msg(format!("Unknown vfolder: {name}")));
            };
            mounts.push(vec![
                name.clone(),
                e.host.clone(),
                e.id.simple().to_string(),
                e.permission.clone(),
                e.unmanaged_path.clone().unwrap_or_default(),
            ]);
        }
    }

    // Scaling group: allowed through the domain, the group or the keypair, and active.
    let allowed_sgroups = crate::routes::scaling_groups::allowed_scaling_groups(
        &mut txn,
        &domain_name,
        Some(group_id),
        &owner.access_key,
    )
    .await?;
    let sg_opts: Vec<(String, Value)> = sqlx::query_as(
        "SELECT name, scheduler_opts FROM scaling_groups WHERE name = ANY($1) ORDER BY name",
    )
    .bind(&allowed_sgroups)
    .fetch_all(&mut *txn)
    .await?;
    let accepts = |opts: &Value| {
        opts.get("allowed_session_types")
            .and_then(Value::as_array)
            .is_none_or(|types| {
                types.iter().any(|t| {
                    t.as_str()
                        .is_some_and(|t| t.eq_ignore_ascii_case(session_type))
                })
            })
    };
    let scaling_group = match config.scaling_group.as_deref().filter(|s| !s.is_empty()) {
        Some(sg) => {
            let ok = sg_opts.iter().any(|(n, o)| n == sg && accepts(o));
            if !ok {
                return Err(scaling_group_not_found().with_msg(format!(
                    "The scaling group {sg} does not exist or is not allowed for you."
                )));
            }
            sg.to_string()
        }
        None => match sg_opts.iter().find(|(_, o)| accepts(o)) {
            Some((n, _)) => n.clone(),
            None => {
                return Err(scaling_group_not_found().with_msg(if sg_opts.is_empty() {
                    "You have no scaling groups allowed to use.".to_string()
                } else {
                    format!(
                        "No scaling groups accept the session type '{}'.",
                        session_type.to_lowercase()
                    )
                }))
            }
        },
    };

    let bootstrap_script = match p.bootstrap_script.filter(|s| !s.is_empty()) {
        Some(s) => Some(s),
        None if session_type == "INTERACTIVE" => {
            let stored: Option<String> =
                sqlx::query_scalar("SELECT bootstrap_script FROM keypairs WHERE access_key = $1")
                    .bind(&owner.access_key)
                    .fetch_optional(&mut *txn)
                    .await?;
            stored.filter(|s| !s.is_empty())
        }
        None => None,
    };
    // Dotfiles of the domain, group and keypair, delivered to every kernel (issue 11).
    let dotfiles = crate::routes::dotfiles::session_dotfiles(
        &mut txn,
        &owner.access_key,
        group_id,
        &domain_name,
    )
    .await?;
    txn.commit().await?;

    let known = super::cache::known_slot_types(&state.etcd).await?;
    let slots = requested_slots(config.resources.as_ref(), &known, &image)?;
    let slots_json = slots.to_json();

    let session_id = Uuid::new_v4();
    let mut kernels = vec![KernelSpec {
        id: session_id,
        cluster_role: "main".into(),
        cluster_idx: 1,
        cluster_hostname: "main1".into(),
        occupied_slots: slots_json.clone(),
        ..Default::default()
    }];
    for i in 1..p.cluster_size {
        kernels.push(KernelSpec {
            id: Uuid::new_v4(),
            cluster_role: "sub".into(),
            cluster_idx: i as i32,
            cluster_hostname: format!("sub{i}"),
            occupied_slots: slots_json.clone(),
            ..Default::default()
        });
    }
    Ok(Plan::Create(Box::new(SessionSpec {
        session_id,
        creation_id: new_creation_id(),
        name: p.name,
        session_type: session_type.into(),
        cluster_mode: cluster_mode.into(),
        cluster_size: p.cluster_size as i32,
        scaling_group,
        domain_name,
        group_id,
        user_uuid: owner.user_uuid,
        access_key: owner.access_key.clone(),
        image: image.canonical,
        registry: image.registry,
        tag: p.tag,
        starts_at,
        startup_command,
        bootstrap_script,
        environ,
        mounts,
        mount_map: serde_json::to_value(&mount_map).unwrap_or_else(|_| json!({})),
        resource_opts: Value::Object(config.resource_opts.unwrap_or_default()),
        preopen_ports,
        internal_data: json!({ "dotfiles": dotfiles }),
        dependencies: Vec::new(),
        kernels,
    })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_names() {
        for ok in [
            "mysess",
            "a_b.c-d",
            "pysdk-543320f232",
            "abcd",
            &"x".repeat(64),
        ] {
            assert!(valid_session_name(ok), "{ok}");
        }
        for bad in [
            "abc",
            "-abc",
            "abc-",
            "ab c",
            "ab/cd",
            "séssion",
            &"x".repeat(65),
            ".abc",
            "abc.",
        ] {
            assert!(!valid_session_name(bad), "{bad}");
        }
    }

    #[test]
    fn durations_and_start_times() {
        assert_eq!(parse_timedelta("1h30m"), Some(Duration::minutes(90)));
        assert_eq!(parse_timedelta("2days"), Some(Duration::days(2)));
        assert_eq!(parse_timedelta("-15min"), Some(Duration::minutes(-15)));
        assert_eq!(parse_timedelta("0.5hours"), Some(Duration::minutes(30)));
        assert_eq!(parse_timedelta("10s"), Some(Duration::seconds(10)));
        assert_eq!(parse_timedelta("30m1h"), None, "units out of order");
        assert_eq!(parse_timedelta("1x"), None);
        assert_eq!(parse_timedelta(""), None);
        assert_eq!(parse_timedelta("h"), None);
        let now = Utc::now();
        assert_eq!(parse_starts_at("1h", now), Some(now + Duration::hours(1)));
        let t = parse_starts_at("2030-01-02T03:04:05+09:00", now).unwrap();
        assert_eq!(t.to_rfc3339(), "2030-01-01T18:04:05+00:00");
        let t = parse_starts_at("2030-01-02T03:04:05", now).unwrap();
        assert_eq!(t.to_rfc3339(), "2030-01-02T03:04:05+00:00");
        assert!(parse_starts_at("tomorrow", now).is_none());
    }

    #[test]
    fn slots_take_image_minimums_and_check_bounds() {
        let known: BTreeMap<String, String> =
            [("cpu", "count"), ("mem", "bytes"), ("cuda.device", "count")]
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect();
        let image = ImageSpec {
            canonical: "r/x:1".into(),
            registry: "r".into(),
            min: ResourceSlot::from_json(&json!({"cpu": "1", "mem": "512m"})).unwrap(),
            max: ResourceSlot::from_json(&json!({"cpu": "4"})).unwrap(),
        };
        let s = requested_slots(Some(&json!({})), &known, &image).unwrap();
        assert_eq!(
            s.to_json(),
            json!({"cpu": "1", "mem": "536870912", "cuda.device": "0"})
        );
        let s = requested_slots(Some(&json!({"cpu": "2", "mem": "1g"})), &known, &image).unwrap();
        assert_eq!(
            s.to_json(),
            json!({"cpu": "2", "mem": "1073741824", "cuda.device": "0"})
        );
        assert!(requested_slots(None, &known, &image).is_ok());
        let e = requested_slots(Some(&json!({"tpu": "1"})), &known, &image).unwrap_err();
        assert_eq!(e.msg.as_deref(), Some("Unknown resource slot: tpu"));
        assert!(requested_slots(Some(&json!({"cpu": "8"})), &known, &image).is_err());
        assert!(requested_slots(Some(&json!({"mem": "1m"})), &known, &image).is_err());
        assert!(requested_slots(Some(&json!({"cpu": "lots"})), &known, &image).is_err());
        assert!(requested_slots(Some(&json!([1])), &known, &image).is_err());
        let bare = ImageSpec {
            min: ResourceSlot::new(),
            max: ResourceSlot::new(),
            ..image
        };
        let s = requested_slots(Some(&json!({})), &known, &bare).unwrap();
        assert_eq!(s.get("mem"), Decimal::from(256 * 1024 * 1024));
        assert_eq!(s.get("cpu"), Decimal::ONE);
    }
}
