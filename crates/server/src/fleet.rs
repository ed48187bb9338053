//! The control plane's side of seed 001: the Socket.IO namespace `/fleet` host agents dial
//! into.
//!
//! A node authenticates with its host key, as `Authorization: Bearer <key>` in the handshake
//! or `{"token": "<key>"}` in the connect payload; a wrong key gets `connect_error` and no
//! connection. Events become wire types at once ([`AgentEvent::decode`]) and go to the
//! [`NodeRegistry`]; each is acknowledged `{ "success": true }` or `false` with the reason.
//! A node is online while connected and heartbeating: three missed heartbeats (15 s) mark it
//! offline and drop the connection, even when TCP stays half-open.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, Extension, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use vmfleet_core::NodeId;
use vmfleet_wire::fleet::{
    Ack, AgentEvent, BackendCommand, Heartbeat, InstanceStarted, InstanceStopped, NAMESPACE,
    NODE_INFO, NodeInfo,
};

/// How often agents heartbeat (seed 001), and how many may be missed.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
pub const MISSED_HEARTBEATS: u32 = 3;

/// What the control plane records about nodes; the store implements it.
#[async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// The node whose host key this is, with its name, if any.
    async fn authenticate(&self, host_key: &str) -> Option<(NodeId, String)>;
    async fn node_online(&self, node: &NodeId);
    async fn node_offline(&self, node: &NodeId);
    async fn heartbeat(&self, node: &NodeId, hb: &Heartbeat) -> Result<(), String>;
    async fn instance_started(&self, node: &NodeId, ev: &InstanceStarted) -> Result<(), String>;
    async fn instance_stopped(&self, node: &NodeId, ev: &InstanceStopped) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("node {0} is not connected")]
    NotConnected(NodeId),
    #[error("node {0} did not acknowledge within the timeout")]
    NoAck(NodeId),
    #[error("node {node} refused the command: {message}")]
    Refused { node: NodeId, message: String },
}

/// The `/fleet` namespace: connected nodes and a way to send them commands.
#[derive(Clone)]
pub struct Fleet {
    io: SocketIo,
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<dyn NodeRegistry>,
    /// Connected nodes: their socket and when they were last heard from.
    nodes: Mutex<HashMap<NodeId, (SocketRef, Instant)>>,
    heartbeat_period: Duration,
}

#[derive(Debug)]
struct Unauthorized;

impl std::fmt::Display for Unauthorized {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("invalid host key")
    }
}

impl std::error::Error for Unauthorized {}

/// The host key from the handshake's `Authorization: Bearer` header or the auth payload.
fn host_key(s: &SocketRef, auth: &Option<Value>) -> Option<String> {
    let header = s
        .req_parts()
        .headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    header.or_else(|| {
        auth.as_ref()?
            .get("token")?
            .as_str()
            .map(|t| t.strip_prefix("Bearer ").unwrap_or(t).to_owned())
    })
}

