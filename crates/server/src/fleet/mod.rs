//! The control plane's side of seed 001: the Socket.IO namespace `/fleet` host agents dial
//! into.
//!
//! A node authenticates with its host key, as `Authorization: Bearer <key>` in the handshake
//! or `{"token": "<key>"}` in the connect payload; a wrong key gets `connect_error` and no
//! connection. Events become wire types at once ([`AgentEvent::decode`]) and go to the
//! [`NodeRegistry`] (heartbeats to the node's [`HeartbeatSink`], found once per connection);
//! each is acknowledged `{ "success": true }` or `false` with the reason.
//! A node is online while connected and heartbeating: three missed heartbeats (15 s) mark it
//! offline and drop the connection, even when TCP stays half-open.
//!
//! Abuse stays with the node that commits it: a message over [`MAX_MESSAGE_BYTES`] closes
//! that node's connection; heartbeats beyond [`HEARTBEAT_BURST`] at once, refilled at one per
//! second (or two per heartbeat period when that is shorter), are refused with an error ack
//! and one log line per node and flood.
//!
//! Beyond seed 001, the namespace carries the REST API's VM operations ([`Fleet::vm_command`])
//! and the VMs' serial consoles ([`Fleet::console`]) over the same agent connection.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use serde_json::Value;
use socketioxide::SocketIo;
use socketioxide::extract::{AckSender, Data, Extension, SocketRef, TryData};
use socketioxide::handler::ConnectHandler;
use tokio::sync::broadcast;
use vmfleet_core::{NodeId, VmId};

use crate::bucket::Bucket;

pub mod batch;
mod direct;
mod frames;
pub(crate) use direct::intercept;
use direct::{DirectLink, LinkError};
use vmfleet_wire::fleet::{
    Ack, AgentEvent, BackendCommand, Base64, ConsoleData, ConsoleRef, HeartbeatReport,
    InstanceStarted, InstanceStopped, NAMESPACE, NODE_INFO, NodeInfo, VmCommand, VmCommandReply,
    VmReport,
};

/// An agent's event as the control plane reads it.
type Event = AgentEvent<HeartbeatReport>;

/// How often agents heartbeat (seed 001), and how many may be missed.
pub const HEARTBEAT_PERIOD: Duration = Duration::from_secs(5);
pub const MISSED_HEARTBEATS: u32 = 3;

/// The largest message an agent may send; a bigger one closes its connection.
pub const MAX_MESSAGE_BYTES: usize = 1 << 20;

/// Heartbeats a node may send at once; the allowance refills at one per second, or two per
/// heartbeat period when that is shorter.
pub const HEARTBEAT_BURST: f64 = 5.0;

/// Console bytes buffered per watcher before the slowest one misses some.
const CONSOLE_BUFFER: usize = 256;

/// What the control plane records about nodes; the store implements it.
#[async_trait]
pub trait NodeRegistry: Send + Sync + 'static {
    /// The node whose host key this is, with its name, if any.
    async fn authenticate(&self, host_key: &str) -> Option<(NodeId, String)>;
    async fn node_online(&self, node: &NodeId);
    async fn node_offline(&self, node: &NodeId);
    /// Where `node`'s heartbeats go: found once per connection, not once per heartbeat.
    fn heartbeats(&self, node: &NodeId) -> Arc<dyn HeartbeatSink>;
    async fn instance_started(&self, node: &NodeId, ev: &InstanceStarted) -> Result<(), String>;
    async fn instance_stopped(&self, node: &NodeId, ev: &InstanceStopped) -> Result<(), String>;
    /// A VM of `node` changed state (or was reported on reconnection).
    async fn vm_state(&self, node: &NodeId, report: &VmReport) -> Result<(), String>;
}

/// Records one node's heartbeats.
#[async_trait]
pub trait HeartbeatSink: Send + Sync + 'static {
    async fn heartbeat(&self, hb: HeartbeatReport) -> Result<(), String>;
}

