//! Seed 002: the control plane's REST API, plus the sign-in and node-registry bodies that
//! `shared/CONTRACT.md` fixes. Fields are snake_case, as in the documents.
//!
//! Requests refuse unknown fields. Every success body carries `success: true` and every error
//! body `success: false`, fixed by [`Success`].

use std::net::IpAddr;

use serde::{Deserialize, Serialize};
use vmfleet_auth::Permission;
use vmfleet_core::{
    ApiTokenId, ChecksumAddress, Device, DeviceId, ImageName, MigrationId, NodeId, SharePath,
    ShareTag, SnapshotId, VmDevice, VmId, VmName, VmResources, VmState, WalletAddress,
};

use crate::flag::Success;

/// `GET /health` answers the JSON string `"healthy"`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
pub enum Health {
    #[serde(rename = "healthy")]
    Healthy,
}

/// `POST /ping`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PingRequest {
    pub message: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct PingResponse {
    pub message: String,
    /// Unix seconds.
    pub timestamp: i64,
}

/// `POST /vm/create`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateVmRequest {
    pub name: VmName,
    pub owner: WalletAddress,
    pub vm_config: VmConfig,
}

/// The shape of a new VM. `kernel` and `rootfs` name images of the node's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmConfig {
    #[cfg_attr(feature = "openapi", schemars(range(min = 1, max = VmResources::MAX_VCPUS)))]
    pub vcpu_count: u32,
    #[cfg_attr(
        feature = "openapi",
        schemars(range(min = VmResources::MIN_MEM_MIB, max = VmResources::MAX_MEM_MIB))
    )]
    pub mem_size_mib: u64,
    /// Root disk size in GiB.
    #[serde(default = "default_disk_size")]
    #[cfg_attr(feature = "openapi", schemars(range(min = 1, max = VmResources::MAX_DISK_GIB)))]
    pub disk_size: u64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub boot_args: Option<String>,
    #[serde(default = "default_kernel")]
    pub kernel: ImageName,
    #[serde(default = "default_rootfs")]
    pub rootfs: ImageName,
}

/// The catalog's default kernel (`shared/CONTRACT.md`, guest images).
pub const DEFAULT_KERNEL: &str = "vmlinux.bin";
/// The catalog's default root filesystem.
pub const DEFAULT_ROOTFS: &str = "rootfs.ext4";

fn default_disk_size() -> u64 {
    1
}

fn default_image(name: &'static str) -> ImageName {
    match ImageName::new(name) {
        Ok(n) => n,
        Err(e) => unreachable!("the default image name {name} is valid: {e}"),
    }
}

fn default_kernel() -> ImageName {
    default_image(DEFAULT_KERNEL)
}

fn default_rootfs() -> ImageName {
    default_image(DEFAULT_ROOTFS)
}

impl VmConfig {
    pub fn resources(&self) -> VmResources {
        VmResources {
            vcpu_count: self.vcpu_count,
            mem_size_mib: self.mem_size_mib,
            disk_size: self.disk_size,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateVmResponse {
    pub success: Success<true>,
    pub vm_id: VmId,
    pub message: String,
}

/// Names one VM of one owner: the body of `/vm/boot`, `/vm/start`, `/vm/reboot`,
/// `/vm/delete`, `/vm/info`, `/vm/power-button` and `/vm/coredump`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmRef {
    pub build_id: VmId,
    pub owner: WalletAddress,
}

/// `POST /vm/migrate/from`: prepares a node to receive VM `build_id`. The scheduler picks an
/// `ONLINE` node with room other than the VM's own; only an admin may name `node`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigrateFromRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
}

/// The answer to `/vm/migrate/from`: room is reserved on `node` for the VM until
/// `expires_at` (unix seconds) unless `/vm/migrate/to` uses the ticket before.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigrationTicket {
    pub success: Success<true>,
    pub migration_id: MigrationId,
    pub node: NodeId,
    pub expires_at: i64,
}

/// `POST /vm/migrate/to`: moves VM `build_id` to the node of ticket `migration_id`, or, with
/// none, to a node the scheduler picks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigrateToRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub migration_id: Option<MigrationId>,
}

/// The answer to `/vm/migrate/to`: the migration goes on in the background (state
/// `migrating`); its progress and end show in `/vm/info` and on the WebSocket status stream.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct MigrateToResponse {
    pub success: Success<true>,
    pub message: String,
    pub migration_id: MigrationId,
    pub node: NodeId,
    pub state: VmState,
}

/// `POST /vm/stop`: graceful unless `force`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct StopVmRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    #[serde(default)]
    pub force: bool,
}

/// The body of every successful operation that returns nothing else.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ActionResponse {
    pub success: Success<true>,
    pub message: String,
}

impl ActionResponse {
    pub fn new(message: impl Into<String>) -> Self {
        ActionResponse {
            success: Success,
            message: message.into(),
        }
    }
}

/// `POST /vm/list`: the caller's VMs; an admin may ask for one owner's.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ListVmsRequest {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<WalletAddress>,
}