impl Fleet {
    /// Registers `/fleet` on `io`. `heartbeat_period` is the agents' period; a node silent for
    /// [`MISSED_HEARTBEATS`] periods is dropped.
    pub fn attach(
        io: &SocketIo,
        registry: Arc<dyn NodeRegistry>,
        heartbeat_period: Duration,
    ) -> Fleet {
        let fleet = Fleet {
            io: io.clone(),
            inner: Arc::new(Inner {
                registry,
                nodes: Mutex::new(HashMap::new()),
                heartbeat_period,
            }),
        };
        let auth_fleet = fleet.clone();
        let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
            let fleet = auth_fleet.clone();
            async move {
                let key = host_key(&s, &auth.ok()).ok_or(Unauthorized)?;
                let (node_id, name) = fleet
                    .inner
                    .registry
                    .authenticate(&key)
                    .await
                    .ok_or(Unauthorized)?;
                s.extensions.insert(NodeInfo { node_id, name });
                Ok::<(), Unauthorized>(())
            }
        };
        let conn_fleet = fleet.clone();
        let on_connect = move |s: SocketRef, Extension(info): Extension<NodeInfo>| {
            let fleet = conn_fleet.clone();
            async move { fleet.connected(s, info).await }
        };
        io.ns(NAMESPACE, on_connect.with(middleware));
        fleet.spawn_watchdog();
        fleet
    }

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, (SocketRef, Instant)>> {
        self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    async fn connected(&self, s: SocketRef, info: NodeInfo) {
        let node = info.node_id.clone();
        tracing::info!(%node, name = %info.name, "node connected");
        // A node connects once: a newer connection replaces an older one.
        if let Some((old, _)) = self
            .nodes()
            .insert(node.clone(), (s.clone(), Instant::now()))
        {
            let _ = old.disconnect();
        }
        // Handlers first: the agent may send as soon as it hears `node_info`.
        for name in AgentEvent::NAMES {
            let fleet = self.clone();
            let node = node.clone();
            s.on(name, move |Data(payload): Data<Value>, ack: AckSender| {
                let fleet = fleet.clone();
                let node = node.clone();
                async move {
                    let reply = fleet.event(&node, name, &payload).await;
                    let _ = ack.send(&reply);
                }
            });
        }
        let fleet = self.clone();
        let gone = node.clone();
        s.on_disconnect(move |s: SocketRef| {
            let fleet = fleet.clone();
            let node = gone.clone();
            async move {
                let current = {
                    let mut nodes = fleet.nodes();
                    let is_current = nodes.get(&node).is_some_and(|(sock, _)| sock.id == s.id);
                    if is_current {
                        nodes.remove(&node);
                    }
                    is_current
                };
                if current {
                    tracing::info!(%node, "node disconnected");
                    fleet.inner.registry.node_offline(&node).await;
                }
            }
        });
        self.inner.registry.node_online(&node).await;
        let _ = s.emit(NODE_INFO, &info);
    }

    /// Handles one agent event and returns its acknowledgement.
    async fn event(&self, node: &NodeId, name: &str, payload: &Value) -> Ack {
        if let Some(entry) = self.nodes().get_mut(node) {
            entry.1 = Instant::now();
        }
        let ev = match AgentEvent::decode(name, payload) {
            Ok(ev) => ev,
            Err(e) => {
                let detail = std::error::Error::source(&e).map(|s| format!(": {s}"));
                return Ack::refused(format!("{e}{}", detail.unwrap_or_default()));
            }
        };
        let r = match &ev {
            AgentEvent::Heartbeat(hb) if &hb.node_id != node => Err(format!(
                "nodeId {} is not the node this host key belongs to",
                hb.node_id
            )),
            AgentEvent::Heartbeat(hb) => self.inner.registry.heartbeat(node, hb).await,
            AgentEvent::InstanceStarted(e) => self.inner.registry.instance_started(node, e).await,
            AgentEvent::InstanceStopped(e) => self.inner.registry.instance_stopped(node, e).await,
        };
        match r {
            Ok(()) => Ack::ok(),
            Err(message) => Ack::refused(message),
        }
    }

    /// Drops nodes that stopped heartbeating, even if their TCP connection looks alive.
    fn spawn_watchdog(&self) {
        let weak = Arc::downgrade(&self.inner);
        let io = self.io.clone();
        let period = self.inner.heartbeat_period;
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(inner) = weak.upgrade() else { return };
                let fleet = Fleet {
                    io: io.clone(),
                    inner,
                };
                let limit = period * MISSED_HEARTBEATS;
                let silent: Vec<(NodeId, SocketRef)> = {
                    let mut nodes = fleet.nodes();
                    let ids: Vec<NodeId> = nodes
                        .iter()
                        .filter(|(_, (_, seen))| seen.elapsed() > limit)
                        .map(|(id, _)| id.clone())
                        .collect();
                    ids.into_iter()
                        .filter_map(|id| nodes.remove(&id).map(|(s, _)| (id, s)))
                        .collect()
                };
                for (node, sock) in silent {
                    tracing::warn!(%node, "node missed {MISSED_HEARTBEATS} heartbeats; dropping it");
                    let _ = sock.disconnect();
                    fleet.inner.registry.node_offline(&node).await;
                }
            }
        });
    }

    /// Closes every agent connection (the control plane is shutting down).
    pub async fn close(&self) {
        self.io.close().await;
    }

    /// Disconnects `node`'s agent, if connected (the node was removed).
    pub fn drop_node(&self, node: &NodeId) {
        if let Some((sock, _)) = self.nodes().remove(node) {
            let _ = sock.disconnect();
        }
    }

    /// Whether `node` is connected now.
    pub fn is_connected(&self, node: &NodeId) -> bool {
        self.nodes().contains_key(node)
    }

    /// Sends a command to a node and waits for its acknowledgement.
    pub async fn send(
        &self,
        node: &NodeId,
        cmd: &BackendCommand,
        timeout: Duration,
    ) -> Result<Value, FleetError> {
        let sock = self
            .nodes()
            .get(node)
            .map(|(s, _)| s.clone())
            .ok_or_else(|| FleetError::NotConnected(node.clone()))?;
        let stream = sock
            .timeout(timeout)
            .emit_with_ack::<_, Value>(cmd.name(), &cmd.payload())
            .map_err(|_| FleetError::NotConnected(node.clone()))?;
        let reply = stream.await.map_err(|_| FleetError::NoAck(node.clone()))?;
        match serde_json::from_value::<Ack>(reply.clone()) {
            Ok(Ack {
                success: false,
                message,
            }) => Err(FleetError::Refused {
                node: node.clone(),
                message: message.unwrap_or_default(),
            }),
            _ => Ok(reply),
        }
    }
}
