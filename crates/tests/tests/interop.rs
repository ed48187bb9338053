//! Interoperability of `/fleet` with the official Socket.IO clients: host agents written with
//! python-socketio (seed 001's Python example) and with socket.io-client for Node.js (its
//! JavaScript example, as written) connect with their Bearer key over both transports, emit
//! every agent event and get `{ "success": true }` acks, and answer every command the control
//! plane sends.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use vmfleet_core::NodeId;
use vmfleet_tests::wait_log;
use vmfleet_wire::fleet::{BackendCommand, DrainNode};

/// Which official client plays the agent.
#[derive(Clone, Copy)]
enum Client {
    Python,
    Node,
}

async fn python_agent(transport: &str) {
    official_agent(Client::Python, transport).await;
}

async fn official_agent(client: Client, transport: &str) {
    let (url, rec, fleet) =
        vmfleet_tests::fleet_server("py-key", "node-py", Duration::from_secs(5)).await;

    let here = Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut cmd = match client {
        Client::Python => {
            // scripts/test.sh makes a virtual environment with python-socketio and names it.
            let python = std::env::var("VMFLEET_PYTHON").unwrap_or_else(|_| "python3".into());
            let mut c = Command::new(python);
            c.arg(here.join("interop/python_agent.py"));
            c
        }
        Client::Node => {
            // scripts/test.sh runs `npm ci` in crates/tests/interop.
            let mut c = Command::new("node");
            c.arg(here.join("interop/node_agent.mjs"));
            c
        }
    };
    let mut child = cmd
        .arg(&url)
        .arg("py-key")
        .arg(here.join("../wire/tests/fixtures"))
        .arg(transport)
        .stdout(Stdio::piped())
        .spawn()
        .expect(
            "the official client (scripts/test.sh installs python-socketio and socket.io-client)",
        );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
    let stdout = child.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            let _ = tx.send(line);
        }
    });
    let mut lines = Vec::new();
    let mut next = async || {
        tokio::time::timeout(Duration::from_secs(20), rx.recv())
            .await
            .expect("the python agent went quiet")
            .expect("the python agent ended early")
    };
    loop {
        let line = next().await;
        lines.push(line.clone());
        if line == "ready" {
            break;
        }
    }
    assert_eq!(lines[0], "connected node-py", "{lines:?}");
    for ev in ["heartbeat", "instance_started", "instance_stopped"] {
        let acked = lines.iter().any(|l| {
            l.strip_prefix(&format!("{ev} "))
                .and_then(|ack| serde_json::from_str::<serde_json::Value>(ack).ok())
                == Some(serde_json::json!({"success": true}))
        });
        assert!(acked, "{ev} not acknowledged: {lines:?}");
    }
    wait_log(&rec, "heartbeat node-py Online").await;
    wait_log(&rec, "started node-py uuid").await;
    wait_log(&rec, "stopped node-py uuid Requested").await;

    // Every command of the control plane reaches the Python agent and is acknowledged.
    let node = NodeId::new("node-py").unwrap();
    for (name, fixture) in [
        (
            "start_instance",
            include_str!("../../wire/tests/fixtures/001/start_instance.json"),
        ),
        (
            "stop_instance",
            include_str!("../../wire/tests/fixtures/001/stop_instance.json"),
        ),
    ] {
        let cmd = BackendCommand::decode(name, &serde_json::from_str(fixture).unwrap()).unwrap();
        let ack = fleet
            .send(&node, &cmd, Duration::from_secs(10))
            .await
            .unwrap();
        assert_eq!(ack, vmfleet_wire::fleet::Ack::ok(), "{name}");
        assert_eq!(next().await, format!("{name} uuid"));
    }
    let drain = BackendCommand::DrainNode(DrainNode {
        node_id: node.clone(),
        reason: "Scheduled maintenance".into(),
    });
    fleet
        .send(&node, &drain, Duration::from_secs(10))
        .await
        .unwrap();
    assert_eq!(next().await, "drain_node Scheduled maintenance");
    assert_eq!(next().await, "done");
    assert!(child.wait().unwrap().success());
    wait_log(&rec, "offline node-py").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_socketio_agent_over_websocket() {
    python_agent("websocket").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn python_socketio_agent_over_long_polling() {
    python_agent("polling").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_socket_io_client_agent_over_websocket() {
    official_agent(Client::Node, "websocket").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn node_socket_io_client_agent_over_long_polling() {
    official_agent(Client::Node, "polling").await;
}
