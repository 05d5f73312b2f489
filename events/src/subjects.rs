//! Subject and stream names. Everything carries a configurable prefix so that deployments
//! (and concurrent tests) can share one NATS server without seeing each other.

use uuid::Uuid;

use crate::envelope::Kind;
use crate::event::Event;

#[derive(Clone, Debug)]
pub struct Subjects {
    prefix: String,
}

/// Makes a scaling-group name safe as one subject token: NATS tokens cannot contain
/// `.`, `*`, `>` or whitespace, so anything outside `[A-Za-z0-9_-]` becomes `~XX` (hex).
pub fn encode_token(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    for b in name.bytes() {
        if b.is_ascii_alphanumeric() || b == b'_' || b == b'-' {
            out.push(b as char);
        } else {
            out.push_str(&format!("~{b:02X}"));
        }
    }
    if out.is_empty() {
        out.push('~');
    }
    out
}

pub fn decode_token(token: &str) -> String {
    if token == "~" {
        return String::new();
    }
    let bytes = token.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'~' && i + 3 <= bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).ok();
            if let Some(b) = hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl Subjects {
    pub fn new(prefix: &str) -> Self {
        Self {
            prefix: encode_token(prefix),
        }
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }

    fn stream(&self, name: &str) -> String {
        format!("{}_{name}", self.prefix.to_uppercase().replace('~', "_"))
    }

    pub fn cmd_stream(&self) -> String {
        self.stream("CMD")
    }
    pub fn events_stream(&self) -> String {
        self.stream("EVENTS")
    }
    pub fn trigger_stream(&self) -> String {
        self.stream("TRIGGER")
    }

    pub fn cmd(&self, kind: &str) -> String {
        format!("{}.cmd.{kind}", self.prefix)
    }
    pub fn cmd_all(&self) -> String {
        format!("{}.cmd.>", self.prefix)
    }

    /// `<p>.evt.<name>.<session-or-task-id or _>`: SSE readers can filter one session's
    /// events on the server side with `<p>.evt.*.<session_id>`.
    pub fn event(&self, ev: &Event) -> String {
        let key = ev
            .session_id()
            .or_else(|| ev.task_id())
            .map(|u| u.to_string())
            .unwrap_or_else(|| "_".into());
        format!("{}.evt.{}.{key}", self.prefix, ev.kind())
    }
    pub fn events_all(&self) -> String {
        format!("{}.evt.>", self.prefix)
    }
    pub fn events_about(&self, id: Uuid) -> String {
        format!("{}.evt.*.{id}", self.prefix)
    }

    pub fn trigger_schedule(&self, scaling_group: &str) -> String {
        format!(
            "{}.trigger.schedule.{}",
            self.prefix,
            encode_token(scaling_group)
        )
    }
    pub fn trigger_all(&self) -> String {
        format!("{}.trigger.>", self.prefix)
    }
    /// Recovers the scaling group from a trigger subject.
    pub fn trigger_group(&self, subject: &str) -> Option<String> {
        subject
            .strip_prefix(&format!("{}.trigger.schedule.", self.prefix))
            .map(decode_token)
    }

    /// Per-process reply inbox prefix: `<p>.reply.<instance>`; a reply subject is
    /// `<p>.reply.<instance>.<command id>`.
    pub fn reply_prefix(&self, instance: &str) -> String {
        format!("{}.reply.{}", self.prefix, encode_token(instance))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip() {
        for name in ["default", "gpu.a100", "a b*c>d", "ün", "x~y", ""] {
            let t = encode_token(name);
            assert!(!t.contains('.') && !t.contains(' ') && !t.contains('*') && !t.contains('>'));
            assert_eq!(decode_token(&t), name, "{t}");
        }
        let s = Subjects::new("bai");
        assert_eq!(
            s.trigger_group(&s.trigger_schedule("gpu.x")).as_deref(),
            Some("gpu.x")
        );
    }
}
