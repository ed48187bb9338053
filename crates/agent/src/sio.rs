//! A Socket.IO v4 client over the WebSocket transport: what the agent speaks to the control
//! plane's `/fleet` namespace (seed 001).
//!
//! Engine.IO v4 frames are text: `0` open, `2`/`3` ping/pong, `4` message. A Socket.IO packet
//! rides in a message: `40/fleet,{auth}` connect, `42/fleet,<id>["event",payload]` event,
//! `43/fleet,<id>[reply]` ack, `44/fleet,{...}` connect error, `41/fleet,` disconnect.
//! The host key goes both in the handshake's `Authorization: Bearer` header (the document)
//! and in the connect packet's auth payload (`{"token": ...}`).

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use serde_json::Value;
use tokio::sync::{Mutex, mpsc, oneshot};
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use vmfleet_wire::sio::{self, Packet, PacketKind, eio};

#[derive(Debug, thiserror::Error)]
pub enum SioError {
    #[error("the control plane URL {0:?} is not an http:// or ws:// URL")]
    BadUrl(String),
    #[error("the WebSocket connection failed")]
    WebSocket(#[source] Box<tokio_tungstenite::tungstenite::Error>),
    #[error("the control plane refused the connection: {0}")]
    Refused(String),
    #[error("unexpected Socket.IO frame {0:?}")]
    Protocol(String),
    #[error("the connection is closed")]
    Closed,
    #[error("no acknowledgement within {0:?}")]
    AckTimeout(Duration),
}

impl From<tokio_tungstenite::tungstenite::Error> for SioError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        SioError::WebSocket(Box::new(e))
    }
}

/// Something the server sent on the namespace.
#[derive(Debug)]
pub enum Incoming {
    /// An event; when `ack` is set the server waits for [`SioClient::ack`].
    Event {
        name: String,
        payload: Value,
        ack: Option<u64>,
    },
    /// The connection ended, with why.
    Disconnected(String),
}

type Acks = Arc<std::sync::Mutex<HashMap<u64, oneshot::Sender<Value>>>>;

/// A connected namespace. Cloning shares the connection.
#[derive(Clone)]
pub struct SioClient {
    out: mpsc::Sender<String>,
    ns: Arc<str>,
    acks: Acks,
    next_id: Arc<AtomicU64>,
    closed: Arc<Mutex<bool>>,
}

/// `http://host:port` (or `ws://`) -> the Engine.IO WebSocket endpoint.
fn endpoint(base: &str) -> Result<String, SioError> {
    let rest = base
        .strip_prefix("http://")
        .or_else(|| base.strip_prefix("ws://"))
        .ok_or_else(|| SioError::BadUrl(base.to_owned()))?;
    Ok(format!(
        "ws://{}/socket.io/?EIO=4&transport=websocket",
        rest.trim_end_matches('/')
    ))
}

impl SioClient {
    /// Connects to namespace `ns` of the server at `base` with `token`, and returns the
    /// client and the stream of what the server sends.
    pub async fn connect(
        base: &str,
        ns: &str,
        token: &str,
    ) -> Result<(SioClient, mpsc::Receiver<Incoming>), SioError> {
        let mut req = endpoint(base)?.into_client_request()?;
        let bearer = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| SioError::Refused("the host key is not a valid header value".into()))?;
        req.headers_mut().insert("authorization", bearer);
        // Nagle off: console bytes and acks are small writes that must go out at once.
        let (ws, _) = tokio_tungstenite::connect_async_with_config(req, None, true).await?;
        let (mut sink, mut stream) = ws.split();

        // Engine.IO open packet.
        let open = next_text(&mut stream).await?;
        if !open.starts_with('0') {
            return Err(SioError::Protocol(open));
        }
        // Socket.IO connect to the namespace, with the key as auth payload.
        let auth = serde_json::json!({ "token": token });
        sink.send(Message::text(sio::connect_frame(ns, &auth)))
            .await?;
        loop {
            let frame = next_text(&mut stream).await?;
            if frame == "2" {
                sink.send(Message::text("3")).await?;
                continue;
            }
            let packet = frame.strip_prefix(eio::MESSAGE).and_then(Packet::parse);
            match packet {
                Some(p) if p.kind == PacketKind::Connect => break,
                Some(p) if p.kind == PacketKind::ConnectError => {
                    return Err(SioError::Refused(p.error_message()));
                }
                _ => return Err(SioError::Protocol(frame)),
            }
        }

