//! Agent configuration, built from command-line flags and `BAI_AGENT_*` variables.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use rust_decimal::Decimal;

/// How a kernel of a given image runs on this host.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RuntimeKind {
    /// The bundled runner with a persistent Python namespace (query mode is a REPL).
    Python,
    /// The bundled runner executing each query with `bash -c`.
    Shell,
}

impl RuntimeKind {
    pub fn runner_lang(self) -> &'static str {
        match self {
            RuntimeKind::Python => "python",
            RuntimeKind::Shell => "bash",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_lowercase().as_str() {
            "python" | "python3" => Some(RuntimeKind::Python),
            "bash" | "shell" | "sh" => Some(RuntimeKind::Shell),
            _ => None,
        }
    }
}

/// Image → runtime table: the first rule whose pattern occurs in the image's canonical
/// name (case-insensitive) wins; `default` applies when none matches.
#[derive(Clone, Debug)]
pub struct RuntimeTable {
    pub rules: Vec<(String, RuntimeKind)>,
    pub default: Option<RuntimeKind>,
}

impl Default for RuntimeTable {
    fn default() -> Self {
        Self {
            rules: vec![
                ("python".into(), RuntimeKind::Python),
                ("shell".into(), RuntimeKind::Shell),
                ("bash".into(), RuntimeKind::Shell),
                ("ubuntu".into(), RuntimeKind::Shell),
                ("alpine".into(), RuntimeKind::Shell),
                ("busybox".into(), RuntimeKind::Shell),
            ],
            // Backend.AI images are Python-based as a rule; an unknown image gets a Python
            // kernel rather than a failure.
            default: Some(RuntimeKind::Python),
        }
    }
}

impl RuntimeTable {
    pub fn resolve(&self, image: &str) -> Option<RuntimeKind> {
        let image = image.to_ascii_lowercase();
        self.rules
            .iter()
            .find(|(pat, _)| image.contains(pat.as_str()))
            .map(|(_, k)| *k)
            .or(self.default)
    }

    /// Prepends `PATTERN=KIND` rules (so they win over the built-in ones).
    pub fn with_rules(mut self, specs: &[String]) -> anyhow::Result<Self> {
        let mut extra = Vec::new();
        for spec in specs {
            let (pat, kind) = spec.split_once('=').ok_or_else(|| {
                anyhow::anyhow!("runtime rule `{spec}` is not PATTERN=python|bash")
            })?;
            let kind = RuntimeKind::parse(kind).ok_or_else(|| {
                anyhow::anyhow!("runtime rule `{spec}`: unknown runtime `{kind}` (python or bash)")
            })?;
            if pat == "*" {
                self.default = Some(kind);
            } else {
                extra.push((pat.to_ascii_lowercase(), kind));
            }
        }
        extra.append(&mut self.rules);
        self.rules = extra;
        Ok(self)
    }
}

#[derive(Clone, Debug)]
pub struct AgentConfig {
    pub id: String,
    pub scaling_group: String,
    pub region: String,
    pub ip: String,
    /// Informational address written to `agents.addr`.
    pub addr: String,
    /// ResourceSlot the agent offers (decimal strings), e.g. cpu, mem, `cuda.device`.
    pub slots: BTreeMap<String, String>,
    pub slot_types: BTreeMap<String, String>,
    /// Each kernel gets `{work_root}/{kernel_id}/work` as its `/home/work`.
    pub work_root: PathBuf,
    pub keep_work_dirs: bool,
    pub heartbeat_interval: Duration,
    pub stats_interval: Duration,
    pub amqp_url: String,
    pub prefix: String,
    pub runtimes: RuntimeTable,
    /// The Python interpreter that runs the bundled runner.
    pub python: PathBuf,
    pub bootstrap_timeout: Duration,
    /// How long a new kernel's runner may take to say it is ready.
    pub start_timeout: Duration,
    /// SIGTERM → SIGKILL grace when destroying a kernel.
    pub destroy_grace: Duration,
    /// Unacknowledged RPC requests the agent holds at once.
    pub rpc_prefetch: u16,
    pub version: String,
}

impl AgentConfig {
    /// A configuration with the agent's defaults (used by tests and as the CLI's base).
    pub fn new(id: &str, amqp_url: &str, prefix: &str, work_root: PathBuf) -> Self {
        let ip = "127.0.0.1".to_string();
        let mut slots = BTreeMap::new();
        slots.insert(
            "cpu".to_string(),
            std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1)
                .to_string(),
        );
        slots.insert(
            "mem".to_string(),
            total_memory().unwrap_or(1 << 30).to_string(),
        );
        Self {
            id: id.to_string(),
            scaling_group: "default".into(),
            region: "local".into(),
            addr: format!("amqp://{ip}/{id}"),
            ip,
            slot_types: default_slot_types(&slots),
            slots,
            work_root,
            keep_work_dirs: false,
            heartbeat_interval: Duration::from_secs(3),
            stats_interval: Duration::from_secs(5),
            amqp_url: amqp_url.to_string(),
            prefix: prefix.to_string(),
            runtimes: RuntimeTable::default(),
            python: PathBuf::from("python3"),
            bootstrap_timeout: Duration::from_secs(60),
            start_timeout: Duration::from_secs(30),
            destroy_grace: Duration::from_secs(5),
            rpc_prefetch: 32,
            version: crate::AGENT_VERSION.to_string(),
        }
    }

    /// Sets a slot (and its type: `bytes` for names containing `mem`, else `count`).
    pub fn set_slot(&mut self, name: &str, value: &str) -> anyhow::Result<()> {
        let normalized = normalize_slot(name, value)?;
        self.slots.insert(name.to_string(), normalized);
        self.slot_types
            .insert(name.to_string(), slot_type(name).to_string());
        Ok(())
    }
}

