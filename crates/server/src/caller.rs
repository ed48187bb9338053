//! Who is calling: the bearer token of a request, verified.

use axum::extract::FromRequestParts;
use axum::http::HeaderMap;
use axum::http::request::Parts;
use vmfleet_auth::{Role, VerifiedToken};
use vmfleet_core::Timestamp;

use crate::AppState;
use crate::error::ApiError;

/// A request whose `Authorization: Bearer` token verified (signature, algorithm, expiry).
#[derive(Debug, Clone)]
pub struct Caller(pub VerifiedToken);

/// The token of an `Authorization: Bearer` header, if there is one.
pub(crate) fn bearer_token(headers: &HeaderMap) -> Option<&str> {
    headers
        .get("authorization")
        .and_then(|h| h.to_str().ok())
        .and_then(|h| h.strip_prefix("Bearer "))
        .map(str::trim)
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        // Verified already by the middleware in front of every route.
        if let Some(caller) = parts.extensions.get::<Caller>() {
            return Ok(caller.clone());
        }
        let token = bearer_token(&parts.headers)
            .ok_or_else(|| ApiError::Unauthorized("a bearer token is required".into()))?;
        state
            .jwt
            .verify(token, Timestamp::now().unix_seconds())
            .map(Caller)
            .map_err(|e| ApiError::Unauthorized(e.to_string()))
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
