//! Scenario `fanout`: many monitor connections (`/ws/vms/{name}?metrics_interval=1`) on one
//! running VM. What they cost the server (`vmfleet up`, release build: its `/proc` readings
//! are its own), against the same server with the same VM and no monitor, measured just
//! before in the same run; and whether every connection got its metrics every second.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vmfleet_core::Timestamp;

use crate::fleet::{Latency, git_commit, server_binary};
use crate::guest::{READY_MARKER, Sweeper};
use crate::machine::Machine;
use crate::plane::{Plane, console_text};
use crate::procfs::{ProcSample, raise_nofile};
use crate::report::{Figure, figures_markdown, num, write_scenario};
use crate::{BenchError, Context, Result};

pub const SCENARIO: &str = "fanout";
pub const SCHEMA: &str = "vmfleet-bench/fanout/v1";
/// A monitor that went this long without `metrics` (1 s interval) missed one.
pub const MISSED: Duration = Duration::from_millis(1500);

#[derive(Debug, Clone)]
pub struct FanoutOptions {
    pub connections: usize,
    /// The measured window, once every monitor is connected.
    pub duration: Duration,
    /// The window of the server without monitors, measured first.
    pub idle: Duration,
    /// Connections being opened at once.
    pub ramp: usize,
    pub boot_timeout: Duration,
    pub server_bin: Option<PathBuf>,
}

