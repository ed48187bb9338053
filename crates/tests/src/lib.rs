//! Helpers shared by the integration tests in `tests/`.

#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vmfleet_hypervisor::{Console, ConsoleReader, ImageCatalog};

/// The `vmfleet` binary of this build, next to the test executables (`cargo build` puts it
/// there; the README's test command builds it before running the tests).
pub fn vmfleet_bin() -> PathBuf {
    let exe = std::env::current_exe().unwrap_or_default();
    // target/<profile>/deps/<test> -> target/<profile>/vmfleet
    let bin = exe
        .parent()
        .and_then(|deps| deps.parent())
        .map(|dir| dir.join("vmfleet"))
        .unwrap_or_default();
    assert!(
        bin.is_file(),
        "{} is missing: build it first with `cargo build --bins`",
        bin.display()
    );
    bin
}

/// Where `scripts/guest/build-guest-image.sh` put the test guest.
pub fn guest_image_dir() -> PathBuf {
    let dir = std::env::var_os("VMFLEET_IMAGE_CACHE")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            let cache = std::env::var_os("XDG_CACHE_HOME")
                .map(PathBuf::from)
                .unwrap_or_else(|| Path::new(&std::env::var("HOME").unwrap()).join(".cache"));
            cache.join("vmfleet/images")
        });
    for f in ["vmlinux.bin", "initrd.img", "rootfs.ext4"] {
        assert!(
            dir.join(f).is_file(),
            "the test guest is missing ({}): run scripts/guest/build-guest-image.sh",
            dir.join(f).display()
        );
    }
    dir
}

/// A catalog under `root` holding the test guest: `vmlinux.bin`, its companion initrd
/// `vmlinux.bin.initrd`, and `rootfs.ext4`.
pub fn guest_catalog(root: &Path) -> ImageCatalog {
    let src = guest_image_dir();
    let cat = ImageCatalog::open(root).unwrap();
    for (from, to) in [
        ("vmlinux.bin", "vmlinux.bin"),
        ("initrd.img", "vmlinux.bin.initrd"),
        ("rootfs.ext4", "rootfs.ext4"),
    ] {
        let dest = cat.root().join(to);
        if std::fs::hard_link(src.join(from), &dest).is_err() {
            std::fs::copy(src.join(from), &dest).unwrap();
        }
    }
    cat
}

/// Reads a console from the moment it is made (scrollback included) and waits for text.
pub struct ConsoleWatch {
    reader: ConsoleReader,
    pub seen: Vec<u8>,
}

impl ConsoleWatch {
    pub fn new(console: &Console) -> Self {
        let reader = console.subscribe();
        let seen = reader.scrollback.to_vec();
        ConsoleWatch { reader, seen }
    }

    /// Waits until `needle` appears after byte `from` of what was seen; returns the offset
    /// just past it.
    pub async fn wait_for_from(&mut self, from: usize, needle: &str, timeout: Duration) -> usize {
        let deadline = Instant::now() + timeout;
        loop {
            if let Some(at) = find(&self.seen[from.min(self.seen.len())..], needle.as_bytes()) {
                return from + at + needle.len();
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match tokio::time::timeout(left, self.reader.live.recv()).await {
                Ok(Ok(chunk)) => self.seen.extend_from_slice(&chunk),
                Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) => {}
                Ok(Err(_)) => panic!(
                    "console closed before {needle:?}; it showed:\n{}",
                    self.text()
                ),
                Err(_) => panic!(
                    "{needle:?} not on the console within {timeout:?}; it showed:\n{}",
                    self.text()
                ),
            }
        }
    }

    pub async fn wait_for(&mut self, needle: &str, timeout: Duration) -> usize {
        self.wait_for_from(0, needle, timeout).await
    }

