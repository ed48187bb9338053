//! The driver-level interface: what a hypervisor backend (QEMU, Firecracker) must do to launch
//! one guest process and drive it. The generic [`crate::Vmm`] builds the full
//! [`crate::Hypervisor`] (state machine, instance table, graceful stop) on top of it, so a
//! backend only speaks its own protocol.

use std::path::{Path, PathBuf};

use async_trait::async_trait;
use tokio::sync::watch;
use vmfleet_core::{DeviceId, PciAddress, ShareTag, VmId, VmResources};

use crate::HypervisorError;
use crate::console::Console;

/// Which backend runs a VM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum BackendKind {
    Qemu,
    Firecracker,
}

impl BackendKind {
    pub fn as_str(self) -> &'static str {
        match self {
            BackendKind::Qemu => "qemu",
            BackendKind::Firecracker => "firecracker",
        }
    }
}

/// Everything a backend needs to launch a guest, paths already resolved and checked.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct VmSpec {
    pub id: VmId,
    pub resources: VmResources,
    /// Uncompressed kernel (ELF `vmlinux`, PVH entry for QEMU microvm).
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    /// The VM's own root disk (a private copy of the catalog image), read-write.
    pub root_disk: PathBuf,
    /// More disks, in order after the root disk.
    pub extra_disks: Vec<DiskSpec>,
    /// The kernel command line.
    pub boot_args: String,
    pub network: Option<NetAttachment>,
    /// Devices and shared directories added to the VM (`/vm/device/add`, `/vm/fs/add`), in
    /// the order they were added; cold-plugged at each launch.
    #[serde(default)]
    pub devices: Vec<AttachedDevice>,
}

/// A device of a VM, with the id its node gave it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AttachedDevice {
    pub id: DeviceId,
    pub device: DeviceSpec,
}

impl AttachedDevice {
    /// The device as the VM's owner is shown it (a share's tag, not its path on the node).
    pub fn view(&self) -> vmfleet_core::VmDevice {
        let kind = match &self.device {
            DeviceSpec::Rng => vmfleet_core::VmDeviceKind::Rng,
            DeviceSpec::PciPassthrough { address } => vmfleet_core::VmDeviceKind::PciPassthrough {
                address: address.clone(),
            },
            DeviceSpec::Share { tag, read_only, .. } => vmfleet_core::VmDeviceKind::Share {
                tag: tag.clone(),
                read_only: *read_only,
            },
        };
        vmfleet_core::VmDevice {
            id: self.id.clone(),
            kind,
        }
    }
}

/// A device as a backend attaches it: requests already checked against the node's offer,
/// paths resolved.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum DeviceSpec {
    /// A virtio entropy device.
    Rng,
    /// A host PCI device passed through with VFIO.
    PciPassthrough { address: PciAddress },
    /// A directory of the host shared with the guest, mounted there by its tag.
    Share {
        tag: ShareTag,
        /// The directory's real path (symlinks resolved), inside the node's share root.
        path: PathBuf,
        read_only: bool,
    },
}

impl DeviceSpec {
    /// What the device is, in words, for messages.
    pub fn describe(&self) -> String {
        match self {
            DeviceSpec::Rng => "an entropy device".into(),
            DeviceSpec::PciPassthrough { address } => format!("PCI device {address}"),
            DeviceSpec::Share { tag, .. } => format!("a shared directory tagged {tag}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DiskSpec {
    pub path: PathBuf,
    pub read_only: bool,
}

/// A TAP device the guest's NIC is attached to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetAttachment {
    pub tap: String,
    /// `52:54:00:xx:xx:xx`.
    pub mac: String,
}

/// Where a snapshot lives: the VM's memory and device state, and a copy of its disks.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotPaths {
    pub dir: PathBuf,
}

impl SnapshotPaths {
    pub fn state(&self) -> PathBuf {
        self.dir.join("vmstate")
    }

    pub fn memory(&self) -> PathBuf {
        self.dir.join("memory")
    }

    pub fn root_disk(&self) -> PathBuf {
        self.dir.join("root.disk")
    }
}

/// How to start the guest process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Launch {
    /// A cold boot of the kernel.
    Boot,
    /// Resume from a snapshot (the disks are already back in place).
    Restore(SnapshotPaths),
}

