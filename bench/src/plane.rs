//! A real vmfleet for the scenarios that need one end to end: `vmfleet up` (the release
//! build: control plane and its local agent in one process, so `/proc` readings of its pid are
//! the server's own) on loopback, over a data dir inside the scenario's temporary directory, a
//! wallet signed in for real, and VMs created, booted and watched through the public API
//! (REST, `/ws/vms/{name}` and `/ws/vms/{name}/console`).
//!
//! Every guest the agent starts has the data dir in its command line, so the scenario's
//! [`crate::guest::Sweeper`] kills it when the scenario ends, fails or is interrupted (`vmfleet
//! up` itself leaves guests running when it stops, to re-adopt them on its next start).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio_tungstenite::tungstenite::Message;
use vmfleet_auth::siwe::testing::{TestWallet, message};
use vmfleet_core::Timestamp;

use crate::fleet::Server;
use crate::{BenchError, Context, Result};

pub type Ws =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// How long the local node has to come online after `vmfleet up` listens.
const NODE_ONLINE: Duration = Duration::from_secs(60);

/// `vmfleet up` and a wallet signed in to it.
pub struct Plane {
    server: Server,
    pub base: String,
    pub ws_base: String,
    pub data_dir: PathBuf,
    pub http: reqwest::Client,
    pub jwt: String,
    pub owner: String,
    pub command: Vec<String>,
}

/// A VM created through `/vm/create`.
#[derive(Debug, Clone)]
pub struct ApiVm {
    pub id: String,
    pub name: String,
}

