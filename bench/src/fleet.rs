//! Scenario `fleet`: N simulated host agents heartbeating on `/fleet`, against the real
//! `vmfleet server` binary and, in the same run, against a minimal Node.js socket.io server
//! with the same semantics (`bench/node-fleet/server.mjs`: hashed host key looked up in
//! SQLite, heartbeat written to SQLite, ack).
//!
//! For each server in turn: N nodes are registered with random host keys (stored hashed, as
//! production does), the server is started as a child process on a loopback port, and N
//! agents connect (at most `ramp` handshakes in flight), each over its own WebSocket with a
//! lean Socket.IO v4 client of this module (one task per agent, no channels). Each waits for
//! `node_info`, then heartbeats every period, its phase random within the period, each
//! heartbeat sent with an ack id and its latency taken when the ack is read. Once all are
//! connected and one more period has passed, the measured window opens. The server's CPU time
//! and RSS are read from `/proc` before the agents connect, at the window's start and at its end.
//!
//! Every server started gets the benchmark's temporary directory in its arguments, and a
//! [`Sweeper`] kills whatever still names it when the scenario ends, fails or is interrupted.

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde::{Deserialize, Serialize};
use serde_json::json;
use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Semaphore, watch};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::{MaybeTlsStream, WebSocketStream};
use vmfleet_auth::{SecretHash, generate_secret};
use vmfleet_core::{NodeId, Timestamp};
use vmfleet_wire::fleet::{Capacity, Heartbeat, HostMetrics, NAMESPACE, NODE_INFO, NodeStatus};

use crate::guest::Sweeper;
use crate::machine::Machine;
use crate::procfs::{NofileLimit, ProcSample, ephemeral_ports, machine_cpu, raise_nofile};
use crate::report::{machine_markdown, upsert_section, with_title, write_atomic};
use crate::stats::percentile;
use crate::{BenchError, Context, Result, plot};

pub const SCENARIO: &str = "fleet";
pub const SCHEMA: &str = "vmfleet-bench/fleet/v1";
pub const VMFLEET: &str = "vmfleet";
pub const NODE: &str = "node-socket.io";
/// The targets, for vmfleet.
pub const TARGET_P99_MS: f64 = 50.0;
pub const TARGET_KIB_PER_CONNECTION: f64 = 40.0;
/// vmfleet's CPU per heartbeat at most this fraction of Node's.
pub const TARGET_CPU_RATIO: f64 = 1.0 / 3.0;
/// The most one agent's handshake (TCP, WebSocket, namespace, `node_info`) may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a server may take to say it listens, and to exit on SIGTERM.
const SERVER_START: Duration = Duration::from_secs(30);
const SERVER_STOP: Duration = Duration::from_secs(10);
/// The load generator is deemed healthy while it uses less than this many cores and sends
/// heartbeats at most this late (p99).
const LOADGEN_MAX_CORES: f64 = 0.5;
const LOADGEN_MAX_LATE_MS: f64 = 10.0;
const LOADGEN_NOTE: &str = "Load generator: this process, one tokio task per agent over \
    tokio-tungstenite with its own minimal Socket.IO v4 framing (not the agent's `SioClient`, \
    which spawns two tasks and two channels per connection). Ack latency includes its \
    scheduling delay; whether it kept up is checked per server below the verdicts.";
/// How often the timeline is sampled.
const TICK: Duration = Duration::from_secs(1);

/// Which server a run measures.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Target {
    Vmfleet,
    Node,
}

impl Target {
    pub fn name(self) -> &'static str {
        match self {
            Target::Vmfleet => VMFLEET,
            Target::Node => NODE,
        }
    }
}

#[derive(Debug, Clone)]
pub struct FleetOptions {
    pub agents: usize,
    pub period: Duration,
    /// The measured window, after all agents are connected and one `settle` has passed.
    pub duration: Duration,
    pub settle: Duration,
    /// Handshakes in flight at once while the agents connect.
    pub ramp: usize,
    /// A heartbeat not acknowledged within this is missed.
    pub ack_timeout: Duration,
    /// The `vmfleet` binary; found under the workspace's `target/release` (or built) when
    /// `None`.
    pub server_bin: Option<PathBuf>,
    /// `bench/node-fleet`.
    pub node_dir: PathBuf,
    /// The servers measured, in this order.
    pub targets: Vec<Target>,
}

impl Default for FleetOptions {
    fn default() -> Self {
        FleetOptions {
            agents: 10_000,
            period: Duration::from_secs(5),
            duration: Duration::from_secs(60),
            settle: Duration::from_secs(5),
            ramp: 64,
            ack_timeout: Duration::from_secs(10),
            server_bin: None,
            node_dir: PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("node-fleet"),
            targets: vec![Target::Vmfleet, Target::Node],
        }
    }
}

/// A registered node: what its agent needs.
#[derive(Debug, Clone)]
struct Agent {
    id: String,
    name: String,
    key: String,
}

/// Latencies in ms.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct Latency {
    pub n: usize,
    pub mean: f64,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub p999: f64,
    pub max: f64,
}

impl Latency {
    pub fn of(samples: &mut [f64]) -> Latency {
        if samples.is_empty() {
            return Latency::default();
        }
        samples.sort_by(f64::total_cmp);
        let n = samples.len();
        Latency {
            n,
            mean: round3(samples.iter().sum::<f64>() / n as f64),
            p50: percentile(samples, 0.5),
            p90: percentile(samples, 0.9),
            p99: percentile(samples, 0.99),
            p999: percentile(samples, 0.999),
            max: samples[n - 1],
        }
    }
}

/// One point of a run's timeline, sampled every second.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Tick {
    /// Seconds since the server started.
    pub t_s: f64,
    pub connected: usize,
    pub acks: usize,
    pub server_cpu_s: f64,
    pub server_rss_kib: u64,
    pub loadgen_cpu_s: f64,
}

/// What one server did under the load.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ServerRun {
    pub name: String,
    pub description: String,
    pub command: Vec<String>,
    pub agents: usize,
    /// Agents that completed the handshake (`node_info` received).
    pub connected: usize,
    /// Agents still connected when the window closed.
    pub held_at_end: usize,
    pub connect_failures: usize,
    /// The first few distinct reasons.
    pub connect_errors: Vec<String>,
    /// Connections the server closed after the handshake.
    pub disconnects: usize,
    pub disconnect_reasons: Vec<String>,
    /// From the first connect to the last `node_info`.
    pub ramp_s: f64,
    /// One agent's handshake, TCP connect to `node_info`.
    pub connect_ms: Latency,
    pub window_s: f64,
    /// Heartbeats sent in the window, those acknowledged `success: true`, refused
    /// (`success: false`) and missed (no ack within the ack timeout, or the connection lost).
    pub heartbeats_sent: usize,
    pub heartbeats_acked: usize,
    pub heartbeats_refused: usize,
    pub heartbeats_missed: usize,
    pub first_refusal: Option<String>,
    /// Acks received within the window (whenever sent), per second.
    pub heartbeats_per_s: f64,
    /// Send to ack, heartbeats sent in the window.
    pub ack_ms: Latency,
    /// How late the load generator sent heartbeats after their due time: its own health.
    pub send_lateness_ms: Latency,
    /// Server CPU seconds in the window per 1,000 acks received in it.
    pub cpu_s_per_1000: f64,
    /// Server CPU seconds per second of the window (1.0 = one core).
    pub server_cores: f64,
    /// Load generator CPU seconds per second of the window.
    pub loadgen_cores: f64,
    /// Everything else on the machine (other builds, tests) during the window, in cores:
    /// machine busy time minus the server's and the load generator's; and the steal time.
    #[serde(default)]
    pub others_cores: f64,
    #[serde(default)]
    pub steal_cores: f64,
    /// (RSS at the window's start - RSS before any agent) / connected, KiB.
    pub kib_per_connection: f64,
    /// The same with the RSS at the window's end.
    pub kib_per_connection_end: f64,
    pub before: ProcSample,
    pub window_start: ProcSample,
    pub window_end: ProcSample,
    pub loadgen_window_start: ProcSample,
    pub loadgen_window_end: ProcSample,
    /// Ack latency histogram: (upper bound ms, count), log-spaced buckets, empty ones left out.
    pub ack_histogram: Vec<(f64, usize)>,
    pub timeline: Vec<Tick>,
    pub server_exit: String,
}

