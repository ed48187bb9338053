//! The wire protocol of vmfleet: one serde type for every message and body of the five
//! documents in `shared/seeds/`, shared by the server, the agent, the client, the CLI and the
//! tests. It does no IO.
//!
//! | module | document | transport |
//! |---|---|---|
//! | [`node`] | 000, node WebSocket API | WebSocket on the node, port 3030 |
//! | [`fleet`] | 001, agent <-> control plane | Socket.IO namespace `/fleet` |
//! | [`api`] | 002, VM REST API (+ CONTRACT's sign-in and nodes) | HTTP |
//! | [`ws`] | 003/004, real-time VM API | WebSocket `/ws/vms/{name}` |
//! | [`containers`] | vmfleet's container rentals and usage | HTTP |
//! | [`sio`] | 001's framing: Socket.IO v4 packets in Engine.IO v4 frames | WebSocket |
//!
//! Decoders return [`DecodeError`] and never panic.

pub mod api;
pub mod containers;
mod error;
mod flag;
pub mod fleet;
mod fleet_vm;
mod migration;
pub mod node;
pub mod sio;
pub mod ws;

pub use error::{DecodeError, decode_body};
pub use flag::Success;
/// The domain types the messages are made of.
pub use vmfleet_core as core;
