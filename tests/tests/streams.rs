//! Issue 8: session-event SSE (ordering, resume with `Last-Event-ID`, visibility),
//! background tasks (progress, failure, cancellation, replay, recalculation, image
//! rescan), the idle-timeout checker, usage accounting and the last-stat copy — against
//! the real services, with the in-process API + worker of [`TestApp`].

use std::time::Duration;

use chrono::{DateTime, TimeZone, Utc};
use reqwest::{Method, StatusCode};
use serde_json::{json, Value};
use uuid::Uuid;

use bai_core::redis::redis;
use bai_events::{bgtask, keys, Command, CommandOutcome, CommandReply, Event};
use bai_tests::app::{TestApp, ADMIN_EMAIL, DOMAIN_ADMIN_EMAIL, MONITOR_EMAIL, USER_EMAIL};
use bai_tests::client::{client_date, problem_slug, read_json, SignedClient};
use bai_tests::{eventually, TIMEOUT};

// ------------------------------------------------------------------ SSE client

#[derive(Debug, Clone, PartialEq)]
struct Msg {
    id: Option<u64>,
    event: String,
    data: String,
    retry: Option<u32>,
}

impl Msg {
    fn json(&self) -> Value {
        serde_json::from_str(&self.data).expect("JSON data")
    }
}

/// A minimal SSE reader, signing like the official client (no Content-Type, signed as
/// `application/octet-stream`).
struct Sse {
    resp: reqwest::Response,
    buf: Vec<u8>,
    /// Every byte received, for framing checks.
    raw: Vec<u8>,
}

async fn sse_open(
    c: &SignedClient,
    path: &str,
    last_id: Option<u64>,
) -> Result<Sse, (StatusCode, Value)> {
    let mut h = c.signed_headers(
        &Method::GET,
        path,
        "application/octet-stream",
        &client_date(),
    );
    if let Some(id) = last_id {
        h.insert("last-event-id", id.to_string().parse().unwrap());
    }
    let resp = c
        .http
        .get(format!("{}{}", c.base, path))
        .headers(h)
        .send()
        .await
        .expect("SSE request");
    if resp.status() != StatusCode::OK {
        return Err(read_json(resp).await);
    }
    assert_eq!(resp.headers()["content-type"], "text/event-stream");
    assert_eq!(resp.headers()["cache-control"], "no-cache");
    Ok(Sse {
        resp,
        buf: Vec::new(),
        raw: Vec::new(),
    })
}

impl Sse {
    /// The next message (comments skipped); `None` on EOF or after `within`.
    async fn next(&mut self, within: Duration) -> Option<Msg> {
        let deadline = tokio::time::Instant::now() + within;
        loop {
            if let Some(pos) = self.buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let frame: Vec<u8> = self.buf.drain(..pos + 4).collect();
                let text = String::from_utf8(frame).expect("UTF-8 frame");
                let mut msg = Msg {
                    id: None,
                    event: "message".into(),
                    data: String::new(),
                    retry: None,
                };
                let mut any = false;
                for line in text.trim_end_matches("\r\n").split("\r\n") {
                    if line.starts_with(':') || line.is_empty() {
                        continue;
                    }
                    any = true;
                    let (k, v) = line.split_once(':').expect("field line");
                    let v = v.strip_prefix(' ').unwrap_or(v);
                    match k {
                        "id" => msg.id = Some(v.parse().expect("numeric id")),
                        "event" => msg.event = v.to_string(),
                        "data" => {
                            if !msg.data.is_empty() {
                                msg.data.push('\n');
                            }
                            msg.data.push_str(v)
                        }
                        "retry" => msg.retry = Some(v.parse().expect("numeric retry")),
                        other => panic!("unexpected SSE field {other}"),
                    }
                }
                if any {
                    return Some(msg);
                }
                continue;
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk())
                .await
                .ok()?;
            match chunk {
                Ok(Some(bytes)) => {
                    self.raw.extend_from_slice(&bytes);
                    self.buf.extend_from_slice(&bytes);
                }
                _ => return None,
            }
        }
    }

    async fn take(&mut self, n: usize) -> Vec<Msg> {
        let mut out = Vec::new();
        while out.len() < n {
            match self.next(TIMEOUT).await {
                Some(m) => out.push(m),
                None => break,
            }
        }
        out
    }

    /// Messages until (and including) `event`.
    async fn until(&mut self, event: &str) -> Vec<Msg> {
        let mut out = Vec::new();
        while let Some(m) = self.next(TIMEOUT).await {
            let stop = m.event == event;
            out.push(m);
            if stop {
                break;
            }
        }
        out
    }
}

fn names(msgs: &[Msg]) -> Vec<&str> {
    msgs.iter().map(|m| m.event.as_str()).collect()
}

// ------------------------------------------------------------------ fixtures

#[derive(Clone, Debug)]
struct Seed {
    id: Uuid,
    session_id: Uuid,
    name: String,
    session_type: &'static str,
    role: &'static str,
    idx: i32,
    access_key: String,
    user_uuid: Uuid,
    domain: String,
    status: &'static str,
    status_info: Option<String>,
    slots: Value,
    created_at: DateTime<Utc>,
    terminated_at: Option<DateTime<Utc>>,
    status_changed: Option<DateTime<Utc>>,
    last_stat: Option<Value>,
    agent: Option<String>,
}

impl Seed {
    fn new(access_key: &str, user_uuid: Uuid) -> Self {
        let id = Uuid::new_v4();
        Self {
            id,
            session_id: id,
            name: format!("s-{}", &id.simple().to_string()[..8]),
            session_type: "INTERACTIVE",
            role: "main",
            idx: 1,
            access_key: access_key.into(),
            user_uuid,
            domain: "default".into(),
            status: "RUNNING",
            status_info: None,
            slots: json!({"cpu": "1", "mem": "1073741824"}),
            created_at: Utc::now(),
            terminated_at: None,
            status_changed: Some(Utc::now()),
            last_stat: None,
            agent: None,
        }
    }

    /// Another kernel of the same session.
    fn sub(&self, idx: i32) -> Self {
        Self {
            id: Uuid::new_v4(),
            role: "sub",
            idx,
            ..self.clone()
        }
    }
}

async fn default_group(app: &TestApp) -> Uuid {
    sqlx::query_scalar("SELECT id FROM groups WHERE name = 'default'")
        .fetch_one(app.db.db.pool())
        .await
        .expect("default group")
}

async fn insert(app: &TestApp, s: &Seed) {
    let group = default_group(app).await;
    sqlx::query(
        "INSERT INTO kernels (id, session_id, session_name, session_type, cluster_role, cluster_idx, \
         cluster_hostname, scaling_group, agent, domain_name, group_id, user_uuid, access_key, image, registry, \
         occupied_slots, resource_opts, repl_in_port, repl_out_port, stdin_port, stdout_port, status, status_info, \
         status_changed, created_at, terminated_at, last_stat, mounts) \
         VALUES ($1, $2, $3, $4::sessiontypes, $5, $6, $7, 'default', $8, $9, $10, $11, $12, \
         'cr.backend.ai/stable/python:3.9-ubuntu20.04', 'cr.backend.ai', $13, '{\"shmem\": 67108864}'::jsonb, \
         0, 0, 0, 0, $14::kernelstatus, $15, $16, $17, $18, $19, \
         ARRAY[ARRAY['data','local:volume1','/vfroot/data','rw','']]::varchar[])",
    )
    .bind(s.id)
    .bind(s.session_id)
    .bind(&s.name)
    .bind(s.session_type)
    .bind(s.role)
    .bind(s.idx)
    .bind(format!("{}{}", s.role, s.idx))
    .bind(&s.agent)
    .bind(&s.domain)
    .bind(group)
    .bind(s.user_uuid)
    .bind(&s.access_key)
    .bind(&s.slots)
    .bind(s.status)
    .bind(&s.status_info)
    .bind(s.status_changed)
    .bind(s.created_at)
    .bind(s.terminated_at)
    .bind(&s.last_stat)
    .execute(app.db.db.pool())
    .await
    .expect("insert kernel");
}

