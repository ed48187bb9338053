//! `GET /openapi.json`: the OpenAPI 3.1 document of the REST API, generated from the code.
//!
//! [`OPERATIONS`] lists every route of [`crate::routes`] (the Socket.IO path aside) with its
//! method, who may call it, its request and its answers; the bodies' schemas come from the wire
//! types themselves (schemars, the wire crate's `openapi` feature), so a changed field changes
//! the document. A test drives the router with every documented operation and every route of
//! `routes.rs` with every method, so the table and the router cannot drift apart.

use axum::Json;
use schemars::generate::SchemaSettings;
use schemars::{JsonSchema, Schema, SchemaGenerator};
use serde_json::{Map, Value, json};
use vmfleet_core::{NodeId, VmId};
use vmfleet_wire::api::{
    ActionResponse, AddDeviceRequest, AddDeviceResponse, AddDiskRequest, AddFsRequest,
    ApiTokenQuery, ApiTokenView, CommitRequest, CommitResponse, CoredumpResponse,
    CreateApiTokenRequest, CreateApiTokenResponse, CreateNodeRequest, CreateNodeResponse,
    CreateVmRequest, CreateVmResponse, DeleteSnapshotRequest, ErrorBody, Health, ListVmsRequest,
    LoginRequest, LoginResponse, MigrateFromRequest, MigrateToRequest, MigrateToResponse,
    MigrationTicket, NodeView, NonceResponse, PingRequest, PingResponse, RemoveDeviceRequest,
    ResizeMemoryRequest, ResizeVcpuRequest, RestoreRequest, SnapshotRequest, SnapshotResponse,
    SnapshotView, StopVmRequest, VmInfo, VmRef,
};
use vmfleet_wire::containers::{ContainerView, CreateContainerRequest, UsageQuery, UsageView};

/// A schema of the document, added to its components as it is asked for.
type SchemaFn = fn(&mut SchemaGenerator) -> Schema;

fn schema<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    g.subschema_for::<T>()
}

/// The object schema of `T` itself (its properties), not a reference to it.
fn inline<T: JsonSchema>(g: &mut SchemaGenerator) -> Schema {
    T::json_schema(g)
}

/// Who may call an operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Access {
    Anyone,
    /// A valid bearer token.
    Signed,
    /// A bearer token with the admin role.
    Admin,
}

/// What a successful answer carries.
#[derive(Clone, Copy)]
pub(crate) enum Answer {
    Json(u16, SchemaFn),
    /// Prometheus text.
    Text,
    /// A WebSocket (seeds 003/004): 101 on an upgrade request, its messages described there.
    WebSocket,
    /// No success at all: the operation is not built yet (501).
    NotImplemented,
}

/// One method on one path, as the router serves it.
#[derive(Clone, Copy)]
pub(crate) struct Operation {
    pub method: Verb,
    /// axum's syntax: `{name}` for a path parameter.
    pub path: &'static str,
    pub summary: &'static str,
    pub access: Access,
    pub body: Option<SchemaFn>,
    /// An object schema whose properties are the query parameters.
    pub query: Option<SchemaFn>,
    /// The schema of the path's one parameter (`{id}`, `{name}`), if it has one.
    pub path_id: Option<SchemaFn>,
    pub answer: Answer,
    /// The error statuses the handler itself gives, besides the ones every operation of its
    /// kind can (authentication, rate limit, body size).
    pub errors: &'static [u16],
}

const fn op(method: Verb, path: &'static str, summary: &'static str) -> Operation {
    Operation {
        method,
        path,
        summary,
        access: Access::Signed,
        body: None,
        query: None,
        path_id: None,
        answer: Answer::NotImplemented,
        errors: &[],
    }
}

impl Operation {
    const fn access(mut self, access: Access) -> Self {
        self.access = access;
        self
    }
    const fn body(mut self, body: SchemaFn) -> Self {
        self.body = Some(body);
        self
    }
    const fn query(mut self, query: SchemaFn) -> Self {
        self.query = Some(query);
        self
    }
    const fn path_id(mut self, id: SchemaFn) -> Self {
        self.path_id = Some(id);
        self
    }
    const fn ok(mut self, status: u16, body: SchemaFn) -> Self {
        self.answer = Answer::Json(status, body);
        self
    }
    const fn text(mut self) -> Self {
        self.answer = Answer::Text;
        self
    }
    const fn websocket(mut self) -> Self {
        self.answer = Answer::WebSocket;
        self
    }
    const fn errors(mut self, errors: &'static [u16]) -> Self {
        self.errors = errors;
        self
    }
}

