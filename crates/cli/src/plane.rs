//! Starting and stopping a control plane over a data directory.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use vmfleet_auth::{Permission, Role, Subject};
use vmfleet_core::Timestamp;
use vmfleet_server::AppState;
use vmfleet_server::ratelimit::RateLimits;
use vmfleet_server::scheduler::SchedulerConfig;
use vmfleet_server::ws::WsConfig;

use crate::{CliError, DataDir, PlaneArgs};

#[derive(Debug, Clone)]
pub struct PlaneOptions {
    pub data_dir: std::path::PathBuf,
    pub listen: SocketAddr,
    pub token_ttl: Duration,
    /// `postgres://...`; SQLite in the data dir when `None`.
    pub database: Option<String>,
    /// Placement policy, confirm timeout and attempts of the scheduler.
    pub scheduler: SchedulerConfig,
    /// Hosts wallet sign-in messages may name, beside the listen address itself.
    pub domains: Vec<String>,
    /// Requests a minute per caller (`Default`: seed 002's limits, admins unlimited).
    pub rate_limits: RateLimits,
    /// The WebSocket API's limits: console idle timeout, messages a second per connection.
    pub ws: WsConfig,
    /// How long the `/fleet` thread batches its wake-ups under load (zero: never); see
    /// [`vmfleet_server::fleet::batch`].
    pub fleet_batch: Duration,
}

/// The domains a sign-in message may name: the configured ones, the bound address, and
/// `localhost:PORT` when it is loopback.
pub fn sign_in_domains(configured: &[String], addr: SocketAddr) -> Vec<String> {
    let mut domains: Vec<String> = configured.to_vec();
    domains.push(addr.to_string());
    if addr.ip().is_loopback() {
        domains.push(format!("localhost:{}", addr.port()));
    }
    domains.dedup();
    domains
}

impl From<&PlaneArgs> for PlaneOptions {
    fn from(a: &PlaneArgs) -> Self {
        PlaneOptions {
            data_dir: a.data_dir.clone(),
            listen: a.listen,
            token_ttl: a.token_ttl,
            database: a.database.clone(),
            domains: a.domain.clone(),
            scheduler: SchedulerConfig {
                policy: a.placement,
                confirm_timeout: a.confirm_timeout,
                ..SchedulerConfig::default()
            },
            rate_limits: RateLimits {
                standard: NonZeroU32::new(a.rate_limit_standard),
                privileged: NonZeroU32::new(a.rate_limit_privileged),
                admin: NonZeroU32::new(a.rate_limit_admin),
                anonymous: NonZeroU32::new(a.rate_limit_anonymous),
                ..RateLimits::default()
            },
            ws: WsConfig {
                console_idle: a.console_idle_timeout.0,
                messages_per_sec: f64::from(a.ws_messages_per_sec),
                message_burst: f64::from(a.ws_messages_per_sec.saturating_mul(2)),
            },
            fleet_batch: Duration::from_millis(a.fleet_batch_ms),
        }
    }
}

/// The agents' heartbeat period (seed 001).
pub const HEARTBEAT: Duration = Duration::from_secs(5);

/// A running control plane.
pub struct ControlPlane {
    addr: SocketAddr,
    store: vmfleet_store::Store,
    fleet: Option<vmfleet_server::fleet::Fleet>,
    data_dir: DataDir,
    stop: oneshot::Sender<()>,
    task: JoinHandle<std::io::Result<()>>,
}

impl ControlPlane {
    /// Opens the data dir, writes a fresh admin token, binds the listener and starts serving.
    pub async fn start(opts: PlaneOptions) -> Result<Self, CliError> {
        let data_dir = DataDir::open(&opts.data_dir)?;
        vmfleet_server::fleet::batch::set_window(opts.fleet_batch);
        let key = data_dir.jwt_key()?;
        let now = Timestamp::now().unix_seconds();
        let ttl = i64::try_from(opts.token_ttl.as_secs()).unwrap_or(i64::MAX);
        let admin = key.issue_for(
            &Subject::Operator("admin".into()),
            Role::Admin,
            &[Permission::Read, Permission::Control, Permission::Console],
            now,
            ttl,
        );
        data_dir.write_admin_token(&admin)?;
        let url = match &opts.database {
            Some(url) => url.clone(),
            None => vmfleet_store::sqlite_url(&data_dir.root().join("vmfleet.db"))
                .map_err(CliError::Store)?,
        };
        let store = vmfleet_store::Store::open(&url)
            .await
            .map_err(CliError::Store)?;
        let listener = TcpListener::bind(opts.listen)
            .await
            .map_err(|source| CliError::Listen {
                addr: opts.listen,
                source,
            })?;
        let addr = listener.local_addr().map_err(|source| CliError::Listen {
            addr: opts.listen,
            source,
        })?;
        let (stop, stopped) = oneshot::channel::<()>();
        let state = AppState::new(key)
            .with_store(store.clone(), HEARTBEAT)
            .with_sign_in(sign_in_domains(&opts.domains, addr), opts.token_ttl)
            .with_scheduler_config(opts.scheduler)
            .with_rate_limits(opts.rate_limits)
            .with_ws_config(opts.ws);
        let fleet = state.fleet.clone();
        let task = tokio::spawn(vmfleet_server::serve(listener, state, async {
            let _ = stopped.await;
        }));
        tracing::info!(%addr, "control plane started");
        Ok(ControlPlane {
            addr,
            store,
            fleet,
            data_dir,
            stop,
            task,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The `/fleet` namespace: connected nodes, commands to them.
    pub fn fleet(&self) -> Option<vmfleet_server::fleet::Fleet> {
        self.fleet.clone()
    }

    pub fn store(&self) -> &vmfleet_store::Store {
        &self.store
    }

    pub fn data_dir(&self) -> &DataDir {
        &self.data_dir
    }

    /// Stops accepting connections, lets in-flight requests finish, and returns.
    pub async fn stop(self) -> Result<(), CliError> {
        let _ = self.stop.send(());
        let served = match self.task.await {
            Ok(r) => r.map_err(CliError::Serve),
            Err(join) => Err(CliError::Serve(std::io::Error::other(join))),
        };
        // Flush and close the database last, after the last request.
        self.store.close().await;
        served
    }
}
