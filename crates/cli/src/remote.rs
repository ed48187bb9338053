//! What every client command shares: which control plane (`--server`, `VMFLEET_SERVER`, the
//! last login), which token (`--token-file`, `VMFLEET_TOKEN`, the stored login), how to print
//! (`--output table|json`), and the stored logins in the user's config dir (mode 0600).

use std::io::Write as _;
use std::os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _, PermissionsExt as _};
use std::path::{Path, PathBuf};

use clap::{Args, ValueEnum};
use serde::{Deserialize, Serialize};
use vmfleet_client::Client;
use vmfleet_core::{Timestamp, WalletAddress};

use crate::CliError;

/// The control plane a client command talks to when nothing names one.
pub const DEFAULT_SERVER: &str = "http://127.0.0.1:8080";

/// Where and as whom a client command talks to a control plane, and how it prints.
#[derive(Debug, Clone, Args)]
pub struct Remote {
    /// The control plane's URL [default: the one logged in to last, else
    /// http://127.0.0.1:8080].
    #[arg(long, env = "VMFLEET_SERVER", global = true)]
    pub server: Option<String>,
    /// Reads the bearer token from this file (such as `vmfleet up`'s DATA_DIR/admin.token)
    /// instead of `VMFLEET_TOKEN` or the stored login.
    #[arg(long, global = true, value_name = "FILE")]
    pub token_file: Option<PathBuf>,
    /// How to print: a table for people, JSON for scripts.
    #[arg(long, short = 'o', value_enum, default_value_t = Output::Table, global = true)]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

/// One sign-in kept in the config dir.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StoredLogin {
    pub server: String,
    pub token: String,
    pub address: WalletAddress,
    /// Unix seconds.
    pub expires_at: i64,
}

/// The config dir's `credentials.json`: the logins, the latest last.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Credentials {
    #[serde(default)]
    pub logins: Vec<StoredLogin>,
}

/// `$XDG_CONFIG_HOME/vmfleet`, else `~/.config/vmfleet`.
pub fn config_dir() -> Result<PathBuf, CliError> {
    if let Some(dir) = std::env::var_os("XDG_CONFIG_HOME").filter(|d| !d.is_empty()) {
        return Ok(PathBuf::from(dir).join("vmfleet"));
    }
    match std::env::var_os("HOME").filter(|h| !h.is_empty()) {
        Some(home) => Ok(PathBuf::from(home).join(".config/vmfleet")),
        None => Err(CliError::Usage(
            "neither XDG_CONFIG_HOME nor HOME is set: there is no config dir for the login".into(),
        )),
    }
}

impl Credentials {
    pub fn path() -> Result<PathBuf, CliError> {
        Ok(config_dir()?.join("credentials.json"))
    }

    /// The stored logins; none when the file does not exist.
    pub fn load(path: &Path) -> Result<Self, CliError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Self::default()),
            Err(source) => {
                return Err(CliError::Config {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        serde_json::from_str(&text).map_err(|e| CliError::Config {
            path: path.to_owned(),
            source: std::io::Error::new(std::io::ErrorKind::InvalidData, e),
        })
    }

    /// Writes the file with mode 0600 in a 0700 directory, replacing it in one step.
    pub fn save(&self, path: &Path) -> Result<(), CliError> {
        let err = |source| CliError::Config {
            path: path.to_owned(),
            source,
        };
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(dir)
            .map_err(err)?;
        let text = serde_json::to_string_pretty(self)
            .map_err(|e| err(std::io::Error::new(std::io::ErrorKind::InvalidData, e)))?;
        let tmp = dir.join(format!(".credentials.{}.tmp", std::process::id()));
        let _ = std::fs::remove_file(&tmp);
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .map_err(err)?;
        f.write_all(text.as_bytes()).map_err(err)?;
        f.sync_all().map_err(err)?;
        drop(f);
        std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o600)).map_err(err)?;
        std::fs::rename(&tmp, path).map_err(err)
    }

    /// The login for `server`, if any.
    pub fn for_server(&self, server: &str) -> Option<&StoredLogin> {
        let server = normalize(server);
        self.logins.iter().rev().find(|l| l.server == server)
    }

    /// Keeps `login` as the latest, replacing the one for the same server.
    pub fn put(&mut self, login: StoredLogin) {
        self.logins.retain(|l| l.server != login.server);
        self.logins.push(login);
    }

    /// Forgets the login for `server`; whether there was one.
    pub fn remove(&mut self, server: &str) -> bool {
        let server = normalize(server);
        let before = self.logins.len();
        self.logins.retain(|l| l.server != server);
        before != self.logins.len()
    }
}

