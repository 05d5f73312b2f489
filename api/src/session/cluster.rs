//! `POST /session/_/create-cluster` (api-rest.md §2.3): a session built from a stored
//! *cluster template* (`session_templates` row of type `CLUSTER`), whose `spec.nodes`
//! name *task templates* (type `TASK`) by id, each with a role and a replica count.
//!
//! Every node is validated through the one creation path ([`super::create::plan`]) with
//! its task template's image, environment, bootstrap/startup, mounts and resources, so the
//! checks (group, domain, image registry, vfolders, scaling group, slots) are those of
//! `POST /session`; the nodes' kernels are then merged into one session (one command, one
//! transaction). The original read `spec.kernel` of the *cluster* template, which a
//! cluster template does not have, so its create-cluster always failed with a 500.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use bai_events::session::{KernelSpec, SessionSpec};

use super::create::{plan, CreateConfig, CreateParams, Plan, MAX_CLUSTER_SIZE};
use super::session_already_exists;
use crate::auth::{Owner, UserRole};
use crate::error::{ApiError, ApiResult};
use crate::params::de;
use crate::state::AppState;

/// The role that must appear exactly once, with one replica (the original's DEFAULT_ROLE).
pub const MAIN_ROLE: &str = "main";

fn default_group() -> String {
    "default".into()
}
fn default_domain() -> String {
    "default".into()
}

/// The request body (strict, like the original's trafaret dict).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CreateClusterParams {
    #[serde(rename = "clientSessionToken")]
    pub name: String,
    #[serde(default, alias = "templateId")]
    pub template_id: Option<String>,
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
    #[serde(default, alias = "scalingGroup")]
    pub scaling_group: Option<String>,
    #[serde(default)]
    pub tag: Option<String>,
    #[serde(default, rename = "enqueueOnly", deserialize_with = "de::tobool")]
    pub enqueue_only: bool,
    #[serde(default, rename = "maxWaitSeconds", deserialize_with = "de::opt_int")]
    pub max_wait_seconds: Option<i64>,
    #[serde(default)]
    pub owner_access_key: Option<String>,
}

pub fn task_template_not_found() -> ApiError {
    ApiError::new(
        axum::http::StatusCode::NOT_FOUND,
        "task-template-not-found",
        "No such task template.",
    )
}

fn invalid(msg: impl Into<String>) -> ApiError {
    ApiError::invalid_api_params().with_msg(msg)
}

// --- stored template documents (the original's cluster_template_v1 / task_template_v1) ---

#[derive(Debug, Deserialize)]
pub struct ClusterTemplate {
    pub mode: String,
    pub spec: ClusterSpec,
}

#[derive(Debug, Deserialize)]
pub struct ClusterSpec {
    #[serde(default)]
    pub environ: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub mounts: Option<BTreeMap<String, Value>>,
    pub nodes: Vec<ClusterNode>,
}

#[derive(Debug, Deserialize)]
pub struct ClusterNode {
    pub role: String,
    #[serde(alias = "sessionTemplate")]
    pub session_template: String,
    #[serde(default = "one")]
    pub replicas: i64,
}

fn one() -> i64 {
    1
}

#[derive(Debug, Deserialize)]
pub struct TaskTemplate {
    #[serde(default)]
    pub metadata: Option<TaskMetadata>,
    pub spec: TaskSpec,
}

