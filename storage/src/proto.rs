//! Request and response bodies of the manager-facing API, shared by the server and
//! [`crate::client::StorageClient`] so both sides agree by construction.

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// Header carrying the secret shared by the manager and the proxy.
pub const AUTH_HEADER: &str = "X-BackendAI-Storage-Auth-Token";

/// Problem types (`type` of the problem+json error bodies).
pub mod problem {
    pub const PREFIX: &str = "https://api.backend.ai/probs/storage/";
    pub const INVALID_PATH: &str = "https://api.backend.ai/probs/storage/invalid-path";
    pub const INVALID_PARAMS: &str = "https://api.backend.ai/probs/storage/invalid-api-params";
    pub const NOT_FOUND: &str = "https://api.backend.ai/probs/storage/not-found";
    pub const FILE_NOT_FOUND: &str = "https://api.backend.ai/probs/storage/file-not-found";
    pub const NO_SUCH_VOLUME: &str = "https://api.backend.ai/probs/storage/no-such-volume";
    pub const VFOLDER_NOT_FOUND: &str = "https://api.backend.ai/probs/storage/vfolder-not-found";
    pub const ALREADY_EXISTS: &str = "https://api.backend.ai/probs/storage/already-exists";
    pub const QUOTA_EXCEEDED: &str = "https://api.backend.ai/probs/storage/quota-exceeded";
    pub const UNAUTHORIZED: &str = "https://api.backend.ai/probs/storage/unauthorized";
    pub const INVALID_TOKEN: &str = "https://api.backend.ai/probs/storage/invalid-token";
    pub const UPLOAD_CONFLICT: &str = "https://api.backend.ai/probs/storage/upload-offset-conflict";
    pub const INTERNAL: &str = "https://api.backend.ai/probs/storage/internal-error";
}

/// `{type, title, msg}` as every error of the proxy is rendered.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Problem {
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    #[serde(default)]
    pub msg: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeInfo {
    pub name: String,
    pub backend: String,
    pub path: String,
    pub fsprefix: String,
    pub capabilities: Vec<String>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeList {
    pub volumes: Vec<VolumeInfo>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeReq {
    pub volume: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct VolumeUsage {
    pub capacity_bytes: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct FolderOptions {
    /// Bytes; `None` = unlimited.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub quota: Option<u64>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderCreateReq {
    pub volume: String,
    pub vfid: Uuid,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub options: Option<FolderOptions>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderReq {
    pub volume: String,
    pub vfid: Uuid,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct FolderCloneReq {
    pub volume: String,
    pub src_vfid: Uuid,
    pub dst_vfid: Uuid,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
pub struct FolderUsage {
    pub file_count: u64,
    pub used_bytes: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MountInfo {
    pub path: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MkdirReq {
    pub volume: String,
    pub vfid: Uuid,
    pub relpath: String,
    #[serde(default)]
    pub parents: bool,
    #[serde(default)]
    pub exist_ok: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct ListReq {
    pub volume: String,
    pub vfid: Uuid,
    pub relpath: String,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "UPPERCASE")]
pub enum EntryType {
    File,
    Directory,
    Symlink,
}

impl EntryType {
    /// The wire name (`FILE`, `DIRECTORY`, `SYMLINK`).
    pub fn as_str(self) -> &'static str {
        match self {
            EntryType::File => "FILE",
            EntryType::Directory => "DIRECTORY",
            EntryType::Symlink => "SYMLINK",
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct EntryStat {
    pub mode: u32,
    pub size: u64,
    pub created: chrono::DateTime<chrono::Utc>,
    pub modified: chrono::DateTime<chrono::Utc>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirEntry {
    pub name: String,
    #[serde(rename = "type")]
    pub kind: EntryType,
    pub stat: EntryStat,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DirList {
    pub items: Vec<DirEntry>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct RenameReq {
    pub volume: String,
    pub vfid: Uuid,
    pub relpath: String,
    pub new_name: String,
    #[serde(default)]
    pub is_dir: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct MoveReq {
    pub volume: String,
    pub vfid: Uuid,
    pub src_relpath: String,
    pub dst_relpath: String,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DeleteFilesReq {
    pub volume: String,
    pub vfid: Uuid,
    pub relpaths: Vec<String>,
    #[serde(default)]
    pub recursive: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct UploadReq {
    pub volume: String,
    pub vfid: Uuid,
    pub relpath: String,
    pub size: u64,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct DownloadReq {
    pub volume: String,
    pub vfid: Uuid,
    pub relpath: String,
    #[serde(default)]
    pub archive: bool,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct TokenResp {
    pub token: String,
}
