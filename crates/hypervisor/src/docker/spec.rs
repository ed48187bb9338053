//! What a rental's container is (a [`ContainerSpec`], from seed 001's `start_instance`), how it
//! becomes an Engine API create request, and what the engine reports back ([`ContainerInfo`]).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use vmfleet_core::{ByteSize, ContainerId, GpuIndex, ImageRef, RentalId};
use vmfleet_wire::fleet::{ConnectionInfo, StartInstance};

use super::api;
use crate::HypervisorError;

/// The label that marks a container as vmfleet's; its value is the rental id.
pub const RENTAL_LABEL: &str = "vmfleet.rental";
/// The label holding when the rental ends (unix seconds).
pub const EXPIRES_LABEL: &str = "vmfleet.expires_at";

/// A container's name is this prefix and the rental id, so a rental has at most one.
pub const NAME_PREFIX: &str = "vmfleet-";

/// The port that `sshPort` of the connection info reports.
pub const SSH_PORT: u16 = 22;

/// Everything needed to run one rental's container.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerSpec {
    pub rental_id: RentalId,
    pub image: ImageRef,
    /// CPU cores, possibly fractional: becomes `NanoCpus`.
    pub cpu_cores: f64,
    /// Memory (and memory plus swap): becomes `Memory` and `MemorySwap`.
    pub memory: ByteSize,
    /// Size of the container's writable layer: `StorageOpt.size`, where the storage driver
    /// enforces it; refused otherwise.
    pub disk: Option<ByteSize>,
    /// GPUs handed to the container through the NVIDIA device driver.
    pub gpus: Vec<GpuIndex>,
    pub env: BTreeMap<String, String>,
    /// Container TCP port -> host port (0: the engine picks a free one).
    pub ports: BTreeMap<u16, u16>,
    /// Overrides the image's command.
    pub cmd: Option<Vec<String>>,
    /// Gives the container a terminal (the console is then a raw byte stream).
    pub tty: bool,
    /// Keeps the container's stdin open so the console can write to it.
    pub open_stdin: bool,
    /// When the rental ends (unix seconds), kept as a label so it survives agent restarts.
    pub expires_at: Option<i64>,
}

impl ContainerSpec {
    /// The container seed 001's `start_instance` asks for: the image's own command, no
    /// terminal, no stdin.
    pub fn from_start(req: &StartInstance) -> Self {
        let limits = &req.resource_limits;
        ContainerSpec {
            rental_id: req.rental_id.clone(),
            image: req.image.clone(),
            cpu_cores: limits.cpu_cores,
            memory: limits.ram_limit,
            disk: limits.disk_limit,
            gpus: limits.gpu_indices.clone(),
            env: req.env_vars.clone(),
            ports: req.proxy_port_mapping.clone(),
            cmd: None,
            tty: false,
            open_stdin: false,
            expires_at: req.expires_at,
        }
    }

    pub fn with_cmd<I, S>(mut self, cmd: I) -> Self
    where
        I: IntoIterator<Item = S>,
        S: Into<String>,
    {
        self.cmd = Some(cmd.into_iter().map(Into::into).collect());
        self
    }

    /// A terminal and an open stdin: an interactive console.
    pub fn interactive(mut self) -> Self {
        self.tty = true;
        self.open_stdin = true;
        self
    }

    /// The container's name: `vmfleet-<rentalId>`.
    pub fn name(&self) -> String {
        container_name(&self.rental_id)
    }

    /// `cpu_cores` as Docker's NanoCPUs.
    pub fn nano_cpus(&self) -> Result<i64, HypervisorError> {
        let c = self.cpu_cores;
        if !c.is_finite() || c <= 0.0 || c > 1_000_000.0 {
            return Err(HypervisorError::InvalidSpec(format!(
                "cpuCores must be a positive number of cores, not {c}"
            )));
        }
        // Bounded above, so the product fits an i64.
        let nano = (c * 1e9).round() as i64;
        if nano < 1 {
            return Err(HypervisorError::InvalidSpec(format!(
                "cpuCores {c} is less than one billionth of a core"
            )));
        }
        Ok(nano)
    }

