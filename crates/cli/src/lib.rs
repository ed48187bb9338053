//! The `vmfleet` command. Each subcommand is a function over parsed arguments, so the
//! integration tests run them in-process.

/// Prints a line to stdout for the operator; a closed stdout (a pipe whose reader left) is not
/// a reason to fail, so write errors are ignored where `println!` would panic.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout(), $($arg)*);
    }};
}

pub mod console;
mod datadir;
mod duration;
pub mod local;
pub mod ops;
pub mod plane;
pub mod remote;
pub mod vm;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

use std::ffi::OsString;

use clap::parser::ValueSource;
use clap::{Args, CommandFactory, FromArgMatches, Parser, Subcommand};
use vmfleet_agent::AgentConfig;

pub use datadir::{DataDir, DataDirError};
pub use plane::{ControlPlane, PlaneOptions};

/// vmfleet: rent out compute as virtual machines and containers.
#[derive(Debug, Parser)]
#[command(name = "vmfleet", version, about, propagate_version = true)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Control plane and a local host agent in one process, SQLite in the data dir: one
    /// machine, one command.
    Up {
        #[command(flatten)]
        plane: PlaneArgs,
        /// Address of the local node's WebSocket API (seed 000, path `/ws`; token in
        /// `DATA_DIR/node.token`).
        #[arg(long, default_value = "127.0.0.1:3030")]
        node_api_listen: SocketAddr,
        /// The directory whose subdirectories the local node's VMs may be given with
        /// /vm/fs/add. Unset: no shares.
        #[arg(long, env = "VMFLEET_SHARE_ROOT")]
        share_root: Option<PathBuf>,
        /// The host PCI devices (DDDD:BB:DD.F, comma-separated) the local node's VMs may be
        /// given with /vm/device/add. Default: none.
        #[arg(long, env = "VMFLEET_PASSTHROUGH_DEVICES", value_delimiter = ',', num_args = 0..)]
        passthrough_devices: Vec<vmfleet_core::PciAddress>,
        /// The most snapshots a VM of the local node may have (each holds its memory and
        /// copies of its disks).
        #[arg(long, env = "VMFLEET_MAX_SNAPSHOTS_PER_VM", default_value_t = vmfleet_hypervisor::DEFAULT_SNAPSHOT_LIMIT)]
        max_snapshots_per_vm: usize,
    },
    /// The control plane alone, for installs with several agents.
    Server(PlaneArgs),
    /// The host agent of one compute node: dials out to the control plane.
    Agent(AgentConfig),
    /// Asks a control plane whether it is up (`GET /health`, `POST /ping`).
    Health {
        /// The control plane's URL.
        #[arg(long, env = "VMFLEET_SERVER", default_value = "http://127.0.0.1:8080")]
        server: String,
    },
    /// Signs in with a wallet (EIP-4361) and keeps the token in the config dir (mode 0600).
    Login {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(flatten)]
        how: ops::LoginArgs,
    },
    /// Forgets the stored login for the server (`--all`: every server's).
    Logout {
        #[command(flatten)]
        remote: remote::Remote,
        #[arg(long)]
        all: bool,
    },
    /// Virtual machines: create, list, drive, console, watch.
    Vm {
        #[command(flatten)]
        remote: remote::Remote,
        /// The owner of the VMs named (an admin's view of one wallet's VMs), or of a new VM.
        #[arg(long, global = true)]
        owner: Option<vmfleet_core::WalletAddress>,
        #[command(subcommand)]
        command: vm::VmCommand,
    },
    /// Compute nodes (admin): add, list, drain, undrain, remove.
    Node {
        #[command(flatten)]
        remote: remote::Remote,
        #[command(subcommand)]
        command: ops::NodeCommand,
    },
    /// Prints a shell completion script (`vmfleet completions bash > /etc/bash_completion.d/vmfleet`).
    Completions { shell: clap_complete::Shell },
}

