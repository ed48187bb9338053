//! `vmfleet-bench`: runs a benchmark scenario, prints its Markdown report and writes its
//! results under `bench/results`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use vmfleet_bench::machine::Machine;
use vmfleet_bench::report::machine_markdown;
use vmfleet_bench::{BenchError, Context, Result, boot, fleet};

#[derive(Parser)]
#[command(
    name = "vmfleet-bench",
    about = "vmfleet's benchmarks, each against its floor in the same run"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Create-to-console-ready latency through the driver against the same QEMU command line
    /// launched by hand (TCG), interleaved run by run.
    Boot(BootArgs),
    /// N simulated agents heartbeating on /fleet against `vmfleet server` (release build) and
    /// against a minimal Node.js socket.io server with the same semantics, one after the other.
    Fleet(FleetArgs),
    /// `POST /vm/info` and `POST /vm/list` under load with wrk, token verification on; then
    /// many wallets with seed 002's rate limits on.
    Api(ApiArgs),
    /// Keystroke echo latency through the whole console path (WebSocket -> control plane ->
    /// agent -> guest serial -> back) against the guest's console socket directly.
    Console(ConsoleArgs),
    /// Create-to-console-ready through the REST and WebSocket API (`vmfleet up`) against the
    /// same QEMU command line launched by hand, interleaved run by run.
    BootApi(BootApiArgs),
    /// Many monitor connections with metrics every second on one running VM: what they cost
    /// the server, and whether each got its metrics every second.
    Fanout(FanoutArgs),
    /// Every scenario in one run (fleet for 1,000, 5,000 and 10,000 agents, api, boot,
    /// boot-api, console, fanout): `<date>-<host>.json` and the report with PNG plots.
    All(AllArgs),
}

#[derive(Args)]
struct ConsoleArgs {
    /// Measured keystrokes on each path.
    #[arg(long, default_value_t = 300)]
    keystrokes: usize,
    /// Unmeasured keystrokes on each path first.
    #[arg(long, default_value_t = 10)]
    warmup: usize,
    /// 30 keystrokes.
    #[arg(long, conflicts_with = "keystrokes")]
    quick: bool,
    /// The `vmfleet` binary [default: target/release/vmfleet of the workspace, built if
    /// missing].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the results go [default: bench/results of the source tree].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct BootApiArgs {
    /// Measured runs of each variant.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// 2 runs.
    #[arg(long, conflicts_with = "runs")]
    quick: bool,
    /// Unmeasured runs of each variant first (at least 1: it gives the by-hand command line).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The most one boot may take, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// The `vmfleet` binary [default: target/release/vmfleet of the workspace, built if
    /// missing].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the results go [default: bench/results of the source tree].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct FanoutArgs {
    /// Monitor connections.
    #[arg(long, default_value_t = 1000)]
    connections: usize,
    /// The measured window, in seconds.
    #[arg(long, default_value_t = 30)]
    duration_secs: u64,
    /// 50 connections, 5 s.
    #[arg(long, conflicts_with_all = ["connections", "duration_secs"])]
    quick: bool,
    /// The `vmfleet` binary [default: target/release/vmfleet of the workspace, built if
    /// missing].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the results go [default: bench/results of the source tree].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct AllArgs {
    /// Small, short runs (under 5 minutes) that keep the harness working; not for reporting.
    #[arg(long)]
    quick: bool,
    /// The `vmfleet` binary [default: target/release/vmfleet of the workspace, built if
    /// missing].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the results go [default: bench/results of the source tree; with --quick a
    /// fresh temporary directory, kept].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure nothing: write the report and the plots again from this JSON file of an
    /// earlier run.
    #[arg(long, conflicts_with = "quick")]
    rewrite: Option<PathBuf>,
}

#[derive(Args)]
struct ApiArgs {
    /// Seconds per wrk run.
    #[arg(long, default_value_t = 20)]
    duration_secs: u64,
    /// wrk's connections (each sends its next request when the last is answered).
    #[arg(long, default_value_t = 16)]
    connections: u32,
    /// wrk's threads.
    #[arg(long, default_value_t = 2)]
    threads: u32,
    /// Wallets signed in for the rate-limited run.
    #[arg(long, default_value_t = 1000)]
    users: usize,
    /// VMs of each wallet.
    #[arg(long, default_value_t = 5)]
    vms_per_user: usize,
    /// The fixed request rates (requests a second) of the open-loop runs.
    #[arg(long, value_delimiter = ',', default_value = "1000,2500,5000")]
    rates: Vec<f64>,
    /// Seconds of each fixed-rate run.
    #[arg(long, default_value_t = 10)]
    rate_secs: u64,
    /// 5 s runs, 100 wallets, one fixed rate (500/s) for 2 s.
    #[arg(long, conflicts_with_all = ["duration_secs", "users", "rates"])]
    quick: bool,
    /// The `vmfleet` binary [default: target/release/vmfleet of the workspace, built if
    /// missing].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// Where the results go [default: bench/results of the source tree].
    #[arg(long)]
    out: Option<PathBuf>,
}

