//! Socket.IO v4 packets in Engine.IO v4 text frames, as `/fleet` (seed 001) carries them over
//! a WebSocket: the codec shared by the agent's client and the control plane's direct
//! WebSocket server. No IO.
//!
//! An Engine.IO frame is one type digit and its data: `0` open, `1` close, `2`/`3` ping/pong,
//! `4` message, `6` noop. A message carries one Socket.IO packet:
//! `<type>[<nsp>,][<id>][<json>]`, e.g. `0/fleet,{"token":"..."}` connect,
//! `2/fleet,12["heartbeat",{...}]` event with ack id 12, `3/fleet,12[{"success":true}]` its
//! ack, `4/fleet,{"message":"..."}` connect error, `1/fleet,` disconnect. Binary packets
//! (`5`, `6`) carry attachments in separate frames; `/fleet` sends none.

use serde_json::Value;

/// Engine.IO v4 frame types (the first character of a text frame).
pub mod eio {
    pub const OPEN: char = '0';
    pub const CLOSE: char = '1';
    pub const PING: char = '2';
    pub const PONG: char = '3';
    pub const MESSAGE: char = '4';
    pub const NOOP: char = '6';
    /// A whole ping frame (no probe payload).
    pub const PING_FRAME: &str = "2";
}

/// Socket.IO v4 packet types (the first character after the Engine.IO `4`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PacketKind {
    Connect,
    Disconnect,
    Event,
    Ack,
    ConnectError,
    BinaryEvent,
    BinaryAck,
}

impl PacketKind {
    fn from_char(c: char) -> Option<Self> {
        Some(match c {
            '0' => PacketKind::Connect,
            '1' => PacketKind::Disconnect,
            '2' => PacketKind::Event,
            '3' => PacketKind::Ack,
            '4' => PacketKind::ConnectError,
            '5' => PacketKind::BinaryEvent,
            '6' => PacketKind::BinaryAck,
            _ => return None,
        })
    }
}

/// One Socket.IO packet, borrowed from its frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet<'a> {
    pub kind: PacketKind,
    /// The namespace, `/` when the packet names none.
    pub nsp: &'a str,
    pub id: Option<u64>,
    /// The JSON that follows (may be empty).
    pub data: &'a str,
}

impl<'a> Packet<'a> {
    /// Parses a Socket.IO packet: the text of an Engine.IO message after its `4`.
    pub fn parse(text: &'a str) -> Option<Packet<'a>> {
        let mut chars = text.chars();
        let kind = PacketKind::from_char(chars.next()?)?;
        let mut rest = chars.as_str();
        if matches!(kind, PacketKind::BinaryEvent | PacketKind::BinaryAck) {
            // `<attachments>-` before the namespace.
            let dash = rest.find('-')?;
            rest = &rest[dash + 1..];
        }
        let nsp = if rest.starts_with('/') {
            let end = rest.find(',').unwrap_or(rest.len());
            let nsp = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or("");
            nsp
        } else {
            "/"
        };
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        let id = if digits == 0 {
            None
        } else {
            Some(rest[..digits].parse().ok()?)
        };
        Some(Packet {
            kind,
            nsp,
            id,
            data: &rest[digits..],
        })
    }

    /// An event's name and first argument (`null` when it has none).
    pub fn event(&self) -> Option<(String, Value)> {
        let arr: Vec<Value> = serde_json::from_str(self.data).ok()?;
        let mut it = arr.into_iter();
        let name = it.next()?.as_str()?.to_owned();
        Some((name, it.next().unwrap_or(Value::Null)))
    }

    /// An ack's first argument (`null` when it has none).
    pub fn ack_reply(&self) -> Option<Value> {
        let arr: Vec<Value> = serde_json::from_str(self.data).ok()?;
        Some(arr.into_iter().next().unwrap_or(Value::Null))
    }

    /// A connect error's message, or its data as it came.
    pub fn error_message(&self) -> String {
        serde_json::from_str::<Value>(self.data)
            .ok()
            .and_then(|v| v.get("message").and_then(Value::as_str).map(str::to_owned))
            .unwrap_or_else(|| self.data.to_owned())
    }
}

/// The Engine.IO frame of an event on `nsp`, with ack id `id` if the sender waits for one.
pub fn event_frame(nsp: &str, id: Option<u64>, name: &str, payload: &Value) -> String {
    let args = Value::Array(vec![Value::String(name.to_owned()), payload.clone()]);
    match id {
        Some(id) => format!("42{nsp},{id}{args}"),
        None => format!("42{nsp},{args}"),
    }
}

/// The Engine.IO frame acknowledging event `id` on `nsp` with `reply_json` (JSON text).
pub fn ack_frame(nsp: &str, id: u64, reply_json: &str) -> String {
    let mut frame = String::with_capacity(8 + nsp.len() + reply_json.len());
    write_ack_frame(&mut frame, nsp, id, reply_json);
    frame
}

/// As [`ack_frame`], appended to `out`.
pub fn write_ack_frame(out: &mut String, nsp: &str, id: u64, reply_json: &str) {
    use std::fmt::Write;
    out.push_str("43");
    out.push_str(nsp);
    // Writing to a `String` cannot fail.
    let _ = write!(out, ",{id}[");
    out.push_str(reply_json);
    out.push(']');
}

/// The Engine.IO frame connecting to `nsp` with `payload` (the client's auth, or the server's
/// `{"sid": ...}`).
pub fn connect_frame(nsp: &str, payload: &Value) -> String {
    format!("40{nsp},{payload}")
}

/// The Engine.IO frame refusing a connection to `nsp`.
pub fn connect_error_frame(nsp: &str, message: &str) -> String {
    let body = serde_json::json!({ "message": message });
    format!("44{nsp},{body}")
}

/// The Engine.IO frame leaving `nsp`.
pub fn disconnect_frame(nsp: &str) -> String {
    format!("41{nsp},")
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]

