//! Logging set-up shared by every subcommand.

use tracing_subscriber::EnvFilter;

use crate::config::LoggingConfig;

/// Installs the global subscriber once; later calls are no-ops (tests call it repeatedly).
pub fn init(cfg: &LoggingConfig) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(&cfg.level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let _ = if cfg.format == "json" {
        builder.json().try_init()
    } else {
        builder.try_init()
    };
}
