//! Agents over RabbitMQ, end to end against real RabbitMQ, PostgreSQL, Redis and NATS:
//! registration by heartbeat (one row write, not one per heartbeat), kernels as local
//! processes with the expected environment, execute, destroy and exit codes, lost-agent
//! detection, RPC deadlines and malformed messages.

use std::collections::BTreeMap;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use lapin::options::BasicPublishOptions;
use lapin::BasicProperties;
use serde_json::{json, Value};
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_agent::{Agent, AgentConfig, AgentHandle, SimConfig, SimFleet};
use bai_agent_proto::*;
use bai_core::redis::{redis, RedisPool};
use bai_events::BusOptions;
use bai_tests::{base_config, eventually, init_tracing, TestBus, TestDb, TestRabbit, TIMEOUT};
use bai_workers::agents::{AgentIngestOptions, AgentsRuntime};
use bai_workers::{WorkerContext, WorkerMetrics};

const ACCESS_KEY: &str = "AKIAIOSFODNN7EXAMPLE";

/// Services, the ingest consumer and the liveness monitor of one test.
struct Harness {
    db: TestDb,
    bus: TestBus,
    rabbit: TestRabbit,
    redis: RedisPool,
    rt: Arc<AgentsRuntime>,
    stop: CancellationToken,
    work_root: std::path::PathBuf,
}

impl Harness {
    async fn start(heartbeat_timeout: Duration) -> Self {
        init_tracing();
        let db = TestDb::new().await;
        let bus = TestBus::new(BusOptions::default()).await;
        let rabbit = TestRabbit::new();
        let redis = bai_core::redis::connect(&base_config().redis, TIMEOUT)
            .await
            .expect("redis");
        let ctx = Arc::new(WorkerContext {
            db: db.db.clone(),
            bus: bus.bus.clone(),
            etcd: None,
            redis: Some(redis.clone()),
            agent_rpc: None,
            metrics: Arc::new(WorkerMetrics::default()),
        });
        let mut opts = AgentIngestOptions::from_config(&base_config());
        opts.amqp_url = rabbit.url.clone();
        opts.prefix = rabbit.prefix.clone();
        opts.redis_prefix = format!("{}:", rabbit.prefix);
        opts.heartbeat_timeout = heartbeat_timeout;
        opts.liveness_period = Duration::from_millis(200);
        let rt = AgentsRuntime::new(ctx, opts).expect("agents runtime");
        let stop = CancellationToken::new();
        tokio::spawn(bai_workers::agents::run(rt.clone(), stop.clone()));
        // Wait until the ingest has declared the topology (agents may publish at once).
        let conn = rabbit.connect().await;
        let names = rabbit.names();
        eventually(TIMEOUT, || async {
            amqp::queue_counts(&conn, &names.lifecycle_queue())
                .await
                .ok()
                .flatten()
                .filter(|(_, consumers)| *consumers > 0)
        })
        .await
        .expect("ingest consumer up");
        let _ = conn.close(200, "bye").await;
        let work_root =
            std::env::temp_dir().join(format!("bai-agent-test-{}", Uuid::new_v4().simple()));
        Self {
            db,
            bus,
            rabbit,
            redis,
            rt,
            stop,
            work_root,
        }
    }

    fn agent_config(&self, id: &str) -> AgentConfig {
        self.rabbit.track_agent(id);
        let mut cfg = AgentConfig::new(
            id,
            &self.rabbit.url,
            &self.rabbit.prefix,
            self.work_root.clone(),
        );
        cfg.heartbeat_interval = Duration::from_millis(300);
        cfg.destroy_grace = Duration::from_secs(3);
        cfg.stats_interval = Duration::from_millis(500);
        cfg.set_slot("cpu", "4").unwrap();
        cfg.set_slot("mem", "8g").unwrap();
        cfg.set_slot("cuda.device", "2").unwrap();
        cfg
    }

    async fn rpc(&self) -> AgentRpcClient {
        AgentRpcClient::connect(
            &self.rabbit.url,
            &self.rabbit.prefix,
            "test-rpc",
            RpcClientOptions::default(),
        )
        .await
        .expect("rpc client")
    }

    async fn agent_status(&self, id: &str) -> Option<String> {
        sqlx::query_scalar("SELECT status::text FROM agents WHERE id = $1")
            .bind(id)
            .fetch_optional(self.db.db.pool())
            .await
            .unwrap()
    }

    async fn wait_agent_status(&self, id: &str, status: &str, within: Duration) -> bool {
        eventually(within, || async {
            (self.agent_status(id).await.as_deref() == Some(status)).then_some(())
        })
        .await
        .is_some()
    }

    async fn kernel(&self, id: Uuid) -> (String, Option<String>, Option<Value>, bool) {
        sqlx::query_as(
            "SELECT status::text, status_info, status_data, terminated_at IS NOT NULL FROM kernels WHERE id = $1",
        )
        .bind(id)
        .fetch_one(self.db.db.pool())
        .await
        .unwrap()
    }

