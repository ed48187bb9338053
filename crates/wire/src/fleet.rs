//! Seed 001: the Socket.IO namespace `/fleet` between host agents and the control plane.
//!
//! A Socket.IO event is a name and a JSON payload. [`AgentEvent`] closes the set the agent
//! emits, [`BackendCommand`] the set the control plane emits; both decode from
//! `(name, payload)` with a typed error. Fields are camelCase, as in the document.

use std::collections::BTreeMap;

use std::marker::PhantomData;

use serde::de::{DeserializeOwned, DeserializeSeed, IgnoredAny, SeqAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use serde_json::value::RawValue;
use vmfleet_core::{ByteSize, ContainerId, GpuIndex, ImageRef, NodeId, RentalId};

use crate::error::{DecodeError, classify, from_de, from_value};
pub use crate::fleet_vm::{
    Base64, ConsoleData, ConsoleRef, CreateVmSpec, VmCommand, VmCommandReply, VmErrorCode,
    VmMetrics, VmOperation, VmReport,
};
pub use crate::migration::{
    ExtraDisk, FileChunk, MAX_CHUNK_BYTES, MAX_EXTRA_DISKS, ManifestError, ManifestFile,
    MigrationManifest, Sha256, VmFile,
};

/// The namespace agents connect to.
pub const NAMESPACE: &str = "/fleet";

/// `heartbeat`: the agent's health and host metrics, every 5 s.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Heartbeat {
    pub node_id: NodeId,
    pub status: NodeStatus,
    pub metrics: HostMetrics,
    /// vmfleet's addition: what the node may allocate in all (its overcommit applied).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

/// What a node may allocate to rentals and VMs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Capacity {
    pub vcpus: u32,
    pub memory_mb: u64,
    pub disk_gb: u64,
    pub gpus: u32,
}

/// `heartbeat` as the control plane reads it: checked as a [`Heartbeat`] is, its metrics kept
/// as the JSON text the agent sent, to be stored as they are rather than written out again.
#[derive(Debug, Clone, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct HeartbeatReport {
    pub node_id: NodeId,
    pub status: NodeStatus,
    /// [`HostMetrics`] as JSON text, checked to be valid ones.
    pub metrics: Box<RawValue>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub capacity: Option<Capacity>,
}

impl<'de> Deserialize<'de> for HeartbeatReport {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(rename_all = "camelCase", deny_unknown_fields)]
        struct Report {
            node_id: NodeId,
            status: NodeStatus,
            metrics: Box<RawValue>,
            capacity: Option<Capacity>,
        }
        let r = Report::deserialize(d)?;
        serde_json::from_str::<HostMetrics>(r.metrics.get())
            .map_err(|e| serde::de::Error::custom(format_args!("invalid metrics: {e}")))?;
        Ok(HeartbeatReport {
            node_id: r.node_id,
            status: r.status,
            metrics: r.metrics,
            capacity: r.capacity,
        })
    }
}

/// What the node offers, as it reports it in heartbeats.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeStatus {
    /// Available for new rentals.
    Online,
    /// Running a rental.
    Busy,
    /// Draining or under maintenance: no new rentals.
    Maintenance,
}

/// Host metrics, read from the host (never invented). GPU arrays are per GPU, in index order,
/// and empty on a host without GPUs.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct HostMetrics {
    /// Degrees Celsius; `null` where the host exposes no sensor.
    pub cpu_temp: Option<f64>,
    pub cpu_usage_percent: f64,
    #[serde(default)]
    pub gpu_temp: Vec<f64>,
    #[serde(default)]
    pub gpu_utilization: Vec<f64>,
    #[serde(default)]
    pub gpu_memory_used_mb: Vec<u64>,
    pub ram_usage_mb: u64,
    pub ram_total_mb: u64,
    pub disk_usage_gb: f64,
    pub disk_total_gb: f64,
    pub network_rx_mbps: f64,
    pub network_tx_mbps: f64,
}

/// `instance_started`: a container (or VM) of a rental is up.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStarted {
    pub rental_id: RentalId,
    pub container_id: ContainerId,
    pub connection_info: ConnectionInfo,
}

