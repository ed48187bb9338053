//! The store's behaviour, each test run on SQLite and on PostgreSQL (`<test>::sqlite`,
//! `<test>::postgres`). See `common.rs` for how each test gets a database of its own.
#![allow(clippy::unwrap_used)]

mod common;

mod audit;
mod instances;
mod nodes;
mod rentals;
mod scheduler;
mod tokens;
mod users;
mod vms;

use vmfleet_store::{Backend, Store, StoreError};

use crate::common::TestDb;

common::on_both_backends!(reopening_keeps_data_and_does_not_migrate_twice);

async fn reopening_keeps_data_and_does_not_migrate_twice(db: &TestDb) {
    let a = common::user(&db.store, 1).await;
    let again = Store::open(&db.url).await.unwrap();
    assert_eq!(again.get_user(&a).await.unwrap().address, a);
    again.close().await;
}

#[tokio::test]
async fn sqlite_file_is_wal_with_foreign_keys() {
    use sqlx::{Connection, Row};
    let db = TestDb::sqlite().await;
    assert_eq!(db.store.backend(), Backend::Sqlite);
    let mut conn = sqlx::AnyConnection::connect(&db.url).await.unwrap();
    let row = sqlx::query("PRAGMA journal_mode")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert_eq!(row.try_get::<String, _>(0).unwrap(), "wal");
    conn.close().await.unwrap();
    // Foreign keys hold: a VM of an unknown owner is refused.
    let vm = common::new_vm(common::wallet(9), "orphan", common::res(1, 64, 1, 0));
    assert!(matches!(
        db.store.insert_vm(&vm).await,
        Err(StoreError::NotFound { what: "user", .. })
    ));
    db.finish().await;
}

#[tokio::test]
async fn sqlite_in_memory_works() {
    let store = Store::open("sqlite::memory:").await.unwrap();
    let a = common::user(&store, 1).await;
    let node = common::online_node(&store, "n1", common::res(2, 1024, 10, 0)).await;
    let vm = common::placed_vm(&store, a, "vm", &node.id, common::res(1, 512, 5, 0)).await;
    assert_eq!(vm.node, Some(node.id));
    store.close().await;
}

#[tokio::test]
async fn unsupported_urls_are_refused_without_echoing_them() {
    let err = Store::open("mysql://root:secret@localhost/db")
        .await
        .unwrap_err();
    assert!(matches!(err, StoreError::UnsupportedUrl(_)));
    assert!(!err.to_string().contains("secret"), "{err}");
}

#[test]
fn sqlite_urls_escape_what_urls_misread() {
    let url = vmfleet_store::sqlite_url(std::path::Path::new("/tmp/a?b#c%d/x.db")).unwrap();
    assert_eq!(url, "sqlite:///tmp/a%3Fb%23c%25d/x.db");
}
