//! The scheduler: places each VM or container on an `ONLINE` node with room for it, has the
//! node's agent start it, and waits for the agent to confirm.
//!
//! [`Scheduler::place`]: the candidates are the `ONLINE` nodes (read fresh from the store)
//! whose free room (capacity minus what their live workloads take) fits the workload, in the
//! [`Policy`]'s order. For each, [`Store::reserve`] places it atomically (it never overbooks a
//! node, however many placements run at once; `false` means the room went meanwhile: next
//! node), a new rental id is recorded on the workload, the node is told through a
//! [`Dispatch`], and the scheduler waits for the agent's `instance_started` for that rental
//! (delivered by the registry through [`Confirmations`]) up to the confirm timeout. A refusal
//! or silence undoes the placement (audited) and the next node is tried, up to the attempt
//! limit; when every node failed the workload is left in state `error` with a reason naming
//! what was tried. A retry uses a new rental id, so a late answer from an abandoned node is
//! refused rather than mistaken for the retry's.
//!
//! `MAINTENANCE` and `OFFLINE` nodes are never candidates, and [`Store::reserve`] refuses them
//! too (a node drained between the listing and the reservation).

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use serde_json::json;
use tokio::sync::oneshot;
use vmfleet_core::{NodeId, RentalId, RequestId, Timestamp, VmId, VmState};
use vmfleet_store::{
    Actor, AuditTarget, NodeStatus, Resources, Store, StoreError, VmRecord, WorkloadKind,
};
use vmfleet_wire::containers::ContainerSpec;
use vmfleet_wire::fleet::{
    BackendCommand, CreateVmSpec, ResourceLimits, StartInstance, StopInstance, StopReason,
    VmCommand, VmCommandReply, VmErrorCode, VmOperation,
};

use crate::fleet::{Fleet, FleetError};

/// In which order the nodes that have room are tried.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum Policy {
    /// Most free room first: load spreads over the fleet.
    #[default]
    Spread,
    /// Least free room that fits first: nodes fill up one by one, whole nodes stay free.
    Pack,
}

impl std::str::FromStr for Policy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "spread" => Ok(Policy::Spread),
            "pack" => Ok(Policy::Pack),
            _ => Err(format!(
                "unknown placement policy {s:?}: use spread or pack"
            )),
        }
    }
}

/// How the scheduler places.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SchedulerConfig {
    pub policy: Policy,
    /// How long a node has to confirm (`instance_started`) a workload it was told to start.
    pub confirm_timeout: Duration,
    /// How many nodes one placement tries at most (reservations that found no room left are
    /// not counted).
    pub max_attempts: usize,
}

impl Default for SchedulerConfig {
    fn default() -> Self {
        SchedulerConfig {
            policy: Policy::Spread,
            confirm_timeout: Duration::from_secs(60),
            max_attempts: 3,
        }
    }
}

/// The order in which to try `candidates` (a node and its free room) under `policy`: by free
/// vCPUs, then memory, then GPUs, then disk, descending for [`Policy::Spread`] and ascending
/// for [`Policy::Pack`]; ties by node id.
pub fn order(mut candidates: Vec<(NodeId, Resources)>, policy: Policy) -> Vec<NodeId> {
    let key = |r: &Resources| (r.vcpus, r.memory_mib, r.gpus, r.disk_gib);
    candidates.sort_by(|(a_id, a), (b_id, b)| {
        let by_room = match policy {
            Policy::Spread => key(b).cmp(&key(a)),
            Policy::Pack => key(a).cmp(&key(b)),
        };
        by_room.then_with(|| a_id.cmp(b_id))
    });
    candidates.into_iter().map(|(id, _)| id).collect()
}

/// What an agent reported about a rental someone waits on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Confirmation {
    /// `instance_started`.
    Started,
    /// `instance_stopped` (a refused start, or a stop), or the node was lost.
    Stopped {
        reason: StopReason,
        message: Option<String>,
    },
}

type Waiters = HashMap<RentalId, (NodeId, oneshot::Sender<Confirmation>)>;

/// Rentals someone waits on, keyed by rental id; the registry resolves them as the agents'
/// events arrive. Cheap to clone (shared).
#[derive(Clone, Default)]
pub struct Confirmations(Arc<Mutex<Waiters>>);

/// A wait on one rental's confirmation; dropping it stops waiting.
pub struct Waiter {
    rental: RentalId,
    rx: oneshot::Receiver<Confirmation>,
    map: Confirmations,
}

