//! Long-lived API tokens against a real control plane on loopback: a signed-in wallet makes
//! one, uses it as `Authorization: Bearer vmf_...` wherever its JWT works, within the token's
//! permissions, and revokes it; expired, revoked and unknown tokens are 401; another wallet
//! neither sees nor revokes it; an API token counts against its owner's rate limit.

#![allow(clippy::unwrap_used)]

use std::num::NonZeroU32;

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use vmfleet_auth::siwe::testing::{TestWallet, message};
use vmfleet_auth::{Permission, SecretHash, generate_secret};
use vmfleet_cli::ControlPlane;
use vmfleet_core::Timestamp;
use vmfleet_server::ratelimit::RateLimits;

struct Plane {
    plane: ControlPlane,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Plane {
    async fn start(rate_limits: RateLimits) -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let plane = vmfleet_tests::plane(dir.path(), rate_limits).await;
        Plane {
            base: format!("http://{}", plane.addr()),
            plane,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    /// Signs `wallet` in; its JWT.
    async fn sign_in(&self, wallet: &TestWallet) -> String {
        let (_, n) = self.call(Method::GET, "/auth/nonce", None, None).await;
        let text = message(
            &self.plane.addr().to_string(),
            &wallet.address(),
            n["nonce"].as_str().unwrap(),
            Timestamp::now().as_str(),
        );
        let body = json!({ "message": text, "signature": wallet.sign(&text).unwrap() });
        let (status, r) = self
            .call(Method::POST, "/auth/login", None, Some(body))
            .await;
        assert_eq!(status, 200, "{r}");
        r["token"].as_str().unwrap().to_owned()
    }

    fn admin(&self) -> String {
        vmfleet_tests::admin_token(&self.plane)
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> reqwest::Response {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.json(&b);
        }
        req.send().await.unwrap()
    }

    async fn call(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> (u16, Value) {
        let r = self.send(method, path, token, body).await;
        let status = r.status().as_u16();
        let text = r.text().await.unwrap();
        let json = serde_json::from_str(&text)
            .unwrap_or_else(|e| panic!("{path}: not JSON ({e}): {text:?}"));
        (status, json)
    }
}

fn create_vm_body(owner: &str) -> Value {
    json!({"name": "t1", "owner": owner, "vm_config": {"vcpu_count": 1, "mem_size_mib": 256}})
}

#[tokio::test]
async fn api_tokens_are_made_used_listed_and_revoked() {
    let p = Plane::start(RateLimits::default()).await;
    let alice = TestWallet::from_secret([7u8; 32]).unwrap();
    let bob = TestWallet::from_secret([8u8; 32]).unwrap();
    let jwt = p.sign_in(&alice).await;
    let bob_jwt = p.sign_in(&bob).await;
    let me = alice.address().to_checksum();

    // Made with every permission of the JWT by default, never expiring.
    let (status, made) = p
        .call(
            Method::POST,
            "/auth/tokens",
            Some(&jwt),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(status, 201, "{made}");
    let token = made["token"].as_str().unwrap().to_owned();
    assert!(token.starts_with("vmf_") && token.len() == 47, "{token}");
    assert_eq!(made["name"], json!("ci"));
    assert_eq!(made["owner"], json!(me));
    assert_eq!(made["permissions"], json!(["read", "control", "console"]));
    assert_eq!(made["expires_at"], Value::Null);
    let id = made["id"].as_i64().unwrap();
    // Only its hash is stored.
    let stored = p
        .plane
        .store()
        .api_token_by_hash(&SecretHash::of(&token))
        .await
        .unwrap()
        .unwrap();
    assert_eq!(stored.id.0, id);

    // Used like the JWT.
    let (status, list) = p
        .call(Method::POST, "/vm/list", Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "{list}");
    assert_eq!(list, json!([]));
    // Another owner's VMs stay out of reach.
    let (status, _) = p
        .call(
            Method::POST,
            "/vm/list",
            Some(&token),
            Some(json!({"owner": bob.address().to_checksum()})),
        )
        .await;
    assert_eq!(status, 403);

    // A read-only token, expiring in 30 days: reads, but controls nothing.
    let (status, ro) = p
        .call(
            Method::POST,
            "/auth/tokens",
            Some(&jwt),
            Some(json!({"name": "ro", "permissions": ["read"], "expires_in_days": 30})),
        )
        .await;
    assert_eq!(status, 201, "{ro}");
    assert_eq!(ro["permissions"], json!(["read"]));
    let exp = ro["expires_at"].as_i64().unwrap();
    let in_30_days = Timestamp::now().unix_seconds() + 30 * 86_400;
    assert!((exp - in_30_days).abs() <= 5, "{exp}");
    let ro_token = ro["token"].as_str().unwrap().to_owned();
    let (status, _) = p
        .call(Method::POST, "/vm/list", Some(&ro_token), Some(json!({})))
        .await;
    assert_eq!(status, 200);
    let (status, body) = p
        .call(
            Method::POST,
            "/vm/create",
            Some(&ro_token),
            Some(create_vm_body(&me)),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    assert!(
        body["message"].as_str().unwrap().contains("Control"),
        "{body}"
    );
    let container =
        json!({"name": "c", "image": "busybox:local", "cpuCores": 1, "ramLimit": "64m"});
    let (status, body) = p
        .call(
            Method::POST,
            "/containers",
            Some(&ro_token),
            Some(container),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let (status, body) = p
        .call(Method::GET, "/containers", Some(&ro_token), None)
        .await;
    assert_eq!(status, 200, "{body}");

    // An admin's read-only token reads the fleet and changes nothing in it.
    p.plane
        .store()
        .set_role(&alice.address(), vmfleet_auth::Role::Admin)
        .await
        .unwrap();
    let (status, body) = p.call(Method::GET, "/nodes", Some(&ro_token), None).await;
    assert_eq!(status, 200, "{body}");
    let (status, body) = p
        .call(
            Method::POST,
            "/nodes",
            Some(&ro_token),
            Some(json!({"name": "n1"})),
        )
        .await;
    assert_eq!(status, 403, "{body}");
    let r = p.send(Method::GET, "/metrics", Some(&ro_token), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    p.plane
        .store()
        .set_role(&alice.address(), vmfleet_auth::Role::Standard)
        .await
        .unwrap();

    // An API token cannot manage API tokens: only a signed-in wallet can.
    for (method, path, body) in [
        (
            Method::POST,
            "/auth/tokens".to_owned(),
            Some(json!({"name": "child"})),
        ),
        (Method::GET, "/auth/tokens".to_owned(), None),
        (Method::DELETE, format!("/auth/tokens/{id}"), None),
    ] {
        let (status, r) = p.call(method, &path, Some(&token), body).await;
        assert_eq!(status, 403, "{path}: {r}");
    }

    // The listing: both tokens, never a secret.
    let r = p.send(Method::GET, "/auth/tokens", Some(&jwt), None).await;
    assert_eq!(r.status(), StatusCode::OK);
    let text = r.text().await.unwrap();
    assert!(
        !text.contains(&token) && !text.contains(&ro_token),
        "{text}"
    );
    assert!(!text.contains("vmf_"), "{text}");
    let listed: Value = serde_json::from_str(&text).unwrap();
    let names: Vec<&str> = listed
        .as_array()
        .unwrap()
        .iter()
        .map(|t| t["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["ci", "ro"]);
    assert_eq!(listed[0]["id"], json!(id));
    assert!(listed[0].get("token").is_none(), "{listed}");

    // Another wallet sees none of them and cannot revoke them.
    let (status, theirs) = p
        .call(Method::GET, "/auth/tokens", Some(&bob_jwt), None)
        .await;
    assert_eq!((status, theirs), (200, json!([])));
    let (status, r) = p
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{id}"),
            Some(&bob_jwt),
            None,
        )
        .await;
    assert_eq!(status, 404, "{r}");
    let (status, _) = p
        .call(
            Method::GET,
            &format!("/auth/tokens?owner={me}"),
            Some(&bob_jwt),
            None,
        )
        .await;
    assert_eq!(status, 403);
    let (status, _) = p
        .call(Method::POST, "/vm/list", Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, 200, "bob's attempt revoked nothing");

    // The admin sees alice's tokens when it names her.
    let admin = p.admin();
    let (status, seen) = p
        .call(
            Method::GET,
            &format!("/auth/tokens?owner={me}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{seen}");
    assert_eq!(seen.as_array().unwrap().len(), 2);

    // Revoked: refused at once, and gone from the listing.
    let (status, r) = p
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{id}"),
            Some(&jwt),
            None,
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, r) = p
        .call(Method::POST, "/vm/list", Some(&token), Some(json!({})))
        .await;
    assert_eq!(status, 401, "{r}");
    assert!(r["message"].as_str().unwrap().contains("revoked"), "{r}");
    assert_eq!(r["success"], json!(false));
    let (_, listed) = p.call(Method::GET, "/auth/tokens", Some(&jwt), None).await;
    assert_eq!(listed.as_array().unwrap().len(), 1);
    // The admin revokes for an owner it names.
    let ro_id = ro["id"].as_i64().unwrap();
    let (status, r) = p
        .call(
            Method::DELETE,
            &format!("/auth/tokens/{ro_id}?owner={me}"),
            Some(&admin),
            None,
        )
        .await;
    assert_eq!(status, 200, "{r}");
    let (status, _) = p
        .call(Method::POST, "/vm/list", Some(&ro_token), Some(json!({})))
        .await;
    assert_eq!(status, 401);

    // Expired (made through the store: the API's shortest lifetime is a day).
    let old = format!("vmf_{}", generate_secret());
    let past = Timestamp::from_unix_millis(Timestamp::now().unix_millis() - 1000);
    p.plane
        .store()
        .create_api_token(
            &alice.address(),
            "old",
            &SecretHash::of(&old),
            &[Permission::Read],
            Some(&past),
        )
        .await
        .unwrap();
    let (status, r) = p
        .call(Method::POST, "/vm/list", Some(&old), Some(json!({})))
        .await;
    assert_eq!(status, 401, "{r}");
    assert!(r["message"].as_str().unwrap().contains("expired"), "{r}");

    // Unknown, and a token that only looks like one.
    for bogus in [format!("vmf_{}", generate_secret()), "vmf_".to_owned()] {
        let (status, r) = p
            .call(Method::POST, "/vm/list", Some(&bogus), Some(json!({})))
            .await;
        assert_eq!(status, 401, "{r}");
        assert_eq!(r["code"], json!("UNAUTHORIZED"), "{r}");
    }
}

#[tokio::test]
async fn bad_token_requests_are_json_errors() {
    let p = Plane::start(RateLimits::default()).await;
    let alice = TestWallet::from_secret([9u8; 32]).unwrap();
    let jwt = p.sign_in(&alice).await;
    for (body, want) in [
        (json!({"name": "x", "scopes": ["read"]}), 400),
        (json!({"name": 5}), 400),
        (json!({}), 400),
        (json!({"name": "x", "permissions": ["root"]}), 400),
        (json!({"name": "x", "permissions": []}), 400),
        (json!({"name": "x", "expires_in_days": 0}), 400),
        (json!({"name": "x", "expires_in_days": 366}), 400),
        (json!({"name": "x", "expires_in_days": -1}), 400),
        (json!({"name": ""}), 400),
        (json!({"name": "x\u{7}"}), 400),
        (
            json!({"name": "x", "owner": "0x0000000000000000000000000000000000000001"}),
            403,
        ),
    ] {
        let (status, r) = p
            .call(Method::POST, "/auth/tokens", Some(&jwt), Some(body.clone()))
            .await;
        assert_eq!(status, want, "{body}: {r}");
        assert_eq!(r["success"], json!(false), "{r}");
    }
    // Not JSON at all.
    let r = p
        .http
        .post(format!("{}/auth/tokens", p.base))
        .bearer_auth(&jwt)
        .header("content-type", "application/json")
        .body("{name")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 400);
    let r: Value = r.json().await.unwrap();
    assert_eq!(r["success"], json!(false));
    // A name taken by a live token is a conflict.
    let (status, _) = p
        .call(
            Method::POST,
            "/auth/tokens",
            Some(&jwt),
            Some(json!({"name": "dup"})),
        )
        .await;
    assert_eq!(status, 201);
    let (status, r) = p
        .call(
            Method::POST,
            "/auth/tokens",
            Some(&jwt),
            Some(json!({"name": "dup"})),
        )
        .await;
    assert_eq!(status, 409, "{r}");
    // Bad ids and queries; no token at all.
    for (method, path, want) in [
        (Method::DELETE, "/auth/tokens/abc", 400),
        (Method::DELETE, "/auth/tokens/999999", 404),
        (Method::GET, "/auth/tokens?bogus=1", 400),
        (Method::GET, "/auth/tokens?owner=nobody", 400),
    ] {
        let (status, r) = p.call(method, path, Some(&jwt), None).await;
        assert_eq!(status, want, "{path}: {r}");
        assert_eq!(r["success"], json!(false), "{r}");
    }
    let (status, _) = p.call(Method::GET, "/auth/tokens", None, None).await;
    assert_eq!(status, 401);
    // An operator has no tokens of its own: it names an owner.
    let (status, r) = p
        .call(
            Method::POST,
            "/auth/tokens",
            Some(&p.admin()),
            Some(json!({"name": "x"})),
        )
        .await;
    assert_eq!(status, 400, "{r}");
}

#[tokio::test]
async fn an_api_token_shares_its_owners_rate_limit() {
    // Five a minute: one request every 12 s, so nothing refills during the test.
    let p = Plane::start(RateLimits {
        standard: NonZeroU32::new(5),
        ..RateLimits::default()
    })
    .await;
    let alice = TestWallet::from_secret([10u8; 32]).unwrap();
    let jwt = p.sign_in(&alice).await;
    let remaining = |r: &reqwest::Response| -> u32 {
        r.headers()["x-ratelimit-remaining"]
            .to_str()
            .unwrap()
            .parse()
            .unwrap()
    };
    let r = p
        .send(
            Method::POST,
            "/auth/tokens",
            Some(&jwt),
            Some(json!({"name": "ci"})),
        )
        .await;
    assert_eq!(r.status(), StatusCode::CREATED);
    assert_eq!(remaining(&r), 4);
    let token = r.json::<Value>().await.unwrap()["token"]
        .as_str()
        .unwrap()
        .to_owned();
    let mut left = Vec::new();
    for t in [&token, &jwt, &token, &jwt] {
        let r = p
            .send(Method::POST, "/vm/list", Some(t), Some(json!({})))
            .await;
        assert_eq!(r.status(), StatusCode::OK);
        left.push(remaining(&r));
    }
    assert_eq!(left, [3, 2, 1, 0]);
    for t in [&token, &jwt] {
        let r = p
            .send(Method::POST, "/vm/list", Some(t), Some(json!({})))
            .await;
        assert_eq!(r.status(), StatusCode::TOO_MANY_REQUESTS);
    }
}
