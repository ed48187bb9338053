//! The `/fleet` namespace's [`NodeRegistry`] over the database.

use async_trait::async_trait;
use serde_json::json;
use vmfleet_auth::SecretHash;
use vmfleet_core::{NodeId, Timestamp};
use vmfleet_store::{Actor, AuditTarget, NodeStatus, Store, StoreError};
use vmfleet_wire::fleet::{self, Heartbeat, InstanceStarted, InstanceStopped, VmReport};

use crate::fleet::NodeRegistry;

/// Nodes as the database knows them: host keys checked against their stored hashes, status
/// following the connection, heartbeats and instance events recorded.
pub struct StoreRegistry {
    store: Store,
}

impl StoreRegistry {
    pub fn new(store: Store) -> Self {
        StoreRegistry { store }
    }

    async fn status(&self, node: &NodeId, status: NodeStatus) {
        if let Err(e) = self.store.set_node_status(node, status).await {
            tracing::error!(%node, error = %e, "cannot record the node's status");
        }
        let _ = self
            .store
            .append_audit(
                &Actor::System,
                "node_status",
                &AuditTarget::Node(node.clone()),
                &json!({ "status": status.as_str() }),
            )
            .await;
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
    }

    async fn heartbeat(&self, node: &NodeId, hb: &Heartbeat) -> Result<(), String> {
        let metrics = serde_json::to_value(&hb.metrics).map_err(|e| e.to_string())?;
        let cap = hb.capacity.map(|c| vmfleet_store::Resources {
            vcpus: c.vcpus,
            memory_mib: c.memory_mb,
            disk_gib: c.disk_gb,
            gpus: c.gpus,
        });
        self.store
            .record_heartbeat(node, &Timestamp::now(), &metrics, cap)
            .await
            .map_err(|e| e.to_string())?;
        if hb.status == fleet::NodeStatus::Maintenance {
            let _ = self
                .store
                .set_node_status(node, NodeStatus::Maintenance)
                .await;
        }
        Ok(())
    }

    async fn instance_started(&self, node: &NodeId, ev: &InstanceStarted) -> Result<(), String> {
        let detail = serde_json::to_value(ev).map_err(|e| e.to_string())?;
        self.store
            .append_audit(
                &Actor::Node(node.clone()),
                "instance_started",
                &AuditTarget::Rental(ev.rental_id.clone()),
                &detail,
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    }

    async fn instance_stopped(&self, node: &NodeId, ev: &InstanceStopped) -> Result<(), String> {
        let detail = serde_json::to_value(ev).map_err(|e| e.to_string())?;
        self.store
            .append_audit(
                &Actor::Node(node.clone()),
                "instance_stopped",
                &AuditTarget::Rental(ev.rental_id.clone()),
                &detail,
            )
            .await
            .map(drop)
            .map_err(|e| e.to_string())
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
        let unchanged = vm.state == report.state
            && vm.state_reason == report.reason
            && (report.ip_address.is_none() || vm.ip == report.ip_address);
        if unchanged {
            return Ok(());
        }
        self.store
            .update_vm_state(
                &report.vm_id,
                report.state,
                report.reason.as_deref(),
                report.ip_address,
            )
            .await
            .map_err(|e| e.to_string())?;
        let _ = self
            .store
            .append_audit(
                &Actor::Node(node.clone()),
                "vm_state",
                &AuditTarget::Vm(report.vm_id.clone()),
                &json!({ "state": report.state.as_str(), "reason": report.reason }),
            )
            .await;
        Ok(())
    }
}
