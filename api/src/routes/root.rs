//! `GET /`: version negotiation (unsigned).

use axum::Json;
use serde_json::{json, Value};

pub async fn hello() -> Json<Value> {
    Json(json!({
        "version": bai_core::API_VERSION,
        "manager": bai_core::MANAGER_VERSION,
    }))
}
