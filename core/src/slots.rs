//! `ResourceSlot`: slot name → decimal amount, stored as JSONB of decimal strings
//! (`{"cpu": "2", "mem": "4294967296", "cuda.shares": "0.5"}`).
//!
//! Slots whose name contains `mem` are bytes (integers, accept `"4g"` style input); other
//! slots are counts quantised to 3 decimals. Comparison is component-wise, a partial order.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};

#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ResourceSlot(pub BTreeMap<String, Decimal>);

fn is_bytes_slot(name: &str) -> bool {
    name.contains("mem")
}

/// Parses a binary size (`"1.5g"`, `"512MiB"`, `"1073741824"`) into bytes.
pub fn parse_binary_size(s: &str) -> Result<Decimal, String> {
    let t = s.trim().to_ascii_lowercase();
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
    Ok(v.floor())
}

impl ResourceSlot {
    pub fn new() -> Self {
        Self::default()
    }

    pub fn from_pairs<I: IntoIterator<Item = (S, Decimal)>, S: Into<String>>(it: I) -> Self {
        Self(it.into_iter().map(|(k, v)| (k.into(), v)).collect())
    }

    pub fn get(&self, slot: &str) -> Decimal {
        self.0.get(slot).copied().unwrap_or(Decimal::ZERO)
    }

    /// Parses user or stored input: strings (binary sizes for byte slots) or numbers.
    pub fn from_json(v: &Value) -> Result<Self, String> {
        let obj = match v {
            Value::Null => return Ok(Self::default()),
            Value::Object(o) => o,
            // Stored values of the original are sometimes JSON-encoded strings.
            Value::String(s) => {
                return Self::from_json(&serde_json::from_str(s).map_err(|e| e.to_string())?)
            }
            _ => return Err("resource slots must be an object".into()),
        };
        let mut out = BTreeMap::new();
        for (k, v) in obj {
            let d = match v {
                Value::Null => continue,
                Value::Number(n) => Decimal::from_str(&n.to_string())
                    .or_else(|_| Decimal::from_scientific(&n.to_string()))
                    .map_err(|_| format!("invalid amount for {k}: {n}"))?,
                Value::String(s) if is_bytes_slot(k) => {
                    parse_binary_size(s).map_err(|e| format!("{k}: {e}"))?
                }
                Value::String(s) => Decimal::from_str(s.trim())
                    .map_err(|_| format!("invalid amount for {k}: {s}"))?,
                other => return Err(format!("invalid amount for {k}: {other}")),
            };
            out.insert(k.clone(), normalize(k, d));
        }
        Ok(Self(out))
    }

    pub fn to_json(&self) -> Value {
        Value::Object(
            self.0
                .iter()
                .map(|(k, v)| (k.clone(), Value::String(format_amount(k, *v))))
                .collect::<Map<_, _>>(),
        )
    }

    pub fn add(&self, other: &Self) -> Self {
        let mut out = self.0.clone();
        for (k, v) in &other.0 {
            *out.entry(k.clone()).or_insert(Decimal::ZERO) += *v;
        }
        Self(out)
    }

    pub fn sub(&self, other: &Self) -> Self {
        let mut out = self.0.clone();
        for (k, v) in &other.0 {
            *out.entry(k.clone()).or_insert(Decimal::ZERO) -= *v;
        }
        Self(out)
    }

    /// True when every slot requested here is available in `capacity` (missing = 0).
    pub fn fits_in(&self, capacity: &Self) -> bool {
        self.0.iter().all(|(k, v)| *v <= capacity.get(k))
    }

    /// Slots present (> 0) in `self` that `request` asks nothing of.
    pub fn extras_for(&self, request: &Self) -> usize {
        self.0
            .iter()
            .filter(|(k, v)| **v > Decimal::ZERO && request.get(k) == Decimal::ZERO)
            .count()
    }

    pub fn is_zero(&self) -> bool {
        self.0.values().all(|v| v.is_zero())
    }
}

fn normalize(slot: &str, d: Decimal) -> Decimal {
    if is_bytes_slot(slot) {
        d.floor()
    } else {
        d.round_dp(3).normalize()
    }
}

/// Plain decimal, never scientific notation; integers without a fraction.
pub fn format_amount(slot: &str, d: Decimal) -> String {
    normalize(slot, d).normalize().to_string()
}

impl Serialize for ResourceSlot {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.to_json().serialize(s)
    }
}

impl<'de> Deserialize<'de> for ResourceSlot {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let v = Value::deserialize(d)?;
        Self::from_json(&v).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_format() {
        let s = ResourceSlot::from_json(
            &serde_json::json!({"cpu": "0.30", "mem": "4g", "cuda.shares": 0.5}),
        )
        .unwrap();
        assert_eq!(
            s.to_json(),
            serde_json::json!({"cpu": "0.3", "mem": "4294967296", "cuda.shares": "0.5"})
        );
        assert_eq!(
            parse_binary_size("1.5g").unwrap(),
            Decimal::from(1610612736)
        );
        assert_eq!(
            parse_binary_size("512MiB").unwrap(),
            Decimal::from(536870912)
        );
        assert_eq!(parse_binary_size("1024").unwrap(), Decimal::from(1024));
        let cap = ResourceSlot::from_json(&serde_json::json!({"cpu": "4", "mem": "8g"})).unwrap();
        assert!(!s.fits_in(&cap), "cuda.shares missing in capacity");
        let req = ResourceSlot::from_json(&serde_json::json!({"cpu": "2", "mem": "1g"})).unwrap();
        assert!(req.fits_in(&cap));
        assert_eq!(cap.sub(&req).get("cpu"), Decimal::from(2));
    }
}
