//! Seed 002's `/vm/migrate/from` and `/vm/migrate/to`: cold migration of a VM from its node to
//! another, with the control plane in the middle (nodes may be behind NAT and never talk to
//! each other).
//!
//! `/vm/migrate/from` prepares the receiving side: a target node is picked (an `ONLINE` node
//! other than the VM's own with room for it, in the scheduler's order; only an admin may
//! name one) and room is reserved there in the store ([`Store::reserve_migration`], the same
//! serialisation as every placement) under a ticket that lapses after [`TICKET_TTL`] unless
//! used. `/vm/migrate/to` sends the VM, with a ticket or preparing one itself, and answers at
//! once with state `migrating` (or the refusal, when the first step fails within
//! [`crate::vms::ANSWER_WITHIN`]); the work goes on in a [`Migration`]:
//!
//! 1. `export_begin` on the source: a running guest is paused and snapshotted (memory and
//!    devices) and stays paused; a stopped VM moves its disks only. The answer is the
//!    manifest of its files with their sizes and SHA-256.
//! 2. `import_begin` on the target, then every file in chunks of at most
//!    [`MAX_CHUNK_BYTES`]: `read_chunk` from the source (holes and zeros skipped),
//!    `write_chunk` to the target (checked against the chunk's SHA-256).
//! 3. `import_commit` on the target: each file checked whole, the VM defined (its address from
//!    the target's IPAM) and restored from the snapshot, or left stopped.
//! 4. The store moves the VM to the target (its ticket's room becomes its placement), the
//!    source's rental ends and the target's run opens a new one, and the source deletes its
//!    copy, only now.
//!
//! Any failure or a node that does not answer within its step's timeout rolls back: the
//! target's import aborted (or its VM deleted, after a commit), the reservation released, the
//! source's export undone (the guest resumed if it ran), the VM's state put back with the
//! reason in its `message`. Every step is in the audit log; progress (phase and bytes) is the
//! VM's state reason, which `/vm/info` and the WebSocket status stream show.

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use serde_json::json;
use vmfleet_auth::Permission;
use vmfleet_core::{MigrationId, NodeId, RequestId, SnapshotId, Timestamp, VmId, VmOp, VmState};
use vmfleet_store::{Actor, AuditTarget, Store, StoreError, VmRecord, WorkloadKind};
use vmfleet_wire::Success;
use vmfleet_wire::api::{MigrateFromRequest, MigrateToRequest, MigrateToResponse, MigrationTicket};
use vmfleet_wire::fleet::{
    CreateVmSpec, FileChunk, MAX_CHUNK_BYTES, ManifestFile, MigrationManifest, VmCommand,
    VmCommandReply, VmErrorCode, VmOperation, VmReport,
};

use crate::AppState;
use crate::caller::{Caller, actor, is_admin};
use crate::containers::scheduler;
use crate::error::ApiError;
use crate::extract::Body;
use crate::fleet::{Fleet, FleetError};
use crate::nodes::store;
use crate::vms::{ANSWER_WITHIN, Hold, authorize, fleet, owned, refusal};

/// How long an unused ticket holds its room.
pub const TICKET_TTL: Duration = Duration::from_secs(600);

/// How long a running migration's ticket is kept from its last sign of progress.
const RUNNING_TTL: Duration = Duration::from_secs(600);

/// A node's time for a step that saves, checks or restores whole files.
const STEP_TIMEOUT: Duration = Duration::from_secs(180);

/// A node's time for one chunk.
const CHUNK_TIMEOUT: Duration = Duration::from_secs(60);

/// How often progress is published.
const PROGRESS_EVERY: Duration = Duration::from_secs(1);

fn expiry(ttl: Duration) -> Timestamp {
    let ms = i64::try_from(ttl.as_millis()).unwrap_or(i64::MAX);
    Timestamp::from_unix_millis(Timestamp::now().unix_millis().saturating_add(ms))
}

