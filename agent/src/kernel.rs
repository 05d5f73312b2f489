//! One kernel = one local process (the bundled runner) in its own work directory and its
//! own process group, spoken to over line-delimited JSON on its stdin/stdout.
//!
//! Execution state lives here: a kernel runs at most one "run" at a time; the runner
//! streams its console output, and [`Kernel::collect`] gathers it until the run finishes,
//! asks for input, or the flush timeout passes (then the client calls `continue`).

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};
use tokio::sync::{oneshot, watch, Notify};
use uuid::Uuid;

use bai_agent_proto::{push_console, ConsoleItem, ExecMode, ExecResult, KernelConfig, RemoteError};

use crate::config::RuntimeKind;

/// The runner script, shipped inside the binary.
pub const RUNNER_PY: &str = include_str!("runner.py");

/// Console output kept per kernel log file is bounded when read back.
const LOG_TAIL_BYTES: u64 = 1 << 20;

#[derive(Default)]
struct RunState {
    run_id: Option<String>,
    console: Vec<ConsoleItem>,
    finished: Option<i32>,
    /// `Some(is_password)` while the code waits for input.
    waiting: Option<bool>,
    busy: bool,
}

/// Why a kernel is being stopped (the first request wins).
#[derive(Clone, Debug)]
pub struct StopRequest {
    pub reason: String,
    pub suppress_events: bool,
}

pub struct Kernel {
    pub id: Uuid,
    pub session_id: Uuid,
    pub creation_id: String,
    pub config: KernelConfig,
    pub runtime: RuntimeKind,
    /// `{work_root}/{kernel_id}`: runner script, environ.txt, kernel.log.
    pub dir: PathBuf,
    /// `{dir}/work`: the kernel's `/home/work` (cwd and HOME).
    pub work: PathBuf,
    pub env: Vec<(String, String)>,
    /// Also the process group id (the runner leads its own group).
    pub pid: u32,
    pub started_at: Instant,
    stdin: tokio::sync::Mutex<ChildStdin>,
    run: Mutex<RunState>,
    changed: Notify,
    exit: watch::Sender<Option<i32>>,
    stop: Mutex<Option<StopRequest>>,
    completions: Mutex<HashMap<u64, oneshot::Sender<Vec<String>>>>,
    next_req: AtomicU64,
    log: Mutex<Option<std::fs::File>>,
}

/// What [`spawn`] returns: the kernel plus the pieces its supervising tasks own.
pub struct Spawned {
    pub kernel: Arc<Kernel>,
    pub child: Child,
    pub stdout: ChildStdout,
}

pub struct SpawnSpec<'a> {
    pub id: Uuid,
    pub session_id: Uuid,
    pub creation_id: &'a str,
    pub config: &'a KernelConfig,
    pub runtime: RuntimeKind,
    pub dir: &'a Path,
    pub env: Vec<(String, String)>,
    pub python: &'a Path,
}

fn bad(e: impl std::fmt::Display) -> RemoteError {
    RemoteError::internal(e.to_string())
}

/// The exit code the protocol reports: the process's own code, or 128 + signal number
/// when a signal killed it (as Docker reports container exits).
pub fn exit_code(status: ExitStatus) -> i32 {
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(-1)
}

/// Prepares the directories and starts the runner. Returns before the runner is ready.
pub async fn spawn(spec: SpawnSpec<'_>) -> Result<Spawned, RemoteError> {
    let work = spec.dir.join("work");
    tokio::fs::create_dir_all(&work).await.map_err(bad)?;
    crate::mounts::expose(&work, spec.config)?;
    let runner = spec.dir.join("runner.py");
    tokio::fs::write(&runner, RUNNER_PY).await.map_err(bad)?;
    let environ: String = spec.env.iter().map(|(k, v)| format!("{k}={v}\n")).collect();
    tokio::fs::write(spec.dir.join("environ.txt"), environ)
        .await
        .map_err(bad)?;
    let log_path = spec.dir.join("kernel.log");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
        .map_err(bad)?;
    let stderr = log.try_clone().map_err(bad)?;
    let mut child = Command::new(spec.python)
        .arg(&runner)
        .arg(spec.runtime.runner_lang())
        .current_dir(&work)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::from(stderr))
        // Its own process group, so destroy stops the runner *and* whatever it started.
        .process_group(0)
        // Dropping the handle (agent crash or abort) must not leave the process behind.
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| {
            RemoteError::internal(format!("cannot start {}: {e}", spec.python.display()))
        })?;
    let pid = child
        .id()
        .ok_or_else(|| RemoteError::internal("the kernel exited at once"))?;
    let stdin = child.stdin.take().ok_or_else(|| bad("no stdin"))?;
    let stdout = child.stdout.take().ok_or_else(|| bad("no stdout"))?;
    let (exit, _) = watch::channel(None);
    let kernel = Arc::new(Kernel {
        id: spec.id,
        session_id: spec.session_id,
        creation_id: spec.creation_id.to_string(),
        config: spec.config.clone(),
        runtime: spec.runtime,
        dir: spec.dir.to_path_buf(),
        work,
        env: spec.env,
        pid,
        started_at: Instant::now(),
        stdin: tokio::sync::Mutex::new(stdin),
        run: Mutex::new(RunState::default()),
        changed: Notify::new(),
        exit,
        stop: Mutex::new(None),
        completions: Mutex::new(HashMap::new()),
        next_req: AtomicU64::new(1),
        log: Mutex::new(Some(log)),
    });
    Ok(Spawned {
        kernel,
        child,
        stdout,
    })
}

