//! `POST /session/_/create-from-template` (api-rest.md §2.2, errata #5/#6): a session from
//! a stored task template, request fields overriding the template's, then the ordinary
//! `POST /session` path (validation, command, waiting) with the merged parameters.
//!
//! Fixed over 21.03.6: the template's session type applies unless the request names one
//! (the original's schema defaulted `type` to interactive, so batch templates could not
//! be started as batch without repeating the type).

use axum::extract::State;
use axum::http::Uri;
use axum::response::Response;
use serde_json::{json, Map, Value};

use crate::auth::{owner_access_key_param, resolve_owner, Auth};
use crate::commands::ReqId;
use crate::error::{ApiError, ApiResult};
use crate::params::{parse_value, Params};
use crate::routes::templates::load_task_template;
use crate::session::create::CreateParams;
use crate::state::AppState;

/// Request aliases → the canonical keys of [`CreateParams`], so a merged map never holds
/// two spellings of one field.
const TOP_ALIASES: &[(&str, &str)] = &[
    ("clientSessionToken", "name"),
    ("lang", "image"),
    ("sessionType", "type"),
    ("groupName", "group"),
    ("group_name", "group"),
    ("domainName", "domain"),
    ("domain_name", "domain"),
    ("clusterSize", "cluster_size"),
    ("clusterMode", "cluster_mode"),
    ("startsAt", "starts_at"),
    ("bootstrapScript", "bootstrap_script"),
];
const CONFIG_ALIASES: &[(&str, &str)] = &[
    ("mountMap", "mount_map"),
    ("scalingGroup", "scaling_group"),
    ("resourceOpts", "resource_opts"),
    ("agentList", "agent_list"),
];

/// What the 21.3.6 CLI sends for an option it did not get: click renders its `undefined`
/// default (`Undefined.token`) as a string (`start-template` without `-i`/`-c`), which
/// would override the template's image with a bogus one. Treated as absent.
const CLIENT_UNDEFINED: &str = "Undefined.token";

fn canonical(map: Map<String, Value>, aliases: &[(&str, &str)]) -> Map<String, Value> {
    map.into_iter()
        .filter(|(_, v)| !v.is_null() && v.as_str() != Some(CLIENT_UNDEFINED))
        .map(|(k, v)| {
            let k = aliases
                .iter()
                .find(|(a, _)| *a == k)
                .map(|(_, c)| c.to_string())
                .unwrap_or(k);
            (k, v)
        })
        .collect()
}

/// The `git clone` lines the original appends to the bootstrap script.
fn git_clone_script(git: &Value) -> Option<String> {
    let repo = git.get("repository")?.as_str()?;
    let s = |k: &str| git.get(k).and_then(Value::as_str).filter(|v| !v.is_empty());
    let target = s("dest_dir")
        .map(str::to_string)
        .unwrap_or_else(|| repo.rsplit('/').next().unwrap_or(repo).to_string());
    let mut cmd = String::from("git clone ");
    match git.get("credential").filter(|c| c.is_object()) {
        Some(c) => {
            let user = c
                .get("username")
                .and_then(Value::as_str)
                .unwrap_or_default();
            let pass = c
                .get("password")
                .and_then(Value::as_str)
                .unwrap_or_default();
            match repo.split_once("://") {
                Some((proto, url)) => cmd.push_str(&format!("{proto}://{user}:{pass}@{url}")),
                None => cmd.push_str(repo),
            }
        }
        None => cmd.push_str(repo),
    }
    if let Some(b) = s("branch") {
        cmd.push_str(&format!(" -b {b}"));
    }
    cmd.push_str(&format!(" {target}\n"));
    if let Some(commit) = s("commit") {
        cmd = format!("CWD=$(pwd)\n{cmd}cd {target}\ngit checkout {commit}\ncd $CWD\n");
    }
    Some(cmd)
}

