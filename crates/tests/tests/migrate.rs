//! Cold migration between two nodes (`/vm/migrate/from`, `/vm/migrate/to`): one control plane,
//! two agents each with its own VM directory, a real guest under QEMU (TCG). A running guest
//! moves with its memory (the same shell, typed into on the new node) and its disk; a stopped
//! one moves its disk through an explicit ticket; the source keeps nothing; refusals answer
//! with seed 002's statuses; a WebSocket monitor sees the migration's progress.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vmfleet_auth::siwe::testing::TestWallet;
use vmfleet_core::VmId;
use vmfleet_tests::{Api, ConsoleWatch, KillOnDrop, TestNode, admin_token, start_node, token};

/// Types `line` into the guest's console every second until `needle` shows.
async fn shell_shows(node: &TestNode, id: &VmId, line: &str, needle: &str) {
    let console = node.vmm.console(id).await.unwrap();
    let mut watch = ConsoleWatch::new(&console);
    for _ in 0..30 {
        console.write(format!("{line}\n").as_bytes()).await.unwrap();
        if watch
            .collect_for(Duration::from_millis(1000))
            .await
            .contains(needle)
        {
            return;
        }
    }
    panic!(
        "{needle:?} never on the console; it showed:\n{}",
        watch.text()
    );
}

/// The status frames a WebSocket monitor of VM `name` receives, until the socket closes or
/// the task is dropped.
fn monitor(addr: &str, name: &str, jwt: &str) -> tokio::sync::mpsc::UnboundedReceiver<Value> {
    let url = format!("ws://{addr}/ws/vms/{name}?token={jwt}");
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    tokio::spawn(async move {
        let (mut ws, _) = tokio_tungstenite::connect_async(url).await.unwrap();
        while let Some(Ok(msg)) = ws.next().await {
            if let Message::Text(t) = msg {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "status" && tx.send(v["data"].clone()).is_err() {
                    return;
                }
            }
        }
    });
    rx
}

