//! `bai-bench agents`: N simulated agents heartbeating against the ingest worker —
//! the worker's CPU, database writes per minute in steady state (target: zero) and the
//! time to detect a lost agent. `bai-bench agent-rpc`: no-op RPC round trips.
//!
//! The simulated fleet runs in a child process (this binary's hidden `sim-child`
//! subcommand), so the CPU measured with `getrusage` in this process is the ingest
//! worker's alone (AMQP consumer, Redis, PostgreSQL, liveness monitor).

use std::io::{BufRead, Write};
use std::process::Stdio;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_agent::{SimConfig, SimFleet};
use bai_agent_proto::{amqp, AgentRpcClient, Names, RpcClientOptions};
use bai_core::redis::redis;
use bai_core::{Config, Db};
use bai_events::{Bus, BusOptions};
use bai_workers::agents::{AgentIngestOptions, AgentsRuntime};
use bai_workers::{WorkerContext, WorkerMetrics};

use crate::scratch::drop_db;

#[derive(clap::Args)]
pub struct AgentsArgs {
    /// manager.toml to take service addresses from.
    #[arg(long, default_value = "ops/manager.toml")]
    config: std::path::PathBuf,
    /// Simulated agents.
    #[arg(long, default_value_t = 1000)]
    count: usize,
    /// Seconds between heartbeats of each agent.
    #[arg(long, default_value_t = 3.0)]
    heartbeat_interval: f64,
    /// Seconds of silence before an agent is LOST (default: manager.heartbeat-timeout).
    #[arg(long)]
    heartbeat_timeout: Option<f64>,
    /// Seconds of steady state to measure.
    #[arg(long, default_value_t = 60)]
    seconds: u64,
    /// Agents killed one after another to time lost-agent detection.
    #[arg(long, default_value_t = 3)]
    lost_samples: usize,
}

#[derive(clap::Args)]
pub struct RpcArgs {
    #[arg(long, default_value = "ops/manager.toml")]
    config: std::path::PathBuf,
    /// Round trips per run.
    #[arg(long, default_value_t = 5000)]
    calls: usize,
    /// Calls in flight in the concurrent run.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

/// The simulated fleet as a child process, driven over stdin: `kill <agent-id>`, `stop`.
#[derive(clap::Args)]
pub struct SimChildArgs {
    #[arg(long)]
    count: usize,
    #[arg(long)]
    url: String,
    #[arg(long)]
    prefix: String,
    #[arg(long)]
    id_prefix: String,
    #[arg(long)]
    heartbeat_interval: f64,
}

fn cpu_seconds() -> f64 {
    // SAFETY: getrusage fills the struct we own; no other memory is touched.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    unsafe {
        libc::getrusage(libc::RUSAGE_SELF, &mut ru);
    }
    let t = |tv: libc::timeval| tv.tv_sec as f64 + tv.tv_usec as f64 / 1e6;
    t(ru.ru_utime) + t(ru.ru_stime)
}

fn percentile(sorted: &[f64], q: f64) -> f64 {
    sorted
        .get(((sorted.len() as f64 - 1.0) * q).round() as usize)
        .copied()
        .unwrap_or(0.0)
}

async fn bench_db(cfg: &Config, name: &str) -> anyhow::Result<Db> {
    let db = crate::scratch::create_migrated_db(cfg, name).await?;
    sqlx::query("INSERT INTO scaling_groups (name, description, is_active, driver, scheduler) VALUES ('default', 'bench', true, 'static', 'fifo')")
        .execute(db.pool())
        .await?;
    Ok(db)
}

/// (inserts, updates, deletes) of the `agents` table from the statistics collector.
async fn agents_table_writes(db: &Db) -> anyhow::Result<(i64, i64, i64)> {
    let mut conn = db.pool().acquire().await?;
    sqlx::query("SELECT pg_stat_clear_snapshot()")
        .execute(&mut *conn)
        .await?;
    Ok(sqlx::query_as(
        "SELECT n_tup_ins, n_tup_upd, n_tup_del FROM pg_stat_user_tables WHERE relname = 'agents'",
    )
    .fetch_one(&mut *conn)
    .await?)
}

