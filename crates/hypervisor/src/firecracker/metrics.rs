//! Guest counters: Firecracker's own metrics (block and net devices), read from the named pipe
//! it flushes JSON lines into, and CPU and memory from `/proc/<pid>`.
//!
//! Firecracker's counters are *deltas*: each flushed line carries what happened since the
//! previous flush (its `SharedIncMetric`s reset when serialised), and it also flushes on its own
//! every 60 s. So every line is read and summed; the totals are what [`GuestMetrics`] reports.
//! A named pipe, rather than a file, keeps the disk from filling with lines; a reader is always
//! draining it (Firecracker writes without blocking and drops a line it cannot write).

use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::io::AsyncReadExt;
use tokio::net::unix::pipe;
use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::HypervisorError;

/// A line longer than this is not a metrics line; it is dropped.
const MAX_LINE: usize = 4 << 20;

/// Sums of the device counters of every metrics line read so far.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceTotals {
    /// How many lines were summed (the reader's progress, for a caller waiting on a flush).
    pub lines: u64,
    pub block_read_bytes: u64,
    pub block_write_bytes: u64,
    pub block_read_count: u64,
    pub block_write_count: u64,
    pub net_rx_bytes: u64,
    pub net_tx_bytes: u64,
    pub net_rx_packets: u64,
    pub net_tx_packets: u64,
}

impl DeviceTotals {
    /// Adds one flushed line: the aggregate `block` and `net` objects (Firecracker also writes
    /// per-device `block_<id>` / `net_<id>` objects, which the aggregates already sum).
    /// Returns whether the line was a metrics line.
    pub fn add_line(&mut self, line: &[u8]) -> bool {
        let Ok(Value::Object(root)) = serde_json::from_slice::<Value>(line) else {
            return false;
        };
        let count = |group: &str, field: &str| -> u64 {
            root.get(group)
                .and_then(|g| g.get(field))
                .and_then(Value::as_u64)
                .unwrap_or(0)
        };
        let add = |total: &mut u64, n: u64| *total = total.saturating_add(n);
        add(&mut self.block_read_bytes, count("block", "read_bytes"));
        add(&mut self.block_write_bytes, count("block", "write_bytes"));
        add(&mut self.block_read_count, count("block", "read_count"));
        add(&mut self.block_write_count, count("block", "write_count"));
        add(&mut self.net_rx_bytes, count("net", "rx_bytes_count"));
        add(&mut self.net_tx_bytes, count("net", "tx_bytes_count"));
        add(&mut self.net_rx_packets, count("net", "rx_packets_count"));
        add(&mut self.net_tx_packets, count("net", "tx_packets_count"));
        self.lines += 1;
        true
    }
}

/// Creates the named pipe Firecracker will flush metrics into (replacing whatever is there).
pub fn make_fifo(path: &Path) -> Result<(), HypervisorError> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(HypervisorError::io(path)(e));
        }
        _ => {}
    }
    rustix::fs::mkfifoat(
        rustix::fs::CWD,
        path,
        rustix::fs::Mode::RUSR | rustix::fs::Mode::WUSR,
    )
    .map_err(|e| HypervisorError::io(path)(e.into()))
}

/// Opens the pipe for reading and starts summing its lines. Opened read-write, so that the
/// open does not wait for a writer and the reader never sees end-of-file between writers.
pub fn start_reader(
    path: &Path,
) -> Result<(watch::Receiver<DeviceTotals>, JoinHandle<()>), HypervisorError> {
    let rx = pipe::OpenOptions::new()
        .read_write(true)
        .open_receiver(path)
        .map_err(HypervisorError::io(path))?;
    let (tx, totals) = watch::channel(DeviceTotals::default());
    Ok((totals, tokio::spawn(read_lines(rx, tx))))
}

async fn read_lines(mut rx: pipe::Receiver, tx: watch::Sender<DeviceTotals>) {
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match rx.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        pending.extend_from_slice(&buf[..n]);
        while let Some(end) = pending.iter().position(|&b| b == b'\n') {
            let line: Vec<u8> = pending.drain(..=end).collect();
            let line = &line[..line.len() - 1];
            if !line.iter().all(u8::is_ascii_whitespace) {
                tx.send_if_modified(|t| t.add_line(line));
            }
        }
        if pending.len() > MAX_LINE {
            pending.clear();
        }
    }
}

/// CPU use of a process between two readings, as a share of the guest's vCPUs.
#[derive(Debug)]
pub struct CpuSampler {
    pid: u32,
    vcpus: u32,
    ticks_per_second: u64,
    last: Mutex<Option<(Instant, u64)>>,
}

impl CpuSampler {
    /// Starts from the process's CPU time now, so the first reading covers the time since.
    pub fn new(pid: u32, vcpus: u32) -> Self {
        let ticks_per_second = rustix::param::clock_ticks_per_second().max(1);
        let last = cpu_ticks(pid).ok().map(|t| (Instant::now(), t));
        CpuSampler {
            pid,
            vcpus: vcpus.max(1),
            ticks_per_second,
            last: Mutex::new(last),
        }
    }

