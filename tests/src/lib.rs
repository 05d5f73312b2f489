//! Test harness: every test gets its own database (cloned from a migrated, fixture-loaded
//! template), its own NATS stream prefix and its own etcd namespace, all removed on drop.
//! Nothing is mocked: PostgreSQL, Redis, NATS JetStream, RabbitMQ and etcd are real.

pub mod app;
pub mod client;

use std::path::PathBuf;
use std::time::Duration;

use sqlx::postgres::PgPoolOptions;
use sqlx::PgPool;
use uuid::Uuid;

use bai_core::config::Config;
use bai_core::etcd::Etcd;
use bai_core::Db;
use bai_events::{Bus, BusOptions};

pub const TIMEOUT: Duration = Duration::from_secs(30);

/// Workspace root, for fixture and ops paths.
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(PathBuf::from)
        .unwrap_or_default()
}

/// Base configuration for tests: the defaults (local services) with `BAI_*` overrides.
pub fn base_config() -> Config {
    let mut cfg =
        Config::load(Some(&workspace_root().join("ops/manager.toml"))).expect("test config");
    cfg.logging.level = std::env::var("RUST_LOG").unwrap_or_else(|_| "warn".into());
    cfg
}

pub fn init_tracing() {
    bai_core::telemetry::init(&base_config().logging);
}

fn admin_url(cfg: &Config, db: &str) -> String {
    let mut c = cfg.db.clone();
    c.name = db.to_string();
    c.url()
}

async fn admin_pool(cfg: &Config) -> PgPool {
    PgPoolOptions::new()
        .max_connections(2)
        .connect(&admin_url(cfg, "postgres"))
        .await
        .expect("connect to the postgres maintenance database")
}

/// Name of the template for the current migrations + example fixture (content-addressed,
/// so a schema change never reuses a stale template).
fn template_name() -> String {
    let mut h: u64 = 0xcbf29ce484222325;
    for m in bai_core::db::MIGRATOR.iter() {
        for b in m.checksum.iter().chain(m.version.to_le_bytes().iter()) {
            h = (h ^ *b as u64).wrapping_mul(0x100000001b3);
        }
    }
    let fixture =
        std::fs::read(workspace_root().join("ops/fixtures/example.json")).unwrap_or_default();
    for b in fixture {
        h = (h ^ b as u64).wrapping_mul(0x100000001b3);
    }
    format!("bai_tmpl_{h:016x}")
}

async fn ensure_template(cfg: &Config) -> String {
    let name = template_name();
    let admin = admin_pool(cfg).await;
    let mut conn = admin.acquire().await.expect("admin connection");
    // A session-level advisory lock makes template creation single-flight across the
    // test processes that cargo runs in parallel.
    sqlx::query("SELECT pg_advisory_lock(7243, 1)")
        .execute(&mut *conn)
        .await
        .expect("template lock");
    let exists: bool =
        sqlx::query_scalar("SELECT EXISTS (SELECT 1 FROM pg_database WHERE datname = $1)")
            .bind(&name)
            .fetch_one(&mut *conn)
            .await
            .expect("template lookup");
    if !exists {
        let building = format!("{name}_building");
        let _ = sqlx::query(&format!(
            "DROP DATABASE IF EXISTS \"{building}\" WITH (FORCE)"
        ))
        .execute(&mut *conn)
        .await;
        sqlx::query(&format!("CREATE DATABASE \"{building}\""))
            .execute(&mut *conn)
            .await
            .expect("create template");
        {
            let mut c = cfg.db.clone();
            c.name = building.clone();
            let pool = PgPoolOptions::new()
                .max_connections(4)
                .connect(&c.url())
                .await
                .expect("connect template");
            let db = Db::from_pool(pool.clone(), &c);
            db.migrate().await.expect("migrate template");
            let fixture = bai_core::fixtures::Fixture::read(
                &workspace_root().join("ops/fixtures/example.json"),
            )
            .expect("example fixture");
            fixture
                .populate(&db, None)
                .await
                .expect("load fixture into template");
            pool.close().await;
        }
        sqlx::query(&format!(
            "ALTER DATABASE \"{building}\" RENAME TO \"{name}\""
        ))
        .execute(&mut *conn)
        .await
        .expect("publish template");
    }
    sqlx::query("SELECT pg_advisory_unlock(7243, 1)")
        .execute(&mut *conn)
        .await
        .expect("template unlock");
    drop(conn);
    admin.close().await;
    name
}

