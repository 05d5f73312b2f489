//! Safe YAML for template payloads (the original used `yaml.safe_load`).
//!
//! We drive yaml-rust2's event parser ourselves and build a `serde_json::Value` with an
//! explicit stack, so every limit holds *while* parsing, not after:
//! * the text is at most [`MAX_YAML_BYTES`] (checked before the parser sees it);
//! * nesting is at most [`MAX_DEPTH`] (no recursion anywhere, so no stack overflow);
//! * anchors and aliases are allowed (safe_load allows them) but every node an alias
//!   expands to is charged to a budget of [`MAX_NODES`] nodes and [`MAX_EXPANDED_BYTES`]
//!   bytes of scalar text, so a "billion laughs" document (of nodes, or of one long
//!   string aliased many times) fails after a bounded amount of work and memory;
//! * only the YAML core tags (`!!str`, `!!int`, `!!float`, `!!bool`, `!!null`, `!!map`,
//!   `!!seq`) are accepted: there are no constructors for custom tags at all;
//! * one document per payload; map keys must be scalars.
//!
//! Plain scalars resolve like PyYAML's safe loader (YAML 1.1): `~`/`null`/empty → null,
//! `true|yes|on` / `false|no|off` (three casings) → booleans, decimal and `0x` integers,
//! decimal floats; everything else, and every quoted or block scalar, is a string.

use serde_json::{Map, Number, Value};
use yaml_rust2::parser::{Event, Parser, Tag};
use yaml_rust2::scanner::TScalarStyle;
use yaml_rust2::{Yaml, YamlEmitter};

pub const MAX_YAML_BYTES: usize = 256 * 1024;
pub const MAX_DEPTH: usize = 32;
pub const MAX_NODES: usize = 20_000;
/// Scalar text (keys and values) of the built document, aliases expanded.
pub const MAX_EXPANDED_BYTES: usize = 1024 * 1024;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum YamlError {
    #[error("the document is larger than {MAX_YAML_BYTES} bytes")]
    TooLarge,
    #[error("the document is nested deeper than {MAX_DEPTH} levels")]
    TooDeep,
    #[error("the document has more than {MAX_NODES} nodes or {MAX_EXPANDED_BYTES} bytes of text (aliases expanded)")]
    TooManyNodes,
    #[error("unsupported tag {0}")]
    Tag(String),
    #[error("{0}")]
    Syntax(String),
}

enum Frame {
    Seq {
        items: Vec<Value>,
        anchor: usize,
    },
    Map {
        map: Map<String, Value>,
        key: Option<String>,
        anchor: usize,
    },
}

struct Builder {
    stack: Vec<Frame>,
    anchors: std::collections::HashMap<usize, (Value, Cost)>,
    nodes: usize,
    bytes: usize,
    root: Option<Value>,
    documents: usize,
}

impl Builder {
    fn charge(&mut self, c: Cost) -> Result<(), YamlError> {
        self.nodes = self.nodes.saturating_add(c.nodes);
        self.bytes = self.bytes.saturating_add(c.bytes);
        if self.nodes > MAX_NODES || self.bytes > MAX_EXPANDED_BYTES {
            return Err(YamlError::TooManyNodes);
        }
        Ok(())
    }

    /// Attaches a finished node (with its size in nodes) to its parent, or makes it the root.
    fn push_value(&mut self, v: Value, anchor: usize, size: Cost) -> Result<(), YamlError> {
        if anchor > 0 {
            self.anchors.insert(anchor, (v.clone(), size));
        }
        match self.stack.last_mut() {
            None => {
                if self.root.is_some() {
                    return Err(YamlError::Syntax("more than one document".into()));
                }
                self.root = Some(v);
            }
            Some(Frame::Seq { items, .. }) => items.push(v),
            Some(Frame::Map { map, key, .. }) => match key.take() {
                None => {
                    let k = match v {
                        Value::String(s) => s,
                        Value::Null => "null".into(),
                        Value::Bool(b) => if b { "True" } else { "False" }.into(),
                        Value::Number(n) => n.to_string(),
                        _ => return Err(YamlError::Syntax("mapping keys must be scalars".into())),
                    };
                    *key = Some(k);
                }
                Some(k) => {
                    map.insert(k, v);
                }
            },
        }
        Ok(())
    }

