//! `vfolder_clone`: copies a folder through its storage proxy (`POST /folder/clone`).
//! The proxy's copy is one call, so progress is the target's file count (read from the
//! proxy while the copy runs) against the source's.

use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use uuid::Uuid;

use crate::bgtask::Progress;
use crate::runtime::WorkerContext;

/// How often the target's usage is read while the copy runs.
const POLL: Duration = Duration::from_millis(200);

pub async fn clone(
    ctx: &Arc<WorkerContext>,
    progress: &mut Progress,
    params: &Value,
) -> anyhow::Result<String> {
    let host = params
        .get("host")
        .and_then(Value::as_str)
        .ok_or_else(|| anyhow::anyhow!("vfolder_clone without `host`"))?;
    let uuid = |k: &str| -> anyhow::Result<Uuid> {
        params
            .get(k)
            .and_then(Value::as_str)
            .and_then(|s| Uuid::parse_str(s).ok())
            .ok_or_else(|| anyhow::anyhow!("vfolder_clone without a valid `{k}`"))
    };
    let (src, dst) = (uuid("src")?, uuid("dst")?);
    let etcd = ctx
        .etcd
        .clone()
        .ok_or_else(|| anyhow::anyhow!("vfolder_clone needs etcd"))?;
    let (proxy, volume) = crate::handlers::vfolder::proxies(&etcd)
        .for_host(host)
        .await?;
    let proxy = proxy.client();
    let total = proxy.folder_usage(&volume, src).await?.file_count;
    progress.set_total(total as f64);
    progress.update(0.0, Some("copying".into())).await;
    let copy = proxy.clone_folder(&volume, src, dst);
    tokio::pin!(copy);
    let mut ticker = tokio::time::interval(POLL);
    loop {
        tokio::select! {
            r = &mut copy => {
                if let Err(e) = r {
                    // A re-run after a finished copy (worker crash before the outcome was
                    // recorded) finds the target complete: that is success.
                    match proxy.folder_usage(&volume, dst).await {
                        Ok(u) if u.file_count == total => {}
                        _ => return Err(e.into()),
                    }
                }
                break;
            }
            _ = ticker.tick() => {
                // The target may not exist yet at the first ticks.
                if let Ok(n) = proxy.folder_usage(&volume, dst).await.map(|u| u.file_count) {
                    let delta = (n as f64).min(progress.total()) - progress.current();
                    if delta > 0.0 {
                        progress.update(delta, Some(format!("{n} of {total} files"))).await;
                    }
                }
            }
        }
    }
    let rest = progress.total() - progress.current();
    progress
        .update(rest.max(0.0), Some(format!("{total} of {total} files")))
        .await;
    Ok(format!("cloned {total} files"))
}