/// A server URL without its trailing slashes, the way logins are keyed.
pub fn normalize(server: &str) -> String {
    server.trim().trim_end_matches('/').to_owned()
}

/// A client command's connection: the client and who it speaks for, when known.
pub struct Session {
    pub client: Client,
    pub server: String,
    /// The wallet the token speaks for: the stored login's, or what a JWT says of itself.
    pub wallet: Option<WalletAddress>,
    pub output: Output,
}

impl Remote {
    /// The server to talk to: `--server`/`VMFLEET_SERVER`, else the latest login's, else the
    /// default.
    pub fn server(&self, creds: &Credentials) -> String {
        match &self.server {
            Some(s) => normalize(s),
            None => creds
                .logins
                .last()
                .map(|l| l.server.clone())
                .unwrap_or_else(|| DEFAULT_SERVER.to_owned()),
        }
    }

    /// Connects with a token: `--token-file`, else `VMFLEET_TOKEN`, else the stored login for
    /// the server. Without any, [`CliError::NotSignedIn`].
    pub fn session(&self) -> Result<Session, CliError> {
        let creds = Credentials::load(&Credentials::path()?)?;
        let server = self.server(&creds);
        let client = Client::new(&server)?;
        let stored = creds.for_server(&server);
        let (token, wallet) = if let Some(path) = &self.token_file {
            let token = std::fs::read_to_string(path).map_err(|source| CliError::Config {
                path: path.clone(),
                source,
            })?;
            (token.trim().to_owned(), None)
        } else if let Some(t) = std::env::var("VMFLEET_TOKEN")
            .ok()
            .filter(|t| !t.trim().is_empty())
        {
            (t.trim().to_owned(), None)
        } else if let Some(login) = stored {
            if login.expires_at <= Timestamp::now().unix_seconds() {
                return Err(CliError::NotSignedIn {
                    server,
                    why: "the stored login has expired".into(),
                });
            }
            (login.token.clone(), Some(login.address))
        } else {
            return Err(CliError::NotSignedIn {
                server,
                why: "no token".into(),
            });
        };
        let wallet =
            wallet.or_else(
                || match vmfleet_auth::unverified_claims(&token).map(|c| c.subject) {
                    Some(vmfleet_auth::Subject::Wallet(w)) => Some(w),
                    _ => None,
                },
            );
        Ok(Session {
            client: client.with_token(token),
            server,
            wallet,
            output: self.output,
        })
    }
}

/// Prints `value` as pretty JSON on stdout.
pub fn print_json<T: Serialize>(value: &T) {
    match serde_json::to_string_pretty(value) {
        Ok(text) => say!("{text}"),
        Err(e) => eprintln!("vmfleet: cannot write JSON: {e}"),
    }
}

/// Prints rows as columns aligned to their widest cell, the first row a header.
pub fn print_table(rows: &[Vec<String>]) {
    let cols = rows.iter().map(Vec::len).max().unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| {
            rows.iter()
                .filter_map(|r| r.get(c))
                .map(|s| s.chars().count())
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in rows {
        let mut line = String::new();
        for (i, cell) in row.iter().enumerate() {
            if i + 1 == row.len() {
                line.push_str(cell);
            } else {
                let pad = widths[i].saturating_sub(cell.chars().count());
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        say!("{}", line.trim_end());
    }
}

/// Unix seconds as RFC 3339, or `-`.
pub fn when(secs: Option<i64>) -> String {
    secs.map(|s| {
        Timestamp::from_unix_millis(s.saturating_mul(1000))
            .as_str()
            .to_owned()
    })
    .unwrap_or_else(|| "-".into())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn login(server: &str, token: &str) -> StoredLogin {
        StoredLogin {
            server: server.into(),
            token: token.into(),
            address: "0x1234567890abcdef1234567890abcdef12345678"
                .parse()
                .unwrap(),
            expires_at: 1,
        }
    }

    #[test]
    fn credentials_are_private_and_keyed_by_server() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("conf/vmfleet/credentials.json");
        let mut c = Credentials::load(&path).unwrap();
        assert!(c.logins.is_empty());
        c.put(login("http://a:1", "t1"));
        c.put(login("http://b:2", "t2"));
        c.put(login("http://a:1", "t3"));
        c.save(&path).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        let mut back = Credentials::load(&path).unwrap();
        assert_eq!(back, c);
        assert_eq!(back.for_server("http://a:1/").unwrap().token, "t3");
        assert_eq!(back.logins.last().unwrap().server, "http://a:1");
        assert!(back.remove("http://b:2"));
        assert!(!back.remove("http://b:2"));
        std::fs::write(&path, "{not json").unwrap();
        assert!(matches!(
            Credentials::load(&path),
            Err(CliError::Config { .. })
        ));
    }
}
