//! What machine a benchmark ran on, read from `/proc` and the tools themselves.

use std::path::Path;

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Machine {
    pub hostname: String,
    pub os: String,
    /// The host's kernel (`uname -r`).
    pub host_kernel: String,
    pub cpu_model: String,
    /// Logical CPUs.
    pub cores: usize,
    pub memory_mib: u64,
    /// The accelerator guests ran under.
    pub accel: String,
    pub qemu_version: String,
    /// `/proc/loadavg` when the benchmark started and when it ended: a shared machine's
    /// other work shows here.
    pub load_start: String,
    pub load_end: String,
    /// QEMU processes of others (tests, other benchmarks) running when the benchmark started
    /// and when it ended: each competes for the CPUs the guests boot on.
    pub other_qemus_start: usize,
    pub other_qemus_end: usize,
}

impl Machine {
    /// Reads the machine now; `qemu` is the emulator binary guests run under.
    pub fn read(accel: &str, qemu: &Path) -> Machine {
        let cpuinfo = read("/proc/cpuinfo");
        let cores = cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
            .max(1);
        let cpu_model = field(&cpuinfo, "model name").unwrap_or_else(|| "unknown".into());
        let memory_mib = field(&read("/proc/meminfo"), "MemTotal")
            .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
            .map_or(0, |kib| kib / 1024);
        let os = read("/etc/os-release")
            .lines()
            .find_map(|l| l.strip_prefix("PRETTY_NAME="))
            .map(|v| v.trim_matches('"').to_owned())
            .unwrap_or_else(|| "unknown".into());
        let load = load();
        Machine {
            hostname: hostname(),
            os,
            host_kernel: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu_model,
            cores,
            memory_mib,
            accel: accel.to_owned(),
            qemu_version: qemu_version(qemu),
            load_start: load.clone(),
            load_end: load,
            other_qemus_start: qemu_processes(),
            other_qemus_end: 0,
        }
    }

    /// Notes the load as the benchmark ends.
    /// Call it once the benchmark's own QEMUs are gone.
    pub fn finish(&mut self) {
        self.load_end = load();
        self.other_qemus_end = qemu_processes();
    }

    /// The hostname made safe for a file name.
    pub fn file_host(&self) -> String {
        let h: String = self
            .hostname
            .chars()
            .map(|c| {
                if c.is_ascii_alphanumeric() || c == '-' || c == '_' || c == '.' {
                    c
                } else {
                    '-'
                }
            })
            .collect();
        let h = h.trim_start_matches('.').to_owned();
        if h.is_empty() { "host".into() } else { h }
    }
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

/// The value of the first `key : value` line of a `/proc` file.
fn field(text: &str, key: &str) -> Option<String> {
    text.lines()
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim() == key)
        .map(|(_, v)| v.trim().to_owned())
}

pub fn hostname() -> String {
    let h = read("/proc/sys/kernel/hostname").trim().to_owned();
    if h.is_empty() { "unknown".into() } else { h }
}

fn load() -> String {
    read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// How many `qemu-system-*` processes run now.
fn qemu_processes() -> usize {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.parse::<u32>().is_ok())
        })
        .filter_map(|e| std::fs::read_to_string(e.path().join("comm")).ok())
        .filter(|comm| comm.starts_with("qemu-system"))
        .count()
}

/// The first line of `qemu --version`.
fn qemu_version(qemu: &Path) -> String {
    std::process::Command::new(qemu)
        .arg("--version")
        .output()
        .ok()
        .and_then(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .map(str::to_owned)
        })
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_machine() {
        let m = Machine::read("tcg", Path::new("/nonexistent/qemu"));
        assert!(m.cores >= 1);
        assert!(m.memory_mib > 0);
        assert!(!m.host_kernel.is_empty());
        assert_eq!(m.qemu_version, "unknown");
        assert!(!m.file_host().contains('/'));
    }
}
