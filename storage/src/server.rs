//! Start-up: open the volumes, bind both listeners, register in etcd, serve.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use bai_core::config::StorageProxyConfig;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::manager_api::AppState;
use crate::token::Tokens;
use crate::vfs::VfsVolume;
use crate::volume::VolumeBackend;

pub struct ProxyServer {
    manager: TcpListener,
    client: TcpListener,
    state: Arc<AppState>,
    name: String,
    default_volume: Option<String>,
    /// URL the manager uses (registered as `manager_api`).
    pub manager_url: String,
    /// URL clients use (registered as `client_api`).
    pub client_url: String,
}

fn url_for(addr: SocketAddr) -> String {
    let host = if addr.ip().is_unspecified() {
        "127.0.0.1".to_string()
    } else {
        addr.ip().to_string()
    };
    if addr.is_ipv6() && !addr.ip().is_unspecified() {
        format!("http://[{host}]:{}", addr.port())
    } else {
        format!("http://{host}:{}", addr.port())
    }
}

impl ProxyServer {
    /// Opens every volume (creating missing directories) and binds both listeners.
    /// With port 0 in an address the public URL is taken from the bound port.
    pub async fn bind(cfg: &StorageProxyConfig) -> anyhow::Result<Self> {
        if cfg.volumes.is_empty() {
            anyhow::bail!("storage_proxy.volumes is empty: configure at least one volume");
        }
        let mut volumes: BTreeMap<String, Arc<dyn VolumeBackend>> = BTreeMap::new();
        let ttl = Duration::from_secs(cfg.token_ttl_secs.max(1));
        for (name, vc) in &cfg.volumes {
            let v = VfsVolume::open(name, &vc.path)?;
            let stale = v.cleanup_stale_uploads(ttl);
            if stale > 0 {
                tracing::info!(volume = %name, stale, "removed expired partial uploads");
            }
            volumes.insert(name.clone(), Arc::new(v));
        }
        let manager = TcpListener::bind(&cfg.manager_addr)
            .await
            .with_context(|| format!("cannot bind manager API on {}", cfg.manager_addr))?;
        let client = TcpListener::bind(&cfg.client_addr)
            .await
            .with_context(|| format!("cannot bind client API on {}", cfg.client_addr))?;
        let m_addr = manager.local_addr()?;
        let c_addr = client.local_addr()?;
        let manager_url = match &cfg.manager_public_url {
            Some(u) => u.clone(),
            None => url_for(m_addr),
        };
        let client_url = if cfg.client_addr.ends_with(":0") {
            url_for(c_addr)
        } else {
            cfg.client_public_url.clone()
        };
        let default_volume = if cfg.volumes.contains_key("volume1") {
            Some("volume1".to_string())
        } else {
            cfg.volumes.keys().next().cloned()
        };
        let state = Arc::new(AppState {
            volumes,
            tokens: Tokens::new(&cfg.jwt_secret, ttl),
            secret: cfg.secret.clone(),
            client_url: client_url.clone(),
            uploads: Default::default(),
        });
        Ok(Self {
            manager,
            client,
            state,
            name: cfg.name.clone(),
            default_volume,
            manager_url,
            client_url,
        })
    }

    pub fn manager_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.manager.local_addr()?)
    }

    pub fn client_addr(&self) -> anyhow::Result<SocketAddr> {
        Ok(self.client.local_addr()?)
    }

    pub fn state(&self) -> Arc<AppState> {
        self.state.clone()
    }

    /// Writes `volumes/proxies/<name>/{manager_api,client_api,secret}` and, if unset,
    /// `volumes/default_host` = `<name>:<volume1 or first volume>`.
    pub async fn register(&self, etcd: &bai_core::etcd::Etcd) -> anyhow::Result<()> {
        let base = format!("volumes/proxies/{}", self.name);
        etcd.put(&format!("{base}/manager_api"), &self.manager_url)
            .await?;
        etcd.put(&format!("{base}/client_api"), &self.client_url)
            .await?;
        etcd.put(&format!("{base}/secret"), &self.state.secret)
            .await?;
        if let Some(vol) = &self.default_volume {
            use etcd_client::{Compare, CompareOp, Txn, TxnOp};
            let key = format!("{}volumes/default_host", etcd.prefix());
            let value = format!("{}:{vol}", self.name);
            // Put-if-absent in one transaction: an operator's choice is never overwritten,
            // and two proxies starting together cannot both win.
            let txn = Txn::new()
                .when([Compare::version(key.clone(), CompareOp::Equal, 0)])
                .and_then([TxnOp::put(key, value, None)]);
            etcd.client().txn(txn).await?;
        }
        tracing::info!(name = %self.name, manager_api = %self.manager_url, client_api = %self.client_url, "registered storage proxy in etcd");
        Ok(())
    }

    /// Serves both APIs until `shutdown` is cancelled.
    pub async fn serve(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let m_app = crate::manager_api::router(self.state.clone());
        let c_app = crate::client_api::router(self.state.clone());
        tracing::info!(manager = %self.manager.local_addr()?, client = %self.client.local_addr()?, "storage proxy listening");
        let s1 = shutdown.clone();
        let s2 = shutdown.clone();
        let m = axum::serve(self.manager, m_app)
            .with_graceful_shutdown(async move { s1.cancelled().await });
        let c = axum::serve(self.client, c_app)
            .with_graceful_shutdown(async move { s2.cancelled().await });
        tokio::try_join!(async { m.await.context("manager API server") }, async {
            c.await.context("client API server")
        })?;
        Ok(())
    }
}