#[derive(Debug, thiserror::Error)]
pub enum FleetError {
    #[error("node {0} is not connected")]
    NotConnected(NodeId),
    #[error("node {0} did not acknowledge within the timeout")]
    NoAck(NodeId),
    #[error("node {node} refused the command: {message}")]
    Refused { node: NodeId, message: String },
    #[error("node {node} answered with something that is not an acknowledgement: {reply}")]
    BadReply { node: NodeId, reply: Value },
}

/// The `/fleet` namespace: connected nodes and a way to send them commands.
#[derive(Clone)]
pub struct Fleet {
    io: SocketIo,
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<dyn NodeRegistry>,
    nodes: Mutex<HashMap<NodeId, Conn>>,
    /// VM consoles being watched: the node each streams from.
    consoles: Mutex<HashMap<VmId, Watched>>,
    heartbeat_period: Duration,
}

/// A node's connection: through socketioxide (long-polling, or upgraded from it), or a direct
/// WebSocket served by [`direct`].
#[derive(Clone)]
enum Link {
    Sio(SocketRef),
    Direct(Arc<DirectLink>),
}

impl Link {
    /// Whether both are the same connection.
    fn is(&self, other: &Link) -> bool {
        match (self, other) {
            (Link::Sio(a), Link::Sio(b)) => a.id == b.id,
            (Link::Direct(a), Link::Direct(b)) => a.id() == b.id(),
            _ => false,
        }
    }

    fn disconnect(&self) {
        match self {
            Link::Sio(s) => {
                let _ = s.clone().disconnect();
            }
            Link::Direct(d) => d.disconnect(),
        }
    }

    fn emit(&self, name: &str, payload: &Value) {
        match self {
            Link::Sio(s) => {
                let _ = s.emit(name, payload);
            }
            Link::Direct(d) => d.emit(name, payload),
        }
    }

    async fn emit_with_ack(
        &self,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Value, LinkError> {
        match self {
            Link::Sio(s) => s
                .timeout(timeout)
                .emit_with_ack::<_, Value>(name, payload)
                .map_err(|_| LinkError::Closed)?
                .await
                .map_err(|_| LinkError::Timeout),
            Link::Direct(d) => d.emit_with_ack(name, payload, timeout).await,
        }
    }
}

/// A connected node.
struct Conn {
    sock: Link,
    session: Arc<Session>,
}

/// What a node's events read and update, held by its connection so that an event needs no
/// lookup, and by the fleet's map of nodes (whose watchdog reads when it was last heard from).
struct Session {
    node: NodeId,
    liveness: Mutex<Liveness>,
    heartbeats: Arc<dyn HeartbeatSink>,
}

struct Liveness {
    /// When the node was last heard from.
    seen: Instant,
    /// Its allowance of heartbeats.
    heartbeats: Bucket,
}

impl Session {
    fn new(node: NodeId, heartbeats: Arc<dyn HeartbeatSink>, heartbeat_period: Duration) -> Self {
        let per_sec = (2.0 / heartbeat_period.as_secs_f64().max(0.001)).max(1.0);
        Session {
            node,
            liveness: Mutex::new(Liveness {
                seen: Instant::now(),
                heartbeats: Bucket::full(HEARTBEAT_BURST, per_sec),
            }),
            heartbeats,
        }
    }

