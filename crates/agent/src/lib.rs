//! The host agent that runs on every compute node. It only ever dials out to the control
//! plane, so nodes behind NAT work.
//!
//! Today: its configuration ([`AgentConfig`]), read from the environment variables of seeds
//! 000/001 and from flags, and the host metrics of its heartbeat ([`host::HostSampler`]).

mod config;
mod consoles;
pub mod host;
pub mod node_api;
pub mod sio;
pub mod upstream;
pub mod vms;

pub use config::{AgentConfig, ConfigError, LogLevel, parse_config_file};
