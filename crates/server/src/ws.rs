//! Seeds 003/004: the real-time WebSocket API. `/ws/vms/{name}` streams a VM's status (at
//! connect and on every change) and metrics (every `metrics_interval` seconds, 5 by default)
//! and runs `command`s (start, stop, restart, suspend, resume), answering each with a
//! `response` when it has finished; `/ws/vms/{name}/console` streams the guest's serial
//! console (its scrollback first) as `console` messages and writes `console_input` to it, over
//! the VM's node's own outbound `/fleet` connection.
//!
//! The token comes as `?token=` (seed 004) or as a `Sec-WebSocket-Protocol` entry
//! `token.<JWT>` (kept out of URLs and proxies' logs; the server then selects `vmfleet.v1`).
//! Permissions: `read` to watch, `control` for commands, `console` for the console. A bad token
//! is an `AUTH_ERROR`, another owner's VM `VM_NOT_FOUND`, each sent as an `error` message
//! before the socket closes. A malformed or oversized frame is answered with an `error` and the
//! connection stays. The server pings every 30 s and closes a client silent for 60 s.

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::ws::rejection::WebSocketUpgradeRejection;
use axum::extract::ws::{Message, WebSocket, WebSocketUpgrade};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use base64::Engine;
use base64::engine::general_purpose::STANDARD as BASE64;
use futures_util::{SinkExt, StreamExt};
use serde::Deserialize;
use tokio::sync::mpsc;
use vmfleet_auth::{Permission, Role, Subject, VerifiedToken};
use vmfleet_core::{RequestId, Timestamp, VmId, VmName, VmOp, VmState, WalletAddress};
use vmfleet_store::{VmRecord, WorkloadKind};
use vmfleet_wire::fleet::{VmCommand, VmOperation};
use vmfleet_wire::ws::{
    CommandAction, ConnectionData, ConnectionStatus, ConsoleData, ConsoleEncoding, CpuMetrics,
    DiskMetrics, HeartbeatData, MemoryMetrics, MetricsData, NetworkMetrics, ResponseData,
    StatusData, WsBody, WsErrorCode, WsMessage, WsVmStatus,
};

use crate::AppState;
use crate::bucket::Bucket;
use crate::caller::{Caller, Refusal, verify_token};
use crate::error::ApiError;
use crate::vms::{Begun, begin_operation, fleet};

/// The subprotocol the server selects when the token came in `Sec-WebSocket-Protocol`.
pub const SUBPROTOCOL: &str = "vmfleet.v1";
/// The largest frame a client may send.
const MAX_FRAME: usize = 64 * 1024;
/// Each connection's read and write buffers (tungstenite's default is 128 KiB each, most of a
/// monitor's memory; frames larger than this still pass, the buffer grows for them).
const SOCKET_BUFFER: usize = 8 * 1024;
const PING_EVERY: Duration = Duration::from_secs(30);
const SILENT_FOR: Duration = Duration::from_secs(60);
/// Frames queued for one client before metrics are dropped for it (the newest win).
const OUTBOX: usize = 256;
/// How long a command may take on the node.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(180);

/// Limits of the WebSocket API, set when the control plane starts.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct WsConfig {
    /// A console whose client typed nothing for this long is closed (`None`: never).
    pub console_idle: Option<Duration>,
    /// Messages a client may send a second on one connection, once `message_burst` is spent;
    /// the excess is dropped with a `RATE_LIMITED` error.
    pub messages_per_sec: f64,
    pub message_burst: f64,
}

impl Default for WsConfig {
    fn default() -> Self {
        WsConfig {
            console_idle: Some(Duration::from_secs(30 * 60)),
            messages_per_sec: 50.0,
            message_burst: 100.0,
        }
    }
}

#[derive(Debug, Default, Deserialize)]
pub(crate) struct WsQuery {
    token: Option<String>,
    /// An admin's view of another owner's VM.
    owner: Option<WalletAddress>,
    /// Seconds between `metrics` messages (1 to 3600).
    metrics_interval: Option<u64>,
    /// How the console carries bytes (text unless asked).
    #[serde(default)]
    encoding: ConsoleEncoding,
}

