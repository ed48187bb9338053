//! The `vmfleet` CLI end to end, as an operator runs it: the real binary against a real
//! control plane with its local agent and one QEMU guest. Sign-in three ways (key file,
//! environment, a signature pasted from elsewhere), `vm create --wait`, the console driven
//! through a pseudo-terminal (raw mode on while attached, the terminal as it was after
//! Ctrl-]), suspend/resume over the WebSocket, watch, JSON output parsed, nodes as the admin,
//! and the exit codes scripts rely on.

#![allow(clippy::unwrap_used)]

use std::io::{Read as _, Write as _};
use std::os::fd::OwnedFd;
use std::os::unix::fs::PermissionsExt as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rustix::termios::{LocalModes, tcgetattr};
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _};
use vmfleet_auth::siwe::Wallet;
use vmfleet_core::VmState;
use vmfleet_tests::{KillOnDrop, token, vmfleet_bin};
use vmfleet_wire::api::{CreateNodeResponse, NodeState, NodeView, VmInfo};
use vmfleet_wire::ws::{WsBody, WsMessage};

/// Hardhat's well-known account #0.
const KEY: &str = "ac0974bec39a17e36ba4a6b4d238ff944bacb478cbed5efcae784d7bf4f2ff80";

struct Cli {
    base: String,
    config: PathBuf,
}

impl Cli {
    fn command(&self, args: &[&str]) -> tokio::process::Command {
        let mut c = tokio::process::Command::new(vmfleet_bin());
        c.args(args)
            .env("VMFLEET_SERVER", &self.base)
            .env("XDG_CONFIG_HOME", &self.config)
            .env_remove("VMFLEET_TOKEN")
            .kill_on_drop(true);
        c
    }

    async fn run(&self, args: &[&str]) -> Output {
        self.command(args).output().await.unwrap()
    }

    /// Runs and expects exit code 0; stdout.
    async fn ok(&self, args: &[&str]) -> String {
        let out = self.run(args).await;
        assert_eq!(
            out.status.code(),
            Some(0),
            "vmfleet {args:?}: {}",
            show(&out)
        );
        String::from_utf8(out.stdout).unwrap()
    }

    /// Runs and expects exit code `code`; stderr.
    async fn fails(&self, args: &[&str], code: i32) -> String {
        self.fails_with(self.command(args), args, code).await
    }

    async fn fails_with(
        &self,
        mut cmd: tokio::process::Command,
        args: &[&str],
        code: i32,
    ) -> String {
        let out = cmd.output().await.unwrap();
        assert_eq!(
            out.status.code(),
            Some(code),
            "vmfleet {args:?}: {}",
            show(&out)
        );
        String::from_utf8(out.stderr).unwrap()
    }
}

