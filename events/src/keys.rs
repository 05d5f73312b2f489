//! Redis keys that one component writes and another reads, defined once so the API and
//! the workers cannot drift apart (orchestration.md §6.3 names the original's keys).

use uuid::Uuid;

/// `session.{session_id}.last_access`: Unix time in integer seconds of the last user
/// interaction with a session (execute, streaming execute, file operations), written by
/// the API, read by the idle checker. The value `0` means "busy, never idle" (the 21.03
/// sentinel of a running execution). A missing key means "no interaction since the
/// session started"; the checker then counts from the session's start.
///
/// `bai_api::session::access::last_access_key` produces the same string (a test pins it).
pub fn last_access_key(session_id: Uuid) -> String {
    format!("session.{session_id}.last_access")
}

/// `kernel.{kernel_id}.num_queries`: the number of execute calls made on a kernel
/// (`kernels.num_queries`), an absolute count `INCR`ed by the API on every execute (REST
/// or WebSocket) instead of a database write per request. Readers take it over the column
/// while the key exists; the workers copy it into the column (`GREATEST`, so a lost key
/// never lowers it) when the kernel terminates.
pub fn kernel_num_queries_key(kernel_id: Uuid) -> String {
    format!("kernel.{kernel_id}.num_queries")
}

/// Expiry of [`kernel_num_queries_key`], refreshed on every increment.
pub const KERNEL_NUM_QUERIES_TTL_SECS: u64 = 30 * 24 * 3600;

/// `bgtask.{task_id}`: the status hash of a background task (see [`crate::bgtask`]).
pub fn bgtask_key(task_id: Uuid) -> String {
    format!("bgtask.{task_id}")
}

#[cfg(test)]
mod tests {
    #[test]
    fn formats() {
        let id = uuid::Uuid::nil();
        assert_eq!(
            super::last_access_key(id),
            "session.00000000-0000-0000-0000-000000000000.last_access"
        );
        assert_eq!(
            super::kernel_num_queries_key(id),
            "kernel.00000000-0000-0000-0000-000000000000.num_queries"
        );
        assert_eq!(
            super::bgtask_key(id),
            "bgtask.00000000-0000-0000-0000-000000000000"
        );
    }
}
