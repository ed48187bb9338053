//! vmfleet's container rentals over REST (beyond seed 002, which covers VMs): a buyer asks for
//! a container, the scheduler places it on a node and that node's agent runs it (seed 001
//! `start_instance`); usage is metered per rental. Fields are camelCase, as in seed 001.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use vmfleet_core::{ByteSize, ImageRef, NodeId, RentalId, VmId, VmName, VmState, WalletAddress};

use crate::fleet::ConnectionInfo;

/// `POST /containers`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct CreateContainerRequest {
    /// Unique among the owner's containers and VMs.
    pub name: VmName,
    pub image: ImageRef,
    /// CPU cores, possibly fractional; the scheduler reserves whole vCPUs (rounded up).
    pub cpu_cores: f64,
    pub ram_limit: ByteSize,
    #[serde(default)]
    pub gpu_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u64>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Container port -> public port on the node's proxy.
    #[serde(default)]
    pub proxy_port_mapping: BTreeMap<u16, u16>,
    /// How long the rental lasts; the node stops it then (reason `timeout`). Unlimited if absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
    /// Whose container it is: only an admin may name an owner; anyone else owns what they
    /// create.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<WalletAddress>,
}

/// What the control plane keeps of a container's request, and sends in `start_instance`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerSpec {
    pub image: ImageRef,
    pub cpu_cores: f64,
    pub ram_limit: ByteSize,
    #[serde(default)]
    pub gpu_count: u32,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_gb: Option<u64>,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    #[serde(default)]
    pub proxy_port_mapping: BTreeMap<u16, u16>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub duration_seconds: Option<u64>,
}

/// A container as `POST /containers`, `GET /containers` and `GET /containers/{id}` show it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ContainerView {
    pub id: VmId,
    pub name: VmName,
    pub owner: WalletAddress,
    /// Where it is placed; `null` while unplaced (or after every placement failed).
    pub node: Option<NodeId>,
    pub state: VmState,
    /// Why it is in its state, when that needs saying (an `error`'s cause, an `unknown`'s
    /// lost node).
    pub reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub connection_info: Option<ConnectionInfo>,
    /// The rental of its current (or latest) run.
    pub rental_id: Option<RentalId>,
    pub spec: ContainerSpec,
}

/// `GET /usage` query: an admin may ask for any owner's or any node's usage.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct UsageQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<WalletAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// `GET /usage`: what the ended rentals of an owner (or on a node) consumed, in billing units.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UsageView {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<WalletAddress>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    pub vcpu_seconds: f64,
    pub memory_gib_seconds: f64,
    pub gpu_seconds: f64,
    /// How many usage records (ended rentals) were summed.
    pub records: u64,
}