    /// Checks what the engine would otherwise refuse late or misread.
    pub fn validate(&self) -> Result<(), HypervisorError> {
        self.nano_cpus()?;
        i64::try_from(self.memory.as_bytes()).map_err(|_| {
            HypervisorError::InvalidSpec(format!("ramLimit {} is too large", self.memory))
        })?;
        if let Some(d) = self.disk {
            i64::try_from(d.as_bytes())
                .map_err(|_| HypervisorError::InvalidSpec(format!("diskLimit {d} is too large")))?;
        }
        for (k, v) in &self.env {
            if k.is_empty() || k.contains(['=', '\0']) {
                return Err(HypervisorError::InvalidSpec(format!(
                    "environment variable name {k:?} must be non-empty, without '=' or NUL"
                )));
            }
            if v.contains('\0') {
                return Err(HypervisorError::InvalidSpec(format!(
                    "environment variable {k} contains a NUL byte"
                )));
            }
        }
        let mut host_ports = BTreeSet::new();
        for (&container, &host) in &self.ports {
            if container == 0 {
                return Err(HypervisorError::InvalidSpec(
                    "container port 0 cannot be published".to_owned(),
                ));
            }
            if host != 0 && !host_ports.insert(host) {
                return Err(HypervisorError::InvalidSpec(format!(
                    "host port {host} is mapped to more than one container port"
                )));
            }
        }
        if let Some(cmd) = &self.cmd
            && cmd.is_empty()
        {
            return Err(HypervisorError::InvalidSpec(
                "a command override must name a program".to_owned(),
            ));
        }
        Ok(())
    }

    /// The Engine API create request for this spec, ports published on `bind_ip`.
    pub(crate) fn create_body(
        &self,
        bind_ip: IpAddr,
    ) -> Result<api::CreateContainer, HypervisorError> {
        self.validate()?;
        let memory = i64::try_from(self.memory.as_bytes())
            .map_err(|_| HypervisorError::InvalidSpec("ramLimit is too large".to_owned()))?;
        let mut exposed = BTreeMap::new();
        let mut bindings = BTreeMap::new();
        for (&container, &host) in &self.ports {
            let key = format!("{container}/tcp");
            exposed.insert(key.clone(), api::Empty {});
            bindings.insert(
                key,
                vec![api::PortBinding {
                    host_ip: bind_ip.to_string(),
                    host_port: if host == 0 {
                        String::new()
                    } else {
                        host.to_string()
                    },
                }],
            );
        }
        let device_requests = (!self.gpus.is_empty()).then(|| {
            vec![api::DeviceRequest {
                driver: "nvidia".to_owned(),
                device_ids: self.gpus.iter().map(|g| g.as_str().to_owned()).collect(),
                capabilities: vec![vec!["gpu".to_owned()]],
            }]
        });
        let storage_opt = self
            .disk
            .map(|d| BTreeMap::from([("size".to_owned(), d.as_bytes().to_string())]));
        Ok(api::CreateContainer {
            image: self.image.as_str().to_owned(),
            cmd: self.cmd.clone(),
            env: self.env.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            labels: {
                let mut l = BTreeMap::from([(RENTAL_LABEL.to_owned(), self.rental_id.to_string())]);
                if let Some(at) = self.expires_at {
                    l.insert(EXPIRES_LABEL.to_owned(), at.to_string());
                }
                l
            },
            exposed_ports: exposed,
            tty: self.tty,
            open_stdin: self.open_stdin,
            stdin_once: false,
            attach_stdin: false,
            attach_stdout: false,
            attach_stderr: false,
            host_config: api::CreateHostConfig {
                nano_cpus: self.nano_cpus()?,
                memory,
                memory_swap: memory,
                storage_opt,
                device_requests,
                port_bindings: bindings,
            },
        })
    }
}

pub(crate) fn container_name(rental: &RentalId) -> String {
    format!("{NAME_PREFIX}{rental}")
}

/// A container's lifecycle state, as the engine names it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ContainerState {
    Created,
    Running,
    Paused,
    Restarting,
    Removing,
    Exited,
    Dead,
    Other(String),
}

