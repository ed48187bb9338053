//! Nodes: the hosts whose agents dial in, their capacity, status and latest heartbeat.

use sqlx::any::AnyRow;
use vmfleet_auth::SecretHash;
use vmfleet_core::{NodeId, Timestamp};

use crate::error::{StoreError, is_unique_violation, not_found};
use crate::row::{opt_json, opt_time, parsed, resource_values, resources, text, time};
use crate::{Backend, Node, NodeStatus, Resources, Result, Store, now_millis};

const COLS: &str = "id, name, status, cap_vcpus, cap_memory_mib, cap_disk_gib, cap_gpus, \
                    last_heartbeat_at, metrics, created_at";

/// The longest node name accepted, in bytes (a host name fits).
pub const MAX_NODE_NAME: usize = 253;

fn node(row: &AnyRow) -> Result<Node> {
    Ok(Node {
        id: parsed(row, "id")?,
        name: text(row, "name")?,
        status: parsed(row, "status")?,
        capacity: resources(row, "cap_")?,
        last_heartbeat: opt_time(row, "last_heartbeat_at")?,
        metrics: opt_json(row, "metrics")?,
        created_at: time(row, "created_at")?,
    })
}

impl Store {
    /// Registers a node, `OFFLINE` and with no capacity until its agent reports. `name` is
    /// unique (a taken name is a [`StoreError::Conflict`]), and so is the host key.
    pub async fn create_node(&self, name: &str, host_key: &SecretHash) -> Result<Node> {
        if name.trim().is_empty()
            || name.len() > MAX_NODE_NAME
            || name.chars().any(char::is_control)
        {
            return Err(StoreError::Invalid(format!(
                "a node name has 1 to {MAX_NODE_NAME} bytes and no control characters, not {name:?}"
            )));
        }
        let id = NodeId::generate();
        let inserted = sqlx::query(&format!(
            "INSERT INTO nodes (id, name, host_key_hash, status, created_at)
             VALUES ($1, $2, $3, $4, $5) RETURNING {COLS}"
        ))
        .bind(id.as_str())
        .bind(name)
        .bind(host_key.to_hex())
        .bind(NodeStatus::Offline.as_str())
        .bind(now_millis())
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => node(&row),
            Err(e) if is_unique_violation(&e) => {
                let taken: Option<AnyRow> = sqlx::query("SELECT id FROM nodes WHERE name = $1")
                    .bind(name)
                    .fetch_optional(&self.pool)
                    .await?;
                Err(StoreError::Conflict(if taken.is_some() {
                    format!("a node named {name:?} already exists")
                } else {
                    "another node already has this host key".to_owned()
                }))
            }
            Err(e) => Err(e.into()),
        }
    }

    /// The node whose host key hashes to `hash`: how an agent's `HOST_API_KEY` is checked.
    pub async fn node_by_key_hash(&self, hash: &SecretHash) -> Result<Option<Node>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM nodes WHERE host_key_hash = $1"
        ))
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(node)
        .transpose()
    }

    pub async fn get_node(&self, id: &NodeId) -> Result<Node> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM nodes WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("node", id))?;
        node(&row)
    }

    /// Every node, by name.
    pub async fn list_nodes(&self) -> Result<Vec<Node>> {
        sqlx::query(&format!("SELECT {COLS} FROM nodes ORDER BY name, id"))
            .fetch_all(&self.pool)
            .await?
            .iter()
            .map(node)
            .collect()
    }

    pub async fn set_node_status(&self, id: &NodeId, status: NodeStatus) -> Result<()> {
        let done = sqlx::query("UPDATE nodes SET status = $2 WHERE id = $1")
            .bind(id.as_str())
            .bind(status.as_str())
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("node", id));
        }
        Ok(())
    }

    /// Records a heartbeat: its time, its metrics (kept verbatim, replacing the previous
    /// ones) and, when given, the capacity the agent reports. The status is left alone: it
    /// follows the agent's connection ([`Store::set_node_status`]).
    pub async fn record_heartbeat(
        &self,
        id: &NodeId,
        at: &Timestamp,
        metrics: &serde_json::value::RawValue,
        capacity: Option<Resources>,
    ) -> Result<()> {
        let done = match capacity {
            None => {
                sqlx::query("UPDATE nodes SET last_heartbeat_at = $2, metrics = $3 WHERE id = $1")
                    .bind(id.as_str())
                    .bind(at.unix_millis())
                    .bind(metrics.get())
                    .execute(&self.pool)
                    .await?
            }
            Some(cap) => {
                let [vcpus, memory, disk, gpus] = resource_values(&cap)?;
                sqlx::query(
                    "UPDATE nodes SET last_heartbeat_at = $2, metrics = $3, cap_vcpus = $4,
                     cap_memory_mib = $5, cap_disk_gib = $6, cap_gpus = $7 WHERE id = $1",
                )
                .bind(id.as_str())
                .bind(at.unix_millis())
                .bind(metrics.get())
                .bind(vcpus)
                .bind(memory)
                .bind(disk)
                .bind(gpus)
                .execute(&self.pool)
                .await?
            }
        };
        if done.rows_affected() == 0 {
            return Err(not_found("node", id));
        }
        Ok(())
    }

    /// Records many nodes' heartbeats (when each arrived and its metrics as JSON text, as
    /// [`Store::record_heartbeat`] without capacity) in one transaction: what a busy control
    /// plane writes once per heartbeat period instead of one transaction per heartbeat. Nodes that no longer exist are skipped;
    /// returns how many were recorded.
    pub async fn record_heartbeats(
        &self,
        beats: &[(
            NodeId,
            std::time::SystemTime,
            Box<serde_json::value::RawValue>,
        )],
    ) -> Result<u64> {
        /// Rows per statement: three parameters each, well under both databases' limits.
        const ROWS: usize = 100;
        if beats.is_empty() {
            return Ok(0);
        }
        let mut tx = self.begin_write().await?;
        let mut recorded = 0;
        for chunk in beats.chunks(ROWS) {
            // One statement per chunk: `VALUES` names its columns column1.. in both dialects.
            // SQLite gets anonymous `?` parameters: binding a numbered one looks its name up
            // in a list of all of them (sqlite3_bind_parameter_name), which made binding a
            // chunk quadratic in its size and the biggest cost of the flush.
            let rows: Vec<String> = (0..chunk.len())
                .map(|i| match self.backend {
                    Backend::Sqlite => "(?, ?, ?)".to_owned(),
                    Backend::Postgres => {
                        format!("(${}, ${}, ${})", 3 * i + 1, 3 * i + 2, 3 * i + 3)
                    }
                })
                .collect();
            let sql = format!(
                "UPDATE nodes SET last_heartbeat_at = v.column2, metrics = v.column3
                 FROM (VALUES {}) AS v WHERE nodes.id = v.column1",
                rows.join(", ")
            );
            let mut query = sqlx::query(&sql);
            for (id, at, metrics) in chunk {
                let at = at
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_millis() as i64);
                query = query
                    .bind(id.as_str())
                    .bind(at)
                    .bind(metrics.get().to_owned());
            }
            recorded += query.execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(recorded)
    }

    /// Sets what the node offers. Lowering it below what the node already runs is allowed
    /// (nothing is evicted); the node then takes nothing new until enough is freed.
    pub async fn set_capacity(&self, id: &NodeId, capacity: Resources) -> Result<()> {
        let [vcpus, memory, disk, gpus] = resource_values(&capacity)?;
        let done = sqlx::query(
            "UPDATE nodes SET cap_vcpus = $2, cap_memory_mib = $3, cap_disk_gib = $4, cap_gpus = $5
             WHERE id = $1",
        )
        .bind(id.as_str())
        .bind(vcpus)
        .bind(memory)
        .bind(disk)
        .bind(gpus)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(not_found("node", id));
        }
        Ok(())
    }

    /// Removes a node. Refused ([`StoreError::Conflict`]) while any VM or container that is
    /// not deleted is placed on it. Deleted VMs that ran there forget the node; rentals and
    /// usage records keep its id.
    pub async fn delete_node(&self, id: &NodeId) -> Result<()> {
        let mut tx = self.begin_write().await?;
        // Take the node's placement lock first, so that no reservation lands between the
        // check and the delete.
        let locked =
            sqlx::query("UPDATE nodes SET placement_seq = placement_seq + 1 WHERE id = $1")
                .bind(id.as_str())
                .execute(&mut *tx)
                .await?;
        if locked.rows_affected() == 0 {
            return Err(not_found("node", id));
        }
        let row = sqlx::query(
            "SELECT CAST(COUNT(*) AS BIGINT) AS n FROM vms WHERE node_id = $1 AND state <> 'deleted'",
        )
        .bind(id.as_str())
        .fetch_one(&mut *tx)
        .await?;
        let running = crate::row::int(&row, "n")?;
        if running > 0 {
            return Err(StoreError::Conflict(format!(
                "node {id} still has {running} VMs or containers; delete or move them first"
            )));
        }
        sqlx::query("DELETE FROM nodes WHERE id = $1")
            .bind(id.as_str())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        Ok(())
    }
}
