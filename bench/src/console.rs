//! Scenario `console`: keystroke echo latency through vmfleet's whole console path against the
//! guest's console socket directly (the physical floor), interleaved keystroke by keystroke.
//!
//! - **vmfleet**: `vmfleet up` (release build) runs a guest created and booted through
//!   `/vm/create` and `/vm/boot`; the benchmark types on `/ws/vms/{name}/console`
//!   (`console_input`), which goes control plane -> agent over `/fleet` -> the guest's serial
//!   port, and the tty's echo comes back agent -> control plane -> WebSocket (`console`).
//! - **floor**: the agent holds that guest's console socket (a QEMU chardev socket takes one
//!   client), so the floor is an identical guest: QEMU started by hand with exactly the
//!   command line the agent ran (read from `/proc`, its directory moved), and the same
//!   keystrokes written to and read from its console socket with a plain `UnixStream`.
//!
//! A keystroke is one character typed at the shell prompt, timed from just before it is sent
//! to the arrival of its echo; it is then erased (DEL, its echo awaited, untimed), so the
//! prompt stays empty. The target (issue 7): vmfleet adds under 2 ms at p99.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio_tungstenite::tungstenite::Message;
use vmfleet_core::Timestamp;

use crate::fleet::{git_commit, server_binary};
use crate::guest::{MarkerScan, READY_MARKER, Sweeper};
use crate::machine::Machine;
use crate::plane::{Plane, Recipe, Ws, console_text, launch_by_hand};
use crate::report::{Comparison, Figure, Measure, SCHEMA, Sample, ScenarioResult, Variant};
use crate::stats::{Summary, ms, percentile};
use crate::{BenchError, Context, Result};

pub const SCENARIO: &str = "console";
pub const VMFLEET: &str = "vmfleet";
pub const FLOOR: &str = "floor";
/// What vmfleet may add to a keystroke's echo at p99 (issue 7).
pub const TARGET_ADDED_P99_MS: f64 = 2.0;
/// The most one echo may take.
const ECHO_TIMEOUT: Duration = Duration::from_secs(5);
/// The shell's prompt ends so.
const PROMPT: &[u8] = b"# ";

#[derive(Debug, Clone)]
pub struct ConsoleOptions {
    /// Measured keystrokes on each path.
    pub keystrokes: usize,
    /// Keystrokes on each path first, not counted.
    pub warmup: usize,
    /// The most the guests may take to boot.
    pub boot_timeout: Duration,
    pub server_bin: Option<PathBuf>,
}

impl Default for ConsoleOptions {
    fn default() -> Self {
        ConsoleOptions {
            keystrokes: 300,
            warmup: 10,
            boot_timeout: Duration::from_secs(120),
            server_bin: None,
        }
    }
}

/// One end of a console: the WebSocket of the API, or QEMU's socket.
enum End {
    Ws(Box<Ws>),
    Sock(UnixStream),
}

impl End {
    async fn send(&mut self, bytes: &[u8]) -> Result<()> {
        match self {
            End::Ws(ws) => {
                let text = String::from_utf8_lossy(bytes);
                let msg = json!({"type": "console_input", "timestamp": Timestamp::now().as_str(),
                                 "data": {"content": text}});
                ws.send(Message::text(msg.to_string()))
                    .await
                    .context("sending console_input")
            }
            End::Sock(s) => s
                .write_all(bytes)
                .await
                .context("writing to the console socket"),
        }
    }

    /// The next output; `None` when nothing came by `deadline`.
    async fn recv(&mut self, deadline: Instant) -> Result<Option<Vec<u8>>> {
        match self {
            End::Ws(ws) => loop {
                let Ok(frame) = tokio::time::timeout_at(deadline.into(), ws.next()).await else {
                    return Ok(None);
                };
                if let Some(text) = console_text(frame)? {
                    return Ok(Some(text.into_bytes()));
                }
            },
            End::Sock(s) => {
                let mut buf = vec![0u8; 4096];
                match tokio::time::timeout_at(deadline.into(), s.read(&mut buf)).await {
                    Err(_) => Ok(None),
                    Ok(Ok(0)) => Err(BenchError::new("QEMU closed the console")),
                    Ok(Ok(n)) => {
                        buf.truncate(n);
                        Ok(Some(buf))
                    }
                    Ok(Err(e)) => Err(BenchError::new(format!("reading the console: {e}"))),
                }
            }
        }
    }

    /// Reads until the output holds `needle`: when the read that completed it returned.
    async fn until(&mut self, needle: &'static [u8], deadline: Instant) -> Result<Instant> {
        let mut scan = MarkerScan::new(needle);
        loop {
            match self.recv(deadline).await? {
                Some(chunk) => {
                    let at = Instant::now();
                    if scan.feed(&chunk) {
                        return Ok(at);
                    }
                }
                None => {
                    return Err(BenchError::new(format!(
                        "{:?} did not come back in time; the console showed: {:?}",
                        String::from_utf8_lossy(needle),
                        scan.tail()
                    )));
                }
            }
        }
    }

