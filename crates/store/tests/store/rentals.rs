use vmfleet_core::{RentalId, Timestamp};
use vmfleet_store::{StoreError, Usage};

use crate::common::{TestDb, new_vm, on_both_backends, online_node, placed_vm, res, user};

on_both_backends!(rentals_are_metered_by_owner_and_node);

fn t(seconds: i64) -> Timestamp {
    Timestamp::from_unix_millis(1_700_000_000_000 + seconds * 1000)
}

async fn rentals_are_metered_by_owner_and_node(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let b = user(s, 2).await;
    let n1 = online_node(s, "n1", res(16, 65536, 1000, 4)).await;
    let n2 = online_node(s, "n2", res(16, 65536, 1000, 4)).await;
    let va = placed_vm(s, a, "train", &n1.id, res(2, 2048, 10, 1)).await;
    let vb = placed_vm(s, b, "serve", &n2.id, res(4, 1024, 10, 0)).await;

    let r1 = RentalId::generate();
    let rental = s.start_rental(&r1, &va.id, &t(0)).await.unwrap();
    assert_eq!(rental.vm, va.id);
    assert_eq!(rental.owner, a);
    assert_eq!(rental.node, n1.id);
    assert_eq!(rental.resources, res(2, 2048, 10, 1));
    assert_eq!(rental.ended_at, None);
    assert_eq!(s.open_rental(&va.id).await.unwrap(), Some(rental.clone()));
    // One open rental per VM.
    let e = s
        .start_rental(&RentalId::generate(), &va.id, &t(1))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    // And a rental id once.
    let e = s.start_rental(&r1, &vb.id, &t(1)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");

    // 60 s at 2 vCPUs, 2 GiB, 1 GPU.
    let rec = s.end_rental(&r1, &t(60)).await.unwrap();
    assert_eq!(rec.period_start, t(0));
    assert_eq!(rec.period_end, t(60));
    assert_eq!(rec.usage.vcpu_seconds(), 120.0);
    assert_eq!(rec.usage.memory_gib_seconds(), 120.0);
    assert_eq!(rec.usage.gpu_seconds(), 60.0);
    assert_eq!(s.open_rental(&va.id).await.unwrap(), None);
    assert_eq!(s.get_rental(&r1).await.unwrap().ended_at, Some(t(60)));
    let e = s.end_rental(&r1, &t(70)).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "metered twice: {e}");

    // A second run of the same VM, 30 s; and b's VM for 10 s on the other node.
    let r2 = RentalId::generate();
    s.start_rental(&r2, &va.id, &t(100)).await.unwrap();
    s.end_rental(&r2, &t(130)).await.unwrap();
    let r3 = RentalId::generate();
    s.start_rental(&r3, &vb.id, &t(0)).await.unwrap();
    s.end_rental(&r3, &t(10)).await.unwrap();

    let ua = s.usage_by_owner(&a).await.unwrap();
    assert_eq!(
        ua,
        Usage {
            vcpu_millis: 2 * 90_000,
            memory_mib_millis: 2048 * 90_000,
            gpu_millis: 90_000,
            records: 2,
        }
    );
    assert_eq!(ua.memory_gib_seconds(), 180.0);
    let ub = s.usage_by_owner(&b).await.unwrap();
    assert_eq!(
        (ub.vcpu_seconds(), ub.memory_gib_seconds(), ub.gpu_seconds()),
        (40.0, 10.0, 0.0)
    );
    assert_eq!(s.usage_by_node(&n1.id).await.unwrap(), ua);
    assert_eq!(s.usage_by_node(&n2.id).await.unwrap(), ub);
    assert_eq!(
        s.usage_by_owner(&user(s, 3).await).await.unwrap(),
        Usage::default()
    );

    // An end before the start counts as zero.
    let r4 = RentalId::generate();
    s.start_rental(&r4, &vb.id, &t(500)).await.unwrap();
    let rec = s.end_rental(&r4, &t(400)).await.unwrap();
    assert_eq!(rec.usage.vcpu_millis, 0);
    assert_eq!(rec.period_end, t(500));

    // Refusals: not placed, deleted, unknown.
    let loose = s
        .insert_vm(&new_vm(a, "loose", res(1, 64, 1, 0)))
        .await
        .unwrap();
    let e = s
        .start_rental(&RentalId::generate(), &loose.id, &t(0))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    s.delete_vm(&vb.id).await.unwrap();
    let e = s
        .start_rental(&RentalId::generate(), &vb.id, &t(0))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(matches!(
        s.end_rental(&RentalId::generate(), &t(0)).await,
        Err(StoreError::NotFound { what: "rental", .. })
    ));
    // Usage outlives the node it ran on.
    s.delete_node(&n2.id).await.unwrap();
    assert_eq!(s.usage_by_node(&n2.id).await.unwrap().records, 2);
}
