//! A small HTTP/1.1 client for the Docker Engine API over its Unix socket: one connection per
//! request (the socket is local, a connect costs microseconds), JSON in and out, line-delimited
//! JSON streams, and the hijacked connection of `attach`.
//!
//! The API version is negotiated once: the highest version both the engine and this driver
//! speak, so an engine from Debian 12 (20.10, API 1.41) and a current one both work.

use std::fmt::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use hyper::{Method, Request, Response, StatusCode, header};
use hyper_util::rt::TokioIo;
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio::net::UnixStream;
use tokio::sync::OnceCell;

use super::api;
use crate::HypervisorError;

const BACKEND: &str = "docker";

/// The oldest API version this driver needs (DeviceRequests arrived in 1.40).
const MIN_API: (u32, u32) = (1, 40);
/// The newest API version this driver was written against.
const MAX_API: (u32, u32) = (1, 47);

/// What the engine answered when it did not say yes.
#[derive(Debug, Clone)]
pub(crate) struct Refusal {
    pub status: u16,
    pub message: String,
}

impl Refusal {
    pub fn into_error(self, op: &'static str) -> HypervisorError {
        HypervisorError::Engine {
            op,
            status: self.status,
            message: self.message,
        }
    }
}

/// An answer: a success body, or the engine's refusal (status and its message).
pub(crate) type Answer<T> = Result<T, Refusal>;

pub(crate) struct Engine {
    socket: PathBuf,
    timeout: Duration,
    version: OnceCell<String>,
}

/// A body to send.
pub(crate) enum Payload {
    Empty,
    Json(Vec<u8>),
    Tar(Bytes),
}

impl Engine {
    pub fn new(socket: PathBuf, timeout: Duration) -> Self {
        Engine {
            socket,
            timeout,
            version: OnceCell::new(),
        }
    }

    fn protocol(message: impl Into<String>) -> HypervisorError {
        HypervisorError::Protocol {
            backend: BACKEND,
            message: message.into(),
        }
    }

    /// The `/vX.Y` prefix of every versioned path.
    async fn prefix(&self) -> Result<&str, HypervisorError> {
        self.version
            .get_or_try_init(|| async {
                let resp = self
                    .send(Method::GET, "/version", Payload::Empty, false)
                    .await?;
                let (status, body) = self.collect(resp, self.timeout).await?;
                if !status.is_success() {
                    return Err(Self::refusal(status, &body).into_error("report its version"));
                }
                let v: api::Version = decode(&body)?;
                negotiate(&v.api_version, v.min_api_version.as_deref())
                    .map(|(a, b)| format!("/v{a}.{b}"))
            })
            .await
            .map(String::as_str)
    }

    /// Sends one request on a fresh connection and returns the response head; the body is
    /// read by the caller.
    async fn send(
        &self,
        method: Method,
        path_and_query: &str,
        payload: Payload,
        upgrade: bool,
    ) -> Result<Response<Incoming>, HypervisorError> {
        let stream = UnixStream::connect(&self.socket).await.map_err(|source| {
            HypervisorError::EngineUnreachable {
                socket: self.socket.clone(),
                source,
            }
        })?;
        let (mut sender, conn) = http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
            .await
            .map_err(|e| Self::protocol(format!("HTTP handshake failed: {e}")))?;
        tokio::spawn(async move {
            if let Err(e) = conn.with_upgrades().await {
                tracing::debug!(error = %e, "docker connection ended with an error");
            }
        });
        let mut req = Request::builder()
            .method(method)
            .uri(path_and_query)
            .header(header::HOST, "docker");
        let body = match payload {
            Payload::Empty => Bytes::new(),
            Payload::Json(b) => {
                req = req.header(header::CONTENT_TYPE, "application/json");
                Bytes::from(b)
            }
            Payload::Tar(b) => {
                req = req.header(header::CONTENT_TYPE, "application/x-tar");
                b
            }
        };
        if upgrade {
            req = req
                .header(header::CONNECTION, "Upgrade")
                .header(header::UPGRADE, "tcp");
        }
        let req = req
            .body(Full::new(body))
            .map_err(|e| Self::protocol(format!("cannot build the request: {e}")))?;
        sender
            .send_request(req)
            .await
            .map_err(|e| Self::protocol(format!("the request failed: {e}")))
    }

    async fn collect(
        &self,
        resp: Response<Incoming>,
        limit: Duration,
    ) -> Result<(StatusCode, Bytes), HypervisorError> {
        let status = resp.status();
        let body = tokio::time::timeout(limit, resp.into_body().collect())
            .await
            .map_err(|_| HypervisorError::Timeout("the Docker engine to answer"))?
            .map_err(|e| Self::protocol(format!("reading the answer failed: {e}")))?
            .to_bytes();
        Ok((status, body))
    }

