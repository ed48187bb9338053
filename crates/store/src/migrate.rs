//! The schema's versions, embedded in the binary, one set per dialect. sqlx's migrator applies
//! them in order, in a transaction each, under a lock (PostgreSQL: an advisory lock, so two
//! servers starting at once do not race), and records them in `_sqlx_migrations` with a
//! checksum: editing an applied migration is refused at the next start.
//!
//! To change the schema, add `NNNN_name.sql` to both `migrations/sqlite` and
//! `migrations/postgres` and list it in [`SQLITE`] and [`POSTGRES`].

use std::borrow::Cow;
use std::future::Future;
use std::pin::Pin;

use sqlx::error::BoxDynError;
use sqlx::migrate::{MigrateError, Migration, MigrationSource, MigrationType, Migrator};

use crate::Backend;

type Version = (i64, &'static str, &'static str);
type Resolved = Result<Vec<Migration>, BoxDynError>;

const SQLITE: &[Version] = &[
    (
        1,
        "initial",
        include_str!("../migrations/sqlite/0001_initial.sql"),
    ),
    (
        2,
        "instances",
        include_str!("../migrations/sqlite/0002_instances.sql"),
    ),
    (
        3,
        "api_token_scopes",
        include_str!("../migrations/sqlite/0003_api_token_scopes.sql"),
    ),
    (
        4,
        "migrations",
        include_str!("../migrations/sqlite/0004_migrations.sql"),
    ),
    (
        5,
        "vm_devices",
        include_str!("../migrations/sqlite/0005_vm_devices.sql"),
    ),
];

const POSTGRES: &[Version] = &[
    (
        1,
        "initial",
        include_str!("../migrations/postgres/0001_initial.sql"),
    ),
    (
        2,
        "instances",
        include_str!("../migrations/postgres/0002_instances.sql"),
    ),
    (
        3,
        "api_token_scopes",
        include_str!("../migrations/postgres/0003_api_token_scopes.sql"),
    ),
    (
        4,
        "migrations",
        include_str!("../migrations/postgres/0004_migrations.sql"),
    ),
    (
        5,
        "vm_devices",
        include_str!("../migrations/postgres/0005_vm_devices.sql"),
    ),
];

/// The embedded migrations of one dialect.
#[derive(Debug)]
struct Embedded(&'static [Version]);

impl<'s> MigrationSource<'s> for Embedded {
    fn resolve(self) -> Pin<Box<dyn Future<Output = Resolved> + Send + 's>> {
        Box::pin(async move {
            Ok(self
                .0
                .iter()
                .map(|&(version, name, sql)| {
                    Migration::new(
                        version,
                        Cow::Borrowed(name),
                        MigrationType::Simple,
                        Cow::Borrowed(sql),
                        false,
                    )
                })
                .collect())
        })
    }
}

pub(crate) async fn migrator(backend: Backend) -> Result<Migrator, MigrateError> {
    Migrator::new(Embedded(match backend {
        Backend::Sqlite => SQLITE,
        Backend::Postgres => POSTGRES,
    }))
    .await
}
