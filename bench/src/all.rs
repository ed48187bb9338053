//! `vmfleet-bench all`: every scenario in one run on this machine, one after the other (each
//! bounded in time, each cleaning up what it started), gathered into
//! `<out>/<date>-<host>.json` and the report `<out>/<date>-<host>.md` with PNG plots (and their
//! SVG sources) beside it. A scenario that fails is recorded with its error and the others
//! still run; the command then exits non-zero.

use std::fmt::Write as _;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use vmfleet_core::Timestamp;

use crate::api::{ApiOptions, ApiResult};
use crate::boot::BootOptions;
use crate::boot_api::BootApiOptions;
use crate::console::ConsoleOptions;
use crate::fanout::{FanoutOptions, FanoutResult};
use crate::fleet::{FleetOptions, FleetResult, git_commit};
use crate::machine::Machine;
use crate::report::{
    Figure, ScenarioResult, figures_markdown, machine_markdown, upsert_section, with_title,
    write_atomic,
};
use crate::{BenchError, Context, Result, plot, raster};

pub const SCHEMA: &str = "vmfleet-bench/all/v1";

#[derive(Debug, Clone)]
pub struct AllOptions {
    /// Small, short runs that keep the harness working (CI); their figures are not reported.
    pub quick: bool,
    pub server_bin: Option<PathBuf>,
    /// Agents of each `fleet` run.
    pub fleet_agents: Vec<usize>,
}

