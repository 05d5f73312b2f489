//! Resource slot arithmetic for limit reports (`/resource/check-presets`): decimal values
//! (strings on the wire, `str(Decimal)` formatting) plus `Infinity` for "unlimited" and
//! `NaN` for "not disclosed", which `bai_core::slots::ResourceSlot` (finite amounts, used
//! for scheduling) deliberately does not model.

use std::collections::BTreeMap;
use std::fmt;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

use bai_core::etcd::Etcd;

/// One slot amount.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Amount {
    Num(Decimal),
    Inf,
    NegInf,
    NaN,
}

impl Amount {
    pub const ZERO: Amount = Amount::Num(Decimal::ZERO);

    /// Parses a stored value: a decimal string or number, `Infinity`/`inf`, `NaN`, or a
    /// binary size (`4g`, `512m`, `1.5GiB`) as legacy rows and policies may hold.
    pub fn parse(v: &Value) -> Option<Amount> {
        match v {
            Value::Number(n) => Decimal::from_str(&n.to_string())
                .or_else(|_| Decimal::from_scientific(&n.to_string()))
                .ok()
                .map(Amount::Num),
            Value::String(s) => Self::parse_str(s),
            _ => None,
        }
    }

    pub fn parse_str(s: &str) -> Option<Amount> {
        let t = s.trim();
        match t.to_ascii_lowercase().as_str() {
            "infinity" | "inf" | "+infinity" => return Some(Amount::Inf),
            "-infinity" | "-inf" => return Some(Amount::NegInf),
            "nan" => return Some(Amount::NaN),
            _ => {}
        }
        if let Ok(d) = Decimal::from_str(t) {
            return Some(Amount::Num(d));
        }
        bai_core::slots::parse_binary_size(t).ok().map(Amount::Num)
    }

    fn rank(self) -> Option<(i8, Decimal)> {
        match self {
            Amount::NegInf => Some((-1, Decimal::ZERO)),
            Amount::Num(d) => Some((0, d)),
            Amount::Inf => Some((1, Decimal::ZERO)),
            Amount::NaN => None,
        }
    }

    pub fn lt(self, other: Amount) -> bool {
        matches!((self.rank(), other.rank()), (Some(a), Some(b)) if a < b)
    }

    pub fn min(self, other: Amount) -> Amount {
        if other.lt(self) {
            other
        } else {
            self
        }
    }
}

impl std::ops::Add for Amount {
    type Output = Amount;

    fn add(self, other: Amount) -> Amount {
        use Amount::*;
        match (self, other) {
            (NaN, _) | (_, NaN) | (Inf, NegInf) | (NegInf, Inf) => NaN,
            (Inf, _) | (_, Inf) => Inf,
            (NegInf, _) | (_, NegInf) => NegInf,
            (Num(a), Num(b)) => a.checked_add(b).map(Num).unwrap_or(Inf),
        }
    }
}

impl std::ops::Neg for Amount {
    type Output = Amount;

    fn neg(self) -> Amount {
        match self {
            Amount::Num(d) => Amount::Num(-d),
            Amount::Inf => Amount::NegInf,
            Amount::NegInf => Amount::Inf,
            Amount::NaN => Amount::NaN,
        }
    }
}

impl std::ops::Sub for Amount {
    type Output = Amount;

    fn sub(self, other: Amount) -> Amount {
        self + -other
    }
}

impl fmt::Display for Amount {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Amount::Num(d) => write!(f, "{d}"),
            Amount::Inf => f.write_str("Infinity"),
            Amount::NegInf => f.write_str("-Infinity"),
            Amount::NaN => f.write_str("NaN"),
        }
    }
}

/// A slot map (`ResourceSlot`), ordered by slot name.
pub type Slots = BTreeMap<String, Amount>;

/// Known slot types: the intrinsic `cpu` (count) and `mem` (bytes) plus the accelerator
/// slots registered in etcd `config/resource_slots/<name> = count|bytes|unique`.
pub async fn known_slot_types(etcd: &Etcd) -> anyhow::Result<BTreeMap<String, String>> {
    let mut out: BTreeMap<String, String> = etcd
        .get_prefix("config/resource_slots/")
        .await?
        .into_iter()
        .filter(|(k, _)| !k.is_empty())
        .collect();
    out.insert("cpu".into(), "count".into());
    out.insert("mem".into(), "bytes".into());
    Ok(out)
}

