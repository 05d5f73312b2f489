//! The manager's side of the storage proxies (see the storage contract): discovery in etcd
//! (`volumes/proxies/<proxy>/{manager_api,client_api,secret}`, `volumes/default_host`) and
//! a small typed HTTP client for the manager-facing API.
//!
//! A vfolder `host` is `<proxy>:<volume>`. Clients are cached per proxy name; a cached
//! entry is re-read from etcd after [`CACHE_TTL`] so a moved or re-keyed proxy is picked up
//! without a restart.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tokio::sync::RwLock;
use uuid::Uuid;

use crate::etcd::Etcd;

/// How long a proxy's etcd entry is trusted before it is read again.
pub const CACHE_TTL: Duration = Duration::from_secs(10);
/// Header carrying the shared secret.
pub const AUTH_HEADER: &str = "X-BackendAI-Storage-Auth-Token";

/// What went wrong talking to a storage proxy.
#[derive(Debug, thiserror::Error)]
pub enum ProxyError {
    /// The host string is not `<proxy>:<volume>` or names an unknown proxy.
    #[error("unknown storage host {0}")]
    UnknownHost(String),
    /// The proxy answered with an error (its problem+json `msg`/`title` is kept).
    #[error("storage proxy answered {status}: {message}")]
    Status {
        status: u16,
        error_type: String,
        message: String,
    },
    /// The proxy could not be reached or answered garbage.
    #[error("storage proxy unavailable: {0}")]
    Transport(String),
}

impl ProxyError {
    /// True for errors the caller caused (bad path, not found, quota...): 4xx answers.
    pub fn is_client_error(&self) -> bool {
        matches!(self, ProxyError::Status { status, .. } if (400..500).contains(status))
    }
}

/// Splits `<proxy>:<volume>`.
pub fn split_host(host: &str) -> Option<(&str, &str)> {
    host.split_once(':')
        .filter(|(p, v)| !p.is_empty() && !v.is_empty())
}

/// One entry of `GET /volumes`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    #[serde(default)]
    pub backend: String,
    #[serde(default)]
    pub path: String,
    #[serde(default)]
    pub fsprefix: String,
    #[serde(default)]
    pub capabilities: Vec<String>,
}

/// One entry of a directory listing.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub stat: EntryStat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EntryStat {
    #[serde(default)]
    pub mode: u32,
    #[serde(default)]
    pub size: u64,
    #[serde(default)]
    pub created: String,
    #[serde(default)]
    pub modified: String,
}

/// A client for one storage proxy.
#[derive(Clone, Debug)]
pub struct ProxyClient {
    pub name: String,
    pub manager_api: String,
    pub client_api: String,
    secret: String,
    http: reqwest::Client,
}

impl ProxyClient {
    pub fn new(name: &str, manager_api: &str, client_api: &str, secret: &str) -> Self {
        Self {
            name: name.to_string(),
            manager_api: manager_api.trim_end_matches('/').to_string(),
            client_api: client_api.trim_end_matches('/').to_string(),
            secret: secret.to_string(),
            http: reqwest::Client::builder()
                .connect_timeout(Duration::from_secs(5))
                .build()
                .unwrap_or_default(),
        }
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<Value>,
    ) -> Result<Option<Value>, ProxyError> {
        let mut rb = self
            .http
            .request(method, format!("{}{}", self.manager_api, path))
            .header(AUTH_HEADER, &self.secret);
        if let Some(b) = body {
            rb = rb.json(&b);
        }
        let resp = rb
            .send()
            .await
            .map_err(|e| ProxyError::Transport(e.to_string()))?;
        let status = resp.status();
        let text = resp
            .text()
            .await
            .map_err(|e| ProxyError::Transport(e.to_string()))?;
        let parsed: Option<Value> = if text.trim().is_empty() {
            None
        } else {
            serde_json::from_str(&text).ok()
        };
        if !status.is_success() {
            let p = parsed.unwrap_or(Value::Null);
            let message = p
                .get("msg")
                .or_else(|| p.get("title"))
                .and_then(Value::as_str)
                .map(str::to_string)
                .unwrap_or_else(|| text.chars().take(200).collect());
            let error_type = p
                .get("type")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string();
            return Err(ProxyError::Status {
                status: status.as_u16(),
                error_type,
                message,
            });
        }
        Ok(parsed)
    }

    async fn post(&self, path: &str, body: Value) -> Result<Value, ProxyError> {
        Ok(self
            .call(reqwest::Method::POST, path, Some(body))
            .await?
            .unwrap_or(Value::Null))
    }

