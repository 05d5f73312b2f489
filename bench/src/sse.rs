//! `bai-bench sse`: server-sent session events at scale against a running API process.
//!
//! 1. Inserts `--sessions` RUNNING sessions (kernel rows) for the given keypair into the
//!    API's database (removed at the end).
//! 2. Opens `--subscribers` SSE connections to `GET /events/session?sessionId=…` (one
//!    session each, round robin), signed like the official client, plus `--stalled`
//!    connections to `sessionName=*` that never read their bodies (slow clients: they must
//!    not slow anyone else down nor grow the API's memory).
//! 3. Warm-up: one event per session (fills the API's metadata cache), not measured.
//! 4. Two open-loop phases publish `session_started` events straight onto the EVENTS
//!    stream, round robin over the sessions, each carrying its *scheduled* publish time in
//!    `reason` (so a stall shows up in the latencies instead of lowering the load): first
//!    at `--rate` events/s, then at `--high-rate`. Every subscriber measures
//!    publish-to-delivery latency from that timestamp.
//! 5. The API's RSS (`/proc/<pid>/status`, `--api-pid` or the single `start-server`
//!    process found) is sampled before connecting, with everyone connected, and every
//!    100 ms during the load (peak).
//!
//! The API must use the same NATS prefix and database as the benchmark's `--config`
//! (e.g. both with `BAI_NATS__PREFIX=ssebench`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use chrono::Utc;
use futures::StreamExt;
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::sign::Signer;
use bai_core::Config;
use bai_events::{Bus, BusOptions, Event};

#[derive(clap::Args, Debug, Clone)]
pub struct SseArgs {
    /// manager.toml of the API under test (database and NATS prefix).
    #[arg(long, default_value = "ops/manager.toml")]
    pub config: std::path::PathBuf,
    #[arg(long, default_value = "http://127.0.0.1:8081")]
    pub endpoint: String,
    #[arg(long, default_value = "AKIAIOSFODNN7EXAMPLE")]
    pub access_key: String,
    #[arg(long, default_value = "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY")]
    pub secret_key: String,
    /// PID of the API process (for RSS); found by its command line when omitted.
    #[arg(long)]
    pub api_pid: Option<u32>,
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    #[arg(long, default_value_t = 1000)]
    pub sessions: usize,
    /// Connections that subscribe to every session and never read.
    #[arg(long, default_value_t = 50)]
    pub stalled: usize,
    /// Events per second of the first phase, and its duration.
    #[arg(long, default_value_t = 1000)]
    pub rate: u64,
    #[arg(long, default_value_t = 10)]
    pub seconds: u64,
    /// Events per second of the second phase (same duration).
    #[arg(long, default_value_t = 5000)]
    pub high_rate: u64,
    /// Concurrent publishers.
    #[arg(long, default_value_t = 64)]
    pub publishers: usize,
}

fn now_us() -> u64 {
    Utc::now().timestamp_micros().max(0) as u64
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find(|l| l.starts_with("VmRSS:"))?
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

fn find_api_pid() -> Option<u32> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").ok()?.flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let cmd = String::from_utf8_lossy(&cmd).replace('\0', " ");
        if cmd.contains("backend-ai") && cmd.contains("start-server") {
            found.push(pid);
        }
    }
    (found.len() == 1).then(|| found[0])
}

/// Per-phase latency samples (µs) and delivery count.
#[derive(Default)]
struct Samples {
    lat: Mutex<Vec<u64>>,
    delivered: AtomicU64,
}

/// Reads one SSE response, recording the latency of every `session_started` event.
async fn subscriber(
    mut resp: reqwest::Response,
    phase: Arc<Mutex<Arc<Samples>>>,
    stop: CancellationToken,
) -> anyhow::Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    loop {
        let chunk = tokio::select! {
            _ = stop.cancelled() => return Ok(()),
            c = resp.chunk() => c?,
        };
        let Some(chunk) = chunk else {
            anyhow::bail!("stream ended")
        };
        let at = now_us();
        buf.extend_from_slice(&chunk);
        while let Some(pos) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let frame: Vec<u8> = buf.drain(..pos + 4).collect();
            let text = String::from_utf8_lossy(&frame);
            let Some(data) = text.lines().find_map(|l| l.strip_prefix("data: ")) else {
                continue;
            };
            let Ok(v) = serde_json::from_str::<Value>(data) else {
                continue;
            };
            let Some(sent) = v["reason"].as_str().and_then(|r| r.parse::<u64>().ok()) else {
                continue;
            };
            let samples = phase.lock().map(|p| p.clone()).ok();
            if let Some(s) = samples {
                s.delivered.fetch_add(1, Ordering::Relaxed);
                if let Ok(mut l) = s.lat.lock() {
                    l.push(at.saturating_sub(sent));
                }
            }
        }
    }
}

