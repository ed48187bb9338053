//! The scheduler, rental bookkeeping and metering, end to end: a real control plane (SQLite
//! file, REST, `/fleet`) whose scheduler tells nodes through the real `/fleet` dispatch, and
//! fake agents (our Socket.IO client) that answer `start_instance` as told: confirm, refuse or
//! stay silent.

#![allow(clippy::unwrap_used)]

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use vmfleet_agent::sio::{Incoming, SioClient};
use vmfleet_auth::{JwtKey, Permission, Role, Subject};
use vmfleet_core::{NodeId, RentalId, Timestamp, VmId, WalletAddress};
use vmfleet_server::AppState;
use vmfleet_server::scheduler::{Policy, SchedulerConfig};
use vmfleet_store::Store;

/// A control plane on loopback over an SQLite file, with tokens to call it.
struct Plane {
    base: String,
    store: Store,
    admin: String,
    jwt: Arc<JwtKey>,
    _dir: tempfile::TempDir,
}

impl Plane {
    async fn start(config: SchedulerConfig) -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let url = vmfleet_store::sqlite_url(&dir.path().join("vmfleet.db")).unwrap();
        let store = Store::open(&url).await.unwrap();
        let jwt = JwtKey::generate();
        let admin = jwt.issue_for(
            &Subject::Operator("admin".into()),
            Role::Admin,
            &[Permission::Read, Permission::Control],
            Timestamp::now().unix_seconds(),
            3600,
        );
        // A long heartbeat period: nodes go offline only when a test disconnects them.
        let state = AppState::new(jwt)
            .with_store(store.clone(), Duration::from_secs(3600))
            .with_scheduler_config(config);
        let jwt = state.jwt.clone();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(vmfleet_server::serve(
            listener,
            state,
            std::future::pending(),
        ));
        Plane {
            base,
            store,
            admin,
            jwt,
            _dir: dir,
        }
    }

    fn wallet_token(&self, who: WalletAddress) -> String {
        self.jwt.issue_for(
            &Subject::Wallet(who),
            Role::Standard,
            &[Permission::Read, Permission::Control],
            Timestamp::now().unix_seconds(),
            3600,
        )
    }

    async fn call(
        &self,
        method: reqwest::Method,
        path: &str,
        token: &str,
        body: Option<Value>,
    ) -> (u16, Value) {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.base))
            .bearer_auth(token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let resp = req.send().await.unwrap();
        let status = resp.status().as_u16();
        let text = resp.text().await.unwrap();
        (
            status,
            serde_json::from_str(&text).unwrap_or(Value::String(text)),
        )
    }

    async fn create(&self, token: &str, name: &str, cpu: f64, ram: &str) -> (u16, Value) {
        self.call(
            reqwest::Method::POST,
            "/containers",
            token,
            Some(json!({ "name": name, "image": "busybox:latest", "cpuCores": cpu, "ramLimit": ram })),
        )
        .await
    }

    async fn container(&self, token: &str, id: &str) -> Value {
        let (status, body) = self
            .call(
                reqwest::Method::GET,
                &format!("/containers/{id}"),
                token,
                None,
            )
            .await;
        assert_eq!(status, 200, "{body}");
        body
    }

    /// Registers a node and returns its host key.
    async fn node(&self, name: &str) -> (NodeId, String) {
        let created = vmfleet_tests::register_node(&self.base, &self.admin, name).await;
        (created.node_id, created.host_api_key)
    }
}

fn wallet(n: u8) -> WalletAddress {
    let mut b = [0x22u8; 20];
    b[19] = n;
    WalletAddress::from_bytes(b)
}

/// How a fake agent answers `start_instance`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// `instance_started`, then a positive ack: what a real agent does.
    Confirm,
    /// `instance_stopped` with reason error, then a refused ack: a node out of room.
    Refuse,
    /// Nothing at all.
    Silent,
}

/// An agent connected to `/fleet` that reports `capacity` and answers commands per its mode.
struct FakeAgent {
    client: SioClient,
    node: NodeId,
    /// The rentals it was told to start, in order.
    starts: Arc<Mutex<Vec<RentalId>>>,
    task: tokio::task::JoinHandle<()>,
}

