//! Everything that touches a hypervisor or a container engine lives here, behind types that
//! the rest of vmfleet can hold without knowing QEMU, Firecracker or Docker.
//!
//! - [`ImageCatalog`]: the one place a request's image name becomes a file path.
//! - [`Backend`] / [`Guest`]: what a hypervisor backend implements (launch a process, drive it).
//! - [`Console`]: a guest's serial console with scrollback, many readers, one writer.
//! - [`Hypervisor`] / [`Vmm`]: every VM operation, the state machine checked, over a backend.
//! - [`qemu`] and [`firecracker`]: the two hypervisor backends; [`net`]: IPAM and TAP devices.

pub mod backend;
mod catalog;
pub mod console;
mod devices;
pub mod docker;
mod error;
pub mod firecracker;
mod hypervisor;
pub mod net;
mod proc;
pub mod qemu;
mod transfer;
mod vmm;

pub use backend::{
    AttachedDevice, Backend, BackendKind, DeviceSpec, DiskSpec, Guest, GuestExit, GuestMetrics,
    Launch, NetAttachment, SnapshotPaths, VmSpec,
};
pub use catalog::{CatalogError, CatalogImage, ImageCatalog};
pub use console::{Console, ConsoleError, ConsoleReader, SCROLLBACK_BYTES};
pub use devices::HostDevices;
pub use docker::{
    ContainerInfo, ContainerSpec, ContainerState, DockerConfig, DockerRuntime, StartedContainer,
    StopEnd, StopReport,
};
pub use error::{ErrorClass, HypervisorError};
pub use firecracker::{FirecrackerBackend, FirecrackerConfig, FirecrackerGuest};
pub use hypervisor::{CreateVm, Hypervisor, SnapshotInfo, VmStatus};
pub use vmm::{DEFAULT_BOOT_ARGS, DEFAULT_SNAPSHOT_LIMIT, DEFAULT_STOP_TIMEOUT, Vmm};
