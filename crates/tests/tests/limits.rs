//! Rate limits, request ids and `/metrics` of a control plane on loopback, its limits set
//! low so the tests are quick.

#![allow(clippy::unwrap_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::num::NonZeroU32;

use reqwest::{Method, Response};
use vmfleet_auth::{Permission, Role, Subject};
use vmfleet_cli::ControlPlane;
use vmfleet_core::{Timestamp, WalletAddress};
use vmfleet_server::ratelimit::RateLimits;
use vmfleet_wire::api::{ApiErrorCode, ErrorBody};

struct Plane {
    plane: ControlPlane,
    base: String,
    http: reqwest::Client,
    _dir: tempfile::TempDir,
}

impl Plane {
    async fn start(limits: RateLimits) -> Plane {
        let dir = tempfile::tempdir().unwrap();
        let plane = vmfleet_tests::plane(dir.path(), limits).await;
        Plane {
            base: format!("http://{}", plane.addr()),
            plane,
            http: reqwest::Client::new(),
            _dir: dir,
        }
    }

    fn token(&self, subject: Subject, role: Role) -> String {
        self.plane.data_dir().jwt_key().unwrap().issue_for(
            &subject,
            role,
            &[Permission::Read, Permission::Control],
            Timestamp::now().unix_seconds(),
            3600,
        )
    }

    fn wallet_token(&self, n: u8, role: Role) -> String {
        let who = WalletAddress::parse(&format!("0x{:040x}", n)).unwrap();
        self.token(Subject::Wallet(who), role)
    }

    fn admin(&self) -> String {
        vmfleet_tests::admin_token(&self.plane)
    }

    async fn get(&self, path: &str, token: Option<&str>) -> Response {
        self.send(Method::GET, path, token, &[]).await
    }

    async fn send(
        &self,
        method: Method,
        path: &str,
        token: Option<&str>,
        headers: &[(&str, &str)],
    ) -> Response {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        req.send().await.unwrap()
    }
}

fn header(resp: &Response, name: &str) -> Option<u64> {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().parse().unwrap())
}

fn limits(standard: u32, privileged: u32, anonymous: u32) -> RateLimits {
    RateLimits {
        standard: NonZeroU32::new(standard),
        privileged: NonZeroU32::new(privileged),
        admin: None,
        anonymous: NonZeroU32::new(anonymous),
        ..RateLimits::default()
    }
}

/// Makes `n` requests that must all pass, checking the countdown of the headers.
async fn spend(plane: &Plane, token: &str, n: u64) {
    for i in 0..n {
        let resp = plane.get("/usage", Some(token)).await;
        assert_eq!(resp.status(), 200, "request {i}");
        assert_eq!(header(&resp, "x-ratelimit-limit"), Some(n));
        assert_eq!(header(&resp, "x-ratelimit-remaining"), Some(n - 1 - i));
        let reset = header(&resp, "x-ratelimit-reset").unwrap();
        assert!((1..=60).contains(&reset), "reset {reset}");
    }
}

async fn assert_refused(resp: Response, limit: u64) {
    assert_eq!(resp.status(), 429);
    let retry = header(&resp, "retry-after").unwrap();
    assert!((1..=60).contains(&retry), "retry-after {retry}");
    assert_eq!(header(&resp, "x-ratelimit-limit"), Some(limit));
    assert_eq!(header(&resp, "x-ratelimit-remaining"), Some(0));
    assert!(header(&resp, "x-ratelimit-reset").unwrap() >= retry);
    assert!(resp.headers().contains_key("x-request-id"));
    let text = resp.text().await.unwrap();
    let body = vmfleet_wire::decode_body::<ErrorBody>("error", &text).unwrap();
    assert_eq!(body.code, Some(ApiErrorCode::RateLimited), "{text}");
    assert!(body.message.contains("too many requests"), "{text}");
}

