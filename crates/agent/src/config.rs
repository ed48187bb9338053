use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// The agent's settings. Each flag also reads the environment variable of seed 000/001 named
/// beside it, and the config file (`--config`) may set it under that same name. A flag given
/// on the command line wins, then the environment, then the file, then the default.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct AgentConfig {
    /// A settings file: one `NAME=value` per line, NAME being the environment variable of a
    /// setting (`API_URL=https://cp.example.net`); `#` starts a comment.
    #[arg(long, env = "VMFLEET_AGENT_CONFIG")]
    pub config: Option<PathBuf>,

    /// URL of the control plane the agent dials out to (its `/fleet` Socket.IO namespace).
    #[arg(long, env = "API_URL", default_value = "http://127.0.0.1:8080")]
    pub api_url: String,

    /// Base directory for VM files: the image catalog, disks, sockets, the instance table.
    #[arg(long, env = "VM_BASE_PATH", default_value = "/tmp/vmfleet/vms")]
    pub vm_base_path: PathBuf,

    /// Log level.
    #[arg(long, env = "LOG_LEVEL", value_enum, default_value = "info")]
    pub log_level: LogLevel,

    /// The node's host key, issued once by `POST /nodes`. Sent as a Bearer token.
    #[arg(long, env = "HOST_API_KEY", hide_env_values = true)]
    pub host_api_key: Option<String>,

    /// The node's name as the control plane shows it (default: the host name).
    #[arg(long, env = "NODE_NAME")]
    pub node_name: Option<String>,

    /// Address of the node-local WebSocket API of seed 000 (path `/ws`). Loopback unless you
    /// mean to expose it.
    #[arg(long, env = "NODE_WS_LISTEN", default_value = "127.0.0.1:3030")]
    pub node_ws_listen: SocketAddr,

    /// The Docker engine's socket, for rentals' containers (seed 001 `start_instance`).
    #[arg(long, env = "DOCKER_SOCKET", default_value = "/var/run/docker.sock")]
    pub docker_socket: PathBuf,

    /// The host name renters use to reach this node's published ports (`sshHost`).
    #[arg(long, env = "PUBLIC_HOST", default_value = "localhost")]
    pub public_host: String,

    /// How many times its CPUs the node may promise to rentals (1: no overcommit).
    #[arg(long, env = "CPU_OVERCOMMIT", default_value_t = 1.0)]
    pub cpu_overcommit: f64,

    /// How many times its memory the node may promise to rentals (1: no overcommit).
    #[arg(long, env = "MEMORY_OVERCOMMIT", default_value_t = 1.0)]
    pub memory_overcommit: f64,

    /// The accelerator QEMU guests use: kvm, tcg, or auto (KVM when /dev/kvm opens).
    #[arg(long, env = "VMFLEET_ACCEL", default_value = "auto")]
    pub accel: String,

    /// Seconds between heartbeats (seed 001: 5).
    #[arg(long, env = "HEARTBEAT_SECS", default_value_t = 5)]
    pub heartbeat_secs: u64,

    /// The directory whose subdirectories VMs may be given with /vm/fs/add (shared over
    /// virtio-9p; requests name a path relative to it, which must stay inside it). Unset:
    /// this node shares no directories.
    #[arg(long, env = "VMFLEET_SHARE_ROOT")]
    pub share_root: Option<PathBuf>,

    /// The host PCI devices (DDDD:BB:DD.F, comma-separated) VMs may be given with
    /// /vm/device/add (VFIO passthrough; each must be bound to vfio-pci). Default: none.
    #[arg(
        long,
        env = "VMFLEET_PASSTHROUGH_DEVICES",
        value_delimiter = ',',
        num_args = 0..
    )]
    pub passthrough_devices: Vec<vmfleet_core::PciAddress>,

    /// The most snapshots a VM of this node may have (each holds its memory and copies of
    /// its disks); /vm/snapshot refuses more with 409 until one is deleted.
    #[arg(long, env = "VMFLEET_MAX_SNAPSHOTS_PER_VM", default_value_t = vmfleet_hypervisor::DEFAULT_SNAPSHOT_LIMIT)]
    pub max_snapshots_per_vm: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogLevel {
    Error,
    Warn,
    Info,
    Debug,
    Trace,
}

