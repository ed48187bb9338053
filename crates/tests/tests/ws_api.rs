//! Seeds 003/004's WebSocket API end to end, on a real guest: the monitor streams status and
//! real metrics and runs commands for real; the console goes browser -> control plane ->
//! agent -> guest serial and back, to several viewers, with scrollback for a late one; every
//! refusal is the document's error code.

#![allow(clippy::unwrap_used)]

use std::time::{Duration, Instant};

use futures_util::{SinkExt, StreamExt};
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use vmfleet_auth::siwe::testing::TestWallet;
use vmfleet_core::Timestamp;
use vmfleet_tests::{KillOnDrop, sign_in, token};

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

#[tokio::test(flavor = "multi_thread")]
async fn monitor_commands_and_console_on_a_real_guest() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let (plane, agent, base, _admin) = vmfleet_tests::plane_with_local_node(dir.path()).await;
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

    // The console: two viewers (one with its token in the subprotocol) see what one types.
    let mut a = connect(&format!("ws://{addr}/ws/vms/web/console?token={jwt}")).await;
    next_of(&mut a, "connection", Duration::from_secs(5)).await;
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
    let mut answered = false;
    for _ in 0..40 {
        a.send(msg(
            "console_input",
            json!({"content": format!("echo ws-$((40+2))-{t}\n")}),
        ))
        .await
        .unwrap();
        if read_console(&mut a, &format!("ws-42-{t}"), Duration::from_secs(3))
            .await
            .is_ok()
        {
            answered = true;
            break;
        }
    }
    assert!(
        answered,
        "the guest never answered over the WebSocket console"
    );
    console_until(&mut b, &format!("ws-42-{t}"), Duration::from_secs(10)).await;
    // A viewer joining later gets the scrollback first.
    let mut late = connect(&format!("ws://{addr}/ws/vms/web/console?token={jwt}")).await;
    next_of(&mut late, "connection", Duration::from_secs(5)).await;
    console_until(&mut late, &format!("ws-42-{t}"), Duration::from_secs(5)).await;

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

    let _ = post("/vm/delete", json!({"build_id": id, "owner": me})).await;
    agent.stop().await;
    plane.stop().await.unwrap();
}
