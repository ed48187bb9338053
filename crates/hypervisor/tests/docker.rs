//! The Docker driver against a real dockerd.
//!
//! This binary starts its own dockerd once (a [`ScratchDaemon`]: private socket, data, bridge),
//! imports a busybox image built from the host's `/bin/busybox` (busybox-static), runs every
//! test against it in parallel, and tears it all down at the end. If dockerd cannot start, every
//! test fails saying why; `VMFLEET_SKIP_DOCKER=1` skips them instead (shown as ignored).
#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::future::Future;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::pin::Pin;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use libtest_mimic::{Arguments, Failed, Trial};
use serde_json::{Value, json};
use vmfleet_core::RentalId;
use vmfleet_hypervisor::docker::{DiskLimitSupport, ScratchDaemon};
use vmfleet_hypervisor::{
    ContainerSpec, ContainerState, DockerRuntime, ErrorClass, HypervisorError, StopEnd,
};
use vmfleet_wire::fleet::{BackendCommand, StartInstance, StopInstance};

const IMAGE: &str = "vmfleet-test/busybox:latest";
const PUBLIC_HOST: &str = "node.vmfleet.test";
const SKIP_VAR: &str = "VMFLEET_SKIP_DOCKER";
const PER_TEST: Duration = Duration::from_secs(120);

struct Env {
    daemon: Mutex<Option<ScratchDaemon>>,
    socket: std::path::PathBuf,
    rt: DockerRuntime,
}

type TestFuture = Pin<Box<dyn Future<Output = ()> + Send>>;

static TOKIO: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
static ENV: OnceLock<Result<Arc<Env>, String>> = OnceLock::new();

fn tokio_rt() -> &'static tokio::runtime::Runtime {
    TOKIO.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(4)
            .enable_all()
            .build()
            .unwrap()
    })
}

/// The error and its sources, one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

fn env() -> Result<Arc<Env>, Failed> {
    ENV.get_or_init(|| tokio_rt().block_on(setup()).map(Arc::new))
        .clone()
        .map_err(Failed::from)
}

async fn setup() -> Result<Env, String> {
    let t0 = Instant::now();
    let daemon = ScratchDaemon::start().await.map_err(|e| {
        format!(
            "cannot start a private dockerd for the Docker tests: {}\n\
             They need root, dockerd (docker.io) and busybox-static; \
             set {SKIP_VAR}=1 to skip them explicitly",
            chain(&e)
        )
    })?;
    let rt = daemon.runtime(PUBLIC_HOST);
    vmfleet_hypervisor::docker::import_busybox(&rt, IMAGE)
        .await
        .map_err(|e| format!("cannot import {IMAGE}: {}", chain(&e)))?;
    eprintln!(
        "docker tests: dockerd ready in {:.2}s, image imported after {:.2}s ({})",
        daemon.started_in().as_secs_f64(),
        t0.elapsed().as_secs_f64(),
        daemon.dir().display()
    );
    Ok(Env {
        socket: daemon.socket().to_owned(),
        daemon: Mutex::new(Some(daemon)),
        rt,
    })
}

fn main() {
    let args = Arguments::from_args();
    let skip = std::env::var(SKIP_VAR).is_ok_and(|v| v == "1");
    if skip {
        eprintln!("docker tests: {SKIP_VAR}=1, every Docker test is skipped");
    }
    macro_rules! trials {
        ($($name:ident),* $(,)?) => {
            vec![$(trial(stringify!($name), |e| Box::pin($name(e)), skip)),*]
        };
    }
    let tests = trials![
        start_applies_limits_env_ports_and_labels,
        published_port_reaches_the_container,
        start_is_idempotent,
        stop_graceful_exits_by_itself,
        stop_graceful_times_out_then_kills,
        stop_not_graceful_kills,
        stop_refuses_another_rentals_container,
        disk_limit_needs_a_capable_storage_driver,
        metrics_report_memory_and_cpu,
        console_shows_container_output,
        console_input_reaches_a_tty_shell,
        bad_image_is_a_clear_error,
        gpu_request_without_nvidia_leaves_nothing,
        failing_command_is_reported_and_removed,
        list_finds_vmfleet_containers,
    ];
    let t0 = Instant::now();
    let conclusion = libtest_mimic::run(&args, tests);
    let mut teardown_failed = false;
    if let Some(Ok(env)) = ENV.get() {
        let t1 = Instant::now();
        let leftover = tokio_rt().block_on(env.rt.list()).map(|l| l.len());
        let daemon = env.daemon.lock().unwrap().take();
        if let Some(daemon) = daemon
            && let Err(e) = tokio_rt().block_on(daemon.shutdown())
        {
            eprintln!("docker tests: teardown failed: {}", chain(&e));
            teardown_failed = true;
        }
        eprintln!(
            "docker tests: {:.2}s in all, teardown {:.2}s ({} vmfleet containers were left \
             by failed tests and removed)",
            t0.elapsed().as_secs_f64(),
            t1.elapsed().as_secs_f64(),
            leftover.unwrap_or(0)
        );
    }
    if teardown_failed && !conclusion.has_failed() {
        std::process::exit(101);
    }
    conclusion.exit();
}