impl Drop for Waiter {
    fn drop(&mut self) {
        self.map.lock().remove(&self.rental);
    }
}

impl Confirmations {
    fn lock(&self) -> std::sync::MutexGuard<'_, Waiters> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts waiting for what `node` reports about `rental`. Call it before sending the
    /// command, so that a fast answer is not missed.
    pub fn expect(&self, rental: &RentalId, node: &NodeId) -> Waiter {
        let (tx, rx) = oneshot::channel();
        self.lock().insert(rental.clone(), (node.clone(), tx));
        Waiter {
            rental: rental.clone(),
            rx,
            map: self.clone(),
        }
    }

    /// Hands `what` to whoever waits on `rental` from `node`; says whether someone did. An
    /// event from another node resolves nothing.
    pub fn resolve(&self, rental: &RentalId, node: &NodeId, what: Confirmation) -> bool {
        let mut waiters = self.lock();
        if waiters.get(rental).is_none_or(|(n, _)| n != node) {
            return false;
        }
        match waiters.remove(rental) {
            Some((_, tx)) => tx.send(what).is_ok(),
            None => false,
        }
    }

    /// `node` is gone: everyone waiting on it hears so at once.
    pub fn node_lost(&self, node: &NodeId, message: &str) {
        let mut waiters = self.lock();
        let lost: Vec<RentalId> = waiters
            .iter()
            .filter(|(_, (n, _))| n == node)
            .map(|(r, _)| r.clone())
            .collect();
        for rental in lost {
            if let Some((_, tx)) = waiters.remove(&rental) {
                let _ = tx.send(Confirmation::Stopped {
                    reason: StopReason::Error,
                    message: Some(message.to_owned()),
                });
            }
        }
    }
}

