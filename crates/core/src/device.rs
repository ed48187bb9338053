//! What a VM may be given beyond its disks: devices (`/vm/device/add`) and directories of its
//! node shared with the guest (`/vm/fs/add`), as typed values checked where they enter.
//!
//! - [`Device`]: the closed set of devices a request may ask for, tagged by `kind`.
//! - [`VmDevice`]: a device or share a VM has, as its owner is shown it.
//! - [`PciAddress`]: a host PCI device, `DDDD:BB:DD.F`.
//! - [`ShareTag`]: the name the guest mounts a share by (`mount -t 9p TAG DIR`).
//! - [`SharePath`]: a directory relative to the node's share root: no `..`, not absolute.
//!
//! None of them touches the file system: whether a path exists, or where its symlinks lead,
//! is the node's question (the hypervisor crate resolves it under its share root).

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a device value is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DeviceError {
    #[error(
        "invalid PCI address {0:?}: expected DDDD:BB:DD.F (hex domain, bus, device 00-1f, function 0-7)"
    )]
    PciAddress(String),
    #[error("invalid share tag {0:?}: 1 to {max} characters among letters, digits, '_' and '-'", max = ShareTag::MAX_LEN)]
    ShareTag(String),
    #[error("invalid share path {path:?}: {reason}")]
    SharePath { path: String, reason: &'static str },
}

/// A device a VM may be given, as `/vm/device/add` asks for it (`{"kind": "rng"}`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "kebab-case", deny_unknown_fields)]
pub enum Device {
    /// A virtio entropy source (the guest's `/dev/hwrng`, `virtio_rng`). A struct variant,
    /// so that unknown fields beside its `kind` are refused too.
    Rng {},
    /// A PCI device of the node (a GPU) passed through to the guest with VFIO; only those
    /// the node's operator offers.
    PciPassthrough { address: PciAddress },
}

impl Device {
    /// What the device is, in words, for messages.
    pub fn describe(&self) -> String {
        match self {
            Device::Rng {} => "an entropy device".into(),
            Device::PciPassthrough { address } => format!("PCI device {address}"),
        }
    }
}

/// A device or shared directory a VM has, as its owner sees it (`/vm/info`'s `devices`): the
/// id `/vm/device/remove` takes, and what it is, flat: `{"id": "dev0", "kind": "rng"}`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
pub struct VmDevice {
    pub id: crate::DeviceId,
    #[serde(flatten)]
    pub kind: VmDeviceKind,
}

/// What a VM's device is. A share shows the tag the guest mounts it by, not where it lives
/// on its node.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum VmDeviceKind {
    Rng,
    PciPassthrough { address: PciAddress },
    Share { tag: ShareTag, read_only: bool },
}

impl fmt::Display for VmDeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmDeviceKind::Rng => f.write_str("entropy device"),
            VmDeviceKind::PciPassthrough { address } => write!(f, "PCI device {address}"),
            VmDeviceKind::Share { tag, read_only } => write!(
                f,
                "shared directory {} ({})",
                tag.as_str(),
                if *read_only { "read-only" } else { "writable" }
            ),
        }
    }
}

/// A PCI address `DDDD:BB:DD.F`: domain (4 hex digits), bus (2), device (00 to 1f) and
/// function (0 to 7); kept in lowercase, the way `/sys/bus/pci/devices` names it.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PciAddress(String);

