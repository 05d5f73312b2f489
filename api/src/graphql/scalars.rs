//! The custom scalars of the 21.03 schema, with graphene 2's wire formats.
//!
//! * `JSONString`: a *string containing JSON* on output (`"{\"cpu\": \"1\"}"`), and a
//!   JSON-encoded string on input. Client 21.3.6 double-encodes some inputs
//!   (`driver_opts: "\"{}\""`), so a decoded value that is itself a JSON text is decoded
//!   once more.
//! * `BigInt`: an integer that fits in int32 is an Int; anything larger is emitted as a
//!   float (`1099511627776.0`), as graphene's custom scalar did. Values beyond ±(2^53−1)
//!   are rejected both ways.
//! * `DateTime`: Python's `isoformat()` with offset (`2021-06-07T01:02:03.456789+00:00`,
//!   no fraction when the microseconds are zero).

use async_graphql::{InputValueError, InputValueResult, Number, Scalar, ScalarType, Value};
use chrono::{DateTime, Timelike, Utc};

pub const MAX_SAFE_INT: i64 = (1 << 53) - 1;

/// A JSON document carried as a string.
#[derive(Debug, Clone, PartialEq)]
pub struct JsonString(pub serde_json::Value);

impl JsonString {
    pub fn into_inner(self) -> serde_json::Value {
        self.0
    }
}

/// Decodes a JSONString input: strings are parsed as JSON (twice when the first decode
/// yields a string that is itself JSON); non-string literals are taken as they are.
pub fn decode_json_input(v: serde_json::Value) -> Result<serde_json::Value, String> {
    match v {
        serde_json::Value::String(s) => {
            let first: serde_json::Value =
                serde_json::from_str(&s).map_err(|e| format!("invalid JSON string: {e}"))?;
            match first {
                serde_json::Value::String(inner) => match serde_json::from_str(&inner) {
                    Ok(second) => Ok(second),
                    Err(_) => Ok(serde_json::Value::String(inner)),
                },
                other => Ok(other),
            }
        }
        other => Ok(other),
    }
}

#[Scalar(name = "JSONString")]
impl ScalarType for JsonString {
    fn parse(value: Value) -> InputValueResult<Self> {
        let json = value
            .into_json()
            .map_err(|e| InputValueError::custom(e.to_string()))?;
        decode_json_input(json)
            .map(JsonString)
            .map_err(InputValueError::custom)
    }

    fn to_value(&self) -> Value {
        Value::String(python_json(&self.0))
    }
}

/// `json.dumps` formatting (`", "` and `": "` separators), so the strings look like the
/// original's. Any JSON parser reads both forms the same.
pub fn python_json(v: &serde_json::Value) -> String {
    fn write(v: &serde_json::Value, out: &mut String) {
        match v {
            serde_json::Value::Array(items) => {
                out.push('[');
                for (i, item) in items.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    write(item, out);
                }
                out.push(']');
            }
            serde_json::Value::Object(map) => {
                out.push('{');
                for (i, (k, item)) in map.iter().enumerate() {
                    if i > 0 {
                        out.push_str(", ");
                    }
                    out.push_str(&serde_json::Value::String(k.clone()).to_string());
                    out.push_str(": ");
                    write(item, out);
                }
                out.push('}');
            }
            other => out.push_str(&other.to_string()),
        }
    }
    let mut out = String::new();
    write(v, &mut out);
    out
}

/// graphene's BigInt.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct BigInt(pub i64);

#[Scalar(name = "BigInt")]
impl ScalarType for BigInt {
    fn parse(value: Value) -> InputValueResult<Self> {
        let n = match &value {
            Value::Number(n) => {
                if let Some(i) = n.as_i64() {
                    i
                } else if let Some(f) = n.as_f64() {
                    if f.fract() != 0.0 || !f.is_finite() {
                        return Err(InputValueError::custom("BigInt must be an integer"));
                    }
                    f as i64
                } else {
                    return Err(InputValueError::expected_type(value));
                }
            }
            Value::String(s) => s
                .trim()
                .parse::<i64>()
                .map_err(|_| InputValueError::custom("BigInt must be an integer"))?,
            _ => return Err(InputValueError::expected_type(value)),
        };
        if !(-MAX_SAFE_INT..=MAX_SAFE_INT).contains(&n) {
            return Err(InputValueError::custom(
                "BigInt cannot represent values beyond ±(2^53-1)",
            ));
        }
        Ok(BigInt(n))
    }

    fn is_valid(value: &Value) -> bool {
        matches!(value, Value::Number(_) | Value::String(_))
    }

    fn to_value(&self) -> Value {
        bigint_value(self.0)
    }
}

pub fn bigint_value(n: i64) -> Value {
    if i32::try_from(n).is_ok() {
        Value::Number(Number::from(n))
    } else {
        Number::from_f64(n as f64)
            .map(Value::Number)
            .unwrap_or(Value::Null)
    }
}

/// A timestamp in Python's isoformat.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PyDateTime(pub DateTime<Utc>);

pub fn isoformat(t: &DateTime<Utc>) -> String {
    if t.nanosecond() / 1000 == 0 {
        t.format("%Y-%m-%dT%H:%M:%S+00:00").to_string()
    } else {
        t.format("%Y-%m-%dT%H:%M:%S%.6f+00:00").to_string()
    }
}

#[Scalar(name = "DateTime")]
impl ScalarType for PyDateTime {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(s) => DateTime::parse_from_rfc3339(s)
                .map(|t| PyDateTime(t.with_timezone(&Utc)))
                .map_err(|e| InputValueError::custom(e.to_string())),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(isoformat(&self.0))
    }
}

pub fn dt(t: Option<DateTime<Utc>>) -> Option<PyDateTime> {
    t.map(PyDateTime)
}

pub fn js(v: Option<serde_json::Value>) -> Option<JsonString> {
    v.map(JsonString)
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn json_string_double_decoding() {
        let v = decode_json_input(serde_json::json!("\"{}\"")).unwrap();
        assert_eq!(v, serde_json::json!({}));
        let v = decode_json_input(serde_json::json!("{\"cpu\":4}")).unwrap();
        assert_eq!(v, serde_json::json!({"cpu": 4}));
        let v = decode_json_input(serde_json::json!("\"plain\"")).unwrap();
        assert_eq!(v, serde_json::json!("plain"));
        assert_eq!(
            python_json(&serde_json::json!({"a": [1, "x"], "b": null})),
            "{\"a\": [1, \"x\"], \"b\": null}"
        );
    }

    #[test]
    fn bigint_and_datetime() {
        assert_eq!(serde_json::to_string(&bigint_value(5)).unwrap(), "5");
        assert_eq!(
            serde_json::to_string(&bigint_value(1099511627776)).unwrap(),
            "1099511627776.0"
        );
        let t = Utc.with_ymd_and_hms(2021, 6, 7, 1, 2, 3).unwrap();
        assert_eq!(isoformat(&t), "2021-06-07T01:02:03+00:00");
        let t = t + chrono::Duration::microseconds(456789);
        assert_eq!(isoformat(&t), "2021-06-07T01:02:03.456789+00:00");
    }
}
