//! Compute sessions end to end (issue 7 items 1 and 9), against the real services: the
//! in-process API and worker (command loop, scheduler trigger loop, agent ingest) and
//! agents on a private RabbitMQ prefix — process agents running real Python kernels for
//! the API round trips, simulated agents for scheduler behaviour.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use futures::{SinkExt, StreamExt};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_tungstenite::tungstenite;
use uuid::Uuid;

use bai_agent::{Agent, AgentConfig, AgentHandle, RuntimeKind, RuntimeTable, SimConfig, SimFleet};
use bai_core::slots::ResourceSlot;
use bai_events::{Envelope, Event};
use bai_tests::app::{Extras, TestApp};
use bai_tests::client::{client_date, problem_slug, read_json, SignedClient};
use bai_tests::{eventually, TIMEOUT};

// ---------------------------------------------------------------------------------------
// harness
// ---------------------------------------------------------------------------------------

async fn full_app() -> TestApp {
    bai_tests::init_tracing();
    TestApp::spawn_with_extras(|_| {}, Extras::full()).await
}

fn work_root() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("bai-sessions-test-{}", Uuid::new_v4().simple()))
}

fn agent_config(app: &TestApp, id: &str) -> AgentConfig {
    let rabbit = app.rabbit.as_ref().expect("app with agents");
    rabbit.track_agent(id);
    let mut cfg = AgentConfig::new(id, &rabbit.url, &rabbit.prefix, work_root());
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
        .unwrap();
        (n as usize == ids.len()).then_some(())
    })
    .await;
    assert!(ok.is_some(), "agents {ids:?} did not register");
}

/// A process agent (real Python kernels).
async fn process_agent(app: &TestApp, cfg: AgentConfig) -> AgentHandle {
    let id = cfg.id.clone();
    let handle = Agent::spawn(cfg);
    wait_agents_alive(app, &[id]).await;
    handle
}

/// `count` simulated agents with `cpu` cores and `mem` bytes each.
async fn sim_agents(app: &TestApp, count: usize, cpu: &str, mem: &str) -> SimFleet {
    let rabbit = app.rabbit.as_ref().expect("app with agents");
    let mut cfg = SimConfig::new(count, &rabbit.url, &rabbit.prefix);
    cfg.id_prefix = format!("i-sim-{}-", &Uuid::new_v4().simple().to_string()[..6]);
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.start_delay = Duration::from_millis(50);
    cfg.slots = [
        ("cpu".to_string(), cpu.to_string()),
        ("mem".to_string(), mem.to_string()),
    ]
    .into();
    for i in 0..count {
        rabbit.track_agent(&cfg.agent_id(i));
    }
    let fleet = SimFleet::start(cfg).await.expect("simulated agents");
    wait_agents_alive(app, &fleet.agent_ids()).await;
    fleet
}

/// The body the 21.3.6 client sends for `backend.ai start` (api-rest.md §2.1), with
/// `extra` merged in (top level; `config` merged one level deep).
fn create_body(name: &str, image: &str, extra: Value) -> Value {
    let mut body = json!({
        "tag": null, "name": name,
        "config": {"mounts": [], "environ": {}, "resources": {}, "resource_opts": {}, "scalingGroup": null,
                   "mount_map": {}, "preopen_ports": []},
        "clusterSize": 1, "clusterMode": "single-node", "starts_at": null, "bootstrap_script": null,
        "owner_access_key": null, "domain": "default", "group": "default", "type": "interactive",
        "enqueueOnly": false, "maxWaitSeconds": 0, "reuseIfExists": true, "startupCommand": null, "image": image,
    });
    if let Value::Object(extra) = extra {
        for (k, v) in extra {
            if k == "config" {
                if let (Some(cfg), Value::Object(more)) = (body["config"].as_object_mut(), v) {
                    cfg.extend(more);
                }
            } else {
                body[k] = v;
            }
        }
    }
    body
}

async fn create(c: &SignedClient, body: &Value) -> (StatusCode, Value) {
    c.json(Method::POST, "/session", Some(body)).await.unwrap()
}

/// Creates a session and waits (through the API) until it runs.
async fn create_running(
    app: &TestApp,
    c: &SignedClient,
    name: &str,
    image: &str,
    extra: Value,
) -> Uuid {
    let (status, body) = create(c, &create_body(name, image, extra)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "RUNNING", "{body}");
    assert_eq!(body["created"], true);
    let sid = Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap();
    // Execute and file calls record the last access in the shared Redis.
    app.track_redis_key(bai_api::session::access::last_access_key(sid));
    sid
}

async fn enqueue(c: &SignedClient, name: &str, image: &str, extra: Value) -> Uuid {
    let mut extra = extra;
    extra["enqueueOnly"] = json!(true);
    let (status, body) = create(c, &create_body(name, image, extra)).await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "PENDING", "{body}");
    Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap()
}

/// A snapshot for the test's own observations. The pool's default is SERIALIZABLE, and a
/// polling read taken while the scheduler writes can lose a serialization race (40001);
/// what the tests assert needs only a consistent snapshot.
async fn snapshot(app: &TestApp) -> sqlx::Transaction<'static, sqlx::Postgres> {
    app.db
        .db
        .pool()
        .begin_with("BEGIN ISOLATION LEVEL REPEATABLE READ READ ONLY")
        .await
        .unwrap()
}

async fn kernel_statuses(app: &TestApp, session_id: Uuid) -> Vec<String> {
    let mut txn = snapshot(app).await;
    sqlx::query_scalar(
        "SELECT status::text FROM kernels WHERE session_id = $1 ORDER BY cluster_idx",
    )
    .bind(session_id)
    .fetch_all(&mut *txn)
    .await
    .unwrap()
}

