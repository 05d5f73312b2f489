//! Request signing, exactly as Backend.AI 21.03 verifies it (api-rest.md §1.3).
//!
//! Everything here is pure (no I/O), so the algorithm can be checked against the official
//! client's captured requests byte for byte.
//!
//! ```text
//! string_to_sign = METHOD \n raw-path?query \n <Date header verbatim> \n host:<Host> \n
//!                  content-type:<media type> \n x-backendai-version:<version> \n hex(H(""))
//! k1 = HMAC(secret, date.strftime("%Y%m%d")); k2 = HMAC(k1, host); sig = hex(HMAC(k2, sts))
//! ```

use chrono::{DateTime, Duration, FixedOffset, NaiveDate, NaiveDateTime, TimeZone, Utc};
use hmac::{Hmac, Mac};
use sha2::{Digest, Sha224, Sha256, Sha384, Sha512};

use crate::error::ApiError;

/// Allowed clock skew between client and server (strict on both sides).
pub const DATE_WINDOW: Duration = Duration::minutes(15);

/// Hash functions accepted in `signMethod=HMAC-<HASH>`. The original accepts any name in
/// `hashlib.algorithms_guaranteed`; the official client only ever sends SHA256, so we
/// implement the SHA-2 family and answer 400 for the rest, as the original does for
/// unknown names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HashType {
    Sha224,
    Sha256,
    Sha384,
    Sha512,
}

impl HashType {
    fn from_name(name: &str) -> Option<Self> {
        match name {
            "sha224" => Some(Self::Sha224),
            "sha256" => Some(Self::Sha256),
            "sha384" => Some(Self::Sha384),
            "sha512" => Some(Self::Sha512),
            _ => None,
        }
    }

    /// Hex digest of the empty byte string: the "body hash" for API versions ≥ v4.20181215,
    /// which never hash the body.
    pub fn empty_body_hash(self) -> String {
        let digest = match self {
            Self::Sha224 => Sha224::digest(b"").to_vec(),
            Self::Sha256 => Sha256::digest(b"").to_vec(),
            Self::Sha384 => Sha384::digest(b"").to_vec(),
            Self::Sha512 => Sha512::digest(b"").to_vec(),
        };
        data_encoding::HEXLOWER.encode(&digest)
    }

    pub fn hmac(self, key: &[u8], msg: &[u8]) -> Vec<u8> {
        // `new_from_slice` accepts keys of any length for HMAC, so the error arm is
        // unreachable; an empty vector would simply never match a signature.
        macro_rules! mac {
            ($h:ty) => {
                match Hmac::<$h>::new_from_slice(key) {
                    Ok(mut m) => {
                        m.update(msg);
                        m.finalize().into_bytes().to_vec()
                    }
                    Err(_) => Vec::new(),
                }
            };
        }
        match self {
            Self::Sha224 => mac!(Sha224),
            Self::Sha256 => mac!(Sha256),
            Self::Sha384 => mac!(Sha384),
            Self::Sha512 => mac!(Sha512),
        }
    }
}

/// Parses `signMethod` the way the original's `sign_request` does: exactly one `-`
/// (otherwise 401 "Invalid signature"), MAC `hmac` and a known hash (otherwise 400).
pub fn parse_sign_method(sign_method: &str) -> Result<HashType, ApiError> {
    let lower = sign_method.to_ascii_lowercase();
    let parts: Vec<&str> = lower.split('-').collect();
    let [mac, hash] = parts.as_slice() else {
        return Err(ApiError::auth_failed().with_msg("Invalid signature"));
    };
    if *mac != "hmac" {
        return Err(ApiError::invalid_auth_params()
            .with_msg("Unsupported request signing method (MAC type)"));
    }
    HashType::from_name(hash).ok_or_else(|| {
        ApiError::invalid_auth_params().with_msg("Unsupported request signing method (hash type)")
    })
}

/// The three values carried by `Authorization: BackendAI signMethod=…, credential=AK:SIG`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthorizationParams {
    pub sign_method: String,
    pub access_key: String,
    pub signature: String,
}

