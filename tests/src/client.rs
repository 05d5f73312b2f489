//! A client that signs requests exactly as the official `backend.ai-client` 21.3.x does,
//! written independently of the server's code so that tests really cross-check the
//! algorithm (api-rest.md §1.3, client.md §3).
//!
//! ```ignore
//! let c = SignedClient::new(&app.base, ak, sk);
//! let (status, body) = c.json(Method::GET, "/auth/test?echo=hi", None).await?;
//! ```

use chrono::{SecondsFormat, Utc};
use hmac::{Hmac, Mac};
use reqwest::header::{HeaderMap, HeaderValue};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};

/// The API version the 21.3.6 client sends.
pub const API_VERSION: &str = "v6.20210815";
pub const USER_AGENT: &str = "Backend.AI Client for Python 21.03.6";

fn hmac_sha256(key: &[u8], msg: &[u8]) -> Vec<u8> {
    let mut mac = Hmac::<Sha256>::new_from_slice(key).expect("HMAC takes keys of any length");
    mac.update(msg);
    mac.finalize().into_bytes().to_vec()
}

/// The signature the client puts after `credential=<AK>:`.
///
/// `key_date` is `YYYYMMDD` of the date header; `host` is what the client signs
/// (`endpoint.netloc`); `content_type` is the bare, lower-cased media type.
#[allow(clippy::too_many_arguments)]
pub fn sign(
    secret_key: &str,
    method: &str,
    path_and_query: &str,
    date: &str,
    key_date: &str,
    host: &str,
    content_type: &str,
    version: &str,
) -> String {
    let body_hash = data_encoding::HEXLOWER.encode(&Sha256::digest(b""));
    let sts = format!(
        "{method}\n{path_and_query}\n{date}\nhost:{host}\ncontent-type:{content_type}\nx-backendai-version:{version}\n{body_hash}"
    );
    let k1 = hmac_sha256(secret_key.as_bytes(), key_date.as_bytes());
    let k2 = hmac_sha256(&k1, host.as_bytes());
    data_encoding::HEXLOWER.encode(&hmac_sha256(&k2, sts.as_bytes()))
}

/// `datetime.now(tzutc()).isoformat()`: microseconds and `+00:00`.
pub fn client_date() -> String {
    Utc::now().to_rfc3339_opts(SecondsFormat::Micros, false)
}

#[derive(Clone, Debug)]
pub struct SignedClient {
    pub http: reqwest::Client,
    /// `http://host:port`, no trailing slash.
    pub base: String,
    pub access_key: String,
    pub secret_key: String,
    pub version: String,
}

impl SignedClient {
    pub fn new(base: &str, access_key: &str, secret_key: &str) -> Self {
        Self {
            http: reqwest::Client::builder()
                .user_agent(USER_AGENT)
                .build()
                .expect("reqwest client"),
            base: base.trim_end_matches('/').to_string(),
            access_key: access_key.to_string(),
            secret_key: secret_key.to_string(),
            version: API_VERSION.to_string(),
        }
    }

    /// A client with no keypair (the official client's anonymous mode).
    pub fn anonymous(base: &str) -> Self {
        Self::new(base, "", "")
    }

    /// The `netloc` the client signs.
    pub fn host(&self) -> &str {
        self.base
            .split_once("://")
            .map(|(_, rest)| rest)
            .unwrap_or(&self.base)
            .split('/')
            .next()
            .unwrap_or_default()
    }

    /// The headers of a signed request, as the client sends them (wire order aside).
    pub fn signed_headers(
        &self,
        method: &Method,
        path_and_query: &str,
        content_type: &str,
        date: &str,
    ) -> HeaderMap {
        let key_date = chrono::DateTime::parse_from_rfc3339(date)
            .map(|d| d.format("%Y%m%d").to_string())
            .unwrap_or_default();
        let sig = sign(
            &self.secret_key,
            method.as_str(),
            path_and_query,
            date,
            &key_date,
            self.host(),
            content_type,
            &self.version,
        );
        let mut h = HeaderMap::new();
        let mut put = |k: &'static str, v: String| {
            h.insert(k, HeaderValue::from_str(&v).expect("header value"));
        };
        put("x-backendai-domain", "default".into());
        put("x-backendai-version", self.version.clone());
        put("date", date.to_string());
        put(
            "authorization",
            format!(
                "BackendAI signMethod=HMAC-SHA256, credential={}:{sig}",
                self.access_key
            ),
        );
        h
    }

    /// A signed request. With a body it is sent as `application/json`; without one the
    /// client sends (and signs) `Content-Type: text/plain` with an empty body.
    pub fn request(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> RequestBuilder {
        let url = format!("{}{}", self.base, path_and_query);
        let content_type = if body.is_some() {
            "application/json"
        } else {
            "text/plain"
        };
        let mut rb = self.http.request(method.clone(), url);
        if !self.access_key.is_empty() {
            rb = rb.headers(self.signed_headers(
                &method,
                path_and_query,
                content_type,
                &client_date(),
            ));
        } else {
            rb = rb.header("x-backendai-version", &self.version);
        }
        rb = rb.header("content-type", content_type);
        match body {
            Some(b) => rb.body(b.to_string()),
            None => rb.body(""),
        }
    }

    pub async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> reqwest::Result<Response> {
        self.request(method, path_and_query, body).send().await
    }

    /// Sends and decodes the body as JSON (`Value::Null` for an empty body).
    pub async fn json(
        &self,
        method: Method,
        path_and_query: &str,
        body: Option<&Value>,
    ) -> reqwest::Result<(StatusCode, Value)> {
        let resp = self.send(method, path_and_query, body).await?;
        Ok(read_json(resp).await)
    }
}

/// Status and JSON body of a response (`Value::Null` when empty, a string when not JSON).
pub async fn read_json(resp: Response) -> (StatusCode, Value) {
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    let body = if text.is_empty() {
        Value::Null
    } else {
        serde_json::from_str(&text).unwrap_or(Value::String(text))
    };
    (status, body)
}

/// The `type` slug of a problem+json body (`auth-failed`, ...).
pub fn problem_slug(body: &Value) -> &str {
    body["type"]
        .as_str()
        .and_then(|t| t.rsplit('/').next())
        .unwrap_or_default()
}
