//! `backend-ai storage ...`: the storage proxy.

use std::time::Duration;

use clap::Subcommand;

use crate::shutdown;

#[derive(Subcommand)]
pub enum StorageCommand {
    /// Run the storage proxy (manager-facing and client-facing APIs) and register it in etcd.
    StartServer {
        /// Override `storage_proxy.manager_addr`.
        #[arg(long)]
        manager_addr: Option<String>,
        /// Override `storage_proxy.client_addr`.
        #[arg(long)]
        client_addr: Option<String>,
    },
}

pub async fn run(config: bai_core::Config, command: StorageCommand) -> anyhow::Result<()> {
    match command {
        StorageCommand::StartServer {
            manager_addr,
            client_addr,
        } => {
            let mut cfg = config.storage_proxy.clone();
            if let Some(a) = manager_addr {
                cfg.manager_addr = a;
            }
            if let Some(a) = client_addr {
                cfg.client_addr = a;
            }
            let stop = shutdown::on_signals();
            let server = bai_storage::ProxyServer::bind(&cfg).await?;
            if cfg.register_in_etcd {
                let etcd =
                    bai_core::etcd::Etcd::connect(&config.etcd, Duration::from_secs(30)).await?;
                server.register(&etcd).await?;
            }
            println!(
                "storage proxy {}: manager API {} client API {}",
                cfg.name, server.manager_url, server.client_url
            );
            server.serve(stop).await
        }
    }
}
