//! Guest networking for real: a bridge and TAP devices inside a network namespace this test
//! creates, addresses from the IPAM pool, traffic both ways between the guest and the bridge,
//! and everything given back on delete. No packet leaves the namespace.

#![allow(clippy::unwrap_used)]

use std::net::{IpAddr, Ipv4Addr};
use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use vmfleet_core::VmId;
use vmfleet_hypervisor::net::{Ipam, NetConfig, tap_for};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{CreateVm, Hypervisor, Vmm};
use vmfleet_tests::{ConsoleWatch, guest_catalog, token};

/// A network namespace that is deleted when dropped.
struct Netns(String);

impl Netns {
    fn new() -> Self {
        let name = format!("vmf-test-{}", token());
        let out = Command::new("ip")
            .args(["netns", "add", &name])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs root to create a network namespace: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Netns(name)
    }

    fn run(&self, args: &[&str]) -> std::process::Output {
        Command::new("ip")
            .args(["netns", "exec", &self.0])
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).status();
    }
}

fn spec(id: &str) -> CreateVm {
    vmfleet_tests::test_vm(id)
}

#[tokio::test(flavor = "multi_thread")]
async fn guests_get_a_tap_an_address_and_traffic() {
    let ns = Netns::new();
    let dir = tempfile::tempdir().unwrap();
    let _guests = vmfleet_tests::KillOnDrop(dir.path().to_owned());
    let backend = QemuBackend::new(QemuConfig {
        accel: Accel::Tcg,
        netns: Some(ns.0.clone()),
        ..QemuConfig::default()
    });
    let vmm = Vmm::new(
        Arc::new(backend),
        guest_catalog(&dir.path().join("images")),
        dir.path().join("vms"),
    )
    .unwrap()
    .with_network(NetConfig {
        bridge: "vmfbr0".into(),
        pool: Ipam::new("10.77.0.0/24").unwrap(),
        netns: Some(ns.0.clone()),
    })
    .unwrap();

    let a = vmm.create(spec("vm-net-a")).await.unwrap();
    let b = vmm.create(spec("vm-net-b")).await.unwrap();
    let ip_a = Ipv4Addr::new(10, 77, 0, 2);
    assert_eq!(a.ip_address, Some(IpAddr::V4(ip_a)));
    assert_eq!(b.ip_address, Some(IpAddr::V4(Ipv4Addr::new(10, 77, 0, 3))));
    assert!(
        ns.run(&["ip", "link", "show", &tap_for(ip_a)])
            .status
            .success()
    );

    let id = VmId::new("vm-net-a").unwrap();
    vmm.boot(&id).await.unwrap();
    let console = vmm.console(&id).await.unwrap();
    let mut watch = ConsoleWatch::new(&console);
    watch
        .wait_for("vmfleet-guest ready", Duration::from_secs(90))
        .await;
    // Guest -> bridge.
    console
        .write(b"ping -c 1 -W 5 10.77.0.1 >/dev/null && echo ping-ok-$((1+1))\n")
        .await
        .unwrap();
    watch.wait_for("ping-ok-2", Duration::from_secs(30)).await;
    // Bridge -> guest.
    // busybox-static (installed by the test script) brings ping.
    let out = ns.run(&["busybox", "ping", "-c", "1", "-W", "5", "10.77.0.2"]);
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let m = vmm.metrics(&id).await.unwrap();
    assert!(
        m.net_rx_packets.unwrap() > 0 && m.net_tx_packets.unwrap() > 0,
        "{m:?}"
    );

    // Delete gives the address and the TAP back; the next VM gets the address again.
    vmm.delete(&id).await.unwrap();
    assert!(
        !ns.run(&["ip", "link", "show", &tap_for(ip_a)])
            .status
            .success()
    );
    let c = vmm.create(spec("vm-net-c")).await.unwrap();
    assert_eq!(c.ip_address, Some(IpAddr::V4(ip_a)));
    vmm.delete(&VmId::new("vm-net-b").unwrap()).await.unwrap();
    vmm.delete(&VmId::new("vm-net-c").unwrap()).await.unwrap();
}