/// A verdict against one of the targets.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Verdict {
    pub target: String,
    pub measured: String,
    pub pass: bool,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FleetResult {
    pub schema: String,
    pub scenario: String,
    pub title: String,
    pub description: String,
    pub date: String,
    pub started_at: String,
    pub finished_at: String,
    pub machine: Machine,
    pub config: serde_json::Value,
    pub runs: Vec<ServerRun>,
    pub verdicts: Vec<Verdict>,
    pub notes: Vec<String>,
}

/// Runs the scenario; `progress` hears what happens.
pub async fn run(opts: FleetOptions, progress: impl Fn(&str)) -> Result<FleetResult> {
    if opts.agents == 0 || opts.ramp == 0 || opts.period.is_zero() || opts.duration.is_zero() {
        return Err(BenchError::new(
            "--agents, --ramp, --period-secs and --duration-secs must be at least 1",
        ));
    }
    if opts.targets.is_empty() {
        return Err(BenchError::new("no server to measure"));
    }
    let started = Timestamp::now();
    let mut machine = Machine::read("none (no guests)", Path::new("qemu-system-x86_64"));
    // Each agent is a socket here and one in the server; plus the server's own files.
    let nofile = raise_nofile(opts.agents as u64 + 512)?;
    let ports = ephemeral_ports();
    if let Some((lo, hi)) = ports
        && ((hi - lo + 1) as usize) < opts.agents
    {
        return Err(BenchError::new(format!(
            "the ephemeral port range {lo}-{hi} is smaller than {} agents",
            opts.agents
        )));
    }
    let tmp = tempfile::Builder::new()
        .prefix("vmfleet-bench-fleet-")
        .tempdir()
        .context("creating a temporary directory")?;
    // Declared after `tmp`, so dropped before it: processes die before their files go.
    let _sweeper = Sweeper::new(tmp.path());

    let (server_bin, built) = server_binary(opts.server_bin.clone(), &progress).await?;
    let node_modules = node_modules(&opts.node_dir, &progress).await?;

    progress(&format!("fleet: registering {} nodes", opts.agents));
    let t = Instant::now();
    let data_dir = tmp.path().join("vmfleet-data");
    let agents = register(&data_dir, opts.agents).await?;
    let node_dir = tmp.path().join("node-fleet");
    std::fs::create_dir_all(&node_dir).context("creating the Node server's directory")?;
    let nodes_file = node_dir.join("nodes.json");
    let rows: Vec<_> = agents
        .iter()
        .map(|a| json!({"id": a.id, "name": a.name, "keyHash": SecretHash::of(&a.key).to_hex()}))
        .collect();
    std::fs::write(
        &nodes_file,
        serde_json::to_vec(&rows).context("encoding the nodes")?,
    )
    .context("writing the nodes file")?;
    progress(&format!(
        "fleet: {} nodes registered in {:.1} s",
        agents.len(),
        t.elapsed().as_secs_f64()
    ));
    let agents = Arc::new(agents);

    let mut runs = Vec::new();
    for target in &opts.targets {
        let command = match target {
            Target::Vmfleet => vec![
                server_bin.display().to_string(),
                "server".into(),
                "--data-dir".into(),
                data_dir.display().to_string(),
                "--listen".into(),
                "127.0.0.1:0".into(),
            ],
            Target::Node => vec![
                "node".into(),
                opts.node_dir.join("server.mjs").display().to_string(),
                "--db".into(),
                node_dir.join("fleet.db").display().to_string(),
                "--nodes".into(),
                nodes_file.display().to_string(),
                "--listen".into(),
                "127.0.0.1:0".into(),
                "--heartbeat-secs".into(),
                opts.period.as_secs().max(1).to_string(),
            ],
        };
        let log = tmp.path().join(format!("{}.log", target.name()));
        let run = measure(*target, command, &log, &opts, agents.clone(), &progress).await;
        let run = match run {
            Ok(r) => r,
            Err(e) => {
                let tail = log_tail(&log);
                return Err(BenchError::new(format!(
                    "{}: {e}\nits log ends with:\n{tail}",
                    target.name()
                )));
            }
        };
        runs.push(run);
        // Let the closed connections' TIME_WAIT and the machine settle before the next one.
        tokio::time::sleep(Duration::from_secs(3)).await;
    }
    machine.finish();
    Ok(result(
        &opts,
        started,
        machine,
        runs,
        Env {
            server_bin,
            built,
            given: opts.server_bin.is_some(),
            commit: git_commit().await,
            node_modules,
            nofile,
            ports,
        },
    ))
}

/// What the run found about its environment.
struct Env {
    server_bin: PathBuf,
    built: bool,
    /// Given with `--server-bin`.
    given: bool,
    /// `git describe --always --dirty` of the source tree, tracked files only.
    commit: String,
    node_modules: serde_json::Value,
    nofile: NofileLimit,
    ports: Option<(u32, u32)>,
}

/// The source tree's commit, `-dirty` when tracked files differ from it.
pub(crate) async fn git_commit() -> String {
    tokio::process::Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .await
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .unwrap_or_else(|| "unknown".into())
}

/// The `vmfleet` binary: the given one, or the workspace's release build (built now if
/// missing); and whether this run built it.
pub(crate) async fn server_binary(
    given: Option<PathBuf>,
    progress: &impl Fn(&str),
) -> Result<(PathBuf, bool)> {
    if let Some(p) = given {
        if !p.is_file() {
            return Err(BenchError::new(format!("{} does not exist", p.display())));
        }
        return Ok((p, false));
    }
    let workspace = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .context("the workspace root")?;
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace.join("target"));
    let bin = target.join("release").join("vmfleet");
    if bin.is_file() {
        return Ok((bin, false));
    }
    progress("fleet: no release build of vmfleet; running cargo build --release -p vmfleet-cli");
    let status = tokio::process::Command::new("cargo")
        .args(["build", "--release", "-p", "vmfleet-cli"])
        .current_dir(&workspace)
        .status()
        .await
        .context("running cargo build")?;
    if !status.success() || !bin.is_file() {
        return Err(BenchError::new(format!(
            "cargo build --release -p vmfleet-cli failed ({status})"
        )));
    }
    Ok((bin, true))
}

