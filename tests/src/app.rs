//! A whole manager in-process for API tests: the HTTP server on a free port and a worker
//! command loop, over a fresh database, private NATS streams, a private etcd namespace
//! (with the example fixture's etcd keys) and the shared Redis.
//!
//! Redis is shared by all tests, so tests use fresh keypairs ([`TestApp::keypair`]) and
//! every Redis key they cause is deleted when the app is dropped.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_api::{AppState, Application};
use bai_core::config::Config;
use bai_core::redis::{redis, RedisPool};
use bai_workers::{WorkerContext, WorkerMetrics, WorkerOptions};

use crate::client::SignedClient;
use crate::{workspace_root, TestBus, TestDb, TestEtcd, TIMEOUT};

/// Users of the example fixture.
pub const ADMIN_EMAIL: &str = "admin@lablup.com";
pub const DOMAIN_ADMIN_EMAIL: &str = "domain-admin@lablup.com";
pub const USER_EMAIL: &str = "user@lablup.com";
pub const MONITOR_EMAIL: &str = "monitor@lablup.com";
/// Their passwords (stored bcrypt-hashed by the fixture loader).
pub const ADMIN_PASSWORD: &str = "wJalrXUt";
pub const USER_PASSWORD: &str = "C8qnIo29";

pub struct TestApp {
    pub addr: SocketAddr,
    /// `http://127.0.0.1:<port>`
    pub base: String,
    pub state: AppState,
    pub config: Config,
    pub redis: RedisPool,
    pub worker_metrics: Arc<WorkerMetrics>,
    pub db: TestDb,
    pub bus: TestBus,
    pub etcd: TestEtcd,
    /// The agent side when spawned with [`Extras::agents`]: a private RabbitMQ prefix
    /// (register agent ids with `track_agent` so their queues are deleted on drop).
    pub rabbit: Option<crate::TestRabbit>,
    /// The worker's context (its agent RPC client, bus, stores).
    pub worker_ctx: Arc<WorkerContext>,
    /// The agent ingest of the worker, when spawned with [`Extras::agents`].
    pub agents_runtime: Option<Arc<bai_workers::agents::AgentsRuntime>>,
    shutdown: CancellationToken,
    redis_keys: Mutex<Vec<String>>,
}

/// Optional parts of the in-process manager.
#[derive(Clone, Debug, Default)]
pub struct Extras {
    /// Agents: a private RabbitMQ prefix; the API and the worker get agent RPC clients and
    /// the worker runs the agent-event ingest and the liveness monitor (Redis keys under
    /// `{prefix}:`).
    pub agents: bool,
    /// The scheduler: the trigger loop and a fast safety tick.
    pub scheduler: bool,
}

impl Extras {
    /// Agents and the scheduler: a whole manager.
    pub fn full() -> Self {
        Self {
            agents: true,
            scheduler: true,
        }
    }
}

impl TestApp {
    pub async fn spawn() -> Self {
        Self::spawn_with(|_| {}).await
    }

    /// Like [`TestApp::spawn`], with a chance to adjust the configuration first.
    pub async fn spawn_with(adjust: impl FnOnce(&mut Config)) -> Self {
        Self::spawn_with_extras(adjust, Extras::default()).await
    }

    /// Like [`TestApp::spawn_with`], plus the optional parts in `extras`.
    pub async fn spawn_with_extras(adjust: impl FnOnce(&mut Config), extras: Extras) -> Self {
        let db = TestDb::new().await;
        let bus = TestBus::new(Default::default()).await;
        let etcd = TestEtcd::new().await;
        let fixture: serde_json::Value = serde_json::from_slice(
            &std::fs::read(workspace_root().join("ops/fixtures/example.json"))
                .expect("example fixture"),
        )
        .expect("fixture JSON");
        etcd.etcd
            .put_json("", &fixture["etcd"])
            .await
            .expect("load fixture etcd keys");

        let mut config = db.config.clone();
        config.nats.prefix = bus.prefix.clone();
        config.etcd.namespace = etcd
            .etcd
            .prefix()
            .trim_start_matches("/sorna/")
            .trim_end_matches('/')
            .to_string();
        config.manager.command_timeout_ms = 10_000;
        adjust(&mut config);

        let rabbit = extras.agents.then(crate::TestRabbit::new);
        if let Some(r) = &rabbit {
            config.rabbitmq.url = r.url.clone();
            config.rabbitmq.prefix = r.prefix.clone();
        }
        let rpc_client = |name: &'static str| {
            let config = config.clone();
            async move {
                Arc::new(
                    bai_agent_proto::AgentRpcClient::connect(
                        &config.rabbitmq.url,
                        &config.rabbitmq.prefix,
                        name,
                        bai_agent_proto::RpcClientOptions::default(),
                    )
                    .await
                    .expect("agent RPC client"),
                )
            }
        };
        let (api_rpc, worker_rpc) = if extras.agents {
            (
                Some(rpc_client("test-api-rpc").await),
                Some(rpc_client("test-worker-rpc").await),
            )
        } else {
            (None, None)
        };