/// Publishes `count` events at `rate`/s, round robin over `sessions`, open loop.
async fn publish_phase(
    bus: &Bus,
    sessions: &[Uuid],
    rate: u64,
    count: u64,
    publishers: usize,
) -> (u64, f64) {
    let t0 = Instant::now() + Duration::from_millis(50);
    let wall0 = now_us() + 50_000;
    let errors = Arc::new(AtomicU64::new(0));
    let sessions = Arc::new(sessions.to_vec());
    let mut tasks = Vec::new();
    for w in 0..publishers {
        let bus = bus.clone();
        let sessions = sessions.clone();
        let errors = errors.clone();
        tasks.push(tokio::spawn(async move {
            let mut i = w as u64;
            while i < count {
                let offset_us = i * 1_000_000 / rate.max(1);
                tokio::time::sleep_until((t0 + Duration::from_micros(offset_us)).into()).await;
                let ev = Event::SessionStarted {
                    session_id: sessions[(i as usize) % sessions.len()],
                    creation_id: "bench".into(),
                    reason: (wall0 + offset_us).to_string(),
                };
                if bus.publish_event(ev).await.is_err() {
                    errors.fetch_add(1, Ordering::Relaxed);
                }
                i += publishers as u64;
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    (errors.load(Ordering::Relaxed), t0.elapsed().as_secs_f64())
}

fn pct(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[(((sorted.len() - 1) as f64) * p).round() as usize] as f64 / 1000.0
}

pub async fn run(args: SseArgs) -> anyhow::Result<()> {
    let cfg = Config::load(Some(&args.config))?;
    let db = bai_core::Db::connect(&cfg.db, Duration::from_secs(10)).await?;
    let bus = Bus::connect(
        &cfg.nats,
        "bench-sse",
        BusOptions::default(),
        Duration::from_secs(10),
    )
    .await?;
    let api_pid = args.api_pid.or_else(find_api_pid);
    let rss = || api_pid.and_then(rss_kib);
    let signer = Arc::new(Signer::new(
        &args.endpoint,
        &args.access_key,
        &args.secret_key,
    )?);

    // 1. Sessions.
    let (user, domain): (Uuid, String) = sqlx::query_as(
        "SELECT u.uuid, u.domain_name FROM keypairs k JOIN users u ON k.\"user\" = u.uuid WHERE k.access_key = $1",
    )
    .bind(&args.access_key)
    .fetch_one(db.pool())
    .await?;
    let group: Uuid =
        sqlx::query_scalar("SELECT id FROM groups WHERE domain_name = $1 ORDER BY name LIMIT 1")
            .bind(&domain)
            .fetch_one(db.pool())
            .await?;
    let run_tag = Uuid::new_v4().simple().to_string()[..8].to_string();
    let sessions: Vec<Uuid> = (0..args.sessions.max(1)).map(|_| Uuid::new_v4()).collect();
    for chunk in sessions.chunks(500) {
        let names: Vec<String> = chunk
            .iter()
            .map(|s| format!("bsse-{run_tag}-{}", &s.simple().to_string()[..8]))
            .collect();
        sqlx::query(
            "INSERT INTO kernels (id, session_id, session_name, domain_name, group_id, user_uuid, access_key, \
             occupied_slots, repl_in_port, repl_out_port, stdin_port, stdout_port, status, status_changed) \
             SELECT s, s, n, $3, $4, $5, $6, '{}'::jsonb, 0, 0, 0, 0, 'RUNNING', now() \
             FROM unnest($1::uuid[], $2::text[]) AS t(s, n)",
        )
        .bind(chunk)
        .bind(&names)
        .bind(&domain)
        .bind(group)
        .bind(user)
        .bind(&args.access_key)
        .execute(db.pool())
        .await?;
    }
    let result = measure(&args, &bus, &signer, &sessions, &rss).await;
    let _ = sqlx::query("DELETE FROM kernels WHERE session_id = ANY($1)")
        .bind(&sessions)
        .execute(db.pool())
        .await;
    result
}

async fn measure(
    args: &SseArgs,
    bus: &Bus,
    signer: &Arc<Signer>,
    sessions: &[Uuid],
    rss: &dyn Fn() -> Option<u64>,
) -> anyhow::Result<()> {
    let rss_before = rss();
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .tcp_nodelay(true)
        .build()?;
    let stop = CancellationToken::new();
    let phase = Arc::new(Mutex::new(Arc::new(Samples::default())));

    // 2. Subscribers (50 connection attempts at a time).
    let started = Instant::now();
    let opened: Vec<anyhow::Result<reqwest::Response>> = futures::stream::iter(0..args.subscribers)
        .map(|i| {
            let path = format!(
                "/events/session?sessionId={}&scope=session",
                sessions[i % sessions.len()]
            );
            let req = signer.request(&client, reqwest::Method::GET, &path, None);
            async move {
                let r = req.send().await?;
                anyhow::ensure!(r.status().is_success(), "HTTP {}", r.status());
                Ok(r)
            }
        })
        .buffer_unordered(50)
        .collect()
        .await;
    let mut failed = 0;
    let mut readers = Vec::new();
    for r in opened {
        match r {
            Ok(resp) => readers.push(tokio::spawn(subscriber(resp, phase.clone(), stop.clone()))),
            Err(e) => {
                failed += 1;
                if failed <= 3 {
                    eprintln!("subscriber failed: {e:#}");
                }
            }
        }
    }
    let connect_secs = started.elapsed().as_secs_f64();
    let mut stalled = Vec::new();
    for _ in 0..args.stalled {
        // Kept open, never read.
        match signer
            .request(
                &client,
                reqwest::Method::GET,
                "/events/session?sessionName=*",
                None,
            )
            .send()
            .await
        {
            Ok(r) => stalled.push(r),
            Err(e) => eprintln!("stalled subscriber failed: {e}"),
        }
    }
    println!(
        "connected {} subscribers in {connect_secs:.2} s ({failed} failed), {} stalled",
        readers.len(),
        stalled.len()
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    let rss_connected = rss();

    // 3. Warm-up: one event per session.
    let warm = Arc::new(Samples::default());
    *phase.lock().expect("phase") = warm.clone();
    publish_phase(bus, sessions, 2000, sessions.len() as u64, args.publishers).await;
    let expect_warm = args.subscribers as u64;
    let deadline = Instant::now() + Duration::from_secs(30);
    while warm.delivered.load(Ordering::Relaxed) < expect_warm && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // 4. The two phases, RSS sampled meanwhile.
    let peak = Arc::new(AtomicU64::new(0));
    let sampler = {
        let peak = peak.clone();
        let stop = stop.clone();
        let pid = args.api_pid.or_else(find_api_pid);
        tokio::spawn(async move {
            while !stop.is_cancelled() {
                if let Some(k) = pid.and_then(rss_kib) {
                    peak.fetch_max(k, Ordering::Relaxed);
                }
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    println!(
        "| phase | events/s offered | events | published in s | deliveries expected | delivered | p50 ms | p99 ms | max ms |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    for rate in [args.rate, args.high_rate] {
        let samples = Arc::new(Samples::default());
        *phase.lock().expect("phase") = samples.clone();
        let count = rate * args.seconds;
        let (errors, secs) = publish_phase(bus, sessions, rate, count, args.publishers).await;
        // Each event reaches every subscriber of its session.
        let per_session = args.subscribers as f64 / sessions.len() as f64;
        let expected = (count as f64 * per_session).round() as u64;
        let deadline = Instant::now() + Duration::from_secs(10);
        while samples.delivered.load(Ordering::Relaxed) < expected && Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        let mut lat = samples.lat.lock().map(|l| l.clone()).unwrap_or_default();
        lat.sort_unstable();
        println!(
            "| {} subscribers | {rate} | {count} ({errors} publish errors) | {secs:.2} | {expected} | {} | {:.2} | {:.2} | {:.2} |",
            args.subscribers,
            samples.delivered.load(Ordering::Relaxed),
            pct(&lat, 0.50),
            pct(&lat, 0.99),
            pct(&lat, 1.0),
        );
    }
    stop.cancel();
    let _ = sampler.await;
    for r in readers {
        let _ = r.await;
    }
    drop(stalled);
    let mib = |k: Option<u64>| {
        k.map_or("n/a".to_string(), |k| {
            format!("{:.1} MiB", k as f64 / 1024.0)
        })
    };
    println!(
        "API RSS: before {}, with {} subscribers + {} stalled {}, peak under load {}",
        mib(rss_before),
        args.subscribers,
        args.stalled,
        mib(rss_connected),
        mib(Some(peak.load(Ordering::Relaxed)).filter(|k| *k > 0)),
    );
    Ok(())
}
