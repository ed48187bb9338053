//! The middleware in front of every route, driven through [`vmfleet_server::app`] without a
//! socket: request ids, the access log, and what it must never write.

#![allow(clippy::unwrap_used)]

use std::io::Write;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tower::ServiceExt;
use vmfleet_auth::{JwtKey, Permission, Role, Subject};
use vmfleet_core::Timestamp;
use vmfleet_server::AppState;

/// Everything the subscriber writes.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Captured {
    fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().unwrap()).into_owned()
    }
}

async fn state() -> (AppState, JwtKey) {
    let key = JwtKey::generate();
    let store = vmfleet_store::Store::open("sqlite::memory:").await.unwrap();
    let state = AppState::new(key.clone())
        .with_store(store, Duration::from_secs(3600))
        .with_sign_in(vec!["localhost:8080".into()], Duration::from_secs(3600));
    (state, key)
}

#[tokio::test]
async fn logs_carry_request_ids_and_never_secrets() {
    let logs = Captured::default();
    let writer = logs.clone();
    let subscriber = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || writer.clone())
        .finish();
    // The process-wide default: a thread-local one misses events whose callsites were
    // registered before it was set.
    tracing::subscriber::set_global_default(subscriber).unwrap();

    let (state, key) = state().await;
    let admin = key.issue_for(
        &Subject::Operator("admin".into()),
        Role::Admin,
        &[Permission::Read],
        Timestamp::now().unix_seconds(),
        3600,
    );
    let wallet =
        vmfleet_core::WalletAddress::parse("0x00000000000000000000000000000000000000aa").unwrap();
    let store = state.store.clone().unwrap();
    store.upsert_user(&wallet, Role::Standard).await.unwrap();
    let app = vmfleet_server::app(state);

    // A bearer token in the header and another in the query string.
    let resp = app
        .clone()
        .oneshot(
            Request::get("/nodes?token=query-secret-123")
                .header("authorization", format!("Bearer {admin}"))
                .header("x-request-id", "req-abc-1")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-request-id"], "req-abc-1");

    // A sign-in whose body holds a signature.
    let signature = format!("0x{}", "ab".repeat(65));
    let body = serde_json::json!({
        "message": "localhost:8080 wants you to sign in with your Ethereum account:\n0x0000000000000000000000000000000000000001\n\nURI: http://localhost:8080\nVersion: 1\nChain ID: 1\nNonce: secretnonce12345\nIssued At: 2020-01-01T00:00:00Z",
        "signature": signature,
    });
    let resp = app
        .clone()
        .oneshot(
            Request::post("/auth/login")
                .header("content-type", "application/json")
                .body(Body::from(body.to_string()))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);
    let login_id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
    assert_eq!(login_id.len(), 36, "{login_id}");

    // An API token: made (its secret in the answer), used, revoked, refused.
    let resp = app
        .clone()
        .oneshot(
            Request::post("/auth/tokens")
                .header("authorization", format!("Bearer {admin}"))
                .header("content-type", "application/json")
                .body(Body::from(
                    serde_json::json!({"name": "ci", "owner": wallet}).to_string(),
                ))
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let created: serde_json::Value = serde_json::from_slice(
        &axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap(),
    )
    .unwrap();
    let api_token = created["token"].as_str().unwrap().to_owned();
    assert!(api_token.starts_with("vmf_"), "{api_token}");
    let with_api_token = |path: &str, id: &str| {
        Request::post(path)
            .header("authorization", format!("Bearer {api_token}"))
            .header("x-request-id", id)
            .body(Body::empty())
            .unwrap()
    };
    let resp = app
        .clone()
        .oneshot(with_api_token("/vm/list", "req-api-1"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let id = vmfleet_core::ApiTokenId(created["id"].as_i64().unwrap());
    store.revoke_api_token(&wallet, id).await.unwrap();
    let resp = app
        .clone()
        .oneshot(with_api_token("/vm/list", "req-api-2"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNAUTHORIZED);

    let text = logs.text();
    assert!(
        text.lines().any(|l| l.contains("vmfleet::access")
            && l.contains("id=req-api-1")
            && l.contains(&format!("caller=\"{wallet}\""))),
        "an API token's caller is its owner:\n{text}"
    );
    for secret in [
        api_token.as_str(),
        api_token.trim_start_matches("vmf_"),
        admin.as_str(),
        admin.rsplit('.').next().unwrap(),
        "query-secret-123",
        signature.as_str(),
        "secretnonce12345",
    ] {
        assert!(!text.contains(secret), "{secret:?} is in the logs:\n{text}");
    }
    // One access line per request, each in its request's span, with the caller when known.
    let access: Vec<&str> = text
        .lines()
        .filter(|l| {
            l.contains("vmfleet::access")
                && (l.contains("id=req-abc-1") || l.contains(&format!("id={login_id}")))
        })
        .collect();
    assert_eq!(access.len(), 2, "LOGS:\n{text}");
    assert!(access[0].contains("id=req-abc-1"), "{}", access[0]);
    assert!(access[0].contains("path=\"/nodes\""), "{}", access[0]);
    assert!(access[0].contains("status=200"), "{}", access[0]);
    assert!(
        access[0].contains("caller=\"operator:admin\""),
        "{}",
        access[0]
    );
    assert!(
        access[1].contains(&format!("id={login_id}")),
        "{}",
        access[1]
    );
    assert!(access[1].contains("status=401"), "{}", access[1]);
}

#[tokio::test]
async fn bad_request_ids_are_replaced() {
    let (state, _) = state().await;
    let app = vmfleet_server::app(state);
    for bad in [
        "",
        "-leading-dash",
        "has space",
        "semi;colon",
        &"x".repeat(129),
    ] {
        let resp = app
            .clone()
            .oneshot(
                Request::get("/health")
                    .header("x-request-id", bad)
                    .body(Body::empty())
                    .unwrap(),
            )
            .await
            .unwrap();
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "{id}");
    }
}
