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
    // Should an assertion fail before the SIGTERM, no `vmfleet up` outlives the test.
    let _leftovers = vmfleet_tests::KillOnDrop(dir.path().to_owned());
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

/// `vmfleet agent` as an operator runs it on a node: it serves the node API, connects to the
/// control plane with its host key, shows up ONLINE, and exits 0 on SIGTERM.
#[test]
fn the_agent_binary_joins_a_control_plane() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let (plane, admin, created) = rt.block_on(async {
        let plane = vmfleet_cli::ControlPlane::start(vmfleet_cli::PlaneOptions {
            data_dir: dir.path().join("cp"),
            listen: "127.0.0.1:0".parse().unwrap(),
            token_ttl: Duration::from_secs(600),
            database: None,
            domains: Vec::new(),
            scheduler: Default::default(),
            rate_limits: Default::default(),
            ws: Default::default(),
            fleet_batch: vmfleet_server::fleet::batch::DEFAULT_WINDOW,
        })
        .await
        .unwrap();
        let admin = std::fs::read_to_string(plane.data_dir().admin_token_path()).unwrap();
        let created: vmfleet_wire::api::CreateNodeResponse = reqwest::Client::new()
            .post(format!("http://{}/nodes", plane.addr()))
            .bearer_auth(admin.trim())
            .json(&serde_json::json!({"name": "edge-1"}))
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        (plane, admin, created)
    });
    let mut child = Command::new(vmfleet_bin())
        .arg("agent")
        .env("API_URL", format!("http://{}", plane.addr()))
        .env("HOST_API_KEY", &created.host_api_key)
        .env("VM_BASE_PATH", dir.path().join("node"))
        .env("NODE_WS_LISTEN", "127.0.0.1:0")
        .env("DOCKER_SOCKET", dir.path().join("no-docker.sock"))
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let first = BufReader::new(child.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    assert!(
        first.starts_with("vmfleet agent: node API on ws://127.0.0.1:"),
        "{first}"
    );
    assert!(dir.path().join("node/node.token").is_file());
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let nodes: Vec<vmfleet_wire::api::NodeView> = rt.block_on(async {
            reqwest::Client::new()
                .get(format!("http://{}/nodes", plane.addr()))
                .bearer_auth(admin.trim())
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap()
        });
        if nodes[0].status == vmfleet_wire::api::NodeState::Online && nodes[0].metrics.is_some() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the agent never came online: {nodes:?}"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    let status = child.wait().unwrap();
    assert!(status.success(), "{status:?}");
    rt.block_on(plane.stop()).unwrap();
}
