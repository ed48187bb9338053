//! Scenario `boot`: how long a VM takes from "create it" to its console saying
//! `vmfleet-guest ready`, through the driver ([`Vmm`] over [`QemuBackend`]) and by hand (the
//! very same QEMU command line, spawned and read directly), interleaved run by run. The
//! difference is what the driver adds; the target is under 50 ms.
//!
//! - **driver**: the clock starts just before [`Vmm::create`] (which copies the root image to
//!   the VM's own disk) and [`Vmm::boot`]; as soon as boot returns the benchmark subscribes to
//!   the VM's [`vmfleet_hypervisor::Console`] and a reader task notes the [`Instant`] each chunk
//!   arrives; the clock stops at the chunk that completes the marker. Then `force_stop` and
//!   `delete`, untimed.
//! - **by hand**: the clock starts just before the same root-disk copy; then
//!   `qemu-system-x86_64` with exactly [`QemuBackend::command_line`] of an equivalent
//!   [`VmSpec`], a plain [`UnixStream`] to its console socket (QEMU waits for it: `wait=on`),
//!   and the same marker search on what the socket delivers. Then SIGKILL, untimed.
//!
//! Every QEMU started gets the benchmark's temporary directory in its arguments, and a
//! [`Sweeper`] kills whatever still names it when the scenario ends, fails or is interrupted.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::json;
use tokio::io::AsyncReadExt;
use tokio::net::UnixStream;
use tokio::sync::broadcast::error::RecvError;
use vmfleet_core::{ImageName, Timestamp, VmId, VmResources};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{
    Backend, ConsoleReader, CreateVm, DEFAULT_BOOT_ARGS, Hypervisor, Launch, VmSpec, Vmm,
};

use crate::guest::{self, INITRD, KERNEL, MarkerScan, READY_MARKER, ROOTFS, Sweeper};
use crate::machine::Machine;
use crate::report::{Comparison, Figure, Mark, Measure, SCHEMA, Sample, ScenarioResult, Variant};
use crate::stats::{Summary, ms};
use crate::{BenchError, Context, Result};

pub const SCENARIO: &str = "boot";
pub const DRIVER: &str = "driver";
pub const BY_HAND: &str = "by-hand";
/// What the driver may add to a boot.
pub const TARGET_MS: f64 = 50.0;
/// How often the by-hand launcher tries QEMU's console socket until it exists.
pub(crate) const CONNECT_POLL: Duration = Duration::from_millis(1);
/// Untimed pause between runs, so one run's teardown does not overlap the next one.
pub(crate) const SETTLE: Duration = Duration::from_millis(300);

#[derive(Debug, Clone)]
pub struct BootOptions {
    /// Measured runs of each variant.
    pub runs: usize,
    /// Runs of each variant made first and left out of the summaries (cold caches).
    pub warmup: usize,
    /// The most one boot may take until the marker.
    pub timeout: Duration,
    pub resources: VmResources,
}

impl Default for BootOptions {
    fn default() -> Self {
        BootOptions {
            runs: 10,
            warmup: 1,
            timeout: Duration::from_secs(120),
            resources: VmResources {
                vcpu_count: 1,
                mem_size_mib: 256,
                disk_size: 1,
            },
        }
    }
}

