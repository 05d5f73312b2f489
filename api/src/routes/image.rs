//! `/image/import` (api-rest.md §6.6). Building images from a source inside a session is
//! not offered by this manager; admins get the original's "not implemented" answer.

use crate::auth::Admin;
use crate::error::ApiError;

/// `GET|POST /image/import` (admin) → 503 `not-implemented`.
pub async fn import(Admin(_user): Admin) -> ApiError {
    ApiError::not_implemented().with_msg("Image import is not supported by this manager.")
}
