//! The rest of issue 7 against the real services: `POST /session/_/create-cluster` from
//! stored cluster and task templates, `GET /session/_/match`, `shutdown-service`,
//! `download_single` and the app list; batch sessions destroyed when their task ends
//! (with exactly one session_terminated); `kernels.num_queries` counted per execute call
//! without a database write per request.

use std::collections::BTreeSet;
use std::time::Duration;

use futures::StreamExt;
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_agent::{Agent, AgentConfig, AgentHandle, SimConfig, SimFleet};
use bai_events::{Envelope, Event};
use bai_tests::app::{Extras, TestApp, USER_EMAIL};
use bai_tests::client::{problem_slug, SignedClient};
use bai_tests::{eventually, TIMEOUT};

// ---------------------------------------------------------------------------------------
// harness (as in sessions.rs)
// ---------------------------------------------------------------------------------------

async fn full_app() -> TestApp {
    bai_tests::init_tracing();
    TestApp::spawn_with_extras(|_| {}, Extras::full()).await
}

fn agent_config(app: &TestApp, id: &str) -> AgentConfig {
    let rabbit = app.rabbit.as_ref().expect("app with agents");
    rabbit.track_agent(id);
    let root = std::env::temp_dir().join(format!("bai-sessions-extra-{}", Uuid::new_v4().simple()));
    let mut cfg = AgentConfig::new(id, &rabbit.url, &rabbit.prefix, root);
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.destroy_grace = Duration::from_secs(3);
    cfg.set_slot("cpu", "4").unwrap();
    cfg.set_slot("mem", "8g").unwrap();
    cfg
}

async fn wait_agents_alive(app: &TestApp, ids: &[String]) {
    let ok = eventually(TIMEOUT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM agents WHERE id = ANY($1) AND status = 'ALIVE'",
        )
        .bind(ids)
        .fetch_one(app.db.db.pool())
        .await
        .ok()?; // a polling read may lose a serialization race with the ingest: "not yet"
        (n as usize == ids.len()).then_some(())
    })
    .await;
    assert!(ok.is_some(), "agents {ids:?} did not register");
}

