//! [`Vmm`]: the [`Hypervisor`] of one backend. It owns the instance table and the files of
//! each VM, checks the state machine before every operation, serialises operations on one VM,
//! turns a guest's death into `error` with its reason, and leaves the backend only the
//! protocol of its hypervisor.
//!
//! Layout under the base directory: `<vm id>/root.disk`, `<vm id>/disk<N>.raw`,
//! `<vm id>/snapshots/<snapshot id>/`, and whatever sockets the backend puts there; a VM being
//! received from another node lands in `.import-<vm id>/` (same layout) until it is defined (or,
//! when the process receiving it dies, until the next process's `recover` removes it).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use async_trait::async_trait;
use tokio::sync::broadcast;
use vmfleet_core::{
    Device, DeviceId, ImageName, SharePath, ShareTag, SnapshotId, VmId, VmOp, VmResources, VmState,
};
use vmfleet_wire::fleet::{
    Base64, FileChunk, MAX_CHUNK_BYTES, ManifestFile, MigrationManifest, Sha256, VmFile,
};

use crate::HypervisorError;
use crate::backend::{
    AttachedDevice, Backend, BackendKind, DeviceSpec, DiskSpec, Guest, GuestExit, GuestMetrics,
    Launch, NetAttachment,
};
use crate::backend::{SnapshotPaths, VmSpec};
use crate::catalog::{CatalogError, ImageCatalog};
use crate::console::Console;
use crate::devices::HostDevices;
use crate::hypervisor::{CreateVm, Hypervisor, SnapshotInfo, VmStatus};
use crate::net::{NetConfig, mac_for, tap_for};

/// The kernel command line when the request gives none.
pub const DEFAULT_BOOT_ARGS: &str = "console=ttyS0 reboot=k panic=1 root=/dev/vda rw";

/// How long a graceful stop waits for the guest after the power button, by default.
pub const DEFAULT_STOP_TIMEOUT: Duration = Duration::from_secs(30);

/// How often a graceful stop presses the power button again while the guest runs.
const POWER_BUTTON_REPEAT: Duration = Duration::from_secs(3);

pub struct Vmm {
    backend: Arc<dyn Backend>,
    catalog: ImageCatalog,
    base: PathBuf,
    table: Mutex<HashMap<VmId, Arc<Instance>>>,
    events: broadcast::Sender<VmStatus>,
    host_mem_mib: u64,
    /// Guest networking: a TAP on a bridge and an address from the pool for every VM.
    net: Option<Mutex<NetConfig>>,
    /// What of the host VMs may be given: shared directories, PCI passthrough.
    host: HostDevices,
    /// VMs being received from another node, not defined yet.
    imports: Mutex<HashMap<VmId, Import>>,
    /// The most snapshots a VM may have here.
    snapshot_limit: usize,
}

/// How many snapshots a VM may have on its node unless the node says otherwise: each holds
/// the guest's memory and copies of its disks.
pub const DEFAULT_SNAPSHOT_LIMIT: usize = 8;

/// Disk space a snapshot must leave free on its node, so that one tenant's snapshots cannot
/// fill the disk the other VMs write to.
const SNAPSHOT_DISK_RESERVE: u64 = 512 << 20;

/// Whether a snapshot that takes about `needed` bytes fits in `free` bytes, keeping
/// [`SNAPSHOT_DISK_RESERVE`] free.
fn snapshot_room(id: &VmId, needed: u64, free: u64) -> Result<(), HypervisorError> {
    if needed.saturating_add(SNAPSHOT_DISK_RESERVE) <= free {
        return Ok(());
    }
    Err(HypervisorError::InsufficientResources(format!(
        "disk space for a snapshot of VM {id}: it takes about {} MiB, the node has {} MiB free \
         and keeps {} MiB in reserve",
        needed >> 20,
        free >> 20,
        SNAPSHOT_DISK_RESERVE >> 20
    )))
}

/// The bytes free to unprivileged users on the file system of `path`.
fn free_bytes(path: &Path) -> Result<u64, HypervisorError> {
    let st = rustix::fs::statvfs(path)
        .map_err(|e| HypervisorError::io(path)(std::io::Error::from(e)))?;
    Ok(st.f_bavail.saturating_mul(st.f_frsize))
}

/// The disk space `path` takes (allocated blocks); 0 when it cannot be read.
fn file_allocated(path: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(path).map_or(0, |m| m.blocks().saturating_mul(512))
}

/// A VM being received: where its files land until it is defined.
#[derive(Clone)]
struct Import {
    req: CreateVm,
    manifest: MigrationManifest,
    dir: PathBuf,
}

/// A VM leaving this node: its snapshot, and whether it ran before it was paused for it.
#[derive(Debug, Clone)]
struct Export {
    snap: SnapshotId,
    was_running: bool,
    /// A guest existed: the snapshot's files move too.
    with_snapshot: bool,
}

/// The snapshot directory an imported VM is restored from (removed once it runs).
const INCOMING: &str = "incoming";

/// Where `file` of a VM lands under a directory laid out like a VM's (`root.disk`,
/// `disk<N>.raw`, `snapshots/incoming/`): the one mapping from a wire name to a path, so a
/// message never names a path.
fn import_path(dir: &Path, file: VmFile) -> PathBuf {
    let snap = SnapshotPaths {
        dir: dir.join("snapshots").join(INCOMING),
    };
    match file {
        VmFile::Root => dir.join("root.disk"),
        VmFile::Disk(n) => dir.join(format!("disk{n}.raw")),
        VmFile::SnapshotState => snap.state(),
        VmFile::SnapshotMemory => snap.memory(),
    }
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, HypervisorError> + Send + 'static,
) -> Result<T, HypervisorError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| HypervisorError::GuestFailed(format!("a file task failed: {e}")))?
}

struct Instance {
    id: VmId,
    /// Held for the whole of an operation: one operation per VM at a time.
    op: Arc<tokio::sync::Mutex<()>>,
    st: Mutex<InstState>,
}

struct InstState {
    spec: VmSpec,
    state: VmState,
    reason: Option<String>,
    guest: Option<Arc<dyn Guest>>,
    /// Counts launches, so that the exit of an old process cannot touch a new one.
    generation: u64,
    /// Set while an operation ends the process on purpose: its exit is not a failure.
    stopping: bool,
    last_change: SystemTime,
    booted_at: Option<SystemTime>,
    /// The address IPAM gave the VM (its TAP is named after it).
    ip: Option<std::net::Ipv4Addr>,
    labels: std::collections::BTreeMap<String, String>,
    /// The number in the next device id (`dev<N>`): ids are never reused.
    next_device: u32,
    /// Set while the VM is being migrated away.
    export: Option<Export>,
}

/// What `<vm dir>/vm.json` keeps of a VM, so that a restarted agent finds it again.
#[derive(serde::Serialize, serde::Deserialize)]
struct Persisted {
    spec: VmSpec,
    state: VmState,
    reason: Option<String>,
    ip: Option<std::net::Ipv4Addr>,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
    #[serde(default)]
    next_device: u32,
}

/// The file of a VM's directory that describes it.
const VM_FILE: &str = "vm.json";

fn host_mem_mib() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find(|l| l.starts_with("MemTotal:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|kib| kib.parse::<u64>().ok())
        })
        .map_or(u64::MAX, |kib| kib / 1024)
}

impl Vmm {
    /// A VMM running `backend`, booting images from `catalog`, keeping VM files under `base`.
    pub fn new(
        backend: Arc<dyn Backend>,
        catalog: ImageCatalog,
        base: impl Into<PathBuf>,
    ) -> Result<Self, HypervisorError> {
        let base = base.into();
        std::fs::create_dir_all(&base).map_err(HypervisorError::io(&base))?;
        let (events, _) = broadcast::channel(1024);
        Ok(Vmm {
            backend,
            catalog,
            base,
            table: Mutex::new(HashMap::new()),
            events,
            host_mem_mib: host_mem_mib(),
            net: None,
            host: HostDevices::default(),
            imports: Mutex::new(HashMap::new()),
            snapshot_limit: DEFAULT_SNAPSHOT_LIMIT,
        })
    }

