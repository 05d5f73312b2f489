//! Exactly-once *effect* for at-least-once delivery.
//!
//! A command's effect and its row in `processed_commands` commit in the same SERIALIZABLE
//! transaction. A redelivered (or concurrently delivered) command finds the row and gets
//! the stored result instead of acting again; two concurrent deliveries collide on the
//! primary key, and the loser sees the winner's row once it commits.

use std::sync::Arc;

use futures::future::BoxFuture;
use serde_json::Value;
use uuid::Uuid;

use bai_core::db::{Db, Txn};
use bai_core::TxnError;

/// Whether `run_once` executed the effect or found it already done.
#[derive(Debug, Clone, PartialEq)]
pub enum Once {
    Ran(Value),
    AlreadyDone(Value),
}

impl Once {
    pub fn into_value(self) -> Value {
        match self {
            Once::Ran(v) | Once::AlreadyDone(v) => v,
        }
    }
}

/// Runs `effect` once per `command_id` (retrying the whole transaction on conflicts).
pub async fn run_once<F>(db: &Db, command_id: Uuid, kind: &str, effect: F) -> Result<Once, TxnError>
where
    F: for<'c> Fn(&'c mut Txn) -> BoxFuture<'c, anyhow::Result<Value>> + Send + Sync + 'static,
{
    let effect = Arc::new(effect);
    let kind: Arc<str> = Arc::from(kind);
    db.transact(move |txn| {
        let effect = effect.clone();
        let kind = kind.clone();
        Box::pin(async move {
            let fresh: Option<Uuid> = sqlx::query_scalar(
                "INSERT INTO processed_commands (id, kind) VALUES ($1, $2) \
                 ON CONFLICT (id) DO NOTHING RETURNING id",
            )
            .bind(command_id)
            .bind(&*kind)
            .fetch_optional(&mut **txn)
            .await?;
            if fresh.is_none() {
                let stored: Option<Value> =
                    sqlx::query_scalar("SELECT result FROM processed_commands WHERE id = $1")
                        .bind(command_id)
                        .fetch_one(&mut **txn)
                        .await?;
                return Ok(Once::AlreadyDone(stored.unwrap_or(Value::Null)));
            }
            let value = effect(txn).await?;
            sqlx::query("UPDATE processed_commands SET result = $2 WHERE id = $1")
                .bind(command_id)
                .bind(&value)
                .execute(&mut **txn)
                .await?;
            Ok(Once::Ran(value))
        })
    })
    .await
}

/// Whether a command id has been processed (used by the API after a reply deadline).
pub async fn processed_result(db: &Db, command_id: Uuid) -> Result<Option<Value>, sqlx::Error> {
    let row: Option<Option<Value>> =
        sqlx::query_scalar("SELECT result FROM processed_commands WHERE id = $1")
            .bind(command_id)
            .fetch_optional(db.pool())
            .await?;
    Ok(row.map(|r| r.unwrap_or(Value::Null)))
}
