//! The values the store hands out and takes in. Every id is a typed id of `vmfleet-core`;
//! instants are [`Timestamp`]s (stored as unix milliseconds, so they come back in the
//! canonical RFC 3339 form whatever text they were parsed from).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use vmfleet_auth::{Permission, Role};
use vmfleet_core::{
    ContainerId, NodeId, RentalId, Timestamp, VmId, VmName, VmResources, VmState, WalletAddress,
};

use crate::error::StoreError;

/// Compute resources: what a node offers, or what a VM or container takes of it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Resources {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub gpus: u32,
}

impl Resources {
    /// Whether `self` fits into `free`, in every dimension.
    pub fn fits_in(&self, free: &Resources) -> bool {
        self.vcpus <= free.vcpus
            && self.memory_mib <= free.memory_mib
            && self.disk_gib <= free.disk_gib
            && self.gpus <= free.gpus
    }

    /// `self - used` per dimension, zero where `used` exceeds `self` (a node whose capacity
    /// shrank below what it runs).
    pub fn saturating_sub(&self, used: &Resources) -> Resources {
        Resources {
            vcpus: self.vcpus.saturating_sub(used.vcpus),
            memory_mib: self.memory_mib.saturating_sub(used.memory_mib),
            disk_gib: self.disk_gib.saturating_sub(used.disk_gib),
            gpus: self.gpus.saturating_sub(used.gpus),
        }
    }
}

impl From<VmResources> for Resources {
    fn from(r: VmResources) -> Self {
        Resources {
            vcpus: r.vcpu_count,
            memory_mib: r.mem_size_mib,
            disk_gib: r.disk_size,
            gpus: 0,
        }
    }
}

/// A user: a wallet that signed in, and what it may do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub address: WalletAddress,
    pub role: Role,
    pub created_at: Timestamp,
}

/// Whether a node takes work, as the control plane sees it (CONTRACT: `GET /nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NodeStatus {
    /// Its agent is connected; new work may be placed on it.
    Online,
    /// Its agent is not connected.
    Offline,
    /// Drained by an operator: it keeps what it runs but takes nothing new.
    Maintenance,
}

impl NodeStatus {
    /// The stored and wire form: `ONLINE`, `OFFLINE`, `MAINTENANCE`.
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Online => "ONLINE",
            NodeStatus::Offline => "OFFLINE",
            NodeStatus::Maintenance => "MAINTENANCE",
        }
    }
}

impl fmt::Display for NodeStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for NodeStatus {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "ONLINE" => Ok(NodeStatus::Online),
            "OFFLINE" => Ok(NodeStatus::Offline),
            "MAINTENANCE" => Ok(NodeStatus::Maintenance),
            _ => Err(StoreError::Corrupt(format!("unknown node status {s:?}"))),
        }
    }
}

/// A compute node. Its host key is stored only as a hash and never handed out.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    pub id: NodeId,
    pub name: String,
    pub status: NodeStatus,
    /// What the node offers in all; zero until its agent reports it (or an operator sets it).
    pub capacity: Resources,
    pub last_heartbeat: Option<Timestamp>,
    /// The metrics of the latest heartbeat, as the agent sent them (seed 001 `metrics`).
    pub metrics: Option<serde_json::Value>,
    pub created_at: Timestamp,
}

/// Whether a workload is a VM or a container.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum WorkloadKind {
    Vm,
    Container,
}

impl WorkloadKind {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkloadKind::Vm => "vm",
            WorkloadKind::Container => "container",
        }
    }
}

impl FromStr for WorkloadKind {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        match s {
            "vm" => Ok(WorkloadKind::Vm),
            "container" => Ok(WorkloadKind::Container),
            _ => Err(StoreError::Corrupt(format!("unknown workload kind {s:?}"))),
        }
    }
}

/// A VM or container to record, before it is placed on a node.
#[derive(Debug, Clone, PartialEq)]
pub struct NewVm {
    pub id: VmId,
    pub kind: WorkloadKind,
    pub owner: WalletAddress,
    /// Unique among the owner's workloads that are not deleted.
    pub name: VmName,
    /// What to run, as the API received it (a VM's `vm_config`, a container's image and
    /// limits); the store keeps it verbatim.
    pub spec: serde_json::Value,
    /// What it takes of a node; what the scheduler reserves.
    pub resources: Resources,
}

