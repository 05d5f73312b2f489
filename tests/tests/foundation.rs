//! Foundation (issue 3): schema, transaction layer, etcd, fixtures, keypairs, config.

use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bai_core::db::{lock_scaling_group, try_lock_scaling_group, RetryPolicy};
use bai_core::fixtures::Fixture;
use bai_core::{Config, Db, TxnError};
use bai_tests::{TestDb, TestEtcd};

const TABLES: &[&str] = &[
    "domains",
    "groups",
    "users",
    "association_groups_users",
    "keypair_resource_policies",
    "keypairs",
    "scaling_groups",
    "sgroups_for_domains",
    "sgroups_for_groups",
    "sgroups_for_keypairs",
    "agents",
    "kernels",
    "session_dependencies",
    "vfolders",
    "vfolder_permissions",
    "vfolder_invitations",
    "vfolder_attachment",
    "resource_presets",
    "session_templates",
    "error_logs",
];

const ENUMS: &[(&str, &[&str])] = &[
    (
        "kernelstatus",
        &[
            "PENDING",
            "SCHEDULED",
            "PREPARING",
            "BUILDING",
            "PULLING",
            "RUNNING",
            "RESTARTING",
            "RESIZING",
            "SUSPENDED",
            "TERMINATING",
            "TERMINATED",
            "ERROR",
            "CANCELLED",
        ],
    ),
    ("sessiontypes", &["INTERACTIVE", "BATCH"]),
    ("sessionresult", &["UNDEFINED", "SUCCESS", "FAILURE"]),
    (
        "agentstatus",
        &["ALIVE", "LOST", "RESTARTING", "TERMINATED"],
    ),
    ("userrole", &["superadmin", "admin", "user", "monitor"]),
    (
        "userstatus",
        &["active", "inactive", "deleted", "before-verification"],
    ),
    ("vfolderusagemode", &["general", "model", "data"]),
    ("vfolderpermission", &["ro", "rw", "wd"]),
    ("vfolderownershiptype", &["user", "group"]),
    (
        "vfolderinvitationstate",
        &["pending", "canceled", "accepted", "rejected"],
    ),
    ("defaultforunspecified", &["LIMITED", "UNLIMITED"]),
    ("templatetype", &["TASK", "CLUSTER"]),
    ("errorlog_severity", &["critical", "error", "warning"]),
];

#[tokio::test]
async fn migrations_create_every_table_enum_and_index() {
    let t = TestDb::empty().await;
    assert!(t.db.schema_versions().await.unwrap().is_empty());
    t.db.migrate().await.unwrap();
    // Applying again is a no-op.
    t.db.migrate().await.unwrap();
    let versions = t.db.schema_versions().await.unwrap();
    assert_eq!(versions.len(), bai_core::db::MIGRATOR.iter().count());
    assert!(versions.iter().all(|(_, _, ok)| *ok));

    for table in TABLES {
        let exists: bool = sqlx::query_scalar("SELECT to_regclass($1) IS NOT NULL")
            .bind(format!("public.{table}"))
            .fetch_one(t.db.pool())
            .await
            .unwrap();
        assert!(exists, "table {table} is missing");
    }
    for (name, labels) in ENUMS {
        let got: Vec<String> = sqlx::query_scalar(
            "SELECT e.enumlabel::text FROM pg_enum e JOIN pg_type t ON t.oid = e.enumtypid \
             WHERE t.typname = $1 ORDER BY e.enumsortorder",
        )
        .bind(name)
        .fetch_all(t.db.pool())
        .await
        .unwrap();
        assert_eq!(&got, labels, "enum {name}");
    }
    let idx: String = sqlx::query_scalar(
        "SELECT indexdef FROM pg_indexes WHERE indexname = 'ix_kernels_unique_sess_token'",
    )
    .fetch_one(t.db.pool())
    .await
    .unwrap();
    assert!(
        idx.contains("UNIQUE") && idx.contains("access_key") && idx.contains("session_name"),
        "{idx}"
    );
    assert!(
        idx.contains("TERMINATED") && idx.contains("CANCELLED") && idx.contains("main"),
        "{idx}"
    );
}

