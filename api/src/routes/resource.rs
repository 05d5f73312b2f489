//! `/resource/presets` and `/resource/check-presets` (api-rest.md §6.2).

use std::collections::BTreeMap;

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};
use uuid::Uuid;

use bai_core::Txn;

use crate::auth::Auth;
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::routes::scaling_groups::allowed_scaling_groups;
use crate::slots::{self, Amount, Slots};
use crate::state::AppState;

/// Kernel statuses that count against keypair/group/domain limits.
const USER_OCCUPYING: &str = "('SCHEDULED', 'PREPARING', 'BUILDING', 'PULLING', 'RUNNING', \
     'RESTARTING', 'RESIZING', 'SUSPENDED', 'ERROR')";
/// Kernel statuses that occupy agent capacity.
const AGENT_OCCUPYING: &str = "('SCHEDULED', 'PREPARING', 'BUILDING', 'PULLING', 'RUNNING', \
     'RESTARTING', 'RESIZING', 'SUSPENDED', 'TERMINATING', 'ERROR')";

fn shared_memory(v: Option<i64>) -> Value {
    v.map(|m| Value::String(m.to_string()))
        .unwrap_or(Value::Null)
}

async fn load_presets(txn: &mut Txn) -> ApiResult<Vec<(String, Value, Option<i64>)>> {
    Ok(sqlx::query_as(
        "SELECT name, resource_slots, shared_memory FROM resource_presets ORDER BY name",
    )
    .fetch_all(&mut **txn)
    .await?)
}

async fn known_slots(state: &AppState) -> ApiResult<BTreeMap<String, String>> {
    slots::known_slot_types(&state.etcd)
        .await
        .map_err(ApiError::internal_from)
}

