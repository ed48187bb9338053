//! Serial consoles streamed to the control plane over the agent's `/fleet` connection.
//!
//! `console_attach` starts a stream: the console's scrollback first, then every byte the guest
//! writes, as `console_output` events, until `console_detach` or the connection ends. A VM
//! booted anew gets a new console; an attached one is followed onto it. `console_input`
//! writes to the guest.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use tokio::sync::broadcast::error::RecvError;
use tokio::task::JoinHandle;
use vmfleet_core::VmId;
use vmfleet_hypervisor::Hypervisor;
use vmfleet_hypervisor::console::ConsoleReader;
use vmfleet_wire::fleet::{Ack, AgentEvent, Base64, ConsoleData};

use crate::sio::SioClient;

/// Largest `console_output` chunk; bigger reads are split.
const MAX_CHUNK: usize = 16 * 1024;

/// The consoles one connection streams.
pub(crate) struct Consoles {
    client: SioClient,
    vmm: Option<Arc<dyn Hypervisor>>,
    streams: Mutex<HashMap<VmId, JoinHandle<()>>>,
}

impl Consoles {
    pub(crate) fn new(client: SioClient, vmm: Option<Arc<dyn Hypervisor>>) -> Self {
        Consoles {
            client,
            vmm,
            streams: Mutex::new(HashMap::new()),
        }
    }

    fn streams(&self) -> std::sync::MutexGuard<'_, HashMap<VmId, JoinHandle<()>>> {
        self.streams.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Starts streaming `vm`'s console (again, from its scrollback, if it already streams).
    pub(crate) async fn attach(&self, vm: &VmId) -> Ack {
        let Some(vmm) = &self.vmm else {
            return Ack::refused("this node runs no VMs");
        };
        let reader = match vmm.console(vm).await {
            Ok(console) => console.subscribe(),
            Err(e) => return Ack::refused(e.to_string()),
        };
        let task = tokio::spawn(stream(self.client.clone(), vm.clone(), reader, true));
        if let Some(old) = self.streams().insert(vm.clone(), task) {
            old.abort();
        }
        Ack::ok()
    }

    /// Follows `vm` onto its new console if it is attached and its stream ended (the guest
    /// was stopped and booted again). Only new output is sent: the scrollback went already.
    pub(crate) async fn reattach(&self, vm: &VmId) {
        let ended = self.streams().get(vm).is_some_and(JoinHandle::is_finished);
        if !ended {
            return;
        }
        let Some(vmm) = &self.vmm else { return };
        if let Ok(console) = vmm.console(vm).await {
            let task = tokio::spawn(stream(
                self.client.clone(),
                vm.clone(),
                console.subscribe(),
                false,
            ));
            if let Some(old) = self.streams().insert(vm.clone(), task) {
                old.abort();
            }
        }
    }

    pub(crate) fn detach(&self, vm: &VmId) -> Ack {
        if let Some(task) = self.streams().remove(vm) {
            task.abort();
        }
        Ack::ok()
    }

    pub(crate) fn detach_all(&self) {
        for (_, task) in self.streams().drain() {
            task.abort();
        }
    }

    /// Writes `bytes` to `vm`'s serial console.
    pub(crate) async fn input(&self, vm: &VmId, bytes: &[u8]) -> Ack {
        let Some(vmm) = &self.vmm else {
            return Ack::refused("this node runs no VMs");
        };
        match vmm.console(vm).await {
            Ok(console) => match console.write(bytes).await {
                Ok(()) => Ack::ok(),
                Err(e) => Ack::refused(e.to_string()),
            },
            Err(e) => Ack::refused(e.to_string()),
        }
    }
}

impl Drop for Consoles {
    fn drop(&mut self) {
        self.detach_all();
    }
}

/// Sends a console's bytes as `console_output` until it closes.
async fn stream(client: SioClient, vm: VmId, mut reader: ConsoleReader, scrollback: bool) {
    if scrollback && !reader.scrollback.is_empty() {
        send(&client, &vm, &reader.scrollback).await;
    }
    loop {
        match reader.live.recv().await {
            Ok(chunk) => send(&client, &vm, &chunk).await,
            Err(RecvError::Lagged(n)) => {
                tracing::warn!(%vm, chunks = n, "console output came faster than it could be sent; some was dropped");
            }
            Err(RecvError::Closed) => return,
        }
    }
}

async fn send(client: &SioClient, vm: &VmId, bytes: &[u8]) {
    for part in bytes.chunks(MAX_CHUNK) {
        let ev: AgentEvent = AgentEvent::ConsoleOutput(ConsoleData {
            vm_id: vm.clone(),
            data: Base64(part.to_vec()),
        });
        // No acknowledgement: the stream is ordered by the connection and dies with it.
        let _ = client.emit(ev.name(), &ev.payload()).await;
    }
}