/// A fresh database for one test, cloned from the template; dropped when this is dropped.
pub struct TestDb {
    pub name: String,
    pub config: Config,
    pub db: Db,
}

impl TestDb {
    pub async fn new() -> Self {
        let mut cfg = base_config();
        let tmpl = ensure_template(&cfg).await;
        let name = format!("bai_t_{}", Uuid::new_v4().simple());
        let admin = admin_pool(&cfg).await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\" TEMPLATE \"{tmpl}\""))
            .execute(&admin)
            .await
            .expect("clone template");
        admin.close().await;
        cfg.db.name = name.clone();
        let db = Db::connect(&cfg.db, TIMEOUT)
            .await
            .expect("connect test db");
        Self {
            name,
            config: cfg,
            db,
        }
    }

    /// An empty database (no schema), for migration tests.
    pub async fn empty() -> Self {
        let mut cfg = base_config();
        let name = format!("bai_t_{}", Uuid::new_v4().simple());
        let admin = admin_pool(&cfg).await;
        sqlx::query(&format!("CREATE DATABASE \"{name}\""))
            .execute(&admin)
            .await
            .expect("create empty db");
        admin.close().await;
        cfg.db.name = name.clone();
        let db = Db::connect(&cfg.db, TIMEOUT)
            .await
            .expect("connect test db");
        Self {
            name,
            config: cfg,
            db,
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        let cfg = self.config.clone();
        // FORCE ends the test's own connections.
        cleanup_on_side_thread(async move {
            let admin = admin_pool(&cfg).await;
            let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
                .execute(&admin)
                .await;
            admin.close().await;
        });
    }
}

/// Runs async cleanup from a `Drop` impl. Drop runs inside the test's (possibly
/// single-threaded, now blocked) runtime, so the future runs on a helper thread with a
/// runtime of its own and must use fresh connections: clients created on the test's
/// runtime would deadlock on tasks that live there.
fn cleanup_on_side_thread<F: std::future::Future<Output = ()> + Send>(fut: F) {
    std::thread::scope(|scope| {
        scope.spawn(|| {
            if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                rt.block_on(fut);
            }
        });
    });
}

/// A bus on private streams (unique prefix), deleted on drop.
pub struct TestBus {
    pub bus: Bus,
    pub prefix: String,
}

async fn delete_streams(prefix: &str) {
    let mut cfg = base_config();
    cfg.nats.prefix = prefix.to_string();
    if let Ok(client) = async_nats::connect(&cfg.nats.url).await {
        let js = async_nats::jetstream::new(client);
        let s = bai_events::Subjects::new(prefix);
        for name in [s.cmd_stream(), s.events_stream(), s.trigger_stream()] {
            let _ = js.delete_stream(name).await;
        }
    }
}

impl TestBus {
    pub async fn new(options: BusOptions) -> Self {
        let mut cfg = base_config();
        let prefix = format!("t{}", &Uuid::new_v4().simple().to_string()[..12]);
        cfg.nats.prefix = prefix.clone();
        let bus = Bus::connect(&cfg.nats, "test", options, TIMEOUT)
            .await
            .expect("connect NATS");
        Self { bus, prefix }
    }

    /// Another connection (as another process would have) to the same streams.
    pub async fn peer(&self, originator: &str) -> Bus {
        let mut cfg = base_config();
        cfg.nats.prefix = self.prefix.clone();
        Bus::connect(&cfg.nats, originator, self.bus.options().clone(), TIMEOUT)
            .await
            .expect("connect NATS peer")
    }
}

impl Drop for TestBus {
    fn drop(&mut self) {
        let prefix = self.prefix.clone();
        cleanup_on_side_thread(delete_streams(&prefix));
    }
}

