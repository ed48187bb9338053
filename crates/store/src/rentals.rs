//! Rentals and metering. A rental is a period during which a VM or container runs on a node;
//! it starts when the workload starts and ends when it stops, and ending it writes a usage
//! record: vCPU-, memory- and GPU-time at the size the workload had when the rental started.

use sqlx::any::AnyRow;
use vmfleet_core::{NodeId, RentalId, Timestamp, VmId, VmState, WalletAddress};

use crate::error::{StoreError, is_unique_violation, not_found};
use crate::row::{int, opt_time, parsed, resource_values, resources, text, time, unsigned};
use crate::{Rental, Result, Store, Usage, UsageRecord, VmRecord};

const COLS: &str =
    "id, vm_id, owner, node_id, vcpus, memory_mib, disk_gib, gpus, started_at, ended_at";

fn rental(row: &AnyRow) -> Result<Rental> {
    Ok(Rental {
        id: parsed(row, "id")?,
        vm: parsed(row, "vm_id")?,
        owner: parsed(row, "owner")?,
        node: parsed(row, "node_id")?,
        resources: resources(row, "")?,
        started_at: time(row, "started_at")?,
        ended_at: opt_time(row, "ended_at")?,
    })
}

fn usage(row: &AnyRow) -> Result<Usage> {
    Ok(Usage {
        vcpu_millis: unsigned(row, "vcpu_millis")?,
        memory_mib_millis: unsigned(row, "memory_mib_millis")?,
        gpu_millis: unsigned(row, "gpu_millis")?,
        records: unsigned(row, "records")?,
    })
}

/// `a * b`, refusing what a BIGINT cannot hold.
fn product(what: &str, a: i64, b: i64) -> Result<i64> {
    a.checked_mul(b)
        .ok_or_else(|| StoreError::Invalid(format!("the {what} of a rental overflows")))
}

const USAGE_SUMS: &str = "CAST(COALESCE(SUM(vcpu_millis), 0) AS BIGINT) AS vcpu_millis,
        CAST(COALESCE(SUM(memory_mib_millis), 0) AS BIGINT) AS memory_mib_millis,
        CAST(COALESCE(SUM(gpu_millis), 0) AS BIGINT) AS gpu_millis,
        CAST(COUNT(*) AS BIGINT) AS records";

