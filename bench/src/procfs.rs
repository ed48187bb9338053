//! What a benchmark reads of a process from `/proc` (CPU time, memory), and the file-descriptor
//! limit a benchmark with many sockets raises for itself and its children.

use serde::{Deserialize, Serialize};

use crate::{BenchError, Context, Result};

/// One reading of a process.
#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
pub struct ProcSample {
    /// User plus system CPU time of all its threads so far, in seconds
    /// (`/proc/PID/stat` fields `utime` and `stime`).
    pub cpu_s: f64,
    /// Resident memory now (`VmRSS`), KiB.
    pub rss_kib: u64,
    /// The most resident memory so far (`VmHWM`), KiB.
    pub hwm_kib: u64,
    pub threads: u64,
}

impl ProcSample {
    /// Reads process `pid` now.
    pub fn read(pid: u32) -> Result<ProcSample> {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .context(format!("reading /proc/{pid}/stat"))?;
        let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
            .context(format!("reading /proc/{pid}/status"))?;
        let (utime, stime) = stat_cpu_ticks(&stat)
            .ok_or_else(|| BenchError::new(format!("cannot parse /proc/{pid}/stat: {stat}")))?;
        let hz = rustix::param::clock_ticks_per_second().max(1);
        Ok(ProcSample {
            cpu_s: (utime + stime) as f64 / hz as f64,
            rss_kib: status_kib(&status, "VmRSS").context("no VmRSS in /proc/PID/status")?,
            hwm_kib: status_kib(&status, "VmHWM").unwrap_or(0),
            threads: status_kib(&status, "Threads").unwrap_or(0),
        })
    }

    /// This process.
    pub fn own() -> Result<ProcSample> {
        ProcSample::read(std::process::id())
    }
}

/// The whole machine's CPU time so far, in seconds of one core, from the first line of
/// `/proc/stat`: (busy, steal). Busy is user + nice + system + irq + softirq (steal apart).
pub fn machine_cpu() -> Option<(f64, f64)> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let (busy, steal) = machine_cpu_ticks(stat.lines().next()?)?;
    let hz = rustix::param::clock_ticks_per_second().max(1) as f64;
    Some((busy as f64 / hz, steal as f64 / hz))
}

/// (busy, steal) ticks of the `cpu  user nice system idle iowait irq softirq steal ...` line.
pub fn machine_cpu_ticks(line: &str) -> Option<(u64, u64)> {
    let mut f = line.split_whitespace();
    if f.next()? != "cpu" {
        return None;
    }
    let v: Vec<u64> = f.take(8).map(|x| x.parse().ok()).collect::<Option<_>>()?;
    let [user, nice, system, _idle, _iowait, irq, softirq, steal] = v[..] else {
        return None;
    };
    Some((user + nice + system + irq + softirq, steal))
}

/// `utime` and `stime` (clock ticks) of a `/proc/PID/stat` line. The command name (field 2)
/// is in parentheses and may hold spaces and parentheses itself, so fields are counted from
/// the last `)`: `state` is the first after it, `utime` the 12th, `stime` the 13th.
pub fn stat_cpu_ticks(stat: &str) -> Option<(u64, u64)> {
    let after = &stat[stat.rfind(')')? + 1..];
    let mut fields = after.split_whitespace().skip(11);
    let utime = fields.next()?.parse().ok()?;
    let stime = fields.next()?.parse().ok()?;
    Some((utime, stime))
}

/// The number of a `Key:   1234 kB` line of `/proc/PID/status` (also `Threads:   8`).
pub fn status_kib(status: &str, key: &str) -> Option<u64> {
    status.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        (k == key).then(|| v.split_whitespace().next()?.parse().ok())?
    })
}

/// The open-files limit before and after [`raise_nofile`], and its hard ceiling.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct NofileLimit {
    pub before: u64,
    pub after: u64,
    pub hard: u64,
}

/// Raises this process's soft `RLIMIT_NOFILE` to its hard limit (children inherit it); fails
/// when even that is under `need`.
pub fn raise_nofile(need: u64) -> Result<NofileLimit> {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let cur = getrlimit(Resource::Nofile);
    let before = cur.current.unwrap_or(u64::MAX);
    let hard = cur.maximum.unwrap_or(u64::MAX);
    if before < hard {
        setrlimit(
            Resource::Nofile,
            Rlimit {
                current: cur.maximum,
                maximum: cur.maximum,
            },
        )
        .context("raising RLIMIT_NOFILE")?;
    }
    let after = getrlimit(Resource::Nofile).current.unwrap_or(u64::MAX);
    if after < need {
        return Err(BenchError::new(format!(
            "RLIMIT_NOFILE is {after} (hard {hard}) but this run needs {need} open files: \
             raise the hard limit (ulimit -Hn) or run fewer agents"
        )));
    }
    Ok(NofileLimit {
        before,
        after,
        hard,
    })
}

/// The loopback ephemeral port range (`ip_local_port_range`), as (low, high).
pub fn ephemeral_ports() -> Option<(u32, u32)> {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").ok()?;
    let mut it = text.split_whitespace().map(|v| v.parse().ok());
    Some((it.next()??, it.next()??))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_stat_even_with_odd_command_names() {
        let stat = "4242 (tokio (worker) 1) S 1 4242 4242 0 -1 4194560 3020 0 0 0 \
                    1234 567 0 0 20 0 9 0 12345 1000000 2000 18446744073709551615";
        assert_eq!(stat_cpu_ticks(stat), Some((1234, 567)));
        assert_eq!(stat_cpu_ticks("12 (x) S 1 2"), None);
        assert_eq!(stat_cpu_ticks("garbage"), None);
    }

    #[test]
    fn parses_the_machine_line() {
        assert_eq!(
            machine_cpu_ticks("cpu  771324 5 168457 1210992 9136 7 1580 1522 0 0"),
            Some((771324 + 5 + 168457 + 7 + 1580, 1522))
        );
        assert_eq!(machine_cpu_ticks("cpu0 1 2 3 4 5 6 7 8"), None);
        assert_eq!(machine_cpu_ticks("cpu  1 2"), None);
        assert!(machine_cpu().is_some());
    }

    #[test]
    fn parses_status() {
        let status = "Name:\tvmfleet\nVmHWM:\t  51234 kB\nVmRSS:\t   40960 kB\nThreads:\t3\n";
        assert_eq!(status_kib(status, "VmRSS"), Some(40960));
        assert_eq!(status_kib(status, "VmHWM"), Some(51234));
        assert_eq!(status_kib(status, "Threads"), Some(3));
        assert_eq!(status_kib(status, "VmSwap"), None);
    }

    #[test]
    fn reads_this_process() {
        let s = ProcSample::own().unwrap();
        assert!(s.rss_kib > 0 && s.hwm_kib >= s.rss_kib);
        assert!(s.cpu_s >= 0.0 && s.threads >= 1);
        let l = raise_nofile(1).unwrap();
        assert!(l.after >= l.before.min(l.hard));
    }
}
