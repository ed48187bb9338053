//! The Firecracker backend against `fake-firecracker` (tests/support/fake_firecracker.rs), a
//! stand-in that serves Firecracker's API socket and records every request. Every recorded
//! request is checked against Firecracker's own swagger file, so what is proven here is the
//! driver's side of the contract: the right requests, in an order Firecracker accepts, with
//! bodies its API describes; process supervision; the console over stdio.

#![allow(clippy::unwrap_used)]

#[path = "support/swagger.rs"]
mod swagger;

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use serde_json::{Value, json};
use swagger::Swagger;
use tempfile::TempDir;
use vmfleet_core::{DeviceId, PciAddress, ShareTag, VmId, VmResources};
use vmfleet_hypervisor::{
    AttachedDevice, Backend, ConsoleError, DeviceSpec, DiskSpec, FirecrackerBackend,
    FirecrackerConfig, Guest, GuestExit, HypervisorError, Launch, NetAttachment, SnapshotPaths,
    VmSpec,
};

const FAKE: &str = env!("CARGO_BIN_EXE_fake-firecracker");
const WAIT: Duration = Duration::from_secs(10);

fn swagger() -> &'static Swagger {
    static SPEC: OnceLock<Swagger> = OnceLock::new();
    SPEC.get_or_init(Swagger::load)
}

struct Fixture {
    dir: TempDir,
    spec: VmSpec,
    backend: FirecrackerBackend,
}

impl Fixture {
    fn new(id: &str) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, bytes: &[u8]| {
            let p = dir.path().join(name);
            std::fs::write(&p, bytes).unwrap();
            p
        };
        let spec = VmSpec {
            id: VmId::new(id).unwrap(),
            resources: VmResources {
                vcpu_count: 2,
                mem_size_mib: 256,
                disk_size: 1,
            },
            kernel: file("vmlinux", b"kernel"),
            initrd: None,
            root_disk: file("root.ext4", b"rootfs"),
            extra_disks: vec![],
            boot_args: "console=ttyS0 reboot=k panic=1".into(),
            network: None,
            devices: Vec::new(),
        };
        let kvm = file("kvm", b"");
        let backend = FirecrackerBackend::new(FirecrackerConfig {
            binary: FAKE.into(),
            kvm_device: kvm,
            ..FirecrackerConfig::default()
        });
        Fixture { dir, spec, backend }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn control(&self, v: Value) {
        std::fs::write(self.path().join("fake-control.json"), v.to_string()).unwrap();
    }

    async fn boot(&self) -> Box<dyn Guest> {
        self.backend
            .launch(&self.spec, self.path(), Launch::Boot)
            .await
            .unwrap()
    }

    fn str(&self, name: &str) -> String {
        self.path().join(name).to_str().unwrap().to_owned()
    }

    /// Every request the fake got, each checked against the swagger file.
    fn requests(&self) -> Vec<(String, String, Value)> {
        let text =
            std::fs::read_to_string(self.path().join("fake-requests.jsonl")).unwrap_or_default();
        let reqs: Vec<(String, String, Value)> = text
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (
                    v["method"].as_str().unwrap().to_owned(),
                    v["path"].as_str().unwrap().to_owned(),
                    v["body"].clone(),
                )
            })
            .collect();
        let errors: Vec<String> = reqs
            .iter()
            .flat_map(|(m, p, b)| swagger().check(m, p, b))
            .collect();
        assert!(
            errors.is_empty(),
            "requests that break Firecracker's API description:\n{}",
            errors.join("\n")
        );
        reqs
    }

    fn calls(&self) -> Vec<String> {
        self.requests()
            .into_iter()
            .map(|(m, p, _)| format!("{m} {p}"))
            .collect()
    }

    fn body(&self, call: &str) -> Value {
        self.requests()
            .into_iter()
            .find(|(m, p, _)| format!("{m} {p}") == call)
            .map(|(_, _, b)| b)
            .unwrap_or_else(|| panic!("no {call} was made"))
    }
}

async fn ended(guest: &dyn Guest) -> GuestExit {
    let mut rx = guest.exited();
    let ended = tokio::time::timeout(WAIT, rx.wait_for(Option::is_some))
        .await
        .expect("the process did not end")
        .unwrap()
        .clone();
    ended.unwrap()
}