/// Makes sure `bench/node-fleet/node_modules` is installed (`npm ci` otherwise); returns the
/// versions that matter.
pub(crate) async fn node_modules(
    dir: &Path,
    progress: &impl Fn(&str),
) -> Result<serde_json::Value> {
    let version = |pkg: &str| -> Option<String> {
        let text = std::fs::read_to_string(dir.join("node_modules").join(pkg).join("package.json"))
            .ok()?;
        let v: serde_json::Value = serde_json::from_str(&text).ok()?;
        v.get("version")?.as_str().map(str::to_owned)
    };
    if version("socket.io").is_none() || version("better-sqlite3").is_none() {
        progress(&format!("fleet: running npm ci in {}", dir.display()));
        let status = tokio::process::Command::new("npm")
            .args(["ci", "--no-audit", "--no-fund"])
            .current_dir(dir)
            .status()
            .await
            .context("running npm ci")?;
        if !status.success() {
            return Err(BenchError::new(format!(
                "npm ci in {} failed ({status})",
                dir.display()
            )));
        }
    }
    let node = tokio::process::Command::new("node")
        .arg("--version")
        .output()
        .await
        .context("running node --version")?;
    Ok(json!({
        "node": String::from_utf8_lossy(&node.stdout).trim(),
        "socket.io": version("socket.io"),
        "engine.io": version("engine.io"),
        "ws": version("ws"),
        "better-sqlite3": version("better-sqlite3"),
    }))
}

/// Registers `n` nodes in a fresh vmfleet data dir's database, each with a random host key
/// stored as its hash (`Store::create_node`, what `POST /nodes` does).
async fn register(data_dir: &Path, n: usize) -> Result<Vec<Agent>> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::create_dir_all(data_dir).context("creating the data dir")?;
    std::fs::set_permissions(data_dir, std::fs::Permissions::from_mode(0o700))
        .context("setting the data dir's mode")?;
    let url = vmfleet_store::sqlite_url(&data_dir.join("vmfleet.db")).context("the database")?;
    let store = vmfleet_store::Store::open(&url)
        .await
        .context("opening the database")?;
    let mut agents = Vec::with_capacity(n);
    for i in 0..n {
        let key = generate_secret();
        let name = format!("bench-{i:05}");
        let node = store
            .create_node(&name, &SecretHash::of(&key))
            .await
            .context(format!("registering node {name}"))?;
        agents.push(Agent {
            id: node.id.as_str().to_owned(),
            name,
            key,
        });
    }
    store.close().await;
    Ok(agents)
}

/// A server started as a child process.
pub(crate) struct Server {
    child: tokio::process::Child,
    pub(crate) pid: u32,
    pub(crate) addr: SocketAddr,
}

