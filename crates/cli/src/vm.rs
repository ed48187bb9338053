//! `vmfleet vm ...`: every VM operation of the REST and WebSocket APIs, VMs named by name or
//! id; `--wait` follows the VM's status stream until the operation's target state.

use std::io::IsTerminal as _;
use std::time::{Duration, Instant};

use clap::{Args, Subcommand};
use vmfleet_client::ClientError;
use vmfleet_core::{ImageName, SnapshotId, VmName, VmState, WalletAddress};
use vmfleet_wire::api::{
    ActionResponse, AddDeviceRequest, AddDeviceResponse, AddFsRequest, CreateVmRequest,
    DEFAULT_KERNEL, DEFAULT_ROOTFS, DeleteSnapshotRequest, ListVmsRequest, MigrateFromRequest,
    MigrateToRequest, RemoveDeviceRequest, ResizeMemoryRequest, ResizeVcpuRequest, RestoreRequest,
    SnapshotRequest, StopVmRequest, VmConfig, VmInfo, VmRef,
};
use vmfleet_wire::ws::{CommandAction, MetricsData, StatusData, WsBody, WsMessage};

use crate::CliError;
use crate::remote::{Output, Session, print_json, print_table, when};

#[derive(Debug, Clone, Args)]
pub struct WaitArgs {
    /// Follow the VM's status until the operation's target state; fail with the reason if the
    /// VM ends in `error`.
    #[arg(long)]
    pub wait: bool,
    /// How long `--wait` waits, such as `90s` or `5m`.
    #[arg(long, default_value = "5m", value_parser = crate::duration::parse)]
    pub timeout: Duration,
}

