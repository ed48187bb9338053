use std::net::IpAddr;

use vmfleet_core::{DeviceId, PciAddress, ShareTag, VmDevice, VmDeviceKind, VmId, VmName, VmState};
use vmfleet_store::{StoreError, WorkloadKind};

use crate::common::{TestDb, new_vm, on_both_backends, online_node, res, user, wallet};

on_both_backends!(
    vms_are_recorded_and_names_unique_per_owner,
    vm_states_addresses_and_soft_delete,
    assign_node_records_facts,
    vms_are_counted_by_state,
    a_vms_devices_are_kept_as_its_node_reports_them,
);

async fn a_vms_devices_are_kept_as_its_node_reports_them(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let vm = s
        .insert_vm(&new_vm(a, "dev", res(1, 64, 1, 0)))
        .await
        .unwrap();
    assert!(vm.devices.is_empty());
    let devices = vec![
        VmDevice {
            id: DeviceId::new("dev0").unwrap(),
            kind: VmDeviceKind::Share {
                tag: ShareTag::new("data").unwrap(),
                read_only: true,
            },
        },
        VmDevice {
            id: DeviceId::new("dev1").unwrap(),
            kind: VmDeviceKind::PciPassthrough {
                address: PciAddress::new("0000:3b:00.1").unwrap(),
            },
        },
    ];
    s.set_vm_devices(&vm.id, &devices).await.unwrap();
    let v = s.get_vm(&vm.id).await.unwrap();
    assert_eq!(v.devices, devices);
    assert!(v.updated_at.unix_millis() >= vm.updated_at.unix_millis());
    // A state change leaves them alone; a later report replaces them.
    let v = s
        .update_vm_state(&vm.id, VmState::Stopped, None, None)
        .await
        .unwrap();
    assert_eq!(v.devices, devices);
    s.set_vm_devices(&vm.id, &devices[1..]).await.unwrap();
    assert_eq!(s.list_vms(Some(&a)).await.unwrap()[0].devices, devices[1..]);
    s.delete_vm(&vm.id).await.unwrap();
    let e = s.set_vm_devices(&vm.id, &[]).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let e = s
        .set_vm_devices(&VmId::new("vm-missing").unwrap(), &[])
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::NotFound { .. }), "{e}");
}

async fn vms_are_counted_by_state(db: &TestDb) {
    let s = &db.store;
    assert_eq!(s.count_vms_by_state().await.unwrap(), vec![]);
    let a = user(s, 1).await;
    let mut ids = Vec::new();
    for name in ["a", "b", "c", "d"] {
        ids.push(
            s.insert_vm(&new_vm(a, name, res(1, 64, 1, 0)))
                .await
                .unwrap()
                .id,
        );
    }
    for id in &ids[..2] {
        s.update_vm_state(id, VmState::Running, None, None)
            .await
            .unwrap();
    }
    s.delete_vm(&ids[3]).await.unwrap();
    let mut counts = s.count_vms_by_state().await.unwrap();
    counts.sort_by_key(|(st, _)| st.as_str());
    assert_eq!(counts, vec![(VmState::Created, 1), (VmState::Running, 2)]);
}

async fn vms_are_recorded_and_names_unique_per_owner(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let b = user(s, 2).await;
    let new = new_vm(a, "web", res(2, 2048, 10, 0));
    let vm = s.insert_vm(&new).await.unwrap();
    assert_eq!(vm.id, new.id);
    assert_eq!(vm.kind, WorkloadKind::Vm);
    assert_eq!(vm.owner, a);
    assert_eq!(vm.name.as_str(), "web");
    assert_eq!(vm.spec, new.spec);
    assert_eq!(vm.resources, new.resources);
    assert_eq!(vm.state, VmState::Created);
    assert_eq!(
        (vm.node.clone(), vm.ip, vm.state_reason.clone()),
        (None, None, None)
    );
    assert_eq!(vm.deleted_at, None);
    assert_eq!(s.get_vm(&vm.id).await.unwrap(), vm);
    let web = VmName::new("web").unwrap();
    assert_eq!(s.get_vm_by_owner_name(&a, &web).await.unwrap(), vm);

    // The name is taken for a, not for b.
    let e = s
        .insert_vm(&new_vm(a, "web", res(1, 64, 1, 0)))
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    assert!(e.to_string().contains("already has a VM named web"), "{e}");
    let mut c = new_vm(b, "web", res(1, 64, 1, 0));
    c.kind = WorkloadKind::Container;
    c.spec = serde_json::json!({"image": "pytorch/pytorch:2.0.1-cuda11.7-cudnn8-runtime", "gpuIndices": ["0"]});
    let cont = s.insert_vm(&c).await.unwrap();
    assert_eq!(cont.kind, WorkloadKind::Container);
    assert_eq!(s.get_vm(&cont.id).await.unwrap().spec, c.spec);

    // Same id again.
    let mut dup = new_vm(b, "other", res(1, 64, 1, 0));
    dup.id = vm.id.clone();
    let e = s.insert_vm(&dup).await.unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    // Unknown owner.
    assert!(matches!(
        s.insert_vm(&new_vm(wallet(77), "x", res(1, 64, 1, 0)))
            .await,
        Err(StoreError::NotFound { what: "user", .. })
    ));

    let second = s
        .insert_vm(&new_vm(a, "db", res(1, 64, 1, 0)))
        .await
        .unwrap();
    let mine: Vec<_> = s
        .list_vms(Some(&a))
        .await
        .unwrap()
        .into_iter()
        .map(|v| v.id)
        .collect();
    assert_eq!(mine.len(), 2);
    assert!(mine.contains(&vm.id) && mine.contains(&second.id));
    assert_eq!(s.list_vms(Some(&b)).await.unwrap(), vec![cont]);
    assert_eq!(s.list_vms(None).await.unwrap().len(), 3);
    assert!(matches!(
        s.get_vm(&VmId::new("vm-missing").unwrap()).await,
        Err(StoreError::NotFound { what: "VM", .. })
    ));
    assert!(matches!(
        s.get_vm_by_owner_name(&b, &VmName::new("db").unwrap())
            .await,
        Err(StoreError::NotFound { .. })
    ));
}

