//! A workload's current run: its rental id, container and connection info, and `unknown` when
//! its node goes offline.

use vmfleet_core::{ContainerId, RentalId, Timestamp, VmState};
use vmfleet_store::StoreError;

use crate::common::{TestDb, on_both_backends, online_node, placed_vm, res, user};

on_both_backends!(
    a_rental_id_finds_its_workload,
    offline_nodes_make_live_workloads_unknown,
);

async fn a_rental_id_finds_its_workload(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let n = online_node(s, "alpha", res(4, 4096, 100, 0)).await;
    let vm = placed_vm(s, a, "c1", &n.id, res(1, 512, 1, 0)).await;
    let other = placed_vm(s, a, "c2", &n.id, res(1, 512, 1, 0)).await;
    let r = RentalId::generate();
    assert_eq!(s.vm_by_rental(&r).await.unwrap(), None);

    let set = s.set_instance(&vm.id, Some(&r), None, None).await.unwrap();
    assert_eq!(set.rental, Some(r.clone()));
    assert_eq!(set.container, None);
    assert_eq!(s.vm_by_rental(&r).await.unwrap().unwrap().id, vm.id);
    // One workload per rental.
    let e = s
        .set_instance(&other.id, Some(&r), None, None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    let c = ContainerId::new("abc123").unwrap();
    let info = serde_json::json!({"sshHost": "10.0.0.5", "sshPort": 2222});
    let got = s
        .set_instance(&vm.id, Some(&r), Some(&c), Some(&info))
        .await
        .unwrap();
    assert_eq!(got.container, Some(c));
    assert_eq!(got.connection_info, Some(info));
    // Undoing a placement forgets the run.
    let cleared = s.set_instance(&vm.id, None, None, None).await.unwrap();
    assert_eq!((cleared.rental, cleared.container), (None, None));
    assert_eq!(s.vm_by_rental(&r).await.unwrap(), None);
}

async fn offline_nodes_make_live_workloads_unknown(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let n = online_node(s, "alpha", res(8, 8192, 100, 0)).await;
    let elsewhere = online_node(s, "beta", res(8, 8192, 100, 0)).await;
    let mut by_state = Vec::new();
    for st in [
        VmState::Running,
        VmState::Booting,
        VmState::Paused,
        VmState::Stopping,
        VmState::Stopped,
        VmState::Error,
        VmState::Created,
    ] {
        let vm = placed_vm(s, a, st.as_str(), &n.id, res(1, 256, 1, 0)).await;
        s.update_vm_state(&vm.id, st, None, None).await.unwrap();
        by_state.push((st, vm.id));
    }
    let away = placed_vm(s, a, "away", &elsewhere.id, res(1, 256, 1, 0)).await;
    s.update_vm_state(&away.id, VmState::Running, None, None)
        .await
        .unwrap();

    let since = Timestamp::from_unix_millis(1_700_000_000_000);
    let marked = s
        .mark_node_unknown(&n.id, &since, "node offline")
        .await
        .unwrap();
    assert_eq!(marked.len(), 4);
    for (st, id) in &by_state {
        let vm = s.get_vm(id).await.unwrap();
        let live = matches!(
            st,
            VmState::Running | VmState::Booting | VmState::Paused | VmState::Stopping
        );
        if live {
            assert_eq!(vm.state, VmState::Unknown, "{st}");
            assert_eq!(vm.state_reason.as_deref(), Some("node offline"));
            assert_eq!(vm.unknown_since, Some(since.clone()));
            assert_eq!(vm.node, Some(n.id.clone()), "the placement stays");
        } else {
            assert_eq!(vm.state, *st);
            assert_eq!(vm.unknown_since, None);
        }
    }
    assert_eq!(
        s.get_vm(&away.id).await.unwrap().state,
        VmState::Running,
        "another node's workloads are untouched"
    );
    // Marking again keeps the first instant; leaving `unknown` forgets it.
    let (_, running) = &by_state[0];
    s.update_vm_state(running, VmState::Unknown, Some("still"), None)
        .await
        .unwrap();
    assert_eq!(
        s.get_vm(running).await.unwrap().unknown_since,
        Some(since.clone())
    );
    let back = s
        .update_vm_state(running, VmState::Running, None, None)
        .await
        .unwrap();
    assert_eq!((back.state, back.unknown_since), (VmState::Running, None));
}
