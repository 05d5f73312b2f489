//! Command bus and worker fleet (issue 4), against real NATS JetStream and PostgreSQL.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::future::BoxFuture;
use futures::StreamExt;
use tokio_util::sync::CancellationToken;
use uuid::Uuid;

use bai_events::{Bus, BusOptions, Command, CommandOutcome, CommandReply, Envelope, Event};
use bai_tests::{eventually, TestBus, TestDb};
use bai_workers::{WorkerContext, WorkerMetrics, WorkerOptions};

fn fast_options() -> BusOptions {
    BusOptions {
        ack_wait: Duration::from_secs(2),
        max_deliver: 3,
        ..Default::default()
    }
}

struct Worker {
    stop: CancellationToken,
    handle: tokio::task::JoinHandle<anyhow::Result<()>>,
    metrics: Arc<WorkerMetrics>,
}

fn start_worker(db: &bai_core::Db, bus: Bus, concurrency: usize) -> Worker {
    let metrics = Arc::new(WorkerMetrics::default());
    let ctx = Arc::new(WorkerContext {
        agent_rpc: None,
        db: db.clone(),
        bus,
        etcd: None,
        redis: None,
        metrics: metrics.clone(),
    });
    let stop = CancellationToken::new();
    let handle = tokio::spawn(bai_workers::run_command_loop(
        ctx,
        WorkerOptions {
            concurrency,
            shutdown_grace: Duration::from_secs(5),
        },
        stop.clone(),
    ));
    Worker {
        stop,
        handle,
        metrics,
    }
}

async fn echo_effects(db: &bai_core::Db) -> i64 {
    sqlx::query_scalar("SELECT count(*) FROM bus_echo_effects")
        .fetch_one(db.pool())
        .await
        .unwrap()
}

fn echo(payload: &str) -> Command {
    Command::Echo {
        payload: payload.into(),
        fail: false,
        delay_ms: 0,
    }
}