#[derive(Debug, Deserialize)]
pub struct TaskMetadata {
    #[serde(default)]
    pub tag: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TaskSpec {
    pub kernel: TaskKernel,
    #[serde(default)]
    pub scaling_group: Option<String>,
    #[serde(default)]
    pub mounts: Option<BTreeMap<String, Value>>,
    #[serde(default)]
    pub resources: Option<Value>,
}

#[derive(Debug, Deserialize)]
pub struct TaskKernel {
    pub image: String,
    #[serde(default)]
    pub environ: Option<BTreeMap<String, String>>,
    #[serde(default)]
    pub run: Option<TaskRun>,
    #[serde(default)]
    pub git: Option<TaskGit>,
}

#[derive(Debug, Deserialize)]
pub struct TaskRun {
    #[serde(default)]
    pub bootstrap: Option<String>,
    #[serde(default, alias = "startup", alias = "startupCommand")]
    pub startup_command: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct TaskGit {
    pub repository: String,
    #[serde(default)]
    pub commit: Option<String>,
    #[serde(default)]
    pub branch: Option<String>,
    #[serde(default)]
    pub credential: Option<GitCredential>,
    #[serde(default, alias = "destinationDir", alias = "dest_dir")]
    pub destination_dir: Option<String>,
}

#[derive(Debug, Deserialize)]
pub struct GitCredential {
    pub username: String,
    pub password: String,
}

/// The original's git-clone lines appended to a template's bootstrap script.
pub fn git_bootstrap(git: &TaskGit) -> String {
    let target = git
        .destination_dir
        .clone()
        .filter(|d| !d.is_empty())
        .unwrap_or_else(|| {
            git.repository
                .rsplit('/')
                .next()
                .unwrap_or_default()
                .to_string()
        });
    let mut cmd = "git clone ".to_string();
    match (&git.credential, git.repository.split_once("://")) {
        (Some(c), Some((proto, url))) => {
            cmd.push_str(&format!("{proto}://{}:{}@{url}", c.username, c.password))
        }
        _ => cmd.push_str(&git.repository),
    }
    if let Some(b) = git.branch.as_deref().filter(|b| !b.is_empty()) {
        cmd.push_str(&format!(" -b {b}"));
    }
    cmd.push_str(&format!(" {target}\n"));
    if let Some(c) = git.commit.as_deref().filter(|c| !c.is_empty()) {
        cmd = format!("CWD=$(pwd)\n{cmd}cd {target}\ngit checkout {c}\ncd $CWD\n");
    }
    cmd
}

/// Checks the node list as the original's `check_cluster_template`: roles unique, one
/// `main` role with one replica, replicas ≥ 1, template ids are UUIDs.
pub fn check_cluster_template(t: &ClusterTemplate) -> Result<Vec<(String, Uuid, i64)>, String> {
    if t.mode != "single-node" && t.mode != "multi-node" {
        return Err(format!("{:?} is not a valid cluster mode", t.mode));
    }
    let mut roles: Vec<&str> = Vec::new();
    let mut out = Vec::new();
    for n in &t.spec.nodes {
        if roles.contains(&n.role.as_str()) {
            return Err("Each role can only be defined once".into());
        }
        if n.role.is_empty()
            || !n
                .role
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
        {
            return Err(format!("Invalid role name: {:?}", n.role));
        }
        if n.role == MAIN_ROLE && n.replicas != 1 {
            return Err("One and only one main node must be created per cluster".into());
        }
        if n.replicas < 1 {
            return Err(format!("The role {} needs at least one replica", n.role));
        }
        let id = Uuid::parse_str(&n.session_template)
            .map_err(|_| format!("Invalid session template id: {}", n.session_template))?;
        roles.push(&n.role);
        out.push((n.role.clone(), id, n.replicas));
    }
    if !roles.contains(&MAIN_ROLE) {
        return Err("One and only one main node must be created per cluster".into());
    }
    // The main node first: its kernel is the session (session id = main kernel id).
    out.sort_by_key(|(role, _, _)| role != MAIN_ROLE);
    Ok(out)
}

/// A stored template the owner may use: active, of the given type, and the owner's own or
/// one of their groups' (superadmins: any). The original did not check ownership at all.
async fn load_template(state: &AppState, owner: &Owner, id: Uuid, kind: &str) -> ApiResult<Value> {
    let mut txn = state.db.begin_readonly().await?;
    let row: Option<Value> = sqlx::query_scalar(
        "SELECT t.template FROM session_templates t WHERE t.id = $1 AND t.is_active \
         AND t.type::text = $2 AND ($4 OR t.user_uuid = $3 OR t.group_id IN \
           (SELECT group_id FROM association_groups_users WHERE user_id = $3))",
    )
    .bind(id)
    .bind(kind)
    .bind(owner.user_uuid)
    .bind(owner.role == UserRole::Superadmin)
    .fetch_optional(&mut *txn)
    .await?;
    txn.commit().await?;
    row.ok_or_else(task_template_not_found)
}

/// Splits a template `mounts` map into (names, mount_map entries with a path).
fn mounts_of(m: &Option<BTreeMap<String, Value>>) -> (Vec<String>, BTreeMap<String, String>) {
    let mut names = Vec::new();
    let mut map = BTreeMap::new();
    for (name, path) in m.iter().flatten() {
        names.push(name.clone());
        if let Some(p) = path.as_str().filter(|p| !p.is_empty()) {
            map.insert(name.clone(), p.to_string());
        }
    }
    (names, map)
}

/// Validates a create-cluster request and resolves it into one [`SessionSpec`].
pub async fn plan_cluster(
    state: &AppState,
    requester_is_owner: bool,
    requester_is_superadmin: bool,
    owner: &Owner,
    p: &CreateClusterParams,
) -> ApiResult<Box<SessionSpec>> {
    let template_id = p
        .template_id
        .as_deref()
        .map(|t| Uuid::parse_str(t).map_err(|_| invalid(format!("Invalid template_id: {t}"))))
        .transpose()?
        .ok_or_else(task_template_not_found)?;
    let raw = load_template(state, owner, template_id, "CLUSTER").await?;
    let cluster: ClusterTemplate = serde_json::from_value(raw)
        .map_err(|e| invalid(format!("The cluster template is invalid: {e}")))?;
    let nodes = check_cluster_template(&cluster).map_err(invalid)?;
    let total: i64 = nodes.iter().map(|(_, _, r)| r).sum();
    if total > MAX_CLUSTER_SIZE {
        return Err(invalid(format!(
            "cluster size must be between 1 and {MAX_CLUSTER_SIZE}"
        )));
    }
    let (cluster_mounts, cluster_map) = mounts_of(&cluster.spec.mounts);
    let cluster_environ = cluster.spec.environ.clone().unwrap_or_default();

    let mut session: Option<Box<SessionSpec>> = None;
    let mut kernels: Vec<KernelSpec> = Vec::new();
    for (role, task_id, replicas) in nodes {
        let raw = load_template(state, owner, task_id, "TASK").await?;
        let task: TaskTemplate = serde_json::from_value(raw)
            .map_err(|e| invalid(format!("The task template {task_id} is invalid: {e}")))?;
        let (mut mounts, mut mount_map) = (cluster_mounts.clone(), cluster_map.clone());
        let (task_mounts, task_map) = mounts_of(&task.spec.mounts);
        for m in task_mounts {
            if !mounts.contains(&m) {
                mounts.push(m);
            }
        }
        mount_map.extend(task_map);
        let mut environ = cluster_environ.clone();
        environ.extend(task.spec.kernel.environ.clone().unwrap_or_default());
        let run = task.spec.kernel.run.as_ref();
        let mut bootstrap = run.and_then(|r| r.bootstrap.clone());
        if let Some(git) = &task.spec.kernel.git {
            let mut b = bootstrap.unwrap_or_default();
            b.push('\n');
            b.push_str(&git_bootstrap(git));
            bootstrap = Some(b);
        }
        let params = CreateParams {
            name: p.name.clone(),
            image: task.spec.kernel.image.clone(),
            session_type: p.session_type.clone(),
            group: p.group.clone(),
            domain: p.domain.clone(),
            cluster_size: replicas,
            cluster_mode: Some(cluster.mode.clone()),
            config: Some(CreateConfig {
                mounts: Some(mounts),
                mount_map: Some(mount_map),
                environ: Some(environ),
                scaling_group: p.scaling_group.clone().or(task.spec.scaling_group.clone()),
                resources: task.spec.resources.clone(),
                ..Default::default()
            }),
            tag: p
                .tag
                .clone()
                .or_else(|| task.metadata.as_ref().and_then(|m| m.tag.clone())),
            enqueue_only: p.enqueue_only,
            max_wait_seconds: p.max_wait_seconds,
            starts_at: None,
            // An existing live session with this name is an error here (no reuse).
            reuse_if_exists: false,
            startup_command: run.and_then(|r| r.startup_command.clone()),
            bootstrap_script: bootstrap,
            owner_access_key: None,
        };
        let spec = match plan(
            state,
            requester_is_owner,
            requester_is_superadmin,
            owner,
            params,
        )
        .await?
        {
            Plan::Create(spec) => spec,
            Plan::Reuse(_) => return Err(session_already_exists()),
        };
        match session.as_mut() {
            None => {
                // The main node (sorted first): its single kernel is the session's.
                kernels.extend(spec.kernels.iter().cloned());
                session = Some(spec);
            }
            Some(main) => {
                for m in &spec.mounts {
                    if !main.mounts.iter().any(|x| x.first() == m.first()) {
                        main.mounts.push(m.clone());
                    }
                }
                for (i, k) in spec.kernels.iter().enumerate() {
                    let idx = i as i32 + 1;
                    kernels.push(KernelSpec {
                        id: Uuid::new_v4(),
                        cluster_role: role.clone(),
                        cluster_idx: idx,
                        cluster_hostname: format!("{role}{idx}"),
                        occupied_slots: k.occupied_slots.clone(),
                        image: Some(spec.image.clone()),
                        registry: Some(spec.registry.clone()),
                        environ: Some(spec.environ.clone()),
                        bootstrap_script: spec.bootstrap_script.clone(),
                        startup_command: spec.startup_command.clone(),
                    });
                }
            }
        }
    }
    let mut spec = session.ok_or_else(|| invalid("The cluster template has no nodes"))?;
    spec.cluster_size = kernels.len() as i32;
    spec.kernels = kernels;
    Ok(spec)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn cluster_template_rules() {
        let t = |nodes: Value| -> ClusterTemplate {
            serde_json::from_value(json!({"mode": "multi-node", "spec": {"nodes": nodes}})).unwrap()
        };
        let id = Uuid::new_v4().to_string();
        let ok = check_cluster_template(&t(json!([
            {"role": "worker", "session_template": id, "replicas": 2},
            {"role": "main", "sessionTemplate": id},
        ])))
        .unwrap();
        assert_eq!(ok[0].0, "main", "main first");
        assert_eq!(ok[1].2, 2);
        assert!(
            check_cluster_template(&t(json!([{"role": "worker", "session_template": id}])))
                .is_err()
        );
        assert!(check_cluster_template(&t(json!([
            {"role": "main", "session_template": id, "replicas": 2}
        ])))
        .is_err());
        assert!(check_cluster_template(&t(json!([
            {"role": "main", "session_template": id},
            {"role": "main", "session_template": id}
        ])))
        .is_err());
        assert!(check_cluster_template(&t(json!([
            {"role": "main", "session_template": "nope"}
        ])))
        .is_err());
    }

    #[test]
    fn git_lines() {
        let g: TaskGit = serde_json::from_value(json!({
            "repository": "https://github.com/a/b", "branch": "dev", "commit": "abc",
            "credential": {"username": "u", "password": "p"}
        }))
        .unwrap();
        assert_eq!(
            git_bootstrap(&g),
            "CWD=$(pwd)\ngit clone https://u:p@github.com/a/b -b dev b\ncd b\ngit checkout abc\ncd $CWD\n"
        );
    }
}
