//! `vmfleet agent`'s connection to a real `/fleet` namespace: it learns its node id,
//! heartbeats at once and on its period with real host metrics, obeys `drain_node`, refuses
//! work it cannot do with `instance_stopped` (reason `error`), and reconnects with backoff when
//! the control plane restarts.

#![allow(clippy::unwrap_used)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::oneshot;
use vmfleet_agent::host::HostSampler;
use vmfleet_agent::upstream::Upstream;
use vmfleet_auth::JwtKey;
use vmfleet_core::NodeId;
use vmfleet_server::AppState;
use vmfleet_server::fleet::{Fleet, FleetError};
use vmfleet_tests::{Recorder, wait_log};
use vmfleet_wire::fleet::{BackendCommand, DrainNode};

const KEY: &str = "key-of-node-7";

/// A control plane on `addr` (port 0: any); stops when the sender is dropped or fired.
async fn control_plane(
    addr: SocketAddr,
) -> (SocketAddr, Arc<Recorder>, Fleet, oneshot::Sender<()>) {
    let mut rec = Recorder::default();
    rec.keys
        .insert(KEY.into(), (NodeId::new("node-7").unwrap(), "box-7".into()));
    let rec = Arc::new(rec);
    let state = AppState::new(JwtKey::generate()).with_fleet(rec.clone(), Duration::from_secs(5));
    let fleet = state.fleet.clone().unwrap();
    let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
    let addr = listener.local_addr().unwrap();
    let (stop, stopped) = oneshot::channel::<()>();
    tokio::spawn(vmfleet_server::serve(listener, state, async {
        let _ = stopped.await;
    }));
    (addr, rec, fleet, stop)
}

#[tokio::test(flavor = "multi_thread")]
async fn the_agent_heartbeats_drains_refuses_and_reconnects() {
    let (addr, rec, fleet, stop) = control_plane("127.0.0.1:0".parse().unwrap()).await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = Upstream::new(
        format!("http://{addr}"),
        KEY,
        Duration::from_millis(300),
        None,
        HostSampler::new(dir.path()),
    );
    let state = upstream.state();
    let (agent_stop, agent_stopped) = oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        upstream
            .run(async {
                let _ = agent_stopped.await;
            })
            .await;
    });

    wait_log(&rec, "online node-7").await;
    wait_log(&rec, "heartbeat node-7 Online").await;
    let node = NodeId::new("node-7").unwrap();

    // No container engine on this agent: a rental is refused, with the reason reported.
    let start: serde_json::Value = serde_json::from_str(include_str!(
        "../../wire/tests/fixtures/001/start_instance.json"
    ))
    .unwrap();
    let cmd = BackendCommand::decode("start_instance", &start).unwrap();
    let err = fleet
        .send(&node, &cmd, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FleetError::Refused { message, .. } if message.contains("no container engine")),
        "{err}"
    );
    wait_log(
        &rec,
        "stopped node-7 uuid Error this node has no container engine",
    )
    .await;

    // Drain: acknowledged, and the heartbeats say maintenance.
    let drain = BackendCommand::DrainNode(DrainNode {
        node_id: node.clone(),
        reason: "Scheduled maintenance".into(),
    });
    assert_eq!(
        fleet
            .send(&node, &drain, Duration::from_secs(5))
            .await
            .unwrap(),
        vmfleet_wire::fleet::Ack::ok()
    );
    assert!(state.is_draining());
    wait_log(&rec, "heartbeat node-7 Maintenance").await;
    let err = fleet
        .send(&node, &cmd, Duration::from_secs(5))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, FleetError::Refused { message, .. } if message.contains("draining")),
        "{err}"
    );

    // The control plane goes away and comes back on the same address: the agent returns.
    let _ = stop.send(());
    tokio::time::sleep(Duration::from_millis(300)).await;
    let (_, rec2, fleet2, _stop2) = control_plane(addr).await;
    wait_log(&rec2, "online node-7").await;
    wait_log(&rec2, "heartbeat node-7 Maintenance").await;
    assert!(fleet2.is_connected(&node));

    let _ = agent_stop.send(());
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap();
}
