//! Firecracker's REST API: HTTP/1.1 over its Unix socket, one connection per request.
//!
//! Firecracker answers a successful `PUT`/`PATCH` with `204 No Content` and a successful `GET`
//! with `200` and a JSON body; a refusal is a `4xx`/`5xx` with `{"fault_message": "..."}`.
//! Its HTTP server (micro_http) ignores headers it does not know, so only `Content-Type` and
//! `Accept` (both `application/json`) and `Content-Length` matter.
//!
//! The request bodies below are the definitions of Firecracker's swagger file
//! (`shared/specs/firecracker-swagger.yaml`); optional fields are left out rather than sent as
//! `null`, since Firecracker refuses unknown fields and `null` is not a string.

use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::header::{ACCEPT, CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode};
use hyper_util::rt::TokioIo;
use serde::{Deserialize, Serialize};
use tokio::net::UnixStream;

use crate::HypervisorError;

/// The longest fault message (or raw error body) kept in an error, in bytes.
const MAX_FAULT_LEN: usize = 2048;

/// Why an API call failed.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("cannot connect to the Firecracker API socket {}: {source}", socket.display())]
    Connect {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{method} {path}: the HTTP exchange failed: {source}")]
    Http {
        method: Method,
        path: String,
        #[source]
        source: hyper::Error,
    },
    #[error("{method} {path}: the request could not be built: {reason}")]
    Request {
        method: Method,
        path: String,
        reason: String,
    },
    #[error("{method} {path}: no answer within {timeout:?}")]
    Timeout {
        method: Method,
        path: String,
        timeout: Duration,
    },
    #[error("{method} {path} was refused with {status}: {fault}")]
    Refused {
        method: Method,
        path: String,
        status: StatusCode,
        /// Firecracker's `fault_message`, or the raw body when it sent none.
        fault: String,
    },
    #[error("{method} {path}: the answer is not the expected JSON: {source}")]
    Decode {
        method: Method,
        path: String,
        #[source]
        source: serde_json::Error,
    },
}

impl ApiError {
    /// Whether the failure says nothing about the request itself: the socket or the connection
    /// went away, as it does when the process dies.
    pub fn is_transport(&self) -> bool {
        matches!(self, ApiError::Connect { .. } | ApiError::Http { .. })
    }
}

impl From<ApiError> for HypervisorError {
    fn from(e: ApiError) -> Self {
        match e {
            ApiError::Timeout { .. } => HypervisorError::Timeout("the Firecracker API"),
            other => HypervisorError::Protocol {
                backend: "firecracker",
                message: other.to_string(),
            },
        }
    }
}

/// A client of one Firecracker process's API socket.
#[derive(Debug, Clone)]
pub struct ApiClient {
    socket: PathBuf,
    timeout: Duration,
}

impl ApiClient {
    pub fn new(socket: impl Into<PathBuf>, timeout: Duration) -> Self {
        ApiClient {
            socket: socket.into(),
            timeout,
        }
    }

    pub fn socket(&self) -> &Path {
        &self.socket
    }

    pub async fn put<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<(), ApiError> {
        self.send(Method::PUT, path, body, self.timeout).await
    }

    pub async fn patch<T: Serialize + ?Sized>(&self, path: &str, body: &T) -> Result<(), ApiError> {
        self.send(Method::PATCH, path, body, self.timeout).await
    }

    /// A `PUT` with its own time limit (snapshots of large guests take a while).
    pub async fn put_with_timeout<T: Serialize + ?Sized>(
        &self,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        self.send(Method::PUT, path, body, timeout).await
    }

    /// A `GET`, its JSON answer decoded.
    pub async fn get<T: for<'de> Deserialize<'de>>(&self, path: &str) -> Result<T, ApiError> {
        let body = self.exchange(Method::GET, path, None, self.timeout).await?;
        serde_json::from_slice(&body).map_err(|source| ApiError::Decode {
            method: Method::GET,
            path: path.to_owned(),
            source,
        })
    }

