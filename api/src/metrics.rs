//! `/metrics` of the API server: HTTP requests by route template, method and status with
//! a latency histogram, the bus's publish counters, and gauges sampled on scrape (stream
//! depths, agents per status). Also the middleware that scopes a request's id for agent
//! RPCs made by its handler.

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::middleware::Next;
use axum::response::Response;
use tower_http::request_id::RequestId;

use bai_core::metrics::prometheus::{HistogramVec, IntCounterVec, IntGauge};
use bai_core::metrics::{counter_vec, histogram_vec, latency_buckets, register, MetricsEndpoint};

use crate::state::AppState;

/// Label of requests no route matched (404s of unknown paths), so arbitrary paths cannot
/// blow up the series count.
pub const UNMATCHED: &str = "<unmatched>";

pub struct ApiMetrics {
    pub endpoint: MetricsEndpoint,
    pub requests: IntCounterVec,
    pub latency: HistogramVec,
    pub in_flight: IntGauge,
}

impl ApiMetrics {
    pub fn new(bus: &bai_events::Bus, db: &bai_core::Db) -> Self {
        let endpoint = MetricsEndpoint::new();
        let registry = endpoint.registry().clone();
        let requests = counter_vec(
            "bai_http_requests_total",
            "HTTP requests by route template, method and status",
            &["route", "method", "status"],
        );
        let latency = histogram_vec(
            "bai_http_request_duration_seconds",
            "Time to the response head, by route template and method",
            &["route", "method"],
            latency_buckets(),
        );
        #[allow(clippy::expect_used)]
        let in_flight = IntGauge::new("bai_http_requests_in_flight", "HTTP requests being served")
            .expect("static metric definition");
        register(&registry, requests.clone());
        register(&registry, latency.clone());
        register(&registry, in_flight.clone());
        bus.metrics().register(&registry);
        endpoint.add_sampler(bai_events::stats::stream_depth_sampler(
            bus.clone(),
            &registry,
        ));
        endpoint.add_sampler(bai_core::metrics::agents_by_status_sampler(
            db.clone(),
            &registry,
        ));
        Self {
            endpoint,
            requests,
            latency,
            in_flight,
        }
    }
}

/// The matched route's template, carried from the routing layer (where it is known) to
/// [`track`] (which wraps routing) in the response's extensions.
#[derive(Clone)]
struct RouteTemplate(String);

/// `route_layer`: copies the matched route template into the response.
pub async fn mark_route(req: Request, next: Next) -> Response {
    let route = req
        .extensions()
        .get::<MatchedPath>()
        .map(|m| m.as_str().to_string());
    let mut resp = next.run(req).await;
    if let Some(r) = route {
        resp.extensions_mut().insert(RouteTemplate(r));
    }
    resp
}

/// Outer layer: counts every request and measures the time to its response head.
pub async fn track(State(state): State<AppState>, req: Request, next: Next) -> Response {
    let m = &state.metrics;
    let method = req.method().as_str().to_string();
    let started = Instant::now();
    // A guard, not inc/dec around the await: a request whose client goes away is dropped
    // mid-await and must still leave the gauge.
    struct InFlight(IntGauge);
    impl Drop for InFlight {
        fn drop(&mut self) {
            self.0.dec();
        }
    }
    m.in_flight.inc();
    let guard = InFlight(m.in_flight.clone());
    let resp = next.run(req).await;
    drop(guard);
    let route = resp
        .extensions()
        .get::<RouteTemplate>()
        .map(|r| r.0.as_str())
        .unwrap_or(UNMATCHED);
    m.requests
        .with_label_values(&[route, method.as_str(), resp.status().as_str()])
        .inc();
    m.latency
        .with_label_values(&[route, method.as_str()])
        .observe(started.elapsed().as_secs_f64());
    resp
}

/// Runs the rest of the request with its id as the current request id of agent RPCs.
pub async fn scope_request_id(req: Request, next: Next) -> Response {
    let id = req
        .extensions()
        .get::<RequestId>()
        .and_then(|r| r.header_value().to_str().ok())
        .map(str::to_string);
    bai_agent_proto::request_id::scope(id, next.run(req)).await
}

/// `GET /metrics` (anonymous, like the original's health endpoints; restrict it at the
/// network level in production).
pub async fn metrics(State(state): State<AppState>) -> Response {
    state.metrics.endpoint.response().await
}