impl Store {
    /// Starts rental `id` for a VM or container at `at`, on the node it is placed on and at
    /// its current size. Refused ([`StoreError::Conflict`]) when the workload is deleted, is
    /// placed on no node, or already has an open rental, or when the id is taken.
    pub async fn start_rental(&self, id: &RentalId, vm: &VmId, at: &Timestamp) -> Result<Rental> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(
            "SELECT owner, node_id, state, vcpus, memory_mib, disk_gib, gpus FROM vms WHERE id = $1",
        )
        .bind(vm.as_str())
        .fetch_optional(&mut *tx)
        .await?
        .ok_or_else(|| not_found("VM", vm))?;
        if text(&row, "state")? == VmState::Deleted.as_str() {
            return Err(StoreError::Conflict(format!("VM {vm} is deleted")));
        }
        let owner: WalletAddress = parsed(&row, "owner")?;
        let node: NodeId = crate::row::opt_parsed(&row, "node_id")?
            .ok_or_else(|| StoreError::Conflict(format!("VM {vm} is not placed on a node")))?;
        let res = resources(&row, "")?;
        let open = sqlx::query("SELECT id FROM rentals WHERE vm_id = $1 AND ended_at IS NULL")
            .bind(vm.as_str())
            .fetch_optional(&mut *tx)
            .await?;
        if let Some(open) = open {
            return Err(StoreError::Conflict(format!(
                "VM {vm} already has an open rental, {}",
                text(&open, "id")?
            )));
        }
        let [vcpus, memory, disk, gpus] = resource_values(&res)?;
        let inserted = sqlx::query(&format!(
            "INSERT INTO rentals (id, vm_id, owner, node_id, vcpus, memory_mib, disk_gib, gpus,
                                  started_at)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) RETURNING {COLS}"
        ))
        .bind(id.as_str())
        .bind(vm.as_str())
        .bind(owner.to_string())
        .bind(node.as_str())
        .bind(vcpus)
        .bind(memory)
        .bind(disk)
        .bind(gpus)
        .bind(at.unix_millis())
        .fetch_one(&mut *tx)
        .await;
        let row = match inserted {
            Ok(row) => row,
            Err(e) if is_unique_violation(&e) => {
                return Err(StoreError::Conflict(format!(
                    "rental {id} already exists, or VM {vm} gained an open rental concurrently"
                )));
            }
            Err(e) => return Err(e.into()),
        };
        let started = rental(&row)?;
        tx.commit().await?;
        Ok(started)
    }

    /// Ends rental `id` at `at` (not earlier than its start) and records what it consumed.
    /// Ending an ended rental is a [`StoreError::Conflict`]: each rental is metered once.
    pub async fn end_rental(&self, id: &RentalId, at: &Timestamp) -> Result<UsageRecord> {
        let mut tx = self.begin_write().await?;
        let row = sqlx::query(&format!(
            "UPDATE rentals SET ended_at = CASE WHEN $2 < started_at THEN started_at ELSE $2 END
             WHERE id = $1 AND ended_at IS NULL RETURNING {COLS}"
        ))
        .bind(id.as_str())
        .bind(at.unix_millis())
        .fetch_optional(&mut *tx)
        .await?;
        let Some(row) = row else {
            drop(tx);
            return Err(match self.get_rental(id).await {
                Ok(_) => StoreError::Conflict(format!("rental {id} has already ended")),
                Err(e) => e,
            });
        };
        let ended = rental(&row)?;
        let start = ended.started_at.unix_millis();
        let end = int(&row, "ended_at")?;
        let millis = end - start;
        let [vcpus, memory, _, gpus] = resource_values(&ended.resources)?;
        let vcpu_millis = product("vCPU time", vcpus, millis)?;
        let memory_mib_millis = product("memory time", memory, millis)?;
        let gpu_millis = product("GPU time", gpus, millis)?;
        sqlx::query(
            "INSERT INTO usage_records (rental_id, vm_id, owner, node_id, period_start, period_end,
                                        vcpu_millis, memory_mib_millis, gpu_millis)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9)",
        )
        .bind(id.as_str())
        .bind(ended.vm.as_str())
        .bind(ended.owner.to_string())
        .bind(ended.node.as_str())
        .bind(start)
        .bind(end)
        .bind(vcpu_millis)
        .bind(memory_mib_millis)
        .bind(gpu_millis)
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        let non_negative = |n: i64| u64::try_from(n).unwrap_or(0);
        Ok(UsageRecord {
            rental: ended.id,
            vm: ended.vm,
            owner: ended.owner,
            node: ended.node,
            period_start: ended.started_at,
            period_end: Timestamp::from_unix_millis(end),
            usage: Usage {
                vcpu_millis: non_negative(vcpu_millis),
                memory_mib_millis: non_negative(memory_mib_millis),
                gpu_millis: non_negative(gpu_millis),
                records: 1,
            },
        })
    }

    /// Ends the open rental of `vm`, if it has one: when the VM's node was lost
    /// (`unknown_since`), at that moment, so an outage is not billed; otherwise now. A rental
    /// ended concurrently (a repeated report) is not an error.
    pub async fn end_open_rental(&self, vm: &VmRecord) -> Result<()> {
        let Some(open) = self.open_rental(&vm.id).await? else {
            return Ok(());
        };
        let at = vm.unknown_since.clone().unwrap_or_else(Timestamp::now);
        match self.end_rental(&open.id, &at).await {
            Ok(_) | Err(StoreError::Conflict(_)) => Ok(()),
            Err(e) => Err(e),
        }
    }

    pub async fn get_rental(&self, id: &RentalId) -> Result<Rental> {
        let row = sqlx::query(&format!("SELECT {COLS} FROM rentals WHERE id = $1"))
            .bind(id.as_str())
            .fetch_optional(&self.pool)
            .await?
            .ok_or_else(|| not_found("rental", id))?;
        rental(&row)
    }

    /// The VM's rental that has not ended, if any.
    pub async fn open_rental(&self, vm: &VmId) -> Result<Option<Rental>> {
        sqlx::query(&format!(
            "SELECT {COLS} FROM rentals WHERE vm_id = $1 AND ended_at IS NULL"
        ))
        .bind(vm.as_str())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(rental)
        .transpose()
    }

    /// What an owner's ended rentals consumed, in all.
    pub async fn usage_by_owner(&self, owner: &WalletAddress) -> Result<Usage> {
        let row = sqlx::query(&format!(
            "SELECT {USAGE_SUMS} FROM usage_records WHERE owner = $1"
        ))
        .bind(owner.to_string())
        .fetch_one(&self.pool)
        .await?;
        usage(&row)
    }

    /// What the ended rentals on a node consumed, in all.
    pub async fn usage_by_node(&self, node: &NodeId) -> Result<Usage> {
        let row = sqlx::query(&format!(
            "SELECT {USAGE_SUMS} FROM usage_records WHERE node_id = $1"
        ))
        .bind(node.as_str())
        .fetch_one(&self.pool)
        .await?;
        usage(&row)
    }
}