    /// Keeps at most `limit` snapshots per VM ([`DEFAULT_SNAPSHOT_LIMIT`] otherwise).
    pub fn with_snapshot_limit(mut self, limit: usize) -> Self {
        self.snapshot_limit = limit;
        self
    }

    /// Lets VMs have what `host` offers: directories under its share root
    /// ([`Hypervisor::add_share`]) and its PCI devices for passthrough.
    pub fn with_host_devices(mut self, host: HostDevices) -> Self {
        self.host = host;
        self
    }

    /// Gives every VM created from now on a TAP device on `net.bridge` (created if missing)
    /// and an address from `net.pool`, passed to the guest as `vmfleet.ip=` and
    /// `vmfleet.gw=` on its kernel command line.
    pub fn with_network(mut self, net: NetConfig) -> Result<Self, HypervisorError> {
        net.ensure_bridge()?;
        self.net = Some(Mutex::new(net));
        Ok(self)
    }

    fn net(&self) -> Option<std::sync::MutexGuard<'_, NetConfig>> {
        self.net
            .as_ref()
            .map(|n| n.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Takes an address and makes the TAP device for a new VM.
    fn attach_network(
        &self,
    ) -> Result<Option<(std::net::Ipv4Addr, NetAttachment, String)>, HypervisorError> {
        let Some(mut net) = self.net() else {
            return Ok(None);
        };
        let ip = net
            .pool
            .allocate()
            .map_err(|e| HypervisorError::InsufficientResources(e.to_string()))?;
        let tap = tap_for(ip);
        if let Err(e) = net.create_tap(&tap) {
            net.pool.release(ip);
            return Err(e);
        }
        let args = format!(
            " vmfleet.ip={ip}/{} vmfleet.gw={}",
            net.pool.prefix(),
            net.pool.gateway()
        );
        Ok(Some((
            ip,
            NetAttachment {
                tap,
                mac: mac_for(ip),
            },
            args,
        )))
    }

    /// Gives back a VM's address and removes its TAP device.
    fn detach_network(&self, ip: Option<std::net::Ipv4Addr>) {
        if let (Some(ip), Some(mut net)) = (ip, self.net()) {
            if let Err(e) = net.delete_tap(&tap_for(ip)) {
                tracing::warn!(%ip, error = %e, "cannot remove a VM's TAP device");
            }
            net.pool.release(ip);
        }
    }

    pub fn catalog(&self) -> &ImageCatalog {
        &self.catalog
    }

    /// The directory of `id`'s new snapshot `snap`, created; refused when it exists.
    fn new_snapshot_dir(
        &self,
        id: &VmId,
        snap: &SnapshotId,
    ) -> Result<SnapshotPaths, HypervisorError> {
        let paths = SnapshotPaths {
            dir: self.dir(id).join("snapshots").join(snap.as_str()),
        };
        if paths.dir.exists() {
            return Err(HypervisorError::InvalidSpec(format!(
                "VM {id} already has a snapshot {snap}"
            )));
        }
        std::fs::create_dir_all(&paths.dir).map_err(HypervisorError::io(&paths.dir))?;
        Ok(paths)
    }

    fn dir(&self, id: &VmId) -> PathBuf {
        self.base.join(id.as_str())
    }

    fn table(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Arc<Instance>>> {
        self.table.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn get(&self, id: &VmId) -> Result<Arc<Instance>, HypervisorError> {
        self.table()
            .get(id)
            .cloned()
            .ok_or_else(|| HypervisorError::NotFound(id.clone()))
    }

    /// The instance with its operation lock, or `Busy` when another operation holds it.
    fn lock(
        &self,
        id: &VmId,
    ) -> Result<(Arc<Instance>, tokio::sync::OwnedMutexGuard<()>), HypervisorError> {
        let inst = self.get(id)?;
        let guard = inst
            .op
            .clone()
            .try_lock_owned()
            .map_err(|_| HypervisorError::Busy(id.clone()))?;
        Ok((inst, guard))
    }

    fn status_of(&self, inst: &Instance) -> VmStatus {
        let st = inst.st();
        VmStatus {
            id: inst.id.clone(),
            backend: self.backend.kind(),
            state: st.state,
            reason: st.reason.clone(),
            resources: st.spec.resources,
            pid: st.guest.as_ref().map(|g| g.pid()),
            last_state_change: st.last_change,
            booted_at: st.booted_at,
            ip_address: st.ip.map(std::net::IpAddr::V4),
            labels: st.labels.clone(),
            devices: st.spec.devices.iter().map(AttachedDevice::view).collect(),
        }
    }

    fn set_state(&self, inst: &Instance, state: VmState, reason: Option<String>) -> VmStatus {
        {
            let mut st = inst.st();
            if st.state != state || st.reason != reason {
                st.last_change = SystemTime::now();
            }
            st.state = state;
            st.reason = reason;
        }
        if state != VmState::Deleted {
            persist(&self.dir(&inst.id), &inst.st());
        }
        let status = self.status_of(inst);
        let _ = self.events.send(status.clone());
        status
    }

    fn resolve(&self, name: &ImageName) -> Result<PathBuf, HypervisorError> {
        Ok(self.catalog.resolve(name)?)
    }

    /// The kernel and initrd a VM boots, from the catalog.
    fn boot_images(&self, req: &CreateVm) -> Result<(PathBuf, Option<PathBuf>), HypervisorError> {
        let kernel = self.resolve(&req.kernel)?;
        let initrd = match &req.initrd {
            Some(name) => Some(self.resolve(name)?),
            None => {
                let companion = ImageName::new(format!("{}.initrd", req.kernel));
                match companion.map(|n| self.catalog.resolve(&n)) {
                    Ok(Ok(path)) => Some(path),
                    Ok(Err(CatalogError::NotFound(_))) | Err(_) => None,
                    Ok(Err(e)) => return Err(e.into()),
                }
            }
        };
        Ok((kernel, initrd))
    }

    fn running_guest(&self, inst: &Instance) -> Result<Arc<dyn Guest>, HypervisorError> {
        inst.st()
            .guest
            .clone()
            .ok_or_else(|| HypervisorError::NotRunning(inst.id.clone()))
    }

    /// Launches the guest process and watches it until it ends.
    async fn launch(&self, inst: &Arc<Instance>, how: Launch) -> Result<VmStatus, HypervisorError> {
        let spec = inst.st().spec.clone();
        let dir = self.dir(&inst.id);
        match self.backend.launch(&spec, &dir, how).await {
            Ok(guest) => {
                let guest: Arc<dyn Guest> = Arc::from(guest);
                let generation = {
                    let mut st = inst.st();
                    st.generation += 1;
                    st.guest = Some(guest.clone());
                    st.stopping = false;
                    st.booted_at = Some(SystemTime::now());
                    st.generation
                };
                self.watch_exit(inst.clone(), guest, generation);
                Ok(self.set_state(inst, VmState::Running, None))
            }
            Err(e) => {
                // A guest that started and failed is in error, with the reason.
                self.set_state(inst, VmState::Error, Some(e.to_string()));
                Err(e)
            }
        }
    }

    fn watch_exit(&self, inst: Arc<Instance>, guest: Arc<dyn Guest>, generation: u64) {
        let events = self.events.clone();
        let dir = self.dir(&inst.id);
        let backend = self.backend.kind();
        let mut exited = guest.exited();
        drop(guest);
        tokio::spawn(async move {
            let Ok(exit) = exited.wait_for(Option::is_some).await.map(|e| e.clone()) else {
                return;
            };
            let status = {
                let mut st = inst.st();
                if st.generation != generation {
                    return;
                }
                st.guest = None;
                st.booted_at = None;
                let (state, reason) = match exit {
                    _ if st.stopping => (VmState::Stopped, None),
                    Some(GuestExit::Crashed(reason)) => (VmState::Error, Some(reason)),
                    _ => (VmState::Stopped, None),
                };
                if st.state != VmState::Deleted {
                    st.state = state;
                    st.reason = reason;
                    st.last_change = SystemTime::now();
                    persist(&dir, &st);
                }
                VmStatus {
                    id: inst.id.clone(),
                    backend,
                    state: st.state,
                    reason: st.reason.clone(),
                    resources: st.spec.resources,
                    pid: None,
                    last_state_change: st.last_change,
                    booted_at: None,
                    ip_address: st.ip.map(std::net::IpAddr::V4),
                    labels: st.labels.clone(),
                    devices: st.spec.devices.iter().map(AttachedDevice::view).collect(),
                }
            };
            tracing::info!(vm = %status.id, state = %status.state, "guest process ended");
            let _ = events.send(status);
        });
    }

    /// Ends the guest process on purpose and waits for it.
    async fn end_process(&self, inst: &Instance) -> Result<(), HypervisorError> {
        let guest = {
            let mut st = inst.st();
            st.stopping = true;
            st.guest.clone()
        };
        if let Some(g) = guest {
            g.kill().await?;
            let mut exited = g.exited();
            let _ = exited.wait_for(Option::is_some).await;
        }
        let mut st = inst.st();
        st.guest = None;
        st.booted_at = None;
        Ok(())
    }

    /// The VM's snapshots that are taken (their guest state written), unsorted: id,
    /// directory and when it was taken. A migration's snapshot is the migration's, not listed.
    fn taken_snapshots(
        &self,
        id: &VmId,
    ) -> Result<Vec<(SnapshotId, PathBuf, SystemTime)>, HypervisorError> {
        let inst = self.get(id)?;
        let exporting = inst.st().export.as_ref().map(|e| e.snap.clone());
        let root = self.dir(id).join("snapshots");
        let entries = match std::fs::read_dir(&root) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
            Err(e) => return Err(HypervisorError::io(&root)(e)),
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let Some(snap) = entry
                .file_name()
                .to_str()
                .and_then(|name| SnapshotId::new(name).ok())
            else {
                continue;
            };
            if exporting.as_ref() == Some(&snap) {
                continue;
            }
            let paths = SnapshotPaths { dir: entry.path() };
            // Its guest state is written first: without it the snapshot is being taken (or
            // its taking failed and is being cleaned up).
            let Ok(state) =
                std::fs::metadata(paths.state()).or_else(|_| std::fs::metadata(paths.memory()))
            else {
                continue;
            };
            found.push((
                snap,
                paths.dir,
                state.modified().unwrap_or(SystemTime::UNIX_EPOCH),
            ));
        }
        Ok(found)
    }

    /// A disk copied, sparse: holes and zero runs take no space in the copy.
    fn copy(from: &Path, to: &Path) -> Result<(), HypervisorError> {
        crate::transfer::sparse_copy(from, to).map(drop)
    }
}

/// Writes the VM's description next to its disks (atomically: a crash leaves the old one).
fn persist(dir: &Path, st: &InstState) {
    let p = Persisted {
        spec: st.spec.clone(),
        state: st.state,
        reason: st.reason.clone(),
        ip: st.ip,
        labels: st.labels.clone(),
        next_device: st.next_device,
    };
    let Ok(json) = serde_json::to_vec_pretty(&p) else {
        return;
    };
    let tmp = dir.join(format!("{VM_FILE}.tmp"));
    let done = std::fs::write(&tmp, json).and_then(|()| std::fs::rename(&tmp, dir.join(VM_FILE)));
    if let Err(e) = done {
        tracing::error!(dir = %dir.display(), error = %e, "cannot record a VM's state");
    }
}

/// The disk space the files directly in `dir` take (allocated blocks, so that a sparse disk
/// copy counts what it holds); what cannot be read counts nothing.
fn allocated_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|e| e.file_type().is_ok_and(|t| t.is_file()))
        .map(|e| file_allocated(&e.path()))
        .sum()
}