/// How a renter reaches the instance: the proxy's host and ports.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ConnectionInfo {
    pub ssh_host: String,
    pub ssh_port: u16,
    /// Container port -> public port.
    #[serde(default)]
    pub additional_ports: BTreeMap<u16, u16>,
}

/// `instance_stopped`: a container (or VM) of a rental is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct InstanceStopped {
    pub rental_id: RentalId,
    pub container_id: ContainerId,
    pub reason: StopReason,
    pub error_message: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StopReason {
    /// Stopped by user or platform request.
    Requested,
    /// Stopped by an error.
    Error,
    /// The rental's time ran out.
    Timeout,
}

/// `start_instance`: run a container for a rental.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartInstance {
    pub rental_id: RentalId,
    pub image: ImageRef,
    pub resource_limits: ResourceLimits,
    #[serde(default)]
    pub env_vars: BTreeMap<String, String>,
    /// Container port -> public port on the node's proxy.
    #[serde(default)]
    pub proxy_port_mapping: BTreeMap<u16, u16>,
    /// vmfleet's addition: when the rental ends (unix seconds). The agent itself stops the
    /// container then and reports `instance_stopped` with reason `timeout`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ResourceLimits {
    #[serde(default)]
    pub gpu_indices: Vec<GpuIndex>,
    /// CPU cores, possibly fractional (Docker NanoCPUs).
    pub cpu_cores: f64,
    pub ram_limit: ByteSize,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub disk_limit: Option<ByteSize>,
}

/// `stop_instance`: stop a rental's container.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StopInstance {
    pub rental_id: RentalId,
    pub container_id: ContainerId,
    #[serde(default = "yes")]
    pub graceful: bool,
    #[serde(default = "default_stop_timeout")]
    pub timeout_seconds: u32,
}

fn yes() -> bool {
    true
}

fn default_stop_timeout() -> u32 {
    30
}

/// `drain_node`: take no new work, let current rentals finish, report `maintenance`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct DrainNode {
    pub node_id: NodeId,
    pub reason: String,
}

/// `node_info` (vmfleet's addition to seed 001): sent by the control plane right after a node
/// connects, so the agent learns the id its host key belongs to and puts it in heartbeats.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct NodeInfo {
    pub node_id: NodeId,
    pub name: String,
}

/// The event name of [`NodeInfo`].
pub const NODE_INFO: &str = "node_info";

/// `undrain_node` (vmfleet's addition to seed 001): the node takes new rentals again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct UndrainNode {
    pub node_id: NodeId,
}

/// The acknowledgement of an event: `{ "success": true }`, or `false` with a message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Ack {
    pub success: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

impl Ack {
    pub fn ok() -> Self {
        Ack {
            success: true,
            message: None,
        }
    }

    pub fn refused(message: impl Into<String>) -> Self {
        Ack {
            success: false,
            message: Some(message.into()),
        }
    }
}

/// An event the agent emits. The control plane reads heartbeats as [`HeartbeatReport`]s.
#[derive(Debug, Clone, PartialEq)]
pub enum AgentEvent<H = Heartbeat> {
    Heartbeat(H),
    InstanceStarted(InstanceStarted),
    InstanceStopped(InstanceStopped),
    /// vmfleet's addition: a VM's state, whenever it changes and on every reconnection.
    VmState(VmReport),
    /// vmfleet's addition: serial console bytes of an attached VM.
    ConsoleOutput(ConsoleData),
}

/// A command the control plane emits.
#[derive(Debug, Clone, PartialEq)]
pub enum BackendCommand {
    StartInstance(StartInstance),
    StopInstance(StopInstance),
    DrainNode(DrainNode),
    /// vmfleet's addition: end a drain.
    UndrainNode(UndrainNode),
    /// vmfleet's addition: one VM operation of the REST API.
    VmCommand(VmCommand),
    /// vmfleet's addition: stream a VM's console (`console_output`) until detached.
    ConsoleAttach(ConsoleRef),
    ConsoleDetach(ConsoleRef),
    /// vmfleet's addition: bytes typed into a VM's console.
    ConsoleInput(ConsoleData),
}

/// The names of [`AgentEvent`]s.
const AGENT_EVENTS: [&str; 5] = [
    "heartbeat",
    "instance_started",
    "instance_stopped",
    "vm_state",
    "console_output",
];

