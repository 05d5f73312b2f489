//! Per-keypair rate limiting and the query counter, in one Redis round trip per request.
//!
//! The window is a true rolling window like the original's (api-rest.md §1.8): a sorted
//! set `rlim:{access_key}` holds one member per request scored by its time; each request
//! drops members older than 900 s, adds itself and counts. A Lua script does that
//! atomically, and in the same call bumps `kp:{access_key}:num_queries` (KeyPair.num_queries,
//! kept in Redis with a 30-day TTL so the hot path never writes PostgreSQL). One `EVALSHA`
//! per request; the script body is sent again only after a Redis restart (`NOSCRIPT`).
//!
//! Fixed time buckets would use less memory, but they let a client send 2× the limit
//! across a bucket boundary; the sorted set costs O(limit) members per key, which for the
//! largest limits we see (30 000) is about 2 MiB per busy key and expires with the window.
//!
//! Time comes from the Redis server (`TIME`), not from the API process, so API replicas
//! with skewed clocks still share one consistent window. As in the original, rejected
//! requests are counted too: a client hammering past its limit stays limited.

use axum::http::{HeaderMap, HeaderValue};
use bai_core::redis::{redis, RedisPool};

/// The rolling window, in seconds.
pub const WINDOW_SECS: u64 = 900;
/// Headers sent with requests that are not bound to a keypair.
pub const ANONYMOUS_LIMIT: i64 = 1000;
/// Retention of the per-keypair query counter.
pub const NUM_QUERIES_TTL_SECS: u64 = 30 * 24 * 3600;

const SCRIPT: &str = r#"
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local window = tonumber(ARGV[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now - window)
redis.call('ZADD', KEYS[1], now, ARGV[2])
redis.call('PEXPIRE', KEYS[1], window)
local count = redis.call('ZCARD', KEYS[1])
redis.call('INCR', KEYS[2])
redis.call('EXPIRE', KEYS[2], ARGV[3])
return count
"#;

/// Redis key of the rolling window of one keypair.
pub fn window_key(access_key: &str) -> String {
    format!("rlim:{access_key}")
}

/// Redis key of KeyPair.num_queries (read by GraphQL's `num_queries` field).
pub fn num_queries_key(access_key: &str) -> String {
    format!("kp:{access_key}:num_queries")
}

/// What the headers say about one request.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RateLimitStatus {
    pub limit: i64,
    pub remaining: i64,
    pub exceeded: bool,
}

impl RateLimitStatus {
    pub fn anonymous() -> Self {
        Self {
            limit: ANONYMOUS_LIMIT,
            remaining: ANONYMOUS_LIMIT,
            exceeded: false,
        }
    }

    pub fn apply(&self, headers: &mut HeaderMap) {
        headers.insert("x-ratelimit-limit", HeaderValue::from(self.limit));
        headers.insert("x-ratelimit-remaining", HeaderValue::from(self.remaining));
        headers.insert("x-ratelimit-window", HeaderValue::from(WINDOW_SECS));
    }
}

pub struct RateLimiter {
    script: redis::Script,
}

impl Default for RateLimiter {
    fn default() -> Self {
        Self {
            script: redis::Script::new(SCRIPT),
        }
    }
}

impl RateLimiter {
    /// Records one request of `access_key` and tells whether it is within `limit`.
    pub async fn hit(
        &self,
        pool: &RedisPool,
        access_key: &str,
        limit: i64,
    ) -> anyhow::Result<RateLimitStatus> {
        let mut conn = pool.get().await?;
        // Members must be unique per request; the score carries the time.
        let member = format!(
            "{:016x}{:016x}",
            rand::random::<u64>(),
            rand::random::<u64>()
        );
        let count: i64 = self
            .script
            .key(window_key(access_key))
            .key(num_queries_key(access_key))
            .arg(WINDOW_SECS * 1000)
            .arg(member)
            .arg(NUM_QUERIES_TTL_SECS)
            .invoke_async(&mut *conn)
            .await?;
        Ok(RateLimitStatus {
            limit,
            remaining: (limit - count).max(0),
            exceeded: count > limit,
        })
    }
}
