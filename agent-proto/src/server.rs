//! The agent's side of RPC: consume the agent's queue, run each call, reply.
//!
//! A request is acknowledged as soon as it is received (at-most-once): RPCs such as
//! `create_kernels` must never run twice because an agent crashed halfway, and the caller
//! has a deadline anyway. Each call runs in its own task so a slow `create_kernels` does
//! not block a `ping`; the number of unacknowledged deliveries per consumer is bounded by
//! the channel's prefetch, which the caller sets.

use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use futures::StreamExt;
use lapin::message::Delivery;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicPublishOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use serde_json::Value;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tracing::Instrument;

use crate::amqp::now_ms;
use crate::messages::*;

/// Implemented by the real agent and by the simulated one.
pub trait RpcHandler: Send + Sync + 'static {
    fn handle(self: Arc<Self>, call: RpcCall) -> BoxFuture<'static, Result<Value, RemoteError>>;
}

/// Consumes `queue` on `channel` until `shutdown` fires or the consumer ends (broker
/// cancelled it, channel closed). Replies go out on `reply_channel` (which may be shared
/// by many agents; it must *not* be in confirm mode). In-flight calls get `grace` to finish
/// at shutdown.
pub async fn serve<H: RpcHandler>(
    channel: Channel,
    reply_channel: Channel,
    queue: String,
    consumer_tag: String,
    handler: Arc<H>,
    shutdown: CancellationToken,
    grace: Duration,
) -> anyhow::Result<()> {
    let mut consumer = channel
        .basic_consume(
            &queue,
            &consumer_tag,
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let mut tasks = JoinSet::new();
    let result = loop {
        let next = tokio::select! {
            _ = shutdown.cancelled() => break Ok(()),
            d = consumer.next() => d,
        };
        match next {
            None => break Ok(()),
            Some(Err(e)) => break Err(anyhow::anyhow!("RPC consumer on {queue} failed: {e}")),
            Some(Ok(delivery)) => {
                let handler = handler.clone();
                let reply_channel = reply_channel.clone();
                tasks.spawn(async move { handle_delivery(delivery, handler, reply_channel).await });
            }
        }
        while tasks.try_join_next().is_some() {}
    };
    if shutdown.is_cancelled() && channel.status().connected() {
        let _ = channel
            .basic_cancel(&consumer_tag, BasicCancelOptions::default())
            .await;
    }
    let _ = tokio::time::timeout(grace, async { while tasks.join_next().await.is_some() {} }).await;
    tasks.abort_all();
    result
}

async fn handle_delivery<H: RpcHandler>(
    delivery: Delivery,
    handler: Arc<H>,
    reply_channel: Channel,
) {
    if let Err(e) = delivery.ack(BasicAckOptions::default()).await {
        tracing::warn!(error = %e, "could not ack an RPC request");
    }
    let reply_to = delivery
        .properties
        .reply_to()
        .as_ref()
        .map(|s| s.to_string());
    let correlation_id = delivery
        .properties
        .correlation_id()
        .as_ref()
        .map(|s| s.to_string());
    let outcome = match decode::<RpcRequest>(&delivery.data) {
        Err(e) => {
            tracing::warn!(error = %e, "malformed RPC request rejected");
            RpcOutcome::Error(RemoteError::new("bad-request", e.to_string()))
        }
        Ok(req) if req.deadline_ms < now_ms() => {
            // The caller has given up already; running the call would only do harm.
            tracing::warn!(
                method = req.call.method(),
                late_ms = now_ms() - req.deadline_ms,
                "dropping an RPC request past its deadline"
            );
            return;
        }
        Ok(req) => {
            let method = req.call.method();
            let request_id = req.request_id.clone().unwrap_or_default();
            tracing::info!(method, request_id, "RPC request");
            match handler
                .handle(req.call)
                .instrument(tracing::info_span!("rpc", method, request_id))
                .await
            {
                Ok(result) => RpcOutcome::Ok { result },
                Err(error) => {
                    tracing::info!(method, request_id, error = %error, "RPC failed");
                    RpcOutcome::Error(error)
                }
            }
        }
    };
    let (Some(reply_to), Some(correlation_id)) = (reply_to, correlation_id) else {
        return;
    };
    let body = serde_json::to_vec(&RpcResponse {
        v: PROTOCOL_VERSION,
        outcome,
    })
    .unwrap_or_default();
    let props = BasicProperties::default()
        .with_correlation_id(ShortString::from(correlation_id))
        .with_content_type(ShortString::from("application/json"));
    // Not mandatory: on a channel without confirms a returned reply would only pile up in
    // the client library; a caller that went away simply misses its reply.
    if let Err(e) = reply_channel
        .basic_publish("", &reply_to, BasicPublishOptions::default(), &body, props)
        .await
    {
        tracing::warn!(error = %e, "could not send an RPC reply");
    }
}