        let redis = bai_core::redis::connect(&config.redis, TIMEOUT)
            .await
            .expect("connect Redis");
        crate::reset_fixture_rate_limits(&redis).await;
        let mut state = AppState::new(
            config.clone(),
            db.db.clone(),
            redis.clone(),
            etcd.etcd.clone(),
            bus.bus.clone(),
        );
        if let Some(rpc) = api_rpc {
            state = state.with_agent_rpc(rpc);
        }
        let app = Application::build(state.clone(), "127.0.0.1:0".parse().expect("addr"))
            .await
            .expect("bind API");
        let addr = app.local_addr().expect("local addr");
        let shutdown = CancellationToken::new();
        tokio::spawn(app.run(shutdown.clone()));

        let worker_metrics = Arc::new(WorkerMetrics::default());
        let ctx = Arc::new(WorkerContext {
            agent_rpc: worker_rpc,
            db: db.db.clone(),
            bus: bus.peer("worker").await,
            etcd: Some(etcd.etcd.clone()),
            redis: Some(redis.clone()),
            metrics: worker_metrics.clone(),
        });
        let opts = WorkerOptions {
            concurrency: 8,
            shutdown_grace: Duration::from_secs(2),
        };
        tokio::spawn(bai_workers::run_command_loop(
            ctx.clone(),
            opts,
            shutdown.clone(),
        ));

        let mut agents_runtime = None;
        let mut extra_keys = Vec::new();
        if let Some(r) = &rabbit {
            let mut opts = bai_workers::agents::AgentIngestOptions::from_config(&config);
            opts.redis_prefix = format!("{}:", r.prefix);
            opts.heartbeat_timeout = Duration::from_secs(5);
            opts.liveness_period = Duration::from_millis(500);
            let rt =
                bai_workers::agents::AgentsRuntime::new(ctx.clone(), opts).expect("agents runtime");
            extra_keys.push(rt.keys.last_seen());
            extra_keys.push(rt.keys.liveness_lock());
            tokio::spawn(bai_workers::agents::run(rt.clone(), shutdown.clone()));
            // Agents may publish as soon as they start: wait for the ingest's queues.
            let conn = r.connect().await;
            let names = r.names();
            crate::eventually(TIMEOUT, || async {
                bai_agent_proto::amqp::queue_counts(&conn, &names.lifecycle_queue())
                    .await
                    .ok()
                    .flatten()
                    .filter(|(_, consumers)| *consumers > 0)
            })
            .await
            .expect("agent ingest consumer up");
            let _ = conn.close(200, "bye").await;
            agents_runtime = Some(rt);
        }
        if extras.scheduler {
            tokio::spawn(bai_workers::run_trigger_loop(
                ctx.bus.clone(),
                Arc::new(bai_workers::sessions::SessionScheduler::new(ctx.clone())),
                4,
                worker_metrics.clone(),
                shutdown.clone(),
            ));
            let tick_db = db.db.clone();
            tokio::spawn(bai_workers::run_tick_loop(
                ctx.bus.clone(),
                Duration::from_millis(500),
                move || {
                    let db = tick_db.clone();
                    Box::pin(async move {
                        Ok(
                            sqlx::query_scalar("SELECT name FROM scaling_groups WHERE is_active")
                                .fetch_all(db.pool())
                                .await?,
                        )
                    })
                },
                shutdown.clone(),
            ));
        }