/// Two transactions that each read both rows and write one of them form a write skew that
/// SERIALIZABLE must reject; the helper retries the loser and both take effect once.
#[tokio::test]
async fn serialization_conflict_is_retried_and_both_succeed_once() {
    let t = TestDb::new().await;
    sqlx::query("CREATE TABLE skew (id int PRIMARY KEY, v int NOT NULL)")
        .execute(t.db.pool())
        .await
        .unwrap();
    sqlx::query("INSERT INTO skew VALUES (1, 0), (2, 0)")
        .execute(t.db.pool())
        .await
        .unwrap();
    let barrier = Arc::new(tokio::sync::Barrier::new(2));
    let attempts = Arc::new(AtomicU32::new(0));
    let run = |row: i32| {
        let db = t.db.clone();
        let barrier = barrier.clone();
        let attempts = attempts.clone();
        let first = Arc::new(AtomicU32::new(0));
        async move {
            db.transact(move |txn| {
                let barrier = barrier.clone();
                let attempts = attempts.clone();
                let first = first.clone();
                Box::pin(async move {
                    attempts.fetch_add(1, Ordering::SeqCst);
                    let _sum: i64 = sqlx::query_scalar("SELECT sum(v) FROM skew")
                        .fetch_one(&mut **txn)
                        .await?;
                    // Only the first attempt of each side waits, so both read before either
                    // writes; retries run alone.
                    if first.fetch_add(1, Ordering::SeqCst) == 0 {
                        barrier.wait().await;
                    }
                    sqlx::query("UPDATE skew SET v = v + 1 WHERE id = $1")
                        .bind(row)
                        .execute(&mut **txn)
                        .await?;
                    Ok(())
                })
            })
            .await
        }
    };
    let (a, b) = tokio::join!(run(1), run(2));
    a.unwrap();
    b.unwrap();
    let rows: Vec<(i32, i32)> = sqlx::query_as("SELECT id, v FROM skew ORDER BY id")
        .fetch_all(t.db.pool())
        .await
        .unwrap();
    assert_eq!(
        rows,
        vec![(1, 1), (2, 1)],
        "each transaction took effect exactly once"
    );
    assert!(
        attempts.load(Ordering::SeqCst) >= 3,
        "one side must have been retried"
    );
    assert!(t.db.retries_performed() >= 1);
}

