//! The control plane over real loopback sockets: health, ping, the admin token, and seed
//! 002's error body for every kind of bad request.

#![allow(clippy::unwrap_used)]

use std::os::unix::fs::PermissionsExt;
use std::time::Duration;

use vmfleet_auth::{Role, Subject};
use vmfleet_cli::{ControlPlane, DataDir, PlaneOptions};
use vmfleet_client::{Client, ClientError};
use vmfleet_core::Timestamp;
use vmfleet_wire::api::{ApiErrorCode, ErrorBody, Health};

async fn start(dir: &std::path::Path) -> ControlPlane {
    vmfleet_tests::plane(dir, Default::default()).await
}

#[tokio::test]
async fn health_and_ping() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path()).await;
    let client = Client::new(&format!("http://{}", plane.addr())).unwrap();
    assert_eq!(client.health().await.unwrap(), Health::Healthy);
    let pong = client.ping().await.unwrap();
    assert_eq!(pong.message, "pong");
    assert!((pong.timestamp - Timestamp::now().unix_seconds()).abs() < 5);
    // The raw body of /health is the JSON string of seed 002.
    let raw = reqwest::get(format!("http://{}/health", plane.addr()))
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert_eq!(raw, "\"healthy\"");
    plane.stop().await.unwrap();
}

#[tokio::test]
async fn admin_token_is_private_verifiable_and_survives_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path()).await;
    let data = plane.data_dir().clone();
    let path = data.admin_token_path();
    assert_eq!(
        std::fs::metadata(&path).unwrap().permissions().mode() & 0o777,
        0o600
    );
    assert_eq!(
        std::fs::metadata(data.root()).unwrap().permissions().mode() & 0o777,
        0o700
    );
    let token = std::fs::read_to_string(&path).unwrap();
    let now = Timestamp::now().unix_seconds();
    let verified = data.jwt_key().unwrap().verify(token.trim(), now).unwrap();
    assert_eq!(verified.role, Role::Admin);
    assert_eq!(verified.subject, Subject::Operator("admin".into()));
    assert!(verified.expires_at <= now + 3600);
    plane.stop().await.unwrap();

    // A restart keeps the signing key: the old token still verifies.
    let plane = start(dir.path()).await;
    let key = DataDir::open(dir.path().join("data"))
        .unwrap()
        .jwt_key()
        .unwrap();
    key.verify(token.trim(), now).unwrap();
    plane.stop().await.unwrap();
}

async fn raw(
    plane: &ControlPlane,
    method: reqwest::Method,
    path: &str,
    body: Vec<u8>,
) -> (u16, ErrorBody) {
    let resp = reqwest::Client::new()
        .request(method, format!("http://{}{path}", plane.addr()))
        .header("content-type", "application/json")
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    let text = resp.text().await.unwrap();
    let body = vmfleet_wire::decode_body::<ErrorBody>("error", &text)
        .unwrap_or_else(|e| panic!("{path}: not an error body ({e}): {text}"));
    (status, body)
}

