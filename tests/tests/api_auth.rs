//! Authentication (issue 5): HMAC signing against the official client's captured requests,
//! the live middleware (dates, credentials, versions), rate limiting and query counting in
//! Redis, and the cookie-SSO pre-auth hook.

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::{json, Value};

use bai_api::auth::hmac::{self, SigningInput};
use bai_core::config::PreAuthHookKind;
use bai_tests::app::{TestApp, USER_EMAIL, USER_PASSWORD};
use bai_tests::client::{self, problem_slug, read_json, SignedClient};
use bai_tests::{eventually, workspace_root};

/// The example superadmin keypair the captures were signed with.
const CAPTURE_ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";
const CAPTURE_SECRET_KEY: &str = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY";

/// `tests/fixtures/signed-captures.jsonl`: the signed requests of
/// `conformance/captures/fake-server-requests.jsonl` (client 21.3.6 against a capture
/// server on 127.0.0.1:8099), reduced to what signing needs.
fn captures() -> Vec<Value> {
    let text =
        std::fs::read_to_string(workspace_root().join("tests/fixtures/signed-captures.jsonl"))
            .expect("signed captures");
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).expect("capture line"))
        .collect()
}

#[test]
fn captured_client_signatures_reproduce() {
    let captures = captures();
    assert!(captures.len() >= 100, "expected the full capture set");
    let mut media_types = std::collections::BTreeSet::new();
    for c in &captures {
        let s = |k: &str| c[k].as_str().unwrap_or_default();
        let auth =
            hmac::parse_authorization(s("authorization")).expect("captured Authorization parses");
        assert_eq!(auth.access_key, CAPTURE_ACCESS_KEY);
        let hash = hmac::parse_sign_method(&auth.sign_method).expect("sign method");
        let date = hmac::parse_date(s("date")).expect("captured date parses");
        let media = hmac::media_type(c["content_type"].as_str());
        media_types.insert(media.clone());
        let input = SigningInput {
            method: s("method"),
            path_and_query: s("target"),
            date_raw: s("date"),
            host: s("host"),
            media_type: &media,
            version_label: "x-backendai-version",
            version: s("version"),
        };
        let sts = hmac::string_to_sign(&input, hash);
        let ours = hmac::sign(
            hash,
            CAPTURE_SECRET_KEY,
            hmac::key_date(&date),
            s("host"),
            &sts,
        );
        assert_eq!(
            ours,
            auth.signature,
            "seq {} ({} {})",
            c["seq"],
            s("method"),
            s("target")
        );
        assert!(hmac::verify(
            hash,
            CAPTURE_SECRET_KEY,
            hmac::key_date(&date),
            &input,
            &auth.signature
        ));
        assert!(!hmac::verify(
            hash,
            "wrong-secret",
            hmac::key_date(&date),
            &input,
            &auth.signature
        ));
        // The test client's independent implementation agrees.
        let theirs = client::sign(
            CAPTURE_SECRET_KEY,
            s("method"),
            s("target"),
            s("date"),
            &hmac::key_date(&date).format("%Y%m%d").to_string(),
            s("host"),
            &media,
            s("version"),
        );
        assert_eq!(theirs, auth.signature);
    }
    // The captures cover bodyless (text/plain), JSON, multipart (boundary stripped) and
    // header-less SSE/WebSocket requests (signed as application/octet-stream).
    for m in [
        "text/plain",
        "application/json",
        "multipart/form-data",
        "application/octet-stream",
    ] {
        assert!(media_types.contains(m), "{m} not covered");
    }
}

async fn send_with_headers(
    app: &TestApp,
    method: Method,
    path: &str,
    headers: reqwest::header::HeaderMap,
) -> (StatusCode, Value) {
    let resp = reqwest::Client::new()
        .request(method, format!("{}{}", app.base, path))
        .headers(headers)
        .header("content-type", "text/plain")
        .send()
        .await
        .expect("send");
    read_json(resp).await
}