/// Parses the `Authorization` header. Scheme `BackendAI` (or legacy `Sorna`), then
/// comma-separated `k=v` pairs with case-insensitive keys. The original crashes (500) on an
/// element without `=`; we answer 400 like the other malformed cases.
pub fn parse_authorization(value: &str) -> Result<AuthorizationParams, ApiError> {
    let bad = |msg: &str| ApiError::invalid_auth_params().with_msg(msg.to_string());
    let Some((scheme, rest)) = value.split_once(' ') else {
        return Err(bad("Malformed authorization header"));
    };
    if scheme != "BackendAI" && scheme != "Sorna" {
        return Err(bad("Invalid authorization type name"));
    }
    let mut sign_method = None;
    let mut credential = None;
    for piece in rest.split(',') {
        let Some((k, v)) = piece.trim().split_once('=') else {
            return Err(bad("Missing or malformed authorization parameters"));
        };
        match k.trim().to_ascii_lowercase().as_str() {
            "signmethod" => sign_method = Some(v.trim().to_string()),
            "credential" => credential = Some(v.trim().to_string()),
            _ => {}
        }
    }
    let (Some(sign_method), Some(credential)) = (sign_method, credential) else {
        return Err(bad("Missing or malformed authorization parameters"));
    };
    let Some((access_key, signature)) = credential.split_once(':') else {
        return Err(bad("Missing or malformed authorization parameters"));
    };
    Ok(AuthorizationParams {
        sign_method,
        access_key: access_key.to_string(),
        signature: signature.to_string(),
    })
}

/// The media type the signature covers: the Content-Type without parameters, lower-cased
/// (the client lower-cases what it signs), or `application/octet-stream` when the header is
/// absent (what the client signs for WebSocket and SSE requests, which send none).
pub fn media_type(content_type: Option<&str>) -> String {
    match content_type {
        Some(ct) => ct
            .split(';')
            .next()
            .unwrap_or_default()
            .trim()
            .to_ascii_lowercase(),
        None => "application/octet-stream".to_string(),
    }
}

/// Inputs of the string to sign, all taken verbatim from the request.
#[derive(Clone, Debug)]
pub struct SigningInput<'a> {
    pub method: &'a str,
    /// The request-target's path and query exactly as on the request line (never
    /// re-encoded: the client signs e.g. `scope=*` unescaped).
    pub path_and_query: &'a str,
    /// The raw date header value.
    pub date_raw: &'a str,
    pub host: &'a str,
    /// Already reduced with [`media_type`].
    pub media_type: &'a str,
    /// `x-backendai-version`, or `x-sorna-version` when only the legacy header was sent.
    pub version_label: &'a str,
    pub version: &'a str,
}

pub fn string_to_sign(input: &SigningInput<'_>, hash: HashType) -> String {
    format!(
        "{}\n{}\n{}\nhost:{}\ncontent-type:{}\n{}:{}\n{}",
        input.method,
        input.path_and_query,
        input.date_raw,
        input.host,
        input.media_type,
        input.version_label,
        input.version,
        hash.empty_body_hash()
    )
}

/// `hex(HMAC(HMAC(HMAC(secret, YYYYMMDD), host), string_to_sign))`.
///
/// `key_date` is the calendar date of the parsed date header *in the header's own
/// timezone* (the original calls `strftime` on the parsed, tz-aware datetime).
pub fn sign(
    hash: HashType,
    secret_key: &str,
    key_date: NaiveDate,
    host: &str,
    sts: &str,
) -> String {
    let k1 = hash.hmac(
        secret_key.as_bytes(),
        key_date.format("%Y%m%d").to_string().as_bytes(),
    );
    let k2 = hash.hmac(&k1, host.as_bytes());
    data_encoding::HEXLOWER.encode(&hash.hmac(&k2, sts.as_bytes()))
}

/// Constant-time comparison, so response timing leaks nothing about the expected signature.
pub fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    let diff = a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y));
    std::hint::black_box(diff) == 0
}

/// Hosts to try when verifying. The first is the Host header itself. The official client
/// signs `endpoint.netloc`, so an endpoint written with its default port (`http://h:80`)
/// is signed as `h:80` while the HTTP library sends `Host: h`; the original rejects that.
/// We also accept the signature with the default port appended or removed.
pub fn host_candidates(host: &str) -> Vec<String> {
    let mut out = vec![host.to_string()];
    // The port is after the last ':' unless that ':' is inside an IPv6 literal.
    let port_sep = match host.rfind(']') {
        Some(close) => host[close..].rfind(':').map(|i| close + i),
        None => host.rfind(':'),
    };
    match port_sep {
        Some(i) => {
            let (name, port) = (&host[..i], &host[i + 1..]);
            if port == "80" || port == "443" {
                out.push(name.to_string());
            }
        }
        None => {
            out.push(format!("{host}:80"));
            out.push(format!("{host}:443"));
        }
    }
    out
}

