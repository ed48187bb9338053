//! The Firecracker backend: one `firecracker` process per guest, driven over its REST API.
//!
//! For each VM, under the VM's directory:
//!
//! - `firecracker.sock`: the API socket (`--api-sock`); HTTP/1.1, see [`api`].
//! - `firecracker.pid`: the process's pid, for [`Backend::adopt`] after vmfleet restarts.
//! - `firecracker.log`: Firecracker's own log (`--log-path`, level `Warning`). Without it
//!   Firecracker logs to stdout, which is the guest's serial console.
//! - `firecracker.metrics`: a named pipe Firecracker flushes its metrics into (`PUT /metrics`).
//!
//! The process's stdin and stdout are the guest's serial port (Firecracker's 8250 UART is
//! wired to them): stdout feeds the [`Console`], the console's input writes to stdin. The
//! process runs in its own process group, so it outlives a crash of vmfleet; dropping or
//! killing the guest kills it.
//!
//! A cold boot configures the machine (`/machine-config`, `/boot-source`, `/drives/*`,
//! `/network-interfaces/eth0`, `/balloon`, `/metrics`) and then `InstanceStart`; a restore
//! configures metrics and loads the snapshot (`/snapshot/load`, resumed at once). The guest
//! kernel needs `console=ttyS0` on its command line for the console, and virtio-balloon for
//! [`Guest::set_memory`].
//!
//! Firecracker has no reset and no ACPI power button: [`Guest::reboot`] is unsupported, and
//! [`Guest::power_button`] sends Ctrl-Alt-Del, which a Linux guest takes as a request to shut
//! down (Firecracker exits when the guest resets).
//!
//! Adopting a guest whose launcher is gone works through its pid file and API socket, with two
//! limits: its serial console was the launcher's pipes and cannot be re-attached (the adopted
//! guest's [`Console`] has no output and refuses input), and the metrics summed before adoption
//! are lost (the counters restart from zero).

mod api;
mod guest;
mod metrics;
mod process;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use vmfleet_core::VmId;

pub use api::ApiError;
use api::{
    Action, ActionType, ApiClient, Balloon, BootSource, Drive, EntropyDevice, InstanceInfo,
    MachineConfig, MemoryBackend, MemoryBackendType, NetworkInterface, SnapshotLoad,
};
pub use guest::FirecrackerGuest;
use metrics::CpuSampler;
use process::Files;

use crate::HypervisorError;
use crate::backend::{Backend, BackendKind, DeviceSpec, Guest, Launch, VmSpec};
use crate::console::Console;

/// Firecracker refuses more vCPUs than this (`MachineConfiguration.vcpu_count`).
pub const MAX_VCPUS: u32 = 32;

/// The longest path a Unix socket address holds (`sun_path`, less its terminating NUL).
const MAX_SOCKET_PATH: usize = 107;

/// The file names under a VM's directory.
pub const SOCKET_FILE: &str = "firecracker.sock";
pub const PID_FILE: &str = "firecracker.pid";
pub const LOG_FILE: &str = "firecracker.log";
pub const METRICS_FILE: &str = "firecracker.metrics";

/// How the backend runs Firecracker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FirecrackerConfig {
    /// The `firecracker` binary: a path, or a name looked up on `PATH`.
    pub binary: PathBuf,
    /// The device `preflight` opens read-write to check KVM.
    pub kvm_device: PathBuf,
    /// How long a new process has to open its API socket.
    pub api_ready_timeout: Duration,
    /// The time limit of one API request.
    pub request_timeout: Duration,
    /// The time limit of `/snapshot/create` and `/snapshot/load` (they copy guest memory).
    pub snapshot_timeout: Duration,
    /// Whether cold boots get a balloon device (needed by [`Guest::set_memory`]).
    pub balloon: bool,
}

impl Default for FirecrackerConfig {
    fn default() -> Self {
        FirecrackerConfig {
            binary: PathBuf::from("firecracker"),
            kvm_device: PathBuf::from("/dev/kvm"),
            api_ready_timeout: Duration::from_secs(5),
            request_timeout: Duration::from_secs(10),
            snapshot_timeout: Duration::from_secs(300),
            balloon: true,
        }
    }
}

/// Launches and adopts Firecracker guests.
#[derive(Debug, Clone, Default)]
pub struct FirecrackerBackend {
    config: FirecrackerConfig,
}

