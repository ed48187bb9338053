use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use clap::{Args, ValueEnum};

/// The agent's settings. Each flag also reads the environment variable of seed 000/001 named
/// beside it; a flag given on the command line wins.
#[derive(Debug, Clone, PartialEq, Args)]
pub struct AgentConfig {
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
    fn refusals() {
        let c = parse(&[]);
        assert_eq!(c.validate(), Err(ConfigError::MissingHostKey));
        let c = parse(&["--host-api-key", "k", "--api-url", "ftp://x"]);
        assert!(matches!(c.validate(), Err(ConfigError::BadApiUrl(_))));
    }
}
