//! The Firecracker process: finding the binary, spawning it with its stdio as the serial
//! console, supervising it (reaping, classifying its end), and watching a process this one did
//! not spawn (an adopted guest).

use std::collections::VecDeque;
use std::ffi::OsString;
use std::io;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rustix::event::{PollFd, PollFlags, Timespec};
use rustix::process::{Pid, PidfdFlags, Signal};
use tokio::io::AsyncReadExt;
use tokio::process::{Child, ChildStderr, ChildStdin, ChildStdout, Command};
use tokio::sync::watch;
use tokio::task::{AbortHandle, JoinHandle};

use crate::HypervisorError;
use crate::backend::GuestExit;
use crate::console::Console;

/// How much of the process's stderr (and of its log file) a crash reason quotes.
const TAIL_BYTES: usize = 2048;

/// How long the supervisor waits for the console's last bytes after the process ended.
const DRAIN_GRACE: Duration = Duration::from_secs(2);

/// How often an adopted process is checked for its end.
const POLL_EVERY: Duration = Duration::from_millis(250);

/// The last bytes of a stream, kept for a crash reason.
#[derive(Debug, Default)]
pub struct Tail {
    bytes: VecDeque<u8>,
}

impl Tail {
    pub fn push(&mut self, chunk: &[u8]) {
        if chunk.len() >= TAIL_BYTES {
            self.bytes.clear();
            self.bytes.extend(&chunk[chunk.len() - TAIL_BYTES..]);
            return;
        }
        let overflow = (self.bytes.len() + chunk.len()).saturating_sub(TAIL_BYTES);
        self.bytes.drain(..overflow);
        self.bytes.extend(chunk);
    }

    pub fn text(&self) -> String {
        let (a, b) = self.bytes.as_slices();
        let mut v = Vec::with_capacity(a.len() + b.len());
        v.extend_from_slice(a);
        v.extend_from_slice(b);
        String::from_utf8_lossy(&v).trim().to_owned()
    }
}

/// Where the supervisor finds what it quotes and cleans up.
#[derive(Debug, Clone)]
pub struct Files {
    pub socket: PathBuf,
    pub pid_file: PathBuf,
    pub log: PathBuf,
}

impl Files {
    /// Removes what only a live process needs. The log stays for the post-mortem.
    fn remove_runtime(&self) {
        for p in [&self.socket, &self.pid_file] {
            if let Err(e) = std::fs::remove_file(p)
                && e.kind() != io::ErrorKind::NotFound
            {
                tracing::warn!(path = %p.display(), error = %e, "cannot remove a Firecracker file");
            }
        }
    }
}

/// The handles a guest holds on its supervised process.
#[derive(Debug)]
pub struct Supervision {
    pub pid: u32,
    /// Sending `true`, or dropping the sender, makes the supervisor kill the process.
    pub kill: watch::Sender<bool>,
    pub exited: watch::Receiver<Option<GuestExit>>,
}

/// A spawned process, its stdin still to be installed as the console's input.
pub struct Spawned {
    pub supervision: Supervision,
    pub stdin: Option<ChildStdin>,
}

/// Spawns `binary args...` with piped stdio, in its own process group (so a terminal's
/// Ctrl-C meant for vmfleet does not reach guests), writes its pid file, and starts the
/// supervisor. `tasks` are aborted when the process has ended (the metrics reader).
pub fn spawn(
    binary: &Path,
    args: &[OsString],
    files: Files,
    console: Console,
    tasks: Vec<AbortHandle>,
) -> Result<Spawned, HypervisorError> {
    let mut cmd = Command::new(binary);
    cmd.args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .process_group(0);
    if let Some(dir) = files.socket.parent() {
        cmd.current_dir(dir);
    }
    let mut child = cmd.spawn().map_err(|source| {
        if source.kind() == io::ErrorKind::NotFound {
            HypervisorError::BinaryMissing(binary.display().to_string())
        } else {
            HypervisorError::Launch {
                backend: "firecracker",
                source,
            }
        }
    })?;
    let pid = child.id().ok_or_else(|| HypervisorError::Launch {
        backend: "firecracker",
        source: io::Error::other("the process ended before its pid could be read"),
    })?;

    // Written before anything can fail, so that a crash of vmfleet from here on leaves a
    // process that `adopt` can find.
    if let Err(e) = std::fs::write(&files.pid_file, format!("{pid}\n")) {
        let _ = child.start_kill();
        return Err(HypervisorError::Io {
            path: files.pid_file.clone(),
            source: e,
        });
    }

    let stdin = child.stdin.take();
    let stdout = child.stdout.take().map(|out| {
        let console = console.clone();
        tokio::spawn(pump_stdout(out, console))
    });
    let stderr_tail = Arc::new(Mutex::new(Tail::default()));
    let stderr = child
        .stderr
        .take()
        .map(|err| tokio::spawn(pump_stderr(err, stderr_tail.clone(), pid)));

    let (kill_tx, kill_rx) = watch::channel(false);
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(supervise_child(SupervisedChild {
        child,
        kill: kill_rx,
        exit: exit_tx,
        stdout,
        stderr,
        stderr_tail,
        files,
        console,
        tasks,
    }));
    Ok(Spawned {
        supervision: Supervision {
            pid,
            kill: kill_tx,
            exited: exit_rx,
        },
        stdin,
    })
}