    async fn send<T: Serialize + ?Sized>(
        &self,
        method: Method,
        path: &str,
        body: &T,
        timeout: Duration,
    ) -> Result<(), ApiError> {
        let json = serde_json::to_vec(body).map_err(|e| ApiError::Request {
            method: method.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;
        self.exchange(method, path, Some(json), timeout)
            .await
            .map(drop)
    }

    /// One request on a fresh connection; the body of a 2xx answer, or why there was none.
    async fn exchange(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
        timeout: Duration,
    ) -> Result<Bytes, ApiError> {
        let call = self.exchange_unbounded(method.clone(), path, body);
        match tokio::time::timeout(timeout, call).await {
            Ok(result) => result,
            Err(_) => Err(ApiError::Timeout {
                method,
                path: path.to_owned(),
                timeout,
            }),
        }
    }

    async fn exchange_unbounded(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<Bytes, ApiError> {
        let http = |source| ApiError::Http {
            method: method.clone(),
            path: path.to_owned(),
            source,
        };
        let stream =
            UnixStream::connect(&self.socket)
                .await
                .map_err(|source| ApiError::Connect {
                    socket: self.socket.clone(),
                    source,
                })?;
        let (mut sender, conn) =
            hyper::client::conn::http1::handshake::<_, Full<Bytes>>(TokioIo::new(stream))
                .await
                .map_err(http)?;
        let conn = tokio::spawn(conn);

        let builder = Request::builder()
            .method(method.clone())
            .uri(path)
            .header(HOST, "localhost")
            .header(ACCEPT, "application/json");
        let request = match body {
            Some(json) => builder
                .header(CONTENT_TYPE, "application/json")
                .body(Full::new(Bytes::from(json))),
            None => builder.body(Full::new(Bytes::new())),
        }
        .map_err(|e| ApiError::Request {
            method: method.clone(),
            path: path.to_owned(),
            reason: e.to_string(),
        })?;

        let result = async {
            let response = sender.send_request(request).await.map_err(http)?;
            let status = response.status();
            let bytes = response
                .into_body()
                .collect()
                .await
                .map_err(http)?
                .to_bytes();
            Ok((status, bytes))
        }
        .await;
        conn.abort();
        let (status, bytes) = result?;

        if status.is_success() {
            Ok(bytes)
        } else {
            Err(ApiError::Refused {
                method,
                path: path.to_owned(),
                status,
                fault: fault_message(status, &bytes),
            })
        }
    }
}

#[derive(Deserialize)]
struct Fault {
    fault_message: String,
}

/// Firecracker's `fault_message`, else the body as text, else the status's reason.
fn fault_message(status: StatusCode, body: &[u8]) -> String {
    let text = match serde_json::from_slice::<Fault>(body) {
        Ok(f) => f.fault_message,
        Err(_) => String::from_utf8_lossy(body).trim().to_owned(),
    };
    if text.is_empty() {
        return status
            .canonical_reason()
            .unwrap_or("no reason given")
            .to_owned();
    }
    truncate(text, MAX_FAULT_LEN)
}

fn truncate(mut s: String, max: usize) -> String {
    if s.len() > max {
        let mut end = max;
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s.truncate(end);
        s.push('…');
    }
    s
}

// --- Request bodies (definitions of the swagger file) ----------------------------------------

/// `MachineConfiguration`.
#[derive(Debug, Serialize)]
pub struct MachineConfig {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
}

/// `BootSource`.
#[derive(Debug, Serialize)]
pub struct BootSource<'a> {
    pub kernel_image_path: &'a str,
    pub boot_args: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub initrd_path: Option<&'a str>,
}

/// `Drive` (a virtio-block drive backed by a file).
#[derive(Debug, Serialize)]
pub struct Drive<'a> {
    pub drive_id: &'a str,
    pub path_on_host: &'a str,
    pub is_root_device: bool,
    pub is_read_only: bool,
}

/// `NetworkInterface`.
#[derive(Debug, Serialize)]
pub struct NetworkInterface<'a> {
    pub iface_id: &'a str,
    pub host_dev_name: &'a str,
    pub guest_mac: &'a str,
}