/// What a connection is about, once its token and VM checked out.
struct Session {
    token: VerifiedToken,
    vm: VmRecord,
}

fn token_of(headers: &HeaderMap, query: &WsQuery) -> (Option<String>, bool) {
    let from_protocol = headers
        .get("sec-websocket-protocol")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| {
            h.split(',')
                .map(str::trim)
                .find_map(|p| p.strip_prefix("token."))
                .map(str::to_owned)
        });
    match from_protocol {
        Some(t) => (Some(t), true),
        None => (query.token.clone(), false),
    }
}

/// Checks the token and finds the VM: the error code and message to send otherwise.
async fn open(
    state: &AppState,
    token: Option<String>,
    name: &str,
    query: &WsQuery,
    perm: Permission,
) -> Result<Session, (WsErrorCode, String)> {
    let auth = |m: &str| (WsErrorCode::AuthError, m.to_owned());
    let token =
        token.ok_or_else(|| auth("a token is required (?token= or Sec-WebSocket-Protocol)"))?;
    let token = match verify_token(state, &token).await {
        Ok((Caller(token), _)) => token,
        Err(Refusal::Failed(m)) => return Err((WsErrorCode::UnknownError, m)),
        Err(Refusal::Missing) => return Err(auth("a token is required")),
        Err(Refusal::Unauthorized(m)) => return Err(auth(&m)),
    };
    if !token.can(perm) {
        return Err(auth(&format!("this token lacks the {perm:?} permission")));
    }
    let not_found = || (WsErrorCode::VmNotFound, format!("VM {name} was not found"));
    let owner = match (&token.subject, query.owner) {
        (_, Some(o)) if token.role == Role::Admin => o,
        (Subject::Wallet(me), None) => *me,
        (Subject::Wallet(me), Some(o)) if o == *me => o,
        _ => return Err(not_found()),
    };
    let name: VmName = name.parse().map_err(|_| not_found())?;
    let store = state.store.as_ref().ok_or_else(|| {
        (
            WsErrorCode::UnknownError,
            "this control plane has no database".into(),
        )
    })?;
    let vm = store
        .get_vm_by_owner_name(&owner, &name)
        .await
        .map_err(|_| not_found())?;
    if vm.kind != WorkloadKind::Vm {
        return Err(not_found());
    }
    Ok(Session { token, vm })
}

fn upgrade_error(e: WebSocketUpgradeRejection) -> Response {
    ApiError::BadRequest(format!("a WebSocket upgrade is required: {e}")).into_response()
}

/// Which of the two sockets a request opens.
#[derive(Clone, Copy)]
enum Kind {
    Monitor,
    Console,
}

/// `GET /ws/vms/{name}`: status, metrics and commands.
pub(crate) async fn monitor(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade(state, name, query, headers, ws, Kind::Monitor).await
}

/// `GET /ws/vms/{name}/console`: the serial console.
pub(crate) async fn console(
    State(state): State<AppState>,
    Path(name): Path<String>,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
) -> Response {
    upgrade(state, name, query, headers, ws, Kind::Console).await
}

