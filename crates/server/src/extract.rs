//! Request extraction that answers in seed 002's error format, never a framework default.

use axum::body::Bytes;
use axum::extract::{FromRequest, Request};
use serde::de::DeserializeOwned;
use vmfleet_wire::{DecodeError, decode_body};

use crate::MAX_BODY_BYTES;
use crate::error::ApiError;

/// A JSON body decoded through the wire crate, limited to [`MAX_BODY_BYTES`]. An empty body
/// reads as `{}`, so requests whose fields are all optional need none.
pub struct Body<T>(pub T);

impl<S, T> FromRequest<S> for Body<T>
where
    S: Send + Sync,
    T: DeserializeOwned,
{
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        let bytes = axum::body::to_bytes(req.into_body(), MAX_BODY_BYTES)
            .await
            .map_err(|_| ApiError::PayloadTooLarge {
                limit: MAX_BODY_BYTES,
            })?;
        decode(&bytes).map(Body)
    }
}

fn decode<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    let text = std::str::from_utf8(bytes)
        .map_err(|_| ApiError::BadRequest("the request body is not UTF-8".into()))?;
    let text = if text.trim().is_empty() { "{}" } else { text };
    decode_body::<T>("request", text).map_err(|e| match e {
        DecodeError::Invalid { source, .. } => {
            ApiError::BadRequest(format!("invalid request body: {source}"))
        }
        other => ApiError::BadRequest(format!("invalid request body: {other}")),
    })
}
