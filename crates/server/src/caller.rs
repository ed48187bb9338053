//! Who is calling: the bearer token of a request, verified. A sign-in JWT is checked against
//! the server's key; a long-lived API token (`vmf_...`) is looked up by its hash in the store,
//! and speaks for its owner with its owner's current role and the token's own permissions.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use vmfleet_auth::{Permission, Role, SecretHash, Subject, VerifiedToken};
use vmfleet_core::{ApiTokenId, Timestamp};

use crate::AppState;
use crate::error::ApiError;

/// The prefix of every API token; the rest is 256 random bits.
pub const API_TOKEN_PREFIX: &str = "vmf_";

/// A request whose `Authorization: Bearer` token verified: a JWT (signature, algorithm,
/// expiry) or a live API token.
#[derive(Debug, Clone)]
pub struct Caller(pub VerifiedToken);

/// In a request's extensions when its caller authenticated with this API token rather than a
/// sign-in JWT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ViaApiToken(pub ApiTokenId);

/// Why a bearer token was refused, kept so the check is done once per request.
#[derive(Debug, Clone)]
pub(crate) enum Refusal {
    Missing,
    Unauthorized(String),
    /// The store could not be asked.
    Failed(String),
}

impl From<Refusal> for ApiError {
    fn from(r: Refusal) -> Self {
        match r {
            Refusal::Missing => ApiError::Unauthorized("a bearer token is required".into()),
            Refusal::Unauthorized(m) => ApiError::Unauthorized(m),
            Refusal::Failed(m) => ApiError::Internal(m.into()),
        }
    }
}

/// The token of an `Authorization: Bearer` header, if there is one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
}

/// Verifies the request's bearer token: at most one store lookup (for an API token).
pub(crate) async fn verify(
    state: &AppState,
    headers: &HeaderMap,
) -> Result<(Caller, Option<ViaApiToken>), Refusal> {
    let token = bearer_token(headers).ok_or(Refusal::Missing)?;
    verify_token(state, token).await
}

/// Verifies one token, a JWT or an API token, wherever it came from (a header, a WebSocket's
/// query or subprotocol).
pub(crate) async fn verify_token(
    state: &AppState,
    token: &str,
) -> Result<(Caller, Option<ViaApiToken>), Refusal> {
    let now = Timestamp::now();
    if !token.starts_with(API_TOKEN_PREFIX) {
        return state
            .jwt
            .verify(token, now.unix_seconds())
            .map(|t| (Caller(t), None))
            .map_err(|e| Refusal::Unauthorized(e.to_string()));
    }
    let store = state.store.as_ref().ok_or_else(|| {
        Refusal::Unauthorized("API tokens are not accepted by this control plane".into())
    })?;
    let found = store
        .api_token_credential(&SecretHash::of(token))
        .await
        .map_err(|e| Refusal::Failed(format!("checking an API token failed: {e}")))?;
    let Some(c) = found else {
        return Err(Refusal::Unauthorized("the API token is not valid".into()));
    };
    if c.token.revoked_at.is_some() {
        return Err(Refusal::Unauthorized(format!(
            "API token {} has been revoked",
            c.token.id
        )));
    }
    if let Some(exp) = &c.token.expires_at
        && now.unix_millis() >= exp.unix_millis()
    {
        return Err(Refusal::Unauthorized(format!(
            "API token {} expired at {}",
            c.token.id,
            exp.as_str()
        )));
    }
    let verified = VerifiedToken {
        subject: Subject::Wallet(c.token.owner),
        role: c.role,
        permissions: c.token.permissions,
        expires_at: c.token.expires_at.map_or(i64::MAX, |t| t.unix_seconds()),
    };
    Ok((Caller(verified), Some(ViaApiToken(c.token.id))))
}

/// Remembers what [`verify`] found in the request's extensions.
pub(crate) fn remember(
    extensions: &mut axum::http::Extensions,
    verified: Result<(Caller, Option<ViaApiToken>), Refusal>,
) {
    match verified {
        Ok((caller, via)) => {
            extensions.insert(caller);
            if let Some(via) = via {
                extensions.insert(via);
            }
        }
        Err(refusal) => {
            extensions.insert(refusal);
        }
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Verified already by the middleware in front of every route.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        if let Some(refusal) = parts.extensions.get::<Refusal>() {
            return Err(refusal.clone().into());
        }
        let verified = verify(state, &parts.headers).await;
        remember(&mut parts.extensions, verified.clone());
        verified.map(|(caller, _)| caller).map_err(ApiError::from)
    }
}

/// A caller with the admin role.
#[derive(Debug, Clone)]
pub struct Admin(pub VerifiedToken);

impl FromRequestParts<AppState> for Admin {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(token) = Caller::from_request_parts(parts, state).await?;
        if token.role == Role::Admin {
            Ok(Admin(token))
        } else {
            Err(ApiError::Forbidden("this needs the admin role".into()))
        }
    }
}

/// The token grants `perm` (403 otherwise): an API token can be narrower than its owner.
pub(crate) fn need(token: &VerifiedToken, perm: Permission) -> Result<(), ApiError> {
    if token.can(perm) {
        Ok(())
    } else {
        Err(ApiError::Forbidden(format!(
            "this token lacks the {perm:?} permission"
        )))
    }
}

/// Whether the token carries the admin role.
pub(crate) fn is_admin(token: &VerifiedToken) -> bool {
    token.role == Role::Admin
}

/// Who the audit log names for a request made with `token`.
pub(crate) fn actor(token: &VerifiedToken) -> vmfleet_store::Actor {
    match &token.subject {
        vmfleet_auth::Subject::Wallet(a) => vmfleet_store::Actor::User(*a),
        vmfleet_auth::Subject::Operator(name) => vmfleet_store::Actor::Operator(name.clone()),
    }
}