#[derive(Debug, Clone, Args)]
pub struct PlaneArgs {
    /// Directory for the database, keys and tokens.
    #[arg(long, default_value = "./vmfleet-data")]
    pub data_dir: PathBuf,
    /// Address of the one listener: REST, WebSocket, Socket.IO and the dashboard.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub listen: SocketAddr,
    /// Lifetime of issued tokens, such as `24h`, `30m` or `3600s`.
    #[arg(long, default_value = "24h", value_parser = duration::parse)]
    pub token_ttl: Duration,
    /// The database: `postgres://user:pass@host/db`, or SQLite in the data dir when absent.
    #[arg(long, env = "VMFLEET_DATABASE", hide_env_values = true)]
    pub database: Option<String>,
    /// The host (and port) browsers reach this server by, as wallet sign-in messages name it
    /// (`vmfleet.example.com`); repeatable. The listen address is always accepted.
    #[arg(long, env = "VMFLEET_DOMAIN", value_delimiter = ',')]
    pub domain: Vec<String>,
    /// How the scheduler picks among the nodes with room: `spread` (most free room first) or
    /// `pack` (least free room that fits first).
    #[arg(long, default_value = "spread")]
    pub placement: vmfleet_server::scheduler::Policy,
    /// How long a node has to confirm a workload it was told to start before the scheduler
    /// tries another node.
    #[arg(long, default_value = "60s", value_parser = duration::parse)]
    pub confirm_timeout: Duration,
    /// Requests a minute a standard user may make (seed 002); 0 is no limit.
    #[arg(long, default_value_t = 100)]
    pub rate_limit_standard: u32,
    /// Requests a minute a privileged user may make (seed 002); 0 is no limit.
    #[arg(long, default_value_t = 1000)]
    pub rate_limit_privileged: u32,
    /// Requests a minute an admin token may make; 0 is no limit.
    #[arg(long, default_value_t = 0)]
    pub rate_limit_admin: u32,
    /// Requests a minute each client address may make without a valid token; 0 is no limit.
    #[arg(long, default_value_t = 60)]
    pub rate_limit_anonymous: u32,
    /// Close a WebSocket console when nothing was typed on it for this long (`30m`, `2h`);
    /// `never` keeps it open (a year at most) while its client answers pings.
    #[arg(long, default_value = "30m", value_parser = duration::parse_or_never)]
    pub console_idle_timeout: duration::Limit,
    /// Messages a second each WebSocket client may send (twice that at once); the excess is
    /// dropped with a `RATE_LIMITED` error.
    #[arg(long, default_value_t = 50, value_parser = clap::value_parser!(u32).range(1..))]
    pub ws_messages_per_sec: u32,
    /// While agents send more than 1,000 messages a second and no console is watched, the
    /// `/fleet` thread waits this many milliseconds before it sleeps, so that one wake-up
    /// handles every message of the window: less CPU per heartbeat, for at most this much
    /// added to an agent's message; 0 turns it off.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u64).range(0..=50))]
    pub fleet_batch_ms: u64,
}

