//! The `/fleet` namespace's [`NodeRegistry`] over the database.
//!
//! Besides nodes' status and heartbeats it keeps workloads in step with what their agents
//! report. An event names a rental; the workload whose current run is that rental
//! ([`Store::vm_by_rental`]) is the one it is about, and only if it is placed on the node that
//! reports (another node's event is refused and touches nothing):
//! - `instance_started`: the workload is `running` (from `booting`, or from `unknown` when
//!   an agent re-reports after an outage), with its container and connection info; its
//!   rental starts, once (a repeated event starts nothing).
//! - `instance_stopped`: `stopped` (reason `requested` or `timeout`) or `error` (with the
//!   agent's message); its open rental ends, writing the usage record, once. A refused start
//!   that the scheduler waits on is the scheduler's to handle (it tries another node).
//! - a node going offline: its workloads with a process (`running`, `booting`, `paused`,
//!   `stopping`) become `unknown`; their rentals stay open. Billing while unknown: if the
//!   agent later reports the workload still running, the rental simply goes on (it ran all
//!   along); if it reports it ended, the rental ends at the moment the node went offline
//!   (its last heartbeat), so an outage is never billed for a workload that died in it.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use serde_json::json;
use vmfleet_auth::SecretHash;
use vmfleet_core::{NodeId, Timestamp, VmState};
use vmfleet_store::{Actor, AuditTarget, NodeStatus, Store, StoreError, VmRecord};
use vmfleet_wire::fleet::{
    self, HeartbeatReport, InstanceStarted, InstanceStopped, StopReason, VmReport,
};

use crate::fleet::{HeartbeatSink, NodeRegistry};
use crate::scheduler::{Confirmation, Confirmations};

/// Nodes as the database knows them: host keys checked against their stored hashes, status
/// following the connection, heartbeats recorded, and workloads and rentals following the
/// agents' instance events.
pub struct StoreRegistry {
    store: Store,
    confirmations: Confirmations,
    heartbeats: Arc<Heartbeats>,
}

/// How often accepted heartbeats are written, all in one transaction: once per agents'
/// heartbeat period, so each node's row is written once per period.
pub const HEARTBEAT_FLUSH: Duration = crate::fleet::HEARTBEAT_PERIOD;

/// Heartbeats accepted and not yet written (the latest per node), and the capacity each
/// node last reported. A heartbeat is acknowledged once accepted and written within
/// [`HEARTBEAT_FLUSH`]: one transaction per period instead of one per heartbeat, so ten
/// thousand nodes do not queue on the database's write lock, and each page of the nodes
/// table is written once per period, not once per heartbeat on it (the fleet benchmark
/// measured SQLite's page writes at a fifth of the server's CPU with a 1 s flush). Liveness
/// does not wait for it: the namespace tracks when each node was last heard from in memory.
/// The first heartbeat of a connection and a changed capacity are written at once (the
/// scheduler places by them).
///
/// Per node, one entry, which the node's connection holds: a heartbeat needs no lookup.
#[derive(Default)]
struct Heartbeats(Mutex<HashMap<NodeId, Arc<NodeHeartbeats>>>);

/// An accepted heartbeat: when it arrived and its metrics as JSON text.
type Pending = (SystemTime, Box<serde_json::value::RawValue>);

/// One node's heartbeats: the [`HeartbeatSink`] its connection writes to.
struct NodeHeartbeats {
    node: NodeId,
    store: Store,
    beats: Mutex<Beats>,
}

/// What the registry keeps in memory of one node's heartbeats.
#[derive(Default)]
struct Beats {
    /// The latest heartbeat accepted and not yet written.
    pending: Option<Pending>,
    /// The capacity the node last reported.
    capacity: Option<vmfleet_store::Resources>,
    /// Whether the node connected since its last written heartbeat.
    fresh: bool,
}

