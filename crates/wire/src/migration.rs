//! The files a VM takes with it to another node, and the chunks they travel in through the
//! control plane (the `vm_command` operations `export_begin`, `read_chunk`, `import_begin`,
//! `write_chunk`, `import_commit`, ...; see [`crate::fleet::VmOperation`]).
//!
//! A file is named from a closed set ([`VmFile`]), never by a path: each node maps the name
//! to a path inside the VM's own directory. A manifest is checked as a whole
//! ([`MigrationManifest::validate`]) before a node acts on it.

use std::collections::BTreeSet;
use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use crate::fleet_vm::Base64;

/// The most bytes one `read_chunk` answers or one `write_chunk` carries: 512 KiB, about
/// 683 KiB as base64, well under the `/fleet` namespace's 1 MiB message cap.
pub const MAX_CHUNK_BYTES: u64 = 512 * 1024;

/// The most extra disks a migrating VM may have.
pub const MAX_EXTRA_DISKS: usize = 64;

/// The largest file a manifest may list: the largest disk a VM may have.
const MAX_FILE_BYTES: u64 = vmfleet_core::VmResources::MAX_DISK_GIB << 30;

/// A file of a VM that moves with it: the root disk, extra disk `N`, and a snapshot's device
/// state and memory. On the wire: `root`, `diskN`, `snapshot-state`, `snapshot-memory`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum VmFile {
    Root,
    Disk(u16),
    SnapshotState,
    SnapshotMemory,
}

impl fmt::Display for VmFile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            VmFile::Root => f.write_str("root"),
            VmFile::Disk(n) => write!(f, "disk{n}"),
            VmFile::SnapshotState => f.write_str("snapshot-state"),
            VmFile::SnapshotMemory => f.write_str("snapshot-memory"),
        }
    }
}

impl FromStr for VmFile {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let bad =
            || format!("{s:?} is not a VM file (root, diskN, snapshot-state, snapshot-memory)");
        match s {
            "root" => Ok(VmFile::Root),
            "snapshot-state" => Ok(VmFile::SnapshotState),
            "snapshot-memory" => Ok(VmFile::SnapshotMemory),
            _ => {
                let n = s.strip_prefix("disk").ok_or_else(bad)?;
                // Canonical digits only: `disk01` and `disk+1` are not `disk1`.
                if n.is_empty() || n.len() > 5 || (n.len() > 1 && n.starts_with('0')) {
                    return Err(bad());
                }
                if !n.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(bad());
                }
                match n.parse::<u16>() {
                    Ok(i) if usize::from(i) < MAX_EXTRA_DISKS => Ok(VmFile::Disk(i)),
                    _ => Err(bad()),
                }
            }
        }
    }
}

impl Serialize for VmFile {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for VmFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A SHA-256 digest as 64 lowercase hex digits.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Sha256(String);

impl Sha256 {
    pub fn from_digest(bytes: [u8; 32]) -> Self {
        use fmt::Write;
        let mut s = String::with_capacity(64);
        for b in bytes {
            let _ = write!(s, "{b:02x}");
        }
        Sha256(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for Sha256 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for Sha256 {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        if s.len() == 64 && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f')) {
            Ok(Sha256(s.to_owned()))
        } else {
            Err("a SHA-256 digest is 64 lowercase hex digits".to_owned())
        }
    }
}

impl Serialize for Sha256 {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for Sha256 {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = <std::borrow::Cow<'de, str>>::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// One file of a manifest: its size (holes included) and the digest of its whole content:
/// SHA-256 over the offset and bytes of each 64 KiB block that is not all zeros, then the
/// size, so a hole and written zeros count the same (the sparse copy matches its original).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ManifestFile {
    pub file: VmFile,
    pub size: u64,
    /// Bytes outside holes: what the transfer moves at most.
    pub data_bytes: u64,
    pub sha256: Sha256,
}

/// An extra disk of a migrating VM, in order after the root disk.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct ExtraDisk {
    #[serde(default)]
    pub read_only: bool,
}

/// What a VM leaving its node is made of: its size, its disks, whether it ran (and so has a
/// snapshot among its files), and its files.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct MigrationManifest {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    pub disk_size_gib: u64,
    #[serde(default)]
    pub extra_disks: Vec<ExtraDisk>,
    /// The guest ran (it is paused on its node): the files hold its snapshot, and it is
    /// restored running on the target.
    pub running: bool,
    pub files: Vec<ManifestFile>,
}

/// Why a manifest, or a chunk against it, is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ManifestError {
    #[error("the manifest lists {0} twice")]
    Duplicate(VmFile),
    #[error("the manifest lacks {0}")]
    Missing(VmFile),
    #[error("{0} does not belong in this manifest")]
    Unexpected(VmFile),
    #[error("{file} is {size} bytes, more than {max}")]
    TooBig { file: VmFile, size: u64, max: u64 },
    #[error("at most {MAX_EXTRA_DISKS} extra disks move with a VM")]
    TooManyDisks,
    #[error("{0} is not a file of this transfer")]
    NotInManifest(VmFile),
    #[error("a chunk is 1 to {MAX_CHUNK_BYTES} bytes, not {0}")]
    ChunkSize(u64),
    #[error("bytes {offset}..{end} are past the end of {file} ({size} bytes)")]
    PastEnd {
        file: VmFile,
        offset: u64,
        end: u64,
        size: u64,
    },
}

