//! `/vm/device/add`, `/vm/device/remove` and `/vm/fs/add` end to end: a control plane and
//! its local agent, one real guest under QEMU. Devices are cold-plugged (the VM stopped) and
//! the guest sees them from its next boot: a directory of the node's share root mounted over
//! virtio-9p (read-only and writable), a virtio entropy device, gone again once removed. The
//! refusals: paths that would leave the share root, a bad tag, a PCI device the node does not
//! offer, an unknown device id, another owner's VM, unknown fields, and anything while the
//! guest runs. `/vm/info` lists what the VM has.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use serde_json::json;
use vmfleet_auth::siwe::testing::TestWallet;
use vmfleet_client::{Client, ClientError, WsSession};
use vmfleet_core::{
    Device, DeviceId, PciAddress, SharePath, ShareTag, VmDevice, VmDeviceKind, VmId, VmName,
};
use vmfleet_hypervisor::HostDevices;
use vmfleet_tests::KillOnDrop;
use vmfleet_wire::api::{
    AddDeviceRequest, AddFsRequest, CreateVmRequest, RemoveDeviceRequest, StopVmRequest, VmRef,
};
use vmfleet_wire::ws::WsBody;

/// A PCI address the node offers but does not have: adding and removing it works while the
/// VM is stopped (no boot with it).
const OFFERED_PCI: &str = "0000:7f:1f.7";

/// The status and message of an API refusal.
fn refused<T: std::fmt::Debug>(r: Result<T, ClientError>) -> (u16, String) {
    match r {
        Err(ClientError::Api { status, body }) => (status, body.message),
        other => panic!("expected a refusal, got {other:?}"),
    }
}