async fn pump_stdout(mut out: ChildStdout, console: Console) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match out.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => console.push(&buf[..n]),
        }
    }
}

async fn pump_stderr(mut err: ChildStderr, tail: Arc<Mutex<Tail>>, pid: u32) {
    let mut buf = vec![0u8; 4096];
    loop {
        match err.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                let chunk = &buf[..n];
                tracing::debug!(pid, stderr = %String::from_utf8_lossy(chunk).trim_end(), "firecracker");
                tail.lock().unwrap_or_else(|p| p.into_inner()).push(chunk);
            }
        }
    }
}

struct SupervisedChild {
    child: Child,
    kill: watch::Receiver<bool>,
    exit: watch::Sender<Option<GuestExit>>,
    stdout: Option<JoinHandle<()>>,
    stderr: Option<JoinHandle<()>>,
    stderr_tail: Arc<Mutex<Tail>>,
    files: Files,
    console: Console,
    tasks: Vec<AbortHandle>,
}

async fn supervise_child(mut s: SupervisedChild) {
    let mut killed = false;
    let status = loop {
        tokio::select! {
            status = s.child.wait() => break status,
            // `Err` means every sender is gone (the guest was dropped): kill as well.
            _ = s.kill.changed(), if !killed => {
                killed = true;
                if let Err(e) = s.child.start_kill() {
                    tracing::warn!(error = %e, "cannot kill firecracker");
                }
            }
        }
    };
    // The pipes reach EOF once the process is gone; wait (a little) for the last bytes.
    for task in [s.stdout.take(), s.stderr.take()].into_iter().flatten() {
        let abort = task.abort_handle();
        if tokio::time::timeout(DRAIN_GRACE, task).await.is_err() {
            abort.abort();
        }
    }
    for task in &s.tasks {
        task.abort();
    }
    let stderr = s
        .stderr_tail
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .text();
    let log = log_tail(&s.files.log);
    let exit = classify(status, killed, &stderr, &log);
    tracing::info!(?exit, "firecracker ended");
    s.files.remove_runtime();
    s.console.close();
    let _ = s.exit.send(Some(exit));
}

/// How a process this one spawned ended.
pub fn classify(
    status: io::Result<ExitStatus>,
    killed_on_request: bool,
    stderr: &str,
    log: &str,
) -> GuestExit {
    if killed_on_request {
        return GuestExit::Shutdown;
    }
    let status = match status {
        Ok(s) => s,
        Err(e) => return GuestExit::Crashed(format!("waiting for firecracker failed: {e}")),
    };
    if status.success() {
        return GuestExit::Shutdown;
    }
    let mut reason = match (status.code(), status.signal()) {
        (Some(code), _) => format!("firecracker exited with status {code}"),
        (None, Some(sig)) => format!("firecracker was killed by signal {sig}"),
        (None, None) => format!("firecracker ended: {status}"),
    };
    append_detail(&mut reason, stderr, log);
    GuestExit::Crashed(reason)
}

fn append_detail(reason: &mut String, stderr: &str, log: &str) {
    if !stderr.is_empty() {
        reason.push_str("; stderr: ");
        reason.push_str(stderr);
    }
    if !log.is_empty() {
        reason.push_str("; log: ");
        reason.push_str(log);
    }
}

