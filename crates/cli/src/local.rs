//! `vmfleet up`'s own host agent: registered as a node named after the host, connected to
//! the control plane of the same process over loopback, with the node WebSocket API of seed
//! 000 beside it.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio::task::JoinHandle;
use vmfleet_agent::host::HostSampler;
use vmfleet_agent::node_api::NodeApi;
use vmfleet_agent::upstream::Upstream;
use vmfleet_auth::SecretHash;
use vmfleet_hypervisor::docker::{DockerConfig, DockerRuntime};
use vmfleet_hypervisor::qemu::{Accel, QemuBackend, QemuConfig};
use vmfleet_hypervisor::{HostDevices, Hypervisor, ImageCatalog, Vmm};
use vmfleet_store::{Store, StoreError};

use crate::{CliError, ControlPlane};

/// The file holding the local agent's host key.
const AGENT_KEY: &str = "agent.key";
/// The file holding the node WebSocket API's token (`shared/CONTRACT.md`).
const NODE_TOKEN: &str = "node.token";

/// The host's name, as the local node's name.
pub fn hostname() -> String {
    std::fs::read_to_string("/proc/sys/kernel/hostname")
        .or_else(|_| std::fs::read_to_string("/etc/hostname"))
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".to_owned())
}

/// Where `scripts/guest/build-guest-image.sh` caches the guest images.
pub fn image_cache() -> PathBuf {
    if let Some(dir) = std::env::var_os("VMFLEET_IMAGE_CACHE") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/root".into())).join(".cache")
        });
    cache.join("vmfleet/images")
}

/// Puts the cached guest images into the catalog (hard links where possible), as the catalog
/// names them: `vmlinux.bin`, its initrd `vmlinux.bin.initrd`, and `rootfs.ext4`.
fn fill_catalog(catalog: &ImageCatalog) {
    let cache = image_cache();
    for (from, to) in [
        ("vmlinux.bin", "vmlinux.bin"),
        ("initrd.img", "vmlinux.bin.initrd"),
        ("rootfs.ext4", "rootfs.ext4"),
    ] {
        let (src, dest) = (cache.join(from), catalog.root().join(to));
        if dest.exists() {
            continue;
        }
        if !src.is_file() {
            tracing::warn!(image = %src.display(), "guest image missing: run scripts/guest/build-guest-image.sh");
            continue;
        }
        if std::fs::hard_link(&src, &dest).is_err()
            && let Err(e) = std::fs::copy(&src, &dest)
        {
            tracing::warn!(image = %src.display(), error = %e, "cannot copy a guest image into the catalog");
        }
    }
}

/// The node WebSocket API of seed 000 over a QEMU `Vmm` whose files live under `base`
/// (`images/`, filled from the guest image cache, and `instances/`). VMs a previous process
/// left are recovered first. Returns the serving task, the bound address and the hypervisor
/// (the agent's `/fleet` connection drives the same VMs).
pub async fn start_node_api(
    base: &Path,
    token: String,
    listen: SocketAddr,
    accel: Accel,
    host: HostDevices,
    snapshot_limit: usize,
) -> Result<(JoinHandle<()>, SocketAddr, Arc<dyn Hypervisor>), CliError> {
    let catalog =
        ImageCatalog::open(base.join("images")).map_err(|e| CliError::Local(e.to_string()))?;
    fill_catalog(&catalog);
    let vmm = Vmm::new(
        Arc::new(QemuBackend::new(QemuConfig {
            accel,
            ..QemuConfig::default()
        })),
        catalog,
        base.join("instances"),
    )
    .map_err(|e| CliError::Local(e.to_string()))?
    .with_host_devices(host)
    .with_snapshot_limit(snapshot_limit);
    // Guests left running by the previous start are taken back, not booted again.
    let found = vmm.recover().await;
    if !found.is_empty() {
        tracing::info!(vms = found.len(), "found the VMs of the previous start");
    }
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .map_err(|source| CliError::Listen {
            addr: listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| CliError::Listen {
        addr: listen,
        source,
    })?;
    let vmm: Arc<dyn Hypervisor> = Arc::new(vmm);
    Ok((
        tokio::spawn(NodeApi::new(vmm.clone(), token).serve(listener)),
        addr,
        vmm,
    ))
}

/// The local node: its id, and the tasks of its agent.
pub struct LocalAgent {
    pub node_name: String,
    upstream: JoinHandle<()>,
    node_api: JoinHandle<()>,
    stop: tokio::sync::oneshot::Sender<()>,
    pub node_api_addr: SocketAddr,
}

/// Registers the local node (once; its key is kept in the data dir) and starts its agent.
/// `host`: what of this machine its VMs may be given (shared directories, PCI passthrough);
/// `snapshot_limit`: the most snapshots a VM may have.
pub async fn start(
    plane: &ControlPlane,
    node_api_listen: SocketAddr,
    host: HostDevices,
    snapshot_limit: usize,
) -> Result<LocalAgent, CliError> {
    let dir = plane.data_dir();
    let store: &Store = plane.store();
    let fresh = !dir.has(AGENT_KEY);
    let key = dir.secret(AGENT_KEY)?;
    let hash = SecretHash::of(&key);
    let name = match store
        .node_by_key_hash(&hash)
        .await
        .map_err(CliError::Store)?
    {
        Some(node) => node.name,
        None => {
            let mut name = hostname();
            if !fresh {
                tracing::warn!("the local node's key is not registered; registering it again");
            }
            let node = match store.create_node(&name, &hash).await {
                Err(StoreError::Conflict(_)) => {
                    // Another node already has this host's name (a lost key): keep both apart.
                    name = format!("{name}-{}", &vmfleet_core::uuid_v4()[..4]);
                    store.create_node(&name, &hash).await
                }
                other => other,
            }
            .map_err(CliError::Store)?;
            node.name
        }
    };

    let base = dir.root().join("vms");
    let token = dir.secret(NODE_TOKEN)?;
    let (node_api, node_api_addr, vmm) = start_node_api(
        &base,
        token,
        node_api_listen,
        Accel::Auto,
        host,
        snapshot_limit,
    )
    .await?;

    let docker = DockerRuntime::new(DockerConfig::default());
    let containers = match docker.ping().await {
        Ok(()) => Some(docker),
        Err(e) => {
            tracing::info!(error = %e, "no Docker engine: the local node takes no container rentals");
            None
        }
    };
    let upstream = Upstream::new(
        format!("http://{}", plane.addr()),
        key,
        Duration::from_secs(5),
        containers,
        HostSampler::new(&base),
    )
    .with_vms(vmm);
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let upstream = tokio::spawn(async move {
        upstream
            .run(async {
                let _ = stopped.await;
            })
            .await;
    });
    Ok(LocalAgent {
        node_name: name,
        upstream,
        node_api,
        stop,
        node_api_addr,
    })
}

impl LocalAgent {
    /// Stops the agent's connections; guests keep running and are found on the next start.
    pub async fn stop(self) {
        let _ = self.stop.send(());
        let _ = tokio::time::timeout(Duration::from_secs(5), self.upstream).await;
        self.node_api.abort();
    }
}
