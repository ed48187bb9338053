//! vmfleet's additions to seed 001 for VMs: the REST API's VM operations as `/fleet`
//! commands, the agent's VM state reports, and serial consoles streamed over the same
//! outbound connection.
//!
//! | event | direction | payload | acked with |
//! |---|---|---|---|
//! | `vm_command` | control plane -> agent | [`VmCommand`] | [`VmCommandReply`] |
//! | `console_attach` | control plane -> agent | [`ConsoleRef`] | [`super::fleet::Ack`] |
//! | `console_detach` | control plane -> agent | [`ConsoleRef`] | [`super::fleet::Ack`] |
//! | `console_input` | control plane -> agent | [`ConsoleData`] | [`super::fleet::Ack`] |
//! | `vm_state` | agent -> control plane | [`VmReport`] | [`super::fleet::Ack`] |
//! | `console_output` | agent -> control plane | [`ConsoleData`] | none needed |
//!
//! A `vm_command` carries a request id: the agent runs each id once and answers a repeat
//! with the first answer, so a command resent after a lost acknowledgement never boots, stops
//! or deletes twice.

use std::collections::BTreeMap;
use std::net::IpAddr;

use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use vmfleet_core::{
    Device, DeviceId, ImageName, RequestId, SharePath, ShareTag, SnapshotId, VmDevice, VmId,
    VmState,
};

use crate::api::SnapshotView;
use crate::migration::{FileChunk, MigrationManifest, Sha256, VmFile};

/// `vm_command`: run one operation on a VM of this node.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmCommand {
    pub request_id: RequestId,
    pub vm_id: VmId,
    pub op: VmOperation,
}

/// The VM operations of the REST API (seed 002) an agent runs. Unit operations are spelled as
/// a string (`"op": "boot"`), the others as an object with one key
/// (`"op": {"stop": {"force": true}}`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", rename_all_fields = "camelCase")]
pub enum VmOperation {
    /// Defines the VM; with `boot`, boots it too.
    Create(CreateVmSpec),
    Boot,
    Start,
    /// Graceful (the power button, then forced after `timeoutSeconds`), or at once with
    /// `force`.
    Stop {
        #[serde(default)]
        force: bool,
        #[serde(default = "default_stop_timeout")]
        timeout_seconds: u32,
    },
    Reboot,
    /// The ACPI power button; the guest decides what to do.
    PowerButton,
    Pause,
    Resume,
    Snapshot {
        snapshot_id: SnapshotId,
    },
    Restore {
        snapshot_id: SnapshotId,
    },
    /// Answers with the VM's snapshots (`snapshots` of the reply), oldest first.
    ListSnapshots,
    /// Removes snapshot `snapshot_id` and its files.
    DeleteSnapshot {
        snapshot_id: SnapshotId,
    },
    ResizeVcpu {
        vcpu_count: u32,
    },
    ResizeMemory {
        mem_size_mib: u64,
    },
    /// Adds an empty disk of `size_gb` GiB to the stopped VM; the guest sees it from its next
    /// boot.
    AddDisk {
        size_gb: u64,
        #[serde(default)]
        read_only: bool,
    },
    /// Adds a device to the stopped VM (cold-plug); `artifact` of the reply: its id.
    AddDevice {
        device: Device,
    },
    /// Shares directory `path` of the node's share root with the stopped VM as `tag`;
    /// `artifact` of the reply: the share's device id.
    AddFs {
        tag: ShareTag,
        path: SharePath,
        #[serde(default)]
        read_only: bool,
    },
    /// Removes a device or share from the stopped VM.
    RemoveDevice {
        id: DeviceId,
    },
    /// Stops the VM if it runs and removes it and its files.
    Delete,
    /// Writes the running guest's memory to a core file on the node (`artifact`: its path).
    Coredump,
    /// Saves the stopped VM's root disk into the node's image catalog as `image`.
    Commit {
        image: ImageName,
    },
    /// Answers with the VM's state.
    Status,
    /// Answers with the VM's resource usage.
    Metrics,
    /// Migration, source side: a running VM is paused and its memory and devices saved as
    /// snapshot `snapshot_id` (it stays paused); answers with the [`MigrationManifest`] of
    /// the files that move with it.
    ExportBegin {
        snapshot_id: SnapshotId,
    },
    /// Migration, source side: up to `len` bytes (at most [`crate::fleet::MAX_CHUNK_BYTES`])
    /// of an exported file from `offset` on, holes skipped; answers with a [`FileChunk`].
    ReadChunk {
        file: VmFile,
        offset: u64,
        len: u64,
    },
    /// Migration, source side, on a failure: the export's snapshot removed and the VM
    /// resumed if it ran before.
    ExportAbort {
        snapshot_id: SnapshotId,
    },
    /// Migration, target side: prepares to receive the VM `spec` describes (its images; its
    /// size and disks come from `manifest`), with empty sparse files of the manifest's sizes.
    ImportBegin {
        spec: CreateVmSpec,
        manifest: MigrationManifest,
    },
    /// Migration, target side: bytes of a file being received; `sha256` is checked first.
    WriteChunk {
        file: VmFile,
        offset: u64,
        data: Base64,
        sha256: Sha256,
    },
    /// Migration, target side: every file checked against the manifest, then the VM defined
    /// here and restored from its snapshot (running) or left stopped.
    ImportCommit,
    /// Migration, target side: what an import received so far removed.
    ImportAbort,
}