#[tokio::test]
async fn signed_round_trip_and_response_headers() {
    let app = TestApp::spawn().await;
    let c = app.superadmin().await;

    let resp = c
        .send(Method::GET, "/auth/test?echo=hi", None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["server"], "BackendAI");
    assert_eq!(h["x-ratelimit-limit"], "30000");
    assert_eq!(h["x-ratelimit-remaining"], "29999");
    assert_eq!(h["x-ratelimit-window"], "900");
    assert!(h.contains_key("x-request-id"));
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"authorized": "yes", "echo": "hi"})
    );

    let (status, body) = c
        .json(Method::POST, "/auth", Some(&json!({"echo": "body"})))
        .await
        .unwrap();
    assert_eq!(
        (status, body),
        (StatusCode::OK, json!({"authorized": "yes", "echo": "body"}))
    );

    // A JSON body on GET wins over the query string, as the client relies on.
    let (status, body) = c
        .json(
            Method::GET,
            "/auth/test?echo=q",
            Some(&json!({"echo": "b"})),
        )
        .await
        .unwrap();
    assert_eq!((status, body["echo"].clone()), (StatusCode::OK, json!("b")));

    // Query strings are signed raw (the client does not escape `*`).
    let (status, _) = c
        .json(Method::GET, "/auth/test?echo=a*b&x", None)
        .await
        .unwrap();
    // `x` is an unknown key of a strict schema: 400 after a successful signature check.
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, body) = c
        .json(Method::GET, "/auth/test?echo=a*b", None)
        .await
        .unwrap();
    assert_eq!(
        (status, body["echo"].clone()),
        (StatusCode::OK, json!("a*b"))
    );

    // X-BackendAI-Date is accepted instead of Date.
    let date = client::client_date();
    let mut headers = c.signed_headers(&Method::GET, "/auth/test?echo=d", "text/plain", &date);
    headers.remove("date");
    headers.insert("x-backendai-date", date.parse().unwrap());
    let (status, _) = send_with_headers(&app, Method::GET, "/auth/test?echo=d", headers).await;
    assert_eq!(status, StatusCode::OK);
}

#[tokio::test]
async fn date_window_is_enforced() {
    let app = TestApp::spawn().await;
    let c = app.superadmin().await;
    let path = "/auth/test?echo=x";
    let at = |minutes: i64| {
        (chrono::Utc::now() + chrono::Duration::minutes(minutes))
            .to_rfc3339_opts(chrono::SecondsFormat::Micros, false)
    };
    for date in [at(-20), at(20), "not a date".to_string()] {
        let headers = c.signed_headers(&Method::GET, path, "text/plain", &date);
        let (status, body) = send_with_headers(&app, Method::GET, path, headers).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{date}");
        assert_eq!(problem_slug(&body), "invalid-auth-params");
        assert_eq!(body["msg"], "Date/time sync error");
        assert_eq!(
            body["title"],
            "Missing or invalid authorization parameters."
        );
    }
    // Within the window, in another timezone and format: accepted.
    let kst = (chrono::Utc::now() + chrono::Duration::minutes(5))
        .with_timezone(&chrono::FixedOffset::east_opt(9 * 3600).unwrap())
        .to_rfc3339();
    let headers = c.signed_headers(&Method::GET, path, "text/plain", &kst);
    assert_eq!(
        send_with_headers(&app, Method::GET, path, headers).await.0,
        StatusCode::OK
    );

    // No date at all: the date check comes first, even without credentials.
    let (status, body) = send_with_headers(&app, Method::GET, path, Default::default()).await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::BAD_REQUEST, "invalid-auth-params")
    );
}

