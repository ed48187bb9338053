//! Guest networking: an address pool (IPAM) and TAP devices on a bridge.
//!
//! Each VM gets the lowest free address of the pool, a MAC derived from it (so the same
//! address always pairs with the same MAC), and a TAP device enslaved to the bridge. Addresses
//! are released on delete and never handed out twice.

use std::collections::BTreeSet;
use std::net::Ipv4Addr;
use std::process::Command;

use crate::HypervisorError;

/// An IPv4 pool: a network, its gateway (the bridge's own address, the first host), and the
/// addresses handed out.
#[derive(Debug, Clone)]
pub struct Ipam {
    network: u32,
    prefix: u8,
    used: BTreeSet<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IpamError {
    #[error("{0:?} is not an IPv4 network such as 10.77.0.0/24")]
    BadCidr(String),
    #[error("the address pool {0} is exhausted")]
    Exhausted(String),
    #[error("{0} is not in the pool {1}")]
    OutOfPool(Ipv4Addr, String),
    #[error("{0} is already taken")]
    Taken(Ipv4Addr),
}

impl Ipam {
    /// A pool over `cidr` (`10.77.0.0/24`); prefixes from /16 to /30.
    pub fn new(cidr: &str) -> Result<Self, IpamError> {
        let bad = || IpamError::BadCidr(cidr.to_owned());
        let (addr, prefix) = cidr.split_once('/').ok_or_else(bad)?;
        let addr: Ipv4Addr = addr.parse().map_err(|_| bad())?;
        let prefix: u8 = prefix.parse().map_err(|_| bad())?;
        if !(16..=30).contains(&prefix) {
            return Err(bad());
        }
        let mask = u32::MAX << (32 - prefix);
        let network = u32::from(addr) & mask;
        if network != u32::from(addr) {
            return Err(bad());
        }
        Ok(Ipam {
            network,
            prefix,
            used: BTreeSet::new(),
        })
    }

    fn size(&self) -> u32 {
        1 << (32 - self.prefix)
    }

    pub fn cidr(&self) -> String {
        format!("{}/{}", Ipv4Addr::from(self.network), self.prefix)
    }

    pub fn prefix(&self) -> u8 {
        self.prefix
    }

    /// The bridge's address: the first host of the network.
    pub fn gateway(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.network + 1)
    }

    /// Hands out the lowest free address.
    pub fn allocate(&mut self) -> Result<Ipv4Addr, IpamError> {
        // Skip the network address, the gateway, and the broadcast address.
        let free = (self.network + 2..self.network + self.size() - 1)
            .find(|a| !self.used.contains(a))
            .ok_or_else(|| IpamError::Exhausted(self.cidr()))?;
        self.used.insert(free);
        Ok(Ipv4Addr::from(free))
    }

    /// Marks an address as taken (re-adopting a VM that already has it).
    pub fn claim(&mut self, ip: Ipv4Addr) -> Result<(), IpamError> {
        let a = u32::from(ip);
        if a < self.network + 2 || a >= self.network + self.size() - 1 {
            return Err(IpamError::OutOfPool(ip, self.cidr()));
        }
        if !self.used.insert(a) {
            return Err(IpamError::Taken(ip));
        }
        Ok(())
    }

    pub fn release(&mut self, ip: Ipv4Addr) {
        self.used.remove(&u32::from(ip));
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }
}

/// The MAC a guest with address `ip` gets: QEMU's locally administered prefix and the low
/// three bytes of the address.
pub fn mac_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("52:54:00:{:02x}:{:02x}:{:02x}", o[1], o[2], o[3])
}

/// Where guest networks are made: the bridge, the pool, and the network namespace they live
/// in (`None`: the host's own).
#[derive(Debug, Clone)]
pub struct NetConfig {
    pub bridge: String,
    pub pool: Ipam,
    pub netns: Option<String>,
}