/// Runs a shell snippet (bootstrap script, batch startup command) with the kernel's
/// environment in its work dir, output appended to the kernel log. Returns the exit code.
pub async fn run_script(
    dir: &Path,
    env: &[(String, String)],
    script: &str,
    process_group: Option<u32>,
    timeout: Duration,
) -> Result<i32, RemoteError> {
    let work = dir.join("work");
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("kernel.log"))
        .map_err(bad)?;
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .current_dir(&work)
        .env_clear()
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone().map_err(bad)?))
        .stderr(Stdio::from(log))
        .kill_on_drop(true);
    cmd.process_group(process_group.map(|p| p as i32).unwrap_or(0));
    let mut child = cmd
        .spawn()
        .map_err(|e| RemoteError::internal(format!("cannot run bash: {e}")))?;
    match tokio::time::timeout(timeout, child.wait()).await {
        Ok(Ok(status)) => Ok(exit_code(status)),
        Ok(Err(e)) => Err(bad(e)),
        Err(_) => {
            let _ = child.kill().await;
            Err(RemoteError::new(
                "timeout",
                format!("script did not finish within {timeout:?}"),
            ))
        }
    }
}

impl Kernel {
    /// Reads the runner's messages until it closes stdout. Resolves `ready` on the first
    /// `ready` message.
    pub async fn read_messages(self: Arc<Self>, stdout: ChildStdout, ready: oneshot::Sender<()>) {
        let mut ready = Some(ready);
        let mut lines = BufReader::new(stdout).lines();
        loop {
            let line = match lines.next_line().await {
                Ok(Some(l)) => l,
                Ok(None) => break,
                Err(e) => {
                    tracing::warn!(kernel_id = %self.id, error = %e, "cannot read from the kernel runner");
                    break;
                }
            };
            let msg: Value = match serde_json::from_str(&line) {
                Ok(v) => v,
                Err(_) => {
                    self.log_line(&format!("[runner] {line}\n"));
                    continue;
                }
            };
            let run_id = msg.get("run_id").and_then(Value::as_str);
            match msg.get("t").and_then(Value::as_str) {
                Some("ready") => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(());
                    }
                }
                Some("out") => {
                    let stream = msg
                        .get("stream")
                        .and_then(Value::as_str)
                        .unwrap_or("stdout");
                    let data = msg.get("data").and_then(Value::as_str).unwrap_or("");
                    self.log_line(data);
                    let mut run = self.lock_run();
                    if run.busy && (run_id.is_none() || run.run_id.as_deref() == run_id) {
                        push_console(&mut run.console, stream, data);
                    }
                    drop(run);
                    self.changed.notify_waiters();
                }
                Some("waiting-input") => {
                    let is_password = msg
                        .get("is_password")
                        .and_then(Value::as_bool)
                        .unwrap_or(false);
                    let mut run = self.lock_run();
                    if run.run_id.as_deref() == run_id {
                        run.waiting = Some(is_password);
                    }
                    drop(run);
                    self.changed.notify_waiters();
                }
                Some("finished") => {
                    let code = msg.get("exit_code").and_then(Value::as_i64).unwrap_or(0) as i32;
                    let mut run = self.lock_run();
                    if run.run_id.as_deref() == run_id {
                        run.finished = Some(code);
                        run.waiting = None;
                    }
                    drop(run);
                    self.changed.notify_waiters();
                }
                Some("completions") => {
                    let req = msg.get("req").and_then(Value::as_u64).unwrap_or(0);
                    let items: Vec<String> = msg
                        .get("items")
                        .and_then(|v| serde_json::from_value(v.clone()).ok())
                        .unwrap_or_default();
                    if let Some(tx) = self
                        .completions
                        .lock()
                        .ok()
                        .and_then(|mut c| c.remove(&req))
                    {
                        let _ = tx.send(items);
                    }
                }
                _ => {}
            }
        }
    }

    fn lock_run(&self) -> std::sync::MutexGuard<'_, RunState> {
        self.run.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn log_line(&self, text: &str) {
        if let Ok(mut guard) = self.log.lock() {
            if let Some(f) = guard.as_mut() {
                let _ = f.write_all(text.as_bytes());
            }
        }
    }

    /// Called by the supervising task when the process has exited.
    pub fn mark_exited(&self, code: i32) {
        {
            let mut run = self.lock_run();
            if run.busy && run.finished.is_none() {
                run.finished = Some(code);
            }
        }
        let _ = self.exit.send(Some(code));
        self.changed.notify_waiters();
        if let Ok(mut c) = self.completions.lock() {
            c.clear();
        }
    }

    pub fn exit_code(&self) -> Option<i32> {
        *self.exit.borrow()
    }

    /// Waits until the process has exited; returns its exit code.
    pub async fn wait_exit(&self, timeout: Duration) -> Option<i32> {
        let mut rx = self.exit.subscribe();
        let res = tokio::time::timeout(timeout, rx.wait_for(|c| c.is_some())).await;
        match res {
            Ok(Ok(v)) => *v,
            _ => None,
        }
    }

    pub fn stop_request(&self) -> Option<StopRequest> {
        self.stop.lock().ok().and_then(|s| s.clone())
    }

    /// Records why the kernel is stopping; the first request wins.
    pub fn request_stop(&self, reason: &str, suppress_events: bool) {
        if let Ok(mut s) = self.stop.lock() {
            if s.is_none() {
                *s = Some(StopRequest {
                    reason: reason.to_string(),
                    suppress_events,
                });
            }
        }
    }

    /// Sends `sig` to the kernel's whole process group.
    pub fn signal_group(&self, sig: i32) {
        // SAFETY: kill(2) with a negative pid signals a process group; no memory is touched.
        unsafe {
            libc::kill(-(self.pid as i32), sig);
        }
    }

    /// SIGTERM the group, wait `grace`, then SIGKILL. Returns the exit code.
    pub async fn terminate(
        &self,
        reason: &str,
        suppress_events: bool,
        grace: Duration,
    ) -> Option<i32> {
        self.request_stop(reason, suppress_events);
        if let Some(code) = self.exit_code() {
            return Some(code);
        }
        self.signal_group(libc::SIGTERM);
        if let Some(code) = self.wait_exit(grace).await {
            return Some(code);
        }
        tracing::warn!(kernel_id = %self.id, "kernel ignored SIGTERM; killing it");
        self.signal_group(libc::SIGKILL);
        self.wait_exit(Duration::from_secs(5)).await
    }

    async fn send(&self, cmd: Value) -> Result<(), RemoteError> {
        let mut line = serde_json::to_vec(&cmd).map_err(bad)?;
        line.push(b'\n');
        let mut stdin = self.stdin.lock().await;
        stdin.write_all(&line).await.map_err(|e| {
            RemoteError::new(
                "kernel-gone",
                format!("kernel {} is not running: {e}", self.id),
            )
        })?;
        stdin.flush().await.map_err(bad)
    }

    /// Starts a run (`query` or `batch`). Fails with `busy` while another run is going on.
    pub async fn start_run(
        &self,
        mode: ExecMode,
        run_id: Option<String>,
        code: &str,
        opts: &Value,
    ) -> Result<String, RemoteError> {
        let run_id = run_id
            .filter(|r| !r.is_empty())
            .unwrap_or_else(|| Uuid::new_v4().simple().to_string());
        {
            let mut run = self.lock_run();
            if run.busy && run.finished.is_none() {
                return Err(RemoteError::new(
                    "busy",
                    format!(
                        "kernel {} is still running {}; continue or interrupt it first",
                        self.id,
                        run.run_id.as_deref().unwrap_or("?")
                    ),
                ));
            }
            *run = RunState {
                run_id: Some(run_id.clone()),
                busy: true,
                ..Default::default()
            };
        }
        let op = if mode == ExecMode::Batch {
            "batch"
        } else {
            "exec"
        };
        self.send(json!({"op": op, "run_id": run_id, "code": code, "opts": opts}))
            .await?;
        Ok(run_id)
    }

    /// Feeds a line of input to a run that waits for it.
    pub async fn feed_input(
        &self,
        run_id: Option<&str>,
        data: &str,
    ) -> Result<String, RemoteError> {
        let current = {
            let mut run = self.lock_run();
            let current = run.run_id.clone().unwrap_or_default();
            if run_id.is_some_and(|r| r != current) || !run.busy {
                return Err(RemoteError::not_found(format!(
                    "no run {} waits for input",
                    run_id.unwrap_or("")
                )));
            }
            run.waiting = None;
            current
        };
        self.send(json!({"op": "input", "data": data})).await?;
        Ok(current)
    }

    /// Collects the output of run `run_id` for up to `flush`: `finished` when it ended,
    /// `waiting-input` when it asks for input, `continued` otherwise.
    pub async fn collect(&self, run_id: &str, flush: Duration) -> Result<ExecResult, RemoteError> {
        let deadline = tokio::time::Instant::now() + flush;
        loop {
            let notified = self.changed.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            {
                let mut run = self.lock_run();
                if run.run_id.as_deref() != Some(run_id) {
                    return Err(RemoteError::not_found(format!(
                        "no run {run_id} in kernel {}",
                        self.id
                    )));
                }
                if let Some(code) = run.finished {
                    run.busy = false;
                    return Ok(result(
                        run_id,
                        "finished",
                        std::mem::take(&mut run.console),
                        Some(code),
                        Some(json!({})),
                    ));
                }
                if let Some(is_password) = run.waiting {
                    return Ok(result(
                        run_id,
                        "waiting-input",
                        std::mem::take(&mut run.console),
                        None,
                        Some(json!({"is_password": is_password})),
                    ));
                }
                if tokio::time::Instant::now() >= deadline {
                    return Ok(result(
                        run_id,
                        "continued",
                        std::mem::take(&mut run.console),
                        None,
                        None,
                    ));
                }
            }
            let _ = tokio::time::timeout_at(deadline, notified).await;
        }
    }

    pub fn current_run(&self) -> Option<String> {
        self.lock_run().run_id.clone()
    }

    /// Interrupts the running code (KeyboardInterrupt in Python, SIGINT to bash).
    pub fn interrupt(&self) {
        // SAFETY: kill(2) on our own child's pid; no memory is touched.
        unsafe {
            libc::kill(self.pid as i32, libc::SIGINT);
        }
    }

    /// Completions from the runner (Python namespace), bounded by `timeout`.
    pub async fn complete(&self, text: &str, timeout: Duration) -> Vec<String> {
        let req = self.next_req.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        if let Ok(mut c) = self.completions.lock() {
            c.insert(req, tx);
        }
        if self
            .send(json!({"op": "complete", "req": req, "text": text}))
            .await
            .is_err()
        {
            return Vec::new();
        }
        let items = tokio::time::timeout(timeout, rx)
            .await
            .ok()
            .and_then(Result::ok);
        if let Ok(mut c) = self.completions.lock() {
            c.remove(&req);
        }
        items.unwrap_or_default()
    }

    /// The tail of the kernel log (bootstrap output, runner diagnostics, console output).
    pub async fn logs(&self) -> String {
        read_tail(&self.dir.join("kernel.log"), LOG_TAIL_BYTES).await
    }

    /// CPU time and resident memory of the runner process, from /proc.
    pub fn stats(&self) -> Value {
        let (cpu_ms, rss) = proc_usage(self.pid).unwrap_or((0, 0));
        json!({
            "cpu_used": {"current": cpu_ms.to_string(), "capacity": null, "unit_hint": "msec"},
            "mem": {"current": rss.to_string(), "capacity": null, "unit_hint": "bytes"},
            "uptime_s": self.started_at.elapsed().as_secs(),
        })
    }

    /// Resolves `rel` inside the work dir, refusing anything that escapes it.
    pub fn resolve(&self, rel: &str) -> Result<PathBuf, RemoteError> {
        resolve_in(&self.work, rel)
    }

    pub fn close_log(&self) {
        if let Ok(mut l) = self.log.lock() {
            l.take();
        }
    }
}

