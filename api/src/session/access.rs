//! The last time a user touched a session, for the idle checker (Redis only: recording an
//! interaction changes no state, so it never costs a database write — DESIGN.md rule 7).

use uuid::Uuid;

use bai_core::redis::redis;

use crate::state::AppState;

/// Format of the Redis key holding a session's last access: `session.{session_id}.last_access`
/// (the key the 21.03 idle checker uses). The value is the Unix time in **integer
/// seconds** of the last execute, streaming execute or file operation (upload, download,
/// listing) on the session. Written by the API, read by the idle checker; a missing key
/// means "no interaction since the session was created".
pub const LAST_ACCESS_KEY_FORMAT: &str = "session.{session_id}.last_access";

/// Expiry of the key, refreshed on every write: long enough for any idle timeout a policy
/// sets in practice (the original used max(1 day, 2 × idle timeout)), short enough that
/// keys of long-gone sessions do not pile up.
pub const LAST_ACCESS_TTL_SECS: u64 = 7 * 24 * 3600;

pub fn last_access_key(session_id: Uuid) -> String {
    LAST_ACCESS_KEY_FORMAT.replace("{session_id}", &session_id.to_string())
}

/// Records an interaction with `session_id` now. Failures are logged, never returned: a
/// Redis blip must not fail the user's request (at worst the idle checker sees an older
/// access time).
pub async fn touch(state: &AppState, session_id: Uuid) {
    let now = chrono::Utc::now().timestamp();
    let res = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
        redis::cmd("SET")
            .arg(last_access_key(session_id))
            .arg(now)
            .arg("EX")
            .arg(LAST_ACCESS_TTL_SECS)
            .query_async::<()>(&mut *conn)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, %session_id, "could not record the session's last access");
    }
}

/// [`touch`] plus one more execute call counted for the kernel (`kernels.num_queries`),
/// in the same Redis round trip: the count lives in Redis
/// ([`bai_events::keys::kernel_num_queries_key`]) and reaches the database when the kernel
/// terminates, instead of costing a database write per execute like the original.
pub async fn touch_and_count(state: &AppState, session_id: Uuid, kernel_id: Uuid) {
    let now = chrono::Utc::now().timestamp();
    let res = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
        let counter = bai_events::keys::kernel_num_queries_key(kernel_id);
        redis::pipe()
            .cmd("SET")
            .arg(last_access_key(session_id))
            .arg(now)
            .arg("EX")
            .arg(LAST_ACCESS_TTL_SECS)
            .ignore()
            .cmd("INCR")
            .arg(&counter)
            .ignore()
            .cmd("EXPIRE")
            .arg(&counter)
            .arg(bai_events::keys::KERNEL_NUM_QUERIES_TTL_SECS)
            .ignore()
            .query_async::<()>(&mut *conn)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    if let Err(e) = res {
        tracing::warn!(error = %e, %session_id, "could not count the execute call");
    }
}

/// The execute calls counted in Redis for these kernels (`None` where there is no count
/// or Redis is away: the caller then keeps the database column).
pub async fn counted_queries(state: &AppState, kernel_ids: &[Uuid]) -> Vec<Option<i64>> {
    if kernel_ids.is_empty() {
        return Vec::new();
    }
    let res = async {
        let mut conn = state.redis.get().await.map_err(|e| e.to_string())?;
        let keys: Vec<String> = kernel_ids
            .iter()
            .map(|k| bai_events::keys::kernel_num_queries_key(*k))
            .collect();
        redis::cmd("MGET")
            .arg(&keys)
            .query_async::<Vec<Option<i64>>>(&mut *conn)
            .await
            .map_err(|e| e.to_string())
    }
    .await;
    match res {
        Ok(v) if v.len() == kernel_ids.len() => v,
        Ok(_) => vec![None; kernel_ids.len()],
        Err(e) => {
            tracing::debug!(error = %e, "cannot read execute counts from Redis");
            vec![None; kernel_ids.len()]
        }
    }
}

/// `kernels.num_queries` as readers should show it: the Redis count when there is one
/// (always at least the column, which only the termination copy writes), else the column.
pub async fn num_queries(state: &AppState, kernel_id: Uuid, column: Option<i64>) -> i64 {
    let counted = counted_queries(state, &[kernel_id])
        .await
        .into_iter()
        .next()
        .flatten();
    counted.unwrap_or(0).max(column.unwrap_or(0))
}

#[cfg(test)]
mod tests {
    #[test]
    fn key_format() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            super::last_access_key(id),
            "session.00000000-0000-0000-0000-000000000000.last_access"
        );
    }
}
