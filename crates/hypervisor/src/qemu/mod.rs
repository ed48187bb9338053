//! The QEMU backend: `-M microvm` guests driven over QMP, serial console on a Unix socket.
//!
//! Files of one VM, under its directory: `qmp.sock`, `console.sock`, `qemu.pid`, `qemu.log`
//! (QEMU's stderr). The process runs in its own process group and is not killed when the
//! agent exits, so guests survive an agent restart and are re-adopted ([`Backend::adopt`]).

mod qmp;

use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::watch;

use crate::HypervisorError;
use crate::backend::{
    Backend, BackendKind, DeviceSpec, Guest, GuestExit, GuestMetrics, Launch, SnapshotPaths, VmSpec,
};
use crate::console::Console;
use crate::proc::{self, CpuSampler};

pub use qmp::{Qmp, QmpEvent};

/// Which accelerator QEMU uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accel {
    Kvm,
    Tcg,
    /// KVM when `/dev/kvm` opens read-write, TCG otherwise.
    Auto,
}

impl std::str::FromStr for Accel {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "kvm" => Ok(Accel::Kvm),
            "tcg" => Ok(Accel::Tcg),
            "auto" => Ok(Accel::Auto),
            _ => Err(format!("accel must be kvm, tcg or auto, not {s:?}")),
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuConfig {
    /// The QEMU system emulator, a path or a name looked up on PATH.
    pub binary: PathBuf,
    pub accel: Accel,
    /// How long a launch may take until QEMU's sockets answer.
    pub launch_timeout: Duration,
    /// Run QEMU inside this network namespace (where the VMs' bridge and TAPs are).
    pub netns: Option<String>,
    /// Give a VM without a TAP device QEMU's user-mode network (NAT through the host, no
    /// address reachable from outside): for hosts where vmfleet may not create TAPs.
    pub user_net: bool,
}

impl Default for QemuConfig {
    fn default() -> Self {
        QemuConfig {
            binary: PathBuf::from("qemu-system-x86_64"),
            accel: Accel::Auto,
            launch_timeout: Duration::from_secs(20),
            netns: None,
            user_net: false,
        }
    }
}

#[derive(Debug, Clone)]
pub struct QemuBackend {
    config: QemuConfig,
    /// Set when `auto` found that KVM opens but cannot run guests here (a nested host):
    /// later launches go straight to TCG.
    kvm_broken: Arc<std::sync::atomic::AtomicBool>,
    /// Whether a probe guest ran under KVM: `auto` asks once, before its first KVM launch.
    kvm_probed: Arc<tokio::sync::OnceCell<bool>>,
}

fn proto(message: impl Into<String>) -> HypervisorError {
    HypervisorError::Protocol {
        backend: "qemu",
        message: message.into(),
    }
}

/// Where the KVM device is.
const KVM: &str = "/dev/kvm";
/// How long `auto`'s probe guest has to print its first byte under KVM. A kernel with
/// `earlyprintk` prints within milliseconds where KVM works; on a nested host where it does
/// not, the guest hangs silently for about 20 s before KVM reports an emulation failure.
const KVM_PROBE_WAIT: Duration = Duration::from_secs(3);

impl QemuBackend {
    pub fn new(config: QemuConfig) -> Self {
        QemuBackend {
            config,
            kvm_broken: Arc::default(),
            kvm_probed: Arc::default(),
        }
    }

    /// The accelerator a launch will use.
    pub fn effective_accel(&self) -> Accel {
        match self.config.accel {
            Accel::Auto if self.kvm_broken.load(std::sync::atomic::Ordering::Relaxed) => Accel::Tcg,
            Accel::Auto if proc::check_kvm(Path::new(KVM)).is_ok() => Accel::Kvm,
            Accel::Auto => Accel::Tcg,
            a => a,
        }
    }

    /// The full QEMU command line for `spec`, files under `dir`.
    pub fn command_line(&self, spec: &VmSpec, dir: &Path, how: &Launch) -> Vec<String> {
        self.command_line_with(spec, dir, how, self.effective_accel())
    }