/// A fresh keypair (and its client) of a fixture user, with the user's uuid.
async fn who(app: &TestApp, email: &str, admin: bool) -> (SignedClient, String, Uuid) {
    let (ak, sk) = app.keypair(email, admin, 1_000_000, true).await;
    (app.client(&ak, &sk), ak, app.user_uuid(email).await)
}

async fn publish(app: &TestApp, ev: Event) -> u64 {
    app.bus.bus.publish_event(ev).await.expect("publish event")
}

fn enqueued(sid: Uuid) -> Event {
    Event::SessionEnqueued {
        session_id: sid,
        creation_id: "c".into(),
        reason: String::new(),
    }
}

// ------------------------------------------------------------------ session events

#[tokio::test]
async fn session_lifecycle_in_order_and_resume_without_gaps() {
    let app = TestApp::spawn().await;
    let (user, ak, uid) = who(&app, USER_EMAIL, false).await;
    let main = Seed::new(&ak, uid);
    let sub = main.sub(1);
    insert(&app, &main).await;
    insert(&app, &sub).await;
    let other = Seed::new(&ak, uid);
    insert(&app, &other).await;
    let (sid, k0, k1) = (main.session_id, main.id, sub.id);

    let path = format!("/events/session?sessionId={sid}&scope=*");
    let mut sse = sse_open(&user, &path, None).await.expect("open");
    let c = || "cid".to_string();
    let r = String::new;
    let first: Vec<Event> = vec![
        enqueued(sid),
        enqueued(other.session_id), // another session: filtered out by the server
        Event::SessionScheduled {
            session_id: sid,
            creation_id: c(),
            reason: r(),
        },
        Event::SessionPreparing {
            session_id: sid,
            creation_id: c(),
            reason: r(),
        }, // never relayed
        Event::KernelPreparing {
            kernel_id: k0,
            session_id: sid,
            creation_id: c(),
            reason: r(),
        },
        Event::KernelPreparing {
            kernel_id: k1,
            session_id: sid,
            creation_id: c(),
            reason: r(),
        },
        Event::KernelPulling {
            kernel_id: k0,
            session_id: sid,
            creation_id: c(),
            reason: "img".into(),
        },
        Event::KernelCreating {
            kernel_id: k0,
            session_id: sid,
            creation_id: c(),
            reason: r(),
        },
        Event::KernelStarted {
            kernel_id: k0,
            session_id: sid,
            creation_id: c(),
            reason: r(),
        },
        Event::KernelStarted {
            kernel_id: k1,
            session_id: sid,
            creation_id: c(),
            reason: r(),
        },
        Event::SessionStarted {
            session_id: sid,
            creation_id: c(),
            reason: r(),
        },
        Event::DoSchedule,
    ];
    for ev in first {
        publish(&app, ev).await;
    }
    let got = sse.take(5).await;
    assert_eq!(
        names(&got),
        [
            "session_enqueued",
            "session_scheduled",
            "kernel_preparing",
            "kernel_preparing",
            "kernel_pulling"
        ]
    );
    // Exact aiohttp-sse framing for the first message.
    let first_id = got[0].id.expect("id");
    let expected_head =
        format!("id: {first_id}\r\nevent: session_enqueued\r\ndata: {{\"reason\":\"\",");
    assert!(
        String::from_utf8_lossy(&sse.raw).starts_with(&expected_head),
        "{}",
        String::from_utf8_lossy(&sse.raw)
    );
    let d = got[0].json();
    assert_eq!(
        d,
        json!({"reason": "", "sessionName": main.name, "ownerAccessKey": ak, "sessionId": sid.to_string(), "kernelId": sid.to_string()})
    );
    let d = got[3].json();
    assert_eq!(d["kernelId"], k1.to_string());
    assert_eq!(d["clusterRole"], "sub");
    assert_eq!(d["clusterIdx"], 1);
    assert_eq!(got[4].json()["reason"], "img");
    let last_seen = got[4].id.unwrap();
    drop(sse); // disconnect mid-way

    let second: Vec<Event> = vec![
        Event::KernelTerminating {
            kernel_id: k0,
            session_id: sid,
            reason: "user-requested".into(),
            exit_code: -1,
        },
        Event::KernelTerminated {
            kernel_id: k1,
            session_id: sid,
            reason: "user-requested".into(),
            exit_code: 0,
        },
        Event::KernelTerminated {
            kernel_id: k0,
            session_id: sid,
            reason: "user-requested".into(),
            exit_code: 0,
        },
        Event::SessionTerminated {
            session_id: sid,
            reason: "user-requested".into(),
        },
    ];
    for ev in second {
        publish(&app, ev).await;
    }
    let mut sse = sse_open(&user, &path, Some(last_seen))
        .await
        .expect("reopen");
    let rest = sse.take(8).await;
    assert_eq!(
        names(&rest),
        [
            "kernel_creating",
            "kernel_started",
            "kernel_started",
            "session_started",
            "kernel_terminating",
            "kernel_terminated",
            "kernel_terminated",
            "session_terminated",
        ]
    );
    let mut ids: Vec<u64> = got
        .iter()
        .chain(rest.iter())
        .map(|m| m.id.unwrap())
        .collect();
    let n = ids.len();
    ids.dedup();
    assert_eq!(ids.len(), n, "no duplicates");
    assert!(ids.windows(2).all(|w| w[0] < w[1]), "ordered: {ids:?}");
    assert!(rest.iter().all(|m| m.retry.is_none()));
    // The session stream never closes by itself.
    assert_eq!(sse.next(Duration::from_millis(500)).await, None);
    // The dropped connection is noticed at its next write.
    eventually(TIMEOUT, || async {
        (app.state.streams.open_streams() == 1).then_some(())
    })
    .await
    .expect("one stream left open");
}