fn heartbeat(node: &NodeId, vcpus: u32, memory_mb: u64) -> Value {
    let mut v: Value =
        serde_json::from_str(include_str!("../../wire/tests/fixtures/001/heartbeat.json")).unwrap();
    v["nodeId"] = json!(node);
    v["capacity"] = json!({ "vcpus": vcpus, "memoryMb": memory_mb, "diskGb": 100, "gpus": 0 });
    v
}

fn started(rental: &str) -> Value {
    json!({
        "rentalId": rental,
        "containerId": format!("c-{rental}"),
        "connectionInfo": { "sshHost": "10.9.0.7", "sshPort": 2222, "additionalPorts": {} }
    })
}

async fn ack_of(client: &SioClient, name: &str, payload: &Value) -> Value {
    client
        .emit_with_ack(name, payload, Duration::from_secs(10))
        .await
        .unwrap()
}

impl FakeAgent {
    async fn connect(base: &str, key: &str, vcpus: u32, memory_mb: u64, mode: Mode) -> FakeAgent {
        let (client, mut incoming) = SioClient::connect(base, "/fleet", key).await.unwrap();
        let node = loop {
            match incoming.recv().await {
                Some(Incoming::Event { name, payload, .. }) if name == "node_info" => {
                    break NodeId::new(payload["nodeId"].as_str().unwrap()).unwrap();
                }
                Some(Incoming::Event { .. }) => continue,
                other => panic!("no node_info: {other:?}"),
            }
        };
        let ack = ack_of(&client, "heartbeat", &heartbeat(&node, vcpus, memory_mb)).await;
        assert_eq!(ack, json!({"success": true}));
        let starts = Arc::new(Mutex::new(Vec::new()));
        let task = {
            let client = client.clone();
            let starts = starts.clone();
            tokio::spawn(async move {
                while let Some(Incoming::Event { name, payload, ack }) = incoming.recv().await {
                    let client = client.clone();
                    let starts = starts.clone();
                    tokio::spawn(async move {
                        let reply = match name.as_str() {
                            "start_instance" => {
                                let rental = payload["rentalId"].as_str().unwrap().to_owned();
                                starts.lock().unwrap().push(RentalId::new(&rental).unwrap());
                                match mode {
                                    Mode::Silent => return,
                                    Mode::Confirm => {
                                        ack_of(&client, "instance_started", &started(&rental))
                                            .await;
                                        json!({"success": true})
                                    }
                                    Mode::Refuse => {
                                        let ev = json!({
                                            "rentalId": rental, "containerId": "none",
                                            "reason": "error",
                                            "errorMessage": "insufficient capacity: test node is full"
                                        });
                                        ack_of(&client, "instance_stopped", &ev).await;
                                        json!({"success": false, "message": "insufficient capacity"})
                                    }
                                }
                            }
                            "stop_instance" => {
                                let ev = json!({
                                    "rentalId": payload["rentalId"],
                                    "containerId": payload["containerId"],
                                    "reason": "requested", "errorMessage": null
                                });
                                ack_of(&client, "instance_stopped", &ev).await;
                                json!({"success": true})
                            }
                            _ => json!({"success": true}),
                        };
                        if let Some(id) = ack {
                            let _ = client.ack(id, &reply).await;
                        }
                    });
                }
            })
        };
        FakeAgent {
            client,
            node,
            starts,
            task,
        }
    }

    fn starts(&self) -> Vec<RentalId> {
        self.starts.lock().unwrap().clone()
    }

    async fn disconnect(self) {
        self.client.disconnect().await;
        self.task.abort();
    }
}

fn config(policy: Policy, confirm: Duration) -> SchedulerConfig {
    SchedulerConfig {
        policy,
        confirm_timeout: confirm,
        max_attempts: 3,
    }
}