    fn refusal(status: StatusCode, body: &[u8]) -> Refusal {
        let message = serde_json::from_slice::<api::ErrorBody>(body)
            .map(|b| b.message)
            .unwrap_or_else(|_| String::from_utf8_lossy(body).trim().to_owned());
        Refusal {
            status: status.as_u16(),
            message,
        }
    }

    /// A versioned request whose whole answer is read within `limit`.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        query: &[(&str, &str)],
        payload: Payload,
        limit: Option<Duration>,
    ) -> Result<Answer<(StatusCode, Bytes)>, HypervisorError> {
        let limit = limit.unwrap_or(self.timeout);
        let uri = format!("{}{}{}", self.prefix().await?, path, encode_query(query));
        let fut = async {
            let resp = self.send(method, &uri, payload, false).await?;
            self.collect(resp, limit).await
        };
        let (status, body) = tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| HypervisorError::Timeout("the Docker engine to answer"))??;
        if status.is_success() || status == StatusCode::NOT_MODIFIED {
            Ok(Ok((status, body)))
        } else {
            Ok(Err(Self::refusal(status, &body)))
        }
    }

    /// GET returning JSON.
    pub async fn get<T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer<T>, HypervisorError> {
        match self
            .request(Method::GET, path, query, Payload::Empty, None)
            .await?
        {
            Ok((_, body)) => decode(&body).map(Ok),
            Err(r) => Ok(Err(r)),
        }
    }

    /// POST with an optional JSON body, returning the status (the body is ignored).
    pub async fn post(
        &self,
        path: &str,
        query: &[(&str, &str)],
        limit: Option<Duration>,
    ) -> Result<Answer<StatusCode>, HypervisorError> {
        Ok(self
            .request(Method::POST, path, query, Payload::Empty, limit)
            .await?
            .map(|(s, _)| s))
    }

    /// POST of a JSON body returning JSON.
    pub async fn post_json<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        query: &[(&str, &str)],
        body: &B,
    ) -> Result<Answer<T>, HypervisorError> {
        let body = serde_json::to_vec(body)
            .map_err(|e| Self::protocol(format!("cannot encode the request: {e}")))?;
        match self
            .request(Method::POST, path, query, Payload::Json(body), None)
            .await?
        {
            Ok((_, body)) => decode(&body).map(Ok),
            Err(r) => Ok(Err(r)),
        }
    }

    pub async fn delete(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer<StatusCode>, HypervisorError> {
        Ok(self
            .request(Method::DELETE, path, query, Payload::Empty, None)
            .await?
            .map(|(s, _)| s))
    }

    /// A request whose answer is a stream of JSON messages (image pull and import): reads it to
    /// the end within `limit` and returns the first error message in it, if any. The engine
    /// answers 200 and reports a failure inside the stream.
    pub async fn progress_stream(
        &self,
        path: &str,
        query: &[(&str, &str)],
        payload: Payload,
        limit: Duration,
    ) -> Result<Answer<()>, HypervisorError> {
        let uri = format!("{}{}{}", self.prefix().await?, path, encode_query(query));
        let fut = async {
            let resp = self.send(Method::POST, &uri, payload, false).await?;
            let status = resp.status();
            if !status.is_success() {
                let (_, body) = self.collect(resp, limit).await?;
                return Ok(Err(Self::refusal(status, &body)));
            }
            let mut body = resp.into_body();
            let mut buf = BytesMut::new();
            let mut first_error = None;
            while let Some(frame) = body.frame().await {
                let frame =
                    frame.map_err(|e| Self::protocol(format!("reading the stream failed: {e}")))?;
                if let Ok(data) = frame.into_data() {
                    buf.extend_from_slice(&data);
                }
                while let Some(pos) = buf.iter().position(|&b| b == b'\n') {
                    let line = buf.split_to(pos + 1);
                    if first_error.is_none() {
                        first_error = progress_error(&line);
                    }
                }
            }
            if first_error.is_none() {
                first_error = progress_error(&buf);
            }
            Ok(match first_error {
                Some(message) => Err(Refusal {
                    status: status.as_u16(),
                    message,
                }),
                None => Ok(()),
            })
        };
        tokio::time::timeout(limit, fut)
            .await
            .map_err(|_| HypervisorError::Timeout("the Docker engine to finish the image"))?
    }

    /// Sends a request that the engine answers by hijacking the connection (`attach`), and
    /// returns the raw bidirectional stream.
    pub async fn upgrade(
        &self,
        path: &str,
        query: &[(&str, &str)],
    ) -> Result<Answer<TokioIo<hyper::upgrade::Upgraded>>, HypervisorError> {
        let uri = format!("{}{}{}", self.prefix().await?, path, encode_query(query));
        let resp = tokio::time::timeout(
            self.timeout,
            self.send(Method::POST, &uri, Payload::Empty, true),
        )
        .await
        .map_err(|_| HypervisorError::Timeout("the Docker engine to attach"))??;
        let status = resp.status();
        if status != StatusCode::SWITCHING_PROTOCOLS {
            let (_, body) = self.collect(resp, self.timeout).await?;
            return Ok(Err(Self::refusal(status, &body)));
        }
        let upgraded = hyper::upgrade::on(resp)
            .await
            .map_err(|e| Self::protocol(format!("the attach upgrade failed: {e}")))?;
        Ok(Ok(TokioIo::new(upgraded)))
    }
}

