//! The REST API's VM operations as `/fleet` commands, run by a real agent on a real QEMU
//! guest (TCG): create and boot, once per request id however often the command is resent;
//! the serial console streamed over the agent's connection, both ways; status and metrics;
//! stop and delete; VM states reported as they change and again on every reconnection.

#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Duration;

use vmfleet_agent::host::HostSampler;
use vmfleet_agent::upstream::Upstream;
use vmfleet_core::{ImageName, NodeId, RequestId, VmId, VmState};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{Hypervisor, Vmm};
use vmfleet_server::fleet::Fleet;
use vmfleet_tests::{KillOnDrop, fleet_server, guest_catalog, token, wait_log};
use vmfleet_wire::fleet::{CreateVmSpec, VmCommand, VmCommandReply, VmErrorCode, VmOperation};

const KEY: &str = "key-of-the-vm-node";
const LONG: Duration = Duration::from_secs(120);

async fn run(
    fleet: &Fleet,
    node: &NodeId,
    request: &str,
    vm: &str,
    op: VmOperation,
) -> VmCommandReply {
    let cmd = VmCommand {
        request_id: RequestId::new(request).unwrap(),
        vm_id: VmId::new(vm).unwrap(),
        op,
    };
    fleet.vm_command(node, cmd, LONG).await.unwrap()
}

fn create_spec() -> VmOperation {
    VmOperation::Create(CreateVmSpec {
        vcpu_count: 1,
        mem_size_mib: 256,
        disk_size_gib: 1,
        kernel: ImageName::new("vmlinux.bin").unwrap(),
        initrd: None,
        rootfs: ImageName::new("rootfs.ext4").unwrap(),
        boot_args: None,
        labels: [("owner".to_owned(), "0xabc".to_owned())].into(),
        boot: true,
    })
}