impl Plane {
    /// Starts `bin up` over `dir/data` (its log in `dir/vmfleet.log`), waits for its local node
    /// to come online and signs a wallet in. Rate limits are off: the scenarios measure the
    /// paths, not the limiter.
    pub async fn start(bin: &Path, dir: &Path) -> Result<Plane> {
        let data_dir = dir.join("data");
        let command: Vec<String> = [
            bin.display().to_string(),
            "up".into(),
            "--data-dir".into(),
            data_dir.display().to_string(),
            "--listen".into(),
            "127.0.0.1:0".into(),
            "--node-api-listen".into(),
            "127.0.0.1:0".into(),
            "--rate-limit-standard".into(),
            "0".into(),
            "--rate-limit-anonymous".into(),
            "0".into(),
        ]
        .into();
        let log = dir.join("vmfleet.log");
        let server = Server::start(&command, &log)
            .await
            .map_err(|e| BenchError::new(format!("vmfleet up: {e}; its log:\n{}", tail(&log))))?;
        let base = format!("http://{}", server.addr);
        let ws_base = format!("ws://{}", server.addr);
        let http = reqwest::Client::new();
        let admin = std::fs::read_to_string(data_dir.join("admin.token"))
            .context("reading the admin token of vmfleet up")?;
        let deadline = Instant::now() + NODE_ONLINE;
        loop {
            let nodes: Value = http
                .get(format!("{base}/nodes"))
                .bearer_auth(admin.trim())
                .send()
                .await
                .context("GET /nodes")?
                .json()
                .await
                .context("the node list")?;
            let online = nodes.as_array().is_some_and(|a| {
                a.iter().any(|n| {
                    n["status"] == "ONLINE" && n["capacity"]["vcpus"].as_u64().unwrap_or(0) > 0
                })
            });
            if online {
                break;
            }
            if Instant::now() >= deadline {
                return Err(BenchError::new(format!(
                    "the local node of vmfleet up never came online: {nodes}"
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let wallet = TestWallet::from_secret([0x42; 32]).context("a test wallet")?;
        let jwt = sign_in(&http, &base, &server.addr.to_string(), &wallet).await?;
        Ok(Plane {
            server,
            base,
            ws_base,
            data_dir,
            http,
            jwt,
            owner: wallet.address().to_string(),
            command,
        })
    }

    /// The server's pid, for `/proc`.
    pub fn pid(&self) -> u32 {
        self.server.pid
    }

    /// `POST path` with the wallet's token; the answer's JSON, or an error with its status
    /// and body when it is not a 2xx.
    pub async fn post(&self, path: &str, body: Value) -> Result<Value> {
        let r = self
            .http
            .post(format!("{}{path}", self.base))
            .bearer_auth(&self.jwt)
            .json(&body)
            .send()
            .await
            .context(format!("POST {path}"))?;
        let status = r.status();
        let text = r.text().await.context(format!("the answer to {path}"))?;
        if !status.is_success() {
            return Err(BenchError::new(format!("POST {path}: {status}: {text}")));
        }
        serde_json::from_str(&text).context(format!("the answer to {path}: {text}"))
    }

    /// `POST /vm/create` (1 vCPU, 256 MiB, the catalog's default guest).
    pub async fn create_vm(&self, name: &str) -> Result<ApiVm> {
        let r = self
            .post(
                "/vm/create",
                json!({"name": name, "owner": self.owner,
                       "vm_config": {"vcpu_count": 1, "mem_size_mib": 256}}),
            )
            .await?;
        let id = r["vm_id"]
            .as_str()
            .context(format!("a vm_id in the answer to /vm/create: {r}"))?;
        Ok(ApiVm {
            id: id.to_owned(),
            name: name.to_owned(),
        })
    }

    /// `POST /vm/boot`.
    pub async fn boot_vm(&self, vm: &ApiVm) -> Result<()> {
        self.post("/vm/boot", json!({"build_id": vm.id, "owner": self.owner}))
            .await
            .map(|_| ())
    }

    /// `POST /vm/delete` (stops it on its node first).
    pub async fn delete_vm(&self, vm: &ApiVm) -> Result<()> {
        self.post(
            "/vm/delete",
            json!({"build_id": vm.id, "owner": self.owner}),
        )
        .await
        .map(|_| ())
    }

    /// Opens `/ws/vms/{name}{suffix}` and reads its first message: the socket once it says
    /// `connection`; an error naming the code when it says `error` (such as `VM_NOT_RUNNING`).
    pub async fn ws(&self, name: &str, suffix: &str, query: &str) -> Result<Ws> {
        let url = format!(
            "{}/ws/vms/{name}{suffix}?token={}{query}",
            self.ws_base, self.jwt
        );
        // Nagle off, as a browser does: the client adds no delay of its own.
        let (mut ws, _) = tokio_tungstenite::connect_async_with_config(&url, None, true)
            .await
            .context(format!("connecting to /ws/vms/{name}{suffix}"))?;
        let first = tokio::time::timeout(Duration::from_secs(10), ws.next())
            .await
            .map_err(|_| BenchError::new("no first message on the WebSocket within 10 s"))?;
        match first {
            Some(Ok(Message::Text(t))) => {
                let v: Value = serde_json::from_str(t.as_str()).context("a WebSocket message")?;
                if v["type"] == "connection" {
                    Ok(ws)
                } else {
                    Err(BenchError::new(format!(
                        "/ws/vms/{name}{suffix} answered {v}"
                    )))
                }
            }
            other => Err(BenchError::new(format!(
                "/ws/vms/{name}{suffix} ended before its first message: {other:?}"
            ))),
        }
    }

    /// The pid of the QEMU running VM `id`: the one named `vmfleet-<id>`, else the only QEMU
    /// whose files are in this server's data dir (the agent may name its guests otherwise).
    pub fn guest_pid(&self, id: &str) -> Option<u32> {
        let name = format!("vmfleet-{id}");
        let data = self.data_dir.display().to_string();
        let qemus: Vec<(u32, Vec<String>)> = std::fs::read_dir("/proc")
            .ok()?
            .flatten()
            .filter_map(|e| {
                let pid: u32 = e.file_name().to_str()?.parse().ok()?;
                let args = cmdline(pid);
                args.first()?.contains("qemu-system").then_some((pid, args))
            })
            .collect();
        if let Some((pid, _)) = qemus.iter().find(|(_, a)| a.contains(&name)) {
            return Some(*pid);
        }
        let ours: Vec<u32> = qemus
            .iter()
            .filter(|(_, a)| a.iter().any(|x| x.contains(&data)))
            .map(|(p, _)| *p)
            .collect();
        match ours[..] {
            [one] => Some(one),
            _ => None,
        }
    }

    /// SIGTERM (then SIGKILL); how it ended.
    pub async fn stop(self) -> String {
        self.server.stop().await
    }
}

/// Signs `wallet` in through the server's own sign-in (`/auth/nonce`, an EIP-4361 message
/// signed like `personal_sign`, `/auth/login`); its JWT.
pub async fn sign_in(
    http: &reqwest::Client,
    base: &str,
    domain: &str,
    wallet: &TestWallet,
) -> Result<String> {
    let nonce: Value = http
        .get(format!("{base}/auth/nonce"))
        .send()
        .await
        .context("GET /auth/nonce")?
        .json()
        .await
        .context("the nonce")?;
    let nonce = nonce["nonce"]
        .as_str()
        .context(format!("a nonce in {nonce}"))?;
    let text = message(domain, &wallet.address(), nonce, Timestamp::now().as_str());
    let sig = wallet.sign(&text).context("signing")?;
    let r: Value = http
        .post(format!("{base}/auth/login"))
        .json(&json!({"message": text, "signature": sig}))
        .send()
        .await
        .context("POST /auth/login")?
        .json()
        .await
        .context("the login answer")?;
    r["token"]
        .as_str()
        .map(str::to_owned)
        .context(format!("a token in the login answer: {r}"))
}

/// A process's arguments, argv[0] first (empty when it is gone).
pub fn cmdline(pid: u32) -> Vec<String> {
    std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap_or_default()
        .split(|&b| b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// The last lines of a log file.
pub fn tail(path: &Path) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(20)..].join("\n")
}

/// The text of a `console` message, or `None` for any other frame; `Err` when the socket
/// ended or the console said `eof`.
pub fn console_text(
    frame: Option<std::result::Result<Message, impl std::fmt::Display>>,
) -> Result<Option<String>> {
    match frame {
        Some(Ok(Message::Text(t))) => {
            let v: Value = serde_json::from_str(t.as_str()).context("a console message")?;
            if v["type"] != "console" {
                return Ok(None);
            }
            if v["data"]["eof"] == json!(true) {
                return Err(BenchError::new("the console said eof"));
            }
            Ok(Some(v["data"]["content"].as_str().unwrap_or("").to_owned()))
        }
        Some(Ok(_)) => Ok(None),
        Some(Err(e)) => Err(BenchError::new(format!("the console socket failed: {e}"))),
        None => Err(BenchError::new("the console socket closed")),
    }
}

/// The QEMU command line the agent ran for one of its guests (read from `/proc`), to launch
/// the very same guest by hand in another directory: the floor the API paths are measured
/// against.
#[derive(Debug, Clone)]
pub struct Recipe {
    pub qemu: String,
    /// The arguments after the binary, as the agent ran them.
    pub args: Vec<String>,
    /// The guest's directory in them (console and QMP sockets, pid file, root disk).
    pub dir: String,
    /// The `-name` value.
    pub name: String,
    /// The image the root disk is a copy of, and the disk's size.
    pub rootfs: PathBuf,
    pub disk_bytes: u64,
}

impl Recipe {
    /// Reads the command line of the agent's QEMU `pid`; `rootfs` is the catalog image its
    /// root disk was copied from.
    pub fn of_pid(pid: u32, rootfs: &Path) -> Result<Recipe> {
        let mut all = cmdline(pid);
        if all.is_empty() {
            return Err(BenchError::new(format!("QEMU {pid} is gone")));
        }
        let qemu = all.remove(0);
        let sock = all
            .iter()
            .find_map(|a| {
                a.split(',')
                    .find_map(|kv| kv.strip_prefix("path="))
                    .filter(|p| p.ends_with("/console.sock"))
            })
            .context(format!(
                "no console socket in the agent's QEMU command line {all:?}"
            ))?;
        let dir = sock
            .strip_suffix("/console.sock")
            .unwrap_or(sock)
            .to_owned();
        let name = all
            .iter()
            .position(|a| a == "-name")
            .and_then(|i| all.get(i + 1))
            .cloned()
            .context("no -name in the agent's QEMU command line")?;
        let disk_bytes = std::fs::metadata(Path::new(&dir).join("root.disk"))
            .context("the agent's root disk")?
            .len();
        Ok(Recipe {
            qemu,
            args: all,
            dir,
            name,
            rootfs: rootfs.to_owned(),
            disk_bytes,
        })
    }

    /// The same arguments with the files under `dir` and the guest named `name`.
    pub fn args_for(&self, dir: &Path, name: &str) -> Vec<String> {
        let d = dir.display().to_string();
        self.args
            .iter()
            .map(|a| {
                if *a == self.name {
                    name.to_owned()
                } else {
                    a.replace(&self.dir, &d)
                }
            })
            .collect()
    }
}

/// A guest launched by hand from a [`Recipe`], its console socket connected.
pub struct HandGuest {
    pub child: tokio::process::Child,
    pub console: tokio::net::UnixStream,
    pub args: Vec<String>,
    /// Since the launch started: root disk copied, QEMU spawned, console connected.
    pub disk: Duration,
    pub spawned: Duration,
    pub connected: Duration,
}

/// Copies the root disk as the agent's `Vmm::create` does (the image, grown sparse), spawns
/// QEMU with the recipe's arguments for `dir`, and connects to its console socket (QEMU waits
/// for it before starting the guest), trying every millisecond until `deadline`. `t0` is when
/// the caller's clock started. On failure the QEMU, if spawned, is in `spawned_child` for the
/// caller to kill.
pub async fn launch_by_hand(
    recipe: &Recipe,
    dir: &Path,
    name: &str,
    t0: Instant,
    deadline: Instant,
    spawned_child: &mut Option<tokio::process::Child>,
) -> Result<HandGuest> {
    std::fs::create_dir_all(dir).context(format!("creating {}", dir.display()))?;
    let disk_path = dir.join("root.disk");
    std::fs::copy(&recipe.rootfs, &disk_path)
        .context(format!("copying {}", recipe.rootfs.display()))?;
    let f = std::fs::OpenOptions::new()
        .write(true)
        .open(&disk_path)
        .context("opening the root disk")?;
    if f.metadata().context("the root disk's size")?.len() < recipe.disk_bytes {
        f.set_len(recipe.disk_bytes)
            .context("growing the root disk")?;
    }
    drop(f);
    let disk = t0.elapsed();
    let args = recipe.args_for(dir, name);
    let (spawned, console) = crate::boot::spawn_qemu(
        Path::new(&recipe.qemu),
        &args,
        dir,
        spawned_child,
        t0,
        deadline,
    )
    .await?;
    let connected = t0.elapsed();
    let child = spawned_child
        .take()
        .context("the spawned QEMU went missing")?;
    Ok(HandGuest {
        child,
        console,
        args,
        disk,
        spawned,
        connected,
    })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_recipe_moves_the_guest_to_another_directory() {
        let r = Recipe {
            qemu: "qemu-system-x86_64".into(),
            args: [
                "-name",
                "vmfleet-abc",
                "-M",
                "microvm,accel=tcg,acpi=on",
                "-chardev",
                "socket,id=ser0,path=/d/vms/abc/console.sock,server=on,wait=on",
                "-drive",
                "id=disk0,file=/d/vms/abc/root.disk,format=raw",
                "-kernel",
                "/d/images/vmlinux.bin",
            ]
            .map(String::from)
            .to_vec(),
            dir: "/d/vms/abc".into(),
            name: "vmfleet-abc".into(),
            rootfs: PathBuf::from("/d/images/rootfs.ext4"),
            disk_bytes: 1 << 30,
        };
        let a = r.args_for(Path::new("/t/floor"), "vmfleet-floor");
        assert_eq!(a[1], "vmfleet-floor");
        assert_eq!(
            a[5],
            "socket,id=ser0,path=/t/floor/console.sock,server=on,wait=on"
        );
        assert_eq!(a[7], "id=disk0,file=/t/floor/root.disk,format=raw");
        assert_eq!(a[9], "/d/images/vmlinux.bin");
        assert_eq!(crate::console::accel_of(&a), "tcg");
        assert_eq!(crate::console::accel_of(&[]), "unknown");
    }

    #[test]
    fn console_frames_are_read() {
        type E = std::io::Error;
        let text = |s: &str| Some(Ok::<_, E>(Message::text(s.to_owned())));
        assert_eq!(
            console_text(text(r#"{"type":"console","data":{"content":"a"}}"#)).unwrap(),
            Some("a".into())
        );
        assert_eq!(
            console_text(text(r#"{"type":"metrics","data":{}}"#)).unwrap(),
            None
        );
        assert!(
            console_text(text(
                r#"{"type":"console","data":{"content":"","eof":true}}"#
            ))
            .is_err()
        );
        assert!(console_text(None::<std::result::Result<Message, E>>).is_err());
        assert!(console_text(text("{not json")).is_err());
    }
}
