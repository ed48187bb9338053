//! Seed 002's VM endpoints, working through the scheduler, the `/fleet` namespace and the
//! node's agent: `/vm/create`, `/vm/boot`, `/vm/start`, `/vm/stop` (with `force`),
//! `/vm/reboot`, `/vm/power-button`, `/vm/delete`, `/vm/info`, `/vm/list`, `/vm/snapshot`,
//! `/vm/restore`, `/vm/commit`, `/vm/coredump`, `/vm/resize/vcpu`, `/vm/resize/memory`,
//! `/vm/disk/add`, `/vm/device/add`, `/vm/device/remove`, `/vm/fs/add` (cold-plug: the VM
//! stopped); `/vm/migrate/*` live in [`crate::migrate`]. What a VM's driver cannot do
//! answers 501 saying so, never a silent success.
//!
//! Ownership: the `owner` of a request must be the caller's wallet (403 otherwise) unless the
//! caller is admin; another owner's VM is a 404, as if it did not exist; `/vm/list` shows the
//! caller's VMs only.
//!
//! Operations on one VM are serialised: a second one while one is in flight is 409, and the
//! VM state machine refuses operations its state forbids (409). Slow operations (boot, start,
//! stop, reboot) answer when they finish or after [`ANSWER_WITHIN`], whichever comes first;
//! past that they go on, their state is the VM's (`booting`, `stopping`), and their end shows
//! in `/vm/info` and on the WebSocket status stream. An operation the node never finishes
//! leaves the VM in `error` with the reason; `force` stops a VM from any state.