async fn alive_agents(db: &Db, id_prefix: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM agents WHERE id LIKE $1 AND status = 'ALIVE'")
            .bind(format!("{id_prefix}%"))
            .fetch_one(db.pool())
            .await?,
    )
}

pub async fn run_agents(args: AgentsArgs) -> anyhow::Result<()> {
    let cfg = Config::load(Some(&args.config))?;
    let tag = Uuid::new_v4().simple().to_string()[..10].to_string();
    let prefix = format!("bench{tag}");
    let db_name = format!("bai_bench_agents_{tag}");
    let id_prefix = format!("i-bench-{}-", &tag[..6]);
    let timeout = args
        .heartbeat_timeout
        .unwrap_or(cfg.manager.heartbeat_timeout);
    let db = bench_db(&cfg, &db_name).await?;
    let mut nats = cfg.nats.clone();
    nats.prefix = prefix.clone();
    let bus = Bus::connect(
        &nats,
        "bench-agents",
        BusOptions::default(),
        Duration::from_secs(10),
    )
    .await?;
    let redis_pool = bai_core::redis::connect(&cfg.redis, Duration::from_secs(10)).await?;
    let ctx = Arc::new(WorkerContext {
        db: db.clone(),
        bus: bus.clone(),
        etcd: None,
        redis: Some(redis_pool.clone()),
        agent_rpc: None,
        metrics: Arc::new(WorkerMetrics::default()),
    });
    let mut opts = AgentIngestOptions::from_config(&cfg);
    opts.prefix = prefix.clone();
    opts.redis_prefix = format!("{prefix}:");
    opts.heartbeat_timeout = Duration::from_secs_f64(timeout);
    let rt = AgentsRuntime::new(ctx, opts)?;
    let stop = CancellationToken::new();
    let ingest = tokio::spawn(bai_workers::agents::run(rt.clone(), stop.clone()));
    let names = Names::new(&prefix);
    let conn = amqp::connect(&cfg.rabbitmq.url, "bench", Duration::from_secs(10)).await?;
    // Wait for the ingest's consumers.
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

    eprintln!(
        "starting {} simulated agents (child process)...",
        args.count
    );
    let mut child = tokio::process::Command::new(std::env::current_exe()?)
        .args([
            "sim-child",
            "--count",
            &args.count.to_string(),
            "--url",
            &cfg.rabbitmq.url,
            "--prefix",
            &prefix,
            "--id-prefix",
            &id_prefix,
            "--heartbeat-interval",
            &args.heartbeat_interval.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    let mut child_in = child
        .stdin
        .take()
        .ok_or_else(|| anyhow::anyhow!("no child stdin"))?;
    let mut child_out = BufReader::new(
        child
            .stdout
            .take()
            .ok_or_else(|| anyhow::anyhow!("no child stdout"))?,
    )
    .lines();
    let started = Instant::now();
    while child_out.next_line().await?.as_deref() != Some("ready") {}
    let fleet_up = started.elapsed();
    while alive_agents(&db, &id_prefix).await? < args.count as i64 {
        anyhow::ensure!(
            started.elapsed() < Duration::from_secs(120),
            "agents did not all register"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let registered = started.elapsed();
    eprintln!(
        "all {} agents ALIVE after {:.1} s; warming up...",
        args.count,
        registered.as_secs_f64()
    );
    // Backends flush table statistics when idle for 10 s at most: let the registration
    // writes reach pg_stat before the first snapshot.
    tokio::time::sleep(Duration::from_secs(12)).await;

    let m = &rt.metrics;
    let (ins0, upd0, del0) = agents_table_writes(&db).await?;
    let (hb0, rd0, wr0) = (
        m.heartbeats.load(Ordering::Relaxed),
        m.heartbeat_db_reads.load(Ordering::Relaxed),
        m.heartbeat_db_writes.load(Ordering::Relaxed),
    );
    let cpu0 = cpu_seconds();
    let t0 = Instant::now();
    eprintln!("measuring steady state for {} s...", args.seconds);
    tokio::time::sleep(Duration::from_secs(args.seconds)).await;
    let wall = t0.elapsed().as_secs_f64();
    let cpu = cpu_seconds() - cpu0;
    let (hb1, rd1, wr1) = (
        m.heartbeats.load(Ordering::Relaxed),
        m.heartbeat_db_reads.load(Ordering::Relaxed),
        m.heartbeat_db_writes.load(Ordering::Relaxed),
    );
    // Let any write of the window reach the statistics before reading them.
    tokio::time::sleep(Duration::from_secs(11)).await;
    let (ins1, upd1, del1) = agents_table_writes(&db).await?;
    let stat_wall = t0.elapsed().as_secs_f64();
    let per_min = |n: i64, secs: f64| n as f64 * 60.0 / secs;

    // Lost-agent detection: kill agents one at a time.
    let mut from_kill = Vec::new();
    let mut from_last_beat = Vec::new();
    for i in 0..args.lost_samples.min(args.count) {
        let victim = format!("{id_prefix}{i:05}");
        child_in
            .write_all(format!("kill {victim}\n").as_bytes())
            .await?;
        child_in.flush().await?;
        while child_out.next_line().await?.as_deref() != Some(&format!("killed {victim}")) {}
        let killed = Instant::now();
        let last_seen: Option<f64> = {
            let mut c = redis_pool.get().await?;
            redis::cmd("ZSCORE")
                .arg(rt.keys.last_seen())
                .arg(&victim)
                .query_async(&mut *c)
                .await?
        };
        loop {
            let status: Option<String> =
                sqlx::query_scalar("SELECT status::text FROM agents WHERE id = $1")
                    .bind(&victim)
                    .fetch_optional(db.pool())
                    .await?;
            if status.as_deref() == Some("LOST") {
                break;
            }
            anyhow::ensure!(
                killed.elapsed() < Duration::from_secs(60),
                "{victim} never became LOST"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        from_kill.push(killed.elapsed().as_secs_f64());
        if let Some(ls) = last_seen {
            from_last_beat.push(bai_workers::agents::registry::now_secs() - ls);
        }
    }

    // Clean up.
    let _ = child_in.write_all(b"stop\n").await;
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;
    let _ = child.kill().await;
    stop.cancel();
    let _ = ingest.await;
    let ids: Vec<String> = (0..args.count)
        .map(|i| format!("{id_prefix}{i:05}"))
        .collect();
    amqp::delete_topology(&conn, &names, &ids).await?;
    let _ = conn.close(200, "bye").await;
    {
        let mut c = redis_pool.get().await?;
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{prefix}:*"))
            .query_async(&mut *c)
            .await?;
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL").arg(keys).query_async(&mut *c).await?;
        }
    }
    bus.delete_streams().await?;
    drop_db(&cfg, db, &db_name).await;

    let fmt_s = |v: &[f64]| {
        if v.is_empty() {
            return "n/a".to_string();
        }
        let mut s = v.to_vec();
        s.sort_by(|a, b| a.total_cmp(b));
        format!(
            "min {:.2} s, median {:.2} s, max {:.2} s",
            s[0],
            percentile(&s, 0.5),
            s[s.len() - 1]
        )
    };
    println!(
        "\nAgents: {} simulated agents, heartbeat every {} s, heartbeat-timeout {} s, liveness check every 1 s",
        args.count, args.heartbeat_interval, timeout
    );
    println!("{:<52} value", "metric");
    println!(
        "{:<52} {:.1} s",
        "fleet up (queues + consumers declared)",
        fleet_up.as_secs_f64()
    );
    println!(
        "{:<52} {:.1} s",
        "all agents registered (rows ALIVE)",
        registered.as_secs_f64()
    );
    println!("{:<52} {:.0} s", "steady-state window", wall);
    println!(
        "{:<52} {:.1}",
        "heartbeats handled / s",
        (hb1 - hb0) as f64 / wall
    );
    println!(
        "{:<52} {:.1} % of one core ({:.2} CPU-s)",
        "ingest worker CPU",
        cpu / wall * 100.0,
        cpu
    );
    println!(
        "{:<52} {:.2} (ins {}, upd {}, del {} in {:.0} s)",
        "agents table writes / min (pg_stat_user_tables)",
        per_min((ins1 - ins0) + (upd1 - upd0) + (del1 - del0), stat_wall),
        ins1 - ins0,
        upd1 - upd0,
        del1 - del0,
        stat_wall
    );
    println!(
        "{:<52} {:.2}",
        "agents row writes / min (ingest counter)",
        per_min((wr1 - wr0) as i64, wall)
    );
    println!(
        "{:<52} {:.2}",
        "agents row reads / min (heartbeat cache misses)",
        per_min((rd1 - rd0) as i64, wall)
    );
    println!(
        "{:<52} {}",
        "lost-agent detection, from the kill",
        fmt_s(&from_kill)
    );
    println!(
        "{:<52} {}",
        "lost-agent detection, from its last heartbeat",
        fmt_s(&from_last_beat)
    );
    Ok(())
}

/// The child process: runs the fleet, obeys `kill <id>` and `stop` on stdin.
pub async fn run_sim_child(args: SimChildArgs) -> anyhow::Result<()> {
    let mut cfg = SimConfig::new(args.count, &args.url, &args.prefix);
    cfg.id_prefix = args.id_prefix;
    cfg.heartbeat_interval = Duration::from_secs_f64(args.heartbeat_interval);
    let fleet = SimFleet::start(cfg).await?;
    println!("ready");
    std::io::stdout().flush()?;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    while let Some(line) = rx.recv().await {
        match line.split_once(' ') {
            Some(("kill", id)) => {
                fleet.kill(id);
                println!("killed {id}");
                std::io::stdout().flush()?;
            }
            _ if line == "stop" => break,
            _ => {}
        }
    }
    fleet.stop().await;
    Ok(())
}

pub async fn run_rpc(args: RpcArgs) -> anyhow::Result<()> {
    let cfg = Config::load(Some(&args.config))?;
    let prefix = format!("benchrpc{}", &Uuid::new_v4().simple().to_string()[..10]);
    let mut sim = SimConfig::new(1, &cfg.rabbitmq.url, &prefix);
    sim.id_prefix = "i-rpc-".into();
    let agent = sim.agent_id(0);
    let fleet = SimFleet::start(sim).await?;
    let client = AgentRpcClient::connect(
        &cfg.rabbitmq.url,
        &prefix,
        "bench-rpc",
        RpcClientOptions::default(),
    )
    .await?;
    for _ in 0..200 {
        client.ping(&agent, "warm-up").await?;
    }
    let mut rows = Vec::new();
    for (label, concurrency) in [
        ("sequential", 1usize),
        ("concurrent", args.concurrency.max(1)),
    ] {
        let started = Instant::now();
        let lat: Vec<f64> = {
            use futures::StreamExt;
            futures::stream::iter(0..args.calls)
                .map(|_| {
                    let client = client.clone();
                    let agent = agent.clone();
                    async move {
                        let t = Instant::now();
                        client
                            .ping(&agent, "x")
                            .await
                            .map(|_| t.elapsed().as_secs_f64() * 1000.0)
                    }
                })
                .buffer_unordered(concurrency)
                .collect::<Vec<_>>()
                .await
                .into_iter()
                .collect::<Result<Vec<_>, _>>()?
        };
        let secs = started.elapsed().as_secs_f64();
        let mut s = lat;
        s.sort_by(|a, b| a.total_cmp(b));
        rows.push((
            label,
            concurrency,
            args.calls as f64 / secs,
            percentile(&s, 0.5),
            percentile(&s, 0.99),
            s[s.len() - 1],
        ));
    }
    client.close().await;
    fleet.stop().await;
    let conn = amqp::connect(&cfg.rabbitmq.url, "bench-cleanup", Duration::from_secs(10)).await?;
    amqp::delete_topology(&conn, &Names::new(&prefix), &[agent]).await?;
    let _ = conn.close(200, "bye").await;

    println!(
        "\nAgent RPC: no-op `ping` round trips ({} calls per run) through RabbitMQ direct reply-to, one simulated agent",
        args.calls
    );
    println!(
        "{:<12} {:>11} {:>12} {:>10} {:>10} {:>10}",
        "run", "in flight", "calls/s", "p50 ms", "p99 ms", "max ms"
    );
    for (label, c, rate, p50, p99, max) in rows {
        println!("{label:<12} {c:>11} {rate:>12.0} {p50:>10.3} {p99:>10.3} {max:>10.3}");
    }
    Ok(())
}