    /// Reads and drops output until none came for `quiet`.
    async fn drain(&mut self, quiet: Duration) -> Result<()> {
        while self.recv(Instant::now() + quiet).await?.is_some() {}
        Ok(())
    }

    /// Types `c`, times its echo, erases it.
    async fn keystroke(&mut self, c: u8) -> Result<Duration> {
        const KEYS: [&[u8]; 26] = [
            b"a", b"b", b"c", b"d", b"e", b"f", b"g", b"h", b"i", b"j", b"k", b"l", b"m", b"n",
            b"o", b"p", b"q", b"r", b"s", b"t", b"u", b"v", b"w", b"x", b"y", b"z",
        ];
        let key = KEYS[usize::from(c.saturating_sub(b'a')) % KEYS.len()];
        self.drain(Duration::from_millis(2)).await?;
        let t0 = Instant::now();
        self.send(key).await?;
        let at = self.until(key, t0 + ECHO_TIMEOUT).await?;
        let echo = at.saturating_duration_since(t0);
        // Untimed: DEL, echoed as a backspace; then let the line settle.
        self.send(b"\x7f").await?;
        self.until(b"\x08", Instant::now() + ECHO_TIMEOUT).await?;
        self.drain(Duration::from_millis(5)).await?;
        Ok(echo)
    }
}

/// Runs the scenario; `progress` hears what happens.
pub async fn run(opts: ConsoleOptions, progress: impl Fn(&str)) -> Result<ScenarioResult> {
    if opts.keystrokes == 0 {
        return Err(BenchError::new("--keystrokes must be at least 1"));
    }
    let started = Timestamp::now();
    let mut machine = Machine::read("see the QEMU command line", Path::new("qemu-system-x86_64"));
    let (bin, _) = server_binary(opts.server_bin.clone(), &progress).await?;
    let tmp = tempfile::Builder::new()
        .prefix("vmfleet-bench-console-")
        .tempdir()
        .context("creating a temporary directory")?;
    // Declared after `tmp`, so dropped before it: processes die before their files go.
    let sweeper = Sweeper::new(tmp.path());
    let plane = Plane::start(&bin, tmp.path()).await?;
    let measured = measure(&plane, tmp.path(), &opts, &progress).await;
    let exit = plane.stop().await;
    drop(sweeper);
    let (vm, floor, recipe) = measured?;
    machine.finish();
    machine.accel = accel_of(&recipe.args);
    Ok(result(
        started,
        machine,
        &opts,
        vm,
        floor,
        &recipe,
        exit,
        git_commit().await,
    ))
}

