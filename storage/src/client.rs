//! The manager's typed client for the proxy's manager-facing API, and proxy discovery in
//! etcd (`volumes/proxies/<proxy>/{manager_api,client_api,secret}`, `volumes/default_host`).
//!
//! Every failure is a [`StorageError`]: the proxy's own errors keep its HTTP status and
//! problem type (the manager answers them as the original's `vfolder-operation-failed`),
//! transport failures are `Unreachable` (the manager's `storage-proxy-error`).
//! The per-process cache of clients, one per registered proxy, is
//! [`crate::registry::StorageProxies`].

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde::Serialize;
use uuid::Uuid;

use crate::proto::{self, *};

/// Errors of [`StorageClient`] calls.
#[derive(Debug, Clone, thiserror::Error)]
pub enum StorageError {
    /// The proxy answered with an error (problem+json `{type,title,msg}`).
    #[error("storage proxy answered {status} ({problem_type}): {msg}")]
    Proxy {
        status: u16,
        problem_type: String,
        title: String,
        msg: String,
    },
    /// The proxy could not be reached or the connection broke.
    #[error("storage proxy at {url} unreachable: {message}")]
    Unreachable { url: String, message: String },
    /// The proxy answered 2xx with a body we could not read.
    #[error("unexpected answer from storage proxy at {url}: {message}")]
    BadResponse { url: String, message: String },
    /// No proxy of that name is registered in etcd, or a host is malformed.
    #[error("unknown storage proxy or volume host: {0}")]
    UnknownHost(String),
    /// The proxy registry in etcd could not be read (the proxy is as good as unreachable).
    #[error("storage proxy discovery failed: {0}")]
    Discovery(String),
}

impl StorageError {
    /// The proxy's HTTP status, if it answered.
    pub fn status(&self) -> Option<u16> {
        match self {
            StorageError::Proxy { status, .. } => Some(*status),
            _ => None,
        }
    }

    /// The proxy's problem type URL, if it answered with one.
    pub fn problem_type(&self) -> Option<&str> {
        match self {
            StorageError::Proxy { problem_type, .. } => Some(problem_type),
            _ => None,
        }
    }

    /// The proxy's message (or our description of the failure).
    pub fn message(&self) -> String {
        match self {
            StorageError::Proxy { msg, title, .. } if msg.is_empty() => title.clone(),
            StorageError::Proxy { msg, .. } => msg.clone(),
            other => other.to_string(),
        }
    }

    /// True when the proxy rejected the request itself (4xx): bad path, not found, quota.
    /// The original manager answers these as `vfolder-operation-failed` (400); everything
    /// else (5xx, unreachable, garbage) as a storage proxy failure.
    pub fn is_client_error(&self) -> bool {
        matches!(self, StorageError::Proxy { status, .. } if (400..500).contains(status))
    }

    /// True for "not found" answers (folder, file or volume).
    pub fn is_not_found(&self) -> bool {
        self.status() == Some(404)
    }
}

/// A typed client for one proxy's manager-facing API. Cheap to clone (shares the pool).
#[derive(Clone, Debug)]
pub struct StorageClient {
    http: reqwest::Client,
    base: String,
    secret: String,
}

impl StorageClient {
    /// `manager_api` is the proxy's manager-facing base URL (e.g. `http://127.0.0.1:6021`).
    pub fn new(manager_api: &str, secret: &str) -> Result<Self, StorageError> {
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .map_err(|e| StorageError::Unreachable {
                url: manager_api.to_string(),
                message: e.to_string(),
            })?;
        Ok(Self::with_http(http, manager_api, secret))
    }