/// The last lines of Firecracker's log file (warnings and errors only, at the level vmfleet
/// starts it with).
pub fn log_tail(path: &Path) -> String {
    use std::io::{Read, Seek, SeekFrom};
    let mut bytes = Vec::with_capacity(TAIL_BYTES);
    let read = std::fs::File::open(path).and_then(|mut f| {
        let len = f.metadata()?.len();
        f.seek(SeekFrom::Start(len.saturating_sub(TAIL_BYTES as u64)))?;
        f.take(TAIL_BYTES as u64).read_to_end(&mut bytes)
    });
    if read.is_err() {
        return String::new();
    }
    let text = String::from_utf8_lossy(&bytes);
    let lines: Vec<&str> = text.lines().filter(|l| !l.trim().is_empty()).collect();
    let keep = lines.len().saturating_sub(5);
    lines[keep..].join(" | ")
}

/// Whether Firecracker's log says it ended on an error: its `main` logs `Firecracker exiting
/// with error`, its panic hook `Firecracker panicked at`, its fatal-signal handlers `Shutting
/// down VM after intercepting ...`, all at level error.
fn log_shows_failure(log: &str) -> bool {
    ["exiting with error", "panicked", "after intercepting"]
        .iter()
        .any(|needle| log.contains(needle))
}

// --- Processes this one did not spawn --------------------------------------------------------

/// The pid recorded in `pid_file`, if that process is alive and is the Firecracker serving
/// `socket` (checked on its command line, so a reused pid is not mistaken for it).
pub fn live_firecracker(pid_file: &Path, socket: &Path) -> Option<u32> {
    let pid: u32 = std::fs::read_to_string(pid_file)
        .ok()?
        .trim()
        .parse()
        .ok()?;
    let raw = Pid::from_raw(i32::try_from(pid).ok()?)?;
    rustix::process::test_kill_process(raw).ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    cmdline_serves(&cmdline, socket).then_some(pid)
}

/// Whether a NUL-separated command line has `--api-sock <socket>`.
pub fn cmdline_serves(cmdline: &[u8], socket: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let want = socket.as_os_str().as_bytes();
    let mut args = cmdline.split(|&b| b == 0);
    while let Some(arg) = args.next() {
        if arg == b"--api-sock" {
            return args.next() == Some(want);
        }
    }
    false
}

/// Watches a live process that is not this one's child. Its exit status cannot be read (only
/// a parent can wait for it); how it ended is inferred from a kill request and its log.
pub fn watch_adopted(
    pid: u32,
    files: Files,
    console: Console,
    tasks: Vec<AbortHandle>,
) -> Supervision {
    let (kill_tx, kill_rx) = watch::channel(false);
    let (exit_tx, exit_rx) = watch::channel(None);
    tokio::spawn(supervise_adopted(
        pid, kill_rx, exit_tx, files, console, tasks,
    ));
    Supervision {
        pid,
        kill: kill_tx,
        exited: exit_rx,
    }
}