impl Vmm {
    /// Finds the VMs a previous process left under the base directory: a guest whose process
    /// still runs is re-adopted (console, metrics and operations work again, no second boot);
    /// one whose process died meanwhile is in `error`, saying so. Files of a migration that a
    /// previous process was receiving are removed: the import died with that process (the
    /// control plane rolled the migration back when the node went away), so nothing would
    /// ever define or delete them.
    pub async fn recover(&self) -> Vec<VmStatus> {
        let Ok(entries) = std::fs::read_dir(&self.base) else {
            return Vec::new();
        };
        let mut found = Vec::new();
        for entry in entries.flatten() {
            let dir = entry.path();
            if let Some(id) = entry
                .file_name()
                .to_str()
                .and_then(|name| name.strip_prefix(".import-"))
                .and_then(|id| VmId::new(id).ok())
            {
                if !self.imports().contains_key(&id) {
                    match std::fs::remove_dir_all(&dir) {
                        Ok(()) => {
                            tracing::info!(vm = %id, "removed the files of a migration a previous process did not finish receiving")
                        }
                        Err(e) => {
                            tracing::warn!(dir = %dir.display(), error = %e, "could not remove an unfinished migration's files")
                        }
                    }
                }
                continue;
            }
            let Ok(text) = std::fs::read(dir.join(VM_FILE)) else {
                continue;
            };
            let p: Persisted = match serde_json::from_slice(&text) {
                Ok(p) => p,
                Err(e) => {
                    tracing::error!(dir = %dir.display(), error = %e, "a VM's description is unreadable; leaving it alone");
                    continue;
                }
            };
            let id = p.spec.id.clone();
            if self.table().contains_key(&id) {
                continue;
            }
            if let (Some(ip), Some(mut net)) = (p.ip, self.net()) {
                let _ = net.pool.claim(ip);
            }
            let inst = Arc::new(Instance {
                id: id.clone(),
                op: Arc::default(),
                st: Mutex::new(InstState {
                    spec: p.spec.clone(),
                    state: p.state,
                    reason: p.reason.clone(),
                    guest: None,
                    generation: 0,
                    stopping: false,
                    last_change: SystemTime::now(),
                    booted_at: None,
                    ip: p.ip,
                    labels: p.labels,
                    next_device: p.next_device,
                    export: None,
                }),
            });
            self.table().insert(id.clone(), inst.clone());
            let status = if p.state.has_process() {
                match self.backend.adopt(&p.spec, &dir).await {
                    Ok(guest) => {
                        let guest: Arc<dyn Guest> = Arc::from(guest);
                        let generation = {
                            let mut st = inst.st();
                            st.generation += 1;
                            st.guest = Some(guest.clone());
                            st.booted_at = Some(SystemTime::now());
                            st.generation
                        };
                        self.watch_exit(inst.clone(), guest, generation);
                        // Booting or stopping when the owner died: the guest runs now.
                        let state = if p.state == VmState::Paused {
                            VmState::Paused
                        } else {
                            VmState::Running
                        };
                        tracing::info!(vm = %id, "re-adopted a running guest");
                        self.set_state(&inst, state, None)
                    }
                    Err(e) => {
                        tracing::warn!(vm = %id, error = %e, "a guest died while vmfleet was down");
                        self.set_state(
                            &inst,
                            VmState::Error,
                            Some(format!("the guest stopped while vmfleet was down: {e}")),
                        )
                    }
                }
            } else {
                self.status_of(&inst)
            };
            found.push(status);
        }
        found.sort_by(|a, b| a.id.cmp(&b.id));
        found
    }
}

