//! Virtual-folder mounts of a process kernel.
//!
//! Kernels are host processes, so a vfolder is exposed as a **symlink** inside the
//! kernel's work dir (`/home/work`) to the folder's directory on the storage volume (the
//! manager resolves that host path through the storage proxy's `POST /folder/mount`).
//! The target is `mount_map[name]` (a path under `/home/work/`) or `/home/work/<name>`.
//!
//! Read-only folders: without root there is no read-only bind mount, so a kernel process
//! can still write through the symlink of an `ro` mount. What the agent controls it
//! refuses: file uploads into an `ro` mount ([`refuse_ro_write`]). The permission travels
//! with the kernel (`resource_spec.mounts`) for operators to see.

use std::path::{Path, PathBuf};

use serde_json::Value;

use bai_agent_proto::{KernelConfig, RemoteError};

use crate::kernel::resolve_in;

/// Where a mount appears inside `work`.
fn target_of(work: &Path, name: &str, mount_map: &Value) -> Result<PathBuf, RemoteError> {
    let requested = mount_map
        .get(name)
        .and_then(Value::as_str)
        .map(str::to_string)
        .unwrap_or_else(|| format!("/home/work/{name}"));
    if !requested.starts_with("/home/work/") {
        return Err(RemoteError::invalid(format!(
            "mount path {requested} of {name} is not under /home/work/"
        )));
    }
    let target = resolve_in(work, &requested)?;
    if target == work {
        return Err(RemoteError::invalid(format!(
            "mount path {requested} of {name} is /home/work itself"
        )));
    }
    Ok(target)
}

/// Creates one symlink per mount (replacing a stale link of a restarted kernel).
pub fn expose(work: &Path, config: &KernelConfig) -> Result<(), RemoteError> {
    for m in &config.mounts {
        let source = match m.unmanaged_path.as_deref().filter(|p| !p.is_empty()) {
            Some(p) => p,
            None => m.host_path.as_str(),
        };
        if source.is_empty() {
            return Err(RemoteError::invalid(format!(
                "mount {} has no host path",
                m.name
            )));
        }
        let target = target_of(work, &m.name, &config.mount_map)?;
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            match std::fs::symlink_metadata(&target) {
                Ok(meta) if meta.file_type().is_symlink() => std::fs::remove_file(&target)?,
                Ok(_) => return Err(std::io::Error::other("a file or directory is in the way")),
                Err(_) => {}
            }
            std::os::unix::fs::symlink(source, &target)
        })();
        result.map_err(|e| {
            RemoteError::internal(format!(
                "cannot mount {} at {}: {e}",
                m.name,
                target.display()
            ))
        })?;
        tracing::debug!(name = %m.name, perm = %m.perm, target = %target.display(), "vfolder mounted");
    }
    Ok(())
}

/// Refuses an agent-side write (file upload) to `path` inside an `ro` mount.
pub fn refuse_ro_write(work: &Path, config: &KernelConfig, path: &Path) -> Result<(), RemoteError> {
    for m in config.mounts.iter().filter(|m| m.perm == "ro") {
        if let Ok(target) = target_of(work, &m.name, &config.mount_map) {
            if path.starts_with(&target) {
                return Err(RemoteError::invalid(format!(
                    "{} is in the read-only vfolder {}",
                    path.display(),
                    m.name
                )));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn config(mounts: Value, mount_map: Value) -> KernelConfig {
        serde_json::from_value(json!({
            "kernel_id": uuid::Uuid::new_v4(),
            "image": {"canonical": "python"},
            "mounts": mounts,
            "mount_map": mount_map,
        }))
        .unwrap()
    }

    #[test]
    fn symlinks_at_the_requested_paths_and_ro_uploads_refused() {
        let base =
            std::env::temp_dir().join(format!("bai-mounts-{}", uuid::Uuid::new_v4().simple()));
        let (work, data, models) = (base.join("work"), base.join("data"), base.join("models"));
        for d in [&work, &data, &models] {
            std::fs::create_dir_all(d).unwrap();
        }
        let cfg = config(
            json!([
                {"name": "data", "host": "local:v", "host_path": data, "perm": "rw"},
                {"name": "models", "host": "local:v", "host_path": models, "perm": "ro"},
            ]),
            json!({"models": "/home/work/m/models"}),
        );
        expose(&work, &cfg).unwrap();
        // Idempotent for a restarted kernel.
        expose(&work, &cfg).unwrap();
        assert_eq!(std::fs::read_link(work.join("data")).unwrap(), data);
        assert_eq!(std::fs::read_link(work.join("m/models")).unwrap(), models);
        assert!(refuse_ro_write(&work, &cfg, &work.join("data/x")).is_ok());
        assert!(refuse_ro_write(&work, &cfg, &work.join("m/models/x")).is_err());
        // Paths outside /home/work or escaping it are refused.
        let bad = config(
            json!([{"name": "data", "host": "local:v", "host_path": data, "perm": "rw"}]),
            json!({"data": "/etc/data"}),
        );
        assert!(expose(&work, &bad).is_err());
        let bad = config(
            json!([{"name": "data", "host": "local:v", "host_path": data, "perm": "rw"}]),
            json!({"data": "/home/work/../../x"}),
        );
        assert!(expose(&work, &bad).is_err());
        std::fs::remove_dir_all(&base).unwrap();
    }
}
