//! `backend-ai mgr ...`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Subcommand;

use bai_core::etcd::Etcd;
use bai_core::fixtures::Fixture;
use bai_core::{Config, Db};
use bai_events::{Bus, BusOptions, Command, CommandOutcome};
use bai_workers::{WorkerContext, WorkerMetrics, WorkerOptions};

use crate::progress::Progress;
use crate::shutdown;

/// How long start-up waits for a backing service before giving up with a clear error.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);

#[derive(Subcommand)]
pub enum MgrCommand {
    /// Start the API server.
    StartServer {
        /// Listen address (default: manager.service-addr).
        #[arg(long)]
        addr: Option<SocketAddr>,
    },
    /// Start a worker (run as many as the load needs).
    Worker {
        /// Commands handled concurrently (default: manager.worker-concurrency).
        #[arg(long)]
        concurrency: Option<usize>,
        /// Seconds between safety ticks of the scheduler.
        #[arg(long, default_value_t = 10)]
        tick_seconds: u64,
        /// Serve Prometheus `GET /metrics` here (port 0 picks a free port; the bound
        /// address is logged). `none` disables the listener.
        #[arg(long, env = "BAI_WORKER_METRICS_ADDR", default_value = "127.0.0.1:0")]
        metrics_addr: String,
    },
    /// Database schema.
    Schema {
        #[command(subcommand)]
        command: SchemaCommand,
    },
    /// Load fixtures.
    Fixture {
        #[command(subcommand)]
        command: FixtureCommand,
    },
    /// Print a new keypair; with --user, also insert it for that user (through the DB).
    GenerateKeypair {
        /// Email of the user to attach the keypair to.
        #[arg(long)]
        user: Option<String>,
        #[arg(long, default_value = "default")]
        resource_policy: String,
        #[arg(long)]
        admin: bool,
        #[arg(long, default_value_t = 30000)]
        rate_limit: i32,
    },
    /// Shared configuration in etcd (keys are relative to /sorna/<namespace>/).
    Etcd {
        #[command(subcommand)]
        command: EtcdCommand,
    },
    /// The command bus (NATS JetStream).
    Bus {
        #[command(subcommand)]
        command: BusCommand,
    },
    /// Image catalogue.
    Image {
        #[command(subcommand)]
        command: ImageCommand,
    },
}

#[derive(Subcommand)]
pub enum ImageCommand {
    /// Rescan the configured registries as a background task in the worker fleet and follow
    /// its progress (a progress bar in a terminal, plain lines otherwise).
    Rescan {
        /// Only this registry (default: every configured one).
        #[arg(long)]
        registry: Option<String>,
        /// Give up following after this many seconds (the task goes on).
        #[arg(long, default_value_t = 600)]
        timeout: u64,
    },
}

#[derive(Subcommand)]
pub enum SchemaCommand {
    /// Apply pending migrations (the 21.03.6 schema and our additions).
    Migrate,
    /// Show applied and pending migrations.
    Show,
}

#[derive(Subcommand)]
pub enum FixtureCommand {
    /// Load a JSON fixture in one transaction (re-running it is harmless).
    Populate { file: PathBuf },
}

