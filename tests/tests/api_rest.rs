//! REST endpoints of issue 5: routing and error shapes, parameter parsing, manager status
//! and announcement (through the worker), `/auth`, resource presets, scaling groups,
//! `/config` and `/image/import`.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use bai_tests::app::{TestApp, USER_EMAIL, USER_PASSWORD};
use bai_tests::client::{problem_slug, read_json};
use bai_tests::eventually;

const DEFAULT_GROUP: &str = "2de2b969-1d04-48a6-af16-0bc8adb3c831";

#[tokio::test]
async fn routing_errors_and_transport_headers() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;

    let (status, body) = admin
        .json(Method::GET, "/no/such/path", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(
        body,
        json!({
            "type": "https://api.backend.ai/probs/generic-not-found",
            "title": "Unknown URL path.",
            "msg": "Unknown URL path: /no/such/path",
        })
    );
    // No trailing-slash normalisation.
    assert_eq!(
        admin
            .json(Method::GET, "/auth/role/", None)
            .await
            .unwrap()
            .0,
        StatusCode::NOT_FOUND
    );

    // A known path with a method it does not serve: 405 in problem+json (the original
    // crashed into a plain 500 here).
    let resp = admin
        .send(Method::DELETE, "/auth/role", None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
    assert_eq!(resp.headers()["server"], "BackendAI");
    let (_, body) = read_json(resp).await;
    assert_eq!(problem_slug(&body), "method-not-allowed");

    // Request ids are generated, or propagated when the client sends one.
    let resp = admin
        .request(Method::GET, "/auth/role", None)
        .header("x-request-id", "req-123")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["x-request-id"], "req-123");

    // CORS: open to any origin; preflight answered without auth.
    let resp = reqwest::Client::new()
        .request(Method::OPTIONS, format!("{}/auth/role", app.base))
        .header("origin", "https://console.example")
        .header("access-control-request-method", "GET")
        .header(
            "access-control-request-headers",
            "authorization,x-backendai-version",
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    let resp = admin
        .request(Method::GET, "/auth/role", None)
        .header("origin", "https://console.example")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["access-control-allow-origin"], "*");
    assert!(resp.headers().contains_key("access-control-expose-headers"));

    // X-Method-Override re-routes before auth (signed with the overridden method).
    let c = admin.clone();
    let date = bai_tests::client::client_date();
    let headers = c.signed_headers(&Method::GET, "/auth/test?echo=o", "text/plain", &date);
    let resp = reqwest::Client::new()
        .post(format!("{}/auth/test?echo=o", app.base))
        .headers(headers)
        .header("content-type", "text/plain")
        .header("x-method-override", "GET")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn parameter_parsing_errors_are_4xx() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    let raw = |body: &'static str| {
        let c = admin.clone();
        async move {
            let date = bai_tests::client::client_date();
            let headers = c.signed_headers(&Method::POST, "/auth", "application/json", &date);
            let resp = reqwest::Client::new()
                .post(format!("{}/auth", c.base))
                .headers(headers)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            read_json(resp).await
        }
    };
    let (status, body) = raw("{not json").await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    assert_eq!(body["msg"], "Malformed body");

    let (status, body) = raw(r#"{"echo": "x", "extra": 1}"#).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["msg"], "Input validation error");
    assert_eq!(body["data"], json!({"extra": "extra is not allowed key"}));

    let (status, body) = raw("{}").await;
    assert_eq!(
        (status, body["data"].clone()),
        (StatusCode::BAD_REQUEST, json!({"echo": "is required"}))
    );

    let (status, body) = raw(r#"{"echo": 5}"#).await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );

    // owner_access_key in a body is dropped before validation (§1.5), even for strict schemas.
    let (status, _) = raw(r#"{"echo": "x", "owner_access_key": "AKIA"}"#).await;
    assert_eq!(status, StatusCode::OK);

    // Oversized bodies: 413 in problem+json, never a 500 or a dropped connection.
    let big = json!({ "echo": "x".repeat(2 * 1024 * 1024) });
    let resp = admin.send(Method::POST, "/auth", Some(&big)).await.unwrap();
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(resp.headers()["content-type"], "application/problem+json");
}

async fn put_status(c: &bai_tests::client::SignedClient, body: Value) -> (StatusCode, Value) {
    c.json(Method::PUT, "/manager/status", Some(&body))
        .await
        .unwrap()
}

#[tokio::test]
async fn manager_status_freeze_round_trip_through_the_worker() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    let anon = app.anonymous();

    // What the client sends: a JSON body on GET (ignored).
    let (status, body) = anon
        .json(
            Method::GET,
            "/manager/status",
            Some(&json!({"status": "running"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["status"], "running");
    assert_eq!(body["active_sessions"], 0);
    assert_eq!(body["nodes"][0]["id"], "i-local");
    assert_eq!(body["nodes"][0]["status"], "running");

    // Only superadmins may change it.
    for c in [app.user().await, app.domain_admin().await] {
        let (status, body) = put_status(&c, json!({"status": "frozen"})).await;
        assert_eq!(
            (status, problem_slug(&body)),
            (StatusCode::UNAUTHORIZED, "auth-failed")
        );
    }

    let (status, body) = put_status(&admin, json!({"status": "frozen", "force_kill": false})).await;
    assert_eq!((status, body), (StatusCode::NO_CONTENT, Value::Null));
    assert_eq!(
        app.etcd
            .etcd
            .get("manager/status")
            .await
            .unwrap()
            .as_deref(),
        Some("frozen")
    );
    let (_, body) = anon
        .json(Method::GET, "/manager/status", None)
        .await
        .unwrap();
    assert_eq!(body["status"], "frozen");
    let gate = bai_api::routes::manager::ensure_not_frozen(&app.state)
        .await
        .unwrap_err();
    assert_eq!((gate.status.as_u16(), gate.slug), (503, "server-frozen"));

    // The original's enum names are accepted too.
    let (status, _) = put_status(&admin, json!({"status": "RUNNING"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let (_, body) = anon
        .json(Method::GET, "/manager/status", None)
        .await
        .unwrap();
    assert_eq!(body["status"], "running");
    bai_api::routes::manager::ensure_not_frozen(&app.state)
        .await
        .unwrap();

    let (status, body) = put_status(&admin, json!({"status": "melted"})).await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    let (status, _) = put_status(&admin, json!({"status": "frozen", "bogus": 1})).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Freeze with force_kill: every live session gets a TerminateSession command.
    for status in ["RUNNING", "PENDING", "TERMINATED"] {
        insert_session(&app, status).await;
    }
    let (_, body) = anon
        .json(Method::GET, "/manager/status", None)
        .await
        .unwrap();
    assert_eq!(
        body["active_sessions"], 1,
        "only the RUNNING one occupies resources"
    );
    let metrics = app.worker_metrics.clone();
    let settled = || {
        use std::sync::atomic::Ordering::Relaxed;
        metrics.handled.load(Relaxed) + metrics.failed.load(Relaxed) + metrics.nacked.load(Relaxed)
    };
    let before = settled();
    let (status, _) = put_status(&admin, json!({"status": "frozen", "force_kill": "yes"})).await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    // One status change plus two terminations (RUNNING and PENDING; not TERMINATED).
    let reached = eventually(Duration::from_secs(10), || async {
        (settled() >= before + 3).then_some(())
    })
    .await;
    assert!(
        reached.is_some(),
        "worker saw {} commands",
        settled() - before
    );
    assert_eq!(
        app.etcd
            .etcd
            .get("manager/status")
            .await
            .unwrap()
            .as_deref(),
        Some("frozen")
    );
}

async fn insert_session(app: &TestApp, status: &str) -> Uuid {
    let id = Uuid::new_v4();
    sqlx::query(
        "INSERT INTO kernels (id, session_id, session_name, domain_name, group_id, user_uuid, \
         access_key, scaling_group, occupied_slots, repl_in_port, repl_out_port, stdin_port, \
         stdout_port, status, cluster_role) \
         SELECT $1, $1, $2, 'default', $3, uuid, 'AKIANABBDUSEREXAMPLE', 'default', \
         '{\"cpu\": \"1\", \"mem\": \"1073741824\"}'::jsonb, 0, 0, 0, 0, $4::kernelstatus, 'main' \
         FROM users WHERE email = $5",
    )
    .bind(id)
    .bind(format!("s-{}", &id.simple().to_string()[..8]))
    .bind(Uuid::parse_str(DEFAULT_GROUP).unwrap())
    .bind(status)
    .bind(USER_EMAIL)
    .execute(app.db.db.pool())
    .await
    .expect("insert kernel");
    id
}

#[tokio::test]
async fn announcement_round_trip() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    let anon = app.anonymous();
    let get = || async {
        anon.json(Method::GET, "/manager/announcement", None)
            .await
            .unwrap()
    };

    assert_eq!(
        get().await,
        (StatusCode::OK, json!({"enabled": false, "message": ""}))
    );
    let (status, _) = admin
        .json(
            Method::POST,
            "/manager/announcement",
            Some(&json!({"enabled": true, "message": "Maintenance at 5"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get().await,
        (
            StatusCode::OK,
            json!({"enabled": true, "message": "Maintenance at 5"})
        )
    );

    let (status, body) = admin
        .json(
            Method::POST,
            "/manager/announcement",
            Some(&json!({"enabled": true})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );

    let user = app.user().await;
    let (status, _) = user
        .json(
            Method::POST,
            "/manager/announcement",
            Some(&json!({"enabled": false})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // What `announcement delete` sends.
    let (status, _) = admin
        .json(
            Method::POST,
            "/manager/announcement",
            Some(&json!({"enabled": false, "message": "x"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NO_CONTENT);
    assert_eq!(
        get().await,
        (StatusCode::OK, json!({"enabled": false, "message": ""}))
    );
}

#[tokio::test]
async fn auth_role_and_authorize() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    let user = app.user().await;

    let (status, body) = admin.json(Method::GET, "/auth/role", None).await.unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body,
        json!({"global_role": "superadmin", "domain_role": "admin", "group_role": null})
    );
    let (_, body) = user
        .json(
            Method::GET,
            &format!("/auth/role?group={DEFAULT_GROUP}"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"global_role": "user", "domain_role": "user", "group_role": "user"})
    );
    let (status, body) = user
        .json(
            Method::GET,
            &format!("/auth/role?group={}", Uuid::new_v4()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::NOT_FOUND, "generic-not-found")
    );
    let (status, _) = user
        .json(Method::GET, "/auth/role?group=not-a-uuid", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let anon = app.anonymous();
    let authorize = |password: &'static str, kind: &'static str| {
        let anon = anon.clone();
        async move {
            anon.json(
                Method::POST,
                "/auth/authorize",
                Some(&json!({"type": kind, "domain": "default", "username": USER_EMAIL, "password": password})),
            )
            .await
            .unwrap()
        }
    };
    let (status, body) = authorize(USER_PASSWORD, "keypair").await;
    assert_eq!(status, StatusCode::OK);
    let data = &body["data"];
    assert_eq!(data["role"], "user");
    assert_eq!(data["status"], "active");
    assert!(data["access_key"].as_str().unwrap().starts_with("AKIA"));
    assert!(data["secret_key"].is_string());
    let (status, body) = authorize("wrong", "keypair").await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::UNAUTHORIZED, "auth-failed")
    );
    let (status, _) = authorize(USER_PASSWORD, "jwt").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn resource_presets_and_check_presets() {
    let app = TestApp::spawn().await;
    let user = app.user().await;

    let (status, body) = user
        .json(Method::GET, "/resource/presets", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let presets = body["presets"].as_array().unwrap();
    assert_eq!(presets.len(), 6);
    let medium_gpu = presets.iter().find(|p| p["name"] == "medium-gpu").unwrap();
    // Unknown slot types (no accelerator registered in etcd) are dropped.
    assert_eq!(
        medium_gpu["resource_slots"],
        json!({"cpu": "2", "mem": "4294967296"})
    );
    assert_eq!(medium_gpu["shared_memory"], "536870912");
    assert_eq!(
        presets.iter().find(|p| p["name"] == "small").unwrap()["shared_memory"],
        Value::Null
    );

    // No agents: nothing is allocatable, the policy is unlimited.
    let (status, body) = user
        .json(Method::POST, "/resource/check-presets", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["keypair_limits"],
        json!({"cpu": "Infinity", "mem": "Infinity"})
    );
    assert_eq!(body["keypair_using"], json!({"cpu": "0", "mem": "0"}));
    assert_eq!(
        body["keypair_remaining"],
        json!({"cpu": "Infinity", "mem": "Infinity"})
    );
    assert_eq!(body["group_limits"], json!({"cpu": "NaN", "mem": "NaN"}));
    assert_eq!(body["group_using"], json!({"cpu": "NaN", "mem": "NaN"}));
    assert_eq!(
        body["scaling_group_remaining"],
        json!({"cpu": "0", "mem": "0"})
    );
    assert_eq!(
        body["scaling_groups"],
        json!({"default": {"using": {"cpu": "0", "mem": "0"}, "remaining": {"cpu": "0", "mem": "0"}}})
    );
    assert!(body["presets"]
        .as_array()
        .unwrap()
        .iter()
        .all(|p| p["allocatable"] == false));

    // One agent with 4 CPUs and 4 GiB free, a running session of this user using 1 CPU / 1 GiB.
    sqlx::query(
        "INSERT INTO agents (id, status, region, scaling_group, available_slots, occupied_slots, addr, version) \
         VALUES ('i-test', 'ALIVE', 'local', 'default', '{\"cpu\": \"5\", \"mem\": \"5368709120\"}', \
         '{\"cpu\": \"1\", \"mem\": \"1073741824\"}', 'tcp://127.0.0.1:6001', '21.03.6')",
    )
    .execute(app.db.db.pool())
    .await
    .unwrap();
    insert_session(&app, "RUNNING").await;
    app.etcd
        .etcd
        .put("config/api/resources/group_resource_visibility", "true")
        .await
        .unwrap();
    let (status, body) = user
        .json(
            Method::POST,
            "/resource/check-presets",
            Some(&json!({"group": "default"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(
        body["scaling_group_remaining"],
        json!({"cpu": "4", "mem": "4294967296"})
    );
    assert_eq!(
        body["scaling_groups"]["default"]["using"],
        json!({"cpu": "1", "mem": "1073741824"})
    );
    assert_eq!(
        body["group_limits"],
        json!({"cpu": "Infinity", "mem": "Infinity"})
    );
    assert_eq!(
        body["group_using"],
        json!({"cpu": "1", "mem": "1073741824"})
    );
    let allocatable = |name: &str| {
        body["presets"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["name"] == name)
            .unwrap()["allocatable"]
            .clone()
    };
    assert_eq!(allocatable("small"), true);
    assert_eq!(allocatable("medium"), true);
    assert_eq!(allocatable("large"), false);

    let (status, body) = user
        .json(
            Method::POST,
            "/resource/check-presets",
            Some(&json!({"group": "nope"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    let (status, _) = user
        .json(
            Method::POST,
            "/resource/check-presets",
            Some(&json!({"scaling_group": "nope"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn scaling_groups_allowed_to_the_caller() {
    let app = TestApp::spawn().await;
    let user = app.user().await;
    let pool = app.db.db.pool();
    for (name, active) in [
        ("sg-inactive", false),
        ("sg-group", true),
        ("sg-keypair", true),
        ("sg-other", true),
    ] {
        sqlx::query("INSERT INTO scaling_groups (name, is_active, driver, scheduler) VALUES ($1, $2, 'static', 'fifo')")
            .bind(name)
            .bind(active)
            .execute(pool)
            .await
            .unwrap();
    }
    sqlx::query(
        "INSERT INTO sgroups_for_domains (scaling_group, domain) VALUES ('sg-inactive', 'default')",
    )
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sgroups_for_groups (scaling_group, \"group\") VALUES ('sg-group', $1)",
    )
    .bind(Uuid::parse_str(DEFAULT_GROUP).unwrap())
    .execute(pool)
    .await
    .unwrap();
    sqlx::query(
        "INSERT INTO sgroups_for_keypairs (scaling_group, access_key) VALUES ('sg-keypair', $1)",
    )
    .bind(&user.access_key)
    .execute(pool)
    .await
    .unwrap();

    let names = |body: &Value| -> Vec<String> {
        body["scaling_groups"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s["name"].as_str().unwrap().to_string())
            .collect()
    };
    for q in [
        "group=default",
        &format!("group_id={DEFAULT_GROUP}"),
        "group_name=default",
    ] {
        let (status, body) = user
            .json(Method::GET, &format!("/scaling-groups?{q}"), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
        assert_eq!(
            names(&body),
            vec!["default", "sg-group", "sg-keypair"],
            "{q}"
        );
    }
    // An unknown group only contributes nothing.
    let (_, body) = user
        .json(Method::GET, "/scaling-groups?group=unknown", None)
        .await
        .unwrap();
    assert_eq!(names(&body), vec!["default", "sg-keypair"]);
    let (status, body) = user
        .json(Method::GET, "/scaling-groups", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["data"].clone()),
        (StatusCode::BAD_REQUEST, json!({"group": "is required"}))
    );
}

#[tokio::test]
async fn config_endpoints() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    let anon = app.anonymous();

    let (status, body) = anon
        .json(Method::GET, "/config/resource-slots", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"cpu": "count", "mem": "bytes"}))
    );
    app.etcd
        .etcd
        .put("config/resource_slots/cuda.device", "count")
        .await
        .unwrap();
    let (_, body) = anon
        .json(Method::GET, "/config/resource-slots", None)
        .await
        .unwrap();
    assert_eq!(
        body,
        json!({"cpu": "count", "mem": "bytes", "cuda.device": "count"})
    );
    let (status, body) = anon
        .json(Method::GET, "/config/vfolder-types", None)
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!(["group", "user"])));

    let (status, body) = admin
        .json(Method::GET, "/config/docker-registries", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"cr.backend.ai": "https://cr.backend.ai"})
        )
    );

    let (status, body) = admin
        .json(
            Method::POST,
            "/config/get",
            Some(&json!({"key": "config/docker", "prefix": true})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        body["result"]["registry"]["cr.backend.ai"],
        json!({"": "https://cr.backend.ai", "type": "harbor2", "project": "stable,community"})
    );
    let (_, body) = admin
        .json(
            Method::POST,
            "/config/get",
            Some(&json!({"key": "manager/status"})),
        )
        .await
        .unwrap();
    assert_eq!(body, json!({"result": "running"}));
    let (_, body) = admin
        .json(
            Method::POST,
            "/config/get",
            Some(&json!({"key": "no/such/key"})),
        )
        .await
        .unwrap();
    assert_eq!(body, json!({"result": null}));

    // Writes go through the worker.
    let (status, body) = admin
        .json(
            Method::POST,
            "/config/set",
            Some(&json!({"key": "config/test/x", "value": "1"})),
        )
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"result": "ok"})));
    assert_eq!(
        app.etcd.etcd.get("config/test/x").await.unwrap().as_deref(),
        Some("1")
    );
    let (_, body) = admin
        .json(
            Method::POST,
            "/config/set",
            Some(&json!({"key": "config/test/tree", "value": {"a": "1", "b": {"c": "2"}}})),
        )
        .await
        .unwrap();
    assert_eq!(body, json!({"result": "ok"}));
    let (_, body) = admin
        .json(
            Method::POST,
            "/config/get",
            Some(&json!({"key": "config/test", "prefix": true})),
        )
        .await
        .unwrap();
    assert_eq!(
        body["result"],
        json!({"x": "1", "tree": {"a": "1", "b": {"c": "2"}}})
    );

    let many: serde_json::Map<String, Value> =
        (0..17).map(|i| (format!("k{i}"), json!("v"))).collect();
    let (status, body) = admin
        .json(
            Method::POST,
            "/config/set",
            Some(&json!({"key": "config/test/many", "value": many})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, body["msg"].clone()),
        (StatusCode::BAD_REQUEST, json!("Too large update"))
    );
    // The CLI JSON-decodes its argument: scalars are stored as text, lists are refused.
    let (status, _) = admin
        .json(
            Method::POST,
            "/config/set",
            Some(&json!({"key": "config/test/n", "value": 5})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        app.etcd.etcd.get("config/test/n").await.unwrap().as_deref(),
        Some("5")
    );
    let (status, _) = admin
        .json(
            Method::POST,
            "/config/set",
            Some(&json!({"key": "config/test/l", "value": [1]})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);

    let (status, body) = admin
        .json(
            Method::POST,
            "/config/delete",
            Some(&json!({"key": "config/test", "prefix": true})),
        )
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"result": "ok"})));
    assert_eq!(app.etcd.etcd.get("config/test/x").await.unwrap(), None);

    // Superadmin only.
    let user = app.user().await;
    for path in ["/config/get", "/config/set", "/config/delete"] {
        let (status, body) = user
            .json(Method::POST, path, Some(&json!({"key": "x", "value": "y"})))
            .await
            .unwrap();
        assert_eq!(
            (status, problem_slug(&body)),
            (StatusCode::UNAUTHORIZED, "auth-failed"),
            "{path}"
        );
    }
}

#[tokio::test]
async fn image_import_is_not_implemented() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    for method in [Method::GET, Method::POST] {
        let (status, body) = admin
            .json(method, "/image/import", Some(&json!({})))
            .await
            .unwrap();
        assert_eq!(
            (status, problem_slug(&body)),
            (StatusCode::SERVICE_UNAVAILABLE, "not-implemented")
        );
    }
    let (status, _) = app
        .user()
        .await
        .json(Method::POST, "/image/import", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}