    fn command_line_with(
        &self,
        spec: &VmSpec,
        dir: &Path,
        how: &Launch,
        accel: Accel,
    ) -> Vec<String> {
        let (accel, cpu) = match accel {
            Accel::Kvm => ("kvm", "host"),
            _ => ("tcg", "max"),
        };
        let p = |name: &str| dir.join(name).display().to_string();
        // A passed-through PCI device needs microvm's PCIe host bridge (off by default).
        let pcie = spec
            .devices
            .iter()
            .any(|d| matches!(d.device, DeviceSpec::PciPassthrough { .. }));
        let mut a: Vec<String> = vec![
            "-name".into(),
            format!("vmfleet-{}", spec.id),
            "-M".into(),
            format!(
                "microvm,accel={accel},acpi=on{}",
                if pcie { ",pcie=on" } else { "" }
            ),
            "-cpu".into(),
            cpu.into(),
            "-smp".into(),
            spec.resources.vcpu_count.to_string(),
            "-m".into(),
            spec.resources.mem_size_mib.to_string(),
            "-nodefaults".into(),
            "-no-user-config".into(),
            "-display".into(),
            "none".into(),
            "-chardev".into(),
            format!(
                "socket,id=ser0,path={},server=on,wait=on",
                p("console.sock")
            ),
            "-serial".into(),
            "chardev:ser0".into(),
            "-qmp".into(),
            format!("unix:{},server=on,wait=off", p("qmp.sock")),
            "-pidfile".into(),
            p("qemu.pid"),
            "-kernel".into(),
            spec.kernel.display().to_string(),
            "-append".into(),
            boot_args(&spec.boot_args, accel == "tcg"),
        ];
        if let Some(initrd) = &spec.initrd {
            a.extend(["-initrd".into(), initrd.display().to_string()]);
        }
        let disks = std::iter::once((spec.root_disk.as_path(), false)).chain(
            spec.extra_disks
                .iter()
                .map(|d| (d.path.as_path(), d.read_only)),
        );
        for (i, (path, ro)) in disks.enumerate() {
            a.extend([
                "-drive".into(),
                format!(
                    "id=disk{i},file={},format=raw,if=none,readonly={}",
                    path.display(),
                    if ro { "on" } else { "off" }
                ),
                "-device".into(),
                format!("virtio-blk-device,drive=disk{i}"),
            ]);
        }
        a.extend([
            "-device".into(),
            format!("virtio-balloon-device,id={BALLOON}"),
        ]);
        if let Some(net) = &spec.network {
            a.extend([
                "-netdev".into(),
                format!("tap,id=net0,ifname={},script=no,downscript=no", net.tap),
                "-device".into(),
                format!("virtio-net-device,netdev=net0,mac={}", net.mac),
            ]);
        } else if self.config.user_net {
            a.extend([
                "-netdev".into(),
                "user,id=net0".into(),
                "-device".into(),
                "virtio-net-device,netdev=net0".into(),
            ]);
        }
        for d in &spec.devices {
            a.extend(device_args(&d.id, &d.device));
        }
        if let Launch::Restore(snap) = how {
            a.extend([
                "-incoming".into(),
                format!("exec:cat {}", shell_quote(&snap.state())),
            ]);
        }
        a
    }

