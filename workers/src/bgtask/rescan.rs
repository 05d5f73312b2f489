//! `rescan_images`: refreshes the etcd image catalogue (`images/...`) from the configured
//! registries, as the GraphQL `rescan_images` mutation asks.
//!
//! Talking to Docker Hub / Harbor is out of scope here; the supported registry type is
//! **`local`**, a registry whose image list is part of the configuration:
//!
//! ```text
//! config/docker/registry/<quoted name>          = <URL or any label>
//! config/docker/registry/<quoted name>/type     = local
//! config/docker/registry/<quoted name>/images   = [<image>, ...]      (JSON text), or
//! config/docker/registry/<quoted name>/path     = /path/to/images.json (a JSON file)
//! ```
//!
//! An image is `"name:tag"` or `{"name", "tag", "digest"?, "size_bytes"?, "labels"?}`.
//! Each one is written the way the original scanner wrote it:
//! `images/<registry>/<quoted name>` = `1`, `.../<tag>` = digest, `.../<tag>/size_bytes`,
//! `.../<tag>/labels/<k>` and, from `ai.backend.resource.min.<slot>` labels,
//! `.../<tag>/resource/<slot>/min`. Registries of other types are skipped (reported in the
//! progress messages); naming one explicitly, or an unknown one, fails the task.

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::Deserialize;
use serde_json::Value;
use uuid::Uuid;

use super::Progress;
use crate::runtime::WorkerContext;

