//! GraphQL (`/admin/graphql`, `/admin/gql`): one async-graphql schema reproducing the
//! graphene 2 schema of Backend.AI Manager 21.03.6 plus the 21.03.18 superset that client
//! 21.3.6 sends (`filter`/`order`, `groups_by_name`).
//!
//! * Queries run in one read-only transaction per request ([`context::ReqCtx`]).
//! * Mutations publish typed admin commands and wait for the worker's reply
//!   ([`mutation`]); the API never writes.
//! * Two envelopes over the same schema: the legacy `/admin/graphql` answers the bare
//!   `data` object on success and a 400 `graphql-error` problem+json on *any* error
//!   (partial data discarded); `/admin/gql` answers the standard `{data, errors}`.

pub mod context;
pub mod images;
pub mod mutation;
pub mod query;
pub mod scalars;
pub mod slots;
pub mod sql;
pub mod types_admin;
pub mod types_infra;
pub mod types_session;

use std::sync::OnceLock;

use async_graphql::{EmptySubscription, Schema};
use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::post;
use axum::Router;
use serde_json::{json, Value};

use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;

pub use async_graphql::Request as GqlRequest;
pub use context::ReqCtx;
pub use mutation::Mutations;
pub use query::Queries;

pub type AdminSchema = Schema<Queries, Mutations, EmptySubscription>;

/// The schema is immutable and shared by every request.
pub fn schema() -> &'static AdminSchema {
    static SCHEMA: OnceLock<AdminSchema> = OnceLock::new();
    SCHEMA.get_or_init(|| Schema::build(Queries, Mutations, EmptySubscription).finish())
}

/// The schema in SDL, for docs and conformance diffs.
pub fn sdl() -> String {
    schema().sdl()
}

/// Routes of both GraphQL endpoints; merge into the main router.
pub fn graphql_routes() -> Router<AppState> {
    Router::new()
        .route("/admin/graphql", post(legacy_handler))
        .route("/admin/gql", post(standard_handler))
}

/// Parses the body: `query` (required string), `variables` (object or null),
/// `operation_name` or `operationName` (string or null).
fn parse_request(body: &[u8]) -> Result<async_graphql::Request, ApiError> {
    let bad = |m: &str| ApiError::invalid_api_params().with_msg(m.to_string());
    let v: Value =
        serde_json::from_slice(body).map_err(|e| bad(&format!("invalid JSON body: {e}")))?;
    let Value::Object(mut obj) = v else {
        return Err(bad("the body must be a JSON object"));
    };
    let query = match obj.remove("query") {
        Some(Value::String(q)) => q,
        _ => return Err(bad("query is required and must be a string")),
    };
    let mut req = async_graphql::Request::new(query);
    match obj.remove("variables") {
        None | Some(Value::Null) => {}
        Some(v @ Value::Object(_)) => req = req.variables(async_graphql::Variables::from_json(v)),
        Some(_) => return Err(bad("variables must be an object")),
    }
    let op = obj
        .remove("operation_name")
        .or_else(|| obj.remove("operationName"));
    match op {
        None | Some(Value::Null) => {}
        Some(Value::String(name)) => req = req.operation_name(name),
        Some(_) => return Err(bad("operation_name must be a string")),
    }
    Ok(req)
}

/// Executes one request and returns `(data, errors)`.
///
/// `data` stays an `async_graphql::Value`, whose objects keep the order of the selection
/// set: the official client zips its field list with the *values* of each item in order,
/// so a key-sorted object would shift every column of `backend.ai admin ...` tables.
pub async fn execute(
    state: AppState,
    user: crate::auth::AuthUser,
    req: async_graphql::Request,
) -> (async_graphql::Value, Vec<Value>) {
    let ctx = std::sync::Arc::new(ReqCtx::new(state, user));
    let resp = schema().execute(req.data(ctx.clone())).await;
    ctx.finish().await;
    let errors = resp
        .errors
        .into_iter()
        .map(|e| {
            let mut o = serde_json::Map::new();
            o.insert("message".into(), Value::String(e.message));
            if !e.locations.is_empty() {
                o.insert(
                    "locations".into(),
                    Value::Array(
                        e.locations
                            .iter()
                            .map(|l| json!({"line": l.line, "column": l.column}))
                            .collect(),
                    ),
                );
            }
            if !e.path.is_empty() {
                o.insert(
                    "path".into(),
                    serde_json::to_value(&e.path).unwrap_or(Value::Null),
                );
            }
            Value::Object(o)
        })
        .collect();
    (resp.data, errors)
}

/// The standard envelope, serialised in selection order.
#[derive(serde::Serialize)]
struct Envelope<'a> {
    #[serde(skip_serializing_if = "Option::is_none")]
    data: Option<&'a async_graphql::Value>,
    #[serde(skip_serializing_if = "<[Value]>::is_empty")]
    errors: &'a [Value],
}

fn json_text_response(body: String) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, "application/json; charset=utf-8")],
        body,
    )
        .into_response()
}

/// `POST /admin/graphql`: bare `data` on success; any error → 400 problem+json.
async fn legacy_handler(State(state): State<AppState>, Auth(user): Auth, body: Bytes) -> Response {
    let req = match parse_request(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (data, errors) = execute(state, user, req).await;
    if !errors.is_empty() {
        return ApiError::graphql_error()
            .with_data(Value::Array(errors))
            .into_response();
    }
    json_text_response(serde_json::to_string(&data).unwrap_or_else(|_| "null".into()))
}

/// `POST /admin/gql`: the standard `{data, errors}` envelope, always 200 once parsed.
async fn standard_handler(
    State(state): State<AppState>,
    Auth(user): Auth,
    body: Bytes,
) -> Response {
    let req = match parse_request(&body) {
        Ok(r) => r,
        Err(e) => return e.into_response(),
    };
    let (data, errors) = execute(state, user, req).await;
    // A document that failed validation has no `data` at all (graphql-core omits it).
    let envelope = Envelope {
        data: (data != async_graphql::Value::Null || errors.is_empty()).then_some(&data),
        errors: &errors,
    };
    json_text_response(serde_json::to_string(&envelope).unwrap_or_else(|_| "{}".into()))
}