pub fn slot_type(name: &str) -> &'static str {
    if name.contains("mem") {
        "bytes"
    } else {
        "count"
    }
}

fn default_slot_types(slots: &BTreeMap<String, String>) -> BTreeMap<String, String> {
    slots
        .keys()
        .map(|k| (k.clone(), slot_type(k).to_string()))
        .collect()
}

/// Parses a slot amount the way the original does (schema-graphql.md §1.4): byte slots
/// accept binary sizes (`4g`, `512m`, plain integers), counts accept decimals; the result
/// is a plain decimal string (bytes integral, counts normalised).
pub fn normalize_slot(name: &str, value: &str) -> anyhow::Result<String> {
    let v = value.trim();
    if slot_type(name) == "bytes" {
        return Ok(parse_binary_size(v)?.to_string());
    }
    let d: Decimal = v
        .parse()
        .map_err(|_| anyhow::anyhow!("slot {name}: `{value}` is not a number"))?;
    if d.is_sign_negative() {
        anyhow::bail!("slot {name}: `{value}` is negative");
    }
    Ok(d.round_dp(3).normalize().to_string())
}

/// `4g` → 4294967296; suffixes k/m/g/t/p are powers of 1024, optionally followed by `b`,
/// `ib` or `bytes`; fractions allowed (`1.5g`).
pub fn parse_binary_size(s: &str) -> anyhow::Result<u64> {
    let lower = s.trim().to_ascii_lowercase();
    let body = lower
        .strip_suffix("bytes")
        .or_else(|| lower.strip_suffix("ib"))
        .or_else(|| lower.strip_suffix('b'))
        .unwrap_or(&lower);
    let (num, mult) = match body.chars().last() {
        Some(c @ ('k' | 'm' | 'g' | 't' | 'p')) => {
            let exp = "kmgtp".find(c).unwrap_or(0) as u32 + 1;
            (&body[..body.len() - 1], 1024u64.pow(exp))
        }
        _ => (body, 1),
    };
    let d: Decimal = num
        .trim()
        .parse()
        .map_err(|_| anyhow::anyhow!("`{s}` is not a size (e.g. 4g, 512m, 1073741824)"))?;
    let bytes = d * Decimal::from(mult);
    if bytes.is_sign_negative() {
        anyhow::bail!("`{s}` is negative");
    }
    u64::try_from(bytes.trunc()).map_err(|_| anyhow::anyhow!("`{s}` is too large"))
}

/// Total memory of the host from /proc/meminfo.
pub fn total_memory() -> Option<u64> {
    let text = std::fs::read_to_string("/proc/meminfo").ok()?;
    let line = text.lines().find(|l| l.starts_with("MemTotal:"))?;
    let kb: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kb * 1024)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_slots() {
        assert_eq!(parse_binary_size("4g").unwrap(), 4 << 30);
        assert_eq!(parse_binary_size("512MiB").unwrap(), 512 << 20);
        assert_eq!(parse_binary_size("1.5g").unwrap(), 3 << 29);
        assert_eq!(parse_binary_size("1024").unwrap(), 1024);
        assert!(parse_binary_size("lots").is_err());
        assert_eq!(normalize_slot("cpu", "2.000").unwrap(), "2");
        assert_eq!(normalize_slot("cuda.shares", "0.50").unwrap(), "0.5");
        assert_eq!(normalize_slot("cuda.mem", "1g").unwrap(), "1073741824");
    }

    #[test]
    fn runtime_table() {
        let t = RuntimeTable::default();
        assert_eq!(
            t.resolve("cr.backend.ai/stable/python:3.9-ubuntu20.04"),
            Some(RuntimeKind::Python)
        );
        assert_eq!(t.resolve("lablup/shell:latest"), Some(RuntimeKind::Shell));
        assert_eq!(t.resolve("something/else"), Some(RuntimeKind::Python));
        let t = t
            .with_rules(&["r-base=bash".into(), "*=bash".into()])
            .unwrap();
        assert_eq!(t.resolve("lablup/r-base:4"), Some(RuntimeKind::Shell));
        assert_eq!(t.resolve("something/else"), Some(RuntimeKind::Shell));
        assert!(RuntimeTable::default()
            .with_rules(&["x=ruby".into()])
            .is_err());
    }
}
