use vmfleet_auth::{SecretHash, generate_secret};
use vmfleet_core::{NodeId, Timestamp};
use vmfleet_store::{NodeStatus, StoreError};

use crate::common::{TestDb, on_both_backends, online_node, placed_vm, res, user};

on_both_backends!(
    nodes_are_found_by_key_hash_and_names_are_unique,
    heartbeats_status_and_capacity,
    heartbeats_are_written_in_batches,
    a_node_in_use_cannot_be_deleted,
);

async fn heartbeats_are_written_in_batches(db: &TestDb) {
    let s = &db.store;
    let mut nodes = Vec::new();
    for i in 0..50 {
        let n = s
            .create_node(&format!("n{i}"), &SecretHash::of(&generate_secret()))
            .await
            .unwrap();
        nodes.push(n.id);
    }
    assert_eq!(s.record_heartbeats(&[]).await.unwrap(), 0);
    let at = Timestamp::from_unix_millis(1_700_000_000_000);
    let when = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_700_000_000_000);
    let raw = |v: serde_json::Value| serde_json::value::to_raw_value(&v).unwrap();
    let mut beats: Vec<_> = nodes
        .iter()
        .enumerate()
        .map(|(i, id)| {
            (
                id.clone(),
                when,
                raw(serde_json::json!({ "cpuUsagePercent": i })),
            )
        })
        .collect();
    // Nodes removed meanwhile are skipped, not an error for the others; enough of them that
    // the batch takes more than one statement.
    let ghosts = (0..700).map(|_| (NodeId::generate(), when, raw(serde_json::json!({}))));
    let mut all: Vec<_> = ghosts.collect();
    all.append(&mut beats);
    assert_eq!(s.record_heartbeats(&all).await.unwrap(), 50);
    for (i, id) in nodes.iter().enumerate() {
        let n = s.get_node(id).await.unwrap();
        assert_eq!(n.last_heartbeat, Some(at.clone()));
        assert_eq!(n.metrics, Some(serde_json::json!({ "cpuUsagePercent": i })));
    }
}

async fn nodes_are_found_by_key_hash_and_names_are_unique(db: &TestDb) {
    let s = &db.store;
    let key = generate_secret();
    let hash = SecretHash::of(&key);
    let n = s.create_node("alpha", &hash).await.unwrap();
    assert_eq!(n.name, "alpha");
    assert_eq!(n.status, NodeStatus::Offline);
    assert_eq!(n.capacity, res(0, 0, 0, 0));
    assert_eq!(n.last_heartbeat, None);
    assert_eq!(n.metrics, None);

    let found = s.node_by_key_hash(&SecretHash::of(&key)).await.unwrap();
    assert_eq!(found, Some(n.clone()));
    let other = SecretHash::of(&generate_secret());
    assert_eq!(s.node_by_key_hash(&other).await.unwrap(), None);

    let e = s.create_node("alpha", &other).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(e.to_string(), "a node named \"alpha\" already exists");
    let e = s.create_node("beta", &hash).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    for bad in ["", " ", "a\nb"] {
        assert!(matches!(
            s.create_node(bad, &other).await,
            Err(StoreError::Invalid(_))
        ));
    }

    s.create_node("Aardvark", &other).await.unwrap();
    let names: Vec<_> = s
        .list_nodes()
        .await
        .unwrap()
        .into_iter()
        .map(|n| n.name)
        .collect();
    assert_eq!(names, ["Aardvark", "alpha"]);
    assert!(matches!(
        s.get_node(&NodeId::new("nope").unwrap()).await,
        Err(StoreError::NotFound { what: "node", .. })
    ));
}

async fn heartbeats_status_and_capacity(db: &TestDb) {
    let s = &db.store;
    let n = s
        .create_node("alpha", &SecretHash::of(&generate_secret()))
        .await
        .unwrap();
    let at = Timestamp::from_unix_millis(1_700_000_000_123);
    let metrics =
        serde_json::json!({"cpuUsagePercent": 35.5, "gpuTemp": [60.0, 58.0], "ramTotalMb": 65536});
    let cap = res(16, 65536, 2000, 2);
    let text = |v: &serde_json::Value| serde_json::value::to_raw_value(v).unwrap();
    s.record_heartbeat(&n.id, &at, &text(&metrics), Some(cap))
        .await
        .unwrap();
    let got = s.get_node(&n.id).await.unwrap();
    assert_eq!(got.last_heartbeat, Some(at));
    assert_eq!(got.metrics, Some(metrics));
    assert_eq!(got.capacity, cap);

    // Without a capacity, the last one stays; metrics are replaced.
    let later = Timestamp::from_unix_millis(1_700_000_005_000);
    let m2 = serde_json::json!({"cpuUsagePercent": 1});
    s.record_heartbeat(&n.id, &later, &text(&m2), None)
        .await
        .unwrap();
    let got = s.get_node(&n.id).await.unwrap();
    assert_eq!(got.capacity, cap);
    assert_eq!(got.metrics, Some(m2.clone()));
    assert_eq!(got.last_heartbeat, Some(later.clone()));
    assert_eq!(
        got.status,
        NodeStatus::Offline,
        "a heartbeat leaves the status alone"
    );

    for st in [
        NodeStatus::Online,
        NodeStatus::Maintenance,
        NodeStatus::Offline,
    ] {
        s.set_node_status(&n.id, st).await.unwrap();
        assert_eq!(s.get_node(&n.id).await.unwrap().status, st);
    }
    s.set_capacity(&n.id, res(1, 2, 3, 0)).await.unwrap();
    assert_eq!(s.get_node(&n.id).await.unwrap().capacity, res(1, 2, 3, 0));

    let ghost = NodeId::generate();
    assert!(matches!(
        s.record_heartbeat(&ghost, &later, &text(&m2), None).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_node_status(&ghost, NodeStatus::Online).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_capacity(&ghost, cap).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.set_capacity(&n.id, res(1, u64::MAX, 1, 0)).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn a_node_in_use_cannot_be_deleted(db: &TestDb) {
    let s = &db.store;
    let owner = user(s, 1).await;
    let n = online_node(s, "alpha", res(4, 4096, 100, 0)).await;
    let vm = placed_vm(s, owner, "web", &n.id, res(1, 512, 10, 0)).await;
    let e = s.delete_node(&n.id).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    s.get_node(&n.id).await.unwrap();

    s.delete_vm(&vm.id).await.unwrap();
    s.delete_node(&n.id).await.unwrap();
    assert!(matches!(
        s.get_node(&n.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.delete_node(&n.id).await,
        Err(StoreError::NotFound { .. })
    ));
    // The deleted VM forgets the node it ran on.
    assert_eq!(s.get_vm(&vm.id).await.unwrap().node, None);
}
