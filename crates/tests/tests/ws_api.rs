//! Seeds 003/004's WebSocket API end to end, on a real guest: the monitor streams status and
//! real metrics and runs commands for real; the console goes browser -> control plane ->
//! agent -> guest serial and back, to several viewers, with scrollback for a late one; every
//! refusal is the document's error code.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use base64::Engine;
use base64::engine::general_purpose::STANDARD as B64;
use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vmfleet_auth::siwe::testing::TestWallet;
use vmfleet_core::Timestamp;
use vmfleet_server::ws::WsConfig;
use vmfleet_tests::{KillOnDrop, sign_in, token};

/// The test plane's console idle timeout.
const IDLE: Duration = Duration::from_secs(30);

type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

async fn connect(url: &str) -> Ws {
    tokio_tungstenite::connect_async(url).await.unwrap().0
}

/// The next JSON frame of type `ty` (others skipped), within `within`.
async fn next_of(ws: &mut Ws, ty: &str, within: Duration) -> Value {
    let deadline = Instant::now() + within;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let msg = tokio::time::timeout(left, ws.next())
            .await
            .unwrap_or_else(|_| panic!("no {ty} message within {within:?}"));
        match msg {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == ty {
                    return v;
                }
            }
            Some(Ok(_)) => {}
            other => panic!("the socket ended waiting for {ty}: {other:?}"),
        }
    }
}

fn msg(ty: &str, data: Value) -> Message {
    Message::text(
        json!({"type": ty, "timestamp": Timestamp::now().as_str(), "data": data}).to_string(),
    )
}

/// Reads console frames until their text contains `needle`; all the text read, or `Err` with
/// it when `within` ran out.
async fn read_console(ws: &mut Ws, needle: &str, within: Duration) -> Result<String, String> {
    let deadline = Instant::now() + within;
    let mut text = String::new();
    while !text.contains(needle) {
        let left = deadline.saturating_duration_since(Instant::now());
        let frame = tokio::time::timeout(left, async {
            loop {
                match ws.next().await {
                    Some(Ok(Message::Text(t))) => {
                        let v: Value = serde_json::from_str(t.as_str()).unwrap();
                        if v["type"] == "console" {
                            return v;
                        }
                    }
                    Some(Ok(_)) => {}
                    other => panic!("the console ended: {other:?}"),
                }
            }
        })
        .await;
        match frame {
            Ok(v) => text.push_str(v["data"]["content"].as_str().unwrap()),
            Err(_) => return Err(text),
        }
    }
    Ok(text)
}

async fn console_until(ws: &mut Ws, needle: &str, within: Duration) -> String {
    read_console(ws, needle, within)
        .await
        .unwrap_or_else(|text| panic!("{needle:?} never on the console: {text}"))
}

/// Types `line` every 3 s, up to `tries` times, until the console shows `needle` (a guest
/// still booting drops what is typed): whether it did.
async fn type_until(ws: &mut Ws, line: &str, needle: &str, tries: u32) -> bool {
    for _ in 0..tries {
        ws.send(msg("console_input", json!({ "content": line })))
            .await
            .unwrap();
        if read_console(ws, needle, Duration::from_secs(3))
            .await
            .is_ok()
        {
            return true;
        }
    }
    false
}

