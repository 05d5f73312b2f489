//! Per-request GraphQL context: the caller, one lazily opened read-only transaction shared
//! by every resolver of the request, and the error helpers.
//!
//! Resolvers of one request may run concurrently (sibling fields are joined), so the
//! transaction sits behind an async mutex: each resolver holds it only for the duration
//! of one statement. It is opened on first use, so requests that never touch PostgreSQL
//! (e.g. `images`, which reads etcd) cost no database round trip, and it is always
//! `READ ONLY` (21.03 #431): a resolver cannot write even by mistake.

use std::sync::Arc;

use tokio::sync::{MappedMutexGuard, Mutex, MutexGuard, OnceCell};

use bai_core::Txn;

use crate::auth::{AuthUser, UserRole};
use crate::error::ApiError;
use crate::state::AppState;

use super::images::ImageCatalog;

pub type GqlResult<T> = async_graphql::Result<T>;

pub struct ReqCtx {
    pub state: AppState,
    pub user: AuthUser,
    txn: Mutex<Option<Txn>>,
    images: OnceCell<Arc<ImageCatalog>>,
}

impl ReqCtx {
    pub fn new(state: AppState, user: AuthUser) -> Self {
        Self {
            state,
            user,
            txn: Mutex::new(None),
            images: OnceCell::new(),
        }
    }

    /// The request's read-only transaction (opened on first use).
    pub async fn db(&self) -> GqlResult<MappedMutexGuard<'_, Txn>> {
        let mut guard = self.txn.lock().await;
        if guard.is_none() {
            let txn = self.state.db.begin_readonly().await.map_err(internal)?;
            *guard = Some(txn);
        }
        Ok(MutexGuard::map(guard, |t| match t {
            Some(txn) => txn,
            // Set just above while holding the lock.
            None => unreachable!("transaction opened above"),
        }))
    }

    /// Ends the read-only transaction (nothing to commit; releasing it is enough).
    ///
    /// Dropped rather than rolled back: sqlx queues the ROLLBACK and flushes it while
    /// returning the connection to the pool, off the response path, instead of making the
    /// client wait one more round trip for a transaction that wrote nothing.
    pub async fn finish(&self) {
        drop(self.txn.lock().await.take());
    }

    pub fn role(&self) -> UserRole {
        self.user.role
    }

    pub fn is_superadmin(&self) -> bool {
        self.user.role == UserRole::Superadmin
    }

    /// The etcd image catalogue, read once per request.
    pub async fn images(&self) -> GqlResult<Arc<ImageCatalog>> {
        self.images
            .get_or_try_init(|| async {
                ImageCatalog::load(&self.state.etcd)
                    .await
                    .map(Arc::new)
                    .map_err(internal)
            })
            .await
            .cloned()
    }

    /// `privileged_query(SUPERADMIN)`.
    pub fn require_superadmin(&self) -> GqlResult<()> {
        if self.is_superadmin() {
            Ok(())
        } else {
            Err(gql_err(
                ApiError::forbidden().with_msg("superadmin privilege required"),
            ))
        }
    }
}

/// Renders a backend error as graphene did: `"<title> (<extra msg>)"`.
pub fn gql_err(e: ApiError) -> async_graphql::Error {
    let message = match &e.msg {
        Some(m) => format!("{} ({m})", e.title),
        None => e.title.to_string(),
    };
    async_graphql::Error::new(message)
}

pub fn internal(e: impl std::fmt::Display) -> async_graphql::Error {
    tracing::error!(error = %e, "GraphQL resolver failed");
    async_graphql::Error::new(format!("Internal server error. ({e})"))
}

pub fn db_err(e: sqlx::Error) -> async_graphql::Error {
    internal(e)
}

pub fn unknown_role() -> async_graphql::Error {
    gql_err(ApiError::invalid_api_params().with_msg("Unknown client role"))
}

pub fn forbidden() -> async_graphql::Error {
    gql_err(ApiError::forbidden())
}

pub fn insufficient_privilege() -> async_graphql::Error {
    gql_err(ApiError::insufficient_privilege())
}

pub fn invalid_params(msg: impl Into<String>) -> async_graphql::Error {
    gql_err(ApiError::invalid_api_params().with_msg(msg))
}

/// `scoped_query`: fills in (and limits) the domain and the user key for the caller.
pub struct Scope {
    pub domain_name: Option<String>,
    pub user_key: Option<String>,
}

/// Which identity the user key of a scoped query is.
#[derive(Clone, Copy)]
pub enum UserKey {
    AccessKey,
    Email,
    Uuid,
}

pub fn scoped(
    ctx: &ReqCtx,
    domain_name: Option<String>,
    user_key: Option<String>,
    key: UserKey,
    autofill_user: bool,
) -> GqlResult<Scope> {
    let me = match key {
        UserKey::AccessKey => ctx.user.access_key.clone(),
        UserKey::Email => ctx.user.email.clone(),
        UserKey::Uuid => ctx.user.user_uuid.to_string(),
    };
    let same_user = |given: &str| match key {
        UserKey::Uuid => uuid::Uuid::parse_str(given).ok() == Some(ctx.user.user_uuid),
        _ => given == me,
    };
    match ctx.user.role {
        UserRole::Superadmin => Ok(Scope {
            domain_name,
            user_key: if autofill_user {
                user_key.or(Some(me))
            } else {
                user_key
            },
        }),
        UserRole::Admin => {
            if domain_name
                .as_ref()
                .is_some_and(|d| d != &ctx.user.domain_name)
            {
                return Err(forbidden());
            }
            Ok(Scope {
                domain_name: Some(ctx.user.domain_name.clone()),
                user_key: if autofill_user {
                    user_key.or(Some(me))
                } else {
                    user_key
                },
            })
        }
        UserRole::User => {
            if domain_name
                .as_ref()
                .is_some_and(|d| d != &ctx.user.domain_name)
            {
                return Err(forbidden());
            }
            if user_key.as_deref().is_some_and(|u| !same_user(u)) {
                return Err(forbidden());
            }
            Ok(Scope {
                domain_name: Some(ctx.user.domain_name.clone()),
                user_key: Some(me),
            })
        }
        UserRole::Monitor => Err(unknown_role()),
    }
}
