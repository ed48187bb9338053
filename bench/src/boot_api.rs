//! Scenario `boot-api`: create to console ready through vmfleet's public API against the same
//! QEMU command line launched by hand, interleaved run by run.
//!
//! - **api**: the clock starts just before `POST /vm/create`; then `POST /vm/boot` (the
//!   scheduler places the VM on `vmfleet up`'s local node, whose agent creates and boots it),
//!   then `/ws/vms/{name}/console`, opened as soon as the server accepts it (tried every
//!   [`CONSOLE_RETRY`] while it answers `VM_NOT_RUNNING`); the clock stops at the console
//!   message that completes `vmfleet-guest ready` (the console replays its scrollback, so no
//!   byte is missed). Then `POST /vm/delete`, untimed.
//! - **by-hand**: the command line the agent ran for the first (warm-up) API run, read from
//!   `/proc`, its directory moved; the clock starts before the same root-disk copy, then QEMU
//!   is spawned, its console socket connected and read to the same marker. Then SIGKILL.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::json;
use vmfleet_core::Timestamp;

use crate::boot::{Run, SETTLE, read_console};
use crate::fleet::{git_commit, server_binary};
use crate::guest::{MarkerScan, READY_MARKER, Sweeper};
use crate::machine::Machine;
use crate::plane::{ApiVm, Plane, Recipe, console_text, launch_by_hand};
use crate::report::{Comparison, Figure, Measure, SCHEMA, Sample, ScenarioResult, Variant};
use crate::stats::{Summary, ms};
use crate::{BenchError, Context, Result};

pub const SCENARIO: &str = "boot-api";
pub const API: &str = "api";
pub const BY_HAND: &str = "by-hand";
/// How often the console WebSocket is tried while the VM is not running yet.
pub const CONSOLE_RETRY: Duration = Duration::from_millis(5);

#[derive(Debug, Clone)]
pub struct BootApiOptions {
    pub runs: usize,
    pub warmup: usize,
    pub timeout: Duration,
    pub server_bin: Option<PathBuf>,
}

impl Default for BootApiOptions {
    fn default() -> Self {
        BootApiOptions {
            runs: 10,
            warmup: 1,
            timeout: Duration::from_secs(120),
            server_bin: None,
        }
    }
}

type Samples = (Vec<Sample>, Vec<Sample>);

