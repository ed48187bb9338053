//! Long-lived API tokens for automation: `POST /auth/tokens` makes one (its secret is in that
//! answer and nowhere else: the store keeps only its hash), `GET /auth/tokens` lists the
//! caller's, `DELETE /auth/tokens/{id}` revokes one at once. [`crate::caller`] accepts them
//! wherever a sign-in JWT is accepted.
//!
//! Managing tokens takes a sign-in JWT: an API token cannot mint, list or revoke tokens, so a
//! leaked one cannot outlive its own revocation through tokens it made. A token has at most the
//! permissions of the JWT that made it, and expires after 1 to [`MAX_TOKEN_DAYS`] days, or
//! never when no expiry is asked for. An admin may manage any user's tokens (`owner`).

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{FromRequestParts, Path, Query, State};
use axum::http::StatusCode;
use axum::http::request::Parts;
use serde_json::json;
use vmfleet_auth::{Role, SecretHash, Subject, VerifiedToken, generate_secret};
use vmfleet_core::{ApiTokenId, ChecksumAddress, Timestamp, WalletAddress};
use vmfleet_store::{ApiToken, AuditTarget};
use vmfleet_wire::api::{
    ActionResponse, ApiTokenQuery, ApiTokenView, CreateApiTokenRequest, CreateApiTokenResponse,
};

use crate::AppState;
use crate::caller::actor;
use crate::caller::{API_TOKEN_PREFIX, Caller, ViaApiToken};
use crate::error::ApiError;
use crate::extract::Body;
use crate::nodes::store;

/// The longest lifetime a new API token may be given, in days.
pub const MAX_TOKEN_DAYS: u32 = 365;

const DAY_MILLIS: i64 = 24 * 3600 * 1000;

/// A caller signed in with a JWT (not an API token).
pub(crate) struct SignedIn(VerifiedToken);

impl FromRequestParts<AppState> for SignedIn {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let Caller(token) = Caller::from_request_parts(parts, state).await?;
        if parts.extensions.get::<ViaApiToken>().is_some() {
            return Err(ApiError::Forbidden(
                "API tokens are managed with a sign-in token, not with an API token".into(),
            ));
        }
        Ok(SignedIn(token))
    }
}

/// Whose tokens the caller acts on: its own wallet, or, for an admin, anyone's.
fn owner_for(
    token: &VerifiedToken,
    asked: Option<WalletAddress>,
) -> Result<WalletAddress, ApiError> {
    let admin = token.role == Role::Admin;
    match (&token.subject, asked) {
        (Subject::Wallet(me), Some(o)) if o == *me => Ok(o),
        (_, Some(o)) if admin => Ok(o),
        (_, Some(_)) => Err(ApiError::Forbidden(
            "only an admin may manage another owner's API tokens".into(),
        )),
        (Subject::Wallet(me), None) => Ok(*me),
        (Subject::Operator(_), None) => Err(ApiError::BadRequest(
            "an operator has no API tokens of its own: name the owner".into(),
        )),
    }
}

fn view(t: &ApiToken) -> ApiTokenView {
    ApiTokenView {
        id: t.id,
        name: t.name.clone(),
        owner: ChecksumAddress(t.owner),
        permissions: t.permissions.clone(),
        created_at: t.created_at.unix_seconds(),
        expires_at: t.expires_at.as_ref().map(Timestamp::unix_seconds),
    }
}

async fn audit(
    state: &AppState,
    token: &VerifiedToken,
    action: &str,
    id: ApiTokenId,
    detail: serde_json::Value,
) {
    let Ok(store) = store(state) else { return };
    if let Err(e) = store
        .append_audit(&actor(token), action, &AuditTarget::ApiToken(id), &detail)
        .await
    {
        tracing::warn!(error = %e, action, "the audit log refused an entry");
    }
}

/// `POST /auth/tokens`: 201 with the new token's secret, shown once.
pub(crate) async fn create(
    State(state): State<AppState>,
    SignedIn(token): SignedIn,
    Body(req): Body<CreateApiTokenRequest>,
) -> Result<(StatusCode, Json<CreateApiTokenResponse>), ApiError> {
    let store = store(&state)?;
    let owner = owner_for(&token, req.owner)?;
    let permissions = match req.permissions {
        Some(p) => p,
        None => token.permissions.clone(),
    };
    if permissions.is_empty() {
        return Err(ApiError::BadRequest(
            "an API token needs at least one permission".into(),
        ));
    }
    if let Some(p) = permissions.iter().find(|p| !token.can(**p)) {
        return Err(ApiError::Forbidden(format!(
            "a token cannot grant the {p:?} permission its maker lacks"
        )));
    }
    let expires_at = match req.expires_in_days {
        None => None,
        Some(d) if (1..=MAX_TOKEN_DAYS).contains(&d) => Some(Timestamp::from_unix_millis(
            Timestamp::now()
                .unix_millis()
                .saturating_add(i64::from(d) * DAY_MILLIS),
        )),
        Some(d) => {
            return Err(ApiError::BadRequest(format!(
                "expires_in_days is 1 to {MAX_TOKEN_DAYS}, or omitted for no expiry, not {d}"
            )));
        }
    };
    let secret = format!("{API_TOKEN_PREFIX}{}", generate_secret());
    let created = store
        .create_api_token(
            &owner,
            &req.name,
            &SecretHash::of(&secret),
            &permissions,
            expires_at.as_ref(),
        )
        .await?;
    let v = view(&created);
    audit(
        &state,
        &token,
        "api_token.create",
        created.id,
        json!({ "owner": v.owner, "name": v.name, "permissions": v.permissions, "expires_at": v.expires_at }),
    )
    .await;
    Ok((
        StatusCode::CREATED,
        Json(CreateApiTokenResponse {
            id: v.id,
            name: v.name,
            token: secret,
            owner: v.owner,
            permissions: v.permissions,
            created_at: v.created_at,
            expires_at: v.expires_at,
        }),
    ))
}

/// `GET /auth/tokens`: the owner's live tokens (expired ones included), never their secrets.
pub(crate) async fn list(
    State(state): State<AppState>,
    SignedIn(token): SignedIn,
    query: Result<Query<ApiTokenQuery>, QueryRejection>,
) -> Result<Json<Vec<ApiTokenView>>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let owner = owner_for(&token, q.owner)?;
    let tokens = store(&state)?.list_api_tokens(&owner).await?;
    Ok(Json(tokens.iter().map(view).collect()))
}

/// `DELETE /auth/tokens/{id}`: revokes the token; it stops authenticating at once. Another
/// owner's token is 404.
pub(crate) async fn revoke(
    State(state): State<AppState>,
    SignedIn(token): SignedIn,
    Path(id): Path<String>,
    query: Result<Query<ApiTokenQuery>, QueryRejection>,
) -> Result<Json<ActionResponse>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let id: ApiTokenId = id
        .parse()
        .map_err(|_| ApiError::BadRequest(format!("{id:?} is not an API token id")))?;
    let owner = owner_for(&token, q.owner)?;
    store(&state)?.revoke_api_token(&owner, id).await?;
    audit(
        &state,
        &token,
        "api_token.revoke",
        id,
        json!({ "owner": ChecksumAddress(owner) }),
    )
    .await;
    Ok(Json(ActionResponse::new(format!("API token {id} revoked"))))
}
