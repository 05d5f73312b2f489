//! The one error policy of the project.
//!
//! * **Inside** a component (handlers, loops, helpers) errors are `anyhow::Error` with
//!   context attached where it helps the reader of a log line.
//! * **At boundaries** — anything a user, operator or another process sees — errors are
//!   typed with `thiserror`: [`ConfigError`] for configuration, [`TxnError`] for the
//!   transaction layer, [`ServiceError`] for connecting to backing services,
//!   [`FixtureError`] for fixture files, and the API's `ApiError` (in `bai-api`), which
//!   renders the original's problem+json shape.
//! * Transient failures (serialization conflicts, deadlocks, a service briefly away) are
//!   retried where they occur, with bounded backoff; what is left after the bound is
//!   reported, never swallowed.
//! * `unwrap()`/`expect()` appear only in tests or on invariants the code itself
//!   established (documented at the call site), never on input or I/O.

use std::path::PathBuf;

/// Configuration problems, always naming the file or field at fault.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    NotFound(PathBuf),
    #[error("invalid configuration in {source_name}: {message}")]
    Invalid {
        source_name: String,
        message: String,
    },
    #[error("invalid configuration value for `{field}`: {message}")]
    BadValue { field: String, message: String },
}

/// Errors of the transaction layer (see [`crate::db`]).
#[derive(Debug, thiserror::Error)]
pub enum TxnError {
    #[error(
        "transaction could not be serialized after {attempts} attempts in {elapsed_ms} ms \
         (last error: {last})"
    )]
    RetriesExhausted {
        attempts: u32,
        elapsed_ms: u128,
        last: String,
    },
    #[error(transparent)]
    Database(#[from] sqlx::Error),
    #[error(transparent)]
    Other(anyhow::Error),
}

impl TxnError {
    /// True for failures that a later attempt may not hit (used by workers to decide
    /// between nak-with-backoff and terminating a command).
    pub fn is_transient(&self) -> bool {
        match self {
            TxnError::RetriesExhausted { .. } => true,
            TxnError::Database(e) => is_connection_error(e),
            TxnError::Other(e) => e
                .downcast_ref::<sqlx::Error>()
                .map(is_connection_error)
                .unwrap_or(false),
        }
    }
}

pub(crate) fn is_connection_error(e: &sqlx::Error) -> bool {
    matches!(
        e,
        sqlx::Error::Io(_)
            | sqlx::Error::PoolTimedOut
            | sqlx::Error::PoolClosed
            | sqlx::Error::WorkerCrashed
    ) || matches!(e, sqlx::Error::Database(d) if d.code().is_some_and(|c| c.starts_with("08") || c == "57P01" || c == "57P03"))
}

/// A backing service could not be reached or refused us.
#[derive(Debug, thiserror::Error)]
pub enum ServiceError {
    #[error("cannot reach {service} at {addr} after {attempts} attempts: {message}")]
    Unreachable {
        service: &'static str,
        addr: String,
        attempts: u32,
        message: String,
    },
    #[error("PostgreSQL {found} is not supported: Backend.AI needs PostgreSQL {minimum} or newer")]
    UnsupportedPostgres { found: String, minimum: String },
}

/// Problems with a fixture file; nothing is written when one of these is returned.
#[derive(Debug, thiserror::Error)]
pub enum FixtureError {
    #[error("cannot read fixture {file}: {message}")]
    Read { file: String, message: String },
    #[error("malformed fixture {file}: {message}")]
    Malformed { file: String, message: String },
    #[error("fixture {file}: {field}: {message}")]
    BadField {
        file: String,
        field: String,
        message: String,
    },
    #[error("fixture {file}: database rejected {table}: {message}")]
    Rejected {
        file: String,
        table: String,
        message: String,
    },
}
