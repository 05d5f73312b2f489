//! Request parameters the way the original's `check_api_params` reads them (§1.5).
//!
//! * A request with a readable body (`Content-Length` > 0, or chunked) is parsed as JSON and
//!   the query string is ignored; otherwise the query string is the parameter map (all
//!   values strings, first occurrence of a repeated key wins). GET and DELETE requests with
//!   JSON bodies are normal: the official client sends them.
//! * Malformed JSON → 400 `invalid-api-params` "Malformed body"; a body over the limit →
//!   413 in problem+json; a schema violation → 400 `invalid-api-params`
//!   "Input validation error" with `data` = `{field: reason}`.
//! * `owner_access_key` is removed before validation (only the query string's counts,
//!   see [`crate::auth::owner_access_key_param`]).
//! * Strictness is the target type's business: `#[serde(deny_unknown_fields)]` rejects
//!   unknown keys like trafaret's strict dicts; aliases are `#[serde(alias = ..)]`.
//!   Query-string values are strings, so numeric and boolean fields should use the lenient
//!   deserializers in [`de`].

use axum::body::Body;
use axum::extract::{FromRequest, Query, Request};
use axum::http::{header, HeaderMap, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::{json, Map, Value};

use crate::error::{ApiError, ApiResult};

/// Largest parameter body accepted (aiohttp's default `client_max_size`).
pub const MAX_PARAMS_BODY: usize = 1024 * 1024;

/// Extractor: validated parameters from the body or the query string.
pub struct Params<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Params<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, Self::Rejection> {
        let value = read_params(req).await?;
        parse_value(value).map(Params)
    }
}

/// Whether the request carries a body to parse (aiohttp's `can_read_body`).
pub fn has_body(headers: &HeaderMap) -> bool {
    let chunked = headers
        .get_all(header::TRANSFER_ENCODING)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .any(|v| v.to_ascii_lowercase().contains("chunked"));
    let length = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(0);
    chunked || length > 0
}

pub fn too_large() -> ApiError {
    ApiError::new(
        StatusCode::PAYLOAD_TOO_LARGE,
        "generic-bad-request",
        "Bad request.",
    )
    .with_msg(format!(
        "Request body too large (limit: {MAX_PARAMS_BODY} bytes)."
    ))
}

pub fn malformed_body() -> ApiError {
    ApiError::invalid_api_params().with_msg("Malformed body")
}

/// The raw parameter map (before validation), with `owner_access_key` removed.
pub async fn read_params(req: Request) -> ApiResult<Value> {
    let (parts, body) = req.into_parts();
    let mut value = if has_body(&parts.headers) {
        let declared = parts
            .headers
            .get(header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|n| n > MAX_PARAMS_BODY as u64) {
            return Err(too_large());
        }
        let bytes = read_body(body).await?;
        let media = crate::auth::hmac::media_type(
            parts
                .headers
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok()),
        );
        if media == "text/yaml" {
            // The original parses YAML bodies with BaseLoader (all scalars strings); no
            // client of this API sends them, so we refuse clearly instead.
            return Err(
                ApiError::invalid_api_params().with_msg("YAML request bodies are not supported")
            );
        }
        serde_json::from_slice::<Value>(&bytes).map_err(|_| malformed_body())?
    } else {
        query_map(parts.uri.query())
    };
    if let Value::Object(map) = &mut value {
        map.remove("owner_access_key");
    }
    Ok(value)
}

async fn read_body(body: Body) -> ApiResult<bytes::Bytes> {
    axum::body::to_bytes(body, MAX_PARAMS_BODY)
        .await
        .map_err(|e| {
            // Chunked bodies have no declared length; the limit trips while reading.
            if format!("{e:?}").contains("LengthLimitError")
                || e.to_string().contains("length limit")
            {
                too_large()
            } else {
                malformed_body()
            }
        })
}

/// The query string as a map of strings (first occurrence wins).
pub fn query_map(query: Option<&str>) -> Value {
    let mut map = Map::new();
    if let Some(q) = query {
        let uri = format!("/?{q}");
        if let Ok(uri) = uri.parse::<axum::http::Uri>() {
            if let Ok(Query(pairs)) = Query::<Vec<(String, String)>>::try_from_uri(&uri) {
                for (k, v) in pairs {
                    map.entry(k).or_insert(Value::String(v));
                }
            }
        }
    }
    Value::Object(map)
}