#[tokio::test]
async fn echo_round_trip_and_duplicate_id_has_one_effect() {
    let t = TestDb::new().await;
    let tb = TestBus::new(fast_options()).await;
    let w = start_worker(&t.db, tb.peer("worker").await, 8);

    let out = tb
        .bus
        .publish_command(echo("hi"), Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(
        out,
        CommandOutcome::Completed(CommandReply::Ok {
            result: serde_json::json!({"echo": "hi"})
        })
    );

    // The same command id twice (a re-sent request) is stored once and acts once.
    let id = Uuid::new_v4();
    let env = Envelope::new(id, "test", echo("dup"));
    assert!(
        tb.bus.enqueue_command(&env).await.unwrap(),
        "first copy stored"
    );
    assert!(
        !tb.bus.enqueue_command(&env).await.unwrap(),
        "second copy deduplicated by Nats-Msg-Id"
    );
    let again = tb
        .bus
        .publish_command_with_id(id, None, echo("dup"), Duration::from_secs(2))
        .await
        .unwrap();
    // Either it is still running (accepted) or the reply of the first copy arrived.
    assert!(matches!(
        again,
        CommandOutcome::Accepted { .. } | CommandOutcome::Completed(_)
    ));
    let db = t.db.clone();
    eventually(Duration::from_secs(10), || {
        let db = db.clone();
        async move {
            let n: i64 =
                sqlx::query_scalar("SELECT count(*) FROM bus_echo_effects WHERE command_id = $1")
                    .bind(id)
                    .fetch_one(db.pool())
                    .await
                    .unwrap();
            (n == 1).then_some(())
        }
    })
    .await
    .expect("the duplicate command took effect");
    assert_eq!(echo_effects(&t.db).await, 2);
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn redelivered_command_runs_once_in_effect() {
    let t = TestDb::new().await;
    let tb = TestBus::new(fast_options()).await;
    let ctx = Arc::new(WorkerContext {
        agent_rpc: None,
        db: t.db.clone(),
        bus: tb.bus.clone(),
        etcd: None,
        redis: None,
        metrics: Arc::default(),
    });
    let id = Uuid::new_v4();
    let env = Envelope::new(id, "test", echo("twice"));
    // Run the handler twice for the same envelope, as a redelivery after a lost ack would.
    let a = bai_workers::handlers::dispatch(&ctx, &env).await.unwrap();
    let b = bai_workers::handlers::dispatch(&ctx, &env).await.unwrap();
    assert_eq!(a, b, "the second delivery returns the stored result");
    assert_eq!(echo_effects(&t.db).await, 1);
}

#[tokio::test]
async fn killed_worker_before_ack_is_completed_by_another_worker() {
    let t = TestDb::new().await;
    let tb = TestBus::new(fast_options()).await;
    let doomed = start_worker(&t.db, tb.peer("doomed").await, 4);
    let id = Uuid::new_v4();
    let env = Envelope::new(
        id,
        "test",
        Command::Echo {
            payload: "slow".into(),
            fail: false,
            delay_ms: 1_500,
        },
    );
    tb.bus.enqueue_command(&env).await.unwrap();
    // Wait until the doomed worker holds the command (delivered, not acked)...
    let consumer_bus = tb.bus.clone();
    eventually(Duration::from_secs(10), || {
        let bus = consumer_bus.clone();
        async move {
            let mut c = bus.command_consumer().await.ok()?;
            let info = c.info().await.ok()?;
            (info.num_ack_pending == 1).then_some(())
        }
    })
    .await
    .expect("the first worker picked the command up");
    // ...then crash it: no ack, no nak.
    doomed.handle.abort();
    let _ = doomed.handle.await;
    assert_eq!(
        echo_effects(&t.db).await,
        0,
        "the crashed worker never committed"
    );

    let rescuer = start_worker(&t.db, tb.peer("rescuer").await, 4);
    let db = t.db.clone();
    eventually(Duration::from_secs(15), || {
        let db = db.clone();
        async move { (echo_effects(&db).await == 1).then_some(()) }
    })
    .await
    .expect("the second worker completed the command after ack_wait");
    assert!(rescuer.metrics.redelivered.load(Ordering::Relaxed) >= 1);
    assert_eq!(echo_effects(&t.db).await, 1, "exactly one effect");
    rescuer.stop.cancel();
    rescuer.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn two_workers_handle_a_thousand_commands_once() {
    let t = TestDb::new().await;
    let tb = TestBus::new(fast_options()).await;
    let w1 = start_worker(&t.db, tb.peer("w1").await, 32);
    let w2 = start_worker(&t.db, tb.peer("w2").await, 32);
    let bus = tb.bus.clone();
    let replies: Vec<_> = futures::stream::iter(0..1000)
        .map(|i| {
            let bus = bus.clone();
            async move {
                bus.publish_command(echo(&format!("m{i}")), Duration::from_secs(30))
                    .await
                    .unwrap()
            }
        })
        .buffer_unordered(64)
        .collect()
        .await;
    assert!(replies
        .iter()
        .all(|r| matches!(r, CommandOutcome::Completed(CommandReply::Ok { .. }))));
    assert_eq!(echo_effects(&t.db).await, 1000);
    let processed: i64 = sqlx::query_scalar("SELECT count(*) FROM processed_commands")
        .fetch_one(t.db.pool())
        .await
        .unwrap();
    assert_eq!(processed, 1000);
    let h1 = w1.metrics.handled.load(Ordering::Relaxed);
    let h2 = w2.metrics.handled.load(Ordering::Relaxed);
    assert_eq!(h1 + h2, 1000);
    assert!(h1 > 0 && h2 > 0, "both workers took a share ({h1} / {h2})");
    for w in [w1, w2] {
        w.stop.cancel();
        w.handle.await.unwrap().unwrap();
    }
}

#[tokio::test]
async fn poison_command_is_terminated_with_an_event_and_others_flow() {
    let t = TestDb::new().await;
    let tb = TestBus::new(fast_options()).await;
    let mut events = tb
        .bus
        .client()
        .subscribe(tb.bus.subjects().events_all())
        .await
        .unwrap();
    let w = start_worker(&t.db, tb.peer("w").await, 4);
    let poison_id = Uuid::new_v4();
    let poison = tb.bus.clone();
    let poison_task = tokio::spawn(async move {
        poison
            .publish_command_with_id(
                poison_id,
                None,
                Command::Echo {
                    payload: "bad".into(),
                    fail: true,
                    delay_ms: 0,
                },
                Duration::from_secs(20),
            )
            .await
            .unwrap()
    });
    // Healthy commands keep flowing while the poison one is being retried.
    for i in 0..5 {
        let out = tb
            .bus
            .publish_command(echo(&format!("ok{i}")), Duration::from_secs(10))
            .await
            .unwrap();
        assert!(matches!(
            out,
            CommandOutcome::Completed(CommandReply::Ok { .. })
        ));
    }
    let failed = tokio::time::timeout(Duration::from_secs(20), async {
        while let Some(msg) = events.next().await {
            let env: Envelope<Event> = Envelope::from_slice(&msg.payload).unwrap();
            if let Event::CommandFailed {
                command_id,
                deliveries,
                ..
            } = env.body
            {
                if command_id == poison_id {
                    return deliveries;
                }
            }
        }
        0
    })
    .await
    .expect("a command_failed event");
    assert_eq!(failed, 3, "terminated after max_deliver deliveries");
    match poison_task.await.unwrap() {
        CommandOutcome::Completed(CommandReply::Failed { error }) => {
            assert!(error.contains("poison"), "{error}")
        }
        other => panic!("unexpected outcome {other:?}"),
    }
    assert_eq!(w.metrics.failed.load(Ordering::Relaxed), 1);
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

#[tokio::test]
async fn undecodable_command_is_terminated_not_retried() {
    let t = TestDb::new().await;
    let tb = TestBus::new(fast_options()).await;
    let mut events = tb
        .bus
        .client()
        .subscribe(tb.bus.subjects().events_all())
        .await
        .unwrap();
    let w = start_worker(&t.db, tb.peer("w").await, 4);
    tb.bus
        .jetstream()
        .publish(tb.bus.subjects().cmd("garbage"), "{not json".into())
        .await
        .unwrap()
        .await
        .unwrap();
    let kind = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let msg = events.next().await.unwrap();
            let env: Envelope<Event> = Envelope::from_slice(&msg.payload).unwrap();
            if let Event::CommandFailed { kind, .. } = env.body {
                return kind;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(kind, "undecodable");
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
}

/// Counts passes per group and records when each started.
#[derive(Default)]
struct CountingRunner {
    passes: Mutex<HashMap<String, Vec<Instant>>>,
    total: AtomicU64,
}

impl bai_workers::PassRunner for CountingRunner {
    fn run_pass<'a>(&'a self, group: &'a str) -> BoxFuture<'a, anyhow::Result<()>> {
        Box::pin(async move {
            self.passes
                .lock()
                .unwrap()
                .entry(group.to_string())
                .or_default()
                .push(Instant::now());
            self.total.fetch_add(1, Ordering::Relaxed);
            // A pass takes a while, so requests keep arriving during it.
            tokio::time::sleep(Duration::from_millis(30)).await;
            Ok(())
        })
    }
}

#[tokio::test]
async fn bursts_of_triggers_coalesce_without_losing_the_last_wake_up() {
    let tb = TestBus::new(fast_options()).await;
    let runner = Arc::new(CountingRunner::default());
    let stop = CancellationToken::new();
    let mut loops = Vec::new();
    for name in ["s1", "s2"] {
        loops.push(tokio::spawn(bai_workers::run_trigger_loop(
            tb.peer(name).await,
            runner.clone(),
            4,
            Arc::new(WorkerMetrics::default()),
            stop.clone(),
        )));
    }
    // 1,000 requests for one group, and 1,000 more over 10 groups interleaved.
    let groups: Vec<String> = (0..10).map(|i| format!("gpu.group {i}")).collect();
    let mut last_request: HashMap<String, Instant> = HashMap::new();
    let bus = tb.bus.clone();
    let mut queued = 0;
    for i in 0..1000 {
        for g in ["default".to_string(), groups[i % 10].clone()] {
            // Stamped when the request is sent: the server decides (queue or coalesce) after
            // this instant, and under load its answer can arrive after the pass it caused
            // has already started, so a stamp taken on return would be too late.
            let sent = Instant::now();
            if bus.request_schedule(&g).await.unwrap() {
                queued += 1;
            }
            last_request.insert(g, sent);
        }
    }
    // Wait until every group has had a pass that started after its last request.
    let r = runner.clone();
    let lr = last_request.clone();
    eventually(Duration::from_secs(20), || {
        let r = r.clone();
        let lr = lr.clone();
        async move {
            let passes = r.passes.lock().unwrap();
            lr.iter()
                .all(|(g, t)| passes.get(g).is_some_and(|v| v.iter().any(|p| p > t)))
                .then_some(())
        }
    })
    .await
    .expect("no lost wake-up: each group ran after its last request");
    stop.cancel();
    for l in loops {
        l.await.unwrap().unwrap();
    }
    let passes = runner.passes.lock().unwrap();
    let default_passes = passes["default"].len();
    assert!(default_passes >= 1);
    // Sequential requests to a group whose pass takes 30 ms: one pass per 30 ms window at
    // most, far fewer than 1,000 requests.
    assert!(
        default_passes < 100,
        "default group: {default_passes} passes for 1,000 requests"
    );
    for g in &groups {
        assert!(
            passes[g].len() < 60,
            "{g}: {} passes for 100 requests",
            passes[g].len()
        );
    }
    let total = runner.total.load(Ordering::Relaxed);
    assert_eq!(
        total as usize, queued,
        "every queued trigger became exactly one pass"
    );
    eprintln!("2,000 requests → {queued} triggers queued → {total} passes");
}

/// A private nats-server, so the restart does not disturb other tests.
struct PrivateNats {
    child: std::process::Child,
    port: u16,
    dir: std::path::PathBuf,
}

impl PrivateNats {
    fn start(port: u16, dir: &std::path::Path) -> Self {
        let child = std::process::Command::new("nats-server")
            .args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("nats-server must be installed (ops/setup.sh)");
        Self {
            child,
            port,
            dir: dir.to_path_buf(),
        }
    }
}

impl Drop for PrivateNats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn wait_port(port: u16) {
    for _ in 0..200 {
        if tokio::net::TcpStream::connect(("127.0.0.1", port))
            .await
            .is_ok()
        {
            return;
        }
        tokio::time::sleep(Duration::from_millis(25)).await;
    }
    panic!("port {port} did not open");
}

#[tokio::test]
async fn nats_restart_mid_run_loses_nothing_accepted() {
    let t = TestDb::new().await;
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let dir = std::env::temp_dir().join(format!("bai-nats-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut server = PrivateNats::start(port, &dir);
    wait_port(port).await;
    let mut cfg = bai_tests::base_config();
    cfg.nats.url = format!("nats://127.0.0.1:{port}");
    let bus = Bus::connect(&cfg.nats, "test", fast_options(), Duration::from_secs(10))
        .await
        .unwrap();
    let wbus = Bus::connect(&cfg.nats, "worker", fast_options(), Duration::from_secs(10))
        .await
        .unwrap();
    let w = start_worker(&t.db, wbus, 16);

    // Publisher: keeps enqueueing; remembers which commands the server acknowledged.
    let accepted = Arc::new(Mutex::new(Vec::new()));
    let acc = accepted.clone();
    let pbus = bus.clone();
    let publisher = tokio::spawn(async move {
        for i in 0..400 {
            let env = Envelope::new(Uuid::new_v4(), "test", echo(&format!("n{i}")));
            // A failed publish (server down) is not accepted; the caller would retry it.
            if let Ok(Ok(_)) =
                tokio::time::timeout(Duration::from_secs(3), pbus.enqueue_command(&env)).await
            {
                acc.lock().unwrap().push(env.id);
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    });
    // Let some traffic flow, then kill the server hard and bring it back on the same store.
    tokio::time::sleep(Duration::from_millis(600)).await;
    let _ = server.child.kill();
    let _ = server.child.wait();
    tokio::time::sleep(Duration::from_millis(700)).await;
    server = PrivateNats::start(server.port, &server.dir.clone());
    wait_port(port).await;
    publisher.await.unwrap();

    let ids = accepted.lock().unwrap().clone();
    assert!(
        ids.len() > 100,
        "enough commands were accepted ({})",
        ids.len()
    );
    let db = t.db.clone();
    let want = ids.clone();
    let done = eventually(Duration::from_secs(60), || {
        let db = db.clone();
        let want = want.clone();
        async move {
            let n: i64 = sqlx::query_scalar(
                "SELECT count(*) FROM bus_echo_effects WHERE command_id = ANY($1)",
            )
            .bind(&want)
            .fetch_one(db.pool())
            .await
            .unwrap();
            (n as usize == want.len()).then_some(n)
        }
    })
    .await;
    assert!(
        done.is_some(),
        "every accepted command was handled after the restart"
    );
    w.stop.cancel();
    w.handle.await.unwrap().unwrap();
    drop(server);
    std::fs::remove_dir_all(&dir).ok();
}
