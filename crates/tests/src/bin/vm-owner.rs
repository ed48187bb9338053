//! A process that owns one VM, for the tests that kill a VM's owner: it boots the test guest
//! under QEMU/TCG through a `Vmm`, prints `booted <qemu pid>` as soon as the boot call returns
//! (the guest is still booting), and then waits to be killed.
//!
//! Usage: vm-owner <image-catalog-dir> <vms-dir> <vm-id>

use std::sync::Arc;

use vmfleet_core::{ImageName, VmId, VmResources};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{CreateVm, Hypervisor, ImageCatalog, Vmm};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let [_, catalog, vms, id] = args.as_slice() else {
        return Err("usage: vm-owner <image-catalog-dir> <vms-dir> <vm-id>".into());
    };
    let backend = QemuBackend::new(QemuConfig {
        accel: Accel::Tcg,
        ..QemuConfig::default()
    });
    let vmm = Vmm::new(Arc::new(backend), ImageCatalog::open(catalog)?, vms)?;
    let id = VmId::new(id.as_str())?;
    vmm.create(CreateVm {
        id: id.clone(),
        resources: VmResources {
            vcpu_count: 1,
            mem_size_mib: 256,
            disk_size: 1,
        },
        kernel: ImageName::new("vmlinux.bin")?,
        initrd: None,
        rootfs: ImageName::new("rootfs.ext4")?,
        boot_args: None,
        labels: Default::default(),
    })
    .await?;
    let st = vmm.boot(&id).await?;
    println!("booted {}", st.pid.unwrap_or(0));
    std::future::pending::<()>().await;
    Ok(())
}
