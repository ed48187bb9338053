//! Docker's one-shot stats into [`GuestMetrics`], computed the way `docker stats` does.

use super::api;
use crate::backend::GuestMetrics;

/// `nano_cpus` is the container's CPU limit (0: none, then the host's CPUs are its share).
pub(crate) fn to_metrics(s: &api::Stats, nano_cpus: i64) -> GuestMetrics {
    let (bytes_read, bytes_written) =
        blkio_sum(s.blkio_stats.io_service_bytes_recursive.as_deref());
    let ops = s
        .blkio_stats
        .io_serviced_recursive
        .as_deref()
        .filter(|v| !v.is_empty())
        .map(|v| blkio_sum(Some(v)));
    let net = s.networks.as_ref().map(|nets| {
        nets.values().fold((0u64, 0u64, 0u64, 0u64), |acc, n| {
            (
                acc.0.saturating_add(n.rx_bytes),
                acc.1.saturating_add(n.tx_bytes),
                acc.2.saturating_add(n.rx_packets),
                acc.3.saturating_add(n.tx_packets),
            )
        })
    });
    GuestMetrics {
        cpu_percent: cpu_percent(s, nano_cpus),
        memory_used_bytes: memory_used(&s.memory_stats),
        memory_total_bytes: s.memory_stats.limit.unwrap_or(0),
        disk_read_bytes: bytes_read,
        disk_write_bytes: bytes_written,
        disk_read_ops: ops.map(|o| o.0),
        disk_write_ops: ops.map(|o| o.1),
        net_rx_bytes: net.map(|n| n.0),
        net_tx_bytes: net.map(|n| n.1),
        net_rx_packets: net.map(|n| n.2),
        net_tx_packets: net.map(|n| n.3),
    }
}

fn online_cpus(c: &api::CpuStats) -> u32 {
    c.online_cpus
        .filter(|&n| n > 0)
        .or_else(|| {
            c.cpu_usage
                .percpu_usage
                .as_ref()
                .and_then(|v| u32::try_from(v.len()).ok())
        })
        .filter(|&n| n > 0)
        .unwrap_or(1)
}

/// Percent of the container's CPU allowance used between the two samples, 0 to 100: the
/// host-wide share `docker stats` shows, divided by the cores the container may use.
fn cpu_percent(s: &api::Stats, nano_cpus: i64) -> f64 {
    let cpu_delta = s
        .cpu_stats
        .cpu_usage
        .total_usage
        .saturating_sub(s.precpu_stats.cpu_usage.total_usage) as f64;
    let system_delta = match (
        s.cpu_stats.system_cpu_usage,
        s.precpu_stats.system_cpu_usage,
    ) {
        (Some(now), Some(before)) if now > before => (now - before) as f64,
        _ => return 0.0,
    };
    let online = f64::from(online_cpus(&s.cpu_stats));
    // As `docker stats`: percent of one core, up to 100 x online CPUs.
    let of_one_core = cpu_delta / system_delta * online * 100.0;
    let allowance = if nano_cpus > 0 {
        (nano_cpus as f64 / 1e9).min(online)
    } else {
        online
    };
    (of_one_core / allowance).clamp(0.0, 100.0)
}

/// Usage minus the page cache that can be dropped, as `docker stats` reports it.
fn memory_used(m: &api::MemoryStats) -> u64 {
    let usage = m.usage.unwrap_or(0);
    let stats = m.stats.as_ref();
    let cache = stats
        .and_then(|s| s.get("total_inactive_file"))
        .or_else(|| stats.and_then(|s| s.get("inactive_file")))
        .copied()
        .unwrap_or(0);
    if cache < usage { usage - cache } else { usage }
}

/// (read, write) summed over devices; cgroup v1 says `Read`, v2 `read`.
fn blkio_sum(entries: Option<&[api::BlkioEntry]>) -> (u64, u64) {
    entries
        .unwrap_or_default()
        .iter()
        .fold((0, 0), |(r, w), e| {
            if e.op.eq_ignore_ascii_case("read") {
                (r.saturating_add(e.value), w)
            } else if e.op.eq_ignore_ascii_case("write") {
                (r, w.saturating_add(e.value))
            } else {
                (r, w)
            }
        })
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use serde_json::json;

    fn stats(v: serde_json::Value) -> api::Stats {
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn cgroup_v1_sample() {
        let s = stats(json!({
            "blkio_stats": {
                "io_service_bytes_recursive": [
                    {"major": 8, "minor": 0, "op": "Read", "value": 4096},
                    {"major": 8, "minor": 0, "op": "Write", "value": 8192},
                    {"major": 8, "minor": 0, "op": "Total", "value": 12288}
                ],
                "io_serviced_recursive": [
                    {"major": 8, "minor": 0, "op": "Read", "value": 1},
                    {"major": 8, "minor": 0, "op": "Write", "value": 2}
                ]
            },
            "cpu_stats": {
                "cpu_usage": {"total_usage": 1_500_000_000u64, "percpu_usage": [1, 2]},
                "system_cpu_usage": 12_000_000_000u64, "online_cpus": 2
            },
            "precpu_stats": {
                "cpu_usage": {"total_usage": 1_000_000_000u64},
                "system_cpu_usage": 10_000_000_000u64, "online_cpus": 2
            },
            "memory_stats": {"usage": 10_000_000, "limit": 67108864,
                "stats": {"total_inactive_file": 1_000_000, "cache": 2_000_000}},
            "networks": {
                "eth0": {"rx_bytes": 100, "rx_packets": 2, "tx_bytes": 50, "tx_packets": 1},
                "eth1": {"rx_bytes": 1, "rx_packets": 1, "tx_bytes": 1, "tx_packets": 1}
            }
        }));
        // 0.5 s of CPU in 1 s of wall time on 2 CPUs: 50 % of one core; the container may use
        // half a core, so it uses all of it.
        let m = to_metrics(&s, 500_000_000);
        assert!((m.cpu_percent - 100.0).abs() < 1e-9, "{}", m.cpu_percent);
        assert!((to_metrics(&s, 0).cpu_percent - 25.0).abs() < 1e-9);
        assert_eq!(m.memory_used_bytes, 9_000_000);
        assert_eq!(m.memory_total_bytes, 67108864);
        assert_eq!((m.disk_read_bytes, m.disk_write_bytes), (4096, 8192));
        assert_eq!((m.disk_read_ops, m.disk_write_ops), (Some(1), Some(2)));
        assert_eq!((m.net_rx_bytes, m.net_tx_bytes), (Some(101), Some(51)));
        assert_eq!((m.net_rx_packets, m.net_tx_packets), (Some(3), Some(2)));
    }

    #[test]
    fn cgroup_v2_names_and_missing_parts() {
        let s = stats(json!({
            "blkio_stats": {
                "io_service_bytes_recursive": [
                    {"op": "read", "value": 7}, {"op": "write", "value": 9}
                ],
                "io_serviced_recursive": null
            },
            "cpu_stats": {"cpu_usage": {"total_usage": 5}, "online_cpus": 4},
            "precpu_stats": {"cpu_usage": {"total_usage": 0}},
            "memory_stats": {"usage": 4096, "limit": 1024000, "stats": {"inactive_file": 96}}
        }));
        let m = to_metrics(&s, 0);
        assert_eq!(m.cpu_percent, 0.0);
        assert_eq!(m.memory_used_bytes, 4000);
        assert_eq!((m.disk_read_bytes, m.disk_write_bytes), (7, 9));
        assert_eq!(m.disk_read_ops, None);
        assert_eq!(m.net_rx_bytes, None);
    }
}
