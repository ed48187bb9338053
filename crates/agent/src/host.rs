//! The host's own metrics for the `heartbeat` of seed 001, read from the host, never made up:
//! CPU from `/proc/stat`, memory from `/proc/meminfo`, disk from `statvfs` of the VM
//! directory, network from `/proc/net/dev`, CPU temperature from hwmon or thermal zones, and
//! GPUs through NVML when the NVIDIA driver is present.

use std::path::{Path, PathBuf};
use std::time::Instant;

use vmfleet_wire::fleet::HostMetrics;

/// The CPU counters of the `cpu` line of `/proc/stat`: (busy, total) jiffies.
pub fn parse_proc_stat(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().find(|l| l.starts_with("cpu "))?;
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|n| n.parse().ok())
        .collect();
    if v.len() < 4 {
        return None;
    }
    let total: u64 = v.iter().sum();
    // idle and iowait are not busy time.
    let idle = v[3] + v.get(4).copied().unwrap_or(0);
    Some((total - idle, total))
}

/// `(used, total)` in MiB from `/proc/meminfo`: used is total minus available.
pub fn parse_meminfo(meminfo: &str) -> Option<(u64, u64)> {
    let field = |name: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(name))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    let total = field("MemTotal:")?;
    let avail = field("MemAvailable:").or_else(|| field("MemFree:"))?;
    Some((total.saturating_sub(avail) / 1024, total / 1024))
}

/// Received and transmitted bytes summed over every interface but loopback.
pub fn parse_net_dev(dev: &str) -> (u64, u64) {
    dev.lines()
        .skip(2)
        .filter_map(|l| {
            let (name, rest) = l.split_once(':')?;
            if name.trim() == "lo" {
                return None;
            }
            let f: Vec<u64> = rest
                .split_whitespace()
                .filter_map(|n| n.parse().ok())
                .collect();
            Some((*f.first()?, *f.get(8)?))
        })
        .fold((0, 0), |(r, t), (a, b)| (r + a, t + b))
}

/// The CPU package temperature in °C, if the host exposes one.
pub fn cpu_temp(sys: &Path) -> Option<f64> {
    const CPU_SENSORS: [&str; 4] = ["coretemp", "k10temp", "zenpower", "cpu_thermal"];
    let read_milli = |p: PathBuf| -> Option<f64> {
        let v: f64 = std::fs::read_to_string(p).ok()?.trim().parse().ok()?;
        Some(v / 1000.0)
    };
    if let Ok(dirs) = std::fs::read_dir(sys.join("class/hwmon")) {
        for d in dirs.flatten() {
            let name = std::fs::read_to_string(d.path().join("name")).unwrap_or_default();
            if CPU_SENSORS.contains(&name.trim())
                && let Some(t) = read_milli(d.path().join("temp1_input"))
            {
                return Some(t);
            }
        }
    }
    let zones = std::fs::read_dir(sys.join("class/thermal")).ok()?;
    for z in zones.flatten() {
        let kind = std::fs::read_to_string(z.path().join("type")).unwrap_or_default();
        if matches!(kind.trim(), "x86_pkg_temp" | "cpu-thermal" | "cpu_thermal")
            && let Some(t) = read_milli(z.path().join("temp"))
        {
            return Some(t);
        }
    }
    None
}

/// Per-GPU readings, in index order.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct GpuReadings {
    pub temp: Vec<f64>,
    pub utilization: Vec<f64>,
    pub memory_used_mb: Vec<u64>,
}

/// NVIDIA GPUs through NVML; none when the driver's library is not installed.
pub struct Gpus {
    nvml: Option<nvml_wrapper::Nvml>,
}

impl Gpus {
    pub fn open() -> Self {
        let nvml = match nvml_wrapper::Nvml::init() {
            Ok(n) => Some(n),
            Err(e) => {
                tracing::debug!(error = %e, "NVML is not available: no GPU metrics");
                None
            }
        };
        Gpus { nvml }
    }

    pub fn read(&self) -> GpuReadings {
        use nvml_wrapper::enum_wrappers::device::TemperatureSensor;
        let mut r = GpuReadings::default();
        let Some(nvml) = &self.nvml else {
            return r;
        };
        let count = nvml.device_count().unwrap_or(0);
        for i in 0..count {
            let Ok(dev) = nvml.device_by_index(i) else {
                continue;
            };
            r.temp.push(
                dev.temperature(TemperatureSensor::Gpu)
                    .map_or(0.0, f64::from),
            );
            r.utilization
                .push(dev.utilization_rates().map_or(0.0, |u| f64::from(u.gpu)));
            r.memory_used_mb
                .push(dev.memory_info().map_or(0, |m| m.used >> 20));
        }
        r
    }
}

/// Samples host metrics; rates (CPU, network) are over the time since the previous sample.
pub struct HostSampler {
    disk_path: PathBuf,
    last_cpu: Option<(u64, u64)>,
    last_net: Option<(Instant, u64, u64)>,
    gpus: Gpus,
}

impl HostSampler {
    /// Disk figures are for the filesystem holding `disk_path` (the VM directory).
    pub fn new(disk_path: impl Into<PathBuf>) -> Self {
        let mut s = HostSampler {
            disk_path: disk_path.into(),
            last_cpu: None,
            last_net: None,
            gpus: Gpus::open(),
        };
        // Prime the counters so the first real sample has a baseline.
        let _ = s.sample();
        s
    }

