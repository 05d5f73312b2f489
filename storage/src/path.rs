//! Path confinement: every client-supplied relpath stays inside its folder.
//!
//! Two checks: a lexical one ([`normalize`]: no absolute paths, no `..` above the folder
//! root, no NUL) and a resolution one ([`resolve`]: every existing ancestor is resolved
//! with `canonicalize` and must stay under the folder's canonical root, so a symlink
//! pointing outside is never followed). Reads additionally verify the opened file
//! descriptor's real path ([`verify_fd`]), closing the window between check and open.

use std::path::{Component, Path, PathBuf};

use crate::error::{ApiError, ApiResult};

/// Lexically normalises `relpath` ("" and "." mean the folder root).
pub fn normalize(relpath: &str) -> ApiResult<PathBuf> {
    if relpath.contains('\0') {
        return Err(ApiError::invalid_path("path contains a NUL byte"));
    }
    let mut out = PathBuf::new();
    for c in Path::new(relpath).components() {
        match c {
            Component::Normal(p) => out.push(p),
            Component::CurDir => {}
            Component::ParentDir => {
                if !out.pop() {
                    return Err(ApiError::invalid_path(format!(
                        "{relpath:?} points outside the folder"
                    )));
                }
            }
            Component::RootDir | Component::Prefix(_) => {
                return Err(ApiError::invalid_path(format!(
                    "{relpath:?} is absolute; paths are relative to the folder"
                )))
            }
        }
    }
    Ok(out)
}

/// Validates a single file name (rename target): one normal component.
pub fn single_name(name: &str) -> ApiResult<&str> {
    let mut comps = Path::new(name).components();
    match (comps.next(), comps.next()) {
        (Some(Component::Normal(_)), None) if !name.contains('/') && !name.contains('\0') => {
            Ok(name)
        }
        _ => Err(ApiError::invalid_path(format!(
            "{name:?} is not a plain file name"
        ))),
    }
}

fn outside(rel: &Path) -> ApiError {
    ApiError::invalid_path(format!(
        "{:?} resolves outside the folder (symbolic link)",
        rel.display().to_string()
    ))
}

/// Resolves the normalised `rel` under `root` (which must be canonical).
///
/// Symlinks among the ancestors are followed only when they resolve inside `root`. The
/// last component is followed likewise when `follow_final` (reads, listing); otherwise it
/// is returned as is so that the operation acts on the link itself (delete, rename).
/// Components that do not exist yet are appended lexically.
pub fn resolve(root: &Path, rel: &Path, follow_final: bool) -> ApiResult<PathBuf> {
    let comps: Vec<_> = rel.components().collect();
    let mut cur = root.to_path_buf();
    let mut missing = false;
    for (i, c) in comps.iter().enumerate() {
        let last = i + 1 == comps.len();
        let next = cur.join(c.as_os_str());
        if missing {
            cur = next;
            continue;
        }
        match std::fs::symlink_metadata(&next) {
            Ok(m) if m.file_type().is_symlink() && (!last || follow_final) => {
                let target = std::fs::canonicalize(&next).map_err(|_| outside(rel))?;
                if !target.starts_with(root) {
                    return Err(outside(rel));
                }
                cur = target;
            }
            Ok(_) => cur = next,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                missing = true;
                cur = next;
            }
            Err(e) => return Err(ApiError::io(e, &rel.display().to_string())),
        }
    }
    Ok(cur)
}

/// Checks that an opened file descriptor really lies under `root` (after open, so a
/// symlink swapped in between [`resolve`] and `open` cannot redirect a read).
pub fn verify_fd(file: &std::fs::File, root: &Path) -> ApiResult<()> {
    use std::os::fd::AsRawFd;
    let link = format!("/proc/self/fd/{}", file.as_raw_fd());
    match std::fs::read_link(&link) {
        Ok(real) if real.starts_with(root) => Ok(()),
        Ok(_) => Err(ApiError::invalid_path(
            "the path resolves outside the folder",
        )),
        // Without procfs we keep the resolve-time check only.
        Err(_) => Ok(()),
    }
}

