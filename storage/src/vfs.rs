//! The `vfs` backend: a volume is a local directory, a folder is
//! `<root>/<vfid[0:2]>/<vfid[2:4]>/<vfid[4:]>` (hex, the original's layout). Beside the
//! folders the volume holds `.upload/` (partial tus uploads, keyed by upload session, and
//! anonymous temp files for zip archives) and `.meta/` (per-folder quota), so partial data
//! never shows up inside a folder and a rename finalises an upload atomically.
//!
//! Filesystem work is blocking; each operation runs in `spawn_blocking` so a large copy or
//! walk never stalls the async workers.

use std::io::{Seek, Write};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use uuid::Uuid;

use crate::error::{ApiError, ApiResult};
use crate::path::{normalize, open_confined, resolve, single_name, PinnedDir};
use crate::proto::{DirEntry, EntryStat, EntryType, FolderUsage, VolumeInfo, VolumeUsage};
use crate::volume::{DownloadTarget, VolumeBackend};

const UPLOAD_DIR: &str = ".upload";
const META_DIR: &str = ".meta";
/// Recursive deletes first rename the tree here (one pinned `renameat`), then remove it.
const TRASH_DIR: &str = ".trash";

#[derive(Clone, Debug)]
pub struct VfsVolume {
    name: String,
    /// Canonical (symlink-free) root, so prefix checks against resolved paths are exact.
    root: PathBuf,
}

async fn blocking<T, F>(f: F) -> ApiResult<T>
where
    T: Send + 'static,
    F: FnOnce() -> ApiResult<T> + Send + 'static,
{
    tokio::task::spawn_blocking(f).await?
}

