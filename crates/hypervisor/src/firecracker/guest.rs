//! One running Firecracker guest: its process, its API, its console and its counters.

use std::time::Duration;

use async_trait::async_trait;
use tokio::sync::watch;

use super::api::{
    Action, ActionType, ApiClient, ApiError, BalloonUpdate, SnapshotCreate, SnapshotType,
    VmRunState, VmState,
};
use super::metrics::{self, CpuSampler, DeviceTotals};
use super::process::Supervision;
use crate::HypervisorError;
use crate::backend::{BackendKind, Guest, GuestExit, GuestMetrics, SnapshotPaths};
use crate::console::Console;

/// How long `kill` waits for the process to be reaped.
const KILL_WAIT: Duration = Duration::from_secs(10);

/// How long `metrics` waits for the reader to see the line a `FlushMetrics` wrote.
const FLUSH_WAIT: Duration = Duration::from_millis(500);

/// A Firecracker guest, launched or adopted by [`super::FirecrackerBackend`]. Dropping it kills
/// the process.
pub struct FirecrackerGuest {
    pub(super) supervision: Supervision,
    pub(super) console: Console,
    pub(super) api: ApiClient,
    pub(super) totals: watch::Receiver<DeviceTotals>,
    pub(super) cpu: CpuSampler,
    pub(super) memory_total_mib: u64,
    pub(super) has_network: bool,
    pub(super) balloon: bool,
    pub(super) snapshot_timeout: Duration,
}

impl std::fmt::Debug for FirecrackerGuest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FirecrackerGuest")
            .field("pid", &self.supervision.pid)
            .field("socket", &self.api.socket())
            .finish_non_exhaustive()
    }
}

impl FirecrackerGuest {
    /// How the process ended, if it has.
    pub(super) fn exit(&self) -> Option<GuestExit> {
        self.supervision.exited.borrow().clone()
    }

    fn ensure_alive(&self) -> Result<(), HypervisorError> {
        match self.exit() {
            None => Ok(()),
            Some(how) => Err(gone(&how)),
        }
    }

    /// An API failure, explained by the process's end when that is what caused it.
    pub(super) async fn explain(&self, e: ApiError) -> HypervisorError {
        if e.is_transport() {
            let mut exited = self.supervision.exited.clone();
            let ended =
                tokio::time::timeout(Duration::from_millis(500), exited.wait_for(Option::is_some))
                    .await;
            if let Ok(Ok(how)) = ended
                && let Some(how) = how.as_ref()
            {
                return gone(how);
            }
        }
        e.into()
    }

    async fn call<F>(&self, op: F) -> Result<(), HypervisorError>
    where
        F: std::future::Future<Output = Result<(), ApiError>>,
    {
        self.ensure_alive()?;
        match op.await {
            Ok(()) => Ok(()),
            Err(e) => Err(self.explain(e).await),
        }
    }

    async fn set_state(&self, state: VmRunState) -> Result<(), HypervisorError> {
        self.call(self.api.patch("/vm", &VmState { state })).await
    }
}

fn gone(how: &GuestExit) -> HypervisorError {
    match how {
        GuestExit::Shutdown => {
            HypervisorError::GuestFailed("the Firecracker process has ended".to_owned())
        }
        GuestExit::Crashed(reason) => HypervisorError::GuestFailed(reason.clone()),
    }
}

fn path_str(path: &std::path::Path) -> Result<&str, HypervisorError> {
    path.to_str().ok_or_else(|| {
        HypervisorError::InvalidSpec(format!(
            "{} is not UTF-8, which Firecracker's JSON API cannot carry",
            path.display()
        ))
    })
}

impl Drop for FirecrackerGuest {
    fn drop(&mut self) {
        // The supervisor kills and reaps; dropping the sender would do too, this is explicit.
        let _ = self.supervision.kill.send(true);
    }
}

#[async_trait]
impl Guest for FirecrackerGuest {
    fn kind(&self) -> BackendKind {
        BackendKind::Firecracker
    }

    fn pid(&self) -> u32 {
        self.supervision.pid
    }

    fn console(&self) -> Console {
        self.console.clone()
    }

    fn exited(&self) -> watch::Receiver<Option<GuestExit>> {
        self.supervision.exited.clone()
    }

