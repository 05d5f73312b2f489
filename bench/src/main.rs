//! `bai-bench <subcommand>`: benchmarks against the real services.

mod agents;
mod bus;
mod graphql;
mod sched;
mod scratch;
mod sessions;
mod sign;
mod sse;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "bai-bench", about = "Backend.AI manager benchmarks")]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Scheduling throughput: N PENDING sessions onto M agents, 1 and 2 concurrent groups.
    Sched(sched::SchedArgs),
    /// Sessions: enqueue throughput/latency, create → RUNNING latency, passes per burst.
    Sessions(sessions::SessionsArgs),
    /// Command bus round trips (1 and 2 workers) and trigger coalescing.
    Bus(bus::BusArgs),
    /// Signed GraphQL throughput (16 connections) and p99 at a fixed request rate.
    Graphql(graphql::GraphqlArgs),
    /// Simulated agents heartbeating: ingest CPU, DB writes/min, lost-agent detection.
    Agents(agents::AgentsArgs),
    /// No-op agent RPC round trips (p50/p99).
    AgentRpc(agents::RpcArgs),
    /// 1,000 SSE subscribers: delivery latency at two event rates, API RSS, slow clients.
    Sse(sse::SseArgs),
    /// (internal) The simulated fleet of `agents`, run as a child process.
    #[command(hide = true)]
    SimChild(agents::SimChildArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Cmd::Sched(args) => sched::run(args).await,
        Cmd::Sessions(args) => sessions::run(args).await,
        Cmd::Bus(args) => bus::run(args).await,
        Cmd::Graphql(args) => graphql::run(args).await,
        Cmd::Agents(args) => agents::run_agents(args).await,
        Cmd::AgentRpc(args) => agents::run_rpc(args).await,
        Cmd::Sse(args) => sse::run(args).await,
        Cmd::SimChild(args) => agents::run_sim_child(args).await,
    }
}
