//! Crash recovery: the process that owns the VMs is killed with SIGKILL; a new `Vmm` over the
//! same directory finds every VM again. A guest still running is re-adopted (same process,
//! console answering, operations working, no second boot); one that died meanwhile is in
//! `error`, saying so.

#![allow(clippy::unwrap_used)]

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::Duration;

use vmfleet_core::{VmId, VmState};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{Hypervisor, ImageCatalog, Vmm};
use vmfleet_tests::{ConsoleWatch, KillOnDrop, guest_catalog};

/// Boots `id` in a `vm-owner` process, kills that process, and returns QEMU's pid.
fn boot_and_kill_owner(catalog: &Path, vms: &Path, id: &str) -> u32 {
    let mut owner = Command::new(env!("CARGO_BIN_EXE_vm-owner"))
        .arg(catalog)
        .arg(vms)
        .arg(id)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let line = BufReader::new(owner.stdout.take().unwrap())
        .lines()
        .next()
        .unwrap()
        .unwrap();
    owner.kill().unwrap();
    owner.wait().unwrap();
    line.strip_prefix("booted ").unwrap().parse().unwrap()
}

fn vmm(catalog: &Path, vms: &Path) -> Vmm {
    Vmm::new(
        Arc::new(QemuBackend::new(QemuConfig {
            accel: Accel::Tcg,
            ..QemuConfig::default()
        })),
        ImageCatalog::open(catalog).unwrap(),
        vms,
    )
    .unwrap()
}

#[tokio::test(flavor = "multi_thread")]
async fn vms_are_found_again_after_the_owner_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let catalog = guest_catalog(&dir.path().join("images"));
    let vms = dir.path().join("vms");
    let alive_pid = boot_and_kill_owner(catalog.root(), &vms, "vm-survivor");
    let dead_pid = boot_and_kill_owner(catalog.root(), &vms, "vm-casualty");
    // The second guest dies too while nobody owns it.
    Command::new("kill")
        .args(["-9", &dead_pid.to_string()])
        .status()
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;

    let vmm = vmm(catalog.root(), &vms);
    let found = vmm.recover().await;
    assert_eq!(found.len(), 2, "{found:?}");
    let survivor = VmId::new("vm-survivor").unwrap();
    let casualty = VmId::new("vm-casualty").unwrap();

    let st = vmm.status(&survivor).await.unwrap();
    assert_eq!(st.state, VmState::Running);
    assert_eq!(st.pid, Some(alive_pid), "a second QEMU was started");
    let console = vmm.console(&survivor).await.unwrap();
    let mut watch = ConsoleWatch::new(&console);
    let answered = watch.shell_answers(&console, 60).await;
    assert!(
        answered,
        "the re-adopted guest's console never answered:\n{}",
        watch.text()
    );
    assert_eq!(vmm.pause(&survivor).await.unwrap().state, VmState::Paused);
    assert_eq!(vmm.resume(&survivor).await.unwrap().state, VmState::Running);

    let st = vmm.status(&casualty).await.unwrap();
    assert_eq!(st.state, VmState::Error);
    assert!(st.reason.unwrap().contains("while vmfleet was down"));
    // Force stop takes it out of error, and it boots again.
    vmm.force_stop(&casualty).await.unwrap();
    assert_eq!(vmm.start(&casualty).await.unwrap().state, VmState::Running);

    // And the state is on disk: a third look finds the same. (Both guests are stopped first:
    // this process still holds their consoles, and QEMU serves one client at a time.)
    vmm.force_stop(&survivor).await.unwrap();
    vmm.force_stop(&casualty).await.unwrap();
    drop(vmm);
    let again = self::vmm(catalog.root(), &vms);
    let found = again.recover().await;
    assert!(
        found.iter().all(|s| s.state == VmState::Stopped),
        "{found:?}"
    );
}
