//! VMs and containers (one table, a `kind` column) and the scheduler's reservations.
//!
//! A workload is recorded unplaced ([`Store::insert_vm`]); the scheduler then asks
//! [`Store::reserve`] to place it on a node, which succeeds only if the node still has room.
//! A node's used resources are the sum over the workloads placed on it that are not deleted,
//! whatever their state (a stopped VM keeps its place). Deleting is soft: the row stays, in
//! state `deleted`, for its rentals and the audit log; its name and its room are freed.

use std::net::IpAddr;

use sqlx::any::AnyRow;
use vmfleet_core::{
    ContainerId, MigrationId, NodeId, RentalId, Timestamp, VmDevice, VmId, VmName, VmState,
    WalletAddress,
};

use crate::error::{StoreError, is_foreign_key_violation, is_unique_violation, not_found};
use crate::model::parse_state;
use crate::row::{
    int, json, opt_json, opt_parsed, opt_text, opt_time, parsed, resource_values, resources, text,
    time,
};
use crate::{MigrationTicket, NewVm, NodeStatus, Resources, Result, Store, VmRecord, now_millis};

const COLS: &str = "id, kind, owner, name, node_id, spec, vcpus, memory_mib, disk_gib, gpus, \
                    state, state_reason, ip, rental_id, container_id, connection_info, \
                    unknown_since, created_at, updated_at, deleted_at, migration_id, \
                    migration_node_id, migration_expires_at, devices";

fn vm(row: &AnyRow) -> Result<VmRecord> {
    Ok(VmRecord {
        id: parsed(row, "id")?,
        kind: parsed(row, "kind")?,
        owner: parsed(row, "owner")?,
        name: parsed(row, "name")?,
        node: opt_parsed(row, "node_id")?,
        spec: json(row, "spec")?,
        resources: resources(row, "")?,
        state: parse_state(&text(row, "state")?)?,
        state_reason: opt_text(row, "state_reason")?,
        ip: opt_parsed::<IpAddr>(row, "ip")?,
        rental: opt_parsed(row, "rental_id")?,
        container: opt_parsed(row, "container_id")?,
        connection_info: opt_json(row, "connection_info")?,
        unknown_since: opt_time(row, "unknown_since")?,
        created_at: time(row, "created_at")?,
        updated_at: time(row, "updated_at")?,
        deleted_at: opt_time(row, "deleted_at")?,
        migration: match (
            opt_parsed::<MigrationId>(row, "migration_id")?,
            opt_parsed::<NodeId>(row, "migration_node_id")?,
            opt_time(row, "migration_expires_at")?,
        ) {
            (Some(id), Some(node), Some(expires_at)) => Some(MigrationTicket {
                id,
                node,
                expires_at,
            }),
            _ => None,
        },
        devices: {
            let s = text(row, "devices")?;
            serde_json::from_str(&s).map_err(|e| {
                StoreError::Corrupt(format!("column devices holds no device list: {e}"))
            })?
        },
    })
}

/// Takes `node`'s placement lock in `tx` (a row lock on PostgreSQL; SQLite's write lock is
/// already the transaction's) and reads its status and capacity: a reservation computes the
/// node's free room only after this.
async fn lock_node(
    tx: &mut sqlx::Transaction<'static, sqlx::Any>,
    node: &NodeId,
) -> Result<(NodeStatus, Resources)> {
    let locked = sqlx::query(
        "UPDATE nodes SET placement_seq = placement_seq + 1 WHERE id = $1
         RETURNING status, cap_vcpus, cap_memory_mib, cap_disk_gib, cap_gpus",
    )
    .bind(node.as_str())
    .fetch_optional(&mut **tx)
    .await?
    .ok_or_else(|| not_found("node", node))?;
    Ok((parsed(&locked, "status")?, resources(&locked, "cap_")?))
}