fn result(
    run_id: &str,
    status: &str,
    console: Vec<ConsoleItem>,
    exit_code: Option<i32>,
    options: Option<Value>,
) -> ExecResult {
    ExecResult {
        run_id: Some(run_id.to_string()),
        status: status.to_string(),
        console,
        exit_code,
        options,
        files: Vec::new(),
    }
}

/// Joins `rel` to `root` lexically, refusing `..` escapes and absolute paths outside
/// `/home/work` (which maps to `root`).
pub fn resolve_in(root: &Path, rel: &str) -> Result<PathBuf, RemoteError> {
    let rel = rel.strip_prefix("/home/work").unwrap_or(rel);
    let mut out = root.to_path_buf();
    for part in Path::new(rel).components() {
        match part {
            std::path::Component::Normal(p) => out.push(p),
            std::path::Component::CurDir | std::path::Component::RootDir => {}
            _ => {
                return Err(RemoteError::invalid(format!(
                    "path `{rel}` escapes /home/work"
                )));
            }
        }
    }
    Ok(out)
}

/// Writes the dotfiles of `internal_data.dotfiles` (`[{path, perm, data}]`, from the
/// manager's domain/group/user dotfiles) into the kernel's work dir (`/home/work`) with
/// their octal modes, creating parent directories. Paths outside `/home/work` are skipped:
/// kernels here are host processes, so nothing is written outside the work dir. Returns
/// how many files were written.
pub fn write_dotfiles(work: &Path, internal_data: &Value) -> usize {
    use std::os::unix::fs::PermissionsExt;
    let Some(files) = internal_data.get("dotfiles").and_then(Value::as_array) else {
        return 0;
    };
    let mut written = 0;
    for f in files {
        let (Some(path), Some(data)) = (
            f.get("path").and_then(Value::as_str),
            f.get("data").and_then(Value::as_str),
        ) else {
            continue;
        };
        let mode = f
            .get("perm")
            .and_then(Value::as_str)
            .and_then(|p| u32::from_str_radix(p, 8).ok())
            .filter(|m| *m <= 0o777)
            .unwrap_or(0o644);
        if path.starts_with('/') && !path.starts_with("/home/work/") {
            tracing::warn!(path, "dotfile outside /home/work skipped");
            continue;
        }
        let target = match resolve_in(work, path) {
            Ok(t) if t != work => t,
            _ => {
                tracing::warn!(path, "dotfile path refused");
                continue;
            }
        };
        let result = (|| -> std::io::Result<()> {
            if let Some(parent) = target.parent() {
                std::fs::create_dir_all(parent)?;
            }
            // Replace, never follow, whatever is there (a symlink would redirect the write).
            match std::fs::symlink_metadata(&target) {
                Ok(m) if m.is_dir() => {
                    return Err(std::io::Error::other("a directory is in the way"))
                }
                Ok(_) => std::fs::remove_file(&target)?,
                Err(_) => {}
            }
            std::fs::write(&target, data)?;
            std::fs::set_permissions(&target, std::fs::Permissions::from_mode(mode))
        })();
        match result {
            Ok(()) => written += 1,
            Err(e) => tracing::warn!(path, error = %e, "cannot write dotfile"),
        }
    }
    written
}

async fn read_tail(path: &Path, max: u64) -> String {
    let Ok(data) = tokio::fs::read(path).await else {
        return String::new();
    };
    let start = data.len().saturating_sub(max as usize);
    String::from_utf8_lossy(&data[start..]).into_owned()
}

fn proc_usage(pid: u32) -> Option<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &stat[stat.rfind(')')? + 2..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    // SAFETY: sysconf only reads a system constant.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let resident: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: as above.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) }.max(1) as u64;
    Some(((utime + stime) * 1000 / ticks, resident * page))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn paths_stay_inside() {
        let root = Path::new("/w/k/work");
        assert_eq!(
            resolve_in(root, "a/b.txt").unwrap(),
            Path::new("/w/k/work/a/b.txt")
        );
        assert_eq!(
            resolve_in(root, "/home/work/x").unwrap(),
            Path::new("/w/k/work/x")
        );
        assert_eq!(resolve_in(root, ".").unwrap(), Path::new("/w/k/work"));
        assert!(resolve_in(root, "../etc/passwd").is_err());
    }
}