#[tokio::test]
async fn bad_requests_get_the_seed_error_body() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path()).await;
    use reqwest::Method;
    let cases: Vec<(Method, &str, Vec<u8>, u16, ApiErrorCode)> = vec![
        (
            Method::POST,
            "/ping",
            b"{".to_vec(),
            400,
            ApiErrorCode::BadRequest,
        ),
        (
            Method::POST,
            "/ping",
            b"[]".to_vec(),
            400,
            ApiErrorCode::BadRequest,
        ),
        (
            Method::POST,
            "/ping",
            br#"{"message":7}"#.to_vec(),
            400,
            ApiErrorCode::BadRequest,
        ),
        (
            Method::POST,
            "/ping",
            br#"{"message":"ping","x":1}"#.to_vec(),
            400,
            ApiErrorCode::BadRequest,
        ),
        (
            Method::POST,
            "/ping",
            vec![0xff, 0xfe],
            400,
            ApiErrorCode::BadRequest,
        ),
        (
            Method::POST,
            "/ping",
            vec![b' '; 70_000],
            413,
            ApiErrorCode::PayloadTooLarge,
        ),
        (
            Method::GET,
            "/no/such/thing",
            vec![],
            404,
            ApiErrorCode::NotFound,
        ),
        (
            Method::DELETE,
            "/health",
            vec![],
            405,
            ApiErrorCode::BadRequest,
        ),
    ];
    for (method, path, body, status, code) in cases {
        let (got_status, got) = raw(&plane, method.clone(), path, body).await;
        assert_eq!(
            (got_status, got.code),
            (status, Some(code)),
            "{method} {path}: {got:?}"
        );
        assert!(!got.message.is_empty());
    }
    // The client surfaces the API's error as a typed error with the message.
    let client = Client::new(&format!("http://{}", plane.addr())).unwrap();
    assert!(matches!(
        Client::new("ftp://x"),
        Err(ClientError::BadUrl(_))
    ));
    drop(client);
    plane.stop().await.unwrap();
}

#[test]
fn listen_conflict_is_a_clear_error() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let dir = tempfile::tempdir().unwrap();
        let plane = start(dir.path()).await;
        let err = ControlPlane::start(PlaneOptions {
            data_dir: dir.path().join("other"),
            listen: plane.addr(),
            token_ttl: Duration::from_secs(60),
            database: None,
            domains: Vec::new(),
            scheduler: Default::default(),
            rate_limits: Default::default(),
            ws: Default::default(),
            fleet_batch: vmfleet_server::fleet::batch::DEFAULT_WINDOW,
        })
        .await
        .err()
        .unwrap();
        assert!(
            vmfleet_cli::error_chain(&err)
                .starts_with(&format!("cannot listen on {}", plane.addr()))
        );
        plane.stop().await.unwrap();
    });
}

