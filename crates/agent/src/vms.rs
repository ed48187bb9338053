//! The VM side of the agent's `/fleet` connection: `vm_command`s run on the node's
//! hypervisor, once per request id.
//!
//! The control plane may send a command again when its acknowledgement was lost (a dropped
//! connection, a timeout). The service remembers the last [`REMEMBERED`] request ids with
//! their answers: a repeat gets the first answer (waiting for it while the first still runs)
//! and never boots, stops or deletes a second time. A request id reused for a different
//! command is refused.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use vmfleet_core::{RequestId, VmId, VmResources};
use vmfleet_hypervisor::{
    CreateVm, ErrorClass, Hypervisor, HypervisorError, SnapshotInfo, VmStatus,
};
use vmfleet_wire::api::SnapshotView;
use vmfleet_wire::fleet::{
    CreateVmSpec, VmCommand, VmCommandReply, VmErrorCode, VmMetrics, VmOperation, VmReport,
};

/// How many answered request ids the service remembers.
pub const REMEMBERED: usize = 4096;

/// The longest graceful stop a command may ask for before the VM is forced off.
const MAX_STOP_TIMEOUT: Duration = Duration::from_secs(600);

type Answer = Arc<OnceCell<VmCommandReply>>;

/// Runs `vm_command`s on one hypervisor.
pub struct VmService {
    vmm: Arc<dyn Hypervisor>,
    recent: Mutex<Recent>,
}

#[derive(Default)]
struct Recent {
    answers: HashMap<RequestId, (VmCommand, Answer)>,
    order: VecDeque<RequestId>,
}

impl VmService {
    pub fn new(vmm: Arc<dyn Hypervisor>) -> Self {
        VmService {
            vmm,
            recent: Mutex::new(Recent::default()),
        }
    }

    pub fn hypervisor(&self) -> &Arc<dyn Hypervisor> {
        &self.vmm
    }

    /// Runs `cmd` unless its request id ran already, and answers. `admit` is awaited before a
    /// `create` or an `import_begin` runs (and only then): the node's own checks, draining and capacity; its error
    /// is the refusal.
    pub async fn run<F>(&self, cmd: VmCommand, admit: F) -> VmCommandReply
    where
        F: Future<Output = Result<(), (VmErrorCode, String)>>,
    {
        if cmd.op.is_transfer() {
            // Idempotent, and too big to remember: run every time.
            return self.execute(&cmd).await;
        }
        let answer = {
            let mut recent = self.recent.lock().unwrap_or_else(|p| p.into_inner());
            match recent.answers.get(&cmd.request_id) {
                Some((first, _)) if *first != cmd => {
                    return VmCommandReply::refused(
                        VmErrorCode::BadRequest,
                        format!(
                            "request id {} was already used for another command",
                            cmd.request_id
                        ),
                    );
                }
                Some((_, answer)) => answer.clone(),
                None => {
                    let answer = Answer::default();
                    recent
                        .answers
                        .insert(cmd.request_id.clone(), (cmd.clone(), answer.clone()));
                    recent.order.push_back(cmd.request_id.clone());
                    while recent.order.len() > REMEMBERED {
                        if let Some(old) = recent.order.pop_front() {
                            recent.answers.remove(&old);
                        }
                    }
                    answer
                }
            }
        };
        answer
            .get_or_init(|| async {
                if matches!(
                    cmd.op,
                    VmOperation::Create(_) | VmOperation::ImportBegin { .. }
                ) && let Err((code, why)) = admit.await
                {
                    return VmCommandReply::refused(code, why);
                }
                self.execute(&cmd).await
            })
            .await
            .clone()
    }

