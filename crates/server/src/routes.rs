use axum::Json;
use axum::Router;
use axum::extract::Request;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use vmfleet_core::Timestamp;
use vmfleet_wire::api::{Health, PingRequest, PingResponse};

use crate::AppState;
use crate::error::ApiError;
use crate::extract::Body;

pub(crate) fn router() -> Router<AppState> {
    Router::new()
        .route("/health", get(health))
        .route("/ping", post(ping))
        .route("/auth/nonce", get(crate::signin::nonce))
        .route("/auth/login", post(crate::signin::login))
        .route("/ws/vms/{name}", get(crate::ws::monitor))
        .route("/ws/vms/{name}/console", get(crate::ws::console))
        .route(
            "/auth/tokens",
            post(crate::api_tokens::create).get(crate::api_tokens::list),
        )
        .route(
            "/auth/tokens/{id}",
            axum::routing::delete(crate::api_tokens::revoke),
        )
        .route("/vm/create", post(crate::vms::create))
        .route("/vm/boot", post(crate::vms::boot))
        .route("/vm/start", post(crate::vms::start))
        .route("/vm/stop", post(crate::vms::stop))
        .route("/vm/reboot", post(crate::vms::reboot))
        .route("/vm/power-button", post(crate::vms::power_button))
        .route("/vm/delete", post(crate::vms::delete))
        .route("/vm/info", post(crate::vms::info_of))
        .route("/vm/list", post(crate::vms::list))
        .route("/vm/snapshot", post(crate::vms::snapshot))
        .route("/vm/snapshot/list", post(crate::vms::list_snapshots))
        .route("/vm/snapshot/delete", post(crate::vms::delete_snapshot))
        .route("/vm/restore", post(crate::vms::restore))
        .route("/vm/resize/vcpu", post(crate::vms::resize_vcpu))
        .route("/vm/resize/memory", post(crate::vms::resize_memory))
        .route("/vm/disk/add", post(crate::vms::add_disk))
        .route("/vm/commit", post(crate::vms::commit))
        .route("/vm/coredump", post(crate::vms::coredump))
        .route("/vm/device/add", post(crate::vms::add_device))
        .route("/vm/device/remove", post(crate::vms::remove_device))
        .route("/vm/fs/add", post(crate::vms::add_fs))
        .route("/vm/migrate/to", post(crate::migrate::migrate_to))
        .route("/vm/migrate/from", post(crate::migrate::migrate_from))
        .route("/nodes", post(crate::nodes::create).get(crate::nodes::list))
        .route("/nodes/{id}", axum::routing::delete(crate::nodes::remove))
        .route("/nodes/{id}/drain", post(crate::nodes::drain))
        .route("/nodes/{id}/undrain", post(crate::nodes::undrain))
        .route(
            "/containers",
            post(crate::containers::create).get(crate::containers::list),
        )
        .route(
            "/containers/{id}",
            get(crate::containers::get).delete(crate::containers::remove),
        )
        .route("/usage", get(crate::containers::usage))
        .route("/metrics", get(crate::metrics::metrics))
        .route("/openapi.json", get(crate::openapi::serve))
        .fallback(no_route)
        .method_not_allowed_fallback(method_not_allowed)
}

/// `GET /health`: the process is up and serving.
async fn health() -> Json<Health> {
    Json(Health::Healthy)
}

/// `POST /ping`: the service parses and answers requests.
async fn ping(Body(_req): Body<PingRequest>) -> Json<PingResponse> {
    Json(PingResponse {
        message: "pong".into(),
        timestamp: Timestamp::now().unix_seconds(),
    })
}

/// What no route took: the dashboard's page or one of its files, else a 404.
async fn no_route(req: Request) -> Response {
    let path = req.uri().path();
    if let Some(page) = crate::dashboard::serve(req.method(), path, req.headers()) {
        return page;
    }
    ApiError::NoRoute {
        method: req.method().to_string(),
        path: path.to_owned(),
    }
    .into_response()
}

async fn method_not_allowed(req: Request) -> ApiError {
    ApiError::MethodNotAllowed {
        method: req.method().to_string(),
        path: req.uri().path().to_owned(),
    }
}