async fn audit(store: &Store, actor: &Actor, action: &str, vm: &VmId, detail: serde_json::Value) {
    if let Err(e) = store
        .append_audit(actor, action, &AuditTarget::Vm(vm.clone()), &detail)
        .await
    {
        tracing::error!(%vm, error = %e, "cannot append to the audit log");
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / f64::from(1u32 << 20))
}

/// Checks that `vm` may migrate now and returns its node.
fn source_of(vm: &VmRecord) -> Result<NodeId, ApiError> {
    if vm.kind != WorkloadKind::Vm {
        return Err(ApiError::Unsupported("containers do not migrate".into()));
    }
    vm.state
        .begin(VmOp::Migrate)
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    vm.node
        .clone()
        .ok_or_else(|| ApiError::Conflict(format!("VM {} was never booted: use /vm/boot", vm.id)))
}

/// Reserves room for `vm` on `node`, or on the first other node with room, under a fresh
/// ticket valid for `ttl`.
async fn reserve(
    state: &AppState,
    vm: &VmRecord,
    source: &NodeId,
    node: Option<&NodeId>,
    ttl: Duration,
) -> Result<(MigrationId, NodeId, Timestamp), ApiError> {
    let store = store(state)?;
    if vm.migration.as_ref().is_some_and(|t| t.is_live()) {
        return Err(ApiError::Conflict(format!(
            "VM {} has a migration ticket already",
            vm.id
        )));
    }
    let ticket = MigrationId::generate();
    let expires_at = expiry(ttl);
    let candidates = match node {
        Some(n) if n == source => {
            return Err(ApiError::Conflict(format!(
                "VM {} is on node {n} already",
                vm.id
            )));
        }
        Some(n) => vec![n.clone()],
        None => scheduler(state)?.targets(&vm.resources, source).await?,
    };
    for n in &candidates {
        match store
            .reserve_migration(&vm.id, n, &ticket, &expires_at)
            .await
        {
            Ok(true) => return Ok((ticket, n.clone(), expires_at)),
            Ok(false) => {}
            Err(StoreError::NotFound { .. }) if node.is_some() => {
                return Err(ApiError::Conflict(format!("there is no node {n}")));
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(ApiError::Conflict(match node {
        Some(n) => format!(
            "node {n} cannot take VM {}: it is not ONLINE or has no room for it",
            vm.id
        ),
        None => format!(
            "no other ONLINE node has room for VM {} ({} vCPUs, {} MiB)",
            vm.id, vm.resources.vcpus, vm.resources.memory_mib
        ),
    }))
}

/// `POST /vm/migrate/from`: room reserved on a target node, and the ticket for
/// `/vm/migrate/to`.
pub(crate) async fn migrate_from(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<MigrateFromRequest>,
) -> Result<Json<MigrationTicket>, ApiError> {
    authorize(&token, &req.owner, Permission::Control)?;
    if req.node.is_some() && !is_admin(&token) {
        return Err(ApiError::Forbidden(
            "only an admin may name the node a VM moves to".into(),
        ));
    }
    let store = store(&state)?;
    let vm = owned(store, &req.build_id, &req.owner).await?;
    let _hold = state.vm_ops.hold(&vm.id)?;
    let source = source_of(&vm)?;
    let (ticket, node, expires_at) =
        reserve(&state, &vm, &source, req.node.as_ref(), TICKET_TTL).await?;
    audit(
        store,
        &actor(&token),
        "vm.migrate.reserve",
        &vm.id,
        json!({ "from": source.as_str(), "to": node.as_str(), "migration": ticket.as_str() }),
    )
    .await;
    Ok(Json(MigrationTicket {
        success: Success,
        migration_id: ticket,
        node,
        expires_at: expires_at.unix_seconds(),
    }))
}

/// `POST /vm/migrate/to`: the VM sent to its ticket's node (or one picked now); answers with
/// state `migrating` while the migration goes on.
pub(crate) async fn migrate_to(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<MigrateToRequest>,
) -> Result<Json<MigrateToResponse>, ApiError> {
    authorize(&token, &req.owner, Permission::Control)?;
    let store = store(&state)?.clone();
    let vm = owned(&store, &req.build_id, &req.owner).await?;
    let hold = state.vm_ops.hold(&vm.id)?;
    let source = source_of(&vm)?;
    let fleet = fleet(&state)?.clone();
    let (ticket, target) = match &req.migration_id {
        Some(id) => {
            let Some(t) = vm.migration.clone().filter(|t| t.id == *id) else {
                return Err(ApiError::NotFound(format!(
                    "VM {} has no migration ticket {id}",
                    vm.id
                )));
            };
            if !store
                .extend_migration(&vm.id, id, &expiry(RUNNING_TTL))
                .await?
            {
                return Err(ApiError::Conflict(format!(
                    "migration ticket {id} expired: ask /vm/migrate/from for a new one"
                )));
            }
            (t.id, t.node)
        }
        None => {
            let (ticket, node, _) = reserve(&state, &vm, &source, None, RUNNING_TTL).await?;
            (ticket, node)
        }
    };
    // Both ends must be there to start: nothing is paused for a node that cannot answer.
    if let Some(gone) = [&source, &target]
        .into_iter()
        .find(|n| !fleet.is_connected(n))
    {
        if req.migration_id.is_none() {
            store.release_migration(&vm.id, &ticket).await?;
        }
        return Err(ApiError::Conflict(format!(
            "node {gone} is offline: try again when it is back"
        )));
    }
    let who = actor(&token);
    store
        .update_vm_state(
            &vm.id,
            VmState::Migrating,
            Some(&format!("migrating to node {target}: starting")),
            None,
        )
        .await?;
    audit(
        &store,
        &who,
        "vm.migrate",
        &vm.id,
        json!({ "from": source.as_str(), "to": target.as_str(), "migration": ticket.as_str() }),
    )
    .await;
    let (first_step, first_step_done) = tokio::sync::oneshot::channel();
    let migration = Migration {
        store,
        fleet,
        actor: who,
        vm: vm.id.clone(),
        spec: vm.spec.clone(),
        before: vm.state,
        source,
        target: target.clone(),
        ticket: ticket.clone(),
        snapshot: SnapshotId::new(format!("migration-{}", ticket.as_str()))
            .map_err(|e| ApiError::Internal(Box::new(e)))?,
    };
    tokio::spawn(migration.run(hold, first_step));
    // The first step (the source's snapshot) usually ends quickly; its refusal (a driver
    // that cannot migrate, a node that is gone) is the answer's.
    if let Ok(Ok(Err(e))) = tokio::time::timeout(ANSWER_WITHIN, first_step_done).await {
        return Err(e);
    }
    Ok(Json(MigrateToResponse {
        success: Success,
        message: format!(
            "migration to node {target} started: its progress and end show in /vm/info and \
             on the WebSocket status stream"
        ),
        migration_id: ticket,
        node: target,
        state: VmState::Migrating,
    }))
}

/// Why a step failed: the reason shown, and the node's refusal when it refused.
struct Failure {
    reason: String,
    reply: Option<VmCommandReply>,
    lost: bool,
}

impl Failure {
    fn new(reason: impl Into<String>) -> Self {
        Failure {
            reason: reason.into(),
            reply: None,
            lost: false,
        }
    }

    fn api_error(&self) -> ApiError {
        match &self.reply {
            Some(reply) => {
                let mut reply = reply.clone();
                reply.message = Some(self.reason.clone());
                refusal(&reply)
            }
            None if self.lost => ApiError::Conflict(self.reason.clone()),
            None => ApiError::Unavailable(self.reason.clone()),
        }
    }
}

/// One migration under way, from the source's export to the source's deletion.
struct Migration {
    store: Store,
    fleet: Fleet,
    actor: Actor,
    vm: VmId,
    /// The VM's stored create spec: the images the target boots it from.
    spec: serde_json::Value,
    before: VmState,
    source: NodeId,
    target: NodeId,
    ticket: MigrationId,
    snapshot: SnapshotId,
}

/// How far a migration got, for its rollback.
#[derive(Default)]
struct Reached {
    exported: bool,
    importing: bool,
    committed: bool,
}

impl Migration {
    /// Runs the migration to its end under `hold`, which goes just before the VM's last
    /// state is shown: whoever sees that state may act on the VM at once.
    async fn run(self, hold: Hold, first_step: tokio::sync::oneshot::Sender<Result<(), ApiError>>) {
        let mut reached = Reached::default();
        let mut first_step = Some(first_step);
        let outcome = self.transfer(&mut reached, &mut first_step).await;
        let failure = match outcome {
            Ok(report) => {
                drop(hold);
                self.finish(&report).await;
                return;
            }
            Err(f) => f,
        };
        tracing::warn!(vm = %self.vm, reason = %failure.reason, "migration failed; rolling back");
        self.rollback(hold, &reached, &failure.reason).await;
        if let Some(tx) = first_step.take() {
            let _ = tx.send(Err(failure.api_error()));
        }
    }

    async fn cmd(
        &self,
        node: &NodeId,
        op: VmOperation,
        timeout: Duration,
    ) -> Result<VmCommandReply, Failure> {
        let name = op.name();
        let cmd = VmCommand {
            request_id: RequestId::generate(),
            vm_id: self.vm.clone(),
            op,
        };
        match self.fleet.vm_command(node, cmd, timeout).await {
            Ok(reply) if reply.success => Ok(reply),
            Ok(reply) => Err(Failure {
                reason: format!(
                    "node {node} refused {name}: {}",
                    reply.message.clone().unwrap_or_default()
                ),
                reply: Some(reply),
                lost: false,
            }),
            Err(e) => Err(Failure {
                lost: matches!(e, FleetError::NotConnected(_)),
                reason: format!("node {node} did not answer {name}: {e}"),
                reply: None,
            }),
        }
    }

    /// Publishes the migration's phase as the VM's state reason, and keeps its ticket.
    async fn progress(&self, phase: &str) -> Result<(), Failure> {
        let reason = format!("migrating to node {}: {phase}", self.target);
        self.store
            .update_vm_state(&self.vm, VmState::Migrating, Some(&reason), None)
            .await
            .map_err(|e| Failure::new(format!("cannot record the migration's progress: {e}")))?;
        let kept = self
            .store
            .extend_migration(&self.vm, &self.ticket, &expiry(RUNNING_TTL))
            .await
            .map_err(|e| Failure::new(format!("cannot keep the migration's ticket: {e}")))?;
        if !kept {
            return Err(Failure::new("the migration's ticket expired"));
        }
        Ok(())
    }

    async fn audit(&self, action: &str, detail: serde_json::Value) {
        audit(&self.store, &self.actor, action, &self.vm, detail).await;
    }

    async fn transfer(
        &self,
        reached: &mut Reached,
        first_step: &mut Option<tokio::sync::oneshot::Sender<Result<(), ApiError>>>,
    ) -> Result<VmReport, Failure> {
        let (source, target) = (self.source.clone(), self.target.clone());
        self.progress("saving the guest's state on the source")
            .await?;
        reached.exported = true;
        let exported = self
            .cmd(
                &source,
                VmOperation::ExportBegin {
                    snapshot_id: self.snapshot.clone(),
                },
                STEP_TIMEOUT,
            )
            .await?;
        let manifest = exported
            .manifest
            .ok_or_else(|| Failure::new(format!("node {source} sent no manifest")))?;
        manifest
            .validate()
            .map_err(|e| Failure::new(format!("node {source} sent a bad manifest: {e}")))?;
        if let Some(tx) = first_step.take() {
            let _ = tx.send(Ok(()));
        }
        self.audit(
            "vm.migrate.export",
            json!({ "node": source.as_str(), "running": manifest.running,
                    "files": manifest.files.len(), "bytes": manifest.data_bytes() }),
        )
        .await;

        let mut spec: CreateVmSpec = serde_json::from_value(self.spec.clone())
            .map_err(|e| Failure::new(format!("the VM's stored spec is unreadable: {e}")))?;
        spec.vcpu_count = manifest.vcpu_count;
        spec.mem_size_mib = manifest.mem_size_mib;
        spec.disk_size_gib = manifest.disk_size_gib;
        spec.boot = false;
        reached.importing = true;
        self.cmd(
            &target,
            VmOperation::ImportBegin {
                spec,
                manifest: manifest.clone(),
            },
            STEP_TIMEOUT,
        )
        .await?;

        let moved = self.copy_files(&manifest).await?;
        self.audit(
            "vm.migrate.copy",
            json!({ "from": source.as_str(), "to": target.as_str(), "bytes": moved }),
        )
        .await;

        self.progress(if manifest.running {
            "restoring the guest on the target"
        } else {
            "defining the VM on the target"
        })
        .await?;
        let committed = self
            .cmd(&target, VmOperation::ImportCommit, STEP_TIMEOUT)
            .await?;
        reached.committed = true;
        let report = committed
            .vm
            .ok_or_else(|| Failure::new(format!("node {target} did not report the VM")))?;
        self.audit(
            "vm.migrate.import",
            json!({ "node": target.as_str(), "state": report.state.as_str() }),
        )
        .await;
        self.move_record().await?;

        // The target has it: only now does the source's copy go.
        if let Err(f) = self.cmd(&source, VmOperation::Delete, STEP_TIMEOUT).await {
            tracing::error!(vm = %self.vm, reason = %f.reason, "the source kept its copy of a migrated VM");
            self.audit(
                "vm.migrate.cleanup_failed",
                json!({ "node": source.as_str(), "reason": f.reason }),
            )
            .await;
        }
        Ok(report)
    }

    /// Shows the VM as the target reported it: the migration's end.
    async fn finish(&self, report: &VmReport) {
        let state = match report.state {
            VmState::Running | VmState::Booting => VmState::Running,
            VmState::Paused => VmState::Paused,
            _ => VmState::Stopped,
        };
        // Leaving `migrating` first: the registry leaves a migrating VM's state alone.
        if let Err(e) = self
            .store
            .update_vm_state(&self.vm, state, None, report.ip_address)
            .await
        {
            tracing::error!(vm = %self.vm, error = %e, "cannot record a migrated VM's state");
        }
        if let Err(e) = self.fleet.record_vm_state(&self.target, report).await {
            tracing::warn!(vm = %self.vm, error = %e, "cannot record the target's report");
        }
        self.audit(
            "vm.migrated",
            json!({ "from": self.source.as_str(), "to": self.target.as_str(),
                    "state": report.state.as_str() }),
        )
        .await;
    }

    /// Every file, chunk by chunk, from the source to the target, the read of a chunk
    /// overlapping the write of the one before. Returns the bytes moved.
    async fn copy_files(&self, manifest: &MigrationManifest) -> Result<u64, Failure> {
        let total = manifest.data_bytes();
        let mut moved = 0u64;
        let mut published = Instant::now();
        self.progress(&format!("copying, 0 of {}", mib(total)))
            .await?;
        for f in &manifest.files {
            if f.size == 0 {
                continue;
            }
            let mut chunk = self.read_chunk(f, 0).await?;
            loop {
                let n = chunk.data.0.len() as u64;
                let next = chunk.next;
                let write = async {
                    if n == 0 {
                        return Ok(());
                    }
                    let op = VmOperation::WriteChunk {
                        file: f.file,
                        offset: chunk.offset,
                        data: chunk.data,
                        sha256: chunk.sha256,
                    };
                    self.cmd(&self.target, op, CHUNK_TIMEOUT).await.map(drop)
                };
                let read = async {
                    if next < f.size {
                        self.read_chunk(f, next).await.map(Some)
                    } else {
                        Ok(None)
                    }
                };
                let (written, read) = tokio::join!(write, read);
                written?;
                moved += n;
                if published.elapsed() >= PROGRESS_EVERY {
                    published = Instant::now();
                    self.progress(&format!("copying, {} of {}", mib(moved), mib(total)))
                        .await?;
                }
                match read? {
                    Some(c) => chunk = c,
                    None => break,
                }
            }
        }
        Ok(moved)
    }

    /// The chunk of `f` the source has at or after `at`, checked to follow from it.
    async fn read_chunk(&self, f: &ManifestFile, at: u64) -> Result<FileChunk, Failure> {
        let op = VmOperation::ReadChunk {
            file: f.file,
            offset: at,
            len: MAX_CHUNK_BYTES.min(f.size - at),
        };
        let read = self.cmd(&self.source, op, CHUNK_TIMEOUT).await?;
        let chunk = read.chunk.ok_or_else(|| {
            Failure::new(format!("node {} sent no chunk of {}", self.source, f.file))
        })?;
        let n = chunk.data.0.len() as u64;
        let sane = chunk.file == f.file
            && chunk.offset >= at
            && chunk.next > at
            && chunk.next <= f.size
            && chunk.offset.saturating_add(n) <= chunk.next
            && n <= MAX_CHUNK_BYTES;
        if !sane {
            return Err(Failure::new(format!(
                "node {} sent a chunk of {} that does not follow from offset {at}",
                self.source, f.file
            )));
        }
        Ok(chunk)
    }

    /// The store follows: the VM placed on the target (its ticket's room), the source's
    /// rental ended. The VM stays `migrating` until the source's copy is gone; a running
    /// guest's new rental opens when its state is recorded.
    async fn move_record(&self) -> Result<(), Failure> {
        let store_failed = |e: StoreError| Failure::new(format!("cannot record the move: {e}"));
        let now = self.store.get_vm(&self.vm).await.map_err(store_failed)?;
        self.store
            .end_open_rental(&now)
            .await
            .map_err(store_failed)?;
        self.store
            .complete_migration(&self.vm, &self.ticket)
            .await
            .map_err(store_failed)?;
        let reason = format!(
            "migrating to node {}: removing the copy on node {}",
            self.target, self.source
        );
        self.store
            .update_vm_state(&self.vm, VmState::Migrating, Some(&reason), None)
            .await
            .map_err(store_failed)?;
        Ok(())
    }

    /// Puts everything back as it was before the migration, with `reason` shown.
    async fn rollback(&self, hold: Hold, reached: &Reached, reason: &str) {
        let target = &self.target;
        if reached.committed {
            if let Err(f) = self.cmd(target, VmOperation::Delete, STEP_TIMEOUT).await {
                tracing::error!(vm = %self.vm, reason = %f.reason, "the target kept a copy of a VM whose migration failed");
            }
        } else if reached.importing
            && let Err(f) = self
                .cmd(target, VmOperation::ImportAbort, STEP_TIMEOUT)
                .await
        {
            tracing::error!(vm = %self.vm, reason = %f.reason, "the target kept a partial import");
        }
        if let Err(e) = self.store.release_migration(&self.vm, &self.ticket).await {
            tracing::error!(vm = %self.vm, error = %e, "cannot release a migration's reservation");
        }
        let mut state = self.before;
        let mut message = format!("migration to node {target} failed: {reason}");
        if reached.exported {
            let undo = VmOperation::ExportAbort {
                snapshot_id: self.snapshot.clone(),
            };
            match self.cmd(&self.source, undo, STEP_TIMEOUT).await {
                Ok(reply) => {
                    if let Some(r) = reply.vm {
                        state = r.state;
                    }
                }
                Err(f) if matches!(&f.reply, Some(r) if r.code == Some(VmErrorCode::NotFound)) => {}
                Err(f) => {
                    message.push_str(&format!(
                        "; the source could not be told to resume it ({}): its node's next report \
                         says how it is",
                        f.reason
                    ));
                }
            }
        }
        drop(hold);
        if let Err(e) = self
            .store
            .update_vm_state(&self.vm, state, Some(&message), None)
            .await
        {
            tracing::error!(vm = %self.vm, error = %e, "cannot record a failed migration");
        }
        self.audit(
            "vm.migrate.failed",
            json!({ "from": self.source.as_str(), "to": target.as_str(), "reason": reason }),
        )
        .await;
    }
}
