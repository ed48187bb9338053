//! Container rentals and metering over REST: `POST /containers` (the scheduler places it and
//! waits for its node), `GET /containers`, `GET /containers/{id}`, `DELETE /containers/{id}`
//! (stopped on its node, then deleted), and `GET /usage`.
//!
//! A wallet sees and drives its own containers; an admin sees all and may create one for any
//! wallet (`owner`). Another owner's container is a 404, as if it did not exist.

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use serde_json::json;
use vmfleet_auth::{Permission, Role, Subject, VerifiedToken};
use vmfleet_core::{VmId, WalletAddress};
use vmfleet_store::{AuditTarget, NewVm, Resources, Store, VmRecord, WorkloadKind};
use vmfleet_wire::api::ActionResponse;
use vmfleet_wire::containers::{
    ContainerSpec, ContainerView, CreateContainerRequest, UsageQuery, UsageView,
};
use vmfleet_wire::fleet::ConnectionInfo;

use crate::AppState;
use crate::caller::Caller;
use crate::caller::{actor, is_admin, need};
use crate::error::ApiError;
use crate::extract::Body;
use crate::nodes::store;
use crate::scheduler::{Scheduler, SchedulerError};

/// The most CPU cores one container may ask for.
const MAX_CPU_CORES: f64 = 1024.0;

/// The scheduler, or 503 on a control plane without one.
pub(crate) fn scheduler(state: &AppState) -> Result<&Scheduler, ApiError> {
    state.scheduler.as_ref().ok_or_else(|| {
        ApiError::Unavailable("this control plane has no scheduler (no database or /fleet)".into())
    })
}

/// The wallet whose containers a non-admin caller sees.
fn wallet(token: &VerifiedToken) -> Result<WalletAddress, ApiError> {
    match &token.subject {
        Subject::Wallet(a) => Ok(*a),
        Subject::Operator(_) => Err(ApiError::Forbidden(
            "an operator token without the admin role owns no containers".into(),
        )),
    }
}

impl From<SchedulerError> for ApiError {
    fn from(e: SchedulerError) -> Self {
        match e {
            // Not enough room is the state of the fleet, not a failure of the server.
            SchedulerError::NoRoom(m) => ApiError::Conflict(m),
            SchedulerError::Failed(m) => ApiError::Unavailable(m),
            SchedulerError::Unreachable(m) => ApiError::Conflict(m),
            SchedulerError::Store(e) => e.into(),
        }
    }
}

fn view(vm: VmRecord) -> Result<ContainerView, ApiError> {
    let spec: ContainerSpec = serde_json::from_value(vm.spec).map_err(|e| {
        ApiError::Internal(format!("container {} has a bad spec: {e}", vm.id).into())
    })?;
    Ok(ContainerView {
        id: vm.id,
        name: vm.name,
        owner: vm.owner,
        node: vm.node,
        state: vm.state,
        reason: vm.state_reason,
        connection_info: vm
            .connection_info
            .and_then(|c| serde_json::from_value::<ConnectionInfo>(c).ok()),
        rental_id: vm.rental,
        spec,
    })
}

/// What the container takes of a node: whole vCPUs and MiB, rounded up.
fn resources(req: &CreateContainerRequest) -> Result<Resources, ApiError> {
    if !req.cpu_cores.is_finite() || req.cpu_cores <= 0.0 || req.cpu_cores > MAX_CPU_CORES {
        return Err(ApiError::BadRequest(format!(
            "cpuCores must be above 0 and at most {MAX_CPU_CORES}, not {}",
            req.cpu_cores
        )));
    }
    let ram = req.ram_limit.as_bytes();
    if ram < 6 << 20 {
        return Err(ApiError::BadRequest(
            "ramLimit must be at least 6m (what the container engine accepts)".into(),
        ));
    }
    // A public port 0 lets the node pick one; a container port 0 is no port.
    if req.proxy_port_mapping.contains_key(&0) {
        return Err(ApiError::BadRequest(
            "proxyPortMapping: container port 0 is not a port".into(),
        ));
    }
    if req.duration_seconds == Some(0) {
        return Err(ApiError::BadRequest(
            "durationSeconds must be at least 1 when given".into(),
        ));
    }
    // cpu_cores is in (0, 1024]: its ceiling is a small whole number.
    let vcpus = req.cpu_cores.ceil() as u32;
    Ok(Resources {
        vcpus,
        memory_mib: ram.div_ceil(1 << 20),
        disk_gib: req.disk_gb.unwrap_or(0),
        gpus: req.gpu_count,
    })
}