pub async fn run(opts: BootApiOptions, progress: impl Fn(&str)) -> Result<ScenarioResult> {
    if opts.runs == 0 {
        return Err(BenchError::new("--runs must be at least 1"));
    }
    let started = Timestamp::now();
    let mut machine = Machine::read("see the QEMU command line", Path::new("qemu-system-x86_64"));
    let (bin, _) = server_binary(opts.server_bin.clone(), &progress).await?;
    let tmp = tempfile::Builder::new()
        .prefix("vmfleet-bench-boot-api-")
        .tempdir()
        .context("creating a temporary directory")?;
    let sweeper = Sweeper::new(tmp.path());
    let plane = Plane::start(&bin, tmp.path()).await?;
    let measured = interleave(&plane, tmp.path(), &opts, &progress).await;
    let exit = plane.stop().await;
    drop(sweeper);
    let (api, hand, recipe, first_frame) = measured?;
    machine.finish();
    machine.accel = crate::console::accel_of(&recipe.args);
    let variant = |name: &str, description: &str, (warmup, samples): Samples| Variant {
        name: name.to_owned(),
        description: description.to_owned(),
        summary: Summary::of(&samples.iter().map(|s| s.total_ms).collect::<Vec<_>>())
            .unwrap_or_default(),
        samples,
        warmup,
    };
    let api = variant(
        API,
        "`POST /vm/create`, `POST /vm/boot`, then `/ws/vms/{name}/console` until the marker. \
         Marks: `created`, `booted` (each answer received), `console` (the console WebSocket \
         accepted), `ready` (the marker's message arrived).",
        api,
    );
    let hand = variant(
        BY_HAND,
        "The same root-disk copy, then QEMU spawned with the agent's own command line (read \
         from /proc, directory moved), its console socket read with a plain `UnixStream`. \
         Marks: `disk`, `spawned`, `console` (socket connected), `ready`.",
        hand,
    );
    let figures = vec![
        Figure::new(
            SCENARIO,
            "create to console ready p50 (API)",
            "ms",
            api.summary.p50,
        )
        .against(BY_HAND, hand.summary.p50),
        Figure::new(
            SCENARIO,
            "create to console ready mean (API)",
            "ms",
            api.summary.mean,
        )
        .against(BY_HAND, hand.summary.mean),
    ];
    let comparisons = vec![
        Comparison::new("API overhead", &api, &hand, Measure::Total, None),
        Comparison::new(
            "until the console is open",
            &api,
            &hand,
            Measure::UntilMark("console".into()),
            None,
        ),
    ];
    let mut notes = vec![
        "Both variants include the copy of the root image to the VM's own disk, grown sparse \
         to the size the agent gives it."
            .to_owned(),
        format!(
            "The API variant opens the console WebSocket as soon as the server accepts it, \
             trying every {} ms while it answers VM_NOT_RUNNING; by hand, QEMU's console socket \
             is tried every {} ms.",
            CONSOLE_RETRY.as_millis(),
            crate::boot::CONNECT_POLL.as_millis()
        ),
    ];
    if first_frame > 0 {
        notes.push(format!(
            "In {first_frame} API run(s) the marker came in the console's first message (its \
             scrollback): those runs end when the console opened, an upper bound."
        ));
    }
    Ok(ScenarioResult {
        schema: SCHEMA.to_owned(),
        scenario: SCENARIO.to_owned(),
        title: "create to console ready, REST + WebSocket API vs QEMU by hand".to_owned(),
        description: format!(
            "Time from `POST /vm/create` to `{}` on the console WebSocket, through `vmfleet up` \
             (1 vCPU, 256 MiB, accel {}), against the same QEMU command line by hand, \
             interleaved run by run.",
            String::from_utf8_lossy(READY_MARKER),
            machine.accel
        ),
        date: started.as_str().get(..10).unwrap_or("unknown").to_owned(),
        started_at: started.as_str().to_owned(),
        finished_at: Timestamp::now().as_str().to_owned(),
        machine,
        config: json!({
            "runs": opts.runs,
            "warmup": opts.warmup,
            "order": "interleaved: api, by-hand, api, by-hand, ...",
            "timeout_s": opts.timeout.as_secs(),
            "qemu_command_line_agent": recipe.args,
            "source_commit": git_commit().await,
            "server_exit": exit,
        }),
        figures,
        comparisons,
        variants: vec![api, hand],
        notes,
    })
}

