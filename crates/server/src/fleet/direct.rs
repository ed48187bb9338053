//! `/fleet` over a direct WebSocket: `GET /socket.io/?EIO=4&transport=websocket` without a
//! `sid`, the way vmfleet's agents (and any Socket.IO client told to use only the WebSocket
//! transport) connect. One task per connection speaks Engine.IO v4 and Socket.IO v4 itself
//! (framing in [`vmfleet_wire::sio`]): it reads a frame, handles it and writes the answer, with
//! no task, channel or JSON value in between for a heartbeat. Long-polling, and upgrades from
//! it, stay with socketioxide.
//!
//! The Engine.IO heartbeat is the server's, as socketioxide's: a ping every 25 s, the
//! connection closed when the pong is not back within 20 s.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use std::os::fd::{BorrowedFd, RawFd};
use std::sync::OnceLock;

use axum::extract::{ConnectInfo, Request, State};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use futures_util::task::AtomicWaker;
use hyper::upgrade::Upgraded;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::{Semaphore, oneshot};
use tokio::time::Instant;
use tokio_tungstenite::tungstenite::handshake::derive_accept_key;
use vmfleet_wire::fleet::{Ack, AgentEvent, NAMESPACE, NodeInfo};
use vmfleet_wire::sio::{self, Packet, PacketKind, eio};

use super::frames::{self, FrameError, Kind, Reader};
use super::{Event, Fleet, Link, MAX_MESSAGE_BYTES, Session, bearer};
use crate::Peer;
use crate::error::ApiError;

/// Engine.IO's heartbeat: the server pings this often and waits this long for the pong.
const PING_INTERVAL: Duration = Duration::from_secs(25);
const PING_TIMEOUT: Duration = Duration::from_secs(20);
/// A ping due within this long goes out with the answer the connection writes now (an
/// agent's heartbeat comes every 5 s), in the same write, instead of needing a wake-up and
/// a write of its own when its time comes.
const PING_EARLY: Duration = Duration::from_secs(6);
/// How long a client has to connect to the namespace once the WebSocket is open.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(45);
/// A connection's read buffer: heartbeats are a few hundred bytes; a bigger message grows it
/// for as long as it takes to read (see [`frames::Reader`]).
const READ_BUFFER: usize = 2 * 1024;
/// How long a write may wait for the client to read: a client that stops reading would
/// otherwise hold its connection's task and socket for as long as TCP lets it (for ever,
/// while it keeps advertising a zero window).
const WRITE_STALL: Duration = Duration::from_secs(30);
/// `{ "success": true }`, the acknowledgement of nearly every event.
const OK: &str = r#"{"success":true}"#;
/// Frames for the connection's task to write (commands, acks of spawned handlers).
const OUTBOX: usize = 256;

/// Whether `req` opens a WebSocket straight away (no long-polling session to upgrade).
fn is_direct(req: &Request) -> bool {
    if req.uri().path() != "/socket.io/" || req.method() != axum::http::Method::GET {
        return false;
    }
    let query = req.uri().query().unwrap_or("");
    let (mut eio4, mut websocket, mut sid) = (false, false, false);
    for pair in query.split('&') {
        match pair.split_once('=').unwrap_or((pair, "")) {
            ("EIO", "4") => eio4 = true,
            ("transport", "websocket") => websocket = true,
            ("sid", _) => sid = true,
            _ => {}
        }
    }
    eio4 && websocket && !sid
}

/// The middleware in front of socketioxide's layer: direct WebSocket connections are served
/// here, everything else goes on.
pub(crate) async fn intercept(
    State(fleet): State<Fleet>,
    mut req: Request,
    next: Next,
) -> Response {
    if !is_direct(&req) {
        return next.run(req).await;
    }
    let accept = match accept_key(&req) {
        Ok(accept) => accept,
        Err(why) => return ApiError::BadRequest(why.into()).into_response(),
    };
    let headers = req.headers().clone();
    let socket = req
        .extensions()
        .get::<ConnectInfo<Peer>>()
        .map(|c| c.0.socket);
    let upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        match upgrade.await {
            Ok(upgraded) => run(fleet, upgraded, socket, headers).await,
            Err(e) => tracing::debug!(error = %e, "a /fleet WebSocket upgrade failed"),
        }
    });
    (
        StatusCode::SWITCHING_PROTOCOLS,
        [
            (header::CONNECTION, HeaderValue::from_static("upgrade")),
            (header::UPGRADE, HeaderValue::from_static("websocket")),
            (
                header::SEC_WEBSOCKET_ACCEPT,
                HeaderValue::from_str(&accept).unwrap_or(HeaderValue::from_static("")),
            ),
        ],
    )
        .into_response()
}

