//! The operations vmfleet performs on VMs, whatever runs them.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::broadcast;
use vmfleet_core::{
    Device, DeviceId, ImageName, SharePath, ShareTag, SnapshotId, VmId, VmResources, VmState,
};
use vmfleet_wire::fleet::{FileChunk, MigrationManifest, Sha256, VmFile};

use crate::HypervisorError;
use crate::backend::{BackendKind, GuestMetrics};
use crate::console::Console;

/// A VM to define: its size and the catalog images it boots.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateVm {
    pub id: VmId,
    pub resources: VmResources,
    pub kernel: ImageName,
    /// When absent, the catalog's companion initrd of the kernel (`<kernel>.initrd`) is used
    /// if there is one.
    pub initrd: Option<ImageName>,
    pub rootfs: ImageName,
    /// The kernel command line; a serial console and the root disk by default.
    pub boot_args: Option<String>,
    /// Free-form metadata kept with the VM (who asked for it, for what), persisted with it.
    pub labels: BTreeMap<String, String>,
}

/// A VM as its hypervisor sees it.
#[derive(Debug, Clone, PartialEq)]
pub struct VmStatus {
    pub id: VmId,
    pub backend: BackendKind,
    pub state: VmState,
    /// Why the VM is in `error`.
    pub reason: Option<String>,
    pub resources: VmResources,
    pub pid: Option<u32>,
    pub last_state_change: SystemTime,
    /// When the running guest was booted (or restored).
    pub booted_at: Option<SystemTime>,
    /// The guest's address on its bridge; `None` without vmfleet networking.
    pub ip_address: Option<std::net::IpAddr>,
    pub labels: BTreeMap<String, String>,
    /// Devices and shares added to it, in the order they were added.
    pub devices: Vec<vmfleet_core::VmDevice>,
}

impl VmStatus {
    /// Seconds since the guest booted; 0 when no guest runs.
    pub fn uptime(&self) -> u64 {
        match (self.state.has_process(), self.booted_at) {
            (true, Some(t)) => t.elapsed().map_or(0, |d| d.as_secs()),
            _ => 0,
        }
    }
}

/// A snapshot a VM has on its node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SnapshotInfo {
    pub id: SnapshotId,
    /// When it was taken.
    pub taken_at: SystemTime,
    /// The disk space its files take (allocated blocks: sparse disk copies count what they
    /// hold).
    pub bytes: u64,
}

/// Every operation on a VM. Each checks the VM state machine first
/// ([`vmfleet_core::VmState::begin`]) and refuses the wrong state with
/// [`HypervisorError::InvalidState`]. Optional capabilities default to `Unsupported`.
#[async_trait]
pub trait Hypervisor: Send + Sync {
    fn backend(&self) -> BackendKind;