/// The `accel=` of a QEMU command line.
pub fn accel_of(args: &[String]) -> String {
    args.iter()
        .find_map(|a| {
            a.split(',')
                .find_map(|kv| kv.strip_prefix("accel="))
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

type Keys = (Vec<f64>, Vec<f64>);

async fn measure(
    plane: &Plane,
    tmp: &Path,
    opts: &ConsoleOptions,
    progress: &impl Fn(&str),
) -> Result<(Keys, Keys, Recipe)> {
    progress("console: creating and booting a VM through the API");
    let vm = plane.create_vm("console").await?;
    plane.boot_vm(&vm).await?;
    let deadline = Instant::now() + opts.boot_timeout;
    let ws = loop {
        match plane.ws(&vm.name, "/console", "").await {
            Ok(ws) => break ws,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
        }
    };
    let mut api = End::Ws(Box::new(ws));
    api.until(READY_MARKER, deadline).await?;
    api.until(PROMPT, deadline).await?;
    let pid = plane
        .guest_pid(&vm.id)
        .context("the agent's QEMU for the VM is not running")?;
    let rootfs = plane.data_dir.join("vms/images/rootfs.ext4");
    let recipe = Recipe::of_pid(pid, &rootfs)?;
    progress(&format!(
        "console: VM up; booting the floor by hand ({} {})",
        recipe.qemu,
        accel_of(&recipe.args)
    ));
    let mut child = None;
    let guest = launch_by_hand(
        &recipe,
        &tmp.join("floor"),
        "vmfleet-bench-floor",
        Instant::now(),
        deadline,
        &mut child,
    )
    .await?;
    let _qemu = guest.child;
    let mut floor = End::Sock(guest.console);
    floor.until(READY_MARKER, deadline).await?;
    floor.until(PROMPT, deadline).await?;
    // Both guests idle at their prompt.
    tokio::time::sleep(Duration::from_millis(500)).await;
    api.drain(Duration::from_millis(100)).await?;
    floor.drain(Duration::from_millis(100)).await?;

    let (mut a, mut f): (Keys, Keys) = Default::default();
    let total = opts.warmup + opts.keystrokes;
    for i in 0..total {
        let c = b'a' + (i % 26) as u8;
        // Alternate which path goes first, so neither always follows the other.
        let order = if i % 2 == 0 {
            [VMFLEET, FLOOR]
        } else {
            [FLOOR, VMFLEET]
        };
        for path in order {
            let (end, keys) = if path == VMFLEET {
                (&mut api, &mut a)
            } else {
                (&mut floor, &mut f)
            };
            let echo = end
                .keystroke(c)
                .await
                .map_err(|e| BenchError::new(format!("keystroke {} on {path}: {e}", i + 1)))?;
            if i < opts.warmup {
                keys.0.push(ms(echo));
            } else {
                keys.1.push(ms(echo));
            }
        }
        if (i + 1) % 50 == 0 || i + 1 == total {
            progress(&format!(
                "console: {}/{total} keystrokes on each path",
                i + 1
            ));
        }
    }
    drop(api);
    plane.delete_vm(&vm).await?;
    Ok((a, f, recipe))
}

fn p99(v: &[f64]) -> f64 {
    let mut s = v.to_vec();
    s.sort_by(f64::total_cmp);
    if s.is_empty() {
        return f64::NAN;
    }
    percentile(&s, 0.99)
}

#[allow(clippy::too_many_arguments)]
fn result(
    started: Timestamp,
    machine: Machine,
    opts: &ConsoleOptions,
    vm: Keys,
    floor: Keys,
    recipe: &Recipe,
    server_exit: String,
    commit: String,
) -> ScenarioResult {
    let variant = |name: &str, description: &str, (warm, keys): Keys, offset: usize| {
        let samples = |v: &[f64]| -> Vec<Sample> {
            v.iter()
                .enumerate()
                .map(|(i, &t)| Sample {
                    run: i,
                    seq: 2 * i + offset,
                    total_ms: t,
                    marks: Vec::new(),
                })
                .collect()
        };
        Variant {
            name: name.to_owned(),
            description: description.to_owned(),
            summary: Summary::of(&keys).unwrap_or_default(),
            samples: samples(&keys),
            warmup: samples(&warm),
        }
    };
    let (vm_p99, floor_p99) = (p99(&vm.1), p99(&floor.1));
    let vm = variant(
        VMFLEET,
        "`console_input` on `/ws/vms/{name}/console` to the echo's `console` message: \
         WebSocket -> control plane -> agent over `/fleet` -> guest serial -> back.",
        vm,
        0,
    );
    let floor = variant(
        FLOOR,
        "The same keystroke written to an identical guest's QEMU console socket (same \
         command line, by hand) and its echo read back with a plain `UnixStream`.",
        floor,
        1,
    );
    let added = ((vm_p99 - floor_p99) * 1000.0).round() / 1000.0;
    let figures = vec![
        Figure::new(SCENARIO, "keystroke echo p50", "ms", vm.summary.p50)
            .against(FLOOR, floor.summary.p50),
        Figure::new(SCENARIO, "keystroke echo p99", "ms", vm_p99).against(FLOOR, floor_p99),
        Figure::new(SCENARIO, "keystroke echo added at p99", "ms", added).target(
            &format!("< {TARGET_ADDED_P99_MS} ms"),
            added < TARGET_ADDED_P99_MS,
        ),
    ];
    let comparisons = vec![Comparison::new(
        "added latency",
        &vm,
        &floor,
        Measure::Total,
        None,
    )];
    ScenarioResult {
        schema: SCHEMA.to_owned(),
        scenario: SCENARIO.to_owned(),
        title: "keystroke echo, whole path vs the guest's console socket".to_owned(),
        description: format!(
            "One character typed at the guest's shell prompt, timed to its echo, {} times on \
             each path, interleaved keystroke by keystroke (the first path alternating), {} \
             warm-up keystrokes each first. Target (issue 7): vmfleet adds under {} ms at p99.",
            opts.keystrokes, opts.warmup, TARGET_ADDED_P99_MS
        ),
        date: started.as_str().get(..10).unwrap_or("unknown").to_owned(),
        started_at: started.as_str().to_owned(),
        finished_at: Timestamp::now().as_str().to_owned(),
        machine,
        config: json!({
            "keystrokes": opts.keystrokes,
            "warmup": opts.warmup,
            "order": "interleaved keystroke by keystroke, the first path alternating",
            "after_each_keystroke": "DEL sent, its backspace echo awaited, untimed",
            "p99_ms": {"vmfleet": vm_p99, "floor": floor_p99},
            "qemu_command_line_agent": recipe.args,
            "source_commit": commit,
            "server_exit": server_exit,
        }),
        figures,
        comparisons,
        variants: vec![vm, floor],
        notes: vec![
            "The floor is an identical guest rather than the same one: the agent holds the \
             VM's console socket, and a QEMU chardev socket serves one client at a time. Both \
             guests idle at their prompt while the other one is typed on."
                .to_owned(),
            "The server is `vmfleet up` (control plane and agent in one process), so the path \
             crosses /fleet on loopback inside one process's two ends."
                .to_owned(),
        ],
    }
}