/// Why a node could not be told to run or stop a workload.
#[derive(Debug, thiserror::Error)]
pub enum DispatchError {
    #[error(transparent)]
    Fleet(#[from] FleetError),
    /// No dispatcher for this kind of workload (VMs, until the `/fleet` VM commands exist).
    #[error("this control plane cannot run a {0} on a node yet: it has no dispatcher for them")]
    Unsupported(&'static str),
    /// The stored spec is not something a node can run.
    #[error("the workload's spec cannot be sent to a node: {0}")]
    BadSpec(String),
    /// A stop needs what the node reported when it started the workload.
    #[error("the node never reported a container for this workload")]
    NoContainer,
    /// The node answered the command with a refusal.
    #[error("{0}")]
    Refused(String),
}

/// How the control plane tells a node's agent to start or stop a workload. The real one is
/// [`FleetDispatch`]; tests may use a double.
#[async_trait]
pub trait Dispatch: Send + Sync + 'static {
    /// Whether this dispatcher can run workloads of `kind` at all; the scheduler fails the
    /// others at once, with a clear reason, instead of trying every node.
    fn supports(&self, kind: WorkloadKind) -> bool {
        let _ = kind;
        true
    }

    /// Tells `node` to start `vm` as rental `rental`, waiting up to `timeout` for the node to
    /// accept the command. Whether it runs is the agent's `instance_started` to say.
    async fn start(
        &self,
        node: &NodeId,
        vm: &VmRecord,
        rental: &RentalId,
        timeout: Duration,
    ) -> Result<(), DispatchError>;

    /// Tells `node` to stop `vm`'s run `rental`; the agent answers with `instance_stopped`.
    async fn stop(
        &self,
        node: &NodeId,
        vm: &VmRecord,
        rental: &RentalId,
        timeout: Duration,
    ) -> Result<(), DispatchError>;

    /// Tells `node` to drop what it keeps of the stopped `vm` (a VM's disk and definition);
    /// nothing by default: a stopped container leaves nothing behind.
    async fn forget(
        &self,
        node: &NodeId,
        vm: &VmRecord,
        timeout: Duration,
    ) -> Result<(), DispatchError> {
        let _ = (node, vm, timeout);
        Ok(())
    }
}

/// [`Dispatch`] over the `/fleet` namespace: containers as seed 001's `start_instance` and
/// `stop_instance`; VMs as `vm_command` create (and boot), stop and delete. A VM's spec is
/// stored as the [`CreateVmSpec`] its node receives; the run's rental id is the create's
/// request id, so a resent placement never boots a second guest.
#[derive(Clone)]
pub struct FleetDispatch {
    fleet: Fleet,
}

impl FleetDispatch {
    pub fn new(fleet: Fleet) -> Self {
        FleetDispatch { fleet }
    }
}

/// Seed 001's `start_instance` for a container's rental.
pub fn start_instance(vm: &VmRecord, rental: &RentalId) -> Result<StartInstance, DispatchError> {
    let spec: ContainerSpec = serde_json::from_value(vm.spec.clone())
        .map_err(|e| DispatchError::BadSpec(e.to_string()))?;
    let expires_at = spec
        .duration_seconds
        .map(|d| Timestamp::now().unix_seconds().saturating_add_unsigned(d));
    // GPUs are handed out as the first indices of the node; see ARCHITECTURE.md.
    let gpu_indices = (0..spec.gpu_count)
        .map(|i| vmfleet_core::GpuIndex::new(i.to_string()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| DispatchError::BadSpec(e.to_string()))?;
    Ok(StartInstance {
        rental_id: rental.clone(),
        image: spec.image,
        resource_limits: ResourceLimits {
            gpu_indices,
            cpu_cores: spec.cpu_cores,
            ram_limit: spec.ram_limit,
            disk_limit: spec.disk_gb.map(vmfleet_core::ByteSize::gib),
        },
        env_vars: spec.env_vars,
        proxy_port_mapping: spec.proxy_port_mapping,
        expires_at,
    })
}

#[async_trait]
impl Dispatch for FleetDispatch {
    async fn start(
        &self,
        node: &NodeId,
        vm: &VmRecord,
        rental: &RentalId,
        timeout: Duration,
    ) -> Result<(), DispatchError> {
        match vm.kind {
            WorkloadKind::Container => {
                let cmd = BackendCommand::StartInstance(start_instance(vm, rental)?);
                self.fleet.send(node, &cmd, timeout).await?;
                Ok(())
            }
            WorkloadKind::Vm => {
                let mut spec: CreateVmSpec = serde_json::from_value(vm.spec.clone())
                    .map_err(|e| DispatchError::BadSpec(e.to_string()))?;
                spec.boot = true;
                let request_id = RequestId::new(rental.as_str())
                    .map_err(|e| DispatchError::BadSpec(e.to_string()))?;
                self.vm_command(node, vm, request_id, VmOperation::Create(spec), timeout)
                    .await
            }
        }
    }

    async fn forget(
        &self,
        node: &NodeId,
        vm: &VmRecord,
        timeout: Duration,
    ) -> Result<(), DispatchError> {
        if vm.kind != WorkloadKind::Vm {
            return Ok(());
        }
        let op = VmOperation::Delete;
        match self
            .vm_command(node, vm, RequestId::generate(), op, timeout)
            .await
        {
            // Already gone from the node: nothing to forget.
            Err(DispatchError::Refused(m)) if m.starts_with("not found: ") => Ok(()),
            other => other,
        }
    }

    async fn stop(
        &self,
        node: &NodeId,
        vm: &VmRecord,
        rental: &RentalId,
        timeout: Duration,
    ) -> Result<(), DispatchError> {
        if vm.kind == WorkloadKind::Vm {
            // A stop on the way to deletion: the guest's disk goes with it, so there is
            // nothing to shut down cleanly for.
            let op = VmOperation::Stop {
                force: true,
                timeout_seconds: 0,
            };
            return self
                .vm_command(node, vm, RequestId::generate(), op, timeout)
                .await;
        }
        let container = vm.container.clone().ok_or(DispatchError::NoContainer)?;
        let graceful_secs = u32::try_from(timeout.as_secs() / 2).unwrap_or(u32::MAX);
        let cmd = BackendCommand::StopInstance(StopInstance {
            rental_id: rental.clone(),
            container_id: container,
            graceful: true,
            timeout_seconds: graceful_secs,
        });
        self.fleet.send(node, &cmd, timeout).await?;
        Ok(())
    }
}

impl FleetDispatch {
    /// Runs a VM operation on `node`; a refusal is [`DispatchError::Refused`] with the node's
    /// reason (`not found: ...` when the node has no such VM).
    async fn vm_command(
        &self,
        node: &NodeId,
        vm: &VmRecord,
        request_id: RequestId,
        op: VmOperation,
        timeout: Duration,
    ) -> Result<(), DispatchError> {
        let cmd = VmCommand {
            request_id,
            vm_id: vm.id.clone(),
            op,
        };
        match self.fleet.vm_command(node, cmd, timeout).await? {
            VmCommandReply { success: true, .. } => Ok(()),
            VmCommandReply { code, message, .. } => {
                let message = message.unwrap_or_else(|| "no reason given".into());
                Err(DispatchError::Refused(match code {
                    Some(VmErrorCode::NotFound) => format!("not found: {message}"),
                    _ => message,
                }))
            }
        }
    }
}

/// Why a placement or a removal failed. The message is the reason shown to the caller.
#[derive(Debug, thiserror::Error)]
pub enum SchedulerError {
    /// No `ONLINE` node had room for it.
    #[error("{0}")]
    NoRoom(String),
    /// Nodes were tried and none ran it.
    #[error("{0}")]
    Failed(String),
    /// The workload's node cannot be reached to stop it.
    #[error("{0}")]
    Unreachable(String),
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Places workloads on nodes and removes them; cheap to clone.
#[derive(Clone)]
pub struct Scheduler {
    store: Store,
    dispatch: Arc<dyn Dispatch>,
    confirmations: Confirmations,
    config: SchedulerConfig,
}

fn describe(r: &Resources) -> String {
    format!(
        "{} vCPUs, {} MiB of memory, {} GiB of disk and {} GPUs",
        r.vcpus, r.memory_mib, r.disk_gib, r.gpus
    )
}

impl Scheduler {
    pub fn new(
        store: Store,
        dispatch: Arc<dyn Dispatch>,
        confirmations: Confirmations,
        config: SchedulerConfig,
    ) -> Self {
        Scheduler {
            store,
            dispatch,
            confirmations,
            config,
        }
    }

    pub fn config(&self) -> SchedulerConfig {
        self.config
    }

    /// The same scheduler under another configuration.
    pub fn with_config(mut self, config: SchedulerConfig) -> Self {
        self.config = config;
        self
    }

    /// The same scheduler telling nodes through another [`Dispatch`].
    pub fn with_dispatch(mut self, dispatch: Arc<dyn Dispatch>) -> Self {
        self.dispatch = dispatch;
        self
    }

    async fn audit(&self, action: &str, vm: &VmId, detail: serde_json::Value) {
        if let Err(e) = self
            .store
            .append_audit(
                &Actor::System,
                action,
                &AuditTarget::Vm(vm.clone()),
                &detail,
            )
            .await
        {
            tracing::error!(%vm, error = %e, "cannot append to the audit log");
        }
    }

    /// Whether some `ONLINE` node has room for `wanted` now (a hint: placement checks again).
    pub async fn has_room(&self, wanted: &Resources) -> Result<bool, StoreError> {
        Ok(!self.candidates(wanted).await?.is_empty())
    }

    /// The `ONLINE` nodes other than `except` with room for `wanted` now, in the policy's
    /// order: where a VM on `except` may migrate (placement checks again).
    pub async fn targets(
        &self,
        wanted: &Resources,
        except: &NodeId,
    ) -> Result<Vec<NodeId>, StoreError> {
        let mut all = self.candidates(wanted).await?;
        all.retain(|n| n != except);
        Ok(all)
    }

    /// The `ONLINE` nodes with room for `wanted` now, in the policy's order.
    async fn candidates(&self, wanted: &Resources) -> Result<Vec<NodeId>, StoreError> {
        let mut fits = Vec::new();
        for node in self.store.list_nodes().await? {
            if node.status != NodeStatus::Online {
                continue;
            }
            let used = self.store.used_resources(&node.id).await?;
            let free = node.capacity.saturating_sub(&used);
            if wanted.fits_in(&free) {
                fits.push((node.id, free));
            }
        }
        Ok(order(fits, self.config.policy))
    }

    /// Places the unplaced workload `vm` and has its node start it; returns it as the store
    /// has it once its node confirmed (state `running`). On failure it is left unplaced, in
    /// state `error` with the reason, which the error repeats.
    pub async fn place(&self, vm: &VmId) -> Result<VmRecord, SchedulerError> {
        let record = self.store.get_vm(vm).await?;
        if !self.dispatch.supports(record.kind) {
            let kind = match record.kind {
                WorkloadKind::Vm => "VM",
                WorkloadKind::Container => "container",
            };
            let reason = DispatchError::Unsupported(kind).to_string();
            self.store
                .update_vm_state(vm, VmState::Error, Some(&reason), None)
                .await?;
            self.audit("vm.unplaceable", vm, json!({ "reason": reason }))
                .await;
            return Err(SchedulerError::Failed(reason));
        }
        let wanted = record.resources;
        let mut tried: Vec<String> = Vec::new();
        let mut attempts = 0;
        for node in self.candidates(&wanted).await? {
            if attempts >= self.config.max_attempts {
                break;
            }
            if !self.store.reserve(&node, vm).await? {
                // Another placement took the room (or the node left ONLINE) since we looked.
                continue;
            }
            attempts += 1;
            let rental = RentalId::generate();
            match self.attempt(&node, vm, &rental).await {
                Ok(placed) => return Ok(placed),
                Err(why) => {
                    self.undo(vm, &node, &rental, &why).await?;
                    tried.push(format!("node {node}: {why}"));
                }
            }
        }
        let (reason, err): (String, fn(String) -> SchedulerError) = if tried.is_empty() {
            (
                format!("no ONLINE node has room for {}", describe(&wanted)),
                SchedulerError::NoRoom,
            )
        } else {
            (
                format!(
                    "placement failed on every node tried ({})",
                    tried.join("; ")
                ),
                SchedulerError::Failed,
            )
        };
        self.store
            .update_vm_state(vm, VmState::Error, Some(&reason), None)
            .await?;
        self.audit("vm.unplaceable", vm, json!({ "reason": reason }))
            .await;
        Err(err(reason))
    }

    /// One try on `node`, where `vm` was just reserved: Ok once the agent confirmed, the reason
    /// otherwise.
    async fn attempt(
        &self,
        node: &NodeId,
        vm: &VmId,
        rental: &RentalId,
    ) -> Result<VmRecord, String> {
        let fail = |e: StoreError| e.to_string();
        let record = self
            .store
            .set_instance(vm, Some(rental), None, None)
            .await
            .map_err(fail)?;
        self.store
            .update_vm_state(vm, VmState::Booting, None, None)
            .await
            .map_err(fail)?;
        self.audit(
            "vm.place",
            vm,
            json!({ "node": node.as_str(), "rental": rental.as_str() }),
        )
        .await;
        let mut waiter = self.confirmations.expect(rental, node);
        let timeout = self.config.confirm_timeout;
        let deadline = tokio::time::Instant::now() + timeout;
        let sent = self.dispatch.start(node, &record, rental, timeout).await;
        let heard = match sent {
            // The agent reports before it acknowledges: what it said may be here already.
            Err(e) => match waiter.rx.try_recv() {
                Ok(c) => c,
                Err(_) if matches!(e, DispatchError::Fleet(FleetError::NoAck(_))) => {
                    return Err(format!(
                        "the node did not confirm within {} s",
                        timeout.as_secs_f64()
                    ));
                }
                Err(_) => return Err(format!("the command failed: {e}")),
            },
            Ok(()) => match tokio::time::timeout_at(deadline, &mut waiter.rx).await {
                Ok(Ok(c)) => c,
                Ok(Err(_)) => return Err("the confirmation was lost".into()),
                Err(_) => {
                    // The registry may be recording it at this very moment.
                    let now = self.store.get_vm(vm).await.map_err(fail)?;
                    if now.state == VmState::Running && now.rental.as_ref() == Some(rental) {
                        return Ok(now);
                    }
                    return Err(format!(
                        "the node did not confirm within {} s",
                        timeout.as_secs_f64()
                    ));
                }
            },
        };
        match heard {
            Confirmation::Started => self.store.get_vm(vm).await.map_err(fail),
            Confirmation::Stopped { message, .. } => Err(format!(
                "the node refused it: {}",
                message.unwrap_or_else(|| "no reason given".into())
            )),
        }
    }

    /// Takes `vm` off `node` after a failed try.
    async fn undo(
        &self,
        vm: &VmId,
        node: &NodeId,
        rental: &RentalId,
        why: &str,
    ) -> Result<(), StoreError> {
        self.store.set_instance(vm, None, None, None).await?;
        self.store.assign_node(vm, None).await?;
        self.store
            .update_vm_state(vm, VmState::Created, Some(why), None)
            .await?;
        self.audit(
            "vm.unplace",
            vm,
            json!({ "node": node.as_str(), "rental": rental.as_str(), "reason": why }),
        )
        .await;
        Ok(())
    }

    /// Stops `vm` on its node if it runs there (waiting for the agent's `instance_stopped`),
    /// ends its open rental, and deletes it. A workload whose node cannot be reached is not
    /// deleted ([`SchedulerError::Unreachable`]): it may still run there.
    pub async fn remove(&self, vm: &VmId) -> Result<(), SchedulerError> {
        let record = self.store.get_vm(vm).await?;
        let live = matches!(
            record.state,
            VmState::Running
                | VmState::Booting
                | VmState::Paused
                | VmState::Stopping
                | VmState::Unknown
        );
        if let (true, Some(node), Some(rental)) = (live, &record.node, &record.rental) {
            if record.container.is_some() || record.kind == WorkloadKind::Vm {
                self.stop_on(node, &record, rental).await?;
            } else if record.state == VmState::Unknown {
                return Err(SchedulerError::Unreachable(format!(
                    "node {node} is offline: {} cannot be stopped until its agent is back",
                    record.id
                )));
            }
        }
        if let (WorkloadKind::Vm, Some(node)) = (record.kind, &record.node) {
            self.dispatch
                .forget(node, &record, self.config.confirm_timeout)
                .await
                .map_err(|e| {
                    SchedulerError::Unreachable(format!(
                        "node {node} did not delete {}: {e}",
                        record.id
                    ))
                })?;
        }
        self.store.end_open_rental(&record).await?;
        self.store.delete_vm(vm).await?;
        self.audit("vm.delete", vm, json!({})).await;
        Ok(())
    }

    async fn stop_on(
        &self,
        node: &NodeId,
        record: &VmRecord,
        rental: &RentalId,
    ) -> Result<(), SchedulerError> {
        let timeout = self.config.confirm_timeout;
        if record.kind == WorkloadKind::Vm {
            // A VM's stop is answered when the guest is down: the answer is the confirmation.
            return match self.dispatch.stop(node, record, rental, timeout).await {
                Ok(()) => Ok(()),
                Err(DispatchError::Fleet(FleetError::NotConnected(_))) => {
                    Err(SchedulerError::Unreachable(format!(
                        "node {node} is offline: {} cannot be stopped until its agent is back",
                        record.id
                    )))
                }
                Err(e) => Err(SchedulerError::Unreachable(format!(
                    "node {node} did not stop {}: {e}",
                    record.id
                ))),
            };
        }
        let mut waiter = self.confirmations.expect(rental, node);
        // An `unknown` workload stays so while its node is asked (a stop that fails must not
        // lose when the node was lost: that is what its rental is billed up to).
        let before = record.state;
        let marks = before != VmState::Unknown;
        if marks {
            self.store
                .update_vm_state(&record.id, VmState::Stopping, None, None)
                .await?;
        }
        let restore = |e: String| async move {
            if marks {
                let _ = self
                    .store
                    .update_vm_state(&record.id, before, record.state_reason.as_deref(), None)
                    .await;
            }
            e
        };
        match self.dispatch.stop(node, record, rental, timeout).await {
            Ok(()) => {}
            Err(DispatchError::Fleet(FleetError::NotConnected(_))) => {
                let why = format!(
                    "node {node} is offline: {} cannot be stopped until its agent is back",
                    record.id
                );
                return Err(SchedulerError::Unreachable(restore(why).await));
            }
            Err(e) => {
                if waiter.rx.try_recv().is_err() {
                    let why = format!("node {node} did not stop {}: {e}", record.id);
                    return Err(SchedulerError::Unreachable(restore(why).await));
                }
                return Ok(());
            }
        }
        match tokio::time::timeout(timeout, &mut waiter.rx).await {
            Ok(Ok(_)) => Ok(()),
            _ => {
                let why = format!(
                    "node {node} did not report {} stopped within {} s",
                    record.id,
                    timeout.as_secs_f64()
                );
                Err(SchedulerError::Unreachable(restore(why).await))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn n(id: &str) -> NodeId {
        NodeId::new(id).unwrap()
    }

    fn free(vcpus: u32, memory_mib: u64) -> Resources {
        Resources {
            vcpus,
            memory_mib,
            disk_gib: 10,
            gpus: 0,
        }
    }

    #[test]
    fn spread_takes_the_most_free_room_first_and_pack_the_least() {
        let c = vec![
            (n("b"), free(2, 1024)),
            (n("a"), free(8, 512)),
            (n("c"), free(2, 4096)),
            (n("d"), free(2, 1024)),
        ];
        assert_eq!(
            order(c.clone(), Policy::Spread),
            vec![n("a"), n("c"), n("b"), n("d")]
        );
        assert_eq!(order(c, Policy::Pack), vec![n("b"), n("d"), n("c"), n("a")]);
    }

    #[test]
    fn ties_go_by_node_id_under_both_policies() {
        let c = vec![
            (n("z"), free(4, 4096)),
            (n("m"), free(4, 4096)),
            (n("a"), free(4, 4096)),
        ];
        for p in [Policy::Spread, Policy::Pack] {
            assert_eq!(order(c.clone(), p), vec![n("a"), n("m"), n("z")], "{p:?}");
        }
        assert!(order(Vec::new(), Policy::Pack).is_empty());
    }

    #[test]
    fn policies_parse() {
        assert_eq!("pack".parse::<Policy>().unwrap(), Policy::Pack);
        assert_eq!("spread".parse::<Policy>().unwrap(), Policy::Spread);
        assert!("random".parse::<Policy>().is_err());
    }

    /// Runs containers only, and confirms nothing (it is never asked to here).
    struct ContainersOnly;

    #[async_trait]
    impl Dispatch for ContainersOnly {
        fn supports(&self, kind: WorkloadKind) -> bool {
            kind == WorkloadKind::Container
        }
        async fn start(
            &self,
            _: &NodeId,
            _: &VmRecord,
            _: &RentalId,
            _: Duration,
        ) -> Result<(), DispatchError> {
            panic!("a VM was dispatched")
        }
        async fn stop(
            &self,
            _: &NodeId,
            _: &VmRecord,
            _: &RentalId,
            _: Duration,
        ) -> Result<(), DispatchError> {
            panic!("a VM was dispatched")
        }
    }

    #[tokio::test]
    async fn a_vm_without_a_vm_dispatcher_fails_clearly_and_touches_no_node() {
        let store = Store::open("sqlite::memory:").await.unwrap();
        let owner = vmfleet_core::WalletAddress::from_bytes([7; 20]);
        store
            .upsert_user(&owner, vmfleet_auth::Role::Standard)
            .await
            .unwrap();
        let node = store
            .create_node("n", &vmfleet_auth::SecretHash::of("k"))
            .await
            .unwrap();
        store.set_capacity(&node.id, free(8, 8192)).await.unwrap();
        store
            .set_node_status(&node.id, NodeStatus::Online)
            .await
            .unwrap();
        let vm = store
            .insert_vm(&vmfleet_store::NewVm {
                id: VmId::generate(),
                kind: WorkloadKind::Vm,
                owner,
                name: vmfleet_core::VmName::new("v").unwrap(),
                spec: json!({}),
                resources: free(1, 256),
            })
            .await
            .unwrap();
        let s = Scheduler::new(
            store.clone(),
            Arc::new(ContainersOnly),
            Confirmations::default(),
            SchedulerConfig::default(),
        );
        let e = s.place(&vm.id).await.unwrap_err();
        assert!(matches!(e, SchedulerError::Failed(_)), "{e}");
        assert!(e.to_string().contains("cannot run a VM"), "{e}");
        let after = store.get_vm(&vm.id).await.unwrap();
        assert_eq!((after.state, after.node), (VmState::Error, None));
        assert_eq!(after.state_reason, Some(e.to_string()));
    }

    #[tokio::test]
    async fn confirmations_go_to_the_waiter_of_that_node_only() {
        let c = Confirmations::default();
        let r = RentalId::generate();
        let mut w = c.expect(&r, &n("a"));
        assert!(!c.resolve(&r, &n("b"), Confirmation::Started));
        assert!(c.resolve(&r, &n("a"), Confirmation::Started));
        assert_eq!((&mut w.rx).await.unwrap(), Confirmation::Started);
        assert!(
            !c.resolve(&r, &n("a"), Confirmation::Started),
            "resolved once"
        );

        let r2 = RentalId::generate();
        let mut w2 = c.expect(&r2, &n("a"));
        c.node_lost(&n("a"), "gone");
        assert!(matches!(
            (&mut w2.rx).await.unwrap(),
            Confirmation::Stopped { .. }
        ));
        drop(w2);
        let r3 = RentalId::generate();
        drop(c.expect(&r3, &n("a")));
        assert!(!c.resolve(&r3, &n("a"), Confirmation::Started), "dropped");
    }
}