fn progress_error(line: &[u8]) -> Option<String> {
    let line = line.trim_ascii();
    if line.is_empty() {
        return None;
    }
    let msg: api::ProgressMessage = serde_json::from_slice(line).ok()?;
    msg.error_detail
        .and_then(|d| d.message)
        .or(msg.error)
        .filter(|m| !m.is_empty())
}

pub(crate) fn decode<T: DeserializeOwned>(body: &[u8]) -> Result<T, HypervisorError> {
    serde_json::from_slice(body).map_err(|e| HypervisorError::Protocol {
        backend: BACKEND,
        message: format!("unexpected answer from the engine: {e}"),
    })
}

fn parse_version(v: &str) -> Option<(u32, u32)> {
    let (a, b) = v.trim().split_once('.')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// The API version to speak: the engine's newest, capped at ours, and at least our oldest.
pub(crate) fn negotiate(
    engine_max: &str,
    engine_min: Option<&str>,
) -> Result<(u32, u32), HypervisorError> {
    let max = parse_version(engine_max).ok_or_else(|| HypervisorError::Protocol {
        backend: BACKEND,
        message: format!("the engine reports API version {engine_max:?}"),
    })?;
    let min = engine_min.and_then(parse_version).unwrap_or(MIN_API);
    let chosen = max.min(MAX_API);
    if chosen < MIN_API || chosen < min {
        return Err(HypervisorError::Protocol {
            backend: BACKEND,
            message: format!(
                "the engine speaks API {}.{} to {}.{}, and this driver needs {}.{} to {}.{}",
                min.0, min.1, max.0, max.1, MIN_API.0, MIN_API.1, MAX_API.0, MAX_API.1
            ),
        });
    }
    Ok(chosen)
}

/// `?k=v&...` with values percent-encoded (RFC 3986 unreserved characters kept).
pub(crate) fn encode_query(query: &[(&str, &str)]) -> String {
    let mut out = String::new();
    for (i, (k, v)) in query.iter().enumerate() {
        out.push(if i == 0 { '?' } else { '&' });
        out.push_str(k);
        out.push('=');
        for b in v.bytes() {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                out.push(char::from(b));
            } else {
                // Writing to a String cannot fail.
                let _ = write!(out, "%{b:02X}");
            }
        }
    }
    out
}

/// Percent-encodes one path segment (a container id or an image reference).
pub(crate) fn segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~' | b':' | b'@' | b'/')
        {
            out.push(char::from(b));
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiates_within_both_ranges() {
        assert_eq!(negotiate("1.41", Some("1.12")).ok(), Some((1, 41)));
        assert_eq!(negotiate("1.51", Some("1.24")).ok(), Some((1, 47)));
        assert!(negotiate("1.39", Some("1.12")).is_err());
        assert!(negotiate("1.52", Some("1.48")).is_err());
        assert!(negotiate("banana", None).is_err());
    }

    #[test]
    fn query_is_encoded() {
        assert_eq!(
            encode_query(&[("filters", r#"{"label":["vmfleet.rental"]}"#), ("all", "1")]),
            "?filters=%7B%22label%22%3A%5B%22vmfleet.rental%22%5D%7D&all=1"
        );
        assert_eq!(encode_query(&[]), "");
        assert_eq!(segment("a b/c"), "a%20b/c");
    }

    #[test]
    fn progress_errors_are_found() {
        assert_eq!(
            progress_error(br#"{"errorDetail":{"message":"denied"},"error":"denied"}"#),
            Some("denied".to_owned())
        );
        assert_eq!(progress_error(br#"{"status":"Downloading"}"#), None);
        assert_eq!(progress_error(b"  \n"), None);
    }
}
