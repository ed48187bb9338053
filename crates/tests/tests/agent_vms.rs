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
        Duration::from_secs(5),
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