#[tokio::test]
async fn visibility_scope_and_filters() {
    let app = TestApp::spawn().await;
    let (user, ak, uid) = who(&app, USER_EMAIL, false).await;
    let (_mon, mon_ak, mon_uid) = who(&app, MONITOR_EMAIL, false).await;
    let (dadmin, _, _) = who(&app, DOMAIN_ADMIN_EMAIL, true).await;
    let (sadmin, _, _) = who(&app, ADMIN_EMAIL, true).await;
    sqlx::query("INSERT INTO domains (name) VALUES ('d2')")
        .execute(app.db.db.pool())
        .await
        .unwrap();
    let sa = Seed::new(&ak, uid);
    let sb = Seed::new(&mon_ak, mon_uid);
    let mut sc = Seed::new(&mon_ak, mon_uid);
    sc.domain = "d2".into();
    let marker = Seed::new(&ak, uid);
    for s in [&sa, &sb, &sc, &marker] {
        insert(&app, s).await;
    }

    // Refusals.
    let e = sse_open(
        &user,
        &format!("/events/session?ownerAccessKey={mon_ak}"),
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(
        (e.0, problem_slug(&e.1)),
        (StatusCode::FORBIDDEN, "generic-forbidden")
    );
    let e = sse_open(&user, "/events/session?group=nope", None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (e.0, problem_slug(&e.1)),
        (StatusCode::NOT_FOUND, "group-not-found")
    );
    let e = sse_open(&user, "/events/session?scope=all", None)
        .await
        .err()
        .unwrap();
    assert_eq!(
        (e.0, problem_slug(&e.1)),
        (StatusCode::BAD_REQUEST, "invalid-api-params")
    );
    let e = sse_open(&user, "/events/session?bogus=1", None)
        .await
        .err()
        .unwrap();
    assert_eq!(e.0, StatusCode::BAD_REQUEST);

    let mut as_user = sse_open(&user, "/events/session", None).await.unwrap();
    let mut as_dadmin = sse_open(&dadmin, "/events/session?groupName=default", None)
        .await
        .unwrap();
    let mut as_sadmin = sse_open(&sadmin, "/events/session?name=*&scope=session", None)
        .await
        .unwrap();
    let mut by_name = sse_open(
        &user,
        &format!("/events/session?sessionName={}&scope=kernel", sa.name),
        None,
    )
    .await
    .unwrap();
    // The snake-case owner key the official client sends is honoured for admins.
    let mut admin_by_name = sse_open(
        &dadmin,
        &format!(
            "/events/session?sessionName={}&owner_access_key={mon_ak}",
            sb.name
        ),
        None,
    )
    .await
    .unwrap();
    for s in [&sa, &sb, &sc] {
        publish(&app, enqueued(s.session_id)).await;
    }
    publish(
        &app,
        Event::KernelStarted {
            kernel_id: sa.id,
            session_id: sa.session_id,
            creation_id: "c".into(),
            reason: String::new(),
        },
    )
    .await;
    publish(
        &app,
        Event::SessionTerminated {
            session_id: sb.session_id,
            reason: "x".into(),
        },
    )
    .await;
    publish(&app, enqueued(marker.session_id)).await;

    let sid_of = |m: &Msg| m.json()["sessionId"].as_str().unwrap().to_string();
    let ids = |msgs: Vec<Msg>| msgs.iter().map(sid_of).collect::<Vec<_>>();
    let s = |x: &Seed| x.session_id.to_string();
    assert_eq!(ids(as_user.take(3).await), [s(&sa), s(&sa), s(&marker)]);
    assert_eq!(
        ids(as_dadmin.take(5).await),
        [s(&sa), s(&sb), s(&sa), s(&sb), s(&marker)]
    );
    assert_eq!(
        ids(as_sadmin.take(5).await),
        [s(&sa), s(&sb), s(&sc), s(&sb), s(&marker)]
    );
    let k = by_name.take(1).await;
    assert_eq!(names(&k), ["kernel_started"]);
    assert_eq!(k[0].json()["clusterRole"], "main");
    let b = admin_by_name.take(2).await;
    assert_eq!(names(&b), ["session_enqueued", "session_terminated"]);
    assert_eq!(b[1].json()["ownerAccessKey"], mon_ak);
    // Nothing else arrives for the filtered streams.
    assert_eq!(by_name.next(Duration::from_millis(300)).await, None);
    assert_eq!(as_user.next(Duration::from_millis(100)).await, None);
}

// ------------------------------------------------------------------ background tasks

async fn start_task(app: &TestApp, kind: &str, params: Value) -> Uuid {
    let task_id = Uuid::new_v4();
    app.track_redis_key(keys::bgtask_key(task_id));
    let out = app
        .bus
        .bus
        .publish_command_with_id(
            task_id,
            None,
            Command::StartBackgroundTask {
                task_id,
                kind: kind.into(),
                params,
            },
            TIMEOUT,
        )
        .await
        .expect("start task");
    // The worker answers as soon as the task is registered, not when it ends.
    match out {
        CommandOutcome::Completed(CommandReply::Ok { result }) => {
            assert_eq!(result["status"], "started")
        }
        other => panic!("unexpected {other:?}"),
    }
    task_id
}

async fn task_hash(app: &TestApp, task_id: Uuid) -> std::collections::HashMap<String, String> {
    let mut conn = app.redis.get().await.unwrap();
    redis::cmd("HGETALL")
        .arg(keys::bgtask_key(task_id))
        .query_async(&mut *conn)
        .await
        .unwrap()
}

#[tokio::test]
async fn background_task_progress_done_and_replay() {
    let app = TestApp::spawn().await;
    let (user, _, _) = who(&app, USER_EMAIL, false).await;
    let task = start_task(
        &app,
        bgtask::KIND_PROBE,
        json!({"steps": 3, "step_ms": 300}),
    )
    .await;
    let mut sse = sse_open(
        &user,
        &format!("/events/background-task?task_id={task}"),
        None,
    )
    .await
    .expect("open");
    let msgs = sse.until("server_close").await;
    let n = names(&msgs);
    assert_eq!(&n[n.len() - 2..], ["bgtask_done", "server_close"], "{n:?}");
    assert!(
        n[..n.len() - 2].iter().all(|e| *e == "bgtask_updated") && n.len() >= 3,
        "{n:?}"
    );
    let last_update = &msgs[n.len() - 3];
    assert_eq!(
        last_update.json(),
        json!({"task_id": task.to_string(), "message": "step 3 of 3", "current_progress": 3, "total_progress": 3})
    );
    assert_eq!(last_update.retry, Some(5));
    assert!(last_update.id.is_some());
    let done = &msgs[n.len() - 2];
    assert_eq!(
        done.json(),
        json!({"task_id": task.to_string(), "message": "3 steps done"})
    );
    assert_eq!(done.retry, Some(5));
    assert_eq!(msgs[n.len() - 1].data, "{}");
    assert_eq!(
        sse.next(Duration::from_millis(300)).await,
        None,
        "closed after server_close"
    );

    // A finished task: one `task_done` (progress as strings), then server_close.
    let mut sse = sse_open(
        &user,
        &format!("/events/background-task?taskId={task}"),
        None,
    )
    .await
    .expect("open");
    let msgs = sse.until("server_close").await;
    assert_eq!(names(&msgs), ["task_done", "server_close"]);
    assert_eq!(
        msgs[0].json(),
        json!({"task_id": task.to_string(), "status": "done", "current_progress": "3", "total_progress": "3", "message": "3 steps done"})
    );
    let h = task_hash(&app, task).await;
    assert_eq!(h["status"], "done");
    assert!(h.contains_key("started_at") && h.contains_key("last_update"));
    let mut conn = app.redis.get().await.unwrap();
    let ttl: i64 = redis::cmd("TTL")
        .arg(keys::bgtask_key(task))
        .query_async(&mut *conn)
        .await
        .unwrap();
    assert!(ttl > 86_000 && ttl <= 86_400, "{ttl}");

    // Unknown and malformed ids.
    let e = sse_open(
        &user,
        &format!("/events/background-task?task_id={}", Uuid::new_v4()),
        None,
    )
    .await
    .err()
    .unwrap();
    assert_eq!(e.0, StatusCode::NOT_FOUND);
    assert_eq!(e.1["msg"], "No such background task.");
    let e = sse_open(&user, "/events/background-task?task_id=nope", None)
        .await
        .err()
        .unwrap();
    assert_eq!(e.0, StatusCode::BAD_REQUEST);
}

#[tokio::test]
async fn background_task_failure_and_cancellation() {
    let app = TestApp::spawn().await;
    let (user, _, _) = who(&app, USER_EMAIL, false).await;

    let failing = start_task(
        &app,
        bgtask::KIND_PROBE,
        json!({"steps": 5, "step_ms": 500, "fail_at": 2, "message": "disk on fire"}),
    )
    .await;
    let mut sse = sse_open(
        &user,
        &format!("/events/background-task?task_id={failing}"),
        None,
    )
    .await
    .unwrap();
    let msgs = sse.until("server_close").await;
    let n = names(&msgs);
    assert_eq!(
        &n[n.len() - 2..],
        ["bgtask_failed", "server_close"],
        "{n:?}"
    );
    assert_eq!(msgs[n.len() - 2].json()["message"], "disk on fire");
    let h = task_hash(&app, failing).await;
    assert_eq!(
        (h["status"].as_str(), h["msg"].as_str()),
        ("failed", "disk on fire")
    );

    let long = start_task(
        &app,
        bgtask::KIND_PROBE,
        json!({"steps": 1000, "step_ms": 100}),
    )
    .await;
    let mut sse = sse_open(
        &user,
        &format!("/events/background-task?task_id={long}"),
        None,
    )
    .await
    .unwrap();
    assert_eq!(sse.next(TIMEOUT).await.unwrap().event, "bgtask_updated");
    let out = app
        .bus
        .bus
        .publish_command(Command::CancelBackgroundTask { task_id: long }, TIMEOUT)
        .await
        .unwrap();
    assert!(
        matches!(out, CommandOutcome::Completed(CommandReply::Ok { .. })),
        "{out:?}"
    );
    let msgs = sse.until("server_close").await;
    let n = names(&msgs);
    assert_eq!(
        &n[n.len() - 2..],
        ["bgtask_cancelled", "server_close"],
        "{n:?}"
    );
    let h = task_hash(&app, long).await;
    assert_eq!(h["status"], "cancelled");
    let current: f64 = h["current"].parse().unwrap();
    assert!(current < 1000.0);
    // Cancelling an unknown task is refused.
    let out = app
        .bus
        .bus
        .publish_command(
            Command::CancelBackgroundTask {
                task_id: Uuid::new_v4(),
            },
            TIMEOUT,
        )
        .await
        .unwrap();
    assert!(
        matches!(
            out,
            CommandOutcome::Completed(CommandReply::Rejected {
                http_status: 404,
                ..
            })
        ),
        "{out:?}"
    );
}

#[tokio::test]
async fn recalculate_usage_fixes_drift() {
    let app = TestApp::spawn().await;
    let (user, ak, uid) = who(&app, USER_EMAIL, false).await;
    let (sadmin, _, _) = who(&app, ADMIN_EMAIL, true).await;
    sqlx::query(
        "INSERT INTO agents (id, status, region, scaling_group, available_slots, occupied_slots, addr, version) \
         VALUES ('agent-recalc', 'ALIVE', 'local', 'default', '{\"cpu\": \"8\"}', '{\"cpu\": \"99\"}', 'x', '21.03')",
    )
    .execute(app.db.db.pool())
    .await
    .unwrap();
    let mut k = Seed::new(&ak, uid);
    k.agent = Some("agent-recalc".into());
    k.slots = json!({"cpu": "2", "mem": "1073741824"});
    insert(&app, &k).await;
    sqlx::query("UPDATE keypairs SET concurrency_used = 7 WHERE access_key = $1")
        .bind(&ak)
        .execute(app.db.db.pool())
        .await
        .unwrap();

    let (status, body) = user
        .json(Method::POST, "/resource/recalculate-usage", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED, "{body}");
    let (status, body) = sadmin
        .json(Method::POST, "/resource/recalculate-usage", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["status"], "done");
    let task: Uuid = body["task_id"].as_str().unwrap().parse().unwrap();
    app.track_redis_key(keys::bgtask_key(task));
    let occupied: Value =
        sqlx::query_scalar("SELECT occupied_slots FROM agents WHERE id = 'agent-recalc'")
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    let num = |v: &Value| {
        v.as_str()
            .map(|s| s.parse::<f64>().unwrap())
            .or(v.as_f64())
            .unwrap()
    };
    assert_eq!(num(&occupied["cpu"]), 2.0, "{occupied}");
    assert_eq!(num(&occupied["mem"]), 1073741824.0, "{occupied}");
    let used: i32 =
        sqlx::query_scalar("SELECT concurrency_used FROM keypairs WHERE access_key = $1")
            .bind(&ak)
            .fetch_one(app.db.db.pool())
            .await
            .unwrap();
    assert_eq!(used, 1);
    assert!(task_hash(&app, task).await["msg"].contains("1 agent(s)"));
}

#[tokio::test]
async fn rescan_images_from_a_local_registry() {
    let app = TestApp::spawn().await;
    let (sadmin, _, _) = who(&app, ADMIN_EMAIL, true).await;
    let (user, _, _) = who(&app, USER_EMAIL, false).await;
    let etcd = &app.etcd.etcd;
    etcd.put("config/docker/registry/local-test", "local")
        .await
        .unwrap();
    etcd.put("config/docker/registry/local-test/type", "local")
        .await
        .unwrap();
    let images = json!([
        "lablup/python:3.9",
        {"name": "stable/r", "tag": "4.0", "digest": "sha256:abc", "size_bytes": 1234,
         "labels": {"ai.backend.resource.min.cpu": "2", "ai.backend.kernelspec": "1"}}
    ]);
    etcd.put(
        "config/docker/registry/local-test/images",
        &images.to_string(),
    )
    .await
    .unwrap();
    etcd.put("config/docker/registry/broken", "local")
        .await
        .unwrap();
    etcd.put("config/docker/registry/broken/type", "local")
        .await
        .unwrap();
    etcd.put(
        "config/docker/registry/broken/path",
        "/nonexistent/images.json",
    )
    .await
    .unwrap();

    let mutation = |registry: Value| {
        json!({"query": "mutation($registry: String) {  rescan_images(registry:$registry) {   ok msg task_id  }}",
               "variables": {"registry": registry}})
    };
    let (status, body) = user
        .json(Method::POST, "/admin/gql", Some(&mutation(Value::Null)))
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["data"]["rescan_images"]["ok"], false);

    let follow = |task: String| {
        let sadmin = sadmin.clone();
        async move {
            let mut sse = sse_open(
                &sadmin,
                &format!("/events/background-task?task_id={task}"),
                None,
            )
            .await
            .unwrap();
            sse.until("server_close").await
        }
    };
    let (status, body) = sadmin
        .json(
            Method::POST,
            "/admin/gql",
            Some(&mutation(json!("local-test"))),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let r = &body["data"]["rescan_images"];
    assert_eq!(
        (r["ok"].as_bool(), r["msg"].as_str()),
        (Some(true), Some("")),
        "{body}"
    );
    let task = r["task_id"].as_str().unwrap().to_string();
    app.track_redis_key(format!("bgtask.{task}"));
    let msgs = follow(task.clone()).await;
    let last = &msgs[msgs.len() - 2];
    assert!(
        ["bgtask_done", "task_done"].contains(&last.event.as_str()),
        "{msgs:?}"
    );
    assert_eq!(
        etcd.get("images/local-test/stable%2Fr/4.0")
            .await
            .unwrap()
            .as_deref(),
        Some("sha256:abc")
    );
    assert_eq!(
        etcd.get("images/local-test/stable%2Fr/4.0/resource/cpu/min")
            .await
            .unwrap()
            .as_deref(),
        Some("2")
    );
    assert_eq!(
        etcd.get("images/local-test/stable%2Fr/4.0/size_bytes")
            .await
            .unwrap()
            .as_deref(),
        Some("1234")
    );
    assert_eq!(
        etcd.get("images/local-test/lablup%2Fpython")
            .await
            .unwrap()
            .as_deref(),
        Some("1")
    );
    assert!(etcd
        .get("images/local-test/lablup%2Fpython/3.9")
        .await
        .unwrap()
        .is_some_and(|d| d.starts_with("sha256:")));

    // A registry whose list cannot be read: the task fails with the reason.
    let (_, body) = sadmin
        .json(Method::POST, "/admin/gql", Some(&mutation(json!("broken"))))
        .await
        .unwrap();
    let task = body["data"]["rescan_images"]["task_id"]
        .as_str()
        .unwrap()
        .to_string();
    app.track_redis_key(format!("bgtask.{task}"));
    let msgs = follow(task).await;
    let last = &msgs[msgs.len() - 2];
    assert!(
        ["bgtask_failed", "task_failed"].contains(&last.event.as_str()),
        "{msgs:?}"
    );
    assert!(last.json()["message"]
        .as_str()
        .unwrap()
        .contains("cannot read /nonexistent/images.json"));
}

// ------------------------------------------------------------------ idle checker

#[tokio::test]
async fn idle_sessions_are_terminated_busy_and_batch_ones_kept() {
    let app = TestApp::spawn().await;
    let pool = app.db.db.pool();
    sqlx::query(
        "INSERT INTO keypair_resource_policies (name, default_for_unspecified, total_resource_slots, \
         max_concurrent_sessions, max_containers_per_session, max_vfolder_count, max_vfolder_size, idle_timeout, \
         allowed_vfolder_hosts) VALUES ('idle-short', 'UNLIMITED', '{}', 30, 1, 10, 0, 5, '{}'), \
         ('idle-never', 'UNLIMITED', '{}', 30, 1, 10, 0, 0, '{}')",
    )
    .execute(pool)
    .await
    .unwrap();
    let (_, ak, uid) = who(&app, USER_EMAIL, false).await;
    let (_, ak_never, _) = who(&app, USER_EMAIL, false).await;
    for (key, policy) in [(&ak, "idle-short"), (&ak_never, "idle-never")] {
        sqlx::query("UPDATE keypairs SET resource_policy = $2 WHERE access_key = $1")
            .bind(key)
            .bind(policy)
            .execute(pool)
            .await
            .unwrap();
    }
    let hour_ago = Utc::now() - chrono::TimeDelta::hours(1);
    let old = |key: &str| {
        let mut s = Seed::new(key, uid);
        s.status_changed = Some(hour_ago);
        s.created_at = hour_ago;
        s
    };
    let idle = old(&ak);
    let busy = old(&ak);
    let executing = old(&ak);
    let mut batch = old(&ak);
    batch.session_type = "BATCH";
    let never = old(&ak_never);
    let fresh = Seed::new(&ak, uid); // started just now: the start counts as an access
    let mut stale_access = old(&ak); // accessed long ago
    stale_access.name.push('x');
    for s in [
        &idle,
        &busy,
        &executing,
        &batch,
        &never,
        &fresh,
        &stale_access,
    ] {
        insert(&app, s).await;
        app.track_redis_key(keys::last_access_key(s.session_id));
    }
    {
        let mut conn = app.redis.get().await.unwrap();
        let now = Utc::now().timestamp();
        for (s, v) in [
            (&busy, now.to_string()),
            (&executing, "0".into()),
            (&stale_access, (now - 600).to_string()),
        ] {
            let _: () = redis::cmd("SET")
                .arg(keys::last_access_key(s.session_id))
                .arg(v)
                .query_async(&mut *conn)
                .await
                .unwrap();
        }
    }
    // The API writes the key this checker reads.
    assert_eq!(
        bai_api::session::access::last_access_key(idle.session_id),
        keys::last_access_key(idle.session_id)
    );

    let mut opts = bai_workers::idle::IdleOptions::new("test-a");
    opts.period = Duration::from_secs(3);
    opts.redis_prefix = format!("{}:", app.bus.prefix);
    app.track_redis_key(opts.lock_key());
    let ctx = app.worker_ctx.clone();
    // Two workers in the same period: exactly one does the pass.
    let mut other = opts.clone();
    other.instance = "test-b".into();
    let (a, b) = tokio::join!(
        bai_workers::idle::idle_pass(&ctx, &opts),
        bai_workers::idle::idle_pass(&ctx, &other)
    );
    let (a, b) = (a.unwrap(), b.unwrap());
    assert!(a.is_some() != b.is_some(), "{a:?} {b:?}");
    let report = a.or(b).unwrap();
    let mut found = report.idle.clone();
    found.sort();
    let mut expected = vec![idle.session_id, stale_access.session_id];
    expected.sort();
    assert_eq!(found, expected);
    assert_eq!(
        report.checked, 5,
        "batch sessions and never-idle policies are not candidates"
    );

    let pool = app.db.db.pool().clone();
    let status = |sid: Uuid| {
        let pool = pool.clone();
        async move {
            sqlx::query_as::<_, (String, Option<String>)>(
                "SELECT status::text, status_info FROM kernels WHERE id = $1",
            )
            .bind(sid)
            .fetch_one(&pool)
            .await
            .unwrap()
        }
    };
    let ended = eventually(TIMEOUT, || async {
        let s = status(idle.session_id).await;
        (s.0 == "TERMINATING").then_some(s)
    })
    .await
    .expect("idle session terminated");
    assert_eq!(ended.1.as_deref(), Some("idle-timeout"));
    eventually(TIMEOUT, || async {
        (status(stale_access.session_id).await.0 == "TERMINATING").then_some(())
    })
    .await
    .expect("stale session terminated");
    for s in [&busy, &executing, &batch, &never, &fresh] {
        assert_eq!(status(s.session_id).await.0, "RUNNING", "{}", s.name);
    }

    // Disabled in etcd: nothing is checked.
    tokio::time::sleep(opts.period).await;
    app.etcd.etcd.put("config/idle/enabled", "").await.unwrap();
    let r = bai_workers::idle::idle_pass(&ctx, &opts)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(r, bai_workers::idle::IdleReport::default());
}

// ------------------------------------------------------------------ usage accounting

fn at(y: i32, mo: u32, d: u32, h: u32, mi: u32) -> DateTime<Utc> {
    Utc.with_ymd_and_hms(y, mo, d, h, mi, 0).unwrap()
}

#[tokio::test]
async fn usage_is_slots_times_duration_and_includes_forced_terminations() {
    let app = TestApp::spawn().await;
    let (user, ak, uid) = who(&app, USER_EMAIL, false).await;
    let (sadmin, _, _) = who(&app, ADMIN_EMAIL, true).await;
    let group = default_group(&app).await;
    let ended = |from: DateTime<Utc>, to: DateTime<Utc>, cpu: &str, mem: &str| {
        let mut s = Seed::new(&ak, uid);
        s.status = "TERMINATED";
        s.created_at = from;
        s.terminated_at = Some(to);
        s.status_changed = Some(to);
        s.slots = json!({"cpu": cpu, "mem": mem});
        s
    };
    let mut u1 = ended(
        at(2021, 5, 10, 10, 0),
        at(2021, 5, 10, 12, 0),
        "2",
        "1073741824",
    );
    u1.slots["cuda.devices"] = json!("1");
    u1.last_stat = Some(json!({
        "cpu_used": {"current": "1500", "unit_hint": "msec"},
        "mem": {"current": "52428800", "capacity": null},
        "io_read": {"current": "100"}, "io_write": {"current": "200"},
        "io_scratch_size": {"stats.max": "4096"}
    }));
    let mut forced = ended(
        at(2021, 5, 20, 0, 0),
        at(2021, 5, 21, 6, 30),
        "0.5",
        "536870912",
    );
    forced.status_info = Some("force-terminated".into());
    let mut cancelled = ended(at(2021, 5, 12, 0, 0), at(2021, 5, 12, 1, 0), "8", "1");
    cancelled.status = "CANCELLED";
    let mut running = Seed::new(&ak, uid);
    running.created_at = at(2021, 5, 31, 23, 0);
    running.slots = json!({"cpu": "1", "mem": "1073741824"});
    let april = ended(at(2021, 4, 10, 0, 0), at(2021, 4, 10, 1, 0), "1", "1");
    let spanning = ended(at(2021, 4, 30, 23, 0), at(2021, 5, 1, 1, 0), "4", "0");
    for s in [&u1, &forced, &cancelled, &running, &april, &spanning] {
        insert(&app, s).await;
    }

    let (status, body) = sadmin
        .json(
            Method::GET,
            "/resource/usage/period",
            Some(&json!({"start_date": "20210501", "end_date": "20210531"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{body}");
    let groups = body.as_array().unwrap();
    assert_eq!(groups.len(), 1);
    let g = &groups[0];
    assert_eq!(g["g_id"], group.to_string());
    assert_eq!(g["g_name"], "default");
    assert_eq!(g["domain_name"], "default");
    let infos = g["c_infos"].as_array().unwrap();
    let by_id = |id: Uuid| {
        infos
            .iter()
            .find(|c| c["id"] == id.to_string())
            .unwrap_or_else(|| panic!("{id} missing"))
    };
    let mut ids: Vec<String> = infos
        .iter()
        .map(|c| c["id"].as_str().unwrap().to_string())
        .collect();
    ids.sort();
    let mut expected: Vec<String> = [&u1, &forced, &running, &spanning]
        .iter()
        .map(|s| s.id.to_string())
        .collect();
    expected.sort();
    assert_eq!(
        ids, expected,
        "CANCELLED and April kernels excluded; the forced one included"
    );

    let c = by_id(u1.id);
    assert_eq!(c["cpu_allocated"], 2.0);
    assert_eq!(c["mem_allocated"], 1073741824);
    assert_eq!(c["gpu_allocated"], 1.0);
    assert_eq!(c["cpu_used"], 1500.0);
    assert_eq!(c["mem_used"], 52428800);
    assert_eq!(
        (
            c["io_read"].as_i64(),
            c["io_write"].as_i64(),
            c["disk_used"].as_i64()
        ),
        (Some(100), Some(200), Some(4096))
    );
    assert_eq!(c["shared_memory"], 67108864);
    assert_eq!(c["used_time"], "2:00:00");
    assert_eq!(c["used_days"], 1);
    assert_eq!(c["created_at"], "2021-05-10 10:00:00+00:00");
    assert_eq!(c["terminated_at"], "2021-05-10 12:00:00+00:00");
    assert_eq!(c["status"], "TERMINATED");
    assert_eq!(c["nfs"], json!(["local:volume1"]));
    assert_eq!(c["name"], u1.name);
    assert_eq!(c["access_key"], ak);
    assert_eq!(c["email"], USER_EMAIL);
    assert_eq!(c["used_seconds"], 7200.0);
    assert_eq!(c["cpu_seconds"], 14400.0);
    assert_eq!(c["gpu_seconds"], 7200.0);
    assert_eq!(c["mem_byte_seconds"], 1073741824.0 * 7200.0);
    assert_eq!(c["slot_seconds"]["cpu"], 14400.0);

    let c = by_id(forced.id);
    assert_eq!(c["used_time"], "1 day, 6:30:00");
    assert_eq!(c["used_days"], 2);
    assert_eq!(c["used_seconds"], 109800.0);
    assert_eq!(c["cpu_seconds"], 54900.0);

    let c = by_id(running.id);
    assert_eq!(c["terminated_at"], "None");
    assert_eq!(c["used_time"], Value::Null);
    assert_eq!(
        c["used_seconds"], 3600.0,
        "clipped to the end of the period"
    );

    let c = by_id(spanning.id);
    assert_eq!(c["used_time"], "2:00:00");
    assert_eq!(
        c["used_seconds"], 3600.0,
        "clipped to the start of the period"
    );

    assert_eq!(g["g_cpu_allocated"], 7.5);
    assert_eq!(g["g_cpu_seconds"], 14400.0 + 54900.0 + 3600.0 + 14400.0);
    assert_eq!(g["g_used_seconds"], 7200.0 + 109800.0 + 3600.0 + 3600.0);
    assert_eq!(g["g_mem_used"], 52428800);

    // The month endpoint agrees; group filters; the errata's null rule; limits; roles.
    let (status, month) = sadmin
        .json(
            Method::GET,
            "/resource/usage/month",
            Some(&json!({"month": "202105", "group_ids": []})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK, "{month}");
    assert_eq!(month, body);
    let (_, month) = sadmin
        .json(
            Method::GET,
            "/resource/usage/month",
            Some(&json!({"month": "202105", "group_ids": [Uuid::new_v4().to_string()]})),
        )
        .await
        .unwrap();
    assert_eq!(month, json!([]));
    let (status, _) = sadmin
        .json(
            Method::GET,
            "/resource/usage/month",
            Some(&json!({"month": "202105", "group_ids": null})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST);
    let (status, e) = sadmin
        .json(
            Method::GET,
            "/resource/usage/month",
            Some(&json!({"month": "202113", "group_ids": []})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, e["msg"].as_str()),
        (StatusCode::BAD_REQUEST, Some("Invalid date values"))
    );
    let (status, e) = sadmin
        .json(
            Method::GET,
            "/resource/usage/period",
            Some(&json!({"start_date": "20210101", "end_date": "20210601"})),
        )
        .await
        .unwrap();
    assert_eq!(
        (status, e["msg"].as_str()),
        (
            StatusCode::BAD_REQUEST,
            Some("Cannot query more than 100 days")
        )
    );
    let (status, e) = sadmin
        .json(
            Method::GET,
            "/resource/usage/period",
            Some(&json!({"start_date": "20210510", "end_date": "20210501"})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::BAD_REQUEST, "{e}");
    let (status, _) = user
        .json(
            Method::GET,
            "/resource/usage/month",
            Some(&json!({"month": "202105", "group_ids": []})),
        )
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn monthly_stats_count_every_bin_a_kernel_lived_in() {
    let app = TestApp::spawn().await;
    let (user, ak, uid) = who(&app, USER_EMAIL, false).await;
    let (sadmin, _, _) = who(&app, ADMIN_EMAIL, true).await;
    let (_, mon_ak, mon_uid) = who(&app, MONITOR_EMAIL, false).await;
    let now = Utc::now();
    let mut done = Seed::new(&ak, uid);
    done.status = "TERMINATED";
    done.created_at = now - chrono::TimeDelta::minutes(240);
    done.terminated_at = Some(now - chrono::TimeDelta::minutes(120));
    done.slots = json!({"cpu": "1", "mem": "1000"});
    done.last_stat =
        Some(json!({"io_read": {"current": "10"}, "io_scratch_size": {"stats.max": "77"}}));
    let mut running = Seed::new(&ak, uid);
    running.created_at = now - chrono::TimeDelta::minutes(50);
    running.slots = json!({"cpu": "2", "mem": "2000"});
    let mut theirs = Seed::new(&mon_ak, mon_uid);
    theirs.created_at = now - chrono::TimeDelta::minutes(50);
    theirs.slots = json!({"cpu": "4", "mem": "4000"});
    for s in [&done, &running, &theirs] {
        insert(&app, s).await;
    }
    let (status, body) = user
        .json(Method::GET, "/resource/stats/user/month", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    let bins = body.as_array().unwrap();
    assert_eq!(bins.len(), 2880);
    let val = |b: &Value, k: &str| b[k]["value"].as_f64().unwrap();
    // 2 h of life over 15-min bins: 8 or 9 bins (alignment), each with the kernel.
    let with_done = bins
        .iter()
        .filter(|b| val(b, "cpu_allocated") == 1.0)
        .count();
    assert!((8..=9).contains(&with_done), "{with_done}");
    let last = bins.last().unwrap();
    assert_eq!(val(last, "num_sessions"), 1.0);
    assert_eq!(val(last, "cpu_allocated"), 2.0);
    assert_eq!(val(last, "mem_allocated"), 2000.0);
    assert_eq!(last["mem_allocated"]["unit_hint"], "bytes");
    let with_disk = bins
        .iter()
        .find(|b| b["disk_used"]["value "].as_i64() == Some(77));
    assert!(
        with_disk.is_some(),
        "disk_used carries the original's \"value \" key"
    );
    assert!(bins.windows(2).all(|w| (w[1]["date"].as_f64().unwrap()
        - w[0]["date"].as_f64().unwrap()
        - 900.0)
        .abs()
        < 1e-6));

    let (status, body) = sadmin
        .json(Method::GET, "/resource/stats/admin/month", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::OK);
    assert_eq!(
        val(body.as_array().unwrap().last().unwrap(), "cpu_allocated"),
        6.0
    );
    let (status, _) = user
        .json(Method::GET, "/resource/stats/admin/month", None)
        .await
        .unwrap();
    assert_eq!(status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn last_stat_is_copied_at_termination() {
    let app = TestApp::spawn().await;
    let (_, ak, uid) = who(&app, USER_EMAIL, false).await;
    let k = Seed::new(&ak, uid);
    insert(&app, &k).await;
    let prefix = format!("{}:", app.bus.prefix);
    let stat_key = bai_workers::agents::RedisKeys::new(&prefix).kernel_stat(k.id);
    app.track_redis_key(stat_key.clone());
    let stat =
        json!({"cpu_used": {"current": "4200", "unit_hint": "msec"}, "mem": {"current": "1024"}});
    {
        let mut conn = app.redis.get().await.unwrap();
        let _: () = redis::cmd("SET")
            .arg(&stat_key)
            .arg(stat.to_string())
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
    let stop = tokio_util::sync::CancellationToken::new();
    tokio::spawn(bai_workers::usage::run_stat_sync(
        app.worker_ctx.clone(),
        bai_workers::usage::StatSyncOptions {
            redis_prefix: prefix,
        },
        stop.clone(),
    ));
    // The durable consumer starts at new events: wait until it exists.
    let js = app.bus.bus.jetstream().clone();
    let stream_name = app.bus.bus.subjects().events_stream();
    eventually(TIMEOUT, || {
        let js = js.clone();
        let stream_name = stream_name.clone();
        async move {
            let s = js.get_stream(stream_name).await.ok()?;
            s.consumer_info(bai_workers::usage::STAT_SYNC_CONSUMER)
                .await
                .ok()
                .map(|_| ())
        }
    })
    .await
    .expect("consumer up");
    publish(
        &app,
        Event::KernelTerminated {
            kernel_id: k.id,
            session_id: k.session_id,
            reason: "x".into(),
            exit_code: 0,
        },
    )
    .await;
    let copied = eventually(TIMEOUT, || async {
        sqlx::query_scalar::<_, Option<Value>>("SELECT last_stat FROM kernels WHERE id = $1")
            .bind(k.id)
            .fetch_one(app.db.db.pool())
            .await
            .ok()
            .flatten()
    })
    .await
    .expect("last_stat copied");
    assert_eq!(copied, stat);
    stop.cancel();
}

// ------------------------------------------------------------------ the official client

/// `backend.ai events <session-id>` from the official 21.3.6 client, if installed
/// (`bash /work/shared/conformance/install-client.sh`).
#[tokio::test]
async fn official_client_prints_session_events() {
    let home = std::env::var("HOME").unwrap_or_default();
    let cli = std::path::PathBuf::from(format!(
        "{home}/.cache/backend.ai-client-21.3.6/bin/backend.ai"
    ));
    if !cli.exists() {
        eprintln!(
            "skipped: the official client is not installed at {}",
            cli.display()
        );
        return;
    }
    let app = TestApp::spawn().await;
    let (ak, sk) = app.keypair(USER_EMAIL, false, 1_000_000, true).await;
    let uid = app.user_uuid(USER_EMAIL).await;
    let s = Seed::new(&ak, uid);
    insert(&app, &s).await;
    let mut child = tokio::process::Command::new(&cli)
        .arg("events")
        .arg(s.session_id.to_string())
        .env("BACKEND_ENDPOINT", &app.base)
        .env("BACKEND_ACCESS_KEY", &ak)
        .env("BACKEND_SECRET_KEY", &sk)
        .env("PYTHONUNBUFFERED", "1")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("run the client");
    eventually(TIMEOUT, || async {
        (app.state.streams.open_streams() > 0).then_some(())
    })
    .await
    .expect("the client connected");
    publish(&app, enqueued(s.session_id)).await;
    publish(
        &app,
        Event::SessionTerminated {
            session_id: s.session_id,
            reason: "user-requested".into(),
        },
    )
    .await;
    let mut stdout = child.stdout.take().unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(TIMEOUT, async {
        use tokio::io::AsyncReadExt;
        let mut buf = [0u8; 4096];
        loop {
            let n = stdout.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            out.extend_from_slice(&buf[..n]);
            if String::from_utf8_lossy(&out).contains("session_terminated") {
                break;
            }
        }
    })
    .await;
    let _ = child.kill().await;
    let mut err = Vec::new();
    if let Some(mut stderr) = child.stderr.take() {
        use tokio::io::AsyncReadExt;
        let _ = tokio::time::timeout(Duration::from_secs(2), stderr.read_to_end(&mut err)).await;
    }
    let text = format!(
        "{}\n--- stderr:\n{}",
        String::from_utf8_lossy(&out),
        String::from_utf8_lossy(&err)
    );
    // `click.style(name)` (ANSI codes) then the data's Python repr.
    let plain: String = text
        .split('\u{1b}')
        .enumerate()
        .map(|(i, p)| {
            if i == 0 {
                p
            } else {
                p.split_once('m').map_or(p, |(_, r)| r)
            }
        })
        .collect();
    assert!(plain.contains("session_enqueued {'reason': ''"), "{text}");
    assert!(
        plain.contains(&format!("'sessionId': '{}'", s.session_id)),
        "{text}"
    );
    assert!(
        plain.contains("session_terminated {'reason': 'user-requested'"),
        "{text}"
    );
}

// ------------------------------------------------------------------ the hub itself

/// A subscriber that falls far behind (its channel holds 4 events) is dropped from the
/// hub's routing and catches up from the stream: every event, in order, once; and a
/// subscription resumed after a sequence starts right after it.
#[tokio::test]
async fn hub_subscribers_catch_up_after_lagging() {
    let tb = bai_tests::TestBus::new(Default::default()).await;
    let hub = bai_events::EventHub::new(
        tb.bus.clone(),
        bai_events::HubOptions {
            channel_capacity: 4,
            ..Default::default()
        },
    );
    let key = Uuid::new_v4();
    let mut one = hub
        .subscribe(Some(key), bai_events::FeedStart::New)
        .await
        .unwrap();
    let mut all = hub
        .subscribe(None, bai_events::FeedStart::New)
        .await
        .unwrap();
    let mut mine = Vec::new();
    let mut every = Vec::new();
    for i in 0..60 {
        let ev = if i % 3 == 0 {
            enqueued(Uuid::new_v4())
        } else {
            enqueued(key)
        };
        let seq = tb.bus.publish_event(ev).await.unwrap();
        if i % 3 != 0 {
            mine.push(seq);
        }
        every.push(seq);
    }
    // Nobody read while 60 events went by: both lagged long ago.
    let mut got = Vec::new();
    while got.len() < mine.len() {
        let item = tokio::time::timeout(TIMEOUT, one.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(item.sequence);
    }
    assert_eq!(got, mine);
    let mut got = Vec::new();
    while got.len() < every.len() {
        let item = tokio::time::timeout(Duration::from_secs(5), all.next())
            .await
            .unwrap_or_else(|_| panic!("stuck after {got:?} of {every:?}"))
            .unwrap()
            .unwrap();
        got.push(item.sequence);
    }
    assert_eq!(got, every);
    // Live again after catching up.
    let seq = tb.bus.publish_event(enqueued(key)).await.unwrap();
    let item = tokio::time::timeout(TIMEOUT, one.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(item.sequence, seq);
    mine.push(seq);
    // Resume after the 10th of mine.
    let mut resumed = hub
        .subscribe(Some(key), bai_events::FeedStart::After(mine[9]))
        .await
        .unwrap();
    let mut got = Vec::new();
    while got.len() < mine.len() - 10 {
        let item = tokio::time::timeout(TIMEOUT, resumed.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        got.push(item.sequence);
    }
    assert_eq!(got, mine[10..]);
    assert!(
        tokio::time::timeout(Duration::from_millis(300), resumed.next())
            .await
            .is_err()
    );
}

/// A task longer than `ack_wait` is not handed to a second worker while it runs (the
/// runtime extends the command), and a task whose worker dies mid-way is run again by
/// another worker after `ack_wait`, to completion.
#[tokio::test]
async fn background_tasks_outlive_ack_wait_and_their_worker() {
    use std::sync::Arc;
    let db = bai_tests::TestDb::new().await;
    let tb = bai_tests::TestBus::new(bai_events::BusOptions {
        ack_wait: Duration::from_secs(2),
        ..Default::default()
    })
    .await;
    let redis = bai_core::redis::connect(&db.config.redis, TIMEOUT)
        .await
        .unwrap();
    let worker = |name: &'static str| {
        let db = db.db.clone();
        let redis = redis.clone();
        let tb = &tb;
        async move {
            let ctx = Arc::new(bai_workers::WorkerContext {
                db,
                bus: tb.peer(name).await,
                etcd: None,
                redis: Some(redis),
                agent_rpc: None,
                metrics: Arc::default(),
            });
            let stop = tokio_util::sync::CancellationToken::new();
            let opts = bai_workers::WorkerOptions {
                concurrency: 4,
                shutdown_grace: Duration::ZERO,
            };
            tokio::spawn(bai_workers::run_command_loop(ctx, opts, stop.clone()));
            stop
        }
    };
    let hub = bai_events::EventHub::new(tb.bus.clone(), Default::default());
    let updates = |task: Uuid| {
        let hub = hub.clone();
        async move {
            hub.subscribe(Some(task), bai_events::FeedStart::All)
                .await
                .unwrap()
        }
    };
    let hash = |task: Uuid| {
        let redis = redis.clone();
        async move {
            let mut conn = redis.get().await.unwrap();
            redis::cmd("HGETALL")
                .arg(keys::bgtask_key(task))
                .query_async::<std::collections::HashMap<String, String>>(&mut *conn)
                .await
                .unwrap()
        }
    };
    let start = |task: Uuid, params: Value| {
        let bus = tb.bus.clone();
        async move {
            bus.publish_command_with_id(
                task,
                None,
                Command::StartBackgroundTask {
                    task_id: task,
                    kind: bgtask::KIND_PROBE.into(),
                    params,
                },
                TIMEOUT,
            )
            .await
            .unwrap()
        }
    };
    let cleanup: Vec<Uuid> = vec![Uuid::new_v4(), Uuid::new_v4()];

    // 1. Three steps of 2 s on one worker, ack_wait 2 s: run once (3 updates, 1 outcome).
    let stop_a = worker("worker-a").await;
    let long = cleanup[0];
    start(long, json!({"steps": 3, "step_ms": 2000})).await;
    let mut sub = updates(long).await;
    let mut seen = Vec::new();
    while let Ok(Some(Ok(item))) = tokio::time::timeout(TIMEOUT, sub.next()).await {
        seen.push(item.name().to_string());
        if item.name() != "bgtask_updated" {
            break;
        }
    }
    assert_eq!(
        seen,
        [
            "bgtask_updated",
            "bgtask_updated",
            "bgtask_updated",
            "bgtask_done"
        ]
    );

    // 2. The worker dies after the first step; another one finishes the task.
    let crash = cleanup[1];
    start(crash, json!({"steps": 3, "step_ms": 700})).await;
    let mut sub = updates(crash).await;
    let first = tokio::time::timeout(TIMEOUT, sub.next())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert_eq!(first.name(), "bgtask_updated");
    stop_a.cancel();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(hash(crash).await["status"], "started");
    let stop_b = worker("worker-b").await;
    let mut last = String::new();
    while let Ok(Some(Ok(item))) = tokio::time::timeout(TIMEOUT, sub.next()).await {
        last = item.name().to_string();
        if last != "bgtask_updated" {
            break;
        }
    }
    assert_eq!(last, "bgtask_done");
    let h = hash(crash).await;
    assert_eq!((h["status"].as_str(), h["current"].as_str()), ("done", "3"));
    stop_b.cancel();
    let mut conn = redis.get().await.unwrap();
    for t in cleanup {
        let _: () = redis::cmd("DEL")
            .arg(keys::bgtask_key(t))
            .query_async(&mut *conn)
            .await
            .unwrap();
    }
}
