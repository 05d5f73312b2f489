//! `bai-bench sessions`: the session benchmarks of issue 7, against a whole manager run in
//! this process (API on a local port, a worker's command loop, and — from phase B on —
//! the scheduler, the agent-event ingest and simulated agents with zero start delay),
//! over a fresh database, private NATS streams, RabbitMQ names and etcd namespace.
//!
//! * **A. enqueue**: signed `POST /session` with `enqueueOnly: true`, as the official
//!   client sends it. Closed loop (`--connections` back-to-back senders) for the saturated
//!   throughput, then an open loop at `--rate` requests/s whose latencies count from each
//!   request's *scheduled* start (no coordinated omission). The scheduler is not running
//!   in this phase (there are no agents; the sessions stay PENDING and are cancelled
//!   before phase B).
//! * **B. create → RUNNING**: `POST /session` without `enqueueOnly` (the request returns
//!   when the session started) at `--start-rate` sessions/s in an open loop; latency =
//!   scheduled send → 201 with status RUNNING.
//! * **C. burst**: `--burst` enqueue-only creations as fast as `--connections` senders go;
//!   reported: scheduling passes executed (and triggers consumed) until every one of them
//!   is RUNNING, and how long that took.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use crate::scratch::drop_db;
use crate::sign::Signer;
use bai_agent::{SimConfig, SimFleet};
use bai_agent_proto::{amqp, Names};
use bai_core::etcd::Etcd;
use bai_core::redis::redis;
use bai_core::{Config, Db};
use bai_events::{Bus, BusOptions};
use bai_workers::agents::{AgentIngestOptions, AgentsRuntime};
use bai_workers::{WorkerContext, WorkerMetrics, WorkerOptions};

#[derive(clap::Args, Debug, Clone)]
pub struct SessionsArgs {
    #[arg(long, default_value = "ops/manager.toml")]
    config: std::path::PathBuf,
    /// Seconds of each measured phase of A and B.
    #[arg(long, default_value_t = 10)]
    seconds: u64,
    /// Concurrent senders of the closed-loop phases (A saturated, C burst).
    #[arg(long, default_value_t = 64)]
    connections: usize,
    /// Offered load of A's fixed-rate phase (requests/s).
    #[arg(long, default_value_t = 500)]
    rate: u64,
    /// Offered load of B (sessions/s).
    #[arg(long, default_value_t = 100)]
    start_rate: u64,
    /// Simulated agents of B and C.
    #[arg(long, default_value_t = 20)]
    agents: usize,
    /// Creations of C.
    #[arg(long, default_value_t = 1000)]
    burst: usize,
    /// Command-loop concurrency of the worker.
    #[arg(long, default_value_t = 64)]
    worker_concurrency: usize,
    /// Safety tick of the scheduler (the trigger of each creation is what normally runs it).
    #[arg(long, default_value_t = 10)]
    tick_seconds: u64,
    /// Phases to run: any of `a`, `b`, `c`.
    #[arg(long, default_value = "abc")]
    phases: String,
}

const ADMIN_EMAIL: &str = "admin@lablup.com";

/// The body client 21.3.6 sends for `backend.ai start` (api-rest.md §2.1).
fn create_body(name: &str, enqueue_only: bool) -> Vec<u8> {
    json!({
        "tag": null, "name": name,
        "config": {"mounts": [], "environ": {}, "resources": {"cpu": "1", "mem": "256m"},
                   "resource_opts": {}, "scalingGroup": null, "mount_map": {}, "preopen_ports": []},
        "clusterSize": 1, "clusterMode": "single-node", "starts_at": null,
        "bootstrap_script": null, "owner_access_key": null, "domain": "default",
        "group": "default", "type": "interactive", "enqueueOnly": enqueue_only,
        "maxWaitSeconds": if enqueue_only { 0 } else { 60 }, "reuseIfExists": true,
        "startupCommand": null, "image": "python",
    })
    .to_string()
    .into_bytes()
}

