//! `backend-ai dev up`: the whole system in one foreground command for development and
//! demos. It runs the same subcommands an operator would run as separate services
//! (API server, workers, agents, storage proxy), as child processes of this binary, prefixes their
//! output, and stops them all cleanly on Ctrl-C / SIGTERM.

use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

use crate::shutdown;

pub struct DevOptions {
    pub config: Option<std::path::PathBuf>,
    pub workers: usize,
    pub agents: usize,
    pub addr: String,
    /// Worker N's metrics port is base+N-1, agent N's base+100+N-1; 0 = free ports.
    pub metrics_base_port: u16,
    /// Run `ops/demo.sh` against the stack once it is up.
    pub demo: bool,
    /// Passed on to every child (`--log-format`).
    pub log_format: Option<String>,
}

/// `ops/demo.sh` of the working directory, else of the repository this binary was built in
/// (`<repo>/target/<profile>/backend-ai`).
fn demo_script() -> Option<std::path::PathBuf> {
    let here = std::path::PathBuf::from("ops/demo.sh");
    if here.is_file() {
        return Some(here);
    }
    let exe = std::env::current_exe().ok()?;
    let repo = exe.parent()?.parent()?.parent()?;
    Some(repo.join("ops/demo.sh")).filter(|p| p.is_file())
}

/// Runs the demo story as a child that is not supervised with the stack: its end (success
/// or failure) is reported and the stack keeps running.
fn spawn_demo(port: &str) -> anyhow::Result<()> {
    let script = demo_script().ok_or_else(|| {
        anyhow::anyhow!("--demo: ops/demo.sh not found (run from the repository)")
    })?;
    let mut child = Command::new("bash")
        .arg(&script)
        .env("BACKEND_ENDPOINT", format!("http://127.0.0.1:{port}"))
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{:>10} | {line}", "demo");
            }
        });
    }
    tokio::spawn(async move {
        match child.wait().await {
            Ok(s) if s.success() => {
                println!("\nThe demo finished; the stack keeps running (Ctrl-C stops it).\n")
            }
            Ok(s) => {
                println!("\nThe demo failed ({s}); the stack keeps running (Ctrl-C stops it).\n")
            }
            Err(e) => println!("\nThe demo could not be waited for: {e}\n"),
        }
    });
    Ok(())
}

/// The metrics address of the `i`-th (0-based) process of a kind at `offset` from the base.
fn metrics_addr(base: u16, offset: u16, i: usize) -> String {
    if base == 0 {
        return "127.0.0.1:0".into();
    }
    let port = u16::try_from(i)
        .ok()
        .and_then(|i| base.checked_add(offset)?.checked_add(i))
        .unwrap_or(0);
    format!("127.0.0.1:{port}")
}

fn spawn(name: String, opts: &DevOptions, args: &[String]) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    if let Some(c) = &opts.config {
        cmd.arg("-f").arg(c);
    }
    if let Some(f) = &opts.log_format {
        cmd.arg("--log-format").arg(f);
    }
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    let mut child = cmd.spawn()?;
    for stream in [
        child
            .stdout
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
        child
            .stderr
            .take()
            .map(|s| Box::new(s) as Box<dyn tokio::io::AsyncRead + Send + Unpin>),
    ]
    .into_iter()
    .flatten()
    {
        let name = name.clone();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stream).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                println!("{name:>10} | {line}");
            }
        });
    }
    Ok(child)
}

