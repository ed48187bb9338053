//! vmfleet's benchmarks. Each scenario measures what vmfleet does against its floor (the same
//! work done by hand, without vmfleet) in the same run, interleaving the variants run by run so
//! that drift of a shared machine hits both alike.
//!
//! - [`boot`]: create-to-console-ready through the driver against the same QEMU command line
//!   launched by hand.
//! - [`fleet`]: N agents heartbeating on `/fleet`, against `vmfleet server` and a minimal
//!   Node.js socket.io server with the same semantics (`bench/node-fleet`).
//! - [`api`]: `/vm/info` and `/vm/list` under load with wrk, against `GET /health` on the same
//!   server (the HTTP stack's floor).
//! - [`console`]: keystroke echo through the whole console path against the guest's console
//!   socket directly.
//! - [`boot_api`]: create-to-console-ready through the REST and WebSocket API against the same
//!   QEMU command line by hand.
//! - [`fanout`]: many monitor connections on one VM, metrics every second: what they cost the
//!   server.
//! - [`all`]: every scenario in one run, one JSON file, one report with PNG plots.
//! - [`plane`]: `vmfleet up` driven through its public API, and guests launched by hand from
//!   the command line its agent ran.
//! - [`report`]: the result of a scenario (raw samples, summaries, comparisons with their
//!   targets), its JSON file and its section of the Markdown report.
//! - [`stats`], [`machine`], [`guest`], [`procfs`], [`plot`]: summaries, what machine ran it,
//!   the test guest, what `/proc` says of a process, SVG plots
//!   and their PNGs ([`raster`]).

pub mod all;
pub mod api;
pub mod boot;
pub mod boot_api;
pub mod console;
mod error;
pub mod fanout;
pub mod fleet;
pub mod guest;
pub mod machine;
pub mod plane;
pub mod plot;
pub mod procfs;
pub mod raster;
pub mod rate;
pub mod report;
pub mod stats;

pub use error::{BenchError, Context, Result};