impl Vmm {
    /// Boot or start: a launch of the guest process from its disks.
    async fn cold_boot(&self, id: &VmId, op: VmOp) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(op)?;
        // A host that cannot run the backend runs nothing: the VM stays as it was; nor does
        // a VM with a device the node no longer offers.
        self.backend.preflight().await?;
        self.host.admit(&inst.st().spec)?;
        self.set_state(&inst, t.during, None);
        self.launch(&inst, Launch::Boot).await
    }

    /// An operation on the running guest process that leaves it running: pause, resume,
    /// reboot, power button. The power button returns the in-flight state (`stopping`): the
    /// guest decides when it is off.
    async fn drive(&self, id: &VmId, op: VmOp) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(op)?;
        let guest = self.running_guest(&inst)?;
        let state = match op {
            VmOp::Pause => guest.pause().await.map(|()| t.after),
            VmOp::Resume => guest.resume().await.map(|()| t.after),
            VmOp::Reboot => {
                guest.reboot().await?;
                inst.st().booted_at = Some(SystemTime::now());
                Ok(t.after)
            }
            VmOp::PowerButton => guest.power_button().await.map(|()| t.during),
            other => Err(HypervisorError::Unsupported {
                backend: self.backend.kind().as_str(),
                op: other.as_str(),
            }),
        }?;
        Ok(self.set_state(&inst, state, None))
    }
}

impl Vmm {
    /// Adds `device` to the stopped VM `id`'s spec, once the backend said it can attach it,
    /// and returns its new id. Cold-plug only: a running guest is refused.
    fn attach(&self, id: &VmId, device: DeviceSpec) -> Result<DeviceId, HypervisorError> {
        let inst = self.get(id)?;
        let t = inst.begin(VmOp::ChangeDevices)?;
        self.backend.check_device(&device)?;
        // Neither microvm's virtio-mmio nor Firecracker hot-plugs a device.
        let state = inst.st().state;
        if inst.st().guest.is_some() {
            return Err(HypervisorError::ColdPlugOnly {
                vm: id.clone(),
                state,
                backend: self.backend.kind().as_str(),
            });
        }
        // One entropy device, one share per tag, one VM per passed-through PCI device.
        let clash = |d: &AttachedDevice| match (&d.device, &device) {
            (DeviceSpec::Rng, DeviceSpec::Rng) => true,
            (DeviceSpec::Share { tag: a, .. }, DeviceSpec::Share { tag: b, .. }) => a == b,
            (
                DeviceSpec::PciPassthrough { address: a },
                DeviceSpec::PciPassthrough { address: b },
            ) => a == b,
            _ => false,
        };
        if let Some(d) = inst.st().spec.devices.iter().find(|d| clash(d)) {
            return Err(HypervisorError::DeviceRefused(format!(
                "VM {id} already has {} ({})",
                device.describe(),
                d.id
            )));
        }
        if matches!(device, DeviceSpec::PciPassthrough { .. }) {
            let others: Vec<Arc<Instance>> = self
                .table()
                .iter()
                .filter(|(other, _)| *other != id)
                .map(|(_, i)| i.clone())
                .collect();
            if others.iter().any(|i| i.st().spec.devices.iter().any(clash)) {
                return Err(HypervisorError::DeviceRefused(format!(
                    "{} is already given to another VM of this node",
                    device.describe()
                )));
            }
        }
        let dev_id = {
            let mut st = inst.st();
            let dev_id = DeviceId::nth(st.next_device);
            st.next_device += 1;
            st.spec.devices.push(AttachedDevice {
                id: dev_id.clone(),
                device,
            });
            dev_id
        };
        self.set_state(&inst, t.after, None);
        Ok(dev_id)
    }

    fn migratable(&self) -> Result<(), HypervisorError> {
        match self.backend.kind() {
            BackendKind::Qemu => Ok(()),
            // Firecracker's snapshots would move too, but nothing here has tested it.
            other => Err(HypervisorError::Unsupported {
                backend: other.as_str(),
                op: "migrate a VM (only QEMU VMs migrate)",
            }),
        }
    }

    /// Where a VM being received keeps its files until it is defined. A VM id never starts
    /// with a dot, so this is never a VM's directory, and `recover` skips it (no `vm.json`).
    fn import_dir(&self, id: &VmId) -> PathBuf {
        self.base.join(format!(".import-{id}"))
    }

