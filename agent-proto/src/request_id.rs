//! The request id of the API request a manager → agent call is made for.
//!
//! Handlers do not pass it around: the worker (per command) and the API (per request) run
//! their work inside [`scope`], and [`crate::AgentRpcClient::call`] copies [`current`] into
//! the RPC request, where the agent's RPC server puts it in its log span. A task-local
//! rather than a parameter: every call site of the client would otherwise change.

use std::future::Future;

tokio::task_local! {
    static REQUEST_ID: Option<String>;
}

/// Runs `fut` with `id` as the current request id.
pub async fn scope<F: Future>(id: Option<String>, fut: F) -> F::Output {
    REQUEST_ID.scope(id, fut).await
}

/// The current request id, if the caller runs inside [`scope`] with one.
pub fn current() -> Option<String> {
    REQUEST_ID.try_with(|id| id.clone()).ok().flatten()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn scoped_and_absent() {
        assert_eq!(current(), None);
        let seen = scope(Some("rid-1".into()), async { current() }).await;
        assert_eq!(seen.as_deref(), Some("rid-1"));
        assert_eq!(scope(None, async { current() }).await, None);
    }
}
