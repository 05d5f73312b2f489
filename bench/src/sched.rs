//! `bai-bench sched`: scheduling throughput. N PENDING sessions and M agents are inserted
//! directly, then scheduling passes place them (PENDING → SCHEDULED) and the prepare step
//! claims them (→ PREPARING, one durable start command each). With `--groups 2` two passes
//! run concurrently on two scaling groups, as two workers would.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bai_core::{Config, Db};
use bai_events::{Bus, BusOptions};
use bai_workers::{WorkerContext, WorkerMetrics};

#[derive(clap::Args)]
pub struct SchedArgs {
    #[arg(long, default_value = "ops/manager.toml")]
    config: std::path::PathBuf,
    #[arg(long, default_value_t = 10_000)]
    sessions: usize,
    #[arg(long, default_value_t = 1_000)]
    agents: usize,
}

async fn fresh_db(cfg: &Config) -> anyhow::Result<Db> {
    let mut admin_cfg = cfg.db.clone();
    admin_cfg.name = "postgres".into();
    let admin = sqlx::PgPool::connect(&admin_cfg.url()).await?;
    sqlx::query("DROP DATABASE IF EXISTS bai_bench_sched WITH (FORCE)")
        .execute(&admin)
        .await?;
    sqlx::query("CREATE DATABASE bai_bench_sched")
        .execute(&admin)
        .await?;
    admin.close().await;
    let mut c = cfg.db.clone();
    c.name = "bai_bench_sched".into();
    let db = Db::connect(&c, Duration::from_secs(10)).await?;
    db.migrate().await?;
    bai_core::fixtures::Fixture::read(std::path::Path::new("ops/fixtures/example.json"))?
        .populate(&db, None)
        .await?;
    Ok(db)
}

async fn seed(db: &Db, groups: &[String], sessions: usize, agents: usize) -> anyhow::Result<()> {
    sqlx::query("UPDATE keypair_resource_policies SET max_concurrent_sessions = 100000000")
        .execute(db.pool())
        .await?;
    for (i, g) in groups.iter().enumerate() {
        sqlx::query(
            "INSERT INTO scaling_groups (name, driver, scheduler) VALUES ($1, 'static', 'fifo') ON CONFLICT DO NOTHING",
        )
        .bind(g)
        .execute(db.pool())
        .await?;
        sqlx::query("INSERT INTO sgroups_for_domains (scaling_group, domain) VALUES ($1, 'default') ON CONFLICT DO NOTHING")
            .bind(g)
            .execute(db.pool())
            .await?;
        let n_agents = agents / groups.len();
        sqlx::query(
            "INSERT INTO agents (id, status, region, scaling_group, schedulable, available_slots, occupied_slots, addr, version) \
             SELECT 'bench-' || $1 || '-' || n, 'ALIVE', 'local', $2, true, \
                    '{\"cpu\": \"64\", \"mem\": \"274877906944\"}'::jsonb, '{}'::jsonb, 'tcp://127.0.0.1:' || n, '21.3.6' \
             FROM generate_series(1, $3) n",
        )
        .bind(i as i32)
        .bind(g)
        .bind(n_agents as i32)
        .execute(db.pool())
        .await?;
        let n_sessions = sessions / groups.len();
        sqlx::query(
            "INSERT INTO kernels (id, session_id, session_creation_id, session_name, session_type, cluster_mode, \
               cluster_size, cluster_role, cluster_idx, cluster_hostname, scaling_group, domain_name, group_id, \
               user_uuid, access_key, image, registry, occupied_slots, repl_in_port, repl_out_port, stdin_port, \
               stdout_port, status, created_at) \
             SELECT u, u, 'c' || n, 'bench-' || $1 || '-' || n, 'INTERACTIVE', 'single-node', 1, 'main', 1, 'main1', $2, \
               'default', '2de2b969-1d04-48a6-af16-0bc8adb3c831', 'f38dea23-50fa-42a0-b5ae-338f5f4693f4', \
               'AKIAIOSFODNN7EXAMPLE', 'cr.backend.ai/stable/python:3.9-ubuntu20.04', 'cr.backend.ai', \
               '{\"cpu\": \"1\", \"mem\": \"1073741824\"}'::jsonb, 0, 0, 0, 0, 'PENDING', \
               now() + n * interval '1 microsecond' \
             FROM (SELECT uuid_generate_v4() AS u, n FROM generate_series(1, $3) n) s",
        )
        .bind(i as i32)
        .bind(g)
        .bind(n_sessions as i32)
        .execute(db.pool())
        .await?;
    }
    sqlx::query("ANALYZE").execute(db.pool()).await?;
    Ok(())
}

