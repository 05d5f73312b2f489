//! ResourceSlot input parsing and formatting (schema notes §1.4).
//!
//! A slot map is a JSON object of slot name → decimal string. Slots whose name contains
//! `mem` are byte counts and accept binary sizes (`"4g"`, `"512m"`, `"1.5g"`, `"inf"`);
//! the others are counts, quantised to 3 decimals and normalised (`"0.3"`, `"2"`).

use std::str::FromStr;

use rust_decimal::prelude::*;
use rust_decimal::Decimal;
use serde_json::{Map, Value};

/// Parses a binary size (`"1.5g"`, `"512MiB"`, `"1073741824"`, `"inf"`) into bytes.
/// `None` stands for infinity.
pub fn parse_binary_size(s: &str) -> Result<Option<Decimal>, String> {
    let t = s.trim().to_ascii_lowercase();
    if t == "inf" || t == "infinity" {
        return Ok(None);
    }
    let mut body = t.as_str();
    for suffix in ["bytes", "ib", "b"] {
        if let Some(stripped) = body.strip_suffix(suffix) {
            if !stripped.is_empty() {
                body = stripped;
                break;
            }
        }
    }
    let (num, exp) = match body.chars().last() {
        Some(c) if c.is_ascii_alphabetic() => {
            let exp = "kmgtpezy"
                .find(c)
                .ok_or_else(|| format!("invalid binary size: {s}"))? as u32
                + 1;
            (&body[..body.len() - 1], exp)
        }
        _ => (body, 0),
    };
    let n = Decimal::from_str(num.trim()).map_err(|_| format!("invalid binary size: {s}"))?;
    let mut v = n;
    for _ in 0..exp {
        v = v
            .checked_mul(Decimal::from(1024))
            .ok_or_else(|| format!("binary size too large: {s}"))?;
    }
    Ok(Some(v.floor()))
}

fn format_decimal(d: Decimal) -> String {
    let n = d.normalize();
    // `normalize` keeps no exponent form; `{}` of Decimal is plain notation.
    n.to_string()
}

/// Formats one slot value the way the original stores it.
fn normalise(key: &str, value: &Value) -> Result<Option<String>, String> {
    let text = match value {
        Value::Null => return Ok(None),
        Value::String(s) => s.clone(),
        Value::Number(n) => n.to_string(),
        other => return Err(format!("invalid value for slot {key}: {other}")),
    };
    let lowered = text.trim().to_ascii_lowercase();
    if lowered == "infinity" || lowered == "inf" {
        return Ok(Some("Infinity".into()));
    }
    if lowered == "-infinity" || lowered == "-inf" {
        return Ok(Some("-Infinity".into()));
    }
    if key.contains("mem") {
        return match parse_binary_size(&text)? {
            None => Ok(Some("Infinity".into())),
            Some(d) => Ok(Some(format_decimal(d))),
        };
    }
    let d = Decimal::from_str(text.trim())
        .or_else(|_| Decimal::from_scientific(text.trim()))
        .map_err(|_| format!("invalid value for slot {key}: {text}"))?;
    Ok(Some(format_decimal(d.round_dp(3))))
}

/// `ResourceSlot.from_user_input`: a JSON object of slot → amount, normalised.
pub fn parse_slots(v: &Value) -> Result<Value, String> {
    let Value::Object(map) = v else {
        return Err("resource slots must be a JSON object".into());
    };
    let mut out = Map::new();
    for (k, val) in map {
        if let Some(s) = normalise(k, val)? {
            out.insert(k.clone(), Value::String(s));
        }
    }
    Ok(Value::Object(out))
}

/// Reads a stored slot value as a float (for the `*_slots` convenience fields).
pub fn slot_f64(slots: &Value, key: &str) -> f64 {
    match slots.get(key) {
        Some(Value::String(s)) => {
            if key.contains("mem") {
                parse_binary_size(s)
                    .ok()
                    .flatten()
                    .and_then(|d| d.to_f64())
                    .unwrap_or(0.0)
            } else {
                s.parse().unwrap_or(0.0)
            }
        }
        Some(Value::Number(n)) => n.as_f64().unwrap_or(0.0),
        _ => 0.0,
    }
}

/// Sums slot maps (decimal strings), for a session's total over its kernels.
pub fn sum_slots<'a>(items: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut acc: Vec<(String, Decimal)> = Vec::new();
    for slots in items {
        let Some(map) = slots.as_object() else {
            continue;
        };
        for (k, v) in map {
            let d = match v {
                Value::String(s) => Decimal::from_str(s).ok(),
                Value::Number(n) => Decimal::from_str(&n.to_string()).ok(),
                _ => None,
            };
            let Some(d) = d else { continue };
            match acc.iter_mut().find(|(key, _)| key == k) {
                Some((_, total)) => *total += d,
                None => acc.push((k.clone(), d)),
            }
        }
    }
    let mut out = Map::new();
    for (k, d) in acc {
        out.insert(k, Value::String(format_decimal(d)));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn slots() {
        let v = parse_slots(&json!({"cpu": 4, "mem": "4g", "cuda.shares": "0.3333", "x": null}))
            .unwrap();
        assert_eq!(
            v,
            json!({"cpu": "4", "mem": "4294967296", "cuda.shares": "0.333"})
        );
        let v = parse_slots(&json!({"mem": "1.5g", "cpu": "inf"})).unwrap();
        assert_eq!(v, json!({"mem": "1610612736", "cpu": "Infinity"}));
        assert_eq!(
            parse_binary_size("512MiB").unwrap(),
            Some(Decimal::from(512 * 1024 * 1024))
        );
        assert_eq!(
            parse_binary_size("1073741824").unwrap(),
            Some(Decimal::from(1073741824i64))
        );
        assert!(parse_slots(&json!({"cpu": "abc"})).is_err());
        assert_eq!(
            sum_slots([&json!({"cpu": "1", "mem": "1024"}), &json!({"cpu": "0.5"})]),
            json!({"cpu": "1.5", "mem": "1024"})
        );
    }
}