/// Validates a parameter map into `T`.
pub fn parse_value<T: DeserializeOwned>(value: Value) -> ApiResult<T> {
    serde_json::from_value(value).map_err(|e| validation_error(&e.to_string()))
}

/// 400 "Input validation error" with a per-field map, like trafaret's `DataError.as_dict()`.
pub fn validation_error(message: &str) -> ApiError {
    // serde names the offending field between backticks ("missing field `echo`",
    // "unknown field `x`, expected ...").
    let field = message.split('`').nth(1).filter(|f| !f.is_empty());
    let data = match field {
        Some(f) if message.starts_with("missing field") => json!({ f: "is required" }),
        Some(f) if message.starts_with("unknown field") => {
            json!({ f: format!("{f} is not allowed key") })
        }
        Some(f) => json!({ f: message }),
        None => json!({ "error": message }),
    };
    ApiError::invalid_api_params()
        .with_msg("Input validation error")
        .with_data(data)
}

/// Lenient deserializers for values that may arrive as query-string text.
pub mod de {
    use serde::de::Error;
    use serde::{Deserialize, Deserializer};
    use serde_json::Value;

    /// trafaret's `ToBool`: `str(v).strip().lower()` in {t,true,y,yes,on,1,1.0} or
    /// {false,n,no,off,0,none,0.0} (note: `f` is *not* accepted), JSON booleans and null.
    pub fn tobool<'de, D: Deserializer<'de>>(d: D) -> Result<bool, D::Error> {
        let v = Value::deserialize(d)?;
        let text = match &v {
            Value::Bool(b) => return Ok(*b),
            Value::Null => return Ok(false),
            Value::String(s) => s.trim().to_ascii_lowercase(),
            Value::Number(n) => n.to_string(),
            other => {
                return Err(D::Error::custom(format!(
                    "value can't be converted to Bool: {other}"
                )))
            }
        };
        match text.as_str() {
            "t" | "true" | "y" | "yes" | "on" | "1" | "1.0" => Ok(true),
            "false" | "n" | "no" | "off" | "0" | "none" | "0.0" => Ok(false),
            _ => Err(D::Error::custom(format!(
                "value can't be converted to Bool: {text}"
            ))),
        }
    }

    /// An integer given as a JSON number or a decimal string.
    pub fn int<'de, D: Deserializer<'de>>(d: D) -> Result<i64, D::Error> {
        match Value::deserialize(d)? {
            Value::Number(n) => n
                .as_i64()
                .ok_or_else(|| D::Error::custom(format!("value is not int: {n}"))),
            Value::String(s) => s
                .trim()
                .parse()
                .map_err(|_| D::Error::custom(format!("value can't be converted to int: {s}"))),
            other => Err(D::Error::custom(format!("value is not int: {other}"))),
        }
    }

    /// Like [`int`], with null allowed.
    pub fn opt_int<'de, D: Deserializer<'de>>(d: D) -> Result<Option<i64>, D::Error> {
        let v = Value::deserialize(d)?;
        if v.is_null() {
            return Ok(None);
        }
        int(v).map(Some).map_err(D::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct P {
        echo: String,
        #[serde(default, deserialize_with = "de::tobool")]
        flag: bool,
        #[serde(default, deserialize_with = "de::opt_int")]
        n: Option<i64>,
    }

    #[test]
    fn query_strings_and_lenient_values() {
        let p: P = parse_value(query_map(Some("echo=hi&flag=Yes&n=3&echo=second"))).unwrap();
        assert_eq!((p.echo.as_str(), p.flag, p.n), ("hi", true, Some(3)));
        let e = parse_value::<P>(query_map(Some("flag=f&echo=x"))).unwrap_err();
        assert_eq!(e.slug, "invalid-api-params");
        let e = parse_value::<P>(json!({"echo": "x", "bogus": 1})).unwrap_err();
        assert_eq!(e.data, Some(json!({"bogus": "bogus is not allowed key"})));
        let e = parse_value::<P>(json!({})).unwrap_err();
        assert_eq!(e.data, Some(json!({"echo": "is required"})));
        assert_eq!(e.msg.as_deref(), Some("Input validation error"));
    }
}
