//! An open-loop HTTP load at a fixed request rate: requests go out on schedule whether or not
//! the earlier ones were answered (unlike wrk, whose connections wait for each answer), so a
//! server that falls behind shows it in its latency instead of slowing the load down. Each
//! request's latency runs from the moment it was sent; how late it was sent after its due time
//! is reported apart (the load generator's own health).

use std::sync::Arc;
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use crate::fleet::Latency;
use crate::{BenchError, Context, Result};

/// Requests in flight at most; one due beyond that is not sent and counted as dropped.
pub const MAX_IN_FLIGHT: usize = 2048;

/// One request, as sent over and over.
#[derive(Debug, Clone)]
pub struct Request {
    pub method: reqwest::Method,
    pub url: String,
    pub token: Option<String>,
    pub body: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RateRun {
    pub name: String,
    pub description: String,
    /// The rate asked for, and what was answered per second over the run.
    pub rate: f64,
    pub answered_per_s: f64,
    pub duration_s: f64,
    pub sent: usize,
    pub answered: usize,
    pub non_2xx: usize,
    pub errors: usize,
    pub first_error: Option<String>,
    /// Due but not sent: MAX_IN_FLIGHT requests were already waiting.
    pub dropped: usize,
    pub latency_ms: Latency,
    pub send_lateness_ms: Latency,
}

/// Sends `request` `rate` times a second for `duration`, then waits (at most 10 s) for the
/// last answers.
pub async fn run(
    name: &str,
    description: &str,
    request: Request,
    rate: f64,
    duration: Duration,
) -> Result<RateRun> {
    if !rate.is_finite() || rate <= 0.0 || duration.is_zero() {
        return Err(BenchError::new(
            "a fixed-rate run needs a rate and a duration",
        ));
    }
    let client = reqwest::Client::builder()
        .tcp_nodelay(true)
        .pool_max_idle_per_host(MAX_IN_FLIGHT)
        .timeout(Duration::from_secs(10))
        .build()
        .context("an HTTP client")?;
    let request = Arc::new(request);
    let total = (rate * duration.as_secs_f64()).round() as usize;
    let gate = Arc::new(tokio::sync::Semaphore::new(MAX_IN_FLIGHT));
    let mut tasks = tokio::task::JoinSet::new();
    let start = Instant::now() + Duration::from_millis(50);
    let (mut dropped, mut lateness) = (0, Vec::with_capacity(total));
    for i in 0..total {
        let due = start + Duration::from_secs_f64(i as f64 / rate);
        tokio::time::sleep_until(due.into()).await;
        let Ok(permit) = gate.clone().try_acquire_owned() else {
            dropped += 1;
            continue;
        };
        let sent = Instant::now();
        lateness.push(sent.saturating_duration_since(due).as_secs_f64() * 1000.0);
        let (client, request) = (client.clone(), request.clone());
        tasks.spawn(async move {
            let mut b = client.request(request.method.clone(), &request.url);
            if let Some(t) = &request.token {
                b = b.bearer_auth(t);
            }
            if let Some(body) = &request.body {
                b = b
                    .header("content-type", "application/json")
                    .body(body.clone());
            }
            let r = match b.send().await {
                Ok(r) => {
                    let status = r.status();
                    // The whole body, as a client would read it.
                    match r.bytes().await {
                        Ok(_) => Ok(status.is_success()),
                        Err(e) => Err(e.to_string()),
                    }
                }
                Err(e) => Err(e.to_string()),
            };
            drop(permit);
            (sent.elapsed(), Instant::now(), r)
        });
    }
    let (mut latencies, mut non_2xx, mut errors, mut first_error) = (Vec::new(), 0, 0, None);
    let mut last = start;
    let drain = tokio::time::timeout(Duration::from_secs(10), async {
        while let Some(done) = tasks.join_next().await {
            let Ok((took, at, r)) = done else {
                errors += 1;
                continue;
            };
            last = last.max(at);
            match r {
                Ok(ok) => {
                    latencies.push(took.as_secs_f64() * 1000.0);
                    if !ok {
                        non_2xx += 1;
                    }
                }
                Err(e) => {
                    errors += 1;
                    first_error.get_or_insert(e);
                }
            }
        }
    })
    .await;
    if drain.is_err() {
        first_error.get_or_insert("answers still missing 10 s after the last request".into());
        errors += tasks.len();
        tasks.abort_all();
    }
    let span = last
        .saturating_duration_since(start)
        .as_secs_f64()
        .max(1e-9);
    let answered = latencies.len();
    Ok(RateRun {
        name: name.to_owned(),
        description: description.to_owned(),
        rate,
        answered_per_s: (answered as f64 / span * 10.0).round() / 10.0,
        duration_s: duration.as_secs_f64(),
        sent: total - dropped,
        answered,
        non_2xx,
        errors,
        first_error,
        dropped,
        latency_ms: Latency::of(&mut latencies),
        send_lateness_ms: Latency::of(&mut lateness),
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A loopback HTTP server answering 200 (every other request 404) to each request.
    async fn server() -> String {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(async move {
            let n = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            loop {
                let (mut s, _) = l.accept().await.unwrap();
                let n = n.clone();
                tokio::spawn(async move {
                    let mut buf = vec![0u8; 4096];
                    loop {
                        let Ok(k) = s.read(&mut buf).await else {
                            return;
                        };
                        if k == 0 {
                            return;
                        }
                        let i = n.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                        let status = if i.is_multiple_of(2) {
                            "200 OK"
                        } else {
                            "404 Not Found"
                        };
                        let r = format!("HTTP/1.1 {status}\r\ncontent-length: 2\r\n\r\nok");
                        if s.write_all(r.as_bytes()).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        format!("http://{addr}/x")
    }

    #[tokio::test]
    async fn sends_at_the_rate_asked() {
        let url = server().await;
        let req = Request {
            method: reqwest::Method::GET,
            url,
            token: Some("t".into()),
            body: None,
        };
        let t = Instant::now();
        let r = run("x", "d", req, 200.0, Duration::from_secs(1))
            .await
            .unwrap();
        assert!(t.elapsed() >= Duration::from_millis(990));
        assert_eq!((r.sent, r.answered, r.errors, r.dropped), (200, 200, 0, 0));
        assert_eq!(r.non_2xx, 100);
        assert!(
            r.answered_per_s > 150.0 && r.answered_per_s < 250.0,
            "{r:?}"
        );
        assert!(r.latency_ms.p50 > 0.0);
        let bad = Request {
            method: reqwest::Method::GET,
            url: "http://127.0.0.1:1/".into(),
            token: None,
            body: None,
        };
        let r = run("x", "d", bad, 20.0, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!((r.answered, r.errors), (0, 20));
        assert!(r.first_error.is_some());
        assert!(
            run("x", "d", r_req(), 0.0, Duration::from_secs(1))
                .await
                .is_err()
        );
    }

    fn r_req() -> Request {
        Request {
            method: reqwest::Method::GET,
            url: String::new(),
            token: None,
            body: None,
        }
    }
}