/// Waits until the console's output (scrollback included) contains `needle`.
async fn console_shows(guest: &dyn Guest, needle: &str) -> String {
    let mut reader = guest.console().subscribe();
    let mut seen = String::from_utf8_lossy(&reader.scrollback).into_owned();
    let deadline = tokio::time::Instant::now() + WAIT;
    while !seen.contains(needle) {
        match tokio::time::timeout_at(deadline, reader.live.recv()).await {
            Ok(Ok(chunk)) => seen.push_str(&String::from_utf8_lossy(&chunk)),
            other => panic!("{needle:?} never came on the console ({other:?}); got {seen:?}"),
        }
    }
    seen
}

fn pid_alive(pid: u32) -> bool {
    // Our child is reaped by the supervisor, so a dead one does not linger as a zombie.
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .map(|s| !s.contains(") Z "))
        .unwrap_or(false)
}

async fn until(what: &str, f: impl Fn() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT;
    while !f() {
        assert!(tokio::time::Instant::now() < deadline, "timed out: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

// --- The validator itself ---------------------------------------------------------------------

#[test]
fn validator_accepts_good_and_catches_wrong_requests() {
    let s = swagger();
    let ok = |m: &str, p: &str, b: Value| {
        let e = s.check(m, p, &b);
        assert!(e.is_empty(), "{m} {p} {b}: {e:?}");
    };
    let bad = |m: &str, p: &str, b: Value, needle: &str| {
        let e = s.check(m, p, &b);
        assert!(
            e.iter().any(|e| e.contains(needle)),
            "{m} {p} {b}: expected an error containing {needle:?}, got {e:?}"
        );
    };
    ok(
        "PUT",
        "/drives/rootfs",
        json!({"drive_id": "rootfs", "path_on_host": "/r", "is_root_device": true, "is_read_only": false}),
    );
    ok("GET", "/", Value::Null);
    ok(
        "PUT",
        "/metrics",
        json!({"metrics_path": "/m", "properties": {"host": "a"}}),
    );
    // Types, bounds, required, unknown properties, enums (nested too).
    bad(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": "2", "mem_size_mib": 256}),
        "expected integer",
    );
    bad(
        "PUT",
        "/machine-config",
        json!({"vcpu_count": 64, "mem_size_mib": 256}),
        "above the maximum",
    );
    bad(
        "PUT",
        "/drives/rootfs",
        json!({"path_on_host": "/r", "is_root_device": true, "is_read_only": false}),
        "required property \"drive_id\"",
    );
    bad(
        "PUT",
        "/actions",
        json!({"action_type": "InstanceStart", "extra": 1}),
        "unknown property \"extra\"",
    );
    bad("PATCH", "/vm", json!({"state": "Stopped"}), "is not one of");
    bad(
        "PUT",
        "/snapshot/load",
        json!({"snapshot_path": "/s", "mem_backend": {"backend_type": "Disk", "backend_path": "/m"}}),
        "mem_backend.backend_type",
    );
    bad(
        "PUT",
        "/metrics",
        json!({"metrics_path": "/m", "properties": {"n": 1}}),
        "expected string",
    );
    bad("PUT", "/actions", Value::Null, "body is required");
    bad("GET", "/", json!({}), "takes no body");
    bad("DELETE", "/vm", Value::Null, "no DELETE operation");
    bad("PUT", "/no-such-thing", json!({}), "no such path");
    bad("PUT", "/drives", json!({}), "no such path");
}

// --- Preflight ---------------------------------------------------------------------------------

#[tokio::test]
async fn preflight_names_what_is_missing() {
    let f = Fixture::new("vm-preflight");
    f.backend.preflight().await.unwrap();

    for binary in [
        "/nonexistent/firecracker",
        "vmfleet-test-no-such-firecracker",
    ] {
        let b = FirecrackerBackend::new(FirecrackerConfig {
            binary: binary.into(),
            ..f.backend.config().clone()
        });
        match b.preflight().await {
            Err(HypervisorError::BinaryMissing(name)) => assert_eq!(name, binary),
            other => panic!("expected BinaryMissing, got {other:?}"),
        }
        assert!(matches!(
            b.launch(&f.spec, f.path(), Launch::Boot).await,
            Err(HypervisorError::BinaryMissing(_))
        ));
    }

    let b = FirecrackerBackend::new(FirecrackerConfig {
        kvm_device: PathBuf::from("/nonexistent/kvm"),
        ..f.backend.config().clone()
    });
    match b.preflight().await {
        Err(HypervisorError::KvmUnusable(why)) => {
            assert!(why.contains("/nonexistent/kvm"), "{why}")
        }
        other => panic!("expected KvmUnusable, got {other:?}"),
    }
}

// --- Boot ----------------------------------------------------------------------------------------

#[tokio::test]
async fn boot_configures_the_machine_then_starts_it() {
    let mut f = Fixture::new("vm-boot_1.a");
    let data = f.path().join("data.img");
    std::fs::write(&data, b"data").unwrap();
    let initrd = f.path().join("initrd.gz");
    std::fs::write(&initrd, b"initrd").unwrap();
    f.spec.initrd = Some(initrd.clone());
    f.spec.extra_disks = vec![DiskSpec {
        path: data.clone(),
        read_only: true,
    }];
    f.spec.network = Some(NetAttachment {
        tap: "tap-vm1".into(),
        mac: "52:54:00:12:34:56".into(),
    });
    f.spec.devices = vec![AttachedDevice {
        id: DeviceId::nth(0),
        device: DeviceSpec::Rng,
    }];

    let guest = f.boot().await;

    assert_eq!(
        f.calls(),
        [
            "PUT /metrics",
            "PUT /machine-config",
            "PUT /boot-source",
            "PUT /drives/rootfs",
            "PUT /drives/disk1",
            "PUT /network-interfaces/eth0",
            "PUT /entropy",
            "PUT /balloon",
            "PUT /actions",
        ]
    );
    assert_eq!(f.body("PUT /entropy"), json!({}));
    assert_eq!(
        f.body("PUT /metrics"),
        json!({"metrics_path": f.str("firecracker.metrics")})
    );
    assert_eq!(
        f.body("PUT /machine-config"),
        json!({"vcpu_count": 2, "mem_size_mib": 256})
    );
    assert_eq!(
        f.body("PUT /boot-source"),
        json!({
            "kernel_image_path": f.str("vmlinux"),
            "boot_args": "console=ttyS0 reboot=k panic=1",
            "initrd_path": f.str("initrd.gz"),
        })
    );
    assert_eq!(
        f.body("PUT /drives/rootfs"),
        json!({"drive_id": "rootfs", "path_on_host": f.str("root.ext4"), "is_root_device": true, "is_read_only": false})
    );
    assert_eq!(
        f.body("PUT /drives/disk1"),
        json!({"drive_id": "disk1", "path_on_host": f.str("data.img"), "is_root_device": false, "is_read_only": true})
    );
    assert_eq!(
        f.body("PUT /network-interfaces/eth0"),
        json!({"iface_id": "eth0", "host_dev_name": "tap-vm1", "guest_mac": "52:54:00:12:34:56"})
    );
    assert_eq!(
        f.body("PUT /balloon"),
        json!({"amount_mib": 0, "deflate_on_oom": true, "stats_polling_interval_s": 1})
    );
    assert_eq!(
        f.body("PUT /actions"),
        json!({"action_type": "InstanceStart"})
    );

    // The command line, the pid file, the console.
    let argv: Vec<String> =
        serde_json::from_slice(&std::fs::read(f.path().join("fake-argv.json")).unwrap()).unwrap();
    assert_eq!(argv[0], FAKE);
    assert_eq!(
        argv[1..5],
        [
            "--api-sock",
            &f.str("firecracker.sock"),
            "--id",
            "vm-boot-1-a"
        ]
    );
    // Firecracker's log goes to a file, not to stdout (the serial console).
    assert_eq!(
        argv[5..],
        [
            "--log-path",
            &f.str("firecracker.log"),
            "--level",
            "Warning"
        ]
    );
    let pid_file = f.path().join("firecracker.pid");
    assert_eq!(
        std::fs::read_to_string(&pid_file).unwrap().trim(),
        guest.pid().to_string()
    );
    assert!(pid_alive(guest.pid()));
    console_shows(guest.as_ref(), "Linux version").await;

    // A second launch into the same directory is refused while the first process lives.
    assert!(matches!(
        f.backend.launch(&f.spec, f.path(), Launch::Boot).await,
        Err(HypervisorError::AlreadyExists(_))
    ));

    guest.kill().await.unwrap();
    assert_eq!(ended(guest.as_ref()).await, GuestExit::Shutdown);
    assert!(!pid_alive(guest.pid()));
    assert!(!pid_file.exists());
    assert!(!f.path().join("firecracker.sock").exists());
    assert!(guest.console().is_closed());
}

#[tokio::test]
async fn boot_refuses_what_firecracker_cannot_run() {
    let mut f = Fixture::new("vm-limits");
    f.spec.resources.vcpu_count = 33;
    match f.backend.launch(&f.spec, f.path(), Launch::Boot).await {
        Err(HypervisorError::InvalidSpec(why)) => assert!(why.contains("32"), "{why}"),
        other => panic!("expected InvalidSpec, got {:?}", other.map(|g| g.pid())),
    }
    f.spec.resources.vcpu_count = 1;
    let deep = f.path().join("d".repeat(120));
    std::fs::create_dir(&deep).unwrap();
    assert!(matches!(
        f.backend.launch(&f.spec, &deep, Launch::Boot).await,
        Err(HypervisorError::InvalidSpec(_))
    ));
    // Nothing was started.
    assert!(!f.path().join("fake-argv.json").exists());
}

#[tokio::test]
async fn firecracker_has_an_entropy_device_but_no_pci_and_no_shares() {
    let mut f = Fixture::new("vm-devices");
    f.backend.check_device(&DeviceSpec::Rng).unwrap();
    let share = DeviceSpec::Share {
        tag: ShareTag::new("data").unwrap(),
        path: f.path().to_owned(),
        read_only: true,
    };
    let gpu = DeviceSpec::PciPassthrough {
        address: PciAddress::new("0000:01:00.0").unwrap(),
    };
    for (device, why) in [
        (share, "Firecracker has no shared filesystem device"),
        (gpu, "Firecracker has no PCI"),
    ] {
        match f.backend.check_device(&device) {
            Err(e @ HypervisorError::Unsupported { .. }) => {
                assert!(e.to_string().contains(why), "{e}")
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
        // A spec that has one anyway (an edited vm.json) does not launch either.
        f.spec.devices = vec![AttachedDevice {
            id: DeviceId::nth(0),
            device,
        }];
        assert!(matches!(
            f.backend.launch(&f.spec, f.path(), Launch::Boot).await,
            Err(HypervisorError::Unsupported { .. })
        ));
    }
    assert!(!f.path().join("fake-argv.json").exists());
}

// --- Operations on a running guest ---------------------------------------------------------------

#[tokio::test]
async fn guest_operations_speak_the_api() {
    let mut f = Fixture::new("vm-ops");
    f.spec.network = Some(NetAttachment {
        tap: "tap-ops".into(),
        mac: "52:54:00:00:00:01".into(),
    });
    let guest = f.boot().await;
    let booted = f.calls().len();

    guest.pause().await.unwrap();
    let snap = SnapshotPaths {
        dir: f.path().join("snapshots/s1"),
    };
    guest.snapshot(&snap).await.unwrap();
    assert!(snap.state().is_file() && snap.memory().is_file());
    guest.resume().await.unwrap();
    guest.set_memory(192).await.unwrap();
    assert!(matches!(
        guest.set_memory(512).await,
        Err(HypervisorError::InvalidSpec(_))
    ));

    // Firecracker flushes deltas; the driver sums them.
    let m1 = guest.metrics().await.unwrap();
    let m2 = guest.metrics().await.unwrap();
    assert_eq!(
        (
            m1.disk_read_bytes,
            m1.disk_write_bytes,
            m1.disk_read_ops,
            m1.disk_write_ops
        ),
        (1000, 500, Some(10), Some(5))
    );
    assert_eq!(
        (
            m2.disk_read_bytes,
            m2.disk_write_bytes,
            m2.disk_read_ops,
            m2.disk_write_ops
        ),
        (2000, 1000, Some(20), Some(10))
    );
    assert_eq!(
        (
            m2.net_rx_bytes,
            m2.net_tx_bytes,
            m2.net_rx_packets,
            m2.net_tx_packets
        ),
        (Some(600), Some(400), Some(6), Some(4))
    );
    assert_eq!(m2.memory_total_bytes, 256 << 20);
    assert!(m2.memory_used_bytes > 0 && m2.memory_used_bytes <= m2.memory_total_bytes);
    assert!((0.0..=100.0).contains(&m2.cpu_percent));

    match guest.reboot().await {
        Err(HypervisorError::Unsupported { backend, op }) => {
            assert_eq!(backend, "firecracker");
            assert!(op.contains("no reset"), "{op}");
        }
        other => panic!("expected Unsupported, got {other:?}"),
    }

    guest.power_button().await.unwrap();
    // The fake behaves like a guest that reboots on Ctrl-Alt-Del: Firecracker exits with 0.
    assert_eq!(ended(guest.as_ref()).await, GuestExit::Shutdown);
    assert!(matches!(
        guest.pause().await,
        Err(HypervisorError::GuestFailed(_))
    ));

    let reqs = f.requests();
    let after: Vec<(String, String, Value)> = reqs[booted..].to_vec();
    let expected = [
        ("PATCH", "/vm", json!({"state": "Paused"})),
        (
            "PUT",
            "/snapshot/create",
            json!({
                "snapshot_type": "Full",
                "snapshot_path": snap.state().to_str().unwrap(),
                "mem_file_path": snap.memory().to_str().unwrap(),
            }),
        ),
        ("PATCH", "/vm", json!({"state": "Resumed"})),
        ("PATCH", "/balloon", json!({"amount_mib": 64})),
        ("PUT", "/actions", json!({"action_type": "FlushMetrics"})),
        ("PUT", "/actions", json!({"action_type": "FlushMetrics"})),
        ("PUT", "/actions", json!({"action_type": "SendCtrlAltDel"})),
    ];
    assert_eq!(after.len(), expected.len(), "{after:#?}");
    for ((m, p, b), (em, ep, eb)) in after.iter().zip(expected) {
        assert_eq!((m.as_str(), p.as_str(), b), (em, ep, &eb));
    }
}

#[tokio::test]
async fn restore_loads_the_snapshot_and_resumes() {
    let f = Fixture::new("vm-restore");
    let snap = SnapshotPaths {
        dir: f.path().join("snap"),
    };

    // Files missing: refused before anything starts.
    assert!(matches!(
        f.backend
            .launch(&f.spec, f.path(), Launch::Restore(snap.clone()))
            .await,
        Err(HypervisorError::InvalidSpec(_))
    ));

    std::fs::create_dir(&snap.dir).unwrap();
    std::fs::write(snap.state(), b"state").unwrap();
    std::fs::write(snap.memory(), b"memory").unwrap();
    let guest = f
        .backend
        .launch(&f.spec, f.path(), Launch::Restore(snap.clone()))
        .await
        .unwrap();
    assert_eq!(f.calls(), ["PUT /metrics", "PUT /snapshot/load"]);
    assert_eq!(
        f.body("PUT /snapshot/load"),
        json!({
            "snapshot_path": snap.state().to_str().unwrap(),
            "mem_backend": {"backend_type": "File", "backend_path": snap.memory().to_str().unwrap()},
            "resume_vm": true,
        })
    );
    console_shows(guest.as_ref(), "restored").await;
    // The restored guest is driven like a booted one.
    guest.pause().await.unwrap();
    guest.resume().await.unwrap();
    f.requests();
}

// --- The console ---------------------------------------------------------------------------------

#[tokio::test]
async fn console_round_trips_through_stdin_and_stdout() {
    let f = Fixture::new("vm-console");
    let guest = f.boot().await;
    let console = guest.console();
    console.write(b"echo hello from the host\n").await.unwrap();
    console_shows(guest.as_ref(), "echo hello from the host\n").await;
    // Many writers, each write whole.
    let (a, b) = tokio::join!(console.write(b"[aaaa]"), console.write(b"[bbbb]"));
    a.unwrap();
    b.unwrap();
    let seen = console_shows(guest.as_ref(), "]").await;
    let seen = console_shows(
        guest.as_ref(),
        if seen.contains("[aaaa]") {
            "[bbbb]"
        } else {
            "[aaaa]"
        },
    )
    .await;
    assert!(seen.contains("[aaaa]") && seen.contains("[bbbb]"));

    guest.kill().await.unwrap();
    assert!(matches!(
        console.write(b"x").await,
        Err(ConsoleError::Closed)
    ));
}

// --- Failures --------------------------------------------------------------------------------------

#[tokio::test]
async fn a_dying_process_is_reported_as_crashed_with_its_stderr() {
    let f = Fixture::new("vm-crash");
    f.control(json!({"exit_after_start": {
        "code": 1,
        "stderr": "Error: RunWithApi(MicroVMStoppedWithError(GenericError)) KVM internal error. Suberror: 1",
        "delay_ms": 100,
    }}));
    let guest = f.boot().await;
    match ended(guest.as_ref()).await {
        GuestExit::Crashed(why) => {
            assert!(why.contains("status 1"), "{why}");
            assert!(why.contains("KVM internal error"), "{why}");
        }
        GuestExit::Shutdown => panic!("a crash was reported as a shutdown"),
    }
    assert!(guest.console().is_closed());
    assert!(matches!(
        guest.metrics().await,
        Err(HypervisorError::GuestFailed(why)) if why.contains("KVM internal error")
    ));
}

#[tokio::test]
async fn a_killed_process_is_reported_as_crashed() {
    let f = Fixture::new("vm-sigkill");
    let guest = f.boot().await;
    let pid = rustix::process::Pid::from_raw(i32::try_from(guest.pid()).unwrap()).unwrap();
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).unwrap();
    match ended(guest.as_ref()).await {
        GuestExit::Crashed(why) => assert!(why.contains("signal 9"), "{why}"),
        GuestExit::Shutdown => panic!("a crash was reported as a shutdown"),
    }
}

#[tokio::test]
async fn a_process_that_dies_during_launch_fails_the_launch() {
    let f = Fixture::new("vm-early");
    f.control(json!({"exit_at_once": {"code": 153, "stderr": "Error: Invalid instance ID"}}));
    match f.backend.launch(&f.spec, f.path(), Launch::Boot).await {
        Err(HypervisorError::GuestFailed(why)) => {
            assert!(
                why.contains("status 153") && why.contains("Invalid instance ID"),
                "{why}"
            );
        }
        other => panic!("expected GuestFailed, got {:?}", other.map(|g| g.pid())),
    }
}

#[tokio::test]
async fn a_refused_request_fails_the_launch_with_the_fault_message_and_kills() {
    let f = Fixture::new("vm-refused");
    f.control(json!({"refuse": {"PUT /boot-source": "Invalid kernel path: No such file"}}));
    match f.backend.launch(&f.spec, f.path(), Launch::Boot).await {
        Err(HypervisorError::Protocol { backend, message }) => {
            assert_eq!(backend, "firecracker");
            assert!(message.contains("PUT /boot-source"), "{message}");
            assert!(message.contains("400"), "{message}");
            assert!(
                message.contains("Invalid kernel path: No such file"),
                "{message}"
            );
        }
        other => panic!("expected Protocol, got {:?}", other.map(|g| g.pid())),
    }
    // The half-configured process was killed and reaped (the supervisor removes its pid file).
    until("the process is reaped", || {
        !f.path().join("firecracker.pid").exists()
    })
    .await;
    assert_eq!(
        f.calls(),
        ["PUT /metrics", "PUT /machine-config", "PUT /boot-source"]
    );
}

#[tokio::test]
async fn dropping_the_guest_kills_the_process() {
    let f = Fixture::new("vm-drop");
    let guest = f.boot().await;
    let pid = guest.pid();
    drop(guest);
    until("the process dies", || !pid_alive(pid)).await;
}

// --- Adoption --------------------------------------------------------------------------------------

#[tokio::test]
async fn adopt_reconnects_to_a_live_process() {
    let f = Fixture::new("vm-adopt");
    // Nothing to adopt yet.
    assert!(matches!(
        f.backend.adopt(&f.spec, f.path()).await,
        Err(HypervisorError::NotFound(_))
    ));
    // A pid file naming a live process that is not this VM's Firecracker.
    std::fs::write(
        f.path().join("firecracker.pid"),
        std::process::id().to_string(),
    )
    .unwrap();
    assert!(matches!(
        f.backend.adopt(&f.spec, f.path()).await,
        Err(HypervisorError::NotFound(_))
    ));
    std::fs::remove_file(f.path().join("firecracker.pid")).unwrap();

    let launched = f.boot().await;
    let pid = launched.pid();
    // As if the launcher were gone: its handles must not kill the process.
    std::mem::forget(launched);

    let guest = f.backend.adopt(&f.spec, f.path()).await.unwrap();
    assert_eq!(guest.pid(), pid);
    assert!(matches!(
        guest.console().write(b"x").await,
        Err(ConsoleError::NoInput)
    ));
    guest.pause().await.unwrap();
    guest.resume().await.unwrap();
    guest.metrics().await.unwrap();
    let calls = f.calls();
    assert!(calls.contains(&"GET /".to_owned()), "{calls:?}");

    guest.kill().await.unwrap();
    assert_eq!(ended(guest.as_ref()).await, GuestExit::Shutdown);
    assert!(!pid_alive(pid));
}

// --- Devices through the Vmm ----------------------------------------------------------------------

#[tokio::test]
async fn devices_are_cold_plugged_with_ids_never_reused() {
    use std::sync::Arc;
    use vmfleet_core::{Device, ImageName, SharePath};
    use vmfleet_hypervisor::{CreateVm, ErrorClass, HostDevices, Hypervisor, ImageCatalog, Vmm};

    let f = Fixture::new("vm-unused");
    let catalog = f.path().join("images");
    std::fs::create_dir_all(&catalog).unwrap();
    std::fs::write(catalog.join("vmlinux"), b"kernel").unwrap();
    std::fs::write(catalog.join("rootfs"), b"rootfs").unwrap();
    let shares = f.path().join("shares");
    std::fs::create_dir_all(shares.join("data")).unwrap();
    let gpu = PciAddress::new("0000:01:00.0").unwrap();
    let vmm = Vmm::new(
        Arc::new(f.backend.clone()),
        ImageCatalog::open(&catalog).unwrap(),
        f.path().join("vms"),
    )
    .unwrap()
    .with_host_devices(HostDevices {
        share_root: Some(shares),
        passthrough: vec![gpu.clone()],
    });
    let id = VmId::new("vm-dev").unwrap();
    vmm.create(CreateVm {
        id: id.clone(),
        resources: f.spec.resources,
        kernel: ImageName::new("vmlinux").unwrap(),
        initrd: None,
        rootfs: ImageName::new("rootfs").unwrap(),
        boot_args: None,
        labels: Default::default(),
    })
    .await
    .unwrap();

    let rng = Device::Rng {};
    assert_eq!(vmm.add_device(&id, &rng).await.unwrap().as_str(), "dev0");
    let again = vmm.add_device(&id, &rng).await.unwrap_err();
    assert_eq!(again.class(), ErrorClass::Conflict, "{again}");
    // What Firecracker has no device for is 501, saying so.
    let share = vmm
        .add_share(
            &id,
            &ShareTag::new("data").unwrap(),
            &SharePath::new("data").unwrap(),
            true,
        )
        .await
        .unwrap_err();
    assert_eq!(share.class(), ErrorClass::Unsupported);
    assert!(
        share.to_string().contains("no shared filesystem device"),
        "{share}"
    );
    let pci = vmm
        .add_device(&id, &Device::PciPassthrough { address: gpu })
        .await
        .unwrap_err();
    assert_eq!(pci.class(), ErrorClass::Unsupported, "{pci}");
    // Removed, the id is not given again.
    let dev0 = DeviceId::nth(0);
    vmm.remove_device(&id, &dev0).await.unwrap();
    let gone = vmm.remove_device(&id, &dev0).await.unwrap_err();
    assert_eq!(gone.class(), ErrorClass::NotFound, "{gone}");
    assert_eq!(vmm.add_device(&id, &rng).await.unwrap().as_str(), "dev1");

    // The entropy device is configured before the boot; a running guest takes no device.
    vmm.boot(&id).await.unwrap();
    let vm_dir = f.path().join("vms/vm-dev");
    let requests = std::fs::read_to_string(vm_dir.join("fake-requests.jsonl")).unwrap();
    assert!(requests.contains("/entropy"), "{requests}");
    let running = vmm.add_device(&id, &rng).await.unwrap_err();
    assert_eq!(running.class(), ErrorClass::Conflict);
    assert!(running.to_string().contains("cannot hot-plug"), "{running}");
    let running = vmm.remove_device(&id, &DeviceId::nth(1)).await.unwrap_err();
    assert!(running.to_string().contains("cannot hot-plug"), "{running}");
    vmm.delete(&id).await.unwrap();
}