use std::collections::{BTreeMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::json;
use vmfleet_auth::{Permission, Role, Subject, VerifiedToken};
use vmfleet_core::{
    NodeId, RequestId, SnapshotId, VmId, VmOp, VmResources, VmState, WalletAddress,
};
use vmfleet_store::{AuditTarget, NewVm, Resources, Store, VmRecord, WorkloadKind};
use vmfleet_wire::Success;
use vmfleet_wire::api::{
    ActionResponse, AddDeviceRequest, AddDeviceResponse, AddDiskRequest, AddFsRequest,
    CommitRequest, CommitResponse, CoredumpResponse, CreateVmRequest, CreateVmResponse,
    DeleteSnapshotRequest, ListVmsRequest, RemoveDeviceRequest, ResizeMemoryRequest,
    ResizeVcpuRequest, RestoreRequest, SnapshotRequest, SnapshotResponse, SnapshotView,
    StopVmRequest, VmInfo, VmRef,
};
use vmfleet_wire::fleet::{CreateVmSpec, VmCommand, VmCommandReply, VmErrorCode, VmOperation};

use crate::AppState;
use crate::caller::Caller;
use crate::caller::{actor, is_admin, need};
use crate::containers::scheduler;
use crate::error::ApiError;
use crate::extract::Body;
use crate::fleet::{Fleet, FleetError};
use crate::nodes::store;

/// How long a slow operation holds its request before answering "in progress".
pub const ANSWER_WITHIN: Duration = Duration::from_secs(20);

/// How long a node has to finish an operation before the VM is put in `error`.
const NODE_TIMEOUT: Duration = Duration::from_secs(180);

/// A graceful stop's wait for the guest before it is forced off.
const STOP_GRACE_SECS: u32 = 30;

/// The VMs with an operation in flight. Cheap to clone.
#[derive(Debug, Clone, Default)]
pub struct InFlight(Arc<Mutex<HashSet<VmId>>>);

/// An operation's hold on its VM; dropping it lets the next one in.
pub struct Hold {
    set: InFlight,
    vm: VmId,
}

impl Drop for Hold {
    fn drop(&mut self) {
        self.set.lock().remove(&self.vm);
    }
}

impl InFlight {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashSet<VmId>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    pub(crate) fn hold(&self, vm: &VmId) -> Result<Hold, ApiError> {
        if self.lock().insert(vm.clone()) {
            Ok(Hold {
                set: self.clone(),
                vm: vm.clone(),
            })
        } else {
            Err(ApiError::Conflict(format!(
                "another operation on VM {vm} is in flight"
            )))
        }
    }
}

/// The caller may act for `owner` with `perm`: its own wallet, or any as admin.
pub(crate) fn authorize(
    token: &VerifiedToken,
    owner: &WalletAddress,
    perm: Permission,
) -> Result<(), ApiError> {
    need(token, perm)?;
    match &token.subject {
        _ if is_admin(token) => Ok(()),
        Subject::Wallet(me) if me == owner => Ok(()),
        _ => Err(ApiError::Forbidden(
            "owner must be the signed-in wallet".into(),
        )),
    }
}

/// VM `id` of `owner`; anyone else's (or a container, or a deleted VM) is not found.
pub(crate) async fn owned(
    store: &Store,
    id: &VmId,
    owner: &WalletAddress,
) -> Result<VmRecord, ApiError> {
    let missing = || ApiError::NotFound(format!("VM {id} was not found"));
    let vm = match store.get_vm(id).await {
        Ok(vm) => vm,
        Err(vmfleet_store::StoreError::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    if vm.owner != *owner || vm.kind != WorkloadKind::Vm || vm.state == VmState::Deleted {
        return Err(missing());
    }
    Ok(vm)
}

pub(crate) fn fleet(state: &AppState) -> Result<&Fleet, ApiError> {
    state
        .fleet
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this control plane has no /fleet namespace".into()))
}

async fn audit(
    store: &Store,
    token: &VerifiedToken,
    action: &str,
    vm: &VmId,
    detail: serde_json::Value,
) {
    if let Err(e) = store
        .append_audit(&actor(token), action, &AuditTarget::Vm(vm.clone()), &detail)
        .await
    {
        tracing::error!(%vm, error = %e, "cannot append to the audit log");
    }
}

pub(crate) fn info(vm: &VmRecord) -> VmInfo {
    VmInfo {
        build_id: vm.id.clone(),
        name: vm.name.clone(),
        owner: vm.owner,
        state: vm.state,
        resources: VmResources {
            vcpu_count: vm.resources.vcpus,
            mem_size_mib: vm.resources.memory_mib,
            disk_size: vm.resources.disk_gib,
        },
        ip_address: vm.ip,
        created_at: vm.created_at.unix_seconds(),
        updated_at: vm.updated_at.unix_seconds(),
        node: vm.node.clone(),
        message: vm.state_reason.clone(),
        devices: vm.devices.clone(),
    }
}

/// A node's refusal as the REST API says it.
pub(crate) fn refusal(reply: &VmCommandReply) -> ApiError {
    let message = reply
        .message
        .clone()
        .unwrap_or_else(|| "the node refused the operation".into());
    match reply.code {
        Some(VmErrorCode::BadRequest) => ApiError::BadRequest(message),
        Some(VmErrorCode::NotFound) => ApiError::NotFound(message),
        Some(VmErrorCode::Conflict | VmErrorCode::InsufficientCapacity | VmErrorCode::Draining) => {
            ApiError::Conflict(message)
        }
        Some(VmErrorCode::Unsupported | VmErrorCode::NoHypervisor) => {
            ApiError::Unsupported(message)
        }
        Some(VmErrorCode::Internal) | None => ApiError::Internal(message.into()),
    }
}

fn fleet_error(e: FleetError) -> ApiError {
    match e {
        FleetError::NotConnected(_) => ApiError::Conflict(format!(
            "{e}: the VM's node is offline, try again when it is back"
        )),
        other => ApiError::Unavailable(other.to_string()),
    }
}

/// `POST /vm/create`: records the VM for its owner. It takes room on a node when it boots.
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<CreateVmRequest>,
) -> Result<Json<CreateVmResponse>, ApiError> {
    authorize(&token, &req.owner, Permission::Control)?;
    let store = store(&state)?;
    let resources = req.vm_config.resources();
    resources
        .validate()
        .map_err(|e| ApiError::BadRequest(e.to_string()))?;
    if let Some(args) = &req.vm_config.boot_args
        && (args.len() > 1024 || args.chars().any(char::is_control))
    {
        return Err(ApiError::BadRequest(
            "boot_args is at most 1024 printable characters".into(),
        ));
    }
    let wanted = Resources {
        vcpus: resources.vcpu_count,
        memory_mib: resources.mem_size_mib,
        disk_gib: resources.disk_size,
        gpus: 0,
    };
    if !scheduler(&state)?.has_room(&wanted).await? {
        return Err(ApiError::Conflict(format!(
            "Error creating VM: insufficient resources (no ONLINE node has {} vCPUs, {} MiB and {} GiB free)",
            wanted.vcpus, wanted.memory_mib, wanted.disk_gib
        )));
    }
    store.upsert_user(&req.owner, Role::Standard).await?;
    let id = VmId::generate();
    let spec = CreateVmSpec {
        vcpu_count: resources.vcpu_count,
        mem_size_mib: resources.mem_size_mib,
        disk_size_gib: resources.disk_size,
        kernel: req.vm_config.kernel.clone(),
        initrd: None,
        rootfs: req.vm_config.rootfs.clone(),
        boot_args: req.vm_config.boot_args.clone(),
        labels: BTreeMap::from([
            ("vmfleet.owner".to_owned(), req.owner.to_string()),
            ("vmfleet.name".to_owned(), req.name.to_string()),
        ]),
        boot: true,
    };
    let spec = serde_json::to_value(&spec).map_err(|e| ApiError::Internal(Box::new(e)))?;
    store
        .insert_vm(&NewVm {
            id: id.clone(),
            kind: WorkloadKind::Vm,
            owner: req.owner,
            name: req.name.clone(),
            spec,
            resources: wanted,
        })
        .await?;
    audit(
        store,
        &token,
        "vm.create",
        &id,
        json!({ "name": req.name.as_str() }),
    )
    .await;
    Ok(Json(CreateVmResponse {
        success: Success,
        vm_id: id,
        message: "VM created successfully".into(),
    }))
}

/// Waits for `task` up to [`ANSWER_WITHIN`]: `Some` with its outcome, or `None` while it
/// goes on.
async fn answer_soon<T: Send + 'static>(
    task: tokio::task::JoinHandle<Result<T, ApiError>>,
) -> Option<Result<T, ApiError>> {
    match tokio::time::timeout(ANSWER_WITHIN, task).await {
        Ok(Ok(outcome)) => Some(outcome),
        Ok(Err(e)) => Some(Err(ApiError::Internal(Box::new(e)))),
        Err(_) => None,
    }
}

/// `POST /vm/boot`: places a created VM on a node with room, which defines and boots it.
pub(crate) async fn boot(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<ActionResponse>, ApiError> {
    authorize(&token, &req.owner, Permission::Control)?;
    let store = store(&state)?.clone();
    let vm = owned(&store, &req.build_id, &req.owner).await?;
    let hold = state.vm_ops.hold(&vm.id)?;
    if vm.node.is_some() {
        return Err(ApiError::Conflict(format!(
            "VM {} is already on a node (state {}): use /vm/start",
            vm.id, vm.state
        )));
    }
    vm.state
        .begin(VmOp::Boot)
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let scheduler = scheduler(&state)?.clone();
    audit(&store, &token, "vm.boot", &vm.id, json!({})).await;
    let id = vm.id.clone();
    let task = tokio::spawn(async move {
        let _hold = hold;
        scheduler.place(&id).await.map_err(ApiError::from)
    });
    Ok(Json(match answer_soon(task).await {
        Some(Ok(placed)) => ActionResponse::new(format!(
            "VM booted: {} on node {}",
            placed.state,
            placed.node.map(|n| n.to_string()).unwrap_or_default()
        )),
        Some(Err(e)) => return Err(e),
        None => ActionResponse::new("VM boot initiated"),
    }))
}

/// Runs `op` on the VM's node in the background and answers as [`ANSWER_WITHIN`] allows.
/// The VM shows `during` meanwhile; a refusal puts back its state, silence puts it in
/// `error`.
async fn drive(
    state: &AppState,
    token: &VerifiedToken,
    req_vm: &VmId,
    owner: &WalletAddress,
    op: VmOp,
    operation: VmOperation,
    done: &'static str,
) -> Result<Json<ActionResponse>, ApiError> {
    authorize(token, owner, Permission::Control)?;
    let vm = owned(store(state)?, req_vm, owner).await?;
    let (during, task) = match begin_operation(state, token, &vm, op, operation).await? {
        Begun::Running { during, task } => (during, task),
        Begun::Done(message) => return Ok(Json(ActionResponse::new(message))),
    };
    Ok(Json(match answer_soon(task).await {
        Some(Ok(_)) => ActionResponse::new(done),
        Some(Err(e)) => return Err(e),
        None => ActionResponse::new(format!(
            "{} in progress (state {during}): its end shows in /vm/info",
            op_name(op)
        )),
    }))
}

/// An operation on its way.
pub(crate) enum Begun {
    /// Sent to the node; the VM shows `during` until the task ends.
    Running {
        during: VmState,
        task: tokio::task::JoinHandle<Result<VmCommandReply, ApiError>>,
    },
    /// Finished without the node (a forced stop while the node is unreachable).
    Done(String),
}

/// Starts `op` on `vm` (whose owner the caller was checked to act for): one operation per VM
/// at a time (a forced stop excepted), the state machine asked first, the VM's `during` state
/// recorded, the command sent to its node in a task.
pub(crate) async fn begin_operation(
    state: &AppState,
    token: &VerifiedToken,
    vm: &VmRecord,
    op: VmOp,
    operation: VmOperation,
) -> Result<Begun, ApiError> {
    let store = store(state)?.clone();
    let forced = matches!(operation, VmOperation::Stop { force: true, .. });
    // A forced stop gets the VM out of whatever holds it; anything else waits its turn.
    let hold = if forced {
        None
    } else {
        Some(state.vm_ops.hold(&vm.id)?)
    };
    let transition = vm
        .state
        .begin(op)
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    let Some(node) = vm.node.clone() else {
        return Err(ApiError::Conflict(format!(
            "VM {} was never booted: use /vm/boot",
            vm.id
        )));
    };
    let fleet = fleet(state)?.clone();
    audit(
        &store,
        token,
        op_name(op),
        &vm.id,
        json!({ "node": node.as_str() }),
    )
    .await;
    if forced && !fleet.is_connected(&node) {
        let Json(answer) = forced_off_unreachable(&store, vm, &node).await?;
        return Ok(Begun::Done(answer.message));
    }
    store
        .update_vm_state(&vm.id, transition.during, None, None)
        .await?;
    let before = vm.state;
    let id = vm.id.clone();
    let task = tokio::spawn(async move {
        let _hold = hold;
        run_on_node(&store, &fleet, &node, &id, before, operation).await
    });
    Ok(Begun::Running {
        during: transition.during,
        task,
    })
}

fn op_name(op: VmOp) -> &'static str {
    match op {
        VmOp::Boot => "vm.boot",
        VmOp::Start => "vm.start",
        VmOp::Stop => "vm.stop",
        VmOp::ForceStop => "vm.force_stop",
        VmOp::Reboot => "vm.reboot",
        VmOp::PowerButton => "vm.power_button",
        VmOp::Pause => "vm.pause",
        VmOp::Resume => "vm.resume",
        VmOp::Snapshot => "vm.snapshot",
        VmOp::Restore => "vm.restore",
        VmOp::Resize => "vm.resize",
        VmOp::AddDisk => "vm.add_disk",
        VmOp::ChangeDevices => "vm.change_devices",
        VmOp::Delete => "vm.delete",
        VmOp::Migrate => "vm.migrate",
    }
}

/// Sends `operation` to the VM's node and records the outcome: the node's report of the VM
/// on success, its state before on a refusal, `error` when the node does not answer.
async fn run_on_node(
    store: &Store,
    fleet: &Fleet,
    node: &NodeId,
    id: &VmId,
    before: VmState,
    operation: VmOperation,
) -> Result<VmCommandReply, ApiError> {
    let cmd = VmCommand {
        request_id: RequestId::generate(),
        vm_id: id.clone(),
        op: operation,
    };
    match fleet.vm_command(node, cmd, NODE_TIMEOUT).await {
        Ok(reply) if reply.success => {
            // Through the registry, so the VM's rental follows its state whichever of this
            // answer and the node's own report comes first.
            if let Some(r) = &reply.vm
                && let Err(e) = fleet.record_vm_state(node, r).await
            {
                tracing::warn!(vm = %id, error = %e, "cannot record the node's answer");
            }
            Ok(reply)
        }
        Ok(reply) => {
            let _ = store.update_vm_state(id, before, None, None).await;
            Err(refusal(&reply))
        }
        Err(e @ FleetError::NotConnected(_)) => {
            // Never sent: nothing happened on the node, so nothing happens to the VM (a state
            // the operation set on its way goes back; an `unknown` VM stays unknown).
            if store.get_vm(id).await.is_ok_and(|vm| vm.state != before) {
                let _ = store.update_vm_state(id, before, None, None).await;
            }
            Err(fleet_error(e))
        }
        Err(e) => {
            let reason = format!("the operation did not finish: {e}");
            let _ = store
                .update_vm_state(id, VmState::Error, Some(&reason), None)
                .await;
            Err(fleet_error(e))
        }
    }
}

/// A forced stop of a VM whose node is out of reach: the VM is recorded stopped (billing
/// ends when the node was lost) and its node, when it returns, reports what really runs.
async fn forced_off_unreachable(
    store: &Store,
    vm: &VmRecord,
    node: &NodeId,
) -> Result<Json<ActionResponse>, ApiError> {
    let reason = format!("forced off while node {node} was unreachable");
    store.end_open_rental(vm).await?;
    store
        .update_vm_state(&vm.id, VmState::Stopped, Some(&reason), None)
        .await?;
    Ok(Json(ActionResponse::new(format!("VM stopped: {reason}"))))
}

/// `POST /vm/start`: boots a stopped VM again on its node.
pub(crate) async fn start(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<ActionResponse>, ApiError> {
    drive(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        VmOp::Start,
        VmOperation::Start,
        "VM started successfully",
    )
    .await
}

/// `POST /vm/stop`: graceful (the power button, then forced after 30 s), or at once with
/// `force`, from any state.
pub(crate) async fn stop(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<StopVmRequest>,
) -> Result<Json<ActionResponse>, ApiError> {
    let (op, operation) = if req.force {
        (
            VmOp::ForceStop,
            VmOperation::Stop {
                force: true,
                timeout_seconds: 0,
            },
        )
    } else {
        (
            VmOp::Stop,
            VmOperation::Stop {
                force: false,
                timeout_seconds: STOP_GRACE_SECS,
            },
        )
    };
    drive(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        op,
        operation,
        "VM stopped successfully",
    )
    .await
}

/// `POST /vm/reboot`.
pub(crate) async fn reboot(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<ActionResponse>, ApiError> {
    drive(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        VmOp::Reboot,
        VmOperation::Reboot,
        "VM rebooted successfully",
    )
    .await
}

/// `POST /vm/power-button`: the ACPI power button; the guest decides what to do.
pub(crate) async fn power_button(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<ActionResponse>, ApiError> {
    drive(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        VmOp::PowerButton,
        VmOperation::PowerButton,
        "power button pressed",
    )
    .await
}

/// `POST /vm/delete`: stops the VM if it runs, deletes it on its node and here; its usage
/// stays.
pub(crate) async fn delete(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<ActionResponse>, ApiError> {
    authorize(&token, &req.owner, Permission::Control)?;
    let store = store(&state)?;
    let vm = owned(store, &req.build_id, &req.owner).await?;
    let _hold = state.vm_ops.hold(&vm.id)?;
    scheduler(&state)?.remove(&vm.id).await?;
    audit(store, &token, "vm.delete", &vm.id, json!({})).await;
    Ok(Json(ActionResponse::new("VM deleted successfully")))
}

/// `POST /vm/info`.
pub(crate) async fn info_of(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<VmInfo>, ApiError> {
    authorize(&token, &req.owner, Permission::Read)?;
    let vm = owned(store(&state)?, &req.build_id, &req.owner).await?;
    Ok(Json(info(&vm)))
}

/// `POST /vm/list`: the caller's VMs; an admin sees every owner's, or one owner's.
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<ListVmsRequest>,
) -> Result<Json<Vec<VmInfo>>, ApiError> {
    need(&token, Permission::Read)?;
    let owner = match (&token.subject, req.owner) {
        (_, owner) if is_admin(&token) => owner,
        (Subject::Wallet(me), None) => Some(*me),
        (Subject::Wallet(me), Some(o)) if o == *me => Some(o),
        _ => {
            return Err(ApiError::Forbidden(
                "only an admin may list another owner's VMs".into(),
            ));
        }
    };
    let vms = store(&state)?.list_vms(owner.as_ref()).await?;
    Ok(Json(
        vms.iter()
            .filter(|v| v.kind == WorkloadKind::Vm)
            .map(info)
            .collect(),
    ))
}

/// Runs an operation that answers with the node's report and waits for it.
async fn on_node(
    state: &AppState,
    token: &VerifiedToken,
    id: &VmId,
    owner: &WalletAddress,
    action: &str,
    operation: VmOperation,
) -> Result<VmCommandReply, ApiError> {
    authorize(token, owner, Permission::Control)?;
    let store = store(state)?;
    let vm = owned(store, id, owner).await?;
    let _hold = state.vm_ops.hold(&vm.id)?;
    let Some(node) = vm.node.clone() else {
        return Err(ApiError::Conflict(format!(
            "VM {} was never booted: use /vm/boot",
            vm.id
        )));
    };
    audit(
        store,
        token,
        action,
        &vm.id,
        json!({ "node": node.as_str() }),
    )
    .await;
    run_on_node(store, fleet(state)?, &node, &vm.id, vm.state, operation).await
}

/// `POST /vm/snapshot`: the VM's memory and devices saved on its node.
pub(crate) async fn snapshot(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<SnapshotRequest>,
) -> Result<Json<SnapshotResponse>, ApiError> {
    let snapshot_id = match req.snapshot_id {
        Some(s) => s,
        None => SnapshotId::new(format!("snap-{}", &vmfleet_core::uuid_v4()[..8]))
            .map_err(|e| ApiError::Internal(Box::new(e)))?,
    };
    let op = VmOperation::Snapshot {
        snapshot_id: snapshot_id.clone(),
    };
    on_node(&state, &token, &req.build_id, &req.owner, "vm.snapshot", op).await?;
    Ok(Json(SnapshotResponse {
        success: Success,
        snapshot_id,
        message: "snapshot taken".into(),
    }))
}

/// `POST /vm/snapshot/list`: the VM's snapshots, as its node has them, oldest first (none
/// for a VM that never ran on a node).
pub(crate) async fn list_snapshots(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<Vec<SnapshotView>>, ApiError> {
    authorize(&token, &req.owner, Permission::Read)?;
    let vm = owned(store(&state)?, &req.build_id, &req.owner).await?;
    let Some(node) = vm.node.as_ref() else {
        return Ok(Json(Vec::new()));
    };
    let cmd = VmCommand {
        request_id: RequestId::generate(),
        vm_id: vm.id.clone(),
        op: VmOperation::ListSnapshots,
    };
    match fleet(&state)?.vm_command(node, cmd, NODE_TIMEOUT).await {
        Ok(reply) if reply.success => Ok(Json(reply.snapshots.unwrap_or_default())),
        Ok(reply) => Err(refusal(&reply)),
        Err(e) => Err(fleet_error(e)),
    }
}

/// `POST /vm/snapshot/delete`: a snapshot of the VM and its files removed from its node, in
/// any state of the VM (404 for a snapshot it does not have).
pub(crate) async fn delete_snapshot(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<DeleteSnapshotRequest>,
) -> Result<Json<ActionResponse>, ApiError> {
    let message = format!("snapshot {} deleted", req.snapshot_id);
    let op = VmOperation::DeleteSnapshot {
        snapshot_id: req.snapshot_id,
    };
    on_node(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        "vm.delete_snapshot",
        op,
    )
    .await?;
    Ok(Json(ActionResponse::new(message)))
}

/// `POST /vm/restore`: the VM brought back to a snapshot of its own.
pub(crate) async fn restore(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<RestoreRequest>,
) -> Result<Json<ActionResponse>, ApiError> {
    let op = VmOperation::Restore {
        snapshot_id: req.snapshot_id,
    };
    on_node(&state, &token, &req.build_id, &req.owner, "vm.restore", op).await?;
    Ok(Json(ActionResponse::new("VM restored from the snapshot")))
}

/// `POST /vm/commit`: the stopped VM's root disk becomes image `image_name` of its node's
/// catalog (409 when the VM runs or the name is taken).
pub(crate) async fn commit(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<CommitRequest>,
) -> Result<Json<CommitResponse>, ApiError> {
    let op = VmOperation::Commit {
        image: req.image_name.clone(),
    };
    on_node(&state, &token, &req.build_id, &req.owner, "vm.commit", op).await?;
    Ok(Json(CommitResponse {
        success: Success,
        message: format!("the VM's disk is image {} of its node", req.image_name),
        image_name: req.image_name,
    }))
}

/// `POST /vm/coredump`: the running guest's memory written to a core file on its node.
pub(crate) async fn coredump(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<VmRef>,
) -> Result<Json<CoredumpResponse>, ApiError> {
    let reply = on_node(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        "vm.coredump",
        VmOperation::Coredump,
    )
    .await?;
    let path = reply.artifact.unwrap_or_default();
    Ok(Json(CoredumpResponse {
        success: Success,
        message: format!("guest memory written to {path} on the VM's node"),
        path,
    }))
}

/// `POST /vm/resize/vcpu`.
pub(crate) async fn resize_vcpu(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<ResizeVcpuRequest>,
) -> Result<Json<ActionResponse>, ApiError> {
    let op = VmOperation::ResizeVcpu {
        vcpu_count: req.vcpu_count,
    };
    on_node(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        "vm.resize_vcpu",
        op,
    )
    .await?;
    Ok(Json(ActionResponse::new("VM resized")))
}

/// `POST /vm/resize/memory`.
pub(crate) async fn resize_memory(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<ResizeMemoryRequest>,
) -> Result<Json<ActionResponse>, ApiError> {
    let op = VmOperation::ResizeMemory {
        mem_size_mib: req.mem_size_mib,
    };
    on_node(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        "vm.resize_memory",
        op,
    )
    .await?;
    Ok(Json(ActionResponse::new("VM resized")))
}

/// `POST /vm/disk/add`: a new empty disk for a stopped VM (409 while it runs: no driver
/// hot-plugs one); the guest sees it from its next boot.
pub(crate) async fn add_disk(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<AddDiskRequest>,
) -> Result<Json<ActionResponse>, ApiError> {
    let op = VmOperation::AddDisk {
        size_gb: req.size_gb,
        read_only: req.read_only,
    };
    on_node(&state, &token, &req.build_id, &req.owner, "vm.add_disk", op).await?;
    Ok(Json(ActionResponse::new(
        "disk added: the guest sees it from its next boot",
    )))
}

/// `POST /vm/device/add`: a device for a stopped VM, cold-plugged (409 while it runs: no
/// driver hot-plugs one; 409 for a PCI device its node does not offer; 501 for what its
/// driver has no such device for). The answer names the device's id.
pub(crate) async fn add_device(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<AddDeviceRequest>,
) -> Result<Json<AddDeviceResponse>, ApiError> {
    let what = req.device.describe();
    let op = VmOperation::AddDevice { device: req.device };
    let reply = on_node(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        "vm.add_device",
        op,
    )
    .await?;
    added(
        reply,
        format!("{what} added: the guest sees it from its next boot"),
    )
}

/// `POST /vm/fs/add`: a directory under the node's share root shared with a stopped VM over
/// virtio-9p, mounted in the guest by its tag (409 while it runs, or when the node offers no
/// shares; 400 for a path that leaves the root or is no directory; 501 on Firecracker).
pub(crate) async fn add_fs(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<AddFsRequest>,
) -> Result<Json<AddDeviceResponse>, ApiError> {
    let message = format!(
        "directory shared: the guest mounts it from its next boot with \
         mount -t 9p -o trans=virtio {} DIR",
        req.tag
    );
    let op = VmOperation::AddFs {
        tag: req.tag,
        path: req.path,
        read_only: req.read_only,
    };
    let reply = on_node(&state, &token, &req.build_id, &req.owner, "vm.add_fs", op).await?;
    added(reply, message)
}

/// The answer to an added device: the id its node gave it.
fn added(reply: VmCommandReply, message: String) -> Result<Json<AddDeviceResponse>, ApiError> {
    let id = reply
        .artifact
        .as_deref()
        .map(vmfleet_core::DeviceId::new)
        .transpose()
        .map_err(|e| ApiError::Internal(Box::new(e)))?
        .ok_or_else(|| ApiError::Internal("the node did not name the new device".into()))?;
    Ok(Json(AddDeviceResponse {
        success: Success,
        id,
        message,
    }))
}

/// `POST /vm/device/remove`: a device or share taken off a stopped VM (404 for an id the VM
/// does not have, 409 while it runs).
pub(crate) async fn remove_device(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<RemoveDeviceRequest>,
) -> Result<Json<ActionResponse>, ApiError> {
    let message = format!(
        "device {} removed: the guest is without it from its next boot",
        req.id
    );
    let op = VmOperation::RemoveDevice { id: req.id };
    on_node(
        &state,
        &token,
        &req.build_id,
        &req.owner,
        "vm.remove_device",
        op,
    )
    .await?;
    Ok(Json(ActionResponse::new(message)))
}