    fn field<T: for<'de> Deserialize<'de>>(v: &Value, key: &str) -> Result<T, ProxyError> {
        v.get(key)
            .cloned()
            .and_then(|x| serde_json::from_value(x).ok())
            .ok_or_else(|| ProxyError::Transport(format!("storage proxy reply lacks `{key}`")))
    }

    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>, ProxyError> {
        let v = self
            .call(reqwest::Method::GET, "/volumes", None)
            .await?
            .unwrap_or(Value::Null);
        Self::field(&v, "volumes")
    }

    /// `(capacity_bytes, used_bytes)` of a volume.
    pub async fn volume_usage(&self, volume: &str) -> Result<(i64, i64), ProxyError> {
        let v = self
            .post("/volume/usage", json!({ "volume": volume }))
            .await?;
        Ok((
            Self::field(&v, "capacity_bytes")?,
            Self::field(&v, "used_bytes")?,
        ))
    }

    pub async fn create_folder(
        &self,
        volume: &str,
        vfid: Uuid,
        quota: Option<i64>,
    ) -> Result<(), ProxyError> {
        let mut body = json!({ "volume": volume, "vfid": vfid });
        if let Some(q) = quota {
            body["options"] = json!({ "quota": q });
        }
        self.post("/folder/create", body).await.map(|_| ())
    }

    pub async fn delete_folder(&self, volume: &str, vfid: Uuid) -> Result<(), ProxyError> {
        self.post("/folder/delete", json!({ "volume": volume, "vfid": vfid }))
            .await
            .map(|_| ())
    }

    pub async fn clone_folder(&self, volume: &str, src: Uuid, dst: Uuid) -> Result<(), ProxyError> {
        self.post(
            "/folder/clone",
            json!({ "volume": volume, "src_vfid": src, "dst_vfid": dst }),
        )
        .await
        .map(|_| ())
    }

    /// `(file_count, used_bytes)` of a folder.
    pub async fn folder_usage(&self, volume: &str, vfid: Uuid) -> Result<(i64, i64), ProxyError> {
        let v = self
            .post("/folder/usage", json!({ "volume": volume, "vfid": vfid }))
            .await?;
        Ok((
            Self::field(&v, "file_count")?,
            Self::field(&v, "used_bytes")?,
        ))
    }

    /// The folder's absolute path on the proxy's host (for process agents on that host).
    pub async fn mount_path(&self, volume: &str, vfid: Uuid) -> Result<String, ProxyError> {
        let v = self
            .post("/folder/mount", json!({ "volume": volume, "vfid": vfid }))
            .await?;
        Self::field(&v, "path")
    }

    pub async fn mkdir(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        parents: bool,
        exist_ok: bool,
    ) -> Result<(), ProxyError> {
        self.post(
            "/folder/file/mkdir",
            json!({ "volume": volume, "vfid": vfid, "relpath": relpath, "parents": parents, "exist_ok": exist_ok }),
        )
        .await
        .map(|_| ())
    }

    pub async fn list(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
    ) -> Result<Vec<DirEntry>, ProxyError> {
        let v = self
            .post(
                "/folder/file/list",
                json!({ "volume": volume, "vfid": vfid, "relpath": relpath }),
            )
            .await?;
        Self::field(&v, "items")
    }

    pub async fn rename_file(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        new_name: &str,
        is_dir: bool,
    ) -> Result<(), ProxyError> {
        self.post(
            "/folder/file/rename",
            json!({ "volume": volume, "vfid": vfid, "relpath": relpath, "new_name": new_name, "is_dir": is_dir }),
        )
        .await
        .map(|_| ())
    }

    pub async fn delete_files(
        &self,
        volume: &str,
        vfid: Uuid,
        relpaths: &[String],
        recursive: bool,
    ) -> Result<(), ProxyError> {
        self.post(
            "/folder/file/delete",
            json!({ "volume": volume, "vfid": vfid, "relpaths": relpaths, "recursive": recursive }),
        )
        .await
        .map(|_| ())
    }

    pub async fn upload_token(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        size: i64,
    ) -> Result<String, ProxyError> {
        let v = self
            .post(
                "/folder/file/upload",
                json!({ "volume": volume, "vfid": vfid, "relpath": relpath, "size": size }),
            )
            .await?;
        Self::field(&v, "token")
    }

    pub async fn download_token(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        archive: bool,
    ) -> Result<String, ProxyError> {
        let v = self
            .post(
                "/folder/file/download",
                json!({ "volume": volume, "vfid": vfid, "relpath": relpath, "archive": archive }),
            )
            .await?;
        Self::field(&v, "token")
    }
}

