//! Scenario `api`: `POST /vm/info` and `POST /vm/list` under load, token verification on,
//! measured with `wrk` against the real `vmfleet server` (release build) on loopback.
//!
//! Three runs, one server each:
//! - `info`: one wallet's `/vm/info` on its VMs, rate limits raised out of the way;
//! - `list`: the same wallet's `/vm/list` (its VMs, not the others'), limits raised;
//! - `limited`: `/vm/info` from many wallets with seed 002's limits on (100 a minute each):
//!   most requests are answered 429 once a wallet's allowance is spent, which shows what the
//!   limiter costs per request.
//!
//! The wallets sign in for real (`/auth/nonce`, an EIP-4361 message signed like
//! `personal_sign`, `/auth/login`); their VMs are written to the database before the server
//! starts. The target (issue 6): p99 under 5 ms at 5,000 requests a second on 2 cores. `wrk`
//! drives as fast as the server answers; a run that reaches 5,000 a second with its p99 under
//! 5 ms meets it.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::json;
use vmfleet_auth::siwe::testing::TestWallet;
use vmfleet_core::{Timestamp, VmId, WalletAddress};
use vmfleet_store::{NewVm, Resources, Store, WorkloadKind};

use crate::fleet::{Server, git_commit, server_binary};
use crate::machine::Machine;
use crate::rate::{self, RateRun};
use crate::report::{Figure, figures_markdown, write_scenario};
use crate::{BenchError, Context, Result};

pub const SCENARIO: &str = "api";
pub const TARGET_P99_MS: f64 = 5.0;
pub const TARGET_RPS: f64 = 5000.0;
/// The floor's run: `GET /health` on the same server.
pub const HEALTH: &str = "health";

#[derive(Debug, Clone)]
pub struct ApiOptions {
    pub duration: Duration,
    pub connections: u32,
    pub threads: u32,
    /// Wallets of the `limited` run.
    pub users: usize,
    pub vms_per_user: usize,
    pub server_bin: Option<PathBuf>,
    /// Fixed request rates (requests a second) of the open-loop runs, and each run's length.
    pub rates: Vec<f64>,
    pub rate_duration: Duration,
}

/// One `wrk` run.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct WrkRun {
    pub name: String,
    pub description: String,
    pub requests_per_s: f64,
    pub requests: u64,
    pub non_2xx: u64,
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub wrk_command: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ApiResult {
    pub schema: String,
    pub date: String,
    pub source_commit: String,
    pub machine: Machine,
    pub duration_s: f64,
    pub connections: u32,
    pub threads: u32,
    pub runs: Vec<WrkRun>,
    /// Open-loop runs at fixed rates: `info`, `list` and `health` at each rate.
    #[serde(default)]
    pub fixed: Vec<RateRun>,
}

/// A wallet signed in to the server: its address and JWT.
struct Signed {
    address: WalletAddress,
    token: String,
}

fn wallet(i: usize) -> Result<TestWallet> {
    let mut secret = [0x11u8; 32];
    secret[24..].copy_from_slice(&(i as u64 + 1).to_be_bytes());
    TestWallet::from_secret(secret).context("a test wallet")
}

/// Writes `users` wallets and their VMs into the database at `db`.
async fn seed_database(db: &Path, users: usize, vms_per_user: usize) -> Result<Vec<Vec<VmId>>> {
    let url = vmfleet_store::sqlite_url(db).map_err(|e| BenchError::new(e.to_string()))?;
    let store = Store::open(&url)
        .await
        .map_err(|e| BenchError::new(e.to_string()))?;
    let mut all = Vec::with_capacity(users);
    for u in 0..users {
        let owner = wallet(u)?.address();
        store
            .upsert_user(&owner, vmfleet_auth::Role::Standard)
            .await
            .map_err(|e| BenchError::new(e.to_string()))?;
        let mut ids = Vec::with_capacity(vms_per_user);
        for v in 0..vms_per_user {
            let id = VmId::generate();
            store
                .insert_vm(&NewVm {
                    id: id.clone(),
                    kind: WorkloadKind::Vm,
                    owner,
                    name: format!("vm-{v}").parse().context("a VM name")?,
                    spec: json!({}),
                    resources: Resources {
                        vcpus: 1,
                        memory_mib: 256,
                        disk_gib: 1,
                        gpus: 0,
                    },
                })
                .await
                .map_err(|e| BenchError::new(e.to_string()))?;
            ids.push(id);
        }
        all.push(ids);
    }
    store.close().await;
    Ok(all)
}