impl Server {
    /// Starts `command` (stdout read for `listening on http://ADDR`, stderr to `log`).
    pub(crate) async fn start(command: &[String], log: &Path) -> Result<Server> {
        let (program, args) = command.split_first().context("an empty command")?;
        let stderr = std::fs::File::create(log).context(format!("creating {}", log.display()))?;
        let mut child = tokio::process::Command::new(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(stderr)
            .kill_on_drop(true)
            .spawn()
            .context(format!("starting {program}"))?;
        let pid = child.id().context("the server has no pid")?;
        let stdout = child.stdout.take().context("the server's stdout")?;
        let mut lines = BufReader::new(stdout).lines();
        let addr = tokio::time::timeout(SERVER_START, async {
            while let Some(line) = lines
                .next_line()
                .await
                .context("reading the server's stdout")?
            {
                if let Some(addr) = listening_addr(&line) {
                    return Ok(addr);
                }
            }
            Err(BenchError::new("the server exited before listening"))
        })
        .await
        .map_err(|_| BenchError::new("the server did not listen in time"))??;
        // Keep draining stdout so the server never blocks on it.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        Ok(Server { child, pid, addr })
    }

    /// SIGTERM, then SIGKILL if it lingers; how it ended.
    pub(crate) async fn stop(mut self) -> String {
        let term = i32::try_from(self.pid)
            .ok()
            .and_then(rustix::process::Pid::from_raw)
            .map(|p| rustix::process::kill_process(p, rustix::process::Signal::TERM));
        if !matches!(term, Some(Ok(()))) {
            let _ = self.child.kill().await;
            return "killed (SIGTERM could not be sent)".into();
        }
        match tokio::time::timeout(SERVER_STOP, self.child.wait()).await {
            Ok(Ok(st)) => format!("exited on SIGTERM: {st}"),
            Ok(Err(e)) => format!("unknown: {e}"),
            Err(_) => {
                let _ = self.child.kill().await;
                format!("killed: still running {SERVER_STOP:?} after SIGTERM")
            }
        }
    }
}

/// `...listening on http://127.0.0.1:PORT...` -> the address.
fn listening_addr(line: &str) -> Option<SocketAddr> {
    let (_, rest) = line.split_once("listening on http://")?;
    rest.split(|c: char| c.is_whitespace() || c == '/')
        .next()?
        .parse()
        .ok()
}

fn log_tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// What the agents share with the conductor.
#[derive(Default)]
struct Shared {
    connected: AtomicUsize,
    failed: AtomicUsize,
    acks: AtomicUsize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Beat,
    /// Send no more; wait for the outstanding acks, then leave.
    Drain,
}

/// One heartbeat as the agent saw it.
#[derive(Debug, Clone, Copy)]
struct Beat {
    due: Instant,
    sent: Instant,
    acked: Option<Instant>,
    ok: bool,
}

/// What one agent did.
#[derive(Debug, Default)]
struct AgentLog {
    connect_started: Option<Instant>,
    connected_at: Option<Instant>,
    error: Option<String>,
    beats: Vec<Beat>,
    /// When and why the connection ended before the agent left.
    lost: Option<(Instant, String)>,
    first_refusal: Option<String>,
}

type Ws = WebSocketStream<MaybeTlsStream<TcpStream>>;

/// Measures one server: starts it, connects the agents, measures the window, stops it.
async fn measure(
    target: Target,
    command: Vec<String>,
    log: &Path,
    opts: &FleetOptions,
    agents: Arc<Vec<Agent>>,
    progress: &impl Fn(&str),
) -> Result<ServerRun> {
    let name = target.name();
    let server = Server::start(&command, log).await?;
    let t0 = Instant::now();
    let pid = server.pid;
    progress(&format!(
        "fleet: {name} listening on {} (pid {pid})",
        server.addr
    ));
    tokio::time::sleep(Duration::from_secs(1)).await;
    let before = ProcSample::read(pid)?;
    let shared = Arc::new(Shared::default());
    let (phase_tx, phase_rx) = watch::channel(Phase::Beat);
    let gate = Arc::new(Semaphore::new(opts.ramp));
    let url = format!("ws://{}/socket.io/?EIO=4&transport=websocket", server.addr);
    let ramp_start = Instant::now();
    let mut tasks = Vec::with_capacity(agents.len());
    for (i, _) in agents.iter().enumerate() {
        let (agents, shared, gate, phase, url) = (
            agents.clone(),
            shared.clone(),
            gate.clone(),
            phase_rx.clone(),
            url.clone(),
        );
        let (period, ack_timeout) = (opts.period, opts.ack_timeout);
        tasks.push(tokio::spawn(async move {
            let a = &agents[i];
            run_agent(
                &url,
                a,
                i as u64,
                period,
                ack_timeout,
                &shared,
                &gate,
                phase,
            )
            .await
        }));
    }
    drop(phase_rx);

    let mut timeline = Vec::new();
    let tick = |timeline: &mut Vec<Tick>| -> Result<()> {
        let s = ProcSample::read(pid)?;
        timeline.push(Tick {
            t_s: round3(t0.elapsed().as_secs_f64()),
            connected: shared.connected.load(Ordering::Relaxed),
            acks: shared.acks.load(Ordering::Relaxed),
            server_cpu_s: s.cpu_s,
            server_rss_kib: s.rss_kib,
            loadgen_cpu_s: ProcSample::own()?.cpu_s,
        });
        Ok(())
    };
    // The ramp: until every agent has connected or failed.
    let mut last_report = Instant::now();
    loop {
        let (c, f) = (
            shared.connected.load(Ordering::Relaxed),
            shared.failed.load(Ordering::Relaxed),
        );
        if c + f >= agents.len() {
            break;
        }
        if ramp_start.elapsed() > CONNECT_TIMEOUT + Duration::from_secs(agents.len() as u64) {
            return Err(BenchError::new(format!(
                "the agents did not all connect: {c} connected, {f} failed"
            )));
        }
        if last_report.elapsed() >= Duration::from_secs(5) {
            progress(&format!("fleet: {name}: {c} connected, {f} failed"));
            last_report = Instant::now();
        }
        tick(&mut timeline)?;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let ramp = ramp_start.elapsed();
    progress(&format!(
        "fleet: {name}: {} connected, {} failed in {:.1} s; settling {:?}",
        shared.connected.load(Ordering::Relaxed),
        shared.failed.load(Ordering::Relaxed),
        ramp.as_secs_f64(),
        opts.settle
    ));
    sleep_ticking(opts.settle, &mut timeline, &tick).await?;
    let (w0, start, own0, m0) = (
        Instant::now(),
        ProcSample::read(pid)?,
        ProcSample::own()?,
        machine_cpu(),
    );
    progress(&format!(
        "fleet: {name}: measuring {:?} (server RSS {} MiB, {} connected)",
        opts.duration,
        start.rss_kib / 1024,
        shared.connected.load(Ordering::Relaxed)
    ));
    sleep_ticking(opts.duration, &mut timeline, &tick).await?;
    let (w1, end, own1, m1) = (
        Instant::now(),
        ProcSample::read(pid)?,
        ProcSample::own()?,
        machine_cpu(),
    );
    let held = shared.connected.load(Ordering::Relaxed);
    let _ = phase_tx.send(Phase::Drain);
    let mut logs = Vec::with_capacity(tasks.len());
    for t in tasks {
        logs.push(t.await.context("an agent task")?);
    }
    let server_exit = server.stop().await;
    progress(&format!("fleet: {name} stopped: {server_exit}"));

    let window = w1 - w0;
    let mut r = summarise(&logs, w0, w1, opts.ack_timeout);
    let connected = logs.iter().filter(|l| l.connected_at.is_some()).count();
    let cpu = end.cpu_s - start.cpu_s;
    let kib = |s: &ProcSample| {
        round3((s.rss_kib as f64 - before.rss_kib as f64) / connected.max(1) as f64)
    };
    r.name = name.to_owned();
    r.description = match target {
        Target::Vmfleet => "the real `vmfleet server` (release build): direct WebSocket \
                            connections served on its one-thread /fleet runtime, host key \
                            hashed and looked up in SQLite (sqlx), heartbeat decoded to wire \
                            types, acked, and written with the period's other heartbeats in \
                            one batch (`Store::record_heartbeats`)."
            .into(),
        Target::Node => "`bench/node-fleet/server.mjs`: socket.io on Node.js, host key hashed \
                         (crypto SHA-256) and looked up in SQLite (better-sqlite3), heartbeat \
                         checked and written to SQLite, ack."
            .into(),
    };
    r.command = command;
    r.agents = agents.len();
    r.connected = connected;
    r.held_at_end = held;
    r.ramp_s = round3(ramp.as_secs_f64());
    r.window_s = round3(window.as_secs_f64());
    r.heartbeats_per_s = round3(r.heartbeats_per_s / window.as_secs_f64());
    r.cpu_s_per_1000 = if r.heartbeats_per_s > 0.0 {
        round6(cpu / (r.heartbeats_per_s * window.as_secs_f64()) * 1000.0)
    } else {
        0.0
    };
    r.server_cores = round3(cpu / window.as_secs_f64());
    r.loadgen_cores = round3((own1.cpu_s - own0.cpu_s) / window.as_secs_f64());
    if let (Some((b0, s0)), Some((b1, s1))) = (m0, m1) {
        let secs = window.as_secs_f64();
        let others = (b1 - b0) - cpu - (own1.cpu_s - own0.cpu_s);
        r.others_cores = round3((others / secs).max(0.0));
        r.steal_cores = round3((s1 - s0) / secs);
    }
    r.kib_per_connection = kib(&start);
    r.kib_per_connection_end = kib(&end);
    r.before = before;
    r.window_start = start;
    r.window_end = end;
    r.loadgen_window_start = own0;
    r.loadgen_window_end = own1;
    r.timeline = timeline;
    r.server_exit = server_exit;
    Ok(r)
}

async fn sleep_ticking(
    d: Duration,
    timeline: &mut Vec<Tick>,
    tick: &impl Fn(&mut Vec<Tick>) -> Result<()>,
) -> Result<()> {
    let end = Instant::now() + d;
    loop {
        let now = Instant::now();
        if now >= end {
            return Ok(());
        }
        tokio::time::sleep((end - now).min(TICK)).await;
        tick(timeline)?;
    }
}

/// The figures of the agents' logs for the window `[w0, w1)`. Fills the counts, latencies
/// and histogram; `heartbeats_per_s` holds the number of acks received in the window.
fn summarise(logs: &[AgentLog], w0: Instant, w1: Instant, ack_timeout: Duration) -> ServerRun {
    let mut errors: Vec<String> = Vec::new();
    let mut reasons: Vec<String> = Vec::new();
    let mut connect = Vec::new();
    let (mut sent, mut acked, mut refused, mut missed, mut acks_in_window) = (0, 0, 0, 0, 0);
    let (mut lat, mut late) = (Vec::new(), Vec::new());
    let mut first_refusal = None;
    let mut failures = 0;
    let mut disconnects = 0;
    for l in logs {
        if let Some(e) = &l.error {
            failures += 1;
            if errors.len() < 5 && !errors.contains(e) {
                errors.push(e.clone());
            }
        }
        if let (Some(s), Some(c)) = (l.connect_started, l.connected_at) {
            connect.push(ms(c - s));
        }
        if let Some((_, why)) = &l.lost {
            disconnects += 1;
            if reasons.len() < 5 && !reasons.contains(why) {
                reasons.push(why.clone());
            }
        }
        if first_refusal.is_none() {
            first_refusal.clone_from(&l.first_refusal);
        }
        for b in &l.beats {
            if b.acked.is_some_and(|a| a >= w0 && a < w1) {
                acks_in_window += 1;
            }
            if b.sent < w0 || b.sent >= w1 {
                continue;
            }
            sent += 1;
            late.push(ms(b.sent.saturating_duration_since(b.due)));
            match b.acked {
                Some(a) if a - b.sent <= ack_timeout => {
                    lat.push(ms(a - b.sent));
                    if b.ok {
                        acked += 1;
                    } else {
                        refused += 1;
                    }
                }
                _ => missed += 1,
            }
        }
    }
    let ack_histogram = histogram(&lat);
    ServerRun {
        name: String::new(),
        description: String::new(),
        command: Vec::new(),
        agents: logs.len(),
        connected: 0,
        held_at_end: 0,
        connect_failures: failures,
        connect_errors: errors,
        disconnects,
        disconnect_reasons: reasons,
        ramp_s: 0.0,
        connect_ms: Latency::of(&mut connect),
        window_s: 0.0,
        heartbeats_sent: sent,
        heartbeats_acked: acked,
        heartbeats_refused: refused,
        heartbeats_missed: missed,
        first_refusal,
        heartbeats_per_s: acks_in_window as f64,
        ack_ms: Latency::of(&mut lat),
        send_lateness_ms: Latency::of(&mut late),
        cpu_s_per_1000: 0.0,
        server_cores: 0.0,
        loadgen_cores: 0.0,
        others_cores: 0.0,
        steal_cores: 0.0,
        kib_per_connection: 0.0,
        kib_per_connection_end: 0.0,
        before: ProcSample::default(),
        window_start: ProcSample::default(),
        window_end: ProcSample::default(),
        loadgen_window_start: ProcSample::default(),
        loadgen_window_end: ProcSample::default(),
        ack_histogram,
        timeline: Vec::new(),
        server_exit: String::new(),
    }
}

/// Buckets per decade of the latency histogram, from 1 µs.
const BUCKETS_PER_DECADE: f64 = 20.0;

/// (upper bound ms, count) of log-spaced buckets, the empty ones left out.
pub fn histogram(samples_ms: &[f64]) -> Vec<(f64, usize)> {
    let mut counts = std::collections::BTreeMap::<i64, usize>::new();
    for &x in samples_ms {
        let k = ((x.max(0.001) / 0.001).log10() * BUCKETS_PER_DECADE).ceil() as i64;
        *counts.entry(k).or_default() += 1;
    }
    counts
        .into_iter()
        .map(|(k, c)| {
            let upper = 0.001 * 10f64.powf(k as f64 / BUCKETS_PER_DECADE);
            (round6(upper), c)
        })
        .collect()
}

/// One agent: handshake (at most `ramp` at once), then heartbeats until told to drain.
#[allow(clippy::too_many_arguments)]
async fn run_agent(
    url: &str,
    agent: &Agent,
    seed: u64,
    period: Duration,
    ack_timeout: Duration,
    shared: &Shared,
    gate: &Semaphore,
    mut phase: watch::Receiver<Phase>,
) -> AgentLog {
    let mut log = AgentLog::default();
    let mut rng = Rng::new(seed);
    let ws = {
        let _permit = gate.acquire().await;
        log.connect_started = Some(Instant::now());
        tokio::time::timeout(CONNECT_TIMEOUT, handshake(url, agent)).await
    };
    let mut ws = match ws {
        Ok(Ok(ws)) => ws,
        Ok(Err(e)) => {
            log.error = Some(e);
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return log;
        }
        Err(_) => {
            log.error = Some(format!("no node_info within {CONNECT_TIMEOUT:?}"));
            shared.failed.fetch_add(1, Ordering::Relaxed);
            return log;
        }
    };
    let connected = Instant::now();
    log.connected_at = Some(connected);
    shared.connected.fetch_add(1, Ordering::Relaxed);
    let prefix = format!("43{NAMESPACE},");
    let mut metrics = Metrics::new(&mut rng);
    let mut next = connected + period.mul_f64(rng.unit());
    let mut seq: u64 = 0;
    // (ack id, index in log.beats), oldest first.
    let mut outstanding: VecDeque<(u64, usize)> = VecDeque::new();
    let mut drain: Option<Instant> = None;
    let lost = loop {
        if drain.is_some() && outstanding.is_empty() {
            break None;
        }
        let wake = drain.unwrap_or(next);
        tokio::select! {
            msg = ws.next() => {
                let now = Instant::now();
                let text = match msg {
                    Some(Ok(Message::Text(t))) => t,
                    Some(Ok(Message::Close(_))) | None => break Some("closed by the server".to_owned()),
                    Some(Ok(_)) => continue,
                    Some(Err(e)) => break Some(format!("WebSocket error: {e}")),
                };
                let s = text.as_str();
                if s == "2" {
                    if let Err(e) = ws.send(Message::text("3")).await {
                        break Some(format!("sending pong: {e}"));
                    }
                } else if let Some(body) = s.strip_prefix(&prefix) {
                    if let Some((id, ok)) = parse_ack(body)
                        && let Some(pos) = outstanding.iter().position(|(i, _)| *i == id)
                        && let Some((_, ix)) = outstanding.remove(pos)
                    {
                        let b = &mut log.beats[ix];
                        b.acked = Some(now);
                        b.ok = ok;
                        shared.acks.fetch_add(1, Ordering::Relaxed);
                        if !ok && log.first_refusal.is_none() {
                            log.first_refusal = Some(body.to_owned());
                        }
                    }
                } else if s.starts_with('1') || s.starts_with(&format!("41{NAMESPACE}")) {
                    break Some(format!("disconnected by the server ({s})"));
                }
            }
            () = tokio::time::sleep_until(wake.into()) => {
                if drain.is_some() {
                    break None;
                }
                // Acks older than the timeout will not count; stop tracking them.
                let now = Instant::now();
                while outstanding.front().is_some_and(|(_, ix)| now - log.beats[*ix].sent > ack_timeout) {
                    outstanding.pop_front();
                }
                let frame = heartbeat_frame(seq, &agent.id, metrics.next(&mut rng));
                let sent = Instant::now();
                if let Err(e) = ws.send(Message::text(frame)).await {
                    break Some(format!("sending a heartbeat: {e}"));
                }
                outstanding.push_back((seq, log.beats.len()));
                log.beats.push(Beat { due: next, sent, acked: None, ok: false });
                seq += 1;
                next += period;
            }
            r = phase.changed(), if drain.is_none() => {
                if r.is_err() || *phase.borrow() == Phase::Drain {
                    drain = Some(Instant::now() + ack_timeout);
                }
            }
        }
    };
    if let Some(why) = lost {
        log.lost = Some((Instant::now(), why));
    }
    if drain.is_none() || log.lost.is_some() {
        // Lost before the end: it no longer holds a connection.
        shared.connected.fetch_sub(1, Ordering::Relaxed);
    }
    log
}

/// TCP, WebSocket upgrade (key in `Authorization`), Engine.IO open, namespace connect (key in
/// the auth payload), and `node_info` naming this agent's node.
async fn handshake(url: &str, agent: &Agent) -> std::result::Result<Ws, String> {
    let mut req = url.into_client_request().map_err(|e| e.to_string())?;
    let bearer =
        HeaderValue::from_str(&format!("Bearer {}", agent.key)).map_err(|e| e.to_string())?;
    req.headers_mut().insert("authorization", bearer);
    // Small buffers: the load generator holds as many sockets as the server.
    let config = WebSocketConfig::default()
        .read_buffer_size(4096)
        .write_buffer_size(0);
    let (mut ws, _) = tokio_tungstenite::connect_async_with_config(req, Some(config), true)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let open = next_text(&mut ws).await?;
    if !open.starts_with('0') {
        return Err(format!("expected the Engine.IO open packet, got {open:?}"));
    }
    let auth = json!({ "token": agent.key });
    ws.send(Message::text(format!("40{NAMESPACE},{auth}")))
        .await
        .map_err(|e| format!("sending connect: {e}"))?;
    let (mut joined, mut info) = (false, false);
    while !(joined && info) {
        let frame = next_text(&mut ws).await?;
        if frame == "2" {
            ws.send(Message::text("3"))
                .await
                .map_err(|e| format!("sending pong: {e}"))?;
        } else if frame.starts_with(&format!("40{NAMESPACE},")) {
            joined = true;
        } else if frame.starts_with(&format!("44{NAMESPACE},")) {
            return Err(format!("refused: {frame}"));
        } else if let Some(body) = frame.strip_prefix(&format!("42{NAMESPACE},")) {
            let ev: Vec<serde_json::Value> =
                serde_json::from_str(body).map_err(|e| format!("bad event {body}: {e}"))?;
            if ev.first().and_then(|v| v.as_str()) == Some(NODE_INFO) {
                let id = ev
                    .get(1)
                    .and_then(|v| v.get("nodeId"))
                    .and_then(|v| v.as_str());
                if id != Some(agent.id.as_str()) {
                    return Err(format!("node_info names {id:?}, not {}", agent.id));
                }
                info = true;
            }
        } else {
            return Err(format!("unexpected frame {frame:?}"));
        }
    }
    Ok(ws)
}

async fn next_text(ws: &mut Ws) -> std::result::Result<String, String> {
    loop {
        match ws.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(_))) | None => return Err("closed during the handshake".into()),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(format!("WebSocket error: {e}")),
        }
    }
}