impl AllOptions {
    pub fn new(quick: bool, server_bin: Option<PathBuf>) -> Self {
        AllOptions {
            quick,
            server_bin,
            fleet_agents: if quick {
                vec![300]
            } else {
                vec![1000, 5000, 10_000]
            },
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct AllResult {
    pub schema: String,
    pub quick: bool,
    pub date: String,
    pub started_at: String,
    pub finished_at: String,
    pub source_commit: String,
    pub machine: Machine,
    /// Every scenario's headline figures, each next to its peer or floor.
    pub figures: Vec<Figure>,
    /// `scenario: error` of each scenario that did not finish.
    pub failures: Vec<String>,
    /// Seconds each scenario took.
    pub durations_s: Vec<(String, f64)>,
    pub fleet: Vec<FleetResult>,
    pub api: Option<ApiResult>,
    pub boot: Option<ScenarioResult>,
    pub boot_api: Option<ScenarioResult>,
    pub console: Option<ScenarioResult>,
    pub fanout: Option<FanoutResult>,
}

/// Runs `f` within `limit`; its result, or the failure recorded.
async fn bounded<T>(
    name: &str,
    limit: Duration,
    failures: &mut Vec<String>,
    durations: &mut Vec<(String, f64)>,
    progress: &impl Fn(&str),
    f: impl Future<Output = Result<T>>,
) -> Option<T> {
    progress(&format!("== {name} (at most {} s)", limit.as_secs()));
    let t = std::time::Instant::now();
    let r = tokio::time::timeout(limit, f).await;
    durations.push((
        name.to_owned(),
        (t.elapsed().as_secs_f64() * 10.0).round() / 10.0,
    ));
    match r {
        Ok(Ok(v)) => Some(v),
        Ok(Err(e)) => {
            progress(&format!("{name} failed: {e}"));
            failures.push(format!("{name}: {e}"));
            None
        }
        Err(_) => {
            progress(&format!(
                "{name} took longer than {} s: stopped",
                limit.as_secs()
            ));
            failures.push(format!(
                "{name}: stopped after {} s (its processes were killed)",
                limit.as_secs()
            ));
            None
        }
    }
}

/// Runs every scenario; `progress` hears what happens.
pub async fn run(opts: AllOptions, progress: impl Fn(&str)) -> Result<AllResult> {
    let started = Timestamp::now();
    let mut machine = Machine::read("tcg", Path::new("qemu-system-x86_64"));
    let q = opts.quick;
    let (mut failures, mut durations) = (Vec::new(), Vec::new());
    let bin = opts.server_bin.clone();
    // Build the release binary (if missing) once, before anything is timed.
    crate::fleet::server_binary(bin.clone(), &progress).await?;
    // And the Node.js peer's modules (npm ci on first use), untimed too.
    crate::fleet::node_modules(&FleetOptions::default().node_dir, &progress).await?;

    let mut fleet = Vec::new();
    for &agents in &opts.fleet_agents {
        let f = FleetOptions {
            agents,
            duration: Duration::from_secs(if q { 10 } else { 60 }),
            server_bin: bin.clone(),
            ..FleetOptions::default()
        };
        let limit = Duration::from_secs(if q { 150 } else { 240 + agents as u64 / 20 });
        let name = format!("fleet N={agents}");
        if let Some(r) = bounded(
            &name,
            limit,
            &mut failures,
            &mut durations,
            &progress,
            crate::fleet::run(f, &progress),
        )
        .await
        {
            fleet.push(r);
        }
    }
    let api = bounded(
        "api",
        Duration::from_secs(if q { 120 } else { 300 }),
        &mut failures,
        &mut durations,
        &progress,
        crate::api::run(
            ApiOptions {
                duration: Duration::from_secs(if q { 3 } else { 20 }),
                connections: 16,
                threads: 2,
                users: if q { 50 } else { 1000 },
                vms_per_user: 5,
                server_bin: bin.clone(),
                rates: if q {
                    vec![500.0]
                } else {
                    vec![1000.0, 2500.0, 5000.0]
                },
                rate_duration: Duration::from_secs(if q { 2 } else { 10 }),
            },
            &progress,
        ),
    )
    .await;
    let boot = bounded(
        "boot",
        Duration::from_secs(if q { 120 } else { 360 }),
        &mut failures,
        &mut durations,
        &progress,
        crate::boot::run(
            BootOptions {
                runs: if q { 2 } else { 10 },
                warmup: if q { 0 } else { 1 },
                ..BootOptions::default()
            },
            &progress,
        ),
    )
    .await;
    let boot_api = bounded(
        "boot-api",
        Duration::from_secs(if q { 150 } else { 420 }),
        &mut failures,
        &mut durations,
        &progress,
        crate::boot_api::run(
            BootApiOptions {
                runs: if q { 2 } else { 10 },
                warmup: 1,
                server_bin: bin.clone(),
                ..BootApiOptions::default()
            },
            &progress,
        ),
    )
    .await;
    let console = bounded(
        "console",
        Duration::from_secs(if q { 120 } else { 300 }),
        &mut failures,
        &mut durations,
        &progress,
        crate::console::run(
            ConsoleOptions {
                keystrokes: if q { 30 } else { 300 },
                warmup: if q { 3 } else { 10 },
                server_bin: bin.clone(),
                ..ConsoleOptions::default()
            },
            &progress,
        ),
    )
    .await;
    let fanout = bounded(
        "fanout",
        Duration::from_secs(if q { 120 } else { 300 }),
        &mut failures,
        &mut durations,
        &progress,
        crate::fanout::run(
            FanoutOptions {
                connections: if q { 50 } else { 1000 },
                duration: Duration::from_secs(if q { 5 } else { 30 }),
                idle: Duration::from_secs(if q { 3 } else { 10 }),
                server_bin: bin.clone(),
                ..FanoutOptions::default()
            },
            &progress,
        ),
    )
    .await;

    machine.finish();
    if let Some(c) = console.as_ref().or(boot_api.as_ref()) {
        machine.accel = format!(
            "{} (vmfleet up's guests, Accel::Auto); tcg (scenario boot)",
            c.machine.accel
        );
    }
    let mut figures: Vec<Figure> = fleet.iter().flat_map(FleetResult::figures).collect();
    figures.extend(api.iter().flat_map(ApiResult::figures));
    for r in [&boot, &boot_api, &console].into_iter().flatten() {
        figures.extend(r.figures.iter().cloned());
    }
    figures.extend(fanout.iter().flat_map(|f| f.figures.iter().cloned()));
    Ok(AllResult {
        schema: SCHEMA.into(),
        quick: q,
        date: started.as_str().get(..10).unwrap_or("unknown").to_owned(),
        started_at: started.as_str().to_owned(),
        finished_at: Timestamp::now().as_str().to_owned(),
        source_commit: git_commit().await,
        machine,
        figures,
        failures,
        durations_s: durations,
        fleet,
        api,
        boot,
        boot_api,
        console,
        fanout,
    })
}

impl AllResult {
    /// `<date>-<host>`.
    pub fn stem(&self) -> String {
        format!("{}-{}", self.date, self.machine.file_host())
    }

    /// The plots: (file stem, SVG).
    fn plots(&self) -> Vec<(String, String)> {
        let stem = self.stem();
        let mut out = vec![(
            format!("{stem}-ratios"),
            plot::ratios_svg(
                &format!("vmfleet against its peers and floors, {}", self.date),
                &self.figures,
            ),
        )];
        for f in &self.fleet {
            out.push((
                format!("{stem}-fleet-{}", f.config["agents"]),
                plot::fleet_svg(f),
            ));
        }
        for r in [&self.console, &self.boot_api, &self.boot]
            .into_iter()
            .flatten()
        {
            out.push((
                format!("{stem}-{}", r.scenario),
                plot::quantiles_svg(r, "ms"),
            ));
        }
        out
    }

    /// The summary section: figures, plots, failures, how long each scenario took.
    pub fn summary_markdown(&self, pngs: &[String]) -> String {
        let mut md = String::new();
        let _ = writeln!(
            md,
            "## All scenarios, one run{}\n",
            if self.quick {
                " (quick: not for reporting)"
            } else {
                ""
            }
        );
        let _ = writeln!(
            md,
            "`vmfleet-bench all{}`, {} to {}, commit {}. Every figure is vmfleet's next to its \
             peer or floor measured in the same run; the ratio is vmfleet / peer (under 1: \
             vmfleet's value is the smaller). Each scenario's own section below has the \
             details.\n",
            if self.quick { " --quick" } else { "" },
            self.started_at,
            self.finished_at,
            self.source_commit
        );
        md.push_str(&figures_markdown(&self.figures));
        md.push('\n');
        for p in pngs {
            let _ = writeln!(md, "![{p}]({p})\n");
        }
        if !self.failures.is_empty() {
            md.push_str("Scenarios that did not finish:\n\n");
            for f in &self.failures {
                let _ = writeln!(md, "- {}", f.lines().next().unwrap_or(f));
            }
            md.push('\n');
        }
        let times: Vec<String> = self
            .durations_s
            .iter()
            .map(|(n, s)| format!("{n} {s:.0} s"))
            .collect();
        let _ = writeln!(md, "Time per scenario: {}.", times.join(", "));
        md
    }

    /// Writes `<stem>.json`, the plots (`.svg` and `.png`) and `<stem>.md` under `out`;
    /// returns the JSON's and the report's paths.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
        std::fs::create_dir_all(out).context(format!("creating {}", out.display()))?;
        let stem = self.stem();
        let json_path = out.join(format!("{stem}.json"));
        let mut json = serde_json::to_string_pretty(self).context("encoding the results")?;
        json.push('\n');
        write_atomic(&json_path, &json)?;
        let mut pngs = Vec::new();
        for (name, svg) in self.plots() {
            write_atomic(&out.join(format!("{name}.svg")), &svg)?;
            let png = raster::svg_to_png(&svg, 1.5)
                .map_err(|e| BenchError::new(format!("the plot {name}: {e}")))?;
            let path = out.join(format!("{name}.png"));
            std::fs::write(&path, png).context(format!("writing {}", path.display()))?;
            pngs.push(format!("{name}.png"));
        }
        let md_path = out.join(format!("{stem}.md"));
        let doc = std::fs::read_to_string(&md_path).unwrap_or_default();
        let doc = upsert_section(&doc, "machine", &machine_markdown(&self.machine));
        let mut doc = upsert_section(&doc, "all", &self.summary_markdown(&pngs));
        for f in &self.fleet {
            let svg = format!("{stem}-fleet-{}.png", f.config["agents"]);
            doc = upsert_section(
                &doc,
                &format!("scenario fleet N={}", f.config["agents"]),
                &f.markdown(&svg),
            );
        }
        if let Some(a) = &self.api {
            doc = upsert_section(&doc, "scenario api", &a.markdown());
        }
        for r in [&self.boot, &self.boot_api, &self.console]
            .into_iter()
            .flatten()
        {
            doc = upsert_section(&doc, &format!("scenario {}", r.scenario), &r.markdown());
        }
        if let Some(f) = &self.fanout {
            doc = upsert_section(&doc, "scenario fanout", &f.markdown());
        }
        let doc = with_title(&doc, &format!("# vmfleet benchmarks: {stem}"));
        write_atomic(&md_path, &doc)?;
        Ok((json_path, md_path))
    }
}
