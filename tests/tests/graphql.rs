//! GraphQL conformance against the real services: PostgreSQL (fresh fixture DB), NATS
//! (private streams), etcd (private namespace with the fixture's keys), Redis, an
//! in-process worker consuming the command bus, and the API bound to port 0. Requests
//! are HMAC-signed exactly like the official client signs them.
//!
//! The queries are the verbatim documents client 21.3.6 sends
//! (`shared/conformance/captures/fake-server-requests.txt`).

use std::net::SocketAddr;
use std::sync::Arc;

use chrono::Utc;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_api::auth::hmac::{self, HashType, SigningInput};
use bai_api::auth::{AuthUser, UserRole};
use bai_api::{AppState, Application};
use bai_events::BusOptions;
use bai_tests::{base_config, workspace_root, TestBus, TestDb, TestEtcd, TIMEOUT};
use bai_workers::{run_command_loop, WorkerContext, WorkerMetrics, WorkerOptions};

const SUPER: (&str, &str) = (
    "AKIAIOSFODNN7EXAMPLE",
    "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
);
const DADMIN: (&str, &str) = (
    "AKIAHUKCHDEZGEXAMPLE",
    "cWbsM_vBB4CzTW7JdORRMx8SjGI3-wEXAMPLEKEY",
);
const USER: (&str, &str) = (
    "AKIANABBDUSEREXAMPLE",
    "C8qnIo29EZvXkPK_MXcuAakYTy4NYrxwmCEyNPlf",
);
const MONITOR: (&str, &str) = (
    "AKIANAMONITOREXAMPLE",
    "7tuEwF1J7FfK41vOM4uSSyWCUWjPBolpVwvgkSBu",
);

const ADMIN_UUID: &str = "f38dea23-50fa-42a0-b5ae-338f5f4693f4";
const USER_UUID: &str = "dfa9da54-4b28-432f-be29-c0d680c7a412";
const DEFAULT_GROUP: &str = "2de2b969-1d04-48a6-af16-0bc8adb3c831";

/// One API + one worker over private services.
struct Env {
    db: TestDb,
    _bus: TestBus,
    etcd: TestEtcd,
    state: AppState,
    redis: bai_core::redis::RedisPool,
    addr: SocketAddr,
    http: reqwest::Client,
    shutdown: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

impl Env {
    async fn new() -> Self {
        let db = TestDb::new().await;
        let bus = TestBus::new(BusOptions::default()).await;
        let etcd = TestEtcd::new().await;
        // The example fixture's etcd section (images, aliases, registries, volumes).
        let fixture: Value = serde_json::from_str(
            &std::fs::read_to_string(workspace_root().join("ops/fixtures/example.json")).unwrap(),
        )
        .unwrap();
        etcd.etcd.put_json("", &fixture["etcd"]).await.unwrap();
        let cfg = base_config();
        let redis = bai_core::redis::connect(&cfg.redis, TIMEOUT)
            .await
            .expect("redis");
        bai_tests::reset_fixture_rate_limits(&redis).await;
        let mut config = db.config.clone();
        config.nats.prefix = bus.prefix.clone();
        let state = AppState::new(
            config,
            db.db.clone(),
            redis.clone(),
            etcd.etcd.clone(),
            bus.bus.clone(),
        );
        let app = Application::build(state.clone(), "127.0.0.1:0".parse().unwrap())
            .await
            .expect("bind");
        let addr = app.local_addr().unwrap();
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run(shutdown.clone()));
        let ctx = Arc::new(WorkerContext {
            agent_rpc: None,
            db: db.db.clone(),
            bus: bus.peer("worker").await,
            etcd: Some(etcd.etcd.clone()),
            redis: Some(redis.clone()),
            metrics: Arc::new(WorkerMetrics::default()),
        });
        tokio::spawn(run_command_loop(
            ctx,
            WorkerOptions::default(),
            shutdown.clone(),
        ));
        Self {
            db,
            _bus: bus,
            etcd,
            state,
            redis,
            addr,
            http: reqwest::Client::new(),
            shutdown,
        }
    }

    /// A signed POST as client 21.3.6 sends it; returns (status, content-type, body).
    async fn post(&self, key: (&str, &str), path: &str, body: &Value) -> (u16, String, Value) {
        let (status, ct, text) = self.post_raw(key, path, body).await;
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        (status, ct, body)
    }

    /// The same, with the body as text (to check key order).
    async fn post_raw(&self, key: (&str, &str), path: &str, body: &Value) -> (u16, String, String) {
        let host = self.addr.to_string();
        let now = Utc::now();
        let date = now.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
        let input = SigningInput {
            method: "POST",
            path_and_query: path,
            date_raw: &date,
            host: &host,
            media_type: "application/json",
            version_label: "x-backendai-version",
            version: "v6.20210815",
        };
        let sts = hmac::string_to_sign(&input, HashType::Sha256);
        let sig = hmac::sign(HashType::Sha256, key.1, now.date_naive(), &host, &sts);
        let resp = self
            .http
            .post(format!("http://{host}{path}"))
            .header("Date", &date)
            .header("Content-Type", "application/json")
            .header("X-BackendAI-Version", "v6.20210815")
            .header("X-BackendAI-Domain", "default")
            .header(
                "Authorization",
                format!(
                    "BackendAI signMethod=HMAC-SHA256, credential={}:{sig}",
                    key.0
                ),
            )
            .body(body.to_string())
            .send()
            .await
            .expect("request");
        let status = resp.status().as_u16();
        let ct = resp
            .headers()
            .get("content-type")
            .and_then(|v| v.to_str().ok())
            .unwrap_or_default()
            .to_string();
        let text = resp.text().await.unwrap();
        (status, ct, text)
    }

