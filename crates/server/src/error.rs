use axum::Json;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use vmfleet_wire::api::{ApiErrorCode, ErrorBody};

/// Everything a handler can answer besides success. Mapped to a status, a code and seed 002's
/// error body in one place, [`IntoResponse`] below.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{0}")]
    BadRequest(String),
    #[error("the request body is larger than {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unauthorized(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("no route for {method} {path}")]
    NoRoute { method: String, path: String },
    #[error("{method} is not allowed on {path}")]
    MethodNotAllowed { method: String, path: String },
    #[error("{0}")]
    Conflict(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Unavailable(String),
    /// What no node (or driver) here can do: 501.
    #[error("{0}")]
    Unsupported(String),
    #[error(
        "too many requests: the limit is {limit} a minute; retry in {retry_after_secs} seconds"
    )]
    RateLimited { limit: u32, retry_after_secs: u64 },
    #[error("internal error")]
    Internal(#[source] Box<dyn std::error::Error + Send + Sync>),
}

impl ApiError {
    fn status_and_code(&self) -> (StatusCode, ApiErrorCode) {
        match self {
            ApiError::BadRequest(_) => (StatusCode::BAD_REQUEST, ApiErrorCode::BadRequest),
            ApiError::PayloadTooLarge { .. } => {
                (StatusCode::PAYLOAD_TOO_LARGE, ApiErrorCode::PayloadTooLarge)
            }
            ApiError::Unauthorized(_) => (StatusCode::UNAUTHORIZED, ApiErrorCode::Unauthorized),
            ApiError::Forbidden(_) => (StatusCode::FORBIDDEN, ApiErrorCode::Forbidden),
            ApiError::NoRoute { .. } => (StatusCode::NOT_FOUND, ApiErrorCode::NotFound),
            ApiError::MethodNotAllowed { .. } => {
                (StatusCode::METHOD_NOT_ALLOWED, ApiErrorCode::BadRequest)
            }
            ApiError::Conflict(_) => (StatusCode::CONFLICT, ApiErrorCode::Conflict),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, ApiErrorCode::NotFound),
            ApiError::Unavailable(_) => {
                (StatusCode::SERVICE_UNAVAILABLE, ApiErrorCode::Unavailable)
            }
            ApiError::Unsupported(_) => (StatusCode::NOT_IMPLEMENTED, ApiErrorCode::Unsupported),
            ApiError::RateLimited { .. } => {
                (StatusCode::TOO_MANY_REQUESTS, ApiErrorCode::RateLimited)
            }
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, ApiErrorCode::Internal),
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code) = self.status_and_code();
        if let ApiError::Internal(source) = &self {
            tracing::error!(error = %source, "request failed");
        }
        let mut resp = (status, Json(ErrorBody::new(code, self.to_string()))).into_response();
        if let ApiError::RateLimited {
            retry_after_secs, ..
        } = &self
        {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        resp
    }
}
