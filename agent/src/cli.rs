//! `backend-ai ag ...`: the agent daemon and the simulated fleet.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Subcommand};
use tokio_util::sync::CancellationToken;

use crate::agent::Agent;
use crate::config::{normalize_slot, AgentConfig, RuntimeTable};
use crate::sim::{SimConfig, SimFleet};

/// Where the RabbitMQ URL and prefix come from when no flag or variable sets them
/// (the manager configuration's `[rabbitmq]` section).
#[derive(Clone, Debug)]
pub struct Defaults {
    pub amqp_url: String,
    pub prefix: String,
}

#[derive(Subcommand)]
pub enum AgCommand {
    /// Run an agent: kernels are local processes under --work-root.
    StartServer(StartServerArgs),
    /// Run N simulated agents in one process (scale tests).
    Simulate(SimulateArgs),
}

#[derive(Args, Debug)]
pub struct ConnArgs {
    /// RabbitMQ URL (default: rabbitmq.url of the manager configuration).
    #[arg(long, env = "BAI_AGENT_RABBITMQ_URL")]
    pub rabbitmq_url: Option<String>,
    /// Prefix of every queue and exchange (default: rabbitmq.prefix).
    #[arg(long, env = "BAI_AGENT_PREFIX")]
    pub prefix: Option<String>,
}

#[derive(Args, Debug)]
pub struct StartServerArgs {
    /// Agent id (default: i-<hostname>).
    #[arg(long, env = "BAI_AGENT_ID")]
    pub id: Option<String>,
    #[arg(long, env = "BAI_AGENT_SCALING_GROUP", default_value = "default")]
    pub scaling_group: String,
    #[arg(long, env = "BAI_AGENT_REGION", default_value = "local")]
    pub region: String,
    /// CPU slots offered (default: the number of CPUs).
    #[arg(long, env = "BAI_AGENT_CPU")]
    pub cpu: Option<String>,
    /// Memory offered, bytes or a binary size like 8g (default: total memory).
    #[arg(long, env = "BAI_AGENT_MEM")]
    pub mem: Option<String>,
    /// Extra (fake) accelerator slots, e.g. --slot cuda.device=2 --slot cuda.mem=16g.
    #[arg(long = "slot", env = "BAI_AGENT_SLOTS", value_delimiter = ',')]
    pub slots: Vec<String>,
    /// Kernels live in <work-root>/<kernel-id>/work.
    #[arg(
        long,
        env = "BAI_AGENT_WORK_ROOT",
        default_value = "/tmp/backend-ai-agent"
    )]
    pub work_root: PathBuf,
    /// Keep kernel directories after the kernel exits.
    #[arg(long, env = "BAI_AGENT_KEEP_WORK_DIRS")]
    pub keep_work_dirs: bool,
    /// Seconds between heartbeats.
    #[arg(long, env = "BAI_AGENT_HEARTBEAT_INTERVAL", default_value_t = 3.0)]
    pub heartbeat_interval: f64,
    /// Image → runtime rules, PATTERN=python|bash (first match wins; `*` sets the default).
    #[arg(long = "runtime", env = "BAI_AGENT_RUNTIMES", value_delimiter = ',')]
    pub runtimes: Vec<String>,
    /// Python interpreter that runs the kernel runner.
    #[arg(long, env = "BAI_AGENT_PYTHON", default_value = "python3")]
    pub python: PathBuf,
    /// IP address reported in heartbeats.
    #[arg(long, env = "BAI_AGENT_IP", default_value = "127.0.0.1")]
    pub ip: String,
    /// Serve Prometheus `GET /metrics` on this address (port 0 picks a free port; the
    /// bound address is logged). No listener when absent.
    #[arg(long, env = "BAI_AGENT_METRICS_ADDR")]
    pub metrics_addr: Option<std::net::SocketAddr>,
    #[command(flatten)]
    pub conn: ConnArgs,
}

#[derive(Args, Debug)]
pub struct SimulateArgs {
    #[arg(long, default_value_t = 10)]
    pub count: usize,
    #[arg(long, default_value = "i-sim-")]
    pub id_prefix: String,
    #[arg(long, default_value = "default")]
    pub scaling_group: String,
    #[arg(long, default_value = "local")]
    pub region: String,
    #[arg(long, default_value = "8")]
    pub cpu: String,
    #[arg(long, default_value = "32g")]
    pub mem: String,
    #[arg(long = "slot", value_delimiter = ',')]
    pub slots: Vec<String>,
    #[arg(long, default_value_t = 3.0)]
    pub heartbeat_interval: f64,
    /// Milliseconds a simulated kernel takes to start.
    #[arg(long, default_value_t = 500)]
    pub start_delay_ms: u64,
    /// Simulated agents whose RPC consumers share one channel.
    #[arg(long, default_value_t = 256)]
    pub agents_per_channel: usize,
    #[arg(long, default_value_t = 5000)]
    pub agents_per_connection: usize,
    #[command(flatten)]
    pub conn: ConnArgs,
}

fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0) {
        anyhow::bail!("{what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|s| s.trim().to_string())
        .ok()
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "localhost".into())
}

fn apply_slots(
    slots: &mut std::collections::BTreeMap<String, String>,
    specs: &[String],
) -> anyhow::Result<()> {
    for spec in specs {
        let (name, value) = spec
            .split_once('=')
            .ok_or_else(|| anyhow::anyhow!("slot `{spec}` is not NAME=AMOUNT"))?;
        slots.insert(name.trim().to_string(), normalize_slot(name.trim(), value)?);
    }
    Ok(())
}

impl StartServerArgs {
    pub fn into_config(self, defaults: &Defaults) -> anyhow::Result<AgentConfig> {
        let id = self.id.unwrap_or_else(|| format!("i-{}", hostname()));
        if id.is_empty() || id.len() > 64 {
            anyhow::bail!("agent id must be 1 to 64 characters");
        }
        let url = self
            .conn
            .rabbitmq_url
            .unwrap_or_else(|| defaults.amqp_url.clone());
        let prefix = self.conn.prefix.unwrap_or_else(|| defaults.prefix.clone());
        let mut cfg = AgentConfig::new(&id, &url, &prefix, self.work_root);
        cfg.scaling_group = self.scaling_group;
        cfg.region = self.region;
        cfg.ip = self.ip;
        cfg.addr = format!("amqp://{}/{}", cfg.ip, id);
        if let Some(cpu) = self.cpu {
            cfg.set_slot("cpu", &cpu)?;
        }
        if let Some(mem) = self.mem {
            cfg.set_slot("mem", &mem)?;
        }
        for spec in &self.slots {
            let (name, value) = spec
                .split_once('=')
                .ok_or_else(|| anyhow::anyhow!("slot `{spec}` is not NAME=AMOUNT"))?;
            cfg.set_slot(name.trim(), value)?;
        }
        cfg.keep_work_dirs = self.keep_work_dirs;
        cfg.heartbeat_interval = secs(self.heartbeat_interval, "--heartbeat-interval")?;
        cfg.runtimes = RuntimeTable::default().with_rules(&self.runtimes)?;
        cfg.python = self.python;
        Ok(cfg)
    }
}

impl SimulateArgs {
    pub fn into_config(self, defaults: &Defaults) -> anyhow::Result<SimConfig> {
        let url = self
            .conn
            .rabbitmq_url
            .unwrap_or_else(|| defaults.amqp_url.clone());
        let prefix = self.conn.prefix.unwrap_or_else(|| defaults.prefix.clone());
        let mut cfg = SimConfig::new(self.count, &url, &prefix);
        cfg.id_prefix = self.id_prefix;
        cfg.scaling_group = self.scaling_group;
        cfg.region = self.region;
        cfg.slots.clear();
        apply_slots(
            &mut cfg.slots,
            &[format!("cpu={}", self.cpu), format!("mem={}", self.mem)],
        )?;
        apply_slots(&mut cfg.slots, &self.slots)?;
        cfg.heartbeat_interval = secs(self.heartbeat_interval, "--heartbeat-interval")?;
        cfg.start_delay = Duration::from_millis(self.start_delay_ms);
        cfg.agents_per_channel = self.agents_per_channel;
        cfg.agents_per_connection = self.agents_per_connection;
        Ok(cfg)
    }
}

/// Runs an `ag` subcommand until `shutdown` (SIGINT/SIGTERM in the binary).
pub async fn run(
    cmd: AgCommand,
    defaults: Defaults,
    shutdown: CancellationToken,
) -> anyhow::Result<()> {
    match cmd {
        AgCommand::StartServer(args) => {
            let metrics_addr = args.metrics_addr;
            let cfg = args.into_config(&defaults)?;
            tracing::info!(
                agent_id = %cfg.id,
                scaling_group = %cfg.scaling_group,
                slots = ?cfg.slots,
                work_root = %cfg.work_root.display(),
                broker = %bai_agent_proto::amqp::redact(&cfg.amqp_url),
                prefix = %cfg.prefix,
                "starting agent"
            );
            let agent = Agent::new(cfg);
            if let Some(addr) = metrics_addr {
                let bound = crate::metrics::spawn(addr, agent.clone(), shutdown.clone()).await?;
                tracing::info!(addr = %bound, "agent metrics listening on http://{bound}/metrics");
            }
            agent.run(shutdown).await
        }
        AgCommand::Simulate(args) => {
            let cfg = args.into_config(&defaults)?;
            let fleet = SimFleet::start(cfg).await?;
            shutdown.cancelled().await;
            fleet.stop().await;
            Ok(())
        }
    }
}
