//! A private, throwaway Docker engine for tests and local development: its own socket, data,
//! exec root and bridge under a temporary directory, so it runs beside any other dockerd on
//! the host without touching it.
//!
//! - Needs root and `dockerd` (Debian: `docker.io`); `ip` (iproute2) makes its bridge.
//! - Networking stays on the host: its own bridge with a free `10.213.x.0/24`, no iptables
//!   rules, no IP forwarding or masquerading. Published ports go through `docker-proxy`, so a
//!   port published on 127.0.0.1 reaches the container; containers reach nothing outside.
//! - [`ScratchDaemon::shutdown`] (or dropping it) removes every container, stops dockerd and
//!   its containerd, unmounts and deletes the directory and the bridge. A later start also
//!   cleans up after runs that were killed before they could.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use super::{DockerConfig, DockerRuntime, api};
use crate::HypervisorError;

const DIR_PREFIX: &str = "vmfd-";
const BRIDGE_FILE: &str = "bridge";
const START_WITHIN: Duration = Duration::from_secs(60);
const STOP_WITHIN: Duration = Duration::from_secs(20);

static SEQ: AtomicU32 = AtomicU32::new(0);

/// A dockerd of our own. Stopped and cleaned up by [`ScratchDaemon::shutdown`] or on drop.
#[derive(Debug)]
pub struct ScratchDaemon {
    dir: PathBuf,
    socket: PathBuf,
    started_in: Duration,
    running: Option<Running>,
}

#[derive(Debug)]
struct Running {
    child: Child,
    dir: PathBuf,
    bridge: String,
}

fn launch_error(message: impl Into<String>) -> HypervisorError {
    HypervisorError::Launch {
        backend: "dockerd",
        source: io::Error::other(message.into()),
    }
}

impl ScratchDaemon {
    /// Starts dockerd and waits until its API answers.
    pub async fn start() -> Result<Self, HypervisorError> {
        let dockerd = find_program("dockerd").ok_or_else(|| {
            HypervisorError::BinaryMissing("dockerd (Debian package docker.io)".to_owned())
        })?;
        if find_program("ip").is_none() {
            return Err(HypervisorError::BinaryMissing(
                "ip (Debian package iproute2)".to_owned(),
            ));
        }
        let t0 = Instant::now();
        tokio::task::spawn_blocking(reap_stale)
            .await
            .map_err(|e| launch_error(format!("cleaning up earlier runs failed: {e}")))?;

        let pid = std::process::id();
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("{DIR_PREFIX}{pid}-{seq}"));
        if dir.exists() {
            cleanup_dir(&dir);
        }
        fs::create_dir_all(&dir).map_err(HypervisorError::io(&dir))?;
        let mut bridge = format!("vmfd{pid}x{seq}");
        bridge.truncate(15);

        let subnet = pick_subnet(pid.wrapping_add(seq))?;
        fs::write(dir.join(BRIDGE_FILE), &bridge).map_err(HypervisorError::io(&dir))?;
        let made = run("ip", &["link", "add", "name", &bridge, "type", "bridge"]).and_then(|_| {
            run(
                "ip",
                &[
                    "addr",
                    "add",
                    &format!("10.213.{subnet}.1/24"),
                    "dev",
                    &bridge,
                ],
            )?;
            run("ip", &["link", "set", &bridge, "up"])
        });
        if let Err(e) = made {
            cleanup_dir(&dir);
            return Err(launch_error(format!(
                "cannot create bridge {bridge} (dockerd needs root): {e}"
            )));
        }