        let (out_tx, mut out_rx) = mpsc::channel::<String>(256);
        let (in_tx, in_rx) = mpsc::channel::<Incoming>(256);
        let acks: Acks = Arc::default();
        let closed = Arc::new(Mutex::new(false));
        let client = SioClient {
            out: out_tx.clone(),
            ns: ns.into(),
            acks: acks.clone(),
            next_id: Arc::new(AtomicU64::new(0)),
            closed: closed.clone(),
        };
        // Writer.
        tokio::spawn(async move {
            while let Some(text) = out_rx.recv().await {
                if sink.send(Message::text(text)).await.is_err() {
                    break;
                }
            }
            let _ = sink.close().await;
        });
        // Reader.
        let ns_owned = ns.to_owned();
        tokio::spawn(async move {
            let reason = loop {
                let frame = match next_text(&mut stream).await {
                    Ok(f) => f,
                    Err(e) => break e.to_string(),
                };
                match frame.as_bytes().first() {
                    Some(b'2') => {
                        let _ = out_tx.send("3".into()).await;
                    }
                    Some(b'1') => break "the server closed the connection".into(),
                    Some(b'4') => {
                        let Some(p) = Packet::parse(&frame[1..]) else {
                            continue;
                        };
                        if p.nsp != ns_owned {
                            continue;
                        }
                        match p.kind {
                            PacketKind::Event => {
                                if let Some((name, payload)) = p.event() {
                                    let ev = Incoming::Event {
                                        name,
                                        payload,
                                        ack: p.id,
                                    };
                                    if in_tx.send(ev).await.is_err() {
                                        break "the client was dropped".into();
                                    }
                                }
                            }
                            PacketKind::Ack => {
                                if let (Some(id), Some(args)) = (p.id, p.ack_reply()) {
                                    let waiter =
                                        acks.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                                    if let Some(tx) = waiter {
                                        let _ = tx.send(args);
                                    }
                                }
                            }
                            PacketKind::Disconnect => {
                                break "the server disconnected the namespace".into();
                            }
                            _ => {}
                        }
                    }
                    _ => {}
                }
            };
            *closed.lock().await = true;
            acks.lock().unwrap_or_else(|p| p.into_inner()).clear();
            let _ = in_tx.send(Incoming::Disconnected(reason)).await;
        });
        Ok((client, in_rx))
    }

    async fn send(&self, text: String) -> Result<(), SioError> {
        if *self.closed.lock().await {
            return Err(SioError::Closed);
        }
        self.out.send(text).await.map_err(|_| SioError::Closed)
    }

    /// Emits an event without waiting for an acknowledgement.
    pub async fn emit(&self, name: &str, payload: &Value) -> Result<(), SioError> {
        self.send(sio::event_frame(&self.ns, None, name, payload))
            .await
    }

    /// Emits an event and waits for the server's acknowledgement (its first argument).
    pub async fn emit_with_ack(
        &self,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Value, SioError> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(id, tx);
        self.send(sio::event_frame(&self.ns, Some(id), name, payload))
            .await?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(_)) => Err(SioError::Closed),
            Err(_) => {
                self.acks
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .remove(&id);
                Err(SioError::AckTimeout(timeout))
            }
        }
    }

    /// Acknowledges the server's event `id` with `reply`.
    pub async fn ack(&self, id: u64, reply: &Value) -> Result<(), SioError> {
        self.send(sio::ack_frame(&self.ns, id, &reply.to_string()))
            .await
    }

    /// Leaves the namespace and closes the connection.
    pub async fn disconnect(&self) {
        let _ = self.send(sio::disconnect_frame(&self.ns)).await;
        let _ = self.send("1".into()).await;
    }
}

async fn next_text<S>(stream: &mut S) -> Result<String, SioError>
where
    S: futures_util::Stream<Item = Result<Message, tokio_tungstenite::tungstenite::Error>> + Unpin,
{
    loop {
        match stream.next().await {
            Some(Ok(Message::Text(t))) => return Ok(t.to_string()),
            Some(Ok(Message::Close(_))) | None => return Err(SioError::Closed),
            Some(Ok(_)) => continue,
            Some(Err(e)) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints() {
        assert_eq!(
            endpoint("http://127.0.0.1:8080/").unwrap(),
            "ws://127.0.0.1:8080/socket.io/?EIO=4&transport=websocket"
        );
        assert!(endpoint("ftp://x").is_err());
    }
}