impl LogLevel {
    pub fn as_str(self) -> &'static str {
        match self {
            LogLevel::Error => "error",
            LogLevel::Warn => "warn",
            LogLevel::Info => "info",
            LogLevel::Debug => "debug",
            LogLevel::Trace => "trace",
        }
    }
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ConfigError {
    #[error("API_URL must be an http:// or https:// URL with a host, not {0:?}")]
    BadApiUrl(String),
    #[error("HOST_API_KEY is not set: register the node with POST /nodes and pass its key")]
    MissingHostKey,
    #[error("an overcommit ratio is a number from 0.1 to 16, not {0}")]
    BadOvercommit(f64),
    #[error("line {line} of the config file is not NAME=value")]
    BadConfigLine { line: usize },
}

/// The settings of a config file, in order: `NAME=value` lines, blank lines and `#` comments
/// skipped, optional quotes around the value removed. Which names exist is the caller's
/// question.
pub fn parse_config_file(text: &str) -> Result<Vec<(String, String)>, ConfigError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let line = line.strip_prefix("export ").unwrap_or(line);
        let bad = || ConfigError::BadConfigLine { line: n + 1 };
        let (name, value) = line.split_once('=').ok_or_else(bad)?;
        let name = name.trim();
        let valid_name = !name.is_empty()
            && name
                .bytes()
                .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_');
        if !valid_name {
            return Err(bad());
        }
        let value = value.trim();
        let value = ['"', '\'']
            .iter()
            .find_map(|q| value.strip_prefix(*q).and_then(|v| v.strip_suffix(*q)))
            .unwrap_or(value);
        out.push((name.to_owned(), value.to_owned()));
    }
    Ok(out)
}

/// The scheme and host of an `http(s)://host[:port][/path]` URL.
fn scheme_and_host(url: &str) -> Option<(&str, &str)> {
    let (scheme, rest) = url.split_once("://")?;
    if scheme != "http" && scheme != "https" {
        return None;
    }
    let authority = rest.split(['/', '?', '#']).next()?;
    let host = match authority.strip_prefix('[') {
        Some(v6) => v6.split(']').next()?,
        None => authority.rsplit_once(':').map_or(authority, |(h, _)| h),
    };
    (!host.is_empty()).then_some((scheme, host))
}

fn is_loopback(host: &str) -> bool {
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<IpAddr>().is_ok_and(|ip| ip.is_loopback())
}

impl AgentConfig {
    /// What of the host this node offers its VMs.
    pub fn host_devices(&self) -> vmfleet_hypervisor::HostDevices {
        vmfleet_hypervisor::HostDevices {
            share_root: self.share_root.clone(),
            passthrough: self.passthrough_devices.clone(),
        }
    }

