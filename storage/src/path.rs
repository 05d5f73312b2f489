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
}