#[tokio::test]
async fn credential_failures() {
    let app = TestApp::spawn().await;
    let good = app.superadmin().await;
    let path = "/auth/test?echo=x";
    let expect = |(status, body): (StatusCode, Value), want: StatusCode, slug: &str, msg: &str| {
        assert_eq!(status, want, "{body}");
        assert_eq!(problem_slug(&body), slug, "{body}");
        if !msg.is_empty() {
            assert_eq!(body["msg"], msg, "{body}");
        }
        assert_eq!(
            body["type"].as_str().unwrap(),
            format!("https://api.backend.ai/probs/{slug}")
        );
    };

    // Unknown access key.
    let unknown = app.client("AKIAUNKNOWNKEY000000", "whatever");
    expect(
        unknown.json(Method::GET, path, None).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "auth-failed",
        "Access key not found",
    );

    // Wrong secret.
    let wrong = app.client(&good.access_key, "not-the-secret");
    expect(
        wrong.json(Method::GET, path, None).await.unwrap(),
        StatusCode::UNAUTHORIZED,
        "auth-failed",
        "Signature mismatch",
    );

    // Signed for another path (tampering with the request line).
    let date = client::client_date();
    let headers = good.signed_headers(&Method::GET, "/auth/test?echo=y", "text/plain", &date);
    expect(
        send_with_headers(&app, Method::GET, path, headers).await,
        StatusCode::UNAUTHORIZED,
        "auth-failed",
        "Signature mismatch",
    );

    // Inactive keypair.
    let (ak, sk) = app.keypair(USER_EMAIL, false, 100, false).await;
    expect(
        app.client(&ak, &sk)
            .json(Method::GET, path, None)
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "auth-failed",
        "Access key not found",
    );

    // Active keypair of an inactive user.
    let (ak, sk) = app.keypair("monitor@lablup.com", false, 100, true).await;
    sqlx::query("UPDATE users SET status = 'inactive' WHERE email = 'monitor@lablup.com'")
        .execute(app.db.db.pool())
        .await
        .unwrap();
    expect(
        app.client(&ak, &sk)
            .json(Method::GET, path, None)
            .await
            .unwrap(),
        StatusCode::UNAUTHORIZED,
        "auth-failed",
        "Access key not found",
    );

    // No Authorization header (but a valid date).
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("date", client::client_date().parse().unwrap());
    headers.insert("x-backendai-version", "v6.20210815".parse().unwrap());
    expect(
        send_with_headers(&app, Method::GET, path, headers.clone()).await,
        StatusCode::UNAUTHORIZED,
        "auth-failed",
        "Unauthorized access",
    );

    // Malformed Authorization headers.
    for bad in [
        "BackendAI",
        "Bearer token",
        "BackendAI signMethod=HMAC-SHA256",
        "BackendAI signMethod=HMAC-SHA256, credential=nocolon",
        "BackendAI garbage, credential=a:b",
    ] {
        let mut h = headers.clone();
        h.insert("authorization", bad.parse().unwrap());
        expect(
            send_with_headers(&app, Method::GET, path, h).await,
            StatusCode::BAD_REQUEST,
            "invalid-auth-params",
            "",
        );
    }
    // Sign methods: wrong shape → 401 "Invalid signature"; unknown MAC/hash → 400.
    for (method, want, slug) in [
        ("HMAC-SHA-256", StatusCode::UNAUTHORIZED, "auth-failed"),
        (
            "HMAC-WHIRLPOOL",
            StatusCode::BAD_REQUEST,
            "invalid-auth-params",
        ),
        (
            "CMAC-SHA256",
            StatusCode::BAD_REQUEST,
            "invalid-auth-params",
        ),
    ] {
        let mut h = good.signed_headers(&Method::GET, path, "text/plain", &client::client_date());
        let value = h["authorization"]
            .to_str()
            .unwrap()
            .replace("HMAC-SHA256", method);
        h.insert("authorization", value.parse().unwrap());
        expect(
            send_with_headers(&app, Method::GET, path, h).await,
            want,
            slug,
            "",
        );
    }

    // An unsupported API version is refused before anything else.
    let mut old = good.clone();
    old.version = "v3.20170615".into();
    expect(
        old.json(Method::GET, path, None).await.unwrap(),
        StatusCode::BAD_REQUEST,
        "generic-bad-request",
        "Unsupported API version.",
    );
    // Older supported versions work (the version header is part of the signature).
    old.version = "v4.20181215".into();
    assert_eq!(
        old.json(Method::GET, path, None).await.unwrap().0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn anonymous_endpoints_ignore_credentials() {
    let app = TestApp::spawn().await;
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert("authorization", "BackendAI garbage".parse().unwrap());
    headers.insert("date", "long ago".parse().unwrap());
    for path in [
        "/",
        "/manager/status",
        "/manager/announcement",
        "/config/resource-slots",
        "/config/vfolder-types",
    ] {
        let resp = reqwest::Client::new()
            .get(format!("{}{}", app.base, path))
            .headers(headers.clone())
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        // Anonymous requests get the anonymous rate-limit headers.
        assert_eq!(resp.headers()["x-ratelimit-limit"], "1000");
        assert_eq!(resp.headers()["x-ratelimit-remaining"], "1000");
        assert_eq!(resp.headers()["x-ratelimit-window"], "900");
    }
    // The official client's bootstrap: unsigned GET / with only a User-Agent.
    let (status, body) = app.anonymous().json(Method::GET, "/", None).await.unwrap();
    assert_eq!(
        (status, body),
        (
            StatusCode::OK,
            json!({"version": "v6.20210815", "manager": "21.03.6"})
        )
    );
}

#[tokio::test]
async fn default_port_in_signature_is_tolerated() {
    let app = TestApp::spawn().await;
    let c = app.superadmin().await;
    let path = "/auth/test?echo=port";
    // The client was configured with `http://localhost:80`: it signs `localhost:80` while
    // its HTTP library sends `Host: localhost`.
    let signer = SignedClient::new("http://localhost:80", &c.access_key, &c.secret_key);
    let send = |signed_host: &'static str, host_header: &'static str| {
        let mut signer = signer.clone();
        signer.base = format!("http://{signed_host}");
        let mut headers =
            signer.signed_headers(&Method::GET, path, "text/plain", &client::client_date());
        headers.insert("host", host_header.parse().unwrap());
        let app = &app;
        async move { send_with_headers(app, Method::GET, path, headers).await.0 }
    };
    assert_eq!(send("localhost:80", "localhost").await, StatusCode::OK);
    assert_eq!(send("localhost", "localhost:443").await, StatusCode::OK);
    // A non-default port must match exactly.
    assert_eq!(
        send("localhost:8081", "localhost").await,
        StatusCode::UNAUTHORIZED
    );
}

#[tokio::test]
async fn rate_limit_headers_and_429() {
    let app = TestApp::spawn().await;
    let (ak, sk) = app.keypair(USER_EMAIL, false, 3, true).await;
    let c = app.client(&ak, &sk);
    for remaining in [2, 1, 0] {
        let resp = c
            .send(Method::GET, "/auth/test?echo=x", None)
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(resp.headers()["x-ratelimit-limit"], "3");
        assert_eq!(
            resp.headers()["x-ratelimit-remaining"],
            remaining.to_string().as_str()
        );
    }
    let resp = c
        .send(Method::GET, "/auth/test?echo=x", None)
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::TOO_MANY_REQUESTS);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "0");
    let (_, body) = read_json(resp).await;
    assert_eq!(problem_slug(&body), "rate-limit-exceeded");
    assert_eq!(body["title"], "You have reached your API query rate limit.");

    // Another keypair is not affected.
    let other = app.user().await;
    assert_eq!(
        other
            .json(Method::GET, "/auth/test?echo=x", None)
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );
}