/// `Balloon` (configured before boot).
#[derive(Debug, Serialize)]
pub struct Balloon {
    pub amount_mib: u64,
    pub deflate_on_oom: bool,
    pub stats_polling_interval_s: u64,
}

/// `EntropyDevice` (configured before boot; no rate limiter).
#[derive(Debug, Serialize)]
pub struct EntropyDevice {}

/// `BalloonUpdate` (after boot).
#[derive(Debug, Serialize)]
pub struct BalloonUpdate {
    pub amount_mib: u64,
}

/// `Metrics`.
#[derive(Debug, Serialize)]
pub struct Metrics<'a> {
    pub metrics_path: &'a str,
}

/// `InstanceActionInfo`.
#[derive(Debug, Serialize)]
pub struct Action {
    pub action_type: ActionType,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub enum ActionType {
    InstanceStart,
    SendCtrlAltDel,
    FlushMetrics,
}

/// `Vm`.
#[derive(Debug, Serialize)]
pub struct VmState {
    pub state: VmRunState,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub enum VmRunState {
    Paused,
    Resumed,
}

/// `SnapshotCreateParams`.
#[derive(Debug, Serialize)]
pub struct SnapshotCreate<'a> {
    pub snapshot_type: SnapshotType,
    pub snapshot_path: &'a str,
    pub mem_file_path: &'a str,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub enum SnapshotType {
    Full,
}

/// `SnapshotLoadParams`, memory from a file.
#[derive(Debug, Serialize)]
pub struct SnapshotLoad<'a> {
    pub snapshot_path: &'a str,
    pub mem_backend: MemoryBackend<'a>,
    pub resume_vm: bool,
}

/// `MemoryBackend`.
#[derive(Debug, Serialize)]
pub struct MemoryBackend<'a> {
    pub backend_type: MemoryBackendType,
    pub backend_path: &'a str,
}

#[derive(Debug, Clone, Copy, Serialize)]
pub enum MemoryBackendType {
    File,
}

/// `InstanceInfo` (the answer to `GET /`).
#[derive(Debug, Deserialize)]
pub struct InstanceInfo {
    pub id: String,
    /// `Not started`, `Running` or `Paused`.
    pub state: String,
    #[serde(default)]
    pub vmm_version: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_message_is_taken_from_the_json_body() {
        let body = br#"{"fault_message":"The requested operation is not supported after starting the microVM."}"#;
        assert_eq!(
            fault_message(StatusCode::BAD_REQUEST, body),
            "The requested operation is not supported after starting the microVM."
        );
        assert_eq!(
            fault_message(StatusCode::BAD_REQUEST, b"not json"),
            "not json"
        );
        assert_eq!(
            fault_message(StatusCode::INTERNAL_SERVER_ERROR, b""),
            "Internal Server Error"
        );
        let long = format!(r#"{{"fault_message":"{}"}}"#, "é".repeat(MAX_FAULT_LEN));
        assert!(fault_message(StatusCode::BAD_REQUEST, long.as_bytes()).len() <= MAX_FAULT_LEN + 3);
    }

    #[test]
    fn bodies_serialise_with_firecracker_names() {
        let v = serde_json::to_value(BootSource {
            kernel_image_path: "/k",
            boot_args: "console=ttyS0",
            initrd_path: None,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({"kernel_image_path": "/k", "boot_args": "console=ttyS0"})
        );
        let v = serde_json::to_value(SnapshotLoad {
            snapshot_path: "/s",
            mem_backend: MemoryBackend {
                backend_type: MemoryBackendType::File,
                backend_path: "/m",
            },
            resume_vm: true,
        })
        .unwrap();
        assert_eq!(
            v,
            serde_json::json!({
                "snapshot_path": "/s",
                "mem_backend": {"backend_type": "File", "backend_path": "/m"},
                "resume_vm": true
            })
        );
        let v = serde_json::to_value(Action {
            action_type: ActionType::SendCtrlAltDel,
        })
        .unwrap();
        assert_eq!(v, serde_json::json!({"action_type": "SendCtrlAltDel"}));
    }
}