    /// Checks what must hold before the agent starts and returns the warnings to print.
    pub fn validate(&self) -> Result<Vec<String>, ConfigError> {
        let (scheme, host) = scheme_and_host(&self.api_url)
            .ok_or_else(|| ConfigError::BadApiUrl(self.api_url.clone()))?;
        if self.host_api_key.as_deref().is_none_or(str::is_empty) {
            return Err(ConfigError::MissingHostKey);
        }
        for r in [self.cpu_overcommit, self.memory_overcommit] {
            if !(0.1..=16.0).contains(&r) {
                return Err(ConfigError::BadOvercommit(r));
            }
        }
        let mut warnings = Vec::new();
        if scheme == "http" && !is_loopback(host) {
            warnings.push(format!(
                "API_URL {} is plain http to {host}: the host key and every command cross the \
                 network unencrypted; use https:// in production",
                self.api_url
            ));
        }
        if let Some(root) = &self.share_root
            && !root.is_dir()
        {
            warnings.push(format!(
                "the share root {} is not a directory: /vm/fs/add will refuse every share",
                root.display()
            ));
        }
        if !self.node_ws_listen.ip().is_loopback() {
            warnings.push(format!(
                "the node WebSocket API listens on {}, beyond loopback",
                self.node_ws_listen
            ));
        }
        Ok(warnings)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(flatten)]
        agent: AgentConfig,
    }

    fn parse(args: &[&str]) -> AgentConfig {
        let mut argv = vec!["agent"];
        argv.extend_from_slice(args);
        Cli::try_parse_from(argv).unwrap().agent
    }

    #[test]
    fn defaults_and_flags() {
        let c = parse(&["--host-api-key", "k"]);
        assert_eq!(c.node_ws_listen.to_string(), "127.0.0.1:3030");
        assert_eq!(c.log_level, LogLevel::Info);
        assert!(c.validate().unwrap().is_empty());
        let c = parse(&["--host-api-key", "k", "--api-url", "https://cp.example.net"]);
        assert!(c.validate().unwrap().is_empty());
    }

    #[test]
    fn plain_http_beyond_loopback_warns() {
        for url in [
            "http://10.0.0.1:8080",
            "http://cp.example.net/",
            "http://[2001:db8::1]:80",
        ] {
            let c = parse(&["--host-api-key", "k", "--api-url", url]);
            let w = c.validate().unwrap();
            assert_eq!(w.len(), 1, "{url}");
            assert!(w[0].contains("plain http"));
        }
        for url in [
            "http://localhost:8080",
            "http://127.0.0.1",
            "http://[::1]:8080",
        ] {
            let c = parse(&["--host-api-key", "k", "--api-url", url]);
            assert!(c.validate().unwrap().is_empty(), "{url}");
        }
    }

    #[test]
    fn config_files() {
        let text = "# the agent\nAPI_URL=https://cp.example.net\n\n  export NODE_NAME = \"gpu box\"\nHOST_API_KEY='k=v'\n";
        assert_eq!(
            parse_config_file(text).unwrap(),
            vec![
                ("API_URL".into(), "https://cp.example.net".into()),
                ("NODE_NAME".into(), "gpu box".into()),
                ("HOST_API_KEY".into(), "k=v".into()),
            ]
        );
        assert_eq!(
            parse_config_file("API_URL=x\nnot a setting\n"),
            Err(ConfigError::BadConfigLine { line: 2 })
        );
        assert!(parse_config_file("api_url=x").is_err());
    }

    #[test]
    fn devices_on_offer() {
        let c = parse(&["--host-api-key", "k"]);
        assert_eq!(c.host_devices(), vmfleet_hypervisor::HostDevices::default());
        let c = parse(&[
            "--host-api-key",
            "k",
            "--share-root",
            "/",
            "--passthrough-devices",
            "0000:01:00.0,0000:3B:00.1",
        ]);
        let d = c.host_devices();
        assert_eq!(d.share_root.as_deref(), Some(std::path::Path::new("/")));
        let names: Vec<&str> = d.passthrough.iter().map(|a| a.as_str()).collect();
        assert_eq!(names, ["0000:01:00.0", "0000:3b:00.1"]);
        let mut argv = vec!["agent", "--passthrough-devices", "01:00.0"];
        argv.push("--host-api-key");
        argv.push("k");
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn a_snapshot_limit_per_vm() {
        let c = parse(&["--host-api-key", "k"]);
        assert_eq!(
            c.max_snapshots_per_vm,
            vmfleet_hypervisor::DEFAULT_SNAPSHOT_LIMIT
        );
        let c = parse(&["--host-api-key", "k", "--max-snapshots-per-vm", "2"]);
        assert_eq!(c.max_snapshots_per_vm, 2);
        let argv = [
            "agent",
            "--host-api-key",
            "k",
            "--max-snapshots-per-vm",
            "-1",
        ];
        assert!(Cli::try_parse_from(argv).is_err());
    }

    #[test]
    fn refusals() {
        let c = parse(&[]);
        assert_eq!(c.validate(), Err(ConfigError::MissingHostKey));
        let c = parse(&["--host-api-key", "k", "--api-url", "ftp://x"]);
        assert!(matches!(c.validate(), Err(ConfigError::BadApiUrl(_))));
    }
}