#[tokio::test]
async fn num_queries_counted_in_redis_not_in_the_database() {
    let app = TestApp::spawn().await;
    let (ak, sk) = app.keypair(USER_EMAIL, false, 1000, true).await;
    let c = app.client(&ak, &sk);
    for _ in 0..5 {
        assert_eq!(
            c.json(Method::GET, "/auth/role", None).await.unwrap().0,
            StatusCode::OK
        );
    }
    let key = format!("kp:{ak}:num_queries");
    assert_eq!(app.redis_int(&key).await, 5);
    let mut conn = app.redis.get().await.unwrap();
    let ttl: i64 = bai_core::redis::redis::cmd("TTL")
        .arg(&key)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert!(ttl > 29 * 24 * 3600 && ttl <= 30 * 24 * 3600, "ttl {ttl}");
    let window: i64 = bai_core::redis::redis::cmd("ZCARD")
        .arg(format!("rlim:{ak}"))
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert_eq!(window, 5);
    let db_count: Option<i32> =
        sqlx::query_scalar("SELECT num_queries FROM keypairs WHERE access_key = $1")
            .bind(&ak)
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    assert_eq!(
        db_count,
        Some(0),
        "the hot path must not write the database"
    );
    // Anonymous requests count nothing.
    app.anonymous().json(Method::GET, "/", None).await.unwrap();
    assert_eq!(app.redis_int(&key).await, 5);
}