    async fn wait_kernel_status(
        &self,
        id: Uuid,
        status: &str,
    ) -> (String, Option<String>, Option<Value>, bool) {
        eventually(TIMEOUT, || async {
            let k = self.kernel(id).await;
            (k.0 == status).then_some(k)
        })
        .await
        .unwrap_or_else(|| panic!("kernel {id} never reached {status}"))
    }

    /// Inserts a SCHEDULED single-kernel session placed on `agent`, with its slots
    /// reserved on the agent as the scheduler would have done.
    async fn scheduled_session(&self, agent: &str, name: &str) -> Uuid {
        let sid = Uuid::new_v4();
        let slots = json!({"cpu": "1", "mem": "1073741824"});
        sqlx::query(
            "INSERT INTO kernels (id, session_id, session_name, session_type, cluster_mode, cluster_size, \
             cluster_role, cluster_idx, cluster_hostname, scaling_group, agent, domain_name, group_id, \
             user_uuid, access_key, image, registry, occupied_slots, repl_in_port, repl_out_port, \
             stdin_port, stdout_port, status, status_changed) \
             SELECT $1, $1, $2, 'INTERACTIVE', 'single-node', 1, 'main', 1, 'main1', 'default', $3, \
                    'default', g.id, u.uuid, $4, 'cr.backend.ai/stable/python:3.9-ubuntu20.04', \
                    'cr.backend.ai', $5, 0, 0, 0, 0, 'SCHEDULED', now() \
             FROM groups g, users u, keypairs k \
             WHERE g.name = 'default' AND k.access_key = $4 AND u.uuid = k.\"user\"",
        )
        .bind(sid)
        .bind(name)
        .bind(agent)
        .bind(ACCESS_KEY)
        .bind(&slots)
        .execute(self.db.db.pool())
        .await
        .unwrap();
        sqlx::query("UPDATE agents SET occupied_slots = $2 WHERE id = $1")
            .bind(agent)
            .bind(&slots)
            .execute(self.db.db.pool())
            .await
            .unwrap();
        sqlx::query("UPDATE keypairs SET concurrency_used = 1 WHERE access_key = $1")
            .bind(ACCESS_KEY)
            .execute(self.db.db.pool())
            .await
            .unwrap();
        sid
    }

    async fn occupancy(&self, agent: &str) -> (Value, i32) {
        let slots: Value = sqlx::query_scalar("SELECT occupied_slots FROM agents WHERE id = $1")
            .bind(agent)
            .fetch_one(self.db.db.pool())
            .await
            .unwrap();
        let used: i32 =
            sqlx::query_scalar("SELECT concurrency_used FROM keypairs WHERE access_key = $1")
                .bind(ACCESS_KEY)
                .fetch_one(self.db.db.pool())
                .await
                .unwrap();
        (slots, used)
    }

    async fn finish(self) {
        self.stop.cancel();
        tokio::time::sleep(Duration::from_millis(200)).await;
        let mut conn = self.redis.get().await.unwrap();
        let keys: Vec<String> = redis::cmd("KEYS")
            .arg(format!("{}:*", self.rabbit.prefix))
            .query_async(&mut *conn)
            .await
            .unwrap_or_default();
        if !keys.is_empty() {
            let _: i64 = redis::cmd("DEL")
                .arg(keys)
                .query_async(&mut *conn)
                .await
                .unwrap_or(0);
        }
        let _ = std::fs::remove_dir_all(&self.work_root);
        drop(conn);
        drop(self.rabbit);
        drop(self.bus);
        drop(self.db);
    }
}

fn create_request(
    session_id: Uuid,
    name: &str,
    image: &str,
    environ: &[(&str, &str)],
    bootstrap: Option<&str>,
) -> CreateKernels {
    CreateKernels {
        creation_id: "cr-test".into(),
        session_id,
        session_name: Some(name.into()),
        kernels: vec![KernelConfig {
            kernel_id: session_id,
            image: ImageRef {
                canonical: image.into(),
                registry: None,
                digest: None,
                labels: BTreeMap::new(),
            },
            session_type: "interactive".into(),
            cluster_role: "main".into(),
            cluster_idx: 1,
            cluster_hostname: Some("main1".into()),
            resource_slots: [
                ("cpu".to_string(), "1".to_string()),
                ("mem".to_string(), "1073741824".to_string()),
            ]
            .into(),
            resource_opts: json!({}),
            environ: environ
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            mounts: vec![],
            mount_map: json!({}),
            bootstrap_script: bootstrap.map(str::to_string),
            startup_command: None,
            internal_data: json!({}),
            preopen_ports: vec![],
            idle_timeout: None,
        }],
        cluster_info: ClusterInfo {
            mode: "single-node".into(),
            size: 1,
            replicas: [("main".to_string(), 1)].into(),
            hosts: vec!["main1".into()],
            network_name: None,
            ssh_keypair: None,
        },
    }
}

fn query(kernel_id: Uuid, code: &str) -> ExecuteParams {
    ExecuteParams {
        kernel_id,
        api_version: 6,
        run_id: None,
        mode: ExecMode::Query,
        code: code.into(),
        opts: json!({}),
        flush_timeout_ms: Some(5_000),
    }
}

async fn start_agent(h: &Harness, id: &str) -> AgentHandle {
    let handle = Agent::spawn(h.agent_config(id));
    assert!(
        h.wait_agent_status(id, "ALIVE", TIMEOUT).await,
        "agent {id} did not register"
    );
    handle
}

