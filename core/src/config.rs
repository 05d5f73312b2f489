//! Manager configuration: `manager.toml` plus environment overrides.
//!
//! Sources, lowest priority first: built-in defaults, the TOML file, the original's
//! `BACKEND_*` variables (for drop-in compatibility), then `BAI_<SECTION>__<KEY>` variables
//! (e.g. `BAI_DB__NAME=backend`). Keys are kebab-case as in the original `manager.toml`.

use std::path::{Path, PathBuf};

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

use crate::error::ConfigError;

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields)]
pub struct Config {
    #[serde(default)]
    pub etcd: EtcdConfig,
    #[serde(default)]
    pub db: DbConfig,
    #[serde(default)]
    pub redis: RedisConfig,
    #[serde(default)]
    pub nats: NatsConfig,
    #[serde(default)]
    pub rabbitmq: RabbitConfig,
    #[serde(default)]
    pub manager: ManagerConfig,
    #[serde(default)]
    pub logging: LoggingConfig,
    /// The storage proxy (`backend-ai storage start-server`); its section and keys are
    /// snake_case (`[storage_proxy]`, `manager_addr`) as agreed in the storage contract.
    #[serde(default, rename = "storage_proxy")]
    pub storage_proxy: StorageProxyConfig,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct EtcdConfig {
    /// Every key lives under `/sorna/{namespace}/` as in the original.
    pub namespace: String,
    /// `host:port`, or a comma-separated list of cluster members.
    pub addr: String,
    pub user: Option<String>,
    pub password: Option<String>,
}

impl Default for EtcdConfig {
    fn default() -> Self {
        Self {
            namespace: "local".into(),
            addr: "127.0.0.1:2379".into(),
            user: None,
            password: None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct DbConfig {
    #[serde(rename = "type")]
    pub kind: String,
    /// `host:port`, or the directory of the server's Unix socket (e.g. `/var/run/postgresql`).
    pub addr: String,
    pub name: String,
    pub user: String,
    pub password: Option<String>,
    pub max_connections: u32,
    /// Attempts (including the first) before a serialization failure becomes an error.
    pub txn_retry_max_attempts: u32,
    /// Upper bound on the total time spent retrying one transaction.
    pub txn_retry_max_elapsed_ms: u64,
    pub txn_retry_initial_ms: u64,
    /// Warn when more transactions than this are open at once in one process (21.03.6 #435).
    pub txn_concurrency_threshold: usize,
}

impl Default for DbConfig {
    fn default() -> Self {
        Self {
            kind: "postgresql".into(),
            addr: "127.0.0.1:5432".into(),
            name: "backend".into(),
            user: "postgres".into(),
            password: None,
            max_connections: 32,
            txn_retry_max_attempts: 10,
            txn_retry_max_elapsed_ms: 10_000,
            txn_retry_initial_ms: 5,
            txn_concurrency_threshold: 16,
        }
    }
}

impl DbConfig {
    pub fn url(&self) -> String {
        let auth = match &self.password {
            Some(p) if !p.is_empty() => format!("{}:{}", self.user, p),
            _ => self.user.clone(),
        };
        format!("postgres://{auth}@{}/{}", self.addr, self.name)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RedisConfig {
    pub addr: String,
    pub password: Option<String>,
    pub db: u8,
    pub pool_size: u32,
}

impl Default for RedisConfig {
    fn default() -> Self {
        Self {
            addr: "127.0.0.1:6379".into(),
            password: None,
            db: 0,
            pool_size: 16,
        }
    }
}

impl RedisConfig {
    pub fn url(&self) -> String {
        match &self.password {
            Some(p) if !p.is_empty() => format!("redis://:{p}@{}/{}", self.addr, self.db),
            _ => format!("redis://{}/{}", self.addr, self.db),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct NatsConfig {
    pub url: String,
    /// Prefix for stream names and subjects, so several deployments (or tests) can share
    /// one NATS server without seeing each other's messages.
    pub prefix: String,
    /// Stored replicas of each stream (1 on a single server, 3 in a cluster).
    pub replicas: usize,
}

impl Default for NatsConfig {
    fn default() -> Self {
        Self {
            url: "nats://127.0.0.1:4222".into(),
            prefix: "bai".into(),
            replicas: 1,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct RabbitConfig {
    pub url: String,
    /// Prefix of the agent protocol's queues and exchanges (`{prefix}.agent.*`), so several
    /// deployments (or tests) can share one broker.
    pub prefix: String,
}

impl Default for RabbitConfig {
    fn default() -> Self {
        Self {
            url: "amqp://guest:guest@127.0.0.1:5672/%2f".into(),
            prefix: "bai".into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct ManagerConfig {
    pub id: String,
    pub service_addr: String,
    /// Seconds without a heartbeat before an agent is marked LOST (schema default 5.0, min 1.0).
    pub heartbeat_timeout: f64,
    pub secret: Option<String>,
    pub hide_agents: bool,
    pub max_wsmsg_size: usize,
    /// How long the API waits for a worker's reply before answering "accepted".
    pub command_timeout_ms: u64,
    /// Worker: commands handled concurrently per worker process.
    pub worker_concurrency: usize,
    pub pid_file: Option<PathBuf>,
    pub disabled_plugins: Vec<String>,
    /// PRE_AUTH_MIDDLEWARE hook (21.03 #420): `none`, or `cookie-sso` (session cookies
    /// issued by `POST /server/login`, signed with `secret`).
    pub pre_auth_hook: PreAuthHookKind,
}

/// Which pre-auth hook the API runs before HMAC verification.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum PreAuthHookKind {
    #[default]
    None,
    CookieSso,
}

impl Default for ManagerConfig {
    fn default() -> Self {
        Self {
            id: "i-local".into(),
            service_addr: "0.0.0.0:8081".into(),
            heartbeat_timeout: 5.0,
            secret: None,
            hide_agents: false,
            max_wsmsg_size: 16 * 1024 * 1024,
            command_timeout_ms: 10_000,
            worker_concurrency: 64,
            pid_file: None,
            disabled_plugins: Vec::new(),
            pre_auth_hook: PreAuthHookKind::None,
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(rename_all = "kebab-case", deny_unknown_fields, default)]
pub struct LoggingConfig {
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LoggingConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// `[storage_proxy]`: the storage proxy's two listeners, secrets and volumes.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields, default)]
pub struct StorageProxyConfig {
    /// Proxy name; vfolder hosts are `<name>:<volume>`.
    pub name: String,
    /// Manager-facing API (shared-secret header auth).
    pub manager_addr: String,
    /// Client-facing API (tus upload, token download).
    pub client_addr: String,
    /// How clients reach `client_addr` (registered in etcd as `client_api`).
    pub client_public_url: String,
    /// URL the manager uses for `manager_addr` (registered as `manager_api`); derived from
    /// `manager_addr` when unset.
    pub manager_public_url: Option<String>,
    /// Shared with the manager, sent as `X-BackendAI-Storage-Auth-Token`.
    pub secret: String,
    /// Signs the upload/download tokens (HS256).
    pub jwt_secret: String,
    /// Lifetime of upload/download tokens in seconds (the original's `session-expire`, 1 day).
    pub token_ttl_secs: u64,
    /// Register in etcd on start (`volumes/proxies/<name>/...`, `volumes/default_host`).
    pub register_in_etcd: bool,
    pub volumes: std::collections::BTreeMap<String, StorageVolumeConfig>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(deny_unknown_fields)]
pub struct StorageVolumeConfig {
    /// Only `vfs` (a local directory) is implemented.
    pub backend: String,
    pub path: PathBuf,
}

impl Default for StorageProxyConfig {
    fn default() -> Self {
        let mut volumes = std::collections::BTreeMap::new();
        volumes.insert(
            "volume1".to_string(),
            StorageVolumeConfig {
                backend: "vfs".into(),
                path: PathBuf::from("/var/lib/backend.ai/vfroot/volume1"),
            },
        );
        Self {
            name: "local".into(),
            manager_addr: "127.0.0.1:6021".into(),
            client_addr: "127.0.0.1:6022".into(),
            client_public_url: "http://127.0.0.1:6022".into(),
            manager_public_url: None,
            secret: "some-secret-shared-with-manager".into(),
            jwt_secret: "some-secret-for-jwt".into(),
            token_ttl_secs: 86_400,
            register_in_etcd: true,
            volumes,
        }
    }
}

/// The original's environment variables and the config keys they override.
const LEGACY_ENV: &[(&str, &str)] = &[
    ("BACKEND_NAMESPACE", "etcd.namespace"),
    ("BACKEND_ETCD_ADDR", "etcd.addr"),
    ("BACKEND_ETCD_USER", "etcd.user"),
    ("BACKEND_ETCD_PASSWORD", "etcd.password"),
    ("BACKEND_DB_ADDR", "db.addr"),
    ("BACKEND_DB_NAME", "db.name"),
    ("BACKEND_DB_USER", "db.user"),
    ("BACKEND_DB_PASSWORD", "db.password"),
    ("BACKEND_PID_FILE", "manager.pid-file"),
];

impl Config {
    /// Loads the configuration. With `path = None` it looks for `./manager.toml`, then
    /// `/etc/backend.ai/manager.toml`, and runs on defaults when neither exists.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let file = match path {
            Some(p) if !p.exists() => return Err(ConfigError::NotFound(p.to_path_buf())),
            Some(p) => Some(p.to_path_buf()),
            None => ["manager.toml", "/etc/backend.ai/manager.toml"]
                .iter()
                .map(PathBuf::from)
                .find(|p| p.exists()),
        };
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(f) = &file {
            fig = fig.merge(Toml::file_exact(f));
        }
        for (var, key) in LEGACY_ENV {
            if let Ok(v) = std::env::var(var) {
                fig = fig.merge(Serialized::global(key, v));
            }
        }
        fig = fig.merge(
            // Only `BAI_<SECTION>__<KEY>` variables are configuration; other `BAI_*`
            // variables belong to the ops scripts and the agent CLI.
            Env::prefixed("BAI_")
                .filter(|k| k.as_str().contains("__"))
                .split("__")
                .map(|k| {
                    // `[storage_proxy]` keeps snake_case keys (storage contract).
                    if k.as_str()
                        .to_ascii_lowercase()
                        .starts_with("storage_proxy.")
                    {
                        k.as_str().to_string().into()
                    } else {
                        k.as_str().replace('_', "-").into()
                    }
                }),
        );
        let cfg: Config = fig.extract().map_err(|e| ConfigError::Invalid {
            source_name: file
                .as_ref()
                .map(|p| p.display().to_string())
                .unwrap_or_else(|| "defaults/environment".into()),
            message: e.to_string(),
        })?;
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field: &str, msg: &str| ConfigError::BadValue {
            field: field.to_string(),
            message: msg.to_string(),
        };
        if self.db.kind != "postgresql" {
            return Err(bad("db.type", "only \"postgresql\" is supported"));
        }
        if self.manager.heartbeat_timeout < 1.0 {
            return Err(bad("manager.heartbeat-timeout", "must be >= 1.0 seconds"));
        }
        if self.db.txn_retry_max_attempts == 0 {
            return Err(bad("db.txn-retry-max-attempts", "must be >= 1"));
        }
        if self.manager.pre_auth_hook == PreAuthHookKind::CookieSso
            && self.manager.secret.as_deref().is_none_or(str::is_empty)
        {
            return Err(bad(
                "manager.pre-auth-hook",
                "\"cookie-sso\" needs manager.secret to sign session cookies",
            ));
        }
        if self.manager.worker_concurrency == 0 {
            return Err(bad("manager.worker-concurrency", "must be >= 1"));
        }
        for (name, vol) in &self.storage_proxy.volumes {
            if vol.backend != "vfs" {
                return Err(bad(
                    &format!("storage_proxy.volumes.{name}.backend"),
                    "only \"vfs\" is supported",
                ));
            }
        }
        if !matches!(self.logging.format.as_str(), "text" | "json") {
            return Err(bad("logging.format", "must be \"text\" or \"json\""));
        }
        self.manager
            .service_addr
            .parse::<std::net::SocketAddr>()
            .map_err(|e| bad("manager.service-addr", &e.to_string()))?;
        Ok(())
    }
}