/// `<id>[{"success":...}]` -> (id, success).
fn parse_ack(body: &str) -> Option<(u64, bool)> {
    let digits = body.find(|c: char| !c.is_ascii_digit())?;
    let id = body[..digits].parse().ok()?;
    let args: Vec<serde_json::Value> = serde_json::from_str(&body[digits..]).ok()?;
    let ok = args
        .first()
        .and_then(|a| a.get("success"))
        .and_then(serde_json::Value::as_bool)
        .unwrap_or(false);
    Some((id, ok))
}

/// `42/fleet,<id>["heartbeat",{...}]`.
fn heartbeat_frame(id: u64, node: &str, metrics: HostMetrics) -> String {
    let hb = Heartbeat {
        node_id: NodeId::new(node).unwrap_or_else(|_| NodeId::generate()),
        status: NodeStatus::Online,
        metrics,
        capacity: Some(Capacity {
            vcpus: 64,
            memory_mb: 262_144,
            disk_gb: 3_800,
            gpus: 2,
        }),
    };
    let payload = serde_json::to_string(&hb).unwrap_or_default();
    format!("42{NAMESPACE},{id}[\"heartbeat\",{payload}]")
}

/// Plausible, drifting host metrics of a 2-GPU node.
struct Metrics {
    cpu: f64,
    ram_mb: f64,
    disk_gb: f64,
}