    fn imports(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Import>> {
        self.imports.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The path of `file` of a VM being exported.
    fn export_path(&self, inst: &Instance, file: VmFile) -> Result<PathBuf, HypervisorError> {
        let st = inst.st();
        let Some(export) = &st.export else {
            return Err(HypervisorError::InvalidSpec(format!(
                "VM {} is not being migrated",
                inst.id
            )));
        };
        let snap = SnapshotPaths {
            dir: self
                .dir(&inst.id)
                .join("snapshots")
                .join(export.snap.as_str()),
        };
        let path = match file {
            VmFile::Root => Some(st.spec.root_disk.clone()),
            VmFile::Disk(n) => st
                .spec
                .extra_disks
                .get(usize::from(n))
                .map(|d| d.path.clone()),
            VmFile::SnapshotState if export.with_snapshot => Some(snap.state()),
            VmFile::SnapshotMemory if export.with_snapshot => Some(snap.memory()),
            VmFile::SnapshotState | VmFile::SnapshotMemory => None,
        };
        path.ok_or_else(|| {
            HypervisorError::InvalidSpec(format!("VM {} has no file {file}", inst.id))
        })
    }

    /// The manifest of a VM being exported: its size, disks and files with their checksums.
    async fn manifest(&self, inst: &Instance) -> Result<MigrationManifest, HypervisorError> {
        let (spec, with_snapshot) = {
            let st = inst.st();
            let with = st.export.as_ref().is_some_and(|e| e.with_snapshot);
            (st.spec.clone(), with)
        };
        let mut wanted = vec![VmFile::Root];
        for n in 0..spec.extra_disks.len() {
            let n = u16::try_from(n).map_err(|_| {
                HypervisorError::InvalidSpec("too many disks to migrate".to_owned())
            })?;
            wanted.push(VmFile::Disk(n));
        }
        if with_snapshot {
            wanted.push(VmFile::SnapshotState);
            wanted.push(VmFile::SnapshotMemory);
        }
        let mut files = Vec::new();
        for file in wanted {
            let path = self.export_path(inst, file)?;
            if file == VmFile::SnapshotMemory && !path.exists() {
                // QEMU keeps memory in the state stream.
                continue;
            }
            let d = blocking(move || crate::transfer::describe(&path)).await?;
            files.push(ManifestFile {
                file,
                size: d.size,
                data_bytes: d.data_bytes,
                sha256: d.sha256,
            });
        }
        let manifest = MigrationManifest {
            vcpu_count: spec.resources.vcpu_count,
            mem_size_mib: spec.resources.mem_size_mib,
            disk_size_gib: spec.resources.disk_size,
            extra_disks: spec
                .extra_disks
                .iter()
                .map(|d| vmfleet_wire::fleet::ExtraDisk {
                    read_only: d.read_only,
                })
                .collect(),
            running: with_snapshot,
            files,
        };
        manifest
            .validate()
            .map_err(|e| HypervisorError::InvalidSpec(e.to_string()))?;
        Ok(manifest)
    }
}

impl Instance {
    fn st(&self) -> std::sync::MutexGuard<'_, InstState> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Checks the state machine for `op` and shows the in-flight state.
    fn begin(&self, op: VmOp) -> Result<vmfleet_core::Transition, HypervisorError> {
        let state = self.st().state;
        Ok(state.begin(op)?)
    }
}

#[async_trait]
impl Hypervisor for Vmm {
    fn backend(&self) -> BackendKind {
        self.backend.kind()
    }

    async fn create(&self, req: CreateVm) -> Result<VmStatus, HypervisorError> {
        req.resources.validate()?;
        if req.resources.mem_size_mib > self.host_mem_mib {
            return Err(HypervisorError::InsufficientResources(format!(
                "{} MiB of memory: the host has {} MiB",
                req.resources.mem_size_mib, self.host_mem_mib
            )));
        }
        let rootfs = self.resolve(&req.rootfs)?;
        let (kernel, initrd) = self.boot_images(&req)?;
        let dir = self.dir(&req.id);
        let inst = {
            let mut table = self.table();
            if table.contains_key(&req.id) || dir.exists() {
                return Err(HypervisorError::AlreadyExists(req.id.clone()));
            }
            std::fs::create_dir_all(&dir).map_err(HypervisorError::io(&dir))?;
            let network = match self.attach_network() {
                Ok(n) => n,
                Err(e) => {
                    let _ = std::fs::remove_dir_all(&dir);
                    return Err(e);
                }
            };
            let mut boot_args = req
                .boot_args
                .clone()
                .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_owned());
            if let Some((_, _, args)) = &network {
                boot_args.push_str(args);
            }
            let inst = Arc::new(Instance {
                id: req.id.clone(),
                op: Arc::default(),
                st: Mutex::new(InstState {
                    spec: VmSpec {
                        id: req.id.clone(),
                        resources: req.resources,
                        kernel,
                        initrd,
                        root_disk: dir.join("root.disk"),
                        extra_disks: Vec::new(),
                        boot_args,
                        network: network.as_ref().map(|(_, n, _)| n.clone()),
                        devices: Vec::new(),
                    },
                    state: VmState::Created,
                    reason: None,
                    guest: None,
                    generation: 0,
                    stopping: false,
                    last_change: SystemTime::now(),
                    booted_at: None,
                    ip: network.map(|(ip, _, _)| ip),
                    labels: req.labels.clone(),
                    next_device: 0,
                    export: None,
                }),
            });
            table.insert(req.id.clone(), inst.clone());
            inst
        };
        let root = dir.join("root.disk");
        let prepared = Self::copy(&rootfs, &root).and_then(|()| {
            // Give the disk its requested size (sparse); the filesystem inside keeps its own.
            let want = req.resources.disk_size << 30;
            let f = std::fs::OpenOptions::new()
                .write(true)
                .open(&root)
                .map_err(HypervisorError::io(&root))?;
            let have = f.metadata().map_err(HypervisorError::io(&root))?.len();
            if want > have {
                f.set_len(want).map_err(HypervisorError::io(&root))?;
            }
            Ok(())
        });
        if let Err(e) = prepared {
            self.detach_network(inst.st().ip);
            self.table().remove(&req.id);
            let _ = std::fs::remove_dir_all(&dir);
            return Err(e);
        }
        Ok(self.set_state(&inst, VmState::Created, None))
    }

    async fn boot(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        self.cold_boot(id, VmOp::Boot).await
    }

    async fn start(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        self.cold_boot(id, VmOp::Start).await
    }

    async fn stop(&self, id: &VmId, timeout: Duration) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(VmOp::Stop)?;
        let was = inst.st().state;
        self.set_state(&inst, t.during, None);
        let guest = self.running_guest(&inst)?;
        inst.st().stopping = true;
        if was == VmState::Paused {
            // A paused guest cannot see the power button.
            guest.resume().await?;
        }
        let mut exited = guest.exited();
        // A press the guest is not listening for yet (still booting) is lost: press again
        // every few seconds until it goes or the time is up.
        let presses = async {
            loop {
                if guest.power_button().await.is_err() {
                    return false;
                }
                tokio::time::sleep(POWER_BUTTON_REPEAT).await;
            }
        };
        let graceful = tokio::time::timeout(timeout, async {
            tokio::select! {
                gone = exited.wait_for(Option::is_some) => gone.is_ok(),
                pressed = presses => pressed,
            }
        })
        .await
        .unwrap_or(false);
        if !graceful {
            tracing::info!(vm = %id, "guest ignored the power button; forcing it off");
        }
        drop(exited);
        drop(guest);
        self.end_process(&inst).await?;
        Ok(self.set_state(&inst, t.after, None))
    }

    async fn force_stop(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(VmOp::ForceStop)?;
        self.end_process(&inst).await?;
        Ok(self.set_state(&inst, t.after, None))
    }

    async fn pause(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        self.drive(id, VmOp::Pause).await
    }

    async fn resume(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        self.drive(id, VmOp::Resume).await
    }

    async fn reboot(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        self.drive(id, VmOp::Reboot).await
    }

    async fn power_button(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        self.drive(id, VmOp::PowerButton).await
    }