    async fn attach(
        &self,
        spec: &VmSpec,
        dir: &Path,
        child: Option<tokio::process::Child>,
        pid: u32,
    ) -> Result<QemuGuest, HypervisorError> {
        let deadline = Instant::now() + self.config.launch_timeout;
        let log = dir.join("qemu.log");
        let mut child = child;
        let gone = |child: &mut Option<tokio::process::Child>| match child {
            Some(c) => matches!(c.try_wait(), Ok(Some(_))),
            None => !proc::alive(pid),
        };
        // The console first: QEMU waits for it (wait=on) before it starts the guest, so no
        // byte of the boot is lost.
        let console_stream = loop {
            match UnixStream::connect(dir.join("console.sock")).await {
                Ok(s) => break s,
                Err(_) if gone(&mut child) => {
                    return Err(HypervisorError::GuestFailed(format!(
                        "QEMU exited during launch: {}",
                        proc::tail(&log, 2000)
                    )));
                }
                Err(_) if Instant::now() >= deadline => {
                    return Err(HypervisorError::Timeout("QEMU's console socket"));
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        let qmp = loop {
            match Qmp::connect(&dir.join("qmp.sock")).await {
                Ok(q) => break q,
                Err(_) if gone(&mut child) => {
                    return Err(HypervisorError::GuestFailed(format!(
                        "QEMU exited during launch: {}",
                        proc::tail(&log, 2000)
                    )));
                }
                Err(e) if Instant::now() >= deadline => return Err(e),
                Err(_) => tokio::time::sleep(Duration::from_millis(2)).await,
            }
        };
        let console = Console::new();
        let (read, write) = console_stream.into_split();
        console.set_input(Box::new(write)).await;
        let (exit_tx, exit_rx) = watch::channel(None);
        let guest = QemuGuest {
            inner: Arc::new(GuestInner {
                pid,
                qmp,
                console,
                exited: exit_rx,
                cpu: Mutex::new(CpuSampler::default()),
                vcpus: spec.resources.vcpu_count,
                mem_total: spec.resources.mem_size_mib << 20,
                tap: spec.network.as_ref().map(|n| n.tap.clone()),
                crash: Mutex::new(None),
                log,
            }),
        };
        guest.spawn_console_reader(read);
        guest.spawn_supervisor(child, exit_tx);
        // Ask the guest's balloon driver for memory statistics every second; a guest without
        // the driver simply never reports any.
        let _ = guest
            .inner
            .qmp
            .execute(
                "qom-set",
                json!({"path": BALLOON_PATH, "property": "guest-stats-polling-interval", "value": 1}),
            )
            .await;
        Ok(guest)
    }
}

/// The kernel command line QEMU gets. Under TCG, a Linux guest on `microvm` (no other
/// clocksource than the TSC) sometimes hangs calibrating the TSC early in boot (about one
/// boot in five, measured); telling it the frequency skips the calibration. The guest's TSC
/// runs at the host's rate under TCG, so the host's frequency is the right value.
fn boot_args(args: &str, tcg: bool) -> String {
    match host_tsc_khz() {
        Some(khz) if tcg && !args.contains("tsc_early_khz=") => {
            format!("{args} tsc_early_khz={khz}")
        }
        _ => args.to_owned(),
    }
}

/// The host CPU's frequency in kHz, from `/proc/cpuinfo`.
fn host_tsc_khz() -> Option<u64> {
    let info = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let mhz: f64 = info
        .lines()
        .find(|l| l.starts_with("cpu MHz"))?
        .split(':')
        .nth(1)?
        .trim()
        .parse()
        .ok()?;
    let khz = (mhz * 1000.0).round();
    (khz >= 1.0).then_some(khz as u64)
}

/// The QEMU arguments of one added device, its QEMU id the device's own (`dev0`).
fn device_args(id: &vmfleet_core::DeviceId, device: &DeviceSpec) -> Vec<String> {
    match device {
        DeviceSpec::Rng => vec![
            "-object".into(),
            format!("rng-random,id=rng-{id},filename=/dev/urandom"),
            "-device".into(),
            format!("virtio-rng-device,id={id},rng=rng-{id}"),
        ],
        DeviceSpec::PciPassthrough { address } => {
            vec!["-device".into(), format!("vfio-pci,id={id},host={address}")]
        }
        // Read-only: the host's files as they are (`none`). Writable: `mapped-xattr`, so
        // that what the guest's root creates lands as plain files of QEMU's user (mode
        // 0600/0700, the guest's owner and mode kept in xattrs), never a set-uid file or a
        // device node on the host.
        DeviceSpec::Share {
            tag,
            path,
            read_only,
        } => vec![
            "-fsdev".into(),
            format!(
                "local,id=fs-{id},path={},security_model={}{}",
                qemu_escape(&path.display().to_string()),
                if *read_only { "none" } else { "mapped-xattr" },
                if *read_only { ",readonly=on" } else { "" }
            ),
            "-device".into(),
            format!("virtio-9p-device,id={id},fsdev=fs-{id},mount_tag={tag}"),
        ],
    }
}

/// A value inside a QEMU option list: commas doubled.
fn qemu_escape(v: &str) -> String {
    v.replace(',', ",,")
}

fn shell_quote(p: &Path) -> String {
    format!("'{}'", p.display().to_string().replace('\'', r"'\''"))
}

#[async_trait]
impl Backend for QemuBackend {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    /// microvm takes virtio-rng and virtio-9p on virtio-mmio, and VFIO PCI devices on its
    /// PCIe host bridge (`pcie=on`).
    fn check_device(&self, device: &DeviceSpec) -> Result<(), HypervisorError> {
        match device {
            DeviceSpec::Rng | DeviceSpec::PciPassthrough { .. } | DeviceSpec::Share { .. } => {
                Ok(())
            }
        }
    }

    async fn preflight(&self) -> Result<(), HypervisorError> {
        proc::find_binary(&self.config.binary)?;
        if self.config.accel == Accel::Kvm {
            proc::check_kvm(Path::new(KVM))?;
        }
        Ok(())
    }

    async fn launch(
        &self,
        spec: &VmSpec,
        dir: &Path,
        how: Launch,
    ) -> Result<Box<dyn Guest>, HypervisorError> {
        self.preflight().await?;
        let mut accel = self.effective_accel();
        if self.config.accel == Accel::Auto
            && accel == Accel::Kvm
            && !*self
                .kvm_probed
                .get_or_init(|| self.kvm_runs_guests(&spec.kernel))
                .await
        {
            tracing::warn!(
                "KVM opens but its probe guest printed nothing in {KVM_PROBE_WAIT:?}; using TCG"
            );
            self.kvm_broken
                .store(true, std::sync::atomic::Ordering::Relaxed);
            accel = Accel::Tcg;
        }
        match self.launch_with(spec, dir, how.clone(), accel).await {
            // `auto` means KVM when KVM works: on a host where /dev/kvm opens but QEMU cannot
            // run a guest with it (nested virtualisation), fall back to TCG, once for good.
            Err(HypervisorError::GuestFailed(why))
                if self.config.accel == Accel::Auto && accel == Accel::Kvm =>
            {
                tracing::warn!(reason = %why, "KVM cannot run guests on this host; using TCG");
                self.kvm_broken
                    .store(true, std::sync::atomic::Ordering::Relaxed);
                self.launch_with(spec, dir, how, Accel::Tcg).await
            }
            other => other,
        }
    }

    async fn adopt(&self, spec: &VmSpec, dir: &Path) -> Result<Box<dyn Guest>, HypervisorError> {
        self.adopt_pid(spec, dir).await
    }
}

impl QemuBackend {
    /// Boots `kernel` under KVM with an early serial console and nothing else, and tells
    /// whether it printed anything in [`KVM_PROBE_WAIT`]: a host where `/dev/kvm` opens may
    /// still be unable to run a guest (a nested VM), and its guests hang rather than fail.
    async fn kvm_runs_guests(&self, kernel: &Path) -> bool {
        let mut cmd = tokio::process::Command::new(&self.config.binary);
        cmd.args([
            "-M",
            "microvm,accel=kvm",
            "-cpu",
            "host",
            "-smp",
            "1",
            "-m",
            "128",
            "-nodefaults",
            "-no-user-config",
            "-display",
            "none",
            "-serial",
            "stdio",
            "-kernel",
        ])
        .arg(kernel)
        .args([
            "-append",
            "earlyprintk=serial,ttyS0,115200 console=ttyS0 panic=-1",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .kill_on_drop(true);
        let Ok(mut child) = cmd.spawn() else {
            return false;
        };
        let Some(mut out) = child.stdout.take() else {
            return false;
        };
        let mut byte = [0u8; 1];
        let printed = matches!(
            tokio::time::timeout(KVM_PROBE_WAIT, out.read(&mut byte)).await,
            Ok(Ok(1))
        );
        let _ = child.kill().await;
        tracing::info!(printed, "KVM probe guest");
        printed
    }

    async fn launch_with(
        &self,
        spec: &VmSpec,
        dir: &Path,
        how: Launch,
        accel: Accel,
    ) -> Result<Box<dyn Guest>, HypervisorError> {
        for stale in ["console.sock", "qmp.sock", "qemu.pid"] {
            let _ = std::fs::remove_file(dir.join(stale));
        }
        let log_path = dir.join("qemu.log");
        let log = File::create(&log_path).map_err(HypervisorError::io(&log_path))?;
        let mut cmd = match &self.config.netns {
            // `ip netns exec` enters the namespace and execs QEMU: the pid stays QEMU's.
            Some(ns) => {
                let mut c = tokio::process::Command::new("ip");
                c.args(["netns", "exec", ns]).arg(&self.config.binary);
                c
            }
            None => tokio::process::Command::new(&self.config.binary),
        };
        cmd.args(self.command_line_with(spec, dir, &how, accel))
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(false);
        let child = cmd.spawn().map_err(|source| HypervisorError::Launch {
            backend: "qemu",
            source,
        })?;
        let pid = child
            .id()
            .ok_or_else(|| proto("QEMU exited before it had a pid"))?;
        let guest = match self.attach(spec, dir, Some(child), pid).await {
            Ok(g) => g,
            Err(e) => {
                let _ = proc::kill(pid);
                return Err(e);
            }
        };
        if let Launch::Restore(_) = how
            && let Err(e) = guest.finish_incoming().await
        {
            let _ = guest.kill().await;
            return Err(e);
        }
        Ok(Box::new(guest))
    }

    async fn adopt_pid(
        &self,
        spec: &VmSpec,
        dir: &Path,
    ) -> Result<Box<dyn Guest>, HypervisorError> {
        let pid_path = dir.join("qemu.pid");
        let pid: u32 = std::fs::read_to_string(&pid_path)
            .map_err(HypervisorError::io(&pid_path))?
            .trim()
            .parse()
            .map_err(|_| proto(format!("{} holds no pid", pid_path.display())))?;
        let qmp_sock = dir.join("qmp.sock").display().to_string();
        let ours =
            proc::cmdline(pid).is_some_and(|args| args.iter().any(|a| a.contains(&qmp_sock)));
        if !ours {
            return Err(HypervisorError::GuestFailed(format!(
                "process {pid} is no longer this VM's QEMU"
            )));
        }
        Ok(Box::new(self.attach(spec, dir, None, pid).await?))
    }
}

struct GuestInner {
    pid: u32,
    qmp: Arc<Qmp>,
    console: Console,
    exited: watch::Receiver<Option<GuestExit>>,
    cpu: Mutex<CpuSampler>,
    vcpus: u32,
    mem_total: u64,
    tap: Option<String>,
    /// Set when the guest is seen to fail (panic, internal error): the exit is a crash.
    crash: Mutex<Option<String>>,
    log: PathBuf,
}

/// A running QEMU guest.
#[derive(Clone)]
pub struct QemuGuest {
    inner: Arc<GuestInner>,
}

/// The balloon device's id; its QOM path is `/machine/peripheral/<id>`.
const BALLOON: &str = "balloon0";
const BALLOON_PATH: &str = "/machine/peripheral/balloon0";

/// What the kernel prints when it dies.
const PANIC_MARKER: &[u8] = b"Kernel panic - not syncing";

impl QemuGuest {
    fn mark_crash(&self, reason: String) {
        let mut c = self.inner.crash.lock().unwrap_or_else(|p| p.into_inner());
        if c.is_none() {
            tracing::warn!(pid = self.inner.pid, %reason, "guest failed");
            *c = Some(reason);
        }
    }

    /// Copies guest output into the console, and watches it for a kernel panic.
    fn spawn_console_reader(&self, mut read: tokio::net::unix::OwnedReadHalf) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut buf = vec![0u8; 16 * 1024];
            let mut window: Vec<u8> = Vec::new();
            loop {
                match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => {
                        me.inner.console.push(&buf[..n]);
                        window.extend_from_slice(&buf[..n]);
                        if let Some(at) = find(&window, PANIC_MARKER) {
                            let line_end = window[at..]
                                .iter()
                                .position(|&b| b == b'\n')
                                .map_or(window.len(), |e| at + e);
                            let line = String::from_utf8_lossy(&window[at..line_end]);
                            me.mark_crash(format!("guest kernel panic: {}", line.trim()));
                            let _ = me.inner.qmp.execute("quit", json!({})).await;
                            window.clear();
                        }
                        let keep = PANIC_MARKER.len() + 256;
                        if window.len() > keep {
                            window.drain(..window.len() - keep);
                        }
                    }
                }
            }
        });
    }

    /// Watches QMP events and the process; publishes how it ended.
    fn spawn_supervisor(
        &self,
        child: Option<tokio::process::Child>,
        exit_tx: watch::Sender<Option<GuestExit>>,
    ) {
        let me = self.clone();
        let mut events = self.inner.qmp.events();
        tokio::spawn(async move {
            let mut shutdown_seen = false;
            let watch_events = async {
                while let Ok(ev) = events.recv().await {
                    match ev.name.as_str() {
                        "SHUTDOWN" => shutdown_seen = true,
                        "STOP" => {
                            // A stop nobody asked for: the guest or the accelerator failed.
                            if let Ok(status) = me.inner.qmp.status().await
                                && matches!(
                                    status.as_str(),
                                    "internal-error" | "guest-panicked" | "io-error"
                                )
                            {
                                me.mark_crash(format!(
                                    "QEMU stopped the guest ({status}): {}",
                                    proc::tail(&me.inner.log, 600)
                                ));
                                let _ = me.inner.qmp.execute("quit", json!({})).await;
                            }
                        }
                        "GUEST_PANICKED" => {
                            me.mark_crash("guest kernel panic".into());
                            let _ = me.inner.qmp.execute("quit", json!({})).await;
                        }
                        _ => {}
                    }
                }
                shutdown_seen
            };
            let shutdown_seen = tokio::select! {
                seen = watch_events => seen,
                () = me.inner.qmp.closed() => false,
            };
            // QMP is gone: the process is ending. Reap it (or wait for it, when adopted).
            let status = match child {
                Some(mut c) => c.wait().await.ok(),
                None => {
                    proc::wait_gone(me.inner.pid, Duration::from_secs(30)).await;
                    None
                }
            };
            me.inner.console.close();
            let crash = me
                .inner
                .crash
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .clone();
            let clean = status.is_none_or(|s| s.success());
            let exit = match crash {
                Some(reason) => GuestExit::Crashed(reason),
                None if clean || shutdown_seen => GuestExit::Shutdown,
                None => GuestExit::Crashed(format!(
                    "QEMU exited ({}): {}",
                    status.map_or("unknown status".into(), |s| s.to_string()),
                    proc::tail(&me.inner.log, 2000)
                )),
            };
            let _ = exit_tx.send(Some(exit));
        });
    }

    /// After `-incoming`, waits for the migration stream to be read, then runs the guest.
    async fn finish_incoming(&self) -> Result<(), HypervisorError> {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let status = self.inner.qmp.status().await?;
            match status.as_str() {
                "inmigrate" => {}
                "running" => return Ok(()),
                "paused" | "postmigrate" | "prelaunch" | "restore-vm" => {
                    let mig = self.inner.qmp.execute("query-migrate", json!({})).await?;
                    match mig.get("status").and_then(Value::as_str) {
                        Some("failed") => {
                            return Err(proto(format!("restoring the snapshot failed: {mig}")));
                        }
                        Some("completed") | None => {
                            self.inner.qmp.execute("cont", json!({})).await?;
                            return Ok(());
                        }
                        _ => {}
                    }
                }
                other => return Err(proto(format!("restore ended in state {other}"))),
            }
            if Instant::now() >= deadline {
                return Err(HypervisorError::Timeout("the snapshot to load"));
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    /// Memory in use: the guest's own view (total minus available, from its balloon
    /// driver's statistics) when it reports one, else the resident size of the guest's RAM
    /// mapping in QEMU (what the guest has touched).
    async fn memory_used(&self) -> u64 {
        let total = self.inner.mem_total;
        if let Ok(v) = self
            .inner
            .qmp
            .execute(
                "qom-get",
                json!({"path": BALLOON_PATH, "property": "guest-stats"}),
            )
            .await
        {
            let stat = |k: &str| {
                v["stats"]
                    .get(k)
                    .and_then(Value::as_i64)
                    .filter(|n| *n >= 0)
            };
            let fresh = v.get("last-update").and_then(Value::as_i64).unwrap_or(0) > 0;
            let avail = stat("stat-available-memory").or_else(|| stat("stat-free-memory"));
            if let (true, Some(t), Some(a)) = (fresh, stat("stat-total-memory"), avail) {
                return u64::try_from(t - a).unwrap_or(0);
            }
        }
        proc::mapping_rss(self.inner.pid, total)
            .unwrap_or(0)
            .min(total)
    }

    /// The TAP device's counters `(rx bytes, rx packets, tx bytes, tx packets)`, from the
    /// host side, read in QEMU's own network namespace (`/proc/<pid>/net/dev`).
    fn tap_counters(&self) -> Option<[u64; 4]> {
        let tap = self.inner.tap.as_ref()?;
        let dev = std::fs::read_to_string(format!("/proc/{}/net/dev", self.inner.pid)).ok()?;
        let line = dev
            .lines()
            .find(|l| l.trim_start().starts_with(&format!("{tap}:")))?;
        let f: Vec<u64> = line
            .split_once(':')?
            .1
            .split_whitespace()
            .filter_map(|n| n.parse().ok())
            .collect();
        Some([*f.first()?, *f.get(1)?, *f.get(8)?, *f.get(9)?])
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

#[async_trait]
impl Guest for QemuGuest {
    fn kind(&self) -> BackendKind {
        BackendKind::Qemu
    }

    fn pid(&self) -> u32 {
        self.inner.pid
    }

    fn console(&self) -> Console {
        self.inner.console.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<GuestExit>> {
        self.inner.exited.clone()
    }

    async fn power_button(&self) -> Result<(), HypervisorError> {
        self.inner
            .qmp
            .execute("system_powerdown", json!({}))
            .await
            .map(drop)
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        let mut exited = self.exited();
        if exited.borrow().is_some() {
            return Ok(());
        }
        // Ask QEMU to quit; if it does not within a moment, SIGKILL.
        let _ = tokio::time::timeout(
            Duration::from_secs(2),
            self.inner.qmp.execute("quit", json!({})),
        )
        .await;
        let waited = tokio::time::timeout(Duration::from_secs(3), exited.wait_for(Option::is_some));
        if waited.await.is_err() {
            let _ = proc::kill(self.inner.pid);
            let _ = tokio::time::timeout(Duration::from_secs(10), exited.wait_for(Option::is_some))
                .await;
        }
        Ok(())
    }

    async fn metrics(&self) -> Result<GuestMetrics, HypervisorError> {
        let pid = self.inner.pid;
        let cpu_percent = self
            .inner
            .cpu
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample(pid, self.inner.vcpus);
        let tap = self.tap_counters();
        let mut m = GuestMetrics {
            cpu_percent,
            memory_used_bytes: self.memory_used().await,
            memory_total_bytes: self.inner.mem_total,
            disk_read_ops: Some(0),
            disk_write_ops: Some(0),
            // The TAP's transmit is the guest's receive.
            net_rx_bytes: tap.map(|c| c[2]),
            net_tx_bytes: tap.map(|c| c[0]),
            net_rx_packets: tap.map(|c| c[3]),
            net_tx_packets: tap.map(|c| c[1]),
            ..GuestMetrics::default()
        };
        let stats = self
            .inner
            .qmp
            .execute("query-blockstats", json!({}))
            .await?;
        for dev in stats.as_array().into_iter().flatten() {
            let s = &dev["stats"];
            let n = |k: &str| s.get(k).and_then(Value::as_u64).unwrap_or(0);
            m.disk_read_bytes += n("rd_bytes");
            m.disk_write_bytes += n("wr_bytes");
            m.disk_read_ops = m.disk_read_ops.map(|v| v + n("rd_operations"));
            m.disk_write_ops = m.disk_write_ops.map(|v| v + n("wr_operations"));
        }
        Ok(m)
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.inner.qmp.execute("stop", json!({})).await.map(drop)
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.inner.qmp.execute("cont", json!({})).await.map(drop)
    }

    async fn reboot(&self) -> Result<(), HypervisorError> {
        self.inner
            .qmp
            .execute("system_reset", json!({}))
            .await
            .map(drop)
    }

    async fn snapshot(&self, dest: &SnapshotPaths) -> Result<(), HypervisorError> {
        let uri = format!("exec:cat > {}", shell_quote(&dest.state()));
        self.inner
            .qmp
            .execute("migrate", json!({ "uri": uri }))
            .await?;
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let mig = self.inner.qmp.execute("query-migrate", json!({})).await?;
            match mig.get("status").and_then(Value::as_str) {
                Some("completed") => return Ok(()),
                Some("failed" | "cancelled") => {
                    return Err(proto(format!("saving the snapshot failed: {mig}")));
                }
                _ if Instant::now() >= deadline => {
                    let _ = self.inner.qmp.execute("migrate_cancel", json!({})).await;
                    return Err(HypervisorError::Timeout("the snapshot to be written"));
                }
                _ => tokio::time::sleep(Duration::from_millis(20)).await,
            }
        }
    }

    async fn coredump(&self, dest: &Path) -> Result<(), HypervisorError> {
        let protocol = format!("file:{}", dest.display());
        self.inner
            .qmp
            .execute(
                "dump-guest-memory",
                json!({ "paging": false, "protocol": protocol }),
            )
            .await?;
        Ok(())
    }

    async fn set_memory(&self, mib: u64) -> Result<(), HypervisorError> {
        if mib << 20 > self.inner.mem_total {
            return Err(HypervisorError::InvalidSpec(format!(
                "a running QEMU guest can shrink below its boot memory ({} MiB) and grow back, \
                 not beyond it",
                self.inner.mem_total >> 20
            )));
        }
        self.inner
            .qmp
            .execute("balloon", json!({ "value": mib << 20 }))
            .await
            .map(drop)
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use vmfleet_core::{DeviceId, PciAddress, ShareTag, VmId, VmResources};

    use super::*;
    use crate::backend::AttachedDevice;

    fn spec(devices: Vec<(u32, DeviceSpec)>) -> VmSpec {
        VmSpec {
            id: VmId::new("vm-1").unwrap(),
            resources: VmResources {
                vcpu_count: 1,
                mem_size_mib: 256,
                disk_size: 1,
            },
            kernel: PathBuf::from("/img/vmlinux.bin"),
            initrd: None,
            root_disk: PathBuf::from("/vms/vm-1/root.disk"),
            extra_disks: Vec::new(),
            boot_args: "console=ttyS0".into(),
            network: None,
            devices: devices
                .into_iter()
                .map(|(n, device)| AttachedDevice {
                    id: DeviceId::nth(n),
                    device,
                })
                .collect(),
        }
    }

    fn line(spec: &VmSpec) -> String {
        QemuBackend::new(QemuConfig::default())
            .command_line_with(spec, Path::new("/vms/vm-1"), &Launch::Boot, Accel::Tcg)
            .join(" ")
    }

    #[test]
    fn no_devices_no_pcie() {
        let l = line(&spec(Vec::new()));
        assert!(l.contains("-M microvm,accel=tcg,acpi=on "), "{l}");
        assert!(
            !l.contains("pcie") && !l.contains("9p") && !l.contains("rng"),
            "{l}"
        );
    }

    #[test]
    fn an_entropy_device_on_virtio_mmio() {
        let l = line(&spec(vec![(0, DeviceSpec::Rng)]));
        assert!(
            l.contains(
                "-object rng-random,id=rng-dev0,filename=/dev/urandom \
                 -device virtio-rng-device,id=dev0,rng=rng-dev0"
            ),
            "{l}"
        );
    }

    #[test]
    fn a_pci_device_through_vfio_on_the_pcie_bridge() {
        let address = PciAddress::new("0000:01:00.0").unwrap();
        let l = line(&spec(vec![(3, DeviceSpec::PciPassthrough { address })]));
        assert!(l.contains("-M microvm,accel=tcg,acpi=on,pcie=on "), "{l}");
        assert!(
            l.contains("-device vfio-pci,id=dev3,host=0000:01:00.0"),
            "{l}"
        );
    }

    #[test]
    fn shares_over_virtio_9p() {
        let ro = DeviceSpec::Share {
            tag: ShareTag::new("data").unwrap(),
            path: PathBuf::from("/srv/shares/a,b"),
            read_only: true,
        };
        let rw = DeviceSpec::Share {
            tag: ShareTag::new("scratch").unwrap(),
            path: PathBuf::from("/srv/shares/rw"),
            read_only: false,
        };
        let l = line(&spec(vec![(0, ro), (1, rw)]));
        assert!(
            l.contains(
                "-fsdev local,id=fs-dev0,path=/srv/shares/a,,b,security_model=none,readonly=on \
                 -device virtio-9p-device,id=dev0,fsdev=fs-dev0,mount_tag=data"
            ),
            "{l}"
        );
        assert!(
            l.contains(
                "-fsdev local,id=fs-dev1,path=/srv/shares/rw,security_model=mapped-xattr \
                 -device virtio-9p-device,id=dev1,fsdev=fs-dev1,mount_tag=scratch"
            ),
            "{l}"
        );
        assert!(!l.contains("pcie"), "{l}");
    }

    #[test]
    fn qemu_takes_every_device() {
        let b = QemuBackend::new(QemuConfig::default());
        b.check_device(&DeviceSpec::Rng).unwrap();
        b.check_device(&DeviceSpec::PciPassthrough {
            address: PciAddress::new("0000:01:00.0").unwrap(),
        })
        .unwrap();
    }
}