    fn open(&mut self, frame: Frame) -> Result<(), YamlError> {
        if self.stack.len() >= MAX_DEPTH {
            return Err(YamlError::TooDeep);
        }
        self.charge(Cost { nodes: 1, bytes: 0 })?;
        self.stack.push(frame);
        Ok(())
    }
}

fn tag_name(tag: &Tag) -> String {
    format!("{}{}", tag.handle, tag.suffix)
}

/// The core-schema type a tag asks for, or an error for any other tag.
fn core_tag(tag: &Option<Tag>) -> Result<Option<&'static str>, YamlError> {
    let Some(t) = tag else { return Ok(None) };
    let suffix = match t.handle.as_str() {
        "!!" | "tag:yaml.org,2002:" => t.suffix.as_str(),
        // The non-specific tag `!` means "a string" for scalars.
        "!" if t.suffix.is_empty() => "str",
        _ => return Err(YamlError::Tag(tag_name(t))),
    };
    match suffix {
        "str" => Ok(Some("str")),
        "int" => Ok(Some("int")),
        "float" => Ok(Some("float")),
        "bool" => Ok(Some("bool")),
        "null" => Ok(Some("null")),
        "map" => Ok(Some("map")),
        "seq" => Ok(Some("seq")),
        _ => Err(YamlError::Tag(tag_name(t))),
    }
}

fn resolve_plain(s: &str) -> Value {
    match s {
        "" | "~" | "null" | "Null" | "NULL" => return Value::Null,
        "true" | "True" | "TRUE" | "yes" | "Yes" | "YES" | "on" | "On" | "ON" => {
            return Value::Bool(true)
        }
        "false" | "False" | "FALSE" | "no" | "No" | "NO" | "off" | "Off" | "OFF" => {
            return Value::Bool(false)
        }
        _ => {}
    }
    if let Some(n) = parse_int(s) {
        return Value::Number(n.into());
    }
    if let Some(f) = parse_float(s) {
        if let Some(n) = Number::from_f64(f) {
            return Value::Number(n);
        }
    }
    Value::String(s.to_string())
}

fn parse_int(s: &str) -> Option<i64> {
    let (neg, body) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let v = if let Some(hex) = body.strip_prefix("0x") {
        i64::from_str_radix(&hex.replace('_', ""), 16).ok()?
    } else {
        let digits = body.replace('_', "");
        if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) || body.starts_with('_')
        {
            return None;
        }
        digits.parse::<i64>().ok()?
    };
    Some(if neg { -v } else { v })
}

fn parse_float(s: &str) -> Option<f64> {
    // Decimal floats with a dot (YAML 1.1 requires one); no inf/nan (JSON has none).
    let t = s.trim_start_matches(['-', '+']);
    if !t.contains('.')
        || !t
            .bytes()
            .next()
            .is_some_and(|b| b.is_ascii_digit() || b == b'.')
    {
        return None;
    }
    if !t
        .bytes()
        .all(|b| b.is_ascii_digit() || matches!(b, b'.' | b'e' | b'E' | b'-' | b'+' | b'_'))
    {
        return None;
    }
    s.replace('_', "")
        .parse::<f64>()
        .ok()
        .filter(|f| f.is_finite())
}

fn typed_scalar(
    text: String,
    style: TScalarStyle,
    tag: Option<&'static str>,
) -> Result<Value, YamlError> {
    let plain = matches!(style, TScalarStyle::Plain);
    let bad = |want: &str| YamlError::Syntax(format!("{text:?} is not a valid {want}"));
    Ok(match tag {
        None if plain => resolve_plain(&text),
        None | Some("str") => Value::String(text),
        Some("int") => Value::Number(parse_int(&text).ok_or_else(|| bad("int"))?.into()),
        Some("float") => {
            let f = parse_float(&text)
                .or_else(|| parse_int(&text).map(|i| i as f64))
                .ok_or_else(|| bad("float"))?;
            Value::Number(Number::from_f64(f).ok_or_else(|| bad("float"))?)
        }
        Some("bool") => match resolve_plain(&text) {
            v @ Value::Bool(_) => v,
            _ => return Err(bad("bool")),
        },
        Some("null") => match resolve_plain(&text) {
            Value::Null => Value::Null,
            _ => return Err(bad("null")),
        },
        Some(other) => return Err(YamlError::Syntax(format!("a scalar cannot be a {other}"))),
    })
}