async fn wait_state(client: &Client, vm: &VmRef, state: &str) {
    let deadline = Instant::now() + Duration::from_secs(90);
    loop {
        let info = client.vm_info(vm).await.unwrap();
        if info.state.as_str() == state {
            return;
        }
        assert!(Instant::now() < deadline, "never {state}: {info:?}");
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// Types `line` on the console until the output shows `needle` (the guest's shell may not be
/// listening yet); all the output read.
async fn console_until(console: &mut WsSession, line: &str, needle: &str) -> String {
    let deadline = Instant::now() + Duration::from_secs(60);
    let mut seen = String::new();
    loop {
        console.send_input(format!("{line}\n")).await.unwrap();
        let round = Instant::now() + Duration::from_secs(4);
        while Instant::now() < round {
            let left = round.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, console.next()).await {
                Ok(Ok(Some(m))) => {
                    if let WsBody::Console(d) = m.body {
                        seen.push_str(&d.content);
                        if seen.contains(needle) {
                            return seen;
                        }
                    }
                }
                Ok(other) => panic!("the console ended: {other:?}\n{seen}"),
                Err(_) => break,
            }
        }
        assert!(
            Instant::now() < deadline,
            "never saw {needle:?} after {line:?}:\n{seen}"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn devices_and_shares_cold_plugged_into_a_real_guest() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    // The share root: a read-only share with a secret, a writable one; a symlink leading out
    // of the root, a plain file.
    let root = dir.path().join("shares");
    std::fs::create_dir_all(root.join("data/sub")).unwrap();
    std::fs::create_dir_all(root.join("scratch")).unwrap();
    std::fs::create_dir_all(dir.path().join("outside")).unwrap();
    std::os::unix::fs::symlink(dir.path().join("outside"), root.join("escape")).unwrap();
    std::fs::write(root.join("plain.txt"), "not a directory").unwrap();
    let secret = vmfleet_core::uuid_v4();
    std::fs::write(root.join("data/sub/secret.txt"), &secret).unwrap();
    let host = HostDevices {
        share_root: Some(root.clone()),
        passthrough: vec![PciAddress::new(OFFERED_PCI).unwrap()],
    };
    let (plane, agent, base, _admin) =
        vmfleet_tests::plane_with_local_node_offering(dir.path(), host).await;
    let api = vmfleet_tests::Api::new(&base);
    let http = &api.http;
    let domain = plane.addr().to_string();
    let wallet = TestWallet::from_secret([21u8; 32]).unwrap();
    let token = vmfleet_tests::sign_in(http, &base, &domain, &wallet).await;
    let client = Client::new(&base).unwrap().with_token(token.clone());
    let me = wallet.address();

    // A VM that has run on the node, stopped later.
    let name = VmName::new("devs").unwrap();
    let created = client
        .create_vm(&CreateVmRequest {
            name: name.clone(),
            owner: me,
            vm_config: serde_json::from_value(json!({"vcpu_count": 1, "mem_size_mib": 256}))
                .unwrap(),
        })
        .await
        .unwrap();
    let id: VmId = created.vm_id.clone();
    let vm = VmRef {
        build_id: id.clone(),
        owner: me,
    };
    client.boot_vm(&vm).await.unwrap();
    wait_state(&client, &vm, "running").await;
    // Without devices, /vm/info has seed 002's shape: no `devices` key.
    let (_, raw) = api
        .post("/vm/info", &token, json!({"build_id": id, "owner": me}))
        .await;
    assert!(raw.get("devices").is_none(), "{raw}");

    let add_rng = AddDeviceRequest {
        build_id: id.clone(),
        owner: me,
        device: Device::Rng {},
    };
    let fs = |tag: &str, path: &str, read_only: bool| AddFsRequest {
        build_id: id.clone(),
        owner: me,
        tag: ShareTag::new(tag).unwrap(),
        path: SharePath::new(path).unwrap(),
        read_only,
    };
    let remove = |dev: &str| RemoveDeviceRequest {
        build_id: id.clone(),
        owner: me,
        id: DeviceId::new(dev).unwrap(),
    };

    // Running: no driver hot-plugs, and the answer says so.
    let (status, message) = refused(client.add_device(&add_rng).await);
    assert_eq!(status, 409, "{message}");
    assert!(message.contains("cannot hot-plug"), "{message}");
    let (status, message) = refused(client.add_fs(&fs("data", "data", true)).await);
    assert_eq!(status, 409, "{message}");
    let (status, message) = refused(client.remove_device(&remove("dev0")).await);
    assert_eq!(status, 409, "{message}");

    let force = StopVmRequest {
        build_id: id.clone(),
        owner: me,
        force: true,
    };
    client.stop_vm(&force).await.unwrap();
    wait_state(&client, &vm, "stopped").await;

    // Refusals on the stopped VM.
    let raw_fs = |tag: &str, path: &str| json!({"build_id": id, "owner": me, "tag": tag, "path": path, "read_only": true});
    for (body, want, why) in [
        (raw_fs("d", "../outside"), 400, "'..'"),
        (raw_fs("d", "data/../../outside"), 400, "'..'"),
        (raw_fs("d", "/etc"), 400, "absolute"),
        (raw_fs("d", "escape"), 400, "outside the share root"),
        (raw_fs("d", "missing"), 400, "no such directory"),
        (raw_fs("d", "plain.txt"), 400, "not a directory"),
        (raw_fs("bad tag", "data"), 400, "tag"),
        (raw_fs(&"t".repeat(32), "data"), 400, "tag"),
    ] {
        let (status, answer) = api.post("/vm/fs/add", &token, body.clone()).await;
        assert_eq!(status, want, "{body}: {answer}");
        assert_eq!(answer["success"], json!(false), "{answer}");
        let message = answer["message"].as_str().unwrap();
        assert!(message.contains(why), "{body}: {message}");
        assert!(
            !message.contains(dir.path().to_str().unwrap()),
            "a refusal shows the node's paths: {message}"
        );
    }
    let (status, message) = refused(
        client
            .add_device(&AddDeviceRequest {
                device: Device::PciPassthrough {
                    address: PciAddress::new("0000:01:00.0").unwrap(),
                },
                ..add_rng.clone()
            })
            .await,
    );
    assert_eq!(status, 409, "{message}");
    assert!(
        message.contains("does not offer PCI device 0000:01:00.0"),
        "{message}"
    );
    let (status, message) = refused(client.remove_device(&remove("dev9")).await);
    assert_eq!(status, 404, "{message}");
    assert!(message.contains("no device dev9"), "{message}");
    for (path, body) in [
        (
            "/vm/device/add",
            json!({"build_id": id, "owner": me, "device": {"kind": "rng"}, "extra": 1}),
        ),
        (
            "/vm/device/add",
            json!({"build_id": id, "owner": me, "device": {"kind": "rng", "extra": 1}}),
        ),
        (
            "/vm/device/add",
            json!({"build_id": id, "owner": me, "device": {"kind": "floppy"}}),
        ),
        (
            "/vm/device/add",
            json!({"build_id": id, "owner": me, "device": {"kind": "pci-passthrough", "address": "01:00.0"}}),
        ),
        (
            "/vm/fs/add",
            json!({"build_id": id, "owner": me, "tag": "d", "path": "data", "mode": "rw"}),
        ),
        (
            "/vm/device/remove",
            json!({"build_id": id, "owner": me, "id": "dev0", "force": true}),
        ),
        (
            "/vm/device/remove",
            json!({"build_id": id, "owner": me, "id": "../dev0"}),
        ),
    ] {
        let (status, answer) = api.post(path, &token, body.clone()).await;
        assert_eq!(status, 400, "{path} {body}: {answer}");
        assert_eq!(answer["code"], "BAD_REQUEST", "{answer}");
    }
    // Another owner's VM is not found, whatever it asks.
    let thief = TestWallet::from_secret([22u8; 32]).unwrap();
    let thief_token = vmfleet_tests::sign_in(http, &base, &domain, &thief).await;
    let other = thief.address();
    for (path, body) in [
        (
            "/vm/device/add",
            json!({"build_id": id, "owner": other, "device": {"kind": "rng"}}),
        ),
        (
            "/vm/fs/add",
            json!({"build_id": id, "owner": other, "tag": "d", "path": "data"}),
        ),
        (
            "/vm/device/remove",
            json!({"build_id": id, "owner": other, "id": "dev0"}),
        ),
    ] {
        let (status, answer) = api.post(path, &thief_token, body).await;
        assert_eq!(status, 404, "{path}: {answer}");
    }

    // Cold-plugged: a read-only share, a writable one, an entropy device (once), and an
    // offered PCI device added and taken off again.
    let data = client.add_fs(&fs("data", "data", true)).await.unwrap();
    assert_eq!(data.id.as_str(), "dev0");
    assert!(data.message.contains("mount -t 9p"), "{}", data.message);
    let (status, message) = refused(client.add_fs(&fs("data", "scratch", false)).await);
    assert_eq!(status, 409, "one share per tag: {message}");
    let scratch = client
        .add_fs(&fs("scratch", "scratch", false))
        .await
        .unwrap();
    assert_eq!(scratch.id.as_str(), "dev1");
    let rng = client.add_device(&add_rng).await.unwrap();
    assert_eq!(rng.id.as_str(), "dev2");
    let (status, message) = refused(client.add_device(&add_rng).await);
    assert_eq!(status, 409, "one entropy device: {message}");
    let gpu = client
        .add_device(&AddDeviceRequest {
            device: Device::PciPassthrough {
                address: PciAddress::new(OFFERED_PCI).unwrap(),
            },
            ..add_rng.clone()
        })
        .await
        .unwrap();
    assert_eq!(gpu.id.as_str(), "dev3");
    // The owner sees what the VM has, by id, and not where a share lives on the node.
    let before = client.vm_info(&vm).await.unwrap();
    assert_eq!(before.devices.len(), 4, "{before:?}");
    client.remove_device(&remove("dev3")).await.unwrap();
    let share = |id: &str, tag: &str, read_only| VmDevice {
        id: DeviceId::new(id).unwrap(),
        kind: VmDeviceKind::Share {
            tag: ShareTag::new(tag).unwrap(),
            read_only,
        },
    };
    let rng_device = VmDevice {
        id: DeviceId::new("dev2").unwrap(),
        kind: VmDeviceKind::Rng,
    };
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(
        info.devices,
        [
            share("dev0", "data", true),
            share("dev1", "scratch", false),
            rng_device
        ]
    );
    let (_, raw) = api
        .post("/vm/info", &token, json!({"build_id": id, "owner": me}))
        .await;
    assert_eq!(
        raw["devices"][2],
        json!({"id": "dev2", "kind": "rng"}),
        "{raw}"
    );
    assert!(
        !raw.to_string().contains(dir.path().to_str().unwrap()),
        "/vm/info shows the node's paths: {raw}"
    );
    // The node's own record of the VM keeps them.
    let spec = std::fs::read_to_string(dir.path().join(format!("data/vms/instances/{id}/vm.json")))
        .unwrap();
    assert!(
        spec.contains("\"kind\": \"share\"") && spec.contains("\"kind\": \"rng\""),
        "{spec}"
    );
    assert!(!spec.contains(OFFERED_PCI), "{spec}");

    // The guest sees them from its next boot.
    client.start_vm(&vm).await.unwrap();
    wait_state(&client, &vm, "running").await;
    let mut console = client.console(&name, None).await.unwrap();
    console_until(
        &mut console,
        "mkdir -p /mnt/d /mnt/s; mount -t 9p -o trans=virtio data /mnt/d; \
         mount -t 9p -o trans=virtio scratch /mnt/s; echo SECRET=$(cat /mnt/d/sub/secret.txt)",
        &format!("SECRET={secret}"),
    )
    .await;
    console_until(
        &mut console,
        "echo R$((1+1))=$(cat /sys/class/misc/hw_random/rng_available)",
        "R2=virtio",
    )
    .await;
    console_until(
        &mut console,
        "echo x > /mnt/d/new 2>/dev/null; echo RO$((2+1))=$?",
        "RO3=1",
    )
    .await;
    console_until(
        &mut console,
        "echo written-by-the-guest > /mnt/s/out.txt; echo RW$((3+1))=$?",
        "RW4=0",
    )
    .await;
    assert!(!root.join("data/new").exists());
    assert_eq!(
        std::fs::read_to_string(root.join("scratch/out.txt")).unwrap(),
        "written-by-the-guest\n"
    );

    // Running again: 409 both ways.
    let (status, _) = refused(client.add_device(&add_rng).await);
    assert_eq!(status, 409);
    let (status, _) = refused(client.remove_device(&remove("dev2")).await);
    assert_eq!(status, 409);

    // Stopped, the entropy device comes off; the next boot has none.
    client.stop_vm(&force).await.unwrap();
    wait_state(&client, &vm, "stopped").await;
    client.remove_device(&remove("dev2")).await.unwrap();
    let (status, _) = refused(client.remove_device(&remove("dev2")).await);
    assert_eq!(status, 404);
    let info = client.vm_info(&vm).await.unwrap();
    assert_eq!(
        info.devices,
        [share("dev0", "data", true), share("dev1", "scratch", false)]
    );
    client.start_vm(&vm).await.unwrap();
    wait_state(&client, &vm, "running").await;
    let mut console = client.console(&name, None).await.unwrap();
    let seen = console_until(
        &mut console,
        "echo G$((4+1))=[$(cat /sys/class/misc/hw_random/rng_available)]",
        "G5=[",
    )
    .await;
    let tail = &seen[seen.rfind("G5=[").unwrap()..];
    assert!(
        !tail.contains("virtio"),
        "the entropy device is still there: {tail}"
    );
    // The shares stayed.
    console_until(
        &mut console,
        "mount -t 9p -o trans=virtio data /mnt; echo S$((5+1))=$(cat /mnt/sub/secret.txt)",
        &format!("S6={secret}"),
    )
    .await;

    client.delete_vm(&vm).await.unwrap();
    agent.stop().await;
    plane.stop().await.unwrap();
}
