//! The control plane's database: users, nodes, VMs and containers, rentals and their metered
//! usage, the append-only audit log, sign-in nonces and API tokens. The only crate that knows
//! SQL.
//!
//! Two backends, one behaviour: SQLite (embedded, one file, WAL) by default and PostgreSQL
//! for multi-node installs. Every query is written once, in the SQL both understand, and runs
//! through sqlx's `Any` driver; only the migrations (`migrations/sqlite`,
//! `migrations/postgres`) are written per dialect. The store's tests run every behaviour
//! against both.
//!
//! Rules the schema keeps whatever the caller does:
//! - names are unique where they must be (a node's name, a VM's name among its owner's live
//!   VMs, a token's name among its owner's live tokens) and a clash is a
//!   [`StoreError::Conflict`];
//! - placements never overbook a node, however many run at once ([`Store::reserve`]);
//! - a nonce is taken at most once ([`Store::take_nonce`]);
//! - the audit log cannot be updated or deleted (database triggers refuse it);
//! - secrets (host keys, API tokens) are stored only as [`SecretHash`]es.
//!
//! [`SecretHash`]: vmfleet_auth::SecretHash

mod audit;
mod error;
mod migrate;
mod model;
mod nodes;
mod rentals;
mod row;
mod tokens;
mod users;
mod vms;

use std::path::Path;
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::{Any, AnyPool, Transaction};
use sqlx::{ConnectOptions, Connection, Executor};

pub use error::StoreError;
pub use model::{
    Actor, ApiToken, ApiTokenCredential, ApiTokenId, AuditEntry, AuditTarget, MigrationTicket,
    NewVm, Node, NodeStatus, Rental, Resources, Usage, UsageRecord, User, VmRecord, WorkloadKind,
};
pub use nodes::MAX_NODE_NAME;

/// The result of every store operation.
pub type Result<T, E = StoreError> = std::result::Result<T, E>;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Backend {
    Sqlite,
    Postgres,
}

/// How long an SQLite connection waits for another writer before giving up.
const SQLITE_BUSY_TIMEOUT: Duration = Duration::from_secs(10);

/// A handle on the database; cheap to clone (a connection pool).
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// The VMs and containers whose rows this process changed, as it changes them.
    changes: tokio::sync::broadcast::Sender<vmfleet_core::VmId>,
}

/// How many changes a slow watcher may fall behind before it misses some.
const CHANGES_BUFFER: usize = 4096;

impl Store {
    /// Opens the database at `url` and brings its schema up to date.
    ///
    /// - `sqlite://PATH` (or `sqlite:PATH`): a database file, created if missing (not its
    ///   directory), in WAL mode with foreign keys enforced and a busy timeout;
    ///   [`sqlite_url`] builds one from a path.
    /// - `sqlite::memory:`: a private in-memory database, gone when the store is dropped (one
    ///   connection: each SQLite connection to `:memory:` would see its own database).
    /// - `postgres://...` (or `postgresql://...`): a PostgreSQL database that must exist.
    pub async fn open(url: &str) -> Result<Store> {
        sqlx::any::install_default_drivers();
        let scheme = url.split(':').next().unwrap_or_default();
        match scheme {
            "sqlite" => Self::open_sqlite(url).await,
            "postgres" | "postgresql" => Self::open_postgres(url).await,
            _ => Err(StoreError::UnsupportedUrl(scheme.to_owned())),
        }
    }

    async fn open_sqlite(url: &str) -> Result<Store> {
        let memory = url == "sqlite::memory:" || url == "sqlite://:memory:";
        let url = if memory {
            "sqlite::memory:".to_owned()
        } else if url
            .split_once('?')
            .is_some_and(|(_, query)| query.contains("mode="))
        {
            url.to_owned()
        } else if url.contains('?') {
            format!("{url}&mode=rwc")
        } else {
            format!("{url}?mode=rwc")
        };
        let options: AnyConnectOptions = url.parse()?;
        if !memory {
            // The journal mode is a property of the file, set once here rather than per
            // connection: switching to WAL needs a lock that a busy timeout cannot wait for.
            let mut conn = options.connect().await?;
            conn.execute("PRAGMA journal_mode = WAL").await?;
            conn.close().await?;
        }
        let pool_options = if memory {
            // One connection, kept for good: each new connection to `:memory:` would open a
            // new, empty database.
            AnyPoolOptions::new()
                .max_connections(1)
                .min_connections(1)
                .idle_timeout(None)
                .max_lifetime(None)
        } else {
            // Readers run in parallel under WAL; writers queue on the busy timeout.
            AnyPoolOptions::new().max_connections(8)
        };
        let pool = pool_options
            .after_connect(|conn, _meta| {
                Box::pin(async move {
                    let pragmas = format!(
                        "PRAGMA foreign_keys = ON; PRAGMA busy_timeout = {}; \
                         PRAGMA synchronous = NORMAL;",
                        SQLITE_BUSY_TIMEOUT.as_millis()
                    );
                    conn.execute(pragmas.as_str()).await?;
                    Ok(())
                })
            })
            .connect_with(options)
            .await?;
        let store = Store {
            pool,
            backend: Backend::Sqlite,
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn open_postgres(url: &str) -> Result<Store> {
        let options: AnyConnectOptions = url.parse()?;
        let pool = AnyPoolOptions::new()
            .max_connections(16)
            .connect_with(options)
            .await?;
        let store = Store {
            pool,
            backend: Backend::Postgres,
            changes: tokio::sync::broadcast::channel(CHANGES_BUFFER).0,
        };
        store.migrate().await?;
        Ok(store)
    }

    async fn migrate(&self) -> Result<()> {
        migrate::migrator(self.backend)
            .await?
            .run(&self.pool)
            .await?;
        Ok(())
    }

    /// Begins a transaction that writes. On SQLite it takes the database's write lock at
    /// once (`BEGIN IMMEDIATE`, waiting up to the busy timeout), so that a transaction that
    /// reads before it writes cannot fail when it upgrades; PostgreSQL's `BEGIN` and row locks
    /// are enough there.
    pub(crate) async fn begin_write(&self) -> Result<Transaction<'static, Any>> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }

    /// The ids of the VMs and containers whose rows change from now on (state, placement,
    /// run, deletion), as this process writes them: what live views follow. A watcher that
    /// falls behind gets `Lagged` and should re-read what it shows.
    pub fn vm_changes(&self) -> tokio::sync::broadcast::Receiver<vmfleet_core::VmId> {
        self.changes.subscribe()
    }

    pub(crate) fn changed(&self, id: &vmfleet_core::VmId) {
        let _ = self.changes.send(id.clone());
    }

    /// Which database this is.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Waits for the connections in use to be returned, then closes them all (on SQLite this
    /// checkpoints the WAL into the database file). The store refuses work afterwards.
    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// The `sqlite://` URL of a database file at `path`, escaping what a URL would misread.
pub fn sqlite_url(path: &Path) -> Result<String> {
    let s = path.to_str().ok_or_else(|| {
        StoreError::Invalid(format!(
            "the database path {} is not valid UTF-8",
            path.display()
        ))
    })?;
    let mut out = String::from("sqlite://");
    for c in s.chars() {
        match c {
            '%' => out.push_str("%25"),
            '?' => out.push_str("%3F"),
            '#' => out.push_str("%23"),
            c => out.push(c),
        }
    }
    Ok(out)
}

/// Now, as the store records it.
pub(crate) fn now_millis() -> i64 {
    vmfleet_core::Timestamp::now().unix_millis()
}