async fn count(db: &Db, status: &str) -> anyhow::Result<i64> {
    Ok(
        sqlx::query_scalar("SELECT count(*) FROM kernels WHERE status::text = $1")
            .bind(status)
            .fetch_one(db.pool())
            .await?,
    )
}

pub async fn run(args: SchedArgs) -> anyhow::Result<()> {
    let mut cfg = Config::load(Some(&args.config))?;
    cfg.nats.prefix = format!("bsched{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
    let bus = Bus::connect(
        &cfg.nats,
        "bench-sched",
        BusOptions::default(),
        Duration::from_secs(10),
    )
    .await?;
    println!("| workers (scaling groups) | sessions | agents | schedule s | placed/s | prepare s | claimed/s | occupancy check |");
    println!("|---|---|---|---|---|---|---|---|");
    for n_groups in [1usize, 2] {
        let db = fresh_db(&cfg).await?;
        let groups: Vec<String> = (0..n_groups).map(|i| format!("bench-sg-{i}")).collect();
        seed(&db, &groups, args.sessions, args.agents).await?;
        let ctx = Arc::new(WorkerContext {
            db: db.clone(),
            bus: bus.clone(),
            etcd: None,
            redis: None,
            agent_rpc: None,
            metrics: Arc::new(WorkerMetrics::default()),
        });
        let t = Instant::now();
        let placed: Vec<usize> = futures::future::try_join_all(
            groups
                .iter()
                .map(|g| bai_workers::sessions::scheduler::schedule(&ctx, g)),
        )
        .await?;
        let sched_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let claimed: Vec<usize> = futures::future::try_join_all(
            groups
                .iter()
                .map(|g| bai_workers::sessions::scheduler::prepare(&ctx, g)),
        )
        .await?;
        let prep_s = t.elapsed().as_secs_f64();
        let placed: usize = placed.iter().sum();
        let claimed: usize = claimed.iter().sum();
        // Invariant: every agent's occupied_slots equals the sum of its kernels.
        let drift: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM agents a WHERE (a.occupied_slots->>'cpu')::numeric IS DISTINCT FROM \
             (SELECT COALESCE(sum((k.occupied_slots->>'cpu')::numeric), 0) FROM kernels k WHERE k.agent = a.id \
              AND k.status NOT IN ('PENDING', 'TERMINATED', 'CANCELLED')) \
             AND NOT (a.occupied_slots = '{}'::jsonb AND NOT EXISTS (SELECT 1 FROM kernels k WHERE k.agent = a.id))",
        )
        .fetch_one(db.pool())
        .await?;
        let pending = count(&db, "PENDING").await?;
        println!(
            "| {n_groups} | {} | {} | {sched_s:.2} | {:.0} | {prep_s:.2} | {:.0} | {} |",
            args.sessions,
            args.agents,
            placed as f64 / sched_s,
            claimed as f64 / prep_s,
            if drift == 0 && pending == 0 {
                "ok".to_string()
            } else {
                format!("drift {drift}, pending {pending}")
            }
        );
    }
    bus.delete_streams().await?;
    Ok(())
}