impl Store {
    /// Records a new VM or container, in state `created` and placed on no node. Its name must
    /// be free among its owner's live workloads ([`StoreError::Conflict`] otherwise) and its
    /// owner must be a user ([`StoreError::NotFound`] otherwise).
    pub async fn insert_vm(&self, new: &NewVm) -> Result<VmRecord> {
        let [vcpus, memory, disk, gpus] = resource_values(&new.resources)?;
        let now = now_millis();
        let inserted = sqlx::query(&format!(
            "INSERT INTO vms (id, kind, owner, name, spec, vcpus, memory_mib, disk_gib, gpus,
                              state, created_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $11) RETURNING {COLS}"
        ))
        .bind(new.id.as_str())
        .bind(new.kind.as_str())
        .bind(new.owner.to_string())
        .bind(new.name.as_str())
        .bind(new.spec.to_string())
        .bind(vcpus)
        .bind(memory)
        .bind(disk)
        .bind(gpus)
        .bind(VmState::Created.as_str())
        .bind(now)
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => vm(&row),
            Err(e) if is_unique_violation(&e) => {
                let id_taken = sqlx::query("SELECT id FROM vms WHERE id = $1")
                    .bind(new.id.as_str())
                    .fetch_optional(&self.pool)
                    .await?
                    .is_some();
                Err(StoreError::Conflict(if id_taken {
                    format!("a VM with id {} already exists", new.id)
                } else {
                    format!("{} already has a VM named {}", new.owner, new.name)
                }))
            }
            Err(e) if is_foreign_key_violation(&e) => Err(not_found("user", new.owner)),
            Err(e) => Err(e.into()),
        }
    }

    /// The VM or container with this id, deleted ones included.
    pub async fn get_vm(&self, id: &VmId) -> Result<VmRecord> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM vms WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("VM", id))?;
        vm(&row)
    }

    /// The owner's live (not deleted) VM or container with this name.
    pub async fn get_vm_by_owner_name(
        &self,
        owner: &WalletAddress,
        name: &VmName,
    ) -> Result<VmRecord> {
        let row = sqlx::query(&format!(
            "SELECT {COLS} FROM vms WHERE owner = $1 AND name = $2 AND state <> 'deleted'"
        ))
        .bind(owner.to_string())
        .bind(name.as_str())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| not_found("VM", format!("{name} of {owner}")))?;
        vm(&row)
    }

    /// The live VMs and containers of `owner`, or of everyone, oldest first.
    pub async fn list_vms(&self, owner: Option<&WalletAddress>) -> Result<Vec<VmRecord>> {
        let rows = match owner {
            Some(owner) => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM vms WHERE owner = $1 AND state <> 'deleted'
                     ORDER BY created_at, id"
                ))
                .bind(owner.to_string())
                .fetch_all(&self.pool)
                .await?
            }
            None => {
                sqlx::query(&format!(
                    "SELECT {COLS} FROM vms WHERE state <> 'deleted' ORDER BY created_at, id"
                ))
                .fetch_all(&self.pool)
                .await?
            }
        };
        rows.iter().map(vm).collect()
    }

    /// How many VMs and containers are in each state, deleted ones left out; states no
    /// workload is in are absent.
    pub async fn count_vms_by_state(&self) -> Result<Vec<(VmState, i64)>> {
        sqlx::query(
            "SELECT state, CAST(COUNT(*) AS BIGINT) AS n FROM vms WHERE state <> 'deleted'
             GROUP BY state ORDER BY state",
        )
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(|row| Ok((parse_state(&text(row, "state")?)?, int(row, "n")?)))
        .collect()
    }

    /// The live VMs and containers placed on a node (what its agent should be running).
    pub async fn list_vms_on_node(&self, node: &NodeId) -> Result<Vec<VmRecord>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM vms WHERE node_id = $1 AND state <> 'deleted'
             ORDER BY created_at, id"
        ))
        .bind(node.as_str())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(vm)
        .collect()
    }

    /// Records a VM's new state. `reason` replaces the previous one (`None` clears it); `ip`
    /// is recorded when given and otherwise kept (an address outlives a stop). Entering
    /// `unknown` records when (unless already unknown); leaving it forgets that. Moving to
    /// `deleted` is [`Store::delete_vm`]'s; a deleted VM's state never changes again
    /// ([`StoreError::Conflict`]). Whether the transition is allowed is the state machine's
    /// question (`VmState::begin`), asked before calling this.
    pub async fn update_vm_state(
        &self,
        id: &VmId,
        state: VmState,
        reason: Option<&str>,
        ip: Option<IpAddr>,
    ) -> Result<VmRecord> {
        if state == VmState::Deleted {
            self.delete_vm(id).await?;
            return self.get_vm(id).await;
        }
        let row = sqlx::query(&format!(
            "UPDATE vms SET state = $2, state_reason = $3, ip = COALESCE($4, ip), updated_at = $5,
                unknown_since = CASE WHEN $2 = 'unknown' THEN COALESCE(unknown_since, $5)
                                     ELSE NULL END
             WHERE id = $1 AND state <> 'deleted' RETURNING {COLS}"
        ))
        .bind(id.as_str())
        .bind(state.as_str())
        .bind(reason)
        .bind(ip.map(|ip| ip.to_string()))
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?;
        match row {
            Some(row) => {
                self.changed(id);
                vm(&row)
            }
            None => Err(self.refusal_for_deleted(id).await),
        }
    }

    /// Records the devices and shares a VM's node reports it has, in place of the stored
    /// list.
    pub async fn set_vm_devices(&self, id: &VmId, devices: &[VmDevice]) -> Result<()> {
        let text = serde_json::to_string(devices)
            .map_err(|e| StoreError::Invalid(format!("a device list that is no JSON: {e}")))?;
        let done = sqlx::query(
            "UPDATE vms SET devices = $2, updated_at = $3 WHERE id = $1 AND state <> 'deleted'",
        )
        .bind(id.as_str())
        .bind(text)
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            return Err(self.refusal_for_deleted(id).await);
        }
        self.changed(id);
        Ok(())
    }

    /// Records the workload's current run: its rental (set by the scheduler before it
    /// dispatches the workload; `None` when a placement is undone), and the container and
    /// connection info its agent reported. Each value replaces the stored one. A rental id
    /// belongs to one workload at most ([`StoreError::Conflict`] otherwise).
    pub async fn set_instance(
        &self,
        id: &VmId,
        rental: Option<&RentalId>,
        container: Option<&ContainerId>,
        connection_info: Option<&serde_json::Value>,
    ) -> Result<VmRecord> {
        let row = sqlx::query(&format!(
            "UPDATE vms SET rental_id = $2, container_id = $3, connection_info = $4,
                            updated_at = $5
             WHERE id = $1 AND state <> 'deleted' RETURNING {COLS}"
        ))
        .bind(id.as_str())
        .bind(rental.map(RentalId::as_str))
        .bind(container.map(ContainerId::as_str))
        .bind(connection_info.map(serde_json::Value::to_string))
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await;
        match row {
            Ok(Some(row)) => {
                self.changed(id);
                vm(&row)
            }
            Ok(None) => Err(self.refusal_for_deleted(id).await),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "rental {} already belongs to another VM",
                rental.map(RentalId::as_str).unwrap_or_default()
            ))),
            Err(e) => Err(e.into()),
        }
    }

    /// The workload (deleted ones included) whose current run is rental `rental`, if any.
    pub async fn vm_by_rental(&self, rental: &RentalId) -> Result<Option<VmRecord>> {
        sqlx::query(&format!("SELECT {COLS} FROM vms WHERE rental_id = $1"))
            .bind(rental.as_str())
            .fetch_optional(&self.pool)
            .await?
            .as_ref()
            .map(vm)
            .transpose()
    }

    /// A node went offline: every live workload on it whose state has a process behind it
    /// (`running`, `booting`, `paused`, `stopping`) becomes `unknown`, with `reason`, and
    /// remembers `since`. Returns them. Nothing else changes: placements and rentals stay.
    pub async fn mark_node_unknown(
        &self,
        node: &NodeId,
        since: &Timestamp,
        reason: &str,
    ) -> Result<Vec<VmRecord>> {
        sqlx::query(&format!(
            "UPDATE vms SET state = 'unknown', state_reason = $2, unknown_since = $3,
                            updated_at = $4
             WHERE node_id = $1 AND state IN ('running', 'booting', 'paused', 'stopping')
             RETURNING {COLS}"
        ))
        .bind(node.as_str())
        .bind(reason)
        .bind(since.unix_millis())
        .bind(now_millis())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(vm)
        .collect::<Result<Vec<_>>>()
        .inspect(|lost| lost.iter().for_each(|v| self.changed(&v.id)))
    }

    /// Places (or with `None` unplaces) a VM without looking at capacity: for recording facts,
    /// such as a VM found running on a node when its agent re-adopts it, or a placement the
    /// node refused. New placements go through [`Store::reserve`].
    pub async fn assign_node(&self, id: &VmId, node: Option<&NodeId>) -> Result<VmRecord> {
        let row = sqlx::query(&format!(
            "UPDATE vms SET node_id = $2, updated_at = $3
             WHERE id = $1 AND state <> 'deleted' RETURNING {COLS}"
        ))
        .bind(id.as_str())
        .bind(node.map(NodeId::as_str))
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await;
        match row {
            Ok(Some(row)) => {
                self.changed(id);
                vm(&row)
            }
            Ok(None) => Err(self.refusal_for_deleted(id).await),
            Err(e) if is_foreign_key_violation(&e) => Err(not_found(
                "node",
                node.map(NodeId::as_str).unwrap_or_default(),
            )),
            Err(e) => Err(e.into()),
        }
    }

    /// Deletes a VM or container, softly: its state becomes `deleted`, its name and the room
    /// it took on its node are freed, and the row stays for its rentals and the audit log.
    /// Deleting a deleted VM does nothing. An open rental is the caller's to end first.
    pub async fn delete_vm(&self, id: &VmId) -> Result<()> {
        let now = now_millis();
        let done = sqlx::query(
            "UPDATE vms SET state = 'deleted', deleted_at = $2, updated_at = $2
             WHERE id = $1 AND state <> 'deleted'",
        )
        .bind(id.as_str())
        .bind(now)
        .execute(&self.pool)
        .await?;
        if done.rows_affected() == 0 {
            // Missing, or already deleted.
            self.get_vm(id).await?;
        } else {
            self.changed(id);
        }
        Ok(())
    }

    /// What the live workloads placed on a node take of it.
    pub async fn used_resources(&self, node: &NodeId) -> Result<Resources> {
        let row = sqlx::query(USED_SQL)
            .bind(node.as_str())
            .bind(now_millis())
            .fetch_one(&self.pool)
            .await?;
        resources(&row, "")
    }

    /// Places the VM or container `vm` on `node` if the node is `ONLINE` and has room for it
    /// now, and says whether it did. Placements on one node are serialised by a write to the
    /// node's row (a row lock on PostgreSQL, the database's write lock on SQLite) taken before
    /// the free room is computed, so any number of concurrent calls never overbook the node.
    ///
    /// `Ok(false)`: no room, or the node is not online. [`StoreError::Conflict`]: the VM is
    /// deleted or already placed on another node. Placing a VM again on its own node is
    /// `Ok(true)`.
    pub async fn reserve(&self, node: &NodeId, vm: &VmId) -> Result<bool> {
        let mut tx = self.begin_write().await?;
        let (status, capacity) = lock_node(&mut tx, node).await?;

        let row = sqlx::query(
            "SELECT node_id, state, vcpus, memory_mib, disk_gib, gpus FROM vms WHERE id = $1",
        )
        .bind(vm.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found("VM", vm))?;
        if text(&row, "state")? == VmState::Deleted.as_str() {
            return Err(StoreError::Conflict(format!("VM {vm} is deleted")));
        }
        match opt_parsed::<NodeId>(&row, "node_id")? {
            Some(current) if current == *node => return Ok(true),
            Some(current) => {
                return Err(StoreError::Conflict(format!(
                    "VM {vm} is already placed on node {current}"
                )));
            }
            None => {}
        }
        let wanted = resources(&row, "")?;

        let used_row = sqlx::query(USED_SQL)
            .bind(node.as_str())
            .bind(now_millis())
            .fetch_one(&mut *tx)
            .await?;
        let used = resources(&used_row, "")?;
        if status != NodeStatus::Online || !wanted.fits_in(&capacity.saturating_sub(&used)) {
            tx.rollback().await?;
            return Ok(false);
        }
        let placed = sqlx::query(
            "UPDATE vms SET node_id = $2, updated_at = $3
             WHERE id = $1 AND node_id IS NULL AND state <> 'deleted'",
        )
        .bind(vm.as_str())
        .bind(node.as_str())
        .bind(now_millis())
        .execute(&mut *tx)
        .await?;
        if placed.rows_affected() == 0 {
            // Placed elsewhere or deleted by a concurrent call since we looked.
            tx.rollback().await?;
            return Err(StoreError::Conflict(format!(
                "VM {vm} was placed or deleted concurrently"
            )));
        }
        tx.commit().await?;
        self.changed(vm);
        Ok(true)
    }

    /// Reserves room on `node` for the placed VM `vm` to move there, as ticket `ticket`
    /// valid until `expires_at`, if the node is `ONLINE` and has room now (serialised with
    /// every other placement on the node, as [`Store::reserve`]); says whether it did.
    ///
    /// [`StoreError::Conflict`]: the VM is deleted, placed nowhere, already on `node`, or
    /// holds another ticket that has not expired.
    pub async fn reserve_migration(
        &self,
        vm: &VmId,
        node: &NodeId,
        ticket: &MigrationId,
        expires_at: &Timestamp,
    ) -> Result<bool> {
        let now = now_millis();
        let mut tx = self.begin_write().await?;
        let (status, capacity) = lock_node(&mut tx, node).await?;
        let row = sqlx::query(
            "SELECT node_id, state, vcpus, memory_mib, disk_gib, gpus, migration_expires_at
             FROM vms WHERE id = $1",
        )
        .bind(vm.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found("VM", vm))?;
        if text(&row, "state")? == VmState::Deleted.as_str() {
            return Err(StoreError::Conflict(format!("VM {vm} is deleted")));
        }
        match opt_parsed::<NodeId>(&row, "node_id")? {
            None => {
                return Err(StoreError::Conflict(format!(
                    "VM {vm} is on no node: boot it instead"
                )));
            }
            Some(current) if current == *node => {
                return Err(StoreError::Conflict(format!(
                    "VM {vm} is already on node {node}"
                )));
            }
            Some(_) => {}
        }
        if opt_time(&row, "migration_expires_at")?.is_some_and(|t| t.unix_millis() > now) {
            return Err(StoreError::Conflict(format!(
                "VM {vm} has a migration under way already"
            )));
        }
        let wanted = resources(&row, "")?;
        let used_row = sqlx::query(USED_SQL)
            .bind(node.as_str())
            .bind(now)
            .fetch_one(&mut *tx)
            .await?;
        let used = resources(&used_row, "")?;
        if status != NodeStatus::Online || !wanted.fits_in(&capacity.saturating_sub(&used)) {
            tx.rollback().await?;
            return Ok(false);
        }
        let set = sqlx::query(
            "UPDATE vms SET migration_id = $2, migration_node_id = $3, migration_expires_at = $4,
                            updated_at = $5
             WHERE id = $1 AND state <> 'deleted'",
        )
        .bind(vm.as_str())
        .bind(ticket.as_str())
        .bind(node.as_str())
        .bind(expires_at.unix_millis())
        .bind(now)
        .execute(&mut *tx)
        .await;
        match set {
            Ok(_) => {}
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "migration ticket {ticket} is taken"
                )));
            }
            Err(e) => return Err(e.into()),
        }
        tx.commit().await?;
        self.changed(vm);
        Ok(true)
    }

    /// The live VM holding migration ticket `ticket` (expired or not), if any.
    pub async fn vm_by_migration(&self, ticket: &MigrationId) -> Result<Option<VmRecord>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM vms WHERE migration_id = $1 AND state <> 'deleted'"
        ))
        .bind(ticket.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(vm)
        .transpose()
    }

    /// Keeps `vm`'s ticket `ticket` (and its room) until `expires_at`; `false` when the
    /// ticket is gone or expired already.
    pub async fn extend_migration(
        &self,
        vm: &VmId,
        ticket: &MigrationId,
        expires_at: &Timestamp,
    ) -> Result<bool> {
        let done = sqlx::query(
            "UPDATE vms SET migration_expires_at = $3
             WHERE id = $1 AND migration_id = $2 AND migration_expires_at > $4
                   AND state <> 'deleted'",
        )
        .bind(vm.as_str())
        .bind(ticket.as_str())
        .bind(expires_at.unix_millis())
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected() == 1)
    }

    /// Drops `vm`'s ticket `ticket`, freeing its room; nothing when it holds another.
    pub async fn release_migration(&self, vm: &VmId, ticket: &MigrationId) -> Result<()> {
        let done = sqlx::query(
            "UPDATE vms SET migration_id = NULL, migration_node_id = NULL,
                            migration_expires_at = NULL
             WHERE id = $1 AND migration_id = $2",
        )
        .bind(vm.as_str())
        .bind(ticket.as_str())
        .execute(&self.pool)
        .await?;
        if done.rows_affected() > 0 {
            self.changed(vm);
        }
        Ok(())
    }

    /// The VM moved: it is placed on its ticket's node (whose room the ticket held) and the
    /// ticket is spent. [`StoreError::Conflict`] when it holds no such ticket any more.
    pub async fn complete_migration(&self, vm: &VmId, ticket: &MigrationId) -> Result<VmRecord> {
        let row = sqlx::query(&format!(
            "UPDATE vms SET node_id = migration_node_id, migration_id = NULL,
                            migration_node_id = NULL, migration_expires_at = NULL, updated_at = $3
             WHERE id = $1 AND migration_id = $2 AND migration_node_id IS NOT NULL
                   AND state <> 'deleted'
             RETURNING {COLS}"
        ))
        .bind(vm.as_str())
        .bind(ticket.as_str())
        .bind(now_millis())
        .fetch_optional(&self.pool)
        .await?
        .ok_or_else(|| {
            StoreError::Conflict(format!("VM {vm} no longer holds migration ticket {ticket}"))
        })?;
        self.changed(vm);
        crate::vms::vm(&row)
    }

    /// The VMs left `migrating` whose ticket lapsed (a running migration keeps extending
    /// it, so its control plane is gone) become `unknown` with `reason`, their tickets
    /// dropped: their nodes' next reports say how they are. Returns them.
    pub async fn abandon_stale_migrations(&self, reason: &str) -> Result<Vec<VmRecord>> {
        let now = now_millis();
        sqlx::query(&format!(
            "UPDATE vms SET state = 'unknown', state_reason = $1,
                            unknown_since = COALESCE(unknown_since, $2), updated_at = $2,
                            migration_id = NULL, migration_node_id = NULL,
                            migration_expires_at = NULL
             WHERE state = 'migrating'
                   AND ((migration_expires_at IS NULL AND updated_at <= $3)
                        OR migration_expires_at <= $2)
             RETURNING {COLS}"
        ))
        .bind(reason)
        .bind(now)
        // A grace period for a migration between dropping its ticket and recording its end.
        .bind(now - 60_000)
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(vm)
        .collect::<Result<Vec<_>>>()
        .inspect(|lost| lost.iter().for_each(|v| self.changed(&v.id)))
    }

    /// The error for an update that matched no live row: not found, or deleted.
    async fn refusal_for_deleted(&self, id: &VmId) -> StoreError {
        match self.get_vm(id).await {
            Ok(_) => StoreError::Conflict(format!("VM {id} is deleted")),
            Err(e) => e,
        }
    }
}

/// The resources taken on node `$1` by its live workloads and by the VMs with a migration
/// ticket to it that has not expired at `$2` (unix milliseconds). (SUM is cast: PostgreSQL
/// sums BIGINTs into NUMERIC, which the Any driver cannot read.)
const USED_SQL: &str = "SELECT CAST(COALESCE(SUM(vcpus), 0) AS BIGINT) AS vcpus,
        CAST(COALESCE(SUM(memory_mib), 0) AS BIGINT) AS memory_mib,
        CAST(COALESCE(SUM(disk_gib), 0) AS BIGINT) AS disk_gib,
        CAST(COALESCE(SUM(gpus), 0) AS BIGINT) AS gpus
    FROM vms WHERE state <> 'deleted'
        AND (node_id = $1 OR (migration_node_id = $1 AND migration_expires_at > $2))";
