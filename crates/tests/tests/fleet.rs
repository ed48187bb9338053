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
    assert_eq!(
        sender.await.unwrap().unwrap(),
        vmfleet_wire::fleet::Ack::ok()
    );

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

#[tokio::test]
async fn floods_and_oversized_messages_stay_with_their_node() {
    let mut rec = Recorder::default();
    for n in ["node-1", "node-2"] {
        rec.keys.insert(
            format!("key-of-{n}"),
            (NodeId::new(n).unwrap(), n.to_owned()),
        );
    }
    let rec = Arc::new(rec);
    let state = vmfleet_server::AppState::new(vmfleet_auth::JwtKey::generate())
        .with_fleet(rec.clone(), Duration::from_secs(5));
    let fleet = state.fleet.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(vmfleet_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let (flooder, mut flooder_in) = SioClient::connect(&url, "/fleet", "key-of-node-1")
        .await
        .unwrap();
    let (calm, _calm_in) = SioClient::connect(&url, "/fleet", "key-of-node-2")
        .await
        .unwrap();
    wait_log(&rec, "online node-2").await;

    // Heartbeats at a flood rate: a burst goes through, the rest is refused with a reason.
    let mut refused = 0;
    for _ in 0..30 {
        let ack = flooder
            .emit_with_ack("heartbeat", &heartbeat("node-1"), Duration::from_secs(5))
            .await
            .unwrap();
        if ack["success"] == json!(false) {
            assert!(
                ack["message"]
                    .as_str()
                    .unwrap()
                    .contains("too many heartbeats")
            );
            refused += 1;
        }
    }
    assert!((20..=26).contains(&refused), "{refused} of 30 refused");
    let stored = rec
        .log()
        .iter()
        .filter(|l| l.starts_with("heartbeat node-1"))
        .count();
    assert!(
        stored <= 10,
        "{stored} flood heartbeats reached the registry"
    );
    // The other node is not affected.
    let ack = calm
        .emit_with_ack("heartbeat", &heartbeat("node-2"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ack, json!({"success": true}));

    // A message over the limit closes the sender's connection, and only that one.
    let huge = json!({ "nodeId": "node-1", "padding": "x".repeat(2 << 20) });
    let _ = flooder
        .emit_with_ack("heartbeat", &huge, Duration::from_secs(2))
        .await;
    let closed = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            if let Some(Incoming::Disconnected(_)) | None = flooder_in.recv().await {
                return;
            }
        }
    })
    .await;
    assert!(
        closed.is_ok(),
        "an oversized message did not close its connection"
    );
    wait_log(&rec, "offline node-1").await;
    let ack = calm
        .emit_with_ack("heartbeat", &heartbeat("node-2"), Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ack, json!({"success": true}));
    assert!(fleet.is_connected(&NodeId::new("node-2").unwrap()));
}