#[tokio::test]
async fn each_caller_has_its_own_limit_by_role() {
    let plane = Plane::start(limits(5, 12, 100)).await;
    let alice = plane.wallet_token(1, Role::Standard);
    spend(&plane, &alice, 5).await;
    assert_refused(plane.get("/usage", Some(&alice)).await, 5).await;
    // Another token of the same wallet shares its bucket.
    let alice_again = plane.wallet_token(1, Role::Standard);
    assert_refused(plane.get("/usage", Some(&alice_again)).await, 5).await;

    // Another user is unaffected; a privileged one has a higher limit.
    let bob = plane.wallet_token(2, Role::Standard);
    spend(&plane, &bob, 5).await;
    let carol = plane.wallet_token(3, Role::Privileged);
    spend(&plane, &carol, 12).await;
    assert_refused(plane.get("/usage", Some(&carol)).await, 12).await;

    // Admins are not limited by default, and /health never is.
    let admin = plane.admin();
    for _ in 0..30 {
        let resp = plane.get("/nodes", Some(&admin)).await;
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key("x-ratelimit-limit"));
        let resp = plane.get("/health", Some(&alice)).await;
        assert_eq!(resp.status(), 200);
        assert!(!resp.headers().contains_key("x-ratelimit-limit"));
    }
    plane.plane.stop().await.unwrap();
}

#[tokio::test]
async fn requests_without_a_token_are_limited_by_address() {
    let plane = Plane::start(limits(5, 12, 3)).await;
    for i in 0..3u64 {
        let resp = plane.get("/auth/nonce", None).await;
        assert_eq!(resp.status(), 200);
        assert_eq!(header(&resp, "x-ratelimit-remaining"), Some(2 - i));
    }
    assert_refused(plane.get("/auth/nonce", None).await, 3).await;
    // A bad token counts as none.
    assert_refused(plane.get("/usage", Some("not.a.token")).await, 3).await;
    // A valid token has its own bucket.
    let alice = plane.wallet_token(1, Role::Standard);
    assert_eq!(plane.get("/usage", Some(&alice)).await.status(), 200);
    assert_eq!(plane.get("/health", None).await.status(), 200);
    plane.plane.stop().await.unwrap();
}

#[tokio::test]
async fn every_response_has_a_request_id() {
    let plane = Plane::start(RateLimits::default()).await;
    let given = "client-req.42_x";
    let resp = plane
        .send(Method::GET, "/health", None, &[("x-request-id", given)])
        .await;
    assert_eq!(resp.headers()["x-request-id"], given);
    // Errors carry one too, and ids are fresh per request.
    let mut seen = BTreeSet::new();
    for _ in 0..3 {
        let resp = plane.get("/no/such/route", None).await;
        assert_eq!(resp.status(), 404);
        let id = resp.headers()["x-request-id"].to_str().unwrap().to_owned();
        assert_eq!(id.len(), 36, "{id}");
        seen.insert(id);
    }
    assert_eq!(seen.len(), 3);
    // Unsafe or overlong ids are replaced.
    let long = "a".repeat(200);
    for bad in ["../etc", "a b", "x\"y", long.as_str()] {
        let resp = plane
            .send(Method::GET, "/health", None, &[("x-request-id", bad)])
            .await;
        let id = resp.headers()["x-request-id"].to_str().unwrap();
        assert_ne!(id, bad);
        assert_eq!(id.len(), 36, "{id}");
    }
    plane.plane.stop().await.unwrap();
}

/// The samples of an exposition, `name{labels}` to value, after checking every line's form
/// and that every family has its HELP and TYPE.
fn parse_exposition(text: &str) -> BTreeMap<String, f64> {
    let mut samples = BTreeMap::new();
    let mut typed = BTreeSet::new();
    let mut helped = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# HELP ") {
            helped.insert(rest.split(' ').next().unwrap().to_owned());
            continue;
        }
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut parts = rest.split(' ');
            let name = parts.next().unwrap().to_owned();
            let kind = parts.next().unwrap();
            assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
            typed.insert(name);
            continue;
        }
        assert!(!line.starts_with('#') && !line.is_empty(), "{line:?}");
        let (series, value) = line.rsplit_once(' ').unwrap();
        let value: f64 = value.parse().unwrap_or_else(|_| panic!("{line}"));
        let name = series.split('{').next().unwrap();
        assert!(
            name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_')
                && name.starts_with("vmfleet_"),
            "{line}"
        );
        let labels = &series[name.len()..];
        if !labels.is_empty() {
            assert!(labels.starts_with('{') && labels.ends_with('}'), "{line}");
            for pair in labels[1..labels.len() - 1].split("\",") {
                let (k, v) = pair.split_once("=\"").unwrap_or_else(|| panic!("{line}"));
                assert!(k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'));
                assert!(!v.trim_end_matches('"').contains('"'), "{line}");
            }
        }
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| typed.contains(*f)))
            .unwrap_or(name);
        assert!(typed.contains(family), "no TYPE for {line}");
        assert!(helped.contains(family), "no HELP for {line}");
        assert!(samples.insert(series.to_owned(), value).is_none(), "{line}");
    }
    samples
}