    /// Collects output for `d` and returns it.
    pub async fn collect_for(&mut self, d: Duration) -> String {
        let start = self.seen.len();
        let deadline = Instant::now() + d;
        while let Ok(Ok(chunk)) = tokio::time::timeout(
            deadline.saturating_duration_since(Instant::now()),
            self.reader.live.recv(),
        )
        .await
        {
            self.seen.extend_from_slice(&chunk);
        }
        String::from_utf8_lossy(&self.seen[start..]).into_owned()
    }

    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }

    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen).into_owned()
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

/// A short random token for `echo vmfleet-<token>` checks.
pub fn token() -> String {
    vmfleet_core::uuid_v4()[..8].to_owned()
}

/// A node registry that records what the `/fleet` namespace tells it: a test double for the
/// store, so the namespace's own behaviour can be checked line by line.
#[derive(Default)]
pub struct Recorder {
    pub keys: std::collections::HashMap<String, (vmfleet_core::NodeId, String)>,
    log: Log,
}

type Log = std::sync::Arc<std::sync::Mutex<Vec<String>>>;

/// A node's heartbeats, recorded in its [`Recorder`]'s log.
struct RecordedHeartbeats {
    node: vmfleet_core::NodeId,
    log: Log,
}

#[async_trait::async_trait]
impl vmfleet_server::fleet::HeartbeatSink for RecordedHeartbeats {
    async fn heartbeat(&self, hb: vmfleet_wire::fleet::HeartbeatReport) -> Result<(), String> {
        let line = format!("heartbeat {} {:?}", self.node, hb.status);
        self.log.lock().unwrap().push(line);
        Ok(())
    }
}

impl Recorder {
    pub fn log(&self) -> Vec<String> {
        self.log.lock().unwrap().clone()
    }

    fn push(&self, s: String) {
        self.log.lock().unwrap().push(s);
    }
}

#[async_trait::async_trait]
impl vmfleet_server::fleet::NodeRegistry for Recorder {
    async fn authenticate(&self, host_key: &str) -> Option<(vmfleet_core::NodeId, String)> {
        self.keys.get(host_key).cloned()
    }
    async fn node_online(&self, node: &vmfleet_core::NodeId) {
        self.push(format!("online {node}"));
    }
    async fn node_offline(&self, node: &vmfleet_core::NodeId) {
        self.push(format!("offline {node}"));
    }
    fn heartbeats(
        &self,
        node: &vmfleet_core::NodeId,
    ) -> std::sync::Arc<dyn vmfleet_server::fleet::HeartbeatSink> {
        std::sync::Arc::new(RecordedHeartbeats {
            node: node.clone(),
            log: self.log.clone(),
        })
    }
    async fn instance_started(
        &self,
        node: &vmfleet_core::NodeId,
        ev: &vmfleet_wire::fleet::InstanceStarted,
    ) -> Result<(), String> {
        self.push(format!("started {node} {}", ev.rental_id));
        Ok(())
    }
    async fn instance_stopped(
        &self,
        node: &vmfleet_core::NodeId,
        ev: &vmfleet_wire::fleet::InstanceStopped,
    ) -> Result<(), String> {
        self.push(format!(
            "stopped {node} {} {:?} {}",
            ev.rental_id,
            ev.reason,
            ev.error_message.clone().unwrap_or_default()
        ));
        Ok(())
    }
    async fn vm_state(
        &self,
        node: &vmfleet_core::NodeId,
        report: &vmfleet_wire::fleet::VmReport,
    ) -> Result<(), String> {
        self.push(format!("vm {node} {} {}", report.vm_id, report.state));
        Ok(())
    }
}

