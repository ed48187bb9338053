//! `vmfleet login`, `logout` and `node ...` (admin).

use std::io::BufRead as _;
use std::path::PathBuf;

use clap::{Args, Subcommand};
use vmfleet_auth::siwe::Wallet;
use vmfleet_client::Client;
use vmfleet_core::{NodeId, WalletAddress};
use vmfleet_wire::api::{CreateNodeRequest, LoginRequest, LoginResponse, NodeView};

use crate::CliError;
use crate::remote::{
    Credentials, Output, Remote, Session, StoredLogin, print_json, print_table, when,
};

/// How `vmfleet login` signs the sign-in message.
#[derive(Debug, Clone, Args)]
pub struct LoginArgs {
    /// A file holding the wallet's private key (64 hex digits, `0x` optional).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["private_key_env", "address"])]
    pub key_file: Option<PathBuf>,
    /// The name of an environment variable holding the wallet's private key.
    #[arg(long, value_name = "VAR", conflicts_with = "address")]
    pub private_key_env: Option<String>,
    /// Sign elsewhere (a hardware wallet): prints the EIP-4361 message for this address and
    /// reads its `personal_sign` signature (0x and 130 hex digits) from stdin.
    #[arg(long, value_name = "ADDRESS")]
    pub address: Option<WalletAddress>,
}

pub async fn login(remote: &Remote, args: LoginArgs) -> Result<(), CliError> {
    let path = Credentials::path()?;
    let mut creds = Credentials::load(&path)?;
    let server = remote.server(&creds);
    let client = Client::new(&server)?;
    let wallet =
        match (&args.key_file, &args.private_key_env) {
            (Some(file), _) => {
                let text = std::fs::read_to_string(file).map_err(|source| CliError::Config {
                    path: file.clone(),
                    source,
                })?;
                Some(Wallet::from_hex(&text).map_err(|e| {
                    CliError::Usage(format!("the key file {}: {e}", file.display()))
                })?)
            }
            (None, Some(var)) => {
                let text = std::env::var(var).map_err(|_| {
                    CliError::Usage(format!("the environment variable {var} is not set"))
                })?;
                Some(
                    Wallet::from_hex(&text)
                        .map_err(|e| CliError::Usage(format!("the key in {var}: {e}")))?,
                )
            }
            (None, None) => None,
        };
    let answer: LoginResponse = match (wallet, args.address) {
        (Some(w), _) => client.sign_in(&w).await?,
        (None, Some(address)) => {
            let nonce = client.nonce().await?;
            let message = client.sign_in_message(&address, &nonce.nonce);
            eprintln!("Sign this message with the wallet {address} (personal_sign):");
            say!("{message}");
            eprintln!("Then paste the signature (0x...) and press Enter:");
            let mut line = String::new();
            std::io::stdin()
                .lock()
                .read_line(&mut line)
                .map_err(CliError::Terminal)?;
            let signature = line.trim().to_owned();
            if signature.is_empty() {
                return Err(CliError::Usage("no signature was given".into()));
            }
            client.login(&LoginRequest { message, signature }).await?
        }
        (None, None) => {
            return Err(CliError::Usage(
                "vmfleet login needs --key-file, --private-key-env or --address".into(),
            ));
        }
    };
    creds.put(StoredLogin {
        server: server.clone(),
        token: answer.token.clone(),
        address: answer.address.0,
        expires_at: answer.expires_at,
    });
    creds.save(&path)?;
    say!(
        "signed in to {server} as {} until {}; token saved in {}",
        answer.address.0.to_checksum(),
        when(Some(answer.expires_at)),
        path.display()
    );
    Ok(())
}

pub fn logout(remote: &Remote, all: bool) -> Result<(), CliError> {
    let path = Credentials::path()?;
    let mut creds = Credentials::load(&path)?;
    if all {
        let n = creds.logins.len();
        creds.logins.clear();
        creds.save(&path)?;
        say!("forgot {n} login(s)");
        return Ok(());
    }
    let server = remote.server(&creds);
    if creds.remove(&server) {
        creds.save(&path)?;
        say!("logged out of {server}");
    } else {
        say!("not logged in to {server}");
    }
    Ok(())
}

#[derive(Debug, Clone, Subcommand)]
pub enum NodeCommand {
    /// Registers a node; its host key is shown once.
    Add { name: String },
    /// Lists the nodes with their status, capacity and latest heartbeat.
    List,
    /// The node takes no new work; what it runs goes on.
    Drain { node: String },
    /// The node takes new work again.
    Undrain { node: String },
    /// Removes a node that runs nothing.
    Remove { node: String },
}

/// A node by id or name.
async fn resolve(s: &Session, node: &str) -> Result<NodeId, CliError> {
    let nodes = s.client.list_nodes().await?;
    if let Some(n) = nodes
        .iter()
        .find(|n| n.node_id.as_str() == node)
        .or_else(|| nodes.iter().find(|n| n.name == node))
    {
        return Ok(n.node_id.clone());
    }
    Err(CliError::NotFound(format!("node {node} was not found")))
}

pub async fn node(s: &Session, cmd: NodeCommand) -> Result<(), CliError> {
    let shown: NodeView = match cmd {
        NodeCommand::Add { name } => {
            let r = s.client.create_node(&CreateNodeRequest { name }).await?;
            match s.output {
                Output::Json => print_json(&r),
                Output::Table => {
                    say!("node {} registered", r.node_id);
                    say!(
                        "host key (shown once; the agent's HOST_API_KEY): {}",
                        r.host_api_key
                    );
                }
            }
            return Ok(());
        }
        NodeCommand::List => {
            let nodes = s.client.list_nodes().await?;
            match s.output {
                Output::Json => print_json(&nodes),
                Output::Table => print_nodes(&nodes),
            }
            return Ok(());
        }
        NodeCommand::Drain { node } => s.client.drain_node(&resolve(s, &node).await?).await?,
        NodeCommand::Undrain { node } => s.client.undrain_node(&resolve(s, &node).await?).await?,
        NodeCommand::Remove { node } => {
            let r = s.client.remove_node(&resolve(s, &node).await?).await?;
            match s.output {
                Output::Json => print_json(&r),
                Output::Table => say!("{}", r.message),
            }
            return Ok(());
        }
    };
    match s.output {
        Output::Json => print_json(&shown),
        Output::Table => say!(
            "node {} ({}) is {:?}",
            shown.name,
            shown.node_id,
            shown.status
        ),
    }
    Ok(())
}

fn print_nodes(nodes: &[NodeView]) {
    let mut rows = vec![
        [
            "NAME",
            "ID",
            "STATUS",
            "VCPUS",
            "MEMORY",
            "DISK",
            "GPUS",
            "LAST HEARTBEAT",
        ]
        .map(String::from)
        .to_vec(),
    ];
    for n in nodes {
        rows.push(vec![
            n.name.clone(),
            n.node_id.to_string(),
            format!("{:?}", n.status).to_uppercase(),
            n.capacity.vcpus.to_string(),
            format!("{} MiB", n.capacity.memory_mib),
            format!("{} GiB", n.capacity.disk_gib),
            n.capacity.gpus.to_string(),
            when(n.last_heartbeat),
        ]);
    }
    print_table(&rows);
}