/// Runs `ip` (in `netns` when given) with `args`, returning its stderr on failure.
fn ip(netns: Option<&str>, args: &[&str]) -> Result<(), HypervisorError> {
    let mut cmd = Command::new("ip");
    if let Some(ns) = netns {
        cmd.args(["-n", ns]);
    }
    let out = cmd
        .args(args)
        .output()
        .map_err(|source| HypervisorError::Launch {
            backend: "ip",
            source,
        })?;
    if out.status.success() {
        Ok(())
    } else {
        Err(HypervisorError::Protocol {
            backend: "ip",
            message: format!(
                "ip {}: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr).trim()
            ),
        })
    }
}

fn link_exists(netns: Option<&str>, name: &str) -> bool {
    ip(netns, &["link", "show", "dev", name]).is_ok()
}

/// Whether this process may create TAP devices and bridges (root, or CAP_NET_ADMIN).
pub fn can_manage_taps() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("CapEff:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|hex| u64::from_str_radix(hex, 16).ok())
        })
        // CAP_NET_ADMIN is capability 12.
        .is_some_and(|caps| caps & (1 << 12) != 0)
        && std::path::Path::new("/dev/net/tun").exists()
}

impl NetConfig {
    /// Creates the bridge with the pool's gateway address, if it does not exist.
    pub fn ensure_bridge(&self) -> Result<(), HypervisorError> {
        let ns = self.netns.as_deref();
        if link_exists(ns, &self.bridge) {
            return Ok(());
        }
        ip(ns, &["link", "add", "name", &self.bridge, "type", "bridge"])?;
        let addr = format!("{}/{}", self.pool.gateway(), self.pool.prefix());
        ip(ns, &["addr", "add", &addr, "dev", &self.bridge])?;
        ip(ns, &["link", "set", "dev", &self.bridge, "up"])
    }

    /// Creates TAP device `tap` on the bridge, up.
    pub fn create_tap(&self, tap: &str) -> Result<(), HypervisorError> {
        let ns = self.netns.as_deref();
        ip(ns, &["tuntap", "add", "dev", tap, "mode", "tap"])?;
        ip(ns, &["link", "set", "dev", tap, "master", &self.bridge])?;
        ip(ns, &["link", "set", "dev", tap, "up"])
    }

    /// Removes a TAP device; a missing one is not an error.
    pub fn delete_tap(&self, tap: &str) -> Result<(), HypervisorError> {
        let ns = self.netns.as_deref();
        if !link_exists(ns, tap) {
            return Ok(());
        }
        ip(ns, &["link", "del", "dev", tap])
    }
}

/// The TAP device of the guest with address `ip`: unique while the address is, and within
/// the 15 characters a Linux interface name may have.
pub fn tap_for(ip: Ipv4Addr) -> String {
    let o = ip.octets();
    format!("vmf{:02x}{:02x}{:02x}", o[1], o[2], o[3])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allocates_lowest_free_without_collisions() {
        let mut p = Ipam::new("10.77.0.0/29").unwrap();
        assert_eq!(p.gateway(), Ipv4Addr::new(10, 77, 0, 1));
        let got: Vec<Ipv4Addr> = (0..5).map(|_| p.allocate().unwrap()).collect();
        assert_eq!(got.first(), Some(&Ipv4Addr::new(10, 77, 0, 2)));
        assert_eq!(got.last(), Some(&Ipv4Addr::new(10, 77, 0, 6)));
        assert!(matches!(p.allocate(), Err(IpamError::Exhausted(_))));
        p.release(Ipv4Addr::new(10, 77, 0, 4));
        assert_eq!(p.allocate().unwrap(), Ipv4Addr::new(10, 77, 0, 4));
        assert!(matches!(
            p.claim(Ipv4Addr::new(10, 77, 0, 4)),
            Err(IpamError::Taken(_))
        ));
        assert!(matches!(
            p.claim(Ipv4Addr::new(10, 77, 0, 7)),
            Err(IpamError::OutOfPool(..))
        ));
    }

    #[test]
    fn bad_pools() {
        for c in [
            "10.77.0.0",
            "10.77.0.1/24",
            "10.77.0.0/8",
            "x/24",
            "10.77.0.0/31",
        ] {
            assert!(Ipam::new(c).is_err(), "{c}");
        }
    }

    #[test]
    fn macs_follow_addresses() {
        assert_eq!(mac_for(Ipv4Addr::new(10, 77, 1, 2)), "52:54:00:4d:01:02");
    }
}