/// Reads the tap until `needle` shows, and returns everything read.
async fn read_until(tap: &mut vmfleet_server::fleet::ConsoleTap, seen: &mut Vec<u8>, needle: &str) {
    let deadline = tokio::time::Instant::now() + LONG;
    while !String::from_utf8_lossy(seen).contains(needle) {
        let chunk = tokio::time::timeout_at(deadline, tap.output.recv())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "{needle:?} never came over /fleet; the console showed:\n{}",
                    String::from_utf8_lossy(seen)
                )
            });
        if let Ok(bytes) = chunk {
            seen.extend_from_slice(&bytes);
        }
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn vm_operations_and_the_console_travel_over_fleet() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let catalog = guest_catalog(&dir.path().join("images"));
    let vmm: Arc<dyn Hypervisor> = Arc::new(
        Vmm::new(
            Arc::new(QemuBackend::new(QemuConfig {
                accel: Accel::Tcg,
                ..QemuConfig::default()
            })),
            catalog,
            dir.path().join("vms"),
        )
        .unwrap(),
    );
    let (url, rec, fleet) = fleet_server(KEY, "node-vm", Duration::from_secs(5)).await;
    let upstream = Upstream::new(
        url,
        KEY,
        Duration::from_secs(1),
        None,
        HostSampler::new(dir.path()),
    )
    .with_vms(vmm.clone());
    let agent = tokio::spawn(async move { upstream.run(std::future::pending()).await });
    wait_log(&rec, "online node-vm").await;
    let node = NodeId::new("node-vm").unwrap();

    // Create and boot; the same request again (a lost acknowledgement) boots nothing more.
    let first = run(&fleet, &node, "req-1", "vm-a", create_spec()).await;
    assert!(first.success, "{first:?}");
    let report = first.vm.clone().unwrap();
    assert_eq!(report.state, VmState::Running);
    assert_eq!(report.labels["owner"], "0xabc");
    let pid = vmm.status(&report.vm_id).await.unwrap().pid;
    let again = run(&fleet, &node, "req-1", "vm-a", create_spec()).await;
    assert_eq!(again, first);
    assert_eq!(vmm.list().await.len(), 1);
    assert_eq!(vmm.status(&report.vm_id).await.unwrap().pid, pid);
    // A request id names one command only.
    let reused = run(&fleet, &node, "req-1", "vm-a", VmOperation::Reboot).await;
    assert_eq!(reused.code, Some(VmErrorCode::BadRequest));
    // A new request to create the same VM is a conflict, not a second VM.
    let dup = run(&fleet, &node, "req-2", "vm-a", create_spec()).await;
    assert!(!dup.success);
    assert_eq!(dup.code, Some(VmErrorCode::Conflict), "{dup:?}");
    wait_log(&rec, "vm node-vm vm-a running").await;

    // The console, both ways, over the agent's one outbound connection.
    let mut tap = fleet.console(&node, &report.vm_id).await.unwrap();
    let mut seen = Vec::new();
    let t = token();
    let mut answered = false;
    for _ in 0..60 {
        fleet
            .console_input(
                &node,
                &report.vm_id,
                format!("echo ans-$((40+2))-{t}\n").as_bytes(),
            )
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            read_until(&mut tap, &mut seen, &format!("ans-42-{t}")).await
        })
        .await;
        if got.is_ok() {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "the shell never answered over /fleet:\n{}",
        String::from_utf8_lossy(&seen)
    );

    let status = run(&fleet, &node, "req-3", "vm-a", VmOperation::Status).await;
    assert_eq!(status.vm.unwrap().state, VmState::Running);
    let metrics = run(&fleet, &node, "req-4", "vm-a", VmOperation::Metrics).await;
    let m = metrics.metrics.unwrap();
    assert!(m.memory_total_bytes > 0, "{m:?}");

    // Drained with a VM running: the node takes no new VM, reports maintenance, and the
    // running one goes on.
    let drain = vmfleet_wire::fleet::BackendCommand::DrainNode(vmfleet_wire::fleet::DrainNode {
        node_id: node.clone(),
        reason: "kernel upgrade".into(),
    });
    fleet.send(&node, &drain, LONG).await.unwrap();
    let refused = run(&fleet, &node, "req-drain", "vm-c", create_spec()).await;
    assert_eq!(refused.code, Some(VmErrorCode::Draining), "{refused:?}");
    wait_log(&rec, "heartbeat node-vm Maintenance").await;
    let status = run(&fleet, &node, "req-drain-2", "vm-a", VmOperation::Status).await;
    assert_eq!(status.vm.unwrap().state, VmState::Running);
    let undrain =
        vmfleet_wire::fleet::BackendCommand::UndrainNode(vmfleet_wire::fleet::UndrainNode {
            node_id: node.clone(),
        });
    fleet.send(&node, &undrain, LONG).await.unwrap();

    // A reconnection reports every VM again.
    let before = rec
        .log()
        .iter()
        .filter(|l| l.starts_with("vm node-vm vm-a running"))
        .count();
    fleet.drop_node(&node);
    for _ in 0..300 {
        let now = rec
            .log()
            .iter()
            .filter(|l| l.starts_with("vm node-vm vm-a running"))
            .count();
        if now > before && fleet.is_connected(&node) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let after = rec
        .log()
        .iter()
        .filter(|l| l.starts_with("vm node-vm vm-a running"))
        .count();
    assert!(
        after > before,
        "no report after reconnecting: {:?}",
        rec.log()
    );
    drop(tap);

    // Stop (forced), then delete; the VM is gone and says so.
    let stop = VmOperation::Stop {
        force: true,
        timeout_seconds: 5,
    };
    let stopped = run(&fleet, &node, "req-5", "vm-a", stop).await;
    assert_eq!(stopped.vm.unwrap().state, VmState::Stopped);
    wait_log(&rec, "vm node-vm vm-a stopped").await;
    let deleted = run(&fleet, &node, "req-6", "vm-a", VmOperation::Delete).await;
    assert!(deleted.success && deleted.vm.is_none());
    let gone = run(&fleet, &node, "req-7", "vm-a", VmOperation::Status).await;
    assert_eq!(gone.code, Some(VmErrorCode::NotFound));
    // Impossible sizes are refused by the node with a reason, not attempted.
    let mut huge = create_spec();
    if let VmOperation::Create(spec) = &mut huge {
        spec.vcpu_count = 4096;
    }
    let refused = run(&fleet, &node, "req-8", "vm-b", huge).await;
    assert!(!refused.success);
    assert!(
        matches!(
            refused.code,
            Some(VmErrorCode::InsufficientCapacity | VmErrorCode::BadRequest)
        ),
        "{refused:?}"
    );
    agent.abort();
}

