//! Virtual folders end to end (issue 9, manager side): the in-process API and worker over
//! the real services, with the storage proxy (`bai-storage`) running in-process on a
//! temporary volume and registered in the test's etcd namespace.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_core::config::{StorageProxyConfig, StorageVolumeConfig};
use bai_tests::app::{Extras, TestApp, USER_EMAIL};
use bai_tests::client::{problem_slug, SignedClient};
use bai_tests::TIMEOUT;

const DEFAULT_GROUP: &str = "2de2b969-1d04-48a6-af16-0bc8adb3c831";

// ---------------------------------------------------------------------------------------
// harness
// ---------------------------------------------------------------------------------------

struct Env {
    app: TestApp,
    /// The volume's root directory.
    root: PathBuf,
    _dir: tempfile::TempDir,
    stop: CancellationToken,
}

impl Drop for Env {
    fn drop(&mut self) {
        self.stop.cancel();
    }
}

async fn env() -> Env {
    env_with(Extras::default()).await
}

async fn env_with(extras: Extras) -> Env {
    bai_tests::init_tracing();
    let app = TestApp::spawn_with_extras(|_| {}, extras).await;
    let dir = tempfile::tempdir().expect("temp dir");
    let root = dir.path().join("volume1");
    let mut cfg = StorageProxyConfig {
        manager_addr: "127.0.0.1:0".into(),
        client_addr: "127.0.0.1:0".into(),
        secret: format!("secret-{}", Uuid::new_v4().simple()),
        ..Default::default()
    };
    cfg.volumes = BTreeMap::from([(
        "volume1".to_string(),
        StorageVolumeConfig {
            backend: "vfs".into(),
            path: root.clone(),
        },
    )]);
    let server = bai_storage::server::ProxyServer::bind(&cfg)
        .await
        .expect("bind storage proxy");
    server
        .register(&app.etcd.etcd)
        .await
        .expect("register the proxy");
    let stop = CancellationToken::new();
    tokio::spawn(server.serve(stop.clone()));
    Env {
        app,
        root,
        _dir: dir,
        stop,
    }
}

/// A fresh active user (role `user`) in the default domain, optionally in the default
/// group, with a keypair.
async fn new_user(app: &TestApp, tag: &str, in_group: bool) -> (SignedClient, String, Uuid) {
    let email = format!(
        "{tag}-{}@example.com",
        &Uuid::new_v4().simple().to_string()[..8]
    );
    let uuid: Uuid = sqlx::query_scalar(
        "INSERT INTO users (username, email, password, need_password_change, status, domain_name, role) \
         VALUES ($1, $1, 'x', false, 'active', 'default', 'user') RETURNING uuid",
    )
    .bind(&email)
    .fetch_one(app.db.db.pool())
    .await
    .expect("insert user");
    if in_group {
        sqlx::query("INSERT INTO association_groups_users (user_id, group_id) VALUES ($1, $2)")
            .bind(uuid)
            .bind(Uuid::parse_str(DEFAULT_GROUP).unwrap())
            .execute(app.db.db.pool())
            .await
            .expect("join group");
    }
    let (ak, sk) = app.keypair(&email, false, 30_000, true).await;
    (app.client(&ak, &sk), email, uuid)
}

async fn call(c: &SignedClient, m: Method, path: &str, body: Option<Value>) -> (StatusCode, Value) {
    c.json(m, path, body.as_ref()).await.expect("request")
}

/// Path of a folder's directory on the volume (the proxy's layout).
fn folder_dir(root: &Path, id_hex: &str) -> PathBuf {
    root.join(&id_hex[0..2])
        .join(&id_hex[2..4])
        .join(&id_hex[4..])
}

async fn create(c: &SignedClient, body: Value) -> Value {
    let (s, v) = call(c, Method::POST, "/folders", Some(body)).await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    v
}