fn trial(name: &'static str, f: fn(Arc<Env>) -> TestFuture, skip: bool) -> Trial {
    Trial::test(name, move || {
        let env = env()?;
        let t0 = Instant::now();
        let outcome = tokio_rt().block_on(async { tokio::time::timeout(PER_TEST, f(env)).await });
        match outcome {
            Ok(()) => {
                if std::env::var_os("VMFLEET_TEST_TIMINGS").is_some() {
                    eprintln!("{name}: {:.2}s", t0.elapsed().as_secs_f64());
                }
                Ok(())
            }
            Err(_) => Err(format!("{name} did not finish within {PER_TEST:?}").into()),
        }
    })
    .with_ignored_flag(skip)
}

// ---- helpers ----

fn rental() -> RentalId {
    RentalId::new(format!("t-{}", &vmfleet_core::uuid_v4()[..13])).unwrap()
}

/// A `start_instance` as the control plane sends it.
fn start_request(rental: &RentalId, limits: Value, env: Value, ports: Value) -> StartInstance {
    let payload = json!({
        "rentalId": rental,
        "image": IMAGE,
        "resourceLimits": limits,
        "envVars": env,
        "proxyPortMapping": ports,
    });
    match BackendCommand::decode("start_instance", &payload).unwrap() {
        BackendCommand::StartInstance(s) => s,
        other => panic!("decoded {other:?}"),
    }
}

fn small(rental: &RentalId) -> ContainerSpec {
    ContainerSpec::from_start(&start_request(
        rental,
        json!({"cpuCores": 0.5, "ramLimit": "64m"}),
        json!({}),
        json!({}),
    ))
}