async fn supervise_adopted(
    pid: u32,
    mut kill: watch::Receiver<bool>,
    exit: watch::Sender<Option<GuestExit>>,
    files: Files,
    console: Console,
    tasks: Vec<AbortHandle>,
) {
    let raw = i32::try_from(pid).ok().and_then(Pid::from_raw);
    // A pidfd pins the process: a signal sent through it cannot reach a later process that got
    // the same pid, and it polls readable once the process has ended.
    let pidfd = raw.and_then(|p| rustix::process::pidfd_open(p, PidfdFlags::empty()).ok());
    let alive = || match (&pidfd, raw) {
        (Some(fd), _) => {
            let mut fds = [PollFd::new(fd, PollFlags::IN)];
            let now = Timespec {
                tv_sec: 0,
                tv_nsec: 0,
            };
            match rustix::event::poll(&mut fds, Some(&now)) {
                Ok(ready) => ready == 0,
                // EINTR and the like: ask the pid instead.
                Err(_) => raw.is_some_and(|p| rustix::process::test_kill_process(p).is_ok()),
            }
        }
        (None, Some(p)) => rustix::process::test_kill_process(p).is_ok(),
        (None, None) => false,
    };
    let mut killed = false;
    let mut tick = tokio::time::interval(POLL_EVERY);
    while alive() {
        tokio::select! {
            _ = tick.tick() => {}
            _ = kill.changed(), if !killed => {
                killed = true;
                let sent = match (&pidfd, raw) {
                    (Some(fd), _) => rustix::process::pidfd_send_signal(fd, Signal::KILL),
                    (None, Some(p)) => rustix::process::kill_process(p, Signal::KILL),
                    (None, None) => Ok(()),
                };
                if let Err(e) = sent {
                    tracing::warn!(pid, error = %e, "cannot kill the adopted firecracker");
                }
                tick.reset_immediately();
            }
        }
    }
    for task in &tasks {
        task.abort();
    }
    let log = log_tail(&files.log);
    let result = if killed || !log_shows_failure(&log) {
        GuestExit::Shutdown
    } else {
        let mut reason =
            format!("firecracker (pid {pid}, adopted, exit status unknown) ended on an error");
        append_detail(&mut reason, "", &log);
        GuestExit::Crashed(reason)
    };
    files.remove_runtime();
    console.close();
    let _ = exit.send(Some(result));
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proc::find_binary;

    #[test]
    fn classify_tells_shutdown_from_crash() {
        assert_eq!(
            classify(Ok(ExitStatus::from_raw(0)), false, "", ""),
            GuestExit::Shutdown
        );
        // Killed by us: a stop on request, whatever the status.
        assert_eq!(
            classify(Ok(ExitStatus::from_raw(9)), true, "", ""),
            GuestExit::Shutdown
        );
        let GuestExit::Crashed(r) = classify(
            Ok(ExitStatus::from_raw(1 << 8)),
            false,
            "Error: KVM internal error",
            "",
        ) else {
            panic!("expected a crash");
        };
        assert!(
            r.contains("status 1") && r.contains("KVM internal error"),
            "{r}"
        );
        let GuestExit::Crashed(r) = classify(Ok(ExitStatus::from_raw(9)), false, "", "boom") else {
            panic!("expected a crash");
        };
        assert!(r.contains("signal 9") && r.contains("log: boom"), "{r}");
    }

    #[test]
    fn log_tail_quotes_the_last_lines_of_a_long_log() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("firecracker.log");
        let mut text = String::new();
        for i in 0..1000 {
            text.push_str(&format!("2024-01-01T00:00:00 [vm:main] warning {i}\n"));
        }
        text.push_str(
            "2024-01-01T00:00:01 [vm:main] Firecracker exiting with error. exit_code=1\n",
        );
        std::fs::write(&log, text).unwrap();
        let tail = log_tail(&log);
        assert!(tail.ends_with("exit_code=1"), "{tail}");
        assert_eq!(tail.matches(" | ").count(), 4);
        assert!(log_shows_failure(&tail));
        assert!(!log_shows_failure("[vm:main] Cannot set raw mode"));
        assert_eq!(log_tail(&dir.path().join("missing")), "");
    }

    #[test]
    fn tail_keeps_the_last_bytes() {
        let mut t = Tail::default();
        t.push(b"hello ");
        t.push(&vec![b'x'; TAIL_BYTES]);
        t.push(b" end");
        let text = t.text();
        assert_eq!(text.len(), TAIL_BYTES);
        assert!(text.ends_with("x end"));
    }

    #[test]
    fn cmdline_must_name_the_socket() {
        let sock = Path::new("/run/vm/firecracker.sock");
        assert!(cmdline_serves(
            b"firecracker\0--api-sock\0/run/vm/firecracker.sock\0--id\0vm-1\0",
            sock
        ));
        assert!(!cmdline_serves(
            b"firecracker\0--api-sock\0/run/other/firecracker.sock\0",
            sock
        ));
        assert!(!cmdline_serves(b"sleep\x00100\x00", sock));
    }

    #[test]
    fn binary_lookup() {
        assert!(matches!(
            find_binary(Path::new("/nonexistent/firecracker")),
            Err(HypervisorError::BinaryMissing(_))
        ));
        assert!(matches!(
            find_binary(Path::new("vmfleet-no-such-binary-on-path")),
            Err(HypervisorError::BinaryMissing(_))
        ));
        // `sh` is on every PATH this runs on.
        assert!(find_binary(Path::new("sh")).is_ok());
        // Not executable: a directory, a plain file.
        assert!(find_binary(Path::new("/")).is_err());
    }
}