    fn liveness(&self) -> std::sync::MutexGuard<'_, Liveness> {
        self.liveness.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The most console output kept per watched VM, for a watcher that joins late.
pub const CONSOLE_SCROLLBACK: usize = 64 * 1024;

/// A console being watched: its node, its watchers, and its recent output.
struct Watched {
    node: NodeId,
    tx: broadcast::Sender<bytes::Bytes>,
    scrollback: std::collections::VecDeque<u8>,
}

/// A watch on a VM's serial console: its bytes as the agent streams them. The agent streams
/// while any tap is open; the last one dropped tells it to stop.
pub struct ConsoleTap {
    /// The last [`CONSOLE_SCROLLBACK`] bytes seen before this tap opened.
    pub scrollback: Vec<u8>,
    pub output: broadcast::Receiver<bytes::Bytes>,
    fleet: Fleet,
    vm: VmId,
    _watching: batch::Watching,
}

impl ConsoleTap {
    /// Starts this tap over for a watcher that fell behind: the scrollback as it is now, and
    /// from here on every byte after it (no byte lost or repeated between the two).
    pub fn resync(&mut self) -> Vec<u8> {
        let consoles = self.fleet.consoles();
        match consoles.get(&self.vm) {
            Some(w) => {
                self.output = w.tx.subscribe();
                w.scrollback.iter().copied().collect()
            }
            None => Vec::new(),
        }
    }
}

impl Drop for ConsoleTap {
    fn drop(&mut self) {
        let last = {
            let mut consoles = self.fleet.consoles();
            // This tap's receiver still counts.
            let last = consoles
                .get(&self.vm)
                .is_some_and(|w| w.tx.receiver_count() <= 1);
            if last {
                consoles.remove(&self.vm)
            } else {
                None
            }
        };
        if let Some(Watched { node, .. }) = last {
            let fleet = self.fleet.clone();
            let cmd = BackendCommand::ConsoleDetach(ConsoleRef {
                vm_id: self.vm.clone(),
            });
            tokio::spawn(async move {
                let _ = fleet.send(&node, &cmd, Duration::from_secs(5)).await;
            });
        }
    }
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
fn bearer(headers: &axum::http::HeaderMap, auth: Option<&Value>) -> Option<String> {
    let header = headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::to_owned);
    header.or_else(|| {
        auth?
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
                consoles: Mutex::new(HashMap::new()),
                heartbeat_period,
            }),
        };
        let auth_fleet = fleet.clone();
        let middleware = move |s: SocketRef, TryData(auth): TryData<Value>| {
            let fleet = auth_fleet.clone();
            async move {
                let auth = auth.ok();
                let key = bearer(&s.req_parts().headers, auth.as_ref()).ok_or(Unauthorized)?;
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

    fn nodes(&self) -> std::sync::MutexGuard<'_, HashMap<NodeId, Conn>> {
        self.inner.nodes.lock().unwrap_or_else(|p| p.into_inner())
    }

    #[allow(clippy::type_complexity)]
    fn consoles(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, Watched>> {
        self.inner
            .consoles
            .lock()
            .unwrap_or_else(|p| p.into_inner())
    }

    /// A session for a connection of `node`, to [`register`](Self::register) with it.
    fn session(&self, node: &NodeId) -> Arc<Session> {
        let heartbeats = self.inner.registry.heartbeats(node);
        Arc::new(Session::new(
            node.clone(),
            heartbeats,
            self.inner.heartbeat_period,
        ))
    }

    /// Takes `link` as `info`'s node's connection: online, and told who it is.
    async fn register(&self, link: Link, session: Arc<Session>, info: NodeInfo) {
        let node = info.node_id.clone();
        tracing::info!(%node, name = %info.name, "node connected");
        // A node connects once: a newer connection replaces an older one.
        let conn = Conn {
            sock: link.clone(),
            session,
        };
        if let Some(old) = self.nodes().insert(node.clone(), conn) {
            old.sock.disconnect();
        }
        self.inner.registry.node_online(&node).await;
        link.emit(NODE_INFO, &serde_json::to_value(&info).unwrap_or_default());
    }

    /// `link`, `node`'s connection, is gone: the node is offline unless a newer connection
    /// replaced it.
    async fn unregister(&self, link: &Link, node: &NodeId) {
        let current = {
            let mut nodes = self.nodes();
            let is_current = nodes.get(node).is_some_and(|c| c.sock.is(link));
            if is_current {
                nodes.remove(node);
            }
            is_current
        };
        if current {
            tracing::info!(%node, "node disconnected");
            self.inner.registry.node_offline(node).await;
        }
    }

    /// A node connected through socketioxide.
    async fn connected(&self, s: SocketRef, info: NodeInfo) {
        let node = info.node_id.clone();
        let session = self.session(&node);
        // Handlers first: the agent may send as soon as it hears `node_info`.
        // Console bytes are handled in the order they arrive: in the handler's synchronous
        // part, which runs in the socket's receive loop (the futures it returns run as tasks,
        // in any order).
        {
            let fleet = self.clone();
            let node = node.clone();
            s.on(
                "console_output",
                move |Data(payload): Data<Value>, ack: AckSender| {
                    let reply = match Event::decode("console_output", &payload) {
                        Ok(AgentEvent::ConsoleOutput(c)) => match fleet.console_output(&node, &c) {
                            Ok(()) => Ack::ok(),
                            Err(m) => Ack::refused(m),
                        },
                        Ok(_) => Ack::refused("not console output"),
                        Err(e) => Ack::refused(e.to_string()),
                    };
                    let _ = ack.send(&reply);
                    // socketioxide runs the returned future as a task; the work above ran in
                    // the receive loop already, in order.
                    std::future::ready(())
                },
            );
        }
        for name in AgentEvent::NAMES
            .into_iter()
            .filter(|n| *n != "console_output")
        {
            let fleet = self.clone();
            let session = session.clone();
            s.on(name, move |Data(payload): Data<Value>, ack: AckSender| {
                let fleet = fleet.clone();
                let session = session.clone();
                async move {
                    let reply = fleet.event(&session, Event::decode(name, &payload)).await;
                    let _ = ack.send(&reply);
                }
            });
        }
        let fleet = self.clone();
        let gone = node.clone();
        s.on_disconnect(move |s: SocketRef| {
            let fleet = fleet.clone();
            let node = gone.clone();
            async move { fleet.unregister(&Link::Sio(s), &node).await }
        });
        self.register(Link::Sio(s), session, info).await;
    }

    /// Handles one event of `session`'s node, as decoded, and returns its acknowledgement.
    async fn event(&self, session: &Session, ev: Result<Event, vmfleet_wire::DecodeError>) -> Ack {
        let node = &session.node;
        let allowed = {
            let now = Instant::now();
            let mut liveness = session.liveness();
            liveness.seen = now;
            let heartbeat = match &ev {
                Ok(ev) => ev.name() == "heartbeat",
                Err(e) => e.kind() == Some("heartbeat"),
            };
            if heartbeat {
                liveness.heartbeats.take(now)
            } else {
                Ok(())
            }
        };
        if let Err(first) = allowed {
            if first {
                tracing::warn!(%node, "heartbeat flood: refusing heartbeats until the node slows down");
            }
            return Ack::refused("too many heartbeats: a node heartbeats once per period");
        }
        let ev = match ev {
            Ok(ev) => ev,
            Err(e) => {
                let detail = std::error::Error::source(&e).map(|s| format!(": {s}"));
                return Ack::refused(format!("{e}{}", detail.unwrap_or_default()));
            }
        };
        let r = match ev {
            AgentEvent::Heartbeat(hb) if &hb.node_id != node => Err(format!(
                "nodeId {} is not the node this host key belongs to",
                hb.node_id
            )),
            AgentEvent::Heartbeat(hb) => session.heartbeats.heartbeat(hb).await,
            AgentEvent::InstanceStarted(e) => self.inner.registry.instance_started(node, &e).await,
            AgentEvent::InstanceStopped(e) => self.inner.registry.instance_stopped(node, &e).await,
            AgentEvent::VmState(r) => self.inner.registry.vm_state(node, &r).await,
            AgentEvent::ConsoleOutput(c) => self.console_output(node, &c),
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
                let silent: Vec<(NodeId, Link)> = {
                    let mut nodes = fleet.nodes();
                    let ids: Vec<NodeId> = nodes
                        .iter()
                        .filter(|(_, c)| c.session.liveness().seen.elapsed() > limit)
                        .map(|(id, _)| id.clone())
                        .collect();
                    ids.into_iter()
                        .filter_map(|id| nodes.remove(&id).map(|c| (id, c.sock)))
                        .collect()
                };
                for (node, sock) in silent {
                    tracing::warn!(%node, "node missed {MISSED_HEARTBEATS} heartbeats; dropping it");
                    sock.disconnect();
                    fleet.inner.registry.node_offline(&node).await;
                }
            }
        });
    }

