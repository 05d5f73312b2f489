//! Upload/download tokens: HS256 JWTs (`jwt_secret`) naming ONE volume, folder and path,
//! the operation, and an expiry. The client-facing API trusts nothing but these.

use std::time::Duration;

use jsonwebtoken::{Algorithm, DecodingKey, EncodingKey, Header, Validation};
use serde::{Deserialize, Serialize};
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum TokenOp {
    Upload,
    Download,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenClaims {
    pub op: TokenOp,
    pub volume: String,
    pub vfid: Uuid,
    pub relpath: String,
    /// Upload: the declared total size in bytes.
    #[serde(default)]
    pub size: u64,
    /// Download: send a directory as a zip archive.
    #[serde(default)]
    pub archive: bool,
    /// Upload session id: names the partial file, so a resumed upload finds its bytes.
    pub session: Uuid,
    pub iat: i64,
    pub exp: i64,
}

#[derive(Clone)]
pub struct Tokens {
    enc: EncodingKey,
    dec: DecodingKey,
    ttl: Duration,
}

impl Tokens {
    pub fn new(secret: &str, ttl: Duration) -> Self {
        Self {
            enc: EncodingKey::from_secret(secret.as_bytes()),
            dec: DecodingKey::from_secret(secret.as_bytes()),
            ttl,
        }
    }

    pub fn ttl(&self) -> Duration {
        self.ttl
    }

    /// Issues a token valid for the configured lifetime.
    #[allow(clippy::too_many_arguments)]
    pub fn issue(
        &self,
        op: TokenOp,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        size: u64,
        archive: bool,
    ) -> ApiResult<String> {
        let now = chrono::Utc::now().timestamp();
        self.sign(&TokenClaims {
            op,
            volume: volume.to_string(),
            vfid,
            relpath: relpath.to_string(),
            size,
            archive,
            session: Uuid::new_v4(),
            iat: now,
            exp: now + self.ttl.as_secs() as i64,
        })
    }

    /// Signs arbitrary claims (tests use it for expired or foreign tokens).
    pub fn sign(&self, claims: &TokenClaims) -> ApiResult<String> {
        jsonwebtoken::encode(&Header::new(Algorithm::HS256), claims, &self.enc)
            .map_err(|e| ApiError::internal(format!("cannot sign token: {e}")))
    }

    /// Verifies signature, expiry and operation.
    pub fn verify(&self, token: &str, op: TokenOp) -> ApiResult<TokenClaims> {
        let mut v = Validation::new(Algorithm::HS256);
        v.leeway = 5;
        v.set_required_spec_claims(&["exp"]);
        let data = jsonwebtoken::decode::<TokenClaims>(token, &self.dec, &v).map_err(|e| {
            use jsonwebtoken::errors::ErrorKind as K;
            match e.kind() {
                K::ExpiredSignature => ApiError::invalid_token("the token has expired"),
                K::InvalidSignature => ApiError::invalid_token("the token signature is invalid"),
                _ => ApiError::invalid_token(format!("malformed token: {e}")),
            }
        })?;
        if data.claims.op != op {
            return Err(ApiError::invalid_token(format!(
                "the token is for {:?}, not {:?}",
                data.claims.op, op
            )));
        }
        Ok(data.claims)
    }
}
