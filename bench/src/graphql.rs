//! `bai-bench graphql`: signed GraphQL throughput and latency against a running API.
//!
//! Two phases, both with requests signed exactly like the official client
//! (HMAC-SHA256, `X-BackendAI-Version: v6.20210815`, `POST /admin/gql`):
//!
//! 1. **Throughput** (closed loop): `--connections` workers send back-to-back requests for
//!    `--duration` seconds; reported as requests/s with p50/p99.
//! 2. **Latency at a fixed rate** (open loop): requests are *scheduled* at `--rate` per
//!    second and each latency is measured from its scheduled start, so a stalled server
//!    shows up in the percentiles instead of silently lowering the offered load
//!    (no coordinated omission).
//!
//! Queries: `keypair` (the small query `ps` sends first) and a `keypair_list` page (what
//! `admin keypairs` sends). Every request loop is bounded in count and time.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use crate::sign::Signer;

#[derive(clap::Args, Debug, Clone)]
pub struct GraphqlArgs {
    /// API endpoint (an API started in release mode).
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub endpoint: String,
    #[arg(long, default_value = "AKIAIOSFODNN7EXAMPLE")]
    pub access_key: String,
    #[arg(long, default_value = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]
    pub secret_key: String,
    /// Concurrent connections of the throughput phase.
    #[arg(long, default_value_t = 16)]
    pub connections: usize,
    /// Seconds per throughput measurement.
    #[arg(long, default_value_t = 10)]
    pub duration: u64,
    /// Offered load (requests/s) of the latency phase; 0 skips it.
    #[arg(long, default_value_t = 2000)]
    pub rate: u64,
    /// Seconds of the latency phase.
    #[arg(long, default_value_t = 10)]
    pub rate_duration: u64,
    /// Which queries: keypair, keypair_list or both.
    #[arg(long, default_value = "both")]
    pub query: String,
}

const KEYPAIR: &str = "query {  keypair {    access_key secret_key is_active is_admin  }}";
const KEYPAIR_LIST: &str = "query($limit:Int!, $offset:Int!, $is_active: Boolean, $domain_name: String, $filter: String, $order: String) {\n  keypair_list(\n      limit:$limit, offset:$offset, is_active:$is_active, domain_name:$domain_name, filter:$filter, order:$order) {\n    items { user_id user_info { full_name } access_key secret_key is_active is_admin created_at last_used resource_policy rate_limit concurrency_limit concurrency_used }\n    total_count\n  }\n}";

/// Sends one request; `Ok` only for a 200 with data and no errors.
async fn one(client: &reqwest::Client, signer: &Signer, body: &bytes::Bytes) -> anyhow::Result<()> {
    let resp = signer
        .request(
            client,
            reqwest::Method::POST,
            "/admin/gql",
            Some(body.clone()),
        )
        .send()
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if !status.is_success() {
        anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    let v: Value = serde_json::from_slice(&bytes)?;
    if v.get("errors").is_some() || v.get("data").is_none() {
        anyhow::bail!("GraphQL errors: {v}");
    }
    Ok(())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

struct Summary {
    ok: u64,
    errors: u64,
    seconds: f64,
    lat_us: Vec<u64>,
}

impl Summary {
    fn print(&mut self, label: &str) {
        self.lat_us.sort_unstable();
        println!(
            "{label:<38} {:>9.0} req/s   ok {:>7}  err {:>4}   p50 {:>6.2} ms  p99 {:>6.2} ms  max {:>7.2} ms",
            self.ok as f64 / self.seconds,
            self.ok,
            self.errors,
            percentile(&self.lat_us, 0.50),
            percentile(&self.lat_us, 0.99),
            percentile(&self.lat_us, 1.0),
        );
    }
}

async fn throughput(
    args: &GraphqlArgs,
    signer: Arc<Signer>,
    body: bytes::Bytes,
) -> anyhow::Result<Summary> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(args.connections)
        .build()?;
    // Warm up the connection pool and the server's caches.
    for _ in 0..args.connections.max(1) * 4 {
        one(&client, &signer, &body).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(args.duration.max(1));
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..args.connections.max(1) {
        let client = client.clone();
        let signer = signer.clone();
        let body = body.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::with_capacity(65536);
            while Instant::now() < deadline {
                let t = Instant::now();
                match one(&client, &signer, &body).await {
                    Ok(()) => lat.push(t.elapsed().as_micros() as u64),
                    Err(e) => {
                        if errors.fetch_add(1, Ordering::Relaxed) == 0 {
                            eprintln!("first error: {e:#}");
                        }
                    }
                }
            }
            lat
        }));
    }
    let mut lat_us = Vec::new();
    for t in tasks {
        lat_us.extend(t.await?);
    }
    Ok(Summary {
        ok: lat_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        lat_us,
    })
}

async fn fixed_rate(
    args: &GraphqlArgs,
    signer: Arc<Signer>,
    body: bytes::Bytes,
) -> anyhow::Result<Summary> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(256)
        .build()?;
    for _ in 0..32 {
        one(&client, &signer, &body).await?;
    }
    let total = args.rate * args.rate_duration.max(1);
    let interval = Duration::from_secs_f64(1.0 / args.rate as f64);
    let errors = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..total {
        let scheduled = start + interval.mul_f64(i as f64);
        tokio::time::sleep_until(scheduled.into()).await;
        let client = client.clone();
        let signer = signer.clone();
        let body = body.clone();
        let errors = errors.clone();
        tasks.spawn(async move {
            let r =
                tokio::time::timeout(Duration::from_secs(10), one(&client, &signer, &body)).await;
            match r {
                Ok(Ok(())) => Some(scheduled.elapsed().as_micros() as u64),
                _ => {
                    errors.fetch_add(1, Ordering::Relaxed);
                    None
                }
            }
        });
    }
    let mut lat_us = Vec::with_capacity(total as usize);
    while let Some(r) = tasks.join_next().await {
        if let Some(l) = r? {
            lat_us.push(l);
        }
    }
    Ok(Summary {
        ok: lat_us.len() as u64,
        errors: errors.load(Ordering::Relaxed),
        seconds: start.elapsed().as_secs_f64(),
        lat_us,
    })
}

pub async fn run(args: GraphqlArgs) -> anyhow::Result<()> {
    let signer = Arc::new(Signer::new(
        &args.endpoint,
        &args.access_key,
        &args.secret_key,
    )?);
    let mut queries: Vec<(&str, Value)> = Vec::new();
    if args.query == "keypair" || args.query == "both" {
        queries.push(("keypair", json!({"query": KEYPAIR, "variables": {}})));
    }
    if args.query == "keypair_list" || args.query == "both" {
        queries.push((
            "keypair_list (page of 20)",
            json!({"query": KEYPAIR_LIST, "variables": {"is_active": null, "domain_name": null, "filter": null, "order": null, "limit": 20, "offset": 0}}),
        ));
    }
    if queries.is_empty() {
        anyhow::bail!("--query must be keypair, keypair_list or both");
    }
    println!(
        "GraphQL bench against {} ({} connections, {} s; fixed rate {} req/s for {} s)",
        signer.base, args.connections, args.duration, args.rate, args.rate_duration
    );
    for (label, body) in &queries {
        let body = bytes::Bytes::from(body.to_string());
        let mut s = throughput(&args, signer.clone(), body.clone()).await?;
        s.print(&format!("{label}: throughput"));
        if args.rate > 0 {
            let mut s = fixed_rate(&args, signer.clone(), body).await?;
            s.print(&format!("{label}: at {} req/s", args.rate));
        }
    }
    Ok(())
}