impl MigrationManifest {
    /// The files it must hold: the root disk, one per extra disk, and the snapshot's state
    /// when the VM ran (its memory file is optional: QEMU keeps memory in the state stream).
    /// No other file, none twice, none bigger than a disk may be.
    pub fn validate(&self) -> Result<(), ManifestError> {
        if self.extra_disks.len() > MAX_EXTRA_DISKS {
            return Err(ManifestError::TooManyDisks);
        }
        let mut seen = BTreeSet::new();
        for f in &self.files {
            if !seen.insert(f.file) {
                return Err(ManifestError::Duplicate(f.file));
            }
            let allowed = match f.file {
                VmFile::Root => true,
                VmFile::Disk(n) => usize::from(n) < self.extra_disks.len(),
                VmFile::SnapshotState | VmFile::SnapshotMemory => self.running,
            };
            if !allowed {
                return Err(ManifestError::Unexpected(f.file));
            }
            if f.size > MAX_FILE_BYTES || f.data_bytes > f.size {
                return Err(ManifestError::TooBig {
                    file: f.file,
                    size: f.size.max(f.data_bytes),
                    max: MAX_FILE_BYTES,
                });
            }
        }
        let mut required = vec![VmFile::Root];
        for n in 0..self.extra_disks.len() {
            // Bounded by MAX_EXTRA_DISKS above.
            required.push(VmFile::Disk(u16::try_from(n).unwrap_or(u16::MAX)));
        }
        if self.running {
            required.push(VmFile::SnapshotState);
        }
        match required.into_iter().find(|f| !seen.contains(f)) {
            Some(missing) => Err(ManifestError::Missing(missing)),
            None => Ok(()),
        }
    }

    /// The entry of `file`.
    pub fn file(&self, file: VmFile) -> Result<&ManifestFile, ManifestError> {
        self.files
            .iter()
            .find(|f| f.file == file)
            .ok_or(ManifestError::NotInManifest(file))
    }

    /// Checks that `len` bytes at `offset` of `file` are a chunk of this transfer.
    pub fn check_chunk(&self, file: VmFile, offset: u64, len: u64) -> Result<(), ManifestError> {
        let entry = self.file(file)?;
        if len == 0 || len > MAX_CHUNK_BYTES {
            return Err(ManifestError::ChunkSize(len));
        }
        let end = offset.saturating_add(len);
        if end > entry.size {
            return Err(ManifestError::PastEnd {
                file,
                offset,
                end,
                size: entry.size,
            });
        }
        Ok(())
    }

    /// Bytes outside holes, all files together.
    pub fn data_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.data_bytes).sum()
    }
}