#[derive(Args)]
struct FleetArgs {
    /// Simulated agents (connections) per server.
    #[arg(long, default_value_t = 10_000)]
    agents: usize,
    /// Each agent's heartbeat period, in seconds.
    #[arg(long, default_value_t = 5)]
    period_secs: u64,
    /// The measured window, once all agents are connected, in seconds.
    #[arg(long, default_value_t = 60)]
    duration_secs: u64,
    /// Wait after the last agent connected before measuring [default: one period].
    #[arg(long)]
    settle_secs: Option<u64>,
    /// Handshakes in flight at once while the agents connect.
    #[arg(long, default_value_t = 64)]
    ramp: usize,
    /// A heartbeat not acknowledged within this many seconds is missed.
    #[arg(long, default_value_t = 10)]
    ack_timeout_secs: u64,
    /// 500 agents, 20 s window.
    #[arg(long, conflicts_with_all = ["agents", "duration_secs"])]
    quick: bool,
    /// The `vmfleet` binary [default: target/release/vmfleet of the workspace, built if
    /// missing].
    #[arg(long)]
    server_bin: Option<PathBuf>,
    /// The servers measured, in this order (`vmfleet`, `node`).
    #[arg(long, value_delimiter = ',', default_value = "vmfleet,node", value_parser = ["vmfleet", "node"])]
    servers: Vec<String>,
    /// Where the results go [default: bench/results of the source tree].
    #[arg(long)]
    out: Option<PathBuf>,
    /// Measure nothing: rewrite the report and the plot from this JSON file of an earlier run.
    #[arg(long)]
    rewrite: Option<PathBuf>,
}

#[derive(Args)]
struct BootArgs {
    /// Measured runs of each variant.
    #[arg(long, default_value_t = 10)]
    runs: usize,
    /// 3 runs, for a quick look.
    #[arg(long, conflicts_with = "runs")]
    quick: bool,
    /// Unmeasured runs of each variant first (cold caches).
    #[arg(long, default_value_t = 1)]
    warmup: usize,
    /// The most one boot may take, in seconds.
    #[arg(long, default_value_t = 120)]
    timeout: u64,
    /// Where the results go [default: bench/results of the source tree].
    #[arg(long)]
    out: Option<PathBuf>,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("vmfleet-bench: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(cli)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmfleet-bench: {e}");
            ExitCode::FAILURE
        }
    }
}

async fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::Fleet(args) => {
            let out = args.out.clone().unwrap_or_else(default_out);
            if let Some(path) = &args.rewrite {
                let text =
                    std::fs::read_to_string(path).context(format!("reading {}", path.display()))?;
                let result: fleet::FleetResult =
                    serde_json::from_str(&text).context(format!("decoding {}", path.display()))?;
                let (json, svg, md) = result.write(&out)?;
                eprintln!(
                    "wrote {}, {} and {}",
                    json.display(),
                    svg.display(),
                    md.display()
                );
                return Ok(());
            }
            let period = Duration::from_secs(args.period_secs);
            let opts = fleet::FleetOptions {
                agents: if args.quick { 500 } else { args.agents },
                period,
                duration: Duration::from_secs(if args.quick { 20 } else { args.duration_secs }),
                settle: args.settle_secs.map_or(period, Duration::from_secs),
                ramp: args.ramp,
                ack_timeout: Duration::from_secs(args.ack_timeout_secs),
                server_bin: args.server_bin,
                targets: args
                    .servers
                    .iter()
                    .map(|s| {
                        if s == "vmfleet" {
                            fleet::Target::Vmfleet
                        } else {
                            fleet::Target::Node
                        }
                    })
                    .collect(),
                ..fleet::FleetOptions::default()
            };
            let progress = |line: &str| eprintln!("{line}");
            // Interrupted, the scenario's future is dropped: the servers it started are
            // killed and its files removed.
            let result = tokio::select! {
                r = fleet::run(opts, progress) => r?,
                e = interrupted() => return Err(e),
            };
            let (json, svg, md) = result.write(&out)?;
            println!("{}", machine_markdown(&result.machine));
            println!(
                "{}",
                result.markdown(
                    &svg.file_name()
                        .map(|n| n.to_string_lossy().into_owned())
                        .unwrap_or_default()
                )
            );
            eprintln!(
                "wrote {}, {} and {}",
                json.display(),
                svg.display(),
                md.display()
            );
            Ok(())
        }
        Command::Api(args) => {
            let opts = vmfleet_bench::api::ApiOptions {
                duration: Duration::from_secs(if args.quick { 5 } else { args.duration_secs }),
                connections: args.connections,
                threads: args.threads,
                users: if args.quick { 100 } else { args.users },
                vms_per_user: args.vms_per_user,
                server_bin: args.server_bin,
                rates: if args.quick {
                    vec![500.0]
                } else {
                    args.rates.clone()
                },
                rate_duration: Duration::from_secs(if args.quick { 2 } else { args.rate_secs }),
            };
            let out = args.out.unwrap_or_else(default_out);
            run_one(&out, vmfleet_bench::api::run(opts, progress)).await
        }
        Command::Console(args) => {
            let opts = vmfleet_bench::console::ConsoleOptions {
                keystrokes: if args.quick { 30 } else { args.keystrokes },
                warmup: args.warmup,
                server_bin: args.server_bin,
                ..Default::default()
            };
            let out = args.out.unwrap_or_else(default_out);
            run_one(&out, vmfleet_bench::console::run(opts, progress)).await
        }
        Command::BootApi(args) => {
            let opts = vmfleet_bench::boot_api::BootApiOptions {
                runs: if args.quick { 2 } else { args.runs },
                warmup: args.warmup,
                timeout: Duration::from_secs(args.timeout),
                server_bin: args.server_bin,
            };
            let out = args.out.unwrap_or_else(default_out);
            run_one(&out, vmfleet_bench::boot_api::run(opts, progress)).await
        }
        Command::Fanout(args) => {
            let opts = vmfleet_bench::fanout::FanoutOptions {
                connections: if args.quick { 50 } else { args.connections },
                duration: Duration::from_secs(if args.quick { 5 } else { args.duration_secs }),
                server_bin: args.server_bin,
                ..Default::default()
            };
            let out = args.out.unwrap_or_else(default_out);
            run_one(&out, vmfleet_bench::fanout::run(opts, progress)).await
        }
        Command::All(args) => {
            if let Some(path) = &args.rewrite {
                let text =
                    std::fs::read_to_string(path).context(format!("reading {}", path.display()))?;
                let result: vmfleet_bench::all::AllResult =
                    serde_json::from_str(&text).context(format!("decoding {}", path.display()))?;
                let out = args.out.clone().unwrap_or_else(default_out);
                let (json, md) = result.write(&out)?;
                eprintln!(
                    "wrote {}, {} and the plots beside them",
                    json.display(),
                    md.display()
                );
                return Ok(());
            }
            let out = match args.out {
                Some(o) => o,
                None if args.quick => tempfile::Builder::new()
                    .prefix("vmfleet-bench-quick-")
                    .tempdir()
                    .context("creating a temporary directory")?
                    .keep(),
                None => default_out(),
            };
            let opts = vmfleet_bench::all::AllOptions::new(args.quick, args.server_bin);
            let progress = |line: &str| eprintln!("{line}");
            let result = tokio::select! {
                r = vmfleet_bench::all::run(opts, progress) => r?,
                e = interrupted() => return Err(e),
            };
            let (json, md) = result.write(&out)?;
            println!("{}", machine_markdown(&result.machine));
            println!("{}", result.summary_markdown(&[]));
            eprintln!(
                "wrote {}, {} and the plots beside them",
                json.display(),
                md.display()
            );
            if result.failures.is_empty() {
                Ok(())
            } else {
                Err(BenchError::new(format!(
                    "{} scenario(s) did not finish: {}",
                    result.failures.len(),
                    result.failures.join("; ")
                )))
            }
        }
        Command::Boot(args) => {
            let opts = boot::BootOptions {
                runs: if args.quick { 3 } else { args.runs },
                warmup: args.warmup,
                timeout: Duration::from_secs(args.timeout),
                ..boot::BootOptions::default()
            };
            let out = args.out.unwrap_or_else(default_out);
            run_one(&out, boot::run(opts, progress)).await
        }
    }
}

/// Prints each scenario's progress on stderr.
fn progress(line: &str) {
    eprintln!("{line}");
}

/// A scenario's result: its JSON and the day's report, written; the report, printed.
trait Written {
    fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)>;
    fn markdown(&self) -> String;
    fn machine(&self) -> &Machine;
}

macro_rules! written {
    ($($t:ty),*) => {$(
        impl Written for $t {
            fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
                <$t>::write(self, out)
            }
            fn markdown(&self) -> String {
                <$t>::markdown(self)
            }
            fn machine(&self) -> &Machine {
                &self.machine
            }
        }
    )*};
}

written!(
    vmfleet_bench::api::ApiResult,
    vmfleet_bench::fanout::FanoutResult,
    vmfleet_bench::report::ScenarioResult
);

/// Runs one scenario to its end, then writes and prints its report. Interrupted (Ctrl-C,
/// SIGTERM), the scenario's future is dropped: its clean-up kills every process it started
/// and removes its files.
async fn run_one<R: Written>(
    out: &Path,
    scenario: impl std::future::Future<Output = Result<R>>,
) -> Result<()> {
    let result = tokio::select! {
        r = scenario => r?,
        e = interrupted() => return Err(e),
    };
    let (json, md) = result.write(out)?;
    println!("{}", machine_markdown(result.machine()));
    println!("{}", result.markdown());
    eprintln!("wrote {} and {}", json.display(), md.display());
    Ok(())
}

/// `bench/results` of the source tree this binary was built from.
fn default_out() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("results")
}

/// Resolves on Ctrl-C or SIGTERM.
async fn interrupted() -> BenchError {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        r = tokio::signal::ctrl_c() => match r.context("listening for Ctrl-C") {
            Ok(()) => BenchError::new("interrupted"),
            Err(e) => e,
        },
        () = term => BenchError::new("terminated"),
    }
}
