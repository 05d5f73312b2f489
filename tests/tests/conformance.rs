//! Conformance battery: the unmodified official `backend.ai` 21.3.6 client (Python) against
//! a whole manager started in-process — API on a free port, the worker (commands,
//! scheduler, agent ingest) and two process agents running real Python kernels.
//!
//! Every step asserts the exit code, that the client printed no error mark (`✘`: the
//! 21.3.6 CLI often reports an error and still exits 0) and the key part of the output.
//!
//! The client is found at `$BAI_CLIENT_BIN`, else `~/.cache/backend.ai-client-21.3.6`
//! (`ops/test.sh` installs it there with `shared/conformance/install-client.sh`); when it is
//! missing the test installs it itself. Only when no Python 3.11 exists at all does the
//! test skip, with a loud banner on stderr: never a silent pass.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt;
use tokio::process::{Child, Command};
use uuid::Uuid;

use bai_agent::{Agent, AgentConfig, AgentHandle};
use bai_tests::app::{Extras, TestApp, ADMIN_EMAIL};
use bai_tests::{eventually, workspace_root, TIMEOUT};

/// One client command may take this long (a `run` starts a session and a Python kernel).
const STEP_TIMEOUT: Duration = Duration::from_secs(90);

const CLIENT_VERSION_DIR: &str = "backend.ai-client-21.3.6";

/// Straight to the process's stderr: libtest captures `eprintln!` of passing tests, and a
/// skip must be seen.
fn banner(msg: &str) {
    use std::io::Write;
    let line = "!".repeat(78);
    let _ = writeln!(
        std::io::stderr(),
        "\n{line}\n!!! SKIPPED conformance battery: {msg}\n{line}\n"
    );
}

/// Whether a CPython 3.11 interpreter exists (what the install script needs).
fn python311() -> Option<String> {
    for py in ["python3.11", "python3"] {
        let ok = std::process::Command::new(py)
            .args(["-c", "import sys; assert sys.version_info[:2] == (3, 11)"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        if ok {
            return Some(py.to_string());
        }
    }
    None
}

/// The install script: `$BAI_CONFORMANCE_DIR/install-client.sh`, else `shared/` beside
/// the repository (as CI lays it out), else the team's `/work/shared`.
fn install_script() -> Option<PathBuf> {
    let mut dirs = Vec::new();
    if let Ok(d) = std::env::var("BAI_CONFORMANCE_DIR") {
        dirs.push(PathBuf::from(d));
    }
    if let Some(parent) = workspace_root().parent() {
        dirs.push(parent.join("shared/conformance"));
    }
    dirs.push(PathBuf::from("/work/shared/conformance"));
    dirs.into_iter()
        .map(|d| d.join("install-client.sh"))
        .find(|p| p.is_file())
}

/// The client binary, installing it if needed; `None` only when Python 3.11 is absent.
fn client_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("BAI_CLIENT_BIN") {
        return Some(PathBuf::from(p));
    }
    let home = PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()));
    let venv = home.join(".cache").join(CLIENT_VERSION_DIR);
    let bin = venv.join("bin/backend.ai");
    if bin.is_file() {
        return Some(bin);
    }
    let Some(py) = python311() else {
        banner(
            "the official backend.ai client needs CPython 3.11, and none was found \
             (python3.11 / python3). The conformance battery did NOT run.",
        );
        return None;
    };
    let script = install_script().unwrap_or_else(|| {
        panic!(
            "the client is not installed at {} and install-client.sh was not found \
             (set BAI_CONFORMANCE_DIR to shared/conformance)",
            bin.display()
        )
    });
    // Serialise installs of concurrently running test binaries on one lock file.
    let lock = home
        .join(".cache")
        .join(format!("{CLIENT_VERSION_DIR}.lock"));
    let _ = std::fs::create_dir_all(home.join(".cache"));
    let status = std::process::Command::new("flock")
        .arg(&lock)
        .arg("bash")
        .arg("-c")
        .arg("[ -x \"$VENV/bin/backend.ai\" ] || bash \"$0\"")
        .arg(&script)
        .env("VENV", &venv)
        .env("PYTHON", &py)
        .status()
        .expect("run install-client.sh");
    assert!(status.success(), "install-client.sh failed ({status})");
    assert!(bin.is_file(), "install-client.sh left no {}", bin.display());
    Some(bin)
}

struct Output {
    code: Option<i32>,
    text: String,
}

