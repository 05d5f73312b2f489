//! `GET /metrics` of an agent process (`ag start-server --metrics-addr`): kernels by
//! status, read from the agent's table on scrape, and the agent's identity and slots.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::http::header;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, IntGaugeVec, Opts, Registry, TextEncoder};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;

struct AgentMetrics {
    registry: Registry,
    kernels: IntGaugeVec,
}

impl AgentMetrics {
    fn new(agent: &Agent) -> anyhow::Result<Self> {
        let registry = Registry::new();
        let kernels = IntGaugeVec::new(
            Opts::new(
                "bai_agent_kernels",
                "Kernels on this agent by state (read on scrape)",
            ),
            &["agent_id", "state"],
        )?;
        let info = IntGaugeVec::new(
            Opts::new("bai_agent_info", "This agent's identity (always 1)"),
            &["agent_id", "scaling_group", "version"],
        )?;
        let slots = prometheus::GaugeVec::new(
            Opts::new(
                "bai_agent_available_slots",
                "Resource slots this agent offers",
            ),
            &["agent_id", "slot"],
        )?;
        registry.register(Box::new(kernels.clone()))?;
        registry.register(Box::new(info.clone()))?;
        registry.register(Box::new(slots.clone()))?;
        let id = agent.cfg.id.as_str();
        info.with_label_values(&[
            id,
            agent.cfg.scaling_group.as_str(),
            agent.cfg.version.as_str(),
        ])
        .set(1);
        for (slot, amount) in &agent.cfg.slots {
            let v = amount.parse::<f64>().unwrap_or(0.0);
            slots.with_label_values(&[id, slot.as_str()]).set(v);
        }
        Ok(Self { registry, kernels })
    }

    fn render(&self, agent: &Agent) -> String {
        let (mut running, mut exited) = (0i64, 0i64);
        for k in agent.kernel_list() {
            if k.exit_code().is_some() {
                exited += 1;
            } else {
                running += 1;
            }
        }
        let id = agent.cfg.id.as_str();
        self.kernels
            .with_label_values(&[id, "running"])
            .set(running);
        self.kernels.with_label_values(&[id, "exited"]).set(exited);
        let mut buf = Vec::new();
        if let Err(e) = TextEncoder::new().encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }
}

/// Binds `addr` (port 0 picks a free one) and serves until `shutdown`; returns the bound
/// address.
pub async fn spawn(
    addr: SocketAddr,
    agent: Arc<Agent>,
    shutdown: CancellationToken,
) -> anyhow::Result<SocketAddr> {
    let metrics = Arc::new(AgentMetrics::new(&agent)?);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    let scrape = move || {
        let (metrics, agent) = (metrics.clone(), agent.clone());
        async move {
            (
                [(
                    header::CONTENT_TYPE,
                    "text/plain; version=0.0.4; charset=utf-8",
                )],
                metrics.render(&agent),
            )
                .into_response()
        }
    };
    let app = Router::new().route("/metrics", get(scrape));
    tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move { shutdown.cancelled().await })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, "agent metrics listener stopped");
        }
    });
    Ok(local)
}