/// The answer to `read_chunk`: the data found at or after the offset asked (holes skipped:
/// `offset` is where `data` starts), and where to ask next (the file's size at its end). An
/// empty `data` means only zeros until `next`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct FileChunk {
    pub file: VmFile,
    pub offset: u64,
    pub data: Base64,
    pub sha256: Sha256,
    pub next: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn digest() -> Sha256 {
        "ab".repeat(32).parse().unwrap()
    }

    fn entry(file: VmFile, size: u64) -> ManifestFile {
        ManifestFile {
            file,
            size,
            data_bytes: size / 2,
            sha256: digest(),
        }
    }

    fn manifest(running: bool, files: Vec<ManifestFile>) -> MigrationManifest {
        MigrationManifest {
            vcpu_count: 1,
            mem_size_mib: 256,
            disk_size_gib: 1,
            extra_disks: vec![ExtraDisk { read_only: false }],
            running,
            files,
        }
    }

    #[test]
    fn file_names_come_from_a_closed_set() {
        for (name, file) in [
            ("root", VmFile::Root),
            ("disk0", VmFile::Disk(0)),
            ("disk63", VmFile::Disk(63)),
            ("snapshot-state", VmFile::SnapshotState),
            ("snapshot-memory", VmFile::SnapshotMemory),
        ] {
            assert_eq!(name.parse::<VmFile>(), Ok(file));
            assert_eq!(serde_json::to_value(file).unwrap(), json!(name));
        }
        for bad in [
            "../root",
            "/etc/passwd",
            "root.disk",
            "disk",
            "disk01",
            "disk+1",
            "disk-1",
            "disk64",
            "disk99999",
            "vm.json",
            "snapshots/x/vmstate",
            "ROOT",
            "",
        ] {
            assert!(bad.parse::<VmFile>().is_err(), "{bad:?}");
            assert!(serde_json::from_value::<VmFile>(json!(bad)).is_err());
        }
    }

    #[test]
    fn a_manifest_holds_exactly_the_files_of_its_vm() {
        let full = |running| {
            let mut files = vec![
                entry(VmFile::Root, 1 << 30),
                entry(VmFile::Disk(0), 1 << 20),
            ];
            if running {
                files.push(entry(VmFile::SnapshotState, 4096));
            }
            manifest(running, files)
        };
        full(true).validate().unwrap();
        full(false).validate().unwrap();

        let mut m = full(false);
        m.files.push(entry(VmFile::SnapshotState, 1));
        assert_eq!(
            m.validate(),
            Err(ManifestError::Unexpected(VmFile::SnapshotState))
        );
        let mut m = full(true);
        m.files.push(entry(VmFile::Disk(1), 1));
        assert_eq!(
            m.validate(),
            Err(ManifestError::Unexpected(VmFile::Disk(1)))
        );
        let mut m = full(true);
        m.files.push(entry(VmFile::Root, 1));
        assert_eq!(m.validate(), Err(ManifestError::Duplicate(VmFile::Root)));
        let mut m = full(true);
        m.files.retain(|f| f.file != VmFile::SnapshotState);
        assert_eq!(
            m.validate(),
            Err(ManifestError::Missing(VmFile::SnapshotState))
        );
        let mut m = full(false);
        m.files.retain(|f| f.file != VmFile::Disk(0));
        assert_eq!(m.validate(), Err(ManifestError::Missing(VmFile::Disk(0))));
        let mut m = full(false);
        m.files[0].size = u64::MAX;
        assert!(matches!(m.validate(), Err(ManifestError::TooBig { .. })));
        let mut m = full(false);
        m.files[0].data_bytes = m.files[0].size + 1;
        assert!(matches!(m.validate(), Err(ManifestError::TooBig { .. })));
        // A file name outside the set never even decodes.
        let mut v = serde_json::to_value(full(false)).unwrap();
        v["files"][0]["file"] = json!("../../etc/shadow");
        assert!(serde_json::from_value::<MigrationManifest>(v).is_err());
    }

    #[test]
    fn chunks_stay_inside_their_file() {
        let m = manifest(
            false,
            vec![entry(VmFile::Root, 1 << 20), entry(VmFile::Disk(0), 10)],
        );
        m.check_chunk(VmFile::Root, 0, MAX_CHUNK_BYTES).unwrap();
        m.check_chunk(VmFile::Root, (1 << 20) - 1, 1).unwrap();
        m.check_chunk(VmFile::Disk(0), 0, 10).unwrap();
        assert!(matches!(
            m.check_chunk(VmFile::Disk(0), 5, 6),
            Err(ManifestError::PastEnd { .. })
        ));
        assert!(matches!(
            m.check_chunk(VmFile::Root, u64::MAX, 1),
            Err(ManifestError::PastEnd { .. })
        ));
        assert_eq!(
            m.check_chunk(VmFile::Root, 0, MAX_CHUNK_BYTES + 1),
            Err(ManifestError::ChunkSize(MAX_CHUNK_BYTES + 1))
        );
        assert_eq!(
            m.check_chunk(VmFile::Root, 0, 0),
            Err(ManifestError::ChunkSize(0))
        );
        assert_eq!(
            m.check_chunk(VmFile::SnapshotState, 0, 1),
            Err(ManifestError::NotInManifest(VmFile::SnapshotState))
        );
    }

    #[test]
    fn digests_are_hex() {
        assert!("AB".repeat(32).parse::<Sha256>().is_err());
        assert!("ab".repeat(31).parse::<Sha256>().is_err());
        assert_eq!(Sha256::from_digest([0xab; 32]), digest());
    }

    #[test]
    fn a_chunk_fits_a_fleet_message() {
        let chunk = FileChunk {
            file: VmFile::Root,
            offset: u64::MAX,
            data: Base64(vec![0xff; MAX_CHUNK_BYTES as usize]),
            sha256: digest(),
            next: u64::MAX,
        };
        let len = serde_json::to_vec(&chunk).unwrap().len();
        assert!(len < 800 * 1024, "{len} bytes");
    }
}