fn show(out: &Output) -> String {
    format!(
        "exit {:?}\nstdout: {}\nstderr: {}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn the_cli_drives_a_real_guest() {
    let dir = tempfile::tempdir().unwrap();
    let _guests = KillOnDrop(dir.path().to_owned());
    let (plane, agent, base, _admin) = vmfleet_tests::plane_with_local_node(dir.path()).await;
    let cli = Cli {
        base: base.clone(),
        config: dir.path().join("config"),
    };
    let admin_file = plane.data_dir().admin_token_path();
    let admin_file = admin_file.to_str().unwrap();

    // Usage errors are 2; the completions are a script.
    assert!(cli.ok(&["completions", "bash"]).await.contains("vmfleet"));
    cli.fails(&["vm"], 2).await;
    cli.fails(&["vm", "create"], 2).await;
    cli.fails(&["vm", "list", "--output", "yaml"], 2).await;
    // Not signed in: 1, saying what to do.
    let e = cli.fails(&["vm", "list"], 1).await;
    assert!(e.contains("vmfleet login"), "{e}");

    // Sign in with a key file: the token is kept in the config dir, mode 0600.
    let key_file = dir.path().join("wallet.key");
    std::fs::write(&key_file, format!("0x{KEY}\n")).unwrap();
    let wallet = Wallet::from_hex(KEY).unwrap();
    let me = wallet.address().to_checksum();
    let out = cli
        .ok(&["login", "--key-file", key_file.to_str().unwrap()])
        .await;
    assert!(out.contains(&me), "{out}");
    let creds = cli.config.join("vmfleet/credentials.json");
    let mode = std::fs::metadata(&creds).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600);
    assert!(std::fs::read_to_string(&creds).unwrap().contains(&base));
    // ... or from the environment, or by pasting a signature made elsewhere.
    let mut env_login = cli.command(&["login", "--private-key-env", "MY_KEY", "--server", &base]);
    env_login.env("MY_KEY", KEY);
    let out = env_login.output().await.unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    paste_a_signature(&cli, &wallet).await;
    let e = cli.fails(&["login", "--key-file", admin_file], 2).await;
    assert!(e.contains("private key"), "{e}");

    // Create and boot with --wait: the answer is the running VM, as JSON.
    let out = cli
        .ok(&[
            "vm", "create", "web", "--vcpus", "1", "--memory", "256", "--wait", "-o", "json",
        ])
        .await;
    let web: VmInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(
        (web.name.as_str(), web.state),
        ("web", VmState::Running),
        "{out}"
    );
    assert_eq!(web.owner, wallet.address());
    let vms: Vec<VmInfo> =
        serde_json::from_str(&cli.ok(&["vm", "list", "-o", "json"]).await).unwrap();
    assert_eq!(vms.len(), 1);
    assert_eq!(vms[0].build_id, web.build_id);
    let by_id: VmInfo = serde_json::from_str(
        &cli.ok(&["vm", "info", web.build_id.as_str(), "-o", "json"])
            .await,
    )
    .unwrap();
    assert_eq!(by_id.name, web.name);
    let table = cli.ok(&["vm", "list"]).await;
    assert!(
        table.starts_with("NAME") && table.contains("web") && table.contains("running"),
        "{table}"
    );

    // The console through a pseudo-terminal.
    console_through_a_pty(&cli).await;

    // Suspend and resume go over the WebSocket; --wait follows the status.
    cli.ok(&["vm", "suspend", "web", "--wait"]).await;
    let info: VmInfo =
        serde_json::from_str(&cli.ok(&["vm", "info", "web", "-o", "json"]).await).unwrap();
    assert_eq!(info.state, VmState::Paused);
    // The typed client, with the token the CLI stored, sees the same.
    let stored: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&creds).unwrap()).unwrap();
    let client = vmfleet_client::Client::new(&base)
        .unwrap()
        .with_token(stored["logins"][0]["token"].as_str().unwrap());
    let seen = client
        .vm_info(&vmfleet_wire::api::VmRef {
            build_id: web.build_id.clone(),
            owner: web.owner,
        })
        .await
        .unwrap();
    assert_eq!(seen.state, VmState::Paused);
    let e = cli.fails(&["vm", "suspend", "web"], 1).await;
    assert!(!e.trim().is_empty());
    cli.ok(&["vm", "resume", "web", "--wait"]).await;
    // Snapshots: taken, listed with their size, deleted.
    cli.ok(&["vm", "snapshot", "web", "--id", "before-upgrade"])
        .await;
    let table = cli.ok(&["vm", "snapshots", "web"]).await;
    assert!(
        table.starts_with("SNAPSHOT") && table.contains("before-upgrade") && table.contains("MiB"),
        "{table}"
    );
    let out = cli
        .ok(&["vm", "snapshot-delete", "web", "before-upgrade"])
        .await;
    assert!(out.contains("deleted"), "{out}");
    let left: Vec<serde_json::Value> =
        serde_json::from_str(&cli.ok(&["vm", "snapshots", "web", "-o", "json"]).await).unwrap();
    assert!(left.is_empty(), "{left:?}");
    let e = cli
        .fails(&["vm", "snapshot-delete", "web", "before-upgrade"], 1)
        .await;
    assert!(e.contains("no snapshot before-upgrade"), "{e}");
    // Migrate: this fleet has one node, so there is nowhere to go, and the CLI says why.
    let e = cli.fails(&["vm", "migrate", "web"], 1).await;
    assert!(e.contains("no other ONLINE node has room"), "{e}");

    // Watch: one JSON message a line, real metrics among them.
    let out = cli
        .ok(&[
            "vm",
            "watch",
            "web",
            "--interval",
            "1",
            "--count",
            "1",
            "-o",
            "json",
        ])
        .await;
    let msgs: Vec<WsMessage> = out.lines().map(|l| WsMessage::decode(l).unwrap()).collect();
    assert!(
        msgs.iter().any(|m| matches!(&m.body, WsBody::Status(_))),
        "{out}"
    );
    assert!(
        msgs.iter()
            .any(|m| matches!(&m.body, WsBody::Metrics(d) if d.memory.total > 0)),
        "{out}"
    );

    // Exit codes scripts rely on: 1 with the API's message.
    let e = cli.fails(&["vm", "info", "nosuch"], 1).await;
    assert!(e.contains("VM nosuch was not found"), "{e}");
    cli.fails(&["vm", "console", "nosuch"], 1).await;
    let e = cli
        .fails(
            &["vm", "create", "broken", "--kernel", "nosuch.bin", "--wait"],
            1,
        )
        .await;
    assert!(
        e.contains("nosuch.bin is not in the catalog"),
        "the reason: {e}"
    );
    cli.ok(&["vm", "delete", "broken"]).await;
    let e = cli.fails(&["vm", "start", "web"], 1).await;
    assert!(e.contains("409"), "a running VM cannot start: {e}");
    let mut bad = cli.command(&["vm", "list"]);
    bad.env("VMFLEET_TOKEN", "not-a-token");
    let e = cli.fails_with(bad, &["vm", "list"], 1).await;
    assert!(e.contains("401"), "{e}");
    let bad_file = dir.path().join("bad.token");
    std::fs::write(&bad_file, "eyJhbGciOiJIUzI1NiJ9.e30.c2ln\n").unwrap();
    let e = cli
        .fails(
            &["node", "list", "--token-file", bad_file.to_str().unwrap()],
            1,
        )
        .await;
    assert!(e.contains("401"), "{e}");
    let e = cli.fails(&["node", "list"], 1).await;
    assert!(e.contains("403"), "a wallet is not an admin: {e}");
    let e = cli
        .fails(&["vm", "list", "--server", "http://127.0.0.1:1"], 1)
        .await;
    assert!(
        e.contains("not signed in") || e.contains("could not be reached"),
        "{e}"
    );

    // Nodes, as the admin (`vmfleet up`'s admin.token).
    let nodes: Vec<NodeView> = serde_json::from_str(
        &cli.ok(&["node", "list", "--token-file", admin_file, "-o", "json"])
            .await,
    )
    .unwrap();
    assert!(
        nodes.iter().any(|n| n.status == NodeState::Online),
        "{nodes:?}"
    );
    let added: CreateNodeResponse = serde_json::from_str(
        &cli.ok(&[
            "node",
            "add",
            "spare",
            "--token-file",
            admin_file,
            "-o",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert!(!added.host_api_key.is_empty());
    let drained: NodeView = serde_json::from_str(
        &cli.ok(&[
            "node",
            "drain",
            "spare",
            "--token-file",
            admin_file,
            "-o",
            "json",
        ])
        .await,
    )
    .unwrap();
    assert_eq!(drained.status, NodeState::Maintenance);
    cli.ok(&[
        "node",
        "undrain",
        added.node_id.as_str(),
        "--token-file",
        admin_file,
    ])
    .await;
    cli.ok(&["node", "remove", "spare", "--token-file", admin_file])
        .await;
    cli.fails(&["node", "remove", "spare", "--token-file", admin_file], 1)
        .await;
    // The admin sees the wallet's VM and drives it by name.
    let all = cli.ok(&["vm", "list", "--token-file", admin_file]).await;
    assert!(all.contains("web") && all.contains(&me), "{all}");

    // Stop with --wait, delete, and the list is empty.
    let out = cli.ok(&["vm", "stop", "web", "--wait", "-o", "json"]).await;
    let stopped: VmInfo = serde_json::from_str(&out).unwrap();
    assert_eq!(stopped.state, VmState::Stopped);
    // A device added to the stopped VM shows in its info, by id, until it is removed.
    let out = cli.ok(&["vm", "device-add", "web", "--rng"]).await;
    assert!(out.contains("dev0"), "{out}");
    let table = cli.ok(&["vm", "info", "web"]).await;
    assert!(
        table.contains("device dev0:") && table.contains("entropy device"),
        "{table}"
    );
    assert!(table.contains("node:"), "{table}");
    cli.ok(&["vm", "device-remove", "web", "dev0"]).await;
    let table = cli.ok(&["vm", "info", "web"]).await;
    assert!(!table.contains("device dev0"), "{table}");
    cli.ok(&["vm", "delete", "web"]).await;
    let vms: Vec<VmInfo> =
        serde_json::from_str(&cli.ok(&["vm", "list", "-o", "json"]).await).unwrap();
    assert!(vms.is_empty(), "{vms:?}");

    // Logout forgets the token.
    cli.ok(&["logout"]).await;
    assert!(!std::fs::read_to_string(&creds).unwrap().contains(&base));
    cli.fails(&["vm", "list"], 1).await;

    agent.stop().await;
    plane.stop().await.unwrap();
}

/// `vmfleet login --address`: the message is printed, the signature read from stdin.
async fn paste_a_signature(cli: &Cli, wallet: &Wallet) {
    let me = wallet.address().to_checksum();
    let mut child = cli
        .command(&["login", "--address", &me])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = tokio::io::BufReader::new(child.stdout.take().unwrap()).lines();
    let mut message = Vec::new();
    while let Some(line) = lines.next_line().await.unwrap() {
        let last = line.starts_with("Issued At: ");
        message.push(line);
        if last {
            break;
        }
    }
    let message = message.join("\n");
    assert!(message.contains(&me), "{message}");
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{}\n", wallet.sign(&message).unwrap()).as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let rest = lines.next_line().await.unwrap().unwrap_or_default();
    let status = child.wait().await.unwrap();
    assert_eq!(status.code(), Some(0), "{rest}");
    assert!(rest.contains("signed in"), "{rest}");
}

/// A pseudo-terminal: the master for the test, the slave for the child.
struct Pty {
    master: OwnedFd,
    slave: OwnedFd,
}

fn pty() -> Pty {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).unwrap();
    grantpt(&master).unwrap();
    unlockpt(&master).unwrap();
    let name = ptsname(&master, Vec::new()).unwrap();
    let slave = rustix::fs::open(
        Path::new(name.to_str().unwrap()),
        rustix::fs::OFlags::RDWR | rustix::fs::OFlags::NOCTTY,
        rustix::fs::Mode::empty(),
    )
    .unwrap();
    Pty { master, slave }
}

/// `vmfleet vm console web` attached to a fresh pseudo-terminal, once it says it is attached.
struct Attached {
    child: tokio::process::Child,
    keys: std::fs::File,
    slave: OwnedFd,
    before: rustix::termios::Termios,
    seen: Arc<Mutex<Vec<u8>>>,
}

impl Attached {
    async fn start(cli: &Cli) -> Self {
        let Pty { master, slave } = pty();
        let before = tcgetattr(&slave).unwrap();
        assert!(
            before
                .local_modes
                .contains(LocalModes::ICANON | LocalModes::ECHO)
        );
        let child = cli
            .command(&["vm", "console", "web"])
            .stdin(Stdio::from(slave.try_clone().unwrap()))
            .stdout(Stdio::from(slave.try_clone().unwrap()))
            .stderr(Stdio::from(slave.try_clone().unwrap()))
            .spawn()
            .unwrap();
        let seen = Arc::new(Mutex::new(Vec::<u8>::new()));
        let mut reader = std::fs::File::from(master.try_clone().unwrap());
        let sink = seen.clone();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n) = reader.read(&mut buf) {
                if n == 0 {
                    break;
                }
                sink.lock().unwrap().extend_from_slice(&buf[..n]);
            }
        });
        let mut a = Attached {
            child,
            keys: std::fs::File::from(master),
            slave,
            before,
            seen,
        };
        assert!(
            a.wait_for("Detach with Ctrl-]", Duration::from_secs(20))
                .await,
            "the console never attached: {}",
            a.text()
        );
        let raw = tcgetattr(&a.slave).unwrap();
        assert!(
            !raw.local_modes
                .intersects(LocalModes::ICANON | LocalModes::ECHO | LocalModes::ISIG),
            "the terminal is in raw mode while attached"
        );
        a
    }

    fn text(&self) -> String {
        String::from_utf8_lossy(&self.seen.lock().unwrap()).into_owned()
    }

    async fn wait_for(&mut self, needle: &str, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while !self.text().contains(needle) {
            if Instant::now() > deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        true
    }

    /// Waits for the CLI to exit with 0 and checks the terminal is as it was.
    /// Waits for the session to end with exit code `code`, the terminal restored.
    async fn ends_restored(mut self, code: i32) {
        let status = tokio::time::timeout(Duration::from_secs(10), self.child.wait())
            .await
            .expect("the console session ends")
            .unwrap();
        assert_eq!(status.code(), Some(code), "{}", self.text());
        let after = tcgetattr(&self.slave).unwrap();
        assert_eq!(
            after.local_modes, self.before.local_modes,
            "the terminal is restored"
        );
        assert_eq!(after.input_modes, self.before.input_modes);
        assert_eq!(after.output_modes, self.before.output_modes);
        assert_eq!(after.control_modes, self.before.control_modes);
    }
}

