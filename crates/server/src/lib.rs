//! The control plane's one listener: REST (seed 002, described by [`openapi`] at
//! `/openapi.json`), Socket.IO `/fleet` (001), WebSocket (003/004), `/metrics` and the web
//! [`dashboard`] at `/`. Every request passes [`observe`]: request id, rate
//! limit, metrics, access log.
//!
//! [`app`] builds the router from a state and touches no socket, so tests drive it directly;
//! [`serve`] binds it to a listener.

pub mod api_tokens;
mod bucket;
pub mod caller;
mod containers;
pub mod dashboard;
mod error;
mod extract;
pub mod fleet;
pub mod metrics;
mod migrate;
mod nodes;
pub mod observe;
pub mod openapi;
pub mod ratelimit;
pub mod registry;
mod routes;
pub mod scheduler;
pub mod signin;
pub mod vms;
pub mod ws;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use vmfleet_auth::JwtKey;

pub use error::ApiError;

/// Largest request body the API reads; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone)]
pub struct AppState {
    pub jwt: Arc<JwtKey>,
    /// The database, when this control plane has one.
    pub store: Option<vmfleet_store::Store>,
    /// The `/fleet` namespace, when a node registry backs it.
    pub fleet: Option<fleet::Fleet>,
    /// Wallet sign-in's domains and token lifetime.
    pub sign_in: signin::SignIn,
    /// Places workloads on nodes, when there is a database and a `/fleet` namespace.
    pub scheduler: Option<scheduler::Scheduler>,
    /// The VMs with an operation in flight (one at a time per VM).
    pub(crate) vm_ops: vms::InFlight,
    /// Per-caller rate limits ([`AppState::with_rate_limits`]).
    pub limiter: Arc<ratelimit::RateLimiter>,
    /// What `/metrics` reports of the HTTP traffic.
    pub metrics: Arc<metrics::HttpMetrics>,
    /// The WebSocket API's limits.
    pub ws: ws::WsConfig,
    /// The latest metrics of each watched VM, shared by its monitors.
    pub(crate) ws_metrics: Arc<ws::MetricsCache>,
    sio_layer: Option<socketioxide::layer::SocketIoLayer>,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("fleet", &self.fleet.is_some())
            .field("scheduler", &self.scheduler.as_ref().map(|s| s.config()))
            .field("rate_limits", self.limiter.limits())
            .finish_non_exhaustive()
    }
}

impl AppState {
    pub fn new(jwt: JwtKey) -> Self {
        AppState {
            jwt: Arc::new(jwt),
            store: None,
            fleet: None,
            sign_in: signin::SignIn::default(),
            scheduler: None,
            vm_ops: vms::InFlight::default(),
            limiter: Arc::new(ratelimit::RateLimiter::new(ratelimit::RateLimits::default())),
            metrics: Arc::default(),
            ws: ws::WsConfig::default(),
            ws_metrics: Arc::default(),
            sio_layer: None,
        }
    }

    /// Limits callers to `limits` instead of the default (seed 002's).
    pub fn with_rate_limits(mut self, limits: ratelimit::RateLimits) -> Self {
        self.limiter = Arc::new(ratelimit::RateLimiter::new(limits));
        self
    }

    /// Sets the WebSocket API's limits instead of the defaults.
    pub fn with_ws_config(mut self, ws: ws::WsConfig) -> Self {
        self.ws = ws;
        self
    }

    /// Keeps users, nodes and VMs in `store`, serves `/fleet` over it, and schedules
    /// workloads on its nodes (default [`scheduler::SchedulerConfig`]; see
    /// [`AppState::with_scheduler_config`]).
    pub fn with_store(
        mut self,
        store: vmfleet_store::Store,
        heartbeat_period: std::time::Duration,
    ) -> Self {
        let confirmations = scheduler::Confirmations::default();
        let registry = Arc::new(registry::StoreRegistry::new(
            store.clone(),
            confirmations.clone(),
        ));
        self.store = Some(store.clone());
        let mut state = self.with_fleet(registry, heartbeat_period);
        if let Some(fleet) = state.fleet.clone() {
            state.scheduler = Some(scheduler::Scheduler::new(
                store,
                Arc::new(scheduler::FleetDispatch::new(fleet)),
                confirmations,
                scheduler::SchedulerConfig::default(),
            ));
        }
        state
    }