impl ContainerState {
    fn parse(s: &str) -> Self {
        match s {
            "created" => ContainerState::Created,
            "running" => ContainerState::Running,
            "paused" => ContainerState::Paused,
            "restarting" => ContainerState::Restarting,
            "removing" => ContainerState::Removing,
            "exited" => ContainerState::Exited,
            "dead" => ContainerState::Dead,
            other => ContainerState::Other(other.to_owned()),
        }
    }
}

/// A container as the engine reports it.
#[derive(Debug, Clone, PartialEq)]
pub struct ContainerInfo {
    pub id: ContainerId,
    /// Without the leading `/`.
    pub name: String,
    /// From the `vmfleet.rental` label; `None` for a container that is not vmfleet's.
    pub rental_id: Option<RentalId>,
    pub image: String,
    pub state: ContainerState,
    /// The last exit code; meaningful once the container has stopped.
    pub exit_code: i64,
    /// Killed by the kernel for exceeding its memory limit.
    pub oom_killed: bool,
    /// Container TCP port -> host port: the bound port while running, the requested one
    /// otherwise.
    pub ports: BTreeMap<u16, u16>,
    pub tty: bool,
    pub open_stdin: bool,
    /// `HostConfig.NanoCpus` (0: no limit).
    pub nano_cpus: i64,
    /// `HostConfig.Memory` in bytes (0: no limit).
    pub memory_bytes: i64,
    /// When the rental ends (unix seconds), from the `vmfleet.expires_at` label.
    pub expires_at: Option<i64>,
}

impl ContainerInfo {
    pub(crate) fn from_inspect(i: api::Inspect) -> Result<Self, HypervisorError> {
        let id = ContainerId::new(&i.id).map_err(|e| HypervisorError::Protocol {
            backend: "docker",
            message: format!("the engine reports container id {:?}: {e}", i.id),
        })?;
        let labels = i.config.labels.unwrap_or_default();
        let rental_id = labels
            .get(RENTAL_LABEL)
            .and_then(|r| RentalId::new(r.as_str()).ok());
        let expires_at = labels.get(EXPIRES_LABEL).and_then(|a| a.parse().ok());
        let bound = i.network_settings.ports.map(|p| host_ports(&p));
        let ports = match bound {
            Some(p) if !p.is_empty() => p,
            _ => i
                .host_config
                .port_bindings
                .map(|p| host_ports(&p))
                .unwrap_or_default(),
        };
        Ok(ContainerInfo {
            id,
            name: i.name.trim_start_matches('/').to_owned(),
            rental_id,
            image: i.config.image,
            state: ContainerState::parse(&i.state.status),
            exit_code: i.state.exit_code,
            oom_killed: i.state.oom_killed,
            ports,
            tty: i.config.tty,
            open_stdin: i.config.open_stdin,
            nano_cpus: i.host_config.nano_cpus,
            memory_bytes: i.host_config.memory,
            expires_at,
        })
    }

    pub fn is_running(&self) -> bool {
        self.state == ContainerState::Running
    }

    /// Seed 001's connection info: `sshHost` is `public_host`, `sshPort` the host port of
    /// container port 22 (0 when the rental publishes no SSH port), `additionalPorts` the
    /// other published ports.
    pub fn connection_info(&self, public_host: &str) -> ConnectionInfo {
        let mut additional_ports = self.ports.clone();
        let ssh_port = additional_ports.remove(&SSH_PORT).unwrap_or(0);
        ConnectionInfo {
            ssh_host: public_host.to_owned(),
            ssh_port,
            additional_ports,
        }
    }
}

/// TCP container port -> host port, from a port map (the first binding of each port).
fn host_ports(map: &api::PortMap) -> BTreeMap<u16, u16> {
    let mut out = BTreeMap::new();
    for (key, bindings) in map {
        let Some((port, proto)) = key.split_once('/') else {
            continue;
        };
        if proto != "tcp" {
            continue;
        }
        let (Ok(port), Some(bindings)) = (port.parse::<u16>(), bindings) else {
            continue;
        };
        if let Some(host) = bindings
            .iter()
            .find_map(|b| b.host_port.parse::<u16>().ok().filter(|&p| p != 0))
        {
            out.insert(port, host);
        }
    }
    out
}

