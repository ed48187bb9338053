//! The size of a VM and the bounds every VM must respect, whatever node it lands on.

use serde::{Deserialize, Serialize};

/// vCPUs, memory and disk of a VM (seed 002 `resources`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "schemars", derive(schemars::JsonSchema))]
#[serde(deny_unknown_fields)]
pub struct VmResources {
    pub vcpu_count: u32,
    pub mem_size_mib: u64,
    /// Root disk size in GiB.
    pub disk_size: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResourceError {
    #[error("vcpu_count must be between 1 and {max}, not {got}")]
    VcpuCount { got: u32, max: u32 },
    #[error("mem_size_mib must be between {min} and {max}, not {got}")]
    Memory { got: u64, min: u64, max: u64 },
    #[error("disk_size must be between 1 and {max} GiB, not {got}")]
    Disk { got: u64, max: u64 },
}

impl VmResources {
    pub const MAX_VCPUS: u32 = 256;
    pub const MIN_MEM_MIB: u64 = 64;
    pub const MAX_MEM_MIB: u64 = 4 << 20; // 4 TiB
    pub const MAX_DISK_GIB: u64 = 64 << 10; // 64 TiB

    /// Checks the bounds that hold on every node; whether a given node has room is the
    /// scheduler's and the agent's question.
    pub fn validate(&self) -> Result<(), ResourceError> {
        if self.vcpu_count == 0 || self.vcpu_count > Self::MAX_VCPUS {
            return Err(ResourceError::VcpuCount {
                got: self.vcpu_count,
                max: Self::MAX_VCPUS,
            });
        }
        if !(Self::MIN_MEM_MIB..=Self::MAX_MEM_MIB).contains(&self.mem_size_mib) {
            return Err(ResourceError::Memory {
                got: self.mem_size_mib,
                min: Self::MIN_MEM_MIB,
                max: Self::MAX_MEM_MIB,
            });
        }
        if self.disk_size == 0 || self.disk_size > Self::MAX_DISK_GIB {
            return Err(ResourceError::Disk {
                got: self.disk_size,
                max: Self::MAX_DISK_GIB,
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn r(vcpu_count: u32, mem_size_mib: u64, disk_size: u64) -> VmResources {
        VmResources {
            vcpu_count,
            mem_size_mib,
            disk_size,
        }
    }

    #[test]
    fn bounds() {
        r(2, 2048, 10).validate().unwrap();
        assert_eq!(
            r(0, 2048, 10).validate().unwrap_err().to_string(),
            "vcpu_count must be between 1 and 256, not 0"
        );
        assert!(r(2, 1, 10).validate().is_err());
        assert!(r(2, 2048, 0).validate().is_err());
    }
}
