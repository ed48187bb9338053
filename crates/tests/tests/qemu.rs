//! Real guests under QEMU/TCG through the `Vmm`: the console, pause and resume, reboot,
//! snapshot and restore, graceful stop, metrics, a guest that dies, and bad input.

#![allow(clippy::unwrap_used)]

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use vmfleet_core::{ImageName, SnapshotId, VmId, VmState};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{CreateVm, Hypervisor, HypervisorError, Vmm};
use vmfleet_tests::{ConsoleWatch, guest_catalog, token};

const READY: &str = "vmfleet-guest ready";

/// Guests under TCG each want a core: at most two at once on the 2-core machines.
static GUESTS: tokio::sync::Semaphore = tokio::sync::Semaphore::const_new(2);
const BOOT: Duration = Duration::from_secs(90);
const SHORT: Duration = Duration::from_secs(20);

fn vmm(root: &Path, accel: Accel) -> Vmm {
    let backend = QemuBackend::new(QemuConfig {
        accel,
        ..QemuConfig::default()
    });
    Vmm::new(
        Arc::new(backend),
        guest_catalog(&root.join("images")),
        root.join("vms"),
    )
    .unwrap()
}

fn guest(id: &str) -> CreateVm {
    vmfleet_tests::test_vm(id)
}

/// Types `cmd` and waits for its output marker.
async fn run(vmm: &Vmm, watch: &mut ConsoleWatch, id: &VmId, cmd: &str, expect: &str) {
    let from = watch.len();
    let console = vmm.console(id).await.unwrap();
    console.write(format!("{cmd}\n").as_bytes()).await.unwrap();
    watch.wait_for_from(from, expect, SHORT).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn boots_talks_pauses_reboots_and_stops() {
    let _slot = GUESTS.acquire().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Tcg);
    let id = VmId::new("vm-life").unwrap();
    let mut events = vmm.subscribe();
    assert_eq!(
        vmm.create(guest("vm-life")).await.unwrap().state,
        VmState::Created
    );
    let st = vmm.boot(&id).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert!(st.pid.is_some());
    let console = vmm.console(&id).await.unwrap();
    let mut watch = ConsoleWatch::new(&console);
    watch.wait_for(READY, BOOT).await;
    watch.wait_for("/ # ", SHORT).await;

    // The console round-trip: what we type runs in the guest.
    let t = token();
    // The guest prints the marker from a computed string, so the echo of what we typed does
    // not satisfy the wait by itself.
    run(
        &vmm,
        &mut watch,
        &id,
        &format!("echo vmfleet-$((6*7))-{t}"),
        &format!("vmfleet-42-{t}"),
    )
    .await;

    // Metrics come from the process and QMP; a busy loop raises the CPU.
    let _ = vmm.metrics(&id).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let idle = vmm.metrics(&id).await.unwrap();
    assert!(idle.memory_total_bytes == 256 << 20);
    assert!(
        idle.memory_used_bytes > 0 && idle.memory_used_bytes < idle.memory_total_bytes,
        "{idle:?}"
    );
    assert!(
        idle.disk_read_bytes > 0,
        "the guest read its root disk: {idle:?}"
    );
    run(
        &vmm,
        &mut watch,
        &id,
        "(while :; do :; done) & echo busy-$((1+1))",
        "busy-2",
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let busy = vmm.metrics(&id).await.unwrap();
    assert!(
        busy.cpu_percent > idle.cpu_percent + 15.0,
        "busy {busy:?} idle {idle:?}"
    );
    run(
        &vmm,
        &mut watch,
        &id,
        "kill %1; echo killed-$((2+2))",
        "killed-4",
    )
    .await;

    // Memory resize of a running guest goes through the balloon: the guest sees less.
    let mut shrunk = None;
    vmm.resize_memory(&id, 128).await.unwrap();
    for _ in 0..50 {
        let from = watch.len();
        let console = vmm.console(&id).await.unwrap();
        // "memto" "tal-" keeps the echo of the command from matching its output.
        console
            .write(b"awk '/MemTotal/ {print \"memto\" \"tal-\" $2}' /proc/meminfo\n")
            .await
            .unwrap();
        let at = watch.wait_for_from(from, "memtotal-", SHORT).await;
        watch.wait_for_from(at, "\n", SHORT).await;
        let text = String::from_utf8_lossy(&watch.seen[at..]).into_owned();
        let kib: u64 = text.split_whitespace().next().unwrap().parse().unwrap();
        if kib < 140 * 1024 {
            shrunk = Some(kib);
            break;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(
        shrunk.is_some(),
        "the balloon did not shrink the guest: {}",
        watch.text()
    );
    assert!(matches!(
        vmm.resize_memory(&id, 512).await,
        Err(HypervisorError::InvalidSpec(_))
    ));

    // Pause: the guest does not run what we type until it is resumed.
    assert_eq!(vmm.pause(&id).await.unwrap().state, VmState::Paused);
    assert!(matches!(
        vmm.pause(&id).await,
        Err(HypervisorError::InvalidState(_))
    ));
    let from = watch.len();
    console.write(b"echo resumed-$((3*3))\n").await.unwrap();
    let during = watch.collect_for(Duration::from_millis(800)).await;
    assert!(
        !during.contains("resumed-9"),
        "a paused guest ran a command: {during}"
    );
    assert_eq!(vmm.resume(&id).await.unwrap().state, VmState::Running);
    watch.wait_for_from(from, "resumed-9", SHORT).await;

    // Reboot: the same console shows the guest boot again.
    let from = watch.len();
    assert_eq!(vmm.reboot(&id).await.unwrap().state, VmState::Running);
    watch.wait_for_from(from, READY, BOOT).await;
    run(
        &vmm,
        &mut watch,
        &id,
        "echo after-reboot-$((5+5))",
        "after-reboot-10",
    )
    .await;

    // Graceful stop: the guest sees the power button and shuts itself down.
    let from = watch.len();
    let st = vmm.stop(&id, Duration::from_secs(30)).await.unwrap();
    let shutdown = String::from_utf8_lossy(&watch.seen[from..]).into_owned()
        + &watch.collect_for(Duration::from_millis(100)).await;
    assert!(
        shutdown.contains("vmfleet-guest stopping"),
        "the guest did not shut down by itself: {shutdown}"
    );
    assert_eq!(st.state, VmState::Stopped);
    assert!(st.pid.is_none());
    assert!(matches!(
        vmm.console(&id).await,
        Err(HypervisorError::NotRunning(_))
    ));
    let mut saw = Vec::new();
    while let Ok(ev) = events.try_recv() {
        saw.push(ev.state);
    }
    for s in [
        VmState::Created,
        VmState::Booting,
        VmState::Running,
        VmState::Paused,
        VmState::Stopping,
        VmState::Stopped,
    ] {
        assert!(saw.contains(&s), "no {s} event in {saw:?}");
    }
    vmm.delete(&id).await.unwrap();
    assert!(matches!(
        vmm.status(&id).await,
        Err(HypervisorError::NotFound(_))
    ));
    assert!(!dir.path().join("vms/vm-life").exists());
}

#[tokio::test(flavor = "multi_thread")]
async fn snapshot_and_restore_keep_what_the_guest_wrote() {
    let _slot = GUESTS.acquire().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Tcg);
    let id = VmId::new("vm-snap").unwrap();
    vmm.create(guest("vm-snap")).await.unwrap();
    vmm.boot(&id).await.unwrap();
    let mut watch = ConsoleWatch::new(&vmm.console(&id).await.unwrap());
    watch.wait_for(READY, BOOT).await;
    let t = token();
    run(
        &vmm,
        &mut watch,
        &id,
        &format!("echo {t} > /root/before; echo wrote-$((1+2))"),
        "wrote-3",
    )
    .await;
    let snap = vmm
        .snapshot(&id, SnapshotId::new("s1").unwrap())
        .await
        .unwrap();
    assert_eq!(vmm.status(&id).await.unwrap().state, VmState::Running);
    // After the snapshot the guest deletes the file; the restore brings it back.
    run(
        &vmm,
        &mut watch,
        &id,
        "rm /root/before; sync; echo gone-$((2+3))",
        "gone-5",
    )
    .await;
    assert!(matches!(
        vmm.restore(&id, &snap).await,
        Err(HypervisorError::InvalidState(_))
    ));
    vmm.force_stop(&id).await.unwrap();
    let missing = SnapshotId::new("nope").unwrap();
    assert!(matches!(
        vmm.restore(&id, &missing).await,
        Err(HypervisorError::NoSnapshot { .. })
    ));
    assert_eq!(
        vmm.restore(&id, &snap).await.unwrap().state,
        VmState::Running
    );
    let mut watch = ConsoleWatch::new(&vmm.console(&id).await.unwrap());
    let console = vmm.console(&id).await.unwrap();
    // A restored guest continues where it was: no boot, the shell answers.
    console
        .write(b"cat /root/before; echo restored-$((4+4))\n")
        .await
        .unwrap();
    let at = watch.wait_for("restored-8", SHORT).await;
    let text = String::from_utf8_lossy(&watch.seen[..at]).into_owned();
    assert!(
        text.contains(&format!("\n{t}")),
        "the file is not back: {text}"
    );
    assert!(
        !text.contains(READY),
        "the guest booted instead of resuming"
    );
    vmm.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_that_dies_is_in_error_with_the_reason() {
    let _slot = GUESTS.acquire().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Tcg);
    let id = VmId::new("vm-panic").unwrap();
    vmm.create(guest("vm-panic")).await.unwrap();
    vmm.boot(&id).await.unwrap();
    let mut watch = ConsoleWatch::new(&vmm.console(&id).await.unwrap());
    watch.wait_for(READY, BOOT).await;
    let console = vmm.console(&id).await.unwrap();
    console
        .write(b"echo c > /proc/sysrq-trigger\n")
        .await
        .unwrap();
    let mut events = vmm.subscribe();
    let st = tokio::time::timeout(SHORT, async {
        loop {
            let st = vmm.status(&id).await.unwrap();
            if st.state == VmState::Error {
                return st;
            }
            let _ = tokio::time::timeout(Duration::from_millis(200), events.recv()).await;
        }
    })
    .await
    .expect("the panicked guest did not reach error");
    let reason = st.reason.unwrap();
    assert!(reason.contains("kernel panic"), "{reason}");
    assert!(st.pid.is_none());
    // Force stop gets it out of error; it boots again.
    assert_eq!(vmm.force_stop(&id).await.unwrap().state, VmState::Stopped);
    vmm.delete(&id).await.unwrap();
}

/// On this machine KVM opens but nested guests die with an emulation failure; on a real host
/// the guest boots. Either way the VM never hangs: it runs, or it is in error with the reason.
#[tokio::test(flavor = "multi_thread")]
async fn kvm_either_boots_or_fails_with_a_reason() {
    let _slot = GUESTS.acquire().await.unwrap();
    if std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_err()
    {
        let dir = tempfile::tempdir().unwrap();
        let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
        let vmm = vmm(dir.path(), Accel::Kvm);
        let id = VmId::new("vm-kvm").unwrap();
        vmm.create(guest("vm-kvm")).await.unwrap();
        let err = vmm.boot(&id).await.unwrap_err();
        assert!(matches!(err, HypervisorError::KvmUnusable(_)), "{err}");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Kvm);
    let id = VmId::new("vm-kvm").unwrap();
    vmm.create(guest("vm-kvm")).await.unwrap();
    let booted = vmm.boot(&id).await;
    let outcome = tokio::time::timeout(BOOT, async {
        if booted.is_err() {
            return vmm.status(&id).await.unwrap();
        }
        let mut watch = ConsoleWatch::new(&vmm.console(&id).await.unwrap());
        loop {
            let st = vmm.status(&id).await.unwrap();
            if st.state == VmState::Error {
                return st;
            }
            if watch.text().contains(READY) {
                return st;
            }
            let _ = watch.collect_for(Duration::from_millis(200)).await;
        }
    })
    .await
    .expect("a KVM guest neither booted nor failed");
    match outcome.state {
        VmState::Error => assert!(!outcome.reason.unwrap().is_empty()),
        VmState::Running => {}
        other => panic!("unexpected state {other}"),
    }
    let _ = vmm.force_stop(&id).await;
    vmm.delete(&id).await.unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_names_the_cause() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Tcg);
    let mut unknown = guest("vm-bad1");
    unknown.rootfs = ImageName::new("nosuch.ext4").unwrap();
    let e = vmm.create(unknown).await.unwrap_err();
    assert_eq!(e.to_string(), "image nosuch.ext4 is not in the catalog");
    let mut zero = guest("vm-bad2");
    zero.resources.vcpu_count = 0;
    assert!(matches!(
        vmm.create(zero).await,
        Err(HypervisorError::Resources(_))
    ));
    let mut huge = guest("vm-bad3");
    huge.resources.mem_size_mib = 4 << 20;
    assert!(matches!(
        vmm.create(huge).await,
        Err(HypervisorError::InsufficientResources(_))
    ));
    // Wrong state.
    let id = VmId::new("vm-ok").unwrap();
    vmm.create(guest("vm-ok")).await.unwrap();
    assert!(matches!(
        vmm.create(guest("vm-ok")).await,
        Err(HypervisorError::AlreadyExists(_))
    ));
    for r in [
        vmm.pause(&id).await,
        vmm.reboot(&id).await,
        vmm.resume(&id).await,
    ] {
        let e = r.unwrap_err();
        assert!(matches!(e, HypervisorError::InvalidState(_)), "{e}");
        assert_eq!(e.class(), vmfleet_hypervisor::ErrorClass::Conflict);
    }
    // A missing hypervisor binary: a typed error, and the VM stays created.
    let missing = Vmm::new(
        Arc::new(QemuBackend::new(QemuConfig {
            binary: "/nonexistent/qemu-system-x86_64".into(),
            ..QemuConfig::default()
        })),
        guest_catalog(&dir.path().join("images2")),
        dir.path().join("vms2"),
    )
    .unwrap();
    missing.create(guest("vm-nobin")).await.unwrap();
    let nobin = VmId::new("vm-nobin").unwrap();
    let e = missing.boot(&nobin).await.unwrap_err();
    assert!(matches!(e, HypervisorError::BinaryMissing(_)), "{e}");
    assert_eq!(
        missing.status(&nobin).await.unwrap().state,
        VmState::Created
    );
    // Stopped-only operations.
    vmm.resize_vcpus(&id, 2).await.unwrap();
    assert_eq!(vmm.status(&id).await.unwrap().resources.vcpu_count, 2);
    assert!(matches!(
        vmm.resize_vcpus(&id, 0).await,
        Err(HypervisorError::Resources(_))
    ));
    vmm.add_disk(&id, 1, false).await.unwrap();
    vmm.delete(&id).await.unwrap();
}

/// `auto` boots a guest whatever the host: with KVM where KVM runs guests, with TCG where it
/// does not (here, a nested host: /dev/kvm opens, QEMU cannot run a guest with it).
#[tokio::test(flavor = "multi_thread")]
async fn auto_accel_boots_a_guest_on_any_host() {
    let _slot = GUESTS.acquire().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Auto);
    let id = VmId::new("vm-auto").unwrap();
    vmm.create(guest("vm-auto")).await.unwrap();
    let booted = vmm.boot(&id).await;
    let st = booted.unwrap_or_else(|e| panic!("auto did not boot: {e}"));
    assert_eq!(st.state, VmState::Running);
    let mut watch = ConsoleWatch::new(&vmm.console(&id).await.unwrap());
    watch.wait_for(READY, BOOT).await;
    vmm.force_stop(&id).await.unwrap();
    vmm.delete(&id).await.unwrap();
}