/// A map with every known slot set to `value`.
pub fn filled(known: &BTreeMap<String, String>, value: Amount) -> Slots {
    known.keys().map(|k| (k.clone(), value)).collect()
}

/// Parses a stored slot map (JSONB); unparsable and null entries are skipped.
pub fn from_json(v: &Value) -> Slots {
    v.as_object()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Amount::parse(v).map(|a| (k.clone(), a)))
                .collect()
        })
        .unwrap_or_default()
}

pub fn to_json(s: &Slots) -> Value {
    Value::Object(
        s.iter()
            .map(|(k, v)| (k.clone(), Value::String(v.to_string())))
            .collect::<Map<String, Value>>(),
    )
}

/// Keeps only known slots and fills the missing ones with zero (`normalize_slots`
/// with `ignore_unknown=True`).
pub fn normalize(s: &Slots, known: &BTreeMap<String, String>) -> Slots {
    known
        .keys()
        .map(|k| (k.clone(), s.get(k).copied().unwrap_or(Amount::ZERO)))
        .collect()
}

/// Union of keys, missing ones count as zero.
pub fn add(a: &Slots, b: &Slots) -> Slots {
    let mut out = a.clone();
    for (k, v) in b {
        let cur = out.get(k).copied().unwrap_or(Amount::ZERO);
        out.insert(k.clone(), cur + *v);
    }
    out
}

/// Keys of `a`; missing ones in `b` count as zero.
pub fn sub(a: &Slots, b: &Slots) -> Slots {
    a.iter()
        .map(|(k, v)| (k.clone(), *v - b.get(k).copied().unwrap_or(Amount::ZERO)))
        .collect()
}

/// `a >= b` slot by slot over the union of keys (missing = zero).
pub fn ge(a: &Slots, b: &Slots) -> bool {
    a.keys().chain(b.keys()).all(|k| {
        let x = a.get(k).copied().unwrap_or(Amount::ZERO);
        let y = b.get(k).copied().unwrap_or(Amount::ZERO);
        !x.lt(y)
    })
}

/// `ResourceSlot.from_policy`: the policy's known slots, the rest filled with 0 (LIMITED)
/// or Infinity (UNLIMITED).
pub fn from_policy(total: &Value, unlimited: bool, known: &BTreeMap<String, String>) -> Slots {
    let given = from_json(total);
    let fill = if unlimited { Amount::Inf } else { Amount::ZERO };
    known
        .keys()
        .map(|k| (k.clone(), given.get(k).copied().unwrap_or(fill)))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn amounts() {
        let a = |s: &str| Amount::parse_str(s).unwrap();
        assert_eq!(a("4g").to_string(), "4294967296");
        assert_eq!(a("1.5GiB").to_string(), "1610612736");
        assert_eq!(a("0.3").to_string(), "0.3");
        assert_eq!((a("Infinity") - a("5")).to_string(), "Infinity");
        assert_eq!((a("inf") - a("inf")).to_string(), "NaN");
        assert_eq!((a("1.5") + a("2")).to_string(), "3.5");
        assert_eq!(a("Infinity").min(a("5")).to_string(), "5");
        assert_eq!(a("NaN").to_string(), "NaN");
        assert!(a("1").lt(a("inf")));
        assert!(!a("nan").lt(a("1")) && !a("1").lt(a("nan")));
        assert_eq!(Amount::parse(&json!(2)).unwrap().to_string(), "2");
    }

    #[test]
    fn maps() {
        let known: BTreeMap<String, String> = [
            ("cpu".to_string(), "count".to_string()),
            ("mem".into(), "bytes".into()),
        ]
        .into();
        let p = from_policy(&json!({"cpu": "4", "cuda.device": "1"}), true, &known);
        assert_eq!(to_json(&p), json!({"cpu": "4", "mem": "Infinity"}));
        let preset = normalize(
            &from_json(&json!({"cpu": "1", "cuda.shares": "0.3"})),
            &known,
        );
        assert_eq!(to_json(&preset), json!({"cpu": "1", "mem": "0"}));
        assert!(ge(&p, &preset));
        assert!(!ge(&preset, &p));
        let s = sub(&p, &from_json(&json!({"cpu": "1"})));
        assert_eq!(to_json(&s), json!({"cpu": "3", "mem": "Infinity"}));
        assert_eq!(
            to_json(&add(&s, &from_json(&json!({"x": "1"})))),
            json!({"cpu": "3", "mem": "Infinity", "x": "1"})
        );
    }
}