    /// Places workloads under `config` (policy, confirm timeout, attempts). Call it after
    /// [`AppState::with_store`].
    pub fn with_scheduler_config(mut self, config: scheduler::SchedulerConfig) -> Self {
        self.scheduler = self.scheduler.map(|s| s.with_config(config));
        self
    }

    /// Tells nodes through `dispatch` instead of `/fleet` (a test double). Call it after
    /// [`AppState::with_store`].
    pub fn with_dispatch(mut self, dispatch: Arc<dyn scheduler::Dispatch>) -> Self {
        self.scheduler = self.scheduler.map(|s| s.with_dispatch(dispatch));
        self
    }

    /// Accepts wallet sign-ins for `domains` (the server's host and port as browsers see them)
    /// and issues tokens valid for `token_ttl`.
    pub fn with_sign_in(mut self, domains: Vec<String>, token_ttl: std::time::Duration) -> Self {
        self.sign_in = signin::SignIn { domains, token_ttl };
        self
    }

    /// Serves seed 001's `/fleet` namespace (Socket.IO at `/socket.io/`) over `registry`.
    pub fn with_fleet(
        mut self,
        registry: Arc<dyn fleet::NodeRegistry>,
        heartbeat_period: std::time::Duration,
    ) -> Self {
        let (layer, io) = socketioxide::SocketIo::builder()
            .max_payload(fleet::MAX_MESSAGE_BYTES as u64)
            .ws_max_message_size(fleet::MAX_MESSAGE_BYTES)
            .ws_max_frame_size(fleet::MAX_MESSAGE_BYTES)
            .build_layer();
        self.fleet = Some(fleet::Fleet::attach(&io, registry, heartbeat_period));
        self.sio_layer = Some(layer);
        self
    }
}

/// The whole HTTP surface of the control plane.
pub fn app(state: AppState) -> Router {
    let layer = state.sio_layer.clone();
    let fleet = state.fleet.clone();
    let observe = axum::middleware::from_fn_with_state(state.clone(), observe::observe);
    let router = routes::router().with_state(state);
    let router = match layer {
        Some(layer) => router.layer(layer),
        None => router,
    };
    // In front of socketioxide: agents' direct WebSocket connections are served by `fleet`.
    let router = match fleet {
        Some(fleet) => router.layer(axum::middleware::from_fn_with_state(
            fleet,
            fleet::intercept,
        )),
        None => router,
    };
    // Outside Socket.IO's layer: its requests get a request id and are counted too.
    router.layer(observe)
}

/// Who is on the other end of a connection: its address, and the connection's socket.
#[derive(Debug, Clone, Copy)]
pub struct Peer {
    pub addr: std::net::SocketAddr,
    /// The accepted socket: open while the request's connection (or what it was upgraded
    /// to) is.
    pub(crate) socket: std::os::fd::RawFd,
}

/// The control plane's listener: axum's accept loop over a [`TcpListener`], with Nagle off
/// on every accepted connection (a console keystroke, an ack or a WebSocket message is one
/// small write that must not wait for the peer's delayed ACK, ~40 ms).
struct Accept(TcpListener);

impl axum::serve::Listener for Accept {
    type Io = tokio::net::TcpStream;
    type Addr = std::net::SocketAddr;

    async fn accept(&mut self) -> (Self::Io, Self::Addr) {
        let (tcp, addr) = axum::serve::Listener::accept(&mut self.0).await;
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        (tcp, addr)
    }

    fn local_addr(&self) -> std::io::Result<Self::Addr> {
        self.0.local_addr()
    }
}

impl axum::extract::connect_info::Connected<axum::serve::IncomingStream<'_, Accept>> for Peer {
    fn connect_info(stream: axum::serve::IncomingStream<'_, Accept>) -> Self {
        use std::os::fd::AsRawFd;
        Peer {
            addr: *stream.remote_addr(),
            socket: stream.io().as_raw_fd(),
        }
    }
}

/// Serves [`app`] on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let fleet = state.fleet.clone();
    // Long-lived connections (Socket.IO) would hold a graceful shutdown open forever: close
    // them when it starts, so agents see the control plane go and dial again.
    let shutdown = async move {
        shutdown.await;
        if let Some(fleet) = fleet {
            fleet.close().await;
        }
    };
    // The peer's address keys the rate limit of requests without a token; its socket lets a
    // direct `/fleet` connection move to the fleet's own thread.
    let service = app(state).into_make_service_with_connect_info::<Peer>();
    axum::serve(Accept(listener), service)
        .with_graceful_shutdown(shutdown)
        .await
}
