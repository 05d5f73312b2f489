//! Per-process caches of the etcd reads `POST /session` makes on every request: the
//! resolved image (alias lookup, image entry and its resource limits: three to five etcd
//! round trips) and the known slot types. Both change only on administrative action
//! (rescan, alias or slot configuration), so a 1 s staleness bound — the same as the
//! keypair cache of the auth layer — costs nothing in practice and removes most of the
//! per-request etcd traffic (at 1,000 creations/s, a few reads per second instead of
//! thousands). Entries are keyed by the etcd namespace, so managers (and tests) with
//! different namespaces never share them.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use bai_core::etcd::Etcd;

use super::create::{resolve_image, ImageSpec};
use crate::error::{ApiError, ApiResult};

/// How long an entry is trusted.
pub const TTL: Duration = Duration::from_secs(1);
/// Bound on the image entries kept (a full map is simply cleared).
const MAX_IMAGES: usize = 4096;

type ImageKey = (String, String, Vec<String>);

struct Caches {
    images: HashMap<ImageKey, (Instant, ImageSpec)>,
    slots: HashMap<String, (Instant, BTreeMap<String, String>)>,
}

fn caches() -> &'static Mutex<Caches> {
    static C: OnceLock<Mutex<Caches>> = OnceLock::new();
    C.get_or_init(|| {
        Mutex::new(Caches {
            images: HashMap::new(),
            slots: HashMap::new(),
        })
    })
}

fn fresh<T: Clone>(entry: Option<&(Instant, T)>) -> Option<T> {
    entry
        .filter(|(at, _)| at.elapsed() < TTL)
        .map(|(_, v)| v.clone())
}

/// [`resolve_image`] through the cache (failures are not cached).
pub async fn image(etcd: &Etcd, reference: &str, allowed: &[String]) -> ApiResult<ImageSpec> {
    let key = (
        etcd.prefix().to_string(),
        reference.to_string(),
        allowed.to_vec(),
    );
    // The lock is held only to copy an entry in or out, never across an await.
    if let Ok(c) = caches().lock() {
        if let Some(hit) = fresh(c.images.get(&key)) {
            return Ok(hit);
        }
    }
    let spec = resolve_image(etcd, reference, allowed).await?;
    if let Ok(mut c) = caches().lock() {
        if c.images.len() >= MAX_IMAGES {
            c.images.clear();
        }
        c.images.insert(key, (Instant::now(), spec.clone()));
    }
    Ok(spec)
}

/// [`crate::slots::known_slot_types`] through the cache.
pub async fn known_slot_types(etcd: &Etcd) -> ApiResult<BTreeMap<String, String>> {
    let key = etcd.prefix().to_string();
    if let Ok(c) = caches().lock() {
        if let Some(hit) = fresh(c.slots.get(&key)) {
            return Ok(hit);
        }
    }
    let known = crate::slots::known_slot_types(etcd)
        .await
        .map_err(ApiError::internal_from)?;
    if let Ok(mut c) = caches().lock() {
        c.slots.insert(key, (Instant::now(), known.clone()));
    }
    Ok(known)
}