/// One run: its length and the points it passed, since its start.
pub(crate) struct Run {
    pub(crate) total: Duration,
    marks: Vec<(&'static str, Duration)>,
}

impl Run {
    /// The marks in the order they were reached.
    pub(crate) fn new(total: Duration, mut marks: Vec<(&'static str, Duration)>) -> Self {
        marks.sort_by_key(|(_, at)| *at);
        Run { total, marks }
    }

    pub(crate) fn sample(&self, run: usize, seq: usize) -> Sample {
        Sample {
            run,
            seq,
            total_ms: ms(self.total),
            marks: self
                .marks
                .iter()
                .map(|(name, at)| Mark {
                    name: (*name).to_owned(),
                    at_ms: ms(*at),
                })
                .collect(),
        }
    }
}

/// When the marker arrived, and whether it was already in the scrollback when the reader
/// subscribed (then the arrival is only known to be no later than the subscription).
pub(crate) struct Arrival {
    pub(crate) at: Instant,
    pub(crate) in_scrollback: bool,
    /// When the first console bytes arrived, unless some were already in the scrollback.
    pub(crate) first_output: Option<Instant>,
}

impl Arrival {
    /// `output` and `ready`, since `t0`.
    pub(crate) fn marks(&self, t0: Instant) -> Vec<(&'static str, Duration)> {
        let since = |i: Instant| i.saturating_duration_since(t0);
        let mut marks = Vec::new();
        if let Some(o) = self.first_output {
            marks.push(("output", since(o)));
        }
        marks.push(("ready", since(self.at)));
        marks
    }
}

struct Bench {
    opts: BootOptions,
    qemu: PathBuf,
    backend: Arc<QemuBackend>,
    vmm: Vmm,
    /// The VMM's base directory, and the by-hand runs' equivalent.
    vms: PathBuf,
    own: PathBuf,
    kernel: PathBuf,
    initrd: PathBuf,
    rootfs: PathBuf,
    /// Driver runs whose marker was already in the scrollback.
    late_subscriptions: usize,
    /// Driver runs whose QEMU command line was checked equal to the by-hand one's recipe.
    identical_cmdlines: usize,
    last_hand_cmdline: Vec<String>,
}

/// Runs the scenario; `progress` hears about each run as it ends.
pub async fn run(opts: BootOptions, progress: impl Fn(&str)) -> Result<ScenarioResult> {
    if opts.runs == 0 {
        return Err(BenchError::new("--runs must be at least 1"));
    }
    let started = Timestamp::now();
    let images = guest::image_dir()?;
    let tmp = tempfile::Builder::new()
        .prefix("vmfleet-bench-")
        .tempdir()
        .context("creating a temporary directory")?;
    // Declared after `tmp`, so dropped before it: processes die before their files go.
    let sweeper = Sweeper::new(tmp.path());
    let config = QemuConfig {
        accel: Accel::Tcg,
        ..QemuConfig::default()
    };
    let qemu = config.binary.clone();
    let backend = Arc::new(QemuBackend::new(config));
    backend.preflight().await.context("QEMU cannot run here")?;
    let catalog = guest::catalog(&tmp.path().join("images"), &images)?;
    let resolve = |name: &str| -> Result<PathBuf> {
        let image = ImageName::new(name).context(format!("image name {name}"))?;
        catalog.resolve(&image).context(format!("resolving {name}"))
    };
    let (kernel, initrd, rootfs) = (resolve(KERNEL)?, resolve(INITRD)?, resolve(ROOTFS)?);
    let vms = tmp.path().join("vms");
    let own = tmp.path().join("own");
    let vmm = Vmm::new(backend.clone(), catalog.clone(), &vms).context("creating the Vmm")?;
    let mut machine = Machine::read("tcg", &qemu);
    let mut bench = Bench {
        opts,
        qemu,
        backend,
        vmm,
        vms,
        own,
        kernel,
        initrd,
        rootfs,
        late_subscriptions: 0,
        identical_cmdlines: 0,
        last_hand_cmdline: Vec::new(),
    };
    let (driver, hand) = bench.interleave(&progress).await?;
    drop(sweeper);
    machine.finish();
    Ok(bench.result(started, machine, &images, driver, hand))
}

type Samples = (Vec<Sample>, Vec<Sample>);

impl Bench {
    /// A B A B ...: each run of the driver is followed by one by hand.
    async fn interleave(&mut self, progress: &impl Fn(&str)) -> Result<(Samples, Samples)> {
        let (mut driver, mut hand): (Samples, Samples) = Default::default();
        let (warmup, total) = (self.opts.warmup, self.opts.warmup + self.opts.runs);
        let mut seq = 0;
        for i in 0..total {
            let (kind, run) = if i < warmup {
                ("warm-up", i)
            } else {
                ("run", i - warmup)
            };
            let count = if i < warmup { warmup } else { self.opts.runs };
            for variant in [DRIVER, BY_HAND] {
                let result = if variant == DRIVER {
                    self.driver(i).await
                } else {
                    self.by_hand(i).await
                };
                let r = result.map_err(|e| {
                    BenchError::new(format!("{kind} {} of {variant}: {e}", run + 1))
                })?;
                progress(&format!(
                    "boot: {kind} {}/{count} {variant:>8}: {:8.1} ms",
                    run + 1,
                    ms(r.total)
                ));
                let sample = r.sample(run, seq);
                let (warm, measured) = if variant == DRIVER {
                    (&mut driver.0, &mut driver.1)
                } else {
                    (&mut hand.0, &mut hand.1)
                };
                if i < warmup {
                    warm.push(sample);
                } else {
                    measured.push(sample);
                }
                seq += 1;
                tokio::time::sleep(SETTLE).await;
            }
        }
        Ok((driver, hand))
    }