/// `urllib.parse.quote(s, safe='')`.
fn quote(s: &str) -> String {
    let mut out = String::new();
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"_.-~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 3 <= bytes.len() {
            if let Some(b) = std::str::from_utf8(&bytes[i + 1..i + 3])
                .ok()
                .and_then(|h| u8::from_str_radix(h, 16).ok())
            {
                out.push(b);
                i += 3;
                continue;
            }
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// One image of a local registry.
#[derive(Debug, Clone, PartialEq)]
pub struct LocalImage {
    pub name: String,
    pub tag: String,
    pub digest: String,
    pub size_bytes: Option<u64>,
    pub labels: BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ImageEntry {
    Reference(String),
    Full {
        name: String,
        #[serde(default = "latest")]
        tag: String,
        #[serde(default)]
        digest: Option<String>,
        #[serde(default)]
        size_bytes: Option<u64>,
        #[serde(default)]
        labels: BTreeMap<String, Value>,
    },
}

fn latest() -> String {
    "latest".into()
}

/// A stable stand-in digest for images listed without one.
fn fake_digest(name: &str, tag: &str) -> String {
    let a = Uuid::new_v5(&Uuid::NAMESPACE_URL, format!("{name}:{tag}").as_bytes());
    let b = Uuid::new_v5(&a, b"digest");
    format!("sha256:{}{}", a.simple(), b.simple())
}

/// Parses a local registry's image list.
pub fn parse_images(text: &str) -> anyhow::Result<Vec<LocalImage>> {
    let entries: Vec<ImageEntry> = serde_json::from_str(text)
        .map_err(|e| anyhow::anyhow!("invalid image list (expected a JSON list): {e}"))?;
    entries
        .into_iter()
        .map(|e| match e {
            ImageEntry::Reference(r) => {
                let (name, tag) = match r.rsplit_once(':') {
                    Some((n, t)) if !t.contains('/') => (n.to_string(), t.to_string()),
                    _ => (r.clone(), latest()),
                };
                if name.is_empty() {
                    anyhow::bail!("invalid image reference: {r:?}");
                }
                Ok(LocalImage {
                    digest: fake_digest(&name, &tag),
                    name,
                    tag,
                    size_bytes: None,
                    labels: BTreeMap::new(),
                })
            }
            ImageEntry::Full {
                name,
                tag,
                digest,
                size_bytes,
                labels,
            } => {
                if name.is_empty() {
                    anyhow::bail!("an image without a name");
                }
                Ok(LocalImage {
                    digest: digest.unwrap_or_else(|| fake_digest(&name, &tag)),
                    labels: labels
                        .into_iter()
                        .map(|(k, v)| {
                            let v = match v {
                                Value::String(s) => s,
                                other => other.to_string(),
                            };
                            (k, v)
                        })
                        .collect(),
                    name,
                    tag,
                    size_bytes,
                })
            }
        })
        .collect()
}

/// Runs the rescan; returns the outcome message.
pub async fn rescan_images(
    ctx: &Arc<WorkerContext>,
    progress: &mut Progress,
    only: Option<&str>,
) -> anyhow::Result<String> {
    let etcd = ctx
        .etcd
        .clone()
        .ok_or_else(|| anyhow::anyhow!("this worker has no etcd connection"))?;
    let conf = etcd.get_prefix("config/docker/registry/").await?;
    // registry name -> its keys (relative to the registry's key).
    let mut registries: BTreeMap<String, BTreeMap<String, String>> = BTreeMap::new();
    for (k, v) in conf {
        let (reg, sub) = match k.split_once('/') {
            Some((r, s)) => (r, s.to_string()),
            None => (k.as_str(), String::new()),
        };
        if reg.is_empty() {
            continue;
        }
        registries.entry(unquote(reg)).or_default().insert(sub, v);
    }
    if let Some(name) = only {
        if !registries.contains_key(name) {
            anyhow::bail!("no such registry: {name}");
        }
        registries.retain(|k, _| k == name);
    }
    let mut plan: Vec<(String, Vec<LocalImage>)> = Vec::new();
    let mut skipped = Vec::new();
    for (name, keys) in &registries {
        let kind = keys.get("type").map(String::as_str).unwrap_or("docker");
        if kind != "local" {
            if only.is_some() {
                anyhow::bail!("registry {name}: type {kind:?} cannot be scanned here (only \"local\" registries)");
            }
            skipped.push(format!("{name} ({kind})"));
            continue;
        }
        let text = match (keys.get("images"), keys.get("path")) {
            (Some(list), _) => list.clone(),
            (None, Some(path)) => tokio::fs::read_to_string(path)
                .await
                .map_err(|e| anyhow::anyhow!("registry {name}: cannot read {path}: {e}"))?,
            (None, None) => {
                anyhow::bail!("registry {name}: neither `images` nor `path` is configured")
            }
        };
        let images = parse_images(&text).map_err(|e| anyhow::anyhow!("registry {name}: {e}"))?;
        plan.push((name.clone(), images));
    }
    let total: usize = plan.iter().map(|(_, i)| i.len()).sum();
    progress.set_total(total as f64);
    if !skipped.is_empty() {
        progress
            .update(
                0.0,
                Some(format!(
                    "Skipped registries that cannot be scanned here: {}",
                    skipped.join(", ")
                )),
            )
            .await;
    }
    for (registry, images) in &plan {
        etcd.put(&format!("images/{}", quote(registry)), "1")
            .await?;
        for img in images {
            write_image(&etcd, registry, img).await?;
            progress
                .update(
                    1.0,
                    Some(format!(
                        "Updated image - {registry}/{}:{}",
                        img.name, img.tag
                    )),
                )
                .await;
        }
    }
    let mut msg = format!(
        "Scanned {total} image(s) from {} registr{}",
        plan.len(),
        if plan.len() == 1 { "y" } else { "ies" }
    );
    if !skipped.is_empty() {
        msg.push_str(&format!("; skipped {}", skipped.join(", ")));
    }
    Ok(msg)
}

async fn write_image(
    etcd: &bai_core::etcd::Etcd,
    registry: &str,
    img: &LocalImage,
) -> anyhow::Result<()> {
    let repo = format!("images/{}/{}", quote(registry), quote(&img.name));
    let key = format!("{repo}/{}", quote(&img.tag));
    // Labels and minimum resources are replaced as a whole (a label removed upstream goes).
    etcd.delete(&format!("{key}/labels/"), true).await?;
    etcd.delete(&format!("{key}/resource/"), true).await?;
    let mut doc = serde_json::Map::new();
    doc.insert(String::new(), Value::String(img.digest.clone()));
    if let Some(size) = img.size_bytes {
        doc.insert("size_bytes".into(), Value::String(size.to_string()));
    }
    let labels: serde_json::Map<String, Value> = img
        .labels
        .iter()
        .map(|(k, v)| (k.clone(), Value::String(v.clone())))
        .collect();
    if !labels.is_empty() {
        doc.insert("labels".into(), Value::Object(labels));
    }
    let mut resource = serde_json::Map::new();
    for (k, v) in &img.labels {
        if let Some(slot) = k.strip_prefix("ai.backend.resource.min.") {
            resource.insert(slot.to_string(), serde_json::json!({ "min": v }));
        }
    }
    if !resource.is_empty() {
        doc.insert("resource".into(), Value::Object(resource));
    }
    etcd.put(&repo, "1").await?;
    etcd.put_json(&key, &Value::Object(doc)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn image_lists() {
        let imgs = parse_images(
            r#"["lablup/python:3.9", {"name": "stable/r", "tag": "4.0", "digest": "sha256:ab",
                "labels": {"ai.backend.resource.min.cpu": "1", "n": 2}}, "plain"]"#,
        )
        .unwrap();
        assert_eq!(imgs[0].name, "lablup/python");
        assert_eq!(imgs[0].tag, "3.9");
        assert!(imgs[0].digest.starts_with("sha256:") && imgs[0].digest.len() == 71);
        assert_eq!(imgs[1].digest, "sha256:ab");
        assert_eq!(imgs[1].labels["n"], "2");
        assert_eq!(imgs[2].tag, "latest");
        assert!(parse_images("{}").is_err());
        assert_eq!(quote("a/b:c"), "a%2Fb%3Ac");
        assert_eq!(unquote("localhost%3A5000"), "localhost:5000");
    }
}