#[tokio::test]
async fn keypair_changes_apply_within_the_cache_bound() {
    let app = TestApp::spawn().await;
    let (ak, sk) = app.keypair(USER_EMAIL, false, 1000, true).await;
    let c = app.client(&ak, &sk);
    assert_eq!(
        c.json(Method::GET, "/auth/role", None).await.unwrap().0,
        StatusCode::OK
    );
    sqlx::query("UPDATE keypairs SET is_active = false WHERE access_key = $1")
        .bind(&ak)
        .execute(app.db.db.pool())
        .await
        .unwrap();
    let started = std::time::Instant::now();
    let refused = eventually(Duration::from_secs(5), || async {
        (c.json(Method::GET, "/auth/role", None).await.unwrap().0 == StatusCode::UNAUTHORIZED)
            .then_some(())
    })
    .await;
    assert!(refused.is_some(), "deactivation never took effect");
    assert!(
        started.elapsed() < Duration::from_millis(2500),
        "took {:?}",
        started.elapsed()
    );
}

fn session_cookie(resp: &reqwest::Response) -> String {
    let set = resp.headers()["set-cookie"].to_str().unwrap().to_string();
    assert!(set.contains("HttpOnly") && set.contains("Path=/"), "{set}");
    set.split(';').next().unwrap().to_string()
}

#[tokio::test]
async fn cookie_sso_pre_auth_flow() {
    let app = TestApp::spawn_with(|c| {
        c.manager.pre_auth_hook = PreAuthHookKind::CookieSso;
        c.manager.secret = Some("test-cookie-secret".into());
    })
    .await;
    // Give the user a fresh main keypair so Redis keys stay private to this test.
    sqlx::query("UPDATE keypairs SET is_active = false WHERE user_id = $1")
        .bind(USER_EMAIL)
        .execute(app.db.db.pool())
        .await
        .unwrap();
    let (ak, _sk) = app.keypair(USER_EMAIL, false, 1000, true).await;
    let http = reqwest::Client::new();
    let login = |body: Value| {
        http.post(format!("{}/server/login", app.base))
            .json(&body)
            .send()
    };

    let (status, body) = read_json(
        login(json!({"username": USER_EMAIL, "password": "wrong"}))
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::UNAUTHORIZED, "auth-failed")
    );

    let resp = login(json!({"username": USER_EMAIL, "password": USER_PASSWORD}))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let cookie = session_cookie(&resp);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["authenticated"], true);
    assert_eq!(body["data"]["access_key"], ak.as_str());
    let sid = cookie.split('.').nth(1).unwrap().to_string();
    app.track_redis_key(format!("sso:revoked:{sid}"));

    // Authenticated without any HMAC signature: a date header and the cookie suffice.
    let with_cookie = |cookie: String, path: &'static str| {
        http.get(format!("{}{}", app.base, path))
            .header("cookie", cookie)
            .header("x-backendai-date", client::client_date())
            .send()
    };
    let resp = with_cookie(cookie.clone(), "/auth/test?echo=sso")
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-ratelimit-limit"], "1000");
    assert_eq!(resp.json::<Value>().await.unwrap()["echo"], "sso");
    let (status, role) = read_json(with_cookie(cookie.clone(), "/auth/role").await.unwrap()).await;
    assert_eq!(
        (status, role["global_role"].clone()),
        (StatusCode::OK, json!("user"))
    );
    assert_eq!(app.redis_int(&format!("kp:{ak}:num_queries")).await, 2);

    // A tampered cookie is not a session: back to HMAC, which is absent.
    let tampered = cookie.replace(&sid, &"0".repeat(sid.len()));
    let (status, _) = read_json(with_cookie(tampered, "/auth/role").await.unwrap()).await;
    assert_eq!(status, StatusCode::UNAUTHORIZED);

    // HMAC still works next to the hook.
    let (ak2, sk2) = app.keypair(USER_EMAIL, false, 1000, true).await;
    assert_eq!(
        app.client(&ak2, &sk2)
            .json(Method::GET, "/auth/role", None)
            .await
            .unwrap()
            .0,
        StatusCode::OK
    );

    // Logout revokes the session server-side: replaying the cookie fails.
    let resp = http
        .post(format!("{}/server/logout", app.base))
        .header("cookie", cookie.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(resp.headers()["set-cookie"]
        .to_str()
        .unwrap()
        .contains("Max-Age=0"));
    let (status, body) = read_json(with_cookie(cookie, "/auth/role").await.unwrap()).await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::UNAUTHORIZED, "auth-failed")
    );
}

