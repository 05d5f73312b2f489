//! `bai-bench bus`: the command bus end to end (publish → worker handles → ack → reply),
//! saturated and at a fixed rate, with 1 and 2 workers; and the coalescing layer.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;

use bai_core::{Config, Db};
use bai_events::{Bus, BusOptions, Command, CommandOutcome, CommandReply};
use bai_workers::{WorkerContext, WorkerMetrics, WorkerOptions};

#[derive(clap::Args)]
pub struct BusArgs {
    /// manager.toml to take service addresses from.
    #[arg(long, default_value = "ops/manager.toml")]
    config: std::path::PathBuf,
    /// Commands per saturation run.
    #[arg(long, default_value_t = 20_000)]
    count: usize,
    /// Commands in flight during saturation runs.
    #[arg(long, default_value_t = 256)]
    in_flight: usize,
    /// Fixed-rate run: commands per second and duration.
    #[arg(long, default_value_t = 2_000)]
    rate: u64,
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Coalescing: triggers and scaling groups.
    #[arg(long, default_value_t = 10_000)]
    triggers: usize,
    #[arg(long, default_value_t = 100)]
    groups: usize,
}

struct Stats {
    n: usize,
    secs: f64,
    p50: f64,
    p99: f64,
}

fn percentiles(mut v: Vec<f64>, n: usize, secs: f64) -> Stats {
    v.sort_by(|a, b| a.total_cmp(b));
    let at = |q: f64| {
        v.get(((v.len() as f64 - 1.0) * q).round() as usize)
            .copied()
            .unwrap_or(0.0)
    };
    Stats {
        n,
        secs,
        p50: at(0.50),
        p99: at(0.99),
    }
}

async fn bench_db(cfg: &Config) -> anyhow::Result<Db> {
    // A database of its own, so the benchmark never touches real data.
    let mut admin_cfg = cfg.db.clone();
    admin_cfg.name = "postgres".into();
    let admin = sqlx::PgPool::connect(&admin_cfg.url()).await?;
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = 'bai_bench')")
            .fetch_one(&admin)
            .await?;
    if !exists {
        sqlx::query("CREATE DATABASE bai_bench")
            .execute(&admin)
            .await?;
    }
    admin.close().await;
    let mut c = cfg.db.clone();
    c.name = "bai_bench".into();
    let db = Db::connect(&c, Duration::from_secs(10)).await?;
    db.migrate().await?;
    sqlx::query("TRUNCATE processed_commands, bus_echo_effects")
        .execute(db.pool())
        .await?;
    Ok(db)
}

fn start_workers(
    db: &Db,
    buses: Vec<Bus>,
    stop: &CancellationToken,
) -> Vec<tokio::task::JoinHandle<anyhow::Result<()>>> {
    buses
        .into_iter()
        .map(|bus| {
            let ctx = Arc::new(WorkerContext {
                db: db.clone(),
                bus,
                etcd: None,
                redis: None,
                agent_rpc: None,
                metrics: Arc::new(WorkerMetrics::default()),
            });
            tokio::spawn(bai_workers::run_command_loop(
                ctx,
                WorkerOptions {
                    concurrency: 128,
                    shutdown_grace: Duration::from_secs(5),
                },
                stop.clone(),
            ))
        })
        .collect()
}

fn command(kind: &str, i: usize) -> Command {
    match kind {
        "noop" => Command::Noop,
        _ => Command::Echo {
            payload: format!("b{i}"),
            fail: false,
            delay_ms: 0,
        },
    }
}

async fn saturate(bus: &Bus, kind: &str, count: usize, in_flight: usize) -> Stats {
    let started = Instant::now();
    let lat: Vec<f64> = futures::stream::iter(0..count)
        .map(|i| {
            let bus = bus.clone();
            let cmd = command(kind, i);
            async move {
                let t = Instant::now();
                let out = bus.publish_command(cmd, Duration::from_secs(30)).await;
                assert!(
                    matches!(out, Ok(CommandOutcome::Completed(CommandReply::Ok { .. }))),
                    "{out:?}"
                );
                t.elapsed().as_secs_f64() * 1000.0
            }
        })
        .buffer_unordered(in_flight)
        .collect()
        .await;
    percentiles(lat, count, started.elapsed().as_secs_f64())
}