impl Metrics {
    fn new(rng: &mut Rng) -> Self {
        Metrics {
            cpu: 5.0 + 60.0 * rng.unit(),
            ram_mb: 16_000.0 + 64_000.0 * rng.unit(),
            disk_gb: 200.0 + 1_000.0 * rng.unit(),
        }
    }

    fn next(&mut self, rng: &mut Rng) -> HostMetrics {
        let mut walk =
            |v: f64, step: f64, lo: f64, hi: f64| (v + step * (rng.unit() - 0.5)).clamp(lo, hi);
        self.cpu = walk(self.cpu, 10.0, 0.0, 100.0);
        self.ram_mb = walk(self.ram_mb, 2_000.0, 4_000.0, 250_000.0);
        self.disk_gb = walk(self.disk_gb, 1.0, 100.0, 3_500.0);
        let r =
            |rng: &mut Rng, lo: f64, span: f64| ((lo + span * rng.unit()) * 10.0).round() / 10.0;
        HostMetrics {
            cpu_temp: Some(r(rng, 38.0, 30.0)),
            cpu_usage_percent: (self.cpu * 10.0).round() / 10.0,
            gpu_temp: vec![r(rng, 40.0, 40.0), r(rng, 40.0, 40.0)],
            gpu_utilization: vec![r(rng, 0.0, 100.0), r(rng, 0.0, 100.0)],
            gpu_memory_used_mb: vec![
                (24_000.0 * rng.unit()) as u64,
                (24_000.0 * rng.unit()) as u64,
            ],
            ram_usage_mb: self.ram_mb as u64,
            ram_total_mb: 262_144,
            disk_usage_gb: (self.disk_gb * 10.0).round() / 10.0,
            disk_total_gb: 3_800.0,
            network_rx_mbps: r(rng, 0.0, 900.0),
            network_tx_mbps: r(rng, 0.0, 300.0),
        }
    }
}

/// A small deterministic generator (splitmix64): phases and metrics, no dependency.
struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Rng(seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ 0xD1B5_4A32_D192_ED03)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn ms(d: Duration) -> f64 {
    d.as_nanos() as f64 / 1e6
}

fn round3(x: f64) -> f64 {
    (x * 1000.0).round() / 1000.0
}

fn round6(x: f64) -> f64 {
    (x * 1e6).round() / 1e6
}

fn result(
    opts: &FleetOptions,
    started: Timestamp,
    machine: Machine,
    runs: Vec<ServerRun>,
    env: Env,
) -> FleetResult {
    let find = |n: &str| runs.iter().find(|r| r.name == n);
    let mut verdicts = Vec::new();
    if let Some(v) = find(VMFLEET) {
        let all = v.held_at_end == v.agents && v.connect_failures == 0;
        verdicts.push(Verdict {
            target: format!("{} agents connected and held at a {} s period", opts.agents, opts.period.as_secs_f64()),
            measured: format!(
                "{} connected, {} held at the end, {} connect failures, {} missed and {} refused acks",
                v.connected, v.held_at_end, v.connect_failures, v.heartbeats_missed, v.heartbeats_refused
            ),
            pass: all && v.heartbeats_missed == 0 && v.heartbeats_refused == 0,
        });
        verdicts.push(Verdict {
            target: format!("vmfleet ack p99 < {TARGET_P99_MS} ms"),
            measured: format!(
                "p99 {:.2} ms (p50 {:.2}, max {:.1})",
                v.ack_ms.p99, v.ack_ms.p50, v.ack_ms.max
            ),
            pass: v.ack_ms.n > 0 && v.ack_ms.p99 < TARGET_P99_MS,
        });
        verdicts.push(Verdict {
            target: format!("vmfleet < {TARGET_KIB_PER_CONNECTION} KiB of RSS per connection"),
            measured: format!(
                "{:.1} KiB per connection at the window's start, {:.1} at its end",
                v.kib_per_connection, v.kib_per_connection_end
            ),
            pass: v.kib_per_connection < TARGET_KIB_PER_CONNECTION
                && v.kib_per_connection_end < TARGET_KIB_PER_CONNECTION,
        });
        if let Some(n) = find(NODE) {
            let ratio = if n.cpu_s_per_1000 > 0.0 {
                v.cpu_s_per_1000 / n.cpu_s_per_1000
            } else {
                f64::INFINITY
            };
            verdicts.push(Verdict {
                target: "vmfleet's CPU per heartbeat <= 1/3 of the Node.js server's".into(),
                measured: format!(
                    "{:.4} vs {:.4} CPU s per 1,000 heartbeats: ratio {:.3} (Node / vmfleet = {:.2}x)",
                    v.cpu_s_per_1000,
                    n.cpu_s_per_1000,
                    ratio,
                    1.0 / ratio
                ),
                pass: ratio <= TARGET_CPU_RATIO,
            });
        }
    }
    let mut notes = vec![
        LOADGEN_NOTE.to_owned(),
        format!(
            "Both servers ran one after the other on the same machine, with the same {} nodes and \
             keys, the same agents, period, phases and heartbeats; the CPU and memory of each are \
             those of its process alone (all threads), from /proc.",
            opts.agents
        ),
        format!(
            "CPU per 1,000 heartbeats = server CPU seconds during the {:.0} s window / acks received \
             in it x 1,000; it includes the server's idle work in the window (Engine.IO pings \
             every 25 s, the silent-node watchdog). RSS per connection = (RSS at the window's \
             start - RSS before any agent) / connected agents.",
            opts.duration.as_secs_f64()
        ),
        format!(
            "vmfleet binary: {}{}; run with its defaults (LOG_LEVEL info, its log to a file).",
            env.server_bin.display(),
            if env.given {
                " (given with --server-bin)"
            } else if env.built {
                " (built by this run)"
            } else {
                " (release build found)"
            }
        ),
        format!("Node.js server: {}", env.node_modules),
        format!(
            "RLIMIT_NOFILE raised from {} to {} (hard {}), inherited by both servers; ephemeral \
             ports {}.",
            env.nofile.before,
            env.nofile.after,
            env.nofile.hard,
            env.ports
                .map_or("unknown".into(), |(l, h)| format!("{l}-{h}"))
        ),
    ];
    for r in &runs {
        if r.connect_failures > 0 {
            notes.push(format!(
                "{}: connect errors: {}",
                r.name,
                r.connect_errors.join("; ")
            ));
        }
        if r.disconnects > 0 {
            notes.push(format!(
                "{}: connections lost: {}",
                r.name,
                r.disconnect_reasons.join("; ")
            ));
        }
        if let Some(f) = &r.first_refusal {
            notes.push(format!("{}: first refused heartbeat: {f}", r.name));
        }
    }
    FleetResult {
        schema: SCHEMA.into(),
        scenario: SCENARIO.into(),
        title: "agents heartbeating on /fleet, vmfleet vs a Node.js socket.io server".into(),
        description: format!(
            "{} simulated host agents connect to `/fleet` (WebSocket, host key) and heartbeat \
             every {} s (seed 001's `heartbeat`, acked), phases spread over the period; measured \
             over {} s once all are connected, against `vmfleet server` and against a minimal \
             Node.js socket.io server with the same semantics, in one run. Targets: ack p99 under \
             {TARGET_P99_MS} ms and under {TARGET_KIB_PER_CONNECTION} KiB per connection for \
             vmfleet, and at most a third of Node's CPU per heartbeat.",
            opts.agents,
            opts.period.as_secs_f64(),
            opts.duration.as_secs_f64()
        ),
        date: started.as_str().get(..10).unwrap_or("unknown").to_owned(),
        started_at: started.as_str().to_owned(),
        finished_at: Timestamp::now().as_str().to_owned(),
        machine,
        config: json!({
            "agents": opts.agents,
            "period_s": opts.period.as_secs_f64(),
            "duration_s": opts.duration.as_secs_f64(),
            "settle_s": opts.settle.as_secs_f64(),
            "ramp_concurrency": opts.ramp,
            "ack_timeout_s": opts.ack_timeout.as_secs_f64(),
            "order": opts.targets.iter().map(|t| t.name()).collect::<Vec<_>>(),
            "vmfleet_binary": env.server_bin.display().to_string(),
            "vmfleet_binary_built_by_run": env.built,
            "vmfleet_binary_given": env.given,
            "source_commit": env.commit,
            "node": env.node_modules,
            "nofile": env.nofile,
            "ephemeral_ports": env.ports,
        }),
        runs,
        verdicts,
        notes,
    }
}

