//! Wallet sign-in (`shared/CONTRACT.md`): `GET /auth/nonce` hands out a single-use nonce,
//! `POST /auth/login` takes an EIP-4361 message with its EIP-191 signature and answers with a
//! JWT for the recovered address.
//!
//! A login is refused (401) unless the signature is the claimed wallet's, the message names
//! this server's domain, was issued within the last five minutes, has not expired, and carries
//! a nonce this server issued and nobody used. The nonce is taken only after the signature
//! verified, so garbage requests cannot burn the nonces of real sign-ins.

use std::time::Duration;

use axum::Json;
use axum::extract::State;
use serde_json::json;
use vmfleet_auth::siwe::{SiweError, verify_sign_in};
use vmfleet_auth::{Permission, Role, Subject};
use vmfleet_core::Timestamp;
use vmfleet_store::{Actor, AuditTarget};
use vmfleet_wire::api::{LoginRequest, LoginResponse, NonceResponse};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Body;
use crate::nodes::store;

/// How long an issued nonce may wait for its sign-in.
pub const NONCE_TTL: Duration = Duration::from_secs(5 * 60);

/// What sign-in accepts and issues.
#[derive(Debug, Clone)]
pub struct SignIn {
    /// The hosts (with port) a message may name: the server's own.
    pub domains: Vec<String>,
    /// The lifetime of an issued token, unless the message expires sooner.
    pub token_ttl: Duration,
}

impl Default for SignIn {
    fn default() -> Self {
        SignIn {
            domains: Vec::new(),
            token_ttl: Duration::from_secs(24 * 3600),
        }
    }
}

/// Alphanumeric, 20 characters (about 119 bits).
fn new_nonce() -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789";
    let mut raw = [0u8; 20];
    // An RNG failure leaves zeros, which the store's uniqueness then refuses, never reuses.
    let _ = getrandom::fill(&mut raw);
    raw.iter()
        .map(|b| ALPHABET[usize::from(*b) % ALPHABET.len()] as char)
        .collect()
}

/// `GET /auth/nonce`.
pub(crate) async fn nonce(State(state): State<AppState>) -> Result<Json<NonceResponse>, ApiError> {
    let store = store(&state)?;
    let now = Timestamp::now();
    let expires = Timestamp::from_unix_millis(
        now.unix_millis()
            .saturating_add(i64::try_from(NONCE_TTL.as_millis()).unwrap_or(i64::MAX)),
    );
    let nonce = new_nonce();
    store.put_nonce(&nonce, &expires).await?;
    // Expired nonces are swept as new ones are handed out, so the table stays small.
    let _ = store.purge_expired_nonces(&now).await;
    Ok(Json(NonceResponse { nonce }))
}

/// `POST /auth/login`.
pub(crate) async fn login(
    State(state): State<AppState>,
    Body(req): Body<LoginRequest>,
) -> Result<Json<LoginResponse>, ApiError> {
    let store = store(&state)?;
    let now = Timestamp::now();
    let refuse = |e: SiweError| ApiError::Unauthorized(format!("sign-in refused: {e}"));
    if state.sign_in.domains.is_empty() {
        return Err(ApiError::Unavailable(
            "wallet sign-in is not configured on this server".into(),
        ));
    }
    let msg = verify_sign_in(
        &req.message,
        &req.signature,
        &state.sign_in.domains,
        now.unix_seconds(),
    )
    .map_err(refuse)?;
    if !store.take_nonce(&msg.nonce, &now).await? {
        return Err(refuse(SiweError::BadNonce));
    }
    let user = store.upsert_user(&msg.address, Role::Standard).await?;
    let ttl = i64::try_from(state.sign_in.token_ttl.as_secs()).unwrap_or(i64::MAX);
    let ttl = match &msg.expiration_time {
        Some(t) => ttl.min(t.unix_seconds() - now.unix_seconds()),
        None => ttl,
    };
    let token = state.jwt.issue_for(
        &Subject::Wallet(msg.address),
        user.role,
        &[Permission::Read, Permission::Control, Permission::Console],
        now.unix_seconds(),
        ttl,
    );
    let _ = store
        .append_audit(
            &Actor::User(msg.address),
            "sign_in",
            &AuditTarget::User(msg.address),
            &json!({ "domain": msg.domain, "chainId": msg.chain_id }),
        )
        .await;
    Ok(Json(LoginResponse {
        token,
        address: vmfleet_core::ChecksumAddress(msg.address),
        expires_at: now.unix_seconds().saturating_add(ttl),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nonces_are_long_alphanumeric_and_fresh() {
        let a = new_nonce();
        assert!(a.len() >= 8 && a.bytes().all(|b| b.is_ascii_alphanumeric()));
        assert_ne!(a, new_nonce());
    }
}