#[derive(Subcommand)]
pub enum EtcdCommand {
    Get {
        key: String,
    },
    GetPrefix {
        prefix: String,
    },
    Put {
        key: String,
        value: String,
    },
    /// Put a JSON document (from a file, or `-` for stdin) as a key tree.
    PutJson {
        key: String,
        file: PathBuf,
    },
    Delete {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
}

#[derive(Subcommand)]
pub enum BusCommand {
    /// Stream depths, consumer lag and redeliveries.
    Stats,
    /// Send an echo command through the fleet and print the reply.
    Echo {
        #[arg(default_value = "ping")]
        payload: String,
    },
}

pub async fn run(config: Config, cmd: MgrCommand) -> anyhow::Result<()> {
    match cmd {
        MgrCommand::StartServer { addr } => start_server(config, addr).await,
        MgrCommand::Worker {
            concurrency,
            tick_seconds,
            metrics_addr,
        } => {
            let metrics_addr = match metrics_addr.as_str() {
                "" | "none" | "off" => None,
                a => Some(
                    a.parse::<SocketAddr>()
                        .with_context(|| format!("--metrics-addr: `{a}` is not HOST:PORT"))?,
                ),
            };
            worker(config, concurrency, tick_seconds, metrics_addr).await
        }
        MgrCommand::Schema { command } => schema(config, command).await,
        MgrCommand::Fixture {
            command: FixtureCommand::Populate { file },
        } => {
            let fixture = Fixture::read(&file)?;
            let db = connect_db(&config).await?;
            let etcd = Etcd::connect(&config.etcd, CONNECT_TIMEOUT).await?;
            let mut progress = Progress::spinner("fixture");
            progress.message(&format!("loading {} in one transaction", file.display()));
            let report = match fixture.populate(&db, Some(&etcd)).await {
                Ok(r) => r,
                Err(e) => {
                    progress.abandon("failed");
                    return Err(e.into());
                }
            };
            let rows: usize = report.tables.iter().map(|t| t.1).sum();
            progress.finish(&format!(
                "{} tables, {rows} rows, {} etcd keys",
                report.tables.len(),
                report.etcd_keys
            ));
            for (table, rows, inserted) in &report.tables {
                println!("{table:<28} {rows:>5} rows, {inserted:>5} new");
            }
            println!("etcd: {} keys written", report.etcd_keys);
            Ok(())
        }
        MgrCommand::GenerateKeypair {
            user,
            resource_policy,
            admin,
            rate_limit,
        } => generate_keypair(config, user, resource_policy, admin, rate_limit).await,
        MgrCommand::Etcd { command } => etcd(config, command).await,
        MgrCommand::Bus { command } => bus(config, command).await,
        MgrCommand::Image {
            command: ImageCommand::Rescan { registry, timeout },
        } => rescan_images(config, registry, Duration::from_secs(timeout)).await,
    }
}

async fn connect_db(config: &Config) -> anyhow::Result<Db> {
    Ok(Db::connect(&config.db, CONNECT_TIMEOUT).await?)
}

async fn connect_bus(config: &Config, originator: &str) -> anyhow::Result<Bus> {
    Ok(Bus::connect(
        &config.nats,
        originator,
        BusOptions::default(),
        CONNECT_TIMEOUT,
    )
    .await?)
}

async fn start_server(config: Config, addr: Option<SocketAddr>) -> anyhow::Result<()> {
    let addr = match addr {
        Some(a) => a,
        None => config.manager.service_addr.parse()?,
    };
    let db = connect_db(&config).await?;
    let redis = bai_core::redis::connect(&config.redis, CONNECT_TIMEOUT).await?;
    let etcd = Etcd::connect(&config.etcd, CONNECT_TIMEOUT).await?;
    let bus = connect_bus(&config, &format!("api:{}", config.manager.id)).await?;
    // Direct agent calls for interactions that change no state (execute, files, logs...).
    let agent_rpc = bai_agent_proto::AgentRpcClient::connect(
        &config.rabbitmq.url,
        &config.rabbitmq.prefix,
        &format!("api-rpc:{}", config.manager.id),
        bai_agent_proto::RpcClientOptions::default(),
    )
    .await?;
    let state =
        bai_api::AppState::new(config, db, redis, etcd, bus).with_agent_rpc(Arc::new(agent_rpc));
    let app = bai_api::Application::build(state, addr)
        .await
        .with_context(|| format!("cannot listen on {addr}"))?;
    tracing::info!(addr = %app.local_addr()?, "API server listening");
    app.run(shutdown::on_signals()).await?;
    tracing::info!("API server stopped");
    Ok(())
}

async fn worker(
    config: Config,
    concurrency: Option<usize>,
    tick_seconds: u64,
    metrics_addr: Option<SocketAddr>,
) -> anyhow::Result<()> {
    let db = connect_db(&config).await?;
    let bus = connect_bus(&config, &format!("worker:{}", config.manager.id)).await?;
    let metrics = Arc::new(WorkerMetrics::default());
    let etcd = Etcd::connect(&config.etcd, CONNECT_TIMEOUT).await?;
    let redis = bai_core::redis::connect(&config.redis, CONNECT_TIMEOUT).await?;
    let ctx = Arc::new(WorkerContext {
        db: db.clone(),
        bus: bus.clone(),
        etcd: Some(etcd),
        redis: Some(redis),
        agent_rpc: Some(Arc::new(
            bai_agent_proto::AgentRpcClient::connect(
                &config.rabbitmq.url,
                &config.rabbitmq.prefix,
                &format!("worker-rpc:{}", config.manager.id),
                bai_agent_proto::RpcClientOptions::default(),
            )
            .await?,
        )),
        metrics: metrics.clone(),
    });
    let opts = WorkerOptions {
        concurrency: concurrency.unwrap_or(config.manager.worker_concurrency),
        ..Default::default()
    };
    let stop = shutdown::on_signals();
    if let Some(addr) = metrics_addr {
        let endpoint = bai_core::metrics::MetricsEndpoint::new();
        let registry = endpoint.registry().clone();
        metrics.register(&registry);
        bus.metrics().register(&registry);
        endpoint.add_sampler(bai_events::stats::stream_depth_sampler(
            bus.clone(),
            &registry,
        ));
        endpoint.add_sampler(bai_core::metrics::agents_by_status_sampler(
            db.clone(),
            &registry,
        ));
        let bound = bai_core::metrics::spawn_server(addr, endpoint, stop.clone())
            .await
            .with_context(|| format!("cannot listen on {addr} for metrics"))?;
        tracing::info!(addr = %bound, "worker metrics listening on http://{bound}/metrics");
    }
    let groups_db = db.clone();
    let tick = tokio::spawn(bai_workers::run_tick_loop(
        bus.clone(),
        Duration::from_secs(tick_seconds.max(1)),
        move || {
            let db = groups_db.clone();
            Box::pin(async move {
                let mut tx = db.begin_readonly().await?;
                let names: Vec<String> =
                    sqlx::query_scalar("SELECT name FROM scaling_groups WHERE is_active")
                        .fetch_all(&mut *tx)
                        .await?;
                tx.commit().await?;
                Ok(names)
            })
        },
        stop.clone(),
    ));
    let triggers = tokio::spawn(bai_workers::run_trigger_loop(
        bus.clone(),
        Arc::new(bai_workers::sessions::SessionScheduler::new(ctx.clone())),
        4,
        metrics.clone(),
        stop.clone(),
    ));
    // Agent events (heartbeats, kernel lifecycle over RabbitMQ) and lost-agent detection.
    let agents_rt = bai_workers::agents::AgentsRuntime::new(
        ctx.clone(),
        bai_workers::agents::AgentIngestOptions::from_config(&config),
    )?;
    let agents = tokio::spawn(bai_workers::agents::run(agents_rt, stop.clone()));
    // Idle-timeout checks (once per period across the fleet) and the copy of kernels' last
    // live statistics into `kernels.last_stat` at termination.
    let idle = tokio::spawn(bai_workers::idle::run_idle_checker(
        ctx.clone(),
        bai_workers::idle::IdleOptions::new(format!(
            "{}-{}",
            config.manager.id,
            uuid::Uuid::new_v4().simple()
        )),
        Arc::default(),
        stop.clone(),
    ));
    let stat_sync = tokio::spawn(bai_workers::usage::run_stat_sync(
        ctx.clone(),
        bai_workers::usage::StatSyncOptions::default(),
        stop.clone(),
    ));
    tracing::info!(concurrency = opts.concurrency, "worker started");
    let rpc = ctx.agent_rpc.clone();
    bai_workers::run_command_loop(ctx, opts, stop.clone()).await?;
    stop.cancel();
    let _ = tokio::join!(tick, triggers, agents, idle, stat_sync);
    // Close RabbitMQ while the runtime is still alive (otherwise lapin logs errors at exit).
    if let Some(rpc) = rpc {
        rpc.close().await;
    }
    tracing::info!("worker stopped");
    Ok(())
}

async fn schema(config: Config, cmd: SchemaCommand) -> anyhow::Result<()> {
    let db = connect_db(&config).await?;
    match cmd {
        SchemaCommand::Migrate => {
            let applied: std::collections::HashSet<i64> = db
                .schema_versions()
                .await?
                .into_iter()
                .map(|(v, _, _)| v)
                .collect();
            let pending: Vec<_> = bai_core::db::MIGRATOR
                .iter()
                .filter(|m| !m.migration_type.is_down_migration() && !applied.contains(&m.version))
                .collect();
            let mut progress = Progress::spinner("migrate");
            match pending.as_slice() {
                [] => progress.message("nothing to apply"),
                [m] => progress.message(&format!("applying {} {}", m.version, m.description)),
                [first, .., last] => progress.message(&format!(
                    "applying {} migrations ({} … {})",
                    pending.len(),
                    first.version,
                    last.version
                )),
            }
            if let Err(e) = db.migrate().await {
                progress.abandon("failed");
                return Err(anyhow::Error::new(e).context("migration failed"));
            }
            progress.finish(&format!("{} applied", pending.len()));
            for m in &pending {
                println!("applied {:>16}  {}", m.version, m.description);
            }
            let applied = db.schema_versions().await?;
            match applied.last() {
                Some((v, d, _)) => println!("schema is at version {v} ({d})"),
                None => println!("no migrations applied"),
            }
        }
        SchemaCommand::Show => {
            let applied = db.schema_versions().await?;
            for m in bai_core::db::MIGRATOR.iter() {
                let state = match applied.iter().find(|(v, _, _)| *v == m.version) {
                    Some((_, _, true)) => "applied",
                    Some((_, _, false)) => "FAILED",
                    None => "pending",
                };
                println!("{:>16}  {:<8} {}", m.version, state, m.description);
            }
        }
    }
    Ok(())
}

async fn generate_keypair(
    config: Config,
    user: Option<String>,
    resource_policy: String,
    admin: bool,
    rate_limit: i32,
) -> anyhow::Result<()> {
    let (ak, sk) = bai_core::keypair::generate_keypair();
    if let Some(email) = user {
        let db = connect_db(&config).await?;
        let (ak2, sk2, email2, policy) = (
            ak.clone(),
            sk.clone(),
            email.clone(),
            resource_policy.clone(),
        );
        db.transact(move |txn| {
            let (ak, sk, email, policy) =
                (ak2.clone(), sk2.clone(), email2.clone(), policy.clone());
            Box::pin(async move {
                let uuid: Option<uuid::Uuid> =
                    sqlx::query_scalar("SELECT uuid FROM users WHERE email = $1")
                        .bind(&email)
                        .fetch_optional(&mut **txn)
                        .await?;
                let uuid = uuid.ok_or_else(|| anyhow::anyhow!("no user with email {email}"))?;
                sqlx::query(
                    "INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, \
                     rate_limit, num_queries, concurrency_used, \"user\", resource_policy) \
                     VALUES ($1, $2, $3, true, $4, $5, 0, 0, $6, $7)",
                )
                .bind(&email)
                .bind(&ak)
                .bind(&sk)
                .bind(admin)
                .bind(rate_limit)
                .bind(uuid)
                .bind(&policy)
                .execute(&mut **txn)
                .await?;
                Ok(())
            })
        })
        .await?;
        println!("Inserted the keypair for {email}.");
    }
    println!("Access Key: {ak}");
    println!("Secret Key: {sk}");
    Ok(())
}

async fn etcd(config: Config, cmd: EtcdCommand) -> anyhow::Result<()> {
    let etcd = Etcd::connect(&config.etcd, CONNECT_TIMEOUT).await?;
    match cmd {
        EtcdCommand::Get { key } => match etcd.get(&key).await? {
            Some(v) => println!("{v}"),
            None => anyhow::bail!("no such key: {key}"),
        },
        EtcdCommand::GetPrefix { prefix } => {
            let map = etcd.get_prefix(&prefix).await?;
            println!("{}", serde_json::to_string_pretty(&map)?);
        }
        EtcdCommand::Put { key, value } => etcd.put(&key, &value).await?,
        EtcdCommand::PutJson { key, file } => {
            let text = if file.as_os_str() == "-" {
                std::io::read_to_string(std::io::stdin())?
            } else {
                std::fs::read_to_string(&file)
                    .with_context(|| format!("cannot read {}", file.display()))?
            };
            let doc: serde_json::Value = serde_json::from_str(&text)
                .with_context(|| format!("{} is not valid JSON", file.display()))?;
            etcd.put_json(&key, &doc).await?;
        }
        EtcdCommand::Delete { key, prefix } => {
            let n = etcd.delete(&key, prefix).await?;
            println!("deleted {n} key(s)");
        }
    }
    Ok(())
}

async fn bus(config: Config, cmd: BusCommand) -> anyhow::Result<()> {
    let bus = connect_bus(&config, "cli").await?;
    match cmd {
        BusCommand::Stats => {
            let stats = bai_events::stats::bus_stats(&bus).await?;
            println!(
                "{:<20} {:>10} {:>12}   consumers (pending / in flight / redelivered)",
                "stream", "messages", "bytes"
            );
            for s in stats {
                let consumers: Vec<String> = s
                    .consumers
                    .iter()
                    .map(|c| {
                        format!(
                            "{}: {} / {} / {}",
                            c.name, c.pending, c.ack_pending, c.redelivered
                        )
                    })
                    .collect();
                println!(
                    "{:<20} {:>10} {:>12}   {}",
                    s.stream,
                    s.messages,
                    s.bytes,
                    consumers.join(", ")
                );
            }
        }
        BusCommand::Echo { payload } => {
            let outcome = bus
                .publish_command(
                    Command::Echo {
                        payload,
                        fail: false,
                        delay_ms: 0,
                    },
                    Duration::from_secs(10),
                )
                .await?;
            match outcome {
                CommandOutcome::Completed(reply) => println!("{}", serde_json::to_string(&reply)?),
                CommandOutcome::Accepted { command_id } => {
                    println!("accepted as {command_id}; no worker answered within 10 s")
                }
            }
        }
    }
    Ok(())
}

/// Starts a `rescan_images` background task and follows its `bgtask_*` events.
async fn rescan_images(
    config: Config,
    registry: Option<String>,
    timeout: Duration,
) -> anyhow::Result<()> {
    use bai_events::feed::FeedStart;
    use bai_events::{Envelope, Event};
    let bus = connect_bus(&config, "cli").await?;
    let task_id = uuid::Uuid::new_v4();
    // Subscribe before starting the task, so no progress event can be missed.
    let mut feed = bus.feed_about(task_id, FeedStart::New).await?;
    let cmd = Command::StartBackgroundTask {
        task_id,
        kind: bai_events::bgtask::KIND_RESCAN_IMAGES.to_string(),
        params: serde_json::json!({ "registry": registry }),
    };
    // The command id is the task id (a retry of this CLI call is the same task).
    bus.enqueue_command(&Envelope::new(task_id, "cli", cmd))
        .await?;
    let mut progress = Progress::spinner("rescan");
    progress.message(&format!("task {task_id} queued"));
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        let item = match tokio::time::timeout_at(deadline, feed.next()).await {
            Err(_) => {
                progress.abandon("still running; stopped following it");
                anyhow::bail!("task {task_id} did not finish within {timeout:?} (it goes on)");
            }
            Ok(None) => {
                progress.abandon("lost the event stream");
                anyhow::bail!("the event stream ended before task {task_id} finished");
            }
            Ok(Some(Err(e))) => {
                tracing::warn!(error = %e, "event stream hiccup");
                continue;
            }
            Ok(Some(Ok(item))) => item,
        };
        let Some(env) = item.event() else { continue };
        match &env.body {
            Event::BgtaskUpdated {
                current_progress,
                total_progress,
                message,
                ..
            } => {
                if *total_progress > 0.0 {
                    progress.set_length(*total_progress as u64);
                }
                progress.set_position(*current_progress as u64);
                if let Some(m) = message.as_deref().filter(|m| !m.is_empty()) {
                    progress.message(m);
                }
            }
            Event::BgtaskDone { message, .. } => {
                progress.finish(message.as_deref().unwrap_or("done"));
                return Ok(());
            }
            Event::BgtaskCancelled { message, .. } => {
                progress.abandon("cancelled");
                anyhow::bail!("rescan cancelled: {}", message.as_deref().unwrap_or(""));
            }
            Event::BgtaskFailed { message, .. } => {
                progress.abandon("failed");
                anyhow::bail!("rescan failed: {}", message.as_deref().unwrap_or(""));
            }
            _ => {}
        }
    }
}
