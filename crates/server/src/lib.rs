//! The control plane's one listener: REST (seed 002) today; WebSocket (004), Socket.IO `/fleet`
//! (001), the dashboard, `/openapi.json` and `/metrics` join it as they are built.
//!
//! [`app`] builds the router from a state and touches no socket, so tests drive it directly;
//! [`serve`] binds it to a listener.

mod error;
mod extract;
mod routes;

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use tokio::net::TcpListener;
use vmfleet_auth::JwtKey;

pub use error::ApiError;

/// Largest request body the API reads; larger ones get 413.
pub const MAX_BODY_BYTES: usize = 64 * 1024;

/// What every handler can reach.
#[derive(Clone, Debug)]
pub struct AppState {
    pub jwt: Arc<JwtKey>,
}

impl AppState {
    pub fn new(jwt: JwtKey) -> Self {
        AppState { jwt: Arc::new(jwt) }
    }
}

/// The whole HTTP surface of the control plane.
pub fn app(state: AppState) -> Router {
    routes::router().with_state(state)
}

/// Serves [`app`] on `listener` until `shutdown` completes, then finishes in-flight requests.
pub async fn serve(
    listener: TcpListener,
    state: AppState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, app(state))
        .with_graceful_shutdown(shutdown)
        .await
}
