//! Decoders of every wire type, behind one signature, for the golden and property tests.
#![allow(dead_code)]

use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;
use vmfleet_wire::api::*;
use vmfleet_wire::fleet::{Ack, AgentEvent, BackendCommand, Heartbeat, HeartbeatReport};
use vmfleet_wire::node::{NodeReply, NodeRequest};
use vmfleet_wire::ws::WsMessage;
use vmfleet_wire::{DecodeError, decode_body};

/// Decodes text into a typed message and encodes it back to JSON.
pub type Decoder = fn(&str) -> Result<Value, DecodeError>;

fn to_value<T: Serialize>(t: &T) -> Value {
    serde_json::to_value(t).expect("wire types serialize")
}

pub fn rest<T: DeserializeOwned + Serialize>(text: &str) -> Result<Value, DecodeError> {
    decode_body::<T>(std::any::type_name::<T>(), text).map(|t| to_value(&t))
}

pub fn node_request(text: &str) -> Result<Value, DecodeError> {
    NodeRequest::decode(text).map(|t| to_value(&t))
}

pub fn node_reply(text: &str) -> Result<Value, DecodeError> {
    NodeReply::decode(text).map(|t| to_value(&t))
}

pub fn ws_any(text: &str) -> Result<Value, DecodeError> {
    WsMessage::decode(text).map(|t| to_value(&t))
}

pub fn ws_client(text: &str) -> Result<Value, DecodeError> {
    WsMessage::decode_from_client(text).map(|t| to_value(&t))
}

fn payload(text: &str) -> Result<Value, DecodeError> {
    serde_json::from_str(text).map_err(DecodeError::Malformed)
}

macro_rules! agent_event {
    ($name:literal) => {
        |text: &str| -> Result<Value, DecodeError> {
            let via_value =
                AgentEvent::<Heartbeat>::decode($name, &payload(text)?).map(|e| e.payload());
            // The decoder from the payload's text agrees with it.
            let via_text = AgentEvent::<Heartbeat>::decode_json($name, text).map(|e| e.payload());
            assert_eq!(via_value.as_ref().ok(), via_text.as_ref().ok(), "{text}");
            if serde_json::from_str::<Value>(text).is_ok() {
                // So does the one-pass decoder of `[name, payload]`, and the control plane's
                // reading of heartbeats accepts the same.
                let args = format!("[\"{}\",{text}]", $name);
                let via_args = AgentEvent::<Heartbeat>::decode_args(&args).map(|e| e.payload());
                assert_eq!(via_value.as_ref().ok(), via_args.as_ref().ok(), "{text}");
                let report = AgentEvent::<HeartbeatReport>::decode_args(&args);
                assert_eq!(via_value.is_ok(), report.is_ok(), "{text}");
            }
            via_value
        }
    };
}

macro_rules! backend_command {
    ($name:literal) => {
        |text: &str| -> Result<Value, DecodeError> {
            BackendCommand::decode($name, &payload(text)?).map(|e| e.payload())
        }
    };
}

pub const HEARTBEAT: Decoder = agent_event!("heartbeat");
pub const INSTANCE_STARTED: Decoder = agent_event!("instance_started");
pub const INSTANCE_STOPPED: Decoder = agent_event!("instance_stopped");
pub const START_INSTANCE: Decoder = backend_command!("start_instance");
pub const STOP_INSTANCE: Decoder = backend_command!("stop_instance");
pub const DRAIN_NODE: Decoder = backend_command!("drain_node");
pub const UNKNOWN_EVENT: Decoder = agent_event!("no_such_event");

/// Every decoder the crate offers, by name.
pub fn all_decoders() -> Vec<(&'static str, Decoder)> {
    vec![
        ("node request", node_request),
        ("node reply", node_reply),
        ("ws any", ws_any),
        ("ws client", ws_client),
        ("heartbeat", HEARTBEAT),
        ("instance_started", INSTANCE_STARTED),
        ("instance_stopped", INSTANCE_STOPPED),
        ("start_instance", START_INSTANCE),
        ("stop_instance", STOP_INSTANCE),
        ("drain_node", DRAIN_NODE),
        ("unknown event", UNKNOWN_EVENT),
        ("ack", rest::<Ack>),
        ("health", rest::<Health>),
        ("ping request", rest::<PingRequest>),
        ("ping response", rest::<PingResponse>),
        ("create request", rest::<CreateVmRequest>),
        ("create response", rest::<CreateVmResponse>),
        ("vm ref", rest::<VmRef>),
        ("stop request", rest::<StopVmRequest>),
        ("action response", rest::<ActionResponse>),
        ("list request", rest::<ListVmsRequest>),
        ("vm info", rest::<VmInfo>),
        ("vm list", rest::<Vec<VmInfo>>),
        ("snapshot request", rest::<SnapshotRequest>),
        ("snapshot response", rest::<SnapshotResponse>),
        ("restore request", rest::<RestoreRequest>),
        ("resize vcpu", rest::<ResizeVcpuRequest>),
        ("resize memory", rest::<ResizeMemoryRequest>),
        ("add disk", rest::<AddDiskRequest>),
        ("add device", rest::<AddDeviceRequest>),
        ("add fs", rest::<AddFsRequest>),
        ("add device response", rest::<AddDeviceResponse>),
        ("remove device", rest::<RemoveDeviceRequest>),
        ("error body", rest::<ErrorBody>),
        ("nonce", rest::<NonceResponse>),
        ("login request", rest::<LoginRequest>),
        ("login response", rest::<LoginResponse>),
        ("create node request", rest::<CreateNodeRequest>),
        ("create node response", rest::<CreateNodeResponse>),
    ]
}

/// JSON equality as JSON defines it: numbers compare by value (`35` equals `35.0`), object
/// members regardless of order.
pub fn json_eq(a: &Value, b: &Value) -> bool {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => x.as_f64() == y.as_f64(),
        (Value::Array(x), Value::Array(y)) => {
            x.len() == y.len() && x.iter().zip(y).all(|(p, q)| json_eq(p, q))
        }
        (Value::Object(x), Value::Object(y)) => {
            x.len() == y.len()
                && x.iter()
                    .all(|(k, v)| y.get(k).is_some_and(|w| json_eq(v, w)))
        }
        _ => a == b,
    }
}
