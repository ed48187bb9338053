//! The middleware every request passes through: its request id, its caller, its rate limit,
//! its metrics and its one access log line.
//!
//! - Request id: a valid incoming `X-Request-Id` (an id of up to 128 letters, digits, `_`, `.`
//!   and `-`, starting with a letter or digit) is kept; anything else is replaced by a fresh
//!   UUID. It is a field of the `request` span every log line of the request is written in,
//!   and the `X-Request-Id` of the response.
//! - Caller: the bearer token (a sign-in JWT, or an API token looked up in the store) is
//!   verified once here; handlers' [`crate::caller::Caller`] reuses the result, refusal
//!   included. An API token counts against its owner's rate limit, like the owner's JWT.
//! - Rate limit ([`crate::ratelimit`]): every response to a limited caller carries
//!   `X-RateLimit-Limit` (requests a minute), `X-RateLimit-Remaining` and `X-RateLimit-Reset`
//!   (seconds until the bucket is full again); over the limit it is 429 with `Retry-After`.
//!   `/health` and Socket.IO (`/socket.io/`, the agents) are exempt.
//! - Access log: method, path (never the query string, which may carry a token), status,
//!   latency, request id and caller subject. Headers and bodies are never logged.

use std::time::Instant;

use axum::extract::{ConnectInfo, MatchedPath, Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tracing::Instrument;
use vmfleet_core::RequestId;

use crate::AppState;
use crate::caller::{self, Caller};
use crate::error::ApiError;
use crate::metrics::UNMATCHED;
use crate::ratelimit::{Decision, RateKey};

pub const X_REQUEST_ID: HeaderName = HeaderName::from_static("x-request-id");
pub const X_RATELIMIT_LIMIT: HeaderName = HeaderName::from_static("x-ratelimit-limit");
pub const X_RATELIMIT_REMAINING: HeaderName = HeaderName::from_static("x-ratelimit-remaining");
pub const X_RATELIMIT_RESET: HeaderName = HeaderName::from_static("x-ratelimit-reset");

/// The Socket.IO endpoint's path prefix.
const SOCKET_IO: &str = "/socket.io/";

/// The longest path an access log line shows.
const MAX_LOGGED_PATH: usize = 256;

/// The incoming request id when it is a valid one, else a fresh one.
pub fn request_id(headers: &HeaderMap) -> RequestId {
    headers
        .get(&X_REQUEST_ID)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| RequestId::new(v).ok())
        .unwrap_or_else(RequestId::generate)
}

fn exempt(method: &axum::http::Method, path: &str) -> bool {
    path == "/health" || path.starts_with(SOCKET_IO) || crate::dashboard::is_file(method, path)
}

fn shown_path(path: &str) -> &str {
    match path.char_indices().nth(MAX_LOGGED_PATH) {
        Some((i, _)) => &path[..i],
        None => path,
    }
}

fn set_number(headers: &mut HeaderMap, name: HeaderName, n: u64) {
    headers.insert(name, HeaderValue::from(n));
}

fn rate_headers(headers: &mut HeaderMap, d: &Decision) {
    set_number(headers, X_RATELIMIT_LIMIT, u64::from(d.limit));
    set_number(headers, X_RATELIMIT_REMAINING, u64::from(d.remaining));
    set_number(headers, X_RATELIMIT_RESET, d.reset_secs);
}

/// The middleware; see the module's documentation.
pub(crate) async fn observe(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let started = Instant::now();
    let id = request_id(req.headers());
    let method = req.method().clone();
    let path = req.uri().path().to_owned();
    let route = match req.extensions().get::<MatchedPath>() {
        Some(m) => m.as_str().to_owned(),
        None if path.starts_with(SOCKET_IO) => SOCKET_IO.to_owned(),
        None => UNMATCHED.to_owned(),
    };
    let span = tracing::info_span!("request", id = %id);

    let verified = caller::verify(&state, req.headers()).await;
    let caller = verified.as_ref().ok().map(|(c, _)| c.clone());
    let subject = caller.as_ref().map(|Caller(t)| t.subject.to_string());
    let decision = if exempt(&method, &path) {
        None
    } else {
        let (key, limit) = match &caller {
            Some(Caller(t)) => (
                RateKey::Subject(t.subject.clone()),
                state.limiter.limits().for_role(t.role),
            ),
            None => (
                req.extensions()
                    .get::<ConnectInfo<crate::Peer>>()
                    .map_or(RateKey::Anonymous, |c| RateKey::Ip(c.0.addr.ip())),
                state.limiter.limits().anonymous,
            ),
        };
        limit.map(|l| state.limiter.check(&key, l, started))
    };
    caller::remember(req.extensions_mut(), verified);

    let mut resp = match decision {
        Some(d) if !d.allowed => {
            state.metrics.rate_limited();
            ApiError::RateLimited {
                limit: d.limit,
                retry_after_secs: d.retry_after_secs,
            }
            .into_response()
        }
        _ => next.run(req).instrument(span.clone()).await,
    };
    if let Some(d) = &decision {
        rate_headers(resp.headers_mut(), d);
    }
    if let Ok(v) = HeaderValue::from_str(id.as_str()) {
        resp.headers_mut().insert(X_REQUEST_ID, v);
    }
    let latency = started.elapsed();
    state
        .metrics
        .record(&method, &route, resp.status(), latency);
    span.in_scope(|| {
        tracing::info!(
            target: "vmfleet::access",
            method = %method,
            path = ?shown_path(&path),
            status = resp.status().as_u16(),
            latency_ms = latency.as_secs_f64() * 1000.0,
            caller = subject.as_deref().unwrap_or("-"),
            "request"
        );
    });
    resp
}