/// A VM as `/vm/info` and `/vm/list` show it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmInfo {
    pub build_id: VmId,
    pub name: VmName,
    pub owner: WalletAddress,
    pub state: VmState,
    pub resources: VmResources,
    /// `null` until the VM has an address.
    pub ip_address: Option<IpAddr>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    /// The node it is placed on, once it is.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<NodeId>,
    /// Why it is in its state: an error's reason, a migration's progress or why it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Devices and shares added to it (`/vm/device/add`, `/vm/fs/add`), in the order they
    /// were added, with the ids `/vm/device/remove` takes; absent when it has none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub devices: Vec<VmDevice>,
}

/// `POST /vm/snapshot`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SnapshotRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    /// Chosen by the server when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot_id: Option<SnapshotId>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SnapshotResponse {
    pub success: Success<true>,
    pub snapshot_id: SnapshotId,
    pub message: String,
}

/// `POST /vm/commit`: the stopped VM's root disk saved as a new image of its node's catalog.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub image_name: ImageName,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CommitResponse {
    pub success: Success<true>,
    pub image_name: ImageName,
    pub message: String,
}

/// The answer of `POST /vm/coredump`: where the core file was written on the VM's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CoredumpResponse {
    pub success: Success<true>,
    pub path: String,
    pub message: String,
}

/// `POST /vm/restore`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RestoreRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub snapshot_id: SnapshotId,
}

/// A snapshot of a VM, as `/vm/snapshot/list` shows it (the answer is an array of them,
/// oldest first).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct SnapshotView {
    pub snapshot_id: SnapshotId,
    /// Unix seconds.
    pub created_at: i64,
    /// What it takes on its node's disk (memory, device state, copies of the disks).
    pub size_bytes: u64,
}

/// `POST /vm/snapshot/delete`: the snapshot's files removed from the VM's node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct DeleteSnapshotRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub snapshot_id: SnapshotId,
}

/// `POST /vm/resize/vcpu`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResizeVcpuRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub vcpu_count: u32,
}

/// `POST /vm/resize/memory`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ResizeMemoryRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub mem_size_mib: u64,
}

/// `POST /vm/disk/add`: a new empty disk of `size_gb` GiB.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AddDiskRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub size_gb: u64,
    #[serde(default)]
    pub read_only: bool,
}

/// `POST /vm/device/add`: a device for a stopped VM (cold-plug), e.g.
/// `{"kind": "rng"}` or `{"kind": "pci-passthrough", "address": "0000:01:00.0"}`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AddDeviceRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub device: Device,
}

/// `POST /vm/fs/add`: directory `path` (relative to the node's share root) shared with the
/// stopped VM, mounted in the guest by `tag` (`mount -t 9p -o trans=virtio TAG DIR`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AddFsRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub tag: ShareTag,
    pub path: SharePath,
    #[serde(default)]
    pub read_only: bool,
}

/// The answer to `/vm/device/add` and `/vm/fs/add`: the id the new device got on the VM
/// (`dev0`, `dev1`, ...), which `/vm/device/remove` takes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct AddDeviceResponse {
    pub success: Success<true>,
    pub id: DeviceId,
    pub message: String,
}

/// `POST /vm/device/remove`: device (or share) `id` taken off the stopped VM.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct RemoveDeviceRequest {
    pub build_id: VmId,
    pub owner: WalletAddress,
    pub id: DeviceId,
}

/// The body of every error: `success: false`, a sentence, and a machine-readable code.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ErrorBody {
    pub success: Success<false>,
    pub message: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub code: Option<ApiErrorCode>,
}

impl ErrorBody {
    pub fn new(code: ApiErrorCode, message: impl Into<String>) -> Self {
        ErrorBody {
            success: Success,
            message: message.into(),
            code: Some(code),
        }
    }
}

/// Machine-readable error codes, one per HTTP status the API answers with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum ApiErrorCode {
    /// 400
    BadRequest,
    /// 401
    Unauthorized,
    /// 403
    Forbidden,
    /// 404
    NotFound,
    /// 409: the VM's state does not allow the operation, or another is in flight.
    Conflict,
    /// 413
    PayloadTooLarge,
    /// 429
    RateLimited,
    /// 500
    Internal,
    /// 501: the VM's hypervisor cannot do this.
    Unsupported,
    /// 503: no node can take the work now.
    Unavailable,
}

impl ApiErrorCode {
    pub fn http_status(self) -> u16 {
        match self {
            ApiErrorCode::BadRequest => 400,
            ApiErrorCode::Unauthorized => 401,
            ApiErrorCode::Forbidden => 403,
            ApiErrorCode::NotFound => 404,
            ApiErrorCode::Conflict => 409,
            ApiErrorCode::PayloadTooLarge => 413,
            ApiErrorCode::RateLimited => 429,
            ApiErrorCode::Internal => 500,
            ApiErrorCode::Unsupported => 501,
            ApiErrorCode::Unavailable => 503,
        }
    }
}

/// `GET /auth/nonce`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NonceResponse {
    pub nonce: String,
}

/// `POST /auth/login`: an EIP-4361 message and its EIP-191 signature.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginRequest {
    pub message: String,
    /// `0x` and 65 bytes of hex.
    pub signature: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct LoginResponse {
    pub token: String,
    pub address: ChecksumAddress,
    /// Unix seconds.
    pub expires_at: i64,
}

