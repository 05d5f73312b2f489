//! The transaction layer: every write is SERIALIZABLE and retried as a whole.
//!
//! * [`Db::transact`] runs a closure inside a SERIALIZABLE transaction and re-runs the
//!   *whole* closure when PostgreSQL reports a serialization failure (40001) or a deadlock
//!   (40P01), with exponential backoff and jitter from the `backoff` crate, bounded by a
//!   configurable attempt count and total time. After the bound the caller gets
//!   [`TxnError::RetriesExhausted`]; nothing is left half-written because each attempt
//!   rolls back before the next.
//! * [`Db::begin_readonly`] opens a `READ ONLY` transaction for reads (21.03 #431).
//! * A [`TxnWatcher`] counts open transactions per process and warns once the count
//!   passes a threshold (21.03.6 #435; the original's messages were swapped, ours are not).

use std::ops::{Deref, DerefMut};
use std::str::FromStr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use futures::future::BoxFuture;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{PgConnection, PgPool, Postgres};

use crate::config::DbConfig;
use crate::error::{ServiceError, TxnError};

/// Oldest PostgreSQL we run on: the original needs 11+ (it sets `jit=off`, which 11 added).
pub const MIN_PG_VERSION_NUM: i32 = 110000;
pub const MIN_PG_VERSION: &str = "11";

/// Migrations of the 21.03.6 schema plus our additions, embedded in the binary.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations");

/// Namespace (first key) of our per-scaling-group advisory locks, so they never collide with
/// other advisory-lock users of the same database.
pub const SCALING_GROUP_LOCK_NS: i32 = 0x0BA1_5C4E;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TxnKind {
    Generic,
    ReadOnly,
}

/// Counts transactions open at once in this process and warns above a threshold.
#[derive(Debug)]
pub struct TxnWatcher {
    threshold: usize,
    generic: AtomicUsize,
    readonly: AtomicUsize,
    warnings: AtomicU64,
}

impl TxnWatcher {
    pub fn new(threshold: usize) -> Self {
        Self {
            threshold,
            generic: AtomicUsize::new(0),
            readonly: AtomicUsize::new(0),
            warnings: AtomicU64::new(0),
        }
    }

    fn enter(self: &Arc<Self>, kind: TxnKind) -> TxnGuard {
        let counter = self.counter(kind);
        let now = counter.fetch_add(1, Ordering::AcqRel) + 1;
        if now > self.threshold {
            self.warnings.fetch_add(1, Ordering::Relaxed);
            let label = match kind {
                TxnKind::Generic => "generic",
                TxnKind::ReadOnly => "read-only",
            };
            tracing::warn!(
                open = now,
                threshold = self.threshold,
                "The number of concurrent {label} transactions ({now}) exceeded the threshold {}",
                self.threshold
            );
        }
        TxnGuard {
            watcher: self.clone(),
            kind,
        }
    }

    fn counter(&self, kind: TxnKind) -> &AtomicUsize {
        match kind {
            TxnKind::Generic => &self.generic,
            TxnKind::ReadOnly => &self.readonly,
        }
    }

    pub fn open(&self, kind: TxnKind) -> usize {
        self.counter(kind).load(Ordering::Acquire)
    }

    /// How many times the excess warning fired since start (exposed for tests and metrics).
    pub fn warnings_emitted(&self) -> u64 {
        self.warnings.load(Ordering::Relaxed)
    }
}

struct TxnGuard {
    watcher: Arc<TxnWatcher>,
    kind: TxnKind,
}

impl Drop for TxnGuard {
    fn drop(&mut self) {
        self.watcher
            .counter(self.kind)
            .fetch_sub(1, Ordering::AcqRel);
    }
}

/// An open transaction. Dereferences to the connection, so `&mut *txn` is an executor.
/// Dropping it without [`Txn::commit`] rolls back.
pub struct Txn {
    inner: sqlx::Transaction<'static, Postgres>,
    _guard: TxnGuard,
}

impl Txn {
    pub async fn commit(self) -> Result<(), sqlx::Error> {
        self.inner.commit().await
    }

    pub async fn rollback(self) -> Result<(), sqlx::Error> {
        self.inner.rollback().await
    }
}

impl Deref for Txn {
    type Target = PgConnection;
    fn deref(&self) -> &PgConnection {
        &self.inner
    }
}

impl DerefMut for Txn {
    fn deref_mut(&mut self) -> &mut PgConnection {
        &mut self.inner
    }
}

/// Retry bounds for [`Db::transact`].
#[derive(Clone, Debug)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub max_elapsed: Duration,
    pub initial_interval: Duration,
}

impl RetryPolicy {
    pub fn from_config(cfg: &DbConfig) -> Self {
        Self {
            max_attempts: cfg.txn_retry_max_attempts,
            max_elapsed: Duration::from_millis(cfg.txn_retry_max_elapsed_ms),
            initial_interval: Duration::from_millis(cfg.txn_retry_initial_ms.max(1)),
        }
    }

