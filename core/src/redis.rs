//! Redis connection pool (bb8-redis): counters, liveness, rate limits, live stats.

use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use bb8_redis::RedisConnectionManager;

use crate::config::RedisConfig;
use crate::error::ServiceError;

pub type RedisPool = bb8::Pool<RedisConnectionManager>;
pub use bb8_redis::redis;

/// Builds the pool and proves the server answers, retrying for up to `timeout`.
pub async fn connect(cfg: &RedisConfig, timeout: Duration) -> Result<RedisPool, ServiceError> {
    let unreachable = |attempts, message: String| ServiceError::Unreachable {
        service: "Redis",
        addr: cfg.addr.clone(),
        attempts,
        message,
    };
    let manager =
        RedisConnectionManager::new(cfg.url()).map_err(|e| unreachable(0, e.to_string()))?;
    let pool = bb8::Pool::builder()
        .max_size(cfg.pool_size)
        .connection_timeout(Duration::from_secs(5))
        .build_unchecked(manager);
    let mut policy = ExponentialBackoffBuilder::new()
        .with_initial_interval(Duration::from_millis(200))
        .with_max_interval(Duration::from_secs(2))
        .with_max_elapsed_time(Some(timeout))
        .build();
    let mut attempts = 0;
    loop {
        attempts += 1;
        let ping = async {
            let mut conn = pool.get().await.map_err(|e| e.to_string())?;
            redis::cmd("PING")
                .query_async::<String>(&mut *conn)
                .await
                .map_err(|e| e.to_string())
        }
        .await;
        match ping {
            Ok(_) => return Ok(pool),
            Err(e) => match policy.next_backoff() {
                Some(wait) => {
                    tracing::warn!(error = %e, "Redis not reachable yet; retrying");
                    tokio::time::sleep(wait).await;
                }
                None => return Err(unreachable(attempts, e)),
            },
        }
    }
}