    pub fn sample(&mut self) -> HostMetrics {
        let cpu = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_proc_stat(&s));
        let cpu_usage_percent = match (self.last_cpu, cpu) {
            (Some((b0, t0)), Some((b1, t1))) if t1 > t0 => {
                (b1.saturating_sub(b0)) as f64 / (t1 - t0) as f64 * 100.0
            }
            _ => 0.0,
        };
        self.last_cpu = cpu.or(self.last_cpu);
        let (ram_usage_mb, ram_total_mb) = std::fs::read_to_string("/proc/meminfo")
            .ok()
            .and_then(|m| parse_meminfo(&m))
            .unwrap_or((0, 0));
        let (disk_usage_gb, disk_total_gb) = disk_gb(&self.disk_path).unwrap_or((0.0, 0.0));
        let now = Instant::now();
        let (rx, tx) = std::fs::read_to_string("/proc/net/dev")
            .map(|d| parse_net_dev(&d))
            .unwrap_or((0, 0));
        let (network_rx_mbps, network_tx_mbps) = match self.last_net {
            Some((t0, rx0, tx0)) if now > t0 => {
                let secs = (now - t0).as_secs_f64();
                let mbps = |a: u64, b: u64| b.saturating_sub(a) as f64 * 8.0 / 1e6 / secs;
                (mbps(rx0, rx), mbps(tx0, tx))
            }
            _ => (0.0, 0.0),
        };
        self.last_net = Some((now, rx, tx));
        let gpu = self.gpus.read();
        HostMetrics {
            cpu_temp: cpu_temp(Path::new("/sys")),
            cpu_usage_percent,
            gpu_temp: gpu.temp,
            gpu_utilization: gpu.utilization,
            gpu_memory_used_mb: gpu.memory_used_mb,
            ram_usage_mb,
            ram_total_mb,
            disk_usage_gb,
            disk_total_gb,
            network_rx_mbps,
            network_tx_mbps,
        }
    }
}

/// How far the node may promise more than it has: allocatable = physical × ratio.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Overcommit {
    pub cpu: f64,
    pub memory: f64,
}

impl Default for Overcommit {
    fn default() -> Self {
        Overcommit {
            cpu: 1.0,
            memory: 1.0,
        }
    }
}

/// What this host may allocate, from a metrics sample: vCPUs (the CPUs this process may run
/// on) and memory scaled by the overcommit ratios, disk and GPUs as they are.
pub fn capacity(m: &HostMetrics, over: Overcommit) -> vmfleet_wire::fleet::Capacity {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    vmfleet_wire::fleet::Capacity {
        vcpus: (cpus * over.cpu.max(0.0)).floor() as u32,
        memory_mb: (m.ram_total_mb as f64 * over.memory.max(0.0)).floor() as u64,
        disk_gb: m.disk_total_gb.floor() as u64,
        gpus: u32::try_from(m.gpu_temp.len()).unwrap_or(u32::MAX),
    }
}

/// `(used, total)` GB of the filesystem holding `path` (or its nearest existing parent).
fn disk_gb(path: &Path) -> Option<(f64, f64)> {
    let existing = path.ancestors().find(|p| p.exists())?;
    let st = rustix::fs::statvfs(existing).ok()?;
    let block = st.f_frsize;
    let total = st.f_blocks * block;
    let free = st.f_bfree * block;
    let gb = |b: u64| b as f64 / 1e9;
    Some((gb(total.saturating_sub(free)), gb(total)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_proc_files() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3 4\n";
        assert_eq!(parse_proc_stat(stat), Some((150, 1000)));
        let mem = "MemTotal:       16384000 kB\nMemFree:  1000 kB\nMemAvailable:    8192000 kB\n";
        assert_eq!(parse_meminfo(mem), Some((8000, 16000)));
        let dev = "Inter-|   Receive\n face |bytes\n    lo: 999 9 0 0 0 0 0 0 999 9 0 0 0 0 0 0\n  eth0: 1000 10 0 0 0 0 0 0 2000 20 0 0 0 0 0 0\n";
        assert_eq!(parse_net_dev(dev), (1000, 2000));
    }

    #[test]
    fn temperatures_from_a_fake_sysfs() {
        let sys = tempfile::tempdir().unwrap();
        assert_eq!(cpu_temp(sys.path()), None);
        let hw = sys.path().join("class/hwmon/hwmon3");
        std::fs::create_dir_all(&hw).unwrap();
        std::fs::write(hw.join("name"), "k10temp\n").unwrap();
        std::fs::write(hw.join("temp1_input"), "45500\n").unwrap();
        assert_eq!(cpu_temp(sys.path()), Some(45.5));
    }

    #[test]
    fn samples_this_host() {
        let mut s = HostSampler::new(std::env::temp_dir());
        std::thread::sleep(std::time::Duration::from_millis(100));
        let m = s.sample();
        assert!((0.0..=100.0).contains(&m.cpu_usage_percent), "{m:?}");
        assert!(
            m.ram_total_mb > 0 && m.ram_usage_mb <= m.ram_total_mb,
            "{m:?}"
        );
        assert!(
            m.disk_total_gb > 0.0 && m.disk_usage_gb <= m.disk_total_gb,
            "{m:?}"
        );
        assert!(m.network_rx_mbps >= 0.0 && m.network_tx_mbps >= 0.0);
        // The GPU arrays are parallel: one entry per GPU in each.
        assert_eq!(m.gpu_temp.len(), m.gpu_utilization.len());
        assert_eq!(m.gpu_temp.len(), m.gpu_memory_used_mb.len());
        let c = capacity(&m, Overcommit::default());
        assert!(c.vcpus >= 1 && c.memory_mb == m.ram_total_mb, "{c:?}");
        let doubled = capacity(
            &m,
            Overcommit {
                cpu: 2.0,
                memory: 1.5,
            },
        );
        assert_eq!(doubled.vcpus, c.vcpus * 2);
    }
}