#[tokio::test]
async fn agent_registers_once_and_heartbeats_touch_only_redis() {
    let h = Harness::start(Duration::from_secs(5)).await;
    let id = format!("i-reg-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let agent = start_agent(&h, &id).await;

    let (slots, sg, version, plugins): (Value, String, String, Value) = sqlx::query_as(
        "SELECT available_slots, scaling_group, version, compute_plugins FROM agents WHERE id = $1",
    )
    .bind(&id)
    .fetch_one(h.db.db.pool())
    .await
    .unwrap();
    assert_eq!(
        slots,
        json!({"cpu": "4", "mem": "8589934592", "cuda.device": "2"})
    );
    assert_eq!(sg, "default");
    assert_eq!(version, bai_agent::AGENT_VERSION);
    assert!(plugins.get("cuda").is_some(), "{plugins}");

    // The row's version (xmin) must not move while heartbeats keep coming.
    let xmin = |pool: sqlx::PgPool, id: String| async move {
        sqlx::query_scalar::<_, String>("SELECT xmin::text FROM agents WHERE id = $1")
            .bind(id)
            .fetch_one(&pool)
            .await
            .unwrap()
    };
    let before = xmin(h.db.db.pool().clone(), id.clone()).await;
    let beats = h.rt.metrics.heartbeats.load(Ordering::Relaxed);
    assert!(
        eventually(TIMEOUT, || async {
            (h.rt.metrics.heartbeats.load(Ordering::Relaxed) >= beats + 8).then_some(())
        })
        .await
        .is_some(),
        "heartbeats keep arriving"
    );
    assert_eq!(
        xmin(h.db.db.pool().clone(), id.clone()).await,
        before,
        "heartbeats rewrote the agent row"
    );
    assert_eq!(
        h.rt.metrics.heartbeat_db_writes.load(Ordering::Relaxed),
        1,
        "exactly one write: the registration"
    );
    // Liveness lives in Redis.
    let mut conn = h.redis.get().await.unwrap();
    let score: Option<f64> = redis::cmd("ZSCORE")
        .arg(h.rt.keys.last_seen())
        .arg(&id)
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert!(score.is_some(), "last_seen recorded");
    drop(conn);

    // A graceful stop marks the agent TERMINATED (agent_terminated), not LOST.
    agent.stop().await.unwrap();
    assert!(h.wait_agent_status(&id, "TERMINATED", TIMEOUT).await);
    h.finish().await;
}

#[tokio::test]
async fn heartbeat_changes_revivals_and_stale_heartbeats() {
    let h = Harness::start(Duration::from_secs(30)).await;
    let conn = h.rabbit.connect().await;
    let publisher = EventPublisher::open(&conn, &h.rabbit.names())
        .await
        .unwrap();
    let id = "i-fake-1";
    let info = |cpu: &str| AgentInfo {
        ip: "10.0.0.1".into(),
        region: "local".into(),
        scaling_group: "default".into(),
        addr: "tcp://10.0.0.1:6001".into(),
        available_slots: [
            ("cpu".to_string(), cpu.to_string()),
            ("mem".to_string(), "1024".to_string()),
        ]
        .into(),
        slot_types: BTreeMap::new(),
        version: "21.03.6".into(),
        compute_plugins: json!({}),
        kernels: vec![],
    };
    let writes = |h: &Harness| h.rt.metrics.heartbeat_db_writes.load(Ordering::Relaxed);
    let beats = |h: &Harness| h.rt.metrics.heartbeats.load(Ordering::Relaxed);
    let send = |msg: AgentMessage| {
        let p = publisher.clone();
        async move { p.publish_message(&msg).await.unwrap() }
    };
    let wait_beats = |n: u64| {
        let h = &h;
        async move {
            eventually(TIMEOUT, || async { (beats(h) >= n).then_some(()) })
                .await
                .expect("heartbeats handled");
        }
    };

    for _ in 0..3 {
        send(AgentMessage::new(id, AgentEvent::Heartbeat(info("4")))).await;
    }
    wait_beats(3).await;
    assert_eq!(writes(&h), 1);
    send(AgentMessage::new(id, AgentEvent::Heartbeat(info("8")))).await;
    wait_beats(4).await;
    assert_eq!(writes(&h), 2, "a slot change is written");
    let slots: Value = sqlx::query_scalar("SELECT available_slots FROM agents WHERE id = $1")
        .bind(id)
        .fetch_one(h.db.db.pool())
        .await
        .unwrap();
    assert_eq!(slots["cpu"], "8");

    // Marked LOST (as the monitor would), a heartbeat sent *before* the mark does not
    // revive it; one sent after does.
    let old = AgentMessage::new(id, AgentEvent::Heartbeat(info("8")));
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(
        bai_workers::agents::liveness::agent_lost(&h.rt, id, "agent-lost")
            .await
            .unwrap()
    );
    let mut c = h.redis.get().await.unwrap();
    let _: i64 = redis::cmd("ZREM")
        .arg(h.rt.keys.last_seen())
        .arg(id)
        .query_async(&mut *c)
        .await
        .unwrap();
    drop(c);
    send(old).await;
    wait_beats(5).await;
    assert_eq!(
        h.agent_status(id).await.as_deref(),
        Some("LOST"),
        "a stale heartbeat revived the agent"
    );
    send(AgentMessage::new(id, AgentEvent::Heartbeat(info("8")))).await;
    assert!(h.wait_agent_status(id, "ALIVE", TIMEOUT).await, "revived");
    let lost_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT lost_at FROM agents WHERE id = $1")
            .bind(id)
            .fetch_one(h.db.db.pool())
            .await
            .unwrap();
    assert!(lost_at.is_none());

    // An unknown scaling group is refused without breaking the consumer.
    let mut bad = info("1");
    bad.scaling_group = "no-such-group".into();
    send(AgentMessage::new("i-fake-2", AgentEvent::Heartbeat(bad))).await;
    send(AgentMessage::new(
        "i-fake-3",
        AgentEvent::Heartbeat(info("1")),
    ))
    .await;
    assert!(h.wait_agent_status("i-fake-3", "ALIVE", TIMEOUT).await);
    assert_eq!(h.agent_status("i-fake-2").await, None);
    let _ = conn.close(200, "bye").await;
    h.finish().await;
}

#[tokio::test]
async fn kernel_runs_with_env_executes_and_reports_exit_codes() {
    let h = Harness::start(Duration::from_secs(10)).await;
    let id = format!("i-kern-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let agent = start_agent(&h, &id).await;
    let rpc = h.rpc().await;
    assert_eq!(rpc.ping(&id, "hello").await.unwrap(), "hello");

    let sid = h.scheduled_session(&id, "sess-env").await;
    let image = "cr.backend.ai/stable/python:3.9-ubuntu20.04";
    let created = rpc
        .create_kernels(
            &id,
            create_request(
                sid,
                "sess-env",
                image,
                &[("FOO", "bar baz")],
                Some("echo booting; echo ready > boot.txt"),
            ),
        )
        .await
        .unwrap();
    assert_eq!(created.len(), 1);
    assert_eq!(created[0].id, sid);
    assert!(created[0].container_id.starts_with("proc-"));
    let (status, ..) = h.wait_kernel_status(sid, "RUNNING").await;
    assert_eq!(status, "RUNNING");

    // The environment, seen from inside the kernel process.
    let r = rpc
        .execute(
            &id,
            query(
                sid,
                "import os\nfor k in ['BACKENDAI_SESSION_ID','BACKENDAI_SESSION_NAME','BACKENDAI_KERNEL_ID',\
                 'BACKENDAI_KERNEL_IMAGE','BACKENDAI_CLUSTER_SIZE','BACKENDAI_CLUSTER_REPLICAS',\
                 'BACKENDAI_CLUSTER_HOSTS','BACKENDAI_CLUSTER_ROLE','BACKENDAI_CLUSTER_IDX',\
                 'BACKENDAI_CLUSTER_HOST','FOO']:\n    print(k + '=' + os.environ[k])\nprint('cwd=' + os.getcwd())",
            ),
        )
        .await
        .unwrap();
    assert_eq!(r.status, "finished", "{r:?}");
    assert_eq!(r.exit_code, Some(0));
    let out = r.stdout();
    for line in [
        format!("BACKENDAI_SESSION_ID={sid}"),
        "BACKENDAI_SESSION_NAME=sess-env".into(),
        format!("BACKENDAI_KERNEL_ID={sid}"),
        format!("BACKENDAI_KERNEL_IMAGE={image}"),
        "BACKENDAI_CLUSTER_SIZE=1".into(),
        "BACKENDAI_CLUSTER_REPLICAS=main:1".into(),
        "BACKENDAI_CLUSTER_HOSTS=main1".into(),
        "BACKENDAI_CLUSTER_ROLE=main".into(),
        "BACKENDAI_CLUSTER_IDX=1".into(),
        "BACKENDAI_CLUSTER_HOST=main1".into(),
        "FOO=bar baz".into(),
        format!(
            "cwd={}",
            h.work_root.join(sid.to_string()).join("work").display()
        ),
    ] {
        assert!(
            out.lines().any(|l| l == line),
            "missing `{line}` in:\n{out}"
        );
    }

    // The bootstrap script ran in the work dir before the kernel was reported started.
    let r = rpc
        .execute(&id, query(sid, "print(open('boot.txt').read().strip())"))
        .await
        .unwrap();
    assert_eq!(r.stdout(), "ready\n");
    assert!(rpc.get_logs(&id, sid).await.unwrap().contains("booting"));

    // A persistent namespace; the last expression is echoed as in a REPL.
    rpc.execute(&id, query(sid, "x = 41")).await.unwrap();
    let r = rpc.execute(&id, query(sid, "x + 1")).await.unwrap();
    assert_eq!(r.stdout(), "42\n");
    assert_eq!(r.run_id.as_ref().map(String::len), Some(32));

    // Errors: stderr and a non-zero exit code; subprocess output is captured too.
    let r = rpc
        .execute(
            &id,
            query(sid, "import os\nos.system('echo from-child')\n1/0"),
        )
        .await
        .unwrap();
    assert_eq!(r.exit_code, Some(1));
    assert!(r.stdout().contains("from-child"), "{r:?}");
    assert!(r.stderr().contains("ZeroDivisionError"), "{r:?}");
    let console = serde_json::to_value(&r).unwrap()["console"].clone();
    assert_eq!(console[0][0], "stdout");

    // Input: waiting-input, then the answer.
    let r = rpc
        .execute(&id, query(sid, "name = input('who? ')\nprint('hi', name)"))
        .await
        .unwrap();
    assert_eq!(r.status, "waiting-input");
    assert_eq!(r.stdout(), "who? ");
    let r = rpc
        .execute(
            &id,
            ExecuteParams {
                mode: ExecMode::Input,
                code: "bob".into(),
                run_id: r.run_id.clone(),
                ..query(sid, "")
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (r.status.as_str(), r.stdout().as_str()),
        ("finished", "hi bob\n")
    );

    // Long runs answer `continued` after the flush timeout, then `continue` collects.
    let mut r = rpc
        .execute(
            &id,
            ExecuteParams {
                flush_timeout_ms: Some(300),
                ..query(
                    sid,
                    "import time\nprint('start', flush=True)\ntime.sleep(1.2)\nprint('done')",
                )
            },
        )
        .await
        .unwrap();
    assert_eq!(r.status, "continued");
    let mut out = r.stdout();
    while r.status == "continued" {
        r = rpc
            .execute(
                &id,
                ExecuteParams {
                    mode: ExecMode::Continue,
                    run_id: r.run_id.clone(),
                    flush_timeout_ms: Some(300),
                    ..query(sid, "")
                },
            )
            .await
            .unwrap();
        out.push_str(&r.stdout());
    }
    assert_eq!(
        (r.status.as_str(), out.as_str()),
        ("finished", "start\ndone\n")
    );

    // Interrupt a running query.
    let r = rpc
        .execute(
            &id,
            ExecuteParams {
                flush_timeout_ms: Some(200),
                ..query(sid, "import time\ntime.sleep(30)")
            },
        )
        .await
        .unwrap();
    assert_eq!(r.status, "continued");
    rpc.interrupt_kernel(&id, sid).await.unwrap();
    let r = rpc
        .execute(
            &id,
            ExecuteParams {
                mode: ExecMode::Continue,
                run_id: r.run_id.clone(),
                ..query(sid, "")
            },
        )
        .await
        .unwrap();
    assert_eq!(r.status, "finished");
    assert!(r.stderr().contains("KeyboardInterrupt"), "{r:?}");

    // Batch mode and completions.
    let r = rpc
        .execute(
            &id,
            ExecuteParams {
                mode: ExecMode::Batch,
                opts: json!({"build": "echo building", "exec": "echo running; exit 3"}),
                ..query(sid, "")
            },
        )
        .await
        .unwrap();
    assert_eq!(
        (r.exit_code, r.stdout().as_str()),
        (Some(3), "building\nrunning\n")
    );
    let c = rpc
        .get_completions(&id, sid, "pri", json!({}))
        .await
        .unwrap();
    assert!(
        c.completions.iter().any(|s| s.starts_with("print")),
        "{c:?}"
    );

    // Files.
    rpc.upload_file(&id, sid, "data/hello.txt", b"hello file")
        .await
        .unwrap();
    let listing = rpc.list_files(&id, sid, "data").await.unwrap();
    let files: Vec<Value> = serde_json::from_str(&listing.files).unwrap();
    assert_eq!(files[0]["filename"], "hello.txt");
    assert_eq!(files[0]["size"], 10);
    assert_eq!(listing.abspath, "/home/work/data");
    let tar = rpc.download_file(&id, sid, "data/hello.txt").await.unwrap();
    assert!(tar.len() >= 1024 && tar.windows(10).any(|w| w == b"hello file"));
    let err = rpc
        .download_file(&id, sid, "../../etc/passwd")
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { error, .. } if error.kind == "invalid-argument"),
        "{err}"
    );

    // Destroy: SIGTERM, exit code 143 recorded, slots and concurrency released.
    rpc.destroy_kernel(&id, sid, None, false).await.unwrap();
    let (_, info, data, terminated_at) = h.wait_kernel_status(sid, "TERMINATED").await;
    assert_eq!(info.as_deref(), Some("user-requested"));
    assert_eq!(
        data.as_ref().and_then(|d| d.pointer("/kernel/exit_code")),
        Some(&json!(143))
    );
    assert_eq!(
        data.as_ref().and_then(|d| d.pointer("/session/status")),
        Some(&json!("terminated"))
    );
    assert!(terminated_at);
    assert_eq!(h.occupancy(&id).await, (json!({}), 0));
    assert!(
        !h.work_root.join(sid.to_string()).exists(),
        "work dir removed"
    );

    // A kernel that exits by itself reports its own exit code.
    let sid2 = h.scheduled_session(&id, "sess-exit").await;
    rpc.create_kernels(
        &id,
        create_request(sid2, "sess-exit", "lablup/python:3.9", &[], None),
    )
    .await
    .unwrap();
    h.wait_kernel_status(sid2, "RUNNING").await;
    let r = rpc
        .execute(&id, query(sid2, "import os\nos._exit(7)"))
        .await
        .unwrap();
    assert_eq!((r.status.as_str(), r.exit_code), ("finished", Some(7)));
    let (_, info, data, _) = h.wait_kernel_status(sid2, "TERMINATED").await;
    assert_eq!(info.as_deref(), Some("self-terminated"));
    assert_eq!(
        data.as_ref().and_then(|d| d.pointer("/kernel/exit_code")),
        Some(&json!(7))
    );

    // A shell image runs bash.
    let sid3 = h.scheduled_session(&id, "sess-sh").await;
    rpc.create_kernels(
        &id,
        create_request(sid3, "sess-sh", "lablup/shell:latest", &[], None),
    )
    .await
    .unwrap();
    let r = rpc
        .execute(&id, query(sid3, "echo $BACKENDAI_SESSION_NAME; exit 5"))
        .await
        .unwrap();
    assert_eq!((r.stdout().as_str(), r.exit_code), ("sess-sh\n", Some(5)));

    // Live statistics reach Redis (and only Redis).
    let stat_key = h.rt.keys.kernel_stat(sid3);
    let stat: Option<String> = eventually(TIMEOUT, || async {
        let mut c = h.redis.get().await.unwrap();
        redis::cmd("GET")
            .arg(&stat_key)
            .query_async::<Option<String>>(&mut *c)
            .await
            .unwrap()
    })
    .await;
    let stat: Value = serde_json::from_str(&stat.expect("kernel stats in Redis")).unwrap();
    assert!(
        stat["mem"]["current"].as_str().is_some_and(|m| m != "0"),
        "{stat}"
    );

    // A batch session runs its startup command and reports the result.
    let sid4 = h.scheduled_session(&id, "sess-batch").await;
    let mut req = create_request(sid4, "sess-batch", "python:3.9", &[], None);
    req.kernels[0].session_type = "batch".into();
    req.kernels[0].startup_command = Some("echo batch-output; exit 4".into());
    rpc.create_kernels(&id, req).await.unwrap();
    let (result, data): (String, Option<Value>) = eventually(TIMEOUT, || async {
        let row: (String, Option<Value>) =
            sqlx::query_as("SELECT result::text, status_data FROM kernels WHERE id = $1")
                .bind(sid4)
                .fetch_one(h.db.db.pool())
                .await
                .unwrap();
        (row.0 != "UNDEFINED").then_some(row)
    })
    .await
    .expect("batch result recorded");
    assert_eq!(result, "FAILURE");
    assert_eq!(
        data.and_then(|d| d.pointer("/batch/exit_code").cloned()),
        Some(json!(4))
    );
    assert!(rpc
        .get_logs(&id, sid4)
        .await
        .unwrap()
        .contains("batch-output"));
    rpc.destroy_kernel(&id, sid4, None, false).await.unwrap();

    // Unknown kernels.
    let err = rpc
        .execute(&id, query(Uuid::new_v4(), "1"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, RpcError::Remote { error, .. } if error.kind == "not-found"),
        "{err}"
    );

    // Agent shutdown terminates the remaining kernel (reported with its exit code).
    agent.stop().await.unwrap();
    let (_, info, ..) = h.wait_kernel_status(sid3, "TERMINATED").await;
    assert_eq!(info.as_deref(), Some("agent-termination"));
    assert!(h.wait_agent_status(&id, "TERMINATED", TIMEOUT).await);
    rpc.close().await;
    h.finish().await;
}

#[tokio::test]
async fn killed_agent_is_marked_lost_and_its_kernels_terminated() {
    let timeout = Duration::from_millis(1500);
    let h = Harness::start(timeout).await;
    let id = format!("i-lost-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let mut events = h
        .bus
        .bus
        .client()
        .subscribe(h.bus.bus.subjects().events_all())
        .await
        .unwrap();
    let agent = start_agent(&h, &id).await;
    let rpc = h.rpc().await;
    let sid = h.scheduled_session(&id, "sess-lost").await;
    rpc.create_kernels(
        &id,
        create_request(sid, "sess-lost", "python:3.9", &[], None),
    )
    .await
    .unwrap();
    h.wait_kernel_status(sid, "RUNNING").await;
    assert_eq!(h.occupancy(&id).await.1, 1);

    let killed_at = Instant::now();
    agent.crash().await;
    assert!(
        h.wait_agent_status(&id, "LOST", timeout + Duration::from_secs(5))
            .await,
        "agent not marked LOST"
    );
    let detected = killed_at.elapsed();
    assert!(
        detected < timeout + Duration::from_secs(2),
        "took {detected:?}"
    );
    let (_, info, data, terminated_at) = h.wait_kernel_status(sid, "TERMINATED").await;
    assert_eq!(info.as_deref(), Some("agent-lost"));
    assert!(terminated_at);
    assert_eq!(
        data.as_ref().and_then(|d| d.pointer("/kernel/exit_code")),
        Some(&Value::Null)
    );
    assert_eq!(
        h.occupancy(&id).await,
        (json!({}), 0),
        "slots and concurrency released"
    );
    let lost_at: Option<chrono::DateTime<chrono::Utc>> =
        sqlx::query_scalar("SELECT lost_at FROM agents WHERE id = $1")
            .bind(&id)
            .fetch_one(h.db.db.pool())
            .await
            .unwrap();
    assert!(lost_at.is_some());

    // Events on the bus: the kernel, its session, and the agent.
    let mut seen = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(5), async {
        while let Some(m) = events.next().await {
            let v: Value = serde_json::from_slice(&m.payload).unwrap();
            seen.push(v["kind"].as_str().unwrap_or("").to_string());
            if seen.iter().any(|k| k == "agent_terminated") {
                break;
            }
        }
    })
    .await;
    for kind in [
        "kernel_started",
        "kernel_terminated",
        "session_terminated",
        "agent_terminated",
    ] {
        assert!(seen.iter().any(|k| k == kind), "no {kind} in {seen:?}");
    }

    // The RPC queue has no consumer any more: calls fail fast.
    let t = Instant::now();
    let err = rpc.ping(&id, "x").await.unwrap_err();
    assert!(matches!(err, RpcError::NoConsumer { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(1));

    // The same agent coming back is revived.
    let again = start_agent(&h, &id).await;
    again.stop().await.unwrap();
    rpc.close().await;
    h.finish().await;
}

#[tokio::test]
async fn rpc_to_an_agent_without_consumer_fails_fast_or_times_out() {
    let h = Harness::start(Duration::from_secs(5)).await;
    let rpc = h.rpc().await;
    let conn = h.rabbit.connect().await;

    // No queue at all.
    let t = Instant::now();
    let err = rpc.ping("i-nobody", "x").await.unwrap_err();
    assert!(matches!(err, RpcError::NoSuchAgent { .. }), "{err}");
    assert!(err.to_string().contains("i-nobody"));
    assert!(t.elapsed() < Duration::from_secs(1));

    // A queue nobody consumes (an agent that is down).
    let id = "i-down";
    h.rabbit.track_agent(id);
    let ch = conn.create_channel().await.unwrap();
    amqp::declare_rpc_queue(&ch, &h.rabbit.names(), id)
        .await
        .unwrap();
    let t = Instant::now();
    let err = rpc.ping(id, "x").await.unwrap_err();
    assert!(matches!(err, RpcError::NoConsumer { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(1));

    // Without the consumer check, the deadline bounds the call and the request expires in
    // the queue instead of waiting for the agent's return.
    let mut opts = RpcClientOptions {
        check_consumers: false,
        ..Default::default()
    };
    opts.timeouts.ping = Duration::from_millis(800);
    let blind = AgentRpcClient::connect(&h.rabbit.url, &h.rabbit.prefix, "blind", opts)
        .await
        .unwrap();
    // A missing queue is still caught at publish time (mandatory + publisher confirm).
    let t = Instant::now();
    let err = blind.ping("i-nobody-2", "x").await.unwrap_err();
    assert!(matches!(err, RpcError::NoSuchAgent { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_secs(1));
    let t = Instant::now();
    let err = blind.ping(id, "x").await.unwrap_err();
    let took = t.elapsed();
    assert!(
        matches!(
            err,
            RpcError::Timeout {
                timeout_ms: 800,
                ..
            }
        ),
        "{err}"
    );
    assert!(
        took >= Duration::from_millis(750) && took < Duration::from_millis(1500),
        "{took:?}"
    );
    assert!(
        err.to_string()
            .contains("did not answer `ping` within 800 ms"),
        "{err}"
    );
    let queue = h.rabbit.names().rpc_queue(id);
    assert!(
        eventually(Duration::from_secs(5), || async {
            (amqp::queue_counts(&conn, &queue).await.unwrap() == Some((0, 0))).then_some(())
        })
        .await
        .is_some(),
        "the expired request was not dropped"
    );

    // A consumer that never answers: the deadline still bounds the call.
    let mut hung = ch
        .basic_consume(&queue, "hung", Default::default(), Default::default())
        .await
        .unwrap();
    let t = Instant::now();
    let mut opts = RpcClientOptions::default();
    opts.timeouts.ping = Duration::from_millis(500);
    let client = AgentRpcClient::connect(&h.rabbit.url, &h.rabbit.prefix, "c", opts)
        .await
        .unwrap();
    let err = client.ping(id, "x").await.unwrap_err();
    assert!(matches!(err, RpcError::Timeout { .. }), "{err}");
    assert!(t.elapsed() < Duration::from_millis(1200));
    assert!(
        hung.next().await.is_some(),
        "the request reached the hung consumer"
    );

    for c in [rpc, blind, client] {
        c.close().await;
    }
    let _ = conn.close(200, "bye").await;
    h.finish().await;
}

#[tokio::test]
async fn malformed_messages_are_rejected_and_the_consumer_keeps_working() {
    let h = Harness::start(Duration::from_secs(30)).await;
    let conn = h.rabbit.connect().await;
    let names = h.rabbit.names();
    let ch = conn.create_channel().await.unwrap();
    let publish = |rk: &'static str, body: Vec<u8>| {
        let ch = ch.clone();
        let ex = names.events_exchange();
        async move {
            ch.basic_publish(
                &ex,
                rk,
                BasicPublishOptions::default(),
                &body,
                BasicProperties::default(),
            )
            .await
            .unwrap();
        }
    };
    let wrong_version = json!({"v": 99, "id": Uuid::new_v4(), "agent_id": "x", "ts": chrono::Utc::now(),
                               "body": {"event": "agent_started", "args": {"reason": "x"}}});
    let unknown_event = json!({"v": 1, "id": Uuid::new_v4(), "agent_id": "x", "ts": chrono::Utc::now(),
                               "body": {"event": "kernel_exploded", "args": {}}});
    let bad_args = json!({"v": 1, "id": Uuid::new_v4(), "agent_id": "x", "ts": chrono::Utc::now(),
                          "body": {"event": "kernel_terminated", "args": {"kernel_id": "not-a-uuid"}}});
    publish("ev.kernel_started.x", b"\xff\xfe not json".to_vec()).await;
    publish("ev.agent_started.x", wrong_version.to_string().into_bytes()).await;
    publish(
        "ev.kernel_exploded.x",
        unknown_event.to_string().into_bytes(),
    )
    .await;
    publish("ev.kernel_terminated.x", bad_args.to_string().into_bytes()).await;
    publish("hb.x", b"{}".to_vec()).await;
    publish("hb.x", b"[1,2,3]".to_vec()).await;
    assert!(
        eventually(TIMEOUT, || async {
            (h.rt.metrics.rejected.load(Ordering::Relaxed) >= 6).then_some(())
        })
        .await
        .is_some(),
        "rejected: {}",
        h.rt.metrics.rejected.load(Ordering::Relaxed)
    );
    // Rejected lifecycle messages are kept for inspection; nothing is requeued.
    assert!(eventually(TIMEOUT, || async {
        (amqp::queue_counts(&conn, &names.rejected_queue())
            .await
            .unwrap()
            .map(|c| c.0)
            == Some(4))
        .then_some(())
    })
    .await
    .is_some());
    assert_eq!(
        amqp::queue_counts(&conn, &names.lifecycle_queue())
            .await
            .unwrap()
            .map(|c| c.0),
        Some(0)
    );
    assert_eq!(h.rt.metrics.requeued.load(Ordering::Relaxed), 0);

    // ...and the consumers still work.
    let id = format!("i-after-{}", &Uuid::new_v4().simple().to_string()[..8]);
    let agent = start_agent(&h, &id).await;
    agent.stop().await.unwrap();
    assert!(h.wait_agent_status(&id, "TERMINATED", TIMEOUT).await);
    let _ = conn.close(200, "bye").await;
    h.finish().await;
}

#[tokio::test]
async fn simulated_agents_register_answer_and_get_lost() {
    let h = Harness::start(Duration::from_millis(1500)).await;
    let mut cfg = SimConfig::new(20, &h.rabbit.url, &h.rabbit.prefix);
    cfg.id_prefix = format!("i-sim-{}-", &Uuid::new_v4().simple().to_string()[..6]);
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.start_delay = Duration::from_millis(100);
    cfg.agents_per_channel = 8;
    let fleet = SimFleet::start(cfg.clone()).await.unwrap();
    for a in fleet.agent_ids() {
        h.rabbit.track_agent(&a);
    }
    let count = || async {
        // Connections default to SERIALIZABLE: this poll can lose a conflict with the
        // ingest's inserts (40001); it is only a poll, so a failure counts as "not yet".
        let n: i64 =
            sqlx::query_scalar("SELECT count(*) FROM agents WHERE id LIKE $1 AND status = 'ALIVE'")
                .bind(format!("{}%", cfg.id_prefix))
                .fetch_one(h.db.db.pool())
                .await
                .unwrap_or(-1);
        n
    };
    assert!(
        eventually(TIMEOUT, || async { (count().await == 20).then_some(()) })
            .await
            .is_some()
    );
    let rpc = h.rpc().await;
    let a0 = cfg.agent_id(0);
    assert_eq!(rpc.ping(&a0, "sim").await.unwrap(), "sim");
    let sid = h.scheduled_session(&a0, "sim-sess").await;
    let created = rpc
        .create_kernels(
            &a0,
            create_request(sid, "sim-sess", "python:3.9", &[], None),
        )
        .await
        .unwrap();
    assert_eq!(created[0].id, sid);
    h.wait_kernel_status(sid, "RUNNING").await;
    let r = rpc.execute(&a0, query(sid, "print(1)")).await.unwrap();
    assert_eq!(r.stdout(), "simulated output\n");
    rpc.destroy_kernel(&a0, sid, Some("user-requested"), false)
        .await
        .unwrap();
    h.wait_kernel_status(sid, "TERMINATED").await;

    let a1 = cfg.agent_id(1);
    assert!(fleet.kill(&a1));
    assert!(
        h.wait_agent_status(&a1, "LOST", Duration::from_secs(10))
            .await
    );
    assert_eq!(count().await, 19);
    fleet.stop().await;
    assert!(
        eventually(TIMEOUT, || async { (count().await == 0).then_some(()) })
            .await
            .is_some()
    );
    rpc.close().await;
    h.finish().await;
}