#[tokio::test(flavor = "multi_thread")]
async fn monitor_commands_and_console_on_a_real_guest() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let ws = WsConfig {
        console_idle: Some(IDLE),
        ..WsConfig::default()
    };
    let (plane, agent, base, _admin) =
        vmfleet_tests::plane_with_local_node_ws(dir.path(), ws).await;
    let addr = plane.addr();
    let http = reqwest::Client::new();

    // A wallet signs in, creates and boots a VM named "web".
    let wallet = TestWallet::from_secret([8u8; 32]).unwrap();
    let jwt = sign_in(&http, &base, &addr.to_string(), &wallet).await;
    let me = wallet.address().to_string();
    let post = |path: &str, body: Value| {
        http.post(format!("{base}{path}"))
            .bearer_auth(&jwt)
            .json(&body)
            .send()
    };
    let created: Value = post(
        "/vm/create",
        json!({"name": "web", "owner": me, "vm_config": {"vcpu_count": 1, "mem_size_mib": 256}}),
    )
    .await
    .unwrap()
    .json()
    .await
    .unwrap();
    let id = created["vm_id"].as_str().unwrap().to_owned();
    let r = post("/vm/boot", json!({"build_id": id, "owner": me}))
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 200);

    // The monitor: connection, status, real metrics every second.
    let mut mon = connect(&format!(
        "ws://{addr}/ws/vms/web?token={jwt}&metrics_interval=1"
    ))
    .await;
    let c = next_of(&mut mon, "connection", Duration::from_secs(5)).await;
    assert_eq!(c["data"], json!({"status": "connected", "vmName": "web"}));
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let s = next_of(&mut mon, "status", Duration::from_secs(60)).await;
        if s["data"]["status"] == "running" && s["data"]["state"] == "running" {
            break;
        }
        assert!(Instant::now() < deadline, "never running: {s}");
    }
    let m = next_of(&mut mon, "metrics", Duration::from_secs(10)).await;
    assert!(m["data"]["memory"]["total"].as_u64().unwrap() > 0, "{m}");

    // Commands run for real: suspend, resume, each answered with its request id.
    mon.send(msg(
        "command",
        json!({"action": "suspend", "requestId": "req-s"}),
    ))
    .await
    .unwrap();
    let r = next_of(&mut mon, "response", Duration::from_secs(60)).await;
    assert_eq!(r["data"]["requestId"], "req-s");
    assert_eq!(r["data"]["success"], json!(true), "{r}");
    let info: Value = post("/vm/info", json!({"build_id": id, "owner": me}))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(info["state"], "paused");
    mon.send(msg("command", json!({"action": "resume"})))
        .await
        .unwrap();
    let r = next_of(&mut mon, "response", Duration::from_secs(60)).await;
    assert_eq!(r["data"]["success"], json!(true), "{r}");
    assert!(
        !r["data"]["requestId"].as_str().unwrap().is_empty(),
        "a request id is generated"
    );
    // Bad input is an error message; the connection stays and answers heartbeats.
    mon.send(Message::text("{not json")).await.unwrap();
    let e = next_of(&mut mon, "error", Duration::from_secs(5)).await;
    assert_eq!(e["data"]["code"], "INVALID_COMMAND");
    mon.send(msg("command", json!({"action": "explode"})))
        .await
        .unwrap();
    let e = next_of(&mut mon, "error", Duration::from_secs(5)).await;
    assert_eq!(e["data"]["code"], "INVALID_COMMAND");
    mon.send(Message::text("x".repeat(100_000))).await.unwrap();
    let e = next_of(&mut mon, "error", Duration::from_secs(5)).await;
    assert_eq!(e["data"]["code"], "INVALID_COMMAND");
    mon.send(msg("heartbeat", json!({}))).await.unwrap();
    next_of(&mut mon, "heartbeat", Duration::from_secs(5)).await;

    // The console: wait for the guest's shell, then two viewers (one with its token in the
    // subprotocol) see what one types.
    let mut a = connect(&format!("ws://{addr}/ws/vms/web/console?token={jwt}")).await;
    next_of(&mut a, "connection", Duration::from_secs(5)).await;
    assert!(
        type_until(&mut a, "echo shell-$((1+1))\n", "shell-2", 40).await,
        "the guest never answered over the WebSocket console"
    );
    // With a shell up, the guest has read its root disk: bytes and operations, as QEMU counts
    // them.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let m = next_of(&mut mon, "metrics", Duration::from_secs(10)).await;
        let disk = &m["data"]["disk"];
        if disk["readBytes"].as_u64().unwrap() > 0 && disk["readOps"].as_u64().unwrap() > 0 {
            break;
        }
        assert!(Instant::now() < deadline, "no disk reads counted: {m}");
    }
    let mut req = format!("ws://{addr}/ws/vms/web/console")
        .into_client_request()
        .unwrap();
    req.headers_mut().insert(
        "sec-websocket-protocol",
        format!("vmfleet.v1, token.{jwt}").parse().unwrap(),
    );
    let (mut b, resp) = tokio_tungstenite::connect_async(req).await.unwrap();
    assert_eq!(resp.headers()["sec-websocket-protocol"], "vmfleet.v1");
    next_of(&mut b, "connection", Duration::from_secs(5)).await;
    let t = token();
    a.send(msg(
        "console_input",
        json!({"content": format!("echo ws-$((40+2))-{t}\n")}),
    ))
    .await
    .unwrap();
    console_until(&mut a, &format!("ws-42-{t}"), Duration::from_secs(10)).await;
    console_until(&mut b, &format!("ws-42-{t}"), Duration::from_secs(10)).await;
    // A viewer joining later gets the scrollback first, marked as a replay.
    let mut late = connect(&format!("ws://{addr}/ws/vms/web/console?token={jwt}")).await;
    next_of(&mut late, "connection", Duration::from_secs(5)).await;
    let first = next_of(&mut late, "console", Duration::from_secs(5)).await;
    assert_eq!(first["data"]["replay"], json!(true), "{first}");
    assert!(
        first["data"]["content"]
            .as_str()
            .unwrap()
            .contains(&format!("ws-42-{t}")),
        "{first}"
    );

    // Seed 003's base64 console, negotiated by the query.
    let mut b64 = connect(&format!(
        "ws://{addr}/ws/vms/web/console?token={jwt}&encoding=base64"
    ))
    .await;
    next_of(&mut b64, "connection", Duration::from_secs(5)).await;
    let replay = next_of(&mut b64, "console", Duration::from_secs(5)).await;
    let bytes = B64
        .decode(replay["data"]["content"].as_str().unwrap())
        .unwrap();
    assert!(String::from_utf8_lossy(&bytes).contains(&format!("ws-42-{t}")));
    let typed = B64.encode(format!("echo b64-$((3+4))-{t}\n"));
    b64.send(msg("console_input", json!({ "content": typed })))
        .await
        .unwrap();
    let mut seen = Vec::new();
    while !String::from_utf8_lossy(&seen).contains(&format!("b64-7-{t}")) {
        let m = next_of(&mut b64, "console", Duration::from_secs(10)).await;
        seen.extend(B64.decode(m["data"]["content"].as_str().unwrap()).unwrap());
    }
    b64.send(msg("console_input", json!({"content": "not base64!"})))
        .await
        .unwrap();
    let e = next_of(&mut b64, "error", Duration::from_secs(5)).await;
    assert_eq!(e["data"]["code"], "INVALID_COMMAND");
    // Binary frames both ways.
    let mut bin = connect(&format!(
        "ws://{addr}/ws/vms/web/console?token={jwt}&encoding=binary"
    ))
    .await;
    next_of(&mut bin, "connection", Duration::from_secs(5)).await;
    let marker = next_of(&mut bin, "console", Duration::from_secs(5)).await;
    assert_eq!(marker["data"]["replay"], json!(true));
    bin.send(Message::binary(
        format!("echo bin-$((4+4))-{t}\n").into_bytes(),
    ))
    .await
    .unwrap();
    let mut seen = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(10);
    while !String::from_utf8_lossy(&seen).contains(&format!("bin-8-{t}")) {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, bin.next()).await {
            Ok(Some(Ok(Message::Binary(b)))) => seen.extend_from_slice(&b),
            Ok(Some(Ok(_))) => {}
            other => panic!("no binary echo: {other:?}"),
        }
    }
    let mut odd = connect(&format!(
        "ws://{addr}/ws/vms/web/console?token={jwt}&encoding=ebcdic"
    ))
    .await;
    assert_eq!(
        next_of(&mut odd, "error", Duration::from_secs(5)).await["data"]["code"],
        "INVALID_COMMAND"
    );

    // An API token works on the WebSocket API, within its permissions.
    let issued: Value = http
        .post(format!("{base}/auth/tokens"))
        .bearer_auth(&jwt)
        .json(&json!({"name": "watcher", "permissions": ["read"]}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let api = issued["token"].as_str().unwrap();
    let mut watch = connect(&format!("ws://{addr}/ws/vms/web?token={api}")).await;
    next_of(&mut watch, "connection", Duration::from_secs(5)).await;
    next_of(&mut watch, "status", Duration::from_secs(5)).await;
    let mut peek = connect(&format!("ws://{addr}/ws/vms/web/console?token={api}")).await;
    assert_eq!(
        next_of(&mut peek, "error", Duration::from_secs(5)).await["data"]["code"],
        "AUTH_ERROR"
    );

    // A flood is cut to the connection's rate with one RATE_LIMITED error; the connection
    // stays and answers again once the client slows down.
    for _ in 0..300 {
        watch.send(msg("heartbeat", json!({}))).await.unwrap();
    }
    let e = next_of(&mut watch, "error", Duration::from_secs(5)).await;
    assert_eq!(e["data"]["code"], "RATE_LIMITED", "{e}");
    tokio::time::sleep(Duration::from_secs(3)).await;
    watch.send(Message::text("{not json")).await.unwrap();
    // (The flood may have drawn more than one RATE_LIMITED, as the bucket refilled.)
    loop {
        let e = next_of(&mut watch, "error", Duration::from_secs(5)).await;
        if e["data"]["code"] == "INVALID_COMMAND" {
            break;
        }
        assert_eq!(e["data"]["code"], "RATE_LIMITED", "{e}");
    }

    // `restart` reboots the guest for real: the open console shows the boot and stays.
    mon.send(msg(
        "command",
        json!({"action": "restart", "requestId": "req-r"}),
    ))
    .await
    .unwrap();
    let r = next_of(&mut mon, "response", Duration::from_secs(90)).await;
    assert_eq!(r["data"]["success"], json!(true), "{r}");
    console_until(&mut a, "vmfleet-guest ready", Duration::from_secs(90)).await;
    assert!(
        type_until(&mut a, "echo again-$((5+5))\n", "again-10", 20).await,
        "the console did not survive the reboot"
    );

    // A console nobody types on is closed after the idle timeout; typing keeps `a` open.
    let mut quiet = connect(&format!("ws://{addr}/ws/vms/web/console?token={jwt}")).await;
    next_of(&mut quiet, "connection", Duration::from_secs(5)).await;
    let opened = Instant::now();
    let closing = loop {
        a.send(msg("console_input", json!({"content": ""})))
            .await
            .unwrap();
        match tokio::time::timeout(Duration::from_secs(5), quiet.next()).await {
            Ok(Some(Ok(Message::Text(t)))) => {
                let v: Value = serde_json::from_str(t.as_str()).unwrap();
                if v["type"] == "connection" {
                    break v;
                }
            }
            Ok(Some(Ok(_))) | Err(_) => {}
            Ok(other) => panic!("the quiet console ended without a word: {other:?}"),
        }
        assert!(
            opened.elapsed() < IDLE * 2,
            "the idle console was not closed"
        );
    };
    assert_eq!(closing["data"]["status"], "closing", "{closing}");
    assert!(opened.elapsed() >= IDLE - Duration::from_secs(1));

    // Refusals, each its document code.
    let mut bad = connect(&format!("ws://{addr}/ws/vms/web?token=not-a-token")).await;
    assert_eq!(
        next_of(&mut bad, "error", Duration::from_secs(5)).await["data"]["code"],
        "AUTH_ERROR"
    );
    let thief = TestWallet::from_secret([9u8; 32]).unwrap();
    let tjwt = sign_in(&http, &base, &addr.to_string(), &thief).await;
    let mut other = connect(&format!("ws://{addr}/ws/vms/web?token={tjwt}")).await;
    assert_eq!(
        next_of(&mut other, "error", Duration::from_secs(5)).await["data"]["code"],
        "VM_NOT_FOUND"
    );
    let mut nope = connect(&format!("ws://{addr}/ws/vms/nope/console?token={jwt}")).await;
    assert_eq!(
        next_of(&mut nope, "error", Duration::from_secs(5)).await["data"]["code"],
        "VM_NOT_FOUND"
    );

    // Stopped: the console says eof, a new console is VM_NOT_RUNNING, the monitor shows it.
    mon.send(msg(
        "command",
        json!({"action": "stop", "requestId": "req-stop"}),
    ))
    .await
    .unwrap();
    let r = next_of(&mut mon, "response", Duration::from_secs(90)).await;
    assert_eq!(r["data"]["success"], json!(true), "{r}");
    let eof = loop {
        let v = next_of(&mut a, "console", Duration::from_secs(30)).await;
        if v["data"]["eof"] == json!(true) {
            break v;
        }
    };
    assert_eq!(eof["data"]["content"], "");
    let mut dead = connect(&format!("ws://{addr}/ws/vms/web/console?token={jwt}")).await;
    assert_eq!(
        next_of(&mut dead, "error", Duration::from_secs(5)).await["data"]["code"],
        "VM_NOT_RUNNING"
    );
    mon.send(msg(
        "command",
        json!({"action": "suspend", "requestId": "req-x"}),
    ))
    .await
    .unwrap();
    let e = next_of(&mut mon, "error", Duration::from_secs(5)).await;
    assert_eq!(e["data"]["code"], "VM_NOT_RUNNING");

    // A disk added while stopped is there when the guest boots again.
    let r = post(
        "/vm/disk/add",
        json!({"build_id": id, "owner": me, "size_gb": 1}),
    )
    .await
    .unwrap();
    assert_eq!(r.status().as_u16(), 200);
    mon.send(msg(
        "command",
        json!({"action": "start", "requestId": "req-up"}),
    ))
    .await
    .unwrap();
    let r = loop {
        let r = next_of(&mut mon, "response", Duration::from_secs(90)).await;
        if r["data"]["requestId"] == "req-up" {
            break r;
        }
    };
    assert_eq!(r["data"]["success"], json!(true), "{r}");
    let mut c = connect(&format!("ws://{addr}/ws/vms/web/console?token={jwt}")).await;
    next_of(&mut c, "connection", Duration::from_secs(5)).await;
    // 1 GiB is 1048576 blocks of 1 KiB.
    let line = "grep -c vd /proc/partitions; grep vdb /proc/partitions\n";
    assert!(
        type_until(&mut c, line, "1048576 vdb", 40).await,
        "the guest never saw its new disk"
    );

    let _ = post("/vm/delete", json!({"build_id": id, "owner": me})).await;
    agent.stop().await;
    plane.stop().await.unwrap();
}