/// Parses one YAML document into JSON within the limits above.
pub fn parse(text: &str) -> Result<Value, YamlError> {
    if text.len() > MAX_YAML_BYTES {
        return Err(YamlError::TooLarge);
    }
    let mut parser = Parser::new_from_str(text);
    let mut b = Builder {
        stack: Vec::new(),
        anchors: Default::default(),
        nodes: 0,
        bytes: 0,
        root: None,
        documents: 0,
    };
    loop {
        let (event, mark) = parser
            .next_token()
            .map_err(|e| YamlError::Syntax(e.to_string()))?;
        let at = |m: &str| YamlError::Syntax(format!("{m} at line {}", mark.line()));
        match event {
            Event::StreamEnd => break,
            Event::DocumentStart => {
                b.documents += 1;
                if b.documents > 1 {
                    return Err(at("more than one document"));
                }
            }
            Event::Alias(id) => {
                let Some(size) = b.anchors.get(&id).map(|(_, c)| *c) else {
                    return Err(at("unknown alias"));
                };
                // An alias costs what it expands to (charged before copying it): this is
                // what bounds billion laughs.
                b.charge(size)?;
                let v = b
                    .anchors
                    .get(&id)
                    .map(|(v, _)| v.clone())
                    .unwrap_or(Value::Null);
                b.push_value(v, 0, size)?;
            }
            Event::Scalar(text, style, anchor, tag) => {
                let size = Cost {
                    nodes: 1,
                    bytes: text.len(),
                };
                b.charge(size)?;
                let v = typed_scalar(text, style, core_tag(&tag)?)?;
                b.push_value(v, anchor, size)?;
            }
            Event::SequenceStart(anchor, tag) => {
                if let Some(t) = core_tag(&tag)? {
                    if t != "seq" {
                        return Err(at("a sequence with a non-sequence tag"));
                    }
                }
                b.open(Frame::Seq {
                    items: Vec::new(),
                    anchor,
                })?;
            }
            Event::MappingStart(anchor, tag) => {
                if let Some(t) = core_tag(&tag)? {
                    if t != "map" {
                        return Err(at("a mapping with a non-mapping tag"));
                    }
                }
                b.open(Frame::Map {
                    map: Map::new(),
                    key: None,
                    anchor,
                })?;
            }
            Event::SequenceEnd | Event::MappingEnd => {
                let (v, anchor) = match b.stack.pop() {
                    Some(Frame::Seq { items, anchor }) => (Value::Array(items), anchor),
                    Some(Frame::Map { map, anchor, .. }) => (Value::Object(map), anchor),
                    None => return Err(at("unbalanced collection end")),
                };
                // The size of an anchored collection (for alias charging) is its node count.
                let size = if anchor > 0 {
                    cost_of(&v)
                } else {
                    Cost { nodes: 1, bytes: 0 }
                };
                b.push_value(v, anchor, size)?;
            }
            _ => {}
        }
    }
    Ok(b.root.unwrap_or(Value::Null))
}

/// What a value costs: nodes, and bytes of text in keys and strings.
#[derive(Clone, Copy, Debug, Default)]
struct Cost {
    nodes: usize,
    bytes: usize,
}

/// The cost of a value, iteratively (values here are at most [`MAX_DEPTH`] deep anyway).
fn cost_of(v: &Value) -> Cost {
    let mut c = Cost::default();
    let mut todo = vec![v];
    while let Some(x) = todo.pop() {
        c.nodes += 1;
        match x {
            Value::Array(a) => todo.extend(a.iter()),
            Value::Object(o) => {
                c.bytes += o.keys().map(String::len).sum::<usize>();
                todo.extend(o.values());
            }
            Value::String(s) => c.bytes += s.len(),
            _ => {}
        }
    }
    c
}