/// A client and when its etcd entry was read.
type Cached = (Instant, Arc<ProxyClient>);

/// Proxy discovery with a per-proxy client cache.
#[derive(Clone)]
pub struct StorageProxies {
    etcd: Etcd,
    // A read-mostly map: lookups take the read lock; a miss or an expired entry re-reads
    // etcd outside the lock and replaces the entry (a duplicate read on a race is harmless).
    cache: Arc<RwLock<HashMap<String, Cached>>>,
}

impl StorageProxies {
    pub fn new(etcd: Etcd) -> Self {
        Self {
            etcd,
            cache: Arc::new(RwLock::new(HashMap::new())),
        }
    }

    /// The process-wide instance for this etcd namespace (one client cache per process;
    /// tests run several namespaces in one process).
    pub fn shared(etcd: &Etcd) -> Self {
        static CACHE: std::sync::OnceLock<std::sync::Mutex<HashMap<String, StorageProxies>>> =
            std::sync::OnceLock::new();
        let map = CACHE.get_or_init(|| std::sync::Mutex::new(HashMap::new()));
        // A poisoned lock only means a thread panicked mid-insert; the map is still usable.
        let mut map = map.lock().unwrap_or_else(|e| e.into_inner());
        map.entry(etcd.prefix().to_string())
            .or_insert_with(|| StorageProxies::new(etcd.clone()))
            .clone()
    }

    pub fn etcd(&self) -> &Etcd {
        &self.etcd
    }

    /// The client of proxy `name`.
    pub async fn proxy(&self, name: &str) -> Result<Arc<ProxyClient>, ProxyError> {
        if let Some((at, c)) = self.cache.read().await.get(name) {
            if at.elapsed() < CACHE_TTL {
                return Ok(c.clone());
            }
        }
        let keys = self
            .etcd
            .get_prefix(&format!("volumes/proxies/{name}/"))
            .await
            .map_err(|e| ProxyError::Transport(format!("etcd: {e:#}")))?;
        let manager_api = keys
            .get("manager_api")
            .ok_or_else(|| ProxyError::UnknownHost(name.to_string()))?;
        let client_api = keys.get("client_api").cloned().unwrap_or_default();
        let secret = keys.get("secret").cloned().unwrap_or_default();
        let client = Arc::new(ProxyClient::new(name, manager_api, &client_api, &secret));
        self.cache
            .write()
            .await
            .insert(name.to_string(), (Instant::now(), client.clone()));
        Ok(client)
    }

    /// The client and volume name of a vfolder host `<proxy>:<volume>`.
    pub async fn for_host(&self, host: &str) -> Result<(Arc<ProxyClient>, String), ProxyError> {
        let (proxy, volume) =
            split_host(host).ok_or_else(|| ProxyError::UnknownHost(host.to_string()))?;
        Ok((self.proxy(proxy).await?, volume.to_string()))
    }

    /// Names of the configured proxies.
    pub async fn proxy_names(&self) -> anyhow::Result<Vec<String>> {
        let keys = self.etcd.get_prefix("volumes/proxies/").await?;
        let mut names: Vec<String> = keys
            .keys()
            .filter_map(|k| k.split('/').next())
            .filter(|k| !k.is_empty())
            .map(str::to_string)
            .collect();
        names.dedup();
        Ok(names)
    }

    /// Every `(host, volume info, proxy)` of every reachable proxy; unreachable proxies are
    /// logged and skipped (as the original's `get_all_volumes`).
    pub async fn all_volumes(&self) -> anyhow::Result<Vec<(String, VolumeInfo, Arc<ProxyClient>)>> {
        let mut out = Vec::new();
        for name in self.proxy_names().await? {
            let client = match self.proxy(&name).await {
                Ok(c) => c,
                Err(e) => {
                    tracing::warn!(proxy = %name, error = %e, "storage proxy misconfigured");
                    continue;
                }
            };
            match client.volumes().await {
                Ok(vols) => {
                    for v in vols {
                        out.push((format!("{name}:{}", v.name), v, client.clone()));
                    }
                }
                Err(e) => tracing::warn!(proxy = %name, error = %e, "storage proxy unreachable"),
            }
        }
        Ok(out)
    }

    /// etcd `volumes/default_host`, if set.
    pub async fn default_host(&self) -> anyhow::Result<Option<String>> {
        Ok(self
            .etcd
            .get("volumes/default_host")
            .await?
            .filter(|h| !h.is_empty()))
    }
}
