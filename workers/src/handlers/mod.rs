//! Command handlers: one function per command kind, all idempotent.

use std::sync::Arc;

use serde_json::json;

use bai_events::{Command, CommandReply, Envelope};

use crate::idempotency::run_once;

pub mod admin;
pub mod manager;
pub mod rest;
pub mod vfolder;
use crate::runtime::{HandlerError, WorkerContext};

/// Routes a command to its handler.
pub async fn dispatch(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
) -> Result<CommandReply, HandlerError> {
    match &env.body {
        Command::Echo {
            payload,
            fail,
            delay_ms,
        } => {
            if *delay_ms > 0 {
                tokio::time::sleep(std::time::Duration::from_millis(*delay_ms)).await;
            }
            echo(ctx, env, payload, *fail).await
        }
        Command::Noop => Ok(CommandReply::Ok {
            result: json!(null),
        }),
        Command::RequestSchedule { scaling_group } => {
            let queued = ctx
                .bus
                .request_schedule(scaling_group)
                .await
                .map_err(|e| HandlerError::Transient(e.into()))?;
            Ok(CommandReply::Ok {
                result: json!({ "queued": queued }),
            })
        }
        Command::TerminateSession { session_id, reason } => {
            let reply = crate::sessions::destroy(ctx, *session_id, false, reason).await?;
            // System-issued terminations (batch end, idle timeout) of a session still in a
            // transitional status (e.g. its start is being recorded) are retried with the
            // runtime's backoff instead of being dropped: the session becomes RUNNING soon.
            if let CommandReply::Rejected {
                http_status: 403, ..
            } = &reply
            {
                return Err(HandlerError::Transient(anyhow::anyhow!(
                    "session {session_id} cannot be terminated yet ({reason})"
                )));
            }
            Ok(reply)
        }
        Command::CreateSession(spec) => crate::sessions::create(ctx, env, spec).await,
        Command::DestroySession {
            session_id,
            forced,
            reason,
        } => crate::sessions::destroy(ctx, *session_id, *forced, reason).await,
        Command::StartSession { session_id } => crate::sessions::start(ctx, *session_id).await,
        Command::RestartSession { session_id } => {
            crate::sessions::restart::restart(ctx, env, *session_id).await
        }
        Command::SetManagerStatus { .. }
        | Command::SetAnnouncement { .. }
        | Command::EtcdPut { .. }
        | Command::EtcdDelete { .. } => manager::handle(ctx, env).await,
        Command::Admin(cmd) => admin::handle(ctx, env, cmd).await,
        Command::StartBackgroundTask {
            task_id,
            kind,
            params,
        } => crate::bgtask::run(ctx, env, *task_id, kind, params).await,
        Command::CancelBackgroundTask { task_id } => crate::bgtask::cancel(ctx, *task_id).await,
        Command::Vfolder(cmd) => vfolder::handle(ctx, env, cmd).await,
        Command::Rest(cmd) => rest::handle(ctx, env, cmd).await,
    }
}

/// The echo command records one row per command id, so tests can count effects.
async fn echo(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
    payload: &str,
    fail: bool,
) -> Result<CommandReply, HandlerError> {
    if fail {
        return Err(HandlerError::Transient(anyhow::anyhow!(
            "echo asked to fail (poison-command test hook)"
        )));
    }
    let id = env.id;
    let payload = payload.to_string();
    let done = run_once(&ctx.db, id, "echo", move |txn| {
        let payload = payload.clone();
        Box::pin(async move {
            sqlx::query("INSERT INTO bus_echo_effects (command_id, payload) VALUES ($1, $2)")
                .bind(id)
                .bind(&payload)
                .execute(&mut **txn)
                .await?;
            Ok(json!({ "echo": payload }))
        })
    })
    .await
    .map_err(HandlerError::from_txn)?;
    Ok(CommandReply::Ok {
        result: done.into_value(),
    })
}