/// `GET /resource/presets`: every preset, reduced to the known slot types.
pub async fn list_presets(
    State(state): State<AppState>,
    Auth(_user): Auth,
) -> ApiResult<Json<Value>> {
    let known = known_slots(&state).await?;
    let mut txn = state.db.begin_readonly().await?;
    let rows = load_presets(&mut txn).await?;
    txn.commit().await?;
    let presets: Vec<Value> = rows
        .into_iter()
        .map(|(name, res, shmem)| {
            json!({
                "name": name,
                "shared_memory": shared_memory(shmem),
                "resource_slots": slots::to_json(&slots::normalize(&slots::from_json(&res), &known)),
            })
        })
        .collect();
    Ok(Json(json!({ "presets": presets })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckPresetsParams {
    #[serde(default)]
    pub scaling_group: Option<String>,
    #[serde(default = "default_group")]
    pub group: String,
}

fn default_group() -> String {
    "default".into()
}

/// Σ `occupied_slots` of kernels matching `filter` (bound to `$1`), known slots only,
/// missing ones as zero.
async fn occupancy<T>(
    txn: &mut Txn,
    filter: &str,
    bind: T,
    known: &BTreeMap<String, String>,
) -> ApiResult<Slots>
where
    T: for<'q> sqlx::Encode<'q, sqlx::Postgres> + sqlx::Type<sqlx::Postgres> + Send,
{
    let rows: Vec<Value> = sqlx::query_scalar(&format!(
        "SELECT occupied_slots FROM kernels WHERE {filter} = $1 AND status IN {USER_OCCUPYING}"
    ))
    .bind(bind)
    .fetch_all(&mut **txn)
    .await?;
    let sum = rows
        .iter()
        .fold(slots::filled(known, Amount::ZERO), |acc, r| {
            slots::add(&acc, &slots::from_json(r))
        });
    Ok(sum
        .into_iter()
        .filter(|(k, _)| known.contains_key(k))
        .collect())
}

/// `POST /resource/check-presets`: what the caller may still allocate, overall and per
/// allowed scaling group, and which presets fit on some agent.
pub async fn check_presets(
    State(state): State<AppState>,
    Auth(user): Auth,
    Params(p): Params<CheckPresetsParams>,
) -> ApiResult<Json<Value>> {
    let known = known_slots(&state).await?;
    let group_visible = state
        .etcd
        .get("config/api/resources/group_resource_visibility")
        .await
        .map_err(ApiError::internal_from)?
        .is_some_and(|v| {
            matches!(
                v.trim().to_ascii_lowercase().as_str(),
                "t" | "true" | "y" | "yes" | "on" | "1" | "1.0"
            )
        });
    let mut txn = state.db.begin_readonly().await?;

    // Keypair limit.
    let policy: Option<(Value, String)> = sqlx::query_as(
        "SELECT total_resource_slots, default_for_unspecified::text FROM keypair_resource_policies WHERE name = $1",
    )
    .bind(&user.resource_policy)
    .fetch_optional(&mut *txn)
    .await?;
    let (kp_total, kp_default) = policy.unwrap_or((json!({}), "LIMITED".into()));
    let keypair_limits = slots::from_policy(&kp_total, kp_default == "UNLIMITED", &known);
    let keypair_using = occupancy(&mut txn, "access_key", user.access_key.clone(), &known).await?;
    let mut keypair_remaining = slots::sub(&keypair_limits, &keypair_using);

    // Group limit: the caller must be a member of the named group of their domain. (The
    // original crashes with a 500 here for non-members; we answer 400.)
    let group: Option<(Uuid, Option<Value>)> = sqlx::query_as(
        "SELECT g.id, g.total_resource_slots FROM groups g \
         JOIN association_groups_users a ON a.group_id = g.id \
         WHERE a.user_id = $1 AND g.name = $2 AND g.domain_name = $3",
    )
    .bind(user.user_uuid)
    .bind(&p.group)
    .bind(&user.domain_name)
    .fetch_optional(&mut *txn)
    .await?;
    let Some((group_id, group_total)) = group else {
        return Err(ApiError::invalid_api_params().with_msg("Unknown user group"));
    };
    let mut group_limits =
        slots::from_policy(&group_total.unwrap_or_else(|| json!({})), true, &known);
    let mut group_using = occupancy(&mut txn, "group_id", group_id, &known).await?;
    let mut group_remaining = slots::sub(&group_limits, &group_using);

    // Domain limit.
    let domain_total: Option<Option<Value>> =
        sqlx::query_scalar("SELECT total_resource_slots FROM domains WHERE name = $1")
            .bind(&user.domain_name)
            .fetch_optional(&mut *txn)
            .await?;
    let domain_limits = slots::from_policy(
        &domain_total.flatten().unwrap_or_else(|| json!({})),
        true,
        &known,
    );
    let domain_using = occupancy(&mut txn, "domain_name", user.domain_name.clone(), &known).await?;
    let domain_remaining = slots::sub(&domain_limits, &domain_using);

    // The effective remaining amount is the tightest of the three (the original folds it
    // into `keypair_remaining` for compatibility).
    for slot in known.keys() {
        let m = [&keypair_remaining, &group_remaining, &domain_remaining]
            .iter()
            .map(|s| s.get(slot).copied().unwrap_or(Amount::ZERO))
            .reduce(Amount::min)
            .unwrap_or(Amount::ZERO);
        keypair_remaining.insert(slot.clone(), m);
    }

    // Per scaling group.
    let mut sgroup_names: Vec<String> = allowed_scaling_groups(
        &mut txn,
        &user.domain_name,
        Some(group_id),
        &user.access_key,
    )
    .await?;
    if let Some(sg) = &p.scaling_group {
        if !sgroup_names.contains(sg) {
            return Err(ApiError::invalid_api_params().with_msg("Unknown scaling group"));
        }
        sgroup_names = vec![sg.clone()];
    }
    let zero = slots::filled(&known, Amount::ZERO);
    let mut per_sgroup: BTreeMap<String, (Slots, Slots)> = sgroup_names
        .iter()
        .map(|n| (n.clone(), (zero.clone(), zero.clone())))
        .collect();
    let used: Vec<(Value, Option<String>)> = sqlx::query_as(&format!(
        "SELECT occupied_slots, scaling_group FROM kernels \
         WHERE user_uuid = $1 AND status IN {AGENT_OCCUPYING} AND scaling_group = ANY($2)"
    ))
    .bind(user.user_uuid)
    .bind(&sgroup_names)
    .fetch_all(&mut *txn)
    .await?;
    for (occ, sg) in used {
        if let Some(entry) = sg.and_then(|sg| per_sgroup.get_mut(&sg)) {
            entry.0 = slots::add(&entry.0, &slots::from_json(&occ));
        }
    }
    let agents: Vec<(Value, Value, String)> = sqlx::query_as(
        "SELECT available_slots, occupied_slots, scaling_group FROM agents \
         WHERE status = 'ALIVE' AND scaling_group = ANY($1)",
    )
    .bind(&sgroup_names)
    .fetch_all(&mut *txn)
    .await?;
    let mut sgroup_remaining = zero.clone();
    let mut agent_slots = Vec::with_capacity(agents.len());
    for (available, occupied, sg) in agents {
        let remaining = slots::add(
            &slots::sub(&slots::from_json(&available), &slots::from_json(&occupied)),
            &zero,
        );
        sgroup_remaining = slots::add(&sgroup_remaining, &remaining);
        if let Some(entry) = per_sgroup.get_mut(&sg) {
            entry.1 = slots::add(&entry.1, &remaining);
        }
        agent_slots.push(remaining);
    }
    let cap = |s: &mut Slots| {
        for slot in known.keys() {
            if let Some(v) = s.get_mut(slot) {
                *v = keypair_remaining
                    .get(slot)
                    .copied()
                    .unwrap_or(Amount::ZERO)
                    .min(*v);
            }
        }
    };
    cap(&mut sgroup_remaining);
    let mut scaling_groups = Map::new();
    for (name, (using, mut remaining)) in per_sgroup {
        cap(&mut remaining);
        scaling_groups.insert(
            name,
            json!({ "using": slots::to_json(&using), "remaining": slots::to_json(&remaining) }),
        );
    }

    let presets: Vec<Value> = load_presets(&mut txn)
        .await?
        .into_iter()
        .map(|(name, res, shmem)| {
            let preset = slots::normalize(&slots::from_json(&res), &known);
            let allocatable = slots::ge(&keypair_remaining, &preset)
                && agent_slots.iter().any(|a| slots::ge(a, &preset));
            json!({
                "name": name,
                "resource_slots": slots::to_json(&preset),
                "shared_memory": shared_memory(shmem),
                "allocatable": allocatable,
            })
        })
        .collect();
    txn.commit().await?;

    if !group_visible {
        let nan = slots::filled(&known, Amount::NaN);
        group_limits = nan.clone();
        group_using = nan.clone();
        group_remaining = nan;
    }
    Ok(Json(json!({
        "keypair_limits": slots::to_json(&keypair_limits),
        "keypair_using": slots::to_json(&keypair_using),
        "keypair_remaining": slots::to_json(&keypair_remaining),
        "group_limits": slots::to_json(&group_limits),
        "group_using": slots::to_json(&group_using),
        "group_remaining": slots::to_json(&group_remaining),
        "scaling_group_remaining": slots::to_json(&sgroup_remaining),
        "scaling_groups": scaling_groups,
        "presets": presets,
    })))
}
