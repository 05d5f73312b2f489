//! The HTTP front-end. It reads with read-only transactions, Redis and etcd, and writes
//! only by publishing commands (see `bai-events`); it never mutates state itself.

pub mod auth;
pub mod commands;
pub mod error;
pub mod graphql;
pub mod metrics;
pub mod params;
pub mod routes;
pub mod session;
pub mod slots;
pub mod state;
pub mod yaml;

use std::net::SocketAddr;

use axum::extract::Request;
use axum::http::{header, HeaderValue, Uri};
use axum::routing::{get, post};
use axum::{middleware, Router, ServiceExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::Layer;
use tower_http::catch_panic::CatchPanicLayer;
use tower_http::cors::{Any, CorsLayer};
use tower_http::request_id::{MakeRequestUuid, PropagateRequestIdLayer, SetRequestIdLayer};
use tower_http::set_header::SetResponseHeaderLayer;
use tower_http::trace::{DefaultOnResponse, TraceLayer};

use auth::middleware as mw;

pub use error::{ApiError, ApiResult};
pub use state::AppState;

/// Every route of the API. Authentication is applied to all of them afterwards (see
/// [`router`]); the anonymous ones are listed in `auth::middleware::is_anonymous`.
/// Literal paths such as `/session/_/logs` win over `{param}` paths automatically.
fn routes() -> Router<AppState> {
    use routes::{auth as auth_routes, config, image, manager, resource, scaling_groups};
    Router::new()
        .route("/", get(routes::root::hello))
        .route(
            "/manager/status",
            get(manager::get_status).put(manager::put_status),
        )
        .route(
            "/manager/announcement",
            get(manager::get_announcement).post(manager::post_announcement),
        )
        .route("/auth", get(auth_routes::test).post(auth_routes::test))
        .route("/auth/test", get(auth_routes::test).post(auth_routes::test))
        .route("/auth/authorize", post(auth_routes::authorize))
        .route("/auth/role", get(auth_routes::role))
        .route("/server/login", post(auth::preauth::login))
        .route("/server/logout", post(auth::preauth::logout))
        .route("/resource/presets", get(resource::list_presets))
        .route("/resource/check-presets", post(resource::check_presets))
        .route("/scaling-groups", get(scaling_groups::list_available))
        .route("/config/resource-slots", get(config::resource_slots))
        .route("/config/vfolder-types", get(config::vfolder_types))
        .route("/config/docker-registries", get(config::docker_registries))
        .route("/config/get", post(config::get))
        .route("/config/set", post(config::set))
        .route("/config/delete", post(config::delete))
        .route("/image/import", get(image::import).post(image::import))
        .merge(stream_routes())
        .merge(session_routes())
        .merge(folder_routes())
        .merge(rest_routes())
        .merge(graphql::graphql_routes())
}

/// `/folders` (literal `/folders/_/...` and `/folders/invitations/...` win over `{name}`);
/// legacy underscore spellings the 21.3.x client uses are aliases.
fn folder_routes() -> Router<AppState> {
    use axum::routing::delete;
    use routes::folders as f;
    Router::new()
        .route(
            "/folders",
            post(f::create).get(f::list).delete(f::delete_by_id),
        )
        .route("/folders/_/hosts", get(f::hosts))
        .route("/folders/_/all-hosts", get(f::all_hosts))
        .route("/folders/_/all_hosts", get(f::all_hosts))
        .route("/folders/_/allowed-types", get(f::allowed_types))
        .route("/folders/_/allowed_types", get(f::allowed_types))
        .route("/folders/_/shared", get(f::list_shared).post(f::set_shared))
        .route("/folders/_/perf-metric", get(f::host_admin_not_implemented))
        .route("/folders/_/fstab", get(f::host_admin_not_implemented))
        .route(
            "/folders/_/mounts",
            get(f::host_admin_not_implemented)
                .post(f::host_admin_not_implemented)
                .delete(f::host_admin_not_implemented),
        )
        .route("/folders/invitations/list", get(f::list_invitations))
        .route(
            "/folders/invitations/list-sent",
            get(f::list_sent_invitations),
        )
        .route(
            "/folders/invitations/list_sent",
            get(f::list_sent_invitations),
        )
        .route(
            "/folders/invitations/update/{inv_id}",
            post(f::update_invitation),
        )
        .route("/folders/invitations/accept", post(f::accept_invitation))
        .route("/folders/invitations/delete", delete(f::delete_invitation))
        .route("/folders/{name}", get(f::info).delete(f::delete))
        .route("/folders/{name}/rename", post(f::rename))
        .route("/folders/{name}/update-options", post(f::update_options))
        .route("/folders/{name}/mkdir", post(f::mkdir))
        .route("/folders/{name}/request-upload", post(f::request_upload))
        .route(
            "/folders/{name}/request-download",
            post(f::request_download),
        )
        .route("/folders/{name}/rename-file", post(f::rename_file))
        .route("/folders/{name}/rename_file", post(f::rename_file))
        .route("/folders/{name}/delete-files", delete(f::delete_files))
        .route("/folders/{name}/delete_files", delete(f::delete_files))
        .route("/folders/{name}/files", get(f::files))
        .route("/folders/{name}/invite", post(f::invite))
        .route("/folders/{name}/leave", post(f::leave))
        .route("/folders/{name}/share", post(f::share))
        .route("/folders/{name}/unshare", delete(f::unshare))
        .route("/folders/{name}/clone", post(f::clone))
}

/// Server-sent events, usage accounting and background-task starters (issue 8).
fn stream_routes() -> Router<AppState> {
    use routes::{events, usage};
    Router::new()
        .route("/events/session", get(events::session_events))
        .route(
            "/events/background-task",
            get(events::background_task_events),
        )
        .route(
            "/resource/recalculate-usage",
            post(usage::recalculate_usage),
        )
        .route("/resource/usage/month", get(usage::usage_per_month))
        .route("/resource/usage/period", get(usage::usage_per_period))
        .route("/resource/stats/user/month", get(usage::user_month_stats))
        .route("/resource/stats/admin/month", get(usage::admin_month_stats))
}

/// Templates, dotfiles, error logs, account operations, scheduler operations and the
/// unsupported agent watcher (issue 11).
fn rest_routes() -> Router<AppState> {
    use routes::{account, create_from_template, dotfiles, logs, scheduler, templates};
    Router::new()
        .route(
            "/template/session",
            get(templates::list_session_templates).post(templates::create_session_template),
        )
        .route(
            "/template/session/{id}",
            get(templates::get_session_template)
                .put(templates::update_session_template)
                .delete(templates::delete_session_template),
        )
        .route(
            "/template/cluster",
            get(templates::list_cluster_templates).post(templates::create_cluster_template),
        )
        .route(
            "/template/cluster/{id}",
            get(templates::get_cluster_template)
                .put(templates::update_cluster_template)
                .delete(templates::delete_cluster_template),
        )
        .route(
            "/session/_/create-from-template",
            post(create_from_template::create_from_template),
        )
        .route(
            "/user-config/dotfiles",
            get(dotfiles::get_user_dotfiles)
                .post(dotfiles::create_user_dotfile)
                .patch(dotfiles::update_user_dotfile)
                .delete(dotfiles::delete_user_dotfile),
        )
        .route(
            "/user-config/bootstrap-script",
            get(dotfiles::get_bootstrap_script).post(dotfiles::set_bootstrap_script),
        )
        .route(
            "/domain-config/dotfiles",
            get(dotfiles::get_domain_dotfiles)
                .post(dotfiles::create_domain_dotfile)
                .patch(dotfiles::update_domain_dotfile)
                .delete(dotfiles::delete_domain_dotfile),
        )
        .route(
            "/group-config/dotfiles",
            get(dotfiles::get_group_dotfiles)
                .post(dotfiles::create_group_dotfile)
                .patch(dotfiles::update_group_dotfile)
                .delete(dotfiles::delete_group_dotfile),
        )
        .route("/logs/error", get(logs::list).post(logs::append))
        .route("/logs/error/{log_id}/clear", post(logs::clear))
        .route("/auth/signup", post(account::signup))
        .route("/auth/signout", post(account::signout))
        .route("/auth/update-password", post(account::update_password))
        .route(
            "/auth/ssh-keypair",
            get(account::get_ssh_keypair).patch(account::refresh_ssh_keypair),
        )
        .route("/manager/scheduler/operation", post(scheduler::operation))
        .route("/resource/watcher", get(scheduler::watcher_not_supported))
        .route(
            "/resource/watcher/agent/start",
            post(scheduler::watcher_not_supported),
        )
        .route(
            "/resource/watcher/agent/stop",
            post(scheduler::watcher_not_supported),
        )
        .route(
            "/resource/watcher/agent/restart",
            post(scheduler::watcher_not_supported),
        )
}

/// `/session` (literal `/session/_/...` paths win over `{name}`) and `/stream/session`.
fn session_routes() -> Router<AppState> {
    use axum::extract::DefaultBodyLimit;
    use routes::{session, session_extra, stream};
    Router::new()
        .route("/session", post(session::create))
        .route("/session/_/create", post(session::create))
        .route(
            "/session/_/create-cluster",
            post(session_extra::create_cluster),
        )
        .route("/session/_/match", get(session_extra::match_prefix))
        .route(
            "/session/{name}/shutdown-service",
            post(session_extra::shutdown_service),
        )
        .route(
            "/session/{name}/download_single",
            get(session_extra::download_single),
        )
        .route("/stream/session/{name}/apps", get(session_extra::apps))
        .route(
            "/session/{name}",
            get(session::info)
                .post(session::execute)
                .patch(session::restart)
                .delete(session::destroy),
        )
        .route("/session/{name}/interrupt", post(session::interrupt))
        .route("/session/{name}/complete", post(session::complete))
        .route("/session/{name}/logs", get(session::logs))
        .route(
            "/session/{name}/upload",
            post(session::upload).layer(DefaultBodyLimit::max(session::UPLOAD_BODY_LIMIT)),
        )
        .route("/session/{name}/download", get(session::download))
        .route("/session/{name}/files", get(session::files))
        .route("/stream/session/{name}/execute", get(stream::execute))
}

async fn unknown_path(uri: Uri) -> ApiError {
    ApiError::not_found().with_msg(format!("Unknown URL path: {}", uri.path()))
}

/// Builds the router over a shared state: the routes, then (inner → outer) auth + rate
/// limit on matched routes only, the route template for metrics, the anonymous `/metrics`,
/// the 404 fallback, API-version check, anonymous rate-limit headers, panic catching,
/// problem+json for framework errors, CORS, the request-id scope for agent RPCs, HTTP
/// metrics, request ids, tracing and the `Server` header.
pub fn router(state: AppState) -> Router {
    routes()
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            mw::authenticate,
        ))
        // Outside auth, so rejected requests are counted under their route too.
        .route_layer(middleware::from_fn(metrics::mark_route))
        // Added after the auth layer, so it needs no signature (Prometheus scrapes it).
        .route(
            "/metrics",
            get(metrics::metrics).layer(middleware::from_fn(metrics::mark_route)),
        )
        .fallback(unknown_path)
        .layer(middleware::from_fn(mw::api_version))
        .layer(middleware::from_fn(mw::default_rate_limit_headers))
        .layer(CatchPanicLayer::new())
        .layer(middleware::from_fn(mw::problem_json_errors))
        // Open to any origin, all headers allowed and exposed, no credentials (§1.1);
        // answers preflight OPTIONS before routing or auth.
        .layer(
            CorsLayer::new()
                .allow_origin(Any)
                .allow_methods(Any)
                .allow_headers(Any)
                .expose_headers(Any),
        )
        .layer(middleware::from_fn(metrics::scope_request_id))
        .layer(middleware::from_fn_with_state(state.clone(), metrics::track))
        .layer(PropagateRequestIdLayer::x_request_id())
        .layer(TraceLayer::new_for_http().make_span_with(|req: &Request| {
            let request_id = req
                .headers()
                .get("x-request-id")
                .and_then(|v| v.to_str().ok())
                .unwrap_or_default();
            tracing::info_span!("request", method = %req.method(), uri = %req.uri(), request_id)
        })
        // An access-log line per request (status, latency) inside the request-id span.
        .on_response(DefaultOnResponse::new().level(tracing::Level::INFO)))
        .layer(SetRequestIdLayer::x_request_id(MakeRequestUuid))
        .layer(SetResponseHeaderLayer::overriding(
            header::SERVER,
            HeaderValue::from_static("BackendAI"),
        ))
        .with_state(state)
}

/// A bound, not yet running server (zero2prod style: `main` and tests share this; bind
/// port 0 in tests and read the real port back).
pub struct Application {
    listener: TcpListener,
    router: Router,
    /// Ends the endless SSE responses when shutdown begins, so draining can finish.
    streams_stop: CancellationToken,
}

impl Application {
    pub async fn build(state: AppState, addr: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(addr).await?;
        Ok(Self {
            listener,
            streams_stop: state.streams.stop_token(),
            router: router(state),
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown` fires, then finishes in-flight requests.
    pub async fn run(self, shutdown: CancellationToken) -> std::io::Result<()> {
        // `X-Method-Override` must act before routing, so it wraps the router from outside.
        let app = middleware::from_fn(mw::method_override).layer(self.router);
        let streams_stop = self.streams_stop;
        axum::serve(
            self.listener,
            app.into_make_service_with_connect_info::<SocketAddr>(),
        )
        .with_graceful_shutdown(async move {
            shutdown.cancelled().await;
            streams_stop.cancel();
        })
        .await
    }
}
