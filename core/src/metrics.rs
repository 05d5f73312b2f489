//! Prometheus metrics shared by every manager process.
//!
//! Each process owns one [`prometheus::Registry`] (not the crate's global one, so several
//! in-process managers in one test binary never mix their numbers). Counters and histograms
//! are updated where things happen; values that are cheap to read but costly to keep up to
//! date (JetStream stream depths, agents per status) are *sampled on scrape* by
//! [`Sampler`]s that the [`MetricsEndpoint`] runs right before it renders the text format.
//!
//! Processes without an HTTP API (workers) expose the endpoint on a small listener of their
//! own ([`serve`]); the API server mounts [`MetricsEndpoint::scrape`] at `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use futures::future::BoxFuture;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

pub use prometheus;
use prometheus::{Encoder, Registry, TextEncoder};

/// The Prometheus text exposition format's content type.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How long one sampler may take before the scrape renders without its fresh values (a
/// slow NATS or database must not make the scrape itself time out).
const SAMPLE_TIMEOUT: Duration = Duration::from_secs(2);

/// Refreshes sampled gauges right before a scrape renders them.
pub type Sampler = Arc<dyn Fn() -> BoxFuture<'static, ()> + Send + Sync>;

/// Renders a registry in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    if let Err(e) = TextEncoder::new().encode(&registry.gather(), &mut buf) {
        tracing::warn!(error = %e, "could not encode metrics");
    }
    String::from_utf8(buf).unwrap_or_default()
}

/// Registers a collector, logging (instead of failing start-up) if the same metric is
/// already registered — a wiring mistake that must not take a process down.
pub fn register<C: prometheus::core::Collector + 'static>(registry: &Registry, c: C) {
    if let Err(e) = registry.register(Box::new(c)) {
        tracing::warn!(error = %e, "metric not registered");
    }
}

/// One process's registry plus its scrape-time samplers.
#[derive(Clone)]
pub struct MetricsEndpoint {
    registry: Registry,
    samplers: Arc<std::sync::RwLock<Vec<Sampler>>>,
}

impl Default for MetricsEndpoint {
    fn default() -> Self {
        Self::new()
    }
}

impl MetricsEndpoint {
    pub fn new() -> Self {
        Self {
            registry: Registry::new(),
            samplers: Arc::default(),
        }
    }

    pub fn registry(&self) -> &Registry {
        &self.registry
    }

    /// Adds a sampler run on every scrape.
    pub fn add_sampler(&self, s: Sampler) {
        if let Ok(mut v) = self.samplers.write() {
            v.push(s);
        }
    }

    /// Runs the samplers (concurrently, each bounded by a timeout), then renders.
    pub async fn scrape(&self) -> String {
        let samplers: Vec<Sampler> = self.samplers.read().map(|v| v.clone()).unwrap_or_default();
        // Concurrent: a scrape costs the slowest sampler, not the sum of them.
        futures::future::join_all(samplers.iter().map(|s| async move {
            if tokio::time::timeout(SAMPLE_TIMEOUT, s()).await.is_err() {
                tracing::debug!("a metrics sampler timed out; its gauges keep older values");
            }
        }))
        .await;
        render(&self.registry)
    }

    /// An axum response with the scrape result.
    pub async fn response(&self) -> axum::response::Response {
        ([(header::CONTENT_TYPE, CONTENT_TYPE)], self.scrape().await).into_response()
    }
}

/// Binds the listener of a metrics-only HTTP endpoint (port 0 picks a free port; read it
/// back with `local_addr`).
pub async fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    TcpListener::bind(addr).await
}

/// Serves `GET /metrics` (and `GET /` for humans) until `shutdown` fires.
pub async fn serve(
    listener: TcpListener,
    endpoint: MetricsEndpoint,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let scrape = {
        let endpoint = endpoint.clone();
        move || {
            let endpoint = endpoint.clone();
            async move { endpoint.response().await }
        }
    };
    let app = Router::new()
        .route("/metrics", get(scrape.clone()))
        .route("/", get(scrape));
    axum::serve(listener, app)
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
}

/// Binds `addr` and serves in the background; returns the bound address.
pub async fn spawn_server(
    addr: SocketAddr,
    endpoint: MetricsEndpoint,
    shutdown: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        if let Err(e) = serve(listener, endpoint, shutdown).await {
            tracing::warn!(error = %e, "metrics listener stopped");
        }
    });
    Ok(local)
}

/// Builds a labelled counter; the definitions are static, so a failure is a programming
/// error caught by the tests.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::IntCounterVec {
    #[allow(clippy::expect_used)]
    prometheus::IntCounterVec::new(prometheus::Opts::new(name, help), labels)
        .expect("static metric definition")
}

/// Builds a labelled gauge (see [`counter_vec`]).
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> prometheus::IntGaugeVec {
    #[allow(clippy::expect_used)]
    prometheus::IntGaugeVec::new(prometheus::Opts::new(name, help), labels)
        .expect("static metric definition")
}

/// Builds a labelled histogram with `buckets` in seconds (see [`counter_vec`]).
pub fn histogram_vec(
    name: &str,
    help: &str,
    labels: &[&str],
    buckets: Vec<f64>,
) -> prometheus::HistogramVec {
    #[allow(clippy::expect_used)]
    prometheus::HistogramVec::new(
        prometheus::HistogramOpts::new(name, help).buckets(buckets),
        labels,
    )
    .expect("static metric definition")
}

/// Latency buckets from 1 ms to 30 s: API requests and command handling both live here.
pub fn latency_buckets() -> Vec<f64> {
    vec![
        0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    ]
}

/// Agents per status, read from the database on scrape (one read-only transaction).
pub fn agents_by_status_sampler(db: crate::Db, registry: &Registry) -> Sampler {
    let gauge = gauge_vec(
        "bai_agents",
        "Agents by status (read from the database on scrape)",
        &["status"],
    );
    register(registry, gauge.clone());
    Arc::new(move || {
        let db = db.clone();
        let gauge = gauge.clone();
        Box::pin(async move {
            let rows: Result<Vec<(String, i64)>, anyhow::Error> = async {
                let mut tx = db.begin_readonly().await?;
                let rows =
                    sqlx::query_as("SELECT status::text, count(*) FROM agents GROUP BY status")
                        .fetch_all(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(rows)
            }
            .await;
            match rows {
                Ok(rows) => {
                    // Every known status is reported, 0 included, so a status that empties
                    // drops to 0 instead of keeping its last value.
                    for s in ["ALIVE", "LOST", "RESTARTING", "TERMINATED"] {
                        gauge.with_label_values(&[s]).set(0);
                    }
                    for (status, n) in rows {
                        gauge.with_label_values(&[status.as_str()]).set(n);
                    }
                }
                Err(e) => tracing::debug!(error = %format!("{e:#}"), "agent counts not sampled"),
            }
        })
    })
}
