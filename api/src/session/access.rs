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
