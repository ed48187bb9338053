//! The node registry of `shared/CONTRACT.md`: `POST /nodes` and `GET /nodes`, admin only.

use std::time::Duration;

use axum::Json;
use axum::extract::{Path, State};
use vmfleet_auth::{Permission, SecretHash, generate_secret};
use vmfleet_core::NodeId;
use vmfleet_store::{Node, NodeStatus, StoreError};
use vmfleet_wire::api::ActionResponse;
use vmfleet_wire::api::{CreateNodeRequest, CreateNodeResponse, NodeCapacity, NodeState, NodeView};
use vmfleet_wire::fleet::{BackendCommand, DrainNode, UndrainNode};

use crate::AppState;
use crate::caller::{Admin, need};
use crate::error::ApiError;
use crate::extract::Body;

pub(crate) fn store(state: &AppState) -> Result<&vmfleet_store::Store, ApiError> {
    state
        .store
        .as_ref()
        .ok_or_else(|| ApiError::Unavailable("this control plane has no database".into()))
}

/// `POST /nodes`: registers a node. Its host key is in this answer and nowhere else: the
/// database keeps only its hash.
pub(crate) async fn create(
    State(state): State<AppState>,
    Admin(token): Admin,
    Body(req): Body<CreateNodeRequest>,
) -> Result<Json<CreateNodeResponse>, ApiError> {
    need(&token, Permission::Control)?;
    let name = req.name.trim();
    if name.is_empty() || name.len() > 64 || name.chars().any(char::is_control) {
        return Err(ApiError::BadRequest(
            "a node name is 1 to 64 printable characters".into(),
        ));
    }
    let key = generate_secret();
    let node = store(&state)?
        .create_node(name, &SecretHash::of(&key))
        .await?;
    Ok(Json(CreateNodeResponse {
        node_id: node.id,
        host_api_key: key,
    }))
}

/// `GET /nodes`: every node with its status, capacity, last heartbeat and latest metrics.
pub(crate) async fn list(
    State(state): State<AppState>,
    Admin(token): Admin,
) -> Result<Json<Vec<NodeView>>, ApiError> {
    need(&token, Permission::Read)?;
    let nodes = store(&state)?.list_nodes().await?;
    Ok(Json(nodes.into_iter().map(view).collect()))
}

fn node_id(raw: &str) -> Result<NodeId, ApiError> {
    NodeId::new(raw).map_err(|e| ApiError::BadRequest(e.to_string()))
}

/// How long a node has to acknowledge a drain or undrain.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends `cmd` to the node's agent if it is connected (a refusal or silence is 409); returns
/// whether it was connected.
async fn tell_agent(state: &AppState, id: &NodeId, cmd: &BackendCommand) -> Result<bool, ApiError> {
    let Some(fleet) = state.fleet.as_ref().filter(|f| f.is_connected(id)) else {
        return Ok(false);
    };
    fleet
        .send(id, cmd, COMMAND_TIMEOUT)
        .await
        .map_err(|e| ApiError::Conflict(e.to_string()))?;
    Ok(true)
}

/// `POST /nodes/{id}/drain`: the node takes no new work (`MAINTENANCE`); what it runs goes on.
/// A connected agent is told at once (`drain_node`); a disconnected one stays in maintenance
/// when it returns.
pub(crate) async fn drain(
    State(state): State<AppState>,
    Admin(token): Admin,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    need(&token, Permission::Control)?;
    let id = node_id(&id)?;
    let store = store(&state)?;
    store.get_node(&id).await?;
    store.set_node_status(&id, NodeStatus::Maintenance).await?;
    let cmd = BackendCommand::DrainNode(DrainNode {
        node_id: id.clone(),
        reason: "drained by an operator".into(),
    });
    tell_agent(&state, &id, &cmd).await?;
    Ok(Json(view(store.get_node(&id).await?)))
}

/// `POST /nodes/{id}/undrain`: the node takes new work again.
pub(crate) async fn undrain(
    State(state): State<AppState>,
    Admin(token): Admin,
    Path(id): Path<String>,
) -> Result<Json<NodeView>, ApiError> {
    need(&token, Permission::Control)?;
    let id = node_id(&id)?;
    let store = store(&state)?;
    store.get_node(&id).await?;
    let cmd = BackendCommand::UndrainNode(UndrainNode {
        node_id: id.clone(),
    });
    let status = if tell_agent(&state, &id, &cmd).await? {
        NodeStatus::Online
    } else {
        NodeStatus::Offline
    };
    store.set_node_status(&id, status).await?;
    Ok(Json(view(store.get_node(&id).await?)))
}

/// `DELETE /nodes/{id}`: removes a node that runs nothing (409 otherwise) and drops its agent.
pub(crate) async fn remove(
    State(state): State<AppState>,
    Admin(token): Admin,
    Path(id): Path<String>,
) -> Result<Json<ActionResponse>, ApiError> {
    need(&token, Permission::Control)?;
    let id = node_id(&id)?;
    store(&state)?.delete_node(&id).await?;
    if let Some(fleet) = &state.fleet {
        fleet.drop_node(&id);
    }
    Ok(Json(ActionResponse::new(format!("node {id} removed"))))
}

pub(crate) fn view(n: Node) -> NodeView {
    NodeView {
        node_id: n.id,
        name: n.name,
        status: match n.status {
            NodeStatus::Online => NodeState::Online,
            NodeStatus::Offline => NodeState::Offline,
            NodeStatus::Maintenance => NodeState::Maintenance,
        },
        capacity: NodeCapacity {
            vcpus: n.capacity.vcpus,
            memory_mib: n.capacity.memory_mib,
            disk_gib: n.capacity.disk_gib,
            gpus: n.capacity.gpus,
        },
        last_heartbeat: n.last_heartbeat.map(|t| t.unix_seconds()),
        metrics: n.metrics.and_then(|m| serde_json::from_value(m).ok()),
        created_at: n.created_at.unix_seconds(),
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::NotFound { .. } => ApiError::NotFound(e.to_string()),
            StoreError::Conflict(_) => ApiError::Conflict(e.to_string()),
            StoreError::Invalid(_) => ApiError::BadRequest(e.to_string()),
            other => ApiError::Internal(Box::new(other)),
        }
    }
}