fn io_ctx(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ApiError {
    let what = what.into();
    move |e| ApiError::io(e, &what)
}

#[derive(serde::Serialize, serde::Deserialize, Default)]
struct FolderMeta {
    quota: Option<u64>,
}

impl VfsVolume {
    /// Opens (creating if missing) the volume directory and its work areas.
    pub fn open(name: &str, path: &Path) -> anyhow::Result<Self> {
        std::fs::create_dir_all(path).map_err(|e| {
            anyhow::anyhow!("cannot create volume {name} at {}: {e}", path.display())
        })?;
        let root = std::fs::canonicalize(path)?;
        std::fs::create_dir_all(root.join(UPLOAD_DIR))?;
        std::fs::create_dir_all(root.join(META_DIR))?;
        // Leftovers of interrupted recursive deletes.
        let _ = std::fs::remove_dir_all(root.join(TRASH_DIR));
        std::fs::create_dir_all(root.join(TRASH_DIR))?;
        Ok(Self {
            name: name.to_string(),
            root,
        })
    }

    fn mangle(&self, vfid: Uuid) -> PathBuf {
        let hex = vfid.simple().to_string();
        self.root.join(&hex[0..2]).join(&hex[2..4]).join(&hex[4..])
    }

    fn meta_path(&self, vfid: Uuid) -> PathBuf {
        self.root
            .join(META_DIR)
            .join(format!("{}.json", vfid.simple()))
    }

    fn part_path(&self, session: Uuid) -> PathBuf {
        self.root
            .join(UPLOAD_DIR)
            .join(session.simple().to_string())
    }

    /// The folder's canonical root; 404 when the folder does not exist.
    fn folder_root(&self, vfid: Uuid) -> ApiResult<PathBuf> {
        let p = self.mangle(vfid);
        match std::fs::symlink_metadata(&p) {
            Ok(m) if m.is_dir() => Ok(p),
            Ok(_) => Err(ApiError::internal(format!(
                "folder {vfid} is not a directory"
            ))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Err(ApiError::vfolder_not_found(
                format!("folder {vfid} does not exist"),
            )),
            Err(e) => Err(ApiError::io(e, "folder")),
        }
    }

    fn read_meta(&self, vfid: Uuid) -> ApiResult<FolderMeta> {
        match std::fs::read(self.meta_path(vfid)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| ApiError::internal(format!("corrupt metadata of {vfid}: {e}"))),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(FolderMeta::default()),
            Err(e) => Err(ApiError::io(e, "folder metadata")),
        }
    }

    fn write_meta(&self, vfid: Uuid, meta: &FolderMeta) -> ApiResult<()> {
        let path = self.meta_path(vfid);
        let tmp = path.with_extension("json.tmp");
        let body = serde_json::to_vec(meta).map_err(|e| ApiError::internal(e.to_string()))?;
        std::fs::write(&tmp, body).map_err(io_ctx("folder metadata"))?;
        std::fs::rename(&tmp, &path).map_err(io_ctx("folder metadata"))
    }

    fn usage_sync(dir: &Path) -> ApiResult<FolderUsage> {
        let mut usage = FolderUsage {
            file_count: 0,
            used_bytes: 0,
        };
        let mut stack = vec![dir.to_path_buf()];
        while let Some(d) = stack.pop() {
            let rd = match std::fs::read_dir(&d) {
                Ok(rd) => rd,
                // Entries may vanish while we walk (concurrent deletes): not an error.
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                Err(e) => return Err(ApiError::io(e, "usage")),
            };
            for entry in rd.flatten() {
                let Ok(m) = entry.metadata() else { continue };
                if m.is_dir() {
                    stack.push(entry.path());
                } else {
                    usage.file_count += 1;
                    usage.used_bytes += m.len();
                }
            }
        }
        Ok(usage)
    }

    fn quota_check_sync(&self, vfid: Uuid, relpath: &str, total: u64) -> ApiResult<()> {
        let Some(quota) = self.read_meta(vfid)?.quota else {
            return Ok(());
        };
        let root = self.folder_root(vfid)?;
        let used = Self::usage_sync(&root)?.used_bytes;
        let rel = normalize(relpath)?;
        let dst = resolve(&root, &rel, false)?;
        // Overwriting a file frees its old size.
        let existing = match std::fs::symlink_metadata(&dst) {
            Ok(m) if m.is_file() => m.len(),
            _ => 0,
        };
        let after = used.saturating_sub(existing).saturating_add(total);
        if after > quota {
            return Err(ApiError::quota_exceeded(format!(
                "{total} bytes do not fit: {used} of {quota} bytes are used"
            )));
        }
        Ok(())
    }

    /// Renames the finished temp file `tmp` to `relpath` inside the folder, creating parent
    /// directories; a final symlink is replaced, never written through.
    fn place_file(&self, tmp: &Path, vfid: Uuid, relpath: &str) -> ApiResult<()> {
        let root = self.folder_root(vfid)?;
        let rel = normalize(relpath)?;
        if rel.as_os_str().is_empty() {
            return Err(ApiError::invalid_path("an upload needs a file name"));
        }
        let dst = resolve(&root, &rel, false)?;
        if let Ok(m) = std::fs::symlink_metadata(&dst) {
            if m.is_dir() {
                return Err(ApiError::invalid_params(format!(
                    "{relpath:?} is a directory"
                )));
            }
        }
        let parent = dst
            .parent()
            .ok_or_else(|| ApiError::invalid_path("no parent directory"))?;
        std::fs::create_dir_all(parent).map_err(io_ctx(relpath))?;
        // The rename goes through the verified parent's descriptor: a final symlink is
        // replaced, and a directory swapped for a link meanwhile cannot redirect it.
        let (pdir, name) = PinnedDir::parent_of(&dst, &root)?;
        let (tdir, tname) = PinnedDir::parent_of(tmp, &self.root)?;
        tdir.rename_to(tname, &pdir, name, true, relpath)
    }

    fn copy_tree(src: &Path, dst: &Path, src_root: &Path) -> ApiResult<()> {
        std::fs::create_dir(dst).map_err(io_ctx("clone"))?;
        let perms = std::fs::symlink_metadata(src)
            .map_err(io_ctx("clone"))?
            .permissions();
        std::fs::set_permissions(dst, perms).map_err(io_ctx("clone"))?;
        for entry in std::fs::read_dir(src).map_err(io_ctx("clone"))? {
            let entry = entry.map_err(io_ctx("clone"))?;
            let ft = entry.file_type().map_err(io_ctx("clone"))?;
            let to = dst.join(entry.file_name());
            if ft.is_dir() {
                Self::copy_tree(&entry.path(), &to, src_root)?;
            } else if ft.is_symlink() {
                // Links are copied as links, never followed.
                let target = std::fs::read_link(entry.path()).map_err(io_ctx("clone"))?;
                std::os::unix::fs::symlink(target, &to).map_err(io_ctx("clone"))?;
            } else if ft.is_file() {
                // Opened without following links and verified, like a download.
                let mut from = open_confined(&entry.path(), src_root)?;
                let perms = from.metadata().map_err(io_ctx("clone"))?.permissions();
                let mut out = std::fs::OpenOptions::new()
                    .write(true)
                    .create_new(true)
                    .open(&to)
                    .map_err(io_ctx("clone"))?;
                std::io::copy(&mut from, &mut out).map_err(io_ctx("clone"))?;
                out.set_permissions(perms).map_err(io_ctx("clone"))?;
            }
            // Sockets, FIFOs and devices are not copied.
        }
        Ok(())
    }

    fn zip_sync(&self, vfid: Uuid, dir: &Path) -> ApiResult<(std::fs::File, u64)> {
        use zip::write::SimpleFileOptions;
        let root = self.folder_root(vfid)?;
        if !dir.starts_with(&root) {
            return Err(ApiError::invalid_path(
                "the path resolves outside the folder",
            ));
        }
        // An anonymous file: gone when the response ends or the process dies.
        let tmp = tempfile::tempfile_in(self.root.join(UPLOAD_DIR)).map_err(io_ctx("archive"))?;
        let mut zw = zip::ZipWriter::new(std::io::BufWriter::new(tmp));
        let zerr = |e: zip::result::ZipError| ApiError::internal(format!("zip: {e}"));
        let mut stack = vec![(dir.to_path_buf(), String::new())];
        while let Some((d, prefix)) = stack.pop() {
            let mut entries: Vec<_> = std::fs::read_dir(&d)
                .map_err(io_ctx("archive"))?
                .flatten()
                .collect();
            entries.sort_by_key(|e| e.file_name());
            for entry in entries {
                let Ok(m) = entry.metadata() else { continue };
                let name = format!("{prefix}{}", entry.file_name().to_string_lossy());
                let opts = SimpleFileOptions::default()
                    .compression_method(zip::CompressionMethod::Deflated)
                    .unix_permissions(m.mode() & 0o777)
                    .large_file(m.len() >= u32::MAX as u64);
                if m.is_dir() {
                    zw.add_directory(format!("{name}/"), opts).map_err(zerr)?;
                    stack.push((entry.path(), format!("{name}/")));
                } else if m.is_file() {
                    let mut f = open_confined(&entry.path(), &root)?;
                    zw.start_file(name, opts).map_err(zerr)?;
                    std::io::copy(&mut f, &mut zw).map_err(io_ctx("archive"))?;
                }
                // Symlinks (and special files) are left out: never followed.
            }
        }
        let buf = zw.finish().map_err(zerr)?;
        let mut file = buf
            .into_inner()
            .map_err(|e| ApiError::io(e.into_error(), "archive"))?;
        file.flush().map_err(io_ctx("archive"))?;
        let len = file.stream_position().map_err(io_ctx("archive"))?;
        file.rewind().map_err(io_ctx("archive"))?;
        Ok((file, len))
    }

    /// Removes partial uploads untouched for longer than `max_age` (expired tokens).
    pub fn cleanup_stale_uploads(&self, max_age: Duration) -> usize {
        let mut removed = 0;
        let Ok(rd) = std::fs::read_dir(self.root.join(UPLOAD_DIR)) else {
            return 0;
        };
        let now = SystemTime::now();
        for entry in rd.flatten() {
            let stale = entry
                .metadata()
                .and_then(|m| m.modified())
                .map(|t| now.duration_since(t).unwrap_or_default() > max_age)
                .unwrap_or(false);
            if stale && std::fs::remove_file(entry.path()).is_ok() {
                removed += 1;
            }
        }
        removed
    }
}

fn ts(secs: i64, nsecs: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp(secs, nsecs.clamp(0, 999_999_999) as u32).unwrap_or_default()
}

#[async_trait]
impl VolumeBackend for VfsVolume {
    fn info(&self) -> VolumeInfo {
        VolumeInfo {
            name: self.name.clone(),
            backend: "vfs".into(),
            path: self.root.display().to_string(),
            fsprefix: String::new(),
            capabilities: vec!["vfolder".into(), "file-ops".into(), "quota".into()],
        }
    }

    fn root(&self) -> &Path {
        &self.root
    }

    fn folder_path(&self, vfid: Uuid) -> PathBuf {
        self.mangle(vfid)
    }

    async fn usage(&self) -> ApiResult<VolumeUsage> {
        let root = self.root.clone();
        blocking(move || {
            use std::os::unix::ffi::OsStrExt;
            let c = std::ffi::CString::new(root.as_os_str().as_bytes())
                .map_err(|e| ApiError::internal(e.to_string()))?;
            // SAFETY: `c` is a valid NUL-terminated path and `st` a properly sized out
            // parameter that statvfs fills on success.
            let mut st: libc::statvfs = unsafe { std::mem::zeroed() };
            let rc = unsafe { libc::statvfs(c.as_ptr(), &mut st) };
            if rc != 0 {
                return Err(ApiError::io(std::io::Error::last_os_error(), "statvfs"));
            }
            let frsize = st.f_frsize as u64;
            let capacity = st.f_blocks as u64 * frsize;
            let free = st.f_bfree as u64 * frsize;
            Ok(VolumeUsage {
                capacity_bytes: capacity,
                used_bytes: capacity.saturating_sub(free),
            })
        })
        .await
    }

    async fn create_folder(&self, vfid: Uuid, quota: Option<u64>) -> ApiResult<()> {
        let me = self.clone();
        blocking(move || {
            let p = me.mangle(vfid);
            if let Some(parent) = p.parent() {
                std::fs::create_dir_all(parent).map_err(io_ctx("folder"))?;
            }
            // Idempotent: a retried command finds its folder already there.
            match std::fs::create_dir(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists && p.is_dir() => {}
                Err(e) => return Err(ApiError::io(e, "folder")),
            }
            if quota.is_some() {
                me.write_meta(vfid, &FolderMeta { quota })?;
            }
            Ok(())
        })
        .await
    }

    async fn delete_folder(&self, vfid: Uuid) -> ApiResult<()> {
        let me = self.clone();
        blocking(move || {
            let p = me.mangle(vfid);
            // remove_dir_all never follows symlinks inside the tree.
            match std::fs::remove_dir_all(&p) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
                Err(e) => return Err(ApiError::io(e, "folder")),
            }
            match std::fs::remove_file(me.meta_path(vfid)) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(ApiError::io(e, "folder metadata")),
            }
        })
        .await
    }

    async fn clone_folder(&self, src: Uuid, dst: Uuid) -> ApiResult<()> {
        let me = self.clone();
        blocking(move || {
            let from = me.folder_root(src)?;
            let to = me.mangle(dst);
            if std::fs::symlink_metadata(&to).is_ok() {
                return Err(ApiError::already_exists(format!(
                    "folder {dst} already exists"
                )));
            }
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).map_err(io_ctx("folder"))?;
            }
            if let Err(e) = Self::copy_tree(&from, &to, &from) {
                // Leave nothing half-copied behind.
                let _ = std::fs::remove_dir_all(&to);
                return Err(e);
            }
            let meta = me.read_meta(src)?;
            if meta.quota.is_some() {
                me.write_meta(dst, &meta)?;
            }
            Ok(())
        })
        .await
    }

    async fn folder_usage(&self, vfid: Uuid) -> ApiResult<FolderUsage> {
        let me = self.clone();
        blocking(move || {
            let root = me.folder_root(vfid)?;
            Self::usage_sync(&root)
        })
        .await
    }

    async fn mount_path(&self, vfid: Uuid) -> ApiResult<PathBuf> {
        let me = self.clone();
        blocking(move || me.folder_root(vfid)).await
    }

    async fn quota(&self, vfid: Uuid) -> ApiResult<Option<u64>> {
        let me = self.clone();
        blocking(move || Ok(me.read_meta(vfid)?.quota)).await
    }

    async fn mkdir(
        &self,
        vfid: Uuid,
        relpath: &str,
        parents: bool,
        exist_ok: bool,
    ) -> ApiResult<()> {
        let me = self.clone();
        let relpath = relpath.to_string();
        blocking(move || {
            let root = me.folder_root(vfid)?;
            let rel = normalize(&relpath)?;
            let p = resolve(&root, &rel, false)?;
            let existing = std::fs::symlink_metadata(&p).ok();
            match existing {
                Some(m) if m.is_dir() && exist_ok => return Ok(()),
                Some(_) => {
                    return Err(ApiError::already_exists(format!(
                        "{relpath:?} already exists"
                    )))
                }
                None => {}
            }
            if parents {
                if let Some(parent) = p.parent() {
                    std::fs::create_dir_all(parent).map_err(io_ctx(&relpath))?;
                }
            }
            let (pdir, name) = PinnedDir::parent_of(&p, &root)?;
            match pdir.mkdir(name, &relpath) {
                Err(e) if e.status.as_u16() == 409 && exist_ok && p.is_dir() => Ok(()),
                other => other,
            }
        })
        .await
    }

    async fn list(&self, vfid: Uuid, relpath: &str) -> ApiResult<Vec<DirEntry>> {
        let me = self.clone();
        let relpath = relpath.to_string();
        blocking(move || {
            let root = me.folder_root(vfid)?;
            let rel = normalize(&relpath)?;
            let dir = resolve(&root, &rel, true)?;
            // Listed through the verified descriptor, not the path.
            let pinned = PinnedDir::open(&dir, &root)?;
            let mut items = Vec::new();
            for entry in std::fs::read_dir(pinned.proc_path()).map_err(io_ctx(&relpath))? {
                let entry = entry.map_err(io_ctx(&relpath))?;
                let Ok(m) = entry.metadata() else { continue };
                let kind = if m.file_type().is_symlink() {
                    EntryType::Symlink
                } else if m.is_dir() {
                    EntryType::Directory
                } else {
                    EntryType::File
                };
                items.push(DirEntry {
                    name: entry.file_name().to_string_lossy().into_owned(),
                    kind,
                    stat: EntryStat {
                        mode: m.mode(),
                        size: m.len(),
                        created: ts(m.ctime(), m.ctime_nsec()),
                        modified: ts(m.mtime(), m.mtime_nsec()),
                    },
                });
            }
            items.sort_by(|a, b| a.name.cmp(&b.name));
            Ok(items)
        })
        .await
    }

    async fn rename(
        &self,
        vfid: Uuid,
        relpath: &str,
        new_name: &str,
        is_dir: bool,
    ) -> ApiResult<()> {
        let me = self.clone();
        let relpath = relpath.to_string();
        let new_name = new_name.to_string();
        blocking(move || {
            let root = me.folder_root(vfid)?;
            let rel = normalize(&relpath)?;
            if rel.as_os_str().is_empty() {
                return Err(ApiError::invalid_path("cannot rename the folder root"));
            }
            single_name(&new_name)?;
            let src = resolve(&root, &rel, false)?;
            let m = std::fs::symlink_metadata(&src).map_err(io_ctx(&relpath))?;
            if is_dir && !m.is_dir() {
                return Err(ApiError::invalid_params(format!(
                    "{relpath:?} is not a directory"
                )));
            }
            let (pdir, name) = PinnedDir::parent_of(&src, &root)?;
            pdir.rename_to(
                name,
                &pdir,
                std::ffi::OsStr::new(&new_name),
                false,
                &new_name,
            )
        })
        .await
    }

    async fn move_file(&self, vfid: Uuid, src: &str, dst: &str) -> ApiResult<()> {
        let me = self.clone();
        let (src_s, dst_s) = (src.to_string(), dst.to_string());
        blocking(move || {
            let root = me.folder_root(vfid)?;
            let src_rel = normalize(&src_s)?;
            let dst_rel = normalize(&dst_s)?;
            if src_rel.as_os_str().is_empty() {
                return Err(ApiError::invalid_path("cannot move the folder root"));
            }
            let src = resolve(&root, &src_rel, false)?;
            std::fs::symlink_metadata(&src).map_err(io_ctx(&src_s))?;
            let mut dst = resolve(&root, &dst_rel, true)?;
            // Like `mv`: into an existing directory, else to the new name.
            match std::fs::symlink_metadata(&dst) {
                Ok(m) if m.is_dir() => {
                    let name = src
                        .file_name()
                        .ok_or_else(|| ApiError::invalid_path("no file name"))?;
                    dst = dst.join(name);
                    if std::fs::symlink_metadata(&dst).is_ok() {
                        return Err(ApiError::already_exists(format!(
                            "{dst_s:?} already holds {:?}",
                            name.to_string_lossy()
                        )));
                    }
                }
                Ok(_) => {
                    return Err(ApiError::already_exists(format!(
                        "{dst_s:?} already exists"
                    )))
                }
                Err(_) => {}
            }
            if dst.starts_with(&src) {
                return Err(ApiError::invalid_params(
                    "cannot move a directory into itself",
                ));
            }
            let (sdir, sname) = PinnedDir::parent_of(&src, &root)?;
            let (ddir, dname) = PinnedDir::parent_of(&dst, &root)?;
            sdir.rename_to(sname, &ddir, dname, false, &dst_s)
        })
        .await
    }

    async fn delete_files(
        &self,
        vfid: Uuid,
        relpaths: &[String],
        recursive: bool,
    ) -> ApiResult<()> {
        let me = self.clone();
        let relpaths = relpaths.to_vec();
        blocking(move || {
            let root = me.folder_root(vfid)?;
            // Validate everything before deleting anything.
            let mut targets = Vec::new();
            for r in &relpaths {
                let rel = normalize(r)?;
                if rel.as_os_str().is_empty() {
                    return Err(ApiError::invalid_path("cannot delete the folder root"));
                }
                targets.push((r, resolve(&root, &rel, false)?));
            }
            let trash = PinnedDir::open(&me.root.join(TRASH_DIR), &me.root)?;
            for (r, p) in targets {
                let m = match std::fs::symlink_metadata(&p) {
                    Ok(m) => m,
                    // Already gone: deleting is idempotent.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(ApiError::io(e, r)),
                };
                let (pdir, name) = match PinnedDir::parent_of(&p, &root) {
                    Ok(x) => x,
                    Err(e) if e.status.as_u16() == 404 => continue,
                    Err(e) => return Err(e),
                };
                if m.is_dir() && recursive {
                    // One pinned rename takes the tree out of the folder; removing it from
                    // the private trash cannot touch anything else.
                    let tmp = Uuid::new_v4().simple().to_string();
                    pdir.rename_to(name, &trash, std::ffi::OsStr::new(&tmp), false, r)?;
                    std::fs::remove_dir_all(me.root.join(TRASH_DIR).join(&tmp))
                        .map_err(io_ctx(r))?;
                } else {
                    // Files and symlinks (the link itself, never its target), empty dirs.
                    match pdir.unlink(name, m.is_dir(), r) {
                        Err(e) if e.status.as_u16() == 404 => {}
                        other => other?,
                    }
                }
            }
            Ok(())
        })
        .await
    }

    async fn prepare_upload(&self, vfid: Uuid, relpath: &str, size: u64) -> ApiResult<()> {
        let me = self.clone();
        let relpath = relpath.to_string();
        blocking(move || {
            let root = me.folder_root(vfid)?;
            let rel = normalize(&relpath)?;
            if rel.as_os_str().is_empty() {
                return Err(ApiError::invalid_path("an upload needs a file name"));
            }
            let dst = resolve(&root, &rel, false)?;
            if let Ok(m) = std::fs::symlink_metadata(&dst) {
                if m.is_dir() {
                    return Err(ApiError::invalid_params(format!(
                        "{relpath:?} is a directory"
                    )));
                }
            }
            me.quota_check_sync(vfid, &relpath, size)?;
            if size == 0 {
                let tmp = me.part_path(Uuid::new_v4());
                std::fs::File::create(&tmp).map_err(io_ctx("upload"))?;
                if let Err(e) = me.place_file(&tmp, vfid, &relpath) {
                    let _ = std::fs::remove_file(&tmp);
                    return Err(e);
                }
            }
            Ok(())
        })
        .await
    }

    async fn upload_offset(&self, session: Uuid) -> ApiResult<u64> {
        match tokio::fs::metadata(self.part_path(session)).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(0),
            Err(e) => Err(ApiError::io(e, "upload")),
        }
    }

    async fn open_upload_part(&self, session: Uuid) -> ApiResult<(tokio::fs::File, u64)> {
        let f = tokio::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.part_path(session))
            .await
            .map_err(io_ctx("upload"))?;
        let len = f.metadata().await.map_err(io_ctx("upload"))?.len();
        Ok((f, len))
    }

    async fn check_quota(&self, vfid: Uuid, relpath: &str, total: u64) -> ApiResult<()> {
        let me = self.clone();
        let relpath = relpath.to_string();
        blocking(move || me.quota_check_sync(vfid, &relpath, total)).await
    }

    async fn finalize_upload(&self, session: Uuid, vfid: Uuid, relpath: &str) -> ApiResult<()> {
        let me = self.clone();
        let relpath = relpath.to_string();
        blocking(move || me.place_file(&me.part_path(session), vfid, &relpath)).await
    }

    async fn abort_upload(&self, session: Uuid) -> ApiResult<()> {
        match tokio::fs::remove_file(self.part_path(session)).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(ApiError::io(e, "upload")),
        }
    }

    async fn open_download(&self, vfid: Uuid, relpath: &str) -> ApiResult<DownloadTarget> {
        let me = self.clone();
        let relpath = relpath.to_string();
        blocking(move || {
            let root = me.folder_root(vfid)?;
            let rel = normalize(&relpath)?;
            let p = resolve(&root, &rel, true)?;
            let m = std::fs::symlink_metadata(&p).map_err(io_ctx(&relpath))?;
            let name = p
                .file_name()
                .filter(|_| p != root)
                .map(|n| n.to_string_lossy().into_owned());
            if m.is_dir() {
                return Ok(DownloadTarget::Directory {
                    path: p,
                    name: name.unwrap_or_else(|| vfid.simple().to_string()),
                });
            }
            if !m.is_file() {
                return Err(ApiError::invalid_params(format!(
                    "{relpath:?} is not a regular file"
                )));
            }
            let file = open_confined(&p, &root)?;
            let size = file.metadata().map_err(io_ctx(&relpath))?.len();
            Ok(DownloadTarget::File {
                file,
                size,
                name: name.unwrap_or_else(|| "download".into()),
            })
        })
        .await
    }

    async fn zip_directory(&self, vfid: Uuid, dir: &Path) -> ApiResult<(std::fs::File, u64)> {
        let me = self.clone();
        let dir = dir.to_path_buf();
        blocking(move || me.zip_sync(vfid, &dir)).await
    }
}
