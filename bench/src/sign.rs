//! Signs benchmark requests exactly as client 21.3.6 does (HMAC-SHA256, api-rest.md §1.3):
//! one signer for every benchmark, so they all measure the same client-side cost.

use chrono::Utc;
use reqwest::{Client, Method, RequestBuilder};

use bai_api::auth::hmac::{self, HashType, SigningInput};

pub struct Signer {
    /// `http://host:port`, no trailing slash.
    pub base: String,
    host: String,
    access_key: String,
    secret_key: String,
}

impl Signer {
    /// From an absolute endpoint URL (`http://127.0.0.1:8081`).
    pub fn new(endpoint: &str, access_key: &str, secret_key: &str) -> anyhow::Result<Self> {
        let base = endpoint.trim_end_matches('/').to_string();
        let host = base
            .split("://")
            .nth(1)
            .ok_or_else(|| anyhow::anyhow!("endpoint must be an absolute URL"))?
            .split('/')
            .next()
            .unwrap_or_default()
            .to_string();
        Ok(Self {
            base,
            host,
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
        })
    }

    /// A signed request. With a body it is sent as JSON; without one there is no
    /// Content-Type and the signature covers `application/octet-stream` (SSE, WebSocket).
    pub fn request(
        &self,
        client: &Client,
        method: Method,
        path: &str,
        json_body: Option<bytes::Bytes>,
    ) -> RequestBuilder {
        let now = Utc::now();
        let date = now.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string();
        let media_type = if json_body.is_some() {
            "application/json"
        } else {
            "application/octet-stream"
        };
        let input = SigningInput {
            method: method.as_str(),
            path_and_query: path,
            date_raw: &date,
            host: &self.host,
            media_type,
            version_label: "x-backendai-version",
            version: "v6.20210815",
        };
        let sts = hmac::string_to_sign(&input, HashType::Sha256);
        let sig = hmac::sign(
            HashType::Sha256,
            &self.secret_key,
            now.date_naive(),
            &self.host,
            &sts,
        );
        let req = client
            .request(method, format!("{}{path}", self.base))
            .header("Date", date)
            .header("X-BackendAI-Version", "v6.20210815")
            .header(
                "Authorization",
                format!(
                    "BackendAI signMethod=HMAC-SHA256, credential={}:{sig}",
                    self.access_key
                ),
            );
        match json_body {
            Some(body) => req.header("Content-Type", "application/json").body(body),
            None => req,
        }
    }
}
