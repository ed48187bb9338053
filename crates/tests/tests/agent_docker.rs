//! A rental end to end: the control plane (with its database) sends seed 001's
//! `start_instance` to a real agent over `/fleet`; the agent starts a real container in a
//! dockerd this test runs, reports `instance_started` (recorded in the audit log), refuses a
//! rental that would overcommit the node, and stops the container on `stop_instance`.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use vmfleet_agent::host::HostSampler;
use vmfleet_agent::upstream::Upstream;
use vmfleet_cli::{ControlPlane, PlaneOptions};
use vmfleet_hypervisor::docker::{ScratchDaemon, import_busybox};
use vmfleet_store::AuditTarget;
use vmfleet_wire::api::CreateNodeResponse;
use vmfleet_wire::fleet::{BackendCommand, StopInstance};

const IMAGE: &str = "vmfleet-test/busybox:latest";

#[tokio::test(flavor = "multi_thread")]
async fn a_rental_runs_as_a_container_through_the_agent() {
    let daemon = ScratchDaemon::start()
        .await
        .expect("dockerd must start for this test (root, docker.io)");
    let docker = daemon.runtime("localhost");
    import_busybox(&docker, IMAGE).await.unwrap();

    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(PlaneOptions {
        data_dir: dir.path().join("data"),
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
    let base = format!("http://{}", plane.addr());
    let admin = std::fs::read_to_string(plane.data_dir().admin_token_path()).unwrap();
    let created: CreateNodeResponse = reqwest::Client::new()
        .post(format!("{base}/nodes"))
        .bearer_auth(admin.trim())
        .json(&json!({"name": "docker-box"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = created.node_id.clone();
    let upstream = Upstream::new(
        base.clone(),
        created.host_api_key,
        Duration::from_millis(300),
        Some(docker.clone()),
        HostSampler::new(dir.path()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        upstream
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    let fleet = plane_fleet(&plane);
    for _ in 0..100 {
        if fleet.is_connected(&node) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    // Seed 001's example, with what this machine can run: the local busybox image, no GPU, no
    // disk limit (overlay2 on ext4 has none), a published port.
    let mut start: Value = serde_json::from_str(include_str!(
        "../../wire/tests/fixtures/001/start_instance.json"
    ))
    .unwrap();
    start["image"] = json!(IMAGE);
    start["resourceLimits"] = json!({"cpuCores": 0.5, "ramLimit": "64m"});
    start["proxyPortMapping"] = json!({"8888": 0});
    let cmd = BackendCommand::decode("start_instance", &start).unwrap();
    let ack = fleet
        .send(&node, &cmd, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(ack, vmfleet_wire::fleet::Ack::ok());
    let rental = vmfleet_core::RentalId::new("uuid").unwrap();
    let started = wait_audit(&plane, &rental, "instance_started").await;
    let container_id = started["containerId"].as_str().unwrap().to_owned();
    let info = docker
        .inspect(&vmfleet_core::ContainerId::new(container_id.as_str()).unwrap())
        .await
        .unwrap();
    assert_eq!(info.nano_cpus, 500_000_000);
    assert_eq!(info.memory_bytes, 64 << 20);

    // The same start again is idempotent: no second container.
    fleet
        .send(&node, &cmd, Duration::from_secs(60))
        .await
        .unwrap();
    assert_eq!(docker.list().await.unwrap().len(), 1);

    // A rental bigger than the node is refused before anything starts.
    let mut big = start.clone();
    big["rentalId"] = json!("r-big");
    big["resourceLimits"] = json!({"cpuCores": 512, "ramLimit": "64m"});
    let err = fleet
        .send(
            &node,
            &BackendCommand::decode("start_instance", &big).unwrap(),
            Duration::from_secs(30),
        )
        .await
        .unwrap_err();
    assert!(err.to_string().contains("insufficient capacity"), "{err}");
    assert_eq!(docker.list().await.unwrap().len(), 1);

    // The node's capacity came with its heartbeats.
    let nodes: Vec<vmfleet_wire::api::NodeView> = reqwest::Client::new()
        .get(format!("{base}/nodes"))
        .bearer_auth(admin.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        nodes[0].capacity.vcpus >= 1 && nodes[0].capacity.memory_mib > 0,
        "{nodes:?}"
    );

    let stop_cmd = BackendCommand::StopInstance(StopInstance {
        rental_id: rental.clone(),
        container_id: vmfleet_core::ContainerId::new(container_id.as_str()).unwrap(),
        graceful: true,
        timeout_seconds: 2,
    });
    fleet
        .send(&node, &stop_cmd, Duration::from_secs(60))
        .await
        .unwrap();
    let stopped_ev = wait_audit(&plane, &rental, "instance_stopped").await;
    assert_eq!(stopped_ev["reason"], "requested");
    assert!(docker.list().await.unwrap().is_empty());

    // A rental with an end: the agent stops it on time and says why.
    let now = vmfleet_core::Timestamp::now().unix_seconds();
    let mut timed = start.clone();
    timed["rentalId"] = json!("r-exp");
    timed["expiresAt"] = json!(now + 2);
    let cmd = BackendCommand::decode("start_instance", &timed).unwrap();
    fleet
        .send(&node, &cmd, Duration::from_secs(60))
        .await
        .unwrap();
    let r_exp = vmfleet_core::RentalId::new("r-exp").unwrap();
    let ended = wait_audit(&plane, &r_exp, "instance_stopped").await;
    assert_eq!(ended["reason"], "timeout", "{ended}");

    // Also while the control plane is away: reported when it is back.
    let mut away = start.clone();
    away["rentalId"] = json!("r-away");
    away["expiresAt"] = json!(vmfleet_core::Timestamp::now().unix_seconds() + 2);
    let cmd = BackendCommand::decode("start_instance", &away).unwrap();
    fleet
        .send(&node, &cmd, Duration::from_secs(60))
        .await
        .unwrap();
    let addr = plane.addr();
    plane.stop().await.unwrap();
    // The image's `sleep` ignores SIGTERM: the graceful stop waits its 10 s, then kills.
    let mut gone = false;
    for _ in 0..40 {
        if docker.list().await.unwrap().is_empty() {
            gone = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(
        gone,
        "the expired rental still runs while the control plane is away"
    );
    let plane = ControlPlane::start(PlaneOptions {
        data_dir: dir.path().join("data"),
        listen: addr,
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
    let r_away = vmfleet_core::RentalId::new("r-away").unwrap();
    let ended = wait_audit(&plane, &r_away, "instance_stopped").await;
    assert_eq!(ended["reason"], "timeout", "{ended}");

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap();
    plane.stop().await.unwrap();
    daemon.shutdown().await.unwrap();
}

fn plane_fleet(plane: &ControlPlane) -> vmfleet_server::fleet::Fleet {
    plane.fleet().unwrap()
}

/// Waits for the audit log to hold `action` for `rental` and returns its detail.
async fn wait_audit(plane: &ControlPlane, rental: &vmfleet_core::RentalId, action: &str) -> Value {
    for _ in 0..300 {
        let entries = plane
            .store()
            .list_audit(&AuditTarget::Rental(rental.clone()))
            .await
            .unwrap();
        if let Some(e) = entries.iter().rev().find(|e| e.action == action) {
            return e.detail.clone();
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    panic!("no {action} for {rental} in the audit log");
}