    /// Defines a VM: checks the request, reserves its files. Nothing runs yet.
    async fn create(&self, req: CreateVm) -> Result<VmStatus, HypervisorError>;
    /// First boot of a created VM.
    async fn boot(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    /// Boots a stopped VM again.
    async fn start(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    /// Graceful stop: the power button, then forced after `timeout`.
    async fn stop(&self, id: &VmId, timeout: Duration) -> Result<VmStatus, HypervisorError>;
    async fn force_stop(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    async fn pause(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    async fn resume(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    async fn reboot(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    /// Presses the power button and returns; the guest decides when to power off.
    async fn power_button(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    /// Stops the VM if it runs and removes it and its files.
    async fn delete(&self, id: &VmId) -> Result<(), HypervisorError>;
    async fn status(&self, id: &VmId) -> Result<VmStatus, HypervisorError>;
    async fn list(&self) -> Vec<VmStatus>;
    async fn console(&self, id: &VmId) -> Result<Console, HypervisorError>;
    async fn metrics(&self, id: &VmId) -> Result<GuestMetrics, HypervisorError>;
    /// Every state change of every VM, as it happens.
    fn subscribe(&self) -> broadcast::Receiver<VmStatus>;

    async fn snapshot(&self, id: &VmId, snap: SnapshotId) -> Result<SnapshotId, HypervisorError> {
        let _ = (id, snap);
        Err(self.unsupported("snapshot"))
    }

    async fn restore(&self, id: &VmId, snap: &SnapshotId) -> Result<VmStatus, HypervisorError> {
        let _ = (id, snap);
        Err(self.unsupported("restore"))
    }

    /// The VM's snapshots, oldest first.
    async fn snapshots(&self, id: &VmId) -> Result<Vec<SnapshotInfo>, HypervisorError> {
        let _ = id;
        Err(self.unsupported("list snapshots"))
    }

    /// Removes a snapshot and its files, whatever the VM's state.
    async fn delete_snapshot(&self, id: &VmId, snap: &SnapshotId) -> Result<(), HypervisorError> {
        let _ = (id, snap);
        Err(self.unsupported("delete a snapshot"))
    }

    async fn resize_vcpus(&self, id: &VmId, vcpus: u32) -> Result<VmStatus, HypervisorError> {
        let _ = (id, vcpus);
        Err(self.unsupported("resize vCPUs"))
    }

    async fn resize_memory(&self, id: &VmId, mib: u64) -> Result<VmStatus, HypervisorError> {
        let _ = (id, mib);
        Err(self.unsupported("resize memory"))
    }

    async fn add_disk(
        &self,
        id: &VmId,
        size_gb: u64,
        read_only: bool,
    ) -> Result<VmStatus, HypervisorError> {
        let _ = (id, size_gb, read_only);
        Err(self.unsupported("add a disk"))
    }

    /// Adds `device` to the stopped VM (cold-plug: the guest sees it from its next boot);
    /// returns the id it got.
    async fn add_device(&self, id: &VmId, device: &Device) -> Result<DeviceId, HypervisorError> {
        let _ = (id, device);
        Err(self.unsupported("add a device"))
    }

    /// Shares directory `path` of the node's share root with the stopped VM, tagged `tag`;
    /// returns the id of the share (a device of the VM).
    async fn add_share(
        &self,
        id: &VmId,
        tag: &ShareTag,
        path: &SharePath,
        read_only: bool,
    ) -> Result<DeviceId, HypervisorError> {
        let _ = (id, tag, path, read_only);
        Err(self.unsupported("share a directory"))
    }

    /// Removes device (or share) `device` from the stopped VM.
    async fn remove_device(
        &self,
        id: &VmId,
        device: &DeviceId,
    ) -> Result<VmStatus, HypervisorError> {
        let _ = (id, device);
        Err(self.unsupported("remove a device"))
    }

    /// Writes the running guest's memory to a core file on the node; returns its path.
    async fn coredump(&self, id: &VmId) -> Result<std::path::PathBuf, HypervisorError> {
        let _ = id;
        Err(self.unsupported("dump guest memory"))
    }

    /// Saves the stopped VM's root disk into the image catalog as `image`.
    async fn commit(&self, id: &VmId, image: &ImageName) -> Result<ImageName, HypervisorError> {
        let _ = (id, image);
        Err(self.unsupported("commit a disk to the catalog"))
    }

    /// Migration, source side: readies the VM to leave. A running guest is paused (it stays
    /// so) and its memory and devices saved as snapshot `snap`; a stopped VM only lists its
    /// disks. Answers with the files that move and their checksums.
    async fn export_files(
        &self,
        id: &VmId,
        snap: &SnapshotId,
    ) -> Result<MigrationManifest, HypervisorError> {
        let _ = (id, snap);
        Err(self.unsupported("migrate a VM"))
    }

    /// Up to `len` bytes of an exported file from `offset`, holes and zeros skipped.
    async fn read_export(
        &self,
        id: &VmId,
        file: VmFile,
        offset: u64,
        len: u64,
    ) -> Result<FileChunk, HypervisorError> {
        let _ = (id, file, offset, len);
        Err(self.unsupported("migrate a VM"))
    }

    /// Undoes [`Hypervisor::export_files`]: the snapshot removed, the guest resumed if it
    /// ran before.
    async fn abort_export(
        &self,
        id: &VmId,
        snap: &SnapshotId,
    ) -> Result<VmStatus, HypervisorError> {
        let _ = (id, snap);
        Err(self.unsupported("migrate a VM"))
    }

    /// Migration, target side: prepares to receive VM `req.id` (its images from `req`, its
    /// size from the manifest) as empty sparse files.
    async fn import_files(
        &self,
        req: CreateVm,
        manifest: MigrationManifest,
    ) -> Result<(), HypervisorError> {
        let _ = (req, manifest);
        Err(self.unsupported("migrate a VM"))
    }

    /// Writes a chunk of a file being imported, checked against `sha256` and the manifest.
    async fn write_import(
        &self,
        id: &VmId,
        file: VmFile,
        offset: u64,
        data: &[u8],
        sha256: &Sha256,
    ) -> Result<(), HypervisorError> {
        let _ = (id, file, offset, data, sha256);
        Err(self.unsupported("migrate a VM"))
    }

    /// Checks every imported file against the manifest, defines the VM here and restores
    /// it from its snapshot (running) or leaves it stopped.
    async fn commit_import(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        let _ = id;
        Err(self.unsupported("migrate a VM"))
    }

    /// Removes what an import received; nothing to remove is not an error.
    async fn abort_import(&self, id: &VmId) -> Result<(), HypervisorError> {
        let _ = id;
        Err(self.unsupported("migrate a VM"))
    }

    fn unsupported(&self, op: &'static str) -> HypervisorError {
        HypervisorError::Unsupported {
            backend: self.backend().as_str(),
            op,
        }
    }
}