async fn interleave(
    plane: &Plane,
    tmp: &Path,
    opts: &BootApiOptions,
    progress: &impl Fn(&str),
) -> Result<(Samples, Samples, Recipe, usize)> {
    let (mut api, mut hand): (Samples, Samples) = Default::default();
    let mut recipe: Option<Recipe> = None;
    let mut first_frame = 0;
    let total = opts.warmup.max(1) + opts.runs;
    let warmup = total - opts.runs;
    let mut seq = 0;
    for i in 0..total {
        let (kind, run, count) = if i < warmup {
            ("warm-up", i, warmup)
        } else {
            ("run", i - warmup, opts.runs)
        };
        // The API first: the first run's QEMU gives the by-hand recipe.
        let vm_name = format!("boot-{i:03}");
        let mut vm = None;
        let timed = api_run(plane, &vm_name, opts.timeout, &mut vm).await;
        let captured = match (&recipe, &vm) {
            (None, Some(v)) => plane
                .guest_pid(&v.id)
                .map(|pid| Recipe::of_pid(pid, &plane.data_dir.join("vms/images/rootfs.ext4"))),
            _ => None,
        };
        if let Some(v) = &vm {
            plane
                .delete_vm(v)
                .await
                .map_err(|e| BenchError::new(format!("deleting {vm_name}: {e}")))?;
        }
        let (r, in_first) =
            timed.map_err(|e| BenchError::new(format!("{kind} {} of {API}: {e}", run + 1)))?;
        if let Some(c) = captured {
            recipe = Some(c?);
        }
        if in_first && i >= warmup {
            first_frame += 1;
        }
        progress(&format!(
            "boot-api: {kind} {}/{count} {API:>8}: {:8.1} ms",
            run + 1,
            ms(r.total)
        ));
        let target = if i < warmup { &mut api.0 } else { &mut api.1 };
        target.push(r.sample(run, seq));
        seq += 1;
        tokio::time::sleep(SETTLE).await;

        let recipe = recipe
            .as_ref()
            .context("the agent's QEMU command line was not captured")?;
        let dir = tmp.join("by-hand").join(format!("{i:03}"));
        let r = hand_run(recipe, &dir, i, opts.timeout)
            .await
            .map_err(|e| BenchError::new(format!("{kind} {} of {BY_HAND}: {e}", run + 1)))?;
        let _ = std::fs::remove_dir_all(&dir);
        progress(&format!(
            "boot-api: {kind} {}/{count} {BY_HAND:>8}: {:8.1} ms",
            run + 1,
            ms(r.total)
        ));
        let target = if i < warmup { &mut hand.0 } else { &mut hand.1 };
        target.push(r.sample(run, seq));
        seq += 1;
        tokio::time::sleep(SETTLE).await;
    }
    let recipe = recipe.context("the agent's QEMU command line was not captured")?;
    Ok((api, hand, recipe, first_frame))
}

/// One API run; `vm` is set as soon as the VM exists, for the caller to delete. Also says
/// whether the marker came in the console's first message.
async fn api_run(
    plane: &Plane,
    name: &str,
    timeout: Duration,
    vm: &mut Option<ApiVm>,
) -> Result<(Run, bool)> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let created = vm.insert(plane.create_vm(name).await?).clone();
    let created_at = t0.elapsed();
    plane.boot_vm(&created).await?;
    let booted = t0.elapsed();
    let mut ws = loop {
        match plane.ws(name, "/console", "").await {
            Ok(ws) => break ws,
            Err(e) if Instant::now() >= deadline => return Err(e),
            Err(_) => tokio::time::sleep(CONSOLE_RETRY).await,
        }
    };
    let console = t0.elapsed();
    let mut scan = MarkerScan::new(READY_MARKER);
    let mut frames = 0;
    let ready = loop {
        let frame =
            tokio::time::timeout_at(deadline.into(), futures_util::StreamExt::next(&mut ws))
                .await
                .map_err(|_| {
                    BenchError::new(format!(
                        "no ready marker in time; the console showed:\n{}",
                        scan.tail()
                    ))
                })?;
        if let Some(text) = console_text(frame)? {
            let at = t0.elapsed();
            frames += 1;
            if scan.feed(text.as_bytes()) {
                break at;
            }
        }
    };
    let marks = vec![
        ("created", created_at),
        ("booted", booted),
        ("console", console),
        ("ready", ready),
    ];
    Ok((Run::new(ready, marks), frames == 1))
}

async fn hand_run(recipe: &Recipe, dir: &Path, i: usize, timeout: Duration) -> Result<Run> {
    let t0 = Instant::now();
    let deadline = t0 + timeout;
    let mut child = None;
    let launched = launch_by_hand(
        recipe,
        dir,
        &format!("vmfleet-bench-hand-{i:03}"),
        t0,
        deadline,
        &mut child,
    )
    .await;
    if let Some(mut c) = child {
        let _ = c.kill().await;
    }
    let mut g = launched?;
    let arrival = read_console(g.console, deadline).await;
    let _ = g.child.kill().await;
    let arrival = arrival?;
    let mut marks = vec![
        ("disk", g.disk),
        ("spawned", g.spawned),
        ("console", g.connected),
    ];
    marks.extend(arrival.marks(t0));
    Ok(Run::new(arrival.at.saturating_duration_since(t0), marks))
}