/// Checks the token and the VM, then upgrades: a refusal is an `error` message on the socket.
async fn upgrade(
    state: AppState,
    name: String,
    query: Result<Query<WsQuery>, axum::extract::rejection::QueryRejection>,
    headers: HeaderMap,
    ws: Result<WebSocketUpgrade, WebSocketUpgradeRejection>,
    kind: Kind,
) -> Response {
    let ws = match ws {
        Ok(ws) => ws,
        Err(e) => return upgrade_error(e),
    };
    let (query, bad_query) = match query {
        Ok(Query(q)) => (q, None),
        Err(e) => (
            WsQuery::default(),
            Some(format!("bad query: {}", e.body_text())),
        ),
    };
    let (token, by_protocol) = token_of(&headers, &query);
    let perm = match kind {
        Kind::Monitor => Permission::Read,
        Kind::Console => Permission::Console,
    };
    let opened = match bad_query {
        Some(why) => Err((WsErrorCode::InvalidCommand, why)),
        None => open(&state, token, &name, &query, perm).await,
    };
    let encoding = query.encoding;
    let ws = if by_protocol {
        ws.protocols([SUBPROTOCOL])
    } else {
        ws
    };
    let every = Duration::from_secs(query.metrics_interval.unwrap_or(5).clamp(1, 3600));
    ws.max_message_size(MAX_FRAME * 4)
        .read_buffer_size(SOCKET_BUFFER)
        .write_buffer_size(SOCKET_BUFFER)
        .on_upgrade(move |socket| async move {
            match (opened, kind) {
                (Ok(session), Kind::Monitor) => {
                    monitor_session(socket, state, session, every).await
                }
                (Ok(session), Kind::Console) => {
                    console_session(socket, state, session, encoding).await
                }
                (Err((code, message)), _) => refuse(socket, code, message).await,
            }
        })
}

async fn refuse(mut socket: WebSocket, code: WsErrorCode, message: String) {
    let _ = socket
        .send(Message::text(WsMessage::error(code, message).to_json()))
        .await;
    let _ = socket.send(Message::Close(None)).await;
}

fn frame(body: WsBody) -> Message {
    Message::text(WsMessage::now(body).to_json())
}

fn status_of(vm: &VmRecord) -> WsBody {
    let uptime = if vm.state == VmState::Running {
        let since = Timestamp::now().unix_seconds() - vm.updated_at.unix_seconds();
        u64::try_from(since).unwrap_or(0)
    } else {
        0
    };
    WsBody::Status(StatusData {
        status: WsVmStatus::from(vm.state),
        last_state_change: vm.updated_at.clone(),
        uptime,
        state: Some(vm.state),
        reason: vm.state_reason.clone(),
    })
}

/// Splits the socket: a writer task fed by a bounded queue, and the reader.
fn split(
    socket: WebSocket,
) -> (
    mpsc::Sender<Message>,
    futures_util::stream::SplitStream<WebSocket>,
    tokio::task::JoinHandle<()>,
) {
    let (mut sink, stream) = socket.split();
    let (tx, mut rx) = mpsc::channel::<Message>(OUTBOX);
    let writer = tokio::spawn(async move {
        while let Some(m) = rx.recv().await {
            let closing = matches!(m, Message::Close(_));
            if sink.send(m).await.is_err() || closing {
                break;
            }
        }
    });
    (tx, stream, writer)
}

fn error_frame(code: WsErrorCode, message: impl Into<String>) -> Message {
    Message::text(WsMessage::error(code, message).to_json())
}

/// What the client sent, decoded.
enum Inbound {
    Message(WsMessage),
    /// Raw bytes: console input on a `binary` console, refused elsewhere.
    Binary(bytes::Bytes),
    Invalid(String),
    Closed,
    /// Pings and pongs, which only prove the client is there.
    Other,
}

