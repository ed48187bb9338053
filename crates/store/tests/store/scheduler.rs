use std::time::Instant;

use vmfleet_core::VmId;
use vmfleet_store::{NodeStatus, Store, StoreError};

use crate::common::{TestDb, new_vm, on_both_backends, online_node, res, user};

on_both_backends!(
    reserve_checks_room_and_status,
    parallel_reservations_never_overbook,
);

async fn reserve_checks_room_and_status(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let n = online_node(s, "alpha", res(4, 4096, 100, 1)).await;
    let other = online_node(s, "beta", res(4, 4096, 100, 1)).await;

    // Each dimension counts.
    for (name, r) in [
        ("cpu", res(5, 64, 1, 0)),
        ("mem", res(1, 4097, 1, 0)),
        ("disk", res(1, 64, 101, 0)),
        ("gpu", res(1, 64, 1, 2)),
    ] {
        let vm = s.insert_vm(&new_vm(a, name, r)).await.unwrap();
        assert!(!s.reserve(&n.id, &vm.id).await.unwrap(), "{name} fit");
        assert_eq!(s.get_vm(&vm.id).await.unwrap().node, None);
    }

    let big = s
        .insert_vm(&new_vm(a, "big", res(3, 3072, 50, 1)))
        .await
        .unwrap();
    // Only an online node takes work.
    for st in [NodeStatus::Offline, NodeStatus::Maintenance] {
        s.set_node_status(&n.id, st).await.unwrap();
        assert!(
            !s.reserve(&n.id, &big.id).await.unwrap(),
            "placed on a {st} node"
        );
    }
    s.set_node_status(&n.id, NodeStatus::Online).await.unwrap();
    assert!(s.reserve(&n.id, &big.id).await.unwrap());
    assert_eq!(s.get_vm(&big.id).await.unwrap().node, Some(n.id.clone()));
    assert!(
        s.reserve(&n.id, &big.id).await.unwrap(),
        "placing again is a no-op"
    );
    let e = s.reserve(&other.id, &big.id).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert_eq!(s.used_resources(&n.id).await.unwrap(), res(3, 3072, 50, 1));

    let small = s
        .insert_vm(&new_vm(a, "small", res(1, 1024, 50, 0)))
        .await
        .unwrap();
    let too_big = s
        .insert_vm(&new_vm(a, "more", res(1, 1025, 1, 0)))
        .await
        .unwrap();
    assert!(!s.reserve(&n.id, &too_big.id).await.unwrap());
    assert!(s.reserve(&n.id, &small.id).await.unwrap());
    assert_eq!(s.used_resources(&n.id).await.unwrap(), res(4, 4096, 100, 1));

    // A stopped VM keeps its room; a deleted one frees it.
    s.update_vm_state(&big.id, vmfleet_core::VmState::Stopped, None, None)
        .await
        .unwrap();
    assert!(!s.reserve(&n.id, &too_big.id).await.unwrap());
    s.delete_vm(&big.id).await.unwrap();
    assert_eq!(s.used_resources(&n.id).await.unwrap(), res(1, 1024, 50, 0));
    assert!(s.reserve(&n.id, &too_big.id).await.unwrap());
    let e = s.reserve(&n.id, &big.id).await.unwrap_err();
    assert!(
        matches!(e, StoreError::Conflict(_)),
        "a deleted VM was placed: {e}"
    );

    // A shrunken node takes nothing new but keeps what it runs.
    s.set_capacity(&n.id, res(1, 1024, 10, 0)).await.unwrap();
    let tiny = s
        .insert_vm(&new_vm(a, "tiny", res(1, 64, 1, 0)))
        .await
        .unwrap();
    assert!(!s.reserve(&n.id, &tiny.id).await.unwrap());
    assert_eq!(s.list_vms_on_node(&n.id).await.unwrap().len(), 2);

    assert!(matches!(
        s.reserve(&vmfleet_core::NodeId::generate(), &tiny.id).await,
        Err(StoreError::NotFound { what: "node", .. })
    ));
    assert!(matches!(
        s.reserve(&other.id, &VmId::new("vm-missing").unwrap())
            .await,
        Err(StoreError::NotFound { what: "VM", .. })
    ));
}

/// 20 placements at once on a node with room for 5: exactly 5 succeed. The calls go through
/// two separate stores (two connection pools) on the same database, so nothing in-process
/// serialises them: only the database does.
async fn parallel_reservations_never_overbook(db: &TestDb) {
    const TRIES: usize = 20;
    const ROOM: usize = 5;
    let s = &db.store;
    let second = Store::open(&db.url).await.unwrap();
    let a = user(s, 1).await;
    let n = online_node(s, "alpha", res(10, 10 * 1024, 500, 5)).await;
    let mut ids = Vec::new();
    for i in 0..TRIES {
        let vm = s
            .insert_vm(&new_vm(a, &format!("vm{i}"), res(2, 2048, 100, 1)))
            .await
            .unwrap();
        ids.push(vm.id);
    }

    let started = Instant::now();
    let barrier = std::sync::Arc::new(tokio::sync::Barrier::new(TRIES));
    let mut tasks = Vec::new();
    for (i, id) in ids.into_iter().enumerate() {
        let store = if i % 2 == 0 {
            s.clone()
        } else {
            second.clone()
        };
        let node = n.id.clone();
        let barrier = barrier.clone();
        tasks.push(tokio::spawn(async move {
            barrier.wait().await;
            store.reserve(&node, &id).await
        }));
    }
    let mut placed = 0;
    for t in tasks {
        if t.await.unwrap().unwrap() {
            placed += 1;
        }
    }
    eprintln!(
        "{TRIES} parallel reservations on {:?} took {:?}",
        s.backend(),
        started.elapsed()
    );
    assert_eq!(placed, ROOM);
    assert_eq!(
        s.used_resources(&n.id).await.unwrap(),
        res(10, 10 * 1024, 500, 5)
    );
    assert_eq!(s.list_vms_on_node(&n.id).await.unwrap().len(), ROOM);
    second.close().await;
}
