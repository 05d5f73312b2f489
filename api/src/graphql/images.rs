//! The image catalogue. 21.03 keeps images in etcd, not in the database:
//! `images/{registry}/{quoted name}/{tag}` holds the digest, with sub-keys `size_bytes`,
//! `labels/<k>`, `resource/<slot>/min|max` and `accelerators`; aliases are
//! `images/_aliases/{alias}` → canonical reference. Path segments are URL-quoted.

use std::collections::BTreeMap;

use bai_core::etcd::Etcd;

#[derive(Debug, Clone, Default, PartialEq)]
pub struct ImageInfo {
    pub registry: String,
    pub name: String,
    pub tag: String,
    pub digest: String,
    pub size_bytes: i64,
    pub labels: BTreeMap<String, String>,
    /// slot → (min, max)
    pub resources: BTreeMap<String, (Option<String>, Option<String>)>,
    pub accelerators: Vec<String>,
    pub aliases: Vec<String>,
}

impl ImageInfo {
    pub fn canonical(&self) -> String {
        format!("{}/{}:{}", self.registry, self.name, self.tag)
    }
}

#[derive(Debug, Clone, Default)]
pub struct ImageCatalog {
    /// Keyed by canonical reference, in etcd key order.
    pub images: BTreeMap<String, ImageInfo>,
    pub aliases: BTreeMap<String, String>,
}

/// `urllib.parse.unquote`.
pub fn unquote(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            if let Ok(b) = u8::from_str_radix(&s[i + 1..i + 3], 16) {
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

/// `urllib.parse.quote(s, safe='')`-style quoting of one etcd path segment.
pub fn quote(s: &str) -> String {
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

/// Splits a reference into (registry, name, tag). A reference without a registry part
/// (no dot/colon/`localhost` in the first segment) is on Docker Hub.
pub fn parse_reference(reference: &str) -> (String, String, String) {
    let (path, tag) = match reference.rsplit_once(':') {
        Some((p, t)) if !t.contains('/') => (p, t.to_string()),
        _ => (reference, "latest".to_string()),
    };
    let mut parts = path.splitn(2, '/');
    let first = parts.next().unwrap_or_default();
    match parts.next() {
        Some(rest) if first.contains('.') || first.contains(':') || first == "localhost" => {
            (first.to_string(), rest.to_string(), tag)
        }
        _ => {
            let name = if path.contains('/') {
                path.to_string()
            } else {
                format!("library/{path}")
            };
            ("index.docker.io".to_string(), name, tag)
        }
    }
}

impl ImageCatalog {
    pub async fn load(etcd: &Etcd) -> anyhow::Result<Self> {
        let kvs = etcd.get_prefix("images/").await?;
        Ok(Self::from_kvs(&kvs))
    }

    pub fn from_kvs(kvs: &BTreeMap<String, String>) -> Self {
        let mut cat = ImageCatalog::default();
        for (key, value) in kvs {
            let parts: Vec<&str> = key.split('/').collect();
            if parts.first() == Some(&"_aliases") {
                if parts.len() >= 2 {
                    cat.aliases
                        .insert(unquote(&parts[1..].join("/")), value.clone());
                }
                continue;
            }
            if parts.len() < 3 {
                continue;
            }
            let registry = unquote(parts[0]);
            let name = unquote(parts[1]);
            let tag = unquote(parts[2]);
            let canonical = format!("{registry}/{name}:{tag}");
            let img = cat.images.entry(canonical).or_insert_with(|| ImageInfo {
                registry,
                name,
                tag,
                ..Default::default()
            });
            match &parts[3..] {
                [] => img.digest = value.clone(),
                ["size_bytes"] => img.size_bytes = value.trim().parse().unwrap_or(0),
                ["accelerators"] => {
                    img.accelerators = value
                        .split(',')
                        .map(str::trim)
                        .filter(|s| !s.is_empty())
                        .map(String::from)
                        .collect()
                }
                ["labels", rest @ ..] if !rest.is_empty() => {
                    img.labels.insert(unquote(&rest.join("/")), value.clone());
                }
                ["resource", slot, bound] => {
                    let e = img.resources.entry(unquote(slot)).or_default();
                    if *bound == "min" {
                        e.0 = Some(value.clone());
                    } else if *bound == "max" {
                        e.1 = Some(value.clone());
                    }
                }
                _ => {}
            }
        }
        // Images whose tag key carries no digest are only markers of partially written
        // entries; keep them anyway (the original lists whatever is under the key).
        let aliases: Vec<(String, String)> = cat
            .aliases
            .iter()
            .map(|(a, t)| (a.clone(), t.clone()))
            .collect();
        for (alias, target) in aliases {
            if let Some(img) = cat.images.get_mut(&target) {
                img.aliases.push(alias);
            }
        }
        cat
    }

    /// Resolves an alias or a reference to a catalogued image.
    pub fn resolve(&self, reference: &str) -> Option<&ImageInfo> {
        if let Some(target) = self.aliases.get(reference) {
            return self.images.get(target);
        }
        if let Some(img) = self.images.get(reference) {
            return Some(img);
        }
        let (r, n, t) = parse_reference(reference);
        self.images.get(&format!("{r}/{n}:{t}"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn catalogue() {
        let mut kvs = BTreeMap::new();
        kvs.insert(
            "_aliases/python".to_string(),
            "cr.backend.ai/stable/python:3.9".to_string(),
        );
        kvs.insert("cr.backend.ai".to_string(), "1".to_string());
        kvs.insert("cr.backend.ai/stable%2Fpython".to_string(), "1".to_string());
        kvs.insert(
            "cr.backend.ai/stable%2Fpython/3.9".to_string(),
            "sha256:x".to_string(),
        );
        kvs.insert(
            "cr.backend.ai/stable%2Fpython/3.9/size_bytes".to_string(),
            "551190528".to_string(),
        );
        kvs.insert(
            "cr.backend.ai/stable%2Fpython/3.9/labels/ai.backend.kernelspec".to_string(),
            "1".to_string(),
        );
        kvs.insert(
            "cr.backend.ai/stable%2Fpython/3.9/resource/mem/min".to_string(),
            "256m".to_string(),
        );
        let cat = ImageCatalog::from_kvs(&kvs);
        assert_eq!(cat.images.len(), 1);
        let img = cat.resolve("python").unwrap();
        assert_eq!(img.name, "stable/python");
        assert_eq!(img.digest, "sha256:x");
        assert_eq!(img.size_bytes, 551190528);
        assert_eq!(img.aliases, vec!["python".to_string()]);
        assert_eq!(img.resources["mem"], (Some("256m".into()), None));
        assert!(cat.resolve("cr.backend.ai/stable/python:3.9").is_some());
        assert_eq!(quote("stable/python"), "stable%2Fpython");
        assert_eq!(unquote("stable%2Fpython"), "stable/python");
        assert_eq!(
            parse_reference("python:3.9"),
            (
                "index.docker.io".into(),
                "library/python".into(),
                "3.9".into()
            )
        );
    }
}