/// Decodes a frame, once the connection's rate allows it: a refused frame becomes `Other`
/// after its `RATE_LIMITED` error (sent for the first of a flood only).
async fn inbound(
    msg: Option<Result<Message, axum::Error>>,
    rate: &mut Bucket,
    out: &mpsc::Sender<Message>,
) -> Inbound {
    let msg = match msg {
        None | Some(Err(_)) | Some(Ok(Message::Close(_))) => return Inbound::Closed,
        Some(Ok(m @ (Message::Text(_) | Message::Binary(_)))) => m,
        Some(Ok(_)) => return Inbound::Other,
    };
    if let Err(first) = rate.take(Instant::now()) {
        if first {
            let why =
                "this connection sends too many messages: they are dropped until it slows down";
            let _ = out.send(error_frame(WsErrorCode::RateLimited, why)).await;
        }
        return Inbound::Other;
    }
    match msg {
        Message::Text(t) if t.len() > MAX_FRAME => {
            Inbound::Invalid(format!("a frame is at most {MAX_FRAME} bytes"))
        }
        Message::Binary(b) if b.len() > MAX_FRAME => {
            Inbound::Invalid(format!("a frame is at most {MAX_FRAME} bytes"))
        }
        Message::Text(t) => match WsMessage::decode_from_client(t.as_str()) {
            Ok(m) => Inbound::Message(m),
            Err(e) => {
                let detail = std::error::Error::source(&e).map(|s| format!(": {s}"));
                Inbound::Invalid(format!("{e}{}", detail.unwrap_or_default()))
            }
        },
        Message::Binary(b) => Inbound::Binary(b),
        _ => Inbound::Other,
    }
}

fn rate_of(state: &AppState) -> Bucket {
    Bucket::full(state.ws.message_burst, state.ws.messages_per_sec)
}

async fn monitor_session(socket: WebSocket, state: AppState, session: Session, every: Duration) {
    let Some(store) = state.store.clone() else {
        return;
    };
    let mut changes = store.vm_changes();
    let (out, mut stream, writer) = split(socket);
    let mut vm = session.vm;
    let connected = WsBody::Connection(ConnectionData {
        status: ConnectionStatus::Connected,
        vm_name: vm.name.clone(),
        message: None,
    });
    let _ = out.send(frame(connected)).await;
    let _ = out.send(frame(status_of(&vm))).await;
    let mut metrics = tokio::time::interval(every);
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = Instant::now();
    let mut rate = rate_of(&state);
    loop {
        tokio::select! {
            msg = stream.next() => {
                heard = Instant::now();
                match inbound(msg, &mut rate, &out).await {
                    Inbound::Closed => break,
                    Inbound::Other => {}
                    Inbound::Binary(_) => {
                        let _ = out.send(error_frame(WsErrorCode::InvalidCommand, "the monitor takes JSON text frames")).await;
                    }
                    Inbound::Invalid(why) => {
                        let _ = out.send(error_frame(WsErrorCode::InvalidCommand, why)).await;
                    }
                    Inbound::Message(m) => match m.body {
                        WsBody::Heartbeat(_) => {
                            let _ = out.send(frame(WsBody::Heartbeat(HeartbeatData::default()))).await;
                        }
                        WsBody::Command(c) => {
                            let request_id = c.request_id.unwrap_or_else(RequestId::generate);
                            command(&state, &session.token, &vm, c.action, request_id, out.clone()).await;
                        }
                        _ => {
                            let _ = out.send(error_frame(WsErrorCode::InvalidCommand, "the monitor takes command and heartbeat messages")).await;
                        }
                    },
                }
            }
            changed = changes.recv() => {
                let ours = match changed {
                    Ok(id) => id == vm.id,
                    // Fell behind: re-read to be sure.
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                if ours && let Ok(now) = store.get_vm(&vm.id).await {
                    let moved = now.state != vm.state || now.state_reason != vm.state_reason;
                    vm = now;
                    if moved {
                        let _ = out.send(frame(status_of(&vm))).await;
                    }
                    if vm.state == VmState::Deleted {
                        break;
                    }
                }
            }
            _ = metrics.tick() => {
                if vm.state == VmState::Running
                    && let Some(m) = read_metrics(&state, &vm).await
                {
                    // A slow reader misses metrics, never statuses or responses.
                    let _ = out.try_send(frame(m));
                }
            }
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_FOR {
                    break;
                }
                let _ = out.send(Message::Ping(Default::default())).await;
            }
        }
    }
    finish(out, writer).await;
}

/// How long one reading of a VM's metrics serves every monitor of it.
const METRICS_FRESH: Duration = Duration::from_millis(500);
/// Readings older than this are dropped when the next one is stored.
const METRICS_KEPT: Duration = Duration::from_secs(60);