/// Waits until a line of the recorder starts with `prefix`.
pub async fn wait_log(rec: &Recorder, prefix: &str) {
    for _ in 0..500 {
        if rec.log().iter().any(|l| l.starts_with(prefix)) {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{prefix:?} never logged: {:?}", rec.log());
}

/// Kills, when dropped, every process whose command line mentions `dir`: the guests a test
/// started under its temporary directory. Guests outlive their owner by design (an agent
/// restart must not take them down), so a test that fails half-way would otherwise leave its
/// QEMU running.
pub struct KillOnDrop(pub PathBuf);

/// The processes (other than this one) whose command line mentions `dir`, sorted.
pub fn pids_mentioning(dir: &Path) -> Vec<i32> {
    let needle = dir.display().to_string();
    let mut pids = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return pids;
    };
    for p in procs.flatten() {
        let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
            continue;
        };
        if pid == std::process::id() as i32 {
            continue;
        }
        let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
            continue;
        };
        if String::from_utf8_lossy(&cmd).contains(&needle) {
            pids.push(pid);
        }
    }
    pids.sort_unstable();
    pids
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let needle = self.0.display().to_string();
        let Ok(procs) = std::fs::read_dir("/proc") else {
            return;
        };
        for p in procs.flatten() {
            let Some(pid) = p.file_name().to_str().and_then(|n| n.parse::<i32>().ok()) else {
                continue;
            };
            if pid == std::process::id() as i32 {
                continue;
            }
            let Ok(cmd) = std::fs::read(p.path().join("cmdline")) else {
                continue;
            };
            if String::from_utf8_lossy(&cmd).contains(&needle) {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid.to_string()])
                    .status();
            }
        }
    }
}

/// A control plane with only `/fleet`, over a [`Recorder`] that knows `node` by `key`, on a
/// loopback port. Returns its URL, the recorder and the namespace.
pub async fn fleet_server(
    key: &str,
    node: &str,
    period: Duration,
) -> (
    String,
    std::sync::Arc<Recorder>,
    vmfleet_server::fleet::Fleet,
) {
    let mut rec = Recorder::default();
    rec.keys.insert(
        key.into(),
        (
            vmfleet_core::NodeId::new(node).unwrap(),
            format!("{node}-host"),
        ),
    );
    let rec = std::sync::Arc::new(rec);
    let state = vmfleet_server::AppState::new(vmfleet_auth::JwtKey::generate())
        .with_fleet(rec.clone(), period);
    let fleet = state.fleet.clone().unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(vmfleet_server::serve(
        listener,
        state,
        std::future::pending(),
    ));
    (format!("http://{addr}"), rec, fleet)
}

/// The test guest as a VM to create: 1 vCPU, 256 MiB, the catalog's default images.
pub fn test_vm(id: &str) -> vmfleet_hypervisor::CreateVm {
    vmfleet_hypervisor::CreateVm {
        id: vmfleet_core::VmId::new(id).unwrap(),
        resources: vmfleet_core::VmResources {
            vcpu_count: 1,
            mem_size_mib: 256,
            disk_size: 1,
        },
        kernel: vmfleet_core::ImageName::new("vmlinux.bin").unwrap(),
        initrd: None,
        rootfs: vmfleet_core::ImageName::new("rootfs.ext4").unwrap(),
        boot_args: None,
        labels: Default::default(),
    }
}

impl ConsoleWatch {
    /// Types `echo <marker>-$((40+2))` until the shell prints `<marker>-42`, up to `tries`
    /// seconds: whether a (possibly still booting) guest's shell answers.
    pub async fn shell_answers(&mut self, console: &Console, tries: u32) -> bool {
        let t = token();
        for _ in 0..tries {
            if console
                .write(format!("echo ans-$((40+2))-{t}\n").as_bytes())
                .await
                .is_err()
            {
                return false;
            }
            if self
                .collect_for(Duration::from_millis(1000))
                .await
                .contains(&format!("ans-42-{t}"))
            {
                return true;
            }
        }
        false
    }
}

