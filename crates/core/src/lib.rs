//! vmfleet's domain vocabulary, shared by every other crate: typed ids, wallet addresses, byte
//! sizes, timestamps, the VM state machine and resource validation. It does no IO.

mod address;
mod device;
mod ids;
mod resources;
#[cfg(feature = "schemars")]
mod schema;
mod size;
mod state;
mod time;

pub use address::{AddressError, ChecksumAddress, WalletAddress};
pub use device::{Device, DeviceError, PciAddress, SharePath, ShareTag, VmDevice, VmDeviceKind};
pub use ids::{
    ApiTokenId, BuyerId, ContainerId, DeviceId, GpuIndex, IdError, IdErrorReason, ImageName,
    ImageRef, JobId, MigrationId, NodeId, RentalId, RequestId, SnapshotId, VmId, VmName, uuid_v4,
};
pub use resources::{ResourceError, VmResources};
pub use size::{ByteSize, SizeError};
pub use state::{InvalidTransition, Transition, VmEvent, VmOp, VmState};
pub use time::{Timestamp, TimestampError};