/// The official client with one keypair against one endpoint, run in `cwd`.
struct Client {
    bin: PathBuf,
    endpoint: String,
    access_key: String,
    secret_key: String,
    cwd: PathBuf,
}

impl Client {
    fn command(&self, args: &[&str]) -> Command {
        let mut cmd = Command::new(&self.bin);
        cmd.args(args)
            .current_dir(&self.cwd)
            .env("BACKEND_ENDPOINT", &self.endpoint)
            .env("BACKEND_ENDPOINT_TYPE", "api")
            .env("BACKEND_ACCESS_KEY", &self.access_key)
            .env("BACKEND_SECRET_KEY", &self.secret_key)
            // Plain output: no colours, no progress-bar redraws to parse around.
            .env("NO_COLOR", "1")
            .env("TERM", "dumb")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        cmd
    }

    /// Runs with `input` on stdin (answers to "Are you sure? [Y/n]").
    async fn run_with_input(&self, args: &[&str], input: Option<&str>) -> Output {
        use tokio::io::AsyncWriteExt;
        let started = std::time::Instant::now();
        let mut cmd = self.command(args);
        if input.is_some() {
            cmd.stdin(Stdio::piped());
        }
        let mut child = cmd.spawn().expect("spawn backend.ai");
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin
                .write_all(text.as_bytes())
                .await
                .expect("write the client's stdin");
        }
        let out = tokio::time::timeout(STEP_TIMEOUT, child.wait_with_output())
            .await
            .unwrap_or_else(|_| panic!("`backend.ai {}` did not finish in time", args.join(" ")))
            .expect("wait for backend.ai");
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        eprintln!(
            "$ backend.ai {}   [{} in {:.1}s]\n{}",
            args.join(" "),
            out.status,
            started.elapsed().as_secs_f64(),
            text.trim_end()
        );
        Output {
            code: out.status.code(),
            text,
        }
    }

    /// Runs a step that must succeed: exit 0, no `✘`, and every `expect` in the output.
    async fn ok(&self, args: &[&str], expect: &[&str]) -> String {
        self.ok_with_input(args, None, expect).await
    }

    /// [`Client::ok`] with `input` on stdin.
    async fn ok_with_input(&self, args: &[&str], input: Option<&str>, expect: &[&str]) -> String {
        let out = self.run_with_input(args, input).await;
        let cmd = args.join(" ");
        assert_eq!(
            out.code,
            Some(0),
            "`backend.ai {cmd}` exit code:\n{}",
            out.text
        );
        assert!(
            !out.text.contains('✘') && !out.text.contains("Traceback"),
            "`backend.ai {cmd}` reported an error:\n{}",
            out.text
        );
        for e in expect {
            assert!(
                out.text.contains(e),
                "`backend.ai {cmd}`: expected {e:?} in:\n{}",
                out.text
            );
        }
        out.text
    }
}

fn scratch_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("bai-conformance-{tag}-{}", Uuid::new_v4().simple()));
    std::fs::create_dir_all(&d).expect("scratch dir");
    d
}

/// A process agent on the app's private RabbitMQ prefix.
fn agent_config(app: &TestApp, id: &str) -> AgentConfig {
    let rabbit = app.rabbit.as_ref().expect("app with agents");
    rabbit.track_agent(id);
    let mut cfg = AgentConfig::new(id, &rabbit.url, &rabbit.prefix, scratch_dir(id));
    cfg.heartbeat_interval = Duration::from_millis(300);
    cfg.destroy_grace = Duration::from_secs(3);
    cfg.set_slot("cpu", "4").expect("cpu slot");
    cfg.set_slot("mem", "8g").expect("mem slot");
    cfg
}

/// The whole stack: API + worker (scheduler, agent ingest) + two process agents, and the
/// client bound to a fresh superadmin keypair. `None` when the client cannot exist here.
async fn stack(tag: &str) -> Option<(TestApp, Vec<AgentHandle>, Client)> {
    let bin = tokio::task::spawn_blocking(client_bin)
        .await
        .expect("client install task")?;
    bai_tests::init_tracing();
    let app = TestApp::spawn_with_extras(|_| {}, Extras::full()).await;
    let ids: Vec<String> = (1..=2).map(|i| format!("i-conf-{tag}-{i}")).collect();
    let agents: Vec<AgentHandle> = ids
        .iter()
        .map(|id| Agent::spawn(agent_config(&app, id)))
        .collect();
    let alive = eventually(TIMEOUT, || async {
        let n: i64 = sqlx::query_scalar(
            "SELECT count(*) FROM agents WHERE id = ANY($1) AND status = 'ALIVE'",
        )
        .bind(&ids)
        .fetch_one(app.db.db.pool())
        .await
        .ok()?;
        (n as usize == ids.len()).then_some(())
    })
    .await;
    assert!(alive.is_some(), "agents {ids:?} did not register");
    let (ak, sk) = app.keypair(ADMIN_EMAIL, true, 30_000, true).await;
    let client = Client {
        bin,
        endpoint: app.base.clone(),
        access_key: ak,
        secret_key: sk,
        cwd: scratch_dir(tag),
    };
    Some((app, agents, client))
}

