//! Wallet sign-in as `shared/CONTRACT.md` fixes it, against a real control plane: a nonce, an
//! EIP-4361 message signed like `personal_sign`, a JWT for the recovered address; and every
//! way to cheat refused with 401: a reused nonce, a nonce never issued, another domain, an old
//! message, someone else's signature.

#![allow(clippy::unwrap_used)]

use std::time::Duration;

use serde_json::{Value, json};
use vmfleet_auth::siwe::testing::{TestWallet, message};
use vmfleet_cli::{ControlPlane, PlaneOptions};
use vmfleet_core::Timestamp;

async fn nonce(http: &reqwest::Client, base: &str) -> String {
    let r: Value = http
        .get(format!("{base}/auth/nonce"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let n = r["nonce"].as_str().unwrap().to_owned();
    assert!(
        n.len() >= 8 && n.bytes().all(|b| b.is_ascii_alphanumeric()),
        "{n}"
    );
    n
}

async fn login(http: &reqwest::Client, base: &str, message: &str, signature: &str) -> (u16, Value) {
    let r = http
        .post(format!("{base}/auth/login"))
        .json(&json!({ "message": message, "signature": signature }))
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn a_wallet_signs_in_once_per_nonce() {
    let dir = tempfile::tempdir().unwrap();
    let plane = ControlPlane::start(PlaneOptions {
        data_dir: dir.path().join("data"),
        listen: "127.0.0.1:0".parse().unwrap(),
        token_ttl: Duration::from_secs(3600),
        database: None,
        domains: vec!["vmfleet.example".into()],
        scheduler: Default::default(),
        rate_limits: Default::default(),
        ws: Default::default(),
        fleet_batch: vmfleet_server::fleet::batch::DEFAULT_WINDOW,
    })
    .await
    .unwrap();
    let base = format!("http://{}", plane.addr());
    let domain = plane.addr().to_string();
    let http = reqwest::Client::new();
    let wallet = TestWallet::from_secret([42u8; 32]).unwrap();
    let now = Timestamp::now();

    let n = nonce(&http, &base).await;
    let text = message(&domain, &wallet.address(), &n, now.as_str());
    let sig = wallet.sign(&text).unwrap();
    let (status, body) = login(&http, &base, &text, &sig).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["address"], json!(wallet.address().to_checksum()));
    let exp = body["expires_at"].as_i64().unwrap();
    assert!((exp - now.unix_seconds() - 3600).abs() <= 5, "{exp}");
    let token = body["token"].as_str().unwrap().to_owned();
    // The token is verified and carries the role standard: admin routes say 403, not 401.
    let r = http
        .get(format!("{base}/nodes"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 403);
    let user = plane.store().get_user(&wallet.address()).await.unwrap();
    assert_eq!(user.role, vmfleet_auth::Role::Standard);

    // The same message and signature again: the nonce is spent.
    let (status, body) = login(&http, &base, &text, &sig).await;
    assert_eq!(status, 401, "{body}");
    assert_eq!(body["success"], json!(false));
    assert!(
        body["message"].as_str().unwrap().contains("nonce"),
        "{body}"
    );

    // A nonce the server never issued.
    let text = message(&domain, &wallet.address(), "NeverIssued123", now.as_str());
    let (status, _) = login(&http, &base, &text, &wallet.sign(&text).unwrap()).await;
    assert_eq!(status, 401);

    // Another site's message (phished), an old message, another wallet's signature.
    let n = nonce(&http, &base).await;
    let phished = message("evil.example", &wallet.address(), &n, now.as_str());
    let (status, body) = login(&http, &base, &phished, &wallet.sign(&phished).unwrap()).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("evil.example"),
        "{body}"
    );
    let old = Timestamp::from_unix_millis(now.unix_millis() - 10 * 60 * 1000);
    let stale = message(&domain, &wallet.address(), &n, old.as_str());
    let (status, _) = login(&http, &base, &stale, &wallet.sign(&stale).unwrap()).await;
    assert_eq!(status, 401);
    let thief = TestWallet::from_secret([43u8; 32]).unwrap();
    let claimed = message(&domain, &wallet.address(), &n, now.as_str());
    let (status, body) = login(&http, &base, &claimed, &thief.sign(&claimed).unwrap()).await;
    assert_eq!(status, 401);
    assert!(
        body["message"].as_str().unwrap().contains("not by"),
        "{body}"
    );
    // None of those spent the nonce: the real wallet still signs in with it, and the
    // configured public domain is accepted too.
    let good = message("vmfleet.example", &wallet.address(), &n, now.as_str());
    let (status, body) = login(&http, &base, &good, &wallet.sign(&good).unwrap()).await;
    assert_eq!(status, 200, "{body}");

    // A message with an expiry gets a token that ends with it.
    let n = nonce(&http, &base).await;
    let soon = Timestamp::from_unix_millis(now.unix_millis() + 120_000);
    let text = format!(
        "{}\nExpiration Time: {}",
        message(&domain, &wallet.address(), &n, now.as_str()),
        soon.as_str()
    );
    let (status, body) = login(&http, &base, &text, &wallet.sign(&text).unwrap()).await;
    assert_eq!(status, 200, "{body}");
    assert!(body["expires_at"].as_i64().unwrap() <= soon.unix_seconds());

    // Bad bodies are JSON errors, never a framework page.
    for bad in [
        json!({"message": "x"}),
        json!({"message": 1, "signature": "0x"}),
    ] {
        let r = http
            .post(format!("{base}/auth/login"))
            .json(&bad)
            .send()
            .await
            .unwrap();
        assert_eq!(r.status().as_u16(), 400);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["success"], json!(false));
    }
    let (status, _) = login(&http, &base, "hello", "0x1234").await;
    assert_eq!(status, 401);
    plane.stop().await.unwrap();
}