impl PciAddress {
    pub fn new(s: &str) -> Result<Self, DeviceError> {
        let bad = || DeviceError::PciAddress(s.chars().take(64).collect());
        let b = s.as_bytes();
        let hex = |r: std::ops::Range<usize>| b[r].iter().all(u8::is_ascii_hexdigit);
        if b.len() != 12 || b[4] != b':' || b[7] != b':' || b[10] != b'.' {
            return Err(bad());
        }
        if !(hex(0..4) && hex(5..7) && hex(8..10)) {
            return Err(bad());
        }
        let device = u8::from_str_radix(&s[8..10], 16).map_err(|_| bad())?;
        if device > 0x1f || !(b'0'..=b'7').contains(&b[11]) {
            return Err(bad());
        }
        Ok(PciAddress(s.to_ascii_lowercase()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A share's tag: what the guest names it by when it mounts it. Letters, digits, `_` and `-`,
/// 1 to [`ShareTag::MAX_LEN`] characters (safe in QEMU's option syntax and in a guest's
/// mount command).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ShareTag(String);

impl ShareTag {
    pub const MAX_LEN: usize = 31;

    pub fn new(s: &str) -> Result<Self, DeviceError> {
        let ok = !s.is_empty()
            && s.len() <= Self::MAX_LEN
            && s.bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-');
        if ok {
            Ok(ShareTag(s.to_owned()))
        } else {
            Err(DeviceError::ShareTag(s.chars().take(64).collect()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A directory relative to the node's share root, as a request names it: `/`-separated
/// names, none empty, `.` or `..`; not absolute; no control characters. Where it really
/// leads (symlinks) is checked on the node against the root.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SharePath(String);

impl SharePath {
    pub const MAX_LEN: usize = 1024;

    pub fn new(s: &str) -> Result<Self, DeviceError> {
        let bad = |reason| DeviceError::SharePath {
            path: s.chars().take(128).collect(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("it is empty"));
        }
        if s.len() > Self::MAX_LEN {
            return Err(bad("it is longer than 1024 bytes"));
        }
        if s.starts_with('/') {
            return Err(bad(
                "it must be relative to the node's share root, not absolute",
            ));
        }
        if s.chars().any(char::is_control) {
            return Err(bad("it holds a control character"));
        }
        for part in s.split('/') {
            match part {
                ".." => return Err(bad("'..' would leave the share root")),
                "." | "" => return Err(bad("empty and '.' path components are not allowed")),
                _ => {}
            }
        }
        Ok(SharePath(s.to_owned()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

macro_rules! text_value {
    ($name:ident, $schema_name:literal, $description:literal, $pattern:expr, $max:expr) => {
        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }

        impl FromStr for $name {
            type Err = DeviceError;
            fn from_str(s: &str) -> Result<Self, DeviceError> {
                Self::new(s)
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
                Self::new(&s).map_err(serde::de::Error::custom)
            }
        }

        #[cfg(feature = "schemars")]
        impl schemars::JsonSchema for $name {
            fn schema_name() -> std::borrow::Cow<'static, str> {
                $schema_name.into()
            }

            fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
                schemars::json_schema!({
                    "type": "string",
                    "description": $description,
                    "pattern": $pattern,
                    "minLength": 1,
                    "maxLength": $max,
                })
            }
        }
    };
}

text_value!(
    PciAddress,
    "PciAddress",
    "A host PCI address `DDDD:BB:DD.F` (hex domain, bus, device 00-1f, function 0-7).",
    "^[0-9a-fA-F]{4}:[0-9a-fA-F]{2}:[01][0-9a-fA-F]\\.[0-7]$",
    12
);
text_value!(
    ShareTag,
    "ShareTag",
    "The tag the guest mounts a share by: letters, digits, `_` and `-`.",
    "^[A-Za-z0-9_-]+$",
    31
);
text_value!(
    SharePath,
    "SharePath",
    "A directory relative to the node's share root: `/`-separated names, none empty, `.` or `..`; not absolute.",
    "^[^/\\x00-\\x1f\\x7f][^\\x00-\\x1f\\x7f]*$",
    1024
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pci_addresses() {
        let a = PciAddress::new("0000:01:00.0").unwrap();
        assert_eq!(a.as_str(), "0000:01:00.0");
        assert_eq!(
            PciAddress::new("0000:AF:1F.7").unwrap().as_str(),
            "0000:af:1f.7"
        );
        for bad in [
            "",
            "01:00.0",
            "0000:01:00",
            "0000:01:20.0",
            "0000:01:00.8",
            "0000-01-00.0",
            "000g:01:00.0",
            "0000:01:00.0 ",
            "0000:01:00.0,x-vga=on",
            "../../../0.0",
        ] {
            assert!(PciAddress::new(bad).is_err(), "{bad:?} accepted");
        }
        let v: PciAddress = serde_json::from_str("\"0000:3b:00.1\"").unwrap();
        assert_eq!(serde_json::to_string(&v).unwrap(), "\"0000:3b:00.1\"");
        assert!(serde_json::from_str::<PciAddress>("\"3b:00.1\"").is_err());
    }

    #[test]
    fn a_vm_device_reads_flat_and_round_trips() {
        for (text, want) in [
            (r#"{"id":"dev0","kind":"rng"}"#, VmDeviceKind::Rng),
            (
                r#"{"id":"dev1","kind":"pci-passthrough","address":"0000:3b:00.1"}"#,
                VmDeviceKind::PciPassthrough {
                    address: PciAddress::new("0000:3b:00.1").unwrap(),
                },
            ),
            (
                r#"{"id":"dev2","kind":"share","tag":"data","read_only":true}"#,
                VmDeviceKind::Share {
                    tag: ShareTag::new("data").unwrap(),
                    read_only: true,
                },
            ),
        ] {
            let d: VmDevice = serde_json::from_str(text).unwrap();
            assert_eq!(d.kind, want);
            assert_eq!(serde_json::to_string(&d).unwrap(), text);
        }
        let bad = r#"{"id":"dev0","kind":"share","tag":"a b","read_only":false}"#;
        assert!(serde_json::from_str::<VmDevice>(bad).is_err());
    }

    #[test]
    fn share_tags() {
        for ok in ["data", "a", "my_share-2", &"x".repeat(31)] {
            ShareTag::new(ok).unwrap();
        }
        for bad in ["", "a b", "a,b", "a=b", "a/b", "é", &"x".repeat(32), "a.b"] {
            assert!(ShareTag::new(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn share_paths_stay_relative_and_inside() {
        for ok in ["data", "a/b/c", "with space", "a.b", "..a", "a..", "x,y"] {
            assert_eq!(SharePath::new(ok).unwrap().as_str(), ok);
        }
        for bad in [
            "",
            "/etc",
            "..",
            "../x",
            "a/../../x",
            "a/..",
            ".",
            "./a",
            "a//b",
            "a/",
            "a\0b",
            "a\nb",
        ] {
            assert!(SharePath::new(bad).is_err(), "{bad:?} accepted");
        }
        assert!(SharePath::new(&"a".repeat(1025)).is_err());
        let e = SharePath::new("../x").unwrap_err().to_string();
        assert!(e.contains("leave the share root"), "{e}");
    }

    #[test]
    fn devices_are_a_closed_tagged_set() {
        let rng: Device = serde_json::from_str(r#"{"kind":"rng"}"#).unwrap();
        assert_eq!(rng, Device::Rng {});
        assert_eq!(serde_json::to_string(&rng).unwrap(), r#"{"kind":"rng"}"#);
        let gpu: Device =
            serde_json::from_str(r#"{"kind":"pci-passthrough","address":"0000:01:00.0"}"#).unwrap();
        assert_eq!(
            gpu,
            Device::PciPassthrough {
                address: PciAddress::new("0000:01:00.0").unwrap()
            }
        );
        assert_eq!(
            serde_json::to_string(&gpu).unwrap(),
            r#"{"kind":"pci-passthrough","address":"0000:01:00.0"}"#
        );
        for bad in [
            r#"{"kind":"floppy"}"#,
            r#"{}"#,
            r#"{"kind":"rng","extra":1}"#,
            r#"{"kind":"pci-passthrough"}"#,
            r#"{"kind":"pci-passthrough","address":"1:0.0"}"#,
            r#"{"kind":"pci-passthrough","address":"0000:01:00.0","x":1}"#,
        ] {
            assert!(
                serde_json::from_str::<Device>(bad).is_err(),
                "{bad} accepted"
            );
        }
    }
}
