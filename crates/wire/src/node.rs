//! Seed 000: the node-local WebSocket API of the host agent (`127.0.0.1:3030/ws`).
//!
//! Every frame is a JSON object tagged by `type`, fields in snake_case. The document gives
//! the five requests; the replies are vmfleet's, in the same style.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use vmfleet_core::{BuyerId, JobId, VmId, VmState};

use crate::error::{DecodeError, classify, from_value, parse_object, str_field};

/// A request from a local client to the node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case", deny_unknown_fields)]
pub enum NodeRequest {
    CreateVm {
        job_id: JobId,
        buyer_id: BuyerId,
        vcpu_count: u32,
        mem_size_mib: u64,
    },
    StopVm {
        vm_id: VmId,
    },
    TerminateVm {
        vm_id: VmId,
    },
    GetVmStatus {
        vm_id: VmId,
    },
    GetBuyerVms {
        buyer_id: BuyerId,
    },
}

/// A VM as the node-local API shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeVm {
    pub vm_id: VmId,
    pub job_id: JobId,
    pub buyer_id: BuyerId,
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    pub state: VmState,
    pub ip_address: Option<IpAddr>,
}

/// The node's answer to a [`NodeRequest`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum NodeReply {
    /// Answers `create_vm`.
    VmCreated(NodeVm),
    /// Answers `stop_vm`.
    VmStopped(NodeVm),
    /// Answers `terminate_vm`.
    VmTerminated { vm_id: VmId },
    /// Answers `get_vm_status`.
    VmStatus(NodeVm),
    /// Answers `get_buyer_vms`.
    BuyerVms { buyer_id: BuyerId, vms: Vec<NodeVm> },
    Error {
        code: NodeErrorCode,
        message: String,
        /// The `type` of the request that failed, when it was understood.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        request_type: Option<String>,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeErrorCode {
    /// Not JSON, not an object, or a field missing or of the wrong type.
    InvalidMessage,
    UnknownType,
    Unauthorized,
    VmNotFound,
    /// The VM's state does not allow the operation.
    InvalidState,
    /// The node has no room for the VM.
    InsufficientCapacity,
    /// The node is draining and takes no new work.
    Draining,
    InternalError,
}

impl NodeRequest {
    pub const TYPES: [&'static str; 5] = [
        "create_vm",
        "stop_vm",
        "terminate_vm",
        "get_vm_status",
        "get_buyer_vms",
    ];

    pub fn type_name(&self) -> &'static str {
        match self {
            NodeRequest::CreateVm { .. } => "create_vm",
            NodeRequest::StopVm { .. } => "stop_vm",
            NodeRequest::TerminateVm { .. } => "terminate_vm",
            NodeRequest::GetVmStatus { .. } => "get_vm_status",
            NodeRequest::GetBuyerVms { .. } => "get_buyer_vms",
        }
    }

    /// Decodes one frame from a client, with a typed error for each way it can be wrong.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let obj = parse_object(text)?;
        let ty = str_field(&obj, "type")?;
        let kind = classify(ty, &Self::TYPES, &NodeReply::TYPES)?;
        from_value(kind, &serde_json::Value::Object(obj))
    }
}

impl NodeReply {
    pub const TYPES: [&'static str; 6] = [
        "vm_created",
        "vm_stopped",
        "vm_terminated",
        "vm_status",
        "buyer_vms",
        "error",
    ];

    /// Decodes one frame from the node.
    pub fn decode(text: &str) -> Result<Self, DecodeError> {
        let obj = parse_object(text)?;
        let ty = str_field(&obj, "type")?;
        let kind = classify(ty, &Self::TYPES, &NodeRequest::TYPES)?;
        from_value(kind, &serde_json::Value::Object(obj))
    }

    pub fn error(code: NodeErrorCode, message: impl Into<String>) -> Self {
        NodeReply::Error {
            code,
            message: message.into(),
            request_type: None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_errors() {
        assert!(matches!(
            NodeRequest::decode("{"),
            Err(DecodeError::Malformed(_))
        ));
        assert!(matches!(
            NodeRequest::decode("[]"),
            Err(DecodeError::NotAnObject)
        ));
        assert!(matches!(
            NodeRequest::decode("{}"),
            Err(DecodeError::MissingField("type"))
        ));
        assert!(matches!(
            NodeRequest::decode(r#"{"type":"reboot_vm"}"#),
            Err(DecodeError::UnknownType(t)) if t == "reboot_vm"
        ));
        assert!(matches!(
            NodeRequest::decode(r#"{"type":"vm_status"}"#),
            Err(DecodeError::WrongDirection("vm_status"))
        ));
        let e = NodeRequest::decode(r#"{"type":"stop_vm"}"#).unwrap_err();
        assert_eq!(e.kind(), Some("stop_vm"));
        assert!(
            std::error::Error::source(&e)
                .unwrap()
                .to_string()
                .contains("vm_id")
        );
        assert!(matches!(
            NodeRequest::decode(r#"{"type":"stop_vm","vm_id":"vm-1","extra":1}"#),
            Err(DecodeError::Invalid {
                kind: "stop_vm",
                ..
            })
        ));
        assert!(matches!(
            NodeRequest::decode(r#"{"type":"stop_vm","vm_id":"../../etc"}"#),
            Err(DecodeError::Invalid {
                kind: "stop_vm",
                ..
            })
        ));
    }
}