/// The latest metrics reading of each watched VM, shared by its monitors: a thousand monitors
/// of one VM ask its node once per [`METRICS_FRESH`], not a thousand times. One reading at a
/// time per VM (the others wait for it).
#[derive(Default)]
pub(crate) struct MetricsCache {
    slots: std::sync::Mutex<std::collections::HashMap<VmId, Arc<MetricsSlot>>>,
}

type MetricsSlot = tokio::sync::Mutex<Option<(Instant, Option<WsBody>)>>;

impl MetricsCache {
    fn slot(&self, vm: &VmId) -> Arc<MetricsSlot> {
        let mut slots = self.slots.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(s) = slots.get(vm) {
            return s.clone();
        }
        // Forget VMs nobody asked about for a while (deleted, unwatched).
        slots.retain(|_, s| {
            s.try_lock().map_or(true, |g| {
                g.as_ref()
                    .is_some_and(|(at, _)| at.elapsed() < METRICS_KEPT)
            })
        });
        slots.entry(vm.clone()).or_default().clone()
    }
}

async fn read_metrics(state: &AppState, vm: &VmRecord) -> Option<WsBody> {
    let slot = state.ws_metrics.slot(&vm.id);
    let mut latest = slot.lock().await;
    if let Some((at, m)) = latest.as_ref()
        && at.elapsed() < METRICS_FRESH
    {
        return m.clone();
    }
    let m = ask_metrics(state, vm).await;
    *latest = Some((Instant::now(), m.clone()));
    m
}

async fn ask_metrics(state: &AppState, vm: &VmRecord) -> Option<WsBody> {
    let node = vm.node.as_ref()?;
    let cmd = VmCommand {
        request_id: RequestId::generate(),
        vm_id: vm.id.clone(),
        op: VmOperation::Metrics,
    };
    let reply = state
        .fleet
        .as_ref()?
        .vm_command(node, cmd, Duration::from_secs(5))
        .await
        .ok()?;
    let m = reply.metrics?;
    Some(WsBody::Metrics(MetricsData {
        cpu: CpuMetrics {
            utilization: m.cpu_percent,
        },
        memory: MemoryMetrics {
            used: m.memory_used_bytes,
            total: m.memory_total_bytes,
        },
        network: NetworkMetrics {
            rx_bytes: m.net_rx_bytes.unwrap_or(0),
            tx_bytes: m.net_tx_bytes.unwrap_or(0),
            rx_packets: m.net_rx_packets,
            tx_packets: m.net_tx_packets,
        },
        disk: DiskMetrics {
            read_bytes: m.disk_read_bytes,
            write_bytes: m.disk_write_bytes,
            read_ops: m.disk_read_ops,
            write_ops: m.disk_write_ops,
        },
    }))
}

