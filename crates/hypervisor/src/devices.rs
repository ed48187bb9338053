//! [`HostDevices`]: what a node's operator lets its VMs have of the host: a share root whose
//! directories may be shared with guests, and the PCI devices that may be passed through.
//! Nothing is offered by default.

use std::path::PathBuf;

use vmfleet_core::{PciAddress, SharePath};

use crate::HypervisorError;
use crate::backend::{DeviceSpec, VmSpec};

/// The host resources a node offers to its VMs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostDevices {
    /// The directory under which `/vm/fs/add` may share directories; `None`: no shares.
    pub share_root: Option<PathBuf>,
    /// The PCI devices `/vm/device/add` may pass through; empty: none.
    pub passthrough: Vec<PciAddress>,
}

impl HostDevices {
    /// The share root's real path, or a refusal when the node offers no shares.
    fn root(&self) -> Result<PathBuf, HypervisorError> {
        let Some(root) = &self.share_root else {
            return Err(HypervisorError::DeviceRefused(
                "this node offers no shared directories (its operator sets --share-root / \
                 VMFLEET_SHARE_ROOT)"
                    .into(),
            ));
        };
        root.canonicalize().map_err(|e| {
            tracing::error!(root = %root.display(), error = %e, "the share root cannot be used");
            HypervisorError::DeviceRefused(
                "this node's share root cannot be used: ask its operator".into(),
            )
        })
    }

    /// Where `rel` really leads under the share root (symlinks resolved): a directory inside
    /// the root, or a refusal. Messages name `rel`, never the host's own paths.
    pub fn resolve_share(&self, rel: &SharePath) -> Result<PathBuf, HypervisorError> {
        let root = self.root()?;
        let bad = |why: &str| HypervisorError::InvalidSpec(format!("share path {rel}: {why}"));
        let real = match root.join(rel.as_str()).canonicalize() {
            Ok(p) => p,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(bad("no such directory under the share root"));
            }
            Err(_) => return Err(bad("it cannot be read")),
        };
        if !real.starts_with(&root) {
            return Err(bad("it leads outside the share root"));
        }
        if !real.is_dir() {
            return Err(bad("it is not a directory"));
        }
        Ok(real)
    }

    /// Whether `address` is offered for passthrough.
    pub fn check_passthrough(&self, address: &PciAddress) -> Result<(), HypervisorError> {
        if self.passthrough.contains(address) {
            Ok(())
        } else {
            Err(HypervisorError::DeviceRefused(format!(
                "this node does not offer PCI device {address} for passthrough (its operator \
                 lists them in --passthrough-devices / VMFLEET_PASSTHROUGH_DEVICES)"
            )))
        }
    }

    /// Checks a VM's devices again before it boots: each is still offered, and each shared
    /// directory still is what it was when added (no symlink swapped in since, still inside
    /// the root).
    pub fn admit(&self, spec: &VmSpec) -> Result<(), HypervisorError> {
        for d in &spec.devices {
            match &d.device {
                DeviceSpec::Rng => {}
                DeviceSpec::PciPassthrough { address } => self.check_passthrough(address)?,
                DeviceSpec::Share { path, tag, .. } => {
                    let root = self.root()?;
                    let now = path.canonicalize().ok();
                    if now.as_deref() != Some(path.as_path()) || !path.starts_with(&root) {
                        return Err(HypervisorError::DeviceRefused(format!(
                            "the directory shared as {tag} ({}) is gone or now leads \
                             elsewhere: remove it with /vm/device/remove",
                            d.id
                        )));
                    }
                    if !path.is_dir() {
                        return Err(HypervisorError::DeviceRefused(format!(
                            "the directory shared as {tag} ({}) is no longer a directory",
                            d.id
                        )));
                    }
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;

    fn offer(root: &Path) -> HostDevices {
        HostDevices {
            share_root: Some(root.to_owned()),
            passthrough: vec![PciAddress::new("0000:01:00.0").unwrap()],
        }
    }

    #[test]
    fn shares_stay_inside_the_root() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        std::fs::create_dir_all(root.join("a/b")).unwrap();
        std::fs::write(root.join("file"), "x").unwrap();
        std::fs::create_dir_all(t.path().join("outside")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("out")).unwrap();
        std::os::unix::fs::symlink("a/b", root.join("in")).unwrap();
        let host = offer(&root);
        let p = |s: &str| SharePath::new(s).unwrap();
        let real_root = root.canonicalize().unwrap();
        assert_eq!(
            host.resolve_share(&p("a/b")).unwrap(),
            real_root.join("a/b")
        );
        assert_eq!(host.resolve_share(&p("in")).unwrap(), real_root.join("a/b"));
        for (rel, why) in [
            ("out", "outside the share root"),
            ("missing", "no such directory"),
            ("file", "not a directory"),
        ] {
            let e = host.resolve_share(&p(rel)).unwrap_err();
            assert!(
                matches!(e, HypervisorError::InvalidSpec(_)) && e.to_string().contains(why),
                "{rel}: {e}"
            );
            assert!(!e.to_string().contains(t.path().to_str().unwrap()), "{e}");
        }
        let none = HostDevices::default();
        let e = none.resolve_share(&p("a")).unwrap_err();
        assert!(matches!(e, HypervisorError::DeviceRefused(_)), "{e}");
        assert!(
            e.to_string().contains("offers no shared directories"),
            "{e}"
        );
    }

    #[test]
    fn only_offered_pci_devices_pass() {
        let host = offer(Path::new("/nonexistent"));
        host.check_passthrough(&PciAddress::new("0000:01:00.0").unwrap())
            .unwrap();
        let e = host
            .check_passthrough(&PciAddress::new("0000:02:00.0").unwrap())
            .unwrap_err();
        assert!(
            e.to_string()
                .contains("does not offer PCI device 0000:02:00.0")
        );
        assert!(
            HostDevices::default()
                .check_passthrough(&PciAddress::new("0000:01:00.0").unwrap())
                .is_err()
        );
    }
}