#[tokio::test]
async fn login_is_unavailable_without_the_hook() {
    let app = TestApp::spawn().await;
    let resp = reqwest::Client::new()
        .post(format!("{}/server/login", app.base))
        .json(&json!({"username": USER_EMAIL, "password": USER_PASSWORD}))
        .send()
        .await
        .unwrap();
    let (status, body) = read_json(resp).await;
    assert_eq!(
        (status, problem_slug(&body)),
        (StatusCode::NOT_FOUND, "generic-not-found")
    );
}

#[test]
fn pre_auth_hook_configuration() {
    let load = |manager: &str| {
        let path = std::env::temp_dir().join(format!(
            "bai-preauth-{}.toml",
            uuid::Uuid::new_v4().simple()
        ));
        std::fs::write(&path, format!("[manager]\n{manager}\n")).unwrap();
        let cfg = bai_core::Config::load(Some(&path));
        let _ = std::fs::remove_file(&path);
        cfg
    };
    assert_eq!(
        load("").unwrap().manager.pre_auth_hook,
        PreAuthHookKind::None
    );
    assert_eq!(
        load("pre-auth-hook = \"cookie-sso\"\nsecret = \"s\"")
            .unwrap()
            .manager
            .pre_auth_hook,
        PreAuthHookKind::CookieSso
    );
    // The cookie hook signs with manager.secret, so it must be set.
    let err = load("pre-auth-hook = \"cookie-sso\"")
        .unwrap_err()
        .to_string();
    assert!(err.contains("manager.pre-auth-hook"), "{err}");
    assert!(load("pre-auth-hook = \"magic\"").is_err());
    // Unknown keys are still refused.
    assert!(load("pre-auth-hoook = \"none\"").is_err());
}

/// Throughput of signed requests through auth, the credential cache and the Redis rate
/// limiter (`cargo test -p bai-tests --release --test api_auth -- --ignored --nocapture`).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "measurement, not a check"]
async fn signed_request_throughput() {
    let app = TestApp::spawn().await;
    let c = app.superadmin().await;
    let total = 4000usize;
    let started = std::time::Instant::now();
    let results = futures::future::join_all((0..32).map(|_| {
        let c = c.clone();
        async move {
            let mut ok = 0;
            for _ in 0..total / 32 {
                if c.json(Method::GET, "/auth/test?echo=x", None)
                    .await
                    .unwrap()
                    .0
                    == StatusCode::OK
                {
                    ok += 1;
                }
            }
            ok
        }
    }))
    .await;
    let elapsed = started.elapsed();
    let ok: usize = results.into_iter().sum();
    assert_eq!(ok, total);
    println!(
        "{total} signed requests in {elapsed:?}: {:.0} req/s",
        total as f64 / elapsed.as_secs_f64()
    );
}