impl FleetResult {
    /// The scenario's section of the Markdown report.
    pub fn markdown(&self, svg_name: &str) -> String {
        let mut md = String::new();
        let _ = writeln!(md, "## {}: {}\n", self.scenario, self.title);
        let _ = writeln!(md, "{}\n", self.description);
        let _ = writeln!(
            md,
            "Run {} to {}; load average {} at the start, {} at the end.\n",
            self.started_at, self.finished_at, self.machine.load_start, self.machine.load_end
        );
        let names: Vec<&str> = self.runs.iter().map(|r| r.name.as_str()).collect();
        let _ = writeln!(md, "| measure | {} |", names.join(" | "));
        let _ = writeln!(md, "|---|{}", "---:|".repeat(names.len()));
        let row = |md: &mut String, label: &str, f: &dyn Fn(&ServerRun) -> String| {
            let cells: Vec<String> = self.runs.iter().map(f).collect();
            let _ = writeln!(md, "| {label} | {} |", cells.join(" | "));
        };
        row(&mut md, "agents connected / held at the end", &|r| {
            format!("{} / {}", r.connected, r.held_at_end)
        });
        row(&mut md, "connect failures / connections lost", &|r| {
            format!("{} / {}", r.connect_failures, r.disconnects)
        });
        row(&mut md, "ramp (s) / handshake p50, p99 (ms)", &|r| {
            format!(
                "{:.1} / {:.1}, {:.1}",
                r.ramp_s, r.connect_ms.p50, r.connect_ms.p99
            )
        });
        row(
            &mut md,
            "heartbeats sent in the window / acked / refused / missed",
            &|r| {
                format!(
                    "{} / {} / {} / {}",
                    r.heartbeats_sent,
                    r.heartbeats_acked,
                    r.heartbeats_refused,
                    r.heartbeats_missed
                )
            },
        );
        row(&mut md, "heartbeats/s (acks)", &|r| {
            format!("{:.1}", r.heartbeats_per_s)
        });
        row(&mut md, "ack p50 / p90 / p99 / p99.9 / max (ms)", &|r| {
            let a = &r.ack_ms;
            format!(
                "{:.2} / {:.2} / {:.2} / {:.2} / {:.1}",
                a.p50, a.p90, a.p99, a.p999, a.max
            )
        });
        row(&mut md, "**server CPU s per 1,000 heartbeats**", &|r| {
            format!("**{:.4}**", r.cpu_s_per_1000)
        });
        row(&mut md, "server CPU in the window (cores)", &|r| {
            format!("{:.3}", r.server_cores)
        });
        row(
            &mut md,
            "**RSS per connection (KiB)**, window start / end",
            &|r| {
                format!(
                    "**{:.1}** / {:.1}",
                    r.kib_per_connection, r.kib_per_connection_end
                )
            },
        );
        row(
            &mut md,
            "RSS before / window start / end / peak (MiB)",
            &|r| {
                format!(
                    "{:.1} / {:.1} / {:.1} / {:.1}",
                    r.before.rss_kib as f64 / 1024.0,
                    r.window_start.rss_kib as f64 / 1024.0,
                    r.window_end.rss_kib as f64 / 1024.0,
                    r.window_end.hwm_kib as f64 / 1024.0
                )
            },
        );
        row(&mut md, "server threads", &|r| {
            r.window_end.threads.to_string()
        });
        row(
            &mut md,
            "load generator CPU (cores) / send lateness p99 (ms)",
            &|r| format!("{:.3} / {:.2}", r.loadgen_cores, r.send_lateness_ms.p99),
        );
        row(
            &mut md,
            "rest of the machine in the window (cores) / steal",
            &|r| format!("{:.2} / {:.2}", r.others_cores, r.steal_cores),
        );
        md.push('\n');
        for r in &self.runs {
            let _ = writeln!(md, "- **{}**: {}", r.name, r.description);
        }
        md.push('\n');
        md.push_str("| target | measured | verdict |\n|---|---|---|\n");
        for v in &self.verdicts {
            let _ = writeln!(
                md,
                "| {} | {} | {} |",
                v.target,
                v.measured,
                if v.pass { "**pass**" } else { "**FAIL**" }
            );
        }
        md.push('\n');
        for r in &self.runs {
            let healthy =
                r.loadgen_cores < LOADGEN_MAX_CORES && r.send_lateness_ms.p99 < LOADGEN_MAX_LATE_MS;
            let _ = writeln!(
                md,
                "- load generator during {}: {:.2} cores, heartbeats sent {:.1} ms late at p99 \
                 (max {:.1}): {}",
                r.name,
                r.loadgen_cores,
                r.send_lateness_ms.p99,
                r.send_lateness_ms.max,
                if healthy {
                    "kept up, not the bottleneck."
                } else {
                    "**delayed**: part of this run's ack latency is the load generator waiting \
                     for a CPU (the server, the load generator and the machine's other work share \
                     its cores)."
                }
            );
        }
        let _ = writeln!(md, "\n![ack latency and CPU per heartbeat]({svg_name})\n");
        md.push_str("Notes:\n\n");
        for n in &self.notes {
            let _ = writeln!(md, "- {n}");
        }
        md
    }