/// The console on a pseudo-terminal: raw mode while attached, a command typed and its answer
/// read back, Ctrl-] detaches with exit code 0, and the terminal is restored; SIGTERM ends a
/// session with exit code 143, the terminal restored too. With stdin a pipe, the console takes the piped
/// lines and prints the guest's answer.
async fn console_through_a_pty(cli: &Cli) {
    let mut a = Attached::start(cli).await;
    let t = token();
    let mut answered = false;
    for _ in 0..40 {
        a.keys
            .write_all(format!("echo cli-$((40+2))-{t}\n").as_bytes())
            .unwrap();
        if a.wait_for(&format!("cli-42-{t}"), Duration::from_secs(3))
            .await
        {
            answered = true;
            break;
        }
    }
    assert!(answered, "the guest never answered: {}", a.text());
    a.keys.write_all(&[0x1d]).unwrap();
    a.ends_restored(0).await;

    // Attached again: the scrollback comes first, and SIGTERM ends it cleanly.
    let mut b = Attached::start(cli).await;
    assert!(
        b.wait_for(&format!("cli-42-{t}"), Duration::from_secs(10))
            .await,
        "no scrollback: {}",
        b.text()
    );
    let pid = b.child.id().unwrap().to_string();
    let killed = std::process::Command::new("kill")
        .args(["-TERM", &pid])
        .status()
        .unwrap();
    assert!(killed.success());
    // As shells expect of a program a signal ended: 128 + 15.
    b.ends_restored(143).await;

    let mut piped = false;
    for _ in 0..3 {
        let mut child = cli
            .command(&["vm", "console", "web"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let mut stdin = child.stdin.take().unwrap();
        stdin
            .write_all(format!("echo piped-$((6*7))-{t}\n").as_bytes())
            .await
            .unwrap();
        drop(stdin);
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(out.status.code(), Some(0), "{}", show(&out));
        if String::from_utf8_lossy(&out.stdout).contains(&format!("piped-42-{t}")) {
            piped = true;
            break;
        }
    }
    assert!(piped, "piped input never answered");
}