    fn backoff(&self) -> backoff::ExponentialBackoff {
        ExponentialBackoffBuilder::new()
            .with_initial_interval(self.initial_interval)
            .with_multiplier(2.0)
            // Jitter spreads colliding transactions apart so they do not collide again.
            .with_randomization_factor(0.5)
            .with_max_interval(Duration::from_millis(500))
            .with_max_elapsed_time(Some(self.max_elapsed))
            .build()
    }
}

/// The database handle shared by every component of one process.
#[derive(Clone)]
pub struct Db {
    pool: PgPool,
    policy: RetryPolicy,
    watcher: Arc<TxnWatcher>,
    retries: Arc<AtomicU64>,
}

/// SQLSTATEs that mean "run the same transaction again": serialization_failure, deadlock.
pub fn is_retryable_sqlstate(code: &str) -> bool {
    code == "40001" || code == "40P01"
}

fn retryable(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|s| s.as_database_error())
            .and_then(|d| d.code())
            .is_some_and(|c| is_retryable_sqlstate(&c))
    })
}

impl Db {
    /// Connects, checks the server version and returns the handle. Connection attempts are
    /// retried with backoff for up to `connect_timeout`, then fail with a clear error.
    pub async fn connect(cfg: &DbConfig, connect_timeout: Duration) -> Result<Self, ServiceError> {
        let url = cfg.url();
        let unreachable = |attempts, message: String| ServiceError::Unreachable {
            service: "PostgreSQL",
            addr: format!("{}/{}", cfg.addr, cfg.name),
            attempts,
            message,
        };
        let base = if cfg.addr.starts_with('/') {
            // A directory: the server's Unix socket on this host. Loopback TCP costs about
            // twice as much CPU per statement on both ends (docs/BENCHMARKS.md).
            let mut o = PgConnectOptions::new()
                .socket(&cfg.addr)
                .username(&cfg.user)
                .database(&cfg.name);
            if let Some(p) = cfg.password.as_deref().filter(|p| !p.is_empty()) {
                o = o.password(p);
            }
            o
        } else {
            PgConnectOptions::from_str(&url).map_err(|e| unreachable(0, e.to_string()))?
        };
        let opts = base
            // Every transaction on these connections is SERIALIZABLE unless it says otherwise;
            // JIT only slows down the short OLTP queries we run (the original disables it too).
            .options([
                ("default_transaction_isolation", "serializable"),
                ("jit", "off"),
            ])
            .application_name("backend.ai-manager");
        let mut policy = ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(200))
            .with_max_interval(Duration::from_secs(2))
            .with_max_elapsed_time(Some(connect_timeout))
            .build();
        let mut attempts = 0;
        let pool = loop {
            attempts += 1;
            // Probe with one plain connection first: it fails fast when the server is down,
            // whereas the pool would wait for its whole acquire timeout.
            let probe = async {
                use sqlx::Connection;
                sqlx::PgConnection::connect_with(&opts)
                    .await?
                    .close()
                    .await?;
                PgPoolOptions::new()
                    .max_connections(cfg.max_connections)
                    .acquire_timeout(Duration::from_secs(30))
                    // sqlx already pings every connection when it is released (that flushes
                    // dropped transactions' ROLLBACKs); a second ping on acquire would put
                    // one more round trip on the path of every request for nothing.
                    .test_before_acquire(false)
                    .connect_with(opts.clone())
                    .await
            };
            match probe.await {
                Ok(pool) => break pool,
                Err(e) => match policy.next_backoff() {
                    Some(wait) => {
                        tracing::warn!(error = %e, "PostgreSQL not reachable yet; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => return Err(unreachable(attempts, e.to_string())),
                },
            }
        };
        let db = Self::from_pool(pool, cfg);
        db.check_version().await?;
        Ok(db)
    }

    pub fn from_pool(pool: PgPool, cfg: &DbConfig) -> Self {
        Self {
            pool,
            policy: RetryPolicy::from_config(cfg),
            watcher: Arc::new(TxnWatcher::new(cfg.txn_concurrency_threshold)),
            retries: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Refuses servers older than [`MIN_PG_VERSION`] (21.03 #407) and logs the version.
    pub async fn check_version(&self) -> Result<String, ServiceError> {
        let unreachable = |message: String| ServiceError::Unreachable {
            service: "PostgreSQL",
            addr: "pool".into(),
            attempts: 1,
            message,
        };
        let (num, text): (String, String) =
            sqlx::query_as("SELECT current_setting('server_version_num'), version()")
                .fetch_one(&self.pool)
                .await
                .map_err(|e| unreachable(e.to_string()))?;
        check_pg_version(&num, &text)?;
        tracing::info!(version = %text, "connected to PostgreSQL");
        Ok(text)
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn watcher(&self) -> &Arc<TxnWatcher> {
        &self.watcher
    }

    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Returns a handle with a different retry policy (tests, benchmarks, special jobs).
    pub fn with_policy(&self, policy: RetryPolicy) -> Self {
        Self {
            policy,
            ..self.clone()
        }
    }

    /// Serialization retries performed since start.
    pub fn retries_performed(&self) -> u64 {
        self.retries.load(Ordering::Relaxed)
    }

    /// Opens a SERIALIZABLE read-write transaction. Prefer [`Db::transact`], which retries.
    pub async fn begin(&self) -> Result<Txn, sqlx::Error> {
        let inner = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE")
            .await?;
        Ok(Txn {
            inner,
            _guard: self.watcher.enter(TxnKind::Generic),
        })
    }

    /// Opens a `READ ONLY` SERIALIZABLE transaction: any write inside it fails (25006).
    pub async fn begin_readonly(&self) -> Result<Txn, sqlx::Error> {
        // One round trip: the access mode is part of BEGIN.
        let inner = self
            .pool
            .begin_with("BEGIN ISOLATION LEVEL SERIALIZABLE READ ONLY")
            .await?;
        Ok(Txn {
            inner,
            _guard: self.watcher.enter(TxnKind::ReadOnly),
        })
    }

    /// Runs `f` in a SERIALIZABLE transaction and commits; on 40001/40P01 (from any
    /// statement or from COMMIT) the whole closure runs again after a backoff.
    ///
    /// The closure must be safe to re-run: it should only touch the database through the
    /// transaction it is given (side effects elsewhere belong after the commit).
    pub async fn transact<T, F>(&self, mut f: F) -> Result<T, TxnError>
    where
        F: for<'c> FnMut(&'c mut Txn) -> BoxFuture<'c, anyhow::Result<T>>,
    {
        let started = Instant::now();
        let mut policy = self.policy.backoff();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let outcome: anyhow::Result<T> = async {
                let mut txn = self.begin().await?;
                let value = f(&mut txn).await?;
                txn.commit().await?;
                Ok(value)
            }
            .await;
            let err = match outcome {
                Ok(v) => return Ok(v),
                Err(e) if retryable(&e) => e,
                Err(e) => {
                    return Err(match e.downcast::<sqlx::Error>() {
                        Ok(sqlx_err) => TxnError::Database(sqlx_err),
                        Err(other) => TxnError::Other(other),
                    })
                }
            };
            let wait = if attempt < self.policy.max_attempts {
                policy.next_backoff()
            } else {
                None
            };
            match wait {
                Some(d) => {
                    self.retries.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(attempt, wait_ms = d.as_millis() as u64, error = %err, "retrying transaction");
                    tokio::time::sleep(d).await;
                }
                None => {
                    return Err(TxnError::RetriesExhausted {
                        attempts: attempt,
                        elapsed_ms: started.elapsed().as_millis(),
                        last: format!("{err:#}"),
                    })
                }
            }
        }
    }

    /// Applies pending migrations.
    pub async fn migrate(&self) -> Result<(), sqlx::migrate::MigrateError> {
        MIGRATOR.run(&self.pool).await
    }

    /// The applied migration versions with their descriptions, oldest first.
    pub async fn schema_versions(&self) -> Result<Vec<(i64, String, bool)>, sqlx::Error> {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass('_sqlx_migrations') IS NOT NULL")
            .fetch_one(&self.pool)
            .await?;
        if !exists {
            return Ok(Vec::new());
        }
        sqlx::query_as(
            "SELECT version, description, success FROM _sqlx_migrations ORDER BY version",
        )
        .fetch_all(&self.pool)
        .await
    }
}

/// Validates `server_version_num` against the supported minimum.
pub fn check_pg_version(version_num: &str, version_text: &str) -> Result<(), ServiceError> {
    let num: i32 = version_num.trim().parse().unwrap_or(0);
    if num < MIN_PG_VERSION_NUM {
        return Err(ServiceError::UnsupportedPostgres {
            found: version_text.to_string(),
            minimum: MIN_PG_VERSION.to_string(),
        });
    }
    Ok(())
}

/// Takes the transaction-scoped advisory lock of one scaling group.
///
/// Keyed by `(namespace, hashtext(name))`, so different groups never block each other
/// (barring a hash collision, which only costs parallelism) while two passes over the same
/// group serialise. Released automatically at commit or rollback.
pub async fn lock_scaling_group(
    conn: &mut PgConnection,
    scaling_group: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query("SELECT pg_advisory_xact_lock($1, hashtext($2))")
        .bind(SCALING_GROUP_LOCK_NS)
        .bind(scaling_group)
        .execute(conn)
        .await?;
    Ok(())
}

/// Non-blocking variant: `false` when another transaction holds the group's lock.
pub async fn try_lock_scaling_group(
    conn: &mut PgConnection,
    scaling_group: &str,
) -> Result<bool, sqlx::Error> {
    sqlx::query_scalar("SELECT pg_try_advisory_xact_lock($1, hashtext($2))")
        .bind(SCALING_GROUP_LOCK_NS)
        .bind(scaling_group)
        .fetch_one(conn)
        .await
}