    /// `/admin/gql`; returns the whole `{data, errors}` body.
    async fn gql_raw(&self, key: (&str, &str), query: &str, vars: Value) -> Value {
        let (status, _, body) = self
            .post(
                key,
                "/admin/gql",
                &json!({"query": query, "variables": vars}),
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// `/admin/gql` expecting success; returns `data`.
    async fn gql(&self, key: (&str, &str), query: &str, vars: Value) -> Value {
        let body = self.gql_raw(key, query, vars).await;
        assert!(body.get("errors").is_none(), "unexpected errors: {body}");
        body["data"].clone()
    }

    /// `/admin/gql` expecting an error; returns the first message.
    async fn gql_error(&self, key: (&str, &str), query: &str, vars: Value) -> String {
        let body = self.gql_raw(key, query, vars).await;
        body["errors"][0]["message"]
            .as_str()
            .unwrap_or_else(|| panic!("expected an error: {body}"))
            .to_string()
    }

    async fn redis_set(&self, key: &str, value: &str) {
        let mut c = self.redis.get().await.unwrap();
        bai_core::redis::redis::cmd("SET")
            .arg(key)
            .arg(value)
            .arg("EX")
            .arg(300)
            .query_async::<()>(&mut *c)
            .await
            .unwrap();
    }

    async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(self.db.db.pool())
            .await
            .unwrap()
    }
}

/// Decodes a JSONString field.
fn js(v: &Value) -> Value {
    serde_json::from_str(
        v.as_str()
            .unwrap_or_else(|| panic!("not a JSON string: {v}")),
    )
    .unwrap()
}

fn is_isoformat(v: &Value) -> bool {
    let s = v.as_str().unwrap_or_default();
    s.ends_with("+00:00") && chrono::DateTime::parse_from_rfc3339(s).is_ok()
}

/// An agent and two sessions (one RUNNING with two kernels and a dependency, one
/// TERMINATED), written directly: session creation is another component's job.
async fn seed_sessions(env: &Env, agent: &str) -> (Uuid, Uuid) {
    let pool = env.db.db.pool();
    sqlx::query(
        "INSERT INTO agents (id, status, region, scaling_group, available_slots, occupied_slots, addr, version, compute_plugins) \
         VALUES ($1, 'ALIVE', 'local', 'default', '{\"cpu\": \"8\", \"mem\": \"17179869184\"}', \
         '{\"cpu\": \"3\", \"mem\": \"3221225472\"}', 'tcp://127.0.0.1:6001', '21.03.6', '{\"cpu\": {}}')",
    )
    .bind(agent)
    .execute(pool)
    .await
    .unwrap();
    let running = Uuid::new_v4();
    let done = Uuid::new_v4();
    let sub = Uuid::new_v4();
    let insert = "INSERT INTO kernels (id, session_id, session_name, session_type, cluster_mode, cluster_size, \
        cluster_role, cluster_idx, cluster_hostname, scaling_group, agent, domain_name, group_id, user_uuid, access_key, \
        image, registry, occupied_slots, repl_in_port, repl_out_port, stdin_port, stdout_port, status, status_changed, \
        status_info, mounts, last_stat, created_at) \
        VALUES ($1, $2, $3, 'INTERACTIVE', $4, $5, $6, $7, $8, 'default', $9, 'default', $10, $11, $12, \
        'cr.backend.ai/stable/python:3.9-ubuntu20.04', 'cr.backend.ai', $13, 0, 0, 0, 0, $14::kernelstatus, now(), $15, \
        ARRAY[ARRAY['data','local:volume1','/vfroot/data','rw','']]::varchar[], $16, now() - $17 * interval '1 second')";
    let group: Uuid = DEFAULT_GROUP.parse().unwrap();
    let user: Uuid = USER_UUID.parse().unwrap();
    #[allow(clippy::type_complexity)]
    let rows: Vec<(
        Uuid,
        Uuid,
        &str,
        &str,
        i32,
        &str,
        i32,
        &str,
        Value,
        &str,
        Option<&str>,
        Option<Value>,
        i64,
    )> = vec![
        (
            running,
            running,
            "sess-run",
            "multi-node",
            2,
            "main",
            1,
            "main1",
            json!({"cpu": "1", "mem": "1073741824"}),
            "RUNNING",
            None,
            None,
            10,
        ),
        (
            sub,
            running,
            "sess-run",
            "multi-node",
            2,
            "sub",
            1,
            "sub1",
            json!({"cpu": "2", "mem": "2147483648"}),
            "RUNNING",
            None,
            None,
            10,
        ),
        (
            done,
            done,
            "sess-done",
            "single-node",
            1,
            "main",
            1,
            "main1",
            json!({"cpu": "1", "mem": "1073741824"}),
            "TERMINATED",
            Some("user-requested"),
            Some(json!({"cpu_util": {"pct": "5.0"}})),
            20,
        ),
    ];
    for (id, sid, name, mode, size, role, idx, host, slots, status, info, last, age) in rows {
        sqlx::query(insert)
            .bind(id)
            .bind(sid)
            .bind(name)
            .bind(mode)
            .bind(size)
            .bind(role)
            .bind(idx)
            .bind(host)
            .bind(agent)
            .bind(group)
            .bind(user)
            .bind(USER.0)
            .bind(slots)
            .bind(status)
            .bind(info)
            .bind(last)
            .bind(age as f64)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query("INSERT INTO session_dependencies (session_id, depends_on) VALUES ($1, $2)")
        .bind(running)
        .bind(done)
        .execute(pool)
        .await
        .unwrap();
    (running, done)
}

const PS_QUERY: &str = "query($limit:Int!, $offset:Int!, $status: String, $access_key: String, $filter: String, $order: String) {\n  compute_session_list(\n      limit:$limit, offset:$offset, status:$status, access_key:$access_key, filter:$filter, order:$order) {\n    items { name access_key session_id group_name id image type status status_info status_changed result tag created_at occupied_slots }\n    total_count\n  }\n}";
const ACTIVE: &str =
    "PENDING,SCHEDULED,PREPARING,PULLING,RUNNING,RESTARTING,TERMINATING,RESIZING,SUSPENDED,ERROR";
const KEYPAIR_FIELDS: &str = "user_id user_info { full_name } access_key secret_key is_active is_admin created_at last_used resource_policy rate_limit concurrency_limit concurrency_used";

#[tokio::test]
async fn captured_session_and_keypair_queries() {
    let env = Env::new().await;
    let agent = format!("i-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let (running, done) = seed_sessions(&env, &agent).await;

    // `ps` step 1.
    let d = env
        .gql(
            SUPER,
            "query {  keypair {    access_key secret_key is_active is_admin  }}",
            json!({}),
        )
        .await;
    assert_eq!(
        d["keypair"],
        json!({"access_key": SUPER.0, "secret_key": SUPER.1, "is_active": true, "is_admin": true})
    );

    // `ps` / `admin sessions --detail`: only the active session, with the session total.
    let vars = json!({"status": ACTIVE, "access_key": null, "filter": null, "order": null, "limit": 20, "offset": 0});
    let d = env.gql(SUPER, PS_QUERY, vars).await;
    let list = &d["compute_session_list"];
    assert_eq!(list["total_count"], 1, "{list}");
    let item = &list["items"][0];
    assert_eq!(item["name"], "sess-run");
    assert_eq!(item["id"], running.to_string());
    assert_eq!(item["session_id"], running.to_string());
    assert_eq!(item["group_name"], "default");
    assert_eq!(item["access_key"], USER.0);
    assert_eq!(item["type"], "INTERACTIVE");
    assert_eq!(item["status"], "RUNNING");
    assert_eq!(item["result"], "UNDEFINED");
    assert!(is_isoformat(&item["created_at"]), "{item}");
    assert_eq!(
        js(&item["occupied_slots"]),
        json!({"cpu": "3", "mem": "3221225472"})
    );

    // `ps --dead`.
    let vars = json!({"status": "CANCELLED,TERMINATED", "access_key": null, "filter": null, "order": null, "limit": 20, "offset": 0});
    let d = env.gql(SUPER, PS_QUERY, vars).await;
    assert_eq!(d["compute_session_list"]["total_count"], 1);
    assert_eq!(
        d["compute_session_list"]["items"][0]["status_info"],
        "user-requested"
    );

    // The user sees their own sessions; a domain admin sees the domain's.
    let all = json!({"status": null, "access_key": null, "filter": null, "order": null, "limit": 20, "offset": 0});
    assert_eq!(
        env.gql(USER, PS_QUERY, all.clone()).await["compute_session_list"]["total_count"],
        2
    );
    assert_eq!(
        env.gql(DADMIN, PS_QUERY, all.clone()).await["compute_session_list"]["total_count"],
        2
    );
    // ...but a user asking for another keypair's sessions is refused.
    let other = json!({"status": null, "access_key": SUPER.0, "filter": null, "order": null, "limit": 20, "offset": 0});
    assert_eq!(
        env.gql_error(USER, PS_QUERY, other).await,
        "Forbidden operation."
    );
    // filter/order (21.03.12+ arguments the 21.3.6 client sends).
    let f = json!({"status": null, "access_key": null, "filter": "name == \"sess-done\" | status == \"RUNNING\"", "order": "-created_at", "limit": 1, "offset": 1});
    let d = env.gql(SUPER, PS_QUERY, f).await;
    assert_eq!(d["compute_session_list"]["total_count"], 2);
    assert_eq!(d["compute_session_list"]["items"][0]["name"], "sess-done");
    let bad = json!({"status": null, "access_key": null, "filter": "secret == 1", "order": null, "limit": 20, "offset": 0});
    assert!(env
        .gql_error(SUPER, PS_QUERY, bad)
        .await
        .starts_with("Missing or invalid API parameters."));

    // `admin session <uuid>` / `info`.
    env.redis_set(&running.to_string(), r#"{"cpu_util": {"pct": "42.0"}}"#)
        .await;
    let q = "query($id: UUID!) {  compute_session(id: $id) {    name session_id id image tag created_at terminated_at status status_info status_data occupied_slots containers { id cluster_role cluster_idx cluster_hostname  agent status status_info status_data status_changed  occupied_slots live_stat last_stat } dependencies { name id status status_info status_changed }  }}";
    let d = env.gql(SUPER, q, json!({"id": running})).await;
    let s = &d["compute_session"];
    assert_eq!(s["name"], "sess-run");
    assert_eq!(s["containers"].as_array().unwrap().len(), 2);
    assert_eq!(s["containers"][0]["cluster_role"], "main");
    assert_eq!(s["containers"][0]["agent"], agent);
    assert_eq!(
        js(&s["containers"][0]["live_stat"]),
        json!({"cpu_util": {"pct": "42.0"}})
    );
    assert_eq!(s["containers"][1]["cluster_hostname"], "sub1");
    assert_eq!(s["containers"][1]["live_stat"], Value::Null);
    assert_eq!(s["dependencies"][0]["id"], done.to_string());
    assert_eq!(s["dependencies"][0]["status"], "TERMINATED");
    // Another user cannot see it (null, as the original's scoped loader).
    let d = env
        .gql(MONITOR, "{ resource_presets { name } }", json!({}))
        .await;
    assert_eq!(d["resource_presets"].as_array().unwrap().len(), 6);
    let d = env.gql(DADMIN, q, json!({"id": running})).await;
    assert_eq!(d["compute_session"]["name"], "sess-run");

    // container list and legacy list.
    let d = env
        .gql(SUPER, "query($sid: ID!) { compute_container_list(limit: 10, offset: 0, session_id: $sid, role: \"sub\") { items { id role hostname cluster_idx } total_count } }", json!({"sid": running}))
        .await;
    assert_eq!(d["compute_container_list"]["total_count"], 1);
    assert_eq!(d["compute_container_list"]["items"][0]["hostname"], "sub1");
    let d = env
        .gql(SUPER, "{ legacy_compute_session_list(limit: 10, offset: 0, status: \"TERMINATED\") { items { sess_id lang cpu_using mem_slot mounts } total_count } }", json!({}))
        .await;
    let l = &d["legacy_compute_session_list"];
    assert_eq!(l["items"][0]["sess_id"], "sess-done");
    assert_eq!(l["items"][0]["cpu_using"], 5.0);
    assert_eq!(l["items"][0]["mem_slot"], 1024);
    assert_eq!(
        l["items"][0]["mounts"],
        json!([["data", "local:volume1", "/vfroot/data", "rw", ""]])
    );
    let d = env
        .gql(
            SUPER,
            "query($id: UUID!) { compute_session(id: $id) { mounts } }",
            json!({"id": done}),
        )
        .await;
    assert_eq!(
        d["compute_session"]["mounts"],
        json!(["['data', 'local:volume1', '/vfroot/data', 'rw', '']"])
    );

    // `admin keypair`.
    let d = env
        .gql(
            SUPER,
            &format!("query {{  keypair {{    {KEYPAIR_FIELDS}  }}}}"),
            json!({}),
        )
        .await;
    let k = &d["keypair"];
    assert_eq!(k["user_id"], "admin@lablup.com");
    assert_eq!(k["user_info"]["full_name"], "admin");
    assert_eq!(k["resource_policy"], "default");
    assert_eq!(k["rate_limit"], 30000);
    assert_eq!(k["concurrency_limit"], 0);
    assert_eq!(k["concurrency_used"], 0);
    assert!(is_isoformat(&k["created_at"]));

    // `admin keypairs`: everything for the superadmin, own keys for a user.
    let q = format!("query($limit:Int!, $offset:Int!, $is_active: Boolean, $domain_name: String, $filter: String, $order: String) {{\n  keypair_list(\n      limit:$limit, offset:$offset, is_active:$is_active, domain_name:$domain_name, filter:$filter, order:$order) {{\n    items {{ {KEYPAIR_FIELDS} }}\n    total_count\n  }}\n}}");
    let vars = json!({"is_active": null, "domain_name": null, "filter": null, "order": null, "limit": 20, "offset": 0});
    let d = env.gql(SUPER, &q, vars.clone()).await;
    assert_eq!(d["keypair_list"]["total_count"], 4);
    let mut aks: Vec<&str> = d["keypair_list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| i["access_key"].as_str().unwrap())
        .collect();
    aks.sort();
    let mut expected = vec![DADMIN.0, USER.0, MONITOR.0, SUPER.0];
    expected.sort();
    assert_eq!(aks, expected);
    let d = env.gql(USER, &q, vars.clone()).await;
    assert_eq!(d["keypair_list"]["total_count"], 1);
    assert_eq!(d["keypair_list"]["items"][0]["access_key"], USER.0);
    let mut fv = vars.clone();
    fv["filter"] = json!("user_id ilike \"%admin%\"");
    fv["order"] = json!("-user_id");
    let d = env.gql(SUPER, &q, fv).await;
    assert_eq!(d["keypair_list"]["total_count"], 2);
    assert_eq!(
        d["keypair_list"]["items"][0]["user_id"],
        "domain-admin@lablup.com"
    );
}

#[tokio::test]
async fn captured_admin_queries() {
    let env = Env::new().await;
    let agent = format!("i-test-{}", &Uuid::new_v4().simple().to_string()[..8]);
    seed_sessions(&env, &agent).await;

    // `admin users`
    let q = "query($limit:Int!, $offset:Int!, $status: String, $group_id: UUID, $filter: String, $order: String) {\n  user_list(\n      limit:$limit, offset:$offset, status:$status, group_id:$group_id, filter:$filter, order:$order) {\n    items { uuid username role email full_name need_password_change status status_info created_at domain_name groups { id name } }\n    total_count\n  }\n}";
    let vars = json!({"status": null, "group_id": null, "filter": null, "order": null, "limit": 20, "offset": 0});
    let d = env.gql(SUPER, q, vars.clone()).await;
    assert_eq!(d["user_list"]["total_count"], 4);
    let admin = d["user_list"]["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|u| u["uuid"] == ADMIN_UUID)
        .unwrap()
        .clone();
    assert_eq!(admin["role"], "superadmin");
    assert_eq!(admin["status"], "active");
    assert_eq!(admin["status_info"], "admin-requested");
    assert_eq!(admin["need_password_change"], false);
    assert_eq!(
        admin["groups"],
        json!([{"id": DEFAULT_GROUP, "name": "default"}])
    );
    let mut f = vars.clone();
    f["filter"] = json!("role == \"monitor\"");
    assert_eq!(
        env.gql(SUPER, q, f).await["user_list"]["items"][0]["email"],
        "monitor@lablup.com"
    );
    assert_eq!(
        env.gql_error(USER, q, vars.clone()).await,
        "Insufficient privilege."
    );

    // `admin user`
    let d = env
        .gql(USER, "query {\n    user {uuid username role email full_name need_password_change status status_info created_at domain_name groups { id name }}\n}\n", json!({}))
        .await;
    assert_eq!(d["user"]["email"], "user@lablup.com");
    assert_eq!(d["user"]["role"], "user");

    // `admin agents` and `admin agent`
    let live = r#"{"node": {"cpu_util": {"pct": "12.5"}, "mem": {"current": "1073741824"}}, "devices": {}}"#;
    env.redis_set(&agent, live).await;
    let q = "query($limit:Int!, $offset:Int!, $status: String, $scaling_group: String, $filter: String, $order: String) {\n  agent_list(\n      limit:$limit, offset:$offset, status:$status, scaling_group:$scaling_group, filter:$filter, order:$order) {\n    items { id status scaling_group region first_contact cpu_cur_pct mem_cur_bytes available_slots occupied_slots }\n    total_count\n  }\n}";
    let d = env.gql(SUPER, q, json!({"status": "ALIVE", "scaling_group": null, "filter": null, "order": null, "limit": 20, "offset": 0})).await;
    assert_eq!(d["agent_list"]["total_count"], 1);
    let a = &d["agent_list"]["items"][0];
    assert_eq!(a["id"], agent);
    assert_eq!(a["cpu_cur_pct"], 12.5);
    assert_eq!(a["mem_cur_bytes"], 1073741824.0);
    assert_eq!(
        js(&a["available_slots"]),
        json!({"cpu": "8", "mem": "17179869184"})
    );
    let d = env.gql(SUPER, q, json!({"status": "LOST", "scaling_group": null, "filter": null, "order": null, "limit": 20, "offset": 0})).await;
    assert_eq!(d["agent_list"]["total_count"], 0);
    let d = env
        .gql(SUPER, "query($agent_id: String!) {\n    agent(agent_id: $agent_id) {id status region first_contact cpu_cur_pct available_slots occupied_slots hardware_metadata live_stat}\n}\n", json!({"agent_id": agent}))
        .await;
    assert_eq!(
        js(&d["agent"]["hardware_metadata"])["cpu"]["status"],
        "healthy"
    );
    assert_eq!(
        js(&d["agent"]["live_stat"])["node"]["cpu_util"]["pct"],
        "12.5"
    );
    assert_eq!(
        env.gql_error(USER, "{ agents { id } }", json!({})).await,
        "Forbidden operation. (superadmin privilege required)"
    );

    // `admin scaling-groups` / `scaling-group`
    let d = env
        .gql(SUPER, "query($is_active: Boolean) {\n    scaling_groups(is_active: $is_active) {\n        name description is_active created_at driver driver_opts scheduler scheduler_opts\n    }\n}\n", json!({"is_active": null}))
        .await;
    assert_eq!(d["scaling_groups"][0]["name"], "default");
    assert_eq!(d["scaling_groups"][0]["driver_opts"], "{}");
    let d = env
        .gql(SUPER, "query($name: String) {\n    scaling_group(name: $name) {name description is_active created_at driver driver_opts scheduler scheduler_opts}\n}\n", json!({"name": "default"}))
        .await;
    assert_eq!(d["scaling_group"]["scheduler"], "fifo");
    let d = env
        .gql(
            SUPER,
            "{ scaling_groups_for_domain(domain: \"default\") { name } }",
            json!({}),
        )
        .await;
    assert_eq!(d["scaling_groups_for_domain"], json!([{"name": "default"}]));

    // `admin keypair-resource-policies` / `-policy`
    let fields = "name created_at default_for_unspecified total_resource_slots max_concurrent_sessions max_containers_per_session max_vfolder_count max_vfolder_size idle_timeout allowed_vfolder_hosts";
    let d = env
        .gql(
            SUPER,
            &format!("query {{  keypair_resource_policies {{    {fields}  }}}}"),
            json!({}),
        )
        .await;
    let p = &d["keypair_resource_policies"][0];
    assert_eq!(p["name"], "default");
    assert_eq!(p["default_for_unspecified"], "UNLIMITED");
    assert_eq!(p["total_resource_slots"], "{}");
    assert_eq!(p["idle_timeout"], 600);
    assert_eq!(p["allowed_vfolder_hosts"], json!(["local:volume1"]));
    let d = env
        .gql(USER, &format!("query($name: String) {{  keypair_resource_policy(name: $name) {{    {fields}  }}}}"), json!({"name": null}))
        .await;
    assert_eq!(d["keypair_resource_policy"]["name"], "default");

    // `admin images`: from etcd, with aliases; sizes as Int.
    let d = env
        .gql(USER, "query($is_operation: Boolean) {  images(is_operation: $is_operation) {    name registry tag digest size_bytes aliases  }}", json!({"is_operation": false}))
        .await;
    let imgs = d["images"].as_array().unwrap();
    assert_eq!(imgs.len(), 3, "{d}");
    let py39 = imgs.iter().find(|i| i["tag"] == "3.9-ubuntu20.04").unwrap();
    assert_eq!(py39["name"], "stable/python");
    assert_eq!(py39["registry"], "cr.backend.ai");
    assert_eq!(py39["size_bytes"], 551190528);
    let mut aliases: Vec<String> = serde_json::from_value(py39["aliases"].clone()).unwrap();
    aliases.sort();
    assert_eq!(aliases, vec!["python", "python:3.9"]);
    let d = env.gql(SUPER, "{ image(reference: \"python\") { name tag resource_limits { key min max } labels { key value } } }", json!({})).await;
    assert_eq!(d["image"]["tag"], "3.9-ubuntu20.04");
    assert!(d["image"]["resource_limits"]
        .as_array()
        .unwrap()
        .contains(&json!({"key": "mem", "min": "256m", "max": "Infinity"})));
    assert_eq!(
        env.gql(SUPER, "{ images(is_operation: true) { name } }", json!({}))
            .await["images"],
        json!([])
    );

    // `admin storage-list` / `storage`: no storage proxy yet.
    let d = env
        .gql(SUPER, "query($limit:Int!, $offset:Int!, $filter: String, $order: String) {\n  storage_volume_list(\n      limit:$limit, offset:$offset, filter:$filter, order:$order) {\n    items { id backend capabilities }\n    total_count\n  }\n}", json!({"filter": null, "order": null, "limit": 20, "offset": 0}))
        .await;
    assert_eq!(
        d["storage_volume_list"],
        json!({"items": [], "total_count": 0})
    );

    // `admin domains` / `groups` / `groups-by-name` / `group`
    let d = env
        .gql(SUPER, "query {\n    domains {name description is_active created_at total_resource_slots allowed_vfolder_hosts allowed_docker_registries scaling_groups}\n}\n", json!({}))
        .await;
    let dom = &d["domains"][0];
    assert_eq!(dom["name"], "default");
    assert_eq!(dom["total_resource_slots"], "{}");
    assert_eq!(dom["allowed_docker_registries"], json!(["cr.backend.ai"]));
    assert_eq!(dom["scaling_groups"], json!(["default"]));
    let d = env
        .gql(SUPER, "query($domain_name: String) {\n    groups(domain_name: $domain_name) {id name domain_name description is_active created_at total_resource_slots allowed_vfolder_hosts scaling_groups}\n}\n", json!({"domain_name": null}))
        .await;
    assert_eq!(d["groups"][0]["id"], DEFAULT_GROUP);
    assert_eq!(d["groups"][0]["description"], "The default user group");
    assert_eq!(d["groups"][0]["scaling_groups"], json!([]));
    let d = env
        .gql(
            USER,
            "{ groups_by_name(name: \"default\") { id domain_name } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["groups_by_name"],
        json!([{"id": DEFAULT_GROUP, "domain_name": "default"}])
    );
    let d = env
        .gql(
            USER,
            &format!("{{ group(id: \"{DEFAULT_GROUP}\") {{ name }} }}"),
            json!({}),
        )
        .await;
    assert_eq!(d["group"]["name"], "default");
    let d = env.gql(USER, "{ domain { name } }", json!({})).await;
    assert_eq!(d["domain"]["name"], "default");
    assert_eq!(
        env.gql_error(USER, "{ domain(name: \"other\") { name } }", json!({}))
            .await,
        "Unknown URL path. (no such domain)"
    );

    // BigInt above int32 is a float on the wire.
    sqlx::query("UPDATE keypair_resource_policies SET max_vfolder_size = 1099511627776")
        .execute(env.db.db.pool())
        .await
        .unwrap();
    let d = env.post(SUPER, "/admin/gql", &json!({"query": "{ keypair_resource_policy(name: \"default\") { max_vfolder_size } }"})).await;
    assert!(d.2.to_string().contains("1099511627776.0"), "{}", d.2);

    // KeyPair.num_queries comes from Redis.
    let d = env
        .gql(SUPER, "mutation { create_keypair(user_id: \"user@lablup.com\", props: {resource_policy: \"default\", rate_limit: 10}) { ok keypair { access_key } } }", json!({}))
        .await;
    let ak = d["create_keypair"]["keypair"]["access_key"]
        .as_str()
        .unwrap()
        .to_string();
    env.redis_set(&format!("kp:{ak}:num_queries"), "42").await;
    let d = env
        .gql(
            SUPER,
            "query($ak: String) { keypair(access_key: $ak) { num_queries is_active } }",
            json!({"ak": ak}),
        )
        .await;
    assert_eq!(d["keypair"], json!({"num_queries": 42, "is_active": false}));

    // The monitor role errors on scoped queries, as 21.03.6.
    assert_eq!(
        env.gql_error(MONITOR, "{ keypair { access_key } }", json!({}))
            .await,
        "Missing or invalid API parameters. (Unknown client role)"
    );
}

const CREATE_KEYPAIR: &str = "mutation($user_id: String!, $input: KeyPairInput!) {  create_keypair(user_id: $user_id, props: $input) {    ok msg keypair { access_key secret_key }  }}";
const MODIFY_KEYPAIR: &str = "mutation($access_key: String!, $input: ModifyKeyPairInput!) {  modify_keypair(access_key: $access_key, props: $input) {    ok msg  }}";
const DELETE_KEYPAIR: &str =
    "mutation($access_key: String!) {  delete_keypair(access_key: $access_key) {    ok msg  }}";

#[tokio::test]
async fn captured_mutations_keypair_user_policy() {
    let env = Env::new().await;

    // `admin keypairs add / update / delete`
    let d = env
        .gql(SUPER, CREATE_KEYPAIR, json!({"user_id": "user@lablup.com", "input": {"is_active": true, "is_admin": false, "resource_policy": "default", "rate_limit": 5000}}))
        .await;
    let r = &d["create_keypair"];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(r["msg"], "success");
    let ak = r["keypair"]["access_key"].as_str().unwrap().to_string();
    assert!(bai_core::keypair::is_valid_access_key(&ak));
    assert_eq!(r["keypair"]["secret_key"].as_str().unwrap().len(), 40);
    let rate: i32 = sqlx::query_scalar("SELECT rate_limit FROM keypairs WHERE access_key = $1")
        .bind(&ak)
        .fetch_one(env.db.db.pool())
        .await
        .unwrap();
    assert_eq!(rate, 5000);
    let d = env
        .gql(SUPER, MODIFY_KEYPAIR, json!({"access_key": ak, "input": {"is_active": false, "is_admin": null, "resource_policy": null, "rate_limit": 77}}))
        .await;
    assert_eq!(d["modify_keypair"], json!({"ok": true, "msg": "success"}));
    let (active, rate): (bool, i32) =
        sqlx::query_as("SELECT is_active, rate_limit FROM keypairs WHERE access_key = $1")
            .bind(&ak)
            .fetch_one(env.db.db.pool())
            .await
            .unwrap();
    assert!(!active);
    assert_eq!(rate, 77);
    let d = env
        .gql(SUPER, DELETE_KEYPAIR, json!({"access_key": ak}))
        .await;
    assert_eq!(d["delete_keypair"], json!({"ok": true, "msg": "success"}));
    let d = env
        .gql(SUPER, DELETE_KEYPAIR, json!({"access_key": ak}))
        .await;
    assert_eq!(
        d["delete_keypair"],
        json!({"ok": false, "msg": "no matching record"})
    );
    let d = env
        .gql(SUPER, CREATE_KEYPAIR, json!({"user_id": "nobody@lablup.com", "input": {"is_active": true, "is_admin": false, "resource_policy": "default", "rate_limit": 5000}}))
        .await;
    assert_eq!(
        d["create_keypair"]["msg"],
        "User not found: nobody@lablup.com"
    );
    // A user may not: a payload, not an error.
    let d = env
        .gql(USER, CREATE_KEYPAIR, json!({"user_id": "user@lablup.com", "input": {"is_active": true, "is_admin": true, "resource_policy": "default", "rate_limit": 5000}}))
        .await;
    assert_eq!(
        d["create_keypair"],
        json!({"ok": false, "msg": "no permission to execute create_keypair", "keypair": null})
    );

    // `admin users add / update / delete / purge`
    let create_user = "mutation($email: String!, $input: UserInput!) {\n    create_user(email: $email, props: $input) {\n        ok msg user {domain_name email username}\n    }\n}\n";
    let d = env
        .gql(SUPER, create_user, json!({"email": "new@lablup.com", "input": {"password": "pw123456", "username": "newuser", "full_name": "", "role": "user", "status": "active", "need_password_change": false, "description": "", "domain_name": "default", "group_ids": [DEFAULT_GROUP]}}))
        .await;
    assert_eq!(
        d["create_user"],
        json!({"ok": true, "msg": "success", "user": {"domain_name": "default", "email": "new@lablup.com", "username": "newuser"}})
    );
    let (hash, kps, groups): (String, i64, i64) = sqlx::query_as(
        "SELECT u.password, (SELECT count(*) FROM keypairs k WHERE k.\"user\" = u.uuid AND k.is_active AND NOT k.is_admin AND k.rate_limit = 10000), \
         (SELECT count(*) FROM association_groups_users a WHERE a.user_id = u.uuid) FROM users u WHERE email = 'new@lablup.com'",
    )
    .fetch_one(env.db.db.pool())
    .await
    .unwrap();
    assert!(hash.starts_with("$2b$12$") && bai_core::keypair::verify_password("pw123456", &hash));
    assert_eq!((kps, groups), (1, 1));
    let d = env.gql(SUPER, create_user, json!({"email": "new@lablup.com", "input": {"password": "x", "username": "other", "need_password_change": false, "domain_name": "default"}})).await;
    assert_eq!(d["create_user"]["ok"], false);
    assert!(
        d["create_user"]["msg"]
            .as_str()
            .unwrap()
            .starts_with("integrity error: "),
        "{d}"
    );
    let modify_user = "mutation($email: String!, $input: ModifyUserInput!) { modify_user(email: $email, props: $input) { ok msg user { role full_name status } } }";
    let d = env.gql(SUPER, modify_user, json!({"email": "new@lablup.com", "input": {"full_name": "New Admin", "role": "admin", "group_ids": []}})).await;
    assert_eq!(
        d["modify_user"]["user"],
        json!({"role": "admin", "full_name": "New Admin", "status": "active"})
    );
    let admin_kp: bool = sqlx::query_scalar("SELECT bool_or(k.is_admin) FROM keypairs k JOIN users u ON u.uuid = k.\"user\" WHERE u.email = 'new@lablup.com'").fetch_one(env.db.db.pool()).await.unwrap();
    assert!(admin_kp, "promotion to admin grants an admin keypair");
    assert_eq!(env.scalar_i64("SELECT count(*) FROM association_groups_users a JOIN users u ON u.uuid = a.user_id WHERE u.email = 'new@lablup.com'").await, 0);
    let d = env
        .gql(
            SUPER,
            modify_user,
            json!({"email": "new@lablup.com", "input": {}}),
        )
        .await;
    assert_eq!(d["modify_user"]["msg"], "nothing to update");
    let d = env
        .gql(
            SUPER,
            "mutation { delete_user(email: \"new@lablup.com\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(d["delete_user"]["ok"], true);
    let (status, active): (String, bool) = sqlx::query_as("SELECT u.status::text, bool_or(k.is_active) FROM users u JOIN keypairs k ON k.\"user\" = u.uuid WHERE u.email = 'new@lablup.com' GROUP BY u.status").fetch_one(env.db.db.pool()).await.unwrap();
    assert_eq!((status.as_str(), active), ("deleted", false));
    let d = env.gql(SUPER, "mutation { purge_user(email: \"new@lablup.com\", props: {purge_shared_vfolders: false}) { ok msg } }", json!({})).await;
    assert_eq!(d["purge_user"], json!({"ok": true, "msg": "success"}));
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM users WHERE email = 'new@lablup.com'")
            .await,
        0
    );

    // `admin keypair-resource-policies add / update / delete` (21.3.6 sends a string where a list is expected).
    let create = "mutation($name: String!, $input: CreateKeyPairResourcePolicyInput!) {  create_keypair_resource_policy(name: $name, props: $input) {    ok msg resource_policy { name total_resource_slots allowed_vfolder_hosts max_vfolder_size }  }}";
    let d = env
        .gql(SUPER, create, json!({"name": "mypol", "input": {"default_for_unspecified": "UNLIMITED", "total_resource_slots": "{\"cpu\":4, \"mem\": \"4g\"}", "max_concurrent_sessions": 2, "max_containers_per_session": 1, "max_vfolder_count": 10, "max_vfolder_size": 0, "idle_timeout": 3600, "allowed_vfolder_hosts": "local:volume1"}}))
        .await;
    let r = &d["create_keypair_resource_policy"];
    assert_eq!(r["ok"], true, "{r}");
    assert_eq!(
        js(&r["resource_policy"]["total_resource_slots"]),
        json!({"cpu": "4", "mem": "4294967296"})
    );
    assert_eq!(
        r["resource_policy"]["allowed_vfolder_hosts"],
        json!(["local:volume1"])
    );
    let modify = "mutation($name: String!, $input: ModifyKeyPairResourcePolicyInput!) { modify_keypair_resource_policy(name: $name, props: $input) { ok msg } }";
    let d = env
        .gql(SUPER, modify, json!({"name": "mypol", "input": {"default_for_unspecified": null, "total_resource_slots": null, "max_concurrent_sessions": 5, "max_containers_per_session": null, "max_vfolder_count": null, "max_vfolder_size": 1099511627776i64, "idle_timeout": null, "allowed_vfolder_hosts": null}}))
        .await;
    assert_eq!(d["modify_keypair_resource_policy"]["ok"], true);
    let (mcs, mvs): (i32, i64) = sqlx::query_as("SELECT max_concurrent_sessions, max_vfolder_size FROM keypair_resource_policies WHERE name = 'mypol'").fetch_one(env.db.db.pool()).await.unwrap();
    assert_eq!((mcs, mvs), (5, 1099511627776));
    let bad = env
        .gql_error(SUPER, create, json!({"name": "bad", "input": {"default_for_unspecified": "SOMETIMES", "total_resource_slots": "{}", "max_concurrent_sessions": 2, "max_containers_per_session": 1, "max_vfolder_count": 10, "max_vfolder_size": 0, "idle_timeout": 3600}}))
        .await;
    assert!(bad.contains("LIMITED or UNLIMITED"), "{bad}");
    // The default policy is referenced by keypairs: an integrity error payload.
    let d = env
        .gql(
            SUPER,
            "mutation { delete_keypair_resource_policy(name: \"default\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(d["delete_keypair_resource_policy"]["ok"], false);
    assert!(d["delete_keypair_resource_policy"]["msg"]
        .as_str()
        .unwrap()
        .starts_with("integrity error: "));
    let d = env
        .gql(
            SUPER,
            "mutation { delete_keypair_resource_policy(name: \"mypol\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(d["delete_keypair_resource_policy"]["ok"], true);

    // Resource presets.
    let d = env
        .gql(SUPER, "mutation { create_resource_preset(name: \"tiny\", props: {resource_slots: \"{\\\"cpu\\\": \\\"0.5\\\", \\\"mem\\\": \\\"512m\\\"}\", shared_memory: \"64m\"}) { ok resource_preset { name resource_slots shared_memory } } }", json!({}))
        .await;
    let p = &d["create_resource_preset"]["resource_preset"];
    assert_eq!(
        js(&p["resource_slots"]),
        json!({"cpu": "0.5", "mem": "536870912"})
    );
    assert_eq!(p["shared_memory"], 67108864);
    let d = env.gql(SUPER, "mutation { modify_resource_preset(name: \"tiny\", props: {shared_memory: \"1g\"}) { ok } }", json!({})).await;
    assert_eq!(d["modify_resource_preset"]["ok"], true);
    assert_eq!(
        env.scalar_i64("SELECT shared_memory FROM resource_presets WHERE name = 'tiny'")
            .await,
        1073741824
    );
    let d = env
        .gql(
            SUPER,
            "mutation { delete_resource_preset(name: \"tiny\") { ok } }",
            json!({}),
        )
        .await;
    assert_eq!(d["delete_resource_preset"]["ok"], true);
}

#[tokio::test]
async fn domain_group_scaling_group_image_mutations_and_scoping() {
    let env = Env::new().await;

    // Domains (superadmin only).
    let d = env
        .gql(SUPER, "mutation($name: String!, $input: DomainInput!) { create_domain(name: $name, props: $input) { ok msg domain { name total_resource_slots allowed_vfolder_hosts } } }", json!({"name": "lab", "input": {"description": "Lab", "is_active": true, "total_resource_slots": "{}", "allowed_vfolder_hosts": [], "allowed_docker_registries": ["cr.backend.ai"], "integration_id": null}}))
        .await;
    assert_eq!(
        d["create_domain"],
        json!({"ok": true, "msg": "success", "domain": {"name": "lab", "total_resource_slots": "{}", "allowed_vfolder_hosts": []}})
    );
    let d = env
        .gql(
            SUPER,
            "mutation { create_domain(name: \"-bad-\", props: {}) { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["create_domain"],
        json!({"ok": false, "msg": "invalid name format. slug format required."})
    );
    let d = env
        .gql(
            DADMIN,
            "mutation { create_domain(name: \"x\", props: {}) { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["create_domain"],
        json!({"ok": false, "msg": "no permission to execute create_domain"})
    );
    let d = env.gql(SUPER, "mutation { modify_domain(name: \"lab\", props: {description: \"Laboratory\", total_resource_slots: \"{\\\"cpu\\\": 8}\"}) { ok domain { description total_resource_slots } } }", json!({})).await;
    assert_eq!(d["modify_domain"]["domain"]["description"], "Laboratory");
    assert_eq!(
        js(&d["modify_domain"]["domain"]["total_resource_slots"]),
        json!({"cpu": "8"})
    );

    // Groups: the domain admin is limited to its own domain.
    let create_group = "mutation($name: String!, $input: GroupInput!) { create_group(name: $name, props: $input) { ok msg group { id domain_name name } } }";
    let d = env
        .gql(
            DADMIN,
            create_group,
            json!({"name": "team", "input": {"domain_name": "lab"}}),
        )
        .await;
    assert_eq!(
        d["create_group"],
        json!({"ok": false, "msg": "no permission to execute create_group", "group": null})
    );
    let d = env.gql(SUPER, create_group, json!({"name": "labteam", "input": {"domain_name": "lab", "total_resource_slots": "{}"}})).await;
    let lab_gid = d["create_group"]["group"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let d = env
        .gql(
            DADMIN,
            create_group,
            json!({"name": "team", "input": {"domain_name": "default", "description": "T"}}),
        )
        .await;
    assert_eq!(d["create_group"]["ok"], true, "{d}");
    let gid = d["create_group"]["group"]["id"]
        .as_str()
        .unwrap()
        .to_string();
    let msg = env
        .gql_error(
            SUPER,
            create_group,
            json!({"name": "no such!", "input": {"domain_name": "default"}}),
        )
        .await;
    assert_eq!(msg, "invalid name format. slug format required.");
    let d = env
        .gql(
            DADMIN,
            create_group,
            json!({"name": "team", "input": {"domain_name": "default"}}),
        )
        .await;
    assert!(
        d["create_group"]["msg"]
            .as_str()
            .unwrap()
            .starts_with("integrity error: "),
        "{d}"
    );
    // Memberships via modify_group (the CLI's add-users / remove-users).
    let modify_group = "mutation($gid: UUID!, $input: ModifyGroupInput!) { modify_group(gid: $gid, props: $input) { ok msg group { name description } } }";
    let d = env.gql(DADMIN, modify_group, json!({"gid": gid, "input": {"user_update_mode": "add", "user_uuids": [USER_UUID, ADMIN_UUID]}})).await;
    assert_eq!(
        d["modify_group"],
        json!({"ok": true, "msg": "success", "group": null})
    );
    let members = format!("SELECT count(*) FROM association_groups_users WHERE group_id = '{gid}'");
    assert_eq!(env.scalar_i64(&members).await, 2);
    let d = env.gql(DADMIN, modify_group, json!({"gid": gid, "input": {"user_update_mode": "remove", "user_uuids": [ADMIN_UUID], "description": "Team"}})).await;
    assert_eq!(
        d["modify_group"]["group"],
        json!({"name": "team", "description": "Team"})
    );
    assert_eq!(env.scalar_i64(&members).await, 1);
    let d = env
        .gql(DADMIN, modify_group, json!({"gid": gid, "input": {}}))
        .await;
    assert_eq!(d["modify_group"]["msg"], "nothing to update");
    let d = env
        .gql(
            DADMIN,
            modify_group,
            json!({"gid": lab_gid, "input": {"description": "mine now"}}),
        )
        .await;
    assert_eq!(
        d["modify_group"]["msg"],
        "no permission to execute modify_group"
    );
    let d = env
        .gql(
            USER,
            modify_group,
            json!({"gid": gid, "input": {"description": "x"}}),
        )
        .await;
    assert_eq!(
        d["modify_group"]["msg"],
        "no permission to execute modify_group"
    );
    // Reads: admin sees its domain's groups, a user only its memberships.
    assert_eq!(
        env.gql_error(
            DADMIN,
            "{ groups(domain_name: \"lab\") { name } }",
            json!({})
        )
        .await,
        "Insufficient privilege."
    );
    let d = env.gql(USER, "{ groups { name } }", json!({})).await;
    let mut names: Vec<String> = d["groups"]
        .as_array()
        .unwrap()
        .iter()
        .map(|g| g["name"].as_str().unwrap().to_string())
        .collect();
    names.sort();
    assert_eq!(names, vec!["default", "team"]);
    assert_eq!(
        env.gql_error(
            USER,
            &format!("{{ group(id: \"{lab_gid}\") {{ name }} }}"),
            json!({})
        )
        .await,
        "Insufficient privilege."
    );
    let d = env
        .gql(
            DADMIN,
            "mutation($gid: UUID!) { delete_group(gid: $gid) { ok msg } }",
            json!({"gid": gid}),
        )
        .await;
    assert_eq!(d["delete_group"]["ok"], true);
    let d = env
        .gql(
            DADMIN,
            "mutation($gid: UUID!) { purge_group(gid: $gid) { ok msg } }",
            json!({"gid": gid}),
        )
        .await;
    assert_eq!(d["purge_group"]["ok"], true);
    assert_eq!(
        env.scalar_i64(&format!("SELECT count(*) FROM groups WHERE id = '{gid}'"))
            .await,
        0
    );

    // Users of another domain are invisible to the domain admin.
    let d = env
        .gql(SUPER, "mutation($email: String!, $input: UserInput!) { create_user(email: $email, props: $input) { ok msg } }", json!({"email": "lab@lab.org", "input": {"password": "pw", "username": "", "need_password_change": false, "domain_name": "lab", "role": "user", "status": "active"}}))
        .await;
    assert_eq!(d["create_user"]["ok"], true, "{d}");
    let q = "{ user_list(limit: 50, offset: 0) { items { email username } total_count } }";
    assert_eq!(
        env.gql(SUPER, q, json!({})).await["user_list"]["total_count"],
        5
    );
    let d = env.gql(DADMIN, q, json!({})).await;
    assert_eq!(d["user_list"]["total_count"], 4);
    assert_eq!(
        env.gql(
            DADMIN,
            "{ user(email: \"lab@lab.org\") { email } }",
            json!({})
        )
        .await["user"],
        Value::Null
    );
    assert_eq!(
        env.gql(
            SUPER,
            "{ user(email: \"lab@lab.org\") { username } }",
            json!({})
        )
        .await["user"]["username"],
        "lab@lab.org"
    );
    assert_eq!(
        env.gql_error(
            USER,
            "{ user(email: \"admin@lablup.com\") { email } }",
            json!({})
        )
        .await,
        "Forbidden operation."
    );
    assert_eq!(
        env.gql_error(
            DADMIN,
            "{ keypairs(domain_name: \"lab\") { access_key } }",
            json!({})
        )
        .await,
        "Forbidden operation."
    );
    let d = env.gql(DADMIN, "{ keypairs { user_id } }", json!({})).await;
    assert_eq!(d["keypairs"].as_array().unwrap().len(), 4);
    let d = env.gql(USER, "mutation { modify_user(email: \"user@lablup.com\", props: {role: \"superadmin\"}) { ok msg } }", json!({})).await;
    assert_eq!(
        d["modify_user"],
        json!({"ok": false, "msg": "no permission to execute modify_user"})
    );

    // Domain purge refuses while users remain; delete is soft.
    let msg = env
        .gql_error(
            SUPER,
            "mutation { purge_domain(name: \"lab\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(
        msg,
        "There are users bound to the domain. Remove users first."
    );
    let d = env
        .gql(
            SUPER,
            "mutation { delete_domain(name: \"lab\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(d["delete_domain"]["ok"], true);
    let d = env
        .gql(SUPER, "{ domains(is_active: false) { name } }", json!({}))
        .await;
    assert_eq!(d["domains"], json!([{"name": "lab"}]));
    env.gql(
        SUPER,
        "mutation { purge_user(email: \"lab@lab.org\", props: {}) { ok } }",
        json!({}),
    )
    .await;
    env.gql(
        SUPER,
        &format!("mutation {{ purge_group(gid: \"{lab_gid}\") {{ ok }} }}"),
        json!({}),
    )
    .await;
    let d = env
        .gql(
            SUPER,
            "mutation { purge_domain(name: \"lab\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(d["purge_domain"], json!({"ok": true, "msg": "success"}));

    // Scaling groups: 21.3.6 double-encodes driver_opts.
    let d = env
        .gql(SUPER, "mutation($name: String!, $input: CreateScalingGroupInput!) { create_scaling_group(name: $name, props: $input) { ok msg scaling_group { name driver_opts scheduler_opts } } }", json!({"name": "gpu", "input": {"description": "", "is_active": true, "driver": "static", "driver_opts": "\"{}\"", "scheduler": "fifo", "scheduler_opts": "{\"x\": 1}"}}))
        .await;
    assert_eq!(
        d["create_scaling_group"]["scaling_group"],
        json!({"name": "gpu", "driver_opts": "{}", "scheduler_opts": "{\"x\": 1}"})
    );
    let d = env.gql(SUPER, "mutation { modify_scaling_group(name: \"gpu\", props: {scheduler: \"lifo\", description: null}) { ok } }", json!({})).await;
    assert_eq!(d["modify_scaling_group"]["ok"], true);
    let assoc = "mutation { associate_scaling_group_with_domain(scaling_group: \"gpu\", domain: \"default\") { ok msg } }";
    assert_eq!(
        env.gql(SUPER, assoc, json!({})).await["associate_scaling_group_with_domain"]["ok"],
        true
    );
    let again = env.gql(SUPER, assoc, json!({})).await;
    assert!(again["associate_scaling_group_with_domain"]["msg"]
        .as_str()
        .unwrap()
        .starts_with("integrity error: "));
    let d = env.gql(SUPER, &format!("mutation {{ associate_scaling_group_with_user_group(scaling_group: \"gpu\", user_group: \"{DEFAULT_GROUP}\") {{ ok }} associate_scaling_group_with_keypair(scaling_group: \"gpu\", access_key: \"{}\") {{ ok }} }}", USER.0), json!({})).await;
    assert_eq!(d["associate_scaling_group_with_user_group"]["ok"], true);
    assert_eq!(d["associate_scaling_group_with_keypair"]["ok"], true);
    let d = env.gql(SUPER, &format!("{{ scaling_groups_for_keypair(access_key: \"{}\") {{ name scheduler }} groups {{ name scaling_groups }} }}", USER.0), json!({})).await;
    assert_eq!(
        d["scaling_groups_for_keypair"],
        json!([{"name": "gpu", "scheduler": "lifo"}])
    );
    assert_eq!(d["groups"][0]["scaling_groups"], json!(["gpu"]));
    let d = env.gql(SUPER, "mutation { disassociate_scaling_group_with_domain(scaling_group: \"gpu\", domain: \"default\") { ok } disassociate_all_scaling_groups_with_group(user_group: \"2de2b969-1d04-48a6-af16-0bc8adb3c831\") { ok } }", json!({})).await;
    assert_eq!(d["disassociate_scaling_group_with_domain"]["ok"], true);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sgroups_for_groups")
            .await,
        0
    );
    let d = env
        .gql(
            SUPER,
            "mutation { delete_scaling_group(name: \"gpu\") { ok } }",
            json!({}),
        )
        .await;
    assert_eq!(d["delete_scaling_group"]["ok"], true);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM sgroups_for_keypairs")
            .await,
        0
    );

    // Images live in etcd.
    let d = env.gql(SUPER, "mutation { alias_image(alias: \"py\", target: \"cr.backend.ai/stable/python:3.6-ubuntu18.04\") { ok msg } }", json!({})).await;
    assert_eq!(d["alias_image"], json!({"ok": true, "msg": "success"}));
    assert_eq!(
        env.etcd
            .etcd
            .get("images/_aliases/py")
            .await
            .unwrap()
            .as_deref(),
        Some("cr.backend.ai/stable/python:3.6-ubuntu18.04")
    );
    let d = env
        .gql(
            SUPER,
            "{ image(reference: \"py\") { tag aliases } }",
            json!({}),
        )
        .await;
    assert_eq!(d["image"]["tag"], "3.6-ubuntu18.04");
    let d = env.gql(SUPER, "mutation { modify_image(target: \"py\", props: {labels: [{key: \"ai.backend.features\", value: \"operation\"}], supported_accelerators: [\"cuda\"]}) { ok msg } }", json!({})).await;
    assert_eq!(d["modify_image"]["ok"], true, "{d}");
    let d = env
        .gql(
            SUPER,
            "{ images(is_operation: true) { tag supported_accelerators labels { key } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["images"],
        json!([{"tag": "3.6-ubuntu18.04", "supported_accelerators": ["cuda"], "labels": [{"key": "ai.backend.features"}]}])
    );
    let d = env
        .gql(
            SUPER,
            "mutation { dealias_image(alias: \"py\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(d["dealias_image"]["ok"], true);
    let d = env
        .gql(
            SUPER,
            "mutation { dealias_image(alias: \"py\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(d["dealias_image"]["msg"], "no matching record");
    let d = env
        .gql(
            USER,
            "mutation { alias_image(alias: \"x\", target: \"python\") { ok msg } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["alias_image"]["msg"],
        "no permission to execute alias_image"
    );
    let d = env
        .gql(
            SUPER,
            "mutation { rescan_images { ok msg task_id } }",
            json!({}),
        )
        .await;
    // A background task now (issue 8; its progress is covered in tests/streams.rs).
    assert_eq!(d["rescan_images"]["ok"], true);
    assert!(d["rescan_images"]["task_id"].is_string());
}

#[tokio::test]
async fn envelopes_legacy_and_standard() {
    let env = Env::new().await;
    // Legacy: bare data on success.
    let (status, ct, body) = env
        .post(
            SUPER,
            "/admin/graphql",
            &json!({"query": "{ keypair { access_key } }", "variables": null}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(ct.starts_with("application/json"));
    assert_eq!(body, json!({"keypair": {"access_key": SUPER.0}}));
    // Legacy: any error → 400 problem+json, partial data discarded.
    let (status, _, body) = env
        .post(
            SUPER,
            "/admin/graphql",
            &json!({"query": "{ keypair { access_key } domains { name } }"}),
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["domains"][0]["name"], "default");
    let (status, ct2, body2) = env
        .post(
            USER,
            "/admin/graphql",
            &json!({"query": "{ keypair { access_key } domains { name } }"}),
        )
        .await;
    assert_eq!(status, 400);
    assert_eq!(ct2, "application/problem+json");
    assert_eq!(body2["type"], "https://api.backend.ai/probs/graphql-error");
    assert_eq!(body2["title"], "GraphQL-generated error.");
    assert_eq!(
        body2["data"][0]["message"],
        "Forbidden operation. (superadmin privilege required)"
    );
    assert_eq!(body2["data"][0]["path"], json!(["domains"]));
    assert!(body2.get("keypair").is_none());
    let (status, _, body) = env
        .post(
            SUPER,
            "/admin/graphql",
            &json!({"query": "{ no_such_field }"}),
        )
        .await;
    assert_eq!(status, 400);
    assert!(body["data"][0]["locations"].is_array());
    // Objects keep the selection order (the CLI zips its field list with the values).
    let (_, _, text) = env
        .post_raw(
            SUPER,
            "/admin/gql",
            &json!({"query": "{ keypair { secret_key rate_limit access_key } }"}),
        )
        .await;
    let (s, r, a) = (
        text.find("secret_key"),
        text.find("rate_limit"),
        text.find("access_key"),
    );
    assert!(s < r && r < a, "{text}");
    let (_, _, text) = env
        .post_raw(
            SUPER,
            "/admin/graphql",
            &json!({"query": "{ keypair { secret_key access_key } }"}),
        )
        .await;
    assert!(text.find("secret_key") < text.find("access_key"), "{text}");
    // Standard: errors inside a 200, no data for an invalid document, partial data otherwise.
    let (status, _, body) = env
        .post(
            SUPER,
            "/admin/gql",
            &json!({"query": "{ no_such_field }", "variables": {}}),
        )
        .await;
    assert_eq!(status, 200);
    assert!(body.get("data").is_none(), "{body}");
    assert!(body["errors"][0]["message"]
        .as_str()
        .unwrap()
        .contains("no_such_field"));
    let (_, _, body) = env
        .post(
            USER,
            "/admin/gql",
            &json!({"query": "{ keypair { access_key } domains { name } }"}),
        )
        .await;
    assert_eq!(body["data"]["keypair"]["access_key"], USER.0);
    assert_eq!(body["data"]["domains"], Value::Null);
    assert_eq!(body["errors"][0]["path"], json!(["domains"]));
    // operationName / operation_name are both accepted.
    let doc = "query A { keypair { access_key } } query B { keypair { is_admin } }";
    let (_, _, body) = env
        .post(
            SUPER,
            "/admin/gql",
            &json!({"query": doc, "operationName": "B"}),
        )
        .await;
    assert_eq!(body["data"], json!({"keypair": {"is_admin": true}}));
    let (_, _, body) = env
        .post(
            SUPER,
            "/admin/gql",
            &json!({"query": doc, "operation_name": "A"}),
        )
        .await;
    assert_eq!(body["data"], json!({"keypair": {"access_key": SUPER.0}}));
    // A body without a query is invalid API parameters.
    let (status, ct, body) = env
        .post(SUPER, "/admin/gql", &json!({"variables": {}}))
        .await;
    assert_eq!((status, ct.as_str()), (400, "application/problem+json"));
    assert_eq!(
        body["type"],
        "https://api.backend.ai/probs/invalid-api-params"
    );
    // Unsigned requests never reach the schema.
    let resp = reqwest::Client::new()
        .post(format!("http://{}/admin/gql", env.addr))
        .body(json!({"query": "{ keypair { access_key } }"}).to_string())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_client_error());
    // Introspection is on, with the original's root names.
    let d = env
        .gql(
            SUPER,
            "{ __schema { queryType { name } mutationType { name } } }",
            json!({}),
        )
        .await;
    assert_eq!(
        d["__schema"],
        json!({"queryType": {"name": "Queries"}, "mutationType": {"name": "Mutations"}})
    );
    // A frozen manager refuses mutations.
    env.etcd.etcd.put("manager/status", "frozen").await.unwrap();
    let msg = env
        .gql_error(
            SUPER,
            "mutation { delete_keypair(access_key: \"x\") { ok } }",
            json!({}),
        )
        .await;
    assert_eq!(
        msg,
        "The server is frozen due to maintenance. Please try again later."
    );
}

/// Resolvers get a read-only transaction by construction: a write through it fails with
/// SQLSTATE 25006 and nothing is stored.
#[tokio::test]
async fn resolvers_run_in_a_read_only_transaction() {
    let env = Env::new().await;
    let user = AuthUser {
        access_key: SUPER.0.into(),
        secret_key: SUPER.1.into(),
        is_admin: true,
        rate_limit: 30000,
        resource_policy: "default".into(),
        user_uuid: ADMIN_UUID.parse().unwrap(),
        email: "admin@lablup.com".into(),
        role: UserRole::Superadmin,
        domain_name: "default".into(),
    };
    let rc = bai_api::graphql::ReqCtx::new(env.state.clone(), user.clone());
    {
        let mut txn = rc.db().await.unwrap();
        let ro: String = sqlx::query_scalar("SHOW transaction_read_only")
            .fetch_one(&mut **txn)
            .await
            .unwrap();
        assert_eq!(ro, "on");
        let err =
            sqlx::query("INSERT INTO resource_presets (name, resource_slots) VALUES ('ro', '{}')")
                .execute(&mut **txn)
                .await
                .unwrap_err();
        assert_eq!(
            err.as_database_error().and_then(|d| d.code()).as_deref(),
            Some("25006")
        );
    }
    rc.finish().await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM resource_presets WHERE name = 'ro'")
            .await,
        0
    );
    // The executor path as well: a whole request shares one read-only transaction.
    let (data, errors) = bai_api::graphql::execute(
        env.state.clone(),
        user,
        async_graphql_request("{ keypair { access_key } resource_presets { name } }"),
    )
    .await;
    assert!(errors.is_empty(), "{errors:?}");
    let data = data.into_json().unwrap();
    assert_eq!(data["keypair"]["access_key"], SUPER.0);
    assert_eq!(
        env.state.db.watcher().open(bai_core::db::TxnKind::ReadOnly),
        0,
        "released after the request"
    );
}

fn async_graphql_request(q: &str) -> bai_api::graphql::GqlRequest {
    bai_api::graphql::GqlRequest::new(q)
}

/// A redelivered admin command (same id) has one effect and the same answer.
#[tokio::test]
async fn admin_commands_are_idempotent() {
    let env = Env::new().await;
    let cmd = bai_events::Command::Admin(Box::new(bai_events::AdminCommand {
        caller: bai_events::AdminCaller {
            access_key: SUPER.0.into(),
            user_uuid: ADMIN_UUID.parse().unwrap(),
            email: "admin@lablup.com".into(),
            role: "superadmin".into(),
            domain_name: "default".into(),
        },
        op: bai_events::AdminOp::CreateKeypair {
            user_id: "user@lablup.com".into(),
            props: bai_events::admin::KeyPairProps {
                is_active: Some(true),
                is_admin: Some(false),
                resource_policy: Some("default".into()),
                rate_limit: Some(1),
            },
        },
    }));
    let id = Uuid::new_v4();
    let bus = &env.state.bus;
    let first = bus
        .publish_command_with_id(id, None, cmd.clone(), TIMEOUT)
        .await
        .unwrap();
    // A redelivery is the same envelope (same id) reaching a worker again.
    let env2 = bai_events::Envelope::new(id, "again", cmd);
    let ctx = Arc::new(WorkerContext {
        agent_rpc: None,
        db: env.db.db.clone(),
        bus: bus.clone(),
        etcd: Some(env.etcd.etcd.clone()),
        redis: None,
        metrics: Arc::new(WorkerMetrics::default()),
    });
    let second = bai_workers::handlers::dispatch(&ctx, &env2).await.unwrap();
    let bai_events::CommandOutcome::Completed(first) = first else {
        panic!("no reply")
    };
    assert_eq!(first, second);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM keypairs WHERE rate_limit = 1")
            .await,
        1
    );
}