impl AgentEvent {
    pub const NAMES: [&'static str; 5] = AGENT_EVENTS;
}

impl<H> AgentEvent<H> {
    pub fn name(&self) -> &'static str {
        match self {
            AgentEvent::Heartbeat(_) => "heartbeat",
            AgentEvent::InstanceStarted(_) => "instance_started",
            AgentEvent::InstanceStopped(_) => "instance_stopped",
            AgentEvent::VmState(_) => "vm_state",
            AgentEvent::ConsoleOutput(_) => "console_output",
        }
    }
}

impl<H: Serialize> AgentEvent<H> {
    pub fn payload(&self) -> Value {
        let v = match self {
            AgentEvent::Heartbeat(p) => serde_json::to_value(p),
            AgentEvent::InstanceStarted(p) => serde_json::to_value(p),
            AgentEvent::InstanceStopped(p) => serde_json::to_value(p),
            AgentEvent::VmState(p) => serde_json::to_value(p),
            AgentEvent::ConsoleOutput(p) => serde_json::to_value(p),
        };
        // Serializing these types cannot fail: every map key is a string or an integer.
        v.unwrap_or(Value::Null)
    }
}

impl<H: DeserializeOwned> AgentEvent<H> {
    pub fn decode(name: &str, payload: &Value) -> Result<Self, DecodeError> {
        Self::decode_from(name, payload)
    }

    /// As [`AgentEvent::decode`], from the payload's JSON text (no [`Value`] in between).
    pub fn decode_json(name: &str, payload: &str) -> Result<Self, DecodeError> {
        Self::decode_from(name, &mut serde_json::Deserializer::from_str(payload))
    }

    /// Decodes an event from its Socket.IO arguments, `[name, payload]` as JSON text, in one
    /// pass: no [`Value`], nor the payload's text, in between. Arguments after the payload
    /// are ignored.
    pub fn decode_args(args: &str) -> Result<Self, DecodeError> {
        let mut failed = None;
        let mut de = serde_json::Deserializer::from_str(args);
        let seed = Args {
            failed: &mut failed,
            event: PhantomData::<H>,
        };
        match seed
            .deserialize(&mut de)
            .and_then(|ev| de.end().map(|()| ev))
        {
            Ok(ev) => Ok(ev),
            Err(source) => Err(match failed {
                Some(Failed::Name(e)) => e,
                Some(Failed::Payload(kind)) => DecodeError::Invalid { kind, source },
                None if source.is_syntax() || source.is_eof() => DecodeError::Malformed(source),
                None => DecodeError::NotAnEvent,
            }),
        }
    }

    fn decode_from<'de, D>(name: &str, d: D) -> Result<Self, DecodeError>
    where
        D: serde::Deserializer<'de, Error = serde_json::Error>,
    {
        match classify(name, &AGENT_EVENTS, &BackendCommand::NAMES)? {
            kind @ "heartbeat" => from_de(kind, d).map(AgentEvent::Heartbeat),
            kind @ "instance_started" => from_de(kind, d).map(AgentEvent::InstanceStarted),
            kind @ "instance_stopped" => from_de(kind, d).map(AgentEvent::InstanceStopped),
            kind @ "vm_state" => from_de(kind, d).map(AgentEvent::VmState),
            kind => from_de(kind, d).map(AgentEvent::ConsoleOutput),
        }
    }
}

/// Which part of an event's arguments did not decode.
enum Failed {
    /// The name: unknown, or the other side's.
    Name(DecodeError),
    /// The payload of this event.
    Payload(&'static str),
}

/// Reads `[name, payload, ...]` into an [`AgentEvent`], noting in `failed` what went wrong.
struct Args<'a, H> {
    failed: &'a mut Option<Failed>,
    event: PhantomData<H>,
}

impl<'de, H: Deserialize<'de>> DeserializeSeed<'de> for Args<'_, H> {
    type Value = AgentEvent<H>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_seq(self)
    }
}