/// A VM or container as stored.
#[derive(Debug, Clone, PartialEq)]
pub struct VmRecord {
    pub id: VmId,
    pub kind: WorkloadKind,
    pub owner: WalletAddress,
    pub name: VmName,
    /// Where it is placed; `None` until the scheduler reserved room for it.
    pub node: Option<NodeId>,
    pub spec: serde_json::Value,
    pub resources: Resources,
    pub state: VmState,
    /// Why it is in its state, when that needs saying (an `error`'s cause).
    pub state_reason: Option<String>,
    pub ip: Option<IpAddr>,
    /// The rental of its current (or latest) run on its node: set by the scheduler before it
    /// dispatches the workload, so the agent's events find it ([`Store::vm_by_rental`]).
    ///
    /// [`Store::vm_by_rental`]: crate::Store::vm_by_rental
    pub rental: Option<RentalId>,
    /// The container the agent runs it in, as `instance_started` reported it.
    pub container: Option<ContainerId>,
    /// How to reach it (seed 001 `connectionInfo`), as `instance_started` reported it.
    pub connection_info: Option<serde_json::Value>,
    /// When its node went offline, while its state is `unknown`.
    pub unknown_since: Option<Timestamp>,
    pub created_at: Timestamp,
    pub updated_at: Timestamp,
    pub deleted_at: Option<Timestamp>,
    /// Its migration ticket, while it has one (expired ones included: see
    /// [`MigrationTicket::expires_at`]).
    pub migration: Option<MigrationTicket>,
    /// Devices and shares its node reports it has, in the order they were added.
    pub devices: Vec<vmfleet_core::VmDevice>,
}

/// Room reserved on another node for a VM that is to move there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MigrationTicket {
    pub id: vmfleet_core::MigrationId,
    pub node: NodeId,
    /// After this the room is free again and the ticket is void.
    pub expires_at: Timestamp,
}

impl MigrationTicket {
    pub fn is_live(&self) -> bool {
        self.expires_at.unix_millis() > Timestamp::now().unix_millis()
    }
}

/// A period during which a VM or container runs on a node, at the size it had when it started.
#[derive(Debug, Clone, PartialEq)]
pub struct Rental {
    pub id: RentalId,
    pub vm: VmId,
    pub owner: WalletAddress,
    pub node: NodeId,
    pub resources: Resources,
    pub started_at: Timestamp,
    pub ended_at: Option<Timestamp>,
}

/// Consumption, in integer resource-milliseconds (exact); the `*_seconds` methods give the
/// billing units.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Usage {
    /// vCPUs × milliseconds.
    pub vcpu_millis: u64,
    /// MiB × milliseconds.
    pub memory_mib_millis: u64,
    /// GPUs × milliseconds.
    pub gpu_millis: u64,
    /// How many usage records were summed.
    pub records: u64,
}

impl Usage {
    pub fn vcpu_seconds(&self) -> f64 {
        self.vcpu_millis as f64 / 1000.0
    }

    pub fn memory_gib_seconds(&self) -> f64 {
        self.memory_mib_millis as f64 / 1024.0 / 1000.0
    }

    pub fn gpu_seconds(&self) -> f64 {
        self.gpu_millis as f64 / 1000.0
    }
}

/// What one ended rental consumed.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRecord {
    pub rental: RentalId,
    pub vm: VmId,
    pub owner: WalletAddress,
    pub node: NodeId,
    pub period_start: Timestamp,
    pub period_end: Timestamp,
    pub usage: Usage,
}

/// Who did something recorded in the audit log.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Actor {
    /// A signed-in wallet.
    User(WalletAddress),
    /// An operator of the installation (`vmfleet up`'s admin token), by name.
    Operator(String),
    /// A host agent.
    Node(NodeId),
    /// The control plane itself (the scheduler, a timeout, a lost node).
    System,
}

/// What an audit entry is about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum AuditTarget {
    Vm(VmId),
    Node(NodeId),
    User(WalletAddress),
    Rental(RentalId),
    ApiToken(ApiTokenId),
    /// The installation as a whole.
    System,
}

/// One line of the append-only audit log.
#[derive(Debug, Clone, PartialEq)]
pub struct AuditEntry {
    /// Increasing in the order entries were appended.
    pub id: i64,
    pub at: Timestamp,
    pub actor: Actor,
    /// What was done, e.g. `vm.boot` or `node.status`.
    pub action: String,
    pub target: AuditTarget,
    /// Whatever else is worth keeping (the request, the old and new state).
    pub detail: serde_json::Value,
}

pub use vmfleet_core::ApiTokenId;

/// A long-lived API token. The secret itself is never stored, only its [`SecretHash`].
///
/// [`SecretHash`]: vmfleet_auth::SecretHash
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiToken {
    pub id: ApiTokenId,
    pub owner: WalletAddress,
    pub name: String,
    /// What the token lets its holder do (at most what its owner may), sorted, at least one.
    pub permissions: Vec<Permission>,
    pub created_at: Timestamp,
    /// When it stops authenticating; `None`: never (until revoked).
    pub expires_at: Option<Timestamp>,
    pub revoked_at: Option<Timestamp>,
}

/// An API token as authentication sees it: the token (revoked or not) and its owner's current
/// role.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ApiTokenCredential {
    pub token: ApiToken,
    pub role: Role,
}

// ---- Text forms of the enums above, as stored. ----

pub(crate) fn role_str(role: Role) -> &'static str {
    match role {
        Role::Standard => "standard",
        Role::Privileged => "privileged",
        Role::Admin => "admin",
    }
}