async fn main_row(app: &TestApp, session_id: Uuid) -> (String, Option<String>, Option<Value>) {
    let mut txn = snapshot(app).await;
    sqlx::query_as(
        "SELECT status::text, status_info, status_data FROM kernels WHERE session_id = $1 AND cluster_role = 'main'",
    )
    .bind(session_id)
    .fetch_one(&mut *txn)
    .await
    .unwrap()
}

async fn wait_session_status(app: &TestApp, session_id: Uuid, status: &str) {
    let ok = eventually(TIMEOUT, || async {
        let all = kernel_statuses(app, session_id).await;
        (!all.is_empty() && all.iter().all(|s| s == status)).then_some(())
    })
    .await;
    assert!(
        ok.is_some(),
        "session {session_id} never reached {status}: {:?} {:?}",
        kernel_statuses(app, session_id).await,
        main_row(app, session_id).await
    );
}

/// The invariant: every ALIVE agent's `occupied_slots` equals the sum of its kernels in
/// resource-occupying statuses.
async fn assert_occupancy_invariant(app: &TestApp) {
    let agents: Vec<(String, Value)> =
        sqlx::query_as("SELECT id, occupied_slots FROM agents WHERE status = 'ALIVE'")
            .fetch_all(app.db.db.pool())
            .await
            .unwrap();
    for (id, occupied) in agents {
        let kernels: Vec<Value> = sqlx::query_scalar(
            "SELECT occupied_slots FROM kernels WHERE agent = $1 AND status::text = ANY($2)",
        )
        .bind(&id)
        .bind(
            bai_workers::agents::kernels::AGENT_RESOURCE_OCCUPYING
                .iter()
                .map(|s| s.to_string())
                .collect::<Vec<_>>(),
        )
        .fetch_all(app.db.db.pool())
        .await
        .unwrap();
        let sum = kernels.iter().fold(ResourceSlot::new(), |acc, k| {
            acc.add(&ResourceSlot::from_json(k).unwrap())
        });
        let occ = ResourceSlot::from_json(&occupied).unwrap();
        let nonzero = |s: &ResourceSlot| -> BTreeMap<String, String> {
            s.0.iter()
                .filter(|(_, v)| !v.is_zero())
                .map(|(k, v)| (k.clone(), v.normalize().to_string()))
                .collect()
        };
        assert_eq!(
            nonzero(&occ),
            nonzero(&sum),
            "agent {id}: occupied_slots {occupied} != sum of its kernels"
        );
    }
}

async fn set_policy(app: &TestApp, sql_set: &str) {
    sqlx::query(&format!(
        "UPDATE keypair_resource_policies SET {sql_set} WHERE name = 'default'"
    ))
    .execute(app.db.db.pool())
    .await
    .unwrap();
}

/// Runs `code` through `POST /session/{name}` until it finishes; returns (stdout, exit).
async fn run_code(c: &SignedClient, name: &str, code: &str) -> (String, Option<i64>) {
    let mut body = json!({"mode": "query", "code": code, "runId": null});
    let mut stdout = String::new();
    for _ in 0..60 {
        let (status, resp) = c
            .json(Method::POST, &format!("/session/{name}"), Some(&body))
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK, "{resp}");
        let r = &resp["result"];
        assert!(r["console"].is_array(), "console must be a list: {r}");
        for item in r["console"].as_array().unwrap() {
            if item[0] == "stdout" {
                stdout.push_str(item[1].as_str().unwrap());
            }
        }
        match r["status"].as_str().unwrap() {
            "finished" => return (stdout, r["exitCode"].as_i64()),
            "continued" => body = json!({"mode": "continue", "code": "", "runId": r["runId"]}),
            other => panic!("unexpected status {other}: {r}"),
        }
    }
    panic!("run did not finish");
}