#[tokio::test(flavor = "multi_thread")]
async fn a_vm_moves_between_nodes_running_and_stopped() {
    let began = Instant::now();
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let plane = vmfleet_tests::plane(dir.path(), Default::default()).await;
    let base = format!("http://{}", plane.addr());
    let admin = admin_token(&plane);
    let node_a = start_node(&base, &admin, "node-a", &dir.path().join("a")).await;
    let node_b = start_node(&base, &admin, "node-b", &dir.path().join("b")).await;
    let api = Api::new(&base);
    let domain = plane.addr().to_string();
    let wallet = TestWallet::from_secret([7u8; 32]).unwrap();
    let jwt = vmfleet_tests::sign_in(&api.http, &base, &domain, &wallet).await;
    let me = wallet.address().to_string();

    // A VM boots on one of the two nodes.
    let create =
        json!({"name": "mover", "owner": me, "vm_config": {"vcpu_count": 1, "mem_size_mib": 256}});
    let (status, created) = api.post("/vm/create", &jwt, create).await;
    assert_eq!(status, 200, "{created}");
    let id = VmId::new(created["vm_id"].as_str().unwrap()).unwrap();
    let vm = json!({"build_id": id, "owner": me});
    let (status, body) = api.post("/vm/boot", &jwt, vm.clone()).await;
    assert_eq!(status, 200, "{body}");
    let info = api.wait_state(&jwt, &vm, "running").await;
    let (src, dst) = if info["node"] == json!(node_a.id) {
        (&node_a, &node_b)
    } else {
        (&node_b, &node_a)
    };
    assert_eq!(info["node"], json!(src.id), "{info}");

    // A marker on its disk, and a shell variable only its memory knows.
    let (marker, var) = (token(), token());
    shell_shows(
        src,
        &id,
        &format!("echo {marker} > /marker; sync; MIGV={var}; echo wrote-$MIGV"),
        &format!("wrote-{var}"),
    )
    .await;

    // Refusals: another owner's VM is not found; only an admin names the node; the node it
    // is on cannot take it; unknown tickets and unknown fields.
    let thief = TestWallet::from_secret([8u8; 32]).unwrap();
    let thief_jwt = vmfleet_tests::sign_in(&api.http, &base, &domain, &thief).await;
    let theirs = json!({"build_id": id, "owner": thief.address().to_string()});
    let (status, body) = api.post("/vm/migrate/to", &thief_jwt, theirs.clone()).await;
    assert_eq!(status, 404, "{body}");
    let (status, body) = api.post("/vm/migrate/from", &thief_jwt, theirs).await;
    assert_eq!(status, 404, "{body}");
    let named = json!({"build_id": id, "owner": me, "node": dst.id});
    let (status, body) = api.post("/vm/migrate/from", &jwt, named).await;
    assert_eq!(status, 403, "{body}");
    assert_eq!(body["success"], json!(false));
    let here = json!({"build_id": id, "owner": me, "node": src.id});
    let (status, body) = api.post("/vm/migrate/from", &admin, here).await;
    assert_eq!(status, 409, "{body}");
    let unknown = json!({"build_id": id, "owner": me, "migration_id": "mig-0123456789abcdef"});
    let (status, body) = api.post("/vm/migrate/to", &jwt, unknown).await;
    assert_eq!(status, 404, "{body}");
    let extra = json!({"build_id": id, "owner": me, "to": "anywhere"});
    let (status, body) = api.post("/vm/migrate/to", &jwt, extra).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], json!(false));
    let extra = json!({"build_id": id, "owner": me, "force": true});
    let (status, body) = api.post("/vm/migrate/from", &jwt, extra).await;
    assert_eq!(status, 400, "{body}");

    // A migration that fails half-way (the target cannot boot the VM's kernel: it has no
    // such image) rolls back: the guest runs on where it was, the same shell, the reason
    // shown, nothing left on the target, the room released.
    let kernel = dst.vms_dir.parent().unwrap().join("images/vmlinux.bin");
    std::fs::rename(&kernel, kernel.with_extension("away")).unwrap();
    let (status, body) = api.post("/vm/migrate/to", &jwt, vm.clone()).await;
    assert_eq!(status, 200, "{body}");
    let failed = Instant::now() + Duration::from_secs(60);
    let info = loop {
        let (_, info) = api.post("/vm/info", &jwt, vm.clone()).await;
        if info["state"] != "migrating" {
            break info;
        }
        assert!(Instant::now() < failed, "{info}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert_eq!(info["state"], "running", "{info}");
    assert_eq!(info["node"], json!(src.id), "{info}");
    let why = info["message"].as_str().unwrap_or_default();
    assert!(
        why.contains("failed") && why.contains("vmlinux.bin"),
        "{info}"
    );
    shell_shows(src, &id, "echo still-$MIGV", &format!("still-{var}")).await;
    assert!(std::fs::read_dir(&dst.vms_dir).unwrap().next().is_none());
    std::fs::rename(kernel.with_extension("away"), &kernel).unwrap();

    // The running VM moves (no ticket: one call); a second migration at the same time is
    // refused.
    let mut statuses = monitor(&domain, "mover", &jwt);
    let t0 = Instant::now();
    let (first, second) = tokio::join!(
        api.post("/vm/migrate/to", &jwt, vm.clone()),
        api.post("/vm/migrate/to", &jwt, vm.clone())
    );
    let (moved, refused) = if first.0 == 200 {
        (first, second)
    } else {
        (second, first)
    };
    assert_eq!(moved.0, 200, "{moved:?}");
    assert_eq!(refused.0, 409, "{refused:?}");
    assert_eq!(moved.1["state"], "migrating", "{moved:?}");
    assert_eq!(moved.1["node"], json!(dst.id), "{moved:?}");
    // Nothing else runs on a migrating VM.
    let (status, body) = api.post("/vm/reboot", &jwt, vm.clone()).await;
    assert_eq!(status, 409, "{body}");
    let info = api.wait_state(&jwt, &vm, "running").await;
    eprintln!("a running guest moved in {:?}", t0.elapsed());
    assert_eq!(info["node"], json!(dst.id), "{info}");
    assert!(info.get("message").is_none(), "{info}");

    // The monitor saw the migration and its progress, then the VM running again.
    let mut seen = Vec::new();
    while let Ok(Some(s)) = tokio::time::timeout(Duration::from_secs(5), statuses.recv()).await {
        let done =
            s["state"] == "running" && seen.iter().any(|x: &Value| x["state"] == "migrating");
        seen.push(s);
        if done {
            break;
        }
    }
    assert!(
        seen.iter().any(|s| s["state"] == "migrating"
            && s["reason"].as_str().is_some_and(|r| r.contains("copying"))),
        "{seen:?}"
    );
    assert_eq!(seen.last().unwrap()["state"], "running", "{seen:?}");

    // The same guest, restored from its snapshot: the shell remembers its variable, and the
    // disk has the marker.
    shell_shows(
        dst,
        &id,
        "echo v-$MIGV-$(cat /marker)",
        &format!("v-{var}-{marker}"),
    )
    .await;
    // The source kept nothing.
    let gone = Instant::now() + Duration::from_secs(20);
    while src.vms_dir.join(id.as_str()).exists() || src.vmm.status(&id).await.is_ok() {
        assert!(Instant::now() < gone, "the source kept the VM's files");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let leftovers: Vec<_> = std::fs::read_dir(&src.vms_dir)
        .unwrap()
        .flatten()
        .map(|e| e.file_name())
        .collect();
    assert!(leftovers.is_empty(), "{leftovers:?}");

    // Stopped, it moves back with an explicit ticket: its disk only.
    let force = json!({"build_id": id, "owner": me, "force": true});
    let (status, body) = api.post("/vm/stop", &jwt, force).await;
    assert_eq!(status, 200, "{body}");
    api.wait_state(&jwt, &vm, "stopped").await;
    let (status, ticket) = api.post("/vm/migrate/from", &jwt, vm.clone()).await;
    assert_eq!(status, 200, "{ticket}");
    assert_eq!(ticket["node"], json!(src.id), "{ticket}");
    assert!(ticket["expires_at"].as_i64().unwrap() > vmfleet_core::Timestamp::now().unix_seconds());
    // One migration per VM: a second ticket while this one holds is refused.
    let (status, body) = api.post("/vm/migrate/from", &jwt, vm.clone()).await;
    assert_eq!(status, 409, "{body}");
    let t0 = Instant::now();
    let send = json!({"build_id": id, "owner": me, "migration_id": ticket["migration_id"]});
    let (status, body) = api.post("/vm/migrate/to", &jwt, send.clone()).await;
    assert_eq!(status, 200, "{body}");
    let info = api.wait_state(&jwt, &vm, "stopped").await;
    eprintln!("a stopped VM moved in {:?}", t0.elapsed());
    assert_eq!(info["node"], json!(src.id), "{info}");
    // A spent ticket is no ticket.
    let (status, body) = api.post("/vm/migrate/to", &jwt, send).await;
    assert_eq!(status, 404, "{body}");
    let gone = Instant::now() + Duration::from_secs(20);
    while dst.vms_dir.join(id.as_str()).exists() {
        assert!(Instant::now() < gone, "the old node kept the VM's files");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Started on its first node again, its disk still has the marker.
    let (status, body) = api.post("/vm/start", &jwt, vm.clone()).await;
    assert_eq!(status, 200, "{body}");
    api.wait_state(&jwt, &vm, "running").await;
    shell_shows(src, &id, "echo m-$(cat /marker)", &format!("m-{marker}")).await;

    // Every step is in the audit log.
    let entries = plane
        .store()
        .list_audit(&vmfleet_store::AuditTarget::Vm(id.clone()))
        .await
        .unwrap();
    for e in &entries {
        eprintln!("{} {} {}", e.at.as_str(), e.action, e.detail);
    }
    let actions: Vec<&str> = entries.iter().map(|e| e.action.as_str()).collect();
    for step in [
        "vm.migrate",
        "vm.migrate.export",
        "vm.migrate.copy",
        "vm.migrate.import",
        "vm.migrated",
        "vm.migrate.reserve",
    ] {
        assert!(actions.contains(&step), "{step} missing: {actions:?}");
    }
    eprintln!("the whole test took {:?}", began.elapsed());
}