/// How a guest process ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum GuestExit {
    /// The guest powered off, or was stopped on request.
    Shutdown,
    /// The guest or its hypervisor failed; the reason says how.
    Crashed(String),
}

/// Counters read from the real source (process accounting, QMP, Firecracker metrics).
/// `None` where the backend has no such counter.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GuestMetrics {
    /// Percent of the VM's vCPUs since the previous reading, 0 to 100.
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    pub disk_read_ops: Option<u64>,
    pub disk_write_ops: Option<u64>,
    pub net_rx_bytes: Option<u64>,
    pub net_tx_bytes: Option<u64>,
    pub net_rx_packets: Option<u64>,
    pub net_tx_packets: Option<u64>,
}

/// A hypervisor backend: launches guest processes.
#[async_trait]
pub trait Backend: Send + Sync + 'static {
    fn kind(&self) -> BackendKind;

    /// Checks that this host can run the backend at all (binary present, accelerator usable),
    /// with an error that names what is missing.
    async fn preflight(&self) -> Result<(), HypervisorError>;

    /// Launches the hypervisor process for `spec`, its sockets and files under `dir` (which
    /// exists and belongs to this VM), and returns once the guest is running.
    async fn launch(
        &self,
        spec: &VmSpec,
        dir: &Path,
        how: Launch,
    ) -> Result<Box<dyn Guest>, HypervisorError>;

    /// Whether this backend can give a guest `device`: `Unsupported`, saying why, when it
    /// cannot. Asked before a device is added to a VM's spec.
    fn check_device(&self, device: &DeviceSpec) -> Result<(), HypervisorError> {
        let _ = device;
        Err(HypervisorError::Unsupported {
            backend: self.kind().as_str(),
            op: "attach devices",
        })
    }

    /// Re-attaches to a guest process that outlived the process that launched it.
    async fn adopt(&self, spec: &VmSpec, dir: &Path) -> Result<Box<dyn Guest>, HypervisorError> {
        let _ = (spec, dir);
        Err(HypervisorError::Unsupported {
            backend: self.kind().as_str(),
            op: "re-adopt a running guest",
        })
    }
}

/// One running guest process. Optional capabilities default to `Unsupported`.
#[async_trait]
pub trait Guest: Send + Sync {
    fn kind(&self) -> BackendKind;

    /// The hypervisor process's pid.
    fn pid(&self) -> u32;

    /// The serial console: many readers with scrollback, one serialised writer.
    fn console(&self) -> Console;

    /// Becomes `Some` when the process has ended, with how.
    fn exited(&self) -> watch::Receiver<Option<GuestExit>>;

    /// Presses the ACPI power button (or sends Ctrl-Alt-Del); the guest decides to shut down.
    async fn power_button(&self) -> Result<(), HypervisorError>;

    /// Ends the process at once and waits for it.
    async fn kill(&self) -> Result<(), HypervisorError>;

    async fn metrics(&self) -> Result<GuestMetrics, HypervisorError>;

    async fn pause(&self) -> Result<(), HypervisorError> {
        Err(self.unsupported("pause"))
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        Err(self.unsupported("resume"))
    }

    /// Resets the guest; the process, and so the console, stay.
    async fn reboot(&self) -> Result<(), HypervisorError> {
        Err(self.unsupported("reboot"))
    }

    /// Saves memory and device state into `dest` (the guest is paused by the caller).
    async fn snapshot(&self, dest: &SnapshotPaths) -> Result<(), HypervisorError> {
        let _ = dest;
        Err(self.unsupported("snapshot"))
    }

    /// Writes the guest's memory to `dest` as an ELF core file.
    async fn coredump(&self, dest: &std::path::Path) -> Result<(), HypervisorError> {
        let _ = dest;
        Err(self.unsupported("dump guest memory"))
    }

    /// Sets the memory the guest may use, in MiB (balloon or hotplug).
    async fn set_memory(&self, mib: u64) -> Result<(), HypervisorError> {
        let _ = mib;
        Err(self.unsupported("resize memory of a running guest"))
    }

    fn unsupported(&self, op: &'static str) -> HypervisorError {
        HypervisorError::Unsupported {
            backend: self.kind().as_str(),
            op,
        }
    }
}
