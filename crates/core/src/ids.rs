//! Typed identifiers. Every id that crosses a wire is one of these, never a bare `String`.
//!
//! String ids share one alphabet: ASCII letters, digits, `_`, `.` and `-`, first character a
//! letter or digit, bounded length. That alphabet is what makes an id safe to use as a file
//! name under a base directory: no `/`, no `..`, no leading `-` or `.`.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a string is not a valid id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid {kind}: {reason}")]
pub struct IdError {
    pub kind: &'static str,
    pub reason: IdErrorReason,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdErrorReason {
    #[error("it is empty")]
    Empty,
    #[error("it is longer than {0} bytes")]
    TooLong(usize),
    #[error("character {0:?} is not allowed")]
    BadChar(char),
    #[error("it must start with a letter or digit")]
    BadStart,
}

/// Checks `s` against the id alphabet (`extra` adds allowed characters).
pub(crate) fn check_id(
    kind: &'static str,
    s: &str,
    max: usize,
    extra: &str,
) -> Result<(), IdError> {
    let err = |reason| IdError { kind, reason };
    let first = s.chars().next().ok_or(err(IdErrorReason::Empty))?;
    if s.len() > max {
        return Err(err(IdErrorReason::TooLong(max)));
    }
    if !first.is_ascii_alphanumeric() {
        return Err(err(IdErrorReason::BadStart));
    }
    match s.chars().find(|c| {
        !(c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-') || extra.contains(*c))
    }) {
        Some(c) => Err(err(IdErrorReason::BadChar(c))),
        None => Ok(()),
    }
}

/// `n` random bytes as lowercase hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut bytes = vec![0u8; n];
    fill_random(&mut bytes);
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

pub(crate) fn fill_random(buf: &mut [u8]) {
    // The OS random source failing is not recoverable for an id generator; getrandom only
    // fails on platforms without one, which vmfleet does not support.
    if let Err(e) = getrandom::fill(buf) {
        panic!("the operating system's random source failed: {e}");
    }
}

/// A random RFC 4122 version 4 UUID in its hyphenated lowercase form.
pub fn uuid_v4() -> String {
    let mut b = [0u8; 16];
    fill_random(&mut b);
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    let h: String = b.iter().map(|x| format!("{x:02x}")).collect();
    format!(
        "{}-{}-{}-{}-{}",
        &h[0..8],
        &h[8..12],
        &h[12..16],
        &h[16..20],
        &h[20..32]
    )
}

macro_rules! string_id {
    ($(#[$meta:meta])* $name:ident, $kind:literal, max = $max:expr, extra = $extra:literal) => {
        $(#[$meta])*
        #[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub struct $name(String);

        impl $name {
            /// The longest accepted id, in bytes.
            pub const MAX_LEN: usize = $max;

            /// Validates `s` as this kind of id.
            pub fn new(s: impl Into<String>) -> Result<Self, IdError> {
                let s = s.into();
                check_id($kind, &s, $max, $extra)?;
                Ok(Self(s))
            }

            pub fn as_str(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = IdError;
            fn from_str(s: &str) -> Result<Self, IdError> {
                Self::new(s)
            }
        }

        impl AsRef<str> for $name {
            fn as_ref(&self) -> &str {
                &self.0
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(&self.0)
            }
        }

        impl<'de> Deserialize<'de> for $name {
            fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let s = String::deserialize(d)?;
                Self::new(s).map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "schemars")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                stringify!($name).into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                crate::schema::id_schema($kind, $max, $extra)
            }
        }
    };
}

string_id!(
    /// A VM's id (seed 002 `vm_id` / `build_id`, seed 000 `vm_id`), e.g. `build-123456789`.
    VmId, "VM id", max = 64, extra = ""
);
string_id!(
    /// A VM's human name, unique per owner (seed 002 `name`, seed 004 `{name}` in the path).
    VmName, "VM name", max = 63, extra = ""
);
string_id!(
    /// A compute node's id (seed 001 `nodeId`).
    NodeId, "node id", max = 64, extra = ""
);
string_id!(
    /// A rental's id (seed 001 `rentalId`).
    RentalId, "rental id", max = 64, extra = ""
);
string_id!(
    /// A container's id as the container engine reports it (seed 001 `containerId`).
    ContainerId, "container id", max = 128, extra = ""
);
string_id!(
    /// A buyer's id on the node-local API (seed 000 `buyer_id`).
    BuyerId, "buyer id", max = 64, extra = ""
);
string_id!(
    /// Correlates a command with its response (seed 003/004 `requestId`).
    RequestId, "request id", max = 128, extra = ""
);
string_id!(
    /// A GPU on a node: its index (`"0"`) or its UUID (seed 001 `gpuIndices`).
    GpuIndex, "GPU index", max = 64, extra = ""
);
string_id!(
    /// A file name in the node's image catalog (`vmlinux.bin`, `rootfs.ext4`). Never a path.
    ImageName, "image name", max = 128, extra = ""
);
string_id!(
    /// A container image reference (`pytorch/pytorch:2.0.1-cuda11.7-cudnn8-runtime`).
    ImageRef, "image reference", max = 255, extra = "/:@"
);
string_id!(
    /// A snapshot's id, unique per VM.
    SnapshotId, "snapshot id", max = 64, extra = ""
);

string_id!(
    /// A device of a VM (`dev0`, `dev1`, ...), given by its node when the device is added.
    DeviceId, "device id", max = 32, extra = ""
);

impl DeviceId {
    /// The `n`th device id of a VM: `dev<n>`.
    pub fn nth(n: u32) -> Self {
        Self(format!("dev{n}"))
    }
}

string_id!(
    /// A migration ticket (`/vm/migrate/from`, `/vm/migrate/to`).
    MigrationId, "migration id", max = 64, extra = ""
);

impl MigrationId {
    /// A fresh random ticket, `mig-` and 16 hex digits.
    pub fn generate() -> Self {
        Self(format!("mig-{}", random_hex(8)))
    }
}

impl VmId {
    /// A fresh random VM id, `vm-` and 16 hex digits.
    pub fn generate() -> Self {
        Self(format!("vm-{}", random_hex(8)))
    }
}

impl NodeId {
    /// A fresh random node id (a UUID v4).
    pub fn generate() -> Self {
        Self(uuid_v4())
    }
}

impl RentalId {
    pub fn generate() -> Self {
        Self(uuid_v4())
    }
}

impl RequestId {
    pub fn generate() -> Self {
        Self(uuid_v4())
    }
}

impl SnapshotId {
    pub fn generate() -> Self {
        Self(format!("snap-{}", random_hex(8)))
    }
}

/// A job number on the node-local API (seed 000 `job_id`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct JobId(pub u64);

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

/// A long-lived API token's id (assigned by the control plane's database).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(transparent)]
pub struct ApiTokenId(pub i64);

impl fmt::Display for ApiTokenId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

impl std::str::FromStr for ApiTokenId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.parse().map(ApiTokenId)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_seed_examples() {
        for s in [
            "build-123456789",
            "vm-123",
            "my-instance",
            "uuid",
            "docker-container-id",
        ] {
            VmId::new(s).unwrap();
        }
        ImageRef::new("pytorch/pytorch:2.0.1-cuda11.7-cudnn8-runtime").unwrap();
        ImageName::new("vmlinux.bin").unwrap();
        ImageName::new("rootfs.ext4").unwrap();
    }

    #[test]
    fn refuses_path_escapes_and_junk() {
        for s in [
            "",
            "..",
            ".",
            "../etc/passwd",
            "/abs",
            "a/b",
            "-rf",
            ".hidden",
            "a b",
            "é",
        ] {
            assert!(ImageName::new(s).is_err(), "{s:?} accepted");
            assert!(VmId::new(s).is_err(), "{s:?} accepted");
        }
        assert!(VmId::new("a".repeat(65)).is_err());
        assert_eq!(
            VmId::new("a/b").unwrap_err().to_string(),
            "invalid VM id: character '/' is not allowed"
        );
    }

    #[test]
    fn generated_ids_are_valid_and_distinct() {
        let a = VmId::generate();
        let b = VmId::generate();
        assert_ne!(a, b);
        VmId::new(a.as_str()).unwrap();
        let n = NodeId::generate();
        assert_eq!(n.as_str().len(), 36);
        assert_eq!(&n.as_str()[14..15], "4");
    }

    #[test]
    fn serde_validates() {
        let ok: VmId = serde_json::from_str("\"vm-1\"").unwrap();
        assert_eq!(serde_json::to_string(&ok).unwrap(), "\"vm-1\"");
        assert!(serde_json::from_str::<VmId>("\"../x\"").is_err());
        assert!(serde_json::from_str::<VmId>("12").is_err());
    }
}
