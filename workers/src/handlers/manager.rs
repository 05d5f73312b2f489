//! Handlers for manager-level shared configuration in etcd: manager status (freeze),
//! the announcement, and raw `/config/set|delete` writes.
//!
//! Idempotency: each command writes a value it carries in full (a put of the same value,
//! or a delete), so a redelivered command leaves etcd as the first delivery did. The only
//! reordering risk is a crash between the write and the ack followed by a *newer* write of
//! the same key landing before the redelivery; operators' writes of one key are rare and
//! manual, so we accept last-writer-wins here rather than version every key.

use std::sync::Arc;

use serde_json::{json, Value};

use bai_core::etcd::Etcd;
use bai_events::{Command, CommandReply, Envelope};

use crate::runtime::{HandlerError, WorkerContext};

pub const MANAGER_STATUS_KEY: &str = "manager/status";
pub const ANNOUNCEMENT_KEY: &str = "manager/announcement";
/// Leaves a single `/config/set` may write (the original's limit).
pub const MAX_SET_LEAVES: usize = 16;

fn etcd(ctx: &WorkerContext) -> Result<&Etcd, HandlerError> {
    ctx.etcd.as_ref().ok_or_else(|| {
        HandlerError::Permanent(anyhow::anyhow!("this worker has no etcd connection"))
    })
}

fn transient(e: anyhow::Error) -> HandlerError {
    // etcd briefly away (leader election, restart): worth another delivery.
    HandlerError::Transient(e)
}

fn bad_request(msg: String) -> CommandReply {
    CommandReply::Rejected {
        http_status: 400,
        error_type: "invalid-api-params".into(),
        title: "Missing or invalid API parameters.".into(),
        msg: Some(msg),
        data: None,
    }
}

pub async fn handle(
    ctx: &Arc<WorkerContext>,
    env: &Envelope<Command>,
) -> Result<CommandReply, HandlerError> {
    let etcd = etcd(ctx)?;
    match &env.body {
        Command::SetManagerStatus { status } => {
            if status != "running" && status != "frozen" {
                return Ok(bad_request(format!("unknown manager status {status:?}")));
            }
            etcd.put(MANAGER_STATUS_KEY, status)
                .await
                .map_err(transient)?;
            tracing::info!(%status, "manager status changed");
            Ok(CommandReply::Ok {
                result: json!({ "status": status }),
            })
        }
        Command::SetAnnouncement { message } => {
            match message {
                Some(m) => etcd.put(ANNOUNCEMENT_KEY, m).await.map_err(transient)?,
                None => {
                    etcd.delete(ANNOUNCEMENT_KEY, false)
                        .await
                        .map_err(transient)?;
                }
            }
            Ok(CommandReply::Ok { result: json!({}) })
        }
        Command::EtcdPut { key, value } => {
            match value {
                Value::String(s) => etcd.put(key, s).await.map_err(transient)?,
                Value::Object(_) => {
                    let mut leaves = Vec::new();
                    bai_core::etcd::flatten_json(key.trim_end_matches('/'), value, &mut leaves);
                    if leaves.len() > MAX_SET_LEAVES {
                        return Ok(bad_request("Too large update".into()));
                    }
                    etcd.put_json(key, value).await.map_err(transient)?;
                }
                _ => return Ok(bad_request("value must be a string or an object".into())),
            }
            Ok(CommandReply::Ok {
                result: json!({ "result": "ok" }),
            })
        }
        Command::EtcdDelete { key, prefix } => {
            let deleted = etcd.delete(key, *prefix).await.map_err(transient)?;
            Ok(CommandReply::Ok {
                result: json!({ "result": "ok", "deleted": deleted }),
            })
        }
        other => Err(HandlerError::Permanent(anyhow::anyhow!(
            "manager handler got an unrelated command: {other:?}"
        ))),
    }
}