        let socket = dir.join("docker.sock");
        let config_file = dir.join("daemon.json");
        let log_path = dir.join("dockerd.log");
        let spawned = fs::write(&config_file, "{}\n")
            .and_then(|_| fs::File::create(&log_path))
            .and_then(|log| {
                let err = log.try_clone()?;
                Command::new(&dockerd)
                    .arg("--config-file")
                    .arg(&config_file)
                    .arg("--host")
                    .arg(format!("unix://{}", socket.display()))
                    .arg("--data-root")
                    .arg(dir.join("root"))
                    .arg("--exec-root")
                    .arg(dir.join("exec"))
                    .arg("--pidfile")
                    .arg(dir.join("dockerd.pid"))
                    .args(["--bridge", &bridge])
                    .args([
                        "--iptables=false",
                        "--ip-masq=false",
                        "--ip-forward=false",
                        "--userland-proxy=true",
                        "--shutdown-timeout=2",
                        "--log-level=warn",
                    ])
                    .env_remove("DOCKER_HOST")
                    .stdin(Stdio::null())
                    .stdout(log)
                    .stderr(err)
                    .spawn()
            });
        let child = match spawned {
            Ok(c) => c,
            Err(source) => {
                cleanup_dir(&dir);
                delete_bridge(&bridge);
                return Err(HypervisorError::Launch {
                    backend: "dockerd",
                    source,
                });
            }
        };
        let mut daemon = ScratchDaemon {
            dir: dir.clone(),
            socket: socket.clone(),
            started_in: Duration::ZERO,
            running: Some(Running { child, dir, bridge }),
        };
        daemon.wait_ready().await?;
        daemon.started_in = t0.elapsed();
        Ok(daemon)
    }

    async fn wait_ready(&mut self) -> Result<(), HypervisorError> {
        let rt = self.runtime("localhost");
        let deadline = Instant::now() + START_WITHIN;
        loop {
            if let Some(r) = self.running.as_mut()
                && let Ok(Some(status)) = r.child.try_wait()
            {
                return Err(launch_error(format!(
                    "dockerd exited ({status}) before answering; its log ends with:\n{}",
                    self.log_tail(30)
                )));
            }
            if self.socket.exists() && rt.ping().await.is_ok() {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(launch_error(format!(
                    "dockerd did not answer within {}s; its log ends with:\n{}",
                    START_WITHIN.as_secs(),
                    self.log_tail(30)
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The engine's socket.
    pub fn socket(&self) -> &Path {
        &self.socket
    }

    /// Where everything of this daemon lives.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// How long the start took (including cleaning up after earlier runs).
    pub fn started_in(&self) -> Duration {
        self.started_in
    }

    /// A driver for this daemon, connection info naming `public_host`.
    pub fn runtime(&self, public_host: &str) -> DockerRuntime {
        DockerRuntime::new(DockerConfig::new(&self.socket, public_host))
    }

    /// The last `lines` lines of dockerd's log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = fs::read_to_string(self.dir.join("dockerd.log")).unwrap_or_default();
        let all: Vec<&str> = text.lines().collect();
        all[all.len().saturating_sub(lines)..].join("\n")
    }

    /// Removes every container, stops the daemon and deletes everything it made.
    pub async fn shutdown(mut self) -> Result<(), HypervisorError> {
        let removed = self.remove_all_containers().await;
        let Some(running) = self.running.take() else {
            return removed;
        };
        let stopped = tokio::task::spawn_blocking(move || teardown(running))
            .await
            .map_err(|e| launch_error(format!("the teardown task failed: {e}")))?;
        removed?;
        stopped.map_err(launch_error)
    }

    async fn remove_all_containers(&self) -> Result<(), HypervisorError> {
        let rt = self.runtime("localhost");
        let all: Vec<api::ListEntry> = rt
            .engine()
            .get("/containers/json", &[("all", "true")])
            .await?
            .map_err(|r| r.into_error("list containers"))?;
        for c in all {
            rt.remove(&c.id).await?;
        }
        Ok(())
    }
}

impl Drop for ScratchDaemon {
    fn drop(&mut self) {
        if let Some(running) = self.running.take()
            && let Err(e) = teardown(running)
        {
            tracing::warn!(error = %e, "cleaning up the scratch dockerd failed");
        }
    }
}

/// Stops dockerd (which stops its containers and containerd), then removes its traces.
fn teardown(mut r: Running) -> Result<(), String> {
    let pid = r.child.id();
    let mut problems = Vec::new();
    if r.child.try_wait().ok().flatten().is_none() {
        let _ = run("kill", &["-TERM", &pid.to_string()]);
        if !wait_child(&mut r.child, STOP_WITHIN) {
            problems.push(format!(
                "dockerd (pid {pid}) ignored SIGTERM for {}s and was killed",
                STOP_WITHIN.as_secs()
            ));
            let _ = r.child.kill();
            let _ = r.child.wait();
        }
    }
    kill_pidfile(&r.dir.join("exec/containerd/containerd.pid"), "containerd");
    cleanup_dir(&r.dir);
    delete_bridge(&r.bridge);
    if r.dir.exists() {
        problems.push(format!("{} could not be removed", r.dir.display()));
    }
    if problems.is_empty() {
        Ok(())
    } else {
        Err(problems.join("; "))
    }
}

fn wait_child(child: &mut Child, within: Duration) -> bool {
    let deadline = Instant::now() + within;
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// Cleans up after scratch daemons whose test process is gone (killed before its teardown).
fn reap_stale() {
    let Ok(entries) = fs::read_dir(std::env::temp_dir()) else {
        return;
    };
    for entry in entries.flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(owner) = name
            .strip_prefix(DIR_PREFIX)
            .and_then(|rest| rest.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if process_alive(owner) {
            continue;
        }
        let dir = entry.path();
        tracing::info!(dir = %dir.display(), "cleaning up a scratch dockerd left by an earlier run");
        kill_pidfile(&dir.join("dockerd.pid"), "dockerd");
        kill_pidfile(&dir.join("exec/containerd/containerd.pid"), "containerd");
        let bridge = fs::read_to_string(dir.join(BRIDGE_FILE)).unwrap_or_default();
        cleanup_dir(&dir);
        if !bridge.trim().is_empty() {
            delete_bridge(bridge.trim());
        }
    }
}

/// Whether a process exists and has not ended (a zombie has).
fn process_alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| {
            // `pid (comm) state ...`; comm may contain spaces and parentheses.
            s.rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().next().map(|st| st != "Z"))
        })
        .unwrap_or(false)
}

/// Stops the process in `pidfile` if it is still the program named.
fn kill_pidfile(pidfile: &Path, program: &str) {
    let Some(pid) = fs::read_to_string(pidfile)
        .ok()
        .and_then(|s| s.trim().parse::<u32>().ok())
    else {
        return;
    };
    let alive = || {
        fs::read(format!("/proc/{pid}/cmdline"))
            .map(|c| String::from_utf8_lossy(&c).contains(program))
            .unwrap_or(false)
    };
    if !alive() {
        return;
    }
    let _ = run("kill", &["-TERM", &pid.to_string()]);
    let deadline = Instant::now() + STOP_WITHIN;
    while alive() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
    }
    if alive() {
        let _ = run("kill", &["-KILL", &pid.to_string()]);
    }
}

/// Unmounts whatever is still mounted under `dir` (deepest first) and deletes it.
fn cleanup_dir(dir: &Path) {
    let prefix = dir.to_string_lossy().into_owned();
    let mut mounts: Vec<String> = fs::read_to_string("/proc/self/mountinfo")
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .map(unescape_mount)
        .filter(|m| m == &prefix || m.starts_with(&format!("{prefix}/")))
        .collect();
    mounts.sort_by_key(|m| std::cmp::Reverse(m.len()));
    for m in mounts {
        let _ = run("umount", &["-l", &m]);
    }
    for _ in 0..3 {
        if !dir.exists() || fs::remove_dir_all(dir).is_ok() {
            return;
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `/proc/self/mountinfo` writes space, tab, newline and backslash as octal escapes.
fn unescape_mount(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8)
        {
            out.push(v);
            i += 4;
            continue;
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn delete_bridge(name: &str) {
    let exists = Path::new("/sys/class/net").join(name).exists();
    if exists && let Err(e) = run("ip", &["link", "del", name]) {
        tracing::warn!(bridge = name, error = %e, "cannot delete the scratch bridge");
    }
}

/// A `10.213.x.0/24` no interface or route of the host uses; `x` starts from `seed`.
fn pick_subnet(seed: u32) -> Result<u32, HypervisorError> {
    let addrs = output("ip", &["-4", "-o", "addr", "show"]).unwrap_or_default();
    let routes = output("ip", &["-4", "route", "show", "table", "all"]).unwrap_or_default();
    (0..250)
        .map(|k| (seed.wrapping_mul(7).wrapping_add(k)) % 250 + 1)
        .find(|x| {
            let net = format!("10.213.{x}.");
            !addrs.contains(&net) && !routes.contains(&net)
        })
        .ok_or_else(|| launch_error("no free 10.213.x.0/24 for the scratch bridge"))
}

fn find_program(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/sbin", "/usr/bin", "/sbin", "/bin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

fn output(program: &str, args: &[&str]) -> Result<String, String> {
    let out = Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "{program} {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    output(program, args).map(|_| ())
}

/// Imports an image `reference` made of the host's busybox-static and its applets, whose
/// command sleeps: what the tests (and a node without any registry) can run.
pub async fn import_busybox(rt: &DockerRuntime, reference: &str) -> Result<(), HypervisorError> {
    let tar = busybox_rootfs_tar()?;
    rt.import_image(reference, tar, &[r#"CMD ["sleep", "100000"]"#])
        .await
}

/// A root file system of busybox and its applets, as a tar stream.
fn busybox_rootfs_tar() -> Result<bytes::Bytes, HypervisorError> {
    let busybox = Path::new("/bin/busybox");
    if !busybox.exists() {
        return Err(HypervisorError::BinaryMissing(
            "/bin/busybox (apt-get install busybox-static)".to_owned(),
        ));
    }
    let root = std::env::temp_dir().join(format!(
        "vmfleet-busybox-{}-{}",
        std::process::id(),
        &vmfleet_core::uuid_v4()[..8]
    ));
    let built = (|| -> std::io::Result<Vec<u8>> {
        for d in ["bin", "tmp", "etc", "proc", "sys", "dev", "root"] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::copy(busybox, root.join("bin/busybox"))?;
        std::fs::write(root.join("etc/passwd"), "root:x:0:0:root:/root:/bin/sh\n")?;
        let list = std::process::Command::new(busybox).arg("--list").output()?;
        for applet in String::from_utf8_lossy(&list.stdout).lines() {
            let link = root.join("bin").join(applet);
            if !applet.is_empty() && !link.exists() {
                std::os::unix::fs::symlink("busybox", link)?;
            }
        }
        let out = std::process::Command::new("tar")
            .arg("-C")
            .arg(&root)
            .args(["-c", "."])
            .output()?;
        if !out.status.success() {
            return Err(std::io::Error::other(
                String::from_utf8_lossy(&out.stderr).into_owned(),
            ));
        }
        Ok(out.stdout)
    })();
    let _ = std::fs::remove_dir_all(&root);
    built
        .map(bytes::Bytes::from)
        .map_err(HypervisorError::io(root))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_escapes() {
        assert_eq!(unescape_mount(r"/tmp/a\040b"), "/tmp/a b");
        assert_eq!(unescape_mount("/plain"), "/plain");
    }
}
