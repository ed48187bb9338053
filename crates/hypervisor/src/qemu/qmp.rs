//! A QMP client: QEMU's JSON machine protocol over a Unix socket.
//!
//! One reader task splits what QEMU sends into replies (matched to their command by `id`) and
//! asynchronous events (broadcast). Commands may be issued concurrently.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::UnixStream;
use tokio::net::unix::OwnedWriteHalf;
use tokio::sync::{Mutex, broadcast, oneshot};

use crate::HypervisorError;

type Pending = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Result<Value, String>>>>>;

/// An asynchronous QMP event (`SHUTDOWN`, `STOP`, `RESET`, ...).
#[derive(Debug, Clone)]
pub struct QmpEvent {
    pub name: String,
    pub data: Value,
}

pub struct Qmp {
    writer: Mutex<OwnedWriteHalf>,
    pending: Pending,
    next_id: AtomicU64,
    events: broadcast::Sender<QmpEvent>,
    closed: tokio::sync::watch::Receiver<bool>,
}

fn proto(message: impl Into<String>) -> HypervisorError {
    HypervisorError::Protocol {
        backend: "qemu",
        message: message.into(),
    }
}

impl Qmp {
    /// Connects, reads the greeting and enters command mode.
    pub async fn connect(path: &Path) -> Result<Arc<Self>, HypervisorError> {
        let stream = UnixStream::connect(path)
            .await
            .map_err(HypervisorError::io(path))?;
        let (read, write) = stream.into_split();
        let mut lines = BufReader::new(read).lines();
        // QEMU serves one QMP client at a time: behind another one, no greeting ever comes.
        let greeting = tokio::time::timeout(std::time::Duration::from_secs(5), lines.next_line())
            .await
            .map_err(|_| HypervisorError::Timeout("QMP's greeting (is another client connected?)"))?
            .map_err(HypervisorError::io(path))?
            .ok_or_else(|| proto("QMP closed before its greeting"))?;
        let greeting: Value =
            serde_json::from_str(&greeting).map_err(|e| proto(format!("QMP greeting: {e}")))?;
        if greeting.get("QMP").is_none() {
            return Err(proto(format!("unexpected QMP greeting {greeting}")));
        }
        let (events, _) = broadcast::channel(256);
        let (closed_tx, closed) = tokio::sync::watch::channel(false);
        let qmp = Arc::new(Qmp {
            writer: Mutex::new(write),
            pending: Arc::default(),
            next_id: AtomicU64::new(1),
            events: events.clone(),
            closed,
        });
        let pending = qmp.pending.clone();
        tokio::spawn(async move {
            while let Ok(Some(line)) = lines.next_line().await {
                let Ok(msg) = serde_json::from_str::<Value>(&line) else {
                    tracing::warn!(%line, "QEMU sent a line that is not JSON");
                    continue;
                };
                if let Some(name) = msg.get("event").and_then(Value::as_str) {
                    let _ = events.send(QmpEvent {
                        name: name.to_owned(),
                        data: msg.get("data").cloned().unwrap_or(Value::Null),
                    });
                    continue;
                }
                let Some(id) = msg.get("id").and_then(Value::as_u64) else {
                    continue;
                };
                let reply = match (msg.get("return"), msg.get("error")) {
                    (Some(ret), _) => Ok(ret.clone()),
                    (None, Some(err)) => Err(err
                        .get("desc")
                        .and_then(Value::as_str)
                        .unwrap_or("unknown QMP error")
                        .to_owned()),
                    (None, None) => Err(format!("malformed QMP reply {msg}")),
                };
                let tx = pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                if let Some(tx) = tx {
                    let _ = tx.send(reply);
                }
            }
            // Socket closed: fail whoever still waits.
            pending.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let _ = closed_tx.send(true);
        });
        qmp.execute("qmp_capabilities", json!({})).await?;
        Ok(qmp)
    }

    /// Runs a command and returns its `return` value.
    pub async fn execute(&self, command: &str, arguments: Value) -> Result<Value, HypervisorError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.pending
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        let mut line = json!({"execute": command, "arguments": arguments, "id": id}).to_string();
        line.push('\n');
        {
            let mut w = self.writer.lock().await;
            if let Err(e) = w.write_all(line.as_bytes()).await {
                self.pending
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                return Err(proto(format!("sending {command}: {e}")));
            }
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(desc)) => Err(proto(format!("{command}: {desc}"))),
            Err(_) => Err(proto(format!("QEMU closed QMP during {command}"))),
        }
    }

    pub fn events(&self) -> broadcast::Receiver<QmpEvent> {
        self.events.subscribe()
    }

    /// Completes when QEMU closes the QMP socket (its process is ending).
    pub async fn closed(&self) {
        let mut c = self.closed.clone();
        let _ = c.wait_for(|closed| *closed).await;
    }

    /// The run state of the guest (`running`, `paused`, `inmigrate`, `internal-error`, ...).
    pub async fn status(&self) -> Result<String, HypervisorError> {
        let v = self.execute("query-status", json!({})).await?;
        v.get("status")
            .and_then(Value::as_str)
            .map(str::to_owned)
            .ok_or_else(|| proto(format!("query-status answered {v}")))
    }
}
