//! The rest of the REST surface (issue 11), against the real services: session templates
//! (safe YAML), create-from-template, dotfiles and the bootstrap script (delivered into a
//! process agent's kernel), error logs, account endpoints and scheduler operations.

use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use bai_agent::{Agent, AgentConfig, SimConfig, SimFleet};
use bai_tests::app::{Extras, TestApp, USER_EMAIL, USER_PASSWORD};
use bai_tests::client::{problem_slug, SignedClient};
use bai_tests::{eventually, TIMEOUT};

const TEMPLATE_YAML: &str = r#"
api_version: v1
kind: taskTemplate
metadata:
  name: my-template
  tag: t1
spec:
  type: interactive
  kernel:
    image: python
    environ:
      GREETING: "hello"
      NUMBER: "42"
    run:
      bootstrap: |
        echo "from template" > tpl-boot.txt
  mounts: {}
  resources:
    cpu: "1"
    mem: 1g
"#;

async fn full_app() -> TestApp {
    bai_tests::init_tracing();
    TestApp::spawn_with_extras(|_| {}, Extras::full()).await
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

async fn wait_status(app: &TestApp, session_id: Uuid, status: &str) {
    let ok = eventually(TIMEOUT, || async {
        let s: Vec<String> =
            sqlx::query_scalar("SELECT status::text FROM kernels WHERE session_id = $1")
                .bind(session_id)
                .fetch_all(app.db.db.pool())
                .await
                .unwrap();
        (!s.is_empty() && s.iter().all(|x| x == status)).then_some(())
    })
    .await;
    assert!(ok.is_some(), "session {session_id} never reached {status}");
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

// ---------------------------------------------------------------------------------------
// templates
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn session_templates_round_trip_and_access() {
    let app = TestApp::spawn().await;
    let user = app.user().await;
    let (status, created) = user
        .json(
            Method::POST,
            "/template/session",
            Some(
                &json!({"payload": TEMPLATE_YAML, "group_name": "default", "domain_name": "default",
                         "owner_access_key": null}),
            ),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{created}");
    let id = created["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "hex id");
    assert_eq!(
        created["user"],
        app.user_uuid(USER_EMAIL).await.simple().to_string()
    );

    // YAML → stored JSON (normalised) → YAML → the same JSON.
    let (status, as_json) = user
        .json(
            Method::GET,
            &format!("/template/session/{id}?format=json"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{as_json}");
    assert_eq!(
        as_json["metadata"],
        json!({"name": "my-template", "tag": "t1"})
    );
    assert_eq!(as_json["spec"]["session_type"], "interactive");
    assert_eq!(as_json["spec"]["kernel"]["environ"]["NUMBER"], "42");
    assert_eq!(as_json["spec"]["resources"]["mem"], "1g");
    let resp = user
        .send(Method::GET, &format!("/template/session/{id}"), None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["content-type"]
        .to_str()
        .unwrap()
        .starts_with("text/yaml"));
    let yaml_text = resp.text().await.unwrap();
    assert_eq!(
        bai_api::yaml::parse(&yaml_text).unwrap(),
        as_json,
        "{yaml_text}"
    );
    // ... and the YAML answer is itself an acceptable payload (PUT it back unchanged).
    let (status, body) = user
        .json(
            Method::PUT,
            &format!("/template/session/{id}"),
            Some(&json!({ "payload": yaml_text })),
        )
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));

    // List: the owner sees it; `all` is a superadmin switch.
    let (status, list) = user
        .json(
            Method::GET,
            "/template/session",
            Some(&json!({"all": false})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let item = list
        .as_array()
        .unwrap()
        .iter()
        .find(|t| t["id"] == id.as_str())
        .expect("listed")
        .clone();
    assert_eq!(item["name"], "my-template");
    assert_eq!(item["is_owner"], true);
    assert_eq!(item["type"], "user");
    assert_eq!(item["user_email"], USER_EMAIL);
    assert_eq!(item["group_name"], "default");
    let admin = app.superadmin().await;
    let (_, all) = admin
        .json(
            Method::GET,
            "/template/session",
            Some(&json!({"all": true})),
        )
        .await
        .unwrap();
    assert!(all
        .as_array()
        .unwrap()
        .iter()
        .any(|t| t["id"] == id.as_str() && t["is_owner"] == false));

    // Update with JSON; schema violations are 400 (strict inner dicts, mount paths).
    let mut doc = as_json.clone();
    doc["metadata"]["name"] = json!("renamed");
    let (status, _) = user
        .json(
            Method::PUT,
            &format!("/template/session/{id}"),
            Some(&json!({ "payload": doc.to_string() })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    for bad in [
        json!({"apiVersion": "v1", "kind": "taskTemplate", "metadata": {"name": "x", "bogus": 1},
               "spec": {"kernel": {"image": "python"}}}),
        json!({"apiVersion": "v1", "kind": "nope", "metadata": {"name": "x"},
               "spec": {"kernel": {"image": "python"}}}),
        json!({"apiVersion": "v1", "kind": "taskTemplate", "metadata": {"name": "x"},
               "spec": {"kernel": {"image": "python"}, "mounts": {"v": "/etc"}}}),
        json!({"apiVersion": "v1", "kind": "taskTemplate", "metadata": {"name": "x"}}),
    ] {
        let (status, body) = user
            .json(
                Method::POST,
                "/template/session",
                Some(&json!({ "payload": bad.to_string() })),
            )
            .await
            .unwrap();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad} → {body}");
        assert_eq!(problem_slug(&body), "invalid-api-params");
    }

    // Another (non-admin, non-member) user cannot see or delete it: same 404 as missing.
    let (mak, msk) = app
        .keypair(bai_tests::app::MONITOR_EMAIL, false, 30_000, true)
        .await;
    let monitor = app.client(&mak, &msk);
    sqlx::query("DELETE FROM association_groups_users WHERE user_id = (SELECT uuid FROM users WHERE email = $1)")
        .bind(bai_tests::app::MONITOR_EMAIL)
        .execute(app.db.db.pool())
        .await
        .unwrap();
    let (status, body) = monitor
        .json(Method::DELETE, &format!("/template/session/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(problem_slug(&body), "task-template-not-found");

    // Soft delete.
    let (status, body) = user
        .json(Method::DELETE, &format!("/template/session/{id}"), None)
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
    let active: bool = sqlx::query_scalar("SELECT is_active FROM session_templates WHERE id = $1")
        .bind(Uuid::parse_str(&id).unwrap())
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert!(!active, "soft-deleted row stays");
    let (status, body) = user
        .json(Method::GET, &format!("/template/session/{id}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem_slug(&body), "task-template-not-found");

    // Cluster templates: same routes, their own schema.
    let cluster = json!({"apiVersion": "v1", "kind": "clusterTemplate", "mode": "multi-node",
        "metadata": {"name": "c1"},
        "spec": {"nodes": [{"role": "main", "sessionTemplate": Uuid::new_v4().to_string(), "replicas": 2}]}});
    let (status, created) = admin
        .json(
            Method::POST,
            "/template/cluster",
            Some(&json!({ "payload": cluster.to_string() })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{created}");
    let cid = created["id"].as_str().unwrap();
    let (status, got) = admin
        .json(
            Method::GET,
            &format!("/template/cluster/{cid}?format=json"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got["spec"]["nodes"][0]["replicas"], 2);
    // A task template id is not a cluster template.
    let (status, _) = admin
        .json(Method::GET, &format!("/template/session/{cid}"), None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn malicious_yaml_is_refused_quickly() {
    let app = TestApp::spawn().await;
    let user = app.user().await;
    // Billion laughs: 9 levels of 9 aliases (9^9 nodes if expanded).
    let mut laughs = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for i in 1..9u8 {
        let (p, c) = ((b'a' + i - 1) as char, (b'a' + i) as char);
        laughs.push_str(&format!(
            "{c}: &{c} [*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p},*{p}]\n"
        ));
    }
    let cases = [
        ("billion laughs", laughs),
        (
            "aliased long string",
            format!(
                "s: &s \"{}\"\nl: [{}]\n",
                "x".repeat(100_000),
                "*s,".repeat(20_000)
            ),
        ),
        (
            "python tag",
            "!!python/object/apply:os.system ['touch /tmp/pwned']".to_string(),
        ),
        (
            "custom tag",
            "api_version: v1\nkind: !evil taskTemplate\n".to_string(),
        ),
        (
            "deep nesting",
            format!("{}1{}", "[".repeat(50_000), "]".repeat(50_000)),
        ),
        (
            "deep block nesting",
            (0..300)
                .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
                .collect::<String>(),
        ),
        (
            "huge document",
            format!("a: \"{}\"\n", "x".repeat(600 * 1024)),
        ),
        ("malformed", "a: [1, 2\nb: {".to_string()),
    ];
    for (what, payload) in cases {
        let started = Instant::now();
        let (status, body) = user
            .json(
                Method::POST,
                "/template/session",
                Some(&json!({ "payload": payload })),
            )
            .await
            .unwrap();
        let took = started.elapsed();
        assert_eq!(status, StatusCode::BAD_REQUEST, "{what}: {body}");
        assert_eq!(problem_slug(&body), "invalid-api-params", "{what}");
        assert!(took < Duration::from_secs(2), "{what} took {took:?}");
    }
    // A body over the request limit is a 413 before anything is parsed.
    let (status, _) = user
        .json(
            Method::POST,
            "/template/session",
            Some(&json!({ "payload": "x".repeat(2 * 1024 * 1024) })),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM session_templates")
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 0);
}

// ---------------------------------------------------------------------------------------
// dotfiles
// ---------------------------------------------------------------------------------------

async fn post(c: &SignedClient, path: &str, body: Value) -> (StatusCode, Value) {
    c.json(Method::POST, path, Some(&body)).await.unwrap()
}

#[tokio::test]
async fn dotfile_limits_and_permissions() {
    let app = TestApp::spawn().await;
    let user = app.user().await;
    let (status, body) = post(
        &user,
        "/user-config/dotfiles",
        json!({"data": "set -o vi\n", "path": ".bashrc", "permission": "644"}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    // Duplicate, reserved, bad permission, escaping path.
    let (status, body) = post(
        &user,
        "/user-config/dotfiles",
        json!({"data": "x", "path": ".bashrc", "permission": "644"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["title"], "Dotfile already exists.");
    for (path, perm) in [
        (".ssh", "644"),
        (".x", "8"),
        (".x", "0644"),
        ("../x", "644"),
        ("/etc/x", "644"),
    ] {
        let (status, body) = post(
            &user,
            "/user-config/dotfiles",
            json!({"data": "x", "path": path, "permission": perm}),
        )
        .await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{path} {perm}: {body}");
    }
    // A dot-vfolder of the same name clashes.
    sqlx::query(
        "INSERT INTO vfolders (host, name, \"user\", ownership_type) \
         SELECT 'local:volume1', '.vimrc', uuid, 'user' FROM users WHERE email = $1",
    )
    .bind(USER_EMAIL)
    .execute(app.db.db.pool())
    .await
    .unwrap();
    let (status, body) = post(
        &user,
        "/user-config/dotfiles",
        json!({"data": "x", "path": ".vimrc", "permission": "644"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(body["msg"].as_str().unwrap().contains("vfolder"));

    // Get one (key `perm`), list (key `permission`), update, delete.
    let (status, one) = user
        .json(Method::GET, "/user-config/dotfiles?path=.bashrc", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        one,
        json!({"path": ".bashrc", "perm": "644", "data": "set -o vi\n"})
    );
    let (status, body) = user
        .json(
            Method::PATCH,
            "/user-config/dotfiles",
            Some(&json!({"data": "set -o emacs\n", "path": ".bashrc", "permission": "600"})),
        )
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (_, list) = user
        .json(Method::GET, "/user-config/dotfiles", None)
        .await
        .unwrap();
    assert_eq!(
        list,
        json!([{"path": ".bashrc", "permission": "600", "data": "set -o emacs\n"}])
    );
    let (status, body) = user
        .json(
            Method::PATCH,
            "/user-config/dotfiles",
            Some(&json!({"data": "x", "path": ".nope", "permission": "600"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["title"], "Requested Dotfile not found.");
    let (status, body) = user
        .json(Method::DELETE, "/user-config/dotfiles?path=.bashrc", None)
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
    let (status, _) = user
        .json(Method::GET, "/user-config/dotfiles?path=.bashrc", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);

    // At most 100 files.
    for i in 0..100 {
        let (status, body) = post(
            &user,
            "/user-config/dotfiles",
            json!({"data": "x", "path": format!(".f{i}"), "permission": "644"}),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "file {i}: {body}");
    }
    let (status, body) = post(
        &user,
        "/user-config/dotfiles",
        json!({"data": "x", "path": ".f100", "permission": "644"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["title"], "Dotfile creation has failed.");
    assert_eq!(body["msg"], "Dotfile creation limit reached");

    // At most 64 KiB packed, for another keypair's store.
    let user2 = app.user().await;
    let chunk = "y".repeat(40 * 1024);
    let (status, _) = post(
        &user2,
        "/user-config/dotfiles",
        json!({"data": chunk, "path": ".big1", "permission": "644"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, body) = post(
        &user2,
        "/user-config/dotfiles",
        json!({"data": chunk, "path": ".big2", "permission": "644"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["msg"], "No leftover space for dotfile storage");

    // Domain dotfiles: writes need an admin of that domain; reads any user of it.
    let (status, body) = post(
        &user,
        "/domain-config/dotfiles",
        json!({"domain": "default", "data": "x", "path": ".dom", "permission": "644"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let dadmin = app.domain_admin().await;
    let (status, body) = post(
        &dadmin,
        "/domain-config/dotfiles",
        json!({"domain": "default", "data": "dom", "path": ".dom", "permission": "644"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let (status, list) = user
        .json(Method::GET, "/domain-config/dotfiles?domain=default", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(list.as_array().unwrap().len(), 1);
    let (status, _) = user
        .json(Method::GET, "/domain-config/dotfiles?domain=other", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::FORBIDDEN);

    // Group dotfiles: by name (with domain) or id; members read, admins write.
    let (status, body) = post(
        &dadmin,
        "/group-config/dotfiles",
        json!({"group": "default", "domain": "default", "data": "grp", "path": ".grp", "permission": "640"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{body}");
    let gid: Uuid = sqlx::query_scalar("SELECT id FROM groups WHERE name = 'default'")
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    let (status, one) = user
        .json(
            Method::GET,
            &format!("/group-config/dotfiles?group={gid}&path=.grp"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(one["perm"], "640");
    let (status, _) = user
        .json(
            Method::DELETE,
            &format!("/group-config/dotfiles?group={gid}&path=.grp"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // The client's misspelled `onwer_access_key` is a 400, as in the original.
    let (status, _) = user
        .json(
            Method::GET,
            "/user-config/dotfiles?onwer_access_key=x",
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // Bootstrap script: stored per keypair, answered as a JSON string.
    let (status, _) = post(
        &user,
        "/user-config/bootstrap-script",
        json!({"script": "echo boot"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);
    let (status, script) = user
        .json(Method::GET, "/user-config/bootstrap-script", None)
        .await
        .unwrap();
    assert_eq!((status, script), (StatusCode::OK, json!("echo boot")));
}

#[tokio::test]
async fn dotfiles_and_bootstrap_reach_the_kernel() {
    use std::os::unix::fs::PermissionsExt;
    let app = full_app().await;
    let rabbit = app.rabbit.as_ref().expect("agents");
    let id = format!("i-rest-{}", &Uuid::new_v4().simple().to_string()[..8]);
    rabbit.track_agent(&id);
    let root = std::env::temp_dir().join(format!("bai-rest-test-{}", Uuid::new_v4().simple()));
    let mut cfg = AgentConfig::new(&id, &rabbit.url, &rabbit.prefix, root.clone());
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.destroy_grace = Duration::from_secs(3);
    cfg.set_slot("cpu", "4").unwrap();
    cfg.set_slot("mem", "8g").unwrap();
    let agent = Agent::spawn(cfg);
    wait_agents_alive(&app, std::slice::from_ref(&id)).await;

    let user = app.user().await;
    let dadmin = app.domain_admin().await;
    for (c, path, body) in [
        (
            &user,
            "/user-config/dotfiles",
            json!({"data": "user-version\n", "path": ".mydot", "permission": "600"}),
        ),
        (
            &user,
            "/user-config/dotfiles",
            json!({"data": "#!/bin/sh\necho hi\n", "path": "/home/work/bin/hi.sh", "permission": "755"}),
        ),
        (
            &dadmin,
            "/domain-config/dotfiles",
            json!({"domain": "default", "data": "domain-version\n", "path": ".mydot", "permission": "644"}),
        ),
        (
            &dadmin,
            "/domain-config/dotfiles",
            json!({"domain": "default", "data": "dom\n", "path": ".domonly", "permission": "644"}),
        ),
    ] {
        let (status, b) = post(c, path, body).await;
        assert_eq!(status, StatusCode::OK, "{b}");
    }
    let (status, _) = post(
        &user,
        "/user-config/bootstrap-script",
        json!({"script": "cat .mydot > boot-saw.txt; ls -l bin/hi.sh >> boot-saw.txt"}),
    )
    .await;
    assert_eq!(status, StatusCode::OK);

    let (status, body) = user
        .json(
            Method::POST,
            "/session",
            Some(&create_body("dotsess", json!({}))),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "RUNNING", "{body}");
    let sid = Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap();
    app.track_redis_key(bai_api::session::access::last_access_key(sid));
    let work = root.join(sid.to_string()).join("work");
    // RUNNING is reported after the bootstrap ran, so everything is in place now.
    let mydot = work.join(".mydot");
    assert_eq!(
        std::fs::read_to_string(&mydot).unwrap(),
        "user-version\n",
        "user wins"
    );
    assert_eq!(
        std::fs::metadata(&mydot).unwrap().permissions().mode() & 0o777,
        0o600
    );
    let hi = work.join("bin/hi.sh");
    assert_eq!(
        std::fs::metadata(&hi).unwrap().permissions().mode() & 0o777,
        0o755
    );
    assert_eq!(
        std::fs::read_to_string(work.join(".domonly")).unwrap(),
        "dom\n"
    );
    let saw = std::fs::read_to_string(work.join("boot-saw.txt")).unwrap();
    assert!(saw.starts_with("user-version\n-rwxr-xr-x"), "{saw}");

    // create-from-template: the template's bootstrap (instead of the keypair's), environ
    // and resources, with the request's name and tag.
    let (status, created) = post(
        &user,
        "/template/session",
        json!({"payload": TEMPLATE_YAML}),
    )
    .await;
    assert_eq!(status, StatusCode::OK, "{created}");
    let tid = created["id"].as_str().unwrap();
    let (status, body) = post(
        &user,
        "/session/_/create-from-template",
        json!({"template_id": tid, "name": "fromtpl", "tag": "req-tag", "enqueueOnly": false,
               "maxWaitSeconds": 0, "reuseIfExists": true, "domain": "default", "group": "default",
               "config": {"mounts": [], "mount_map": {}, "environ": {"EXTRA": "1"}}}),
    )
    .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");
    assert_eq!(body["status"], "RUNNING", "{body}");
    let sid2 = Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap();
    app.track_redis_key(bai_api::session::access::last_access_key(sid2));
    let work2 = root.join(sid2.to_string()).join("work");
    assert_eq!(
        std::fs::read_to_string(work2.join("tpl-boot.txt")).unwrap(),
        "from template\n"
    );
    assert!(
        !work2.join("boot-saw.txt").exists(),
        "the template's bootstrap replaces the keypair's"
    );
    let (tag, environ, slots): (Option<String>, Vec<String>, Value) =
        sqlx::query_as("SELECT tag, environ, occupied_slots FROM kernels WHERE session_id = $1")
            .bind(sid2)
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    assert_eq!(tag.as_deref(), Some("req-tag"));
    assert_eq!(
        environ,
        vec!["EXTRA=1".to_string()],
        "request config overrides the template's environ"
    );
    assert_eq!(slots["mem"], "1073741824");
    // An unknown template is the original's 404.
    let (status, body) = post(
        &user,
        "/session/_/create-from-template",
        json!({"template_id": Uuid::new_v4().simple().to_string(), "name": "nope-tpl"}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(problem_slug(&body), "task-template-not-found");

    for name in ["dotsess", "fromtpl"] {
        let (status, _) = user
            .json(Method::DELETE, &format!("/session/{name}"), None)
            .await
            .unwrap();
        assert_eq!(status, StatusCode::OK);
    }
    wait_status(&app, sid, "TERMINATED").await;
    wait_status(&app, sid2, "TERMINATED").await;
    let _ = agent.stop().await;
    let _ = std::fs::remove_dir_all(&root);
}

// ---------------------------------------------------------------------------------------
// error logs
// ---------------------------------------------------------------------------------------

fn log_body(i: usize) -> Value {
    json!({"severity": "error", "source": "webui", "message": format!("boom {i}"),
           "context_lang": "js", "context_env": "{\"browser\": \"x\"}",
           "request_url": "/x", "request_status": 500, "traceback": "tb"})
}

#[tokio::test]
async fn error_logs_paging_and_visibility() {
    let app = TestApp::spawn().await;
    let user = app.user().await;
    let admin = app.superadmin().await;
    let dadmin = app.domain_admin().await;
    for i in 0..25 {
        let (status, body) = post(&user, "/logs/error", log_body(i)).await;
        assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
    }
    let (status, _) = post(&admin, "/logs/error", log_body(99)).await;
    assert_eq!(status, StatusCode::OK);
    let mut bad = log_body(0);
    bad["severity"] = json!("fatal");
    assert_eq!(
        post(&user, "/logs/error", bad).await.0,
        StatusCode::BAD_REQUEST
    );
    let mut bad = log_body(0);
    bad["context_env"] = json!("{not json");
    assert_eq!(
        post(&user, "/logs/error", bad).await.0,
        StatusCode::BAD_REQUEST
    );

    // The client's query; pages of 20 and 5, newest first; plain users see their own.
    let (status, page1) = user
        .json(
            Method::GET,
            "/logs/error?mark_read=False&page_size=20&page_no=1",
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{page1}");
    assert_eq!(page1["count"], 25);
    let logs = page1["logs"].as_array().unwrap();
    assert_eq!(logs.len(), 20);
    assert_eq!(logs[0]["message"], "boom 24");
    assert!(logs[0]["created_at"].as_f64().unwrap() > 1.6e9);
    assert_eq!(logs[0]["context_env"], json!({"browser": "x"}));
    assert!(
        logs[0].get("is_cleared").is_none(),
        "users do not get is_cleared"
    );
    let (_, page2) = user
        .json(
            Method::GET,
            "/logs/error?mark_read=true&page_size=20&page_no=2",
            None,
        )
        .await
        .unwrap();
    let logs2 = page2["logs"].as_array().unwrap();
    assert_eq!(logs2.len(), 5);
    assert_eq!(logs2[4]["message"], "boom 0");
    assert_eq!(logs2[0]["is_read"], false, "answered as before marking");
    let (_, again) = user
        .json(Method::GET, "/logs/error?page_size=20&page_no=2", None)
        .await
        .unwrap();
    assert!(again["logs"]
        .as_array()
        .unwrap()
        .iter()
        .all(|l| l["is_read"] == true));
    assert_eq!(
        user.json(Method::GET, "/logs/error?page_size=101", None)
            .await
            .unwrap()
            .0,
        StatusCode::BAD_REQUEST
    );

    // Superadmins see everything, domain admins their domain's users (the fixture's users
    // all live in `default`), both with `is_cleared`.
    let (_, all) = admin
        .json(Method::GET, "/logs/error?page_size=100", None)
        .await
        .unwrap();
    assert_eq!(all["count"], 26);
    assert!(all["logs"][0].get("is_cleared").is_some());
    let (status, dom) = dadmin
        .json(Method::GET, "/logs/error?page_size=100", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "the original crashed here");
    assert_eq!(dom["count"], 26);

    // Clearing: a user's cleared log disappears for them but not for admins; others' logs
    // and unknown ids are 404.
    let first = logs[0]["log_id"].as_str().unwrap().to_string();
    let (status, body) = user
        .json(Method::POST, &format!("/logs/error/{first}/clear"), None)
        .await
        .unwrap();
    assert_eq!((status, body), (StatusCode::OK, json!({"success": true})));
    let (_, after) = user
        .json(Method::GET, "/logs/error?page_size=100", None)
        .await
        .unwrap();
    assert_eq!(after["count"], 24);
    let (_, all) = admin
        .json(Method::GET, "/logs/error?page_size=100", None)
        .await
        .unwrap();
    assert_eq!(all["count"], 26);
    let admins_log = all["logs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["message"] == "boom 99")
        .unwrap()["log_id"]
        .as_str()
        .unwrap()
        .to_string();
    let (status, _) = user
        .json(
            Method::POST,
            &format!("/logs/error/{admins_log}/clear"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = admin
        .json(
            Method::POST,
            &format!("/logs/error/{}/clear", Uuid::new_v4()),
            None,
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::NOT_FOUND);
}

// ---------------------------------------------------------------------------------------
// account endpoints
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn password_signup_signout_and_ssh_keys() {
    let app = TestApp::spawn().await;
    let user = app.user().await;
    // Wrong old password → 401; mismatching new ones → the original's plain 400.
    let (status, body) = post(
        &user,
        "/auth/update-password",
        json!({"old_password": "wrong", "new_password": "n3w-pass!", "new_password2": "n3w-pass!"}),
    )
    .await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    assert_eq!(problem_slug(&body), "auth-failed");
    let (status, body) = post(
        &user,
        "/auth/update-password",
        json!({"old_password": USER_PASSWORD, "new_password": "n3w-pass!", "new_password2": "other"}),
    )
    .await;
    assert_eq!(
        (status, body),
        (
            StatusCode::BAD_REQUEST,
            json!({"error_msg": "new password mismitch"})
        )
    );
    let (status, body) = post(
        &user,
        "/auth/update-password",
        json!({"old_password": USER_PASSWORD, "new_password": "n3w-pass!", "new_password2": "n3w-pass!"}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let stored: String = sqlx::query_scalar("SELECT password FROM users WHERE email = $1")
        .bind(USER_EMAIL)
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert!(
        stored.starts_with("$2b$12$"),
        "bcrypt like the fixtures: {stored}"
    );
    let anon = app.anonymous();
    let authorize = |pw: &str| json!({"type": "keypair", "domain": "default", "username": USER_EMAIL, "password": pw});
    assert_eq!(
        post(&anon, "/auth/authorize", authorize("n3w-pass!"))
            .await
            .0,
        StatusCode::OK
    );
    assert_eq!(
        post(&anon, "/auth/authorize", authorize(USER_PASSWORD))
            .await
            .0,
        StatusCode::UNAUTHORIZED
    );

    // SSH keypair: none yet, then a real RSA pair.
    let (status, body) = user
        .json(Method::GET, "/auth/ssh-keypair", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"ssh_public_key": null}))
    );
    let (status, pair) = user
        .json(Method::PATCH, "/auth/ssh-keypair", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{pair}");
    let public = pair["ssh_public_key"].as_str().unwrap();
    assert!(public.starts_with("ssh-rsa AAAA"), "{public}");
    assert!(pair["ssh_private_key"]
        .as_str()
        .unwrap()
        .starts_with("-----BEGIN RSA PRIVATE KEY-----"));
    let (_, body) = user
        .json(Method::GET, "/auth/ssh-keypair", None)
        .await
        .unwrap();
    assert_eq!(body["ssh_public_key"], public);

    // Signup: off by default, on through etcd.
    let signup = json!({"domain": "default", "email": "new-user@example.com", "password": "s1gnup-pass",
                        "full_name": "New"});
    let (status, body) = post(&anon, "/auth/signup", signup.clone()).await;
    assert_eq!(status, StatusCode::FORBIDDEN, "{body}");
    app.etcd
        .etcd
        .put(bai_api::routes::account::SIGNUP_ENABLED_KEY, "true")
        .await
        .unwrap();
    let (status, keys) = post(&anon, "/auth/signup", signup.clone()).await;
    assert_eq!(status, StatusCode::CREATED, "{keys}");
    let (ak, sk) = (
        keys["access_key"].as_str().unwrap(),
        keys["secret_key"].as_str().unwrap(),
    );
    app.track_redis_key(format!("rlim:{ak}"));
    app.track_redis_key(format!("kp:{ak}:num_queries"));
    let newbie = app.client(ak, sk);
    let (status, role) = newbie.json(Method::GET, "/auth/role", None).await.unwrap();
    assert_eq!(status, StatusCode::OK, "{role}");
    assert_eq!(role["global_role"], "user");
    let (status, body) = post(&anon, "/auth/signup", signup).await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(body["msg"], "Email already exists");

    // Signout: the owner's email and password; the account and its keys go inactive.
    let (status, _) = post(
        &newbie,
        "/auth/signout",
        json!({"email": "new-user@example.com", "password": "wrong"}),
    )
    .await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = post(
        &newbie,
        "/auth/signout",
        json!({"email": "new-user@example.com", "password": "s1gnup-pass"}),
    )
    .await;
    assert_eq!((status, body), (StatusCode::OK, json!({})));
    let (status, body) = newbie.json(Method::GET, "/auth/role", None).await.unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
}

// ---------------------------------------------------------------------------------------
// scheduler operations, watcher
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn excluded_agents_get_no_sessions() {
    let app = full_app().await;
    let rabbit = app.rabbit.as_ref().expect("agents");
    let mut cfg = SimConfig::new(2, &rabbit.url, &rabbit.prefix);
    cfg.id_prefix = format!("i-sched-{}-", &Uuid::new_v4().simple().to_string()[..6]);
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.start_delay = Duration::from_millis(20);
    cfg.slots = [
        ("cpu".to_string(), "16".to_string()),
        ("mem".to_string(), "68719476736".to_string()),
    ]
    .into();
    for i in 0..2 {
        rabbit.track_agent(&cfg.agent_id(i));
    }
    let fleet = SimFleet::start(cfg).await.expect("simulated agents");
    let ids = fleet.agent_ids();
    wait_agents_alive(&app, &ids).await;
    let admin = app.superadmin().await;
    let user = app.user().await;

    // Unknown agent: 404, and nothing changes (all or nothing).
    let (status, body) = post(
        &admin,
        "/manager/scheduler/operation",
        json!({"op": "exclude-agents", "args": [ids[0], "i-no-such-agent"]}),
    )
    .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert_eq!(problem_slug(&body), "instance-not-found");
    assert_eq!(
        post(
            &user,
            "/manager/scheduler/operation",
            json!({"op": "exclude-agents", "args": []})
        )
        .await
        .0,
        StatusCode::UNAUTHORIZED
    );
    let (status, _) = post(
        &admin,
        "/manager/scheduler/operation",
        json!({"op": "exclude-agents", "args": [ids[0]]}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);

    let mut sessions = Vec::new();
    for i in 0..4 {
        let (status, body) = post(
            &user,
            "/session",
            create_body(&format!("sched-{i}"), json!({})),
        )
        .await;
        assert_eq!(status, StatusCode::CREATED, "{body}");
        assert_eq!(body["status"], "RUNNING", "{body}");
        sessions.push(Uuid::parse_str(body["sessionId"].as_str().unwrap()).unwrap());
    }
    let placed: Vec<String> =
        sqlx::query_scalar("SELECT agent FROM kernels WHERE session_id = ANY($1)")
            .bind(&sessions)
            .fetch_all(app.db.db.pool())
            .await
            .unwrap();
    assert!(placed.iter().all(|a| a == &ids[1]), "{placed:?}");

    // Included again, it takes sessions (packed placement prefers the emptier... any).
    let (status, _) = post(
        &admin,
        "/manager/scheduler/operation",
        json!({"op": "include-agents", "args": [ids[0]]}),
    )
    .await;
    assert_eq!(status, StatusCode::NO_CONTENT);
    let schedulable: bool = sqlx::query_scalar("SELECT schedulable FROM agents WHERE id = $1")
        .bind(&ids[0])
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert!(schedulable);

    // Freeze with force_kill terminates every live session through commands.
    let resp = admin
        .send(
            Method::PUT,
            "/manager/status",
            Some(&json!({"status": "frozen", "force_kill": true})),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    for sid in &sessions {
        wait_status(&app, *sid, "TERMINATED").await;
    }
    app.etcd
        .etcd
        .put("manager/status", "running")
        .await
        .unwrap();

    // The agent watcher does not exist here: a clear 503 not-implemented.
    let (status, body) = admin
        .json(
            Method::GET,
            "/resource/watcher",
            Some(&json!({"agent_id": ids[0]})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(problem_slug(&body), "not-implemented");
    let (status, _) = post(
        &admin,
        "/resource/watcher/agent/restart",
        json!({"agent_id": ids[0]}),
    )
    .await;
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
    fleet.stop().await;
}
