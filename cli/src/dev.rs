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
}

fn spawn(
    name: String,
    config: &Option<std::path::PathBuf>,
    args: &[String],
) -> anyhow::Result<Child> {
    let exe = std::env::current_exe()?;
    let mut cmd = Command::new(exe);
    if let Some(c) = config {
        cmd.arg("-f").arg(c);
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
    children.push((
        "api".into(),
        spawn(
            "api".into(),
            &opts.config,
            &s(&["mgr", "start-server", "--addr", &opts.addr]),
        )?,
    ));
    // The storage proxy registers itself in etcd, so the manager finds it without setup.
    children.push((
        "storage".into(),
        spawn(
            "storage".into(),
            &opts.config,
            &s(&["storage", "start-server"]),
        )?,
    ));
    for i in 0..opts.workers {
        let name = format!("worker-{}", i + 1);
        children.push((
            name.clone(),
            spawn(name, &opts.config, &s(&["mgr", "worker"]))?,
        ));
    }
    for i in 0..opts.agents {
        let name = format!("agent-{}", i + 1);
        let id = format!("i-dev-agent-{}", i + 1);
        children.push((
            name.clone(),
            spawn(
                name,
                &opts.config,
                &s(&[
                    "ag",
                    "start-server",
                    "--id",
                    &id,
                    "--work-root",
                    &format!("/tmp/backend-ai-agent/{id}"),
                ]),
            )?,
        ));
    }
    let port = opts.addr.rsplit(':').next().unwrap_or("8081");
    println!(
        "\nBackend.AI is up.\n\
         \n  endpoint     http://127.0.0.1:{port}\
         \n  superadmin   AKIAIOSFODNN7EXAMPLE / wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\
         \n  user         AKIANABBDUSEREXAMPLE / C8qnIo29EZvXkPK_MXcuAakYTy4NYrxwmCEyNPlf\
         \n\nTry the official client (bash ../shared/conformance/install-client.sh):\
         \n  export BACKEND_ENDPOINT=http://127.0.0.1:{port} BACKEND_ENDPOINT_TYPE=api\
         \n  export BACKEND_ACCESS_KEY=AKIAIOSFODNN7EXAMPLE BACKEND_SECRET_KEY=wJalrXUtnFEMI/K7MDENG/bPxRfiCYEXAMPLEKEY\
         \n  ~/.cache/backend.ai-client-21.3.6/bin/backend.ai config\
         \n  ~/.cache/backend.ai-client-21.3.6/bin/backend.ai admin keypairs\
         \n\nCtrl-C stops everything.\n"
    );
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
