//! Throwaway databases for benchmarks that need their own schema: created and migrated
//! on start, dropped (forcibly, in case a phase left connections behind) at the end.

use std::time::Duration;

use bai_core::{Config, Db};

fn admin_url(cfg: &Config) -> String {
    let mut admin_cfg = cfg.db.clone();
    admin_cfg.name = "postgres".into();
    admin_cfg.url()
}

/// Creates database `name` on the configured server, connects and migrates it.
pub async fn create_migrated_db(cfg: &Config, name: &str) -> anyhow::Result<Db> {
    let admin = sqlx::PgPool::connect(&admin_url(cfg)).await?;
    sqlx::query(&format!("CREATE DATABASE \"{name}\""))
        .execute(&admin)
        .await?;
    admin.close().await;
    let mut c = cfg.db.clone();
    c.name = name.into();
    let db = Db::connect(&c, Duration::from_secs(10)).await?;
    db.migrate().await?;
    Ok(db)
}

/// Closes `db` and drops its database; best effort (a benchmark's result matters more).
pub async fn drop_db(cfg: &Config, db: Db, name: &str) {
    db.pool().close().await;
    if let Ok(admin) = sqlx::PgPool::connect(&admin_url(cfg)).await {
        let _ = sqlx::query(&format!("DROP DATABASE IF EXISTS \"{name}\" WITH (FORCE)"))
            .execute(&admin)
            .await;
        admin.close().await;
    }
}