impl VmOperation {
    /// Whether the operation carries or answers file bytes: such commands are not remembered
    /// by request id (they are idempotent, and their answers too big to keep).
    pub fn is_transfer(&self) -> bool {
        matches!(
            self,
            VmOperation::ReadChunk { .. } | VmOperation::WriteChunk { .. }
        )
    }
}

fn default_stop_timeout() -> u32 {
    30
}

impl VmOperation {
    /// The operation's name, as on the wire.
    pub fn name(&self) -> &'static str {
        match self {
            VmOperation::Create(_) => "create",
            VmOperation::Boot => "boot",
            VmOperation::Start => "start",
            VmOperation::Stop { .. } => "stop",
            VmOperation::Reboot => "reboot",
            VmOperation::PowerButton => "power_button",
            VmOperation::Pause => "pause",
            VmOperation::Resume => "resume",
            VmOperation::Snapshot { .. } => "snapshot",
            VmOperation::Restore { .. } => "restore",
            VmOperation::ListSnapshots => "list_snapshots",
            VmOperation::DeleteSnapshot { .. } => "delete_snapshot",
            VmOperation::ResizeVcpu { .. } => "resize_vcpu",
            VmOperation::ResizeMemory { .. } => "resize_memory",
            VmOperation::AddDisk { .. } => "add_disk",
            VmOperation::AddDevice { .. } => "add_device",
            VmOperation::AddFs { .. } => "add_fs",
            VmOperation::RemoveDevice { .. } => "remove_device",
            VmOperation::Delete => "delete",
            VmOperation::Coredump => "coredump",
            VmOperation::Commit { .. } => "commit",
            VmOperation::Status => "status",
            VmOperation::Metrics => "metrics",
            VmOperation::ExportBegin { .. } => "export_begin",
            VmOperation::ReadChunk { .. } => "read_chunk",
            VmOperation::ExportAbort { .. } => "export_abort",
            VmOperation::ImportBegin { .. } => "import_begin",
            VmOperation::WriteChunk { .. } => "write_chunk",
            VmOperation::ImportCommit => "import_commit",
            VmOperation::ImportAbort => "import_abort",
        }
    }
}

/// What a VM is made of, for `create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateVmSpec {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    /// Root disk size in GiB.
    pub disk_size_gib: u64,
    pub kernel: ImageName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub initrd: Option<ImageName>,
    pub rootfs: ImageName,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    /// Metadata kept with the VM on the node (who it is for).
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Boot it once it is defined.
    #[serde(default)]
    pub boot: bool,
}

/// The acknowledgement of a `vm_command`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmCommandReply {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<VmErrorCode>,
    /// The VM after the operation (absent after `delete`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub vm: Option<VmReport>,
    /// For `metrics`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub metrics: Option<VmMetrics>,
    /// What the operation made: a core file's path on the node, a committed image's name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub artifact: Option<String>,
    /// For `export_begin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub manifest: Option<MigrationManifest>,
    /// For `read_chunk`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunk: Option<FileChunk>,
    /// For `list_snapshots`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshots: Option<Vec<SnapshotView>>,
}

impl VmCommandReply {
    pub fn done(vm: Option<VmReport>) -> Self {
        VmCommandReply {
            success: true,
            message: None,
            code: None,
            vm,
            metrics: None,
            artifact: None,
            manifest: None,
            chunk: None,
            snapshots: None,
        }
    }

    pub fn refused(code: VmErrorCode, message: impl Into<String>) -> Self {
        VmCommandReply {
            success: false,
            message: Some(message.into()),
            code: Some(code),
            vm: None,
            metrics: None,
            artifact: None,
            manifest: None,
            chunk: None,
            snapshots: None,
        }
    }
}

/// Why a `vm_command` failed, for the control plane to turn into an HTTP status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum VmErrorCode {
    /// The command is malformed or asks for something impossible (400).
    BadRequest,
    /// No such VM on this node (404).
    NotFound,
    /// The VM's state forbids the operation, or another one is in flight (409).
    Conflict,
    /// The node's hypervisor cannot do this operation (501).
    Unsupported,
    /// The node has no room for it (409).
    InsufficientCapacity,
    /// The node is draining and takes no new VMs (409).
    Draining,
    /// The node has no hypervisor for VMs (501).
    NoHypervisor,
    /// The host or the hypervisor failed (500).
    Internal,
}