impl Heartbeats {
    fn lock(&self) -> MutexGuard<'_, HashMap<NodeId, Arc<NodeHeartbeats>>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `node`'s entry, made if it is the node's first.
    fn of(&self, node: &NodeId, store: &Store) -> Arc<NodeHeartbeats> {
        let mut nodes = self.lock();
        if let Some(entry) = nodes.get(node) {
            return entry.clone();
        }
        let entry = Arc::new(NodeHeartbeats {
            node: node.clone(),
            store: store.clone(),
            beats: Mutex::default(),
        });
        nodes.insert(node.clone(), entry.clone());
        entry
    }

    /// Takes every heartbeat waiting to be written.
    fn drain(&self) -> Vec<(NodeId, SystemTime, Box<serde_json::value::RawValue>)> {
        let nodes = self.lock();
        let mut batch = Vec::with_capacity(nodes.len());
        for (node, entry) in nodes.iter() {
            if let Some((at, metrics)) = entry.beats().pending.take() {
                batch.push((node.clone(), at, metrics));
            }
        }
        batch
    }
}

impl NodeHeartbeats {
    fn beats(&self) -> MutexGuard<'_, Beats> {
        self.beats.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl HeartbeatSink for NodeHeartbeats {
    async fn heartbeat(&self, hb: HeartbeatReport) -> Result<(), String> {
        let cap = hb.capacity.map(|c| vmfleet_store::Resources {
            vcpus: c.vcpus,
            memory_mib: c.memory_mb,
            disk_gib: c.disk_gb,
            gpus: c.gpus,
        });
        let maintenance = hb.status == fleet::NodeStatus::Maintenance;
        // The common case: kept as the agent's JSON text until the next flush. The first
        // heartbeat of a connection and a changed capacity are written at once.
        let write_now = {
            let mut beats = self.beats();
            let new_capacity = cap.filter(|c| beats.capacity.as_ref() != Some(c));
            if std::mem::take(&mut beats.fresh) || new_capacity.is_some() {
                beats.pending = None;
                Some((new_capacity, hb.metrics))
            } else {
                beats.pending = Some((SystemTime::now(), hb.metrics));
                None
            }
        };
        if let Some((new_capacity, metrics)) = write_now {
            self.store
                .record_heartbeat(&self.node, &Timestamp::now(), &metrics, new_capacity)
                .await
                .map_err(|e| e.to_string())?;
            if let Some(c) = new_capacity {
                self.beats().capacity = Some(c);
            }
        }
        if maintenance {
            let _ = self
                .store
                .set_node_status(&self.node, NodeStatus::Maintenance)
                .await;
        }
        Ok(())
    }
}

/// How many heartbeat flushes between two sweeps for migrations whose control plane is gone.
const MIGRATION_SWEEP_EVERY: u32 = 60;

/// Writes the accepted heartbeats every [`HEARTBEAT_FLUSH`] until the registry is gone, and
/// now and then puts the VMs whose migration was abandoned (its ticket lapsed: the control
/// plane running it is gone) in `unknown`, for their nodes' reports to settle.
async fn flush_heartbeats(store: Store, heartbeats: std::sync::Weak<Heartbeats>) {
    let mut tick = tokio::time::interval(HEARTBEAT_FLUSH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut ticks = 0u32;
    loop {
        tick.tick().await;
        let Some(hb) = heartbeats.upgrade() else {
            return;
        };
        ticks = ticks.wrapping_add(1);
        if ticks.is_multiple_of(MIGRATION_SWEEP_EVERY) {
            let reason = "its migration was abandoned (the control plane running it stopped): \
                          its node's next report says how it is";
            match store.abandon_stale_migrations(reason).await {
                Ok(lost) => {
                    for vm in lost {
                        tracing::warn!(vm = %vm.id, "a migration was abandoned");
                    }
                }
                Err(e) => tracing::error!(error = %e, "cannot sweep abandoned migrations"),
            }
        }
        let batch = hb.drain();
        drop(hb);
        if let Err(e) = store.record_heartbeats(&batch).await {
            tracing::error!(error = %e, heartbeats = batch.len(), "cannot record heartbeats");
        }
    }
}

impl StoreRegistry {
    /// The registry over `store`; it starts the task that writes heartbeats, so call it
    /// within a Tokio runtime.
    pub fn new(store: Store, confirmations: Confirmations) -> Self {
        let heartbeats = Arc::new(Heartbeats::default());
        tokio::spawn(flush_heartbeats(store.clone(), Arc::downgrade(&heartbeats)));
        StoreRegistry {
            store,
            confirmations,
            heartbeats,
        }
    }

    async fn audit(
        &self,
        actor: Actor,
        action: &str,
        target: AuditTarget,
        detail: serde_json::Value,
    ) {
        if let Err(e) = self
            .store
            .append_audit(&actor, action, &target, &detail)
            .await
        {
            tracing::error!(error = %e, action, "cannot append to the audit log");
        }
    }

    async fn status(&self, node: &NodeId, status: NodeStatus) {
        if let Err(e) = self.store.set_node_status(node, status).await {
            tracing::error!(%node, error = %e, "cannot record the node's status");
        }
        self.audit(
            Actor::System,
            "node_status",
            AuditTarget::Node(node.clone()),
            json!({ "status": status.as_str() }),
        )
        .await;
    }

    /// The workload of `rental`, if it is placed on `node`.
    async fn workload(
        &self,
        node: &NodeId,
        rental: &vmfleet_core::RentalId,
    ) -> Result<VmRecord, String> {
        let vm = self
            .store
            .vm_by_rental(rental)
            .await
            .map_err(|e| e.to_string())?
            .ok_or_else(|| format!("rental {rental} is not a current run of any workload"))?;
        if vm.node.as_ref() != Some(node) {
            return Err(format!("rental {rental} does not run on node {node}"));
        }
        Ok(vm)
    }

    async fn set_state(
        &self,
        vm: &VmRecord,
        state: VmState,
        reason: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<(), String> {
        if vm.state == state && vm.state_reason.as_deref() == reason {
            return Ok(());
        }
        match self.store.update_vm_state(&vm.id, state, reason, ip).await {
            Ok(_) => {}
            // Deleted meanwhile: nothing left to show.
            Err(StoreError::Conflict(_)) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        }
        self.audit(
            Actor::System,
            "vm.state",
            AuditTarget::Vm(vm.id.clone()),
            json!({ "from": vm.state.as_str(), "to": state.as_str(), "reason": reason }),
        )
        .await;
        Ok(())
    }
}

#[async_trait]
impl NodeRegistry for StoreRegistry {
    async fn authenticate(&self, host_key: &str) -> Option<(NodeId, String)> {
        match self.store.node_by_key_hash(&SecretHash::of(host_key)).await {
            Ok(Some(n)) => Some((n.id, n.name)),
            Ok(None) => None,
            Err(e) => {
                tracing::error!(error = %e, "cannot check a host key");
                None
            }
        }
    }

    async fn node_online(&self, node: &NodeId) {
        self.heartbeats.of(node, &self.store).beats().fresh = true;
        // A drained node stays in maintenance when its agent reconnects.
        let drained = self
            .store
            .get_node(node)
            .await
            .is_ok_and(|n| n.status == NodeStatus::Maintenance);
        if !drained {
            self.status(node, NodeStatus::Online).await;
        }
    }

    async fn node_offline(&self, node: &NodeId) {
        self.status(node, NodeStatus::Offline).await;
        let unwritten = self
            .heartbeats
            .of(node, &self.store)
            .beats()
            .pending
            .as_ref()
            .map(|(at, _)| *at);
        let unwritten = unwritten.map(|at| {
            let millis = at
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis());
            Timestamp::from_unix_millis(millis as i64)
        });
        let since = match (unwritten, self.store.get_node(node).await) {
            (Some(at), _) => at,
            (None, Ok(n)) => n.last_heartbeat.unwrap_or_else(Timestamp::now),
            (None, Err(_)) => Timestamp::now(),
        };
        self.confirmations
            .node_lost(node, &format!("node {node} went offline"));
        let reason = format!(
            "node {node} went offline (last heard from at {since}); \
             the state is unknown until its agent reports again"
        );
        match self.store.mark_node_unknown(node, &since, &reason).await {
            Ok(lost) => {
                for vm in lost {
                    self.audit(
                        Actor::System,
                        "vm.state",
                        AuditTarget::Vm(vm.id.clone()),
                        json!({ "to": "unknown", "reason": reason }),
                    )
                    .await;
                }
            }
            Err(e) => {
                tracing::error!(%node, error = %e, "cannot mark the node's workloads unknown")
            }
        }
    }

    fn heartbeats(&self, node: &NodeId) -> Arc<dyn HeartbeatSink> {
        self.heartbeats.of(node, &self.store)
    }

    async fn instance_started(&self, node: &NodeId, ev: &InstanceStarted) -> Result<(), String> {
        let detail = serde_json::to_value(ev).map_err(|e| e.to_string())?;
        self.audit(
            Actor::Node(node.clone()),
            "instance_started",
            AuditTarget::Rental(ev.rental_id.clone()),
            detail,
        )
        .await;
        let vm = self.workload(node, &ev.rental_id).await?;
        if vm.state == VmState::Deleted {
            return Err(format!(
                "the workload of rental {} is deleted",
                ev.rental_id
            ));
        }
        match self.store.get_rental(&ev.rental_id).await {
            Ok(r) if r.ended_at.is_some() => {
                return Err(format!("rental {} has already ended", ev.rental_id));
            }
            Ok(_) => {}
            Err(StoreError::NotFound { .. }) => {
                match self
                    .store
                    .start_rental(&ev.rental_id, &vm.id, &Timestamp::now())
                    .await
                {
                    // Conflict: a concurrent report of the same start got there first.
                    Ok(_) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Err(e) => return Err(e.to_string()),
        }
        let info = serde_json::to_value(&ev.connection_info).map_err(|e| e.to_string())?;
        self.store
            .set_instance(
                &vm.id,
                Some(&ev.rental_id),
                Some(&ev.container_id),
                Some(&info),
            )
            .await
            .map_err(|e| e.to_string())?;
        // A stop or a pause in flight is not undone by a re-report.
        if matches!(
            vm.state,
            VmState::Booting | VmState::Unknown | VmState::Created | VmState::Running
        ) {
            let ip = ev.connection_info.ssh_host.parse::<IpAddr>().ok();
            self.set_state(&vm, VmState::Running, None, ip).await?;
        }
        self.confirmations
            .resolve(&ev.rental_id, node, Confirmation::Started);
        Ok(())
    }

    async fn instance_stopped(&self, node: &NodeId, ev: &InstanceStopped) -> Result<(), String> {
        let detail = serde_json::to_value(ev).map_err(|e| e.to_string())?;
        self.audit(
            Actor::Node(node.clone()),
            "instance_stopped",
            AuditTarget::Rental(ev.rental_id.clone()),
            detail,
        )
        .await;
        let vm = self.workload(node, &ev.rental_id).await?;
        let waited = self.confirmations.resolve(
            &ev.rental_id,
            node,
            Confirmation::Stopped {
                reason: ev.reason,
                message: ev.error_message.clone(),
            },
        );
        if waited && vm.state == VmState::Booting {
            // A refused start: the scheduler tries another node.
            return Ok(());
        }
        match self.store.get_rental(&ev.rental_id).await {
            Ok(r) if r.ended_at.is_none() => {
                // Ended while its node was out of reach: billed up to when the node was lost.
                let at = vm.unknown_since.clone().unwrap_or_else(Timestamp::now);
                match self.store.end_rental(&ev.rental_id, &at).await {
                    Ok(_) | Err(StoreError::Conflict(_)) => {}
                    Err(e) => return Err(e.to_string()),
                }
            }
            Ok(_) | Err(StoreError::NotFound { .. }) => {}
            Err(e) => return Err(e.to_string()),
        }
        if vm.state == VmState::Deleted {
            return Ok(());
        }
        let (state, reason) = match ev.reason {
            StopReason::Requested => (VmState::Stopped, None),
            StopReason::Timeout => (
                VmState::Stopped,
                Some("the rental's time ran out".to_owned()),
            ),
            StopReason::Error => (
                VmState::Error,
                Some(
                    ev.error_message
                        .clone()
                        .unwrap_or_else(|| "the node reported an error".to_owned()),
                ),
            ),
        };
        self.set_state(&vm, state, reason.as_deref(), None).await
    }

    async fn vm_state(&self, node: &NodeId, report: &VmReport) -> Result<(), String> {
        let vm = match self.store.get_vm(&report.vm_id).await {
            Ok(vm) => vm,
            // A VM the control plane did not make (the node's own API of seed 000).
            Err(StoreError::NotFound { .. }) => return Ok(()),
            Err(e) => return Err(e.to_string()),
        };
        if vm.node.as_ref() != Some(node) {
            return Err(format!("VM {} is not placed on this node", report.vm_id));
        }
        if vm.state == VmState::Deleted {
            return Ok(());
        }
        if vm.state == VmState::Migrating {
            // The migration owns the VM's state until it ends (its source pauses and resumes
            // the guest on the way); it records the outcome itself.
            return Ok(());
        }
        // A VM's run is a rental: it starts when the guest runs and ends when it stops. Who
        // waits on the run hears of it once the state is recorded.
        let confirm = if report.state == VmState::Running {
            self.vm_running(&vm)
                .await?
                .map(|rental| (rental, Confirmation::Started))
        } else if matches!(report.state, VmState::Stopped | VmState::Error) {
            self.vm_ended(&vm, report).await?
        } else {
            None
        };
        // A report that repeats the state with no reason keeps the control plane's note (why
        // a migration failed, say): the node has nothing to say about it.
        let reason = match (&report.reason, vm.state == report.state) {
            (None, true) => vm.state_reason.clone(),
            (r, _) => r.clone(),
        };
        let unchanged = vm.state == report.state
            && vm.state_reason == reason
            && (report.ip_address.is_none() || vm.ip == report.ip_address);
        if !unchanged {
            self.set_state(&vm, report.state, reason.as_deref(), report.ip_address)
                .await?;
        }
        if vm.devices != report.devices {
            self.store
                .set_vm_devices(&vm.id, &report.devices)
                .await
                .map_err(|e| e.to_string())?;
        }
        if let Some((rental, what)) = confirm {
            self.confirmations.resolve(&rental, node, what);
        }
        Ok(())
    }
}

impl StoreRegistry {
    /// A VM runs: its run has an open rental (the scheduler's rental id for a first boot, a
    /// new one for a later start). Returns the run's rental, for whoever waits on it.
    async fn vm_running(&self, vm: &VmRecord) -> Result<Option<vmfleet_core::RentalId>, String> {
        let open = self
            .store
            .open_rental(&vm.id)
            .await
            .map_err(|e| e.to_string())?;
        if let Some(r) = open {
            return Ok(Some(r.id));
        }
        let fresh = match &vm.rental {
            Some(id)
                if matches!(
                    self.store.get_rental(id).await,
                    Err(StoreError::NotFound { .. })
                ) =>
            {
                id.clone()
            }
            _ => vmfleet_core::RentalId::generate(),
        };
        self.store
            .set_instance(&vm.id, Some(&fresh), None, None)
            .await
            .map_err(|e| e.to_string())?;
        match self
            .store
            .start_rental(&fresh, &vm.id, &Timestamp::now())
            .await
        {
            // Conflict: a concurrent report of the same run got there first.
            Ok(_) | Err(StoreError::Conflict(_)) => {}
            Err(e) => return Err(e.to_string()),
        }
        Ok(Some(fresh))
    }

    /// A VM has no guest any more (stopped or failed): its open rental ends (at the moment
    /// its node was lost, if it ended out of sight). Returns what to tell whoever waits on its
    /// run.
    async fn vm_ended(
        &self,
        vm: &VmRecord,
        report: &VmReport,
    ) -> Result<Option<(vmfleet_core::RentalId, Confirmation)>, String> {
        let confirm = vm.rental.clone().map(|rental| {
            let reason = match report.state {
                VmState::Error => StopReason::Error,
                _ => StopReason::Requested,
            };
            let what = Confirmation::Stopped {
                reason,
                message: report.reason.clone(),
            };
            (rental, what)
        });
        self.store
            .end_open_rental(vm)
            .await
            .map_err(|e| e.to_string())?;
        Ok(confirm)
    }
}
