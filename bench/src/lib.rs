//! vmfleet's benchmarks. Each scenario measures what vmfleet does against its floor (the same
//! work done by hand, without vmfleet) in the same run, interleaving the variants run by run so
//! that drift of a shared machine hits both alike.
//!
//! - [`boot`]: create-to-console-ready through the driver against the same QEMU command line
//!   launched by hand.
//! - [`report`]: the result of a scenario (raw samples, summaries, comparisons with their
//!   targets), its JSON file and its section of the Markdown report.
//! - [`stats`], [`machine`], [`guest`]: summaries, what machine ran it, the test guest.

pub mod boot;
mod error;
pub mod guest;
pub mod machine;
pub mod report;
pub mod stats;

pub use error::{BenchError, Context, Result};