// ---------------------------------------------------------------------------------------
// API round trips on a process agent
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_execute_info_logs_restart_destroy() {
    let app = full_app().await;
    let agent = process_agent(
        &app,
        agent_config(
            &app,
            &format!("i-proc-{}", &Uuid::new_v4().simple().to_string()[..8]),
        ),
    )
    .await;
    let c = app.user().await;

    let sid = create_running(
        &app,
        &c,
        "mysess",
        "python",
        json!({"config": {"environ": {"FOO": "bar"}, "resources": {"cpu": "1", "mem": "1g"}}}),
    )
    .await;
    let (status, info_body) = c.json(Method::GET, "/session/mysess", None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{info_body}");
    assert_eq!(info_body["status"], "RUNNING");
    assert_eq!(
        info_body["image"],
        "cr.backend.ai/stable/python:3.9-ubuntu20.04"
    );
    assert_eq!(info_body["lang"], info_body["image"]);
    assert_eq!(info_body["environ"], "['FOO=bar']");
    assert_eq!(
        info_body["occupiedSlots"],
        "{'cpu': Decimal('1'), 'mem': Decimal('1073741824')}"
    );
    assert!(info_body["age"].as_i64().unwrap() >= 0);
    // The session-id prefix resolves too.
    let (status, _) = c
        .json(
            Method::GET,
            &format!("/session/{}", &sid.to_string()[..8]),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);

    // Execute: stdout comes back; the environment reached the kernel.
    let (out, code) = run_code(&c, "mysess", "print(1)").await;
    assert_eq!((out.as_str(), code), ("1\n", Some(0)));
    let (out, _) = run_code(
        &c,
        "mysess",
        "import os; print(os.environ['FOO'], os.environ['BACKENDAI_SESSION_NAME'])",
    )
    .await;
    assert_eq!(out, "bar mysess\n");
    // The last access is recorded for the idle checker.
    let key = bai_api::session::access::last_access_key(sid);
    let t = app.redis_int(&key).await;
    assert!(
        (t - chrono::Utc::now().timestamp()).abs() < 60,
        "last access {t}"
    );

    // Execute validation.
    let (status, body) = c
        .json(
            Method::POST,
            "/session/mysess",
            Some(&json!({"mode": "query", "code": "1"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    assert_eq!(body["msg"], "runId is missing!");
    let (status, body) = c
        .json(
            Method::POST,
            "/session/mysess",
            Some(&json!({"mode": "continue", "code": "", "runId": null})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    let (status, body) = c
        .json(
            Method::POST,
            "/session/mysess",
            Some(&json!({"mode": "bogus", "code": "", "runId": null})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // Completion, interrupt, logs.
    let (status, body) = c
        .json(
            Method::POST,
            "/session/mysess/complete",
            Some(&json!({"code": "pri", "options": {"row": 0, "col": 3}})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["result"]["completions"].is_array(), "{body}");
    let (status, _) = c
        .json(Method::POST, "/session/mysess/interrupt", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (status, body) = c
        .json(Method::GET, "/session/mysess/logs", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(body["result"]["logs"].is_string(), "{body}");

    // Restart: through the worker; the kernel comes back RUNNING and still executes.
    let (status, body) = c
        .json(Method::PATCH, "/session/mysess", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    wait_session_status(&app, sid, "RUNNING").await;
    let (out, _) = run_code(&c, "mysess", "print(2)").await;
    assert_eq!(out, "2\n");

    // A plain user may not force-destroy.
    let (status, body) = c
        .json(Method::DELETE, "/session/mysess?forced=true", None)
        .await
        .unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::FORBIDDEN, "insufficient-privilege")
    );

    assert_occupancy_invariant(&app).await;
    let (status, body) = c
        .json(Method::DELETE, "/session/mysess", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["stats"]["status"], "terminated", "{body}");
    wait_session_status(&app, sid, "TERMINATED").await;
    assert_occupancy_invariant(&app).await;
    // Dead sessions are invisible; their logs stay readable.
    let (status, body) = c.json(Method::GET, "/session/mysess", None).await.unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::NOT_FOUND, "session-not-found")
    );
    let (status, _) = c
        .json(Method::GET, "/session/mysess/logs", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    agent.stop().await.unwrap();
}

/// A signed WebSocket upgrade request, as the client sends it (no Content-Type).
fn ws_request(
    app: &TestApp,
    c: &SignedClient,
    path: &str,
) -> tungstenite::handshake::client::Request {
    let url = format!("ws://{}{path}", app.addr);
    let mut req =
        tungstenite::client::IntoClientRequest::into_client_request(url.as_str()).unwrap();
    for (k, v) in c
        .signed_headers(
            &Method::GET,
            path,
            "application/octet-stream",
            &client_date(),
        )
        .iter()
    {
        req.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(k.as_str().as_bytes()).unwrap(),
            tungstenite::http::HeaderValue::from_bytes(v.as_bytes()).unwrap(),
        );
    }
    req
}

#[tokio::test]
async fn websocket_execute_as_backend_ai_run() {
    let app = full_app().await;
    let agent = process_agent(
        &app,
        agent_config(
            &app,
            &format!("i-ws-{}", &Uuid::new_v4().simple().to_string()[..8]),
        ),
    )
    .await;
    let c = app.user().await;
    let sid = create_running(&app, &c, "pysdk-543320f232", "python", json!({})).await;

    // The client signs the upgrade without a Content-Type (application/octet-stream).
    let (mut ws, _) = tokio_tungstenite::connect_async(ws_request(
        &app,
        &c,
        &format!("/stream/session/{sid}/execute"),
    ))
    .await
    .expect("websocket upgrade");
    let code =
        "import time\nprint('hello')\ntime.sleep(1.5)\nname = input('who? ')\nprint('hi', name)";
    ws.send(tungstenite::Message::text(
        json!({"code": code, "mode": "query", "options": {}}).to_string(),
    ))
    .await
    .unwrap();
    let mut stdout = String::new();
    let mut finished = None;
    while let Some(msg) = tokio::time::timeout(TIMEOUT, ws.next())
        .await
        .expect("frame in time")
    {
        let msg = msg.unwrap();
        let tungstenite::Message::Text(text) = msg else {
            continue;
        };
        let r: Value = serde_json::from_str(&text).unwrap();
        assert!(r["console"].is_array(), "{r}");
        for item in r["console"].as_array().unwrap() {
            if item[0] == "stdout" {
                stdout.push_str(item[1].as_str().unwrap());
            }
        }
        match r["status"].as_str().unwrap() {
            "waiting-input" => {
                assert!(r["options"].is_object(), "{r}");
                ws.send(tungstenite::Message::text("world")).await.unwrap();
            }
            "finished" => {
                finished = Some(r);
                break;
            }
            "continued" => {}
            other => panic!("unexpected frame {other}: {r}"),
        }
    }
    let r = finished.expect("a finished frame");
    assert_eq!(r["exitCode"], 0, "{r}");
    assert!(
        stdout.contains("hello\n") && stdout.contains("hi world\n"),
        "{stdout:?}"
    );

    // An unknown session is refused before the upgrade.
    match tokio_tungstenite::connect_async(ws_request(
        &app,
        &c,
        "/stream/session/nosuchsession/execute",
    ))
    .await
    {
        Err(tungstenite::Error::Http(resp)) => assert_eq!(resp.status().as_u16(), 404),
        other => panic!(
            "expected a 404 handshake failure, got {:?}",
            other.map(|_| ())
        ),
    }
    let (status, _) = c
        .json(Method::DELETE, &format!("/session/{sid}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    wait_session_status(&app, sid, "TERMINATED").await;
    agent.stop().await.unwrap();
}

/// Splits a `multipart/mixed` body into its parts' (headers, content).
fn multipart_parts(content_type: &str, body: &[u8]) -> Vec<(String, Vec<u8>)> {
    let boundary = content_type
        .split("boundary=")
        .nth(1)
        .unwrap()
        .trim_matches('"')
        .to_string();
    let delim = format!("--{boundary}");
    let mut parts = Vec::new();
    let mut pos = 0;
    let find = |hay: &[u8], needle: &[u8], from: usize| {
        hay[from..]
            .windows(needle.len())
            .position(|w| w == needle)
            .map(|p| p + from)
    };
    while let Some(start) = find(body, delim.as_bytes(), pos) {
        let after = start + delim.len();
        if body[after..].starts_with(b"--") {
            break;
        }
        let head_start = after + 2;
        let head_end = find(body, b"\r\n\r\n", head_start).unwrap();
        let headers = String::from_utf8_lossy(&body[head_start..head_end]).to_string();
        let content_start = head_end + 4;
        let next = find(body, format!("\r\n{delim}").as_bytes(), content_start).unwrap();
        parts.push((headers, body[content_start..next].to_vec()));
        pos = next + 2;
    }
    parts
}

/// (name, content) of the regular files in a tar archive.
fn tar_files(tar: &[u8]) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos + 512 <= tar.len() {
        let h = &tar[pos..pos + 512];
        if h.iter().all(|b| *b == 0) {
            break;
        }
        let name = String::from_utf8_lossy(&h[..100])
            .trim_end_matches('\0')
            .to_string();
        let size_txt = String::from_utf8_lossy(&h[124..136])
            .trim_matches(|c: char| c == '\0' || c == ' ')
            .to_string();
        let size = usize::from_str_radix(&size_txt, 8).unwrap_or(0);
        let kind = h[156];
        if kind == b'0' || kind == 0 {
            out.push((name, tar[pos + 512..pos + 512 + size].to_vec()));
        }
        pos += 512 + size.div_ceil(512) * 512;
    }
    out
}

/// Uploads as the client does: multipart/form-data, field `src`, filename = path.
async fn upload(
    c: &SignedClient,
    session: &str,
    files: Vec<(&str, Vec<u8>)>,
) -> (StatusCode, Value) {
    let boundary = "7f90866272044d2e8a571ce8d033b1f8";
    let mut body = Vec::new();
    for (name, data) in &files {
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/octet-stream\r\nContent-Disposition: form-data; \
                 name=\"src\"; filename=\"{name}\"; filename*=utf-8''{name}\r\nContent-Length: {}\r\n\r\n",
                data.len()
            )
            .as_bytes(),
        );
        body.extend_from_slice(data);
        body.extend_from_slice(b"\r\n");
    }
    body.extend_from_slice(format!("--{boundary}--\r\n").as_bytes());
    let path = format!("/session/{session}/upload");
    let resp = c
        .http
        .post(format!("{}{path}", c.base))
        .headers(c.signed_headers(&Method::POST, &path, "multipart/form-data", &client_date()))
        .header(
            "content-type",
            format!("multipart/form-data; boundary={boundary}"),
        )
        .body(body)
        .send()
        .await
        .unwrap();
    read_json(resp).await
}

#[tokio::test]
async fn upload_list_download_round_trip() {
    let app = full_app().await;
    let agent = process_agent(
        &app,
        agent_config(
            &app,
            &format!("i-files-{}", &Uuid::new_v4().simple().to_string()[..8]),
        ),
    )
    .await;
    let c = app.user().await;
    let sid = create_running(&app, &c, "filesess", "python", json!({})).await;

    // Upload as the client does: multipart/form-data, field `src`, filename = path.
    let (status, body) = upload(
        &c,
        "filesess",
        vec![
            ("hello.txt", b"hello world\n".to_vec()),
            ("sub/dir/x.bin", vec![7u8; 1000]),
        ],
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT, "{body}");
    // Limits: a file of 1 MiB is too large; 21 files are too many.
    let (status, body) = upload(&c, "filesess", vec![("big.bin", vec![0u8; 1024 * 1024])]).await;
    assert_eq!(
        (status, body["msg"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Too large file")),
        "{body}"
    );
    let many: Vec<(&str, Vec<u8>)> = (0..21).map(|_| ("f.txt", b"x".to_vec())).collect();
    let (status, body) = upload(&c, "filesess", many).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    // List: `files` is a JSON string.
    let (status, body) = c
        .json(
            Method::GET,
            "/session/filesess/files",
            Some(&json!({"path": "."})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert!(
        body["abspath"].as_str().unwrap().starts_with("/home/work"),
        "{body}"
    );
    let files: Vec<Value> = serde_json::from_str(body["files"].as_str().unwrap()).unwrap();
    let hello = files
        .iter()
        .find(|f| f["filename"] == "hello.txt")
        .expect("hello.txt listed");
    assert_eq!(hello["size"], 12);
    assert!(hello["mode"].as_str().unwrap().starts_with('-'));
    assert!(files
        .iter()
        .any(|f| f["filename"] == "sub" && f["mode"].as_str().unwrap().starts_with('d')));

    // Download: multipart/mixed, one tar per requested path, Content-Encoding identity.
    let path = "/session/filesess/download";
    let resp = c
        .send(
            Method::GET,
            path,
            Some(&json!({"files": ["hello.txt", "sub/dir/x.bin"]})),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let ct = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ct.starts_with("multipart/mixed; boundary="), "{ct}");
    let bytes = resp.bytes().await.unwrap();
    let parts = multipart_parts(&ct, &bytes);
    assert_eq!(parts.len(), 2);
    for (headers, _) in &parts {
        assert!(
            headers
                .to_ascii_lowercase()
                .contains("content-encoding: identity"),
            "{headers}"
        );
    }
    assert_eq!(
        tar_files(&parts[0].1),
        vec![("hello.txt".to_string(), b"hello world\n".to_vec())]
    );
    let x = tar_files(&parts[1].1);
    assert_eq!(x.len(), 1);
    assert!(x[0].0.ends_with("x.bin"));
    assert_eq!(x[0].1, vec![7u8; 1000]);
    // A missing file is the caller's mistake (400), never a 500.
    let (status, body) = c
        .json(Method::GET, path, Some(&json!({"files": ["nope.txt"]})))
        .await
        .unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-api-params"),
        "{body}"
    );
    let (status, _) = c
        .json(
            Method::GET,
            path,
            Some(&json!({"files": ["a", "b", "c", "d", "e", "f"]})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = c
        .json(
            Method::GET,
            "/session/filesess/files",
            Some(&json!({"path": "../.."})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");

    let (status, _) = c
        .json(Method::DELETE, "/session/filesess", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    wait_session_status(&app, sid, "TERMINATED").await;
    agent.stop().await.unwrap();
}

// ---------------------------------------------------------------------------------------
// create: enqueue-only, reuse, validation
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn enqueue_only_reuse_and_duplicate_names() {
    // No agents: sessions stay PENDING, which is all this test needs.
    let app = TestApp::spawn_with_extras(|_| {}, Extras::default()).await;
    let c = app.user().await;

    let body = create_body("dupsess", "python", json!({"enqueueOnly": true}));
    let (status, first) = create(&c, &body).await;
    assert_eq!(status, StatusCode::CREATED, "{first}");
    assert_eq!(first["status"], "PENDING");
    assert_eq!(first["created"], true);
    assert_eq!(first["sessionName"], "dupsess");
    assert_eq!(first["servicePorts"], json!([]));
    let sid = first["sessionId"].as_str().unwrap().to_string();
    let sid_uuid = Uuid::parse_str(&sid).unwrap();
    let (main, sess, host, slots, environ, image, tag): (Uuid, Uuid, String, Value, Option<Vec<String>>, String, Option<String>) =
        sqlx::query_as(
            "SELECT id, session_id, cluster_hostname, occupied_slots, environ, image, tag FROM kernels WHERE session_id = $1",
        )
        .bind(sid_uuid)
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert_eq!((main, sess, host.as_str()), (sid_uuid, sid_uuid, "main1"));
    // Image minimums fill the empty request.
    assert_eq!(slots["cpu"], "1");
    assert_eq!(slots["mem"], "268435456");
    assert_eq!(environ, Some(vec![]));
    assert_eq!(image, "cr.backend.ai/stable/python:3.9-ubuntu20.04");
    assert_eq!(tag, None);

    // Same name and image with reuse: 200, the existing session, snake_case service_ports.
    let (status, again) = create(&c, &body).await;
    assert_eq!(status, StatusCode::OK, "{again}");
    assert_eq!(
        again,
        json!({"sessionId": sid, "sessionName": "dupsess", "status": "PENDING", "service_ports": [], "created": false})
    );
    // The alias and the canonical reference are the same image.
    let (status, _) = create(
        &c,
        &create_body(
            "dupsess",
            "cr.backend.ai/stable/python:3.9-ubuntu20.04",
            json!({}),
        ),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    // Without reuse, or with another image: 400 with the existing id.
    for b in [
        create_body("dupsess", "python", json!({"reuseIfExists": false})),
        create_body("dupsess", "python", json!({"reuseIfExists": "no"})),
        create_body("dupsess", "ubuntu", json!({})),
    ] {
        let (status, err) = create(&c, &b).await;
        assert_eq!(
            (status, problem_slug(&err)),
            (StatusCode::BAD_REQUEST, "session-already-exists"),
            "{err}"
        );
        assert_eq!(err["data"]["existingSessionId"], sid);
    }
    // A longer name sharing the prefix is another session; both stay addressable.
    let (status, other) = create(
        &c,
        &create_body("dupsess2", "python", json!({"enqueueOnly": "yes"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{other}");
    let (status, info) = c.json(Method::GET, "/session/dupsess", None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{info}");
    assert_eq!(info["status"], "PENDING");
    let (status, err) = c.json(Method::GET, "/session/dups", None).await.unwrap();
    assert_eq!(
        (status, problem_slug(&err)),
        (StatusCode::NOT_FOUND, "too-many-sessions-matched"),
        "{err}"
    );
    assert_eq!(err["data"]["matches"].as_array().unwrap().len(), 2);
    // Another keypair does not see them.
    let other_user = app.superadmin().await;
    let (status, _) = other_user
        .json(Method::GET, "/session/dupsess", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // An admin acts for another keypair with `?owner_access_key=` (query string only);
    // a plain user may not.
    let admin = app.superadmin().await;
    let path = format!("/session?owner_access_key={}", c.access_key);
    let (status, body) = admin
        .json(
            Method::POST,
            &path,
            Some(&create_body(
                "for-the-user",
                "python",
                json!({"enqueueOnly": true}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let owner: String = sqlx::query_scalar("SELECT access_key FROM kernels WHERE session_id = $1")
        .bind(Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap())
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert_eq!(owner, c.access_key);
    let (status, _) = c
        .json(Method::GET, "/session/for-the-user", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let (status, _) = admin
        .json(
            Method::GET,
            &format!("/session/for-the-user?owner_access_key={}", c.access_key),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let path = format!("/session?owner_access_key={}", admin.access_key);
    let (status, body) = c
        .json(
            Method::POST,
            &path,
            Some(&create_body(
                "not-allowed",
                "python",
                json!({"enqueueOnly": true}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::FORBIDDEN, "generic-forbidden"),
        "{body}"
    );

    // The alias route works too; a multi-node cluster of 3 gets main1, sub1, sub2.
    let (status, body) = c
        .json(
            Method::POST,
            "/session/_/create",
            Some(&create_body(
                "clustersess",
                "python",
                json!({"enqueueOnly": true, "clusterSize": "3", "clusterMode": "multi-node"}),
            )),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let csid = Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap();
    let hosts: Vec<(String, String, i32)> =
        sqlx::query_as("SELECT cluster_hostname, cluster_role, cluster_idx FROM kernels WHERE session_id = $1 ORDER BY cluster_role, cluster_idx")
            .bind(csid)
            .fetch_all(app.db.db.pool())
            .await
            .unwrap();
    assert_eq!(
        hosts,
        vec![
            ("main1".into(), "main".into(), 1),
            ("sub1".into(), "sub".into(), 1),
            ("sub2".into(), "sub".into(), 2)
        ]
    );

    // Destroying a PENDING session cancels it.
    let (status, body) = c
        .json(Method::DELETE, "/session/dupsess", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body, json!({"stats": {"status": "cancelled"}}));
    wait_session_status(&app, sid_uuid, "CANCELLED").await;
    // The name is free again.
    let (status, body) = create(
        &c,
        &create_body("dupsess", "python", json!({"enqueueOnly": true})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_ne!(body["sessionId"], sid);
}

#[tokio::test]
async fn bad_create_requests_are_4xx_never_500() {
    let app = TestApp::spawn_with_extras(|_| {}, Extras::default()).await;
    let c = app.user().await;
    let eq = |extra: Value| {
        create_body("goodname", "python", {
            let mut e = extra;
            if e.get("enqueueOnly").is_none() {
                e["enqueueOnly"] = json!(true);
            }
            e
        })
    };
    let cases: Vec<(Value, StatusCode, &str)> = vec![
        (
            create_body("ab", "python", json!({})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            create_body("-bad-", "python", json!({})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            create_body("has space", "python", json!({})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            create_body(&"x".repeat(65), "python", json!({})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            create_body("goodname", "no/such:image", json!({})),
            StatusCode::NOT_FOUND,
            "image-not-found",
        ),
        (
            create_body("goodname", "nosuchalias", json!({})),
            StatusCode::NOT_FOUND,
            "image-not-found",
        ),
        (
            eq(json!({"config": {"resources": {"tpu": "1"}}})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"config": {"resources": {"cpu": "many"}}})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"config": {"resources": {"mem": "1k"}}})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"config": {"bogus": 1}})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"bogus": 1})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"type": "batch"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"type": "weird"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"starts_at": "1h"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"type": "batch", "startupCommand": "true", "starts_at": "someday"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"clusterSize": 0})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"clusterMode": "galaxy"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"enqueueOnly": "f"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"group": "nosuchgroup"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"domain": "otherdomain"})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"config": {"scalingGroup": "nosuchsg"}})),
            StatusCode::NOT_FOUND,
            "scaling-group-not-found",
        ),
        (
            eq(json!({"config": {"mounts": ["nosuchfolder"]}})),
            StatusCode::NOT_FOUND,
            "vfolder-not-found",
        ),
        (
            eq(json!({"config": {"preopen_ports": [80]}})),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (
            eq(json!({"config": {"agentList": ["i-x"]}})),
            StatusCode::FORBIDDEN,
            "insufficient-privilege",
        ),
        (
            json!({"image": "python"}),
            StatusCode::BAD_REQUEST,
            "invalid-api-params",
        ),
        (json!([1, 2]), StatusCode::BAD_REQUEST, "invalid-api-params"),
    ];
    for (body, want_status, want_slug) in cases {
        let (status, err) = create(&c, &body).await;
        assert_eq!(
            (status, problem_slug(&err)),
            (want_status, want_slug),
            "{body} -> {err}"
        );
    }
    // Malformed JSON.
    let resp = c
        .request(Method::POST, "/session", Some(&json!({})))
        .body("{not json")
        .send()
        .await
        .unwrap();
    let (status, err) = read_json(resp).await;
    assert_eq!(
        (status, problem_slug(&err)),
        (StatusCode::BAD_REQUEST, "invalid-api-params"),
        "{err}"
    );
    // A registry the domain does not allow: the image is "not found".
    sqlx::query("UPDATE domains SET allowed_docker_registries = '{}' WHERE name = 'default'")
        .execute(app.db.db.pool())
        .await
        .unwrap();
    let (status, err) = create(&c, &eq(json!({}))).await;
    assert_eq!(
        (status, problem_slug(&err)),
        (StatusCode::NOT_FOUND, "image-not-found"),
        "{err}"
    );
    sqlx::query(
        "UPDATE domains SET allowed_docker_registries = '{cr.backend.ai}' WHERE name = 'default'",
    )
    .execute(app.db.db.pool())
    .await
    .unwrap();
    // A good batch request with a relative start time is accepted.
    let (status, body) = create(
        &c,
        &eq(json!({"type": "batch", "startupCommand": "echo hi", "starts_at": "1h30m"})),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    let starts_at: chrono::DateTime<chrono::Utc> =
        sqlx::query_scalar("SELECT starts_at FROM kernels WHERE session_id = $1")
            .bind(Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap())
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    let ahead = starts_at - chrono::Utc::now();
    assert!(
        ahead > chrono::Duration::minutes(85) && ahead < chrono::Duration::minutes(91),
        "{ahead}"
    );
    // Unknown sessions.
    let (status, err) = c
        .json(Method::GET, "/session/nonexistent", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        err,
        json!({"type": "https://api.backend.ai/probs/session-not-found", "title": "No such session."})
    );
    for (m, p) in [
        (Method::DELETE, "/session/nonexistent"),
        (Method::PATCH, "/session/nonexistent"),
        (Method::POST, "/session/nonexistent/interrupt"),
        (Method::GET, "/session/nonexistent/logs"),
    ] {
        let (status, err) = c.json(m, p, None).await.unwrap();
        assert_eq!(
            (status, problem_slug(&err)),
            (StatusCode::NOT_FOUND, "session-not-found"),
            "{p}"
        );
    }
    // Frozen manager: create is refused, reads still work.
    app.etcd.etcd.put("manager/status", "frozen").await.unwrap();
    let (status, err) = create(
        &c,
        &create_body("frozensess", "python", json!({"enqueueOnly": true})),
    )
    .await;
    assert_eq!(
        (status, problem_slug(&err)),
        (StatusCode::SERVICE_UNAVAILABLE, "server-frozen")
    );
    app.etcd
        .etcd
        .put("manager/status", "running")
        .await
        .unwrap();
}

// ---------------------------------------------------------------------------------------
// scheduler behaviour (simulated agents)
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn max_concurrent_sessions_is_enforced() {
    let app = full_app().await;
    let fleet = sim_agents(&app, 1, "8", "34359738368").await;
    set_policy(&app, "max_concurrent_sessions = 1").await;
    let c = app.user().await;
    let first = create_running(&app, &c, "conc-first", "python", json!({})).await;
    let second = enqueue(&c, "conc-second", "python", json!({})).await;
    let failed = eventually(TIMEOUT, || async {
        let (status, info, data) = main_row(&app, second).await;
        (status == "PENDING" && info.as_deref() == Some("predicate-checks-failed")).then_some(data)
    })
    .await
    .expect("the second session is held by a predicate");
    let names: Vec<String> = failed.unwrap()["scheduler"]["failed_predicates"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(names, vec!["concurrency".to_string()]);
    assert_occupancy_invariant(&app).await;
    // When the first one ends, the second runs.
    let (status, _) = c
        .json(Method::DELETE, "/session/conc-first", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    wait_session_status(&app, first, "TERMINATED").await;
    wait_session_status(&app, second, "RUNNING").await;
    assert_occupancy_invariant(&app).await;
    fleet.stop().await;
}

#[tokio::test]
async fn keypair_resource_limit_holds_sessions() {
    let app = full_app().await;
    let fleet = sim_agents(&app, 1, "8", "34359738368").await;
    set_policy(&app, "total_resource_slots = '{\"cpu\": \"2\", \"mem\": \"4294967296\"}', default_for_unspecified = 'LIMITED'").await;
    let c = app.user().await;
    create_running(
        &app,
        &c,
        "limit-a",
        "python",
        json!({"config": {"resources": {"cpu": "1", "mem": "1g"}}}),
    )
    .await;
    let b = enqueue(
        &c,
        "limit-b",
        "python",
        json!({"config": {"resources": {"cpu": "2", "mem": "1g"}}}),
    )
    .await;
    let data = eventually(TIMEOUT, || async {
        let (status, info, data) = main_row(&app, b).await;
        (status == "PENDING" && info.as_deref() == Some("predicate-checks-failed")).then_some(data)
    })
    .await
    .expect("held by the keypair limit")
    .unwrap();
    let failed = data["scheduler"]["failed_predicates"].to_string();
    assert!(failed.contains("keypair_resource_limit"), "{failed}");
    // A request that fits the remainder is scheduled.
    create_running(
        &app,
        &c,
        "limit-c",
        "python",
        json!({"config": {"resources": {"cpu": "1", "mem": "1g"}}}),
    )
    .await;
    assert_eq!(main_row(&app, b).await.0, "PENDING");
    assert_occupancy_invariant(&app).await;
    fleet.stop().await;
}

#[tokio::test]
async fn fifo_head_of_line_blocking_and_num_retries_to_skip() {
    let app = full_app().await;
    let fleet = sim_agents(&app, 1, "4", "8589934592").await;
    app.etcd
        .etcd
        .put("config/plugins/scheduler/fifo/num_retries_to_skip", "0")
        .await
        .unwrap();
    let c = app.user().await;
    // The head asks for more than any agent has; a small one queues behind it.
    let head = enqueue(
        &c,
        "hol-head",
        "python",
        json!({"config": {"resources": {"cpu": "8"}}}),
    )
    .await;
    let small = enqueue(
        &c,
        "hol-small",
        "python",
        json!({"config": {"resources": {"cpu": "1"}}}),
    )
    .await;
    // Strict FIFO: after several passes the head keeps failing and the small one waits.
    let retried = eventually(TIMEOUT, || async {
        let (_, info, data) = main_row(&app, head).await;
        let retries = data
            .as_ref()
            .and_then(|d| d["scheduler"]["retries"].as_i64())
            .unwrap_or(0);
        (info.as_deref() == Some("no-available-instances") && retries >= 3).then_some(())
    })
    .await;
    assert!(
        retried.is_some(),
        "head never retried: {:?}",
        main_row(&app, head).await
    );
    assert_eq!(
        main_row(&app, small).await.0,
        "PENDING",
        "strict FIFO must not let the small session pass"
    );
    // With num_retries_to_skip = 1 the head goes to the back and the small one runs.
    app.etcd
        .etcd
        .put("config/plugins/scheduler/fifo/num_retries_to_skip", "1")
        .await
        .unwrap();
    wait_session_status(&app, small, "RUNNING").await;
    assert_eq!(main_row(&app, head).await.0, "PENDING");
    assert_occupancy_invariant(&app).await;
    fleet.stop().await;
}

#[tokio::test]
async fn multi_node_cluster_spreads_and_terminates_once() {
    let app = full_app().await;
    let fleet = sim_agents(&app, 3, "4", "8589934592").await;
    set_policy(&app, "max_containers_per_session = 3").await;
    let c = app.user().await;
    let sid = create_running(&app, &c,
        "cluster3",
        "python",
        json!({"clusterSize": 3, "clusterMode": "multi-node", "config": {"resources": {"cpu": "2", "mem": "2g"}}}),
    )
    .await;
    let placed: Vec<(String, Option<String>)> =
        sqlx::query_as("SELECT cluster_hostname, agent FROM kernels WHERE session_id = $1 ORDER BY cluster_hostname")
            .bind(sid)
            .fetch_all(app.db.db.pool())
            .await
            .unwrap();
    assert_eq!(placed.len(), 3);
    let agents: BTreeSet<String> = placed.iter().filter_map(|(_, a)| a.clone()).collect();
    assert_eq!(agents.len(), 3, "each kernel on its own agent: {placed:?}");
    assert_occupancy_invariant(&app).await;

    let mut events = app
        .bus
        .bus
        .client()
        .subscribe(app.bus.bus.subjects().events_about(sid))
        .await
        .unwrap();
    let (status, body) = c
        .json(Method::DELETE, "/session/cluster3", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    wait_session_status(&app, sid, "TERMINATED").await;
    // Collect what follows for a while: exactly one session_terminated.
    let mut terminated = 0;
    let _ = tokio::time::timeout(Duration::from_secs(3), async {
        while let Some(msg) = events.next().await {
            if let Ok(env) = Envelope::<Event>::from_slice(&msg.payload) {
                if matches!(env.body, Event::SessionTerminated { .. }) {
                    terminated += 1;
                }
            }
        }
    })
    .await;
    assert_eq!(
        terminated, 1,
        "exactly one session_terminated per cluster session"
    );
    assert_occupancy_invariant(&app).await;
    fleet.stop().await;
}

#[tokio::test]
async fn failed_start_cancels_releases_slots_and_the_next_session_runs() {
    let app = full_app().await;
    // This agent runs Python images only: creating an `ubuntu` kernel fails.
    let mut cfg = agent_config(
        &app,
        &format!("i-fail-{}", &Uuid::new_v4().simple().to_string()[..8]),
    );
    cfg.runtimes = RuntimeTable {
        rules: vec![("python".into(), RuntimeKind::Python)],
        default: None,
    };
    let agent_id = cfg.id.clone();
    let agent = process_agent(&app, cfg).await;
    let c = app.user().await;
    let bad = enqueue(&c, "fails-to-start", "ubuntu", json!({})).await;
    let good = enqueue(&c, "starts-fine", "python", json!({})).await;
    let ok = eventually(TIMEOUT, || async {
        let (status, info, data) = main_row(&app, bad).await;
        (status == "CANCELLED").then_some((info, data))
    })
    .await;
    let (info, data) = ok.expect("the failed session is cancelled");
    assert_eq!(info.as_deref(), Some("failed-to-start"));
    assert!(
        data.unwrap()["error"]["repr"]
            .as_str()
            .unwrap()
            .contains("no runtime"),
        "agent error recorded"
    );
    wait_session_status(&app, good, "RUNNING").await;
    // Only the running session's slots remain on the agent.
    let occupied: Value = sqlx::query_scalar("SELECT occupied_slots FROM agents WHERE id = $1")
        .bind(&agent_id)
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    let occ = ResourceSlot::from_json(&occupied).unwrap();
    assert_eq!(
        bai_core::slots::format_amount("cpu", occ.get("cpu")),
        "1",
        "{occupied}"
    );
    assert_occupancy_invariant(&app).await;
    let (status, _) = c
        .json(Method::DELETE, "/session/starts-fine", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    wait_session_status(&app, good, "TERMINATED").await;
    let occupied: Value = sqlx::query_scalar("SELECT occupied_slots FROM agents WHERE id = $1")
        .bind(&agent_id)
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert!(
        ResourceSlot::from_json(&occupied).unwrap().is_zero(),
        "slots released: {occupied}"
    );
    assert_occupancy_invariant(&app).await;
    agent.stop().await.unwrap();
}