/// The methods the API uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Verb {
    Get,
    Post,
    Delete,
}

impl Verb {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            Verb::Get => "GET",
            Verb::Post => "POST",
            Verb::Delete => "DELETE",
        }
    }
}

use Verb::{Delete as DELETE, Get as GET, Post as POST};

/// What a `/vm/*` operation on one VM can answer: a bad body, not the owner, no such VM, a
/// state or an operation in flight that forbids it, the node refusing or failing, no node or
/// database.
const VM_ERRORS: &[u16] = &[400, 403, 404, 409, 500, 501, 503];
const STORE_ERRORS: &[u16] = &[500, 503];

/// Every operation of the REST API, in the order of the router.
pub(crate) const OPERATIONS: &[Operation] = &[
    op(GET, "/health", "The process is up and serving")
        .access(Access::Anyone)
        .ok(200, schema::<Health>),
    op(POST, "/ping", "The service parses and answers requests")
        .access(Access::Anyone)
        .body(schema::<PingRequest>)
        .ok(200, schema::<PingResponse>)
        .errors(&[400]),
    op(POST, "/auth/tokens", "A long-lived API token, shown once")
        .body(schema::<CreateApiTokenRequest>)
        .ok(201, schema::<CreateApiTokenResponse>)
        .errors(&[400, 403, 409, 500, 503]),
    op(
        GET,
        "/auth/tokens",
        "The caller's API tokens, never their secrets",
    )
    .query(inline::<ApiTokenQuery>)
    .ok(200, schema::<Vec<ApiTokenView>>)
    .errors(&[400, 403, 500, 503]),
    op(DELETE, "/auth/tokens/{id}", "Revoke an API token")
        .query(inline::<ApiTokenQuery>)
        .path_id(schema::<vmfleet_core::ApiTokenId>)
        .ok(200, schema::<ActionResponse>)
        .errors(&[400, 403, 404, 500, 503]),
    op(
        GET,
        "/ws/vms/{name}",
        "Live status, metrics and commands of one VM (WebSocket)",
    )
    .access(Access::Anyone)
    .path_id(schema::<vmfleet_core::VmName>)
    .websocket()
    .errors(&[400]),
    op(
        GET,
        "/ws/vms/{name}/console",
        "A VM's serial console (WebSocket)",
    )
    .access(Access::Anyone)
    .path_id(schema::<vmfleet_core::VmName>)
    .websocket()
    .errors(&[400]),
    op(GET, "/auth/nonce", "A single-use sign-in nonce")
        .access(Access::Anyone)
        .ok(200, schema::<NonceResponse>)
        .errors(STORE_ERRORS),
    op(
        POST,
        "/auth/login",
        "Sign in with an EIP-4361 message and its signature",
    )
    .access(Access::Anyone)
    .body(schema::<LoginRequest>)
    .ok(200, schema::<LoginResponse>)
    .errors(&[400, 401, 500, 503]),
    op(POST, "/vm/create", "Create a VM and place it on a node")
        .body(schema::<CreateVmRequest>)
        .ok(200, schema::<CreateVmResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/boot", "Boot a created VM")
        .body(schema::<VmRef>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/start", "Start a stopped VM")
        .body(schema::<VmRef>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/stop", "Stop a VM, gracefully unless forced")
        .body(schema::<StopVmRequest>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/reboot", "Reboot a running VM")
        .body(schema::<VmRef>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/power-button", "Press a VM's power button")
        .body(schema::<VmRef>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/delete", "Delete a VM and free its room")
        .body(schema::<VmRef>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/info", "One VM")
        .body(schema::<VmRef>)
        .ok(200, schema::<VmInfo>)
        .errors(&[400, 403, 404, 500, 503]),
    op(
        POST,
        "/vm/list",
        "The caller's VMs (an admin may name an owner)",
    )
    .body(schema::<ListVmsRequest>)
    .ok(200, schema::<Vec<VmInfo>>)
    .errors(&[400, 403, 500, 503]),
    op(POST, "/vm/snapshot", "Snapshot a VM")
        .body(schema::<SnapshotRequest>)
        .ok(200, schema::<SnapshotResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/snapshot/list", "A VM's snapshots, oldest first")
        .body(schema::<VmRef>)
        .ok(200, schema::<Vec<SnapshotView>>)
        .errors(VM_ERRORS),
    op(
        POST,
        "/vm/snapshot/delete",
        "Delete a VM's snapshot and its files on its node",
    )
    .body(schema::<DeleteSnapshotRequest>)
    .ok(200, schema::<ActionResponse>)
    .errors(VM_ERRORS),
    op(POST, "/vm/restore", "Restore a VM from a snapshot")
        .body(schema::<RestoreRequest>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/resize/vcpu", "Change a VM's vCPU count")
        .body(schema::<ResizeVcpuRequest>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/resize/memory", "Change a VM's memory")
        .body(schema::<ResizeMemoryRequest>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(POST, "/vm/disk/add", "Add an empty disk to a VM")
        .body(schema::<AddDiskRequest>)
        .ok(200, schema::<ActionResponse>)
        .errors(VM_ERRORS),
    op(
        POST,
        "/vm/commit",
        "Save a stopped VM's disk as an image of its node's catalog",
    )
    .body(schema::<CommitRequest>)
    .ok(200, schema::<CommitResponse>)
    .errors(VM_ERRORS),
    op(
        POST,
        "/vm/coredump",
        "Write a running guest's memory to a core file on its node",
    )
    .body(schema::<VmRef>)
    .ok(200, schema::<CoredumpResponse>)
    .errors(VM_ERRORS),
    op(
        POST,
        "/vm/device/add",
        "Add a device to a stopped VM (cold-plug): an entropy device, or a PCI device its node offers for passthrough",
    )
    .body(schema::<AddDeviceRequest>)
    .ok(200, schema::<AddDeviceResponse>)
    .errors(VM_ERRORS),
    op(
        POST,
        "/vm/device/remove",
        "Remove a device or shared directory from a stopped VM",
    )
    .body(schema::<RemoveDeviceRequest>)
    .ok(200, schema::<ActionResponse>)
    .errors(VM_ERRORS),
    op(
        POST,
        "/vm/fs/add",
        "Share a directory under the node's share root with a stopped VM (virtio-9p)",
    )
    .body(schema::<AddFsRequest>)
    .ok(200, schema::<AddDeviceResponse>)
    .errors(VM_ERRORS),
    op(
        POST,
        "/vm/migrate/to",
        "Migrate a VM to another node (cold: snapshot, transfer, restore); answers at once with state migrating",
    )
    .body(schema::<MigrateToRequest>)
    .ok(200, schema::<MigrateToResponse>)
    .errors(VM_ERRORS),
    op(
        POST,
        "/vm/migrate/from",
        "Reserve room on a target node for a VM to migrate there: a ticket for /vm/migrate/to",
    )
    .body(schema::<MigrateFromRequest>)
    .ok(200, schema::<MigrationTicket>)
    .errors(VM_ERRORS),
    op(
        POST,
        "/nodes",
        "Register a node; its host key is shown once",
    )
    .access(Access::Admin)
    .body(schema::<CreateNodeRequest>)
    .ok(200, schema::<CreateNodeResponse>)
    .errors(&[400, 409, 500, 503]),
    op(
        GET,
        "/nodes",
        "Every node with its status, capacity and latest metrics",
    )
    .access(Access::Admin)
    .ok(200, schema::<Vec<NodeView>>)
    .errors(STORE_ERRORS),
    op(DELETE, "/nodes/{id}", "Remove a node that runs nothing")
        .access(Access::Admin)
        .path_id(schema::<NodeId>)
        .ok(200, schema::<ActionResponse>)
        .errors(&[400, 404, 409, 500, 503]),
    op(POST, "/nodes/{id}/drain", "The node takes no new work")
        .access(Access::Admin)
        .path_id(schema::<NodeId>)
        .ok(200, schema::<NodeView>)
        .errors(&[400, 404, 409, 500, 503]),
    op(POST, "/nodes/{id}/undrain", "The node takes new work again")
        .access(Access::Admin)
        .path_id(schema::<NodeId>)
        .ok(200, schema::<NodeView>)
        .errors(&[400, 404, 409, 500, 503]),
    op(
        POST,
        "/containers",
        "Rent a container: placed, started, answered when it runs",
    )
    .body(schema::<CreateContainerRequest>)
    .ok(201, schema::<ContainerView>)
    .errors(&[400, 403, 409, 500, 503]),
    op(
        GET,
        "/containers",
        "The caller's containers (an admin's: everyone's)",
    )
    .ok(200, schema::<Vec<ContainerView>>)
    .errors(&[403, 500, 503]),
    op(GET, "/containers/{id}", "One container")
        .path_id(schema::<VmId>)
        .ok(200, schema::<ContainerView>)
        .errors(&[400, 404, 500, 503]),
    op(DELETE, "/containers/{id}", "Stop and delete a container")
        .path_id(schema::<VmId>)
        .ok(200, schema::<ActionResponse>)
        .errors(&[400, 404, 409, 500, 503]),
    op(
        GET,
        "/usage",
        "What ended rentals consumed, by owner or node",
    )
    .query(inline::<UsageQuery>)
    .ok(200, schema::<UsageView>)
    .errors(&[400, 403, 500, 503]),
    op(GET, "/metrics", "Prometheus metrics")
        .access(Access::Admin)
        .text()
        .errors(STORE_ERRORS),
    op(GET, "/openapi.json", "This document")
        .access(Access::Anyone)
        .ok(200, schema::<Value>),
];

fn reason(status: u16) -> &'static str {
    match status {
        400 => "The request is malformed or invalid",
        401 => "No valid bearer token",
        403 => "The token may not do this",
        404 => "Not found",
        409 => "The current state forbids it, or another operation is in flight",
        413 => "The request body is too large",
        429 => "Rate limited; see Retry-After",
        500 => "Internal error",
        501 => "Not implemented",
        503 => "No node, database or scheduler can take it now",
        _ => "Error",
    }
}

fn json_content(schema: Schema) -> Value {
    json!({ "application/json": { "schema": schema } })
}

fn operation(g: &mut SchemaGenerator, op: &Operation) -> Value {
    let mut responses = Map::new();
    match op.answer {
        Answer::Json(status, body) => {
            responses.insert(
                status.to_string(),
                json!({ "description": "Success", "content": json_content(body(g)) }),
            );
        }
        Answer::Text => {
            responses.insert(
                "200".into(),
                json!({
                    "description": "Prometheus text exposition format",
                    "content": { "text/plain": { "schema": { "type": "string" } } },
                }),
            );
        }
        Answer::WebSocket => {
            responses.insert(
                "101".into(),
                json!({ "description": "Switching to the WebSocket protocol of seed 004 (`{type, timestamp, data}` messages); a bad token or VM is an `error` message on the socket" }),
            );
        }
        Answer::NotImplemented => {}
    }
    let mut errors: Vec<u16> = op.errors.to_vec();
    errors.push(429);
    if op.access != Access::Anyone {
        errors.push(401);
    }
    if op.access == Access::Admin {
        errors.push(403);
    }
    if op.body.is_some() {
        errors.push(413);
    }
    if matches!(op.answer, Answer::NotImplemented) {
        errors.push(501);
    }
    errors.sort_unstable();
    errors.dedup();
    let error = schema::<ErrorBody>(g);
    for status in errors {
        responses.insert(
            status.to_string(),
            json!({ "description": reason(status), "content": json_content(error.clone()) }),
        );
    }

    let mut out = Map::new();
    out.insert("summary".into(), op.summary.into());
    out.insert(
        "operationId".into(),
        format!("{} {}", op.method.as_str(), op.path).into(),
    );
    let mut parameters = Vec::new();
    if let Some(id) = op.path_id {
        let name = op
            .path
            .split_once('{')
            .and_then(|(_, rest)| rest.split_once('}'))
            .map_or("id", |(name, _)| name);
        parameters.push(json!({ "name": name, "in": "path", "required": true, "schema": id(g) }));
    }
    if let Some(query) = op.query {
        let object = query(g);
        let required: Vec<Value> = object
            .get("required")
            .and_then(Value::as_array)
            .cloned()
            .unwrap_or_default();
        if let Some(props) = object.get("properties").and_then(Value::as_object) {
            for (name, schema) in props {
                parameters.push(json!({
                    "name": name,
                    "in": "query",
                    "required": required.contains(&Value::from(name.as_str())),
                    "schema": schema,
                }));
            }
        }
    }
    if !parameters.is_empty() {
        out.insert("parameters".into(), parameters.into());
    }
    if let Some(body) = op.body {
        out.insert(
            "requestBody".into(),
            json!({ "required": true, "content": json_content(body(g)) }),
        );
    }
    out.insert("responses".into(), responses.into());
    match op.access {
        Access::Anyone => {
            out.insert("security".into(), json!([]));
        }
        Access::Signed => {}
        Access::Admin => {
            out.insert(
                "description".into(),
                "Needs a token with the admin role.".into(),
            );
        }
    }
    out.into()
}

/// The whole document.
pub fn document() -> Value {
    let mut g = SchemaSettings::draft2020_12()
        .with(|s| {
            s.definitions_path = "/components/schemas".into();
            s.meta_schema = None;
        })
        .into_generator();
    let mut paths: Map<String, Value> = Map::new();
    for op in OPERATIONS {
        let value = operation(&mut g, op);
        let item = paths
            .entry(op.path)
            .or_insert_with(|| Value::Object(Map::new()));
        if let Value::Object(item) = item {
            item.insert(op.method.as_str().to_ascii_lowercase(), value);
        }
    }
    json!({
        "openapi": "3.1.0",
        "info": {
            "title": "vmfleet control plane",
            "version": env!("CARGO_PKG_VERSION"),
            "description": "The REST API of seed 002 plus vmfleet's sign-in, nodes, containers and usage. Errors carry `{success: false, message, code}`.",
        },
        "paths": paths,
        "components": {
            "schemas": g.take_definitions(true),
            "securitySchemes": {
                "bearer": { "type": "http", "scheme": "bearer", "bearerFormat": "JWT" },
            },
        },
        "security": [{ "bearer": [] }],
    })
}

/// `GET /openapi.json`.
pub(crate) async fn serve() -> Json<Value> {
    Json(document())
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeSet;

    use axum::body::Body;
    use axum::http::{Method, Request, StatusCode};
    use tower::ServiceExt;
    use vmfleet_auth::JwtKey;

    use super::*;
    use crate::ratelimit::RateLimits;
    use crate::{AppState, app};

    /// The paths `routes.rs` gives to `.route(...)`, read from its source (rustfmt's layout or
    /// any other: whitespace is skipped).
    fn routed_paths() -> BTreeSet<String> {
        let source = include_str!("routes.rs");
        assert!(
            !source.contains(".nest(")
                && !source.contains(".merge(")
                && !source.contains(".route_service("),
            "routes.rs adds routes in a way this test cannot see; extend it"
        );
        let mut paths = BTreeSet::new();
        for chunk in source.split(".route(").skip(1) {
            let rest = chunk.trim_start();
            let path = rest
                .strip_prefix('"')
                .and_then(|r| r.split('"').next())
                .unwrap_or_else(|| panic!("a route whose path is not a literal: {rest:.40}"));
            paths.insert(path.to_owned());
        }
        paths
    }

    /// The methods the router answers on `path` (neither its 404 for no route nor 405).
    async fn served_methods(router: &axum::Router, path: &str) -> BTreeSet<&'static str> {
        let uri = path.replace("{id}", "probe-id");
        let mut served = BTreeSet::new();
        for method in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            let req = Request::builder()
                .method(Method::from_bytes(method.as_bytes()).unwrap())
                .uri(&uri)
                .body(Body::empty())
                .unwrap();
            let resp = router.clone().oneshot(req).await.unwrap();
            let status = resp.status();
            let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
                .await
                .unwrap();
            let no_route = status == StatusCode::NOT_FOUND
                && String::from_utf8_lossy(&body).contains("no route for");
            if status != StatusCode::METHOD_NOT_ALLOWED && !no_route {
                served.insert(method);
            }
        }
        served
    }

    fn router() -> axum::Router {
        app(AppState::new(JwtKey::generate()).with_rate_limits(RateLimits::unlimited()))
    }

    #[tokio::test]
    async fn routes_and_document_agree() {
        let router = router();
        let doc = document();
        let documented: BTreeSet<(String, String)> = doc["paths"]
            .as_object()
            .unwrap()
            .iter()
            .flat_map(|(path, item)| {
                item.as_object()
                    .unwrap()
                    .keys()
                    .map(move |m| (m.to_ascii_uppercase(), path.clone()))
            })
            .collect();
        let mut routed = BTreeSet::new();
        for path in routed_paths() {
            for method in served_methods(&router, &path).await {
                routed.insert((method.to_owned(), path.clone()));
            }
        }
        // Documented paths the source scan might have missed must be served too.
        for (_, path) in &documented {
            for method in served_methods(&router, path).await {
                routed.insert((method.to_owned(), path.clone()));
            }
        }
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routed, not documented: {undocumented:?}"
        );
        assert!(unrouted.is_empty(), "documented, not routed: {unrouted:?}");
        assert!(routed.len() > 30, "{routed:?}");
    }

    /// The dashboard's TypeScript client is typed from `web/openapi.json`: it must be this
    /// document. `VMFLEET_UPDATE_OPENAPI=1 cargo test -p vmfleet-server openapi` rewrites it.
    #[test]
    fn the_dashboards_copy_is_this_document() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../../web/openapi.json");
        let doc = document();
        if std::env::var_os("VMFLEET_UPDATE_OPENAPI").is_some() {
            let text = serde_json::to_string_pretty(&doc).unwrap() + "\n";
            std::fs::write(path, text).unwrap();
        }
        let copy: Value = serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        assert!(
            copy == doc,
            "web/openapi.json differs from the document the server serves: run \
             `VMFLEET_UPDATE_OPENAPI=1 cargo test -p vmfleet-server openapi` and commit it"
        );
    }

    #[tokio::test]
    async fn the_document_is_served_without_a_token() {
        let req = Request::get("/openapi.json").body(Body::empty()).unwrap();
        let resp = router().oneshot(req).await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let body = axum::body::to_bytes(resp.into_body(), 1 << 20)
            .await
            .unwrap();
        let served: Value = serde_json::from_slice(&body).unwrap();
        assert_eq!(served, document());
        assert_eq!(served["openapi"], "3.1.0");
    }

    /// A validator for the schema at `pointer` in the document, its `$ref`s resolved there.
    fn validator(doc: &Value, pointer: &str) -> jsonschema::Validator {
        let mut schema = doc
            .pointer(pointer)
            .unwrap_or_else(|| panic!("no schema at {pointer}"))
            .clone();
        schema
            .as_object_mut()
            .unwrap()
            .insert("components".into(), doc["components"].clone());
        jsonschema::draft202012::new(&schema).unwrap()
    }

    fn body_pointer(method: &str, path: &str, part: &str) -> String {
        let path = path.replace('~', "~0").replace('/', "~1");
        format!("/paths/{path}/{method}/{part}/content/application~1json/schema")
    }

    /// Every example of seed 002 (`crates/wire/tests/fixtures/002/`) validates against the
    /// document: requests against their request body's schema, answers against their status's.
    #[test]
    fn seed_examples_validate_against_the_document() {
        let doc = document();
        let dir =
            std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../wire/tests/fixtures/002");
        let mut checked = 0;
        for entry in std::fs::read_dir(&dir).unwrap() {
            let file = entry.unwrap().path();
            let name = file.file_stem().unwrap().to_str().unwrap().to_owned();
            let example: Value =
                serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let name = name.strip_prefix("curl_").unwrap_or(&name);
            let (op, part) = name.rsplit_once('_').unwrap();
            let (method, path) = match op {
                "health" => ("get", "/health".to_owned()),
                "ping" => ("post", "/ping".to_owned()),
                op => ("post", format!("/vm/{op}")),
            };
            let pointer = match part {
                "request" => body_pointer(method, &path, "requestBody"),
                "response" => body_pointer(method, &path, "responses/200"),
                "error" => body_pointer(method, &path, "responses/400"),
                other => panic!("an unknown kind of example: {other}"),
            };
            let v = validator(&doc, &pointer);
            let errors: Vec<String> = v.iter_errors(&example).map(|e| e.to_string()).collect();
            assert!(errors.is_empty(), "{}: {errors:?}", file.display());
            checked += 1;
        }
        assert!(checked >= 20, "only {checked} examples");
    }

    #[test]
    fn schemas_refuse_what_the_types_refuse() {
        let doc = document();
        let v = validator(&doc, &body_pointer("post", "/vm/boot", "requestBody"));
        let ok = json!({"build_id": "vm-1", "owner": "0x1234567890abcdef1234567890abcdef12345678"});
        assert!(v.is_valid(&ok));
        let mut extra = ok.clone();
        extra["hack"] = json!(1);
        assert!(!v.is_valid(&extra), "unknown fields are refused");
        let mut bad_id = ok.clone();
        bad_id["build_id"] = json!("../etc");
        assert!(!v.is_valid(&bad_id));
        let mut bad_owner = ok;
        bad_owner["owner"] = json!("0x12");
        assert!(!v.is_valid(&bad_owner));
    }
}