/// An etcd namespace of its own, deleted on drop.
pub struct TestEtcd {
    pub etcd: Etcd,
    pub namespace: String,
}

impl TestEtcd {
    pub async fn new() -> Self {
        let mut cfg = base_config();
        cfg.etcd.namespace = format!("test-{}", Uuid::new_v4().simple());
        let etcd = Etcd::connect(&cfg.etcd, TIMEOUT)
            .await
            .expect("connect etcd");
        Self {
            etcd,
            namespace: cfg.etcd.namespace,
        }
    }
}

impl Drop for TestEtcd {
    fn drop(&mut self) {
        let mut cfg = base_config();
        cfg.etcd.namespace = self.namespace.clone();
        cleanup_on_side_thread(async move {
            if let Ok(etcd) = Etcd::connect(&cfg.etcd, Duration::from_secs(5)).await {
                let _ = etcd.delete("", true).await;
            }
        });
    }
}

/// Polls `check` until it returns `Some`, for state that has no notification to await
/// (e.g. a row written by another process). Bounded by `within`.
pub async fn eventually<T, F, Fut>(within: Duration, mut check: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + within;
    loop {
        if let Some(v) = check().await {
            return Some(v);
        }
        if tokio::time::Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// A private namespace on RabbitMQ for agent tests: a unique prefix for every queue and
/// exchange of the agent protocol, all deleted on drop (register the agent ids whose RPC
/// queues must go too with [`TestRabbit::track_agent`]).
pub struct TestRabbit {
    pub url: String,
    pub prefix: String,
    agents: std::sync::Mutex<Vec<String>>,
}

impl TestRabbit {
    pub fn new() -> Self {
        Self {
            url: base_config().rabbitmq.url,
            prefix: format!("t{}", &Uuid::new_v4().simple().to_string()[..12]),
            agents: std::sync::Mutex::new(Vec::new()),
        }
    }

    pub fn names(&self) -> bai_agent_proto::Names {
        bai_agent_proto::Names::new(&self.prefix)
    }

    pub fn track_agent(&self, agent_id: &str) {
        if let Ok(mut a) = self.agents.lock() {
            a.push(agent_id.to_string());
        }
    }

    pub async fn connect(&self) -> std::sync::Arc<lapin::Connection> {
        bai_agent_proto::amqp::connect(&self.url, "test", TIMEOUT)
            .await
            .expect("connect RabbitMQ")
    }
}

impl Default for TestRabbit {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestRabbit {
    fn drop(&mut self) {
        let url = self.url.clone();
        let names = self.names();
        let agents = self.agents.lock().map(|a| a.clone()).unwrap_or_default();
        cleanup_on_side_thread(async move {
            if let Ok(conn) =
                bai_agent_proto::amqp::connect(&url, "test-cleanup", Duration::from_secs(5)).await
            {
                let _ = bai_agent_proto::amqp::delete_topology(&conn, &names, &agents).await;
                let _ = conn.close(200, "bye").await;
            }
        });
    }
}

/// The example fixture's access keys.
pub const FIXTURE_ACCESS_KEYS: [&str; 4] = [
    "AKIAIOSFODNN7EXAMPLE",
    "AKIAHUKCHDEZGEXAMPLE",
    "AKIANABBDUSEREXAMPLE",
    "AKIANAMONITOREXAMPLE",
];

/// Redis is shared by everything on the machine (dev servers, benchmarks, earlier runs), so
/// tests that sign with the fixture keys start from an empty rate-limit window instead of
/// inheriting someone else's 15-minute budget.
pub async fn reset_fixture_rate_limits(redis: &bai_core::redis::RedisPool) {
    if let Ok(mut conn) = redis.get().await {
        for ak in FIXTURE_ACCESS_KEYS {
            let _: Result<i64, _> = bai_core::redis::redis::cmd("DEL")
                .arg(bai_api::auth::ratelimit::window_key(ak))
                .query_async(&mut *conn)
                .await;
        }
    }
}