/// Runs a command and sends its `response` when it has finished (or at once when it cannot
/// start).
async fn command(
    state: &AppState,
    token: &VerifiedToken,
    vm: &VmRecord,
    action: CommandAction,
    request_id: RequestId,
    out: mpsc::Sender<Message>,
) {
    let respond = move |success: bool, message: String| {
        frame(WsBody::Response(ResponseData {
            request_id: request_id.clone(),
            success,
            message,
        }))
    };
    if !token.can(Permission::Control) {
        let e = WsMessage::error(
            WsErrorCode::AuthError,
            "this token lacks the Control permission",
        );
        let _ = out.send(Message::text(e.to_json())).await;
        return;
    }
    let (op, operation) = match action {
        CommandAction::Start => (VmOp::Start, VmOperation::Start),
        CommandAction::Stop => (
            VmOp::Stop,
            VmOperation::Stop {
                force: false,
                timeout_seconds: 30,
            },
        ),
        CommandAction::Restart => (VmOp::Reboot, VmOperation::Reboot),
        CommandAction::Suspend => (VmOp::Pause, VmOperation::Pause),
        CommandAction::Resume => (VmOp::Resume, VmOperation::Resume),
    };
    // The latest record: the state machine judges what the VM is now.
    let current = match state.store.as_ref() {
        Some(store) => store.get_vm(&vm.id).await.unwrap_or_else(|_| vm.clone()),
        None => vm.clone(),
    };
    let needs_guest = !matches!(action, CommandAction::Start);
    if needs_guest && !current.state.has_process() {
        let e = WsMessage::error(
            WsErrorCode::VmNotRunning,
            format!(
                "VM {} is {}: {} needs it running",
                vm.name,
                current.state,
                action.as_str()
            ),
        );
        let _ = out.send(Message::text(e.to_json())).await;
        let _ = out
            .send(respond(false, format!("VM {} is not running", vm.name)))
            .await;
        return;
    }
    match begin_operation(state, token, &current, op, operation).await {
        Err(e) => {
            let _ = out.send(respond(false, e.to_string())).await;
        }
        Ok(Begun::Done(message)) => {
            let _ = out.send(respond(true, message)).await;
        }
        Ok(Begun::Running { task, .. }) => {
            let name = action.as_str();
            tokio::spawn(async move {
                let reply = match tokio::time::timeout(COMMAND_TIMEOUT, task).await {
                    Ok(Ok(Ok(_))) => respond(true, format!("{name} done")),
                    Ok(Ok(Err(e))) => respond(false, e.to_string()),
                    Ok(Err(e)) => respond(false, format!("{name} failed: {e}")),
                    Err(_) => respond(false, format!("{name} did not finish in time")),
                };
                let _ = out.send(reply).await;
            });
        }
    }
}

/// Turns console bytes into text without splitting a UTF-8 sequence across messages; bytes
/// that are not UTF-8 become U+FFFD.
#[derive(Default)]
struct Utf8Stream {
    pending: Vec<u8>,
}

impl Utf8Stream {
    fn push(&mut self, bytes: &[u8]) -> String {
        self.pending.extend_from_slice(bytes);
        // Keep at most 3 trailing bytes of a sequence that may still complete.
        let cut = match std::str::from_utf8(&self.pending) {
            Ok(_) => self.pending.len(),
            Err(e) if e.error_len().is_none() => e.valid_up_to(),
            Err(_) => self.pending.len(),
        };
        let rest = self.pending.split_off(cut);
        let text = String::from_utf8_lossy(&self.pending).into_owned();
        self.pending = rest;
        text
    }
}

/// Turns console bytes into frames in the connection's [`ConsoleEncoding`].
struct ConsoleFrames {
    encoding: ConsoleEncoding,
    text: Utf8Stream,
}

impl ConsoleFrames {
    fn new(encoding: ConsoleEncoding) -> Self {
        ConsoleFrames {
            encoding,
            text: Utf8Stream::default(),
        }
    }

    fn json(content: String, replay: bool) -> Message {
        frame(WsBody::Console(ConsoleData {
            content,
            eof: false,
            replay,
        }))
    }

    /// Live output.
    fn live(&mut self, bytes: &[u8]) -> Message {
        match self.encoding {
            ConsoleEncoding::Text => Self::json(self.text.push(bytes), false),
            ConsoleEncoding::Base64 => Self::json(BASE64.encode(bytes), false),
            ConsoleEncoding::Binary => Message::Binary(bytes::Bytes::copy_from_slice(bytes)),
        }
    }

    /// The scrollback, replayed: what was pending is superseded. On a binary console an empty
    /// `console` message with `replay` announces the binary frame that follows.
    fn replay(&mut self, bytes: &[u8]) -> Vec<Message> {
        self.text = Utf8Stream::default();
        match self.encoding {
            ConsoleEncoding::Text => vec![Self::json(self.text.push(bytes), true)],
            ConsoleEncoding::Base64 => vec![Self::json(BASE64.encode(bytes), true)],
            ConsoleEncoding::Binary => vec![
                Self::json(String::new(), true),
                Message::Binary(bytes::Bytes::copy_from_slice(bytes)),
            ],
        }
    }