async fn scrape(plane: &Plane) -> BTreeMap<String, f64> {
    let resp = plane.get("/metrics", Some(&plane.admin())).await;
    assert_eq!(resp.status(), 200);
    assert!(
        resp.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/plain; version=0.0.4")
    );
    parse_exposition(&resp.text().await.unwrap())
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_count_requests() {
    let plane = Plane::start(limits(2, 10, 100)).await;
    // Admins only.
    assert_eq!(plane.get("/metrics", None).await.status(), 401);
    let alice = plane.wallet_token(1, Role::Standard);
    assert_eq!(plane.get("/metrics", Some(&alice)).await.status(), 403);

    let before = scrape(&plane).await;
    let health = r#"vmfleet_http_requests_total{method="GET",route="/health",status="200"}"#;
    let health_before = before.get(health).copied().unwrap_or(0.0);
    for _ in 0..3 {
        plane.get("/health", None).await;
    }
    // A route with a parameter is counted by its template, not its path.
    let admin = plane.admin();
    let created: vmfleet_wire::api::CreateNodeResponse = plane
        .http
        .post(format!("{}/nodes", plane.base))
        .bearer_auth(&admin)
        .json(&serde_json::json!({"name": "n1"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let node = created.node_id.as_str();
    let resp = plane
        .send(
            Method::POST,
            &format!("/nodes/{node}/drain"),
            Some(&admin),
            &[],
        )
        .await;
    assert_eq!(resp.status(), 200);
    plane.get("/no/such/route", None).await;
    // Alice goes over her limit of 2 (her refused scrape above was one).
    let limited_before = before["vmfleet_rate_limited_total"];
    for _ in 0..3 {
        plane.get("/usage", Some(&alice)).await;
    }

    let after = scrape(&plane).await;
    assert_eq!(after[health], health_before + 3.0);
    let drain =
        r#"vmfleet_http_requests_total{method="POST",route="/nodes/{id}/drain",status="200"}"#;
    assert_eq!(after[drain], 1.0);
    assert!(
        after.keys().all(|k| !k.contains(node)),
        "a raw path is a label"
    );
    assert_eq!(
        after[r#"vmfleet_http_requests_total{method="GET",route="unmatched",status="404"}"#],
        1.0
    );
    assert_eq!(
        after[r#"vmfleet_http_requests_total{method="GET",route="/usage",status="429"}"#],
        2.0
    );
    assert_eq!(after["vmfleet_rate_limited_total"], limited_before + 2.0);
    // The histogram: cumulative buckets up to +Inf, which is the count.
    let h = r#"method="GET",route="/health""#;
    let inf = after[&format!("vmfleet_http_request_duration_seconds_bucket{{{h},le=\"+Inf\"}}")];
    assert_eq!(
        inf,
        after[&format!("vmfleet_http_request_duration_seconds_count{{{h}}}")]
    );
    assert!(inf >= 3.0);
    let le_1ms =
        after[&format!("vmfleet_http_request_duration_seconds_bucket{{{h},le=\"0.001\"}}")];
    let le_10s = after[&format!("vmfleet_http_request_duration_seconds_bucket{{{h},le=\"10\"}}")];
    assert!(le_1ms <= le_10s && le_10s <= inf);
    // The fleet, from the database: the drained node, nothing connected, no VMs.
    assert_eq!(after[r#"vmfleet_nodes{status="MAINTENANCE"}"#], 1.0);
    assert_eq!(after[r#"vmfleet_nodes{status="ONLINE"}"#], 0.0);
    assert_eq!(after["vmfleet_fleet_connected_nodes"], 0.0);
    assert_eq!(after[r#"vmfleet_vms{state="running"}"#], 0.0);
    assert!(!after.contains_key(r#"vmfleet_vms{state="deleted"}"#));
    plane.plane.stop().await.unwrap();
}