/// A VM as its node sees it: the answer to commands, and `vm_state` whenever it changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmReport {
    pub vm_id: VmId,
    pub state: VmState,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// `qemu`, `firecracker`, ...
    pub backend: String,
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    pub disk_size_gib: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_address: Option<IpAddr>,
    pub uptime_seconds: u64,
    #[serde(default)]
    pub labels: BTreeMap<String, String>,
    /// Devices and shares added to it (`/vm/device/add`, `/vm/fs/add`), in order.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<VmDevice>,
}

/// A VM's resource usage, read from its hypervisor.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct VmMetrics {
    /// Percent of the VM's vCPUs since the previous reading, 0 to 100.
    pub cpu_percent: f64,
    pub memory_used_bytes: u64,
    pub memory_total_bytes: u64,
    pub disk_read_bytes: u64,
    pub disk_write_bytes: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_bytes: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_rx_packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub net_tx_packets: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_read_ops: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_write_ops: Option<u64>,
}

/// `console_attach` / `console_detach`: start or stop streaming a VM's serial console.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleRef {
    pub vm_id: VmId,
}

/// `console_output` (agent -> control plane) and `console_input` (the other way): bytes of a
/// VM's serial console, base64 on the wire (a console is a byte stream, not always UTF-8).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConsoleData {
    pub vm_id: VmId,
    pub data: Base64,
}

/// Bytes carried as a base64 string.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Base64(pub Vec<u8>);

impl Serialize for Base64 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&STANDARD.encode(&self.0))
    }
}

impl<'de> Deserialize<'de> for Base64 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        STANDARD
            .decode(s.as_bytes())
            .map(Base64)
            .map_err(|e| serde::de::Error::custom(format!("not base64: {e}")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn operations_on_the_wire() {
        let boot: VmCommand =
            serde_json::from_value(json!({"requestId": "r1", "vmId": "vm-1", "op": "boot"}))
                .unwrap();
        assert_eq!(boot.op, VmOperation::Boot);
        let stop: VmCommand = serde_json::from_value(
            json!({"requestId": "r2", "vmId": "vm-1", "op": {"stop": {"force": true}}}),
        )
        .unwrap();
        assert_eq!(
            stop.op,
            VmOperation::Stop {
                force: true,
                timeout_seconds: 30
            }
        );
        assert_eq!(
            serde_json::to_value(&stop).unwrap()["op"],
            json!({"stop": {"force": true, "timeoutSeconds": 30}})
        );
        let resize = json!({"requestId": "r3", "vmId": "vm-1",
            "op": {"resize_memory": {"memSizeMib": 512}}});
        let r: VmCommand = serde_json::from_value(resize.clone()).unwrap();
        assert_eq!(serde_json::to_value(&r).unwrap(), resize);
        for op in [
            json!({"add_device": {"device": {"kind": "rng"}}}),
            json!({"add_device": {"device": {"kind": "pci-passthrough", "address": "0000:01:00.0"}}}),
            json!({"add_fs": {"tag": "data", "path": "a/b", "readOnly": true}}),
            json!({"remove_device": {"id": "dev0"}}),
        ] {
            let cmd = json!({"requestId": "r4", "vmId": "vm-1", "op": op});
            let c: VmCommand = serde_json::from_value(cmd.clone()).unwrap();
            assert_eq!(serde_json::to_value(&c).unwrap(), cmd);
        }
        for bad in [
            json!({"requestId": "r", "vmId": "vm-1", "op": {"add_fs": {"tag": "d", "path": "../x"}}}),
            json!({"requestId": "r", "vmId": "vm-1", "op": {"add_fs": {"tag": "d d", "path": "x"}}}),
            json!({"requestId": "r", "vmId": "vm-1", "op": {"add_device": {"device": {"kind": "usb"}}}}),
            json!({"requestId": "r", "vmId": "vm-1", "op": "explode"}),
            json!({"requestId": "r", "vmId": "../x", "op": "boot"}),
            json!({"requestId": "r", "vmId": "vm-1", "op": "boot", "extra": 1}),
            json!({"requestId": "r", "vmId": "vm-1", "op": {"resize_vcpu": {"vcpus": 2}}}),
        ] {
            assert!(
                serde_json::from_value::<VmCommand>(bad.clone()).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn console_bytes_round_trip() {
        let d = ConsoleData {
            vm_id: VmId::new("vm-1").unwrap(),
            data: Base64(vec![0xff, b'\n', 0, b'a']),
        };
        let v = serde_json::to_value(&d).unwrap();
        assert_eq!(v["data"], "/woAYQ==");
        assert_eq!(serde_json::from_value::<ConsoleData>(v).unwrap(), d);
        assert!(
            serde_json::from_value::<ConsoleData>(json!({"vmId": "vm-1", "data": "%%"})).is_err()
        );
    }
}