impl FirecrackerBackend {
    pub fn new(config: FirecrackerConfig) -> Self {
        FirecrackerBackend { config }
    }

    pub fn config(&self) -> &FirecrackerConfig {
        &self.config
    }

    fn files(dir: &Path) -> Files {
        Files {
            socket: dir.join(SOCKET_FILE),
            pid_file: dir.join(PID_FILE),
            log: dir.join(LOG_FILE),
        }
    }

    fn api(&self, dir: &Path) -> ApiClient {
        ApiClient::new(dir.join(SOCKET_FILE), self.config.request_timeout)
    }

    /// Waits until the new process accepts connections on its API socket.
    async fn wait_for_api(&self, guest: &FirecrackerGuest) -> Result<(), HypervisorError> {
        let deadline = Instant::now() + self.config.api_ready_timeout;
        loop {
            if let Some(how) = guest.exit() {
                return Err(HypervisorError::GuestFailed(match how {
                    crate::GuestExit::Crashed(reason) => reason,
                    crate::GuestExit::Shutdown => {
                        "firecracker ended before opening its API socket".to_owned()
                    }
                }));
            }
            if tokio::net::UnixStream::connect(guest.api.socket())
                .await
                .is_ok()
            {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(HypervisorError::Timeout("the Firecracker API socket"));
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    /// The requests of a cold boot, `InstanceStart` last.
    async fn boot(&self, spec: &VmSpec, api: &ApiClient, metrics: &str) -> Result<(), ApiError> {
        // Checked by `launch` before the process was started.
        let kernel = spec.kernel.to_str().unwrap_or_default();
        let root = spec.root_disk.to_str().unwrap_or_default();
        let initrd = spec.initrd.as_deref().and_then(Path::to_str);

        api.put(
            "/metrics",
            &api::Metrics {
                metrics_path: metrics,
            },
        )
        .await?;
        api.put(
            "/machine-config",
            &MachineConfig {
                vcpu_count: spec.resources.vcpu_count,
                mem_size_mib: spec.resources.mem_size_mib,
            },
        )
        .await?;
        api.put(
            "/boot-source",
            &BootSource {
                kernel_image_path: kernel,
                boot_args: &spec.boot_args,
                initrd_path: initrd,
            },
        )
        .await?;
        api.put(
            "/drives/rootfs",
            &Drive {
                drive_id: "rootfs",
                path_on_host: root,
                is_root_device: true,
                is_read_only: false,
            },
        )
        .await?;
        for (i, disk) in spec.extra_disks.iter().enumerate() {
            let id = format!("disk{}", i + 1);
            api.put(
                &format!("/drives/{id}"),
                &Drive {
                    drive_id: &id,
                    path_on_host: disk.path.to_str().unwrap_or_default(),
                    is_root_device: false,
                    is_read_only: disk.read_only,
                },
            )
            .await?;
        }
        if let Some(net) = &spec.network {
            api.put(
                "/network-interfaces/eth0",
                &NetworkInterface {
                    iface_id: "eth0",
                    host_dev_name: &net.tap,
                    guest_mac: &net.mac,
                },
            )
            .await?;
        }
        if spec.devices.iter().any(|d| d.device == DeviceSpec::Rng) {
            api.put("/entropy", &EntropyDevice {}).await?;
        }
        if self.config.balloon {
            api.put(
                "/balloon",
                &Balloon {
                    amount_mib: 0,
                    deflate_on_oom: true,
                    stats_polling_interval_s: 1,
                },
            )
            .await?;
        }
        api.put(
            "/actions",
            &Action {
                action_type: ActionType::InstanceStart,
            },
        )
        .await
    }

    /// The requests of a restore: metrics (allowed before a load), then the snapshot, resumed.
    async fn restore(
        &self,
        api: &ApiClient,
        metrics: &str,
        state: &str,
        memory: &str,
    ) -> Result<(), ApiError> {
        api.put(
            "/metrics",
            &api::Metrics {
                metrics_path: metrics,
            },
        )
        .await?;
        api.put_with_timeout(
            "/snapshot/load",
            &SnapshotLoad {
                snapshot_path: state,
                mem_backend: MemoryBackend {
                    backend_type: MemoryBackendType::File,
                    backend_path: memory,
                },
                resume_vm: true,
            },
            self.config.snapshot_timeout,
        )
        .await
    }
}

/// Firecracker's `--id`: letters, digits and `-`, 1 to 64 characters. A [`VmId`] may also hold
/// `_` and `.`, which become `-` (the id only labels Firecracker's log and metrics lines).
pub fn instance_id(id: &VmId) -> String {
    id.as_str()
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
        .take(64)
        .collect()
}

fn utf8(path: &Path) -> Result<&str, HypervisorError> {
    path.to_str().ok_or_else(|| {
        HypervisorError::InvalidSpec(format!(
            "{} is not UTF-8, which Firecracker's JSON API cannot carry",
            path.display()
        ))
    })
}

/// The devices Firecracker has: an entropy device (`/entropy`), no PCI and no shared file
/// system.
fn firecracker_can(device: &DeviceSpec) -> Result<(), HypervisorError> {
    let op = match device {
        DeviceSpec::Rng => return Ok(()),
        DeviceSpec::PciPassthrough { .. } => "pass a PCI device through (Firecracker has no PCI)",
        DeviceSpec::Share { .. } => {
            "share a host directory (Firecracker has no shared filesystem device)"
        }
    };
    Err(HypervisorError::Unsupported {
        backend: BackendKind::Firecracker.as_str(),
        op,
    })
}

/// What `launch` refuses before starting anything.
fn check_spec(spec: &VmSpec, dir: &Path, how: &Launch) -> Result<(), HypervisorError> {
    spec.resources.validate()?;
    for d in &spec.devices {
        firecracker_can(&d.device)?;
    }
    if spec.resources.vcpu_count > MAX_VCPUS {
        return Err(HypervisorError::InvalidSpec(format!(
            "Firecracker runs at most {MAX_VCPUS} vCPUs, not {}",
            spec.resources.vcpu_count
        )));
    }
    let socket = dir.join(SOCKET_FILE);
    if socket.as_os_str().len() > MAX_SOCKET_PATH {
        return Err(HypervisorError::InvalidSpec(format!(
            "the API socket path {} is longer than the {MAX_SOCKET_PATH} bytes a Unix socket \
             address holds; use a shorter VM directory",
            socket.display()
        )));
    }
    utf8(&dir.join(METRICS_FILE))?;
    match how {
        Launch::Boot => {
            utf8(&spec.kernel)?;
            utf8(&spec.root_disk)?;
            if let Some(initrd) = &spec.initrd {
                utf8(initrd)?;
            }
            for disk in &spec.extra_disks {
                utf8(&disk.path)?;
            }
        }
        Launch::Restore(snap) => {
            for file in [snap.state(), snap.memory()] {
                utf8(&file)?;
                if !file.is_file() {
                    return Err(HypervisorError::InvalidSpec(format!(
                        "the snapshot file {} does not exist",
                        file.display()
                    )));
                }
            }
        }
    }
    Ok(())
}

#[async_trait]
impl Backend for FirecrackerBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn check_device(&self, device: &DeviceSpec) -> Result<(), HypervisorError> {
        firecracker_can(device)
    }

    async fn preflight(&self) -> Result<(), HypervisorError> {
        crate::proc::find_binary(&self.config.binary)?;
        crate::proc::check_kvm(&self.config.kvm_device)
    }

    async fn launch(
        &self,
        spec: &VmSpec,
        dir: &Path,
        how: Launch,
    ) -> Result<Box<dyn Guest>, HypervisorError> {
        check_spec(spec, dir, &how)?;
        let binary = crate::proc::find_binary(&self.config.binary)?;
        let files = Self::files(dir);
        if let Some(pid) = process::live_firecracker(&files.pid_file, &files.socket) {
            tracing::warn!(vm = %spec.id, pid, "a Firecracker process already serves this VM");
            return Err(HypervisorError::AlreadyExists(spec.id.clone()));
        }

        // A stale socket would make Firecracker fail to bind; a stale pid file would mislead
        // `adopt`. The log restarts empty (Firecracker writes it from offset 0, not appending).
        for stale in [&files.socket, &files.pid_file] {
            if let Err(e) = std::fs::remove_file(stale)
                && e.kind() != std::io::ErrorKind::NotFound
            {
                return Err(HypervisorError::io(stale.as_path())(e));
            }
        }
        std::fs::File::create(&files.log).map_err(HypervisorError::io(&files.log))?;
        let metrics_path = dir.join(METRICS_FILE);
        metrics::make_fifo(&metrics_path)?;
        let (totals, reader) = metrics::start_reader(&metrics_path)?;
        let reader_abort = reader.abort_handle();

        let args: Vec<OsString> = vec![
            "--api-sock".into(),
            files.socket.clone().into_os_string(),
            "--id".into(),
            instance_id(&spec.id).into(),
            "--log-path".into(),
            files.log.clone().into_os_string(),
            "--level".into(),
            "Warning".into(),
        ];
        let console = Console::new();
        let spawned = match process::spawn(
            &binary,
            &args,
            files,
            console.clone(),
            vec![reader_abort.clone()],
        ) {
            Ok(s) => s,
            Err(e) => {
                reader_abort.abort();
                return Err(e);
            }
        };
        if let Some(stdin) = spawned.stdin {
            console.set_input(Box::new(stdin)).await;
        }
        let pid = spawned.supervision.pid;
        tracing::info!(vm = %spec.id, pid, dir = %dir.display(), "firecracker started");

        // From here on, an early return drops the guest, which kills the process.
        let guest = FirecrackerGuest {
            supervision: spawned.supervision,
            console,
            api: self.api(dir),
            totals,
            cpu: CpuSampler::new(pid, spec.resources.vcpu_count),
            memory_total_mib: spec.resources.mem_size_mib,
            has_network: spec.network.is_some(),
            balloon: self.config.balloon,
            snapshot_timeout: self.config.snapshot_timeout,
        };
        self.wait_for_api(&guest).await?;

        let metrics_str = utf8(&metrics_path)?;
        let configured = match &how {
            Launch::Boot => self.boot(spec, &guest.api, metrics_str).await,
            Launch::Restore(snap) => {
                let (state, memory) = (snap.state(), snap.memory());
                self.restore(&guest.api, metrics_str, utf8(&state)?, utf8(&memory)?)
                    .await
            }
        };
        if let Err(e) = configured {
            return Err(guest.explain(e).await);
        }
        tracing::info!(vm = %spec.id, pid, "firecracker guest running");
        Ok(Box::new(guest))
    }

    async fn adopt(&self, spec: &VmSpec, dir: &Path) -> Result<Box<dyn Guest>, HypervisorError> {
        let files = Self::files(dir);
        let Some(pid) = process::live_firecracker(&files.pid_file, &files.socket) else {
            return Err(HypervisorError::NotFound(spec.id.clone()));
        };
        let metrics_path = dir.join(METRICS_FILE);
        let (totals, tasks) = match metrics::start_reader(&metrics_path) {
            Ok((totals, reader)) => (totals, vec![reader.abort_handle()]),
            Err(e) => {
                tracing::warn!(vm = %spec.id, error = %e, "no metrics pipe to re-open");
                (tokio::sync::watch::channel(Default::default()).1, vec![])
            }
        };
        // The serial console was the launcher's pipes: nothing to re-attach.
        let console = Console::new();
        let supervision = process::watch_adopted(pid, files, console.clone(), tasks);
        let guest = FirecrackerGuest {
            supervision,
            console,
            api: self.api(dir),
            totals,
            cpu: CpuSampler::new(pid, spec.resources.vcpu_count),
            memory_total_mib: spec.resources.mem_size_mib,
            has_network: spec.network.is_some(),
            balloon: self.config.balloon,
            snapshot_timeout: self.config.snapshot_timeout,
        };
        let info: InstanceInfo = match guest.api.get("/").await {
            Ok(info) => info,
            Err(e) => return Err(guest.explain(e).await),
        };
        match info.state.as_str() {
            "Running" | "Paused" => {
                tracing::info!(vm = %spec.id, pid, state = %info.state, version = %info.vmm_version,
                    "adopted firecracker (its serial console cannot be re-attached)");
                Ok(Box::new(guest))
            }
            // Its launch never finished: dropping the guest kills it.
            other => Err(HypervisorError::GuestFailed(format!(
                "firecracker pid {pid} (instance {}) was never started (state {other:?})",
                info.id
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn instance_ids_fit_firecracker() {
        assert_eq!(
            instance_id(&VmId::new("vm-0123abcd").unwrap()),
            "vm-0123abcd"
        );
        assert_eq!(instance_id(&VmId::new("build_1.2").unwrap()), "build-1-2");
    }
}
