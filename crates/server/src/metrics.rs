//! `GET /metrics`: the control plane in Prometheus' text exposition format (version 0.0.4),
//! written by hand.
//!
//! - `vmfleet_http_requests_total{method,route,status}` and
//!   `vmfleet_http_request_duration_seconds{method,route}` (a histogram, 1 ms to 10 s): `route`
//!   is the matched route template (`/nodes/{id}`), never the raw path, so the label set
//!   stays bounded whatever clients send (Socket.IO is `/socket.io/`, anything else that
//!   matches no route is `unmatched`).
//! - `vmfleet_nodes{status}`, `vmfleet_vms{state}` (from the database; deleted ones are not
//!   counted), `vmfleet_fleet_connected_nodes` (agents connected now).
//! - `vmfleet_rate_limited_total`: requests refused with 429.
//!
//! Access: an admin bearer token (Prometheus' `authorization` setting), like every other
//! operator endpoint.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::extract::State;
use axum::http::{Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vmfleet_core::VmState;
use vmfleet_store::NodeStatus;

use crate::AppState;
use vmfleet_auth::Permission;

use crate::caller::{Admin, need};
use crate::error::ApiError;

/// Upper bounds of the latency histogram's buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 13] = [
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// The route label of a request that matched no route.
pub const UNMATCHED: &str = "unmatched";

/// An HTTP method as a label: the standard ones, anything else `OTHER`.
fn method_label(m: &Method) -> &'static str {
    match *m {
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::DELETE => "DELETE",
        Method::PATCH => "PATCH",
        Method::HEAD => "HEAD",
        Method::OPTIONS => "OPTIONS",
        _ => "OTHER",
    }
}

#[derive(Debug, Default)]
struct Histogram {
    /// Per bucket of [`LATENCY_BUCKETS`], not cumulative; the last one is `+Inf`.
    counts: [u64; LATENCY_BUCKETS.len() + 1],
    sum: f64,
    count: u64,
}