/// The real control plane (store, `/fleet`, scheduler) and a real agent: a VM is placed on
/// the node, boots, runs as a rental, is re-reported after the agent loses the control plane,
/// and is metered when removed.
#[tokio::test(flavor = "multi_thread")]
async fn the_scheduler_boots_a_vm_through_a_real_agent_and_meters_it() {
    use vmfleet_store::{NewVm, Resources, Store, WorkloadKind};

    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let url = vmfleet_store::sqlite_url(&dir.path().join("vmfleet.db")).unwrap();
    let store = Store::open(&url).await.unwrap();
    let state = vmfleet_server::AppState::new(vmfleet_auth::JwtKey::generate())
        .with_store(store.clone(), Duration::from_secs(5))
        .with_scheduler_config(vmfleet_server::scheduler::SchedulerConfig {
            confirm_timeout: Duration::from_secs(10),
            ..Default::default()
        });
    let scheduler = state.scheduler.clone().unwrap();
    let fleet = state.fleet.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let base = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(vmfleet_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    let key = "key-of-the-vm-box";
    let node = store
        .create_node("vm-box", &vmfleet_auth::SecretHash::of(key))
        .await
        .unwrap()
        .id;

    let vmm: Arc<dyn Hypervisor> = Arc::new(
        Vmm::new(
            Arc::new(QemuBackend::new(QemuConfig {
                accel: Accel::Tcg,
                ..QemuConfig::default()
            })),
            guest_catalog(&dir.path().join("images")),
            dir.path().join("vms"),
        )
        .unwrap(),
    );
    let upstream = Upstream::new(
        base,
        key,
        Duration::from_secs(1),
        None,
        HostSampler::new(dir.path()),
    )
    .with_vms(vmm.clone());
    let agent = tokio::spawn(async move { upstream.run(std::future::pending()).await });
    for _ in 0..200 {
        let n = store.get_node(&node).await.unwrap();
        if n.capacity.vcpus > 0 && n.status == vmfleet_store::NodeStatus::Online {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }

    let owner =
        vmfleet_core::WalletAddress::parse("0x00000000000000000000000000000000000000a1").unwrap();
    store
        .upsert_user(&owner, vmfleet_auth::Role::Standard)
        .await
        .unwrap();
    let VmOperation::Create(spec) = create_spec() else {
        unreachable!()
    };
    let id = VmId::new("vm-placed").unwrap();
    store
        .insert_vm(&NewVm {
            id: id.clone(),
            kind: WorkloadKind::Vm,
            owner,
            name: "placed".parse().unwrap(),
            spec: serde_json::to_value(&spec).unwrap(),
            resources: Resources {
                vcpus: 1,
                memory_mib: 256,
                disk_gib: 1,
                gpus: 0,
            },
        })
        .await
        .unwrap();
    let placed = scheduler.place(&id).await.unwrap();
    assert_eq!(placed.state, VmState::Running);
    assert_eq!(placed.node.as_ref(), Some(&node));
    let rental = store
        .open_rental(&id)
        .await
        .unwrap()
        .expect("an open rental");
    assert_eq!(Some(&rental.id), placed.rental.as_ref());
    let st = vmm.status(&id).await.unwrap();
    assert_eq!(st.state, VmState::Running);

    // The control plane loses the agent: the VM is unknown, then running again once the agent
    // reconnects and reports; the rental goes on.
    fleet.drop_node(&node);
    for _ in 0..200 {
        if fleet.is_connected(&node)
            && store.get_vm(&id).await.unwrap().state == VmState::Running
            && store.get_node(&node).await.unwrap().status == vmfleet_store::NodeStatus::Online
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(store.get_vm(&id).await.unwrap().state, VmState::Running);
    assert_eq!(store.open_rental(&id).await.unwrap().unwrap().id, rental.id);

    // Removing it stops the guest, deletes it on the node, and writes its usage record.
    tokio::time::sleep(Duration::from_millis(500)).await;
    scheduler.remove(&id).await.unwrap();
    assert!(vmm.status(&id).await.is_err(), "the node still has the VM");
    let usage = store.usage_by_owner(&owner).await.unwrap();
    assert_eq!(usage.records, 1);
    assert!(usage.vcpu_seconds() >= 0.5, "{usage:?}");
    assert_eq!(store.usage_by_node(&node).await.unwrap().records, 1);
    agent.abort();
}

/// Starts `vmfleet agent` against `url` with its files under `base`.
fn spawn_agent(url: &str, key: &str, base: &std::path::Path) -> std::process::Child {
    std::process::Command::new(vmfleet_tests::vmfleet_bin())
        .arg("agent")
        .env("API_URL", url)
        .env("HOST_API_KEY", key)
        .env("VM_BASE_PATH", base)
        .env("NODE_WS_LISTEN", "127.0.0.1:0")
        .env("DOCKER_SOCKET", base.join("no-docker.sock"))
        .env("VMFLEET_ACCEL", "tcg")
        .env("HEARTBEAT_SECS", "1")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap()
}

/// Types into the console over `/fleet` until the guest's shell answers.
async fn shell_answers_over_fleet(fleet: &Fleet, node: &NodeId, vm: &VmId) -> bool {
    let mut tap = fleet.console(node, vm).await.unwrap();
    let mut seen = Vec::new();
    let t = token();
    for _ in 0..60 {
        fleet
            .console_input(node, vm, format!("echo ans-$((40+2))-{t}\n").as_bytes())
            .await
            .unwrap();
        let got = tokio::time::timeout(Duration::from_secs(2), async {
            read_until(&mut tap, &mut seen, &format!("ans-42-{t}")).await
        })
        .await;
        if got.is_ok() {
            return true;
        }
    }
    false
}

/// `kill -9` the agent binary while its guest runs; started again, it re-adopts the guest (no
/// second boot), reports it running, and its console answers over `/fleet` again.
#[tokio::test(flavor = "multi_thread")]
async fn a_killed_agent_readopts_its_guest() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let base = dir.path().join("node");
    let (url, rec, fleet) = fleet_server(KEY, "node-k9", Duration::from_secs(5)).await;
    let node = NodeId::new("node-k9").unwrap();
    let mut agent = spawn_agent(&url, KEY, &base);
    wait_log(&rec, "online node-k9").await;

    let created = run(&fleet, &node, "k9-1", "vm-k9", create_spec()).await;
    assert_eq!(
        created.vm.as_ref().unwrap().state,
        VmState::Running,
        "{created:?}"
    );
    let qemu_pid = vmfleet_tests::pids_mentioning(&base);
    assert_eq!(qemu_pid.len(), 1, "one guest process: {qemu_pid:?}");
    let vm = VmId::new("vm-k9").unwrap();
    assert!(shell_answers_over_fleet(&fleet, &node, &vm).await);

    agent.kill().unwrap();
    agent.wait().unwrap();
    wait_log(&rec, "offline node-k9").await;
    let reports = |rec: &vmfleet_tests::Recorder| {
        rec.log()
            .iter()
            .filter(|l| l.starts_with("vm node-k9 vm-k9 running"))
            .count()
    };
    let before = reports(&rec);

    let mut agent = spawn_agent(&url, KEY, &base);
    for _ in 0..400 {
        if fleet.is_connected(&node) && reports(&rec) > before {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        reports(&rec) > before,
        "not reported again: {:?}",
        rec.log()
    );
    assert_eq!(
        vmfleet_tests::pids_mentioning(&base),
        qemu_pid,
        "the guest was booted again instead of re-adopted"
    );
    let status = run(&fleet, &node, "k9-2", "vm-k9", VmOperation::Status).await;
    assert_eq!(status.vm.unwrap().state, VmState::Running);
    assert!(shell_answers_over_fleet(&fleet, &node, &vm).await);
    // The request id of the first boot is not remembered across the restart, but the VM is:
    // creating it again is a conflict, never a second guest.
    let again = run(&fleet, &node, "k9-1", "vm-k9", create_spec()).await;
    assert_eq!(again.code, Some(VmErrorCode::Conflict), "{again:?}");
    assert_eq!(vmfleet_tests::pids_mentioning(&base), qemu_pid);
    agent.kill().unwrap();
    agent.wait().unwrap();
}