/// `POST /containers`: records the container, places it and waits for its node to start it.
/// 201 with the running container; 503 with the reason when no node has room or every node
/// tried failed (the container stays, in state `error`, for the owner to read or delete).
pub(crate) async fn create(
    State(state): State<AppState>,
    Caller(token): Caller,
    Body(req): Body<CreateContainerRequest>,
) -> Result<(StatusCode, Json<ContainerView>), ApiError> {
    need(&token, Permission::Control)?;
    let owner = match (&req.owner, &token.subject) {
        (Some(o), _) if is_admin(&token) => *o,
        (Some(o), Subject::Wallet(me)) if o == me => *o,
        (Some(_), _) => {
            return Err(ApiError::Forbidden(
                "only an admin may create a container for another owner".into(),
            ));
        }
        (None, Subject::Wallet(me)) => *me,
        (None, Subject::Operator(_)) => {
            return Err(ApiError::BadRequest(
                "an operator must say which wallet owns the container (owner)".into(),
            ));
        }
    };
    let wanted = resources(&req)?;
    let scheduler = scheduler(&state)?;
    let store = store(&state)?;
    let spec = ContainerSpec {
        image: req.image,
        cpu_cores: req.cpu_cores,
        ram_limit: req.ram_limit,
        gpu_count: req.gpu_count,
        disk_gb: req.disk_gb,
        env_vars: req.env_vars,
        proxy_port_mapping: req.proxy_port_mapping,
        duration_seconds: req.duration_seconds,
    };
    let spec = serde_json::to_value(&spec).map_err(|e| ApiError::Internal(Box::new(e)))?;
    store.upsert_user(&owner, Role::Standard).await?;
    let vm = store
        .insert_vm(&NewVm {
            id: VmId::generate(),
            kind: WorkloadKind::Container,
            owner,
            name: req.name,
            spec,
            resources: wanted,
        })
        .await?;
    store
        .append_audit(
            &actor(&token),
            "container.create",
            &AuditTarget::Vm(vm.id.clone()),
            &json!({ "name": vm.name.as_str(), "owner": owner.to_string() }),
        )
        .await?;
    match scheduler.place(&vm.id).await {
        Ok(placed) => Ok((StatusCode::CREATED, Json(view(placed)?))),
        Err(SchedulerError::NoRoom(m)) => Err(ApiError::Conflict(format!(
            "container {} could not be placed: {m}",
            vm.id
        ))),
        Err(SchedulerError::Failed(m)) => Err(ApiError::Unavailable(format!(
            "container {} could not be placed: {m}",
            vm.id
        ))),
        Err(e) => Err(e.into()),
    }
}

/// The container `id` if the caller may see it; 404 otherwise (another owner's included).
async fn visible(store: &Store, token: &VerifiedToken, id: &str) -> Result<VmRecord, ApiError> {
    let id = VmId::new(id).map_err(|e| ApiError::BadRequest(e.to_string()))?;
    let missing = || ApiError::NotFound(format!("container {id} was not found"));
    let vm = match store.get_vm(&id).await {
        Ok(vm) => vm,
        Err(vmfleet_store::StoreError::NotFound { .. }) => return Err(missing()),
        Err(e) => return Err(e.into()),
    };
    let mine = match &token.subject {
        Subject::Wallet(a) => *a == vm.owner,
        Subject::Operator(_) => false,
    };
    if vm.kind != WorkloadKind::Container || vm.deleted_at.is_some() || !(mine || is_admin(token)) {
        return Err(missing());
    }
    Ok(vm)
}