    /// Percent of the vCPUs used since the previous reading, 0 to 100.
    pub fn sample(&self) -> Result<f64, HypervisorError> {
        let path = format!("/proc/{}/stat", self.pid);
        let ticks = cpu_ticks(self.pid).map_err(HypervisorError::io(path))?;
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        let percent = match *last {
            Some((then, before)) => cpu_percent(
                ticks.saturating_sub(before),
                self.ticks_per_second,
                now.duration_since(then),
                self.vcpus,
            ),
            None => 0.0,
        };
        *last = Some((now, ticks));
        Ok(percent)
    }
}

fn cpu_percent(ticks: u64, per_second: u64, elapsed: Duration, vcpus: u32) -> f64 {
    let wall = elapsed.as_secs_f64() * f64::from(vcpus);
    if wall <= 0.0 {
        return 0.0;
    }
    let busy = ticks as f64 / per_second as f64;
    (busy / wall * 100.0).clamp(0.0, 100.0)
}

/// utime + stime of a process, in clock ticks.
fn cpu_ticks(pid: u32) -> std::io::Result<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))?;
    parse_stat_ticks(&stat)
        .ok_or_else(|| std::io::Error::other("unexpected /proc/<pid>/stat format"))
}

/// Fields 14 and 15 of `/proc/<pid>/stat`, counted after the command name (which is in
/// parentheses and may itself hold spaces and parentheses).
pub fn parse_stat_ticks(stat: &str) -> Option<u64> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // `rest` starts at field 3 (state): utime is field 14, stime field 15.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime.saturating_add(stime))
}

/// The resident set of a process, in bytes.
pub fn rss_bytes(pid: u32) -> Result<u64, HypervisorError> {
    let path = format!("/proc/{pid}/status");
    let status = std::fs::read_to_string(&path).map_err(HypervisorError::io(&path))?;
    parse_vmrss(&status).ok_or_else(|| HypervisorError::Io {
        path: path.into(),
        source: std::io::Error::other("no VmRSS line"),
    })
}

/// `VmRSS:   12345 kB` from `/proc/<pid>/status`, in bytes.
pub fn parse_vmrss(status: &str) -> Option<u64> {
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib.saturating_mul(1024))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn totals_sum_the_deltas_of_every_line() {
        let mut t = DeviceTotals::default();
        let line = br#"{"utc_timestamp_ms":1,"block_rootfs":{"read_bytes":100},"block":{"read_bytes":100,"write_bytes":50,"read_count":2,"write_count":1},"net":{"rx_bytes_count":10,"tx_bytes_count":20,"rx_packets_count":1,"tx_packets_count":2}}"#;
        assert!(t.add_line(line));
        assert!(t.add_line(line));
        assert!(!t.add_line(b"not json"));
        assert!(t.add_line(br#"{"vmm":{}}"#));
        assert_eq!(
            t,
            DeviceTotals {
                lines: 3,
                block_read_bytes: 200,
                block_write_bytes: 100,
                block_read_count: 4,
                block_write_count: 2,
                net_rx_bytes: 20,
                net_tx_bytes: 40,
                net_rx_packets: 2,
                net_tx_packets: 4,
            }
        );
    }

    #[test]
    fn proc_parsing() {
        let stat = "4242 (fire (cracker)) S 1 4242 4242 0 -1 4194560 1000 0 0 0 250 50 0 0 20 0 3 0 100 0 0";
        assert_eq!(parse_stat_ticks(stat), Some(300));
        assert_eq!(parse_stat_ticks("garbage"), None);
        let status = "Name:\tfirecracker\nVmPeak:\t  300000 kB\nVmRSS:\t  131072 kB\nThreads:\t3\n";
        assert_eq!(parse_vmrss(status), Some(131072 * 1024));
        assert_eq!(parse_vmrss("Name: x\n"), None);
    }

    #[test]
    fn cpu_percent_is_per_vcpu_and_bounded() {
        // 1 s of CPU over 1 s on 2 vCPUs: half.
        let p = cpu_percent(100, 100, Duration::from_secs(1), 2);
        assert!((p - 50.0).abs() < 1e-9);
        assert_eq!(cpu_percent(1000, 100, Duration::from_secs(1), 1), 100.0);
        assert_eq!(cpu_percent(5, 100, Duration::ZERO, 1), 0.0);
    }

    #[test]
    fn own_process_can_be_sampled() {
        let pid = std::process::id();
        let s = CpuSampler::new(pid, 1);
        let p = s.sample().unwrap();
        assert!((0.0..=100.0).contains(&p));
        assert!(rss_bytes(pid).unwrap() > 0);
    }

    #[tokio::test]
    async fn fifo_reader_sums_lines_written_in_pieces() {
        use std::io::Write;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("metrics.fifo");
        make_fifo(&path).unwrap();
        let (mut totals, task) = start_reader(&path).unwrap();
        let mut w = std::fs::OpenOptions::new().write(true).open(&path).unwrap();
        w.write_all(br#"{"block":{"read_bytes":7}"#).unwrap();
        w.write_all(b"}\n{\"block\":{\"read_bytes\":3}}\n").unwrap();
        totals.wait_for(|t| t.lines == 2).await.unwrap();
        assert_eq!(totals.borrow().block_read_bytes, 10);
        task.abort();
    }
}