async fn session_status(app: &TestApp, name: &str) -> Option<String> {
    sqlx::query_scalar(
        "SELECT status::text FROM kernels WHERE session_name = $1 AND cluster_role = 'main' \
         ORDER BY created_at DESC LIMIT 1",
    )
    .bind(name)
    .fetch_optional(app.db.db.pool())
    .await
    .ok()
    .flatten()
}

/// Reads a child's stdout in the background into a shared buffer.
fn capture_stdout(child: &mut Child) -> std::sync::Arc<std::sync::Mutex<String>> {
    let buf = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    if let Some(mut out) = child.stdout.take() {
        let buf = buf.clone();
        tokio::spawn(async move {
            let mut chunk = [0u8; 4096];
            while let Ok(n) = out.read(&mut chunk).await {
                if n == 0 {
                    break;
                }
                if let Ok(mut b) = buf.lock() {
                    b.push_str(&String::from_utf8_lossy(&chunk[..n]));
                }
            }
        });
    }
    buf
}

fn read_file(p: &Path) -> String {
    std::fs::read_to_string(p).unwrap_or_else(|e| panic!("read {}: {e}", p.display()))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_client_battery() {
    let Some((app, agents, c)) = stack("core").await else {
        return;
    };
    let ak = c.access_key.clone();

    // -- configuration and admin listings
    c.ok(
        &["config"],
        &[
            "Server version: 21.03.6 (API: v6.20210815)",
            "Negotiated API version: (6, '20210815')",
            ak.as_str(),
        ],
    )
    .await;
    c.ok(&["admin", "keypair"], &[ak.as_str(), "admin@lablup.com"])
        .await;
    c.ok(&["admin", "keypairs"], &[ak.as_str()]).await;
    c.ok(
        &["admin", "users"],
        &["admin@lablup.com", "user@lablup.com"],
    )
    .await;
    c.ok(&["admin", "domains"], &["default"]).await;
    c.ok(&["admin", "groups"], &["default"]).await;
    c.ok(&["admin", "scaling-groups"], &["default"]).await;
    c.ok(&["admin", "images"], &["stable/python", "3.9-ubuntu20.04"])
        .await;
    c.ok(&["admin", "keypair-resource-policies"], &["default"])
        .await;
    c.ok(&["admin", "agents"], &["i-conf-core-1", "i-conf-core-2"])
        .await;

    // -- a session's life: start, events, run, exec, ps, info, logs, files, rm
    let sess = "conf-sess";
    let out = c
        .ok(
            &[
                "start", "-t", sess, "-r", "cpu=1", "-r", "mem=256m", "python",
            ],
            &["is created and ready"],
        )
        .await;
    // "∙ Session ID <uuid> is created and ready."
    let sid = out
        .split_whitespace()
        .find_map(|w| Uuid::parse_str(w).ok())
        .unwrap_or_else(|| panic!("no session id in:\n{out}"))
        .to_string();
    assert_eq!(session_status(&app, sess).await.as_deref(), Some("RUNNING"));

    // `events` streams until it is stopped; watch it across the termination below.
    let mut events = c.command(&["events", sess]).spawn().expect("spawn events");
    let events_out = capture_stdout(&mut events);

    let out = c
        .ok(
            &["run", "--rm", "-c", "print(1)", "python"],
            &[
                "Execution finished. (exit code = 0)",
                "Cleaned up the session",
            ],
        )
        .await;
    assert!(
        out.lines().any(|l| l.trim() == "1"),
        "`run -c print(1)` did not print 1:\n{out}"
    );
    // Code in the running session (the client re-uses the session named by -t).
    c.ok(
        &["run", "-t", sess, "-c", "print(6 * 7)", "python"],
        &["42"],
    )
    .await;
    c.ok(&["ps"], &[sess, "RUNNING"]).await;
    // `info` takes the session id in API v5+ (the client checks it).
    c.ok(&["info", &sid], &[sess, sid.as_str(), "RUNNING"])
        .await;
    c.ok(&["logs", sess], &["End of logs."]).await;

    let content = format!("conformance {}\n", Uuid::new_v4());
    std::fs::write(c.cwd.join("hello.txt"), &content).expect("write hello.txt");
    c.ok(&["upload", sess, "hello.txt"], &["Uploaded."]).await;
    c.ok(&["ls", sess, "."], &["hello.txt"]).await;
    c.ok(&["download", sess, "hello.txt", "--dest", "dl"], &[])
        .await;
    assert_eq!(read_file(&c.cwd.join("dl/hello.txt")), content);

    c.ok(&["rm", sess], &["Done."]).await;
    let terminated = eventually(TIMEOUT, || async {
        (session_status(&app, sess).await.as_deref() == Some("TERMINATED")).then_some(())
    })
    .await;
    assert!(terminated.is_some(), "{sess} did not terminate");
    let seen = eventually(TIMEOUT, || async {
        let text = events_out.lock().map(|t| t.clone()).unwrap_or_default();
        text.contains("session_terminated").then_some(text)
    })
    .await;
    let _ = events.kill().await;
    let seen = seen.unwrap_or_else(|| {
        panic!(
            "`backend.ai events {sess}` never printed session_terminated:\n{}",
            events_out.lock().map(|t| t.clone()).unwrap_or_default()
        )
    });
    assert!(
        seen.contains(&format!("'sessionName': '{sess}'")),
        "events carry the session name:\n{seen}"
    );
    assert!(
        seen.contains("user-requested"),
        "termination reason:\n{seen}"
    );

    // -- admin writes: one keypair resource policy, created, modified, deleted
    let pol = format!("conf-pol-{}", &Uuid::new_v4().simple().to_string()[..8]);
    c.ok(
        &[
            "admin",
            "keypair-resource-policies",
            "add",
            &pol,
            "--total-resource-slots",
            r#"{"cpu":4}"#,
            "--max-concurrent-sessions",
            "2",
            "--max-containers-per-session",
            "1",
            "--max-vfolder-count",
            "10",
            "--max-vfolder-size",
            "0",
            "--idle-timeout",
            "3600",
            "--allowed-vfolder-hosts",
            "local:volume1",
        ],
        &["is created"],
    )
    .await;
    c.ok(
        &[
            "admin",
            "keypair-resource-policies",
            "update",
            &pol,
            "--max-concurrent-sessions",
            "5",
        ],
        &["Update succeeded."],
    )
    .await;
    let mcs: i32 = sqlx::query_scalar(
        "SELECT max_concurrent_sessions FROM keypair_resource_policies WHERE name = $1",
    )
    .bind(&pol)
    .fetch_one(app.db.db.pool())
    .await
    .expect("the policy exists");
    assert_eq!(mcs, 5);
    c.ok(&["admin", "keypair-resource-policies"], &[pol.as_str()])
        .await;
    c.ok_with_input(
        &["admin", "keypair-resource-policies", "delete", &pol],
        Some("y\n"),
        &[&format!("Resource policy {pol} is deleted.")],
    )
    .await;
    let left: i64 =
        sqlx::query_scalar("SELECT count(*) FROM keypair_resource_policies WHERE name = $1")
            .bind(&pol)
            .fetch_one(app.db.db.pool())
            .await
            .expect("count policies");
    assert_eq!(left, 0);

    // -- every step above went through /metrics too
    let metrics = reqwest::get(format!("{}/metrics", app.base))
        .await
        .expect("GET /metrics")
        .text()
        .await
        .expect("metrics body");
    assert!(
        metrics.contains(r#"bai_http_requests_total{method="POST",route="/session",status="201"}"#),
        "session creation counted by route template:\n{metrics}"
    );

    for a in agents {
        a.stop().await.expect("stop agent");
    }
    let _ = std::fs::remove_dir_all(&c.cwd);
}

// ---------------------------------------------------------------------------------------
// vfolders through the storage proxy (the `folders` and `storage` branches)
// ---------------------------------------------------------------------------------------

/// A free TCP port on 127.0.0.1.
fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

/// The `backend-ai` binary next to this test's target directory (`ops/test.sh` builds it
/// before the tests).
fn backend_ai_bin() -> PathBuf {
    let p = workspace_root().join("target/debug/backend-ai");
    assert!(
        p.is_file(),
        "{} is missing: build it first (`cargo build -p backend-ai`; ops/test.sh does)",
        p.display()
    );
    p
}

/// Starts `backend-ai storage start-server` for the app: its config is the app's (etcd
/// namespace, so it registers where the app's manager looks) plus a `[storage_proxy]`
/// section with free ports and a scratch volume.
async fn storage_proxy(app: &TestApp, dir: &Path) -> Child {
    let (mport, cport) = (free_port(), free_port());
    let cfg = format!(
        r#"[etcd]
namespace = "{ns}"
addr = "{etcd}"

[db]
addr = "{db_addr}"
name = "{db_name}"
user = "{db_user}"

[redis]
addr = "{redis}"

[nats]
url = "{nats}"
prefix = "{nats_prefix}"

[storage_proxy]
name = "local"
manager_addr = "127.0.0.1:{mport}"
client_addr = "127.0.0.1:{cport}"
client_public_url = "http://127.0.0.1:{cport}"
secret = "conformance-secret"
jwt_secret = "conformance-jwt-secret"

[storage_proxy.volumes.volume1]
backend = "vfs"
path = "{vol}"
"#,
        ns = app.config.etcd.namespace,
        etcd = app.config.etcd.addr,
        db_addr = app.config.db.addr,
        db_name = app.config.db.name,
        db_user = app.config.db.user,
        redis = app.config.redis.addr,
        nats = app.config.nats.url,
        nats_prefix = app.config.nats.prefix,
        vol = dir.join("volume1").display(),
    );
    let cfg_path = dir.join("storage.toml");
    std::fs::write(&cfg_path, cfg).expect("write storage config");
    let child = Command::new(backend_ai_bin())
        .arg("-f")
        .arg(&cfg_path)
        .args(["storage", "start-server"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .expect("spawn the storage proxy");
    let child = std::sync::Mutex::new(child);
    // Up when it has registered itself where the manager looks for proxies; a proxy that
    // exits (say, a binary without the `storage` subcommand) fails at once.
    let registered = eventually(TIMEOUT, || async {
        if let Ok(Some(status)) = child.lock().map(|mut c| c.try_wait()).unwrap_or(Ok(None)) {
            panic!(
                "`backend-ai storage start-server` exited with {status} \
                 (is the storage proxy available on this branch?)"
            );
        }
        // The fixture already names a proxy `local`: wait for *our* address.
        app.etcd
            .etcd
            .get("volumes/proxies/local/manager_api")
            .await
            .ok()
            .flatten()
            .filter(|url| url.trim_end_matches('/') == format!("http://127.0.0.1:{mport}"))
    })
    .await;
    let child = child.into_inner().expect("storage proxy handle");
    assert!(
        registered.is_some(),
        "the storage proxy did not register in etcd (volumes/proxies/local/...); \
         is `backend-ai storage start-server` available on this branch?"
    );
    child
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn official_client_vfolders() {
    let Some((app, agents, c)) = stack("vf").await else {
        return;
    };
    let mut proxy = storage_proxy(&app, &c.cwd).await;

    c.ok(&["vfolder", "list-hosts"], &["local:volume1"]).await;
    let vf = format!("confvf{}", &Uuid::new_v4().simple().to_string()[..6]);
    c.ok(
        &["vfolder", "create", &vf, "local:volume1"],
        &[&format!("Virtual folder \"{vf}\" is created.")],
    )
    .await;
    c.ok(&["vfolder", "list"], &[vf.as_str()]).await;
    let content = format!("vfolder conformance {}\n", Uuid::new_v4());
    std::fs::write(c.cwd.join("vf.txt"), &content).expect("write vf.txt");
    c.ok(&["vfolder", "upload", &vf, "vf.txt"], &["Done."])
        .await;
    c.ok(&["vfolder", "ls", &vf, "."], &["vf.txt"]).await;
    // The 21.3.6 client writes into `<base-dir>/<name>` without creating the base dir.
    std::fs::create_dir_all(c.cwd.join("dl")).expect("create dl");
    c.ok(
        &["vfolder", "download", &vf, "vf.txt", "-b", "dl"],
        &["Done."],
    )
    .await;
    assert_eq!(read_file(&c.cwd.join("dl/vf.txt")), content);
    c.ok_with_input(&["vfolder", "delete", &vf], Some("y\n"), &["Deleted."])
        .await;
    let out = c.ok(&["vfolder", "list"], &[]).await;
    assert!(!out.contains(&vf), "{vf} still listed:\n{out}");

    let _ = proxy.kill().await;
    for a in agents {
        a.stop().await.expect("stop agent");
    }
    let _ = std::fs::remove_dir_all(&c.cwd);
}