async fn fixed_rate(bus: &Bus, kind: &str, rate: u64, seconds: u64) -> Stats {
    let total = (rate * seconds) as usize;
    let interval = Duration::from_secs_f64(1.0 / rate as f64);
    let started = Instant::now();
    let mut tasks = Vec::with_capacity(total);
    // Open loop: requests leave on schedule whatever the latency of earlier ones.
    for i in 0..total {
        let due = started + interval * i as u32;
        tokio::time::sleep_until(due.into()).await;
        let bus = bus.clone();
        let cmd = command(kind, i);
        tasks.push(tokio::spawn(async move {
            let t = Instant::now();
            let _ = bus.publish_command(cmd, Duration::from_secs(30)).await;
            t.elapsed().as_secs_f64() * 1000.0
        }));
    }
    let mut lat = Vec::with_capacity(total);
    for t in tasks {
        lat.push(t.await.unwrap_or(f64::MAX));
    }
    percentiles(lat, total, started.elapsed().as_secs_f64())
}

#[derive(Default)]
struct Counting {
    passes: Mutex<HashMap<String, u64>>,
    total: AtomicU64,
}

impl bai_workers::PassRunner for Counting {
    fn run_pass<'a>(&'a self, group: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            if let Ok(mut p) = self.passes.lock() {
                *p.entry(group.to_string()).or_default() += 1;
            }
            self.total.fetch_add(1, Ordering::Relaxed);
            // A short pass, like an empty scheduling round.
            tokio::time::sleep(Duration::from_millis(5)).await;
            Ok(())
        })
    }
}

pub async fn run(args: BusArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(Some(&args.config))?;
    cfg.nats.prefix = format!("bench{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let db = bench_db(&cfg).await?;
    let opts = BusOptions::default();
    let bus = Bus::connect(&cfg.nats, "bench", opts.clone(), Duration::from_secs(10)).await?;

    println!("| workers | command | mode | commands | seconds | cmd/s | p50 ms | p99 ms |");
    println!("|---|---|---|---|---|---|---|---|");
    for workers in [1usize, 2] {
        let stop = CancellationToken::new();
        let mut buses = Vec::new();
        for w in 0..workers {
            buses.push(
                Bus::connect(
                    &cfg.nats,
                    &format!("worker{w}"),
                    opts.clone(),
                    Duration::from_secs(10),
                )
                .await?,
            );
        }
        let handles = start_workers(&db, buses, &stop);
        // Warm-up: connections, consumer, prepared statements.
        saturate(&bus, "echo", 500, 64).await;
        for kind in ["noop", "echo"] {
            let s = saturate(&bus, kind, args.count, args.in_flight).await;
            println!(
                "| {workers} | {kind} | saturated ({} in flight) | {} | {:.2} | {:.0} | {:.2} | {:.2} |",
                args.in_flight, s.n, s.secs, s.n as f64 / s.secs, s.p50, s.p99
            );
            let f = fixed_rate(&bus, kind, args.rate, args.seconds).await;
            println!(
                "| {workers} | {kind} | fixed {} /s | {} | {:.2} | {:.0} | {:.2} | {:.2} |",
                args.rate,
                f.n,
                f.secs,
                f.n as f64 / f.secs,
                f.p50,
                f.p99
            );
        }
        stop.cancel();
        for h in handles {
            let _ = h.await;
        }
    }

    // Coalescing: a burst of triggers over many groups, two trigger consumers.
    let runner = Arc::new(Counting::default());
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for w in 0..2 {
        let b = Bus::connect(
            &cfg.nats,
            &format!("sched{w}"),
            opts.clone(),
            Duration::from_secs(10),
        )
        .await?;
        loops.push(tokio::spawn(bai_workers::run_trigger_loop(
            b,
            runner.clone(),
            8,
            Arc::new(WorkerMetrics::default()),
            stop.clone(),
        )));
    }
    let started = Instant::now();
    let queued: usize = futures::stream::iter(0..args.triggers)
        .map(|i| {
            let bus = bus.clone();
            let g = format!("sg-{}", i % args.groups);
            async move { usize::from(bus.request_schedule(&g).await.unwrap_or(false)) }
        })
        .buffer_unordered(64)
        .collect::<Vec<_>>()
        .await
        .into_iter()
        .sum();
    let burst = started.elapsed().as_secs_f64();
    // Wait until every queued trigger became a pass.
    let deadline = Instant::now() + Duration::from_secs(30);
    while (runner.total.load(Ordering::Relaxed) as usize) < queued && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.cancel();
    for l in loops {
        let _ = l.await;
    }
    let passes = runner.total.load(Ordering::Relaxed);
    let max_per_group = runner
        .passes
        .lock()
        .map(|p| p.values().copied().max().unwrap_or(0))
        .unwrap_or(0);
    println!();
    println!("| triggers issued | groups | burst seconds | triggers queued | passes run | max passes per group |");
    println!("|---|---|---|---|---|---|");
    println!(
        "| {} | {} | {:.2} | {} | {} | {} |",
        args.triggers, args.groups, burst, queued, passes, max_per_group
    );
    bus.delete_streams().await?;
    Ok(())
}
