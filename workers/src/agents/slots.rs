//! Sums of ResourceSlot JSON (`{"cpu": "2", "mem": "4294967296"}`) for occupancy
//! recalculation, in the original's serialisation: plain decimal strings, `Infinity` for
//! unbounded, counts normalised.

use std::collections::BTreeMap;
use std::str::FromStr;

use rust_decimal::Decimal;
use serde_json::{Map, Value};

#[derive(Clone, Copy, Debug, PartialEq)]
enum Amount {
    Num(Decimal),
    Inf,
}

fn parse(v: &Value) -> Option<Amount> {
    match v {
        Value::Number(n) => Decimal::from_str(&n.to_string())
            .or_else(|_| Decimal::from_scientific(&n.to_string()))
            .ok()
            .map(Amount::Num),
        Value::String(s) => {
            let t = s.trim();
            if t.eq_ignore_ascii_case("infinity") || t.eq_ignore_ascii_case("inf") {
                Some(Amount::Inf)
            } else {
                Decimal::from_str(t).ok().map(Amount::Num)
            }
        }
        _ => None,
    }
}

/// Adds up slot maps; unparsable and null entries are skipped (the original drops nulls).
pub fn sum<'a>(maps: impl IntoIterator<Item = &'a Value>) -> Value {
    let mut acc: BTreeMap<String, Amount> = BTreeMap::new();
    for m in maps {
        let Some(obj) = m.as_object() else { continue };
        for (k, v) in obj {
            let Some(a) = parse(v) else { continue };
            let e = acc.entry(k.clone()).or_insert(Amount::Num(Decimal::ZERO));
            *e = match (*e, a) {
                (Amount::Num(x), Amount::Num(y)) => {
                    x.checked_add(y).map(Amount::Num).unwrap_or(Amount::Inf)
                }
                _ => Amount::Inf,
            };
        }
    }
    let mut out = Map::new();
    for (k, a) in acc {
        let s = match a {
            Amount::Inf => "Infinity".to_string(),
            Amount::Num(d) => d.normalize().to_string(),
        };
        out.insert(k, Value::String(s));
    }
    Value::Object(out)
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    #[test]
    fn sums() {
        let a = json!({"cpu": "1.5", "mem": "1073741824"});
        let b = json!({"cpu": "0.5", "mem": 1073741824, "cuda.shares": "0.25"});
        assert_eq!(
            super::sum([&a, &b]),
            json!({"cpu": "2", "mem": "2147483648", "cuda.shares": "0.25"})
        );
        assert_eq!(
            super::sum([&json!({"x": "Infinity"}), &json!({"x": "1"})]),
            json!({"x": "Infinity"})
        );
        assert_eq!(super::sum(std::iter::empty()), json!({}));
    }
}