    /// The spec the driver builds for VM `id` in `dir` (see `Vmm::create`).
    fn spec(&self, id: &VmId, dir: &Path) -> VmSpec {
        VmSpec {
            id: id.clone(),
            resources: self.opts.resources,
            kernel: self.kernel.clone(),
            initrd: Some(self.initrd.clone()),
            root_disk: dir.join("root.disk"),
            extra_disks: Vec::new(),
            boot_args: DEFAULT_BOOT_ARGS.to_owned(),
            network: None,
            devices: Vec::new(),
        }
    }

    async fn driver(&mut self, n: usize) -> Result<Run> {
        let id = VmId::new(format!("drv-{n:03}")).context("a VM id")?;
        let result = self.driver_timed(&id).await;
        // Untimed: the VM goes, whatever happened.
        let _ = self.vmm.force_stop(&id).await;
        let deleted = self.vmm.delete(&id).await;
        let (run, arrival) = result?;
        deleted.context("Vmm::delete")?;
        if arrival.in_scrollback {
            self.late_subscriptions += 1;
        }
        // driver_timed refuses a run whose command line differs.
        self.identical_cmdlines += 1;
        Ok(run)
    }

    async fn driver_timed(&self, id: &VmId) -> Result<(Run, Arrival)> {
        let req = CreateVm {
            id: id.clone(),
            resources: self.opts.resources,
            kernel: ImageName::new(KERNEL).context("image name")?,
            initrd: None,
            rootfs: ImageName::new(ROOTFS).context("image name")?,
            boot_args: None,
            labels: Default::default(),
        };
        let dir = self.vms.join(id.as_str());
        let t0 = Instant::now();
        let deadline = t0 + self.opts.timeout;
        let started = Appears::watch(dir.join("qmp.sock"), deadline);
        self.vmm.create(req).await.context("Vmm::create")?;
        let created = t0.elapsed();
        let status = self.vmm.boot(id).await.context("Vmm::boot")?;
        let booted = t0.elapsed();
        let console = self.vmm.console(id).await.context("Vmm::console")?;
        let reader = console.subscribe();
        let arrival = tokio::spawn(watch_console(reader, deadline))
            .await
            .context("the console reader task")??;
        let total = arrival.at.saturating_duration_since(t0);
        // Untimed: the QEMU the driver ran has the command line the by-hand runs use.
        let pid = status.pid.context("the driver reported no pid")?;
        let want = self
            .backend
            .command_line(&self.spec(id, &dir), &dir, &Launch::Boot);
        let got = cmdline(pid);
        if got.get(1..) != Some(&want[..]) {
            return Err(BenchError::new(format!(
                "the driver's QEMU ran {got:?}, not the command line the by-hand runs use: \
                 {want:?}"
            )));
        }
        let mut marks = vec![("created", created), ("booted", booted)];
        if let Some(at) = started.at().await {
            marks.push(("started", at.saturating_duration_since(t0)));
        }
        marks.extend(arrival.marks(t0));
        let run = Run::new(total, marks);
        Ok((run, arrival))
    }

    async fn by_hand(&mut self, n: usize) -> Result<Run> {
        let id = VmId::new(format!("own-{n:03}")).context("a VM id")?;
        let dir = self.own.join(id.as_str());
        let mut child = None;
        let result = self.by_hand_timed(&id, &dir, &mut child).await;
        // Untimed: SIGKILL and reap, then the files go.
        if let Some(mut c) = child {
            let _ = c.kill().await;
        }
        let _ = std::fs::remove_dir_all(&dir);
        result
    }