    /// The bytes a `console_input` message types.
    fn input(&self, content: String) -> Result<Vec<u8>, String> {
        match self.encoding {
            ConsoleEncoding::Text | ConsoleEncoding::Binary => Ok(content.into_bytes()),
            ConsoleEncoding::Base64 => BASE64
                .decode(content.as_bytes())
                .map_err(|e| format!("console_input content is not base64 on this console: {e}")),
        }
    }
}

/// Sends what has no other path: a closed writer means the client is gone.
async fn close_with(out: mpsc::Sender<Message>, writer: tokio::task::JoinHandle<()>, m: Message) {
    let _ = out.send(m).await;
    finish(out, writer).await;
}

/// Closes the socket after what is queued, and waits for the writer to send it all.
async fn finish(out: mpsc::Sender<Message>, writer: tokio::task::JoinHandle<()>) {
    let _ = out.send(Message::Close(None)).await;
    drop(out);
    let _ = writer.await;
}

async fn console_session(
    socket: WebSocket,
    state: AppState,
    session: Session,
    encoding: ConsoleEncoding,
) {
    let (Some(store), Ok(fleet)) = (state.store.clone(), fleet(&state).cloned()) else {
        return;
    };
    let vm = session.vm;
    let (out, mut stream, writer) = split(socket);
    let (Some(node), true) = (vm.node.clone(), vm.state.has_process()) else {
        let why = format!(
            "VM {} is {}: its console needs it running",
            vm.name, vm.state
        );
        close_with(out, writer, error_frame(WsErrorCode::VmNotRunning, why)).await;
        return;
    };
    let mut tap = match fleet.console(&node, &vm.id).await {
        Ok(tap) => tap,
        Err(e) => {
            let e = error_frame(WsErrorCode::UnknownError, e.to_string());
            close_with(out, writer, e).await;
            return;
        }
    };
    let connected = WsBody::Connection(ConnectionData {
        status: ConnectionStatus::Connected,
        vm_name: vm.name.clone(),
        message: None,
    });
    let _ = out.send(frame(connected)).await;
    let mut frames = ConsoleFrames::new(encoding);
    if !tap.scrollback.is_empty() {
        let scrollback = std::mem::take(&mut tap.scrollback);
        for m in frames.replay(&scrollback) {
            let _ = out.send(m).await;
        }
    }
    let mut changes = store.vm_changes();
    let mut ping = tokio::time::interval(PING_EVERY);
    let mut heard = Instant::now();
    let mut rate = rate_of(&state);
    // A client that cannot keep up misses output until its queue has room again; then it is
    // told and gets the scrollback anew. Nobody else waits for it.
    let mut behind = false;
    let mut catch_up = tokio::time::interval(Duration::from_millis(100));
    // Far enough to mean never, within what a tokio timer holds (about 2 years).
    let idle_for = state
        .ws
        .console_idle
        .unwrap_or(Duration::from_secs(365 * 86_400));
    let idle = tokio::time::sleep(idle_for);
    tokio::pin!(idle);
    let typed = |bytes: Vec<u8>, idle: std::pin::Pin<&mut tokio::time::Sleep>| {
        idle.reset(tokio::time::Instant::now() + idle_for);
        bytes
    };
    loop {
        tokio::select! {
            chunk = tap.output.recv(), if !behind => match chunk {
                Ok(bytes) => match out.try_send(frames.live(&bytes)) {
                    Ok(()) => {}
                    Err(mpsc::error::TrySendError::Full(_)) => behind = true,
                    Err(mpsc::error::TrySendError::Closed(_)) => break,
                },
                Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => behind = true,
                Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
            },
            _ = catch_up.tick(), if behind => {
                if out.capacity() >= OUTBOX / 2 {
                    let why = "this client fell behind the console output: its screen is replayed from the scrollback";
                    let _ = out.try_send(error_frame(WsErrorCode::UnknownError, why));
                    let scrollback = tap.resync();
                    for m in frames.replay(&scrollback) {
                        let _ = out.try_send(m);
                    }
                    behind = false;
                }
            },
            msg = stream.next() => {
                heard = Instant::now();
                let bytes = match inbound(msg, &mut rate, &out).await {
                    Inbound::Closed => break,
                    Inbound::Other => continue,
                    Inbound::Binary(b) if encoding == ConsoleEncoding::Binary => {
                        typed(b.to_vec(), idle.as_mut())
                    }
                    Inbound::Binary(_) => {
                        let why = "binary frames are console input only on a console opened with ?encoding=binary";
                        let _ = out.send(error_frame(WsErrorCode::InvalidCommand, why)).await;
                        continue;
                    }
                    Inbound::Invalid(why) => {
                        let _ = out.send(error_frame(WsErrorCode::InvalidCommand, why)).await;
                        continue;
                    }
                    Inbound::Message(m) => match m.body {
                        WsBody::ConsoleInput(input) => match frames.input(input.content) {
                            Ok(bytes) => typed(bytes, idle.as_mut()),
                            Err(why) => {
                                let _ = out.send(error_frame(WsErrorCode::InvalidCommand, why)).await;
                                continue;
                            }
                        },
                        WsBody::Heartbeat(_) => {
                            let _ = out.send(frame(WsBody::Heartbeat(HeartbeatData::default()))).await;
                            continue;
                        }
                        _ => {
                            let why = "the console takes console_input and heartbeat messages";
                            let _ = out.send(error_frame(WsErrorCode::InvalidCommand, why)).await;
                            continue;
                        }
                    },
                };
                if bytes.is_empty() {
                    continue;
                }
                if let Err(e) = fleet.console_input(&node, &vm.id, &bytes).await {
                    let _ = out.send(error_frame(WsErrorCode::UnknownError, e.to_string())).await;
                }
            }
            changed = changes.recv() => {
                let ours = match changed {
                    Ok(id) => id == vm.id,
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(_)) => true,
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => break,
                };
                // The guest is gone (stopped, deleted): the console ends. A reboot keeps it.
                if ours && let Ok(now) = store.get_vm(&vm.id).await
                    && matches!(now.state, VmState::Stopped | VmState::Error | VmState::Deleted)
                {
                    let eof = frame(WsBody::Console(ConsoleData { content: String::new(), eof: true, replay: false }));
                    let _ = out.send(eof).await;
                    break;
                }
            }
            () = &mut idle => {
                let bye = WsBody::Connection(ConnectionData {
                    status: ConnectionStatus::Closing,
                    vm_name: vm.name.clone(),
                    message: Some(format!("the console was idle for {} s: nothing was typed", idle_for.as_secs())),
                });
                let _ = out.send(frame(bye)).await;
                break;
            }
            _ = ping.tick() => {
                if heard.elapsed() > SILENT_FOR {
                    break;
                }
                let _ = out.send(Message::Ping(Default::default())).await;
            }
        }
    }
    finish(out, writer).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn utf8_is_never_split() {
        let mut s = Utf8Stream::default();
        let euro = "€".as_bytes();
        assert_eq!(s.push(&euro[..1]), "");
        assert_eq!(s.push(&euro[1..]), "€");
        assert_eq!(s.push(b"ok\xff!"), "ok\u{fffd}!");
    }

    #[test]
    fn the_token_comes_from_the_protocol_or_the_query() {
        let mut h = HeaderMap::new();
        let q = WsQuery {
            token: Some("q".into()),
            ..WsQuery::default()
        };
        assert_eq!(token_of(&h, &q), (Some("q".into()), false));
        h.insert(
            "sec-websocket-protocol",
            "vmfleet.v1, token.abc".parse().unwrap(),
        );
        assert_eq!(token_of(&h, &q), (Some("abc".into()), true));
    }
}
