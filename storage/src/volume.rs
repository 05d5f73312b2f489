//! The volume backend trait: what the proxy needs from a storage backend. Only the local
//! filesystem backend ([`crate::vfs::VfsVolume`]) exists; the trait keeps the HTTP layer
//! independent of it, as the original's `AbstractVolume`.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::ApiResult;
use crate::proto::{DirEntry, FolderUsage, VolumeInfo, VolumeUsage};

/// What a download token resolves to.
pub enum DownloadTarget {
    /// A regular file, opened (and verified to be inside the folder).
    File {
        file: std::fs::File,
        size: u64,
        name: String,
    },
    /// A directory, to be sent as a zip archive.
    Directory { path: PathBuf, name: String },
}

#[async_trait]
pub trait VolumeBackend: Send + Sync {
    fn info(&self) -> VolumeInfo;
    /// The volume's root directory on this host.
    fn root(&self) -> &Path;
    /// The folder's directory on this host (whether it exists or not).
    fn folder_path(&self, vfid: Uuid) -> PathBuf;

    async fn usage(&self) -> ApiResult<VolumeUsage>;
    async fn create_folder(&self, vfid: Uuid, quota: Option<u64>) -> ApiResult<()>;
    async fn delete_folder(&self, vfid: Uuid) -> ApiResult<()>;
    async fn clone_folder(&self, src: Uuid, dst: Uuid) -> ApiResult<()>;
    async fn folder_usage(&self, vfid: Uuid) -> ApiResult<FolderUsage>;
    /// The folder's host path; fails when the folder does not exist.
    async fn mount_path(&self, vfid: Uuid) -> ApiResult<PathBuf>;
    async fn quota(&self, vfid: Uuid) -> ApiResult<Option<u64>>;

    async fn mkdir(
        &self,
        vfid: Uuid,
        relpath: &str,
        parents: bool,
        exist_ok: bool,
    ) -> ApiResult<()>;
    async fn list(&self, vfid: Uuid, relpath: &str) -> ApiResult<Vec<DirEntry>>;
    async fn rename(
        &self,
        vfid: Uuid,
        relpath: &str,
        new_name: &str,
        is_dir: bool,
    ) -> ApiResult<()>;
    async fn move_file(&self, vfid: Uuid, src: &str, dst: &str) -> ApiResult<()>;
    async fn delete_files(&self, vfid: Uuid, relpaths: &[String], recursive: bool)
        -> ApiResult<()>;

    /// Checks an upload of `size` bytes to `relpath` up front (path, quota). A zero-byte
    /// upload creates the file right away: the official client sends no PATCH for it.
    async fn prepare_upload(&self, vfid: Uuid, relpath: &str, size: u64) -> ApiResult<()>;
    /// Bytes received so far for upload `session` (0 when none).
    async fn upload_offset(&self, session: Uuid) -> ApiResult<u64>;
    /// The partial file of upload `session`, opened for appending at its end.
    async fn open_upload_part(&self, session: Uuid) -> ApiResult<(tokio::fs::File, u64)>;
    /// Checks that `total` bytes for `relpath` still fit the folder's quota.
    async fn check_quota(&self, vfid: Uuid, relpath: &str, total: u64) -> ApiResult<()>;
    /// Moves the complete upload into place atomically (rename).
    async fn finalize_upload(&self, session: Uuid, vfid: Uuid, relpath: &str) -> ApiResult<()>;
    /// Drops the partial file of upload `session`.
    async fn abort_upload(&self, session: Uuid) -> ApiResult<()>;

    async fn open_download(&self, vfid: Uuid, relpath: &str) -> ApiResult<DownloadTarget>;
    /// Writes `dir` (inside folder `vfid`) as a zip archive into an anonymous temp file.
    async fn zip_directory(&self, vfid: Uuid, dir: &Path) -> ApiResult<(std::fs::File, u64)>;
}
