//! The data directory of a control plane: its signing key and the admin token it hands the
//! operator. Secrets are written with mode 0600 in a directory of mode 0700.

use std::fs::{self, OpenOptions};
use std::io::{self, Read, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use vmfleet_auth::JwtKey;

#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("{} cannot be created or read", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("{} does not hold the key it should", path.display())]
    BadKey { path: PathBuf },
}

#[derive(Debug, Clone)]
pub struct DataDir {
    root: PathBuf,
}

const JWT_KEY: &str = "jwt.key";
const ADMIN_TOKEN: &str = "admin.token";

impl DataDir {
    /// Opens `root`, creating it (mode 0700) when missing.
    pub fn open(root: impl Into<PathBuf>) -> Result<Self, DataDirError> {
        let root = root.into();
        if !root.exists() {
            fs::create_dir_all(&root).map_err(io_at(&root))?;
            fs::set_permissions(&root, fs::Permissions::from_mode(0o700)).map_err(io_at(&root))?;
        }
        Ok(DataDir { root })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    pub fn admin_token_path(&self) -> PathBuf {
        self.root.join(ADMIN_TOKEN)
    }

    /// The key tokens are signed with: read from `jwt.key`, or generated and stored there on
    /// first start, so tokens survive restarts.
    pub fn jwt_key(&self) -> Result<JwtKey, DataDirError> {
        let path = self.root.join(JWT_KEY);
        match OpenOptions::new().read(true).open(&path) {
            Ok(mut f) => {
                let mut buf = Vec::new();
                f.read_to_end(&mut buf).map_err(io_at(&path))?;
                let bytes: [u8; 32] = buf
                    .try_into()
                    .map_err(|_| DataDirError::BadKey { path: path.clone() })?;
                Ok(JwtKey::from_bytes(bytes))
            }
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let key = JwtKey::generate();
                write_secret(&path, key.as_bytes())?;
                Ok(key)
            }
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// A secret kept in the data dir under `name`, created (mode 0600) on first use.
    pub fn secret(&self, name: &str) -> Result<String, DataDirError> {
        let path = self.root.join(name);
        match std::fs::read_to_string(&path) {
            Ok(s) if !s.trim().is_empty() => Ok(s.trim().to_owned()),
            Ok(_) => Err(DataDirError::BadKey { path }),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let secret = vmfleet_auth::generate_secret();
                write_secret(&path, format!("{secret}\n").as_bytes())?;
                Ok(secret)
            }
            Err(e) => Err(io_at(&path)(e)),
        }
    }

    /// Whether the data dir holds a file `name`.
    pub fn has(&self, name: &str) -> bool {
        self.root.join(name).is_file()
    }

    /// Writes the operator's admin token, replacing the previous one.
    pub fn write_admin_token(&self, token: &str) -> Result<(), DataDirError> {
        write_secret(&self.admin_token_path(), format!("{token}\n").as_bytes())
    }
}

fn io_at(path: &Path) -> impl Fn(io::Error) -> DataDirError + '_ {
    move |source| DataDirError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Writes `bytes` to `path` atomically, readable by the owner only.
fn write_secret(path: &Path, bytes: &[u8]) -> Result<(), DataDirError> {
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut f = OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .map_err(io_at(&tmp))?;
    f.write_all(bytes).map_err(io_at(&tmp))?;
    f.sync_all().map_err(io_at(&tmp))?;
    fs::rename(&tmp, path).map_err(io_at(path))
}
