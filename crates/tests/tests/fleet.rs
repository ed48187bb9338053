//! Seed 001's `/fleet` namespace between the control plane and an agent, over real sockets:
//! host-key authentication (header and auth payload), heartbeats acknowledged and checked,
//! events decoded, commands sent with acknowledgements, silent nodes dropped.
//! The node registry here is a test double that records what it is told.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use serde_json::{Value, json};
use vmfleet_agent::sio::{Incoming, SioClient, SioError};
use vmfleet_core::NodeId;
use vmfleet_server::fleet::FleetError;
use vmfleet_tests::{Recorder, wait_log};
use vmfleet_wire::fleet::{BackendCommand, DrainNode};

const KEY: &str = "host-key-of-node-1";

async fn server(period: Duration) -> (String, Arc<Recorder>, vmfleet_server::fleet::Fleet) {
    vmfleet_tests::fleet_server(KEY, "node-1", period).await
}

fn heartbeat(node: &str) -> Value {
    let mut v: Value =
        serde_json::from_str(include_str!("../../wire/tests/fixtures/001/heartbeat.json")).unwrap();
    v["nodeId"] = json!(node);
    v
}

#[tokio::test]
async fn a_node_connects_heartbeats_and_reports() {
    let (url, rec, fleet) = server(Duration::from_secs(5)).await;
    let (client, mut incoming) = SioClient::connect(&url, "/fleet", KEY).await.unwrap();
    wait_log(&rec, "online node-1").await;
    let node = NodeId::new("node-1").unwrap();
    // The control plane tells the agent who it is.
    let Some(Incoming::Event { name, payload, .. }) = incoming.recv().await else {
        panic!("no node_info");
    };
    assert_eq!(name, "node_info");
    assert_eq!(payload, json!({"nodeId": "node-1", "name": "node-1-host"}));
    assert!(fleet.is_connected(&node));

    let ack = client
        .emit_with_ack("heartbeat", &heartbeat("node-1"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ack, json!({"success": true}));
    // Another node's id with this node's key is refused.
    let ack = client
        .emit_with_ack("heartbeat", &heartbeat("node-2"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ack["success"], json!(false));
    assert!(ack["message"].as_str().unwrap().contains("node-2"));
    // A malformed payload is refused with the reason, and the connection stays.
    let ack = client
        .emit_with_ack(
            "heartbeat",
            &json!({"nodeId": "node-1"}),
            Duration::from_secs(5),
        )
        .await
        .unwrap();
    assert_eq!(ack["success"], json!(false));
    assert!(
        ack["message"]
            .as_str()
            .unwrap()
            .contains("invalid `heartbeat` message"),
        "{ack}"
    );
    for (name, fixture) in [
        (
            "instance_started",
            include_str!("../../wire/tests/fixtures/001/instance_started.json"),
        ),
        (
            "instance_stopped",
            include_str!("../../wire/tests/fixtures/001/instance_stopped.json"),
        ),
    ] {
        let payload: Value = serde_json::from_str(fixture).unwrap();
        let ack = client
            .emit_with_ack(name, &payload, Duration::from_secs(5))
            .await
            .unwrap();
        assert_eq!(ack, json!({"success": true}), "{name}");
    }
    wait_log(&rec, "started node-1 uuid").await;
    wait_log(&rec, "stopped node-1 uuid").await; // reason and message follow

    // The control plane sends a command; the agent acknowledges it.
    let cmd = BackendCommand::DrainNode(DrainNode {
        node_id: node.clone(),
        reason: "Scheduled maintenance".into(),
    });
    let sender = {
        let fleet = fleet.clone();
        let node = node.clone();
        tokio::spawn(async move { fleet.send(&node, &cmd, Duration::from_secs(5)).await })
    };
    let Some(Incoming::Event { name, payload, ack }) = incoming.recv().await else {
        panic!("no command arrived");
    };
    assert_eq!(name, "drain_node");
    assert!(matches!(
        BackendCommand::decode(&name, &payload).unwrap(),
        BackendCommand::DrainNode(_)
    ));
    client
        .ack(ack.unwrap(), &json!({"success": true}))
        .await
        .unwrap();
    assert_eq!(sender.await.unwrap().unwrap(), json!({"success": true}));

    client.disconnect().await;
    wait_log(&rec, "offline node-1").await;
    assert!(matches!(
        fleet
            .send(
                &node,
                &BackendCommand::DrainNode(DrainNode {
                    node_id: node.clone(),
                    reason: "x".into()
                }),
                Duration::from_secs(1)
            )
            .await,
        Err(FleetError::NotConnected(_))
    ));
}

#[tokio::test]
async fn a_bad_key_gets_connect_error() {
    let (url, rec, _) = server(Duration::from_secs(5)).await;
    let err = SioClient::connect(&url, "/fleet", "not-a-key")
        .await
        .err()
        .unwrap();
    assert!(
        matches!(&err, SioError::Refused(m) if m.contains("invalid host key")),
        "{err}"
    );
    assert!(rec.log().is_empty());
}

#[tokio::test]
async fn a_silent_node_is_dropped_after_three_missed_heartbeats() {
    let (url, rec, fleet) = server(Duration::from_millis(200)).await;
    let (_client, mut incoming) = SioClient::connect(&url, "/fleet", KEY).await.unwrap();
    wait_log(&rec, "online node-1").await;
    // Never heartbeat: within ~3 periods the server drops us and marks the node offline.
    wait_log(&rec, "offline node-1").await;
    assert!(!fleet.is_connected(&NodeId::new("node-1").unwrap()));
    let end = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Some(Incoming::Disconnected(_)) | None = incoming.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(end.is_ok(), "the silent node's connection was not closed");
}
