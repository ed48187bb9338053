//! Everything that touches a hypervisor or a container engine lives here, behind types that
//! the rest of vmfleet can hold without knowing QEMU, Firecracker or Docker.
//!
//! - [`ImageCatalog`]: the one place a request's image name becomes a file path.
//! - [`Backend`] / [`Guest`]: what a hypervisor backend implements (launch a process, drive it).
//! - [`Console`]: a guest's serial console with scrollback, many readers, one writer.

pub mod backend;
mod catalog;
pub mod console;
pub mod docker;
mod error;

pub use backend::{
    Backend, BackendKind, DiskSpec, Guest, GuestExit, GuestMetrics, Launch, NetAttachment,
    SnapshotPaths, VmSpec,
};
pub use catalog::{CatalogError, CatalogImage, ImageCatalog};
pub use console::{Console, ConsoleError, ConsoleReader, SCROLLBACK_BYTES};
pub use docker::{
    ContainerInfo, ContainerSpec, ContainerState, DockerConfig, DockerRuntime, StartedContainer,
    StopEnd, StopReport,
};
pub use error::{ErrorClass, HypervisorError};