    async fn execute(&self, cmd: &VmCommand) -> VmCommandReply {
        let id = &cmd.vm_id;
        let vmm = &self.vmm;
        let status = match &cmd.op {
            VmOperation::Create(spec) => self.create(cmd, spec).await,
            VmOperation::Boot => vmm.boot(id).await,
            VmOperation::Start => vmm.start(id).await,
            VmOperation::Stop { force: true, .. } => vmm.force_stop(id).await,
            VmOperation::Stop {
                timeout_seconds, ..
            } => {
                let timeout = Duration::from_secs(u64::from(*timeout_seconds));
                vmm.stop(id, timeout.min(MAX_STOP_TIMEOUT)).await
            }
            VmOperation::Reboot => vmm.reboot(id).await,
            VmOperation::PowerButton => vmm.power_button(id).await,
            VmOperation::Pause => vmm.pause(id).await,
            VmOperation::Resume => vmm.resume(id).await,
            VmOperation::Snapshot { snapshot_id } => {
                match vmm.snapshot(id, snapshot_id.clone()).await {
                    Ok(_) => vmm.status(id).await,
                    Err(e) => Err(e),
                }
            }
            VmOperation::Restore { snapshot_id } => vmm.restore(id, snapshot_id).await,
            VmOperation::ListSnapshots => {
                return match vmm.snapshots(id).await {
                    Ok(found) => VmCommandReply {
                        snapshots: Some(found.iter().map(snapshot_view).collect()),
                        ..VmCommandReply::done(None)
                    },
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::DeleteSnapshot { snapshot_id } => {
                match vmm.delete_snapshot(id, snapshot_id).await {
                    Ok(()) => vmm.status(id).await,
                    Err(e) => Err(e),
                }
            }
            VmOperation::ResizeVcpu { vcpu_count } => vmm.resize_vcpus(id, *vcpu_count).await,
            VmOperation::ResizeMemory { mem_size_mib } => {
                vmm.resize_memory(id, *mem_size_mib).await
            }
            VmOperation::AddDisk { size_gb, read_only } => {
                vmm.add_disk(id, *size_gb, *read_only).await
            }
            VmOperation::AddDevice { device } => {
                let added = vmm.add_device(id, device).await;
                return self.with_artifact(id, added.map(|d| d.to_string())).await;
            }
            VmOperation::AddFs {
                tag,
                path,
                read_only,
            } => {
                let added = vmm.add_share(id, tag, path, *read_only).await;
                return self.with_artifact(id, added.map(|d| d.to_string())).await;
            }
            VmOperation::RemoveDevice { id: device } => vmm.remove_device(id, device).await,
            VmOperation::Delete => {
                return match vmm.delete(id).await {
                    Ok(()) => VmCommandReply::done(None),
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::Status => vmm.status(id).await,
            VmOperation::Coredump => {
                return match vmm.coredump(id).await {
                    Ok(path) => VmCommandReply {
                        artifact: Some(path.display().to_string()),
                        ..VmCommandReply::done(vmm.status(id).await.ok().map(|s| report(&s)))
                    },
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::Commit { image } => {
                return match vmm.commit(id, image).await {
                    Ok(name) => VmCommandReply {
                        artifact: Some(name.to_string()),
                        ..VmCommandReply::done(vmm.status(id).await.ok().map(|s| report(&s)))
                    },
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::ExportBegin { snapshot_id } => {
                return match vmm.export_files(id, snapshot_id).await {
                    Ok(manifest) => VmCommandReply {
                        manifest: Some(manifest),
                        ..VmCommandReply::done(vmm.status(id).await.ok().map(|s| report(&s)))
                    },
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::ReadChunk { file, offset, len } => {
                return match vmm.read_export(id, *file, *offset, *len).await {
                    Ok(chunk) => VmCommandReply {
                        chunk: Some(chunk),
                        ..VmCommandReply::done(None)
                    },
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::ExportAbort { snapshot_id } => vmm.abort_export(id, snapshot_id).await,
            VmOperation::ImportBegin { spec, manifest } => {
                let req = create_vm(cmd, spec);
                return match vmm.import_files(req, manifest.clone()).await {
                    Ok(()) => VmCommandReply::done(None),
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::WriteChunk {
                file,
                offset,
                data,
                sha256,
            } => {
                return match vmm.write_import(id, *file, *offset, &data.0, sha256).await {
                    Ok(()) => VmCommandReply::done(None),
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::ImportCommit => vmm.commit_import(id).await,
            VmOperation::ImportAbort => {
                return match vmm.abort_import(id).await {
                    Ok(()) => VmCommandReply::done(None),
                    Err(e) => refusal(&e),
                };
            }
            VmOperation::Metrics => {
                return match (vmm.metrics(id).await, vmm.status(id).await) {
                    (Ok(m), Ok(st)) => VmCommandReply {
                        metrics: Some(VmMetrics {
                            cpu_percent: m.cpu_percent,
                            memory_used_bytes: m.memory_used_bytes,
                            memory_total_bytes: m.memory_total_bytes,
                            disk_read_bytes: m.disk_read_bytes,
                            disk_write_bytes: m.disk_write_bytes,
                            net_rx_bytes: m.net_rx_bytes,
                            net_tx_bytes: m.net_tx_bytes,
                            net_rx_packets: m.net_rx_packets,
                            net_tx_packets: m.net_tx_packets,
                            disk_read_ops: m.disk_read_ops,
                            disk_write_ops: m.disk_write_ops,
                        }),
                        ..VmCommandReply::done(Some(report(&st)))
                    },
                    (Err(e), _) | (_, Err(e)) => refusal(&e),
                };
            }
        };
        match status {
            Ok(st) => VmCommandReply::done(Some(report(&st))),
            Err(e) => refusal(&e),
        }
    }

    /// The reply to an operation that made something (`artifact`: a device id, ...), with
    /// the VM as it is now.
    async fn with_artifact(
        &self,
        id: &VmId,
        made: Result<String, HypervisorError>,
    ) -> VmCommandReply {
        match made {
            Ok(artifact) => VmCommandReply {
                artifact: Some(artifact),
                ..VmCommandReply::done(self.vmm.status(id).await.ok().map(|s| report(&s)))
            },
            Err(e) => refusal(&e),
        }
    }

    async fn create(
        &self,
        cmd: &VmCommand,
        spec: &CreateVmSpec,
    ) -> Result<VmStatus, HypervisorError> {
        let created = self.vmm.create(create_vm(cmd, spec)).await?;
        if !spec.boot {
            return Ok(created);
        }
        match self.vmm.boot(&cmd.vm_id).await {
            Ok(st) => Ok(st),
            Err(e) => {
                // A VM that cannot boot is not left behind half-made.
                let _ = self.vmm.delete(&cmd.vm_id).await;
                Err(e)
            }
        }
    }
}

/// The hypervisor's request for the VM a command's spec describes.
fn create_vm(cmd: &VmCommand, spec: &CreateVmSpec) -> CreateVm {
    CreateVm {
        id: cmd.vm_id.clone(),
        resources: VmResources {
            vcpu_count: spec.vcpu_count,
            mem_size_mib: spec.mem_size_mib,
            disk_size: spec.disk_size_gib,
        },
        kernel: spec.kernel.clone(),
        initrd: spec.initrd.clone(),
        rootfs: spec.rootfs.clone(),
        boot_args: spec.boot_args.clone(),
        labels: spec.labels.clone(),
    }
}

/// A snapshot as the REST API shows it.
fn snapshot_view(s: &SnapshotInfo) -> SnapshotView {
    let created_at = s
        .taken_at
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| i64::try_from(d.as_secs()).unwrap_or(i64::MAX));
    SnapshotView {
        snapshot_id: s.id.clone(),
        created_at,
        size_bytes: s.bytes,
    }
}

/// A VM's state as the control plane hears it.
pub fn report(st: &VmStatus) -> VmReport {
    VmReport {
        vm_id: st.id.clone(),
        state: st.state,
        reason: st.reason.clone(),
        backend: st.backend.as_str().to_owned(),
        vcpu_count: st.resources.vcpu_count,
        mem_size_mib: st.resources.mem_size_mib,
        disk_size_gib: st.resources.disk_size,
        ip_address: st.ip_address,
        uptime_seconds: st.uptime(),
        labels: st.labels.clone(),
        devices: st.devices.clone(),
    }
}

/// The answer for a hypervisor error: its message and the code the control plane maps to an
/// HTTP status.
pub fn refusal(e: &HypervisorError) -> VmCommandReply {
    let code = match (e, e.class()) {
        (HypervisorError::InsufficientResources(_), _) => VmErrorCode::InsufficientCapacity,
        (_, ErrorClass::BadRequest) => VmErrorCode::BadRequest,
        (_, ErrorClass::NotFound) => VmErrorCode::NotFound,
        (_, ErrorClass::Conflict) => VmErrorCode::Conflict,
        (_, ErrorClass::Unsupported) => VmErrorCode::Unsupported,
        (_, ErrorClass::Internal) => VmErrorCode::Internal,
    };
    VmCommandReply::refused(code, e.to_string())
}

/// What VMs defined on the node take of it: vCPUs and MiB of memory of every VM that is not
/// stopped for good (a created or stopped VM keeps its claim: it may boot again).
pub fn committed(vms: &[VmStatus]) -> (f64, u64) {
    vms.iter()
        .filter(|v| v.state != vmfleet_core::VmState::Deleted)
        .fold((0.0, 0), |(cpu, mem), v| {
            (
                cpu + f64::from(v.resources.vcpu_count),
                mem + v.resources.mem_size_mib,
            )
        })
}

/// Labels are free-form but bounded, so a command cannot make the instance table huge.
pub fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), (VmErrorCode, String)> {
    let too_big = labels.len() > 32 || labels.iter().any(|(k, v)| k.len() > 128 || v.len() > 1024);
    if too_big {
        return Err((
            VmErrorCode::BadRequest,
            "labels are at most 32, with keys up to 128 and values up to 1024 bytes".to_owned(),
        ));
    }
    Ok(())
}