/// Signs wallets `0..n` in through the server's own sign-in.
async fn sign_in(base: &str, domain: &str, n: usize) -> Result<Vec<Signed>> {
    let http = reqwest::Client::new();
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let w = wallet(i)?;
        let token = crate::plane::sign_in(&http, base, domain, &w).await?;
        out.push(Signed {
            address: w.address(),
            token,
        });
    }
    Ok(out)
}

/// A wrk Lua script that sends `bodies[i]` with `tokens[i]`, round robin.
fn lua_script(requests: &[(String, String)]) -> String {
    let mut s = String::from("local reqs = {\n");
    for (token, body) in requests {
        let _ = writeln!(
            s,
            "  wrk.format(\"POST\", nil, {{[\"Content-Type\"] = \"application/json\", [\"Authorization\"] = \"Bearer {token}\"}}, '{body}'),"
        );
    }
    s.push_str(
        "}\nlocal i = 0\nrequest = function()\n  i = i % #reqs + 1\n  return reqs[i]\nend\n",
    );
    s
}

/// Runs wrk and reads its summary.
async fn wrk(
    name: &str,
    description: &str,
    url: &str,
    script: &Path,
    opts: &ApiOptions,
) -> Result<WrkRun> {
    let args = vec![
        format!("-t{}", opts.threads),
        format!("-c{}", opts.connections),
        format!("-d{}s", opts.duration.as_secs()),
        "--latency".to_owned(),
        "-s".to_owned(),
        script.display().to_string(),
        url.to_owned(),
    ];
    let out = tokio::process::Command::new("wrk")
        .args(&args)
        .output()
        .await
        .context("running wrk (apt install wrk)")?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() {
        return Err(BenchError::new(format!(
            "wrk failed: {}{}",
            text,
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    parse_wrk(name, description, &text, &format!("wrk {}", args.join(" ")))
}

/// `2.50ms`, `812.00us`, `1.20s` -> milliseconds.
fn wrk_ms(v: &str) -> Option<f64> {
    let (num, unit) = v.split_at(v.find(|c: char| c.is_ascii_alphabetic())?);
    let n: f64 = num.parse().ok()?;
    match unit {
        "us" => Some(n / 1000.0),
        "ms" => Some(n),
        "s" => Some(n * 1000.0),
        "m" => Some(n * 60_000.0),
        _ => None,
    }
}

pub fn parse_wrk(name: &str, description: &str, text: &str, command: &str) -> Result<WrkRun> {
    let mut run = WrkRun {
        name: name.to_owned(),
        description: description.to_owned(),
        requests_per_s: 0.0,
        requests: 0,
        non_2xx: 0,
        p50_ms: f64::NAN,
        p90_ms: f64::NAN,
        p99_ms: f64::NAN,
        wrk_command: command.to_owned(),
    };
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["50%", v] => run.p50_ms = wrk_ms(v).unwrap_or(f64::NAN),
            ["90%", v] => run.p90_ms = wrk_ms(v).unwrap_or(f64::NAN),
            ["99%", v] => run.p99_ms = wrk_ms(v).unwrap_or(f64::NAN),
            ["Requests/sec:", v] => run.requests_per_s = v.parse().unwrap_or(0.0),
            ["Non-2xx", "or", "3xx", "responses:", v] => run.non_2xx = v.parse().unwrap_or(0),
            [n, "requests", "in", ..] => run.requests = n.parse().unwrap_or(0),
            _ => {}
        }
    }
    if run.p99_ms.is_nan() || run.requests == 0 {
        return Err(BenchError::new(format!(
            "cannot read wrk's output:\n{text}"
        )));
    }
    Ok(run)
}

/// Starts a server over `data`, runs `f`, stops it.
async fn with_server(bin: &Path, data: &Path, limits: &[&str], log: &Path) -> Result<Server> {
    let mut command = vec![
        bin.display().to_string(),
        "server".to_owned(),
        "--data-dir".to_owned(),
        data.display().to_string(),
        "--listen".to_owned(),
        "127.0.0.1:0".to_owned(),
        // The sign-ins of the many wallets come from one address.
        "--rate-limit-anonymous".to_owned(),
        "0".to_owned(),
    ];
    command.extend(limits.iter().map(|s| (*s).to_owned()));
    Server::start(&command, log).await
}

pub async fn run(opts: ApiOptions, progress: impl Fn(&str)) -> Result<ApiResult> {
    let mut machine = Machine::read("none (no guests)", Path::new("qemu-system-x86_64"));
    let (bin, _) = server_binary(opts.server_bin.clone(), &progress).await?;
    let dir = tempfile::tempdir().context("a temporary directory")?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).context("the data dir")?;
    let users = opts.users.max(1);
    let vms = seed_database(&data.join("vmfleet.db"), users, opts.vms_per_user.max(1)).await?;
    progress(&format!(
        "api: {users} wallets with {} VMs each written",
        opts.vms_per_user
    ));
    let log = dir.path().join("server.log");
    let mut runs = Vec::new();

    // Runs 1 and 2: one wallet, limits out of the way.
    let unlimited = ["--rate-limit-standard", "0", "--rate-limit-privileged", "0"];
    let server = with_server(&bin, &data, &unlimited, &log).await?;
    let base = format!("http://{}", server.addr);
    let one = sign_in(&base, &server.addr.to_string(), 1).await?;
    let me = &one[0];
    let info: Vec<(String, String)> = vms[0]
        .iter()
        .map(|id| {
            (
                me.token.clone(),
                json!({"build_id": id, "owner": me.address}).to_string(),
            )
        })
        .collect();
    let script = dir.path().join("info.lua");
    std::fs::write(&script, lua_script(&info)).context("the wrk script")?;
    progress("api: wrk on /vm/info");
    runs.push(
        wrk(
            "info",
            "POST /vm/info, one wallet, its VMs in turn, limits raised",
            &format!("{base}/vm/info"),
            &script,
            &opts,
        )
        .await?,
    );
    let list = vec![(me.token.clone(), "{}".to_owned())];
    let script = dir.path().join("list.lua");
    std::fs::write(&script, lua_script(&list)).context("the wrk script")?;
    progress("api: wrk on /vm/list");
    runs.push(
        wrk(
            "list",
            &format!(
                "POST /vm/list, one wallet ({} VMs of {} in the database), limits raised",
                opts.vms_per_user,
                users * opts.vms_per_user
            ),
            &format!("{base}/vm/list"),
            &script,
            &opts,
        )
        .await?,
    );
    // The floor: the same server's `GET /health`, no token, no database.
    let script = dir.path().join("health.lua");
    std::fs::write(&script, "wrk.method = \"GET\"\n").context("the wrk script")?;
    progress("api: wrk on /health (the floor)");
    runs.push(
        wrk(
            HEALTH,
            "GET /health on the same server: no token, no database (the HTTP stack's floor)",
            &format!("{base}/health"),
            &script,
            &opts,
        )
        .await?,
    );
    // Fixed rates, open loop: each path at each rate, the floor beside it.
    let mut fixed = Vec::new();
    for &rate in &opts.rates {
        for (name, method, path, body, token) in [
            (
                "info",
                reqwest::Method::POST,
                "/vm/info",
                Some(info[0].1.clone()),
                true,
            ),
            (
                "list",
                reqwest::Method::POST,
                "/vm/list",
                Some("{}".to_owned()),
                true,
            ),
            (HEALTH, reqwest::Method::GET, "/health", None, false),
        ] {
            progress(&format!("api: {path} at {rate} requests/s"));
            let req = rate::Request {
                method,
                url: format!("{base}{path}"),
                token: token.then(|| me.token.clone()),
                body,
            };
            fixed.push(
                rate::run(
                    name,
                    &format!("{path} at a fixed {rate} requests/s"),
                    req,
                    rate,
                    opts.rate_duration,
                )
                .await?,
            );
        }
    }
    server.stop().await;

    // Run 3: many wallets, seed 002's limits on.
    let server = with_server(&bin, &data, &[], &log).await?;
    let base = format!("http://{}", server.addr);
    progress(&format!("api: signing in {users} wallets"));
    let many = sign_in(&base, &server.addr.to_string(), users).await?;
    let reqs: Vec<(String, String)> = many
        .iter()
        .zip(&vms)
        .map(|(w, ids)| {
            (
                w.token.clone(),
                json!({"build_id": ids[0], "owner": w.address}).to_string(),
            )
        })
        .collect();
    let script = dir.path().join("limited.lua");
    std::fs::write(&script, lua_script(&reqs)).context("the wrk script")?;
    progress("api: wrk on /vm/info with the limits on");
    runs.push(
        wrk(
            "limited",
            &format!(
                "POST /vm/info from {users} wallets in turn, seed 002's limits on (100 a minute each): the non-2xx are 429s"
            ),
            &format!("{base}/vm/info"),
            &script,
            &opts,
        )
        .await?,
    );
    server.stop().await;
    machine.finish();

    Ok(ApiResult {
        schema: "vmfleet-bench/api/v1".into(),
        date: Timestamp::now().as_str()[..10].to_owned(),
        source_commit: git_commit().await,
        machine,
        duration_s: opts.duration.as_secs_f64(),
        connections: opts.connections,
        threads: opts.threads,
        runs,
        fixed,
    })
}

impl ApiResult {
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "## Scenario `api`: /vm/info and /vm/list under load\n\n\
             wrk, {} threads, {} connections, {} s per run, against `vmfleet server` (release) on \
             loopback; token verification on. Commit {}.\n",
            self.threads, self.connections, self.duration_s, self.source_commit
        );
        s.push_str(
            "| run | requests/s | p50 / p90 / p99 (ms) | non-2xx | what |\n|---|---|---|---|---|\n",
        );
        for r in &self.runs {
            let _ = writeln!(
                s,
                "| {} | {:.0} | {:.2} / {:.2} / {:.2} | {} of {} | {} |",
                r.name,
                r.requests_per_s,
                r.p50_ms,
                r.p90_ms,
                r.p99_ms,
                r.non_2xx,
                r.requests,
                r.description
            );
        }
        s.push_str("\n| target | measured | verdict |\n|---|---|---|\n");
        for r in self
            .runs
            .iter()
            .filter(|r| r.name != "limited" && r.name != HEALTH)
        {
            let ok = r.requests_per_s >= TARGET_RPS && r.p99_ms < TARGET_P99_MS;
            let _ = writeln!(
                s,
                "| {}: p99 < {TARGET_P99_MS} ms at >= {TARGET_RPS:.0} requests/s | {:.0} requests/s, p99 {:.2} ms | **{}** |",
                r.name,
                r.requests_per_s,
                r.p99_ms,
                if ok { "pass" } else { "FAIL" }
            );
        }
        if let (Some(info), Some(lim)) = (
            self.runs.iter().find(|r| r.name == "info"),
            self.runs.iter().find(|r| r.name == "limited"),
        ) {
            let _ = writeln!(
                s,
                "\nWith the limits on, {} of {} requests were refused with 429; the server answered {:.0} requests/s (p99 {:.2} ms), against {:.0} requests/s (p99 {:.2} ms) with them raised.",
                lim.non_2xx,
                lim.requests,
                lim.requests_per_s,
                lim.p99_ms,
                info.requests_per_s,
                info.p99_ms
            );
        }
        if !self.fixed.is_empty() {
            s.push_str(
                "\nOpen loop at fixed rates (requests sent on schedule whatever the answers; latency from each send):\n\n\
                 | path | rate/s | answered/s | p50 / p90 / p99 / max (ms) | non-2xx | errors | dropped | send lateness p99 (ms) |\n\
                 |---|---:|---:|---|---:|---:|---:|---:|\n",
            );
            for r in &self.fixed {
                let _ = writeln!(
                    s,
                    "| {} | {} | {} | {:.2} / {:.2} / {:.2} / {:.2} | {} | {} | {} | {:.2} |",
                    r.description.split(' ').next().unwrap_or(&r.name),
                    r.rate,
                    r.answered_per_s,
                    r.latency_ms.p50,
                    r.latency_ms.p90,
                    r.latency_ms.p99,
                    r.latency_ms.max,
                    r.non_2xx,
                    r.errors,
                    r.dropped,
                    r.send_lateness_ms.p99
                );
            }
        }
        s.push_str("\nwrk and the server share the machine's cores.\n\n");
        s.push_str(&figures_markdown(&self.figures()));
        s
    }

    /// The headline figures: `info` and `list` against `/health` on the same server.
    pub fn figures(&self) -> Vec<Figure> {
        let floor = self.runs.iter().find(|r| r.name == HEALTH);
        let mut out = Vec::new();
        for r in self
            .runs
            .iter()
            .filter(|r| r.name == "info" || r.name == "list")
        {
            let ok = r.requests_per_s >= TARGET_RPS && r.p99_ms < TARGET_P99_MS;
            let peer = "GET /health, same server";
            let mut rps = Figure::new(
                SCENARIO,
                &format!("/vm/{} requests/s", r.name),
                "req/s",
                r.requests_per_s,
            );
            let mut p50 = Figure::new(SCENARIO, &format!("/vm/{} p50", r.name), "ms", r.p50_ms);
            let mut p99 = Figure::new(SCENARIO, &format!("/vm/{} p99", r.name), "ms", r.p99_ms);
            if let Some(f) = floor {
                rps = rps.against(peer, f.requests_per_s);
                p50 = p50.against(peer, f.p50_ms);
                p99 = p99.against(peer, f.p99_ms);
            }
            out.push(rps);
            out.push(p50);
            out.push(p99.target(
                &format!("< {TARGET_P99_MS} ms at >= {TARGET_RPS:.0} req/s"),
                ok,
            ));
        }
        for r in self.fixed.iter().filter(|r| r.name != HEALTH) {
            let floor = self
                .fixed
                .iter()
                .find(|f| f.name == HEALTH && f.rate == r.rate);
            let peer = format!("GET /health at {} req/s", r.rate);
            for (what, v, fv) in [
                ("p50", r.latency_ms.p50, floor.map(|f| f.latency_ms.p50)),
                ("p99", r.latency_ms.p99, floor.map(|f| f.latency_ms.p99)),
            ] {
                let mut fig = Figure::new(
                    SCENARIO,
                    &format!("/vm/{} {what} at a fixed {} req/s", r.name, r.rate),
                    "ms",
                    v,
                );
                if let Some(fv) = fv {
                    fig = fig.against(&peer, fv);
                }
                if what == "p99" && r.rate >= TARGET_RPS {
                    fig = fig.target(
                        &format!("< {TARGET_P99_MS} ms, all answered"),
                        v < TARGET_P99_MS && r.answered == r.sent + r.dropped && r.errors == 0,
                    );
                }
                out.push(fig);
            }
        }
        out
    }

    /// Writes `<date>-<host>-api.json` and the scenario's section of `<date>-<host>.md`.
    pub fn write(&self, out: &Path) -> Result<(PathBuf, PathBuf)> {
        let stem = format!("{}-{}", self.date, self.machine.file_host());
        write_scenario(out, &stem, SCENARIO, &self.machine, self, &self.markdown())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wrk_output_is_read() {
        let text = "Running 10s test @ http://127.0.0.1:8080/vm/info
  2 threads and 32 connections
  Latency Distribution
     50%  812.00us
     75%    1.10ms
     90%    1.52ms
     99%    3.20ms
  61234 requests in 10.00s, 20.1MB read
  Non-2xx or 3xx responses: 12
Requests/sec:   6123.40
Transfer/sec:      2.01MB
";
        let r = parse_wrk("info", "d", text, "wrk").unwrap();
        assert_eq!(r.requests, 61234);
        assert_eq!(r.non_2xx, 12);
        assert!((r.p50_ms - 0.812).abs() < 1e-9);
        assert!((r.p99_ms - 3.2).abs() < 1e-9);
        assert!((r.requests_per_s - 6123.4).abs() < 1e-9);
        assert!(parse_wrk("x", "d", "garbage", "wrk").is_err());
        assert_eq!(wrk_ms("1.5s"), Some(1500.0));
    }
}