    async fn by_hand_timed(
        &mut self,
        id: &VmId,
        dir: &Path,
        child: &mut Option<tokio::process::Child>,
    ) -> Result<Run> {
        let spec = self.spec(id, dir);
        let t0 = Instant::now();
        let deadline = t0 + self.opts.timeout;
        let started = Appears::watch(dir.join("qmp.sock"), deadline);
        // The VM's files, as `Vmm::create` makes them.
        std::fs::create_dir_all(dir).context(format!("creating {}", dir.display()))?;
        copy_root_disk(&self.rootfs, &spec.root_disk, self.opts.resources.disk_size)?;
        let disk = t0.elapsed();
        let args = self.backend.command_line(&spec, dir, &Launch::Boot);
        let (spawned, stream) = spawn_qemu(&self.qemu, &args, dir, child, t0, deadline).await?;
        let connected = t0.elapsed();
        let arrival = tokio::spawn(read_console(stream, deadline))
            .await
            .context("the console reader task")??;
        let total = arrival.at.saturating_duration_since(t0);
        self.last_hand_cmdline = args;
        let mut marks = vec![("disk", disk), ("spawned", spawned), ("console", connected)];
        if let Some(at) = started.at().await {
            marks.push(("started", at.saturating_duration_since(t0)));
        }
        marks.extend(arrival.marks(t0));
        Ok(Run::new(total, marks))
    }