/// Verifies a signature; returns true if it matches for one of the [`host_candidates`].
pub fn verify(
    hash: HashType,
    secret_key: &str,
    key_date: NaiveDate,
    input: &SigningInput<'_>,
    signature: &str,
) -> bool {
    host_candidates(input.host).iter().any(|host| {
        let input = SigningInput {
            host,
            ..input.clone()
        };
        let expected = sign(
            hash,
            secret_key,
            key_date,
            host,
            &string_to_sign(&input, hash),
        );
        constant_time_eq(expected.as_bytes(), signature.as_bytes())
    })
}

/// Timezone abbreviations accepted after a date (the original passes a table of them to
/// dateutil). Ambiguous names (IST, CST as China time ...) take their most common meaning.
const TZ_ABBREVIATIONS: &[(&str, i32)] = &[
    ("UTC", 0),
    ("UT", 0),
    ("GMT", 0),
    ("Z", 0),
    ("KST", 9 * 3600),
    ("JST", 9 * 3600),
    ("HKT", 8 * 3600),
    ("SGT", 8 * 3600),
    ("IST", 5 * 3600 + 1800),
    ("CET", 3600),
    ("CEST", 2 * 3600),
    ("BST", 3600),
    ("EET", 2 * 3600),
    ("EEST", 3 * 3600),
    ("EST", -5 * 3600),
    ("EDT", -4 * 3600),
    ("CST", -6 * 3600),
    ("CDT", -5 * 3600),
    ("MST", -7 * 3600),
    ("MDT", -6 * 3600),
    ("PST", -8 * 3600),
    ("PDT", -7 * 3600),
];

const NAIVE_FORMATS: &[&str] = &[
    "%Y-%m-%dT%H:%M:%S%.f",
    "%Y-%m-%d %H:%M:%S%.f",
    "%Y-%m-%dT%H:%M",
    "%Y-%m-%d %H:%M",
    "%Y%m%dT%H%M%S%.f",
];

/// Parses a date header leniently: ISO 8601 (with `T` or a space, optional fraction,
/// `Z`/`±hh:mm`/`±hhmm` or a timezone abbreviation), RFC 1123/2822, or a naive timestamp,
/// which is taken as UTC.
pub fn parse_date(raw: &str) -> Option<DateTime<FixedOffset>> {
    let s = raw.trim();
    if s.is_empty() {
        return None;
    }
    if let Ok(d) = DateTime::parse_from_rfc3339(s) {
        return Some(d);
    }
    if let Ok(d) = DateTime::parse_from_rfc2822(s) {
        return Some(d);
    }
    for fmt in NAIVE_FORMATS {
        // `%#z` accepts `+09`, `+0900` and `+09:00`.
        if let Ok(d) = DateTime::parse_from_str(s, &format!("{fmt}%#z")) {
            return Some(d);
        }
    }
    let (body, offset) = split_tz_suffix(s);
    let utc = FixedOffset::east_opt(0)?;
    let offset = offset.unwrap_or(utc);
    for fmt in NAIVE_FORMATS {
        if let Ok(n) = NaiveDateTime::parse_from_str(body, fmt) {
            return offset.from_local_datetime(&n).single();
        }
    }
    None
}

/// Splits a trailing `Z` or timezone abbreviation off a timestamp.
fn split_tz_suffix(s: &str) -> (&str, Option<FixedOffset>) {
    if let Some(body) = s.strip_suffix('Z') {
        return (body, FixedOffset::east_opt(0));
    }
    if let Some((body, abbr)) = s.rsplit_once(' ') {
        let upper = abbr.to_ascii_uppercase();
        if let Some((_, secs)) = TZ_ABBREVIATIONS.iter().find(|(n, _)| *n == upper) {
            return (body.trim_end(), FixedOffset::east_opt(*secs));
        }
    }
    (s, None)
}

/// `now - 15 min < date < now + 15 min`, strictly, as the original checks it.
pub fn date_in_window(date: &DateTime<FixedOffset>, now: DateTime<Utc>) -> bool {
    let d = date.with_timezone(&Utc);
    now - DATE_WINDOW < d && d < now + DATE_WINDOW
}

