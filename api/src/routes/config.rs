//! `/config`: etcd-backed configuration (api-rest.md §6.5). Reads go to etcd directly;
//! writes (`set`, `delete`) travel as commands to a worker.

use axum::extract::State;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Map, Value};

use bai_events::Command;

use crate::auth::SuperAdmin;
use crate::commands::{self, ReqId};
use crate::error::{ApiError, ApiResult};
use crate::params::Params;
use crate::slots;
use crate::state::AppState;

/// Leaves one `/config/set` may write (the original's limit).
pub const MAX_SET_LEAVES: usize = 16;

fn etcd_err(e: anyhow::Error) -> ApiError {
    ApiError::internal_from(e)
}

/// `GET /config/resource-slots` (anonymous): `{slot: "count"|"bytes"|"unique"}`.
pub async fn resource_slots(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let known = slots::known_slot_types(&state.etcd)
        .await
        .map_err(etcd_err)?;
    Ok(Json(json!(known)))
}

/// `GET /config/vfolder-types` (anonymous): the keys of etcd `volumes/_types`, or
/// `["user"]` when none are configured.
pub async fn vfolder_types(State(state): State<AppState>) -> ApiResult<Json<Value>> {
    let keys = state
        .etcd
        .get_prefix("volumes/_types/")
        .await
        .map_err(etcd_err)?;
    let mut types: Vec<String> = keys
        .keys()
        .filter_map(|k| k.split('/').next())
        .filter(|k| !k.is_empty())
        .map(str::to_string)
        .collect();
    types.dedup();
    if types.is_empty() {
        types.push("user".into());
    }
    Ok(Json(json!(types)))
}

/// `GET /config/docker-registries` (superadmin): `{registry_name: url}`.
pub async fn docker_registries(
    State(state): State<AppState>,
    SuperAdmin(_u): SuperAdmin,
) -> ApiResult<Json<Value>> {
    let keys = state
        .etcd
        .get_prefix("config/docker/registry/")
        .await
        .map_err(etcd_err)?;
    let registries: Map<String, Value> = keys
        .into_iter()
        .filter(|(k, _)| !k.is_empty() && !k.contains('/'))
        .map(|(k, v)| (etcd_unquote(&k), Value::String(v)))
        .collect();
    Ok(Json(Value::Object(registries)))
}

/// Reverses the `%XX` quoting Backend.AI applies to etcd key components.
pub fn etcd_unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Builds the nested document of a key prefix the way the original's
/// `make_dict_from_pairs` does: path components become objects, and a value whose key is
/// also a prefix of others moves to the `""` key of that object.
pub fn nest(pairs: impl IntoIterator<Item = (String, String)>) -> Value {
    let mut root = Map::new();
    for (key, value) in pairs {
        let parts: Vec<String> = key.split('/').map(etcd_unquote).collect();
        insert_path(&mut root, &parts, value);
    }
    Value::Object(root)
}

fn insert_path(node: &mut Map<String, Value>, path: &[String], value: String) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    if rest.is_empty() {
        match node.get_mut(first) {
            // A leaf arriving after its sub-keys: keep it under "".
            Some(Value::Object(existing)) => {
                existing.insert(String::new(), Value::String(value));
            }
            _ => {
                node.insert(first.clone(), Value::String(value));
            }
        }
        return;
    }
    let entry = node
        .entry(first.clone())
        .or_insert_with(|| Value::Object(Map::new()));
    if !entry.is_object() {
        let leaf = entry.take();
        *entry = Value::Object(Map::from_iter([(String::new(), leaf)]));
    }
    if let Value::Object(child) = entry {
        insert_path(child, rest, value);
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GetParams {
    pub key: String,
    /// A strict JSON boolean, as in the original (not "tobool").
    #[serde(default)]
    pub prefix: bool,
}

/// `POST /config/get` (superadmin): `{"result": value | nested map | null}`.
pub async fn get(
    State(state): State<AppState>,
    SuperAdmin(_u): SuperAdmin,
    Params(p): Params<GetParams>,
) -> ApiResult<Json<Value>> {
    let result = if p.prefix {
        let prefix = format!("{}/", p.key.trim_end_matches('/'));
        let pairs = state.etcd.get_prefix(&prefix).await.map_err(etcd_err)?;
        nest(pairs)
    } else {
        state
            .etcd
            .get(&p.key)
            .await
            .map_err(etcd_err)?
            .map(Value::String)
            .unwrap_or(Value::Null)
    };
    Ok(Json(json!({ "result": result })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SetParams {
    pub key: String,
    pub value: Value,
}

/// `POST /config/set` (superadmin): a string (numbers and booleans are stored as their
/// text), or an object written as a key tree of at most 16 leaves → `{"result": "ok"}`.
pub async fn set(
    State(state): State<AppState>,
    SuperAdmin(_u): SuperAdmin,
    req_id: ReqId,
    Params(p): Params<SetParams>,
) -> ApiResult<Json<Value>> {
    let value = match p.value {
        // etcd stores text; the CLI JSON-decodes its argument first, so `42` or `true`
        // arrive as JSON scalars (the original refused them with a 400).
        Value::Number(n) => Value::String(n.to_string()),
        Value::Bool(b) => Value::String(b.to_string()),
        other => other,
    };
    match &value {
        Value::String(_) => {}
        Value::Object(_) => {
            let mut leaves = Vec::new();
            bai_core::etcd::flatten_json(p.key.trim_end_matches('/'), &value, &mut leaves);
            if leaves.len() > MAX_SET_LEAVES {
                return Err(ApiError::invalid_api_params().with_msg("Too large update"));
            }
        }
        _ => {
            return Err(ApiError::invalid_api_params()
                .with_msg("Input validation error")
                .with_data(
                    json!({ "value": "must be a string, a number, a boolean or a mapping" }),
                ))
        }
    }
    commands::send(&state, &req_id, Command::EtcdPut { key: p.key, value }).await?;
    Ok(Json(json!({ "result": "ok" })))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DeleteParams {
    pub key: String,
    #[serde(default)]
    pub prefix: bool,
}

/// `POST /config/delete` (superadmin) → `{"result": "ok"}`.
pub async fn delete(
    State(state): State<AppState>,
    SuperAdmin(_u): SuperAdmin,
    req_id: ReqId,
    Params(p): Params<DeleteParams>,
) -> ApiResult<Json<Value>> {
    commands::send(
        &state,
        &req_id,
        Command::EtcdDelete {
            key: p.key,
            prefix: p.prefix,
        },
    )
    .await?;
    Ok(Json(json!({ "result": "ok" })))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nesting() {
        let v = nest(vec![
            (
                "cr.backend.ai".to_string(),
                "https://cr.backend.ai".to_string(),
            ),
            ("cr.backend.ai/type".to_string(), "harbor2".to_string()),
            ("a%2Fb/c".to_string(), "1".to_string()),
            ("x/y".to_string(), "2".to_string()),
            ("x".to_string(), "3".to_string()),
        ]);
        assert_eq!(
            v,
            json!({
                "cr.backend.ai": {"": "https://cr.backend.ai", "type": "harbor2"},
                "a/b": {"c": "1"},
                "x": {"y": "2", "": "3"},
            })
        );
        assert_eq!(etcd_unquote("stable%2Fpython%zz"), "stable/python%zz");
    }
}