pub(crate) fn parse_role(s: &str) -> Result<Role, StoreError> {
    match s {
        "standard" => Ok(Role::Standard),
        "privileged" => Ok(Role::Privileged),
        "admin" => Ok(Role::Admin),
        _ => Err(StoreError::Corrupt(format!("unknown role {s:?}"))),
    }
}

/// Permissions as stored: their names, comma-separated.
pub(crate) fn permissions_str(perms: &[Permission]) -> String {
    perms
        .iter()
        .map(|p| match p {
            Permission::Read => "read",
            Permission::Control => "control",
            Permission::Console => "console",
        })
        .collect::<Vec<_>>()
        .join(",")
}

pub(crate) fn parse_permissions(s: &str) -> Result<Vec<Permission>, StoreError> {
    s.split(',')
        .map(|p| match p {
            "read" => Ok(Permission::Read),
            "control" => Ok(Permission::Control),
            "console" => Ok(Permission::Console),
            _ => Err(StoreError::Corrupt(format!("unknown permission {p:?}"))),
        })
        .collect()
}

pub(crate) fn parse_state(s: &str) -> Result<VmState, StoreError> {
    VmState::ALL
        .into_iter()
        .find(|st| st.as_str() == s)
        .ok_or_else(|| StoreError::Corrupt(format!("unknown VM state {s:?}")))
}

impl fmt::Display for Actor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Actor::User(a) => write!(f, "user:{a}"),
            Actor::Operator(name) => write!(f, "operator:{name}"),
            Actor::Node(id) => write!(f, "node:{id}"),
            Actor::System => f.write_str("system"),
        }
    }
}

impl FromStr for Actor {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("unknown audit actor {s:?}"));
        if s == "system" {
            return Ok(Actor::System);
        }
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "user" => WalletAddress::parse(rest)
                .map(Actor::User)
                .map_err(|_| bad()),
            "operator" => Ok(Actor::Operator(rest.to_owned())),
            "node" => NodeId::new(rest).map(Actor::Node).map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

impl fmt::Display for AuditTarget {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            AuditTarget::Vm(id) => write!(f, "vm:{id}"),
            AuditTarget::Node(id) => write!(f, "node:{id}"),
            AuditTarget::User(a) => write!(f, "user:{a}"),
            AuditTarget::Rental(id) => write!(f, "rental:{id}"),
            AuditTarget::ApiToken(id) => write!(f, "token:{id}"),
            AuditTarget::System => f.write_str("system"),
        }
    }
}

impl FromStr for AuditTarget {
    type Err = StoreError;
    fn from_str(s: &str) -> Result<Self, StoreError> {
        let bad = || StoreError::Corrupt(format!("unknown audit target {s:?}"));
        if s == "system" {
            return Ok(AuditTarget::System);
        }
        let (kind, rest) = s.split_once(':').ok_or_else(bad)?;
        match kind {
            "vm" => VmId::new(rest).map(AuditTarget::Vm).map_err(|_| bad()),
            "node" => NodeId::new(rest).map(AuditTarget::Node).map_err(|_| bad()),
            "user" => WalletAddress::parse(rest)
                .map(AuditTarget::User)
                .map_err(|_| bad()),
            "rental" => RentalId::new(rest)
                .map(AuditTarget::Rental)
                .map_err(|_| bad()),
            "token" => rest
                .parse()
                .map(|n| AuditTarget::ApiToken(ApiTokenId(n)))
                .map_err(|_| bad()),
            _ => Err(bad()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn actor_and_target_text_round_trips() {
        let addr = WalletAddress::parse("0x1234567890abcdef1234567890abcdef12345678").unwrap();
        for a in [
            Actor::User(addr),
            Actor::Operator("admin".into()),
            Actor::Node(NodeId::new("n-1").unwrap()),
            Actor::System,
        ] {
            assert_eq!(a.to_string().parse::<Actor>().unwrap(), a);
        }
        for t in [
            AuditTarget::Vm(VmId::new("vm-1").unwrap()),
            AuditTarget::Node(NodeId::new("n-1").unwrap()),
            AuditTarget::User(addr),
            AuditTarget::Rental(RentalId::new("r-1").unwrap()),
            AuditTarget::ApiToken(ApiTokenId(7)),
            AuditTarget::System,
        ] {
            assert_eq!(t.to_string().parse::<AuditTarget>().unwrap(), t);
        }
        assert!("vm:../x".parse::<AuditTarget>().is_err());
        assert!("nobody".parse::<Actor>().is_err());
    }

    #[test]
    fn resources_fit() {
        let cap = Resources {
            vcpus: 4,
            memory_mib: 4096,
            disk_gib: 100,
            gpus: 2,
        };
        let half = Resources {
            vcpus: 2,
            memory_mib: 2048,
            disk_gib: 50,
            gpus: 1,
        };
        assert!(half.fits_in(&cap));
        let left = cap.saturating_sub(&half);
        assert!(half.fits_in(&left));
        assert!(!half.fits_in(&left.saturating_sub(&half)));
        for st in VmState::ALL {
            assert_eq!(parse_state(st.as_str()).unwrap(), st);
        }
    }
}