    /// Uses an existing reqwest client (shared connection pool).
    pub fn with_http(http: reqwest::Client, manager_api: &str, secret: &str) -> Self {
        Self {
            http,
            base: manager_api.trim_end_matches('/').to_string(),
            secret: secret.to_string(),
        }
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<reqwest::Response, StorageError> {
        let url = format!("{}{}", self.base, path);
        let mut req = self
            .http
            .request(method, &url)
            .header(proto::AUTH_HEADER, &self.secret);
        if let Some(b) = body {
            req = req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(b.to_json());
        }
        let resp = req.send().await.map_err(|e| StorageError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        if status.is_success() {
            return Ok(resp);
        }
        let text = resp.text().await.unwrap_or_default();
        Err(match serde_json::from_str::<Problem>(&text) {
            Ok(p) => StorageError::Proxy {
                status: status.as_u16(),
                problem_type: p.kind,
                title: p.title,
                msg: p.msg,
            },
            Err(_) => StorageError::Proxy {
                status: status.as_u16(),
                problem_type: proto::problem::INTERNAL.to_string(),
                title: status.canonical_reason().unwrap_or("error").to_string(),
                msg: format!(
                    "Storage proxy responded with {} {}",
                    status.as_u16(),
                    status.canonical_reason().unwrap_or("")
                ),
            },
        })
    }

    async fn call<T: DeserializeOwned>(
        &self,
        method: reqwest::Method,
        path: &str,
        body: Option<&(dyn erased::Body + Sync)>,
    ) -> Result<T, StorageError> {
        let resp = self.send(method, path, body).await?;
        let url = format!("{}{}", self.base, path);
        let bytes = resp.bytes().await.map_err(|e| StorageError::Unreachable {
            url: url.clone(),
            message: e.to_string(),
        })?;
        serde_json::from_slice(&bytes).map_err(|e| StorageError::BadResponse {
            url,
            message: e.to_string(),
        })
    }

    async fn post_json<T: DeserializeOwned>(
        &self,
        path: &str,
        body: &(dyn erased::Body + Sync),
    ) -> Result<T, StorageError> {
        self.call(reqwest::Method::POST, path, Some(body)).await
    }

    async fn post_unit(
        &self,
        path: &str,
        body: &(dyn erased::Body + Sync),
    ) -> Result<(), StorageError> {
        self.send(reqwest::Method::POST, path, Some(body))
            .await
            .map(|_| ())
    }

    /// `GET /volumes`.
    pub async fn volumes(&self) -> Result<Vec<VolumeInfo>, StorageError> {
        let list: VolumeList = self.call(reqwest::Method::GET, "/volumes", None).await?;
        Ok(list.volumes)
    }

    /// `POST /volume/usage`.
    pub async fn volume_usage(&self, volume: &str) -> Result<VolumeUsage, StorageError> {
        self.post_json(
            "/volume/usage",
            &VolumeReq {
                volume: volume.into(),
            },
        )
        .await
    }

    /// `POST /folder/create`; `quota` in bytes (`None` = unlimited).
    pub async fn create_folder(
        &self,
        volume: &str,
        vfid: Uuid,
        quota: Option<u64>,
    ) -> Result<(), StorageError> {
        self.post_unit(
            "/folder/create",
            &FolderCreateReq {
                volume: volume.into(),
                vfid,
                options: quota.map(|q| FolderOptions { quota: Some(q) }),
            },
        )
        .await
    }

    /// `POST /folder/delete` (a missing folder is not an error).
    pub async fn delete_folder(&self, volume: &str, vfid: Uuid) -> Result<(), StorageError> {
        self.post_unit(
            "/folder/delete",
            &FolderReq {
                volume: volume.into(),
                vfid,
            },
        )
        .await
    }

    /// `POST /folder/clone`: copies the whole tree of `src` into a new folder `dst`.
    pub async fn clone_folder(
        &self,
        volume: &str,
        src_vfid: Uuid,
        dst_vfid: Uuid,
    ) -> Result<(), StorageError> {
        self.post_unit(
            "/folder/clone",
            &FolderCloneReq {
                volume: volume.into(),
                src_vfid,
                dst_vfid,
            },
        )
        .await
    }

    /// `POST /folder/usage`.
    pub async fn folder_usage(
        &self,
        volume: &str,
        vfid: Uuid,
    ) -> Result<FolderUsage, StorageError> {
        self.post_json(
            "/folder/usage",
            &FolderReq {
                volume: volume.into(),
                vfid,
            },
        )
        .await
    }

    /// `POST /folder/mount`: the folder's absolute host path.
    pub async fn mount_path(&self, volume: &str, vfid: Uuid) -> Result<String, StorageError> {
        let m: MountInfo = self
            .post_json(
                "/folder/mount",
                &FolderReq {
                    volume: volume.into(),
                    vfid,
                },
            )
            .await?;
        Ok(m.path)
    }

    /// `POST /folder/file/mkdir`.
    pub async fn mkdir(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        parents: bool,
        exist_ok: bool,
    ) -> Result<(), StorageError> {
        self.post_unit(
            "/folder/file/mkdir",
            &MkdirReq {
                volume: volume.into(),
                vfid,
                relpath: relpath.into(),
                parents,
                exist_ok,
            },
        )
        .await
    }

    /// `POST /folder/file/list`: the entries of one directory (not recursive).
    pub async fn list_files(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
    ) -> Result<Vec<DirEntry>, StorageError> {
        let l: DirList = self
            .post_json(
                "/folder/file/list",
                &ListReq {
                    volume: volume.into(),
                    vfid,
                    relpath: relpath.into(),
                },
            )
            .await?;
        Ok(l.items)
    }

    /// `POST /folder/file/rename`: renames `relpath` to `new_name` in the same directory.
    pub async fn rename_file(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        new_name: &str,
        is_dir: bool,
    ) -> Result<(), StorageError> {
        self.post_unit(
            "/folder/file/rename",
            &RenameReq {
                volume: volume.into(),
                vfid,
                relpath: relpath.into(),
                new_name: new_name.into(),
                is_dir,
            },
        )
        .await
    }

    /// `POST /folder/file/move`.
    pub async fn move_file(
        &self,
        volume: &str,
        vfid: Uuid,
        src_relpath: &str,
        dst_relpath: &str,
    ) -> Result<(), StorageError> {
        self.post_unit(
            "/folder/file/move",
            &MoveReq {
                volume: volume.into(),
                vfid,
                src_relpath: src_relpath.into(),
                dst_relpath: dst_relpath.into(),
            },
        )
        .await
    }

    /// `POST /folder/file/delete`.
    pub async fn delete_files(
        &self,
        volume: &str,
        vfid: Uuid,
        relpaths: &[String],
        recursive: bool,
    ) -> Result<(), StorageError> {
        self.post_unit(
            "/folder/file/delete",
            &DeleteFilesReq {
                volume: volume.into(),
                vfid,
                relpaths: relpaths.to_vec(),
                recursive,
            },
        )
        .await
    }

    /// `POST /folder/file/upload`: a token for `<client_api>/upload?token=…` (tus).
    pub async fn create_upload_token(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        size: u64,
    ) -> Result<String, StorageError> {
        let t: TokenResp = self
            .post_json(
                "/folder/file/upload",
                &UploadReq {
                    volume: volume.into(),
                    vfid,
                    relpath: relpath.into(),
                    size,
                },
            )
            .await?;
        Ok(t.token)
    }

    /// `POST /folder/file/download`: a token for `<client_api>/download?token=…`.
    pub async fn create_download_token(
        &self,
        volume: &str,
        vfid: Uuid,
        relpath: &str,
        archive: bool,
    ) -> Result<String, StorageError> {
        let t: TokenResp = self
            .post_json(
                "/folder/file/download",
                &DownloadReq {
                    volume: volume.into(),
                    vfid,
                    relpath: relpath.into(),
                    archive,
                },
            )
            .await?;
        Ok(t.token)
    }
}

/// One proxy as registered in etcd.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProxyInfo {
    pub name: String,
    pub manager_api: String,
    pub client_api: String,
    pub secret: String,
}

impl ProxyInfo {
    pub fn client(&self) -> Result<StorageClient, StorageError> {
        StorageClient::new(&self.manager_api, &self.secret)
    }