pub async fn up(opts: DevOptions) -> anyhow::Result<()> {
    let stop = shutdown::on_signals();
    let mut children: Vec<(String, Child)> = Vec::new();
    let s = |v: &[&str]| v.iter().map(|x| x.to_string()).collect::<Vec<_>>();
    let port = opts.addr.rsplit(':').next().unwrap_or("8081").to_string();
    let mut metrics = vec![format!("api        http://127.0.0.1:{port}/metrics")];
    children.push((
        "api".into(),
        spawn(
            "api".into(),
            &opts,
            &s(&["mgr", "start-server", "--addr", &opts.addr]),
        )?,
    ));
    // The storage proxy registers itself in etcd, so the manager finds it without setup.
    children.push((
        "storage".into(),
        spawn("storage".into(), &opts, &s(&["storage", "start-server"]))?,
    ));
    for i in 0..opts.workers {
        let name = format!("worker-{}", i + 1);
        let maddr = metrics_addr(opts.metrics_base_port, 0, i);
        metrics.push(format!("{name:<10} http://{maddr}/metrics"));
        children.push((
            name.clone(),
            spawn(
                name,
                &opts,
                &s(&["mgr", "worker", "--metrics-addr", &maddr]),
            )?,
        ));
    }
    for i in 0..opts.agents {
        let name = format!("agent-{}", i + 1);
        let id = format!("i-dev-agent-{}", i + 1);
        let maddr = metrics_addr(opts.metrics_base_port, 100, i);
        metrics.push(format!("{name:<10} http://{maddr}/metrics"));
        children.push((
            name.clone(),
            spawn(
                name,
                &opts,
                &s(&[
                    "ag",
                    "start-server",
                    "--id",
                    &id,
                    "--work-root",
                    &format!("/tmp/backend-ai-agent/{id}"),
                    "--metrics-addr",
                    &maddr,
                ]),
            )?,
        ));
    }
    if opts.metrics_base_port == 0 {
        metrics
            .push("(ports picked at start: see each process's \"metrics listening\" line)".into());
    }
    let metrics = metrics.join("\n    ");
    println!(
        "\nBackend.AI is up.\n\
         \n  endpoint     http://127.0.0.1:{port}\
         \n  superadmin   AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\
         \n  user         AKIANABBDUSEREXAMPLE / C8qnIo29EZvXkPK_MXcuAakYTy4NYrxwmCEyNPlf\
         \n\nTry the official client (bash ops/client.sh installs it and prints its path):\
         \n  export BACKEND_ENDPOINT=http://127.0.0.1:{port} BACKEND_ENDPOINT_TYPE=api\
         \n  export BACKEND_ACCESS_KEY=AKIAIOSFODNN7EXAMPLE BACKEND_SECRET_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\
         \n  ~/.cache/backend.ai-client-21.3.6/bin/backend.ai config\
         \n  ~/.cache/backend.ai-client-21.3.6/bin/backend.ai admin keypairs\
         \n  bash ops/demo.sh      # a short story: session, code, files, vfolder, events\
         \n\nMetrics (Prometheus text):\n    {metrics}\
         \n\nCtrl-C stops everything.\n"
    );
    if opts.demo {
        spawn_demo(&port)?;
    }
    // Stop when asked, or when any child dies (a half-running stack is worse than none).
    let mut exited: Option<String> = None;
    loop {
        tokio::select! {
            _ = stop.cancelled() => break,
            _ = tokio::time::sleep(Duration::from_millis(500)) => {
                for (name, child) in children.iter_mut() {
                    if let Ok(Some(status)) = child.try_wait() {
                        exited = Some(format!("{name} exited with {status}"));
                    }
                }
                if exited.is_some() { break; }
            }
        }
    }
    for (_, child) in children.iter_mut() {
        if let Some(pid) = child.id() {
            // SIGTERM lets each process drain (workers finish in-flight commands).
            let _ = std::process::Command::new("kill")
                .arg("-TERM")
                .arg(pid.to_string())
                .status();
        }
    }
    for (name, child) in children.iter_mut() {
        match tokio::time::timeout(Duration::from_secs(15), child.wait()).await {
            Ok(_) => {}
            Err(_) => {
                tracing::warn!(name, "did not stop in time; killing");
                let _ = child.kill().await;
            }
        }
    }
    match exited {
        Some(why) => anyhow::bail!("{why}; stopped the rest"),
        None => Ok(()),
    }
}
