use std::time::Instant;

use vmfleet_core::VmId;
use vmfleet_store::{NodeStatus, Store, StoreError};

use crate::common::{TestDb, new_vm, on_both_backends, online_node, res, user};

on_both_backends!(
    reserve_checks_room_and_status,
    parallel_reservations_never_overbook,
    a_migration_ticket_holds_room_until_it_expires_or_ends,
);

async fn a_migration_ticket_holds_room_until_it_expires_or_ends(db: &TestDb) {
    use vmfleet_core::{MigrationId, Timestamp};
    let s = &db.store;
    let a = user(s, 1).await;
    let src = online_node(s, "src", res(4, 4096, 100, 0)).await;
    let dst = online_node(s, "dst", res(2, 2048, 100, 0)).await;
    let vm = crate::common::placed_vm(s, a, "mover", &src.id, res(2, 2048, 10, 0)).await;
    let later = Timestamp::from_unix_millis(Timestamp::now().unix_millis() + 600_000);
    let past = Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 1);

    // Not to its own node; not for a VM on no node.
    let t1 = MigrationId::generate();
    let e = s
        .reserve_migration(&vm.id, &src.id, &t1, &later)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let loose = s
        .insert_vm(&new_vm(a, "loose", res(1, 64, 1, 0)))
        .await
        .unwrap();
    let e = s
        .reserve_migration(&loose.id, &dst.id, &t1, &later)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    // The ticket's room counts on the target: nothing else fits there meanwhile.
    assert!(
        s.reserve_migration(&vm.id, &dst.id, &t1, &later)
            .await
            .unwrap()
    );
    assert_eq!(
        s.used_resources(&dst.id).await.unwrap(),
        res(2, 2048, 10, 0)
    );
    assert!(!s.reserve(&dst.id, &loose.id).await.unwrap());
    let held = s.vm_by_migration(&t1).await.unwrap().unwrap();
    let ticket = held.migration.unwrap();
    assert!(ticket.is_live());
    assert_eq!(ticket.node, dst.id);
    // One ticket per VM at a time.
    let t2 = MigrationId::generate();
    let e = s
        .reserve_migration(&vm.id, &dst.id, &t2, &later)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    // Released, the room is free again; an expired ticket holds nothing either.
    s.release_migration(&vm.id, &t1).await.unwrap();
    assert_eq!(s.used_resources(&dst.id).await.unwrap(), res(0, 0, 0, 0));
    assert!(
        s.reserve_migration(&vm.id, &dst.id, &t2, &past)
            .await
            .unwrap()
    );
    assert_eq!(s.used_resources(&dst.id).await.unwrap(), res(0, 0, 0, 0));
    assert!(!s.extend_migration(&vm.id, &t2, &later).await.unwrap());
    assert!(
        !s.vm_by_migration(&t2)
            .await
            .unwrap()
            .unwrap()
            .migration
            .unwrap()
            .is_live()
    );
    // A VM left migrating under a lapsed ticket (its control plane is gone) is swept to
    // `unknown`, its ticket dropped; a live migration is left alone.
    s.update_vm_state(&vm.id, vmfleet_core::VmState::Migrating, None, None)
        .await
        .unwrap();
    let swept = s.abandon_stale_migrations("gone").await.unwrap();
    assert_eq!(swept.len(), 1);
    assert_eq!(swept[0].state, vmfleet_core::VmState::Unknown);
    assert_eq!(swept[0].migration, None);
    assert_eq!(swept[0].state_reason.as_deref(), Some("gone"));
    let t2b = MigrationId::generate();
    assert!(
        s.reserve_migration(&vm.id, &dst.id, &t2b, &later)
            .await
            .unwrap()
    );
    s.update_vm_state(&vm.id, vmfleet_core::VmState::Migrating, None, None)
        .await
        .unwrap();
    assert!(s.abandon_stale_migrations("gone").await.unwrap().is_empty());
    s.release_migration(&vm.id, &t2b).await.unwrap();
    s.update_vm_state(&vm.id, vmfleet_core::VmState::Running, None, None)
        .await
        .unwrap();

    // Completed, the VM is placed on the target and the ticket is spent.
    let t3 = MigrationId::generate();
    assert!(
        s.reserve_migration(&vm.id, &dst.id, &t3, &later)
            .await
            .unwrap()
    );
    assert!(s.extend_migration(&vm.id, &t3, &later).await.unwrap());
    let moved = s.complete_migration(&vm.id, &t3).await.unwrap();
    assert_eq!(moved.node, Some(dst.id.clone()));
    assert_eq!(moved.migration, None);
    assert_eq!(s.used_resources(&src.id).await.unwrap(), res(0, 0, 0, 0));
    assert_eq!(
        s.used_resources(&dst.id).await.unwrap(),
        res(2, 2048, 10, 0)
    );
    let e = s.complete_migration(&vm.id, &t3).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
}

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
