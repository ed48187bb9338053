use vmfleet_auth::Role;
use vmfleet_store::StoreError;

use crate::common::{TestDb, on_both_backends, wallet};

on_both_backends!(users_upsert_keeps_the_role);

async fn users_upsert_keeps_the_role(db: &TestDb) {
    let s = &db.store;
    let a = wallet(1);
    let u = s.upsert_user(&a, Role::Standard).await.unwrap();
    assert_eq!((u.address, u.role), (a, Role::Standard));
    assert_eq!(s.set_role(&a, Role::Admin).await.unwrap().role, Role::Admin);
    // A later sign-in does not demote.
    let again = s.upsert_user(&a, Role::Standard).await.unwrap();
    assert_eq!(again.role, Role::Admin);
    assert_eq!(again.created_at, u.created_at);

    let b = wallet(2);
    assert!(matches!(
        s.get_user(&b).await,
        Err(StoreError::NotFound { what: "user", .. })
    ));
    assert!(matches!(
        s.set_role(&b, Role::Privileged).await,
        Err(StoreError::NotFound { .. })
    ));
    s.upsert_user(&b, Role::Privileged).await.unwrap();
    let all: Vec<_> = s
        .list_users()
        .await
        .unwrap()
        .into_iter()
        .map(|u| (u.address, u.role))
        .collect();
    assert_eq!(all.len(), 2);
    assert!(all.contains(&(a, Role::Admin)) && all.contains(&(b, Role::Privileged)));
}