/// `POST /nodes` as the admin: registers node `name` and returns its id and host key.
pub async fn register_node(
    base: &str,
    admin: &str,
    name: &str,
) -> vmfleet_wire::api::CreateNodeResponse {
    reqwest::Client::new()
        .post(format!("{base}/nodes"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({ "name": name }))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// `GET /nodes` as the admin.
pub async fn list_nodes(base: &str, admin: &str) -> Vec<vmfleet_wire::api::NodeView> {
    reqwest::Client::new()
        .get(format!("{base}/nodes"))
        .bearer_auth(admin.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// Seed 002's REST API of one control plane, as a client with a token calls it.
pub struct Api {
    pub base: String,
    pub http: reqwest::Client,
}

impl Api {
    pub fn new(base: &str) -> Self {
        Api {
            base: base.to_owned(),
            http: reqwest::Client::new(),
        }
    }

    /// `POST path` with `body` and `token`: the status and the body (JSON, or the text as a
    /// JSON string when it is not JSON).
    pub async fn post(
        &self,
        path: &str,
        token: &str,
        body: serde_json::Value,
    ) -> (u16, serde_json::Value) {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(token)
            .json(&body)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(serde_json::Value::String(text)),
        )
    }

    /// Waits until `/vm/info` of `vm` (`{build_id, owner}`) shows `state`, failing at once
    /// on `error`.
    pub async fn wait_state(
        &self,
        token: &str,
        vm: &serde_json::Value,
        state: &str,
    ) -> serde_json::Value {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let (status, info) = self.post("/vm/info", token, vm.clone()).await;
            assert_eq!(status, 200, "{info}");
            if info["state"] == state {
                return info;
            }
            assert_ne!(info["state"], "error", "{info}");
            assert!(Instant::now() < deadline, "never {state}: {info}");
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

/// Signs `wallet` in to the control plane at `base` the way a browser does (`/auth/nonce`, an
/// EIP-4361 message for `domain` signed like `personal_sign`, `/auth/login`); its JWT.
pub async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    domain: &str,
    wallet: &vmfleet_auth::siwe::testing::TestWallet,
) -> String {
    let n: serde_json::Value = http
        .get(format!("{base}/auth/nonce"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let text = vmfleet_auth::siwe::testing::message(
        domain,
        &wallet.address(),
        n["nonce"].as_str().unwrap(),
        vmfleet_core::Timestamp::now().as_str(),
    );
    let login: serde_json::Value = http
        .post(format!("{base}/auth/login"))
        .json(&serde_json::json!({"message": text, "signature": wallet.sign(&text).unwrap()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    login["token"].as_str().unwrap().to_owned()
}

/// A control plane and its local agent as `vmfleet up` runs them, over a data dir under `dir`
/// on a loopback port, once the local node is online with its capacity known. Returns them,
/// the base URL and the admin token.
pub async fn plane_with_local_node(
    dir: &Path,
) -> (
    vmfleet_cli::ControlPlane,
    vmfleet_cli::local::LocalAgent,
    String,
    String,
) {
    plane_with_local_node_ws(dir, Default::default()).await
}

/// [`plane_with_local_node`] whose node offers its VMs `host` (shared directories, PCI
/// devices).
pub async fn plane_with_local_node_offering(
    dir: &Path,
    host: vmfleet_hypervisor::HostDevices,
) -> (
    vmfleet_cli::ControlPlane,
    vmfleet_cli::local::LocalAgent,
    String,
    String,
) {
    local_node(
        plane_with(dir, Default::default(), Default::default()).await,
        host,
    )
    .await
}

/// [`plane_with_local_node`] with the WebSocket API's limits set to `ws`.
pub async fn plane_with_local_node_ws(
    dir: &Path,
    ws: vmfleet_server::ws::WsConfig,
) -> (
    vmfleet_cli::ControlPlane,
    vmfleet_cli::local::LocalAgent,
    String,
    String,
) {
    local_node(
        plane_with(dir, Default::default(), ws).await,
        Default::default(),
    )
    .await
}

/// Starts `plane`'s local node, offering `host`, and waits until it is online with room.
async fn local_node(
    plane: vmfleet_cli::ControlPlane,
    host: vmfleet_hypervisor::HostDevices,
) -> (
    vmfleet_cli::ControlPlane,
    vmfleet_cli::local::LocalAgent,
    String,
    String,
) {
    let agent = vmfleet_cli::local::start(
        &plane,
        "127.0.0.1:0".parse().unwrap(),
        host,
        vmfleet_hypervisor::DEFAULT_SNAPSHOT_LIMIT,
    )
    .await
    .unwrap();
    let base = format!("http://{}", plane.addr());
    let admin = admin_token(&plane);
    let deadline = Instant::now() + Duration::from_secs(30);
    while !list_nodes(&base, &admin)
        .await
        .iter()
        .any(|n| n.status == vmfleet_wire::api::NodeState::Online && n.capacity.vcpus > 0)
    {
        assert!(
            Instant::now() < deadline,
            "the local node never came online"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    (plane, agent, base, admin)
}

/// A control plane on loopback, without an agent, its data in `dir/data`, with `rate_limits`.
pub async fn plane(
    dir: &Path,
    rate_limits: vmfleet_server::ratelimit::RateLimits,
) -> vmfleet_cli::ControlPlane {
    plane_with(dir, rate_limits, Default::default()).await
}

async fn plane_with(
    dir: &Path,
    rate_limits: vmfleet_server::ratelimit::RateLimits,
    ws: vmfleet_server::ws::WsConfig,
) -> vmfleet_cli::ControlPlane {
    vmfleet_cli::ControlPlane::start(vmfleet_cli::PlaneOptions {
        data_dir: dir.join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        token_ttl: Duration::from_secs(3600),
        database: None,
        domains: Vec::new(),
        scheduler: Default::default(),
        rate_limits,
        ws,
        fleet_batch: vmfleet_server::fleet::batch::DEFAULT_WINDOW,
    })
    .await
    .unwrap()
}

/// The admin token the control plane wrote into its data dir.
pub fn admin_token(plane: &vmfleet_cli::ControlPlane) -> String {
    std::fs::read_to_string(plane.data_dir().admin_token_path())
        .unwrap()
        .trim()
        .to_owned()
}

/// A node beside a control plane: registered through `POST /nodes`, its agent (in this
/// process) dialling the control plane with a QEMU (TCG) hypervisor whose VMs live under its
/// own directory.
pub struct TestNode {
    pub id: vmfleet_core::NodeId,
    pub vmm: std::sync::Arc<dyn vmfleet_hypervisor::Hypervisor>,
    /// Where its VMs' directories are.
    pub vms_dir: PathBuf,
    pub agent: tokio::task::JoinHandle<()>,
}

impl Drop for TestNode {
    fn drop(&mut self) {
        self.agent.abort();
    }
}

/// Registers node `name` with the control plane at `base` and starts its agent over `dir`;
/// returns once the node is online with its capacity known.
pub async fn start_node(base: &str, admin: &str, name: &str, dir: &Path) -> TestNode {
    use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
    let reg = register_node(base, admin, name).await;
    std::fs::create_dir_all(dir).unwrap();
    let vms_dir = dir.join("vms");
    let vmm: std::sync::Arc<dyn vmfleet_hypervisor::Hypervisor> = std::sync::Arc::new(
        vmfleet_hypervisor::Vmm::new(
            std::sync::Arc::new(QemuBackend::new(QemuConfig {
                accel: Accel::Tcg,
                ..QemuConfig::default()
            })),
            guest_catalog(&dir.join("images")),
            &vms_dir,
        )
        .unwrap(),
    );
    let upstream = vmfleet_agent::upstream::Upstream::new(
        base,
        reg.host_api_key,
        Duration::from_secs(1),
        None,
        vmfleet_agent::host::HostSampler::new(dir),
    )
    .with_vms(vmm.clone());
    let agent = tokio::spawn(async move { upstream.run(std::future::pending()).await });
    let deadline = Instant::now() + Duration::from_secs(30);
    while !list_nodes(base, admin).await.iter().any(|n| {
        n.node_id == reg.node_id
            && n.status == vmfleet_wire::api::NodeState::Online
            && n.capacity.vcpus > 0
    }) {
        assert!(Instant::now() < deadline, "node {name} never came online");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    TestNode {
        id: reg.node_id,
        vmm,
        vms_dir,
        agent,
    }
}