    async fn delete(&self, id: &VmId) -> Result<(), HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        inst.begin(VmOp::Delete)?;
        self.end_process(&inst).await?;
        self.detach_network(inst.st().ip.take());
        // Deleted before the files go: the exit watcher, which may still be finishing, writes
        // nothing for a deleted VM (it checks under the same lock).
        inst.st().state = VmState::Deleted;
        let dir = self.dir(id);
        std::fs::remove_dir_all(&dir).map_err(HypervisorError::io(&dir))?;
        self.table().remove(id);
        self.set_state(&inst, VmState::Deleted, None);
        Ok(())
    }

    async fn status(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        let inst = self.get(id)?;
        Ok(self.status_of(&inst))
    }

    async fn list(&self) -> Vec<VmStatus> {
        let all: Vec<Arc<Instance>> = self.table().values().cloned().collect();
        let mut out: Vec<VmStatus> = all.iter().map(|i| self.status_of(i)).collect();
        out.sort_by(|a, b| a.id.cmp(&b.id));
        out
    }

    async fn console(&self, id: &VmId) -> Result<Console, HypervisorError> {
        let inst = self.get(id)?;
        let st = inst.st();
        match &st.guest {
            Some(g) => Ok(g.console()),
            None => Err(HypervisorError::NotRunning(id.clone())),
        }
    }

    async fn metrics(&self, id: &VmId) -> Result<GuestMetrics, HypervisorError> {
        let inst = self.get(id)?;
        let guest = self.running_guest(&inst)?;
        guest.metrics().await
    }

    fn subscribe(&self) -> broadcast::Receiver<VmStatus> {
        self.events.subscribe()
    }

    async fn snapshot(&self, id: &VmId, snap: SnapshotId) -> Result<SnapshotId, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        if self.taken_snapshots(id)?.len() >= self.snapshot_limit {
            return Err(HypervisorError::SnapshotLimit {
                vm: id.clone(),
                limit: self.snapshot_limit,
            });
        }
        let t = inst.begin(VmOp::Snapshot)?;
        let guest = self.running_guest(&inst)?;
        let was_running = inst.st().state == VmState::Running;
        {
            // The memory at most, and the disks' copies as large as what they hold.
            let spec = &inst.st().spec;
            let needed = (spec.resources.mem_size_mib << 20)
                + file_allocated(&spec.root_disk)
                + spec
                    .extra_disks
                    .iter()
                    .map(|d| file_allocated(&d.path))
                    .sum::<u64>();
            snapshot_room(id, needed, free_bytes(&self.dir(id))?)?;
        }
        let paths = self.new_snapshot_dir(id, &snap)?;
        if was_running {
            guest.pause().await?;
        }
        let spec = inst.st().spec.clone();
        // Memory and devices, then the disks, all while the guest is paused: one instant.
        let saved = async {
            guest.snapshot(&paths).await?;
            Self::copy(&spec.root_disk, &paths.root_disk())?;
            for (i, d) in spec.extra_disks.iter().enumerate() {
                Self::copy(&d.path, &paths.dir.join(format!("disk{i}.raw")))?;
            }
            Ok::<(), HypervisorError>(())
        }
        .await;
        if was_running {
            guest.resume().await?;
        }
        if let Err(e) = saved {
            let _ = std::fs::remove_dir_all(&paths.dir);
            return Err(e);
        }
        self.set_state(&inst, t.after, None);
        Ok(snap)
    }

    async fn coredump(&self, id: &VmId) -> Result<PathBuf, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let guest = self.running_guest(&inst)?;
        let dir = self.dir(id).join("coredumps");
        std::fs::create_dir_all(&dir).map_err(HypervisorError::io(&dir))?;
        let millis = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        let path = dir.join(format!("core-{millis}.elf"));
        if let Err(e) = guest.coredump(&path).await {
            let _ = std::fs::remove_file(&path);
            return Err(e);
        }
        Ok(path)
    }

    async fn commit(&self, id: &VmId, image: &ImageName) -> Result<ImageName, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let state = inst.st().state;
        if state.has_process() {
            return Err(HypervisorError::MustBeStopped(id.clone(), state));
        }
        let disk = inst.st().spec.root_disk.clone();
        self.catalog.import(image, &disk)?;
        Ok(image.clone())
    }

    async fn restore(&self, id: &VmId, snap: &SnapshotId) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(VmOp::Restore)?;
        let paths = SnapshotPaths {
            dir: self.dir(id).join("snapshots").join(snap.as_str()),
        };
        if !paths.state().is_file() && !paths.memory().is_file() {
            return Err(HypervisorError::NoSnapshot {
                vm: id.clone(),
                snapshot: snap.to_string(),
            });
        }
        self.backend.preflight().await?;
        let spec = inst.st().spec.clone();
        self.host.admit(&spec)?;
        Self::copy(&paths.root_disk(), &spec.root_disk)?;
        for (i, d) in spec.extra_disks.iter().enumerate() {
            Self::copy(&paths.dir.join(format!("disk{i}.raw")), &d.path)?;
        }
        self.set_state(&inst, t.during, None);
        self.launch(&inst, Launch::Restore(paths)).await
    }

    async fn snapshots(&self, id: &VmId) -> Result<Vec<SnapshotInfo>, HypervisorError> {
        let mut found: Vec<SnapshotInfo> = self
            .taken_snapshots(id)?
            .into_iter()
            .map(|(id, dir, taken_at)| SnapshotInfo {
                id,
                taken_at,
                bytes: allocated_bytes(&dir),
            })
            .collect();
        found.sort_by(|a, b| (a.taken_at, &a.id).cmp(&(b.taken_at, &b.id)));
        Ok(found)
    }

    async fn delete_snapshot(&self, id: &VmId, snap: &SnapshotId) -> Result<(), HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        if inst.st().export.as_ref().is_some_and(|e| &e.snap == snap) {
            return Err(HypervisorError::Busy(id.clone()));
        }
        let dir = self.dir(id).join("snapshots").join(snap.as_str());
        if !dir.is_dir() {
            return Err(HypervisorError::NoSnapshot {
                vm: id.clone(),
                snapshot: snap.to_string(),
            });
        }
        std::fs::remove_dir_all(&dir).map_err(HypervisorError::io(&dir))?;
        tracing::info!(vm = %id, snapshot = %snap, "snapshot deleted");
        Ok(())
    }

    async fn resize_vcpus(&self, id: &VmId, vcpus: u32) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(VmOp::Resize)?;
        if inst.st().guest.is_some() {
            return Err(HypervisorError::Unsupported {
                backend: self.backend.kind().as_str(),
                op: "change the vCPUs of a running guest (stop it first)",
            });
        }
        let mut resources = inst.st().spec.resources;
        resources.vcpu_count = vcpus;
        resources.validate()?;
        inst.st().spec.resources = resources;
        Ok(self.set_state(&inst, t.after, None))
    }

    async fn resize_memory(&self, id: &VmId, mib: u64) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(VmOp::Resize)?;
        let mut resources = inst.st().spec.resources;
        resources.mem_size_mib = mib;
        resources.validate()?;
        let guest = inst.st().guest.clone();
        match guest {
            // A running guest is ballooned; its boot size stays.
            Some(g) => g.set_memory(mib).await?,
            None => {
                if mib > self.host_mem_mib {
                    return Err(HypervisorError::InsufficientResources(format!(
                        "{mib} MiB of memory: the host has {} MiB",
                        self.host_mem_mib
                    )));
                }
                inst.st().spec.resources = resources;
            }
        }
        Ok(self.set_state(&inst, t.after, None))
    }

    async fn add_disk(
        &self,
        id: &VmId,
        size_gb: u64,
        read_only: bool,
    ) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(VmOp::AddDisk)?;
        // Neither microvm's virtio-mmio nor Firecracker hot-plugs a block device.
        if inst.st().guest.is_some() {
            return Err(HypervisorError::MustBeStopped(id.clone(), inst.st().state));
        }
        if size_gb == 0 || size_gb > vmfleet_core::VmResources::MAX_DISK_GIB {
            return Err(HypervisorError::InvalidSpec(format!(
                "a disk is 1 to {} GiB, not {size_gb}",
                vmfleet_core::VmResources::MAX_DISK_GIB
            )));
        }
        let n = inst.st().spec.extra_disks.len();
        let path = self.dir(id).join(format!("disk{n}.raw"));
        let f = std::fs::File::create(&path).map_err(HypervisorError::io(&path))?;
        f.set_len(size_gb << 30)
            .map_err(HypervisorError::io(&path))?;
        inst.st()
            .spec
            .extra_disks
            .push(DiskSpec { path, read_only });
        Ok(self.set_state(&inst, t.after, None))
    }

    async fn add_device(&self, id: &VmId, device: &Device) -> Result<DeviceId, HypervisorError> {
        let (_inst, _op) = self.lock(id)?;
        let spec = match device {
            Device::Rng {} => DeviceSpec::Rng,
            Device::PciPassthrough { address } => DeviceSpec::PciPassthrough {
                address: address.clone(),
            },
        };
        if let DeviceSpec::PciPassthrough { address } = &spec {
            // What the driver cannot do says so first; then the node's offer.
            self.backend.check_device(&spec)?;
            self.host.check_passthrough(address)?;
        }
        self.attach(id, spec)
    }

    async fn add_share(
        &self,
        id: &VmId,
        tag: &ShareTag,
        path: &SharePath,
        read_only: bool,
    ) -> Result<DeviceId, HypervisorError> {
        let (_inst, _op) = self.lock(id)?;
        // The driver first, so a Firecracker node says it has no such device before it
        // looks at the path.
        let probe = DeviceSpec::Share {
            tag: tag.clone(),
            path: PathBuf::new(),
            read_only,
        };
        self.backend.check_device(&probe)?;
        let real = self.host.resolve_share(path)?;
        self.attach(
            id,
            DeviceSpec::Share {
                tag: tag.clone(),
                path: real,
                read_only,
            },
        )
    }

    async fn remove_device(
        &self,
        id: &VmId,
        device: &DeviceId,
    ) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let t = inst.begin(VmOp::ChangeDevices)?;
        let state = inst.st().state;
        if inst.st().guest.is_some() {
            return Err(HypervisorError::ColdPlugOnly {
                vm: id.clone(),
                state,
                backend: self.backend.kind().as_str(),
            });
        }
        {
            let mut st = inst.st();
            let Some(at) = st.spec.devices.iter().position(|d| d.id == *device) else {
                return Err(HypervisorError::NoDevice {
                    vm: id.clone(),
                    device: device.clone(),
                });
            };
            st.spec.devices.remove(at);
        }
        Ok(self.set_state(&inst, t.after, None))
    }

    async fn export_files(
        &self,
        id: &VmId,
        snap: &SnapshotId,
    ) -> Result<MigrationManifest, HypervisorError> {
        self.migratable()?;
        let (inst, _op) = self.lock(id)?;
        let current = inst.st().export.clone();
        match current {
            // A repeated request: the same export.
            Some(e) if e.snap == *snap => {}
            Some(_) => return Err(HypervisorError::Busy(id.clone())),
            None => {
                let state = inst.st().state;
                state.begin(VmOp::Migrate)?;
                // Devices and shares belong to this node (its share root, its PCI devices).
                if !inst.st().spec.devices.is_empty() {
                    return Err(HypervisorError::DeviceRefused(format!(
                        "VM {id} has devices or shared directories of its node: remove them \
                         with /vm/device/remove before migrating it"
                    )));
                }
                let with_snapshot = state.has_process();
                let was_running = state == VmState::Running;
                if with_snapshot {
                    let guest = self.running_guest(&inst)?;
                    let paths = self.new_snapshot_dir(id, snap)?;
                    if was_running {
                        guest.pause().await?;
                        self.set_state(&inst, VmState::Paused, None);
                    }
                    // The guest stays paused: its disks must not change until it runs on the
                    // target (or here again, if the migration fails).
                    if let Err(e) = guest.snapshot(&paths).await {
                        let _ = std::fs::remove_dir_all(&paths.dir);
                        if was_running && guest.resume().await.is_ok() {
                            self.set_state(&inst, VmState::Running, None);
                        }
                        return Err(e);
                    }
                }
                inst.st().export = Some(Export {
                    snap: snap.clone(),
                    was_running,
                    with_snapshot,
                });
            }
        }
        self.manifest(&inst).await
    }

    async fn read_export(
        &self,
        id: &VmId,
        file: VmFile,
        offset: u64,
        len: u64,
    ) -> Result<FileChunk, HypervisorError> {
        if len == 0 || len > MAX_CHUNK_BYTES {
            return Err(HypervisorError::InvalidSpec(format!(
                "a chunk is 1 to {MAX_CHUNK_BYTES} bytes, not {len}"
            )));
        }
        let inst = self.get(id)?;
        let path = self.export_path(&inst, file)?;
        let read = blocking(move || crate::transfer::read_chunk(&path, offset, len)).await?;
        Ok(FileChunk {
            file,
            offset: read.offset,
            sha256: crate::transfer::digest(&read.data),
            data: Base64(read.data),
            next: read.next,
        })
    }

    async fn abort_export(
        &self,
        id: &VmId,
        snap: &SnapshotId,
    ) -> Result<VmStatus, HypervisorError> {
        let (inst, _op) = self.lock(id)?;
        let export = {
            let mut st = inst.st();
            match &st.export {
                Some(e) if e.snap == *snap => st.export.take(),
                _ => None,
            }
        };
        let Some(export) = export else {
            return Ok(self.status_of(&inst));
        };
        let dir = self.dir(id).join("snapshots").join(export.snap.as_str());
        if dir.exists() {
            let _ = std::fs::remove_dir_all(&dir);
        }
        if export.was_running && inst.st().state == VmState::Paused {
            let guest = self.running_guest(&inst)?;
            guest.resume().await?;
            return Ok(self.set_state(&inst, VmState::Running, None));
        }
        Ok(self.status_of(&inst))
    }

    async fn import_files(
        &self,
        req: CreateVm,
        manifest: MigrationManifest,
    ) -> Result<(), HypervisorError> {
        self.migratable()?;
        manifest
            .validate()
            .map_err(|e| HypervisorError::InvalidSpec(e.to_string()))?;
        let resources = VmResources {
            vcpu_count: manifest.vcpu_count,
            mem_size_mib: manifest.mem_size_mib,
            disk_size: manifest.disk_size_gib,
        };
        resources.validate()?;
        if resources.mem_size_mib > self.host_mem_mib {
            return Err(HypervisorError::InsufficientResources(format!(
                "{} MiB of memory: the host has {} MiB",
                resources.mem_size_mib, self.host_mem_mib
            )));
        }
        self.boot_images(&req)?;
        let id = req.id.clone();
        let dir = self.import_dir(&id);
        {
            let mut imports = self.imports();
            if let Some(open) = imports.get(&id) {
                // A repeated request is the same import; another is refused.
                return if open.req == req && open.manifest == manifest {
                    Ok(())
                } else {
                    Err(HypervisorError::AlreadyExists(id))
                };
            }
            if self.table().contains_key(&id) || self.dir(&id).exists() {
                return Err(HypervisorError::AlreadyExists(id));
            }
            if dir.exists() {
                let _ = std::fs::remove_dir_all(&dir);
            }
            let made = (|| {
                let snaps = dir.join("snapshots").join(INCOMING);
                std::fs::create_dir_all(&snaps).map_err(HypervisorError::io(&snaps))?;
                for f in &manifest.files {
                    crate::transfer::create_sparse(&import_path(&dir, f.file), f.size)?;
                }
                Ok::<(), HypervisorError>(())
            })();
            if let Err(e) = made {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(e);
            }
            imports.insert(id.clone(), Import { req, manifest, dir });
        }
        Ok(())
    }

    async fn write_import(
        &self,
        id: &VmId,
        file: VmFile,
        offset: u64,
        data: &[u8],
        sha256: &Sha256,
    ) -> Result<(), HypervisorError> {
        let imp = self
            .imports()
            .get(id)
            .cloned()
            .ok_or_else(|| HypervisorError::NotFound(id.clone()))?;
        imp.manifest
            .check_chunk(file, offset, data.len() as u64)
            .map_err(|e| HypervisorError::InvalidSpec(e.to_string()))?;
        let path = import_path(&imp.dir, file);
        let (data, sha256) = (data.to_vec(), sha256.clone());
        blocking(move || crate::transfer::write_chunk(&path, file, offset, &data, &sha256)).await
    }

    async fn commit_import(&self, id: &VmId) -> Result<VmStatus, HypervisorError> {
        let imp = self
            .imports()
            .get(id)
            .cloned()
            .ok_or_else(|| HypervisorError::NotFound(id.clone()))?;
        for f in imp.manifest.files.clone() {
            let path = import_path(&imp.dir, f.file);
            blocking(move || crate::transfer::verify(&path, f.file, f.size, &f.sha256)).await?;
        }
        let (kernel, initrd) = self.boot_images(&imp.req)?;
        let dir = self.dir(id);
        let inst = {
            let mut table = self.table();
            if table.contains_key(id) || dir.exists() {
                return Err(HypervisorError::AlreadyExists(id.clone()));
            }
            std::fs::rename(&imp.dir, &dir).map_err(HypervisorError::io(&dir))?;
            let network = match self.attach_network() {
                Ok(n) => n,
                Err(e) => {
                    let _ = std::fs::rename(&dir, &imp.dir);
                    return Err(e);
                }
            };
            let mut boot_args = imp
                .req
                .boot_args
                .clone()
                .unwrap_or_else(|| DEFAULT_BOOT_ARGS.to_owned());
            if let Some((_, _, args)) = &network {
                boot_args.push_str(args);
            }
            let m = &imp.manifest;
            let extra_disks = m
                .extra_disks
                .iter()
                .enumerate()
                .map(|(n, d)| DiskSpec {
                    path: dir.join(format!("disk{n}.raw")),
                    read_only: d.read_only,
                })
                .collect();
            let inst = Arc::new(Instance {
                id: id.clone(),
                op: Arc::default(),
                st: Mutex::new(InstState {
                    spec: VmSpec {
                        id: id.clone(),
                        resources: VmResources {
                            vcpu_count: m.vcpu_count,
                            mem_size_mib: m.mem_size_mib,
                            disk_size: m.disk_size_gib,
                        },
                        kernel,
                        initrd,
                        root_disk: import_path(&dir, VmFile::Root),
                        extra_disks,
                        boot_args,
                        network: network.as_ref().map(|(_, n, _)| n.clone()),
                        // A VM with devices never leaves its node (`export_files`).
                        devices: Vec::new(),
                    },
                    state: VmState::Stopped,
                    reason: None,
                    guest: None,
                    generation: 0,
                    stopping: false,
                    last_change: SystemTime::now(),
                    booted_at: None,
                    ip: network.map(|(ip, _, _)| ip),
                    labels: imp.req.labels.clone(),
                    next_device: 0,
                    export: None,
                }),
            });
            table.insert(id.clone(), inst.clone());
            inst
        };
        self.imports().remove(id);
        let _op = inst.op.clone().lock_owned().await;
        let stopped = self.set_state(&inst, VmState::Stopped, None);
        if !imp.manifest.running {
            return Ok(stopped);
        }
        let paths = SnapshotPaths {
            dir: dir.join("snapshots").join(INCOMING),
        };
        self.backend.preflight().await?;
        self.set_state(&inst, VmState::Booting, None);
        let restored = self.launch(&inst, Launch::Restore(paths.clone())).await?;
        let _ = std::fs::remove_dir_all(&paths.dir);
        Ok(restored)
    }

    async fn abort_import(&self, id: &VmId) -> Result<(), HypervisorError> {
        self.imports().remove(id);
        let dir = self.import_dir(id);
        if dir.exists() {
            std::fs::remove_dir_all(&dir).map_err(HypervisorError::io(&dir))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// A 1-vCPU, 128 MiB VM booting images `k` and `r`.
    fn small_vm(id: &VmId) -> CreateVm {
        CreateVm {
            id: id.clone(),
            resources: VmResources {
                vcpu_count: 1,
                mem_size_mib: 128,
                disk_size: 1,
            },
            kernel: ImageName::new("k").unwrap(),
            initrd: None,
            rootfs: ImageName::new("r").unwrap(),
            boot_args: None,
            labels: Default::default(),
        }
    }

    #[tokio::test]
    async fn only_qemu_vms_migrate() {
        let dir = tempfile::tempdir().unwrap();
        let fc = crate::firecracker::FirecrackerBackend::new(Default::default());
        let vmm = Vmm::new(
            Arc::new(fc),
            ImageCatalog::open(dir.path().join("images")).unwrap(),
            dir.path().join("vms"),
        )
        .unwrap();
        let id = VmId::new("vm-1").unwrap();
        let snap = SnapshotId::new("s").unwrap();
        let e = vmm.export_files(&id, &snap).await.unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::Unsupported, "{e}");
        let manifest = MigrationManifest {
            vcpu_count: 1,
            mem_size_mib: 128,
            disk_size_gib: 1,
            extra_disks: Vec::new(),
            running: false,
            files: Vec::new(),
        };
        let e = vmm.import_files(small_vm(&id), manifest).await.unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::Unsupported, "{e}");
        assert!(e.to_string().contains("only QEMU"), "{e}");
    }

    #[tokio::test]
    async fn snapshots_are_listed_limited_and_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let images = dir.path().join("images");
        std::fs::create_dir_all(&images).unwrap();
        std::fs::write(images.join("k"), b"kernel").unwrap();
        std::fs::write(images.join("r"), vec![0u8; 1 << 20]).unwrap();
        let vmm = Vmm::new(
            Arc::new(crate::firecracker::FirecrackerBackend::new(
                Default::default(),
            )),
            ImageCatalog::open(&images).unwrap(),
            dir.path().join("vms"),
        )
        .unwrap()
        .with_snapshot_limit(2);
        let id = VmId::new("vm-1").unwrap();
        vmm.create(small_vm(&id)).await.unwrap();
        assert!(vmm.snapshots(&id).await.unwrap().is_empty());
        // Two taken (their guest state written), one being taken, one that is no snapshot id.
        let snaps = dir.path().join("vms/vm-1/snapshots");
        for (name, state) in [("b", true), ("a", true), ("partial", false), (".x", true)] {
            std::fs::create_dir_all(snaps.join(name)).unwrap();
            if state {
                std::fs::write(snaps.join(name).join("vmstate"), vec![1u8; 8192]).unwrap();
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        let listed = vmm.snapshots(&id).await.unwrap();
        let names: Vec<&str> = listed.iter().map(|s| s.id.as_str()).collect();
        assert_eq!(names, ["b", "a"], "oldest first");
        assert!(listed.iter().all(|s| s.bytes >= 8192), "{listed:?}");
        // At the limit, a third is refused before anything else is looked at.
        let e = vmm
            .snapshot(&id, SnapshotId::new("c").unwrap())
            .await
            .unwrap_err();
        assert!(
            matches!(e, HypervisorError::SnapshotLimit { limit: 2, .. }),
            "{e}"
        );
        assert_eq!(e.class(), crate::ErrorClass::Conflict);
        vmm.delete_snapshot(&id, &SnapshotId::new("b").unwrap())
            .await
            .unwrap();
        assert!(!snaps.join("b").exists());
        let e = vmm
            .delete_snapshot(&id, &SnapshotId::new("b").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::NotFound, "{e}");
        // Below the limit again: what refuses now is the VM's state (never booted).
        let e = vmm
            .snapshot(&id, SnapshotId::new("c").unwrap())
            .await
            .unwrap_err();
        assert!(matches!(e, HypervisorError::InvalidState(_)), "{e}");
        let e = vmm
            .snapshots(&VmId::new("vm-2").unwrap())
            .await
            .unwrap_err();
        assert_eq!(e.class(), crate::ErrorClass::NotFound, "{e}");
    }

    #[test]
    fn a_snapshot_leaves_the_reserve_free() {
        let id = VmId::new("vm-1").unwrap();
        snapshot_room(&id, 1 << 30, (1 << 30) + SNAPSHOT_DISK_RESERVE).unwrap();
        let e = snapshot_room(&id, 1 << 30, 1 << 30).unwrap_err();
        assert!(
            matches!(e, HypervisorError::InsufficientResources(_)),
            "{e}"
        );
        assert!(e.to_string().contains("1024 MiB"), "{e}");
    }

    #[tokio::test]
    async fn recovery_removes_an_import_left_by_a_previous_process_only() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("vms");
        let left = base.join(".import-vm-1").join("snapshots").join(INCOMING);
        std::fs::create_dir_all(&left).unwrap();
        std::fs::write(left.join("memory"), b"partial").unwrap();
        // Not an import of ours: a dot directory that names no VM stays.
        let other = base.join(".import-");
        std::fs::create_dir_all(&other).unwrap();
        let vmm = Vmm::new(
            Arc::new(crate::firecracker::FirecrackerBackend::new(
                Default::default(),
            )),
            ImageCatalog::open(dir.path().join("images")).unwrap(),
            base.clone(),
        )
        .unwrap();
        assert!(vmm.recover().await.is_empty());
        assert!(
            !base.join(".import-vm-1").exists(),
            "the stale import stayed"
        );
        assert!(other.exists());
    }

    #[test]
    fn every_file_of_an_import_lands_inside_its_directory() {
        let dir = Path::new("/base/.import-vm-1");
        let mut files = vec![VmFile::Root, VmFile::SnapshotState, VmFile::SnapshotMemory];
        files.extend((0..64).map(VmFile::Disk));
        let mut seen = std::collections::HashSet::new();
        for f in files {
            let p = import_path(dir, f);
            assert!(p.starts_with(dir), "{f} -> {}", p.display());
            assert!(
                p.components().all(|c| matches!(
                    c,
                    std::path::Component::Normal(_) | std::path::Component::RootDir
                )),
                "{f} -> {}",
                p.display()
            );
            assert!(seen.insert(p), "two files share a path");
        }
    }
}