    /// Closes every agent connection (the control plane is shutting down).
    pub async fn close(&self) {
        let links: Vec<Link> = self.nodes().values().map(|c| c.sock.clone()).collect();
        for link in links {
            if let Link::Direct(d) = link {
                d.disconnect();
            }
        }
        self.io.close().await;
    }

    /// Disconnects `node`'s agent, if connected (the node was removed).
    pub fn drop_node(&self, node: &NodeId) {
        if let Some(conn) = self.nodes().remove(node) {
            conn.sock.disconnect();
        }
    }

    /// Whether `node` is connected now.
    pub fn is_connected(&self, node: &NodeId) -> bool {
        self.nodes().contains_key(node)
    }

    /// Sends a command to a node and waits for its acknowledgement.
    async fn send_raw(
        &self,
        node: &NodeId,
        cmd: &BackendCommand,
        timeout: Duration,
    ) -> Result<Value, FleetError> {
        let sock = self
            .nodes()
            .get(node)
            .map(|c| c.sock.clone())
            .ok_or_else(|| FleetError::NotConnected(node.clone()))?;
        sock.emit_with_ack(cmd.name(), &cmd.payload(), timeout)
            .await
            .map_err(|e| match e {
                LinkError::Closed => FleetError::NotConnected(node.clone()),
                LinkError::Timeout => FleetError::NoAck(node.clone()),
            })
    }