/// `POST /auth/tokens`: a long-lived API token for automation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenRequest {
    /// 1 to 128 bytes, no control characters; unique among the owner's live tokens.
    pub name: String,
    /// At most what the caller's own token has; omitted: all of those.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub permissions: Option<Vec<Permission>>,
    /// 1 to 365 days; omitted: the token never expires (until revoked).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_in_days: Option<u32>,
    /// Whose token it is: the signed-in wallet when omitted; an admin may name any user.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<WalletAddress>,
}

/// An API token as `GET /auth/tokens` lists it: never its secret.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ApiTokenView {
    pub id: ApiTokenId,
    pub name: String,
    pub owner: ChecksumAddress,
    pub permissions: Vec<Permission>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `null`: never.
    pub expires_at: Option<i64>,
}

/// `POST /auth/tokens` answers 201 with the token's secret, shown here once: the server keeps
/// only its hash. It goes in `Authorization: Bearer vmf_...` wherever a sign-in JWT does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateApiTokenResponse {
    pub id: ApiTokenId,
    pub name: String,
    /// `vmf_` and 43 characters of base64url.
    pub token: String,
    pub owner: ChecksumAddress,
    pub permissions: Vec<Permission>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds; `null`: never.
    pub expires_at: Option<i64>,
}

/// `GET /auth/tokens` and `DELETE /auth/tokens/{id}` query: an admin may name any owner.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct ApiTokenQuery {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub owner: Option<WalletAddress>,
}

/// `POST /nodes` (admin).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateNodeRequest {
    pub name: String,
}

/// The node's host key is shown here once; the server keeps only its hash.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct CreateNodeResponse {
    pub node_id: NodeId,
    pub host_api_key: String,
}

/// A node's status in the registry (`shared/CONTRACT.md`, `GET /nodes`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(rename_all = "SCREAMING_SNAKE_CASE")]
pub enum NodeState {
    Online,
    Offline,
    Maintenance,
}

/// What a node offers in all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeCapacity {
    pub vcpus: u32,
    pub memory_mib: u64,
    pub disk_gib: u64,
    pub gpus: u32,
}

/// A node as `GET /nodes` (admin) shows it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct NodeView {
    pub node_id: NodeId,
    pub name: String,
    pub status: NodeState,
    pub capacity: NodeCapacity,
    /// Unix seconds of the latest heartbeat; `null` before the first.
    pub last_heartbeat: Option<i64>,
    /// The latest heartbeat's metrics, as the agent sent them (seed 001).
    pub metrics: Option<crate::fleet::HostMetrics>,
    /// Unix seconds.
    pub created_at: i64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decode_body;

    #[test]
    fn success_flag_is_fixed_by_the_type() {
        let err = r#"{"success":false,"message":"no"}"#;
        assert!(decode_body::<ErrorBody>("error", err).is_ok());
        assert!(decode_body::<ActionResponse>("action", err).is_err());
        let ok = r#"{"success":true,"message":"yes"}"#;
        assert!(decode_body::<ErrorBody>("error", ok).is_err());
    }

    #[test]
    fn create_defaults_images_and_refuses_unknown_fields() {
        let body = r#"{"name":"a","owner":"0x1234567890abcdef1234567890abcdef12345678",
                       "vm_config":{"vcpu_count":1,"mem_size_mib":256}}"#;
        let req: CreateVmRequest = decode_body("create", body).unwrap();
        assert_eq!(req.vm_config.kernel.as_str(), DEFAULT_KERNEL);
        assert_eq!(req.vm_config.rootfs.as_str(), DEFAULT_ROOTFS);
        let extra = body.replace("\"name\"", "\"hack\":1,\"name\"");
        assert!(decode_body::<CreateVmRequest>("create", &extra).is_err());
        let escape = body.replace(
            "\"vcpu_count\"",
            "\"kernel\":\"../../etc/shadow\",\"vcpu_count\"",
        );
        assert!(decode_body::<CreateVmRequest>("create", &escape).is_err());
    }

    #[test]
    fn api_token_requests_are_typed() {
        let req: CreateApiTokenRequest = decode_body(
            "token",
            r#"{"name":"ci","permissions":["read"],"expires_in_days":30}"#,
        )
        .unwrap();
        assert_eq!(req.permissions, Some(vec![Permission::Read]));
        assert_eq!(req.expires_in_days, Some(30));
        let bare: CreateApiTokenRequest = decode_body("token", r#"{"name":"ci"}"#).unwrap();
        assert_eq!(
            (bare.permissions, bare.expires_in_days, bare.owner),
            (None, None, None)
        );
        for bad in [
            r#"{"name":"ci","permissions":["root"]}"#,
            r#"{"name":"ci","expires_in_days":-1}"#,
            r#"{"name":"ci","scopes":[]}"#,
            r#"{"permissions":["read"]}"#,
        ] {
            assert!(
                decode_body::<CreateApiTokenRequest>("token", bad).is_err(),
                "{bad}"
            );
        }
    }
}