/// The day used for key derivation: the date in the header's own timezone.
pub fn key_date(date: &DateTime<FixedOffset>) -> NaiveDate {
    date.date_naive()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn empty_body_hash_sha256() {
        assert_eq!(
            HashType::Sha256.empty_body_hash(),
            "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"
        );
    }

    #[test]
    fn captured_signature() {
        // `backend.ai admin keypairs` against the capture server (client.md §3).
        let date_raw = "2026-11-24T18:20:35.360002+00:00";
        let date = parse_date(date_raw).unwrap();
        let input = SigningInput {
            method: "POST",
            path_and_query: "/admin/gql",
            date_raw,
            host: "127.0.0.1:8099",
            media_type: "application/json",
            version_label: "x-backendai-version",
            version: "v6.20210815",
        };
        let sig = sign(
            HashType::Sha256,
            "wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY",
            key_date(&date),
            input.host,
            &string_to_sign(&input, HashType::Sha256),
        );
        assert_eq!(
            sig,
            "99f1fe723475b1e8b9c82142a93c9c67132737f80a0e43e6e7741fbd389fb15d"
        );
    }

    #[test]
    fn dates() {
        for s in [
            "2021-06-07T01:23:45.123456+00:00",
            "2021-06-07T01:23:45Z",
            "2021-06-07 01:23:45",
            "2021-06-07T10:23:45+0900",
            "2021-06-07T10:23:45.5 KST",
            "Mon, 07 Jun 2021 01:23:45 GMT",
        ] {
            let d = parse_date(s).unwrap_or_else(|| panic!("{s}"));
            assert_eq!(
                d.with_timezone(&Utc).format("%Y%m%d%H%M").to_string(),
                "202106070123",
                "{s}"
            );
        }
        assert!(parse_date("yesterday").is_none());
        assert!(parse_date("").is_none());
        // The key date is the header's local day, not the UTC day.
        let d = parse_date("2021-06-07T01:00:00+09:00").unwrap();
        assert_eq!(key_date(&d).to_string(), "2021-06-07");
        assert_eq!(d.offset().local_minus_utc(), 9 * 3600);
    }

    #[test]
    fn window_is_strict() {
        let now = Utc::now();
        let at = |m: i64| (now + Duration::minutes(m)).fixed_offset();
        assert!(date_in_window(&at(0), now));
        assert!(date_in_window(&at(14), now));
        assert!(!date_in_window(&at(15), now));
        assert!(!date_in_window(&at(-15), now));
        assert!(!date_in_window(&at(-20), now));
    }

    #[test]
    fn authorization_header() {
        let p =
            parse_authorization("BackendAI signMethod=HMAC-SHA256, credential=AK:ab:cd").unwrap();
        assert_eq!(p.sign_method, "HMAC-SHA256");
        assert_eq!(p.access_key, "AK");
        assert_eq!(p.signature, "ab:cd");
        assert!(parse_authorization("Sorna SIGNMETHOD=x,CREDENTIAL=a:b").is_ok());
        for bad in [
            "BackendAI",
            "Bearer x=y",
            "BackendAI signMethod",
            "BackendAI credential=a:b",
            "BackendAI signMethod=x, credential=nocolon",
        ] {
            let e = parse_authorization(bad).unwrap_err();
            assert_eq!(e.slug, "invalid-auth-params", "{bad}");
        }
    }

    #[test]
    fn sign_methods() {
        assert_eq!(parse_sign_method("HMAC-SHA256").unwrap(), HashType::Sha256);
        assert_eq!(parse_sign_method("hmac-sha512").unwrap(), HashType::Sha512);
        assert_eq!(
            parse_sign_method("HMAC-SHA-256").unwrap_err().slug,
            "auth-failed"
        );
        assert_eq!(
            parse_sign_method("HMACSHA256").unwrap_err().slug,
            "auth-failed"
        );
        assert_eq!(
            parse_sign_method("CMAC-SHA256").unwrap_err().slug,
            "invalid-auth-params"
        );
        assert_eq!(
            parse_sign_method("HMAC-WHIRLPOOL").unwrap_err().slug,
            "invalid-auth-params"
        );
    }

    #[test]
    fn media_types_and_hosts() {
        assert_eq!(
            media_type(Some("multipart/form-data; boundary=abc")),
            "multipart/form-data"
        );
        assert_eq!(media_type(Some("Application/JSON")), "application/json");
        assert_eq!(media_type(None), "application/octet-stream");
        assert_eq!(host_candidates("h"), vec!["h", "h:80", "h:443"]);
        assert_eq!(host_candidates("h:80"), vec!["h:80", "h"]);
        assert_eq!(host_candidates("h:8081"), vec!["h:8081"]);
        assert_eq!(
            host_candidates("[::1]"),
            vec!["[::1]", "[::1]:80", "[::1]:443"]
        );
        assert_eq!(host_candidates("[::1]:443"), vec!["[::1]:443", "[::1]"]);
    }
}