fn stop_request(
    rental: &RentalId,
    id: &vmfleet_core::ContainerId,
    graceful: bool,
    t: u32,
) -> StopInstance {
    let payload = json!({
        "rentalId": rental, "containerId": id, "graceful": graceful, "timeoutSeconds": t
    });
    match BackendCommand::decode("stop_instance", &payload).unwrap() {
        BackendCommand::StopInstance(s) => s,
        other => panic!("decoded {other:?}"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs the docker CLI against the test daemon; its standard output.
fn docker_cli(env: &Env, args: &[&str]) -> Vec<u8> {
    let out = std::process::Command::new("docker")
        .arg("--host")
        .arg(format!("unix://{}", env.socket.display()))
        .args(args)
        .output()
        .expect("the docker CLI (docker.io) runs");
    assert!(
        out.status.success(),
        "docker {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

/// `docker inspect`, by the docker CLI: an independent reading of what the engine holds.
fn docker_inspect(env: &Env, id: &str) -> Value {
    let v: Value = serde_json::from_slice(&docker_cli(env, &["inspect", id])).unwrap();
    v[0].clone()
}

/// Reads the console until `needle` appears (scrollback included) or `within` passes.
async fn console_until(
    console: &vmfleet_hypervisor::Console,
    needle: &str,
    within: Duration,
) -> String {
    let mut reader = console.subscribe();
    let mut seen = String::from_utf8_lossy(&reader.scrollback).into_owned();
    let deadline = tokio::time::Instant::now() + within;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, reader.live.recv()).await {
            Ok(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => continue,
            Ok(Err(_)) | Err(_) => break,
        }
    }
    seen
}

async fn assert_gone(env: &Env, rental: &RentalId) {
    assert_eq!(env.rt.find_rental(rental).await.unwrap(), None);
    assert!(
        env.rt
            .list()
            .await
            .unwrap()
            .iter()
            .all(|c| c.rental_id.as_ref() != Some(rental)),
        "a container of {rental} is left"
    );
}

// ---- tests ----

async fn start_applies_limits_env_ports_and_labels(env: Arc<Env>) {
    let r = rental();
    let (ssh, web) = (free_port(), free_port());
    let req = start_request(
        &r,
        json!({"cpuCores": 0.5, "ramLimit": "64m"}),
        json!({"VMFLEET_GREETING": "hello world", "JUPYTER_TOKEN": "xyz123"}),
        json!({"22": ssh, "8888": web}),
    );
    let started = env.rt.start(&req).await.unwrap();
    assert!(!started.reused);
    assert!(started.container.is_running());
    assert_eq!(started.connection_info.ssh_host, PUBLIC_HOST);
    assert_eq!(started.connection_info.ssh_port, ssh);
    assert_eq!(
        started.connection_info.additional_ports,
        BTreeMap::from([(8888, web)])
    );
    let event = started.instance_started(r.clone());
    assert_eq!(&event.container_id, started.container_id());

    let v = docker_inspect(&env, started.container_id().as_str());
    assert_eq!(v["Name"], format!("/vmfleet-{r}"));
    assert_eq!(v["Config"]["Labels"]["vmfleet.rental"], r.as_str());
    assert_eq!(v["HostConfig"]["NanoCpus"], 500_000_000i64);
    assert_eq!(v["HostConfig"]["CpuCount"], 0);
    assert_eq!(v["HostConfig"]["Memory"], 64i64 << 20);
    let env_vars: Vec<&str> = v["Config"]["Env"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .collect();
    assert!(
        env_vars.contains(&"VMFLEET_GREETING=hello world"),
        "{env_vars:?}"
    );
    assert!(env_vars.contains(&"JUPYTER_TOKEN=xyz123"), "{env_vars:?}");
    for (port, host) in [(22, ssh), (8888, web)] {
        let key = format!("{port}/tcp");
        assert_eq!(
            v["HostConfig"]["PortBindings"][&key],
            json!([{"HostIp": "127.0.0.1", "HostPort": host.to_string()}])
        );
        assert_eq!(
            v["NetworkSettings"]["Ports"][&key][0]["HostIp"],
            "127.0.0.1"
        );
        assert_eq!(
            v["NetworkSettings"]["Ports"][&key][0]["HostPort"],
            host.to_string()
        );
        assert!(v["Config"]["ExposedPorts"].get(&key).is_some());
    }
    assert!(
        v["HostConfig"]["DeviceRequests"]
            .as_array()
            .is_none_or(Vec::is_empty)
    );

    let report = env
        .rt
        .stop(&stop_request(&r, started.container_id(), false, 0))
        .await
        .unwrap();
    assert_eq!(report.ended, StopEnd::Killed);
    assert_gone(&env, &r).await;
}

async fn published_port_reaches_the_container(env: Arc<Env>) {
    let r = rental();
    let port = free_port();
    let mut spec = small(&r).with_cmd([
        "sh",
        "-c",
        "while true; do echo vmfleet-pong-$VMFLEET_GREETING | nc -l -p 8888; done",
    ]);
    spec.ports.insert(8888, port);
    spec.env.insert("VMFLEET_GREETING".into(), "hi".into());
    let started = env.rt.start_spec(&spec).await.unwrap();
    let got = tokio::task::spawn_blocking(move || {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let mut got = String::new();
            if let Ok(mut s) = TcpStream::connect(("127.0.0.1", port)) {
                s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
                let _ = s.write_all(b"ping\n");
                let _ = s.read_to_string(&mut got);
            }
            if got.contains("vmfleet-pong") || Instant::now() > deadline {
                return got;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    })
    .await
    .unwrap();
    assert_eq!(got.trim(), "vmfleet-pong-hi");
    env.rt
        .stop_container(&r, started.container_id(), false, 0)
        .await
        .unwrap();
}

async fn start_is_idempotent(env: Arc<Env>) {
    let r = rental();
    let req = start_request(
        &r,
        json!({"cpuCores": 0.25, "ramLimit": "32m"}),
        json!({}),
        json!({"8888": free_port()}),
    );
    let first = env.rt.start(&req).await.unwrap();
    let second = env.rt.start(&req).await.unwrap();
    assert!(second.reused);
    assert_eq!(first.container_id(), second.container_id());
    assert_eq!(first.connection_info, second.connection_info);
    // Concurrent repeats, too.
    let (a, b) = tokio::join!(env.rt.start(&req), env.rt.start(&req));
    assert_eq!(a.unwrap().container_id(), first.container_id());
    assert_eq!(b.unwrap().container_id(), first.container_id());
    let mine: Vec<_> = env
        .rt
        .list()
        .await
        .unwrap()
        .into_iter()
        .filter(|c| c.rental_id.as_ref() == Some(&r))
        .collect();
    assert_eq!(mine.len(), 1, "{mine:?}");

    // A rental whose container stopped gets it started again, not a second one.
    docker_cli(&env, &["kill", first.container_id().as_str()]);
    assert_eq!(
        env.rt.inspect(first.container_id()).await.unwrap().state,
        ContainerState::Exited
    );
    let again = env.rt.start(&req).await.unwrap();
    assert_eq!(again.container_id(), first.container_id());
    assert!(again.container.is_running());

    env.rt
        .stop(&stop_request(&r, first.container_id(), false, 0))
        .await
        .unwrap();
    // Stopping what is gone says so.
    let e = env
        .rt
        .stop(&stop_request(&r, first.container_id(), true, 1))
        .await
        .unwrap_err();
    assert!(matches!(e, HypervisorError::ContainerNotFound(_)), "{e}");
    assert_eq!(e.class(), ErrorClass::NotFound);
}

async fn stop_graceful_exits_by_itself(env: Arc<Env>) {
    let r = rental();
    let spec = small(&r).with_cmd([
        "sh",
        "-c",
        "trap 'echo bye; exit 0' TERM; while true; do sleep 0.1; done",
    ]);
    let started = env.rt.start_spec(&spec).await.unwrap();
    let t0 = Instant::now();
    let report = env
        .rt
        .stop(&stop_request(&r, started.container_id(), true, 20))
        .await
        .unwrap();
    assert_eq!(report.ended, StopEnd::ExitedByItself);
    assert_eq!(report.exit_code, 0);
    assert!(t0.elapsed() < Duration::from_secs(10), "{:?}", t0.elapsed());
    assert_gone(&env, &r).await;
}

async fn stop_graceful_times_out_then_kills(env: Arc<Env>) {
    let r = rental();
    // PID 1 without a handler ignores SIGTERM: only the kill ends it.
    let started = env.rt.start_spec(&small(&r)).await.unwrap();
    let t0 = Instant::now();
    let report = env
        .rt
        .stop(&stop_request(&r, started.container_id(), true, 1))
        .await
        .unwrap();
    assert_eq!(report.ended, StopEnd::TimedOut);
    assert_eq!(report.exit_code, 137);
    assert!(t0.elapsed() >= Duration::from_secs(1));
    assert_gone(&env, &r).await;
}

async fn stop_not_graceful_kills(env: Arc<Env>) {
    let r = rental();
    let started = env.rt.start_spec(&small(&r)).await.unwrap();
    let t0 = Instant::now();
    let report = env
        .rt
        .stop(&stop_request(&r, started.container_id(), false, 30))
        .await
        .unwrap();
    assert_eq!(report.ended, StopEnd::Killed);
    assert_eq!(report.exit_code, 137);
    assert!(t0.elapsed() < Duration::from_secs(10));
    assert_gone(&env, &r).await;
}

async fn stop_refuses_another_rentals_container(env: Arc<Env>) {
    let (r, other) = (rental(), rental());
    let started = env.rt.start_spec(&small(&r)).await.unwrap();
    let e = env
        .rt
        .stop(&stop_request(&other, started.container_id(), false, 0))
        .await
        .unwrap_err();
    assert!(
        matches!(e, HypervisorError::NotRentalContainer { .. }),
        "{e}"
    );
    assert_eq!(e.class(), ErrorClass::Conflict);
    assert!(
        env.rt
            .inspect(started.container_id())
            .await
            .unwrap()
            .is_running()
    );
    env.rt
        .stop(&stop_request(&r, started.container_id(), false, 0))
        .await
        .unwrap();
}

async fn disk_limit_needs_a_capable_storage_driver(env: Arc<Env>) {
    let r = rental();
    let req = start_request(
        &r,
        json!({"cpuCores": 0.5, "ramLimit": "64m", "diskLimit": "1g"}),
        json!({}),
        json!({}),
    );
    let support = env.rt.disk_limit_support().await.unwrap();
    match env.rt.start(&req).await {
        Err(HypervisorError::DiskLimitUnsupported { driver, backing_fs }) => {
            assert_ne!(support, DiskLimitSupport::Yes);
            if let DiskLimitSupport::No {
                driver: d,
                backing_fs: fs,
            } = &support
            {
                assert_eq!((&driver, &backing_fs), (d, fs));
            }
            let e = HypervisorError::DiskLimitUnsupported {
                driver: driver.clone(),
                backing_fs,
            };
            assert_eq!(e.class(), ErrorClass::Unsupported);
            assert!(e.to_string().contains(&driver), "{e}");
            eprintln!("disk limit refused as it should be here: {e}");
            assert_gone(&env, &r).await;
        }
        Ok(started) => {
            assert_ne!(
                std::mem::discriminant(&support),
                std::mem::discriminant(&DiskLimitSupport::No {
                    driver: String::new(),
                    backing_fs: String::new()
                })
            );
            let v = docker_inspect(&env, started.container_id().as_str());
            assert_eq!(
                v["HostConfig"]["StorageOpt"]["size"],
                (1u64 << 30).to_string()
            );
            env.rt
                .stop(&stop_request(&r, started.container_id(), false, 0))
                .await
                .unwrap();
        }
        Err(e) => panic!("unexpected error: {}", chain(&e)),
    }
}

async fn metrics_report_memory_and_cpu(env: Arc<Env>) {
    let r = rental();
    let spec = small(&r).with_cmd([
        "sh",
        "-c",
        "dd if=/dev/zero of=/tmp/fill bs=1M count=8 2>/dev/null; \
         while true; do i=0; while [ $i -lt 2000 ]; do i=$((i+1)); done; sleep 0.05; done",
    ]);
    let started = env.rt.start_spec(&spec).await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    let m = env.rt.metrics(started.container_id()).await.unwrap();
    assert!(m.memory_used_bytes > 0, "{m:?}");
    assert_eq!(m.memory_total_bytes, 64 << 20, "{m:?}");
    assert!((0.0..=100.0).contains(&m.cpu_percent), "{m:?}");
    assert!(m.cpu_percent > 0.0, "a busy loop shows CPU use: {m:?}");
    assert!(
        m.net_rx_bytes.is_some() && m.net_tx_packets.is_some(),
        "{m:?}"
    );
    eprintln!("metrics: {m:?}");
    env.rt
        .stop_container(&r, started.container_id(), false, 0)
        .await
        .unwrap();
    let e = env.rt.metrics(started.container_id()).await.unwrap_err();
    assert!(matches!(e, HypervisorError::ContainerNotFound(_)), "{e}");
}

async fn console_shows_container_output(env: Arc<Env>) {
    let r = rental();
    let marker = format!("vmfleet-{}", &vmfleet_core::uuid_v4()[..8]);
    let spec = small(&r).with_cmd([
        "sh",
        "-c",
        &format!(
            "echo {marker}; echo to-stderr >&2; sleep 0.5; echo later-{marker}; exec sleep 100000"
        ),
    ]);
    let started = env.rt.start_spec(&spec).await.unwrap();
    let console = env.rt.console(started.container_id()).await.unwrap();
    let seen = console_until(
        &console,
        &format!("later-{marker}"),
        Duration::from_secs(15),
    )
    .await;
    assert!(seen.contains(&format!("{marker}\n")), "{seen:?}");
    assert!(seen.contains("to-stderr"), "{seen:?}");
    assert!(seen.contains(&format!("later-{marker}")), "{seen:?}");
    // A second reader gets the same console, scrollback included.
    let again = env.rt.console(started.container_id()).await.unwrap();
    assert!(String::from_utf8_lossy(&again.scrollback()).contains(&marker));
    // No stdin: writing says so.
    assert!(matches!(
        again.write(b"x").await,
        Err(vmfleet_hypervisor::ConsoleError::NoInput)
    ));
    env.rt
        .stop_container(&r, started.container_id(), false, 0)
        .await
        .unwrap();
    assert!(console.is_closed());
}

async fn console_input_reaches_a_tty_shell(env: Arc<Env>) {
    let r = rental();
    let marker = format!("vmfleet-{}", &vmfleet_core::uuid_v4()[..8]);
    let spec = small(&r).with_cmd(["sh"]).interactive();
    let started = env.rt.start_spec(&spec).await.unwrap();
    assert!(started.container.tty && started.container.open_stdin);
    let console = env.rt.console(started.container_id()).await.unwrap();
    // The shell computes the answer, so the echo of the typed line cannot satisfy the test.
    console
        .write(format!("echo {marker}-$((6*7))\n").as_bytes())
        .await
        .unwrap();
    let seen = console_until(&console, &format!("{marker}-42"), Duration::from_secs(15)).await;
    assert!(seen.contains(&format!("{marker}-42")), "{seen:?}");
    console.write(b"exit 3\n").await.unwrap();
    // The shell exits: the attach stream ends and the console closes.
    let deadline = Instant::now() + Duration::from_secs(15);
    while !console.is_closed() && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(console.is_closed());
    let report = env
        .rt
        .stop(&stop_request(&r, started.container_id(), true, 5))
        .await
        .unwrap();
    assert_eq!(report.ended, StopEnd::AlreadyStopped);
    assert_eq!(report.exit_code, 3);
}

async fn bad_image_is_a_clear_error(env: Arc<Env>) {
    let r = rental();
    let mut req = start_request(
        &r,
        json!({"cpuCores": 1, "ramLimit": "64m"}),
        json!({}),
        json!({}),
    );
    req.image = vmfleet_core::ImageRef::new("vmfleet-test/no-such-image:1.0").unwrap();
    let e = env.rt.start(&req).await.unwrap_err();
    match &e {
        HypervisorError::ImageUnavailable { image, reason } => {
            assert_eq!(image, "vmfleet-test/no-such-image:1.0");
            assert!(!reason.is_empty());
        }
        other => panic!("expected ImageUnavailable, got {}", chain(other)),
    }
    assert_eq!(e.class(), ErrorClass::BadRequest);
    assert!(
        e.to_string().contains("vmfleet-test/no-such-image:1.0"),
        "{e}"
    );
    eprintln!("bad image: {e}");
    assert_gone(&env, &r).await;
}

async fn gpu_request_without_nvidia_leaves_nothing(env: Arc<Env>) {
    let r = rental();
    let req = start_request(
        &r,
        json!({"cpuCores": 0.5, "ramLimit": "64m", "gpuIndices": ["0"]}),
        json!({}),
        json!({}),
    );
    match env.rt.start(&req).await {
        Err(e) => {
            assert!(
                matches!(e, HypervisorError::InsufficientResources(ref m) if m.contains("GPUs 0")),
                "{}",
                chain(&e)
            );
            eprintln!("gpu refused: {e}");
            assert_gone(&env, &r).await;
        }
        // A host with the NVIDIA runtime: the request went through.
        Ok(started) => {
            let v = docker_inspect(&env, started.container_id().as_str());
            assert_eq!(
                v["HostConfig"]["DeviceRequests"][0]["DeviceIDs"],
                json!(["0"])
            );
            env.rt
                .stop_container(&r, started.container_id(), false, 0)
                .await
                .unwrap();
        }
    }
}

async fn failing_command_is_reported_and_removed(env: Arc<Env>) {
    let r = rental();
    let spec = small(&r).with_cmd(["/no/such/program"]);
    let e = env.rt.start_spec(&spec).await.unwrap_err();
    assert!(
        matches!(e, HypervisorError::InvalidSpec(_)),
        "{}",
        chain(&e)
    );
    assert_eq!(e.class(), ErrorClass::BadRequest);
    assert!(e.to_string().contains("/no/such/program"), "{e}");
    eprintln!("bad command: {e}");
    assert_gone(&env, &r).await;
}

async fn list_finds_vmfleet_containers(env: Arc<Env>) {
    let (a, b) = (rental(), rental());
    let sa = env.rt.start_spec(&small(&a)).await.unwrap();
    let sb = env.rt.start_spec(&small(&b)).await.unwrap();
    let listed = env.rt.list().await.unwrap();
    for (r, s) in [(&a, &sa), (&b, &sb)] {
        let c = listed
            .iter()
            .find(|c| c.rental_id.as_ref() == Some(r))
            .unwrap_or_else(|| panic!("{r} not listed in {listed:?}"));
        assert_eq!(&c.id, s.container_id());
        assert_eq!(c.state, ContainerState::Running);
        assert_eq!(c.nano_cpus, 500_000_000);
        assert_eq!(c.memory_bytes, 64 << 20);
        assert_eq!(c.name, format!("vmfleet-{r}"));
    }
    for (r, s) in [(&a, &sa), (&b, &sb)] {
        env.rt
            .stop_container(r, s.container_id(), false, 0)
            .await
            .unwrap();
    }
}