/// `GET /containers`: the caller's live containers (an admin's: everyone's), oldest first.
pub(crate) async fn list(
    State(state): State<AppState>,
    Caller(token): Caller,
) -> Result<Json<Vec<ContainerView>>, ApiError> {
    need(&token, Permission::Read)?;
    let owner = if is_admin(&token) {
        None
    } else {
        Some(wallet(&token)?)
    };
    let all = store(&state)?.list_vms(owner.as_ref()).await?;
    all.into_iter()
        .filter(|vm| vm.kind == WorkloadKind::Container)
        .map(view)
        .collect::<Result<Vec<_>, _>>()
        .map(Json)
}

/// `GET /containers/{id}`.
pub(crate) async fn get(
    State(state): State<AppState>,
    Caller(token): Caller,
    Path(id): Path<String>,
) -> Result<Json<ContainerView>, ApiError> {
    need(&token, Permission::Read)?;
    let vm = visible(store(&state)?, &token, &id).await?;
    Ok(Json(view(vm)?))
}

/// `DELETE /containers/{id}`: stops it on its node (waiting for the agent's
/// `instance_stopped`), ends its rental and deletes it. 409 when its node cannot be reached.
pub(crate) async fn remove(
    State(state): State<AppState>,
    Caller(token): Caller,
    Path(id): Path<String>,
) -> Result<Json<ActionResponse>, ApiError> {
    need(&token, Permission::Control)?;
    let store = store(&state)?;
    let vm = visible(store, &token, &id).await?;
    scheduler(&state)?.remove(&vm.id).await?;
    store
        .append_audit(
            &actor(&token),
            "container.delete",
            &AuditTarget::Vm(vm.id.clone()),
            &json!({}),
        )
        .await?;
    Ok(Json(ActionResponse::new(format!(
        "container {} deleted",
        vm.id
    ))))
}

/// `GET /usage`: what the caller's ended rentals consumed; an admin may ask for any
/// `?owner=` or `?node=` (one of them; an admin without either gets its own wallet's, if any).
pub(crate) async fn usage(
    State(state): State<AppState>,
    Caller(token): Caller,
    query: Result<Query<UsageQuery>, QueryRejection>,
) -> Result<Json<UsageView>, ApiError> {
    need(&token, Permission::Read)?;
    let Query(q) = query.map_err(|e| ApiError::BadRequest(e.body_text()))?;
    let store = store(&state)?;
    if q.owner.is_some() && q.node.is_some() {
        return Err(ApiError::BadRequest(
            "ask for the usage of an owner or of a node, not both".into(),
        ));
    }
    let own = match &token.subject {
        Subject::Wallet(a) => Some(*a),
        Subject::Operator(_) => None,
    };
    let foreign = match (&q.owner, &q.node) {
        (Some(o), _) => Some(o) != own.as_ref(),
        (_, Some(_)) => true,
        _ => false,
    };
    if foreign && !is_admin(&token) {
        return Err(ApiError::Forbidden(
            "only an admin may read another owner's or a node's usage".into(),
        ));
    }
    let (owner, node, usage) = match (q.owner.or(own), q.node) {
        (_, Some(node)) => {
            store.get_node(&node).await?;
            let u = store.usage_by_node(&node).await?;
            (None, Some(node), u)
        }
        (Some(owner), None) => (Some(owner), None, store.usage_by_owner(&owner).await?),
        (None, None) => {
            return Err(ApiError::BadRequest(
                "an operator must say whose usage it wants (?owner= or ?node=)".into(),
            ));
        }
    };
    Ok(Json(UsageView {
        owner,
        node,
        vcpu_seconds: usage.vcpu_seconds(),
        memory_gib_seconds: usage.memory_gib_seconds(),
        gpu_seconds: usage.gpu_seconds(),
        records: usage.records,
    }))
}
