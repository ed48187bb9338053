use vmfleet_auth::{Permission, Role, SecretHash, generate_secret};
use vmfleet_core::Timestamp;
use vmfleet_store::{ApiTokenId, StoreError};

const ALL: [Permission; 3] = [Permission::Read, Permission::Control, Permission::Console];

use crate::common::{TestDb, on_both_backends, user, wallet};

on_both_backends!(
    nonces_are_taken_once_before_they_expire,
    api_tokens_are_hashed_and_revocable,
    api_tokens_carry_permissions_expiry_and_the_owner_role,
);

async fn nonces_are_taken_once_before_they_expire(db: &TestDb) {
    let s = &db.store;
    let now = Timestamp::from_unix_millis(1_700_000_000_000);
    let soon = Timestamp::from_unix_millis(now.unix_millis() + 300_000);
    let past = Timestamp::from_unix_millis(now.unix_millis() - 1);

    s.put_nonce("abcdefgh1", &soon).await.unwrap();
    assert!(matches!(
        s.put_nonce("abcdefgh1", &soon).await,
        Err(StoreError::Conflict(_))
    ));
    assert!(s.take_nonce("abcdefgh1", &now).await.unwrap());
    assert!(!s.take_nonce("abcdefgh1", &now).await.unwrap(), "reused");
    assert!(!s.take_nonce("never-issued", &now).await.unwrap());

    s.put_nonce("expired01", &past).await.unwrap();
    assert!(!s.take_nonce("expired01", &now).await.unwrap());
    // Expiry is exclusive: at the instant itself it is gone.
    s.put_nonce("edge0001", &now).await.unwrap();
    assert!(!s.take_nonce("edge0001", &now).await.unwrap());

    // Ten takers at once: one wins.
    s.put_nonce("raced001", &soon).await.unwrap();
    let mut tasks = Vec::new();
    for _ in 0..10 {
        let s = s.clone();
        let now = now.clone();
        tasks.push(tokio::spawn(async move {
            s.take_nonce("raced001", &now).await.unwrap()
        }));
    }
    let mut wins = 0;
    for t in tasks {
        wins += usize::from(t.await.unwrap());
    }
    assert_eq!(wins, 1);

    s.put_nonce("old00001", &past).await.unwrap();
    s.put_nonce("fresh001", &soon).await.unwrap();
    assert_eq!(s.purge_expired_nonces(&now).await.unwrap(), 1);
    assert!(s.take_nonce("fresh001", &now).await.unwrap());
    assert!(matches!(
        s.put_nonce("", &soon).await,
        Err(StoreError::Invalid(_))
    ));
}

async fn api_tokens_are_hashed_and_revocable(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let b = user(s, 2).await;
    let secret = generate_secret();
    let t = s
        .create_api_token(&a, "ci", &SecretHash::of(&secret), &ALL, None)
        .await
        .unwrap();
    assert_eq!(
        (t.owner, t.name.as_str(), t.revoked_at.clone()),
        (a, "ci", None)
    );
    assert_eq!(
        s.api_token_by_hash(&SecretHash::of(&secret)).await.unwrap(),
        Some(t.clone())
    );
    assert_eq!(
        s.api_token_by_hash(&SecretHash::of(&generate_secret()))
            .await
            .unwrap(),
        None
    );
    // Names are unique per owner among live tokens.
    let e = s
        .create_api_token(&a, "ci", &SecretHash::of(&generate_secret()), &ALL, None)
        .await
        .unwrap_err();
    assert!(matches!(e, StoreError::Conflict(_)), "{e}");
    let tb = s
        .create_api_token(&b, "ci", &SecretHash::of(&generate_secret()), &ALL, None)
        .await
        .unwrap();
    assert!(matches!(
        s.create_api_token(
            &wallet(99),
            "x",
            &SecretHash::of(&generate_secret()),
            &ALL,
            None
        )
        .await,
        Err(StoreError::NotFound { what: "user", .. })
    ));
    assert_eq!(s.list_api_tokens(&a).await.unwrap(), vec![t.clone()]);

    // Only the owner revokes.
    assert!(matches!(
        s.revoke_api_token(&b, t.id).await,
        Err(StoreError::NotFound { .. })
    ));
    assert!(matches!(
        s.revoke_api_token(&a, ApiTokenId(i64::MAX)).await,
        Err(StoreError::NotFound { .. })
    ));
    s.revoke_api_token(&a, t.id).await.unwrap();
    assert_eq!(
        s.api_token_by_hash(&SecretHash::of(&secret)).await.unwrap(),
        None
    );
    assert!(s.list_api_tokens(&a).await.unwrap().is_empty());
    s.revoke_api_token(&a, t.id).await.unwrap();
    // The name is free again; b's token is untouched.
    s.create_api_token(&a, "ci", &SecretHash::of(&generate_secret()), &ALL, None)
        .await
        .unwrap();
    assert_eq!(s.list_api_tokens(&b).await.unwrap(), vec![tb]);
}

async fn api_tokens_carry_permissions_expiry_and_the_owner_role(db: &TestDb) {
    let s = &db.store;
    let a = user(s, 1).await;
    let secret = generate_secret();
    let hash = SecretHash::of(&secret);
    let later = Timestamp::from_unix_millis(4_000_000_000_000);
    // Permissions are kept sorted and without repeats.
    let t = s
        .create_api_token(
            &a,
            "ro",
            &hash,
            &[Permission::Read, Permission::Console, Permission::Read],
            Some(&later),
        )
        .await
        .unwrap();
    assert_eq!(t.permissions, vec![Permission::Read, Permission::Console]);
    assert_eq!(t.expires_at, Some(later.clone()));
    assert_eq!(s.list_api_tokens(&a).await.unwrap(), vec![t.clone()]);
    let c = s.api_token_credential(&hash).await.unwrap().unwrap();
    assert_eq!((c.token, c.role), (t.clone(), Role::Standard));
    // The owner's current role, not the one at creation.
    s.set_role(&a, Role::Privileged).await.unwrap();
    let c = s.api_token_credential(&hash).await.unwrap().unwrap();
    assert_eq!(c.role, Role::Privileged);
    // A revoked token is still found here, marked revoked, so authentication can say so.
    s.revoke_api_token(&a, t.id).await.unwrap();
    let c = s.api_token_credential(&hash).await.unwrap().unwrap();
    assert!(c.token.revoked_at.is_some());
    assert_eq!(s.api_token_by_hash(&hash).await.unwrap(), None);
    assert_eq!(
        s.api_token_credential(&SecretHash::of(&generate_secret()))
            .await
            .unwrap(),
        None
    );
    // Without expiry; and a token with no permission is refused.
    let t = s
        .create_api_token(
            &a,
            "forever",
            &SecretHash::of(&generate_secret()),
            &ALL,
            None,
        )
        .await
        .unwrap();
    assert_eq!((t.expires_at, t.permissions), (None, ALL.to_vec()));
    assert!(matches!(
        s.create_api_token(&a, "none", &SecretHash::of(&generate_secret()), &[], None)
            .await,
        Err(StoreError::Invalid(_))
    ));
}
