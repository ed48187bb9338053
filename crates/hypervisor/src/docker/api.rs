//! The parts of the Docker Engine API this driver sends and reads, as serde types. Answers are
//! decoded leniently (missing fields take their default): engines of different versions add
//! and drop fields, and only the ones below matter.

use std::collections::{BTreeMap, HashMap};

use serde::{Deserialize, Serialize};

#[derive(Debug, Deserialize)]
pub(crate) struct ErrorBody {
    pub message: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Version {
    pub api_version: String,
    #[serde(rename = "MinAPIVersion", default)]
    pub min_api_version: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct Info {
    pub driver: String,
    pub driver_status: Option<Vec<Vec<String>>>,
}

/// One line of an image pull or import.
#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase", default)]
pub(crate) struct ProgressMessage {
    pub error: Option<String>,
    pub error_detail: Option<ErrorDetail>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct ErrorDetail {
    pub message: Option<String>,
}

// ---- create ----

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateContainer {
    pub image: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cmd: Option<Vec<String>>,
    pub env: Vec<String>,
    pub labels: BTreeMap<String, String>,
    pub exposed_ports: BTreeMap<String, Empty>,
    pub tty: bool,
    pub open_stdin: bool,
    pub stdin_once: bool,
    pub attach_stdin: bool,
    pub attach_stdout: bool,
    pub attach_stderr: bool,
    pub host_config: CreateHostConfig,
}

#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
pub(crate) struct Empty {}

#[derive(Debug, Serialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct CreateHostConfig {
    pub nano_cpus: i64,
    pub memory: i64,
    pub memory_swap: i64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub storage_opt: Option<BTreeMap<String, String>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub device_requests: Option<Vec<DeviceRequest>>,
    pub port_bindings: BTreeMap<String, Vec<PortBinding>>,
}

#[derive(Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct DeviceRequest {
    pub driver: String,
    #[serde(rename = "DeviceIDs")]
    pub device_ids: Vec<String>,
    pub capabilities: Vec<Vec<String>>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct PortBinding {
    pub host_ip: String,
    pub host_port: String,
}

#[derive(Debug, Deserialize)]
#[serde(rename_all = "PascalCase")]
pub(crate) struct Created {
    pub id: String,
    #[serde(default)]
    pub warnings: Option<Vec<String>>,
}

// ---- inspect and list ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct Inspect {
    pub id: String,
    pub name: String,
    pub state: InspectState,
    pub config: InspectConfig,
    pub host_config: InspectHostConfig,
    pub network_settings: NetworkSettings,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectState {
    pub status: String,
    pub running: bool,
    pub exit_code: i64,
    #[serde(rename = "OOMKilled")]
    pub oom_killed: bool,
    pub error: String,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectConfig {
    pub image: String,
    pub labels: Option<HashMap<String, String>>,
    pub tty: bool,
    pub open_stdin: bool,
}

pub(crate) type PortMap = HashMap<String, Option<Vec<PortBinding>>>;

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct InspectHostConfig {
    pub nano_cpus: i64,
    pub memory: i64,
    pub port_bindings: Option<PortMap>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct NetworkSettings {
    pub ports: Option<PortMap>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct ListEntry {
    pub id: String,
}

// ---- stop ----

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct Event {
    pub action: String,
    pub actor: EventActor,
}

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "PascalCase", default)]
pub(crate) struct EventActor {
    pub attributes: HashMap<String, String>,
}

// ---- stats ----

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct Stats {
    pub cpu_stats: CpuStats,
    pub precpu_stats: CpuStats,
    pub memory_stats: MemoryStats,
    pub blkio_stats: BlkioStats,
    pub networks: Option<HashMap<String, NetStats>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CpuStats {
    pub cpu_usage: CpuUsage,
    pub system_cpu_usage: Option<u64>,
    pub online_cpus: Option<u32>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct CpuUsage {
    pub total_usage: u64,
    pub percpu_usage: Option<Vec<u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct MemoryStats {
    pub usage: Option<u64>,
    pub limit: Option<u64>,
    pub stats: Option<HashMap<String, u64>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct BlkioStats {
    pub io_service_bytes_recursive: Option<Vec<BlkioEntry>>,
    pub io_serviced_recursive: Option<Vec<BlkioEntry>>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct BlkioEntry {
    pub op: String,
    pub value: u64,
}

#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct NetStats {
    pub rx_bytes: u64,
    pub rx_packets: u64,
    pub tx_bytes: u64,
    pub tx_packets: u64,
}