    /// Firecracker has no ACPI power button; `SendCtrlAltDel` presses Ctrl-Alt-Del on the
    /// emulated i8042 keyboard (x86_64 only), which a Linux guest answers by shutting down
    /// (Firecracker then exits, as it does on any guest reset).
    async fn power_button(&self) -> Result<(), HypervisorError> {
        self.call(self.api.put(
            "/actions",
            &Action {
                action_type: ActionType::SendCtrlAltDel,
            },
        ))
        .await
    }

    async fn kill(&self) -> Result<(), HypervisorError> {
        let _ = self.supervision.kill.send(true);
        let mut exited = self.supervision.exited.clone();
        match tokio::time::timeout(KILL_WAIT, exited.wait_for(Option::is_some)).await {
            Ok(_) => Ok(()),
            Err(_) => Err(HypervisorError::Timeout("the Firecracker process to end")),
        }
    }

    async fn metrics(&self) -> Result<GuestMetrics, HypervisorError> {
        self.ensure_alive()?;
        let pid = self.supervision.pid;

        // Make Firecracker write a line now, then wait until the reader has summed it.
        let mut totals = self.totals.clone();
        let seen = totals.borrow().lines;
        self.call(self.api.put(
            "/actions",
            &Action {
                action_type: ActionType::FlushMetrics,
            },
        ))
        .await?;
        let _ = tokio::time::timeout(FLUSH_WAIT, totals.wait_for(|t| t.lines > seen)).await;
        let t = totals.borrow().clone();

        let memory_total_bytes = self.memory_total_mib.saturating_mul(1 << 20);
        let rss = metrics::rss_bytes(pid)?;
        let net = |v: u64| self.has_network.then_some(v);
        Ok(GuestMetrics {
            cpu_percent: self.cpu.sample()?,
            // The process's resident memory: guest pages touched plus the VMM's own (a few MiB).
            memory_used_bytes: rss.min(memory_total_bytes),
            memory_total_bytes,
            disk_read_bytes: t.block_read_bytes,
            disk_write_bytes: t.block_write_bytes,
            disk_read_ops: Some(t.block_read_count),
            disk_write_ops: Some(t.block_write_count),
            net_rx_bytes: net(t.net_rx_bytes),
            net_tx_bytes: net(t.net_tx_bytes),
            net_rx_packets: net(t.net_rx_packets),
            net_tx_packets: net(t.net_tx_packets),
        })
    }

    async fn pause(&self) -> Result<(), HypervisorError> {
        self.set_state(VmRunState::Paused).await
    }

    async fn resume(&self) -> Result<(), HypervisorError> {
        self.set_state(VmRunState::Resumed).await
    }

    /// Firecracker has no reset: a guest reboot ends the process. Stop and start instead.
    async fn reboot(&self) -> Result<(), HypervisorError> {
        Err(HypervisorError::Unsupported {
            backend: "firecracker",
            op: "reboot a guest (Firecracker has no reset: a guest reboot ends the process; stop and start the VM instead)",
        })
    }

    /// A full snapshot: device state to `dest.state()`, memory to `dest.memory()`. The caller
    /// pauses the guest first and copies the disks.
    async fn snapshot(&self, dest: &SnapshotPaths) -> Result<(), HypervisorError> {
        let state = dest.state();
        let memory = dest.memory();
        let body = SnapshotCreate {
            snapshot_type: SnapshotType::Full,
            snapshot_path: path_str(&state)?,
            mem_file_path: path_str(&memory)?,
        };
        std::fs::create_dir_all(&dest.dir).map_err(HypervisorError::io(&dest.dir))?;
        self.call(
            self.api
                .put_with_timeout("/snapshot/create", &body, self.snapshot_timeout),
        )
        .await
    }

    /// Through the balloon configured at boot: inflating it by `total - mib` leaves the guest
    /// `mib`. The guest cannot grow past its boot memory this way.
    async fn set_memory(&self, mib: u64) -> Result<(), HypervisorError> {
        if !self.balloon {
            return Err(self.unsupported(
                "resize memory of a running guest (no balloon was configured at boot)",
            ));
        }
        if mib == 0 || mib > self.memory_total_mib {
            return Err(HypervisorError::InvalidSpec(format!(
                "memory must be between 1 and the {} MiB the guest booted with, not {mib} MiB",
                self.memory_total_mib
            )));
        }
        let amount_mib = self.memory_total_mib - mib;
        self.call(self.api.patch("/balloon", &BalloonUpdate { amount_mib }))
            .await
    }
}