    /// Sends a node command and waits for its `{ "success": ... }` acknowledgement.
    pub async fn send(
        &self,
        node: &NodeId,
        cmd: &BackendCommand,
        timeout: Duration,
    ) -> Result<Ack, FleetError> {
        let reply = self.send_raw(node, cmd, timeout).await?;
        match serde_json::from_value::<Ack>(reply.clone()) {
            Ok(Ack {
                success: false,
                message,
            }) => Err(FleetError::Refused {
                node: node.clone(),
                message: message.unwrap_or_default(),
            }),
            Ok(ack) => Ok(ack),
            Err(_) => Err(FleetError::BadReply {
                node: node.clone(),
                reply,
            }),
        }
    }

    /// Runs a VM operation on `node` and returns the agent's answer, a refusal included (its
    /// `code` says why). Resending the same command (same request id) is safe: the agent runs
    /// it once.
    pub async fn vm_command(
        &self,
        node: &NodeId,
        cmd: VmCommand,
        timeout: Duration,
    ) -> Result<VmCommandReply, FleetError> {
        let reply = self
            .send_raw(node, &BackendCommand::VmCommand(cmd), timeout)
            .await?;
        serde_json::from_value(reply.clone()).map_err(|_| FleetError::BadReply {
            node: node.clone(),
            reply,
        })
    }

    /// Records what `node` answered about one of its VMs, as if it had reported it
    /// (`vm_state`): an answer to a command may overtake the node's own report.
    pub async fn record_vm_state(&self, node: &NodeId, report: &VmReport) -> Result<(), String> {
        self.inner.registry.vm_state(node, report).await
    }

    /// Watches the serial console of `vm`, which runs on `node`: the agent streams it (its
    /// scrollback first) while any tap is open.
    pub async fn console(&self, node: &NodeId, vm: &VmId) -> Result<ConsoleTap, FleetError> {
        let (output, scrollback, first) = {
            let mut consoles = self.consoles();
            match consoles.get(vm) {
                Some(w) if w.node == *node => (
                    w.tx.subscribe(),
                    w.scrollback.iter().copied().collect(),
                    false,
                ),
                _ => {
                    let (tx, rx) = broadcast::channel(CONSOLE_BUFFER);
                    let watched = Watched {
                        node: node.clone(),
                        tx,
                        scrollback: std::collections::VecDeque::new(),
                    };
                    consoles.insert(vm.clone(), watched);
                    (rx, Vec::new(), true)
                }
            }
        };
        let tap = ConsoleTap {
            scrollback,
            output,
            fleet: self.clone(),
            vm: vm.clone(),
            _watching: batch::Watching::start(),
        };
        if first {
            let cmd = BackendCommand::ConsoleAttach(ConsoleRef { vm_id: vm.clone() });
            self.send(node, &cmd, Duration::from_secs(10)).await?;
        }
        Ok(tap)
    }

    /// Types `bytes` into the serial console of `vm` on `node`.
    pub async fn console_input(
        &self,
        node: &NodeId,
        vm: &VmId,
        bytes: &[u8],
    ) -> Result<(), FleetError> {
        let cmd = BackendCommand::ConsoleInput(ConsoleData {
            vm_id: vm.clone(),
            data: Base64(bytes.to_vec()),
        });
        self.send(node, &cmd, Duration::from_secs(10))
            .await
            .map(drop)
    }

