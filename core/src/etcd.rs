//! Shared configuration in etcd, namespaced as the original: `/sorna/{namespace}/{key}`.

use std::collections::BTreeMap;
use std::time::Duration;

use backoff::backoff::Backoff;
use backoff::ExponentialBackoffBuilder;
use etcd_client::{Client, ConnectOptions, GetOptions};

use crate::config::EtcdConfig;
use crate::error::ServiceError;

#[derive(Clone)]
pub struct Etcd {
    client: Client,
    prefix: String,
}

impl Etcd {
    /// Connects with retries (bounded by `timeout`) and a clear error when etcd is down.
    pub async fn connect(cfg: &EtcdConfig, timeout: Duration) -> Result<Self, ServiceError> {
        let mut opts = ConnectOptions::new()
            .with_connect_timeout(Duration::from_secs(3))
            .with_timeout(Duration::from_secs(10));
        if let (Some(u), Some(p)) = (&cfg.user, &cfg.password) {
            opts = opts.with_user(u.clone(), p.clone());
        }
        let mut policy = ExponentialBackoffBuilder::new()
            .with_initial_interval(Duration::from_millis(200))
            .with_max_interval(Duration::from_secs(2))
            .with_max_elapsed_time(Some(timeout))
            .build();
        let mut attempts = 0;
        loop {
            attempts += 1;
            let attempt = async {
                // `addr` may list several cluster members (`h1:2379,h2:2379,h3:2379`); the
                // client balances over them and fails over when one goes away.
                let endpoints: Vec<&str> = cfg
                    .addr
                    .split(',')
                    .map(str::trim)
                    .filter(|a| !a.is_empty())
                    .collect();
                let mut c = Client::connect(endpoints, Some(opts.clone())).await?;
                // `connect` is lazy about the first request; a status call proves liveness.
                c.status().await?;
                Ok::<_, etcd_client::Error>(c)
            }
            .await;
            match attempt {
                Ok(client) => {
                    return Ok(Self {
                        client,
                        prefix: format!("/sorna/{}/", cfg.namespace),
                    })
                }
                Err(e) => match policy.next_backoff() {
                    Some(wait) => {
                        tracing::warn!(error = %e, addr = %cfg.addr, "etcd not reachable yet; retrying");
                        tokio::time::sleep(wait).await;
                    }
                    None => {
                        return Err(ServiceError::Unreachable {
                            service: "etcd",
                            addr: cfg.addr.clone(),
                            attempts,
                            message: e.to_string(),
                        })
                    }
                },
            }
        }
    }

    fn full(&self, key: &str) -> String {
        format!("{}{}", self.prefix, key.trim_start_matches('/'))
    }

    pub async fn get(&self, key: &str) -> anyhow::Result<Option<String>> {
        let resp = self.client.clone().get(self.full(key), None).await?;
        Ok(resp
            .kvs()
            .first()
            .map(|kv| String::from_utf8_lossy(kv.value()).into_owned()))
    }

    /// All keys under `prefix`, with the prefix removed, sorted.
    pub async fn get_prefix(&self, prefix: &str) -> anyhow::Result<BTreeMap<String, String>> {
        let full = self.full(prefix);
        let resp = self
            .client
            .clone()
            .get(full.clone(), Some(GetOptions::new().with_prefix()))
            .await?;
        Ok(resp
            .kvs()
            .iter()
            .map(|kv| {
                let k = String::from_utf8_lossy(kv.key());
                let rel = k.strip_prefix(&full).unwrap_or(&k).trim_start_matches('/');
                (
                    rel.to_string(),
                    String::from_utf8_lossy(kv.value()).into_owned(),
                )
            })
            .collect())
    }

    pub async fn put(&self, key: &str, value: &str) -> anyhow::Result<()> {
        self.client.clone().put(self.full(key), value, None).await?;
        Ok(())
    }

    /// Writes a JSON document as a tree of keys, like the original's `etcd put-json`:
    /// objects become key paths, scalars become values (strings unquoted).
    pub async fn put_json(&self, key: &str, value: &serde_json::Value) -> anyhow::Result<()> {
        let mut flat = Vec::new();
        flatten_json(key.trim_end_matches('/'), value, &mut flat);
        let mut client = self.client.clone();
        // One etcd transaction, so readers never see half a document.
        let ops: Vec<etcd_client::TxnOp> = flat
            .iter()
            .map(|(k, v)| etcd_client::TxnOp::put(self.full(k), v.as_str(), None))
            .collect();
        for chunk in ops.chunks(100) {
            client
                .txn(etcd_client::Txn::new().and_then(chunk.to_vec()))
                .await?;
        }
        Ok(())
    }

    pub async fn delete(&self, key: &str, prefix: bool) -> anyhow::Result<i64> {
        let opts = prefix.then(|| etcd_client::DeleteOptions::new().with_prefix());
        let resp = self.client.clone().delete(self.full(key), opts).await?;
        Ok(resp.deleted())
    }

    pub fn client(&self) -> Client {
        self.client.clone()
    }

    pub fn prefix(&self) -> &str {
        &self.prefix
    }
}

pub fn flatten_json(prefix: &str, value: &serde_json::Value, out: &mut Vec<(String, String)>) {
    match value {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else if k.is_empty() {
                    prefix.to_string()
                } else {
                    format!("{prefix}/{k}")
                };
                flatten_json(&key, v, out);
            }
        }
        serde_json::Value::String(s) => out.push((prefix.to_string(), s.clone())),
        serde_json::Value::Null => {}
        other => out.push((prefix.to_string(), other.to_string())),
    }
}
