//! The `vmfleet` binary as an operator runs it.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use clap::CommandFactory;
use vmfleet_tests::vmfleet_bin;

#[test]
fn help_lists_the_subcommands() {
    let help = vmfleet_cli::Cli::command().render_long_help().to_string();
    for sub in ["up", "server", "agent", "health"] {
        assert!(
            help.lines().any(|l| l.trim_start().starts_with(sub)),
            "{sub} missing from:\n{help}"
        );
    }
    let out = Command::new(vmfleet_bin()).arg("--help").output().unwrap();
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(text.contains("up") && text.contains("server") && text.contains("agent"));
    // The agent documents each setting with its environment variable and default.
    let out = Command::new(vmfleet_bin())
        .args(["agent", "--help"])
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    for needle in [
        "API_URL",
        "VM_BASE_PATH",
        "LOG_LEVEL",
        "HOST_API_KEY",
        "127.0.0.1:3030",
    ] {
        assert!(
            text.contains(needle),
            "{needle} missing from agent --help:\n{text}"
        );
    }
}

/// `vmfleet up` serves, writes its admin token, and exits 0 on SIGTERM.
#[test]
fn up_serves_and_stops_cleanly_on_sigterm() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(vmfleet_bin())
        .args([
            "up",
            "--listen",
            "127.0.0.1:0",
            "--node-api-listen",
            "127.0.0.1:0",
            "--data-dir",
        ])
        .arg(&data)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
    let first = lines.next().unwrap().unwrap();
    let url = first.rsplit(' ').next().unwrap().to_owned();
    assert!(url.starts_with("http://127.0.0.1:"), "{first}");
    assert!(data.join("admin.token").is_file());

    let health = Command::new(vmfleet_bin())
        .args(["health", "--server", &url])
        .output()
        .unwrap();
    assert!(health.status.success(), "{health:?}");
    assert!(String::from_utf8_lossy(&health.stdout).starts_with("healthy"));

    // The local agent registered itself, connected and heartbeats: GET /nodes shows it.
    let token = std::fs::read_to_string(data.join("admin.token")).unwrap();
    let deadline = Instant::now() + Duration::from_secs(20);
    let rt = tokio::runtime::Runtime::new().unwrap();
    loop {
        let body = rt.block_on(async {
            let r = reqwest::Client::new()
                .get(format!("{url}/nodes"))
                .bearer_auth(token.trim())
                .send()
                .await;
            match r {
                Ok(r) => r.text().await.unwrap_or_default(),
                Err(_) => String::new(),
            }
        });
        if body.contains("\"ONLINE\"") && body.contains("\"cpuUsagePercent\"") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the local node never showed up online: {body}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    for f in ["agent.key", "node.token", "vmfleet.db"] {
        assert!(data.join(f).is_file(), "{f} missing");
    }

    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        assert!(
            Instant::now() < deadline,
            "vmfleet up did not stop on SIGTERM"
        );
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "{status:?}");
}

#[test]
fn health_of_an_unreachable_server_fails_with_exit_1() {
    let out = Command::new(vmfleet_bin())
        .args(["health", "--server", "http://127.0.0.1:9"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("could not be reached"));
}

#[test]
fn agent_refuses_to_start_without_a_host_key() {
    let out = Command::new(vmfleet_bin())
        .arg("agent")
        .env_remove("HOST_API_KEY")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("HOST_API_KEY is not set"));
}