async fn vm_states_addresses_and_soft_delete(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let vm = s
        .insert_vm(&new_vm(a, "web", res(2, 2048, 10, 0)))
        .await
        .unwrap();
    let ip: IpAddr = "192.168.100.5".parse().unwrap();

    let v = s
        .update_vm_state(&vm.id, VmState::Booting, None, Some(ip))
        .await
        .unwrap();
    assert_eq!((v.state, v.ip), (VmState::Booting, Some(ip)));
    assert!(v.updated_at.unix_millis() >= vm.updated_at.unix_millis());
    let v = s
        .update_vm_state(
            &vm.id,
            VmState::Error,
            Some("qemu exited with status 1"),
            None,
        )
        .await
        .unwrap();
    assert_eq!(v.state, VmState::Error);
    assert_eq!(v.state_reason.as_deref(), Some("qemu exited with status 1"));
    assert_eq!(v.ip, Some(ip), "the address is kept when none is given");
    let v = s
        .update_vm_state(&vm.id, VmState::Stopped, None, None)
        .await
        .unwrap();
    assert_eq!((v.state, v.state_reason), (VmState::Stopped, None));

    s.delete_vm(&vm.id).await.unwrap();
    let gone = s.get_vm(&vm.id).await.unwrap();
    assert_eq!(gone.state, VmState::Deleted);
    assert!(gone.deleted_at.is_some());
    assert!(s.list_vms(Some(&a)).await.unwrap().is_empty());
    assert!(s.list_vms(None).await.unwrap().is_empty());
    let web = VmName::new("web").unwrap();
    assert!(matches!(
        s.get_vm_by_owner_name(&a, &web).await,
        Err(StoreError::NotFound { .. })
    ));
    // A deleted VM stays deleted.
    let e = s
        .update_vm_state(&vm.id, VmState::Running, None, None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    s.delete_vm(&vm.id).await.unwrap();
    assert!(matches!(
        s.delete_vm(&VmId::new("vm-missing").unwrap()).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.update_vm_state(
            &VmId::new("vm-missing").unwrap(),
            VmState::Running,
            None,
            None
        )
        .await,
        Err(StoreError::NotFound { .. })
    ));
    // Its name is free again.
    let reborn = s
        .insert_vm(&new_vm(a, "web", res(1, 64, 1, 0)))
        .await
        .unwrap();
    assert_eq!(
        s.get_vm_by_owner_name(&a, &web).await.unwrap().id,
        reborn.id
    );
    // Deleting through update_vm_state is the same as delete_vm.
    let d = s
        .update_vm_state(&reborn.id, VmState::Deleted, None, None)
        .await
        .unwrap();
    assert_eq!(d.state, VmState::Deleted);
    assert!(d.deleted_at.is_some());
}

async fn assign_node_records_facts(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    // A node with no room: assign_node does not look.
    let n = online_node(s, "alpha", res(0, 0, 0, 0)).await;
    let vm = s
        .insert_vm(&new_vm(a, "web", res(2, 2048, 10, 0)))
        .await
        .unwrap();
    let v = s.assign_node(&vm.id, Some(&n.id)).await.unwrap();
    assert_eq!(v.node, Some(n.id.clone()));
    assert_eq!(s.list_vms_on_node(&n.id).await.unwrap(), vec![v]);
    assert_eq!(s.used_resources(&n.id).await.unwrap(), res(2, 2048, 10, 0));
    let v = s.assign_node(&vm.id, None).await.unwrap();
    assert_eq!(v.node, None);
    assert!(s.list_vms_on_node(&n.id).await.unwrap().is_empty());
    assert!(matches!(
        s.assign_node(&vm.id, Some(&vmfleet_core::NodeId::generate()))
            .await,
        Err(StoreError::NotFound { what: "node", .. })
    ));
}