/// The template's contribution to the creation parameters.
fn from_template(t: &Value, domain: String, group: Option<String>) -> Map<String, Value> {
    let mut p = Map::new();
    let mut config = Map::new();
    if let Some(image) = t.pointer("/spec/kernel/image") {
        p.insert("image".into(), image.clone());
    }
    p.insert("domain".into(), json!(domain));
    if let Some(g) = group {
        p.insert("group".into(), json!(g));
    }
    if let Some(tag) = t
        .pointer("/metadata/tag")
        .filter(|v| v.as_str().is_some_and(|s| !s.is_empty()))
    {
        p.insert("tag".into(), tag.clone());
    }
    if let Some(ty) = t.pointer("/spec/session_type") {
        p.insert("type".into(), ty.clone());
    }
    if let Some(env) = t
        .pointer("/spec/kernel/environ")
        .filter(|e| e.as_object().is_some_and(|o| !o.is_empty()))
    {
        config.insert("environ".into(), env.clone());
    }
    if let Some(mounts) = t
        .pointer("/spec/mounts")
        .and_then(Value::as_object)
        .filter(|m| !m.is_empty())
    {
        config.insert("mounts".into(), json!(mounts.keys().collect::<Vec<_>>()));
        let map: Map<String, Value> = mounts
            .iter()
            .filter(|(_, v)| v.is_string())
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        config.insert("mount_map".into(), Value::Object(map));
    }
    if let Some(res) = t.pointer("/spec/resources").filter(|r| r.is_object()) {
        config.insert("resources".into(), res.clone());
    }
    if let Some(b) = t
        .pointer("/spec/kernel/run/bootstrap")
        .filter(|v| v.is_string())
    {
        p.insert("bootstrap_script".into(), b.clone());
    }
    if let Some(s) = t
        .pointer("/spec/kernel/run/startup_command")
        .filter(|v| v.is_string())
    {
        p.insert("startupCommand".into(), s.clone());
    }
    p.insert("config".into(), Value::Object(config));
    p
}

pub async fn create_from_template(
    State(state): State<AppState>,
    Auth(user): Auth,
    req_id: ReqId,
    uri: Uri,
    Params(raw): Params<Value>,
) -> ApiResult<Response> {
    let Value::Object(mut req) = raw else {
        return Err(ApiError::invalid_api_params().with_msg("Malformed body"));
    };
    let template_id = match req
        .remove("template_id")
        .or_else(|| req.remove("templateId"))
    {
        Some(Value::String(s)) => s,
        _ => {
            return Err(ApiError::invalid_api_params()
                .with_msg("Input validation error")
                .with_data(json!({ "template_id": "is required" })))
        }
    };
    let owner = resolve_owner(&state, &user, owner_access_key_param(&uri).as_deref()).await?;
    let (template, domain, group) = load_task_template(&state, &user, &owner, &template_id).await?;

    let mut req = canonical(req, TOP_ALIASES);
    let req_config = match req.remove("config") {
        None => Map::new(),
        Some(Value::Object(c)) => canonical(c, CONFIG_ALIASES),
        Some(_) => {
            return Err(ApiError::invalid_api_params()
                .with_msg("Input validation error")
                .with_data(json!({ "config": "value is not a dict" })))
        }
    };
    if req_config.contains_key("preopen_ports") {
        return Err(ApiError::invalid_api_params()
            .with_msg("Input validation error")
            .with_data(json!({ "config.preopen_ports": "preopen_ports is not allowed key" })));
    }
    let mut merged = from_template(&template, domain, group);
    let mut config = match merged.remove("config") {
        Some(Value::Object(c)) => c,
        _ => Map::new(),
    };
    config.extend(req_config);
    merged.extend(req);
    if let Some(git) = template
        .pointer("/spec/kernel/git")
        .filter(|g| g.is_object())
    {
        if let Some(clone) = git_clone_script(git) {
            let mut script = merged
                .get("bootstrap_script")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            script.push('\n');
            script.push_str(&clone);
            merged.insert("bootstrap_script".into(), json!(script));
        }
    }
    merged.insert("config".into(), Value::Object(config));
    let params: CreateParams = parse_value(Value::Object(merged))?;
    crate::routes::session::create(State(state), Auth(user), req_id, uri, Params(params)).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn git_lines() {
        let g = json!({"repository": "https://h/x/repo.git", "branch": "dev", "commit": "abc",
            "credential": {"username": "u", "password": "p"}, "dest_dir": null});
        assert_eq!(
            git_clone_script(&g).unwrap(),
            "CWD=$(pwd)\ngit clone https://u:p@h/x/repo.git -b dev repo.git\ncd repo.git\ngit checkout abc\ncd $CWD\n"
        );
    }
}