#[derive(Debug, Clone, Subcommand)]
pub enum VmCommand {
    /// Creates a VM and boots it (`--no-boot`: only records it).
    Create {
        name: VmName,
        /// Virtual CPUs.
        #[arg(long, default_value_t = 1)]
        vcpus: u32,
        /// Memory: MiB (`512`) or with a unit (`512m`, `2g`).
        #[arg(long, default_value = "256", value_parser = parse_mib)]
        memory: u64,
        /// Root disk size in GiB.
        #[arg(long, default_value_t = 1)]
        disk: u64,
        /// The kernel image of the node's catalog.
        #[arg(long, default_value = DEFAULT_KERNEL)]
        kernel: ImageName,
        /// The root filesystem image of the node's catalog.
        #[arg(long, default_value = DEFAULT_ROOTFS)]
        rootfs: ImageName,
        /// Extra kernel command line.
        #[arg(long)]
        boot_args: Option<String>,
        /// Record the VM without booting it.
        #[arg(long)]
        no_boot: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Lists VMs (an admin sees every owner's, or `--owner`'s).
    List,
    /// Shows one VM.
    Info { vm: String },
    /// Boots a created or stopped VM on a node the scheduler picks.
    Boot {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Starts a stopped VM.
    Start {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Stops a VM: gracefully (power button, then forced after a timeout), or at once with
    /// `--force`.
    Stop {
        vm: String,
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Reboots a running VM.
    Reboot {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Presses the VM's ACPI power button (`--wait`: until the guest has shut down).
    PowerButton {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Pauses a running VM (its memory kept).
    Suspend {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Resumes a suspended VM.
    Resume {
        vm: String,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Takes a snapshot of a VM.
    Snapshot {
        vm: String,
        /// The snapshot's id [default: chosen by the server].
        #[arg(long)]
        id: Option<SnapshotId>,
    },
    /// Lists a VM's snapshots, oldest first.
    Snapshots { vm: String },
    /// Deletes one of a VM's snapshots (its files on the node).
    SnapshotDelete { vm: String, snapshot: SnapshotId },
    /// Restores a VM from one of its snapshots.
    Restore {
        vm: String,
        snapshot: SnapshotId,
        #[command(flatten)]
        wait: WaitArgs,
    },
    /// Changes a VM's vCPUs and/or memory.
    Resize {
        vm: String,
        #[arg(long)]
        vcpus: Option<u32>,
        /// MiB (`512`) or with a unit (`2g`).
        #[arg(long, value_parser = parse_mib)]
        memory: Option<u64>,
    },
    /// Adds a device to a stopped VM (the guest sees it from its next boot): `--rng`, or
    /// `--pci DDDD:BB:DD.F` (a PCI device its node offers for passthrough).
    DeviceAdd {
        vm: String,
        /// A virtio entropy device.
        #[arg(long, conflicts_with = "pci", required_unless_present = "pci")]
        rng: bool,
        /// A host PCI device, passed through with VFIO.
        #[arg(long)]
        pci: Option<vmfleet_core::PciAddress>,
    },
    /// Removes a device or shared directory (`dev0`, ...) from a stopped VM.
    DeviceRemove {
        vm: String,
        id: vmfleet_core::DeviceId,
    },
    /// Shares PATH (relative to the node's share root) with a stopped VM; the guest mounts it
    /// with `mount -t 9p -o trans=virtio TAG DIR`.
    FsAdd {
        vm: String,
        tag: vmfleet_core::ShareTag,
        path: vmfleet_core::SharePath,
        #[arg(long)]
        read_only: bool,
    },
    /// Moves a VM to another node: a running guest is paused, copied with its memory and
    /// disks, and resumes there; a stopped one moves its disks. Follow it with `vm watch`.
    Migrate {
        vm: String,
        /// The node to move it to (admin); otherwise the scheduler picks one with room.
        #[arg(long)]
        node: Option<vmfleet_core::NodeId>,
    },
    /// Deletes a VM (forced off first).
    Delete { vm: String },
    /// Attaches this terminal to the VM's serial console (scrollback first); Ctrl-] detaches.
    Console { vm: String },
    /// Live status and metrics of a VM until Ctrl-C (`--count`: that many metrics).
    Watch {
        vm: String,
        /// Seconds between metrics.
        #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        /// Stop after this many metrics messages.
        #[arg(long)]
        count: Option<u64>,
    },
}

/// Prints the answer to an added device or share: its id first.
fn added(s: &Session, r: &AddDeviceResponse) {
    match s.output {
        Output::Json => print_json(r),
        Output::Table => say!("{}: {}", r.id, r.message),
    }
}

/// `512` (MiB), `512m`, `2g`, `1048576k`: whole MiB.
pub fn parse_mib(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return if n == 0 {
            Err("the memory must be more than 0 MiB".into())
        } else {
            Ok(n)
        };
    }
    let size = vmfleet_core::ByteSize::parse(t).map_err(|e| format!("{s:?}: {e}"))?;
    let bytes = size.as_bytes();
    if bytes % (1 << 20) != 0 {
        return Err(format!("{s:?} is not a whole number of MiB"));
    }
    Ok(bytes >> 20)
}

/// The state an operation leads to, which `--wait` waits for.
pub fn target_of(cmd: &VmCommand) -> Option<(VmState, &WaitArgs)> {
    match cmd {
        VmCommand::Create { no_boot, wait, .. } => Some((
            if *no_boot {
                VmState::Created
            } else {
                VmState::Running
            },
            wait,
        )),
        VmCommand::Boot { wait, .. }
        | VmCommand::Start { wait, .. }
        | VmCommand::Reboot { wait, .. }
        | VmCommand::Resume { wait, .. }
        | VmCommand::Restore { wait, .. } => Some((VmState::Running, wait)),
        VmCommand::Stop { wait, .. } | VmCommand::PowerButton { wait, .. } => {
            Some((VmState::Stopped, wait))
        }
        VmCommand::Suspend { wait, .. } => Some((VmState::Paused, wait)),
        _ => None,
    }
    .filter(|(_, w)| w.wait)
}

/// Finds a VM by name or id among those the caller may see (`owner`'s, for an admin).
pub async fn resolve(
    s: &Session,
    vm: &str,
    owner: Option<WalletAddress>,
) -> Result<VmInfo, CliError> {
    let vms = s.client.list_vms(&ListVmsRequest { owner }).await?;
    if let Some(v) = vms.iter().find(|v| v.build_id.as_str() == vm) {
        return Ok(v.clone());
    }
    let named: Vec<&VmInfo> = vms.iter().filter(|v| v.name.as_str() == vm).collect();
    match named.as_slice() {
        [one] => Ok((*one).clone()),
        [] => Err(CliError::NotFound(format!("VM {vm} was not found"))),
        many => Err(CliError::Usage(format!(
            "VM name {vm} is taken by {} owners ({}): pass --owner or the VM's id",
            many.len(),
            many.iter()
                .map(|v| v.owner.to_checksum())
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn vm_ref(v: &VmInfo) -> VmRef {
    VmRef {
        build_id: v.build_id.clone(),
        owner: v.owner,
    }
}

/// Prints an operation's answer; with `--wait` and JSON, only the VM at the end is printed,
/// so stdout stays one JSON document.
fn action(s: &Session, waits: bool, r: &ActionResponse) {
    match s.output {
        Output::Json if waits => {}
        Output::Json => print_json(r),
        Output::Table => say!("{}", r.message),
    }
}

/// Runs one `vm` subcommand.
pub async fn run(
    s: &Session,
    owner: Option<WalletAddress>,
    cmd: VmCommand,
) -> Result<(), CliError> {
    let target = target_of(&cmd).map(|(state, w)| (state, w.timeout));
    let waits = target.is_some();
    let vm = match &cmd {
        VmCommand::Create {
            name,
            vcpus,
            memory,
            disk,
            kernel,
            rootfs,
            boot_args,
            no_boot,
            ..
        } => {
            let owner = owner.or(s.wallet).ok_or_else(|| {
                CliError::Usage(
                    "this token speaks for no wallet: pass --owner with the VM's owner".into(),
                )
            })?;
            let created = s
                .client
                .create_vm(&CreateVmRequest {
                    name: name.clone(),
                    owner,
                    vm_config: VmConfig {
                        vcpu_count: *vcpus,
                        mem_size_mib: *memory,
                        disk_size: *disk,
                        boot_args: boot_args.clone(),
                        kernel: kernel.clone(),
                        rootfs: rootfs.clone(),
                    },
                })
                .await?;
            let r = VmRef {
                build_id: created.vm_id.clone(),
                owner,
            };
            if !*no_boot {
                s.client.boot_vm(&r).await?;
            }
            let info = s.client.vm_info(&r).await?;
            if target.is_none() {
                show_created(s, &info);
            }
            info
        }
        VmCommand::List => {
            let vms = s.client.list_vms(&ListVmsRequest { owner }).await?;
            match s.output {
                Output::Json => print_json(&vms),
                Output::Table => print_vms(&vms),
            }
            return Ok(());
        }
        VmCommand::Info { vm } => {
            let v = resolve(s, vm, owner).await?;
            let info = s.client.vm_info(&vm_ref(&v)).await?;
            match s.output {
                Output::Json => print_json(&info),
                Output::Table => print_info(&info),
            }
            return Ok(());
        }
        VmCommand::Boot { vm, .. } => {
            let v = resolve(s, vm, owner).await?;
            action(s, waits, &s.client.boot_vm(&vm_ref(&v)).await?);
            v
        }
        VmCommand::Start { vm, .. } => {
            let v = resolve(s, vm, owner).await?;
            action(s, waits, &s.client.start_vm(&vm_ref(&v)).await?);
            v
        }
        VmCommand::Stop { vm, force, .. } => {
            let v = resolve(s, vm, owner).await?;
            let req = StopVmRequest {
                build_id: v.build_id.clone(),
                owner: v.owner,
                force: *force,
            };
            action(s, waits, &s.client.stop_vm(&req).await?);
            v
        }
        VmCommand::Reboot { vm, .. } => {
            let v = resolve(s, vm, owner).await?;
            action(s, waits, &s.client.reboot_vm(&vm_ref(&v)).await?);
            v
        }
        VmCommand::PowerButton { vm, .. } => {
            let v = resolve(s, vm, owner).await?;
            action(s, waits, &s.client.power_button(&vm_ref(&v)).await?);
            v
        }
        VmCommand::Suspend { vm, .. } | VmCommand::Resume { vm, .. } => {
            let v = resolve(s, vm, owner).await?;
            let act = if matches!(cmd, VmCommand::Suspend { .. }) {
                CommandAction::Suspend
            } else {
                CommandAction::Resume
            };
            let mut mon = s.client.monitor(&v.name, Some(&v.owner), None).await?;
            let r = mon.command(act).await;
            mon.close().await;
            let r = r?;
            if !r.success {
                return Err(CliError::Refused(r.message));
            }
            action(s, waits, &ActionResponse::new(r.message));
            v
        }
        VmCommand::Snapshot { vm, id } => {
            let v = resolve(s, vm, owner).await?;
            let r = s
                .client
                .snapshot_vm(&SnapshotRequest {
                    build_id: v.build_id.clone(),
                    owner: v.owner,
                    snapshot_id: id.clone(),
                })
                .await?;
            match s.output {
                Output::Json => print_json(&r),
                Output::Table => say!("snapshot {}: {}", r.snapshot_id, r.message),
            }
            return Ok(());
        }
        VmCommand::Snapshots { vm } => {
            let v = resolve(s, vm, owner).await?;
            let found = s.client.list_snapshots(&vm_ref(&v)).await?;
            match s.output {
                Output::Json => print_json(&found),
                Output::Table => {
                    let mut rows = vec![["SNAPSHOT", "CREATED", "SIZE"].map(String::from).to_vec()];
                    rows.extend(found.iter().map(|snap| {
                        vec![
                            snap.snapshot_id.to_string(),
                            when(Some(snap.created_at)),
                            format!("{:.1} MiB", snap.size_bytes as f64 / (1024.0 * 1024.0)),
                        ]
                    }));
                    print_table(&rows);
                }
            }
            return Ok(());
        }
        VmCommand::SnapshotDelete { vm, snapshot } => {
            let v = resolve(s, vm, owner).await?;
            let req = DeleteSnapshotRequest {
                build_id: v.build_id.clone(),
                owner: v.owner,
                snapshot_id: snapshot.clone(),
            };
            let r = s.client.delete_snapshot(&req).await?;
            match s.output {
                Output::Json => print_json(&r),
                Output::Table => say!("{}", r.message),
            }
            return Ok(());
        }
        VmCommand::Restore { vm, snapshot, .. } => {
            let v = resolve(s, vm, owner).await?;
            let req = RestoreRequest {
                build_id: v.build_id.clone(),
                owner: v.owner,
                snapshot_id: snapshot.clone(),
            };
            action(s, waits, &s.client.restore_vm(&req).await?);
            v
        }
        VmCommand::Resize { vm, vcpus, memory } => {
            if vcpus.is_none() && memory.is_none() {
                return Err(CliError::Usage(
                    "vm resize needs --vcpus, --memory or both".into(),
                ));
            }
            let v = resolve(s, vm, owner).await?;
            if let Some(n) = vcpus {
                let req = ResizeVcpuRequest {
                    build_id: v.build_id.clone(),
                    owner: v.owner,
                    vcpu_count: *n,
                };
                action(s, waits, &s.client.resize_vcpu(&req).await?);
            }
            if let Some(m) = memory {
                let req = ResizeMemoryRequest {
                    build_id: v.build_id.clone(),
                    owner: v.owner,
                    mem_size_mib: *m,
                };
                action(s, waits, &s.client.resize_memory(&req).await?);
            }
            return Ok(());
        }
        VmCommand::DeviceAdd { vm, rng: _, pci } => {
            let v = resolve(s, vm, owner).await?;
            let device = match pci {
                Some(address) => vmfleet_core::Device::PciPassthrough {
                    address: address.clone(),
                },
                None => vmfleet_core::Device::Rng {},
            };
            let req = AddDeviceRequest {
                build_id: v.build_id.clone(),
                owner: v.owner,
                device,
            };
            added(s, &s.client.add_device(&req).await?);
            return Ok(());
        }
        VmCommand::Migrate { vm, node } => {
            let v = resolve(s, vm, owner).await?;
            let migration_id = match node {
                Some(node) => {
                    let req = MigrateFromRequest {
                        build_id: v.build_id.clone(),
                        owner: v.owner,
                        node: Some(node.clone()),
                    };
                    Some(s.client.migrate_from(&req).await?.migration_id)
                }
                None => None,
            };
            let req = MigrateToRequest {
                build_id: v.build_id.clone(),
                owner: v.owner,
                migration_id,
            };
            let r = s.client.migrate_to(&req).await?;
            match s.output {
                Output::Json => print_json(&r),
                Output::Table => say!(
                    "{} -> node {} ({}): {}",
                    v.build_id,
                    r.node,
                    r.migration_id,
                    r.message
                ),
            }
            return Ok(());
        }
        VmCommand::DeviceRemove { vm, id } => {
            let v = resolve(s, vm, owner).await?;
            let req = RemoveDeviceRequest {
                build_id: v.build_id.clone(),
                owner: v.owner,
                id: id.clone(),
            };
            action(s, waits, &s.client.remove_device(&req).await?);
            return Ok(());
        }
        VmCommand::FsAdd {
            vm,
            tag,
            path,
            read_only,
        } => {
            let v = resolve(s, vm, owner).await?;
            let req = AddFsRequest {
                build_id: v.build_id.clone(),
                owner: v.owner,
                tag: tag.clone(),
                path: path.clone(),
                read_only: *read_only,
            };
            added(s, &s.client.add_fs(&req).await?);
            return Ok(());
        }
        VmCommand::Delete { vm } => {
            let v = resolve(s, vm, owner).await?;
            action(s, waits, &s.client.delete_vm(&vm_ref(&v)).await?);
            return Ok(());
        }
        VmCommand::Console { vm } => {
            let v = resolve(s, vm, owner).await?;
            let session = s.client.console(&v.name, Some(&v.owner)).await?;
            crate::console::attach(session, v.name.as_str()).await?;
            return Ok(());
        }
        VmCommand::Watch {
            vm,
            interval,
            count,
        } => {
            let v = resolve(s, vm, owner).await?;
            return watch(s, &v, *interval, *count).await;
        }
    };
    if let Some((state, timeout)) = target {
        let info = wait_for(s, &vm, state, timeout).await?;
        match (&cmd, s.output) {
            (VmCommand::Create { .. }, _) => show_created(s, &info),
            (_, Output::Json) => print_json(&info),
            (_, Output::Table) => say!("{} is {}", info.name, info.state),
        }
    }
    Ok(())
}

fn show_created(s: &Session, info: &VmInfo) {
    match s.output {
        Output::Json => print_json(info),
        Output::Table => say!("{} ({}) is {}", info.name, info.build_id, info.state),
    }
}

/// Follows `/ws/vms/{name}` until the VM is `target`; an `error` state fails with its reason.
/// A spinner on a terminal's stderr, a line per state otherwise.
pub async fn wait_for(
    s: &Session,
    vm: &VmInfo,
    target: VmState,
    timeout: Duration,
) -> Result<VmInfo, CliError> {
    let mut mon = s.client.monitor(&vm.name, Some(&vm.owner), None).await?;
    let start = Instant::now();
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_millis(120));
    let frames = ['|', '/', '-', '\\'];
    let mut frame = 0usize;
    let mut current: Option<(VmState, Option<String>)> = None;
    let deadline = tokio::time::sleep(timeout);
    tokio::pin!(deadline);
    let clear = |tty: bool| {
        if tty {
            eprint!("\r\x1b[K");
        }
    };
    let outcome = loop {
        tokio::select! {
            msg = mon.next() => match msg? {
                Some(WsMessage { body: WsBody::Status(d), .. }) => {
                    let state = state_of(&d);
                    if current.as_ref().map(|c| c.0) != Some(state) && !tty {
                        eprintln!("{}: {state}{}", vm.name,
                            d.reason.as_deref().map(|r| format!(" ({r})")).unwrap_or_default());
                    }
                    current = Some((state, d.reason.clone()));
                    if state == target {
                        break Ok(());
                    }
                    if state == VmState::Error {
                        break Err(CliError::VmFailed {
                            name: vm.name.to_string(),
                            reason: d.reason.unwrap_or_else(|| "no reason given".into()),
                        });
                    }
                }
                Some(WsMessage { body: WsBody::Error(e), .. }) => {
                    break Err(CliError::Client(ClientError::Ws { code: e.code, message: e.message }));
                }
                Some(_) => {}
                None => break Err(CliError::Client(ClientError::Closed("the VM reached its state"))),
            },
            _ = tick.tick(), if tty => {
                frame = (frame + 1) % frames.len();
                let state = current.as_ref().map(|c| c.0.as_str()).unwrap_or("...");
                eprint!("\r\x1b[K{} {}: {state}, waiting for {target} ({}s)",
                    frames[frame], vm.name, start.elapsed().as_secs());
            },
            _ = &mut deadline => {
                break Err(CliError::Timeout(format!(
                    "{} did not become {target} within {}s (it is {})",
                    vm.name,
                    timeout.as_secs(),
                    current.as_ref().map(|c| c.0.as_str()).unwrap_or("unknown")
                )));
            }
        }
    };
    clear(tty);
    mon.close().await;
    outcome?;
    Ok(s.client.vm_info(&vm_ref(vm)).await?)
}

/// vmfleet's precise state when the server sends it, else the document's status.
fn state_of(d: &StatusData) -> VmState {
    use vmfleet_wire::ws::WsVmStatus as S;
    d.state.unwrap_or(match d.status {
        S::Running => VmState::Running,
        S::Stopped | S::Shutdown => VmState::Stopped,
        S::Paused | S::Suspended => VmState::Paused,
        S::Crashed | S::Error => VmState::Error,
        S::Unknown => VmState::Unknown,
    })
}

async fn watch(
    s: &Session,
    vm: &VmInfo,
    interval: u64,
    count: Option<u64>,
) -> Result<(), CliError> {
    let mut mon = s
        .client
        .monitor(&vm.name, Some(&vm.owner), Some(interval))
        .await?;
    let mut seen = 0u64;
    let stop = crate::shutdown_signal();
    tokio::pin!(stop);
    loop {
        let msg = tokio::select! {
            m = mon.next() => m?,
            _ = &mut stop => break,
        };
        let Some(msg) = msg else {
            break;
        };
        if s.output == Output::Json {
            say!("{}", msg.to_json());
        }
        match &msg.body {
            WsBody::Status(d) if s.output == Output::Table => say!(
                "{} {}: {}{}{}",
                msg.timestamp.as_str(),
                vm.name,
                state_of(d),
                if d.uptime > 0 {
                    format!(", up {}s", d.uptime)
                } else {
                    String::new()
                },
                d.reason
                    .as_deref()
                    .map(|r| format!(" ({r})"))
                    .unwrap_or_default()
            ),
            WsBody::Metrics(m) => {
                if s.output == Output::Table {
                    say!(
                        "{} {}: {}",
                        msg.timestamp.as_str(),
                        vm.name,
                        metrics_line(m)
                    );
                }
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    break;
                }
            }
            WsBody::Error(e) => {
                return Err(CliError::Client(ClientError::Ws {
                    code: e.code,
                    message: e.message.clone(),
                }));
            }
            _ => {}
        }
    }
    mon.close().await;
    Ok(())
}

fn metrics_line(m: &MetricsData) -> String {
    format!(
        "cpu {:.1}%  mem {}/{}  net rx {} tx {}  disk read {} write {}",
        m.cpu.utilization,
        bytes(m.memory.used),
        bytes(m.memory.total),
        bytes(m.network.rx_bytes),
        bytes(m.network.tx_bytes),
        bytes(m.disk.read_bytes),
        bytes(m.disk.write_bytes),
    )
}

/// `1.5 MiB`.
pub fn bytes(n: u64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < UNITS.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{n} B")
    } else {
        format!("{v:.1} {}", UNITS[u])
    }
}

fn print_vms(vms: &[VmInfo]) {
    let mut rows = vec![
        [
            "NAME", "ID", "STATE", "VCPUS", "MEMORY", "DISK", "IP", "OWNER",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for v in vms {
        rows.push(vec![
            v.name.to_string(),
            v.build_id.to_string(),
            v.state.to_string(),
            v.resources.vcpu_count.to_string(),
            format!("{} MiB", v.resources.mem_size_mib),
            format!("{} GiB", v.resources.disk_size),
            v.ip_address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
            v.owner.to_checksum(),
        ]);
    }
    print_table(&rows);
}

fn print_info(v: &VmInfo) {
    let rows: Vec<Vec<String>> = [
        ("name", v.name.to_string()),
        ("id", v.build_id.to_string()),
        ("owner", v.owner.to_checksum()),
        ("state", v.state.to_string()),
        ("vcpus", v.resources.vcpu_count.to_string()),
        ("memory", format!("{} MiB", v.resources.mem_size_mib)),
        ("disk", format!("{} GiB", v.resources.disk_size)),
        (
            "ip",
            v.ip_address
                .map(|a| a.to_string())
                .unwrap_or_else(|| "-".into()),
        ),
        ("created", when(Some(v.created_at))),
        ("updated", when(Some(v.updated_at))),
    ]
    .into_iter()
    .chain(v.node.as_ref().map(|n| ("node", n.to_string())))
    .chain(v.message.clone().map(|m| ("message", m)))
    .map(|(k, val)| vec![format!("{k}:"), val])
    .chain(
        v.devices
            .iter()
            .map(|d| vec![format!("device {}:", d.id), d.kind.to_string()]),
    )
    .collect();
    print_table(&rows);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn memory_is_mib_or_a_size() {
        assert_eq!(parse_mib("512").unwrap(), 512);
        assert_eq!(parse_mib("512m").unwrap(), 512);
        assert_eq!(parse_mib("2g").unwrap(), 2048);
        assert!(parse_mib("0").is_err());
        assert!(parse_mib("1k").is_err());
        assert!(parse_mib("lots").is_err());
    }

    #[test]
    fn wait_targets_follow_the_operation() {
        let w = WaitArgs {
            wait: true,
            timeout: Duration::from_secs(1),
        };
        let vm = || "web".to_owned();
        let t = |c: VmCommand| target_of(&c).map(|(s, _)| s);
        assert_eq!(
            t(VmCommand::Boot {
                vm: vm(),
                wait: w.clone()
            }),
            Some(VmState::Running)
        );
        assert_eq!(
            t(VmCommand::Stop {
                vm: vm(),
                force: true,
                wait: w.clone()
            }),
            Some(VmState::Stopped)
        );
        assert_eq!(
            t(VmCommand::Suspend {
                vm: vm(),
                wait: w.clone()
            }),
            Some(VmState::Paused)
        );
        assert_eq!(
            t(VmCommand::Resume {
                vm: vm(),
                wait: w.clone()
            }),
            Some(VmState::Running)
        );
        let no_wait = WaitArgs { wait: false, ..w };
        assert_eq!(
            t(VmCommand::Boot {
                vm: vm(),
                wait: no_wait
            }),
            None
        );
        assert_eq!(t(VmCommand::Info { vm: vm() }), None);
    }

    #[test]
    fn sizes_read_like_people_write_them() {
        assert_eq!(bytes(512), "512 B");
        assert_eq!(bytes(1536), "1.5 KiB");
        assert_eq!(bytes(256 << 20), "256.0 MiB");
    }
}