fn to_yaml(v: &Value) -> Yaml {
    match v {
        Value::Null => Yaml::Null,
        Value::Bool(b) => Yaml::Boolean(*b),
        Value::Number(n) => match n.as_i64() {
            Some(i) => Yaml::Integer(i),
            None => Yaml::Real(n.to_string()),
        },
        Value::String(s) => Yaml::String(s.clone()),
        Value::Array(a) => Yaml::Array(a.iter().map(to_yaml).collect()),
        Value::Object(o) => {
            let mut h = yaml_rust2::yaml::Hash::new();
            for (k, v) in o {
                h.insert(Yaml::String(k.clone()), to_yaml(v));
            }
            Yaml::Hash(h)
        }
    }
}

/// Renders a JSON value as a YAML document (the `format=yaml` answer).
pub fn dump(v: &Value) -> Result<String, YamlError> {
    let mut out = String::new();
    let mut emitter = YamlEmitter::new(&mut out);
    emitter.multiline_strings(true);
    emitter
        .dump(&to_yaml(v))
        .map_err(|e| YamlError::Syntax(format!("{e:?}")))?;
    out.push('\n');
    Ok(out)
}

/// A payload the original decoded with `json.loads`, then `yaml.safe_load` on failure.
pub fn parse_payload(text: &str) -> Result<Value, YamlError> {
    if text.len() > MAX_YAML_BYTES {
        return Err(YamlError::TooLarge);
    }
    match serde_json::from_str::<Value>(text) {
        Ok(v) => Ok(v),
        Err(_) => parse(text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn plain_documents() {
        let v = parse("a: 1\nb: [x, 'y', 2.5]\nc: yes\nd: ~\ne: \"1\"\nf: 0x10\n").unwrap();
        assert_eq!(
            v,
            json!({"a": 1, "b": ["x", "y", 2.5], "c": true, "d": null, "e": "1", "f": 16})
        );
        let v = parse("run:\n  bootstrap: |\n    echo hi\n    ls\n").unwrap();
        assert_eq!(v, json!({"run": {"bootstrap": "echo hi\nls\n"}}));
        assert_eq!(parse("!!str 12").unwrap(), json!("12"));
        assert_eq!(
            parse("a: &x {b: 1}\nc: *x\n").unwrap(),
            json!({"a": {"b": 1}, "c": {"b": 1}})
        );
    }

    #[test]
    fn round_trip() {
        let v = json!({"kind": "taskTemplate", "spec": {"kernel": {"image": "python:3.9",
            "environ": {"A": "true", "B": "12"}, "run": {"bootstrap": "a\nb\n"}}, "n": [1, null, 2.5]}});
        let text = dump(&v).unwrap();
        assert_eq!(parse(&text).unwrap(), v, "{text}");
    }

    #[test]
    fn hostile_documents() {
        let mut laughs = String::from(
            "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
        );
        for i in 1..10 {
            let prev = (b'a' + i - 1) as char;
            let cur = (b'a' + i) as char;
            laughs.push_str(&format!(
                "{cur}: &{cur} [*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev},*{prev}]\n"
            ));
        }
        assert_eq!(parse(&laughs), Err(YamlError::TooManyNodes));
        // Few nodes, but one long string aliased many times.
        let long = format!(
            "s: &s \"{}\"\nl: [{}]\n",
            "x".repeat(100_000),
            "*s,".repeat(50)
        );
        assert_eq!(parse(&long), Err(YamlError::TooManyNodes));
        assert!(matches!(
            parse("!!python/object/apply:os.system ['id']"),
            Err(YamlError::Tag(_))
        ));
        assert!(matches!(parse("a: !custom 1"), Err(YamlError::Tag(_))));
        let deep = format!("{}1{}", "[".repeat(10_000), "]".repeat(10_000));
        // The scanner has its own flow-nesting limit; either way it is refused early.
        assert!(matches!(
            parse(&deep),
            Err(YamlError::TooDeep | YamlError::Syntax(_))
        ));
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(parse(&block), Err(YamlError::TooDeep));
        assert_eq!(
            parse(&"a".repeat(MAX_YAML_BYTES + 1)),
            Err(YamlError::TooLarge)
        );
        assert!(matches!(parse("a: [1, 2"), Err(YamlError::Syntax(_))));
        assert!(matches!(
            parse("a: 1\n---\nb: 2\n"),
            Err(YamlError::Syntax(_))
        ));
        assert!(matches!(parse("? [a]\n: 1\n"), Err(YamlError::Syntax(_))));
    }
}
