//! Observability: `/metrics` of the API and of a worker's own listener, and request ids
//! from `X-Request-Id` into command envelopes.

use std::time::Duration;

use futures::StreamExt;
use reqwest::Method;
use serde_json::json;

use bai_events::{Command, CommandOutcome, Envelope};
use bai_tests::app::TestApp;
use bai_tests::{eventually, TIMEOUT};

async fn scrape(url: &str) -> (String, String) {
    let resp = reqwest::get(url).await.expect("GET metrics");
    assert_eq!(resp.status(), 200, "{url}");
    let ct = resp
        .headers()
        .get("content-type")
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_string();
    (ct, resp.text().await.expect("metrics body"))
}

/// The value of the first sample line starting with `series` (name and labels).
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

#[tokio::test]
async fn api_metrics_count_routes_and_sample_streams_and_agents() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    // A signed request, an anonymous one, and an unknown path.
    let (status, _) = admin
        .json(Method::GET, "/scaling-groups?group=default", None)
        .await
        .unwrap();
    assert_eq!(status, 200);
    let (status, _) = app.anonymous().json(Method::GET, "/", None).await.unwrap();
    assert_eq!(status, 200);
    let (status, _) = admin
        .json(Method::GET, "/no/such/path/123", None)
        .await
        .unwrap();
    assert_eq!(status, 404);
    // Rejected by auth, still counted under its route.
    let (status, _) = app
        .client(&app.state.config.manager.id, "wrong")
        .json(Method::GET, "/auth/role", None)
        .await
        .unwrap();
    assert_eq!(status, 401);

    // Anonymous (no signature), Prometheus text format.
    let (ct, text) = scrape(&format!("{}/metrics", app.base)).await;
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    assert_eq!(
        sample(
            &text,
            r#"bai_http_requests_total{method="GET",route="/scaling-groups",status="200"}"#
        ),
        Some(1.0),
        "{text}"
    );
    assert_eq!(
        sample(
            &text,
            r#"bai_http_requests_total{method="GET",route="/",status="200"}"#
        ),
        Some(1.0)
    );
    // Unknown paths share one label value (no series per path).
    assert_eq!(
        sample(
            &text,
            r#"bai_http_requests_total{method="GET",route="<unmatched>",status="404"}"#
        ),
        Some(1.0)
    );
    assert!(!text.contains("/no/such/path"));
    assert_eq!(
        sample(
            &text,
            r#"bai_http_requests_total{method="GET",route="/auth/role",status="401"}"#
        ),
        Some(1.0)
    );
    assert!(text.contains(r#"bai_http_request_duration_seconds_bucket{method="GET",route="/scaling-groups",le="0.005"}"#));
    // Sampled on scrape: this test's private streams, and agents per status (none here).
    let cmd_stream = app.bus.bus.subjects().cmd_stream();
    assert!(
        text.contains(&format!(r#"bai_stream_messages{{stream="{cmd_stream}"}}"#)),
        "stream depth of {cmd_stream}:\n{text}"
    );
    assert!(text.contains(&format!(
        r#"bai_consumer_pending{{consumer="workers",stream="{cmd_stream}"}}"#
    )));
    assert_eq!(sample(&text, r#"bai_agents{status="ALIVE"}"#), Some(0.0));
}

#[tokio::test]
async fn request_id_travels_into_the_command_envelope() {
    let app = TestApp::spawn().await;
    let admin = app.superadmin().await;
    // Core NATS sees JetStream publishes too: watch the command subjects of this test.
    let mut cmds = app
        .bus
        .bus
        .client()
        .subscribe(format!("{}.cmd.>", app.bus.prefix))
        .await
        .expect("subscribe to commands");
    let rid = format!("ops-test-{}", uuid::Uuid::new_v4().simple());
    let resp = admin
        .request(
            Method::POST,
            "/config/set",
            Some(&json!({"key": "config/test/rid", "value": "1"})),
        )
        .header("x-request-id", &rid)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    // Accepted from the client and echoed back.
    assert_eq!(
        resp.headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok()),
        Some(rid.as_str())
    );
    let msg = tokio::time::timeout(TIMEOUT, cmds.next())
        .await
        .expect("a command was published")
        .expect("subscription open");
    let env = Envelope::<Command>::from_slice(&msg.payload).expect("command envelope");
    assert_eq!(env.kind, "etcd_put");
    assert_eq!(env.request_id.as_deref(), Some(rid.as_str()));
    assert_eq!(
        msg.headers
            .as_ref()
            .and_then(|h| h.get("X-Request-Id"))
            .map(|v| v.as_str()),
        Some(rid.as_str())
    );

    // Without a client id the API generates one and still puts it in the envelope.
    let resp = admin
        .request(
            Method::POST,
            "/config/set",
            Some(&json!({"key": "config/test/rid", "value": "2"})),
        )
        .send()
        .await
        .unwrap();
    let generated = resp
        .headers()
        .get("x-request-id")
        .and_then(|v| v.to_str().ok())
        .expect("a generated request id")
        .to_string();
    let msg = tokio::time::timeout(TIMEOUT, cmds.next())
        .await
        .expect("a second command")
        .expect("subscription open");
    let env = Envelope::<Command>::from_slice(&msg.payload).expect("command envelope");
    assert_eq!(env.request_id.as_deref(), Some(generated.as_str()));
}

#[tokio::test]
async fn worker_metrics_listener_counts_commands_by_kind() {
    let app = TestApp::spawn().await;
    let endpoint = bai_core::metrics::MetricsEndpoint::new();
    let registry = endpoint.registry().clone();
    app.worker_metrics.register(&registry);
    app.worker_ctx.bus.metrics().register(&registry);
    endpoint.add_sampler(bai_events::stats::stream_depth_sampler(
        app.worker_ctx.bus.clone(),
        &registry,
    ));
    let stop = tokio_util::sync::CancellationToken::new();
    // Port 0: the listener picks a free port and reports it.
    let addr =
        bai_core::metrics::spawn_server("127.0.0.1:0".parse().unwrap(), endpoint, stop.clone())
            .await
            .expect("metrics listener");
    assert_ne!(addr.port(), 0);

    let out = app
        .bus
        .bus
        .publish_command(
            Command::Echo {
                payload: "m".into(),
                fail: false,
                delay_ms: 0,
            },
            Duration::from_secs(20),
        )
        .await
        .unwrap();
    assert!(matches!(out, CommandOutcome::Completed(_)), "{out:?}");
    // A failing echo is retried (nacked) before it fails for good; do not wait for that.
    let _ = app
        .bus
        .bus
        .publish_command(
            Command::Echo {
                payload: "x".into(),
                fail: true,
                delay_ms: 0,
            },
            Duration::from_millis(10),
        )
        .await
        .unwrap();
    let url = format!("http://{addr}/metrics");
    let text = eventually(TIMEOUT, || async {
        let (_, text) = scrape(&url).await;
        let handled = sample(
            &text,
            r#"bai_worker_commands_total{kind="echo",outcome="handled"}"#,
        );
        let nacked = sample(
            &text,
            r#"bai_worker_commands_total{kind="echo",outcome="nacked"}"#,
        );
        (handled == Some(1.0) && nacked.is_some_and(|n| n >= 1.0)).then_some(text)
    })
    .await
    .expect("echo counted as handled and nacked");
    assert!(text.contains(r#"bai_worker_command_duration_seconds_count{kind="echo"}"#));
    let cmd_stream = app.bus.bus.subjects().cmd_stream();
    assert!(
        text.contains(&format!(r#"bai_stream_messages{{stream="{cmd_stream}"}}"#)),
        "stream depths sampled on the worker's scrape too:\n{text}"
    );
    stop.cancel();
}