/// Opens a regular file for reading without following a final symlink.
pub fn open_confined(path: &Path, root: &Path) -> ApiResult<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let f = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)
        .map_err(|e| ApiError::io(e, "open"))?;
    verify_fd(&f, root)?;
    Ok(f)
}

/// A directory opened and verified to lie under the folder root. Operations relative to its
/// descriptor (`*at` calls) cannot be redirected by a symlink swapped into the path later.
pub struct PinnedDir {
    dir: std::fs::File,
}

fn cstr(name: &std::ffi::OsStr) -> ApiResult<std::ffi::CString> {
    use std::os::unix::ffi::OsStrExt;
    std::ffi::CString::new(name.as_bytes()).map_err(|_| ApiError::invalid_path("NUL in path"))
}

fn check(rc: libc::c_int, what: &str) -> ApiResult<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(ApiError::io(std::io::Error::last_os_error(), what))
    }
}

impl PinnedDir {
    /// Opens `path` (a directory, not a symlink) and checks its real path is under `root`.
    pub fn open(path: &Path, root: &Path) -> ApiResult<Self> {
        use std::os::unix::fs::OpenOptionsExt;
        let dir = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW)
            .open(path)
            .map_err(|e| {
                // With O_DIRECTORY a final symlink gives ENOTDIR rather than ELOOP.
                let is_link = std::fs::symlink_metadata(path)
                    .map(|m| m.file_type().is_symlink())
                    .unwrap_or(false);
                if e.raw_os_error() == Some(libc::ELOOP) || is_link {
                    ApiError::invalid_path("the path resolves outside the folder")
                } else {
                    ApiError::io(e, &path.display().to_string())
                }
            })?;
        verify_fd(&dir, root)?;
        Ok(Self { dir })
    }

    /// Opens the parent directory of `path`, returning it with the final name.
    pub fn parent_of<'a>(path: &'a Path, root: &Path) -> ApiResult<(Self, &'a std::ffi::OsStr)> {
        let parent = path
            .parent()
            .ok_or_else(|| ApiError::invalid_path("no parent directory"))?;
        let name = path
            .file_name()
            .ok_or_else(|| ApiError::invalid_path("no file name"))?;
        Ok((Self::open(parent, root)?, name))
    }

    fn fd(&self) -> libc::c_int {
        use std::os::fd::AsRawFd;
        self.dir.as_raw_fd()
    }

    /// `/proc/self/fd/N`: the pinned directory as a path (for read_dir).
    pub fn proc_path(&self) -> PathBuf {
        PathBuf::from(format!("/proc/self/fd/{}", self.fd()))
    }

    pub fn mkdir(&self, name: &std::ffi::OsStr, what: &str) -> ApiResult<()> {
        let n = cstr(name)?;
        // SAFETY: valid descriptor and NUL-terminated name.
        check(unsafe { libc::mkdirat(self.fd(), n.as_ptr(), 0o755) }, what)
    }

    /// Removes a file or symlink (`dir = false`) or an empty directory (`dir = true`).
    pub fn unlink(&self, name: &std::ffi::OsStr, dir: bool, what: &str) -> ApiResult<()> {
        let n = cstr(name)?;
        let flags = if dir { libc::AT_REMOVEDIR } else { 0 };
        // SAFETY: valid descriptor and NUL-terminated name.
        check(
            unsafe { libc::unlinkat(self.fd(), n.as_ptr(), flags) },
            what,
        )
    }

    /// Renames `name` here to `to_name` in `to`; refuses to replace an existing entry unless
    /// `replace`.
    pub fn rename_to(
        &self,
        name: &std::ffi::OsStr,
        to: &PinnedDir,
        to_name: &std::ffi::OsStr,
        replace: bool,
        what: &str,
    ) -> ApiResult<()> {
        let (a, b) = (cstr(name)?, cstr(to_name)?);
        if !replace {
            // SAFETY: valid descriptors and NUL-terminated names.
            let rc = unsafe {
                libc::renameat2(
                    self.fd(),
                    a.as_ptr(),
                    to.fd(),
                    b.as_ptr(),
                    libc::RENAME_NOREPLACE,
                )
            };
            if rc == 0 {
                return Ok(());
            }
            let err = std::io::Error::last_os_error();
            // Filesystems without RENAME_NOREPLACE: fall back to check-then-rename.
            if err.raw_os_error() != Some(libc::EINVAL) {
                return Err(ApiError::io(err, what));
            }
            let mut st: libc::stat = unsafe { std::mem::zeroed() };
            // SAFETY: as above; `st` is a properly sized out parameter.
            let exists =
                unsafe { libc::fstatat(to.fd(), b.as_ptr(), &mut st, libc::AT_SYMLINK_NOFOLLOW) }
                    == 0;
            if exists {
                return Err(ApiError::already_exists(format!("{what}: already exists")));
            }
        }
        // SAFETY: valid descriptors and NUL-terminated names.
        check(
            unsafe { libc::renameat(self.fd(), a.as_ptr(), to.fd(), b.as_ptr()) },
            what,
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lexical() {
        assert_eq!(normalize("a/./b/../c").unwrap(), PathBuf::from("a/c"));
        assert_eq!(normalize("").unwrap(), PathBuf::new());
        assert_eq!(normalize(".").unwrap(), PathBuf::new());
        assert!(normalize("../x").is_err());
        assert!(normalize("a/../../x").is_err());
        assert!(normalize("/etc/passwd").is_err());
        assert!(normalize("a\0b").is_err());
        assert!(single_name("x.txt").is_ok());
        assert!(single_name("a/b").is_err());
        assert!(single_name("..").is_err());
        assert!(single_name(".").is_err());
        assert!(single_name("").is_err());
    }

    #[test]
    fn pinned_dirs_refuse_links_and_foreign_directories() {
        let base = tempfile::tempdir().unwrap();
        let root = base.path().join("root");
        let outside = base.path().join("outside");
        std::fs::create_dir_all(root.join("d")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("l")).unwrap();
        let root = std::fs::canonicalize(&root).unwrap();

        // A symlink as the directory itself is not followed; a directory elsewhere fails
        // the descriptor check.
        let e = PinnedDir::open(&root.join("l"), &root).err().unwrap();
        assert_eq!(e.kind, crate::proto::problem::INVALID_PATH);
        let e = PinnedDir::open(&outside, &root).err().unwrap();
        assert_eq!(e.kind, crate::proto::problem::INVALID_PATH);

        // *at operations act inside the pinned directory only.
        let d = PinnedDir::open(&root.join("d"), &root).unwrap();
        d.mkdir(std::ffi::OsStr::new("x"), "x").unwrap();
        d.mkdir(std::ffi::OsStr::new("y"), "y").unwrap();
        let e = d
            .rename_to(
                std::ffi::OsStr::new("x"),
                &d,
                std::ffi::OsStr::new("y"),
                false,
                "x",
            )
            .err()
            .unwrap();
        assert_eq!(e.status.as_u16(), 409);
        d.unlink(std::ffi::OsStr::new("x"), true, "x").unwrap();
        assert!(!root.join("d/x").exists() && root.join("d/y").is_dir());
        assert!(std::fs::read_dir(&outside).unwrap().next().is_none());

        // Resolution stops at links that leave the root.
        let e = resolve(&root, Path::new("l/file"), false).err().unwrap();
        assert_eq!(e.kind, crate::proto::problem::INVALID_PATH);
        assert_eq!(
            resolve(&root, Path::new("l"), false).unwrap(),
            root.join("l")
        );
    }
}