    /// The headline figures: vmfleet against the Node.js socket.io server of the same run.
    pub fn figures(&self) -> Vec<crate::report::Figure> {
        use crate::report::Figure;
        let scenario = format!("{} N={}", self.scenario, self.config["agents"]);
        let (Some(v), node) = (
            self.runs.iter().find(|r| r.name == VMFLEET),
            self.runs.iter().find(|r| r.name == NODE),
        ) else {
            return Vec::new();
        };
        type Row = (&'static str, &'static str, fn(&ServerRun) -> f64);
        let rows: [Row; 6] = [
            ("agents held to the end", "agents", |r| r.held_at_end as f64),
            ("heartbeats/s", "hb/s", |r| r.heartbeats_per_s),
            ("ack p50", "ms", |r| r.ack_ms.p50),
            ("ack p99", "ms", |r| r.ack_ms.p99),
            ("server CPU per 1,000 heartbeats", "CPU s", |r| {
                r.cpu_s_per_1000
            }),
            ("RSS per connection", "KiB", |r| r.kib_per_connection),
        ];
        rows.iter()
            .map(|(name, unit, f)| {
                let fig = Figure::new(&scenario, name, unit, f(v));
                let fig = match node {
                    Some(n) => fig.against(NODE, f(n)),
                    None => fig,
                };
                match *name {
                    "ack p99" => fig.target(
                        &format!("< {TARGET_P99_MS} ms"),
                        v.ack_ms.p99 < TARGET_P99_MS,
                    ),
                    "RSS per connection" => fig.target(
                        &format!("< {TARGET_KIB_PER_CONNECTION} KiB"),
                        v.kib_per_connection < TARGET_KIB_PER_CONNECTION,
                    ),
                    "server CPU per 1,000 heartbeats" => match node {
                        Some(n) => fig.target(
                            "<= 1/3 of Node's",
                            v.cpu_s_per_1000 <= n.cpu_s_per_1000 * TARGET_CPU_RATIO,
                        ),
                        None => fig,
                    },
                    "agents held to the end" => fig.target(
                        "all, no missed ack",
                        v.held_at_end == v.agents && v.heartbeats_missed == 0,
                    ),
                    _ => fig,
                }
            })
            .collect()
    }

    /// `<date>-<host>`.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.date, self.machine.file_host())
    }

    /// Writes `<stem>-fleet.json`, `<stem>-fleet.svg` and this scenario's section of
    /// `<stem>.md` under `out`; returns the three paths.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf, PathBuf)> {
        std::fs::create_dir_all(out).context(format!("creating {}", out.display()))?;
        let json_path = out.join(format!("{}-{}.json", self.stem(), self.scenario));
        let mut json = serde_json::to_string_pretty(self).context("encoding the results")?;
        json.push('\n');
        write_atomic(&json_path, &json)?;
        let svg_name = format!("{}-{}.svg", self.stem(), self.scenario);
        let svg_path = out.join(&svg_name);
        write_atomic(&svg_path, &plot::fleet_svg(self))?;
        let md_path = out.join(format!("{}.md", self.stem()));
        let doc = std::fs::read_to_string(&md_path).unwrap_or_default();
        let doc = upsert_section(&doc, "machine", &machine_markdown(&self.machine));
        let doc = upsert_section(
            &doc,
            &format!("scenario {}", self.scenario),
            &self.markdown(&svg_name),
        );
        let doc = with_title(&doc, &format!("# vmfleet benchmarks: {}", self.stem()));
        write_atomic(&md_path, &doc)?;
        Ok((json_path, svg_path, md_path))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_acks_and_addresses() {
        assert_eq!(parse_ack("12[{\"success\":true}]"), Some((12, true)));
        assert_eq!(
            parse_ack("3[{\"success\":false,\"message\":\"x\"}]"),
            Some((3, false))
        );
        assert_eq!(parse_ack("[{}]"), None);
        assert_eq!(
            listening_addr("vmfleet control plane listening on http://127.0.0.1:4321"),
            Some("127.0.0.1:4321".parse().unwrap())
        );
        assert_eq!(
            listening_addr("listening on http://127.0.0.1:80/"),
            Some("127.0.0.1:80".parse().unwrap())
        );
        assert_eq!(listening_addr("dashboard: http://127.0.0.1:1/"), None);
    }

    #[test]
    fn heartbeats_decode_as_the_wire_type() {
        let mut rng = Rng::new(7);
        let mut m = Metrics::new(&mut rng);
        let id = NodeId::generate();
        let frame = heartbeat_frame(5, id.as_str(), m.next(&mut rng));
        let body = frame.strip_prefix("42/fleet,5").unwrap();
        let ev: Vec<serde_json::Value> = serde_json::from_str(body).unwrap();
        assert_eq!(ev[0], "heartbeat");
        let hb: Heartbeat = serde_json::from_value(ev[1].clone()).unwrap();
        assert_eq!(hb.node_id, id);
        assert!((0.0..=100.0).contains(&hb.metrics.cpu_usage_percent));
        assert!((0.0..1.0).contains(&rng.unit()));
    }

    #[test]
    fn latency_summary_and_histogram() {
        let mut s: Vec<f64> = (1..=100).map(f64::from).collect();
        let l = Latency::of(&mut s);
        assert_eq!((l.n, l.p50, l.p99, l.max), (100, 50.5, 99.01, 100.0));
        assert_eq!(Latency::of(&mut []), Latency::default());
        let h = histogram(&[0.5, 0.5, 1.0, 40.0]);
        assert_eq!(h.iter().map(|(_, c)| c).sum::<usize>(), 4);
        assert!(h.windows(2).all(|w| w[0].0 < w[1].0));
        assert!(h.iter().all(|(upper, _)| *upper > 0.0));
        assert_eq!(h[0], (0.501187, 2));
    }

    #[test]
    fn the_window_counts_what_was_sent_in_it() {
        let t = Instant::now();
        let at = |ms: u64| t + Duration::from_millis(ms);
        let beat = |sent: u64, acked: Option<u64>, ok: bool| Beat {
            due: at(sent),
            sent: at(sent),
            acked: acked.map(at),
            ok,
        };
        let log = AgentLog {
            connect_started: Some(at(0)),
            connected_at: Some(at(10)),
            beats: vec![
                beat(50, Some(60), true),      // before the window
                beat(100, Some(105), true),    // in it
                beat(200, Some(230), false),   // refused
                beat(300, None, false),        // missed
                beat(400, Some(20_401), true), // too late: missed
                beat(1000, Some(1001), true),  // after
            ],
            ..AgentLog::default()
        };
        let r = summarise(&[log], at(100), at(1000), Duration::from_secs(10));
        assert_eq!(r.heartbeats_sent, 4);
        assert_eq!(
            (
                r.heartbeats_acked,
                r.heartbeats_refused,
                r.heartbeats_missed
            ),
            (1, 1, 2)
        );
        assert_eq!(r.ack_ms.n, 2);
        assert_eq!(r.ack_ms.max, 30.0);
        // Acks received in the window: 105 and 230.
        assert_eq!(r.heartbeats_per_s, 2.0);
        assert_eq!(r.connect_ms.p50, 10.0);
    }
}
