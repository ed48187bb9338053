use std::io;
use std::path::PathBuf;

use vmfleet_core::{InvalidTransition, ResourceError, VmId};

use crate::catalog::CatalogError;

/// What can go wrong running a guest. Each variant names its cause; the layers above map them
/// to seed 002's statuses (see [`HypervisorError::class`]).
#[derive(Debug, thiserror::Error)]
pub enum HypervisorError {
    #[error("the {backend} driver cannot {op}")]
    Unsupported {
        backend: &'static str,
        op: &'static str,
    },
    #[error(transparent)]
    InvalidState(#[from] InvalidTransition),
    #[error("VM {0} does not exist")]
    NotFound(VmId),
    #[error("VM {0} already exists")]
    AlreadyExists(VmId),
    #[error("VM {0} is not running")]
    NotRunning(VmId),
    #[error("VM {0} is busy with another operation")]
    Busy(VmId),
    #[error("VM {0} is {1}: stop it first, its disk changes while it runs")]
    MustBeStopped(VmId, vmfleet_core::VmState),
    #[error(
        "VM {vm} is {state}: the {backend} driver cannot hot-plug devices; stop it first, \
         the guest sees the change from its next boot"
    )]
    ColdPlugOnly {
        vm: VmId,
        state: vmfleet_core::VmState,
        backend: &'static str,
    },
    #[error("VM {vm} has no device {device}")]
    NoDevice {
        vm: VmId,
        device: vmfleet_core::DeviceId,
    },
    /// A device the node does not offer, or one already taken.
    #[error("{0}")]
    DeviceRefused(String),
    #[error("VM {vm} has no snapshot {snapshot}")]
    NoSnapshot { vm: VmId, snapshot: String },
    #[error("VM {vm} has {limit} snapshots, as many as its node keeps for a VM: delete one first")]
    SnapshotLimit { vm: VmId, limit: usize },
    #[error(transparent)]
    Resources(#[from] ResourceError),
    #[error("{0}")]
    InvalidSpec(String),
    #[error("the host cannot give {0}")]
    InsufficientResources(String),
    #[error(transparent)]
    Catalog(#[from] CatalogError),
    #[error("the hypervisor binary {0} is not installed")]
    BinaryMissing(String),
    #[error("KVM is not usable on this host: {0}")]
    KvmUnusable(String),
    #[error("{backend} failed to start")]
    Launch {
        backend: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("{backend} protocol error: {message}")]
    Protocol {
        backend: &'static str,
        message: String,
    },
    #[error("the guest failed: {0}")]
    GuestFailed(String),
    #[error("timed out waiting for {0}")]
    Timeout(&'static str),
    #[error("{} cannot be used", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Docker engine at {} cannot be reached", socket.display())]
    EngineUnreachable {
        socket: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("the Docker engine failed to {op}: {message} (HTTP {status})")]
    Engine {
        op: &'static str,
        status: u16,
        message: String,
    },
    #[error("container {0} does not exist")]
    ContainerNotFound(String),
    #[error("container {container} is not vmfleet's container of rental {rental}")]
    NotRentalContainer { container: String, rental: String },
    #[error("image {image} is not on this node and cannot be pulled: {reason}")]
    ImageUnavailable { image: String, reason: String },
    #[error(
        "a disk limit needs a Docker storage driver that enforces it (overlay2 on xfs mounted \
         with pquota, btrfs, zfs or devicemapper), and this engine uses {driver} on {backing_fs}"
    )]
    DiskLimitUnsupported { driver: String, backing_fs: String },
}

/// How the outside world should read an error: the HTTP status family of seed 002.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorClass {
    /// 400: the request is wrong.
    BadRequest,
    /// 404
    NotFound,
    /// 409: the VM's state forbids it.
    Conflict,
    /// 501: this driver cannot do it.
    Unsupported,
    /// 500: the host or the hypervisor failed.
    Internal,
}

impl HypervisorError {
    pub fn class(&self) -> ErrorClass {
        match self {
            HypervisorError::Unsupported { .. } | HypervisorError::DiskLimitUnsupported { .. } => {
                ErrorClass::Unsupported
            }
            HypervisorError::Catalog(CatalogError::Exists(_)) => ErrorClass::Conflict,
            HypervisorError::InvalidState(_)
            | HypervisorError::AlreadyExists(_)
            | HypervisorError::Busy(_)
            | HypervisorError::MustBeStopped(..)
            | HypervisorError::ColdPlugOnly { .. }
            | HypervisorError::DeviceRefused(_)
            | HypervisorError::NotRunning(_)
            | HypervisorError::NotRentalContainer { .. }
            | HypervisorError::SnapshotLimit { .. } => ErrorClass::Conflict,
            HypervisorError::NotFound(_)
            | HypervisorError::NoSnapshot { .. }
            | HypervisorError::NoDevice { .. }
            | HypervisorError::ContainerNotFound(_) => ErrorClass::NotFound,
            HypervisorError::Resources(_)
            | HypervisorError::InvalidSpec(_)
            | HypervisorError::InsufficientResources(_)
            | HypervisorError::Catalog(_)
            | HypervisorError::ImageUnavailable { .. } => ErrorClass::BadRequest,
            _ => ErrorClass::Internal,
        }
    }

    /// Wraps an IO error with the path it concerns.
    pub fn io(path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| HypervisorError::Io { path, source }
    }
}
