//! `backend-ai`: one binary, subcommands in the spirit of the original CLI
//! (`backend.ai mgr ...`, `backend.ai ag ...`).

mod dev;
mod mgr;
mod progress;
mod shutdown;
mod storage;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Every subcommand here is a long-running server with per-request allocation churn.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "backend-ai", version = bai_core::MANAGER_VERSION, about = "Backend.AI manager (Rust)")]
struct Cli {
    /// Path to manager.toml (default: ./manager.toml, then /etc/backend.ai/manager.toml).
    #[arg(short = 'f', long = "config", global = true, env = "BAI_CONFIG")]
    config: Option<PathBuf>,
    /// Log format: `text` or `json` (one JSON object per line); overrides logging.format.
    #[arg(long, global = true, env = "BAI_LOG_FORMAT", value_parser = ["text", "json"])]
    log_format: Option<String>,
    #[command(subcommand)]
    command: Top,
}

#[derive(Subcommand)]
enum Top {
    /// Manager: API server, workers, schema, fixtures, keypairs, etcd, bus.
    Mgr {
        #[command(subcommand)]
        command: mgr::MgrCommand,
    },
    /// Agent: a process-runtime agent, or a fleet of simulated agents.
    Ag {
        #[command(subcommand)]
        // Boxed: the agent's options are much larger than the other subcommands.
        command: Box<bai_agent::cli::AgCommand>,
    },
    /// Storage proxy: volumes and vfolder files, tus upload, token download.
    Storage {
        #[command(subcommand)]
        command: storage::StorageCommand,
    },
    /// Development: run the whole system in the foreground.
    Dev {
        #[command(subcommand)]
        command: DevCommand,
    },
}

#[derive(Subcommand)]
enum DevCommand {
    /// API server, workers, agents and the storage proxy as supervised child processes;
    /// Ctrl-C stops all.
    Up {
        #[arg(long, default_value_t = 2)]
        workers: usize,
        /// Process agents to start in the default scaling group.
        #[arg(long, default_value_t = 2)]
        agents: usize,
        #[arg(long, default_value = "0.0.0.0:8081")]
        addr: String,
        /// Worker N serves /metrics on 127.0.0.1:<base+N-1>, agent N on <base+100+N-1>
        /// (0: every process picks a free port and logs it).
        #[arg(long, default_value_t = 9101)]
        metrics_base_port: u16,
        /// Once the stack is up, run `ops/demo.sh` against it (installs the official
        /// client, tells a short story); the stack keeps running afterwards.
        #[arg(long)]
        demo: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let config_path = cli.config.clone();
    let result = runtime.block_on(async move {
        let mut config = bai_core::Config::load(cli.config.as_deref())?;
        if let Some(f) = &cli.log_format {
            config.logging.format = f.clone();
        }
        bai_core::telemetry::init(&config.logging);
        match cli.command {
            Top::Mgr { command } => mgr::run(config, command).await,
            Top::Ag { command } => {
                let defaults = bai_agent::cli::Defaults {
                    amqp_url: config.rabbitmq.url.clone(),
                    prefix: config.rabbitmq.prefix.clone(),
                };
                bai_agent::cli::run(*command, defaults, shutdown::on_signals()).await
            }
            Top::Storage { command } => storage::run(config, command).await,
            Top::Dev {
                command:
                    DevCommand::Up {
                        workers,
                        agents,
                        addr,
                        metrics_base_port,
                        demo,
                    },
            } => {
                dev::up(dev::DevOptions {
                    config: config_path,
                    workers,
                    agents,
                    addr,
                    metrics_base_port,
                    demo,
                    log_format: cli.log_format.clone(),
                })
                .await
            }
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
