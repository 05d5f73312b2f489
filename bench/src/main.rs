//! `bai-bench <subcommand>`: benchmarks against the real services.

mod agents;
mod bus;
mod graphql;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bai-bench", about = "Backend.AI manager benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Command bus round trips (1 and 2 workers) and trigger coalescing.
    Bus(bus::BusArgs),
    /// Signed GraphQL throughput (16 connections) and p99 at a fixed request rate.
    Graphql(graphql::GraphqlArgs),
    /// Simulated agents heartbeating: ingest CPU, DB writes/min, lost-agent detection.
    Agents(agents::AgentsArgs),
    /// No-op agent RPC round trips (p50/p99).
    AgentRpc(agents::RpcArgs),
    /// (internal) The simulated fleet of `agents`, run as a child process.
    #[command(hide = true)]
    SimChild(agents::SimChildArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Bus(args) => bus::run(args).await,
        Cmd::Graphql(args) => graphql::run(args).await,
        Cmd::Agents(args) => agents::run_agents(args).await,
        Cmd::AgentRpc(args) => agents::run_rpc(args).await,
        Cmd::SimChild(args) => agents::run_sim_child(args).await,
    }
}