#[derive(Debug, thiserror::Error)]
pub enum CliError {
    #[error("the data directory cannot be used")]
    DataDir(#[from] DataDirError),
    #[error("cannot listen on {addr}")]
    Listen {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("the server stopped with an error")]
    Serve(#[source] std::io::Error),
    #[error("the agent's configuration is not valid")]
    AgentConfig(#[from] vmfleet_agent::ConfigError),
    #[error("the async runtime cannot start")]
    Runtime(#[source] std::io::Error),
    #[error(transparent)]
    Client(#[from] vmfleet_client::ClientError),
    #[error("the local agent cannot start: {0}")]
    Local(String),
    #[error("the database cannot be used")]
    Store(#[source] vmfleet_store::StoreError),
    /// The command line asks for something that cannot be done as given (exit code 2).
    #[error("{0}")]
    Usage(String),
    #[error(
        "not signed in to {server} ({why}): run `vmfleet login --server {server}`, or pass --token-file or VMFLEET_TOKEN"
    )]
    NotSignedIn { server: String, why: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    Refused(String),
    #[error("VM {name} is in error: {reason}")]
    VmFailed { name: String, reason: String },
    #[error("{0}")]
    Timeout(String),
    #[error("cannot use {path}")]
    Config {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the terminal cannot be used")]
    Terminal(#[source] std::io::Error),
    /// Ended by a signal (exit code 128 plus its number).
    #[error("{what}: interrupted by signal {signal}")]
    Interrupted { what: String, signal: u8 },
}

impl CliError {
    /// The process's exit code for this error: 2 for a usage error, 128 plus the signal's
    /// number for a signal, 1 for the rest (the API refused, the VM failed, the server is
    /// unreachable).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Usage(_) => 2,
            CliError::Interrupted { signal, .. } => 128u8.saturating_add(*signal),
            _ => 1,
        }
    }
}

/// Why a command line did not parse.
#[derive(Debug, thiserror::Error)]
pub enum ParseError {
    #[error(transparent)]
    Args(#[from] clap::Error),
    #[error("cannot read the config file {path}")]
    ReadConfig {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the config file {path} cannot be used")]
    Config {
        path: PathBuf,
        #[source]
        source: vmfleet_agent::ConfigError,
    },
    #[error("the config file {path} sets {name}, which is not a setting of the agent")]
    UnknownSetting { path: PathBuf, name: String },
}

/// Parses the process's command line, exiting with a message when it does not parse.
pub fn parse() -> Cli {
    match parse_from(std::env::args_os()) {
        Ok(cli) => cli,
        Err(ParseError::Args(e)) => e.exit(),
        Err(e) => {
            eprintln!("vmfleet: {}", error_chain(&e));
            std::process::exit(2);
        }
    }
}

/// Parses a command line. For `agent`, the settings of its `--config` file fill in what
/// neither a flag nor the environment gave.
pub fn parse_from<I, T>(args: I) -> Result<Cli, ParseError>
where
    I: IntoIterator<Item = T>,
    T: Into<OsString> + Clone,
{
    let mut args: Vec<OsString> = args.into_iter().map(Into::into).collect();
    let matches = Cli::command().try_get_matches_from(&args)?;
    let Some(("agent", given)) = matches.subcommand() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let Some(path) = given.get_one::<PathBuf>("config").cloned() else {
        return Ok(Cli::from_arg_matches(&matches)?);
    };
    let text = std::fs::read_to_string(&path).map_err(|source| ParseError::ReadConfig {
        path: path.clone(),
        source,
    })?;
    let settings =
        vmfleet_agent::parse_config_file(&text).map_err(|source| ParseError::Config {
            path: path.clone(),
            source,
        })?;
    let cli = Cli::command();
    let agent = cli
        .get_subcommands()
        .find(|c| c.get_name() == "agent")
        .ok_or_else(|| clap::Error::new(clap::error::ErrorKind::InvalidSubcommand))?;
    for (name, value) in settings {
        let arg = agent
            .get_arguments()
            .filter(|a| a.get_id() != "config")
            .find(|a| a.get_env().is_some_and(|e| e == name.as_str()));
        let (Some(arg), Some(long)) = (arg, arg.and_then(|a| a.get_long())) else {
            return Err(ParseError::UnknownSetting {
                path: path.clone(),
                name,
            });
        };
        let set_already = matches!(
            given.value_source(arg.get_id().as_str()),
            Some(ValueSource::CommandLine | ValueSource::EnvVariable)
        );
        if !set_already {
            args.push(format!("--{long}={value}").into());
        }
    }
    Ok(Cli::try_parse_from(args)?)
}

/// Runs a parsed command line and turns its outcome into an exit code: 0 ok, 1 failure.
pub fn main(cli: Cli) -> ExitCode {
    let level = match &cli.command {
        Command::Agent(cfg) => cfg.log_level.as_str().to_owned(),
        Command::Up { .. } | Command::Server(_) => {
            std::env::var("LOG_LEVEL").unwrap_or_else(|_| "info".into())
        }
        // A client command's own output is what the operator reads.
        _ => std::env::var("LOG_LEVEL").unwrap_or_else(|_| "warn".into()),
    };
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(level));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .init();

    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(CliError::Runtime)
        .and_then(|rt| rt.block_on(run(cli.command)));
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("vmfleet: {}", error_chain(&e));
            ExitCode::from(e.exit_code())
        }
    }
}

/// `error: cause: cause`, the way a person reads it.
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(src) = cur {
        s.push_str(": ");
        s.push_str(&src.to_string());
        cur = src.source();
    }
    s
}

async fn run(command: Command) -> Result<(), CliError> {
    match command {
        Command::Up {
            plane: args,
            node_api_listen,
            share_root,
            passthrough_devices,
            max_snapshots_per_vm,
        } => {
            let plane = ControlPlane::start(PlaneOptions::from(&args)).await?;
            let host = vmfleet_hypervisor::HostDevices {
                share_root,
                passthrough: passthrough_devices,
            };
            let agent = local::start(&plane, node_api_listen, host, max_snapshots_per_vm).await?;
            announce(&plane);
            say!(
                "local node {:?}: node API on ws://{}/ws",
                agent.node_name,
                agent.node_api_addr
            );
            shutdown_signal().await;
            say!("vmfleet: shutting down");
            agent.stop().await;
            plane.stop().await
        }
        Command::Server(args) => {
            let plane = ControlPlane::start(PlaneOptions::from(&args)).await?;
            announce(&plane);
            shutdown_signal().await;
            say!("vmfleet: shutting down");
            plane.stop().await
        }
        Command::Agent(config) => {
            for w in config.validate()? {
                tracing::warn!("{w}");
            }
            let accel: vmfleet_hypervisor::qemu::Accel =
                config.accel.parse().map_err(CliError::Local)?;
            // The node WebSocket API (seed 000), its token in NODE_TOKEN or VM_BASE_PATH/node.token.
            let token = match std::env::var("NODE_TOKEN") {
                Ok(t) if !t.is_empty() => t,
                _ => DataDir::open(&config.vm_base_path)?.secret("node.token")?,
            };
            let (node_api, addr, vmm) = local::start_node_api(
                &config.vm_base_path,
                token,
                config.node_ws_listen,
                accel,
                config.host_devices(),
                config.max_snapshots_per_vm,
            )
            .await?;
            say!("vmfleet agent: node API on ws://{addr}/ws");
            let upstream = agent_upstream(&config).await.with_vms(vmm);
            upstream.run(shutdown_signal()).await;
            node_api.abort();
            say!("vmfleet agent: shutting down");
            Ok(())
        }
        Command::Health { server } => {
            let client = vmfleet_client::Client::new(&server)?;
            client.health().await?;
            let pong = client.ping().await?;
            say!("healthy ({} at {})", pong.message, pong.timestamp);
            Ok(())
        }
        Command::Login { remote, how } => ops::login(&remote, how).await,
        Command::Logout { remote, all } => ops::logout(&remote, all),
        Command::Vm {
            remote,
            owner,
            command,
        } => vm::run(&remote.session()?, owner, command).await,
        Command::Node { remote, command } => ops::node(&remote.session()?, command).await,
        Command::Completions { shell } => {
            let mut out = std::io::stdout();
            clap_complete::generate(shell, &mut Cli::command(), "vmfleet", &mut out);
            Ok(())
        }
    }
}

fn announce(plane: &ControlPlane) {
    say!("vmfleet control plane listening on http://{}", plane.addr());
    say!("dashboard: http://{}/", plane.addr());
    say!(
        "admin token: {}",
        plane.data_dir().admin_token_path().display()
    );
}

/// The agent's connection to the control plane, with Docker when its engine answers.
async fn agent_upstream(config: &AgentConfig) -> vmfleet_agent::upstream::Upstream {
    use vmfleet_hypervisor::docker::{DockerConfig, DockerRuntime};
    let docker = DockerRuntime::new(DockerConfig::new(
        config.docker_socket.clone(),
        config.public_host.clone(),
    ));
    let containers = match docker.ping().await {
        Ok(()) => Some(docker),
        Err(e) => {
            tracing::warn!(error = %e, socket = %config.docker_socket.display(), "no Docker engine: this node takes no container rentals");
            None
        }
    };
    vmfleet_agent::upstream::Upstream::new(
        config.api_url.clone(),
        config.host_api_key.clone().unwrap_or_default(),
        Duration::from_secs(config.heartbeat_secs.max(1)),
        containers,
        vmfleet_agent::host::HostSampler::new(&config.vm_base_path),
    )
    .with_overcommit(vmfleet_agent::host::Overcommit {
        cpu: config.cpu_overcommit,
        memory: config.memory_overcommit,
    })
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term => {},
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn agent(cli: Cli) -> AgentConfig {
        match cli.command {
            Command::Agent(a) => a,
            other => panic!("not the agent: {other:?}"),
        }
    }

    #[test]
    fn rate_limit_flags_default_to_the_seed_and_zero_is_off() {
        use std::num::NonZeroU32;
        let limits = |args: &[&str]| match parse_from(args).unwrap().command {
            Command::Server(a) => PlaneOptions::from(&a).rate_limits,
            other => panic!("not the server: {other:?}"),
        };
        let d = limits(&["vmfleet", "server"]);
        assert_eq!(d, vmfleet_server::ratelimit::RateLimits::default());
        assert_eq!(d.standard, NonZeroU32::new(100));
        assert_eq!(d.privileged, NonZeroU32::new(1000));
        assert_eq!(d.admin, None);
        let l = limits(&[
            "vmfleet",
            "server",
            "--rate-limit-standard",
            "0",
            "--rate-limit-privileged",
            "5000",
            "--rate-limit-admin",
            "10000",
            "--rate-limit-anonymous",
            "0",
        ]);
        assert_eq!(l.standard, None);
        assert_eq!(l.privileged, NonZeroU32::new(5000));
        assert_eq!(l.admin, NonZeroU32::new(10000));
        assert_eq!(l.anonymous, None);
    }

    #[test]
    fn the_agent_config_file_fills_in_what_flags_do_not_say() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("agent.env");
        std::fs::write(
            &file,
            "# node 7\nHOST_API_KEY=from-file\nNODE_NAME=box-7\nCPU_OVERCOMMIT=2\nLOG_LEVEL=debug\n",
        )
        .unwrap();
        let f = file.to_str().unwrap();
        let a =
            agent(parse_from(["vmfleet", "agent", "--config", f, "--node-name", "flag"]).unwrap());
        assert_eq!(a.host_api_key.as_deref(), Some("from-file"));
        assert_eq!(
            a.node_name.as_deref(),
            Some("flag"),
            "a flag wins over the file"
        );
        assert_eq!(a.cpu_overcommit, 2.0);
        assert_eq!(a.log_level, vmfleet_agent::LogLevel::Debug);

        std::fs::write(&file, "NOT_A_SETTING=1\n").unwrap();
        let err = parse_from(["vmfleet", "agent", "--config", f]).unwrap_err();
        assert!(matches!(&err, ParseError::UnknownSetting { name, .. } if name == "NOT_A_SETTING"));
        std::fs::write(&file, "CPU_OVERCOMMIT=lots\n").unwrap();
        assert!(matches!(
            parse_from(["vmfleet", "agent", "--config", f]),
            Err(ParseError::Args(_))
        ));
        assert!(matches!(
            parse_from(["vmfleet", "agent", "--config", "/nonexistent/agent.env"]),
            Err(ParseError::ReadConfig { .. })
        ));
    }
}
