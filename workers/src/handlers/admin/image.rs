//! Image mutations. 21.03 keeps the image catalogue in etcd, so these write etcd, not
//! PostgreSQL: `images/{registry}/{quoted name}/{tag}` (+ sub-keys) and
//! `images/_aliases/{alias}`.
//!
//! Exactly-once effect: etcd puts/deletes are idempotent, so the handler first looks the
//! command up in `processed_commands` (a redelivery answers the stored payload), then
//! writes etcd, then records the payload with `run_once`. A crash between the etcd write
//! and the record repeats an idempotent write on redelivery.

use std::sync::Arc;

use serde_json::Value;
use uuid::Uuid;

use bai_core::etcd::Etcd;
use bai_events::admin::ImageProps;
use bai_events::{AdminCommand, AdminOp};

use super::{fail, no_match, no_permission, success};
use crate::idempotency::{processed_result, run_once};
use crate::runtime::{HandlerError, WorkerContext};

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

/// (registry, name, tag) of a reference; no registry part means Docker Hub.
fn parse_reference(reference: &str) -> (String, String, String) {
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

/// Resolves an alias or a reference to the etcd key of a catalogued image.
async fn image_key(etcd: &Etcd, target: &str) -> anyhow::Result<Option<String>> {
    let canonical = match etcd.get(&format!("images/_aliases/{target}")).await? {
        Some(c) => c,
        None => target.to_string(),
    };
    let (registry, name, tag) = parse_reference(&canonical);
    let key = format!("images/{}/{}/{}", registry, quote(&name), quote(&tag));
    Ok(etcd.get(&key).await?.map(|_| key))
}

async fn apply(etcd: &Etcd, cmd: &AdminCommand) -> anyhow::Result<Value> {
    if !cmd.caller.is_superadmin() {
        return Ok(no_permission(cmd.field_name()));
    }
    match &cmd.op {
        AdminOp::AliasImage { alias, target } => {
            if alias.trim().is_empty() {
                return Ok(fail(format!("invalid alias: {alias}")));
            }
            let (registry, name, tag) = parse_reference(target);
            etcd.put(
                &format!("images/_aliases/{alias}"),
                &format!("{registry}/{name}:{tag}"),
            )
            .await?;
            Ok(success(None))
        }
        AdminOp::DealiasImage { alias } => {
            let n = etcd
                .delete(&format!("images/_aliases/{alias}"), false)
                .await?;
            Ok(if n == 0 { no_match() } else { success(None) })
        }
        AdminOp::ForgetImage { reference } => {
            let Some(key) = image_key(etcd, reference).await? else {
                return Ok(no_match());
            };
            etcd.delete(&format!("{key}/"), true).await?;
            etcd.delete(&key, false).await?;
            Ok(success(None))
        }
        AdminOp::ModifyImage { target, props } => {
            let Some(key) = image_key(etcd, target).await? else {
                return Ok(no_match());
            };
            modify(etcd, &key, props).await?;
            Ok(success(None))
        }
        _ => Ok(fail("not an image mutation")),
    }
}

async fn modify(etcd: &Etcd, key: &str, p: &ImageProps) -> anyhow::Result<()> {
    if let Some(d) = &p.digest {
        etcd.put(key, d).await?;
    }
    if let Some(s) = p.size_bytes {
        etcd.put(&format!("{key}/size_bytes"), &s.to_string())
            .await?;
    }
    if let Some(labels) = &p.labels {
        etcd.delete(&format!("{key}/labels/"), true).await?;
        for (k, v) in labels {
            etcd.put(&format!("{key}/labels/{k}"), v).await?;
        }
    }
    if let Some(limits) = &p.resource_limits {
        etcd.delete(&format!("{key}/resource/"), true).await?;
        for l in limits {
            if let Some(min) = &l.min {
                etcd.put(&format!("{key}/resource/{}/min", l.key), min)
                    .await?;
            }
            if let Some(max) = &l.max {
                etcd.put(&format!("{key}/resource/{}/max", l.key), max)
                    .await?;
            }
        }
    }
    if let Some(acc) = &p.supported_accelerators {
        etcd.put(&format!("{key}/accelerators"), &acc.join(","))
            .await?;
    }
    Ok(())
}

pub async fn handle(
    ctx: &Arc<WorkerContext>,
    id: Uuid,
    cmd: &AdminCommand,
) -> Result<Value, HandlerError> {
    if let Some(stored) = processed_result(&ctx.db, id)
        .await
        .map_err(|e| HandlerError::Transient(e.into()))?
    {
        return Ok(stored);
    }
    let Some(etcd) = &ctx.etcd else {
        return Err(HandlerError::Permanent(anyhow::anyhow!(
            "this worker has no etcd connection; image mutations need one"
        )));
    };
    let value = apply(etcd, cmd).await.map_err(HandlerError::Transient)?;
    let stored = value.clone();
    let done = run_once(&ctx.db, id, "admin", move |_txn| {
        let v = stored.clone();
        Box::pin(async move { Ok(v) })
    })
    .await
    .map_err(HandlerError::from_txn)?;
    Ok(done.into_value())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        assert_eq!(
            parse_reference("cr.backend.ai/stable/python:3.9-ubuntu20.04"),
            (
                "cr.backend.ai".into(),
                "stable/python".into(),
                "3.9-ubuntu20.04".into()
            )
        );
        assert_eq!(quote("stable/python"), "stable%2Fpython");
    }
}