    /// `<client_api>/upload`, what the manager's `request-upload` answers as `url`.
    pub fn upload_url(&self) -> String {
        format!("{}/upload", self.client_api.trim_end_matches('/'))
    }

    /// `<client_api>/download`, what the manager's `request-download` answers as `url`.
    pub fn download_url(&self) -> String {
        format!("{}/download", self.client_api.trim_end_matches('/'))
    }
}

/// Splits a vfolder host `<proxy>:<volume>`.
pub fn parse_host(host: &str) -> Result<(&str, &str), StorageError> {
    match host.split_once(':') {
        Some((p, v)) if !p.is_empty() && !v.is_empty() => Ok((p, v)),
        _ => Err(StorageError::UnknownHost(host.to_string())),
    }
}

/// All proxies registered under `volumes/proxies/`.
pub async fn discover_proxies(etcd: &bai_core::etcd::Etcd) -> anyhow::Result<Vec<ProxyInfo>> {
    let kv = etcd.get_prefix("volumes/proxies/").await?;
    let mut out: std::collections::BTreeMap<String, ProxyInfo> = Default::default();
    for (key, value) in kv {
        // Keys come back without the prefix: `<proxy>/<field>`.
        let Some((name, field)) = key.trim_start_matches('/').split_once('/') else {
            continue;
        };
        let entry = out.entry(name.to_string()).or_insert_with(|| ProxyInfo {
            name: name.to_string(),
            manager_api: String::new(),
            client_api: String::new(),
            secret: String::new(),
        });
        match field {
            "manager_api" => entry.manager_api = value,
            "client_api" => entry.client_api = value,
            "secret" => entry.secret = value,
            _ => {}
        }
    }
    Ok(out
        .into_values()
        .filter(|p| !p.manager_api.is_empty())
        .collect())
}

/// One proxy by name, or `None` when it is not registered.
pub async fn find_proxy(
    etcd: &bai_core::etcd::Etcd,
    name: &str,
) -> anyhow::Result<Option<ProxyInfo>> {
    Ok(discover_proxies(etcd)
        .await?
        .into_iter()
        .find(|p| p.name == name))
}

/// `volumes/default_host` (e.g. `local:volume1`), if set.
pub async fn default_host(etcd: &bai_core::etcd::Etcd) -> anyhow::Result<Option<String>> {
    etcd.get("volumes/default_host").await
}

/// Object-safe JSON bodies, so the request helpers are not generic over every body type.
mod erased {
    pub trait Body {
        fn to_json(&self) -> Vec<u8>;
    }
    impl<T: super::Serialize> Body for T {
        fn to_json(&self) -> Vec<u8> {
            // Serializing our own plain structs cannot fail (no maps with non-string keys).
            serde_json::to_vec(self).unwrap_or_default()
        }
    }
}