#[tokio::test]
async fn deadlock_is_retried_and_exhaustion_is_a_clear_error() {
    let t = TestDb::new().await;
    // 40P01 once, then success.
    let n = Arc::new(AtomicU32::new(0));
    let n2 = n.clone();
    let v: i32 = t
        .db
        .transact(move |txn| {
            let n = n2.clone();
            Box::pin(async move {
                if n.fetch_add(1, Ordering::SeqCst) == 0 {
                    sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'synthetic' USING ERRCODE = 'deadlock_detected'; END $$")
                        .execute(&mut **txn)
                        .await?;
                }
                Ok(7)
            })
        })
        .await
        .unwrap();
    assert_eq!(v, 7);
    assert_eq!(n.load(Ordering::SeqCst), 2);

    // Always 40001: bounded attempts, then RetriesExhausted.
    let db = t.db.with_policy(RetryPolicy {
        max_attempts: 3,
        max_elapsed: Duration::from_secs(5),
        initial_interval: Duration::from_millis(1),
    });
    let tries = Arc::new(AtomicU32::new(0));
    let tries2 = tries.clone();
    let err = db
        .transact(move |txn| {
            let tries = tries2.clone();
            Box::pin(async move {
                tries.fetch_add(1, Ordering::SeqCst);
                sqlx::query("DO $$ BEGIN RAISE EXCEPTION 'synthetic' USING ERRCODE = 'serialization_failure'; END $$")
                    .execute(&mut **txn)
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert_eq!(tries.load(Ordering::SeqCst), 3);
    match &err {
        TxnError::RetriesExhausted { attempts, .. } => assert_eq!(*attempts, 3),
        other => panic!("unexpected error {other:?}"),
    }
    assert!(
        err.to_string()
            .contains("could not be serialized after 3 attempts"),
        "{err}"
    );
    assert!(err.is_transient());

    // Other errors are not retried.
    let once = Arc::new(AtomicU32::new(0));
    let once2 = once.clone();
    let err =
        t.db.transact(move |txn| {
            let once = once2.clone();
            Box::pin(async move {
                once.fetch_add(1, Ordering::SeqCst);
                sqlx::query("SELECT * FROM no_such_table")
                    .execute(&mut **txn)
                    .await?;
                Ok(())
            })
        })
        .await
        .unwrap_err();
    assert_eq!(once.load(Ordering::SeqCst), 1);
    assert!(matches!(err, TxnError::Database(_)), "{err:?}");
}

#[tokio::test]
async fn writes_inside_a_readonly_transaction_fail() {
    let t = TestDb::new().await;
    let mut tx = t.db.begin_readonly().await.unwrap();
    let n: i64 = sqlx::query_scalar("SELECT count(*) FROM domains")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(n, 1);
    let err = sqlx::query("INSERT INTO domains (name) VALUES ('x')")
        .execute(&mut *tx)
        .await
        .unwrap_err();
    let code = err
        .as_database_error()
        .and_then(|d| d.code())
        .map(|c| c.to_string());
    assert_eq!(code.as_deref(), Some("25006"), "read_only_sql_transaction");
}

#[tokio::test]
async fn excessive_transactions_warning_fires_above_threshold() {
    let t = TestDb::new().await;
    let mut cfg = t.config.db.clone();
    cfg.txn_concurrency_threshold = 2;
    let db = Db::from_pool(t.db.pool().clone(), &cfg);
    let a = db.begin().await.unwrap();
    let b = db.begin().await.unwrap();
    assert_eq!(
        db.watcher().warnings_emitted(),
        0,
        "at the threshold: no warning"
    );
    let c = db.begin().await.unwrap();
    assert_eq!(
        db.watcher().warnings_emitted(),
        1,
        "above the threshold: one warning"
    );
    assert_eq!(db.watcher().open(bai_core::db::TxnKind::Generic), 3);
    drop((a, b, c));
    assert_eq!(
        db.watcher().open(bai_core::db::TxnKind::Generic),
        0,
        "guards release on drop"
    );
    // Read-only transactions are counted separately.
    let r: Vec<_> = futures::future::join_all((0..3).map(|_| db.begin_readonly())).await;
    assert_eq!(db.watcher().warnings_emitted(), 2);
    drop(r);
}

#[tokio::test]
async fn scaling_group_locks_are_independent_per_group() {
    let t = TestDb::new().await;
    let mut a = t.db.begin().await.unwrap();
    lock_scaling_group(&mut a, "group-a").await.unwrap();
    let mut b = t.db.begin().await.unwrap();
    assert!(
        try_lock_scaling_group(&mut b, "group-b").await.unwrap(),
        "another group is free"
    );
    let mut c = t.db.begin().await.unwrap();
    assert!(
        !try_lock_scaling_group(&mut c, "group-a").await.unwrap(),
        "the same group is held"
    );
    // Blocking acquisition waits for the holder's commit.
    let db = t.db.clone();
    let waiter = tokio::spawn(async move {
        let mut d = db.begin().await.unwrap();
        lock_scaling_group(&mut d, "group-a").await.unwrap();
        d.commit().await.unwrap();
    });
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(!waiter.is_finished(), "must wait while group-a is locked");
    a.commit().await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), waiter)
        .await
        .unwrap()
        .unwrap();
    drop((b, c));
}

#[tokio::test]
async fn etcd_round_trip() {
    let t = TestEtcd::new().await;
    let e = &t.etcd;
    assert_eq!(e.get("config/x").await.unwrap(), None);
    e.put("config/x", "1").await.unwrap();
    assert_eq!(e.get("config/x").await.unwrap().as_deref(), Some("1"));
    e.put_json(
        "volumes",
        &serde_json::json!({"default_host": "local:volume1", "proxies": {"local": {"secret": "s"}}, "n": 3}),
    )
    .await
    .unwrap();
    let tree = e.get_prefix("volumes").await.unwrap();
    assert_eq!(
        tree.get("default_host").map(String::as_str),
        Some("local:volume1")
    );
    assert_eq!(
        tree.get("proxies/local/secret").map(String::as_str),
        Some("s")
    );
    assert_eq!(tree.get("n").map(String::as_str), Some("3"));
    assert_eq!(e.delete("volumes", true).await.unwrap(), 3);
    assert!(e.get_prefix("volumes").await.unwrap().is_empty());
}

async fn row_counts(db: &Db) -> Vec<(String, i64)> {
    let mut out = Vec::new();
    for table in TABLES {
        let n: i64 = sqlx::query_scalar(&format!("SELECT count(*) FROM \"{table}\""))
            .fetch_one(db.pool())
            .await
            .unwrap();
        out.push((table.to_string(), n));
    }
    out
}

#[tokio::test]
async fn example_fixture_loads_once_and_reloading_is_harmless() {
    let t = TestDb::empty().await;
    t.db.migrate().await.unwrap();
    let etcd = TestEtcd::new().await;
    let fx = Fixture::read(&bai_tests::workspace_root().join("ops/fixtures/example.json")).unwrap();
    let first = fx.populate(&t.db, Some(&etcd.etcd)).await.unwrap();
    let counts = row_counts(&t.db).await;
    let second = fx.populate(&t.db, Some(&etcd.etcd)).await.unwrap();
    assert_eq!(row_counts(&t.db).await, counts);
    assert!(first
        .tables
        .iter()
        .all(|(_, rows, new)| *rows as u64 == *new));
    assert!(second.tables.iter().all(|(_, _, new)| *new == 0));

    // The original's example data, exactly.
    let kps: Vec<(String, bool, String, String)> = sqlx::query_as(
        "SELECT k.access_key, k.is_admin, u.role::text, u.email FROM keypairs k \
         JOIN users u ON u.uuid = k.\"user\" ORDER BY k.access_key",
    )
    .fetch_all(t.db.pool())
    .await
    .unwrap();
    assert_eq!(
        kps,
        vec![
            (
                "AKIAHUKCHDEZGEXAMPLE".into(),
                true,
                "admin".into(),
                "domain-admin@lablup.com".into()
            ),
            (
                "AKIAIOSFODNN7EXAMPLE".into(),
                true,
                "superadmin".into(),
                "admin@lablup.com".into()
            ),
            (
                "AKIANABBDUSEREXAMPLE".into(),
                false,
                "user".into(),
                "user@lablup.com".into()
            ),
            (
                "AKIANAMONITOREXAMPLE".into(),
                false,
                "monitor".into(),
                "monitor@lablup.com".into()
            ),
        ]
    );
    let (pw, dotfiles): (String, Vec<u8>) = sqlx::query_as(
        "SELECT u.password, d.dotfiles FROM users u, domains d WHERE u.email = 'admin@lablup.com'",
    )
    .fetch_one(t.db.pool())
    .await
    .unwrap();
    assert!(pw.starts_with("$2b$12$"), "bcrypt as the original");
    assert!(bai_core::keypair::verify_password("wJalrXUt", &pw));
    assert_eq!(dotfiles, vec![0x90], "app default: msgpack empty list");
    let presets: i64 = sqlx::query_scalar("SELECT count(*) FROM resource_presets")
        .fetch_one(t.db.pool())
        .await
        .unwrap();
    assert_eq!(presets, 6);
    assert_eq!(
        etcd.etcd
            .get("images/_aliases/python")
            .await
            .unwrap()
            .as_deref(),
        Some("cr.backend.ai/stable/python:3.9-ubuntu20.04")
    );
    assert_eq!(
        etcd.etcd
            .get("volumes/default_host")
            .await
            .unwrap()
            .as_deref(),
        Some("local:volume1")
    );
}

#[tokio::test]
async fn bad_fixtures_are_rejected_with_the_field_and_nothing_is_half_loaded() {
    let t = TestDb::empty().await;
    t.db.migrate().await.unwrap();

    let err = Fixture::parse("bad.json", "{not json").err().unwrap();
    assert!(
        err.to_string().contains("malformed fixture bad.json"),
        "{err}"
    );

    let err = Fixture::parse("bad.json", r#"{"nope": []}"#).err().unwrap();
    assert!(
        err.to_string().contains("bad.json: nope: unknown table"),
        "{err}"
    );

    let fx = Fixture::parse(
        "cols.json",
        r#"{"domains": [{"name": "d1", "colour": "red"}]}"#,
    )
    .unwrap();
    let err = fx.populate(&t.db, None).await.unwrap_err();
    assert!(
        err.to_string()
            .contains("domains[0].colour: no such column"),
        "{err}"
    );

    // A valid domain row followed by a user with an impossible role: the whole load rolls back.
    let fx = Fixture::parse(
        "partial.json",
        r#"{"domains": [{"name": "d1"}],
            "users": [{"email": "x@y", "role": "wizard", "domain_name": "d1"}]}"#,
    )
    .unwrap();
    let err = fx.populate(&t.db, None).await.unwrap_err();
    assert!(
        err.to_string().contains("partial.json") && err.to_string().contains("users"),
        "{err}"
    );
    let domains: i64 = sqlx::query_scalar("SELECT count(*) FROM domains")
        .fetch_one(t.db.pool())
        .await
        .unwrap();
    assert_eq!(domains, 0, "nothing half-loaded");
}

#[test]
fn bad_config_values_name_the_field() {
    let dir = std::env::temp_dir().join(format!("bai-cfg-{}", uuid::Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let p = dir.join("manager.toml");

    std::fs::write(&p, "[manager]\nheartbeat-timeout = 0.5\n").unwrap();
    let err = Config::load(Some(&p)).unwrap_err().to_string();
    assert!(err.contains("manager.heartbeat-timeout"), "{err}");

    std::fs::write(&p, "[db]\nmax-connections = \"many\"\n").unwrap();
    let err = Config::load(Some(&p)).unwrap_err().to_string();
    assert!(
        err.contains("manager.toml") && err.contains("max-connections"),
        "{err}"
    );

    std::fs::write(&p, "[db]\nno-such-key = 1\n").unwrap();
    let err = Config::load(Some(&p)).unwrap_err().to_string();
    assert!(err.contains("no-such-key"), "{err}");

    let err = Config::load(Some(&dir.join("missing.toml")))
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("missing.toml") && err.contains("does not exist"),
        "{err}"
    );

    std::fs::write(&p, "[db]\nname = \"x\"\n").unwrap();
    assert_eq!(Config::load(Some(&p)).unwrap().db.name, "x");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn old_postgres_is_refused_and_new_accepted() {
    let err = bai_core::db::check_pg_version("100023", "PostgreSQL 10.23").unwrap_err();
    assert!(
        err.to_string()
            .contains("PostgreSQL 10.23 is not supported"),
        "{err}"
    );
    assert!(err.to_string().contains("11 or newer"), "{err}");
    bai_core::db::check_pg_version("110000", "PostgreSQL 11.0").unwrap();
    bai_core::db::check_pg_version("150020", "PostgreSQL 15.20").unwrap();
}

#[test]
fn generated_keypairs_match_the_formats() {
    let mut seen = std::collections::HashSet::new();
    for _ in 0..1000 {
        let (ak, sk) = bai_core::keypair::generate_keypair();
        assert!(bai_core::keypair::is_valid_access_key(&ak), "{ak}");
        assert!(bai_core::keypair::is_valid_secret_key(&sk), "{sk}");
        assert!(seen.insert(ak));
    }
}

#[test]
#[allow(clippy::result_large_err)] // figment's Jail API returns its own large error type
fn environment_overrides_use_the_section_separator_only() {
    // `BAI_DB_NAME` belongs to ops/setup.sh; it must neither fail nor change the config.
    figment::Jail::expect_with(|jail| {
        jail.set_env("BAI_DB_NAME", "ignored");
        jail.set_env("BAI_AGENT_ID", "i-x");
        jail.set_env("BAI_DB__NAME", "from_env");
        jail.set_env("BAI_MANAGER__SERVICE_ADDR", "127.0.0.1:9999");
        let cfg = Config::load(Some(&bai_tests::workspace_root().join("ops/manager.toml")))
            .map_err(|e| e.to_string())?;
        assert_eq!(cfg.db.name, "from_env");
        assert_eq!(cfg.manager.service_addr, "127.0.0.1:9999");
        Ok(())
    });
}