/// Sends one creation; `Ok(status)` for a 201.
async fn create_one(
    client: &reqwest::Client,
    signer: &Signer,
    name: &str,
    enqueue_only: bool,
) -> anyhow::Result<String> {
    let resp = signer
        .request(
            client,
            reqwest::Method::POST,
            "/session",
            Some(create_body(name, enqueue_only).into()),
        )
        .send()
        .await?;
    let status = resp.status();
    let bytes = resp.bytes().await?;
    if status.as_u16() != 201 {
        anyhow::bail!("HTTP {status}: {}", String::from_utf8_lossy(&bytes));
    }
    let v: Value = serde_json::from_slice(&bytes)?;
    Ok(v["status"].as_str().unwrap_or_default().to_string())
}

fn percentile(sorted: &[u64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let idx = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[idx.min(sorted.len() - 1)] as f64 / 1000.0
}

#[derive(Default)]
struct Outcome {
    ok: u64,
    errors: u64,
    first_error: Option<String>,
    seconds: f64,
    lat_us: Vec<u64>,
}

impl Outcome {
    fn row(&mut self, label: &str) -> String {
        self.lat_us.sort_unstable();
        let s = format!(
            "| {label} | {} | {} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
            self.ok,
            self.errors,
            self.seconds,
            self.ok as f64 / self.seconds,
            percentile(&self.lat_us, 0.5),
            percentile(&self.lat_us, 0.99),
            self.lat_us.last().copied().unwrap_or(0) as f64 / 1000.0,
        );
        if let Some(e) = &self.first_error {
            eprintln!("{label}: first error: {e}");
        }
        s
    }
}

/// Closed loop: `conns` senders, back to back, for `seconds` (or `max` requests).
async fn closed_loop(
    signer: Arc<Signer>,
    client: reqwest::Client,
    conns: usize,
    seconds: u64,
    max: usize,
    prefix: &str,
    enqueue_only: bool,
) -> Outcome {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let counter = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..conns {
        let (signer, client, counter, prefix) = (
            signer.clone(),
            client.clone(),
            counter.clone(),
            prefix.to_string(),
        );
        tasks.push(tokio::spawn(async move {
            let mut o = Outcome::default();
            loop {
                let n = counter.fetch_add(1, Ordering::Relaxed);
                if n >= max || Instant::now() >= deadline {
                    break;
                }
                let t = Instant::now();
                match create_one(&client, &signer, &format!("{prefix}{n}"), enqueue_only).await {
                    Ok(_) => {
                        o.ok += 1;
                        o.lat_us.push(t.elapsed().as_micros() as u64);
                    }
                    Err(e) => {
                        o.errors += 1;
                        o.first_error.get_or_insert(e.to_string());
                    }
                }
            }
            o
        }));
    }
    let mut all = Outcome::default();
    for t in tasks {
        if let Ok(o) = t.await {
            all.ok += o.ok;
            all.errors += o.errors;
            all.lat_us.extend(o.lat_us);
            if all.first_error.is_none() {
                all.first_error = o.first_error;
            }
        }
    }
    all.seconds = start.elapsed().as_secs_f64();
    all
}

/// Open loop: requests scheduled at `rate`/s for `seconds`; latency from the scheduled
/// start; `expect` = the status a success must report.
async fn open_loop(
    signer: Arc<Signer>,
    client: reqwest::Client,
    rate: u64,
    seconds: u64,
    prefix: &str,
    enqueue_only: bool,
    expect: &'static str,
) -> Outcome {
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let start = Instant::now();
    // Bounds the in-flight requests so a stalled server cannot exhaust sockets.
    let inflight = Arc::new(Semaphore::new(4096));
    let mut tasks = Vec::with_capacity(total);
    for i in 0..total {
        let scheduled = start + interval * i as u32;
        tokio::time::sleep_until(scheduled.into()).await;
        let Ok(permit) = inflight.clone().acquire_owned().await else {
            break;
        };
        let (signer, client, name) = (signer.clone(), client.clone(), format!("{prefix}{i}"));
        tasks.push(tokio::spawn(async move {
            let r = create_one(&client, &signer, &name, enqueue_only).await;
            drop(permit);
            (scheduled.elapsed(), r)
        }));
    }
    let mut o = Outcome::default();
    for t in tasks {
        match t.await {
            Ok((lat, Ok(status))) if status == expect => {
                o.ok += 1;
                o.lat_us.push(lat.as_micros() as u64);
            }
            Ok((_, Ok(status))) => {
                o.errors += 1;
                o.first_error
                    .get_or_insert(format!("status {status}, expected {expect}"));
            }
            Ok((_, Err(e))) => {
                o.errors += 1;
                o.first_error.get_or_insert(e.to_string());
            }
            Err(e) => {
                o.errors += 1;
                o.first_error.get_or_insert(e.to_string());
            }
        }
    }
    o.seconds = start.elapsed().as_secs_f64();
    o
}

async fn fresh_db(cfg: &Config, name: &str, etcd: &Etcd) -> anyhow::Result<Db> {
    let db = crate::scratch::create_migrated_db(cfg, name).await?;
    bai_core::fixtures::Fixture::read(std::path::Path::new("ops/fixtures/example.json"))?
        .populate(&db, Some(etcd))
        .await?;
    sqlx::query("UPDATE keypair_resource_policies SET max_concurrent_sessions = 100000000")
        .execute(db.pool())
        .await?;
    Ok(db)
}

async fn count_status(db: &Db, like: &str, status: &str) -> anyhow::Result<i64> {
    Ok(sqlx::query_scalar(
        "SELECT count(*) FROM kernels WHERE session_name LIKE $1 AND status::text = $2",
    )
    .bind(like)
    .bind(status)
    .fetch_one(db.pool())
    .await?)
}

pub async fn run(args: SessionsArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(Some(&args.config))?;
    // Only when asked (RUST_LOG): the worker's and the API's warnings explain slow phases.
    if std::env::var_os("RUST_LOG").is_some() {
        bai_core::telemetry::init(&cfg.logging);
    }
    let tag = Uuid::new_v4().simple().to_string()[..10].to_string();
    let prefix = format!("bsess{tag}");
    let db_name = format!("bai_bench_sess_{tag}");
    cfg.nats.prefix = prefix.clone();
    cfg.rabbitmq.prefix = prefix.clone();
    cfg.etcd.namespace = prefix.clone();
    cfg.db.name = db_name.clone();
    let etcd = Etcd::connect(&cfg.etcd, Duration::from_secs(10)).await?;
    let db = fresh_db(&cfg, &db_name, &etcd).await?;
    // The API and the worker are separate processes in production, each with its own pool
    // of `db.max-connections`; sharing one pool here would halve both.
    let api_db = Db::connect(&cfg.db, Duration::from_secs(10)).await?;
    let redis_pool = bai_core::redis::connect(&cfg.redis, Duration::from_secs(10)).await?;
    let (ak, sk) = bai_core::keypair::generate_keypair();
    sqlx::query(
        "INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, rate_limit, \
         num_queries, concurrency_used, \"user\", resource_policy) \
         SELECT email, $2, $3, true, true, 2000000000, 0, 0, uuid, 'default' FROM users WHERE email = $1",
    )
    .bind(ADMIN_EMAIL)
    .bind(&ak)
    .bind(&sk)
    .execute(db.pool())
    .await?;

    let stop = CancellationToken::new();
    let bus_opts = BusOptions::default();
    let api_bus = Bus::connect(
        &cfg.nats,
        "bench-api",
        bus_opts.clone(),
        Duration::from_secs(10),
    )
    .await?;
    api_bus.ensure_streams().await?;
    let worker_bus =
        Bus::connect(&cfg.nats, "bench-worker", bus_opts, Duration::from_secs(10)).await?;
    let rpc = |name: &'static str| {
        let cfg = cfg.clone();
        async move {
            anyhow::Ok(Arc::new(
                bai_agent_proto::AgentRpcClient::connect(
                    &cfg.rabbitmq.url,
                    &cfg.rabbitmq.prefix,
                    name,
                    bai_agent_proto::RpcClientOptions::default(),
                )
                .await?,
            ))
        }
    };
    let state = bai_api::AppState::new(
        cfg.clone(),
        api_db.clone(),
        redis_pool.clone(),
        etcd.clone(),
        api_bus.clone(),
    )
    .with_agent_rpc(rpc("bench-api-rpc").await?);
    let app = bai_api::Application::build(state, "127.0.0.1:0".parse()?).await?;
    let addr = app.local_addr()?;
    tokio::spawn(app.run(stop.clone()));
    let metrics = Arc::new(WorkerMetrics::default());
    let ctx = Arc::new(WorkerContext {
        db: db.clone(),
        bus: worker_bus.clone(),
        etcd: Some(etcd.clone()),
        redis: Some(redis_pool.clone()),
        agent_rpc: Some(rpc("bench-worker-rpc").await?),
        metrics: metrics.clone(),
    });
    tokio::spawn(bai_workers::run_command_loop(
        ctx.clone(),
        WorkerOptions {
            concurrency: args.worker_concurrency,
            ..Default::default()
        },
        stop.clone(),
    ));

    let signer = Arc::new(Signer::new(&format!("http://{addr}"), &ak, &sk)?);
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(1024)
        .build()?;
    // Warm-up: connections, caches, prepared statements.
    let mut warm = closed_loop(signer.clone(), client.clone(), 8, 30, 200, "warm-", true).await;
    anyhow::ensure!(warm.ok > 0, "warm-up failed: {:?}", warm.first_error.take());

    println!("| phase | ok | errors | seconds | sessions/s | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|---|---|---|---|");
    let mut fleet = None;
    let names = Names::new(&prefix);
    let mut agent_ids = Vec::new();
    // The phases run in a block so that everything is cleaned up even when one fails.
    let outcome: anyhow::Result<()> = async {
        if args.phases.contains('a') {
            let mut sat = closed_loop(
                signer.clone(),
                client.clone(),
                args.connections,
                args.seconds,
                usize::MAX,
                "sat-",
                true,
            )
            .await;
            println!(
                "{}",
                sat.row(&format!(
                    "A enqueue, saturated ({} connections)",
                    args.connections
                ))
            );
            let mut fixed = open_loop(
                signer.clone(),
                client.clone(),
                args.rate,
                args.seconds,
                "fix-",
                true,
                "PENDING",
            )
            .await;
            println!(
                "{}",
                fixed.row(&format!("A enqueue, fixed {} req/s", args.rate))
            );
        }
        // Phase A may leave create commands queued behind the replies it timed out on:
        // wait until the inserts stop (no new kernel row for 2 s), so that none of them
        // lands in phase B's scheduler.
        let mut last = -1i64;
        let mut still = 0;
        while still < 10 {
            let n: i64 = sqlx::query_scalar("SELECT count(*) FROM kernels")
                .fetch_one(db.pool())
                .await
                .unwrap_or(-1);
            still = if n == last { still + 1 } else { 0 };
            last = n;
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        // Phase A's sessions would otherwise all be scheduled now.
        sqlx::query(
            "UPDATE kernels SET status = 'CANCELLED', status_changed = now(), terminated_at = now() \
             WHERE status = 'PENDING'",
        )
        .execute(db.pool())
        .await?;

        if args.phases.contains('b') || args.phases.contains('c') {
            let mut opts = AgentIngestOptions::from_config(&cfg);
            opts.prefix = prefix.clone();
            opts.redis_prefix = format!("{prefix}:");
            let rt = AgentsRuntime::new(ctx.clone(), opts)?;
            tokio::spawn(bai_workers::agents::run(rt, stop.clone()));
            let conn = amqp::connect(&cfg.rabbitmq.url, "bench", Duration::from_secs(10)).await?;
            let t = Instant::now();
            while amqp::queue_counts(&conn, &names.lifecycle_queue())
                .await?
                .is_none_or(|c| c.1 == 0)
            {
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(30),
                    "ingest did not start"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            let _ = conn.close(200, "bye").await;
            let mut sim = SimConfig::new(args.agents, &cfg.rabbitmq.url, &prefix);
            sim.id_prefix = format!("i-bsess-{}-", &tag[..6]);
            sim.start_delay = Duration::ZERO;
            sim.slots = [
                ("cpu".to_string(), "1024".to_string()),
                ("mem".to_string(), (1u64 << 42).to_string()),
            ]
            .into();
            let f = SimFleet::start(sim).await?;
            agent_ids = f.agent_ids();
            fleet = Some(f);
            let t = Instant::now();
            loop {
                let alive: i64 =
                    sqlx::query_scalar("SELECT count(*) FROM agents WHERE status = 'ALIVE'")
                        .fetch_one(db.pool())
                        .await?;
                if alive >= args.agents as i64 {
                    break;
                }
                anyhow::ensure!(
                    t.elapsed() < Duration::from_secs(60),
                    "agents did not register"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::spawn(bai_workers::run_trigger_loop(
                worker_bus.clone(),
                Arc::new(bai_workers::sessions::SessionScheduler::new(ctx.clone())),
                4,
                metrics.clone(),
                stop.clone(),
            ));
            tokio::spawn(bai_workers::run_tick_loop(
                worker_bus.clone(),
                Duration::from_secs(args.tick_seconds.max(1)),
                || Box::pin(async { Ok(vec!["default".to_string()]) }),
                stop.clone(),
            ));
            // Warm the start path once.
            create_one(&client, &signer, "warm-start", false).await?;
        }
        if args.phases.contains('b') {
            let mut o = open_loop(
                signer.clone(),
                client.clone(),
                args.start_rate,
                args.seconds,
                "run-",
                false,
                "RUNNING",
            )
            .await;
            println!(
                "{}",
                o.row(&format!(
                    "B create → RUNNING, fixed {} sessions/s ({} simulated agents)",
                    args.start_rate, args.agents
                ))
            );
        }
        if args.phases.contains('c') {
            // Let earlier passes drain so the count covers the burst only.
            tokio::time::sleep(Duration::from_secs(1)).await;
            let passes0 = metrics.passes.load(Ordering::Relaxed);
            let triggers0 = metrics.triggers.load(Ordering::Relaxed);
            let t = Instant::now();
            let mut o = closed_loop(
                signer.clone(),
                client.clone(),
                args.connections,
                3600,
                args.burst,
                "burst-",
                true,
            )
            .await;
            let enqueued_s = t.elapsed().as_secs_f64();
            let passes_enq = metrics.passes.load(Ordering::Relaxed) - passes0;
            loop {
                // A polling read may lose a serialization race with the workers; retry.
                let Ok(running) = count_status(&db, "burst-%", "RUNNING").await else {
                    continue;
                };
                if running >= o.ok as i64 {
                    break;
                }
                if t.elapsed() > Duration::from_secs(300) {
                    eprintln!("burst: only {running} of {} RUNNING after 300 s", o.ok);
                    break;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            let all_s = t.elapsed().as_secs_f64();
            let passes = metrics.passes.load(Ordering::Relaxed) - passes0;
            let triggers = metrics.triggers.load(Ordering::Relaxed) - triggers0;
            println!("{}", o.row(&format!("C burst of {} enqueues", args.burst)));
            println!();
            println!("| burst enqueues | enqueued in s | all RUNNING after s | scheduling passes | passes while enqueueing | triggers consumed |");
            println!("|---|---|---|---|---|---|");
            println!(
                "| {} | {enqueued_s:.2} | {all_s:.2} | {passes} | {passes_enq} | {triggers} |",
                o.ok
            );
        }

        Ok::<(), anyhow::Error>(())
    }
    .await;

    // Clean up everything this run created.
    stop.cancel();
    if let Some(f) = fleet {
        f.stop().await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok(conn) =
        amqp::connect(&cfg.rabbitmq.url, "bench-cleanup", Duration::from_secs(10)).await
    {
        let _ = amqp::delete_topology(&conn, &names, &agent_ids).await;
        let _ = conn.close(200, "bye").await;
    }
    {
        let mut c = redis_pool.get().await?;
        let mut keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut *c)
            .await?;
        keys.push(format!("rlim:{ak}"));
        keys.push(format!("kp:{ak}:num_queries"));
        let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut *c).await?;
    }
    let _ = etcd.delete("", true).await;
    api_bus.delete_streams().await?;
    api_db.pool().close().await;
    drop_db(&cfg, db, &db_name).await;
    outcome
}
