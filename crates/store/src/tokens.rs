//! Sign-in nonces (single use, expiring) and long-lived API tokens (stored hashed, revocable,
//! with their own permissions and an optional expiry).

use sqlx::any::AnyRow;
use vmfleet_auth::{Permission, SecretHash};
use vmfleet_core::{Timestamp, WalletAddress};

use crate::error::{StoreError, is_foreign_key_violation, is_unique_violation, not_found};
use crate::model::{parse_permissions, parse_role, permissions_str};
use crate::row::{int, opt_time, parsed, text, time};
use crate::{ApiToken, ApiTokenCredential, ApiTokenId, Result, Store, now_millis};

/// The longest nonce or token name accepted, in bytes.
const MAX_LEN: usize = 128;

const TOKEN_COLS: &str = "id, owner, name, permissions, created_at, expires_at, revoked_at";

fn token(row: &AnyRow) -> Result<ApiToken> {
    Ok(ApiToken {
        id: ApiTokenId(int(row, "id")?),
        owner: parsed(row, "owner")?,
        name: text(row, "name")?,
        permissions: parse_permissions(&text(row, "permissions")?)?,
        created_at: time(row, "created_at")?,
        expires_at: opt_time(row, "expires_at")?,
        revoked_at: opt_time(row, "revoked_at")?,
    })
}

impl Store {
    /// Stores a sign-in nonce that [`Store::take_nonce`] accepts once, until `expires_at`.
    /// A nonce already stored is a [`StoreError::Conflict`].
    pub async fn put_nonce(&self, nonce: &str, expires_at: &Timestamp) -> Result<()> {
        if nonce.is_empty() || nonce.len() > MAX_LEN {
            return Err(StoreError::Invalid(format!(
                "a nonce has 1 to {MAX_LEN} bytes, not {}",
                nonce.len()
            )));
        }
        sqlx::query("INSERT INTO nonces (nonce, expires_at) VALUES ($1, $2)")
            .bind(nonce)
            .bind(expires_at.unix_millis())
            .execute(&self.pool)
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::Conflict("this nonce is already stored".to_owned())
                } else {
                    e.into()
                }
            })?;
        Ok(())
    }

    /// Consumes a nonce: true exactly once for a stored nonce that has not expired at `now`;
    /// false for an unknown, reused or expired one. The nonce is gone afterwards either way,
    /// and one statement does it, so two concurrent takes cannot both succeed.
    pub async fn take_nonce(&self, nonce: &str, now: &Timestamp) -> Result<bool> {
        let row = sqlx::query("DELETE FROM nonces WHERE nonce = $1 RETURNING expires_at")
            .bind(nonce)
            .fetch_optional(&self.pool)
            .await?;
        match row {
            Some(row) => Ok(now.unix_millis() < int(&row, "expires_at")?),
            None => Ok(false),
        }
    }

    /// Forgets the nonces expired at `now`; returns how many.
    pub async fn purge_expired_nonces(&self, now: &Timestamp) -> Result<u64> {
        let done = sqlx::query("DELETE FROM nonces WHERE expires_at <= $1")
            .bind(now.unix_millis())
            .execute(&self.pool)
            .await?;
        Ok(done.rows_affected())
    }

    /// Records a new API token of `owner` by the hash of its secret (the secret itself is
    /// shown once to the user and never stored), with `permissions` (at least one; kept sorted
    /// and without repeats) until `expires_at` (`None`: no expiry). `name` is unique among the
    /// owner's live tokens.
    pub async fn create_api_token(
        &self,
        owner: &WalletAddress,
        name: &str,
        hash: &SecretHash,
        permissions: &[Permission],
        expires_at: Option<&Timestamp>,
    ) -> Result<ApiToken> {
        if name.trim().is_empty() || name.len() > MAX_LEN || name.chars().any(char::is_control) {
            return Err(StoreError::Invalid(format!(
                "a token name has 1 to {MAX_LEN} bytes and no control characters, not {name:?}"
            )));
        }
        let mut permissions = permissions.to_vec();
        permissions.sort();
        permissions.dedup();
        if permissions.is_empty() {
            return Err(StoreError::Invalid(
                "a token has at least one permission".to_owned(),
            ));
        }
        let inserted = sqlx::query(&format!(
            "INSERT INTO api_tokens (owner, name, token_hash, permissions, created_at, expires_at)
             VALUES ($1, $2, $3, $4, $5, $6) RETURNING {TOKEN_COLS}"
        ))
        .bind(owner.to_string())
        .bind(name)
        .bind(hash.to_hex())
        .bind(permissions_str(&permissions))
        .bind(now_millis())
        .bind(expires_at.map(Timestamp::unix_millis))
        .fetch_one(&self.pool)
        .await;
        match inserted {
            Ok(row) => token(&row),
            Err(e) if is_unique_violation(&e) => Err(StoreError::Conflict(format!(
                "{owner} already has a token named {name:?}, or the secret is reused"
            ))),
            Err(e) if is_foreign_key_violation(&e) => Err(not_found("user", owner)),
            Err(e) => Err(e.into()),
        }
    }

    /// The token whose secret hashes to `hash`, revoked or expired ones included, with its
    /// owner's current role: what authentication needs, in one query.
    pub async fn api_token_credential(
        &self,
        hash: &SecretHash,
    ) -> Result<Option<ApiTokenCredential>> {
        let row = sqlx::query(
            "SELECT t.id, t.owner, t.name, t.permissions, t.created_at, t.expires_at,
                    t.revoked_at, u.role
             FROM api_tokens t JOIN users u ON u.address = t.owner
             WHERE t.token_hash = $1",
        )
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await?;
        row.map(|row| {
            Ok(ApiTokenCredential {
                token: token(&row)?,
                role: parse_role(&text(&row, "role")?)?,
            })
        })
        .transpose()
    }

    /// The live (not revoked) token whose secret hashes to `hash`.
    pub async fn api_token_by_hash(&self, hash: &SecretHash) -> Result<Option<ApiToken>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM api_tokens WHERE token_hash = $1 AND revoked_at IS NULL"
        ))
        .bind(hash.to_hex())
        .fetch_optional(&self.pool)
        .await?
        .as_ref()
        .map(token)
        .transpose()
    }

    /// The owner's live (not revoked) tokens, expired ones included, oldest first.
    pub async fn list_api_tokens(&self, owner: &WalletAddress) -> Result<Vec<ApiToken>> {
        sqlx::query(&format!(
            "SELECT {TOKEN_COLS} FROM api_tokens WHERE owner = $1 AND revoked_at IS NULL
             ORDER BY id"
        ))
        .bind(owner.to_string())
        .fetch_all(&self.pool)
        .await?
        .iter()
        .map(token)
        .collect()
    }

    /// Revokes one of `owner`'s tokens; it stops authenticating at once. Revoking a revoked
    /// token does nothing; another owner's token is [`StoreError::NotFound`].
    pub async fn revoke_api_token(&self, owner: &WalletAddress, id: ApiTokenId) -> Result<()> {
        sqlx::query(
            "UPDATE api_tokens SET revoked_at = $3
             WHERE id = $1 AND owner = $2 AND revoked_at IS NULL",
        )
        .bind(id.0)
        .bind(owner.to_string())
        .bind(now_millis())
        .execute(&self.pool)
        .await?;
        let exists = sqlx::query("SELECT id FROM api_tokens WHERE id = $1 AND owner = $2")
            .bind(id.0)
            .bind(owner.to_string())
            .fetch_optional(&self.pool)
            .await?;
        match exists {
            Some(_) => Ok(()),
            None => Err(not_found("API token", id)),
        }
    }
}