    /// Hands console bytes to the VM's watchers; only the node the console is attached on may
    /// send them.
    fn console_output(&self, node: &NodeId, c: &ConsoleData) -> Result<(), String> {
        match self.consoles().get_mut(&c.vm_id) {
            Some(w) if w.node == *node => {
                w.scrollback.extend(&c.data.0);
                let over = w.scrollback.len().saturating_sub(CONSOLE_SCROLLBACK);
                w.scrollback.drain(..over);
                let _ = w.tx.send(bytes::Bytes::from(c.data.0.clone()));
                Ok(())
            }
            Some(_) => Err(format!("VM {} is not attached on this node", c.vm_id)),
            // Watchers just left: nothing to do.
            None => Ok(()),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use vmfleet_wire::fleet::{InstanceStarted, InstanceStopped, VmReport};

    /// Knows at most one node, whose host key is `key`: enough for the fleet's own tests.
    pub(super) struct OneNode(pub(super) Option<NodeId>);

    #[async_trait]
    impl NodeRegistry for OneNode {
        async fn authenticate(&self, key: &str) -> Option<(NodeId, String)> {
            let node = self.0.clone().filter(|_| key == "key")?;
            Some((node, "n".to_owned()))
        }
        async fn node_online(&self, _: &NodeId) {}
        async fn node_offline(&self, _: &NodeId) {}
        fn heartbeats(&self, _: &NodeId) -> Arc<dyn HeartbeatSink> {
            Arc::new(OneNode(None))
        }
        async fn instance_started(&self, _: &NodeId, _: &InstanceStarted) -> Result<(), String> {
            Ok(())
        }
        async fn instance_stopped(&self, _: &NodeId, _: &InstanceStopped) -> Result<(), String> {
            Ok(())
        }
        async fn vm_state(&self, _: &NodeId, _: &VmReport) -> Result<(), String> {
            Ok(())
        }
    }

    #[async_trait]
    impl HeartbeatSink for OneNode {
        async fn heartbeat(&self, _: HeartbeatReport) -> Result<(), String> {
            Ok(())
        }
    }

    #[tokio::test]
    async fn a_watcher_that_fell_behind_starts_over_from_the_scrollback() {
        let (_layer, io) = SocketIo::new_layer();
        let fleet = Fleet::attach(&io, Arc::new(OneNode(None)), Duration::from_secs(5));
        let (node, vm) = (NodeId::generate(), VmId::generate());
        // A watch with room for 2 chunks, opened by hand (no agent to attach).
        let (tx, output) = broadcast::channel(2);
        let watched = Watched {
            node: node.clone(),
            tx,
            scrollback: std::collections::VecDeque::new(),
        };
        fleet.consoles().insert(vm.clone(), watched);
        let mut tap = ConsoleTap {
            scrollback: Vec::new(),
            output,
            fleet: fleet.clone(),
            vm: vm.clone(),
            _watching: batch::Watching::start(),
        };
        let say = |text: &str| {
            let c = ConsoleData {
                vm_id: vm.clone(),
                data: Base64(text.as_bytes().to_vec()),
            };
            fleet.console_output(&node, &c).unwrap();
        };
        for i in 0..10 {
            say(&format!("{i};"));
        }
        assert!(matches!(
            tap.output.try_recv(),
            Err(broadcast::error::TryRecvError::Lagged(8))
        ));
        // Everything so far, then only what comes after: nothing lost, nothing twice.
        assert_eq!(tap.resync(), b"0;1;2;3;4;5;6;7;8;9;");
        say("10;");
        assert_eq!(&tap.output.try_recv().unwrap()[..], b"10;");
        assert!(tap.output.try_recv().is_err());
        // Another node cannot speak for this console.
        let c = ConsoleData {
            vm_id: vm.clone(),
            data: Base64(b"spoof".to_vec()),
        };
        assert!(fleet.console_output(&NodeId::generate(), &c).is_err());
    }
}
