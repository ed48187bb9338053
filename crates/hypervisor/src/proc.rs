//! Process facts read from `/proc`, and signals: what the drivers need to supervise a
//! hypervisor process they may not be the parent of (after a re-adoption).

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::HypervisorError;

/// Linux reports CPU times in /proc in USER_HZ, which is 100 on every architecture vmfleet
/// supports (it is ABI, independent of the kernel's CONFIG_HZ).
const USER_HZ: f64 = 100.0;

/// The hypervisor binary to run: `binary` itself if it names a path, else the first
/// executable of that name on `PATH`.
pub fn find_binary(binary: &Path) -> Result<PathBuf, HypervisorError> {
    let missing = || HypervisorError::BinaryMissing(binary.display().to_string());
    if binary.as_os_str().is_empty() {
        return Err(missing());
    }
    if binary.components().count() > 1 || binary.is_absolute() {
        return if is_executable(binary) {
            Ok(binary.to_path_buf())
        } else {
            Err(missing())
        };
    }
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .filter(|dir| !dir.as_os_str().is_empty())
        .map(|dir| dir.join(binary))
        .find(|candidate| is_executable(candidate))
        .ok_or_else(missing)
}

fn is_executable(path: &Path) -> bool {
    std::fs::metadata(path)
        .map(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        .unwrap_or(false)
}

/// Opens the KVM device read-write, as the hypervisor will.
pub fn check_kvm(device: &Path) -> Result<(), HypervisorError> {
    std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(device)
        .map(drop)
        .map_err(|e| HypervisorError::KvmUnusable(format!("cannot open {}: {e}", device.display())))
}

/// Whether a process with this pid exists (and is not a zombie).
pub fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat_fields(&stat).and_then(|f| f.first().copied()) != Some("Z"),
        Err(_) => false,
    }
}

/// The fields of /proc/PID/stat after the command name: field 3 (state) is index 0.
fn stat_fields(stat: &str) -> Option<Vec<&str>> {
    let after = &stat[stat.rfind(')')? + 1..];
    Some(after.split_whitespace().collect())
}

/// User + system CPU time the process has used.
pub fn cpu_time(pid: u32) -> Option<Duration> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let f = stat_fields(&stat)?;
    // utime and stime are fields 14 and 15, indexes 11 and 12 here.
    let ticks: u64 = f.get(11)?.parse::<u64>().ok()? + f.get(12)?.parse::<u64>().ok()?;
    Some(Duration::from_secs_f64(ticks as f64 / USER_HZ))
}

/// The resident size of the process's anonymous mapping of exactly `size` bytes (a VMM's
/// guest RAM), or of its largest mapping at least that large.
pub fn mapping_rss(pid: u32, size: u64) -> Option<u64> {
    let smaps = std::fs::read_to_string(format!("/proc/{pid}/smaps")).ok()?;
    let mut best: Option<(u64, u64)> = None; // (mapping size, rss)
    let mut current: Option<u64> = None;
    for line in smaps.lines() {
        let mut words = line.split_whitespace();
        let Some(first) = words.next() else { continue };
        if let Some((start, end)) = first.split_once('-')
            && let (Ok(s), Ok(e)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16))
        {
            current = Some(e.saturating_sub(s));
            continue;
        }
        if first == "Rss:"
            && let (Some(len), Some(kib)) =
                (current, words.next().and_then(|k| k.parse::<u64>().ok()))
            && len >= size
            && best.is_none_or(|(b, _)| len < b || (len == b && kib * 1024 > 0))
        {
            best = Some((len, kib * 1024));
        }
    }
    best.map(|(_, rss)| rss)
}

/// The process's command line, arguments split.
pub fn cmdline(pid: u32) -> Option<Vec<String>> {
    let raw = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    Some(
        raw.split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
            .collect(),
    )
}

/// Sends SIGKILL to `pid`.
pub fn kill(pid: u32) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(rustix::process::Pid::from_raw)
        .ok_or_else(|| std::io::Error::other("pid out of range"))?;
    rustix::process::kill_process(pid, rustix::process::Signal::KILL).map_err(Into::into)
}

/// Waits until the process is gone, up to `timeout`; true if it is.
pub async fn wait_gone(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    while alive(pid) {
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    true
}

/// CPU utilisation between two samples, as percent of `vcpus` CPUs.
#[derive(Debug, Default)]
pub struct CpuSampler {
    last: Option<(Instant, Duration)>,
}

impl CpuSampler {
    pub fn sample(&mut self, pid: u32, vcpus: u32) -> f64 {
        let Some(cpu) = cpu_time(pid) else {
            return 0.0;
        };
        let now = Instant::now();
        let pct = match self.last {
            Some((t, c)) if now > t => {
                let used = cpu.saturating_sub(c).as_secs_f64();
                let wall = (now - t).as_secs_f64() * f64::from(vcpus.max(1));
                (used / wall * 100.0).clamp(0.0, 100.0)
            }
            _ => 0.0,
        };
        self.last = Some((now, cpu));
        pct
    }
}

/// The last `max` bytes of a text file, for error messages.
pub fn tail(path: &Path, max: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let start = bytes.len().saturating_sub(max);
            String::from_utf8_lossy(&bytes[start..]).trim().to_owned()
        }
        Err(_) => String::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_our_own_process() {
        let me = std::process::id();
        assert!(alive(me));
        assert!(cpu_time(me).is_some());
        assert!(!cmdline(me).unwrap().is_empty());
        assert!(!alive(u32::MAX - 1));
    }
}