    fn result(
        &self,
        started: Timestamp,
        machine: Machine,
        images: &Path,
        driver: Samples,
        hand: Samples,
    ) -> ScenarioResult {
        let variant = |name: &str, description: &str, (warmup, samples): Samples| {
            let totals: Vec<f64> = samples.iter().map(|s| s.total_ms).collect();
            Variant {
                name: name.to_owned(),
                description: description.to_owned(),
                summary: Summary::of(&totals).unwrap_or_default(),
                samples,
                warmup,
            }
        };
        let driver = variant(
            DRIVER,
            "`Vmm::create` + `Vmm::boot` through `QemuBackend` (TCG), then the VM's console \
             (`Console::subscribe`) read by a task stamping each chunk on arrival. Marks: \
             `created` (create returned: root disk copied), `booted` (boot returned: QEMU \
             spawned, console and QMP connected), `started` (QEMU accepted the console and \
             went on to start the guest: its QMP socket appeared), `output` (first console \
             bytes arrived), `ready` (marker arrived).",
            driver,
        );
        let hand = variant(
            BY_HAND,
            "The same root-disk copy, then `qemu-system-x86_64` spawned directly with \
             `QemuBackend::command_line` of an equivalent `VmSpec`, its console socket read \
             with a plain tokio `UnixStream`. Marks: `disk` (root disk copied), `spawned`, \
             `console` (socket connected), `started` (as for the driver), `output` (first \
             console bytes read), `ready` (marker read).",
            hand,
        );
        let comparisons = vec![
            Comparison::new(
                "driver overhead",
                &driver,
                &hand,
                Measure::Total,
                Some(TARGET_MS),
            ),
            Comparison::new(
                "before the guest starts",
                &driver,
                &hand,
                Measure::UntilMark("started".into()),
                Some(TARGET_MS),
            ),
            Comparison::new(
                "while the guest boots",
                &driver,
                &hand,
                Measure::FromMark("started".into()),
                None,
            ),
        ];
        let manifest = guest::manifest(images);
        let pick = |k: &str| manifest.get(k).cloned().unwrap_or_default();
        let mut notes = vec![
            format!(
                "Both variants include the copy of the {} MiB root image to the VM's own disk \
                 and its growth (sparse) to {} GiB, as `Vmm::create` does it; so the difference \
                 is the driver's own work.",
                std::fs::metadata(&self.rootfs).map_or(0, |m| m.len() >> 20),
                self.opts.resources.disk_size
            ),
            format!(
                "Runs alternate driver, by-hand, driver, ... ({} warm-up pair(s) first, not \
                 counted); the paired difference is driver run i minus by-hand run i.",
                self.opts.warmup
            ),
            format!(
                "Every driver run's QEMU command line (read from /proc) equals \
                 `QemuBackend::command_line` of the by-hand recipe for that VM: {} of {} runs \
                 checked.",
                self.identical_cmdlines,
                self.opts.runs + self.opts.warmup
            ),
            format!(
                "By hand, the console socket is tried every {} ms until QEMU has made it; the \
                 driver tries every 2 ms (`QemuBackend::attach`). QEMU does not start the \
                 guest before a client is connected (`wait=on`), so that delay counts.",
                CONNECT_POLL.as_millis()
            ),
            "The difference splits at `started`: before it is the host's work until QEMU starts \
             the guest (copy, spawn, console connection: little noise); after it the guest \
             boots under TCG (most of the noise: it competes for the CPUs with everything else \
             on the machine), while the driver relays the console and speaks QMP."
                .to_owned(),
        ];
        if self.late_subscriptions > 0 {
            notes.push(format!(
                "In {} driver run(s) the marker was already in the console's scrollback when \
                 the benchmark subscribed; those runs end at the subscription (an upper bound).",
                self.late_subscriptions
            ));
        }
        ScenarioResult {
            schema: SCHEMA.to_owned(),
            scenario: SCENARIO.to_owned(),
            title: "create to console ready, driver vs QEMU by hand".to_owned(),
            description: format!(
                "Time from creating a VM (1 vCPU, {} MiB, TCG) to the arrival of \
                 `{}` on its serial console, through vmfleet's driver and by hand with the \
                 same QEMU command line, in one run. Target: the driver adds under {} ms.",
                self.opts.resources.mem_size_mib,
                String::from_utf8_lossy(READY_MARKER),
                TARGET_MS
            ),
            date: started.as_str().get(..10).unwrap_or("unknown").to_owned(),
            started_at: started.as_str().to_owned(),
            finished_at: Timestamp::now().as_str().to_owned(),
            machine,
            config: json!({
                "runs": self.opts.runs,
                "warmup": self.opts.warmup,
                "order": "interleaved: driver, by-hand, driver, by-hand, ...",
                "timeout_s": self.opts.timeout.as_secs(),
                "accel": "tcg",
                "resources": {
                    "vcpu_count": self.opts.resources.vcpu_count,
                    "mem_size_mib": self.opts.resources.mem_size_mib,
                    "disk_size_gib": self.opts.resources.disk_size,
                },
                "ready_marker": String::from_utf8_lossy(READY_MARKER),
                "includes_root_disk_copy": true,
                "by_hand_connect_poll_ms": CONNECT_POLL.as_millis() as u64,
                "settle_between_runs_ms": SETTLE.as_millis() as u64,
                "qemu_command_line": self.last_hand_cmdline,
                "guest": {
                    "kernel_release": pick("kernel_release"),
                    "kernel_package_version": pick("kernel_package_version"),
                    "busybox_version": pick("busybox_version"),
                    "sha256_vmlinux.bin": pick("sha256_vmlinux.bin"),
                    "sha256_initrd.img": pick("sha256_initrd.img"),
                    "sha256_rootfs.ext4": pick("sha256_rootfs.ext4"),
                },
            }),
            figures: vec![
                Figure::new(
                    SCENARIO,
                    "create to console ready p50 (driver)",
                    "ms",
                    driver.summary.p50,
                )
                .against(BY_HAND, hand.summary.p50),
                Figure::new(
                    SCENARIO,
                    "create to console ready mean (driver)",
                    "ms",
                    driver.summary.mean,
                )
                .against(BY_HAND, hand.summary.mean),
            ],
            comparisons,
            variants: vec![driver, hand],
            notes,
        }
    }
}

/// When a file appeared, seen by a task polling every [`CONNECT_POLL`] until a deadline.
///
/// Watching `qmp.sock` tells, in both variants alike, when QEMU went on to start the guest:
/// it makes that socket right after a client connected to its console, which it waits for
/// (`wait=on`) before anything else.
pub(crate) struct Appears(tokio::task::JoinHandle<Option<Instant>>);

impl Appears {
    pub(crate) fn watch(path: PathBuf, deadline: Instant) -> Self {
        Appears(tokio::spawn(async move {
            loop {
                if std::fs::symlink_metadata(&path).is_ok() {
                    return Some(Instant::now());
                }
                if Instant::now() >= deadline {
                    return None;
                }
                tokio::time::sleep(CONNECT_POLL).await;
            }
        }))
    }