impl<'de, H: Deserialize<'de>> Visitor<'de> for Args<'_, H> {
    type Value = AgentEvent<H>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event: [name, payload]")
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Self::Value, A::Error> {
        use serde::de::Error;
        let kind = match seq.next_element_seed(EventName) {
            Ok(Some(Ok(kind))) => kind,
            Ok(Some(Err(e))) => {
                *self.failed = Some(Failed::Name(e));
                return Err(A::Error::custom("not an agent event"));
            }
            Ok(None) => return Err(A::Error::invalid_length(0, &self)),
            Err(e) => return Err(e),
        };
        *self.failed = Some(Failed::Payload(kind));
        let ev = match kind {
            "heartbeat" => seq.next_element()?.map(AgentEvent::Heartbeat),
            "instance_started" => seq.next_element()?.map(AgentEvent::InstanceStarted),
            "instance_stopped" => seq.next_element()?.map(AgentEvent::InstanceStopped),
            "vm_state" => seq.next_element()?.map(AgentEvent::VmState),
            _ => seq.next_element()?.map(AgentEvent::ConsoleOutput),
        };
        let ev = ev.ok_or_else(|| A::Error::invalid_length(1, &"a payload after the name"))?;
        *self.failed = None;
        while seq.next_element::<IgnoredAny>()?.is_some() {}
        Ok(ev)
    }
}

/// An event's name, read without a copy: one of [`AgentEvent`]'s, or why not.
struct EventName;

impl<'de> DeserializeSeed<'de> for EventName {
    type Value = Result<&'static str, DecodeError>;

    fn deserialize<D: serde::Deserializer<'de>>(self, d: D) -> Result<Self::Value, D::Error> {
        d.deserialize_str(self)
    }
}

impl Visitor<'_> for EventName {
    type Value = Result<&'static str, DecodeError>;

    fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
        f.write_str("an event's name")
    }

    fn visit_str<E: serde::de::Error>(self, name: &str) -> Result<Self::Value, E> {
        Ok(classify(name, &AGENT_EVENTS, &BackendCommand::NAMES))
    }
}

impl BackendCommand {
    pub const NAMES: [&'static str; 8] = [
        "start_instance",
        "stop_instance",
        "drain_node",
        "undrain_node",
        "vm_command",
        "console_attach",
        "console_detach",
        "console_input",
    ];