/// The `Sec-WebSocket-Accept` of a well-formed WebSocket opening handshake (RFC 6455 4.2.1),
/// or what is wrong with it.
fn accept_key(req: &Request) -> Result<String, &'static str> {
    let headers = req.headers();
    let has = |name: header::HeaderName, token: &str| {
        headers.get_all(name).iter().any(|v| {
            v.to_str()
                .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case(token)))
        })
    };
    if req.version() != axum::http::Version::HTTP_11 {
        return Err("a /fleet WebSocket opens over HTTP/1.1");
    }
    if !has(header::CONNECTION, "upgrade") || !has(header::UPGRADE, "websocket") {
        return Err("a /fleet WebSocket needs `Connection: upgrade` and `Upgrade: websocket`");
    }
    if headers
        .get(header::SEC_WEBSOCKET_VERSION)
        .is_none_or(|v| v.as_bytes() != b"13")
    {
        return Err("a /fleet WebSocket needs `Sec-WebSocket-Version: 13`");
    }
    let key = headers
        .get(header::SEC_WEBSOCKET_KEY)
        .ok_or("a /fleet WebSocket needs a `Sec-WebSocket-Key`")?;
    Ok(derive_accept_key(key.as_bytes()))
}

/// The runtime that drives every direct connection: one thread, so that a heartbeat is read,
/// handled and acknowledged without waking another thread (on the multi-threaded runtime
/// a heartbeat cost about 15% more CPU, in its workers' parking and wake-ups). `None` when the
/// thread cannot be started: connections then stay on the runtime that accepted them.
fn fleet_runtime() -> Option<&'static tokio::runtime::Handle> {
    static RUNTIME: OnceLock<Option<tokio::runtime::Handle>> = OnceLock::new();
    RUNTIME
        .get_or_init(|| {
            let rt = tokio::runtime::Builder::new_current_thread()
                .on_thread_park(super::batch::before_park)
                .enable_all()
                .build()
                .map_err(|e| tracing::warn!(error = %e, "cannot build the /fleet runtime"))
                .ok()?;
            let handle = rt.handle().clone();
            std::thread::Builder::new()
                .name("vmfleet-fleet".into())
                .spawn(move || rt.block_on(std::future::pending::<()>()))
                .map_err(|e| tracing::warn!(error = %e, "cannot start the /fleet thread"))
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// A second handle on the upgraded connection's socket, `socket` the descriptor its
/// [`Peer`] saw at accept. `held` is that connection, borrowed for the call so that its
/// socket stays open meanwhile.
fn take_socket(held: &Upgraded, socket: RawFd) -> Option<std::net::TcpStream> {
    let _ = held;
    // SAFETY: `socket` is the descriptor of the TCP stream accepted for this request's
    // connection (recorded by `Peer` at accept); that stream now lives inside `held`,
    // which is borrowed across this call, so the descriptor is open and still this
    // connection's. It is only borrowed to duplicate it.
    #[allow(unsafe_code)]
    let borrowed = unsafe { BorrowedFd::borrow_raw(socket) };
    let owned = borrowed.try_clone_to_owned().ok()?;
    let stream = std::net::TcpStream::from(owned);
    stream.set_nonblocking(true).ok()?;
    Some(stream)
}

/// Serves an upgraded connection: on the fleet's own thread when its socket can move there,
/// else where it is. A client sends nothing after its opening handshake until it has read
/// the server's (RFC 6455 4.1), so no byte of it waits in the connection's buffer.
async fn run(fleet: Fleet, upgraded: Upgraded, socket: Option<RawFd>, headers: HeaderMap) {
    if let Some(rt) = fleet_runtime()
        && let Some(stream) = socket.and_then(|s| take_socket(&upgraded, s))
    {
        drop(upgraded);
        rt.spawn(async move {
            match tokio::net::TcpStream::from_std(stream) {
                Ok(tcp) => serve_io(fleet, tcp, headers).await,
                Err(e) => tracing::warn!(error = %e, "cannot move a /fleet connection"),
            }
        });
        return;
    }
    serve_io(fleet, TokioIo::new(upgraded), headers).await;
}

/// Serves a connection whose opening handshake is done, as a WebSocket.
async fn serve_io<S: AsyncRead + AsyncWrite + Unpin>(fleet: Fleet, io: S, headers: HeaderMap) {
    serve(fleet, Socket::new(io), headers).await;
}

/// Why a connection ends.
enum Ended {
    Io(std::io::Error),
    Frame(FrameError),
}

/// A direct connection's WebSocket: frames read and written by [`frames`] in the
/// connection's own buffers.
struct Socket<S> {
    io: S,
    reader: Reader,
    /// Frames not written yet.
    out: Vec<u8>,
    /// The connection is over: closed, or failed, or closed by the client.
    done: bool,
}

impl<S: AsyncRead + AsyncWrite + Unpin> Socket<S> {
    fn new(io: S) -> Self {
        Socket {
            io,
            reader: Reader::new(READ_BUFFER, MAX_MESSAGE_BYTES),
            out: Vec::with_capacity(256),
            done: false,
        }
    }

    /// The client's next message; `None` once it closed its side. Cancel-safe: what was
    /// read stays in the reader.
    async fn next(&mut self) -> Result<Option<frames::Message>, Ended> {
        loop {
            if let Some(message) = self.reader.next_message().map_err(Ended::Frame)? {
                return Ok(Some(message));
            }
            let n = match self.io.read(self.reader.spare()).await {
                Ok(n) => n,
                Err(e) => {
                    self.done = true;
                    return Err(Ended::Io(e));
                }
            };
            if n == 0 {
                self.done = true;
                return Ok(None);
            }
            self.reader.filled(n);
        }
    }

    /// Writes what is buffered; fails when the client read nothing for [`WRITE_STALL`].
    /// Cancel-safe: what was not written stays buffered.
    async fn flush(&mut self) -> std::io::Result<()> {
        while !self.out.is_empty() {
            // Nearly always written at once: a timer only for a write that has to wait.
            let at_once = std::future::poll_fn(|cx| {
                Poll::Ready(std::pin::Pin::new(&mut self.io).poll_write(cx, &self.out))
            })
            .await;
            let written = match at_once {
                Poll::Ready(written) => written,
                Poll::Pending => tokio::time::timeout(WRITE_STALL, self.io.write(&self.out))
                    .await
                    .unwrap_or_else(|_| {
                        Err(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            format!("the client read nothing for {:?}", WRITE_STALL),
                        ))
                    }),
            };
            let written = match written {
                Ok(0) => Err(std::io::ErrorKind::WriteZero.into()),
                written => written,
            };
            let n = written.inspect_err(|_| self.done = true)?;
            self.out.drain(..n);
        }
        if self.out.capacity() > 64 * 1024 {
            self.out = Vec::with_capacity(256);
        }
        Ok(())
    }

    /// Writes one text message.
    async fn send(&mut self, text: &str) -> std::io::Result<()> {
        frames::text(&mut self.out, text);
        self.flush().await
    }

    /// Writes a text message and an Engine.IO ping after it, in one write.
    async fn send_with_ping(&mut self, text: &str) -> std::io::Result<()> {
        frames::text(&mut self.out, text);
        frames::text(&mut self.out, eio::PING_FRAME);
        self.flush().await
    }

    /// Answers what is not a text message: a ping gets its pong, a close its close. Whether
    /// the connection goes on.
    async fn control(&mut self, message: &frames::Message) -> bool {
        match message.kind {
            Kind::Text | Kind::Binary | Kind::Pong => true,
            Kind::Ping => {
                frames::pong(&mut self.out, self.reader.payload(message));
                self.flush().await.is_ok()
            }
            Kind::Close(code) => {
                let code = code
                    .filter(|c| frames::valid_close_code(*c))
                    .unwrap_or(frames::CLOSE_NORMAL);
                self.close(code, "").await;
                false
            }
        }
    }

    /// Closes the WebSocket with `code`, unless the connection is over already.
    async fn close(&mut self, code: u16, reason: &str) {
        if self.done {
            return;
        }
        frames::close(&mut self.out, code, reason);
        let _ = self.flush().await;
        let _ = self.io.shutdown().await;
        self.done = true;
    }

    /// Ends the connection after `why`, telling the client when it was its frames.
    async fn fail(&mut self, node: Option<&vmfleet_core::NodeId>, why: Ended) {
        match why {
            Ended::Io(e) => tracing::debug!(?node, error = %e, "agent connection failed"),
            Ended::Frame(e) => {
                tracing::info!(?node, error = %e, "closing an agent connection that broke the WebSocket protocol");
                self.close(e.close_code(), &e.to_string()).await;
            }
        }
    }
}

/// What other tasks ask a direct connection's task to do.
enum Out {
    Text(String),
    Close,
}

/// What other tasks hand a direct connection's task: a bounded queue whose emptiness the
/// task sees in one atomic load each time it wakes up (a heartbeat's wake-up nearly always
/// finds it empty; a channel's check touches several cache lines cold by then).
struct Outbox {
    /// Entries queued and not yet taken; counted once an entry is in `queue`.
    queued: AtomicUsize,
    /// The connection's task, woken when an entry is queued.
    task: AtomicWaker,
    queue: Mutex<VecDeque<Out>>,
    /// Room for [`OUTBOX`] entries: a permit per entry queued, given back when it is taken.
    /// Closed when the connection is over.
    room: Semaphore,
}

impl Outbox {
    fn new() -> Self {
        Outbox {
            queued: AtomicUsize::new(0),
            task: AtomicWaker::new(),
            queue: Mutex::new(VecDeque::new()),
            room: Semaphore::new(OUTBOX),
        }
    }

    /// Queues `out` if there is room now; whether it was queued.
    fn try_push(&self, out: Out) -> bool {
        match self.room.try_acquire() {
            Ok(permit) => {
                permit.forget();
                self.push(out);
                true
            }
            Err(_) => false,
        }
    }

    /// Queues `out` once there is room; whether it was queued (not if the connection ended).
    async fn push_when_room(&self, out: Out) -> bool {
        match self.room.acquire().await {
            Ok(permit) => {
                permit.forget();
                self.push(out);
                true
            }
            Err(_) => false,
        }
    }

    fn push(&self, out: Out) {
        self.queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .push_back(out);
        self.queued.fetch_add(1, Ordering::Release);
        self.task.wake();
    }

    /// The next entry; the caller's task is woken when one comes. Only the connection's
    /// task takes entries.
    fn poll_next(&self, cx: &mut Context<'_>) -> Poll<Out> {
        if self.queued.load(Ordering::Acquire) == 0 {
            self.task.register(cx.waker());
            // An entry queued before the registration would have woken nobody.
            if self.queued.load(Ordering::Acquire) == 0 {
                return Poll::Pending;
            }
        }
        let out = self
            .queue
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .pop_front();
        match out {
            Some(out) => {
                self.queued.fetch_sub(1, Ordering::Relaxed);
                self.room.add_permits(1);
                Poll::Ready(out)
            }
            // Not reached: `queued` counts only what is in the queue.
            None => Poll::Pending,
        }
    }

    /// The connection is over: nothing more is queued.
    fn close(&self) {
        self.room.close();
    }
}

/// The handle of a direct connection: emit to it, wait for its acks, close it.
pub(crate) struct DirectLink {
    /// First: the connection's task checks it on every wake-up.
    out: Outbox,
    id: u64,
    acks: Mutex<HashMap<u64, oneshot::Sender<Value>>>,
    next_ack: AtomicU64,
}

/// Why an emit got no answer.
pub(crate) enum LinkError {
    Closed,
    Timeout,
}

static NEXT_LINK: AtomicU64 = AtomicU64::new(0);

impl DirectLink {
    pub(crate) fn id(&self) -> u64 {
        self.id
    }

    fn acks(&self) -> std::sync::MutexGuard<'_, HashMap<u64, oneshot::Sender<Value>>> {
        self.acks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Sends an event without waiting for an acknowledgement.
    pub(crate) fn emit(&self, name: &str, payload: &Value) {
        let frame = sio::event_frame(NAMESPACE, None, name, payload);
        self.out.try_push(Out::Text(frame));
    }

    /// Sends an event and waits up to `timeout` for the node's acknowledgement.
    pub(crate) async fn emit_with_ack(
        &self,
        name: &str,
        payload: &Value,
        timeout: Duration,
    ) -> Result<Value, LinkError> {
        let id = self.next_ack.fetch_add(1, Ordering::Relaxed);
        let (tx, rx) = oneshot::channel();
        self.acks().insert(id, tx);
        let frame = sio::event_frame(NAMESPACE, Some(id), name, payload);
        let answer = tokio::time::timeout(timeout, async {
            if !self.out.push_when_room(Out::Text(frame)).await {
                return Err(LinkError::Closed);
            }
            rx.await.map_err(|_| LinkError::Closed)
        })
        .await;
        match answer {
            Ok(answer) => answer,
            Err(_) => {
                self.acks().remove(&id);
                Err(LinkError::Timeout)
            }
        }
    }

    /// Closes the connection.
    pub(crate) fn disconnect(&self) {
        self.out.try_push(Out::Close);
    }
}

/// A random Engine.IO session id.
fn session_id() -> String {
    let mut bytes = [0u8; 12];
    // A predictable id is harmless here: a direct connection cannot be resumed by its id.
    let _ = getrandom::fill(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Serves one direct connection to its end.
async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    fleet: Fleet,
    mut socket: Socket<S>,
    headers: HeaderMap,
) {
    let sid = session_id();
    let open = serde_json::json!({
        "sid": sid,
        "upgrades": [],
        "pingInterval": PING_INTERVAL.as_millis() as u64,
        "pingTimeout": PING_TIMEOUT.as_millis() as u64,
        "maxPayload": MAX_MESSAGE_BYTES,
    });
    if socket.send(&format!("{}{open}", eio::OPEN)).await.is_err() {
        return;
    }
    let Some(info) = handshake(&fleet, &mut socket, &headers, &sid).await else {
        socket.close(frames::CLOSE_NORMAL, "").await;
        return;
    };
    let node = info.node_id.clone();
    let link = Arc::new(DirectLink {
        out: Outbox::new(),
        id: NEXT_LINK.fetch_add(1, Ordering::Relaxed),
        acks: Mutex::new(HashMap::new()),
        next_ack: AtomicU64::new(0),
    });
    let session = fleet.session(&node);
    fleet
        .register(Link::Direct(link.clone()), session.clone(), info)
        .await;
    // The answer to the message at hand, built here before it is framed.
    let mut answer = String::with_capacity(64);

    let mut ping = Pings::new(Instant::now());
    // One timer for the connection's life, moved to the next ping or pong deadline.
    let timer = tokio::time::sleep_until(ping.wake());
    tokio::pin!(timer);
    loop {
        tokio::select! {
            message = socket.next() => {
                let message = match message {
                    Ok(Some(message)) => {
                        super::batch::message();
                        message
                    }
                    Ok(None) => break,
                    Err(why) => {
                        socket.fail(Some(&node), why).await;
                        break;
                    }
                };
                if message.kind != Kind::Text {
                    if socket.control(&message).await {
                        continue;
                    }
                    break;
                }
                let text = socket.reader.text(&message);
                answer.clear();
                let step = match text.chars().next() {
                    Some(eio::PONG) => {
                        ping.ponged();
                        timer.as_mut().reset(ping.wake());
                        Step::Nothing
                    }
                    // A client's ping (Engine.IO v3 habit) gets its pong.
                    Some(eio::PING) => {
                        answer.push(eio::PONG);
                        answer.push_str(&text[1..]);
                        Step::Answer
                    }
                    Some(eio::MESSAGE) => {
                        on_packet(&fleet, &session, &link, &text[1..], &mut answer).await
                    }
                    Some(eio::CLOSE) => Step::Leave,
                    _ => Step::Nothing,
                };
                let written = match step {
                    Step::Answer => {
                        let now = Instant::now();
                        if ping.due_with_answer(now) {
                            ping.sent(now);
                            timer.as_mut().reset(ping.wake());
                            socket.send_with_ping(&answer).await
                        } else {
                            socket.send(&answer).await
                        }
                    }
                    Step::Nothing => Ok(()),
                    Step::Leave => break,
                };
                if written.is_err() {
                    break;
                }
            }
            out = std::future::poll_fn(|cx| link.out.poll_next(cx)) => match out {
                Out::Text(frame) => {
                    if socket.send(&frame).await.is_err() {
                        break;
                    }
                }
                Out::Close => {
                    let _ = socket.send(&sio::disconnect_frame(NAMESPACE)).await;
                    break;
                }
            },
            () = &mut timer => {
                let now = Instant::now();
                if ping.pong_late(now) {
                    tracing::info!(%node, "agent missed Engine.IO's pong; closing its connection");
                    break;
                }
                if ping.due(now) {
                    if socket.send(eio::PING_FRAME).await.is_err() {
                        break;
                    }
                    ping.sent(now);
                }
                timer.as_mut().reset(ping.wake());
            }
        }
    }
    socket.close(frames::CLOSE_NORMAL, "").await;
    // Senders and waiters for acks learn the connection is gone.
    link.out.close();
    link.acks().clear();
    fleet.unregister(&Link::Direct(link), &node).await;
}

/// Waits for the client's connect to `/fleet` and checks its host key: the node, or `None`
/// once the client was told why not.
async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(
    fleet: &Fleet,
    socket: &mut Socket<S>,
    headers: &HeaderMap,
    sid: &str,
) -> Option<NodeInfo> {
    let deadline = Instant::now() + CONNECT_TIMEOUT;
    loop {
        let message = match tokio::time::timeout_at(deadline, socket.next()).await {
            Ok(Ok(Some(message))) => message,
            Ok(Err(why)) => {
                socket.fail(None, why).await;
                return None;
            }
            Ok(Ok(None)) | Err(_) => return None,
        };
        if message.kind != Kind::Text {
            if socket.control(&message).await {
                continue;
            }
            return None;
        }
        let text = socket.reader.text(&message);
        let Some(packet) = text.strip_prefix(eio::MESSAGE).and_then(Packet::parse) else {
            if text.starts_with(eio::CLOSE) {
                return None;
            }
            continue;
        };
        if packet.kind != PacketKind::Connect {
            continue;
        }
        if packet.nsp != NAMESPACE {
            let refusal = sio::connect_error_frame(packet.nsp, "Invalid namespace");
            socket.send(&refusal).await.ok()?;
            continue;
        }
        let auth: Option<Value> = serde_json::from_str(packet.data).ok();
        let key = bearer(headers, auth.as_ref());
        let node = match key {
            Some(key) => fleet.inner.registry.authenticate(&key).await,
            None => None,
        };
        let Some((node_id, name)) = node else {
            let refusal = sio::connect_error_frame(NAMESPACE, "invalid host key");
            let _ = socket.send(&refusal).await;
            return None;
        };
        let hello = sio::connect_frame(NAMESPACE, &serde_json::json!({ "sid": sid }));
        socket.send(&hello).await.ok()?;
        return Some(NodeInfo { node_id, name });
    }
}

/// What the connection does after a packet.
enum Step {
    /// Writes the answer (an acknowledgement).
    Answer,
    Nothing,
    /// The agent left the namespace.
    Leave,
}

/// Handles one Socket.IO packet from `session`'s node; an acknowledgement goes to `answer`.
async fn on_packet(
    fleet: &Fleet,
    session: &Arc<Session>,
    link: &Arc<DirectLink>,
    text: &str,
    answer: &mut String,
) -> Step {
    let node = &session.node;
    let Some(packet) = Packet::parse(text) else {
        tracing::debug!(%node, "dropped a frame that is not a Socket.IO packet");
        return Step::Nothing;
    };
    if packet.nsp != NAMESPACE {
        return Step::Nothing;
    }
    match packet.kind {
        PacketKind::Event => {}
        PacketKind::Ack => {
            if let (Some(id), Some(reply)) = (packet.id, packet.ack_reply())
                && let Some(waiter) = link.acks().remove(&id)
            {
                let _ = waiter.send(reply);
            }
            return Step::Nothing;
        }
        PacketKind::Disconnect => return Step::Leave,
        PacketKind::BinaryEvent | PacketKind::BinaryAck => {
            tracing::warn!(%node, "dropped a binary Socket.IO packet: /fleet carries JSON only");
            return Step::Nothing;
        }
        PacketKind::Connect | PacketKind::ConnectError => return Step::Nothing,
    }
    let ev = Event::decode_args(packet.data);
    if let Err(e) = &ev {
        tracing::debug!(%node, error = %e, "refused an event");
    }
    if !matches!(
        ev,
        Ok(AgentEvent::Heartbeat(_) | AgentEvent::ConsoleOutput(_)) | Err(_)
    ) {
        handle_later(fleet, session, link, ev, packet.id);
        return Step::Nothing;
    }
    // In order and inline: neither waits on anything but the store.
    let ack = fleet.event(session, ev).await;
    match packet.id {
        Some(id) => {
            write_ack(answer, id, &ack);
            Step::Answer
        }
        None => Step::Nothing,
    }
}

/// Handles an event that may wait on the store for long in a task of its own, so that the
/// connection keeps reading meanwhile; its acknowledgement, if `id`, goes through the outbox.
fn handle_later(
    fleet: &Fleet,
    session: &Arc<Session>,
    link: &Arc<DirectLink>,
    ev: Result<Event, vmfleet_wire::DecodeError>,
    id: Option<u64>,
) {
    let (fleet, session, link) = (fleet.clone(), session.clone(), link.clone());
    tokio::spawn(async move {
        let ack = fleet.event(&session, ev).await;
        if let Some(id) = id {
            let mut frame = String::new();
            write_ack(&mut frame, id, &ack);
            link.out.push_when_room(Out::Text(frame)).await;
        }
    });
}

/// Writes the frame acknowledging event `id` with `ack`.
fn write_ack(out: &mut String, id: u64, ack: &Ack) {
    if *ack == Ack::ok() {
        sio::write_ack_frame(out, NAMESPACE, id, OK);
    } else {
        let reply = serde_json::to_string(ack).unwrap_or_else(|_| "{\"success\":false}".into());
        sio::write_ack_frame(out, NAMESPACE, id, &reply);
    }
}

/// Engine.IO's heartbeat on one connection: when the next ping is due, and the pong awaited.
struct Pings {
    next: Instant,
    pong_due: Option<Instant>,
}

impl Pings {
    fn new(now: Instant) -> Self {
        Self {
            next: now + PING_INTERVAL,
            pong_due: None,
        }
    }

    /// When the connection's timer should fire: the pong's deadline, else the next ping's.
    fn wake(&self) -> Instant {
        self.pong_due.unwrap_or(self.next)
    }

    fn due(&self, now: Instant) -> bool {
        self.pong_due.is_none() && self.next <= now
    }

    /// Whether a ping should go out with an answer written at `now`.
    fn due_with_answer(&self, now: Instant) -> bool {
        self.pong_due.is_none() && self.next <= now + PING_EARLY
    }

    fn sent(&mut self, now: Instant) {
        self.next = now + PING_INTERVAL;
        self.pong_due = Some(now + PING_TIMEOUT);
    }

    fn ponged(&mut self) {
        self.pong_due = None;
    }

    fn pong_late(&self, now: Instant) -> bool {
        self.pong_due.is_some_and(|due| due <= now)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;

    #[tokio::test]
    async fn the_outbox_keeps_order_bounds_its_senders_and_wakes_its_task() {
        let outbox = Arc::new(Outbox::new());
        let next = || std::future::poll_fn(|cx| outbox.poll_next(cx));
        let text = |out: Out| match out {
            Out::Text(t) => t,
            Out::Close => "close".to_owned(),
        };
        // Empty: the task waits, and a push wakes it.
        let waiting = tokio::spawn({
            let outbox = outbox.clone();
            async move { text(std::future::poll_fn(|cx| outbox.poll_next(cx)).await) }
        });
        tokio::task::yield_now().await;
        assert!(outbox.try_push(Out::Text("first".into())));
        assert_eq!(waiting.await.unwrap(), "first");
        // Full: a sender waits for room, which a take makes.
        for i in 0..OUTBOX {
            assert!(outbox.try_push(Out::Text(i.to_string())));
        }
        assert!(!outbox.try_push(Out::Text("no room".into())));
        let blocked = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push_when_room(Out::Close).await }
        });
        tokio::task::yield_now().await;
        assert!(!blocked.is_finished());
        assert_eq!(text(next().await), "0");
        assert!(blocked.await.unwrap());
        for i in 1..OUTBOX {
            assert_eq!(text(next().await), i.to_string());
        }
        assert_eq!(text(next().await), "close");
        // Over: nothing more is queued, and waiting senders learn it.
        for _ in 0..OUTBOX {
            assert!(outbox.try_push(Out::Text("x".into())));
        }
        let late = tokio::spawn({
            let outbox = outbox.clone();
            async move { outbox.push_when_room(Out::Close).await }
        });
        tokio::task::yield_now().await;
        outbox.close();
        assert!(!late.await.unwrap());
        assert!(!outbox.try_push(Out::Close));
    }

    /// A client's text frame: masked (with a zero key, which leaves the bytes as they are).
    fn client_text(text: &str) -> Vec<u8> {
        assert!(text.len() < 126);
        let mut frame = vec![0x81, 0x80 | text.len() as u8, 0, 0, 0, 0];
        frame.extend_from_slice(text.as_bytes());
        frame
    }

    #[tokio::test(start_paused = true)]
    async fn a_client_that_stops_reading_loses_its_connection_after_the_write_stall() {
        let (_layer, io) = socketioxide::SocketIo::new_layer();
        let node = vmfleet_core::NodeId::generate();
        let registry = super::super::tests::OneNode(Some(node.clone()));
        let fleet = Fleet::attach(&io, Arc::new(registry), Duration::from_secs(5));
        let (mut client, server) = tokio::io::duplex(4096);
        let mut headers = HeaderMap::new();
        headers.insert("authorization", HeaderValue::from_static("Bearer key"));
        let served = tokio::spawn(serve_io(fleet.clone(), server, headers));
        client
            .write_all(&client_text(&format!("40{NAMESPACE},")))
            .await
            .unwrap();
        // The open packet, then the connect: the node is connected.
        let mut seen = Vec::new();
        while !String::from_utf8_lossy(&seen).contains(r#"{"sid""#) || !fleet.is_connected(&node) {
            let mut buf = [0u8; 512];
            let n = client.read(&mut buf).await.unwrap();
            seen.extend_from_slice(&buf[..n]);
        }
        // From here on the client writes and never reads: answers pile up until the server's
        // writes wait, then the connection goes (the client's own writes wait meanwhile).
        let stalled = tokio::time::Instant::now();
        let unknown = client_text(&format!(r#"42{NAMESPACE},1["no_such_event",{{}}]"#));
        for _ in 0..200 {
            if client.write_all(&unknown).await.is_err() {
                // Closed by the server meanwhile.
                break;
            }
        }
        served.await.unwrap();
        assert!(!fleet.is_connected(&node));
        // Paused time: what the server waited is its timers', not the test's.
        let waited = stalled.elapsed();
        assert!(
            waited >= WRITE_STALL && waited < WRITE_STALL + Duration::from_secs(5),
            "the connection went after {waited:?}"
        );
    }

    fn req(uri: &str) -> Request {
        Request::builder()
            .uri(uri)
            .body(axum::body::Body::empty())
            .unwrap()
    }

    #[test]
    fn only_a_fresh_websocket_of_engine_io_4_is_direct() {
        assert!(is_direct(&req("/socket.io/?EIO=4&transport=websocket")));
        assert!(is_direct(&req("/socket.io/?transport=websocket&EIO=4&t=x")));
        assert!(!is_direct(&req(
            "/socket.io/?EIO=4&transport=websocket&sid=abc"
        )));
        assert!(!is_direct(&req("/socket.io/?EIO=4&transport=polling")));
        assert!(!is_direct(&req("/socket.io/?EIO=3&transport=websocket")));
        assert!(!is_direct(&req("/vm/list?EIO=4&transport=websocket")));
    }

    fn opening(drop_header: Option<&str>) -> Request {
        let mut b = Request::builder().uri("/socket.io/?EIO=4&transport=websocket");
        for (name, value) in [
            ("connection", "keep-alive, Upgrade"),
            ("upgrade", "WebSocket"),
            ("sec-websocket-version", "13"),
            ("sec-websocket-key", "dGhlIHNhbXBsZSBub25jZQ=="),
        ] {
            if Some(name) != drop_header {
                b = b.header(name, value);
            }
        }
        b.body(axum::body::Body::empty()).unwrap()
    }

    #[test]
    fn a_ping_due_soon_goes_out_with_an_answer_and_the_timer_follows_the_pong() {
        let start = Instant::now();
        let mut ping = Pings::new(start);
        assert_eq!(ping.wake(), start + PING_INTERVAL);
        // Early in the interval an answer goes out alone.
        assert!(!ping.due_with_answer(start + Duration::from_secs(5)));
        assert!(!ping.due(start + Duration::from_secs(5)));
        // Within PING_EARLY of the ping's time, the ping rides along.
        let at = start + PING_INTERVAL - PING_EARLY;
        assert!(ping.due_with_answer(at));
        ping.sent(at);
        assert_eq!(ping.wake(), at + PING_TIMEOUT);
        assert!(!ping.due_with_answer(at + Duration::from_secs(1)));
        assert!(!ping.pong_late(at + PING_TIMEOUT - Duration::from_millis(1)));
        assert!(ping.pong_late(at + PING_TIMEOUT));
        // The pong moves the timer to the next ping, not to the spent pong deadline.
        ping.ponged();
        assert_eq!(ping.wake(), at + PING_INTERVAL);
        assert!(!ping.pong_late(at + PING_TIMEOUT));
        // A quiet connection is pinged by its timer.
        assert!(ping.due(at + PING_INTERVAL));
    }

    #[test]
    fn the_opening_handshake_is_checked_and_answered_as_rfc_6455_says() {
        // RFC 6455 1.3's example key and answer.
        assert_eq!(
            accept_key(&opening(None)).unwrap(),
            "s3pPLMBiTxaQ9kYGzzhZRbK+xOo="
        );
        for missing in [
            "connection",
            "upgrade",
            "sec-websocket-version",
            "sec-websocket-key",
        ] {
            let why = accept_key(&opening(Some(missing))).unwrap_err();
            assert!(why.contains("WebSocket"), "{missing}: {why}");
        }
        let mut http10 = opening(None);
        *http10.version_mut() = axum::http::Version::HTTP_10;
        assert!(accept_key(&http10).is_err());
    }
}
