//! vmfleet's benchmarks. Each scenario measures what vmfleet does against its floor (the same
//! work done by hand, without vmfleet) in the same run, interleaving the variants run by run so
//! that drift of a shared machine hits both alike.
//!
//! - [`boot`]: create-to-console-ready through the driver against the same QEMU command line
//!   launched by hand.
//! - [`fleet`]: N agents heartbeating on `/fleet`, against `vmfleet server` and a minimal
//!   Node.js socket.io server with the same semantics (`bench/node-fleet`).
//! - [`report`]: the result of a scenario (raw samples, summaries, comparisons with their
//!   targets), its JSON file and its section of the Markdown report.
//! - [`stats`], [`machine`], [`guest`], [`procfs`], [`plot`]: summaries, what machine ran it,
//!   the test guest, what `/proc` says of a process, SVG plots.

pub mod api;
pub mod boot;
mod error;
pub mod fleet;
pub mod guest;
pub mod machine;
pub mod plot;
pub mod procfs;
pub mod report;
pub mod stats;

pub use error::{BenchError, Context, Result};