/// Whether a storage driver enforces `StorageOpt.size`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiskLimitSupport {
    /// btrfs, zfs, devicemapper: always.
    Yes,
    /// overlay2 (or vfs) on xfs: only when the file system is mounted with `pquota`, which the
    /// engine checks when the container is created.
    IfProjectQuota,
    /// Never: the error says which driver and file system.
    No { driver: String, backing_fs: String },
}

impl DiskLimitSupport {
    pub(crate) fn of(info: &api::Info) -> Self {
        let backing_fs = info
            .driver_status
            .iter()
            .flatten()
            .find(|kv| kv.first().map(String::as_str) == Some("Backing Filesystem"))
            .and_then(|kv| kv.get(1))
            .cloned()
            .unwrap_or_else(|| "an unknown file system".to_owned());
        match info.driver.as_str() {
            "btrfs" | "zfs" | "devicemapper" => DiskLimitSupport::Yes,
            "overlay2" | "overlay" | "vfs" if backing_fs == "xfs" => {
                DiskLimitSupport::IfProjectQuota
            }
            driver => DiskLimitSupport::No {
                driver: if driver.is_empty() {
                    "an unknown storage driver".to_owned()
                } else {
                    driver.to_owned()
                },
                backing_fs,
            },
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn start(v: serde_json::Value) -> StartInstance {
        serde_json::from_value(v).unwrap()
    }

    fn seed_example() -> StartInstance {
        start(json!({
            "rentalId": "r-1",
            "image": "pytorch/pytorch:2.0.1-cuda11.7-cudnn8-runtime",
            "resourceLimits": {
                "gpuIndices": ["0", "2"], "cpuCores": 4, "ramLimit": "16g", "diskLimit": "100g"
            },
            "envVars": { "JUPYTER_TOKEN": "xyz123" },
            "proxyPortMapping": { "22": 10022, "8888": 10888 }
        }))
    }

    #[test]
    fn create_body_carries_every_limit() {
        let spec = ContainerSpec::from_start(&seed_example());
        assert_eq!(spec.name(), "vmfleet-r-1");
        let body = spec.create_body("127.0.0.1".parse().unwrap()).unwrap();
        let v = serde_json::to_value(&body).unwrap();
        assert_eq!(v["Image"], "pytorch/pytorch:2.0.1-cuda11.7-cudnn8-runtime");
        assert_eq!(v["HostConfig"]["NanoCpus"], 4_000_000_000i64);
        assert!(v["HostConfig"].get("CpuCount").is_none());
        assert_eq!(v["HostConfig"]["Memory"], 16i64 << 30);
        assert_eq!(v["HostConfig"]["MemorySwap"], 16i64 << 30);
        assert_eq!(
            v["HostConfig"]["StorageOpt"],
            json!({"size": (100u64 << 30).to_string()})
        );
        assert_eq!(
            v["HostConfig"]["DeviceRequests"],
            json!([{"Driver": "nvidia", "DeviceIDs": ["0", "2"], "Capabilities": [["gpu"]]}])
        );
        assert_eq!(
            v["HostConfig"]["PortBindings"],
            json!({
                "22/tcp": [{"HostIp": "127.0.0.1", "HostPort": "10022"}],
                "8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": "10888"}]
            })
        );
        assert_eq!(v["ExposedPorts"], json!({"22/tcp": {}, "8888/tcp": {}}));
        assert_eq!(v["Env"], json!(["JUPYTER_TOKEN=xyz123"]));
        assert_eq!(v["Labels"], json!({"vmfleet.rental": "r-1"}));
        assert!(v.get("Cmd").is_none());
    }

