//! One store per test, on SQLite (a fresh file) or PostgreSQL (a fresh database on the server
//! of `VMFLEET_TEST_POSTGRES_URL`, dropped afterwards), so tests run in parallel.

use std::time::Duration;

use sqlx::{Connection, Executor};
use vmfleet_auth::{Role, SecretHash, generate_secret};
use vmfleet_core::{NodeId, VmId, VmName, WalletAddress};
use vmfleet_store::{NewVm, Node, NodeStatus, Resources, Store, VmRecord, WorkloadKind};

pub const POSTGRES_ENV: &str = "VMFLEET_TEST_POSTGRES_URL";
pub const SKIP_ENV: &str = "VMFLEET_SKIP_POSTGRES";

/// Defines, for each listed `async fn name(db: TestDb)`, the tests `name::sqlite` and
/// `name::postgres`.
macro_rules! on_both_backends {
    ($($name:ident),* $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn sqlite() {
                let db = crate::common::TestDb::sqlite().await;
                super::$name(&db).await;
                db.finish().await;
            }

            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn postgres() {
                if let Some(db) = crate::common::TestDb::postgres().await {
                    super::$name(&db).await;
                    db.finish().await;
                }
            }
        }
    )*};
}
pub(crate) use on_both_backends;

/// A store of its own, and the URL it was opened with (to open a second one on the same
/// database, or to look under the API).
pub struct TestDb {
    pub store: Store,
    pub url: String,
    cleanup: Cleanup,
}

enum Cleanup {
    Sqlite(#[allow(dead_code)] tempfile::TempDir),
    Postgres(Option<DropDatabase>),
}

impl TestDb {
    pub async fn sqlite() -> TestDb {
        let dir = tempfile::tempdir().unwrap();
        let url = vmfleet_store::sqlite_url(&dir.path().join("vmfleet.db")).unwrap();
        let store = Store::open(&url).await.unwrap();
        TestDb {
            store,
            url,
            cleanup: Cleanup::Sqlite(dir),
        }
    }

    /// `None` only when `VMFLEET_SKIP_POSTGRES=1`; without a server URL the test fails.
    pub async fn postgres() -> Option<TestDb> {
        let Ok(server) = std::env::var(POSTGRES_ENV) else {
            if std::env::var(SKIP_ENV).as_deref() == Ok("1") {
                eprintln!("PostgreSQL variant skipped: {SKIP_ENV}=1");
                return None;
            }
            panic!(
                "{POSTGRES_ENV} is not set: the store's tests run against PostgreSQL too. \
                 Start a server with `scripts/postgres-test.sh start` and export the URL it \
                 prints, or set {SKIP_ENV}=1 to skip the PostgreSQL variants"
            );
        };
        let name = format!("vmfleet_test_{}", random_hex(8));
        let mut admin = sqlx::PgConnection::connect(&server)
            .await
            .unwrap_or_else(|e| panic!("cannot connect to {POSTGRES_ENV}: {e}"));
        admin
            .execute(format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        admin.close().await.unwrap();
        let url = with_database(&server, &name);
        let store = Store::open(&url).await.unwrap();
        Some(TestDb {
            store,
            url,
            cleanup: Cleanup::Postgres(Some(DropDatabase { server, name })),
        })
    }

    /// Closes the store and drops the test's database (also done on drop, when a test
    /// panicked, but synchronously there).
    pub async fn finish(mut self) {
        self.store.close().await;
        if let Cleanup::Postgres(drop) = &mut self.cleanup
            && let Some(d) = drop.take()
        {
            d.run().await;
        }
    }
}

struct DropDatabase {
    server: String,
    name: String,
}

impl DropDatabase {
    async fn run(self) {
        if let Ok(mut admin) = sqlx::PgConnection::connect(&self.server).await {
            let _ = admin
                .execute(format!("DROP DATABASE IF EXISTS {} WITH (FORCE)", self.name).as_str())
                .await;
            let _ = admin.close().await;
        }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        if let Cleanup::Postgres(drop) = &mut self.cleanup
            && let Some(d) = drop.take()
        {
            // A panicking test: drop its database from a thread with its own runtime.
            let _ = std::thread::spawn(move || {
                if let Ok(rt) = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                {
                    rt.block_on(async {
                        let _ = tokio::time::timeout(Duration::from_secs(10), d.run()).await;
                    });
                }
            })
            .join();
        }
    }
}

/// `server` (`postgres://user:pw@host:port/db?params`) with its database replaced.
fn with_database(server: &str, name: &str) -> String {
    let (base, query) = match server.split_once('?') {
        Some((b, q)) => (b, Some(q)),
        None => (server, None),
    };
    let after_scheme = base.find("://").map(|i| i + 3).unwrap_or(0);
    let host_end = base[after_scheme..]
        .find('/')
        .map(|i| after_scheme + i)
        .unwrap_or(base.len());
    let mut url = format!("{}/{name}", &base[..host_end]);
    if let Some(q) = query {
        url.push('?');
        url.push_str(q);
    }
    url
}

pub fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    getrandom::fill(&mut b).unwrap();
    b.iter().map(|x| format!("{x:02x}")).collect()
}

// ---- Fixtures ----

pub fn wallet(n: u8) -> WalletAddress {
    let mut b = [0x11u8; 20];
    b[19] = n;
    WalletAddress::from_bytes(b)
}

pub fn res(vcpus: u32, memory_mib: u64, disk_gib: u64, gpus: u32) -> Resources {
    Resources {
        vcpus,
        memory_mib,
        disk_gib,
        gpus,
    }
}

pub async fn user(store: &Store, n: u8) -> WalletAddress {
    let a = wallet(n);
    store.upsert_user(&a, Role::Standard).await.unwrap();
    a
}

/// A node that is online and offers `capacity`.
pub async fn online_node(store: &Store, name: &str, capacity: Resources) -> Node {
    let node = store
        .create_node(name, &SecretHash::of(&generate_secret()))
        .await
        .unwrap();
    store.set_capacity(&node.id, capacity).await.unwrap();
    store
        .set_node_status(&node.id, NodeStatus::Online)
        .await
        .unwrap();
    store.get_node(&node.id).await.unwrap()
}

pub fn new_vm(owner: WalletAddress, name: &str, resources: Resources) -> NewVm {
    NewVm {
        id: VmId::generate(),
        kind: WorkloadKind::Vm,
        owner,
        name: VmName::new(name).unwrap(),
        spec: serde_json::json!({"vcpu_count": resources.vcpus, "mem_size_mib": resources.memory_mib}),
        resources,
    }
}

/// A VM of `owner` placed on `node`.
pub async fn placed_vm(
    store: &Store,
    owner: WalletAddress,
    name: &str,
    node: &NodeId,
    resources: Resources,
) -> VmRecord {
    let vm = store
        .insert_vm(&new_vm(owner, name, resources))
        .await
        .unwrap();
    assert!(
        store.reserve(node, &vm.id).await.unwrap(),
        "no room for {name}"
    );
    store.get_vm(&vm.id).await.unwrap()
}