        Self {
            addr,
            base: format!("http://{addr}"),
            state,
            config,
            redis,
            worker_metrics,
            db,
            bus,
            etcd,
            rabbit,
            worker_ctx: ctx,
            agents_runtime,
            shutdown,
            redis_keys: Mutex::new(extra_keys),
        }
    }

    /// Deletes `key` from Redis when the app is dropped.
    pub fn track_redis_key(&self, key: String) {
        if let Ok(mut keys) = self.redis_keys.lock() {
            keys.push(key);
        }
    }

    /// Inserts a fresh keypair for the fixture user `email` (test setup writes the database
    /// directly; the API under test never does).
    pub async fn keypair(
        &self,
        email: &str,
        is_admin: bool,
        rate_limit: i32,
        is_active: bool,
    ) -> (String, String) {
        let (ak, sk) = bai_core::keypair::generate_keypair();
        sqlx::query(
            "INSERT INTO keypairs (user_id, access_key, secret_key, is_active, is_admin, rate_limit, \
             num_queries, concurrency_used, \"user\", resource_policy) \
             SELECT email, $2, $3, $4, $5, $6, 0, 0, uuid, 'default' FROM users WHERE email = $1",
        )
        .bind(email)
        .bind(&ak)
        .bind(&sk)
        .bind(is_active)
        .bind(is_admin)
        .bind(rate_limit)
        .execute(self.db.db.pool())
        .await
        .expect("insert keypair");
        self.track_redis_key(format!("rlim:{ak}"));
        self.track_redis_key(format!("kp:{ak}:num_queries"));
        (ak, sk)
    }

    pub fn client(&self, access_key: &str, secret_key: &str) -> SignedClient {
        SignedClient::new(&self.base, access_key, secret_key)
    }

    pub fn anonymous(&self) -> SignedClient {
        SignedClient::anonymous(&self.base)
    }

    /// A superadmin client on a fresh keypair of admin@lablup.com.
    pub async fn superadmin(&self) -> SignedClient {
        let (ak, sk) = self.keypair(ADMIN_EMAIL, true, 30_000, true).await;
        self.client(&ak, &sk)
    }

    /// A domain-admin client on a fresh keypair of domain-admin@lablup.com.
    pub async fn domain_admin(&self) -> SignedClient {
        let (ak, sk) = self.keypair(DOMAIN_ADMIN_EMAIL, true, 30_000, true).await;
        self.client(&ak, &sk)
    }

    /// A plain-user client on a fresh keypair of user@lablup.com.
    pub async fn user(&self) -> SignedClient {
        let (ak, sk) = self.keypair(USER_EMAIL, false, 30_000, true).await;
        self.client(&ak, &sk)
    }

    /// Commands the in-process worker has handled so far.
    pub fn handled_commands(&self) -> u64 {
        self.worker_metrics
            .handled
            .load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Reads an integer Redis key (0 when absent).
    pub async fn redis_int(&self, key: &str) -> i64 {
        let mut conn = self.redis.get().await.expect("redis connection");
        redis::cmd("GET")
            .arg(key)
            .query_async::<Option<i64>>(&mut *conn)
            .await
            .expect("redis GET")
            .unwrap_or(0)
    }

    /// A user id of the fixture by email.
    pub async fn user_uuid(&self, email: &str) -> Uuid {
        sqlx::query_scalar("SELECT uuid FROM users WHERE email = $1")
            .bind(email)
            .fetch_one(self.db.db.pool())
            .await
            .expect("fixture user")
    }
}

impl Drop for TestApp {
    fn drop(&mut self) {
        self.shutdown.cancel();
        let keys = self
            .redis_keys
            .lock()
            .map(|k| k.clone())
            .unwrap_or_default();
        if keys.is_empty() {
            return;
        }
        let pool = self.redis.clone();
        // Drop runs inside the test's runtime; do the async cleanup on a helper thread.
        let _ = std::thread::spawn(move || {
            let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            else {
                return;
            };
            rt.block_on(async move {
                let cfg = crate::base_config();
                // A fresh connection: the pool's connections belong to the test's runtime.
                let Ok(client) = redis::Client::open(cfg.redis.url()) else {
                    return;
                };
                let Ok(mut conn) = client.get_multiplexed_async_connection().await else {
                    return;
                };
                let _ = redis::cmd("DEL")
                    .arg(&keys)
                    .query_async::<i64>(&mut conn)
                    .await;
                drop(pool);
            });
        })
        .join();
    }
}