impl Default for FanoutOptions {
    fn default() -> Self {
        FanoutOptions {
            connections: 1000,
            duration: Duration::from_secs(30),
            idle: Duration::from_secs(10),
            ramp: 32,
            boot_timeout: Duration::from_secs(120),
            server_bin: None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FanoutResult {
    pub schema: String,
    pub scenario: String,
    pub date: String,
    pub started_at: String,
    pub finished_at: String,
    pub machine: Machine,
    pub config: Value,
    pub connections: usize,
    pub connected: usize,
    pub connect_failures: usize,
    pub connect_errors: Vec<String>,
    /// Still open when the window closed.
    pub held_at_end: usize,
    pub window_s: f64,
    pub idle_window_s: f64,
    /// Server CPU seconds per second, without monitors and with them.
    pub idle_cores: f64,
    pub cores: f64,
    /// The monitors' own process (this benchmark) in the window, in cores: if it neared a
    /// whole core, late metrics could be its own.
    #[serde(default)]
    pub loadgen_cores: f64,
    /// Server RSS before the monitors and once all were connected, KiB.
    pub rss_before_kib: u64,
    pub rss_connected_kib: u64,
    pub rss_end_kib: u64,
    pub kib_per_connection: f64,
    /// `metrics` messages received in the window, all connections.
    pub metrics_messages: usize,
    /// Connections that never went [`MISSED`] without a `metrics` in the window.
    pub connections_every_second: usize,
    /// The fewest `metrics` one connection received in the window, and the number expected.
    pub min_per_connection: usize,
    pub expected_per_connection: usize,
    /// Time between two `metrics` on one connection.
    pub gap_ms: Latency,
    pub idle_before: ProcSample,
    pub idle_after: ProcSample,
    pub window_start: ProcSample,
    pub window_end: ProcSample,
    pub server_exit: String,
    pub figures: Vec<Figure>,
}

/// What one monitor saw.
#[derive(Debug, Default)]
struct Monitor {
    connected: bool,
    error: Option<String>,
    metrics: Vec<Instant>,
    open_at_end: bool,
}

pub async fn run(opts: FanoutOptions, progress: impl Fn(&str)) -> Result<FanoutResult> {
    if opts.connections == 0 || opts.ramp == 0 || opts.duration.as_secs() < 2 {
        return Err(BenchError::new(
            "--connections and --ramp must be at least 1, --duration-secs at least 2",
        ));
    }
    let started = Timestamp::now();
    let mut machine = Machine::read("see the QEMU command line", Path::new("qemu-system-x86_64"));
    raise_nofile(2 * opts.connections as u64 + 512)?;
    let (bin, _) = server_binary(opts.server_bin.clone(), &progress).await?;
    let tmp = tempfile::Builder::new()
        .prefix("vmfleet-bench-fanout-")
        .tempdir()
        .context("creating a temporary directory")?;
    let sweeper = Sweeper::new(tmp.path());
    let plane = Plane::start(&bin, tmp.path()).await?;
    let measured = measure(&plane, &opts, &progress).await;
    let exit = plane.stop().await;
    drop(sweeper);
    let mut r = measured?;
    machine.finish();
    machine.accel = r.config["guest_accel"]
        .as_str()
        .unwrap_or("unknown")
        .to_owned();
    r.machine = machine;
    r.config["server_bin"] = json!(bin.display().to_string());
    r.started_at = started.as_str().to_owned();
    r.date = started.as_str().get(..10).unwrap_or("unknown").to_owned();
    r.server_exit = exit;
    r.config["source_commit"] = json!(git_commit().await);
    Ok(r)
}

async fn measure(
    plane: &Plane,
    opts: &FanoutOptions,
    progress: &impl Fn(&str),
) -> Result<FanoutResult> {
    progress("fanout: creating and booting a VM through the API");
    let vm = plane.create_vm("fanout").await?;
    plane.boot_vm(&vm).await?;
    let deadline = Instant::now() + opts.boot_timeout;
    let mut console = loop {
        match plane.ws(&vm.name, "/console", "").await {
            Ok(ws) => break ws,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut seen = String::new();
    while !seen.contains(std::str::from_utf8(READY_MARKER).unwrap_or("ready")) {
        let frame = tokio::time::timeout_at(deadline.into(), console.next())
            .await
            .map_err(|_| BenchError::new(format!("the VM never got ready: {seen}")))?;
        if let Some(t) = console_text(frame)? {
            seen.push_str(&t);
        }
    }
    drop(console);
    let pid = plane.pid();
    let accel = plane
        .guest_pid(&vm.id)
        .map(|p| crate::console::accel_of(&crate::plane::cmdline(p)))
        .unwrap_or_else(|| "unknown".into());

    progress(&format!(
        "fanout: VM up ({accel}); the server without monitors for {} s",
        opts.idle.as_secs()
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let idle_before = ProcSample::read(pid)?;
    let t = Instant::now();
    tokio::time::sleep(opts.idle).await;
    let idle_after = ProcSample::read(pid)?;
    let idle_window = t.elapsed().as_secs_f64();

    progress(&format!("fanout: opening {} monitors", opts.connections));
    let stop = Arc::new(AtomicBool::new(false));
    let connected = Arc::new(AtomicUsize::new(0));
    let gate = Arc::new(tokio::sync::Semaphore::new(opts.ramp));
    let mut tasks = Vec::with_capacity(opts.connections);
    for _ in 0..opts.connections {
        let (stop, connected, gate) = (stop.clone(), connected.clone(), gate.clone());
        let url = format!(
            "{}/ws/vms/{}?token={}&metrics_interval=1",
            plane.ws_base, vm.name, plane.jwt
        );
        tasks.push(tokio::spawn(monitor(url, stop, connected, gate)));
    }
    let ramp_deadline = Instant::now() + Duration::from_secs(120);
    while connected.load(Ordering::Relaxed) + tasks.iter().filter(|t| t.is_finished()).count()
        < opts.connections
        && Instant::now() < ramp_deadline
    {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Let every monitor get its first metrics before the window.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let window_start = ProcSample::read(pid)?;
    let own_start = ProcSample::own()?;
    let w0 = Instant::now();
    progress(&format!(
        "fanout: {} monitors connected; measuring for {} s",
        connected.load(Ordering::Relaxed),
        opts.duration.as_secs()
    ));
    tokio::time::sleep(opts.duration).await;
    let window_end = ProcSample::read(pid)?;
    let own_end = ProcSample::own()?;
    let w1 = Instant::now();
    stop.store(true, Ordering::Relaxed);
    let mut monitors = Vec::with_capacity(tasks.len());
    for t in tasks {
        monitors.push(t.await.unwrap_or_else(|e| Monitor {
            error: Some(format!("the monitor task failed: {e}")),
            ..Monitor::default()
        }));
    }
    let _ = plane.delete_vm(&vm).await;
    Ok(summarise(
        opts,
        &monitors,
        (w0, w1),
        idle_window,
        [idle_before, idle_after, window_start, window_end],
        (own_end.cpu_s - own_start.cpu_s) / w1.saturating_duration_since(w0).as_secs_f64(),
        accel,
    ))
}

/// One monitor: connects (at most `ramp` at once), then notes when each `metrics` arrives
/// until told to stop.
async fn monitor(
    url: String,
    stop: Arc<AtomicBool>,
    connected: Arc<AtomicUsize>,
    gate: Arc<tokio::sync::Semaphore>,
) -> Monitor {
    let mut m = Monitor::default();
    let permit = gate.acquire().await;
    let ws = tokio_tungstenite::connect_async_with_config(&url, None, true).await;
    drop(permit);
    let mut ws = match ws {
        Ok((ws, _)) => ws,
        Err(e) => {
            m.error = Some(format!("connecting: {e}"));
            return m;
        }
    };
    let mut counted = false;
    loop {
        if stop.load(Ordering::Relaxed) {
            m.open_at_end = true;
            break;
        }
        let next = tokio::time::timeout(Duration::from_millis(200), ws.next()).await;
        let Ok(frame) = next else { continue };
        match frame {
            Some(Ok(Message::Text(t))) => {
                let at = Instant::now();
                let v: Value = serde_json::from_str(t.as_str()).unwrap_or(Value::Null);
                match v["type"].as_str() {
                    Some("connection") if !counted => {
                        counted = true;
                        m.connected = true;
                        connected.fetch_add(1, Ordering::Relaxed);
                    }
                    Some("metrics") => m.metrics.push(at),
                    Some("error") => {
                        m.error = Some(format!("the server said {v}"));
                        break;
                    }
                    _ => {}
                }
            }
            Some(Ok(_)) => {}
            Some(Err(e)) => {
                m.error = Some(format!("the connection failed: {e}"));
                break;
            }
            None => {
                m.error = Some("the server closed the connection".into());
                break;
            }
        }
    }
    let _ = ws.close(None).await;
    m
}

fn summarise(
    opts: &FanoutOptions,
    monitors: &[Monitor],
    (w0, w1): (Instant, Instant),
    idle_window: f64,
    [idle_before, idle_after, window_start, window_end]: [ProcSample; 4],
    loadgen_cores: f64,
    accel: String,
) -> FanoutResult {
    let window = w1.saturating_duration_since(w0).as_secs_f64();
    let expected = window.floor() as usize;
    let mut errors: Vec<String> = Vec::new();
    let mut gaps = Vec::new();
    let (mut total, mut every, mut min) = (0, 0, usize::MAX);
    for m in monitors {
        if let Some(e) = &m.error
            && errors.len() < 5
            && !errors.contains(e)
        {
            errors.push(e.clone());
        }
        let inside: Vec<Instant> = m
            .metrics
            .iter()
            .copied()
            .filter(|t| *t >= w0 && *t <= w1)
            .collect();
        total += inside.len();
        min = min.min(inside.len());
        // Never a second missed: no gap in the window (its edges included) longer than
        // MISSED, and so at least one message a second, give or take the phase.
        let edges = std::iter::once(w0)
            .chain(inside.iter().copied())
            .chain(std::iter::once(w1))
            .collect::<Vec<_>>();
        let longest = edges
            .windows(2)
            .map(|p| p[1].saturating_duration_since(p[0]))
            .max()
            .unwrap_or_default();
        if !inside.is_empty() && longest <= MISSED {
            every += 1;
        }
        gaps.extend(
            m.metrics
                .windows(2)
                .filter(|p| p[1] >= w0 && p[1] <= w1)
                .map(|p| p[1].saturating_duration_since(p[0]).as_secs_f64() * 1000.0),
        );
    }
    let connected = monitors.iter().filter(|m| m.connected).count();
    let held = monitors.iter().filter(|m| m.open_at_end).count();
    let cores =
        |a: &ProcSample, b: &ProcSample, s: f64| ((b.cpu_s - a.cpu_s) / s * 1e4).round() / 1e4;
    let idle_cores = cores(&idle_before, &idle_after, idle_window);
    let busy_cores = cores(&window_start, &window_end, window);
    let kib = if connected > 0 {
        ((window_start.rss_kib as f64 - idle_after.rss_kib as f64) / connected as f64 * 100.0)
            .round()
            / 100.0
    } else {
        f64::NAN
    };
    let gap = Latency::of(&mut gaps);
    let n = opts.connections;
    let figures = vec![
        Figure::new(
            SCENARIO,
            "monitors held to the end",
            "connections",
            held as f64,
        )
        .target(&format!("all {n}"), held == n),
        Figure::new(
            SCENARIO,
            "monitors never 1.5 s without metrics",
            "connections",
            every as f64,
        )
        .target(&format!("all {n}"), every == n),
        Figure::new(
            SCENARIO,
            "server CPU with the monitors",
            "cores",
            busy_cores,
        )
        .against("the same server, no monitor", idle_cores),
        Figure::new(
            SCENARIO,
            "server RSS with the monitors",
            "KiB",
            window_start.rss_kib as f64,
        )
        .against("the same server, no monitor", idle_after.rss_kib as f64),
        Figure::new(SCENARIO, "server RSS per monitor", "KiB", kib),
        Figure::new(SCENARIO, "time between two metrics p99", "ms", gap.p99)
            .against("the interval", 1000.0),
    ];
    FanoutResult {
        schema: SCHEMA.into(),
        scenario: SCENARIO.into(),
        date: String::new(),
        started_at: String::new(),
        finished_at: Timestamp::now().as_str().to_owned(),
        machine: Machine::read("", Path::new("/nonexistent")),
        config: json!({
            "connections": n,
            "duration_s": opts.duration.as_secs(),
            "idle_s": opts.idle.as_secs(),
            "ramp": opts.ramp,
            "metrics_interval_s": 1,
            "guest_accel": accel,
        }),
        connections: n,
        connected,
        connect_failures: n - connected,
        connect_errors: errors,
        held_at_end: held,
        window_s: (window * 1000.0).round() / 1000.0,
        idle_window_s: (idle_window * 1000.0).round() / 1000.0,
        idle_cores,
        cores: busy_cores,
        loadgen_cores: (loadgen_cores * 1e4).round() / 1e4,
        rss_before_kib: idle_after.rss_kib,
        rss_connected_kib: window_start.rss_kib,
        rss_end_kib: window_end.rss_kib,
        kib_per_connection: kib,
        metrics_messages: total,
        connections_every_second: every,
        min_per_connection: if min == usize::MAX { 0 } else { min },
        expected_per_connection: expected,
        gap_ms: gap,
        idle_before,
        idle_after,
        window_start,
        window_end,
        server_exit: String::new(),
        figures,
    }
}

impl FanoutResult {
    /// Writes `<date>-<host>-fanout.json` and the scenario's section of `<date>-<host>.md`.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
        let stem = format!("{}-{}", self.date, self.machine.file_host());
        write_scenario(out, &stem, SCENARIO, &self.machine, self, &self.markdown())
    }

    pub fn markdown(&self) -> String {
        use std::fmt::Write as _;
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## {}: {} monitor connections on one VM, metrics every second\n",
            self.scenario, self.connections
        );
        let _ = writeln!(
            md,
            "`vmfleet up` (`{}`) with one running VM (guest accel {}); {} monitors on \
             `/ws/vms/NAME?metrics_interval=1`, opened {} at a time, then a {:.1} s window. The \
             same server with the same VM and no monitor was measured for {:.1} s just before. \
             Run {} to {}.\n",
            self.config["server_bin"].as_str().unwrap_or("?"),
            self.config["guest_accel"].as_str().unwrap_or("?"),
            self.connections,
            self.config["ramp"],
            self.window_s,
            self.idle_window_s,
            self.started_at,
            self.finished_at
        );
        let _ = writeln!(
            md,
            "| measure | value |\n|---|---:|\n\
             | connected / held at the end | {} / {} of {} |\n\
             | server CPU (cores), no monitor / with them | {} / {} |\n\
             | the monitors' process (this benchmark), cores | {} |\n\
             | server RSS (MiB), no monitor / connected / end | {} / {} / {} |\n\
             | RSS per monitor (KiB) | {} |\n\
             | metrics received in the window | {} |\n\
             | monitors never {} s without metrics (window of {} s) | {} |\n\
             | fewest on one monitor | {} |\n\
             | time between two metrics p50 / p99 / max (ms) | {} / {} / {} |\n",
            self.connected,
            self.held_at_end,
            self.connections,
            num(self.idle_cores),
            num(self.cores),
            num(self.loadgen_cores),
            num(self.rss_before_kib as f64 / 1024.0),
            num(self.rss_connected_kib as f64 / 1024.0),
            num(self.rss_end_kib as f64 / 1024.0),
            num(self.kib_per_connection),
            self.metrics_messages,
            MISSED.as_secs_f64(),
            self.expected_per_connection,
            self.connections_every_second,
            self.min_per_connection,
            num(self.gap_ms.p50),
            num(self.gap_ms.p99),
            num(self.gap_ms.max),
        );
        if !self.connect_errors.is_empty() {
            let _ = writeln!(md, "Errors: {}\n", self.connect_errors.join("; "));
        }
        md.push_str(&figures_markdown(&self.figures));
        md
    }
}