#[tokio::test]
async fn nodes_are_registered_by_an_admin_and_their_keys_kept_hashed() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path()).await;
    let base = format!("http://{}", plane.addr());
    let admin = std::fs::read_to_string(plane.data_dir().admin_token_path()).unwrap();
    let http = reqwest::Client::new();

    // Without a token, with a bad one, and with a non-admin one: refused.
    let r = http.get(format!("{base}/nodes")).send().await.unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let r = http
        .get(format!("{base}/nodes"))
        .bearer_auth("x.y.z")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 401);
    let key = plane.data_dir().jwt_key().unwrap();
    let now = Timestamp::now().unix_seconds();
    let user = key.issue_for(
        &Subject::Wallet(
            "0x1234567890abcdef1234567890abcdef12345678"
                .parse()
                .unwrap(),
        ),
        Role::Standard,
        &[vmfleet_auth::Permission::Read],
        now,
        60,
    );
    let r = http
        .get(format!("{base}/nodes"))
        .bearer_auth(&user)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let body: ErrorBody = r.json().await.unwrap();
    assert_eq!(body.code, Some(ApiErrorCode::Forbidden));

    let created: vmfleet_wire::api::CreateNodeResponse = http
        .post(format!("{base}/nodes"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({"name": "gpu-box-1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let dup = http
        .post(format!("{base}/nodes"))
        .bearer_auth(admin.trim())
        .json(&serde_json::json!({"name": "gpu-box-1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(dup.status().as_u16(), 409);

    // The key opens /fleet for that node; the node shows ONLINE with its heartbeat.
    let (client, mut incoming) =
        vmfleet_agent::sio::SioClient::connect(&base, "/fleet", &created.host_api_key)
            .await
            .unwrap();
    let Some(vmfleet_agent::sio::Incoming::Event { payload, .. }) = incoming.recv().await else {
        panic!("no node_info")
    };
    assert_eq!(payload["nodeId"], created.node_id.as_str());
    let mut hb: serde_json::Value =
        serde_json::from_str(include_str!("../../wire/tests/fixtures/001/heartbeat.json")).unwrap();
    hb["nodeId"] = serde_json::json!(created.node_id.as_str());
    let ack = client
        .emit_with_ack("heartbeat", &hb, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ack, serde_json::json!({"success": true}));
    let nodes: Vec<vmfleet_wire::api::NodeView> = http
        .get(format!("{base}/nodes"))
        .bearer_auth(admin.trim())
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = nodes.iter().find(|n| n.node_id == created.node_id).unwrap();
    assert_eq!(node.status, vmfleet_wire::api::NodeState::Online);
    assert_eq!(node.metrics.as_ref().unwrap().ram_total_mb, 65536);
    assert!(node.last_heartbeat.is_some());
    // Later heartbeats are acknowledged at once and written in the next batch.
    hb["metrics"]["ramTotalMb"] = serde_json::json!(32768);
    let ack = client
        .emit_with_ack("heartbeat", &hb, Duration::from_secs(5))
        .await
        .unwrap();
    assert_eq!(ack, serde_json::json!({"success": true}));
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    loop {
        let nodes = vmfleet_tests::list_nodes(&base, &admin).await;
        let node = nodes.iter().find(|n| n.node_id == created.node_id).unwrap();
        if node.metrics.as_ref().unwrap().ram_total_mb == 32768 {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the heartbeat was never written"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // The database holds the key's hash, never the key.
    client.disconnect().await;
    plane.stop().await.unwrap();
    let db = std::fs::read(dir.path().join("data/vmfleet.db")).unwrap();
    let wal = std::fs::read(dir.path().join("data/vmfleet.db-wal")).unwrap_or_default();
    for bytes in [&db, &wal] {
        assert!(
            !bytes
                .windows(created.host_api_key.len())
                .any(|w| w == created.host_api_key.as_bytes()),
            "the host key is stored in clear"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn an_admin_drains_undrains_and_removes_a_node_with_a_live_agent() {
    let dir = tempfile::tempdir().unwrap();
    let plane = start(dir.path()).await;
    let base = format!("http://{}", plane.addr());
    let admin = std::fs::read_to_string(plane.data_dir().admin_token_path()).unwrap();
    let admin = admin.trim();
    let http = reqwest::Client::new();
    let created = vmfleet_tests::register_node(&base, admin, "box-d").await;
    let upstream = vmfleet_agent::upstream::Upstream::new(
        base.clone(),
        created.host_api_key.clone(),
        Duration::from_millis(300),
        None,
        vmfleet_agent::host::HostSampler::new(dir.path()),
    );
    let agent_state = upstream.state();
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let agent = tokio::spawn(async move {
        upstream
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    let node_url = format!("{base}/nodes/{}", created.node_id);
    let status = async || vmfleet_tests::list_nodes(&base, admin).await[0].status;
    use vmfleet_wire::api::NodeState;
    for _ in 0..100 {
        if status().await == NodeState::Online {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(status().await, NodeState::Online);

    let drained: vmfleet_wire::api::NodeView = http
        .post(format!("{node_url}/drain"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(drained.status, NodeState::Maintenance);
    assert!(agent_state.is_draining(), "the agent was not told");
    // Heartbeats keep it in maintenance.
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(status().await, NodeState::Maintenance);

    let undrained: vmfleet_wire::api::NodeView = http
        .post(format!("{node_url}/undrain"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(undrained.status, NodeState::Online);
    assert!(!agent_state.is_draining());

    // Removal: the node goes, its agent is dropped (and refused when it dials again).
    let r = http
        .delete(&node_url)
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    let r = http
        .delete(&node_url)
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 404);
    let r = http
        .post(format!("{base}/nodes/..%2Fx/drain"))
        .bearer_auth(admin)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), agent)
        .await
        .unwrap()
        .unwrap();
    plane.stop().await.unwrap();
}