async fn process_agent(app: &TestApp) -> AgentHandle {
    let id = format!("i-px-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let handle = Agent::spawn(agent_config(app, &id));
    wait_agents_alive(app, &[id]).await;
    handle
}

async fn sim_agents(app: &TestApp, count: usize) -> SimFleet {
    let rabbit = app.rabbit.as_ref().expect("app with agents");
    let mut cfg = SimConfig::new(count, &rabbit.url, &rabbit.prefix);
    cfg.id_prefix = format!("i-simx-{}-", &Uuid::new_v4().simple().to_string()[..6]);
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.start_delay = Duration::from_millis(20);
    cfg.slots = [
        ("cpu".to_string(), "4".to_string()),
        ("mem".to_string(), "8589934592".to_string()),
    ]
    .into();
    for i in 0..count {
        rabbit.track_agent(&cfg.agent_id(i));
    }
    let fleet = SimFleet::start(cfg).await.expect("simulated agents");
    wait_agents_alive(app, &fleet.agent_ids()).await;
    fleet
}

fn create_body(name: &str, extra: Value) -> Value {
    let mut body = json!({
        "tag": null, "name": name,
        "config": {"mounts": [], "environ": {}, "resources": {}, "resource_opts": {}, "scalingGroup": null,
                   "mount_map": {}, "preopen_ports": []},
        "clusterSize": 1, "clusterMode": "single-node", "starts_at": null, "bootstrap_script": null,
        "owner_access_key": null, "domain": "default", "group": "default", "type": "interactive",
        "enqueueOnly": false, "maxWaitSeconds": 0, "reuseIfExists": true, "startupCommand": null,
        "image": "python",
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            body[k] = v;
        }
    }
    body
}

async fn create_running(app: &TestApp, c: &SignedClient, name: &str) -> Uuid {
    let (status, body) = c
        .json(
            Method::POST,
            "/session",
            Some(&create_body(name, json!({}))),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "RUNNING", "{body}");
    let sid = Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap();
    app.track_redis_key(bai_api::session::access::last_access_key(sid));
    app.track_redis_key(bai_events::keys::kernel_num_queries_key(sid));
    sid
}

async fn statuses(app: &TestApp, sid: Uuid) -> Vec<String> {
    sqlx::query_scalar(
        "SELECT status::text FROM kernels WHERE session_id = $1 ORDER BY cluster_idx",
    )
    .bind(sid)
    .fetch_all(app.db.db.pool())
    .await
    .unwrap_or_default() // lost a serialization race: polled again
}

async fn wait_status(app: &TestApp, sid: Uuid, status: &str) {
    let ok = eventually(TIMEOUT, || async {
        let all = statuses(app, sid).await;
        (!all.is_empty() && all.iter().all(|s| s == status)).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "session {sid} never reached {status}: {:?}",
        statuses(app, sid).await
    );
}

/// Every ALIVE agent's `occupied_slots` equals the sum of its resource-occupying kernels.
async fn assert_occupancy_invariant(app: &TestApp) {
    let drift: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM agents a WHERE a.status = 'ALIVE' AND \
         COALESCE((a.occupied_slots->>'cpu')::numeric, 0) <> \
         (SELECT COALESCE(sum((k.occupied_slots->>'cpu')::numeric), 0) FROM kernels k \
          WHERE k.agent = a.id AND k.status::text = ANY($1))",
    )
    .bind(
        bai_workers::agents::kernels::AGENT_RESOURCE_OCCUPYING
            .iter()
            .map(|s| s.to_string())
            .collect::<Vec<_>>(),
    )
    .fetch_one(app.db.db.pool())
    .await
    .unwrap();
    assert_eq!(drift, 0, "agents whose occupied_slots drifted");
}

/// Counts `session_terminated` events of `sid` on `sub` for `window`.
async fn count_terminated(sub: &mut async_nats::Subscriber, sid: Uuid, window: Duration) -> usize {
    let mut n = 0;
    let _ = tokio::time::timeout(window, async {
        while let Some(msg) = sub.next().await {
            if let Ok(env) = Envelope::<Event>::from_slice(&msg.payload) {
                if matches!(env.body, Event::SessionTerminated { session_id, .. } if session_id == sid)
                {
                    n += 1;
                }
            }
        }
    })
    .await;
    n
}

/// The last-stat copier (also the num_queries copier) the worker runs in production.
fn spawn_stat_sync(app: &TestApp) -> CancellationToken {
    let stop = CancellationToken::new();
    let prefix = app
        .rabbit
        .as_ref()
        .map(|r| format!("{}:", r.prefix))
        .unwrap_or_default();
    tokio::spawn(bai_workers::usage::run_stat_sync(
        app.worker_ctx.clone(),
        bai_workers::usage::StatSyncOptions {
            redis_prefix: prefix,
        },
        stop.clone(),
    ));
    stop
}

// ---------------------------------------------------------------------------------------
// batch sessions end when their task ends
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn batch_sessions_are_destroyed_when_the_task_ends() {
    let app = full_app().await;
    let agent = process_agent(&app).await;
    let c = app.user().await;
    let mut sub = app
        .bus
        .bus
        .client()
        .subscribe(format!(
            "{}.evt.session_terminated.*",
            app.bus.bus.subjects().prefix()
        ))
        .await
        .unwrap();

    for (name, cmd, result, code) in [
        ("batch-ok", "echo working; sleep 0.3; exit 0", "SUCCESS", 0),
        ("batch-bad", "echo failing; exit 3", "FAILURE", 3),
    ] {
        let (status, body) = c
            .json(
                Method::POST,
                "/session",
                Some(&create_body(
                    name,
                    json!({"type": "batch", "startupCommand": cmd, "enqueueOnly": true}),
                )),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::CREATED, "{body}");
        let sid = Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap();
        wait_status(&app, sid, "TERMINATED").await;
        let (info, res, data, terminated_at): (
            Option<String>,
            String,
            Option<Value>,
            Option<chrono::DateTime<chrono::Utc>>,
        ) = sqlx::query_as(
            "SELECT status_info, result::text, status_data, terminated_at FROM kernels \
             WHERE session_id = $1 AND cluster_role = 'main'",
        )
        .bind(sid)
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
        assert_eq!(info.as_deref(), Some("task-finished"), "{name}");
        assert_eq!(res, result, "{name}");
        assert!(terminated_at.is_some(), "{name}: terminated_at set");
        let data = data.unwrap_or_default();
        assert_eq!(data["batch"]["exit_code"], code, "{name}: {data}");
        assert_eq!(data["session"]["status"], "terminated", "{name}: {data}");
        assert_eq!(
            count_terminated(&mut sub, sid, Duration::from_secs(2)).await,
            1,
            "{name}: exactly one session_terminated"
        );
    }
    let used: i32 =
        sqlx::query_scalar("SELECT concurrency_used FROM keypairs WHERE access_key = $1")
            .bind(&c.access_key)
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    assert_eq!(used, 0, "slots released");
    assert_occupancy_invariant(&app).await;
    agent.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// num_queries
// ---------------------------------------------------------------------------------------

async fn gql_num_queries(c: &SignedClient, sid: Uuid) -> i64 {
    let q = json!({"query": format!("query {{ compute_session(id: \"{sid}\") {{ num_queries status }} }}")});
    let (status, body) = c.json(Method::POST, "/admin/gql", Some(&q)).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body.get("errors").is_none_or(Value::is_null), "{body}");
    body["data"]["compute_session"]["num_queries"]
        .as_i64()
        .unwrap_or_else(|| panic!("num_queries: {body}"))
}

#[tokio::test]
async fn execute_calls_count_in_num_queries_without_db_writes() {
    let app = full_app().await;
    let stat_sync = spawn_stat_sync(&app);
    let agent = process_agent(&app).await;
    let c = app.user().await;
    let sid = create_running(&app, &c, "counted").await;
    assert_eq!(gql_num_queries(&c, sid).await, 0);

    // Each POST /session/{name} is one query, continuations included.
    let mut calls = 0i64;
    for code in ["print(1)", "x = 2", "print(x * 21)"] {
        let mut body = json!({"mode": "query", "code": code, "runId": null});
        loop {
            let (status, resp) = c
                .json(Method::POST, "/session/counted", Some(&body))
                .await
                .unwrap();
            assert_eq!(status, StatusCode::OK, "{resp}");
            calls += 1;
            match resp["result"]["status"].as_str().unwrap() {
                "finished" => break,
                _ => {
                    body = json!({"mode": "continue", "code": "", "runId": resp["result"]["runId"]})
                }
            }
        }
    }
    assert!(calls >= 3);
    // Counted in Redis, not in the database (no write per request)...
    let column: Option<i64> = sqlx::query_scalar("SELECT num_queries FROM kernels WHERE id = $1")
        .bind(sid)
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert_eq!(column.unwrap_or(0), 0, "no database write per execute");
    // ...and visible to readers.
    assert_eq!(gql_num_queries(&c, sid).await, calls);
    let (status, info) = c.json(Method::GET, "/session/counted", None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["numQueriesExecuted"], calls);

    // At termination the count reaches the column.
    let (status, body) = c
        .json(Method::DELETE, "/session/counted", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_status(&app, sid, "TERMINATED").await;
    let copied = eventually(TIMEOUT, || async {
        let n: Option<i64> = sqlx::query_scalar("SELECT num_queries FROM kernels WHERE id = $1")
            .bind(sid)
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
        (n == Some(calls)).then_some(())
    })
    .await;
    assert!(copied.is_some(), "num_queries copied at termination");
    // Terminated sessions still report it.
    assert_eq!(gql_num_queries(&c, sid).await, calls);
    stat_sync.cancel();
    agent.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// _/match, shutdown-service, download_single, apps
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn match_shutdown_service_download_single_and_apps() {
    let app = full_app().await;
    let agent = process_agent(&app).await;
    let c = app.user().await;
    let sid = create_running(&app, &c, "extras-one").await;

    // _/match: by name prefix and by id prefix; no match is an empty list.
    for key in ["extras", &sid.to_string()[..8]] {
        let (status, body) = c
            .json(Method::GET, &format!("/session/_/match?id={key}"), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{body}");
        assert_eq!(
            body,
            json!({"matches": [{"id": sid.to_string(), "name": "extras-one", "status": "RUNNING"}]})
        );
    }
    let (status, body) = c
        .json(Method::GET, "/session/_/match?id=nothing-like-it", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"matches": []}));
    let (status, body) = c.json(Method::GET, "/session/_/match", None).await.unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    // Another user's sessions are not matched.
    let other = app.user().await;
    let (_, body) = other
        .json(Method::GET, "/session/_/match?id=extras", None)
        .await
        .unwrap();
    assert_eq!(body, json!({"matches": []}));

    // shutdown-service: 204 (the process agent runs no service apps; nothing to stop).
    let (status, body) = c
        .json(
            Method::POST,
            "/session/extras-one/shutdown-service",
            Some(&json!({"service_name": "jupyter"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    let (status, body) = c
        .json(
            Method::POST,
            "/session/extras-one/shutdown-service",
            Some(&json!({})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(problem_slug(&body), "invalid-api-params");
    let (status, body) = c
        .json(
            Method::POST,
            "/session/nope-nope/shutdown-service",
            Some(&json!({"service_name": "jupyter"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");

    // download_single: the tar archive of one file.
    let (status, body) = c
        .json(
            Method::POST,
            "/session/extras-one",
            Some(&json!({"mode": "query", "runId": null,
                         "code": "open('hello.txt', 'w').write('single file body')"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let ok = eventually(TIMEOUT, || async {
        let resp = c
            .request(
                Method::GET,
                "/session/extras-one/download_single",
                Some(&json!({"file": "hello.txt"})),
            )
            .send()
            .await
            .unwrap();
        if resp.status() != StatusCode::OK {
            return None;
        }
        let bytes = resp.bytes().await.unwrap();
        String::from_utf8_lossy(&bytes)
            .contains("single file body")
            .then_some(bytes.len())
    })
    .await;
    let len = ok.expect("download_single returns the file's tar archive");
    assert_eq!(len % 512, 0, "a tar archive");
    let (status, body) = c
        .json(
            Method::GET,
            "/session/extras-one/download_single",
            Some(&json!({"file": "no-such-file.txt"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = c
        .json(Method::GET, "/session/extras-one/download_single", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // The app list of the session (no service ports on a process kernel).
    let (status, body) = c
        .json(Method::GET, "/stream/session/extras-one/apps", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!([]));
    agent.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// _/create-cluster
// ---------------------------------------------------------------------------------------

async fn insert_template(app: &TestApp, kind: &str, template: Value) -> Uuid {
    sqlx::query_scalar(
        "INSERT INTO session_templates (domain_name, user_uuid, type, name, template) \
         SELECT 'default', uuid, $2::templatetype, $3, $4 FROM users WHERE email = $1 RETURNING id",
    )
    .bind(USER_EMAIL)
    .bind(kind)
    .bind(template["metadata"]["name"].as_str().unwrap_or("t"))
    .bind(&template)
    .fetch_one(app.db.db.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn create_cluster_from_cluster_and_task_templates() {
    let app = full_app().await;
    let fleet = sim_agents(&app, 3).await;
    sqlx::query(
        "UPDATE keypair_resource_policies SET max_containers_per_session = 3 WHERE name = 'default'",
    )
    .execute(app.db.db.pool())
    .await
    .unwrap();
    let c = app.user().await;
    let main_task = insert_template(
        &app,
        "TASK",
        json!({"api_version": "v1", "kind": "taskTemplate",
               "metadata": {"name": "main-task", "tag": "from-template"},
               "spec": {"session_type": "interactive",
                        "kernel": {"image": "python", "environ": {"ROLE_ENV": "main"},
                                   "run": {"bootstrap": "echo boot", "startup_command": null}},
                        "resources": {"cpu": "2", "mem": "1g"}}}),
    )
    .await;
    let worker_task = insert_template(
        &app,
        "TASK",
        json!({"api_version": "v1", "kind": "taskTemplate",
               "metadata": {"name": "worker-task"},
               "spec": {"kernel": {"image": "python:3.6", "environ": {"ROLE_ENV": "worker"}},
                        "resources": {"cpu": "1", "mem": "512m"}}}),
    )
    .await;
    let cluster = insert_template(
        &app,
        "CLUSTER",
        json!({"api_version": "v1", "kind": "clusterTemplate", "mode": "multi-node",
               "metadata": {"name": "three"},
               "spec": {"environ": {"CLUSTER_ENV": "yes"},
                        "nodes": [{"role": "worker", "session_template": worker_task.to_string(), "replicas": 2},
                                  {"role": "main", "sessionTemplate": main_task.to_string(), "replicas": 1}]}}),
    )
    .await;

    let mut sub = app
        .bus
        .bus
        .client()
        .subscribe(format!(
            "{}.evt.session_terminated.*",
            app.bus.bus.subjects().prefix()
        ))
        .await
        .unwrap();
    let (status, body) = c
        .json(
            Method::POST,
            "/session/_/create-cluster",
            Some(&json!({"clientSessionToken": "cluster-tpl", "templateId": cluster.to_string()})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "RUNNING", "{body}");
    assert_eq!(body["created"], true);
    assert!(
        body.get("sessionId").is_none(),
        "the id key is kernelId: {body}"
    );
    let sid = Uuid::parse_str(body["kernelId"].as_str().unwrap()).unwrap();

    type Row = (
        Uuid,
        String,
        i32,
        String,
        String,
        Option<String>,
        Option<Vec<String>>,
        Value,
        String,
        i32,
        Option<String>,
        Option<String>,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "SELECT id, cluster_role, cluster_idx, cluster_hostname, image, agent, environ, occupied_slots, \
         cluster_mode, cluster_size, tag, bootstrap_script FROM kernels WHERE session_id = $1 \
         ORDER BY cluster_role, cluster_idx",
    )
    .bind(sid)
    .fetch_all(app.db.db.pool())
    .await
    .unwrap();
    assert_eq!(rows.len(), 3, "{rows:?}");
    let hosts: Vec<&str> = rows.iter().map(|r| r.3.as_str()).collect();
    assert_eq!(hosts, ["main1", "worker1", "worker2"]);
    assert_eq!(rows[0].0, sid, "the main kernel's id is the session id");
    assert_eq!(rows[0].4, "cr.backend.ai/stable/python:3.9-ubuntu20.04");
    assert_eq!(rows[1].4, "cr.backend.ai/stable/python:3.6-ubuntu18.04");
    for r in &rows {
        assert_eq!(r.8, "multi-node");
        assert_eq!(r.9, 3);
        assert_eq!(r.10.as_deref(), Some("from-template"));
        let env = r.6.clone().unwrap_or_default();
        assert!(env.contains(&"CLUSTER_ENV=yes".to_string()), "{env:?}");
        let role_env = if r.1 == "main" {
            "ROLE_ENV=main"
        } else {
            "ROLE_ENV=worker"
        };
        assert!(env.contains(&role_env.to_string()), "{env:?}");
    }
    assert_eq!(rows[0].7["cpu"], "2");
    assert_eq!(rows[1].7["cpu"], "1");
    assert_eq!(rows[0].11.as_deref(), Some("echo boot"));
    let agents: BTreeSet<String> = rows.iter().filter_map(|r| r.5.clone()).collect();
    assert_eq!(agents.len(), 3, "multi-node: one kernel per agent");
    assert_occupancy_invariant(&app).await;

    // The same name again: 400 session-already-exists.
    let (status, body) = c
        .json(
            Method::POST,
            "/session/_/create-cluster",
            Some(
                &json!({"clientSessionToken": "cluster-tpl", "templateId": cluster.to_string(),
                         "enqueueOnly": true}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(problem_slug(&body), "session-already-exists");

    // Unknown, foreign or wrong-kind templates: 404 task-template-not-found.
    let foreign = {
        let id: Uuid = sqlx::query_scalar(
            "INSERT INTO session_templates (domain_name, user_uuid, type, name, template) \
             SELECT 'default', uuid, 'CLUSTER', 'foreign', $2 FROM users WHERE email = $1 RETURNING id",
        )
        .bind("admin@lablup.com")
        .bind(json!({"mode": "single-node", "spec": {"nodes": []}}))
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
        id
    };
    for id in [Uuid::new_v4(), foreign, main_task] {
        let (status, body) = c
            .json(
                Method::POST,
                "/session/_/create-cluster",
                Some(
                    &json!({"clientSessionToken": "cluster-x", "template_id": id.to_string(),
                             "enqueueOnly": true}),
                ),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::NOT_FOUND, "{id}: {body}");
        assert_eq!(problem_slug(&body), "task-template-not-found");
    }
    // A template without a main node, a bad name, an unknown key: 400.
    let no_main = insert_template(
        &app,
        "CLUSTER",
        json!({"mode": "single-node", "metadata": {"name": "nomain"},
               "spec": {"nodes": [{"role": "worker", "session_template": worker_task.to_string()}]}}),
    )
    .await;
    for body in [
        json!({"clientSessionToken": "cluster-y", "templateId": no_main.to_string()}),
        json!({"clientSessionToken": "x", "templateId": cluster.to_string()}),
        json!({"clientSessionToken": "cluster-z", "templateId": cluster.to_string(), "bogus": 1}),
        json!({"clientSessionToken": "cluster-z", "templateId": "not-a-uuid"}),
    ] {
        let (status, resp) = c
            .json(Method::POST, "/session/_/create-cluster", Some(&body))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{body}: {resp}");
        assert_eq!(problem_slug(&resp), "invalid-api-params", "{resp}");
    }

    // Destroying it ends all three kernels with one session_terminated.
    let (status, body) = c
        .json(Method::DELETE, "/session/cluster-tpl", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_status(&app, sid, "TERMINATED").await;
    assert_eq!(
        count_terminated(&mut sub, sid, Duration::from_secs(2)).await,
        1
    );
    assert_occupancy_invariant(&app).await;
    fleet.stop().await;
}