async fn wait_until<F, Fut>(what: &str, mut f: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + Duration::from_secs(10);
    while !f().await {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn node_status(store: &Store, node: &NodeId) -> vmfleet_store::NodeStatus {
    store.get_node(node).await.unwrap().status
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn parallel_creates_never_overbook_a_node() {
    let plane = Arc::new(Plane::start(config(Policy::Spread, Duration::from_secs(5))).await);
    let mut agents = Vec::new();
    for i in 0..3 {
        let (_, key) = plane.node(&format!("small-{i}")).await;
        // Room for two containers of 1 vCPU each.
        agents.push(FakeAgent::connect(&plane.base, &key, 2, 4096, Mode::Confirm).await);
    }
    let token = plane.wallet_token(wallet(1));
    let mut tasks = Vec::new();
    for i in 0..20 {
        let plane = plane.clone();
        let token = token.clone();
        tasks.push(tokio::spawn(async move {
            plane.create(&token, &format!("c{i}"), 1.0, "256m").await
        }));
    }
    let mut placed = HashMap::<String, u32>::new();
    let mut refused = 0;
    for t in tasks {
        let (status, body) = t.await.unwrap();
        match status {
            201 => {
                assert_eq!(body["state"], "running", "{body}");
                *placed
                    .entry(body["node"].as_str().unwrap().to_owned())
                    .or_default() += 1;
            }
            409 => {
                refused += 1;
                let msg = body["message"].as_str().unwrap();
                assert!(msg.contains("no ONLINE node has room"), "{msg}");
                assert_eq!(body["code"], "CONFLICT", "{body}");
            }
            other => panic!("unexpected {other}: {body}"),
        }
    }
    assert_eq!(placed.values().sum::<u32>(), 6, "{placed:?}");
    assert_eq!(refused, 14);
    for a in &agents {
        assert_eq!(placed.get(a.node.as_str()), Some(&2), "{placed:?}");
        assert_eq!(a.starts().len(), 2, "node {} was told too much", a.node);
        let used = plane.store.used_resources(&a.node).await.unwrap();
        assert!(used.vcpus <= 2, "node {} overbooked: {used:?}", a.node);
    }
    // The surplus stays visible, in state error with its reason, and holds no room.
    let (_, all) = plane
        .call(reqwest::Method::GET, "/containers", &token, None)
        .await;
    let all = all.as_array().unwrap();
    assert_eq!(all.len(), 20);
    let errors: Vec<&Value> = all.iter().filter(|c| c["state"] == "error").collect();
    assert_eq!(errors.len(), 14);
    assert!(errors.iter().all(|c| {
        c["node"].is_null()
            && c["reason"]
                .as_str()
                .unwrap()
                .contains("no ONLINE node has room")
    }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_silent_or_refusing_node_is_given_up_for_the_next() {
    let plane = Plane::start(config(Policy::Spread, Duration::from_millis(800))).await;
    // Spread tries the roomiest first: the silent node, then the refusing one, then the good one.
    let (_, silent_key) = plane.node("silent").await;
    let silent = FakeAgent::connect(&plane.base, &silent_key, 16, 16384, Mode::Silent).await;
    let (_, refusing_key) = plane.node("refusing").await;
    let refusing = FakeAgent::connect(&plane.base, &refusing_key, 8, 16384, Mode::Refuse).await;
    let (_, good_key) = plane.node("good").await;
    let good = FakeAgent::connect(&plane.base, &good_key, 4, 16384, Mode::Confirm).await;
    let token = plane.wallet_token(wallet(2));

    let (status, body) = plane.create(&token, "web", 1.0, "128m").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["node"], json!(good.node), "{body}");
    assert_eq!(body["state"], "running");
    assert_eq!(body["connectionInfo"]["sshPort"], 2222);
    assert_eq!(silent.starts().len(), 1);
    assert_eq!(refusing.starts().len(), 1);
    let rental = RentalId::new(body["rentalId"].as_str().unwrap()).unwrap();
    assert_eq!(
        good.starts(),
        vec![rental.clone()],
        "each try has its own rental"
    );
    assert!(!silent.starts().contains(&rental));
    // The store agrees: one open rental, on the good node; the abandoned tries are audited.
    let id = VmId::new(body["id"].as_str().unwrap()).unwrap();
    let open = plane.store.open_rental(&id).await.unwrap().unwrap();
    assert_eq!((open.id, open.node), (rental, good.node.clone()));
    let audit = plane
        .store
        .list_audit(&vmfleet_store::AuditTarget::Vm(id))
        .await
        .unwrap();
    let unplaced: Vec<String> = audit
        .iter()
        .filter(|e| e.action == "vm.unplace")
        .map(|e| e.detail["reason"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(unplaced.len(), 2, "{unplaced:?}");
    assert!(unplaced[0].contains("did not confirm"), "{unplaced:?}");
    assert!(unplaced[1].contains("test node is full"), "{unplaced:?}");

    // With only the silent and the refusing node left, a placement fails, saying why.
    good.disconnect().await;
    wait_until("the good node offline", || async {
        node_status(
            &plane.store,
            &NodeId::new(body["node"].as_str().unwrap()).unwrap(),
        )
        .await
            == vmfleet_store::NodeStatus::Offline
    })
    .await;
    let (status, failed) = plane.create(&token, "api", 1.0, "128m").await;
    assert_eq!(status, 503, "{failed}");
    let msg = failed["message"].as_str().unwrap();
    assert!(
        msg.contains("placement failed on every node tried"),
        "{msg}"
    );
    assert!(
        msg.contains(silent.node.as_str()) && msg.contains(refusing.node.as_str()),
        "{msg}"
    );
    let (_, list) = plane
        .call(reqwest::Method::GET, "/containers", &token, None)
        .await;
    let api = list
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["name"] == "api")
        .unwrap()
        .clone();
    assert_eq!(api["state"], "error");
    assert!(api["node"].is_null());
    assert!(
        api["reason"].as_str().unwrap().contains("did not confirm"),
        "{api}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn maintenance_and_offline_nodes_are_never_chosen() {
    let plane = Plane::start(config(Policy::Spread, Duration::from_secs(5))).await;
    let (drained_id, drained_key) = plane.node("drained").await;
    let drained = FakeAgent::connect(&plane.base, &drained_key, 64, 65536, Mode::Confirm).await;
    let (gone_id, gone_key) = plane.node("gone").await;
    let gone = FakeAgent::connect(&plane.base, &gone_key, 64, 65536, Mode::Confirm).await;
    let (_, small_key) = plane.node("small").await;
    let small = FakeAgent::connect(&plane.base, &small_key, 2, 2048, Mode::Confirm).await;

    let (status, body) = plane
        .call(
            reqwest::Method::POST,
            &format!("/nodes/{drained_id}/drain"),
            &plane.admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["status"], "MAINTENANCE");
    gone.disconnect().await;
    wait_until("the node offline", || async {
        node_status(&plane.store, &gone_id).await == vmfleet_store::NodeStatus::Offline
    })
    .await;

    let token = plane.wallet_token(wallet(3));
    for i in 0..2 {
        let (status, body) = plane.create(&token, &format!("ok{i}"), 1.0, "512m").await;
        assert_eq!(status, 201, "{body}");
        assert_eq!(body["node"], json!(small.node));
    }
    // Only the drained and the offline node would have room now.
    let (status, body) = plane.create(&token, "big", 8.0, "8g").await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no ONLINE node has room")
    );
    assert!(
        drained.starts().is_empty(),
        "a drained node was told to start"
    );
    assert_eq!(small.starts().len(), 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_offline_node_leaves_its_workloads_unknown_until_it_reports_again() {
    let plane = Plane::start(config(Policy::Pack, Duration::from_secs(5))).await;
    let (node, key) = plane.node("flaky").await;
    let agent = FakeAgent::connect(&plane.base, &key, 4, 8192, Mode::Confirm).await;
    let token = plane.wallet_token(wallet(4));
    let (status, body) = plane.create(&token, "db", 1.0, "256m").await;
    assert_eq!(status, 201, "{body}");
    let id = body["id"].as_str().unwrap().to_owned();
    let vm = VmId::new(&id).unwrap();
    let rental = body["rentalId"].as_str().unwrap().to_owned();
    let before = plane.store.open_rental(&vm).await.unwrap().unwrap();

    agent.disconnect().await;
    wait_until("the container unknown", || async {
        plane.container(&token, &id).await["state"] == "unknown"
    })
    .await;
    let shown = plane.container(&token, &id).await;
    assert!(
        shown["reason"].as_str().unwrap().contains("offline"),
        "{shown}"
    );
    assert_eq!(shown["node"], json!(node), "the placement stays");
    assert_eq!(
        plane.store.open_rental(&vm).await.unwrap(),
        Some(before.clone()),
        "the rental stays open"
    );
    // Its node holds its room: nothing forgotten.
    assert_eq!(plane.store.used_resources(&node).await.unwrap().vcpus, 1);
    // It cannot be deleted while its node is out of reach (it may still run there), and
    // trying changes nothing.
    let lost_first = plane.store.get_vm(&vm).await.unwrap().unknown_since;
    let (status, body) = plane
        .call(
            reqwest::Method::DELETE,
            &format!("/containers/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("offline"),
        "{body}"
    );
    let still = plane.store.get_vm(&vm).await.unwrap();
    assert_eq!(
        (still.state, still.unknown_since),
        (vmfleet_core::VmState::Unknown, lost_first)
    );

    // The agent comes back and re-reports what it runs (as the real agent does on reconnect).
    let again = FakeAgent::connect(&plane.base, &key, 4, 8192, Mode::Confirm).await;
    let ack = ack_of(&again.client, "instance_started", &started(&rental)).await;
    assert_eq!(ack, json!({"success": true}));
    let shown = plane.container(&token, &id).await;
    assert_eq!(shown["state"], "running", "{shown}");
    assert!(shown["reason"].is_null());
    // Still the one rental, started once.
    assert_eq!(plane.store.open_rental(&vm).await.unwrap(), Some(before));

    // Gone again, and this time the container died in the outage: the rental ends when the
    // node was lost, not when the agent said so.
    again.disconnect().await;
    wait_until("the container unknown again", || async {
        plane.container(&token, &id).await["state"] == "unknown"
    })
    .await;
    let lost_at = plane
        .store
        .get_vm(&vm)
        .await
        .unwrap()
        .unknown_since
        .unwrap();
    tokio::time::sleep(Duration::from_millis(1500)).await;
    let third = FakeAgent::connect(&plane.base, &key, 4, 8192, Mode::Confirm).await;
    let ev = json!({
        "rentalId": rental, "containerId": format!("c-{rental}"), "reason": "error",
        "errorMessage": "the container ended (exit code 137) while the control plane was out of reach"
    });
    assert_eq!(
        ack_of(&third.client, "instance_stopped", &ev).await,
        json!({"success": true})
    );
    let shown = plane.container(&token, &id).await;
    assert_eq!(shown["state"], "error");
    assert!(shown["reason"].as_str().unwrap().contains("exit code 137"));
    let ended = plane
        .store
        .get_rental(&RentalId::new(&rental).unwrap())
        .await
        .unwrap();
    assert_eq!(
        ended.ended_at,
        Some(lost_at),
        "billed up to the outage only"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stopped_rental_is_metered_per_owner_and_per_node() {
    let plane = Plane::start(config(Policy::Spread, Duration::from_secs(5))).await;
    let (node, key) = plane.node("meter").await;
    let agent = FakeAgent::connect(&plane.base, &key, 8, 16384, Mode::Confirm).await;
    let (_, other_key) = plane.node("other").await;
    let other = FakeAgent::connect(&plane.base, &other_key, 1, 512, Mode::Confirm).await;
    let owner = wallet(5);
    let token = plane.wallet_token(owner);
    let stranger = plane.wallet_token(wallet(6));

    let (status, body) = plane.create(&token, "job", 2.0, "1g").await;
    assert_eq!(status, 201, "{body}");
    assert_eq!(body["node"], json!(node));
    let id = body["id"].as_str().unwrap().to_owned();
    let rental = body["rentalId"].as_str().unwrap().to_owned();
    let t0 = Instant::now();

    // Another node's report about this rental is refused and changes nothing; a repeated
    // report from its own node starts nothing twice.
    let ack = ack_of(&other.client, "instance_started", &started(&rental)).await;
    assert_eq!(ack["success"], false, "{ack}");
    assert!(
        ack["message"]
            .as_str()
            .unwrap()
            .contains("does not run on node"),
        "{ack}"
    );
    let ev =
        json!({"rentalId": rental, "containerId": "x", "reason": "error", "errorMessage": "no"});
    assert_eq!(
        ack_of(&other.client, "instance_stopped", &ev).await["success"],
        false
    );
    assert_eq!(
        ack_of(&agent.client, "instance_started", &started(&rental)).await["success"],
        true
    );
    assert_eq!(plane.container(&token, &id).await["state"], "running");

    // Someone else's container is not there for them.
    let (status, _) = plane
        .call(
            reqwest::Method::GET,
            &format!("/containers/{id}"),
            &stranger,
            None,
        )
        .await;
    assert_eq!(status, 404);
    let (status, _) = plane
        .call(
            reqwest::Method::DELETE,
            &format!("/containers/{id}"),
            &stranger,
            None,
        )
        .await;
    assert_eq!(status, 404);

    tokio::time::sleep(Duration::from_millis(1200)).await;
    let (status, body) = plane
        .call(
            reqwest::Method::DELETE,
            &format!("/containers/{id}"),
            &token,
            None,
        )
        .await;
    let ran = t0.elapsed().as_secs_f64();
    assert_eq!(status, 200, "{body}");
    let (status, _) = plane
        .call(
            reqwest::Method::GET,
            &format!("/containers/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 404, "deleted");
    // A late repeat of the stop meters nothing twice.
    let ev = json!({"rentalId": rental, "containerId": format!("c-{rental}"), "reason": "requested", "errorMessage": null});
    assert_eq!(
        ack_of(&agent.client, "instance_stopped", &ev).await["success"],
        true
    );

    let check = |u: &Value| {
        assert_eq!(u["records"], 1, "{u}");
        let vcpu = u["vcpuSeconds"].as_f64().unwrap();
        let mem = u["memoryGibSeconds"].as_f64().unwrap();
        assert!(
            vcpu >= 2.0 * 1.2 && vcpu <= 2.0 * (ran + 0.5),
            "{u} after {ran} s"
        );
        assert!(
            (mem - vcpu / 2.0).abs() < 1e-6,
            "1 GiB for as long as 2 vCPUs: {u}"
        );
        assert_eq!(u["gpuSeconds"], 0.0);
    };
    let (status, mine) = plane
        .call(reqwest::Method::GET, "/usage", &token, None)
        .await;
    assert_eq!(status, 200, "{mine}");
    check(&mine);
    assert_eq!(mine["owner"], json!(owner));
    let (status, by_node) = plane
        .call(
            reqwest::Method::GET,
            &format!("/usage?node={node}"),
            &plane.admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{by_node}");
    check(&by_node);
    let (_, by_owner) = plane
        .call(
            reqwest::Method::GET,
            &format!("/usage?owner={owner}"),
            &plane.admin,
            None,
        )
        .await;
    check(&by_owner);
    // Nobody else's usage, and only an admin reads a node's or another owner's.
    let (_, theirs) = plane
        .call(reqwest::Method::GET, "/usage", &stranger, None)
        .await;
    assert_eq!(theirs["records"], 0, "{theirs}");
    let (status, _) = plane
        .call(
            reqwest::Method::GET,
            &format!("/usage?node={node}"),
            &stranger,
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, body) = plane
        .call(
            reqwest::Method::GET,
            "/usage?colour=blue",
            &plane.admin,
            None,
        )
        .await;
    assert_eq!(status, 400, "{body}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn create_requests_are_checked() {
    let plane = Plane::start(config(Policy::Spread, Duration::from_secs(5))).await;
    let token = plane.wallet_token(wallet(7));
    let post = |body: Value| {
        let plane = &plane;
        let token = token.clone();
        async move {
            plane
                .call(reqwest::Method::POST, "/containers", &token, Some(body))
                .await
        }
    };
    for (body, status) in [
        (
            json!({"name": "a", "image": "busybox", "cpuCores": 1, "ramLimit": "64m", "x": 1}),
            400,
        ),
        (
            json!({"name": "../a", "image": "busybox", "cpuCores": 1, "ramLimit": "64m"}),
            400,
        ),
        (
            json!({"name": "a", "image": "busybox", "cpuCores": 0, "ramLimit": "64m"}),
            400,
        ),
        (
            json!({"name": "a", "image": "busybox", "cpuCores": 1, "ramLimit": "1k"}),
            400,
        ),
        (
            json!({"name": "a", "image": "busybox", "cpuCores": 1, "ramLimit": "lots"}),
            400,
        ),
        (
            json!({"name": "a", "image": "busybox", "cpuCores": 1, "ramLimit": "64m",
                   "owner": format!("{}", wallet(8))}),
            403,
        ),
    ] {
        let (got, resp) = post(body.clone()).await;
        assert_eq!(got, status, "{body} -> {resp}");
        assert_eq!(resp["success"], false, "{resp}");
    }
    let (status, _) = plane
        .call(
            reqwest::Method::POST,
            "/containers",
            "not-a-token",
            Some(json!({})),
        )
        .await;
    assert_eq!(status, 401);
    // An operator must say whose it is.
    let (status, body) = plane.create(&plane.admin, "a", 1.0, "64m").await;
    assert_eq!(status, 400, "{body}");
    // An admin may create for any wallet; with no node at all it cannot be placed, and the
    // owner sees why.
    let (status, body) = plane
        .call(
            reqwest::Method::POST,
            "/containers",
            &plane.admin,
            Some(
                json!({"name": "theirs", "image": "busybox", "cpuCores": 0.5,
                        "ramLimit": "64m", "owner": wallet(8)}),
            ),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    assert!(
        body["message"]
            .as_str()
            .unwrap()
            .contains("no ONLINE node has room for 1 vCPUs"),
        "{body}"
    );
    let (status, list) = plane
        .call(
            reqwest::Method::GET,
            "/containers",
            &plane.wallet_token(wallet(8)),
            None,
        )
        .await;
    assert_eq!(status, 200);
    assert_eq!(list[0]["name"], "theirs", "{list}");
    assert_eq!(list[0]["state"], "error", "{list}");
    // The name is taken until it is deleted.
    let (status, body) = plane
        .call(
            reqwest::Method::POST,
            "/containers",
            &plane.admin,
            Some(
                json!({"name": "theirs", "image": "busybox", "cpuCores": 0.5,
                        "ramLimit": "64m", "owner": wallet(8)}),
            ),
        )
        .await;
    assert_eq!(status, 409, "{body}");
    let id = list[0]["id"].as_str().unwrap();
    let (status, body) = plane
        .call(
            reqwest::Method::DELETE,
            &format!("/containers/{id}"),
            &plane.admin,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
}

/// The whole path with a real agent and a real container engine: `POST /containers` ->
/// scheduler -> `start_instance` over `/fleet` -> a container in a dockerd this test runs ->
/// `instance_started` -> running; `DELETE` -> `stop_instance` -> `instance_stopped` -> a
/// usage record.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_container_runs_through_a_real_agent_and_is_metered() {
    use vmfleet_hypervisor::docker::{ScratchDaemon, import_busybox};
    const IMAGE: &str = "vmfleet-test/busybox:latest";
    let daemon = ScratchDaemon::start()
        .await
        .expect("dockerd must start for this test (root, docker.io)");
    let docker = daemon.runtime("localhost");
    import_busybox(&docker, IMAGE).await.unwrap();

    let plane = Plane::start(config(Policy::Spread, Duration::from_secs(60))).await;
    let (node, key) = plane.node("docker-box").await;
    let dir = tempfile::tempdir().unwrap();
    let upstream = vmfleet_agent::upstream::Upstream::new(
        plane.base.clone(),
        key,
        Duration::from_millis(300),
        Some(docker.clone()),
        vmfleet_agent::host::HostSampler::new(dir.path()),
    );
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        upstream
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    wait_until("the node's capacity", || async {
        let n = plane.store.get_node(&node).await.unwrap();
        n.status == vmfleet_store::NodeStatus::Online && n.capacity.vcpus > 0
    })
    .await;

    let owner = wallet(9);
    let token = plane.wallet_token(owner);
    let body = json!({
        "name": "real", "image": IMAGE, "cpuCores": 0.5, "ramLimit": "64m",
        "proxyPortMapping": {"8888": 0}, "envVars": {"GREETING": "hello"}
    });
    let (status, created) = plane
        .call(reqwest::Method::POST, "/containers", &token, Some(body))
        .await;
    assert_eq!(status, 201, "{created}");
    assert_eq!(created["state"], "running");
    assert_eq!(created["node"], json!(node));
    assert_eq!(
        created["connectionInfo"]["sshHost"], "localhost",
        "{created}"
    );
    let running = docker.list().await.unwrap();
    assert_eq!(running.len(), 1);
    assert_eq!(running[0].nano_cpus, 500_000_000);
    assert_eq!(running[0].memory_bytes, 64 << 20);
    assert_eq!(
        running[0].rental_id.as_ref().map(|r| r.to_string()),
        created["rentalId"].as_str().map(str::to_owned)
    );

    tokio::time::sleep(Duration::from_millis(1000)).await;
    let id = created["id"].as_str().unwrap();
    let (status, body) = plane
        .call(
            reqwest::Method::DELETE,
            &format!("/containers/{id}"),
            &token,
            None,
        )
        .await;
    assert_eq!(status, 200, "{body}");
    assert!(docker.list().await.unwrap().is_empty());
    let (_, usage) = plane
        .call(reqwest::Method::GET, "/usage", &token, None)
        .await;
    assert_eq!(usage["records"], 1, "{usage}");
    // Billed on what was reserved: one whole vCPU and 64 MiB, for a second or more.
    let vcpu = usage["vcpuSeconds"].as_f64().unwrap();
    assert!(vcpu >= 1.0, "{usage}");
    assert!(
        (usage["memoryGibSeconds"].as_f64().unwrap() - vcpu / 16.0).abs() < 1e-6,
        "{usage}"
    );

    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap();
    daemon.shutdown().await.unwrap();
}

/// A VM operation that cannot reach the VM's node (offline) is refused with 409 and leaves
/// the VM as it was: `unknown`, lost at the same moment, not turned into `error`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operation_that_cannot_reach_an_offline_node_changes_nothing() {
    let plane = Plane::start(config(Policy::Pack, Duration::from_secs(5))).await;
    let (node, key) = plane.node("away").await;
    let agent = FakeAgent::connect(&plane.base, &key, 4, 8192, Mode::Confirm).await;
    let owner = wallet(9);
    let token = plane.wallet_token(owner);
    plane
        .store
        .upsert_user(&owner, Role::Standard)
        .await
        .unwrap();
    let vm = plane
        .store
        .insert_vm(&vmfleet_store::NewVm {
            id: VmId::new("vm-away").unwrap(),
            kind: vmfleet_store::WorkloadKind::Vm,
            owner,
            name: vmfleet_core::VmName::new("away").unwrap(),
            spec: json!({}),
            resources: vmfleet_store::Resources {
                vcpus: 1,
                memory_mib: 256,
                disk_gib: 1,
                gpus: 0,
            },
        })
        .await
        .unwrap();
    assert!(plane.store.reserve(&node, &vm.id).await.unwrap());
    plane
        .store
        .update_vm_state(&vm.id, vmfleet_core::VmState::Running, None, None)
        .await
        .unwrap();
    agent.disconnect().await;
    wait_until("the VM unknown", || async {
        plane.store.get_vm(&vm.id).await.unwrap().state == vmfleet_core::VmState::Unknown
    })
    .await;
    let lost = plane.store.get_vm(&vm.id).await.unwrap();
    let me = owner.to_string();
    for (path, body) in [
        ("/vm/snapshot", json!({"build_id": "vm-away", "owner": me})),
        (
            "/vm/snapshot/list",
            json!({"build_id": "vm-away", "owner": me}),
        ),
        (
            "/vm/snapshot/delete",
            json!({"build_id": "vm-away", "owner": me, "snapshot_id": "s"}),
        ),
        (
            "/vm/disk/add",
            json!({"build_id": "vm-away", "owner": me, "size_gb": 1}),
        ),
    ] {
        let (status, answer) = plane
            .call(reqwest::Method::POST, path, &token, Some(body))
            .await;
        assert_eq!(status, 409, "{path}: {answer}");
        assert!(
            answer["message"].as_str().unwrap().contains("offline"),
            "{path}: {answer}"
        );
        let now = plane.store.get_vm(&vm.id).await.unwrap();
        assert_eq!(
            (
                now.state,
                now.unknown_since.clone(),
                now.state_reason.as_deref()
            ),
            (
                lost.state,
                lost.unknown_since.clone(),
                lost.state_reason.as_deref()
            ),
            "{path} changed the VM"
        );
    }
}
