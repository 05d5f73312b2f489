//! The manager's storage-proxy registry (`bai_storage::registry::StorageProxies`) against a
//! real proxy registered in a private etcd namespace: host resolution, the volume listing
//! with an unreachable proxy skipped, error classes, and the etcd re-read after the TTL.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bai_core::config::{StorageProxyConfig, StorageVolumeConfig};
use bai_storage::{ProxyServer, StorageError, StorageProxies};
use bai_tests::TestEtcd;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

const SECRET: &str = "test-registry-secret";
const VOL: &str = "volume1";
/// Nothing listens on port 1: connections are refused at once.
const DEAD_URL: &str = "http://127.0.0.1:1";

/// One proxy on a private temp directory, registered in `etcd`; stopped on drop.
struct RunningProxy {
    base: PathBuf,
    client_url: String,
    stop: CancellationToken,
}

impl RunningProxy {
    async fn start(etcd: &TestEtcd, name: &str) -> Self {
        let base =
            std::env::temp_dir().join(format!("bai-registry-test-{}", Uuid::new_v4().simple()));
        let mut volumes = BTreeMap::new();
        volumes.insert(
            VOL.to_string(),
            StorageVolumeConfig {
                backend: "vfs".into(),
                path: base.join("vfroot").join(VOL),
            },
        );
        let cfg = StorageProxyConfig {
            name: name.into(),
            manager_addr: "127.0.0.1:0".into(),
            client_addr: "127.0.0.1:0".into(),
            client_public_url: "http://unused".into(),
            manager_public_url: None,
            secret: SECRET.into(),
            jwt_secret: "test-registry-jwt".into(),
            token_ttl_secs: 600,
            register_in_etcd: false,
            volumes,
        };
        let server = ProxyServer::bind(&cfg).await.expect("bind proxy");
        server.register(&etcd.etcd).await.expect("register proxy");
        let client_url = server.client_url.clone();
        let stop = CancellationToken::new();
        let s = stop.clone();
        tokio::spawn(async move { server.serve(s).await });
        Self {
            base,
            client_url,
            stop,
        }
    }
}

impl Drop for RunningProxy {
    fn drop(&mut self) {
        self.stop.cancel();
        let _ = std::fs::remove_dir_all(&self.base);
    }
}

async fn register_dead(etcd: &TestEtcd, name: &str) {
    let base = format!("volumes/proxies/{name}");
    etcd.etcd
        .put(&format!("{base}/manager_api"), DEAD_URL)
        .await
        .unwrap();
    etcd.etcd
        .put(&format!("{base}/client_api"), DEAD_URL)
        .await
        .unwrap();
    etcd.etcd
        .put(&format!("{base}/secret"), SECRET)
        .await
        .unwrap();
}

#[tokio::test]
async fn resolves_hosts_lists_volumes_and_classifies_errors() {
    let etcd = TestEtcd::new().await;
    let px = RunningProxy::start(&etcd, "px1").await;
    let reg = StorageProxies::new(etcd.etcd.clone());

    assert_eq!(
        reg.default_host().await.unwrap().as_deref(),
        Some("px1:volume1")
    );

    let (proxy, volume) = reg.for_host("px1:volume1").await.unwrap();
    assert_eq!(volume, VOL);
    assert_eq!(proxy.name(), "px1");
    assert_eq!(proxy.info.upload_url(), format!("{}/upload", px.client_url));
    assert_eq!(
        proxy.info.download_url(),
        format!("{}/download", px.client_url)
    );
    let vfid = Uuid::new_v4();
    proxy
        .client()
        .create_folder(&volume, vfid, None)
        .await
        .unwrap();
    let usage = proxy.client().folder_usage(&volume, vfid).await.unwrap();
    assert_eq!(usage.file_count, 0);

    // The proxy's own refusals are client errors (the API's `vfolder-operation-failed`).
    let e = proxy
        .client()
        .folder_usage(&volume, Uuid::new_v4())
        .await
        .unwrap_err();
    assert!(e.is_client_error() && e.is_not_found(), "{e:?}");

    // Malformed hosts and unregistered proxies are `UnknownHost`.
    for host in ["px1", ":volume1", "px1:", "nope:volume1"] {
        let e = reg.for_host(host).await.unwrap_err();
        assert!(matches!(e, StorageError::UnknownHost(_)), "{host}: {e:?}");
        assert!(!e.is_client_error());
    }

    // A registered but dead proxy resolves, fails as `Unreachable`, and is left out of the
    // volume listing.
    register_dead(&etcd, "dead").await;
    let (dead, _) = reg.for_host("dead:volume1").await.unwrap();
    let e = dead.client().volumes().await.unwrap_err();
    assert!(matches!(e, StorageError::Unreachable { .. }), "{e:?}");
    assert!(!e.is_client_error());
    let all = reg.all_volumes().await.unwrap();
    let hosts: Vec<&str> = all.iter().map(|(h, _, _)| h.as_str()).collect();
    assert_eq!(hosts, vec!["px1:volume1"]);
    assert_eq!(all[0].1.name, VOL);
    assert_eq!(all[0].2.name(), "px1");

    // An empty default host counts as unset.
    etcd.etcd.put("volumes/default_host", "").await.unwrap();
    assert_eq!(reg.default_host().await.unwrap(), None);
    drop(px);
}

#[tokio::test]
async fn entries_are_cached_until_the_ttl_then_reread() {
    let etcd = TestEtcd::new().await;
    let px = RunningProxy::start(&etcd, "px1").await;
    let forever = StorageProxies::with_ttl(etcd.etcd.clone(), Duration::from_secs(3600));
    let always = StorageProxies::with_ttl(etcd.etcd.clone(), Duration::ZERO);
    let first = forever.proxy("px1").await.unwrap();
    assert!(Arc::ptr_eq(&first, &forever.proxy("px1").await.unwrap()));

    // The proxy "moves": a fresh registry entry is only seen once the TTL is over.
    etcd.etcd
        .put("volumes/proxies/px1/manager_api", DEAD_URL)
        .await
        .unwrap();
    let cached = forever.proxy("px1").await.unwrap();
    assert!(Arc::ptr_eq(&first, &cached));
    assert!(cached.client().volumes().await.is_ok());
    let reread = always.proxy("px1").await.unwrap();
    assert_eq!(reread.info.manager_api, DEAD_URL);
    let e = reread.client().volumes().await.unwrap_err();
    assert!(matches!(e, StorageError::Unreachable { .. }), "{e:?}");

    // A proxy removed from etcd is unknown at the next read.
    etcd.etcd
        .delete("volumes/proxies/px1/", true)
        .await
        .unwrap();
    let e = always.proxy("px1").await.unwrap_err();
    assert!(matches!(e, StorageError::UnknownHost(_)), "{e:?}");
    drop(px);
}

#[tokio::test]
async fn shared_registries_are_per_etcd_namespace() {
    let with_proxy = TestEtcd::new().await;
    let empty = TestEtcd::new().await;
    let px = RunningProxy::start(&with_proxy, "px1").await;
    let a = StorageProxies::shared(&with_proxy.etcd);
    let b = StorageProxies::shared(&empty.etcd);
    let (p, _) = a.for_host("px1:volume1").await.unwrap();
    // The same namespace shares one cache: a second handle answers with the cached entry.
    let again = StorageProxies::shared(&with_proxy.etcd)
        .proxy("px1")
        .await
        .unwrap();
    assert!(Arc::ptr_eq(&p, &again));
    let e = b.for_host("px1:volume1").await.unwrap_err();
    assert!(matches!(e, StorageError::UnknownHost(_)), "{e:?}");
    drop(px);
}