    /// When it appeared; `None` if it did not before the deadline.
    pub(crate) async fn at(mut self) -> Option<Instant> {
        (&mut self.0).await.ok().flatten()
    }
}

impl Drop for Appears {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// The root disk as `Vmm::create` makes it: a copy of the image, grown (sparse) to `gib`.
pub(crate) fn copy_root_disk(image: &Path, disk: &Path, gib: u64) -> Result<()> {
    std::fs::copy(image, disk).context(format!("copying {}", image.display()))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(disk)
        .context(format!("opening {}", disk.display()))?;
    let have = f.metadata().context("reading the disk's size")?.len();
    let want = gib << 30;
    if want > have {
        f.set_len(want).context("growing the disk")?;
    }
    Ok(())
}

/// Reads the driver's console until the marker: when its chunk arrived.
async fn watch_console(mut reader: ConsoleReader, deadline: Instant) -> Result<Arrival> {
    let mut scan = MarkerScan::new(READY_MARKER);
    if scan.feed(&reader.scrollback) {
        return Ok(Arrival {
            at: Instant::now(),
            in_scrollback: true,
            first_output: None,
        });
    }
    let mut first_output = None;
    let mut seen_before = !reader.scrollback.is_empty();
    loop {
        let next = tokio::time::timeout_at(deadline.into(), reader.live.recv()).await;
        let at = Instant::now();
        match next {
            Ok(Ok(chunk)) => {
                if !seen_before {
                    first_output = Some(at);
                    seen_before = true;
                }
                if scan.feed(&chunk) {
                    return Ok(Arrival {
                        at,
                        in_scrollback: false,
                        first_output,
                    });
                }
            }
            Ok(Err(RecvError::Lagged(n))) => {
                return Err(BenchError::new(format!(
                    "the console reader fell {n} chunks behind"
                )));
            }
            Ok(Err(RecvError::Closed)) => {
                return Err(BenchError::new(format!(
                    "the console closed before the ready marker; it showed:\n{}",
                    scan.tail()
                )));
            }
            Err(_) => {
                return Err(BenchError::new(format!(
                    "no ready marker in time; the console showed:\n{}",
                    scan.tail()
                )));
            }
        }
    }
}

/// Reads QEMU's console socket until the marker: when the read that completed it returned.
pub(crate) async fn read_console(mut stream: UnixStream, deadline: Instant) -> Result<Arrival> {
    let mut scan = MarkerScan::new(READY_MARKER);
    let mut buf = vec![0u8; 16 * 1024];
    let mut first_output = None;
    loop {
        let read = tokio::time::timeout_at(deadline.into(), stream.read(&mut buf)).await;
        let at = Instant::now();
        match read {
            Ok(Ok(0)) => {
                return Err(BenchError::new(format!(
                    "QEMU closed the console before the ready marker; it showed:\n{}",
                    scan.tail()
                )));
            }
            Ok(Ok(n)) => {
                first_output.get_or_insert(at);
                if scan.feed(&buf[..n]) {
                    return Ok(Arrival {
                        at,
                        in_scrollback: false,
                        first_output,
                    });
                }
            }
            Ok(Err(e)) => return Err(BenchError::new(format!("reading the console: {e}"))),
            Err(_) => {
                return Err(BenchError::new(format!(
                    "no ready marker in time; the console showed:\n{}",
                    scan.tail()
                )));
            }
        }
    }
}

/// A process's arguments, argv[0] first.
fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Starts QEMU with `args` in `child` (stderr to `DIR/qemu.log`, its own process group,
/// killed on drop) and connects to its console socket `DIR/console.sock`: when it was spawned
/// (since `t0`), and the console. QEMU exiting first, or `deadline`, is an error.
pub(crate) async fn spawn_qemu(
    qemu: &Path,
    args: &[String],
    dir: &Path,
    child: &mut Option<tokio::process::Child>,
    t0: Instant,
    deadline: Instant,
) -> Result<(Duration, UnixStream)> {
    let log_path = dir.join("qemu.log");
    let log = std::fs::File::create(&log_path).context("creating qemu.log")?;
    let c = child.insert(
        tokio::process::Command::new(qemu)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .process_group(0)
            .kill_on_drop(true)
            .spawn()
            .context(format!("spawning {}", qemu.display()))?,
    );
    let spawned = t0.elapsed();
    let sock = dir.join("console.sock");
    loop {
        match UnixStream::connect(&sock).await {
            Ok(s) => return Ok((spawned, s)),
            Err(e) => {
                if let Ok(Some(st)) = c.try_wait() {
                    return Err(BenchError::new(format!(
                        "QEMU exited ({st}) before its console opened: {}",
                        std::fs::read_to_string(&log_path)
                            .unwrap_or_default()
                            .trim()
                    )));
                }
                if Instant::now() >= deadline {
                    return Err(BenchError::new(format!(
                        "QEMU's console socket did not open in {:?}: {e}",
                        deadline.saturating_duration_since(t0)
                    )));
                }
                tokio::time::sleep(CONNECT_POLL).await;
            }
        }
    }
}