impl Histogram {
    fn observe(&mut self, secs: f64) {
        let i = LATENCY_BUCKETS
            .iter()
            .position(|b| secs <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        self.counts[i] += 1;
        self.sum += secs;
        self.count += 1;
    }
}

#[derive(Debug, Default)]
struct Http {
    requests: BTreeMap<(&'static str, String, u16), u64>,
    latency: BTreeMap<(&'static str, String), Histogram>,
}

/// What the HTTP middleware counts.
#[derive(Debug, Default)]
pub struct HttpMetrics {
    http: Mutex<Http>,
    rate_limited: AtomicU64,
}

impl HttpMetrics {
    /// Counts one request to `route` (a template, or [`UNMATCHED`]).
    pub fn record(&self, method: &Method, route: &str, status: StatusCode, latency: Duration) {
        let method = method_label(method);
        let mut http = match self.http.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        *http
            .requests
            .entry((method, route.to_owned(), status.as_u16()))
            .or_default() += 1;
        http.latency
            .entry((method, route.to_owned()))
            .or_default()
            .observe(latency.as_secs_f64());
    }

    pub fn rate_limited(&self) {
        self.rate_limited.fetch_add(1, Ordering::Relaxed);
    }

    fn render_http(&self, out: &mut String) {
        let http = match self.http.lock() {
            Ok(h) => h,
            Err(poisoned) => poisoned.into_inner(),
        };
        family(
            out,
            "vmfleet_http_requests_total",
            "counter",
            "HTTP requests answered, by method, route template and status",
        );
        for ((method, route, status), n) in &http.requests {
            let _ = writeln!(
                out,
                "vmfleet_http_requests_total{{method=\"{method}\",route=\"{}\",status=\"{status}\"}} {n}",
                escape(route)
            );
        }
        family(
            out,
            "vmfleet_http_request_duration_seconds",
            "histogram",
            "Time to answer HTTP requests, by method and route template",
        );
        for ((method, route), h) in &http.latency {
            let labels = format!("method=\"{method}\",route=\"{}\"", escape(route));
            let mut cumulative = 0;
            for (i, n) in h.counts.iter().enumerate() {
                cumulative += n;
                let le = LATENCY_BUCKETS
                    .get(i)
                    .map_or_else(|| "+Inf".to_owned(), |b| b.to_string());
                let _ = writeln!(
                    out,
                    "vmfleet_http_request_duration_seconds_bucket{{{labels},le=\"{le}\"}} {cumulative}"
                );
            }
            let _ = writeln!(
                out,
                "vmfleet_http_request_duration_seconds_sum{{{labels}}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "vmfleet_http_request_duration_seconds_count{{{labels}}} {}",
                h.count
            );
        }
        family(
            out,
            "vmfleet_rate_limited_total",
            "counter",
            "Requests refused because their caller went over its rate limit",
        );
        let _ = writeln!(
            out,
            "vmfleet_rate_limited_total {}",
            self.rate_limited.load(Ordering::Relaxed)
        );
    }
}

fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

/// A label value as the exposition format quotes it.
fn escape(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// The whole exposition.
async fn render(state: &AppState) -> Result<String, ApiError> {
    let mut out = String::new();
    state.metrics.render_http(&mut out);
    if let Some(store) = &state.store {
        let nodes = store.list_nodes().await?;
        family(
            &mut out,
            "vmfleet_nodes",
            "gauge",
            "Registered nodes, by status",
        );
        for status in [
            NodeStatus::Online,
            NodeStatus::Offline,
            NodeStatus::Maintenance,
        ] {
            let n = nodes.iter().filter(|node| node.status == status).count();
            let _ = writeln!(out, "vmfleet_nodes{{status=\"{status}\"}} {n}");
        }
        if let Some(fleet) = &state.fleet {
            let connected = nodes.iter().filter(|n| fleet.is_connected(&n.id)).count();
            family(
                &mut out,
                "vmfleet_fleet_connected_nodes",
                "gauge",
                "Registered nodes whose agent is connected now",
            );
            let _ = writeln!(out, "vmfleet_fleet_connected_nodes {connected}");
        }
        let by_state = store.count_vms_by_state().await?;
        family(
            &mut out,
            "vmfleet_vms",
            "gauge",
            "VMs and containers that are not deleted, by state",
        );
        for st in VmState::ALL.into_iter().filter(|s| *s != VmState::Deleted) {
            let n = by_state
                .iter()
                .find(|(s, _)| *s == st)
                .map_or(0, |(_, n)| *n);
            let _ = writeln!(out, "vmfleet_vms{{state=\"{st}\"}} {n}");
        }
    }
    Ok(out)
}

/// `GET /metrics`, admin only.
pub(crate) async fn metrics(
    State(state): State<AppState>,
    Admin(token): Admin,
) -> Result<Response, ApiError> {
    need(&token, Permission::Read)?;
    let body = render(&state).await?;
    Ok((
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        body,
    )
        .into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_and_labels_escaped() {
        let m = HttpMetrics::default();
        m.record(
            &Method::GET,
            "/a\"b",
            StatusCode::OK,
            Duration::from_micros(500),
        );
        m.record(
            &Method::GET,
            "/a\"b",
            StatusCode::OK,
            Duration::from_secs(20),
        );
        m.record(
            &Method::from_bytes(b"BREW").unwrap_or(Method::GET),
            UNMATCHED,
            StatusCode::NOT_FOUND,
            Duration::from_millis(3),
        );
        let mut out = String::new();
        m.render_http(&mut out);
        assert!(out.contains(
            "vmfleet_http_requests_total{method=\"GET\",route=\"/a\\\"b\",status=\"200\"} 2"
        ));
        assert!(out.contains(
            "vmfleet_http_request_duration_seconds_bucket{method=\"GET\",route=\"/a\\\"b\",le=\"0.001\"} 1"
        ));
        assert!(out.contains(
            "vmfleet_http_request_duration_seconds_bucket{method=\"GET\",route=\"/a\\\"b\",le=\"10\"} 1"
        ));
        assert!(out.contains(
            "vmfleet_http_request_duration_seconds_bucket{method=\"GET\",route=\"/a\\\"b\",le=\"+Inf\"} 2"
        ));
        assert!(out.contains(
            "vmfleet_http_requests_total{method=\"OTHER\",route=\"unmatched\",status=\"404\"} 1"
        ));
        assert!(out.contains("# TYPE vmfleet_http_request_duration_seconds histogram"));
    }
}