    #[test]
    fn no_gpus_no_disk_means_no_device_requests_nor_storage_opt() {
        let spec = ContainerSpec::from_start(&start(json!({
            "rentalId": "r-2", "image": "busybox",
            "resourceLimits": { "cpuCores": 0.5, "ramLimit": "64m" }
        })));
        let v =
            serde_json::to_value(spec.create_body("10.0.0.1".parse().unwrap()).unwrap()).unwrap();
        assert_eq!(v["HostConfig"]["NanoCpus"], 500_000_000i64);
        assert_eq!(v["HostConfig"]["Memory"], 64i64 << 20);
        assert!(v["HostConfig"].get("DeviceRequests").is_none());
        assert!(v["HostConfig"].get("StorageOpt").is_none());
        assert_eq!(v["HostConfig"]["PortBindings"], json!({}));
    }

    #[test]
    fn bad_specs_are_refused_before_the_engine() {
        let base = ContainerSpec::from_start(&seed_example());
        for cores in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e-12] {
            let s = ContainerSpec {
                cpu_cores: cores,
                ..base.clone()
            };
            assert!(
                matches!(s.validate(), Err(HypervisorError::InvalidSpec(_))),
                "{cores}"
            );
        }
        let mut s = base.clone();
        s.env.insert("A=B".to_owned(), "x".to_owned());
        assert!(matches!(s.validate(), Err(HypervisorError::InvalidSpec(_))));
        let mut s = base.clone();
        s.ports.insert(9999, 10022);
        assert!(matches!(s.validate(), Err(HypervisorError::InvalidSpec(_))));
        let mut s = base.clone();
        s.ports.insert(0, 1);
        assert!(matches!(s.validate(), Err(HypervisorError::InvalidSpec(_))));
        let s = base.with_cmd(Vec::<String>::new());
        assert!(matches!(s.validate(), Err(HypervisorError::InvalidSpec(_))));
    }

    #[test]
    fn disk_limit_support_by_driver() {
        let info = |driver: &str, fs: &str| api::Info {
            driver: driver.to_owned(),
            driver_status: Some(vec![vec!["Backing Filesystem".to_owned(), fs.to_owned()]]),
        };
        assert_eq!(
            DiskLimitSupport::of(&info("overlay2", "extfs")),
            DiskLimitSupport::No {
                driver: "overlay2".to_owned(),
                backing_fs: "extfs".to_owned()
            }
        );
        assert_eq!(
            DiskLimitSupport::of(&info("overlay2", "xfs")),
            DiskLimitSupport::IfProjectQuota
        );
        assert_eq!(
            DiskLimitSupport::of(&info("btrfs", "btrfs")),
            DiskLimitSupport::Yes
        );
        assert_eq!(
            DiskLimitSupport::of(&info("zfs", "zfs")),
            DiskLimitSupport::Yes
        );
        assert!(matches!(
            DiskLimitSupport::of(&info("vfs", "extfs")),
            DiskLimitSupport::No { .. }
        ));
    }

    #[test]
    fn info_from_inspect_prefers_bound_ports_and_splits_ssh() {
        let i: api::Inspect = serde_json::from_value(json!({
            "Id": "abc123", "Name": "/vmfleet-r-1",
            "State": {"Status": "running", "Running": true, "ExitCode": 0},
            "Config": {"Image": "img", "Labels": {"vmfleet.rental": "r-1"}, "Tty": false},
            "HostConfig": {"NanoCpus": 500000000, "Memory": 67108864,
                "PortBindings": {"22/tcp": [{"HostIp": "127.0.0.1", "HostPort": ""}]}},
            "NetworkSettings": {"Ports": {
                "22/tcp": [{"HostIp": "127.0.0.1", "HostPort": "32768"}],
                "8888/tcp": [{"HostIp": "127.0.0.1", "HostPort": "10888"}],
                "53/udp": null
            }}
        }))
        .unwrap();
        let info = ContainerInfo::from_inspect(i).unwrap();
        assert_eq!(info.name, "vmfleet-r-1");
        assert_eq!(info.rental_id.as_ref().map(|r| r.as_str()), Some("r-1"));
        assert!(info.is_running());
        let ci = info.connection_info("proxy.example.com");
        assert_eq!(ci.ssh_host, "proxy.example.com");
        assert_eq!(ci.ssh_port, 32768);
        assert_eq!(ci.additional_ports, BTreeMap::from([(8888, 10888)]));
    }
}
