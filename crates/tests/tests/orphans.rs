//! Killing the process that owns a VM, mid-boot: the guest's QEMU is not left as an orphan
//! nobody can reach. It runs on in its own process group (so an agent restart does not take
//! the guests down) and is re-adopted: its console answers and it can be stopped.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vmfleet_core::{VmId, VmResources};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{Backend, GuestExit, VmSpec};
use vmfleet_tests::{ConsoleWatch, guest_catalog};

fn alive(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .is_ok_and(|s| !s.split(") ").nth(1).unwrap_or("").starts_with('Z'))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_outlives_its_killed_owner_and_is_readopted() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let catalog = guest_catalog(&dir.path().join("images"));
    let vms = dir.path().join("vms");
    let mut owner = Command::new(env!("CARGO_BIN_EXE_vm-owner"))
        .arg(catalog.root())
        .arg(&vms)
        .arg("vm-orphan")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(owner.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    let qemu_pid: u32 = line.strip_prefix("booted ").unwrap().parse().unwrap();
    // Mid-boot: QEMU runs, the guest kernel has not reached userspace yet.
    owner.kill().unwrap();
    owner.wait().unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(alive(qemu_pid), "the guest died with its owner");

    let vm_dir = vms.join("vm-orphan");
    let spec = VmSpec {
        id: VmId::new("vm-orphan").unwrap(),
        resources: VmResources {
            vcpu_count: 1,
            mem_size_mib: 256,
            disk_size: 1,
        },
        kernel: catalog.root().join("vmlinux.bin"),
        initrd: Some(catalog.root().join("vmlinux.bin.initrd")),
        root_disk: vm_dir.join("root.disk"),
        extra_disks: vec![],
        boot_args: vmfleet_hypervisor::DEFAULT_BOOT_ARGS.into(),
        network: None,
        devices: Vec::new(),
    };
    let backend = Arc::new(QemuBackend::new(QemuConfig {
        accel: Accel::Tcg,
        ..QemuConfig::default()
    }));
    let guest = backend.adopt(&spec, &vm_dir).await.unwrap();
    assert_eq!(guest.pid(), qemu_pid);
    let console = guest.console();
    let mut watch = ConsoleWatch::new(&console);
    // The boot finishes (or finished while nobody listened); the shell answers us.
    let answered = watch.shell_answers(&console, 60).await;
    assert!(
        answered,
        "the adopted guest's console never answered:\n{}",
        watch.text()
    );
    let m = guest.metrics().await.unwrap();
    assert!(m.disk_read_bytes > 0);

    // And it can be stopped: no stray process remains.
    guest.kill().await.unwrap();
    let mut exited = guest.exited();
    let exit = exited.wait_for(Option::is_some).await.unwrap().clone();
    assert!(matches!(
        exit,
        Some(GuestExit::Shutdown | GuestExit::Crashed(_))
    ));
    assert!(!alive(qemu_pid), "QEMU {qemu_pid} still runs");
}
