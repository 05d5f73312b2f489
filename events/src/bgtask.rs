//! Background tasks (21.03 #392, #394): the shared vocabulary of the worker that runs a
//! task and the API that reports on it.
//!
//! A task's state is the Redis hash [`crate::keys::bgtask_key`] with the original's fields
//! (`status`, `current`, `total`, `msg`, `started_at`, `last_update`, all strings), kept
//! [`TTL_SECS`] after its last update so late subscribers get the final result; progress
//! and the outcome are also published as `bgtask_*` events on the EVENTS stream (subject
//! `<p>.evt.bgtask_<x>.<task_id>`). Cancellation is the extra field [`CANCEL_FIELD`],
//! which the running task polls.

/// How long a task's hash lives after its last update (`MAX_BGTASK_ARCHIVE_PERIOD`).
pub const TTL_SECS: u64 = 86_400;

pub const STATUS_STARTED: &str = "started";
pub const STATUS_DONE: &str = "done";
pub const STATUS_FAILED: &str = "failed";
pub const STATUS_CANCELLED: &str = "cancelled";

/// Set to `1` in the hash to ask the running task to stop.
pub const CANCEL_FIELD: &str = "cancel_requested";

/// Task kinds a worker knows how to run.
pub const KIND_RECALCULATE_USAGE: &str = "recalculate_usage";
pub const KIND_RESCAN_IMAGES: &str = "rescan_images";
/// An operator/test probe: `steps` progress updates `step_ms` apart, optionally failing at
/// step `fail_at` with `message` (like the `echo` command's test hooks).
pub const KIND_PROBE: &str = "probe";

/// Whether `status` is final.
pub fn is_terminal(status: &str) -> bool {
    matches!(status, STATUS_DONE | STATUS_FAILED | STATUS_CANCELLED)
}

/// A progress number as the original wrote it: integers without a fraction (`3`, not
/// `3.0`), since Python's `str()`/`json.dumps()` of the int counters did so.
pub fn progress_text(v: f64) -> String {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        format!("{}", v as i64)
    } else {
        format!("{v}")
    }
}

/// The JSON number form of [`progress_text`].
pub fn progress_json(v: f64) -> serde_json::Value {
    if v.fract() == 0.0 && v.abs() < 9.0e15 {
        serde_json::Value::from(v as i64)
    } else {
        serde_json::Value::from(v)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_like_python() {
        assert_eq!(progress_text(3.0), "3");
        assert_eq!(progress_text(2.5), "2.5");
        assert_eq!(progress_json(0.0).to_string(), "0");
        assert!(is_terminal("done") && !is_terminal("started"));
    }
}
