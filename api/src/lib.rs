//! The HTTP front-end. It reads with read-only transactions, Redis and etcd, and writes
//! only by publishing commands (see `bai-events`); it never mutates state itself.

pub mod auth;
pub mod error;
pub mod routes;
pub mod state;

use std::net::SocketAddr;

use axum::http::{header, HeaderValue};
use axum::routing::get;
use axum::Router;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::TraceLayer;

pub use error::{ApiError, ApiResult};
pub use state::AppState;

/// Builds the router over a shared state.
pub fn router(state: AppState) -> Router {
    Router::new()
        .route("/", get(routes::root::hello))
        .fallback(|| async { ApiError::not_found() })
        .layer(SetResponseHeaderLayer::overriding(
            header::SERVER,
            HeaderValue::from_static("BackendAI"),
        ))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

/// A bound, not yet running server (zero2prod style: `main` and tests share this; bind
/// port 0 in tests and read the real port back).
pub struct Application {
    listener: TcpListener,
    router: Router,
}

impl Application {
    pub async fn build(state: AppState, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then finishes in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        axum::serve(
            self.listener,
            self.router.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move { shutdown.cancelled().await })
        .await
    }
}