fn names_of(list: &Value) -> Vec<String> {
    let mut n: Vec<String> = list
        .as_array()
        .expect("list")
        .iter()
        .map(|e| e["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

async fn ls(c: &SignedClient, name: &str, path: &str) -> (StatusCode, Value) {
    call(
        c,
        Method::GET,
        &format!("/folders/{name}/files"),
        Some(json!({ "path": path })),
    )
    .await
}

fn item_names(v: &Value) -> Vec<String> {
    let mut n: Vec<String> = v["items"]
        .as_array()
        .expect("items")
        .iter()
        .map(|i| i["name"].as_str().unwrap().to_string())
        .collect();
    n.sort();
    n
}

/// Uploads `data` to `path` of folder `name` through request-upload and one tus PATCH.
async fn upload(c: &SignedClient, name: &str, path: &str, data: &[u8]) {
    let (s, v) = call(
        c,
        Method::POST,
        &format!("/folders/{name}/request-upload"),
        Some(json!({"path": path, "size": data.len()})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let url = format!(
        "{}?token={}",
        v["url"].as_str().unwrap(),
        v["token"].as_str().unwrap()
    );
    let r = reqwest::Client::new()
        .patch(&url)
        .header("Tus-Resumable", "1.0.0")
        .header("Upload-Offset", "0")
        .header("Content-Type", "application/offset+octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .expect("tus PATCH");
    assert_eq!(r.status(), StatusCode::NO_CONTENT);
}

async fn download(c: &SignedClient, name: &str, path: &str) -> Vec<u8> {
    let (s, v) = call(
        c,
        Method::POST,
        &format!("/folders/{name}/request-download"),
        Some(json!({ "path": path })),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    let url = format!(
        "{}?token={}",
        v["url"].as_str().unwrap(),
        v["token"].as_str().unwrap()
    );
    let r = reqwest::get(&url).await.expect("download");
    assert_eq!(r.status(), StatusCode::OK);
    r.bytes().await.unwrap().to_vec()
}

// ---------------------------------------------------------------------------------------
// tests
// ---------------------------------------------------------------------------------------

#[tokio::test]
async fn create_list_info_delete_and_errors() {
    let e = env().await;
    let app = &e.app;
    let user = app.user().await;

    let (s, v) = call(&user, Method::GET, "/folders/_/hosts", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(
        v,
        json!({"default": "local:volume1", "allowed": ["local:volume1"]})
    );
    let (s, v) = call(&user, Method::GET, "/folders/_/allowed_types", None).await;
    assert_eq!((s, v), (StatusCode::OK, json!(["group", "user"])));
    let (s, _) = call(&user, Method::GET, "/folders/_/all_hosts", None).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED);
    let su = app.superadmin().await;
    let (s, v) = call(&su, Method::GET, "/folders/_/all-hosts", None).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(v["allowed"], json!(["local:volume1"]));
    let (s, v) = call(
        &su,
        Method::GET,
        "/folders/_/perf-metric",
        Some(json!({"folder_host": "local:volume1"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "not-implemented")
    );

    // Create with defaults (host from etcd): the original's 201 shape.
    let v = create(&user, json!({"name": "mydata"})).await;
    let uid = app.user_uuid(USER_EMAIL).await;
    let id = v["id"].as_str().unwrap().to_string();
    assert_eq!(id.len(), 32, "hex id");
    assert_eq!(
        v,
        json!({"id": id, "name": "mydata", "host": "local:volume1", "usage_mode": "general",
               "permission": "rw", "creator": USER_EMAIL, "ownership_type": "user",
               "user": uid.to_string(), "group": null, "cloneable": false})
    );
    assert!(folder_dir(&e.root, &id).is_dir(), "created on the volume");

    // Errors.
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders",
        Some(json!({"name": "mydata"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "vfolder-already-exists")
    );
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders",
        Some(json!({"name": ".ssh"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders",
        Some(json!({"name": "a/b"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders",
        Some(json!({"name": "x1", "host": "local:nope"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "invalid-api-params"),
        "{v}"
    );
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders",
        Some(json!({"name": "x2", "bogus": 1})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders",
        Some(json!({"name": "g1", "group": "default"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::FORBIDDEN, "generic-forbidden"),
        "{v}"
    );
    let dadmin = app.domain_admin().await;
    let (s, v) = call(
        &dadmin,
        Method::POST,
        "/folders",
        Some(json!({"name": "g1", "group": "no-such-group"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::NOT_FOUND, "group-not-found"),
        "{v}"
    );

    // Info: counts from the proxy; the original's keys.
    std::fs::write(folder_dir(&e.root, &id).join("a.txt"), b"hello").unwrap();
    let (s, v) = call(&user, Method::GET, "/folders/mydata", None).await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(v["numFiles"], 1);
    assert_eq!(v["used_bytes"].as_i64().map(|b| b >= 5), Some(true), "{v}");
    assert_eq!(v["is_owner"], true);
    assert_eq!(v["permission"], "wd");
    assert_eq!(v["group"], "None");
    assert_eq!(v["type"], "user");
    let (s, v) = call(&user, Method::GET, "/folders/nope", None).await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::NOT_FOUND, "vfolder-not-found")
    );

    // List; rename; update-options.
    let (s, v) = call(&user, Method::GET, "/folders", Some(json!({"all": false}))).await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(names_of(&v), vec!["mydata"]);
    assert_eq!(v[0]["user_email"], USER_EMAIL);
    assert_eq!(v[0]["type"], "user");
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders/mydata/rename",
        Some(json!({"new_name": "renamed"})),
    )
    .await;
    assert_eq!((s, v), (StatusCode::CREATED, Value::Null));
    let (s, _) = call(
        &user,
        Method::POST,
        "/folders/renamed/update-options",
        Some(json!({"cloneable": true, "permission": "ro"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (_, v) = call(&user, Method::GET, "/folders/renamed", None).await;
    assert_eq!(v["cloneable"], true);

    // Superadmin `all`; others get their own.
    let (_, v) = call(&su, Method::GET, "/folders?all=true", None).await;
    assert!(names_of(&v).contains(&"renamed".to_string()));
    let (_, v) = call(&su, Method::GET, "/folders", None).await;
    assert!(!names_of(&v).contains(&"renamed".to_string()));

    // Delete: unknown → 400 (errata §2.2); then 204 and the data is gone.
    let (s, v) = call(&user, Method::DELETE, "/folders/nope", None).await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    let (s, _) = call(&user, Method::DELETE, "/folders/renamed", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
    assert!(!folder_dir(&e.root, &id).exists(), "data deleted");
    let (_, v) = call(&user, Method::GET, "/folders", None).await;
    assert_eq!(v, json!([]));

    // Superadmin delete by id.
    let v = create(&user, json!({"name": "byid"})).await;
    let (s, _) = call(
        &su,
        Method::DELETE,
        "/folders",
        Some(json!({"id": v["id"]})),
    )
    .await;
    assert_eq!(s, StatusCode::NO_CONTENT);

    // max_vfolder_count (policy `default`: 10).
    sqlx::query(
        "UPDATE keypair_resource_policies SET max_vfolder_count = 2 WHERE name = 'default'",
    )
    .execute(app.db.db.pool())
    .await
    .unwrap();
    create(&user, json!({"name": "c1"})).await;
    create(&user, json!({"name": "c2"})).await;
    let (s, v) = call(&user, Method::POST, "/folders", Some(json!({"name": "c3"}))).await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "invalid-api-params"),
        "{v}"
    );
    assert_eq!(v["msg"], "You cannot create more vfolders.");
}

#[tokio::test]
async fn file_operations_and_path_safety() {
    let e = env().await;
    let user = e.app.user().await;
    let v = create(&user, json!({"name": "work"})).await;
    let dir = folder_dir(&e.root, v["id"].as_str().unwrap());

    let (s, v) = call(
        &user,
        Method::POST,
        "/folders/work/mkdir",
        Some(json!({"path": "a/b"})),
    )
    .await;
    assert_eq!((s, v), (StatusCode::CREATED, Value::Null));
    assert!(dir.join("a/b").is_dir());
    upload(&user, "work", "a/data.bin", &[7u8; 4096]).await;
    assert_eq!(
        std::fs::read(dir.join("a/data.bin")).unwrap(),
        vec![7u8; 4096]
    );
    assert_eq!(download(&user, "work", "a/data.bin").await, vec![7u8; 4096]);

    let (s, v) = ls(&user, "work", "a").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(item_names(&v), vec!["b", "data.bin"]);
    let file = v["items"]
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["name"] == "data.bin")
        .unwrap();
    assert_eq!(file["type"], "FILE");
    assert_eq!(file["size"], 4096);
    assert_eq!(file["mode"].as_str().map(str::len), Some(3));
    // The legacy `files` JSON string the CLI's `vfolder ls` reads.
    let legacy: Value = serde_json::from_str(v["files"].as_str().unwrap()).unwrap();
    let l = legacy
        .as_array()
        .unwrap()
        .iter()
        .find(|i| i["filename"] == "b")
        .unwrap();
    assert!(l["mode"].as_str().unwrap().starts_with('d'), "{l}");
    assert_eq!(l["atime"], 0);
    assert!(l["mtime"].as_f64().unwrap() > 1.6e9);
    let (s, v) = ls(&user, "work", ".").await;
    assert_eq!((s, item_names(&v)), (StatusCode::OK, vec!["a".to_string()]));

    // rename-file without `is_dir` (what every 21.3.x client sends) works.
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders/work/rename_file",
        Some(json!({"target_path": "a/data.bin", "new_name": "data2.bin"})),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    assert!(dir.join("a/data2.bin").is_file());
    let (s, v) = call(
        &user,
        Method::DELETE,
        "/folders/work/delete_files",
        Some(json!({"files": ["a/data2.bin"]})),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    assert!(!dir.join("a/data2.bin").exists());
    let (s, _) = call(
        &user,
        Method::DELETE,
        "/folders/work/delete-files",
        Some(json!({"files": ["a"], "recursive": true})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(!dir.join("a").exists());

    // Path traversal: nothing outside the folder is read or written.
    let outside = e.root.join("outside.txt");
    std::fs::write(&outside, b"secret").unwrap();
    std::os::unix::fs::symlink(&e.root, dir.join("escape")).unwrap();
    for bad in [
        "../../../outside.txt",
        "/etc",
        "escape/outside.txt",
        "a/../../x",
    ] {
        let (s, v) = ls(&user, "work", bad).await;
        assert_eq!(
            (s, problem_slug(&v)),
            (StatusCode::BAD_REQUEST, "vfolder-operation-failed"),
            "ls {bad}: {v}"
        );
        let (s, v) = call(
            &user,
            Method::POST,
            "/folders/work/mkdir",
            Some(json!({ "path": format!("{bad}/new") })),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "mkdir {bad}: {v}");
        let (s, v) = call(
            &user,
            Method::POST,
            "/folders/work/request-download",
            Some(json!({ "path": bad })),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "download {bad}: {v}");
        let (s, _) = call(
            &user,
            Method::DELETE,
            "/folders/work/delete_files",
            Some(json!({ "files": [bad], "recursive": true })),
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "delete {bad}");
    }
    assert_eq!(std::fs::read(&outside).unwrap(), b"secret");
    assert!(e.root.is_dir());
}

/// Operations and who may do them: owner, invitee (ro/rw/wd), group member (group folder
/// ro/rw/wd), a stranger, the domain admin, the superadmin.
#[tokio::test]
async fn permission_matrix() {
    let e = env().await;
    let app = &e.app;
    let (owner, _, _) = new_user(app, "owner", false).await;
    let (inv_ro, ro_mail, _) = new_user(app, "ro", false).await;
    let (inv_rw, rw_mail, _) = new_user(app, "rw", false).await;
    let (inv_wd, wd_mail, _) = new_user(app, "wd", false).await;
    let (stranger, _, _) = new_user(app, "stranger", false).await;
    let (member, _, _) = new_user(app, "member", true).await;
    let dadmin = app.domain_admin().await;
    let su = app.superadmin().await;

    // A user folder shared by invitation at three levels.
    create(&owner, json!({"name": "shared"})).await;
    for (c, mail, perm) in [
        (&inv_ro, &ro_mail, "ro"),
        (&inv_rw, &rw_mail, "rw"),
        (&inv_wd, &wd_mail, "wd"),
    ] {
        let (s, v) = call(
            &owner,
            Method::POST,
            "/folders/shared/invite",
            Some(json!({"perm": perm, "user_ids": [mail]})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "{v}");
        let (_, v) = call(c, Method::GET, "/folders/invitations/list", None).await;
        let inv = v["invitations"][0]["id"].as_str().unwrap().to_string();
        let (s, v) = call(
            c,
            Method::POST,
            "/folders/invitations/accept",
            Some(json!({ "inv_id": inv })),
        )
        .await;
        assert_eq!(s, StatusCode::OK, "{v}");
    }

    // Expected outcome per operation: (info = ro, mkdir = rw, update-options = owner/wd,
    // delete = owner or wd).
    struct Case<'a> {
        who: &'a str,
        c: &'a SignedClient,
        info: bool,
        mkdir: bool,
    }
    let cases = [
        Case {
            who: "owner",
            c: &owner,
            info: true,
            mkdir: true,
        },
        Case {
            who: "ro",
            c: &inv_ro,
            info: true,
            mkdir: false,
        },
        Case {
            who: "rw",
            c: &inv_rw,
            info: true,
            mkdir: true,
        },
        Case {
            who: "wd",
            c: &inv_wd,
            info: true,
            mkdir: true,
        },
        Case {
            who: "stranger",
            c: &stranger,
            info: false,
            mkdir: false,
        },
        Case {
            who: "domain admin",
            c: &dadmin,
            info: false,
            mkdir: false,
        },
        Case {
            who: "superadmin",
            c: &su,
            info: false,
            mkdir: false,
        },
    ];
    for (i, case) in cases.iter().enumerate() {
        let (s, v) = call(case.c, Method::GET, "/folders/shared", None).await;
        assert_eq!(s == StatusCode::OK, case.info, "info by {}: {v}", case.who);
        if !case.info {
            assert_eq!(problem_slug(&v), "vfolder-not-found");
        }
        let (s, v) = ls(case.c, "shared", "").await;
        assert_eq!(s == StatusCode::OK, case.info, "ls by {}: {v}", case.who);
        let (s, v) = call(
            case.c,
            Method::POST,
            "/folders/shared/mkdir",
            Some(json!({ "path": format!("d{i}") })),
        )
        .await;
        assert_eq!(
            s == StatusCode::CREATED,
            case.mkdir,
            "mkdir by {}: {v}",
            case.who
        );
        let (s, v) = call(
            case.c,
            Method::POST,
            "/folders/shared/request-upload",
            Some(json!({"path": format!("f{i}"), "size": 1})),
        )
        .await;
        assert_eq!(
            s == StatusCode::OK,
            case.mkdir,
            "upload by {}: {v}",
            case.who
        );
        let (s, v) = call(
            case.c,
            Method::POST,
            "/folders/shared/request-download",
            Some(json!({"path": "."})),
        )
        .await;
        assert_eq!(
            s != StatusCode::NOT_FOUND,
            case.info,
            "download by {}: {v}",
            case.who
        );
    }
    // Invitee views: not the owner, their own permission.
    let (_, v) = call(&inv_ro, Method::GET, "/folders/shared", None).await;
    assert_eq!(
        (v["is_owner"].clone(), v["permission"].clone()),
        (json!(false), json!("ro"))
    );
    // Only the owner renames or changes options: perm-wd first (rw: 404), then ownership
    // (wd invitee: 400).
    for (c, want) in [
        (&inv_rw, StatusCode::NOT_FOUND),
        (&inv_wd, StatusCode::BAD_REQUEST),
    ] {
        let (s, v) = call(
            c,
            Method::POST,
            "/folders/shared/rename",
            Some(json!({"new_name": "x"})),
        )
        .await;
        assert_eq!(s, want, "{v}");
    }
    let (s, v) = call(
        &inv_ro,
        Method::POST,
        "/folders/shared/update-options",
        Some(json!({"cloneable": true})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::NOT_FOUND, "vfolder-not-found")
    );
    // Delete: ro and rw invitees refused (400), the wd invitee may.
    for c in [&inv_ro, &inv_rw] {
        let (s, v) = call(c, Method::DELETE, "/folders/shared", None).await;
        assert_eq!(
            (s, problem_slug(&v)),
            (StatusCode::BAD_REQUEST, "invalid-api-params"),
            "{v}"
        );
    }
    let (s, _) = call(&stranger, Method::DELETE, "/folders/shared", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call(&inv_wd, Method::DELETE, "/folders/shared", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "{v}");
    let (_, v) = call(&owner, Method::GET, "/folders", None).await;
    assert_eq!(v, json!([]));

    // Group folders at three permission levels: members get the folder's permission;
    // admins (is_owner) get everything; strangers nothing.
    for perm in ["ro", "rw", "wd"] {
        let name = format!("grp-{perm}");
        let v = create(
            &dadmin,
            json!({"name": name, "group": DEFAULT_GROUP, "permission": perm}),
        )
        .await;
        assert_eq!(v["ownership_type"], "group");
        assert_eq!(v["group"], DEFAULT_GROUP);
        let (s, v) = call(&member, Method::GET, &format!("/folders/{name}"), None).await;
        assert_eq!(s, StatusCode::OK, "{v}");
        assert_eq!(
            (v["permission"].clone(), v["is_owner"].clone()),
            (json!(perm), json!(false))
        );
        let (s, _) = call(
            &member,
            Method::POST,
            &format!("/folders/{name}/mkdir"),
            Some(json!({"path": "m"})),
        )
        .await;
        assert_eq!(
            s == StatusCode::CREATED,
            perm != "ro",
            "member mkdir on {perm}"
        );
        let (s, _) = call(
            &dadmin,
            Method::POST,
            &format!("/folders/{name}/mkdir"),
            Some(json!({"path": "a", "exist_ok": true})),
        )
        .await;
        assert_eq!(s, StatusCode::CREATED, "admin mkdir on {perm}");
        let (s, _) = call(&su, Method::GET, &format!("/folders/{name}"), None).await;
        assert_eq!(s, StatusCode::OK, "superadmin info on {perm}");
        let (s, _) = call(&stranger, Method::GET, &format!("/folders/{name}"), None).await;
        assert_eq!(s, StatusCode::NOT_FOUND);
        // Members cannot leave or rename group folders.
        let (s, _) = call(
            &member,
            Method::POST,
            &format!("/folders/{name}/leave"),
            None,
        )
        .await;
        assert_eq!(s, StatusCode::BAD_REQUEST);
    }
    let (s, _) = call(&member, Method::DELETE, "/folders/grp-rw", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "rw member cannot delete");
    let (s, _) = call(&member, Method::DELETE, "/folders/grp-wd", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "wd member can delete");
    let (s, _) = call(&dadmin, Method::DELETE, "/folders/grp-ro", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT, "admin can delete");
    // The group filter keeps user folders and the given group's.
    let (_, v) = call(
        &member,
        Method::GET,
        &format!("/folders?group_id={DEFAULT_GROUP}"),
        None,
    )
    .await;
    assert_eq!(names_of(&v), vec!["grp-rw"]);
}

#[tokio::test]
async fn invitations_flow() {
    let e = env().await;
    let app = &e.app;
    let (alice, alice_mail, _) = new_user(app, "alice", false).await;
    let (bob, bob_mail, _) = new_user(app, "bob", false).await;
    let (carol, carol_mail, _) = new_user(app, "carol", false).await;
    create(&alice, json!({"name": "proj"})).await;

    // Invite errors: unknown folder, nobody to invite, dot-prefixed.
    let (s, _) = call(
        &alice,
        Method::POST,
        "/folders/nope/invite",
        Some(json!({"user_ids": [bob_mail]})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, _) = call(
        &alice,
        Method::POST,
        "/folders/proj/invite",
        Some(json!({"user_ids": ["nobody@x.y"]})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    create(&alice, json!({"name": ".hidden"})).await;
    let (s, v) = call(
        &alice,
        Method::POST,
        "/folders/.hidden/invite",
        Some(json!({"emails": [bob_mail]})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::FORBIDDEN, "generic-forbidden")
    );

    let (s, v) = call(
        &alice,
        Method::POST,
        "/folders/proj/invite",
        Some(json!({"perm": "ro", "user_ids": [bob_mail, carol_mail]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let mut ids: Vec<String> = serde_json::from_value(v["invited_ids"].clone()).unwrap();
    ids.sort();
    let mut want = vec![bob_mail.clone(), carol_mail.clone()];
    want.sort();
    assert_eq!(ids, want);
    // A repeated invitation is not duplicated.
    let (_, v) = call(
        &alice,
        Method::POST,
        "/folders/proj/invite",
        Some(json!({"user_ids": [bob_mail]})),
    )
    .await;
    assert_eq!(v["invited_ids"], json!([]));

    let (_, sent) = call(&alice, Method::GET, "/folders/invitations/list_sent", None).await;
    assert_eq!(sent["invitations"].as_array().unwrap().len(), 2);
    let (_, v) = call(&bob, Method::GET, "/folders/invitations/list", None).await;
    let inv = &v["invitations"][0];
    assert_eq!(inv["inviter"], alice_mail);
    assert_eq!(inv["invitee"], bob_mail);
    assert_eq!(inv["perm"], "ro");
    assert_eq!(inv["state"], "pending");
    assert_eq!(inv["vfolder_name"], "proj");
    let bob_inv = inv["id"].as_str().unwrap().to_string();
    assert_eq!(bob_inv.len(), 36, "dashed UUID (errata #8)");

    // The inviter changes the permission before acceptance.
    let (s, v) = call(
        &alice,
        Method::POST,
        &format!("/folders/invitations/update/{bob_inv}"),
        Some(json!({"perm": "rw"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    assert!(v["msg"].as_str().unwrap().contains(&bob_inv));
    // Only the invitee accepts.
    let (s, _) = call(
        &carol,
        Method::POST,
        "/folders/invitations/accept",
        Some(json!({"inv_id": bob_inv})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
    let (s, v) = call(
        &bob,
        Method::POST,
        "/folders/invitations/accept",
        Some(json!({"inv_id": bob_inv})),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    let (s, _) = call(
        &bob,
        Method::POST,
        "/folders/invitations/accept",
        Some(json!({"inv_id": bob_inv})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "no longer pending");
    let (_, v) = call(&bob, Method::GET, "/folders", None).await;
    assert_eq!(names_of(&v), vec!["proj"]);
    assert_eq!(
        (v[0]["permission"].clone(), v[0]["is_owner"].clone()),
        (json!("rw"), json!(false))
    );
    let (s, _) = call(
        &bob,
        Method::POST,
        "/folders/proj/mkdir",
        Some(json!({"path": "bobs"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);

    // _/shared lists the share; the owner changes it, then removes it.
    let (_, v) = call(&alice, Method::GET, "/folders/_/shared", None).await;
    let shares = v["shared"].as_array().unwrap();
    assert_eq!(shares.len(), 1, "{v}");
    assert_eq!(shares[0]["shared_to"]["email"], bob_mail);
    assert_eq!(shares[0]["perm"], "rw");
    let vfid = shares[0]["vfolder_id"].as_str().unwrap().to_string();
    let bob_uuid = shares[0]["shared_to"]["uuid"].as_str().unwrap().to_string();
    let (s, _) = call(
        &carol,
        Method::POST,
        "/folders/_/shared",
        Some(json!({"vfolder": vfid, "user": bob_uuid, "perm": "wd"})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "not carol's folder");
    let (s, _) = call(
        &alice,
        Method::POST,
        "/folders/_/shared",
        Some(json!({"vfolder": vfid, "user": bob_uuid, "perm": "ro"})),
    )
    .await;
    assert_eq!(s, StatusCode::OK);
    let (_, v) = call(&bob, Method::GET, "/folders/proj", None).await;
    assert_eq!(v["permission"], "ro");

    // Carol rejects; the owner cannot leave; bob leaves.
    let (_, v) = call(&carol, Method::GET, "/folders/invitations/list", None).await;
    let carol_inv = v["invitations"][0]["id"].as_str().unwrap().to_string();
    let (s, _) = call(
        &bob,
        Method::DELETE,
        "/folders/invitations/delete",
        Some(json!({"inv_id": carol_inv})),
    )
    .await;
    assert_eq!(s, StatusCode::FORBIDDEN, "neither inviter nor invitee");
    let (s, v) = call(
        &carol,
        Method::DELETE,
        "/folders/invitations/delete",
        Some(json!({"inv_id": carol_inv})),
    )
    .await;
    assert_eq!((s, v), (StatusCode::OK, json!({})));
    let state: String =
        sqlx::query_scalar("SELECT state::text FROM vfolder_invitations WHERE id = $1")
            .bind(Uuid::parse_str(&carol_inv).unwrap())
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    assert_eq!(state, "rejected");
    let (s, _) = call(&alice, Method::POST, "/folders/proj/leave", None).await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    let (s, v) = call(&bob, Method::POST, "/folders/proj/leave", None).await;
    assert_eq!(
        (s, v["msg"].clone()),
        (StatusCode::OK, json!("left the shared vfolder"))
    );
    let (_, v) = call(&bob, Method::GET, "/folders", None).await;
    assert_eq!(v, json!([]));

    // An invitee that already has a folder of that name cannot be invited.
    create(&carol, json!({"name": "proj"})).await;
    let (s, v) = call(
        &alice,
        Method::POST,
        "/folders/proj/invite",
        Some(json!({"user_ids": [carol_mail]})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "vfolder-already-exists")
    );
}

#[tokio::test]
async fn group_share_and_unshare() {
    let e = env().await;
    let app = &e.app;
    let (member, member_mail, _) = new_user(app, "member", true).await;
    let (_outsider, outsider_mail, _) = new_user(app, "outsider", false).await;
    let dadmin = app.domain_admin().await;
    create(
        &dadmin,
        json!({"name": "team", "group": "default", "permission": "ro"}),
    )
    .await;
    create(&member, json!({"name": "mine"})).await;

    let (s, _) = call(
        &member,
        Method::POST,
        "/folders/team/mkdir",
        Some(json!({"path": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "ro for members");
    // Admin only.
    let (s, v) = call(
        &member,
        Method::POST,
        "/folders/team/share",
        Some(json!({"emails": [member_mail]})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::UNAUTHORIZED, "auth-failed")
    );
    // Only group folders.
    let su = app.superadmin().await;
    let (s, v) = call(
        &dadmin,
        Method::POST,
        "/folders/mine/share",
        Some(json!({"emails": [member_mail]})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    // Users must belong to the folder's group.
    let (s, v) = call(
        &dadmin,
        Method::POST,
        "/folders/team/share",
        Some(json!({"emails": [member_mail, outsider_mail]})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "{v}");
    assert!(v["msg"].as_str().unwrap().contains(&outsider_mail));

    let (s, v) = call(
        &dadmin,
        Method::POST,
        "/folders/team/share",
        Some(json!({"permission": "rw", "emails": [member_mail]})),
    )
    .await;
    assert_eq!(
        (s, v),
        (StatusCode::CREATED, json!({"shared_emails": [member_mail]}))
    );
    let (_, v) = call(&member, Method::GET, "/folders/team", None).await;
    assert_eq!(v["permission"], "rw");
    let (s, _) = call(
        &member,
        Method::POST,
        "/folders/team/mkdir",
        Some(json!({"path": "x"})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "rw through the share");
    // Re-sharing updates the permission (no second row).
    let (s, _) = call(
        &dadmin,
        Method::POST,
        "/folders/team/share",
        Some(json!({"permission": "wd", "emails": [member_mail]})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let rows: Vec<String> = sqlx::query_scalar(
        "SELECT p.permission::text FROM vfolder_permissions p JOIN vfolders v ON v.id = p.vfolder WHERE v.name = 'team'",
    )
    .fetch_all(app.db.db.pool())
    .await
    .unwrap();
    assert_eq!(rows, vec!["wd"]);
    let (_, v) = call(&su, Method::GET, "/folders/_/shared", None).await;
    let share = &v["shared"][0];
    assert_eq!(share["shared_to"]["email"], member_mail);
    assert_eq!(share["type"], "project");
    assert_eq!(share["shared_by"], "default");

    let (s, v) = call(
        &dadmin,
        Method::DELETE,
        "/folders/team/unshare",
        Some(json!({"emails": [member_mail]})),
    )
    .await;
    assert_eq!(
        (s, v),
        (StatusCode::OK, json!({"unshared_emails": [member_mail]}))
    );
    let (_, v) = call(&member, Method::GET, "/folders/team", None).await;
    assert_eq!(v["permission"], "ro", "back to the folder's permission");
    let (s, _) = call(
        &dadmin,
        Method::DELETE,
        "/folders/team/unshare",
        Some(json!({"emails": ["nobody@x.y"]})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND);
}

/// Reads an SSE body to its end (the background-task stream closes after `server_close`)
/// and returns `(event, data)` pairs.
async fn bgtask_events(c: &SignedClient, task: &str) -> Vec<(String, Value)> {
    let path = format!("/events/background-task?task_id={task}");
    let h = c.signed_headers(
        &Method::GET,
        &path,
        "application/octet-stream",
        &bai_tests::client::client_date(),
    );
    let resp = c
        .http
        .get(format!("{}{}", c.base, path))
        .headers(h)
        .send()
        .await
        .expect("SSE");
    assert_eq!(resp.status(), StatusCode::OK);
    let text = tokio::time::timeout(TIMEOUT, resp.text())
        .await
        .expect("task ends in time")
        .expect("SSE body");
    text.split("\r\n\r\n")
        .filter_map(|frame| {
            let mut ev = None;
            let mut data = String::new();
            for line in frame.split("\r\n") {
                if let Some(v) = line.strip_prefix("event: ") {
                    ev = Some(v.to_string());
                } else if let Some(v) = line.strip_prefix("data: ") {
                    data.push_str(v);
                }
            }
            ev.map(|e| (e, serde_json::from_str(&data).unwrap_or(Value::Null)))
        })
        .collect()
}

fn tree(dir: &Path) -> BTreeMap<String, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for entry in std::fs::read_dir(&d).unwrap() {
            let p = entry.unwrap().path();
            let rel = p.strip_prefix(dir).unwrap().to_string_lossy().to_string();
            if p.is_dir() {
                out.insert(format!("{rel}/"), Vec::new());
                stack.push(p);
            } else {
                out.insert(rel, std::fs::read(&p).unwrap());
            }
        }
    }
    out
}

#[tokio::test]
async fn clone_runs_as_a_background_task() {
    let e = env().await;
    let app = &e.app;
    let user = app.user().await;
    let (other, _, _) = new_user(app, "other", false).await;
    let v = create(&user, json!({"name": "src"})).await;
    let src_dir = folder_dir(&e.root, v["id"].as_str().unwrap());
    for i in 0..40 {
        let sub = src_dir.join(format!("d{}", i % 4));
        std::fs::create_dir_all(&sub).unwrap();
        std::fs::write(sub.join(format!("f{i}.bin")), vec![i as u8; 1000 + i]).unwrap();
    }

    let (s, v) = call(
        &user,
        Method::POST,
        "/folders/src/clone",
        Some(json!({"target_name": "dst"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::FORBIDDEN, "generic-forbidden"),
        "not cloneable"
    );
    let (s, _) = call(
        &user,
        Method::POST,
        "/folders/src/update-options",
        Some(json!({"cloneable": true})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED);
    let (s, _) = call(
        &other,
        Method::POST,
        "/folders/src/clone",
        Some(json!({"target_name": "dst"})),
    )
    .await;
    assert_eq!(s, StatusCode::NOT_FOUND, "needs access to the source");

    let (s, v) = call(
        &user,
        Method::POST,
        "/folders/src/clone",
        Some(json!({"target_name": "dst", "permission": "rw", "cloneable": false})),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["name"], "dst");
    assert_eq!(v["host"], "local:volume1");
    assert_eq!(v["creator"], USER_EMAIL);
    assert!(v.get("source_id").is_none());
    let task = v["bgtask_id"].as_str().expect("bgtask_id").to_string();
    let dst_dir = folder_dir(&e.root, v["id"].as_str().unwrap());

    let events = bgtask_events(&user, &task).await;
    let names: Vec<&str> = events.iter().map(|(n, _)| n.as_str()).collect();
    assert_eq!(
        &names[names.len() - 2..],
        ["bgtask_done", "server_close"],
        "{names:?}"
    );
    let last = events
        .iter()
        .rev()
        .find(|(n, _)| n == "bgtask_updated")
        .expect("progress events");
    // 40 files + 4 directories, counted by the proxy.
    assert_eq!(
        last.1["current_progress"], last.1["total_progress"],
        "{last:?}"
    );
    assert!(last.1["total_progress"].as_i64().unwrap() >= 40, "{last:?}");
    assert_eq!(tree(&src_dir), tree(&dst_dir), "identical copy");
    let (_, v) = call(&user, Method::GET, "/folders/dst", None).await;
    assert_eq!(
        v["numFiles"].as_i64().unwrap(),
        last.1["total_progress"].as_i64().unwrap()
    );

    // Another volume or another proxy: refused up front.
    for host in ["local:volume2", "elsewhere:volume1"] {
        let (s, v) = call(
            &user,
            Method::POST,
            "/folders/src/clone",
            Some(json!({"target_name": "dst2", "target_host": host})),
        )
        .await;
        assert_eq!(
            (s, problem_slug(&v)),
            (StatusCode::BAD_REQUEST, "invalid-api-params"),
            "{host}: {v}"
        );
    }
    // Duplicate target name.
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders/src/clone",
        Some(json!({"target_name": "dst"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::BAD_REQUEST, "vfolder-already-exists")
    );
}

/// Runs `code` through `POST /session/{name}` until it finishes; returns stdout.
async fn run_code(c: &SignedClient, name: &str, code: &str) -> String {
    let mut body = json!({"mode": "query", "code": code, "runId": null});
    let mut stdout = String::new();
    for _ in 0..60 {
        let (status, resp) = call(
            c,
            Method::POST,
            &format!("/session/{name}"),
            Some(body.clone()),
        )
        .await;
        assert_eq!(status, StatusCode::OK, "{resp}");
        let r = &resp["result"];
        for item in r["console"].as_array().unwrap() {
            if item[0] == "stdout" {
                stdout.push_str(item[1].as_str().unwrap());
            }
        }
        match r["status"].as_str().unwrap() {
            "finished" => return stdout,
            "continued" => body = json!({"mode": "continue", "code": "", "runId": r["runId"]}),
            other => panic!("unexpected status {other}: {r}"),
        }
    }
    panic!("run did not finish");
}

#[tokio::test]
async fn mounts_into_a_process_kernel() {
    let e = env_with(Extras::full()).await;
    let app = &e.app;
    let rabbit = app.rabbit.as_ref().expect("agents");
    let agent_id = format!("i-vf-{}", &Uuid::new_v4().simple().to_string()[..8]);
    rabbit.track_agent(&agent_id);
    let work_root = std::env::temp_dir().join(format!("bai-vf-test-{}", Uuid::new_v4().simple()));
    let mut cfg =
        bai_agent::AgentConfig::new(&agent_id, &rabbit.url, &rabbit.prefix, work_root.clone());
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.destroy_grace = Duration::from_secs(3);
    cfg.set_slot("cpu", "4").unwrap();
    cfg.set_slot("mem", "8g").unwrap();
    let _agent = bai_agent::Agent::spawn(cfg);
    let alive = bai_tests::eventually(TIMEOUT, || async {
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM agents WHERE id = $1 AND status = 'ALIVE'")
                .bind(&agent_id)
                .fetch_one(app.db.db.pool())
                .await
                .unwrap();
        (n == 1).then_some(())
    })
    .await;
    assert!(alive.is_some(), "agent up");

    let user = app.user().await;
    create(&user, json!({"name": "data"})).await;
    create(&user, json!({"name": "models"})).await;
    let dadmin = app.domain_admin().await;
    create(
        &dadmin,
        json!({"name": "teamro", "group": DEFAULT_GROUP, "permission": "ro"}),
    )
    .await;
    std::fs::write(
        folder_dir(&e.root, &{
            let (_, v) = call(&user, Method::GET, "/folders/models", None).await;
            v["id"].as_str().unwrap().to_string()
        })
        .join("weights.txt"),
        b"w=1",
    )
    .unwrap();
    let body = |name: &str, mounts: Value, mount_map: Value| {
        json!({
            "tag": null, "name": name,
            "config": {"mounts": mounts, "environ": {}, "resources": {"cpu": "1", "mem": "1g"}, "resource_opts": {},
                       "scalingGroup": null, "mount_map": mount_map, "preopen_ports": []},
            "clusterSize": 1, "clusterMode": "single-node", "starts_at": null, "bootstrap_script": null,
            "owner_access_key": null, "domain": "default", "group": "default", "type": "interactive",
            "enqueueOnly": false, "maxWaitSeconds": 0, "reuseIfExists": true, "startupCommand": null, "image": "python",
        })
    };
    // Unknown folder: 404 vfolder-not-found.
    let (s, v) = call(
        &user,
        Method::POST,
        "/session",
        Some(body("vfbad", json!(["nope"]), json!({}))),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::NOT_FOUND, "vfolder-not-found"),
        "{v}"
    );

    let (s, v) = call(
        &user,
        Method::POST,
        "/session",
        Some(body(
            "vfsess",
            json!(["data", "models", "teamro"]),
            json!({"models": "/home/work/m/models"}),
        )),
    )
    .await;
    assert_eq!(s, StatusCode::CREATED, "{v}");
    assert_eq!(v["status"], "RUNNING", "{v}");
    let sid = Uuid::parse_str(v["sessionId"].as_str().unwrap()).unwrap();
    app.track_redis_key(bai_api::session::access::last_access_key(sid));

    // The mounts with the owner's permission on each (a group member gets `ro` here).
    let rows: Value =
        sqlx::query_scalar("SELECT to_jsonb(mounts) FROM kernels WHERE session_id = $1")
            .bind(sid)
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    let perms: Vec<(String, String)> = rows
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r[0].as_str().unwrap().to_string(),
                r[3].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        perms,
        vec![
            ("data".to_string(), "wd".to_string()),
            ("models".to_string(), "wd".to_string()),
            ("teamro".to_string(), "ro".to_string())
        ]
    );

    // The kernel writes into the rw mount; the folder lists the file.
    let out = run_code(
        &user,
        "vfsess",
        "import os\nopen('data/from-kernel.txt','w').write('hi from kernel')\nprint(open('m/models/weights.txt').read())\nprint(sorted(os.listdir('data')))\nprint('teamro', os.path.isdir('teamro'))",
    )
    .await;
    assert!(out.contains("w=1"), "{out}");
    assert!(out.contains("from-kernel.txt"), "{out}");
    assert!(out.contains("teamro True"), "{out}");
    let (s, v) = ls(&user, "data", "").await;
    assert_eq!(s, StatusCode::OK, "{v}");
    assert_eq!(item_names(&v), vec!["from-kernel.txt"]);
    assert_eq!(
        download(&user, "data", "from-kernel.txt").await,
        b"hi from kernel"
    );

    let (s, _) = call(&user, Method::DELETE, "/session/vfsess", None).await;
    assert_eq!(s, StatusCode::OK);
    // The kernel's work dir goes away with the kernel; the folders' data stays.
    let gone = bai_tests::eventually(TIMEOUT, || async {
        let st: String =
            sqlx::query_scalar("SELECT status::text FROM kernels WHERE session_id = $1")
                .bind(sid)
                .fetch_one(app.db.db.pool())
                .await
                .unwrap();
        let dir_gone = !work_root.join(sid.to_string()).exists();
        (st == "TERMINATED" && dir_gone).then_some(())
    })
    .await;
    assert!(
        gone.is_some(),
        "session terminated and its work dir removed"
    );
    assert_eq!(
        download(&user, "data", "from-kernel.txt").await,
        b"hi from kernel"
    );
    let (_, v) = ls(&user, "models", "").await;
    assert_eq!(item_names(&v), vec!["weights.txt"]);
}

async fn gql(c: &SignedClient, query: &str) -> Value {
    let (s, v) = call(
        c,
        Method::POST,
        "/admin/gql",
        Some(json!({"query": query, "variables": {}})),
    )
    .await;
    assert_eq!(s, StatusCode::OK, "{v}");
    v
}

#[tokio::test]
async fn graphql_storage_volumes_and_vfolders() {
    let e = env().await;
    let app = &e.app;
    let su = app.superadmin().await;
    let user = app.user().await;
    create(&user, json!({"name": "gqlfolder"})).await;

    let v = gql(&su, "{ storage_volume_list(limit: 20, offset: 0) { items { id backend path fsprefix capabilities usage } total_count } }").await;
    let list = &v["data"]["storage_volume_list"];
    assert_eq!(list["total_count"], 1, "{v}");
    let vol = &list["items"][0];
    assert_eq!(vol["id"], "local:volume1");
    assert_eq!(vol["backend"], "vfs");
    assert!(
        vol["capabilities"]
            .as_array()
            .unwrap()
            .iter()
            .any(|c| c == "file-ops"),
        "{vol}"
    );
    let usage: Value = serde_json::from_str(vol["usage"].as_str().unwrap()).unwrap();
    assert!(usage["capacity_bytes"].as_i64().unwrap() > 0, "{usage}");
    assert!(usage["used_bytes"].as_i64().is_some(), "{usage}");

    let v = gql(
        &su,
        "{ storage_volume(id: \"local:volume1\") { id backend } }",
    )
    .await;
    assert_eq!(v["data"]["storage_volume"]["id"], "local:volume1", "{v}");
    let v = gql(&su, "{ storage_volume(id: \"local:nope\") { id } }").await;
    assert!(v["errors"].is_array(), "{v}");
    let v = gql(
        &user,
        "{ storage_volume_list(limit: 20, offset: 0) { total_count } }",
    )
    .await;
    assert!(v["errors"].is_array(), "superadmin only: {v}");

    let v = gql(&user, "{ vfolder_list(limit: 10, offset: 0) { items { name host ownership_type cloneable } total_count } }").await;
    assert_eq!(v["data"]["vfolder_list"]["total_count"], 1, "{v}");
    assert_eq!(v["data"]["vfolder_list"]["items"][0]["name"], "gqlfolder");
}

/// The official 21.3.6 client's path, if installed
/// (`bash /work/shared/conformance/install-client.sh`).
fn official_cli() -> Option<PathBuf> {
    let home = std::env::var("HOME").unwrap_or_default();
    let cli = PathBuf::from(format!(
        "{home}/.cache/backend.ai-client-21.3.6/bin/backend.ai"
    ));
    cli.exists().then_some(cli)
}

/// Runs `backend.ai <args>` with `stdin`; returns (success, stdout + stderr).
async fn cli_run(
    cli: &Path,
    base: &str,
    key: &(String, String),
    cwd: &Path,
    args: &[&str],
    stdin: &str,
) -> (bool, String) {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(cli)
        .args(args)
        .current_dir(cwd)
        .env("BACKEND_ENDPOINT", base)
        .env("BACKEND_ACCESS_KEY", &key.0)
        .env("BACKEND_SECRET_KEY", &key.1)
        .env("PYTHONUNBUFFERED", "1")
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the client");
    let mut input = child.stdin.take().unwrap();
    input.write_all(stdin.as_bytes()).await.unwrap();
    drop(input);
    let Ok(out) = tokio::time::timeout(TIMEOUT * 3, child.wait_with_output()).await else {
        return (false, format!("timed out: backend.ai {}", args.join(" ")));
    };
    let out = out.expect("client output");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success() && !text.contains("Traceback"), text)
}

#[tokio::test]
async fn official_client_vfolder_commands() {
    let Some(cli) = official_cli() else {
        eprintln!("skipped: the official client is not installed");
        return;
    };
    let e = env().await;
    let app = &e.app;
    let user_key = app.keypair(USER_EMAIL, false, 1_000_000, true).await;
    let admin_key = app
        .keypair("domain-admin@lablup.com", true, 1_000_000, true)
        .await;
    let (_, other_mail, _) = new_user(app, "other", false).await;
    let other_key = {
        let ak: String = sqlx::query_scalar("SELECT access_key FROM keypairs WHERE user_id = $1")
            .bind(&other_mail)
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
        let sk: String =
            sqlx::query_scalar("SELECT secret_key FROM keypairs WHERE access_key = $1")
                .bind(&ak)
                .fetch_one(app.db.db.pool())
                .await
                .unwrap();
        (ak, sk)
    };
    let cwd = tempfile::tempdir().unwrap();
    let data: Vec<u8> = (0..3_000_000u32).map(|i| (i % 251) as u8).collect();
    std::fs::write(cwd.path().join("hello.bin"), &data).unwrap();
    let base = app.base.clone();
    let run = |key: (String, String), args: Vec<&'static str>, stdin: &'static str| {
        let (cli, base, cwd) = (cli.clone(), base.clone(), cwd.path().to_path_buf());
        async move {
            eprintln!("$ backend.ai {}", args.join(" "));
            let (ok, out) = cli_run(&cli, &base, &key, &cwd, &args, stdin).await;
            assert!(ok, "backend.ai {}: {out}", args.join(" "));
            out
        }
    };
    let u = || user_key.clone();

    let out = run(u(), vec!["vfolder", "list-hosts"], "").await;
    assert!(out.contains("local:volume1"), "{out}");
    run(u(), vec!["vfolder", "list-allowed-types"], "").await;
    let out = run(u(), vec!["vfolder", "create", "myvf", "local:volume1"], "").await;
    assert!(out.contains("is created"), "{out}");
    let out = run(u(), vec!["vfolder", "list"], "").await;
    assert!(out.contains("myvf"), "{out}");
    let out = run(u(), vec!["vfolder", "info", "myvf"], "").await;
    assert!(out.contains("Ownership Type: user"), "{out}");
    run(u(), vec!["vfolder", "upload", "myvf", "hello.bin"], "").await;
    let out = run(u(), vec!["vfolder", "ls", "myvf", "."], "").await;
    assert!(out.contains("hello.bin"), "{out}");
    run(u(), vec!["vfolder", "mkdir", "myvf", "sub"], "").await;
    run(
        u(),
        vec!["vfolder", "rename-file", "myvf", "hello.bin", "hello2.bin"],
        "",
    )
    .await;
    // The client does not create the base dir (and hangs when it is missing).
    std::fs::create_dir(cwd.path().join("dl")).unwrap();
    run(
        u(),
        vec!["vfolder", "download", "myvf", "hello2.bin", "-b", "dl"],
        "",
    )
    .await;
    assert_eq!(
        std::fs::read(cwd.path().join("dl/hello2.bin")).unwrap(),
        data
    );
    run(u(), vec!["vfolder", "rm", "myvf", "sub"], "y\n").await;
    let out = run(u(), vec!["vfolder", "ls", "myvf", "."], "").await;
    assert!(!out.contains("sub") && out.contains("hello2.bin"), "{out}");

    // Clone (the 21.3.6 client ignores `bgtask_id`; the copy completes in the background).
    run(
        u(),
        vec![
            "vfolder",
            "update-options",
            "myvf",
            "--set-cloneable",
            "true",
        ],
        "",
    )
    .await;
    run(
        u(),
        vec!["vfolder", "clone", "myvf", "myclone", "local:volume1"],
        "",
    )
    .await;
    let (c, _) = (app.client(&user_key.0, &user_key.1), ());
    let done = bai_tests::eventually(TIMEOUT, || async {
        let (s, v) = ls(&c, "myclone", "").await;
        (s == StatusCode::OK && item_names(&v) == vec!["hello2.bin"]).then_some(())
    })
    .await;
    assert!(done.is_some(), "clone copied");

    // Invitation accepted through the interactive `invitations`.
    let out = run(
        u(),
        vec![
            "vfolder",
            "invite",
            "myvf",
            Box::leak(other_mail.clone().into_boxed_str()),
            "-p",
            "ro",
        ],
        "",
    )
    .await;
    assert!(out.contains(&other_mail), "{out}");
    let out = run(other_key.clone(), vec!["vfolder", "invitations"], "1\na\n").await;
    assert!(out.contains("You can now access vfolder myvf"), "{out}");
    let out = run(other_key.clone(), vec!["vfolder", "list"], "").await;
    assert!(out.contains("myvf"), "{out}");
    run(other_key.clone(), vec!["vfolder", "leave", "myvf"], "y\n").await;

    // Group folder share/unshare by the domain admin.
    run(
        admin_key.clone(),
        vec!["vfolder", "create", "gvf", "local:volume1", "-g", "default"],
        "",
    )
    .await;
    let out = run(
        admin_key.clone(),
        vec!["vfolder", "share", "gvf", USER_EMAIL, "-p", "rw"],
        "",
    )
    .await;
    assert!(out.contains(USER_EMAIL), "{out}");
    run(
        admin_key.clone(),
        vec!["vfolder", "unshare", "gvf", USER_EMAIL],
        "",
    )
    .await;

    run(u(), vec!["vfolder", "rename", "myclone", "myclone2"], "").await;
    let out = run(u(), vec!["vfolder", "delete", "myvf"], "").await;
    assert!(out.contains("Deleted"), "{out}");
}

/// The same command id delivered twice (a client retry or a redelivery) has one effect and
/// one answer.
#[tokio::test]
async fn a_repeated_command_has_one_effect() {
    let e = env().await;
    let app = &e.app;
    let uid = app.user_uuid(USER_EMAIL).await;
    let caller = bai_core::vfolder::Caller {
        user_uuid: uid,
        email: USER_EMAIL.into(),
        access_key: "AKIANABBDUSEREXAMPLE".into(),
        role: "user".into(),
        is_admin: false,
        domain_name: "default".into(),
        resource_policy: "default".into(),
    };
    let cmd = bai_events::Command::Vfolder(Box::new(bai_events::VfolderCommand {
        caller,
        op: bai_events::VfolderOp::Create {
            name: "once".into(),
            host: "local:volume1".into(),
            usage_mode: "general".into(),
            permission: "rw".into(),
            unmanaged_path: None,
            group: None,
            quota: None,
            cloneable: false,
        },
    }));
    let id = Uuid::new_v4();
    let mut answers = Vec::new();
    // A deduplicated publish gets no reply: wait briefly for the second.
    for deadline in [TIMEOUT, Duration::from_secs(2)] {
        let out = app
            .bus
            .bus
            .publish_command_with_id(id, None, cmd.clone(), deadline)
            .await
            .expect("publish");
        answers.push(format!("{out:?}"));
    }
    // The second publish is deduplicated by JetStream or answered from the stored result.
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM vfolders WHERE name = 'once'")
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1, "{answers:?}");
    assert!(answers[0].contains("Ok"), "{answers:?}");
    // A fresh command with the same name is refused as a duplicate.
    let out = app
        .bus
        .bus
        .publish_command_with_id(Uuid::new_v4(), None, cmd, TIMEOUT)
        .await
        .expect("publish");
    assert!(
        format!("{out:?}").contains("vfolder-already-exists"),
        "{out:?}"
    );
}

/// Concurrent creates of one name: exactly one wins (the checks run in the SERIALIZABLE
/// write transaction); a frozen manager refuses writes but still serves reads.
#[tokio::test]
async fn concurrent_creates_and_frozen_manager() {
    let e = env().await;
    let app = &e.app;
    let user = app.user().await;
    let results = futures::future::join_all((0..6).map(|_| {
        let c = &user;
        async move { call(c, Method::POST, "/folders", Some(json!({"name": "race"}))).await }
    }))
    .await;
    let won = results
        .iter()
        .filter(|(s, _)| *s == StatusCode::CREATED)
        .count();
    assert_eq!(won, 1, "{results:?}");
    assert!(
        results
            .iter()
            .filter(|(s, _)| *s != StatusCode::CREATED)
            .all(|(s, v)| *s == StatusCode::BAD_REQUEST
                && problem_slug(v) == "vfolder-already-exists")
    );
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM vfolders WHERE name = 'race'")
        .fetch_one(app.db.db.pool())
        .await
        .unwrap();
    assert_eq!(n, 1);

    app.etcd.etcd.put("manager/status", "frozen").await.unwrap();
    let (s, v) = call(
        &user,
        Method::POST,
        "/folders",
        Some(json!({"name": "cold"})),
    )
    .await;
    assert_eq!(
        (s, problem_slug(&v)),
        (StatusCode::SERVICE_UNAVAILABLE, "server-frozen")
    );
    let (s, _) = call(&user, Method::DELETE, "/folders/race", None).await;
    assert_eq!(s, StatusCode::SERVICE_UNAVAILABLE);
    let (s, _) = call(&user, Method::GET, "/folders/race", None).await;
    assert_eq!(s, StatusCode::OK, "reads work while frozen");
    app.etcd
        .etcd
        .put("manager/status", "running")
        .await
        .unwrap();
    let (s, _) = call(&user, Method::DELETE, "/folders/race", None).await;
    assert_eq!(s, StatusCode::NO_CONTENT);
}