    use super::*;
    use serde_json::json;

    #[test]
    fn packets_parse_with_and_without_namespace_and_id() {
        let p = Packet::parse("2/fleet,12[\"a\",1]").unwrap();
        assert_eq!(
            (p.kind, p.nsp, p.id),
            (PacketKind::Event, "/fleet", Some(12))
        );
        assert_eq!(p.event(), Some(("a".into(), json!(1))));
        let p = Packet::parse("2[\"drain_node\"]").unwrap();
        assert_eq!((p.nsp, p.id), ("/", None));
        assert_eq!(p.event(), Some(("drain_node".into(), Value::Null)));
        let p = Packet::parse("3/fleet,7[{\"success\":true}]").unwrap();
        assert_eq!(p.ack_reply(), Some(json!({"success": true})));
        let p = Packet::parse("0/fleet,").unwrap();
        assert_eq!((p.kind, p.nsp, p.data), (PacketKind::Connect, "/fleet", ""));
        let p = Packet::parse("1/fleet").unwrap();
        assert_eq!((p.kind, p.nsp), (PacketKind::Disconnect, "/fleet"));
        let p = Packet::parse("51-/fleet,3[\"x\",{\"_placeholder\":true,\"num\":0}]").unwrap();
        assert_eq!(
            (p.kind, p.nsp, p.id),
            (PacketKind::BinaryEvent, "/fleet", Some(3))
        );
        let p = Packet::parse("4/fleet,{\"message\":\"invalid host key\"}").unwrap();
        assert_eq!(p.error_message(), "invalid host key");
    }

    #[test]
    fn garbage_is_none_not_a_panic() {
        for text in [
            "",
            "9",
            "2/fleet,99999999999999999999999[]",
            "5/fleet,[]",
            "é",
        ] {
            assert_eq!(Packet::parse(text), None, "{text:?}");
        }
        assert_eq!(Packet::parse("2/fleet,garbage").unwrap().event(), None);
        assert_eq!(Packet::parse("2/fleet,[1]").unwrap().event(), None);
    }

    #[test]
    fn frames_round_trip() {
        let f = event_frame("/fleet", Some(4), "vm_command", &json!({"a": 1}));
        assert_eq!(f, "42/fleet,4[\"vm_command\",{\"a\":1}]");
        let p = Packet::parse(&f[1..]).unwrap();
        assert_eq!(p.id, Some(4));
        assert_eq!(p.event(), Some(("vm_command".into(), json!({"a": 1}))));
        assert_eq!(
            ack_frame("/fleet", 4, "{\"success\":true}"),
            "43/fleet,4[{\"success\":true}]"
        );
        let e = connect_error_frame("/fleet", "invalid host key");
        assert_eq!(
            Packet::parse(&e[1..]).unwrap().error_message(),
            "invalid host key"
        );
        assert_eq!(disconnect_frame("/fleet"), "41/fleet,");
        assert_eq!(
            connect_frame("/fleet", &json!({"sid": "x"})),
            "40/fleet,{\"sid\":\"x\"}"
        );
    }
}