/// A graceful stop asked while the guest is still booting (before anything in it listens for
/// the power button) still ends in the guest's own shutdown: the press is repeated.
#[tokio::test(flavor = "multi_thread")]
async fn a_graceful_stop_during_boot_is_not_lost() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Tcg);
    let id = VmId::new("vm-early-stop").unwrap();
    vmm.create(guest("vm-early-stop")).await.unwrap();
    vmm.boot(&id).await.unwrap();
    // At once: the guest's kernel is still starting. Forced off, the stop would take the
    // whole timeout; the guest shutting itself down ends it long before.
    let timeout = Duration::from_secs(120);
    let t0 = std::time::Instant::now();
    let st = vmm.stop(&id, timeout).await.unwrap();
    assert_eq!(st.state, VmState::Stopped);
    assert!(
        t0.elapsed() < timeout / 2,
        "the guest never answered the power button ({:?})",
        t0.elapsed()
    );
}

/// A VM with a device or share of its node cannot be exported for a migration: those belong
/// to the node (its share root, its PCI devices). Once removed, the export goes ahead.
#[tokio::test(flavor = "multi_thread")]
async fn a_vm_with_node_devices_is_not_exported() {
    let _slot = GUESTS.acquire().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let vmm = vmm(dir.path(), Accel::Tcg);
    let id = VmId::new("vm-devices-stay").unwrap();
    vmm.create(guest("vm-devices-stay")).await.unwrap();
    let dev = vmm
        .add_device(&id, &vmfleet_core::Device::Rng {})
        .await
        .unwrap();
    // A VM that has run and stopped: what a migration may take.
    vmm.boot(&id).await.unwrap();
    vmm.force_stop(&id).await.unwrap();
    let snap = SnapshotId::new("migration-1").unwrap();
    let e = vmm.export_files(&id, &snap).await.unwrap_err();
    assert!(matches!(e, HypervisorError::DeviceRefused(_)), "{e}");
    assert!(e.to_string().contains("/vm/device/remove"), "{e}");
    vmm.remove_device(&id, &dev).await.unwrap();
    let manifest = vmm.export_files(&id, &snap).await.unwrap();
    assert!(!manifest.running);
    vmm.delete(&id).await.unwrap();
}