    pub fn name(&self) -> &'static str {
        match self {
            BackendCommand::StartInstance(_) => "start_instance",
            BackendCommand::StopInstance(_) => "stop_instance",
            BackendCommand::DrainNode(_) => "drain_node",
            BackendCommand::UndrainNode(_) => "undrain_node",
            BackendCommand::VmCommand(_) => "vm_command",
            BackendCommand::ConsoleAttach(_) => "console_attach",
            BackendCommand::ConsoleDetach(_) => "console_detach",
            BackendCommand::ConsoleInput(_) => "console_input",
        }
    }

    pub fn payload(&self) -> Value {
        let v = match self {
            BackendCommand::StartInstance(p) => serde_json::to_value(p),
            BackendCommand::StopInstance(p) => serde_json::to_value(p),
            BackendCommand::DrainNode(p) => serde_json::to_value(p),
            BackendCommand::UndrainNode(p) => serde_json::to_value(p),
            BackendCommand::VmCommand(p) => serde_json::to_value(p),
            BackendCommand::ConsoleAttach(p) | BackendCommand::ConsoleDetach(p) => {
                serde_json::to_value(p)
            }
            BackendCommand::ConsoleInput(p) => serde_json::to_value(p),
        };
        // Serializing these types cannot fail: every map key is a string or an integer.
        v.unwrap_or(Value::Null)
    }

    pub fn decode(name: &str, payload: &Value) -> Result<Self, DecodeError> {
        match classify(name, &Self::NAMES, &AgentEvent::NAMES)? {
            kind @ "start_instance" => from_value(kind, payload).map(BackendCommand::StartInstance),
            kind @ "stop_instance" => from_value(kind, payload).map(BackendCommand::StopInstance),
            kind @ "drain_node" => from_value(kind, payload).map(BackendCommand::DrainNode),
            kind @ "undrain_node" => from_value(kind, payload).map(BackendCommand::UndrainNode),
            kind @ "vm_command" => from_value(kind, payload).map(BackendCommand::VmCommand),
            kind @ "console_attach" => from_value(kind, payload).map(BackendCommand::ConsoleAttach),
            kind @ "console_detach" => from_value(kind, payload).map(BackendCommand::ConsoleDetach),
            kind => from_value(kind, payload).map(BackendCommand::ConsoleInput),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn names_and_directions() {
        assert!(matches!(
            AgentEvent::<Heartbeat>::decode("start_instance", &json!({})),
            Err(DecodeError::WrongDirection("start_instance"))
        ));
        assert!(matches!(
            BackendCommand::decode("reboot", &json!({})),
            Err(DecodeError::UnknownType(_))
        ));
        assert!(matches!(
            AgentEvent::<Heartbeat>::decode("heartbeat", &json!({"nodeId": "n1"})),
            Err(DecodeError::Invalid {
                kind: "heartbeat",
                ..
            })
        ));
    }

    #[test]
    fn an_event_decodes_from_its_arguments_in_one_pass() {
        let metrics = r#"{"cpuTemp":null,"cpuUsagePercent":35,"ramUsageMb":1,"ramTotalMb":2,"diskUsageGb":3,"diskTotalGb":4,"networkRxMbps":0.5,"networkTxMbps":0}"#;
        let hb = format!(r#"{{"nodeId":"n1","status":"online","metrics":{metrics}}}"#);
        // The name may be escaped; arguments after the payload are ignored.
        for args in [
            format!(r#"["heartbeat",{hb}]"#),
            format!(r#" [ "heart\u0062eat" , {hb} , 7 ] "#),
        ] {
            let Ok(AgentEvent::Heartbeat(report)) =
                AgentEvent::<HeartbeatReport>::decode_args(&args)
            else {
                panic!("{args} did not decode");
            };
            // The metrics are the agent's text, as it sent them.
            assert_eq!(report.metrics.get(), metrics);
            assert_eq!(report.node_id.as_str(), "n1");
            let typed = AgentEvent::<Heartbeat>::decode_args(&args).unwrap();
            assert_eq!(
                typed,
                AgentEvent::<Heartbeat>::decode("heartbeat", &serde_json::from_str(&hb).unwrap())
                    .unwrap()
            );
        }
        let bad_metrics = hb.replace(r#""ramUsageMb":1"#, r#""ramUsageMb":-1"#);
        let unknown_field = hb.replace(r#""ramUsageMb":1"#, r#""ramUsageMb":1,"x":2"#);
        for (args, why) in [
            (
                format!(r#"["heartbeat",{bad_metrics}]"#),
                "invalid `heartbeat`",
            ),
            (
                format!(r#"["heartbeat",{unknown_field}]"#),
                "invalid `heartbeat`",
            ),
            (r#"["heartbeat"]"#.to_owned(), "invalid `heartbeat`"),
            (
                format!(r#"["reboot",{hb}]"#),
                "unknown message type `reboot`",
            ),
            (
                format!(r#"["start_instance",{hb}]"#),
                "not accepted from this side",
            ),
            (format!(r#"{{"heartbeat":{hb}}}"#), "is [name, payload]"),
            ("[]".to_owned(), "is [name, payload]"),
            ("[7, {}]".to_owned(), "is [name, payload]"),
            (format!(r#"["heartbeat",{hb}"#), "not valid JSON"),
            (format!(r#"["heartbeat",{hb}] x"#), "not valid JSON"),
        ] {
            let e = AgentEvent::<HeartbeatReport>::decode_args(&args).unwrap_err();
            assert!(e.to_string().contains(why), "{args}: {e}");
        }
    }

    #[test]
    fn ram_limit_is_a_size() {
        let bad = json!({
            "rentalId": "r1", "image": "busybox:latest",
            "resourceLimits": { "cpuCores": 1, "ramLimit": "lots" }
        });
        assert!(BackendCommand::decode("start_instance", &bad).is_err());
        let ok = json!({
            "rentalId": "r1", "image": "busybox:latest",
            "resourceLimits": { "cpuCores": 0.5, "ramLimit": "512m" }
        });
        let BackendCommand::StartInstance(s) =
            BackendCommand::decode("start_instance", &ok).unwrap()
        else {
            panic!("wrong command")
        };
        assert_eq!(s.resource_limits.ram_limit.as_mib(), 512);
        assert!(s.resource_limits.gpu_indices.is_empty());
    }
}
