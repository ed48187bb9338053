//! The agent's connection to the control plane (seed 001): dial out to `/fleet`, heartbeat,
//! run the commands that come back, and dial again with backoff when the connection drops.
//!
//! On every (re)connection the agent learns its node id (`node_info`), heartbeats at once, and
//! reports the rentals it runs, so the control plane's view is right again after an outage.
//! Commands are idempotent: a repeated `start_instance` finds the rental's container and starts
//! no second one.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde_json::{Value, json};
use tokio::sync::mpsc;
use vmfleet_core::NodeId;
use vmfleet_hypervisor::docker::{ContainerState, DockerRuntime};
use vmfleet_wire::fleet::{
    Ack, AgentEvent, BackendCommand, ConnectionInfo, Heartbeat, InstanceStarted, InstanceStopped,
    NAMESPACE, NODE_INFO, NodeInfo, NodeStatus, StartInstance, StopInstance, StopReason,
};

use crate::host::{HostSampler, Overcommit, capacity};
use crate::sio::{Incoming, SioClient, SioError};

/// How the agent reaches the control plane and what it runs.
pub struct Upstream {
    api_url: String,
    host_key: String,
    heartbeat: Duration,
    containers: Option<DockerRuntime>,
    state: Arc<AgentState>,
}

/// What outlives a connection.
pub struct AgentState {
    draining: AtomicBool,
    sampler: Mutex<HostSampler>,
    overcommit: Overcommit,
    /// Events to deliver when the control plane can hear them (sent with the next heartbeat).
    outbox: Mutex<Vec<AgentEvent>>,
}

impl AgentState {
    pub fn is_draining(&self) -> bool {
        self.draining.load(Ordering::SeqCst)
    }
}

/// Exponential backoff with full jitter: the n-th wait is uniform in [0, min(cap, base·2ⁿ)].
#[derive(Debug, Clone)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(base: Duration, cap: Duration) -> Self {
        Backoff {
            base,
            cap,
            attempt: 0,
        }
    }

    pub fn reset(&mut self) {
        self.attempt = 0;
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self
            .base
            .saturating_mul(1u32 << self.attempt.min(16))
            .min(self.cap);
        self.attempt = self.attempt.saturating_add(1);
        let mut b = [0u8; 8];
        let r = match getrandom::fill(&mut b) {
            Ok(()) => u64::from_le_bytes(b) as f64 / u64::MAX as f64,
            Err(_) => 0.5,
        };
        ceiling.mul_f64(r)
    }
}

fn to_value<T: serde::Serialize>(t: &T) -> Value {
    serde_json::to_value(t).unwrap_or(Value::Null)
}

impl Upstream {
    pub fn new(
        api_url: impl Into<String>,
        host_key: impl Into<String>,
        heartbeat: Duration,
        containers: Option<DockerRuntime>,
        sampler: HostSampler,
    ) -> Self {
        Upstream {
            api_url: api_url.into(),
            host_key: host_key.into(),
            heartbeat,
            containers,
            state: Arc::new(AgentState {
                draining: AtomicBool::new(false),
                sampler: Mutex::new(sampler),
                overcommit: Overcommit::default(),
                outbox: Mutex::new(Vec::new()),
            }),
        }
    }

    /// Lets the node promise more CPU or memory than it has (ratios above 1). Call it before
    /// [`Upstream::state`] or [`Upstream::run`].
    pub fn with_overcommit(mut self, overcommit: Overcommit) -> Self {
        if let Some(state) = Arc::get_mut(&mut self.state) {
            state.overcommit = overcommit;
        }
        self
    }

    pub fn state(&self) -> Arc<AgentState> {
        self.state.clone()
    }

    /// Connects and reconnects until `stop` completes.
    pub async fn run(&self, stop: impl std::future::Future<Output = ()>) {
        tokio::pin!(stop);
        // Rentals end on time whether or not the control plane is reachable.
        let sweeper = self
            .containers
            .clone()
            .map(|docker| tokio::spawn(expiry_sweep(docker, self.state.clone())));
        let _sweeper = AbortOnDrop(sweeper);
        let mut backoff = Backoff::new(Duration::from_millis(250), Duration::from_secs(30));
        loop {
            let attempt = async {
                match SioClient::connect(&self.api_url, NAMESPACE, &self.host_key).await {
                    Ok((client, incoming)) => {
                        backoff.reset();
                        let why = self.session(client, incoming).await;
                        tracing::warn!(reason = %why, "lost the control plane; reconnecting");
                    }
                    Err(SioError::Refused(why)) => {
                        tracing::error!(reason = %why, "the control plane refused this node's host key");
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, url = %self.api_url, "cannot reach the control plane")
                    }
                }
                tokio::time::sleep(backoff.next_delay()).await;
            };
            tokio::select! {
                () = &mut stop => return,
                () = attempt => {}
            }
        }
    }

    /// One connection, until it drops. Returns why it ended.
    async fn session(&self, client: SioClient, mut incoming: mpsc::Receiver<Incoming>) -> String {
        let node_id = loop {
            match tokio::time::timeout(Duration::from_secs(10), incoming.recv()).await {
                Ok(Some(Incoming::Event { name, payload, .. })) if name == NODE_INFO => {
                    match serde_json::from_value::<NodeInfo>(payload) {
                        Ok(info) => break info.node_id,
                        Err(e) => return format!("bad node_info: {e}"),
                    }
                }
                Ok(Some(Incoming::Event { .. })) => continue,
                Ok(Some(Incoming::Disconnected(why))) => return why,
                Ok(None) => return "the connection ended".into(),
                Err(_) => return "no node_info from the control plane".into(),
            }
        };
        tracing::info!(node = %node_id, "connected to the control plane");
        self.report_instances(&client).await;
        let beat = tokio::spawn(heartbeats(
            client.clone(),
            node_id.clone(),
            self.state.clone(),
            self.containers.clone(),
            self.heartbeat,
        ));
        let why = loop {
            match incoming.recv().await {
                Some(Incoming::Event { name, payload, ack }) => {
                    let me = self.clone_for_task();
                    let client = client.clone();
                    let node_id = node_id.clone();
                    tokio::spawn(async move {
                        me.command(&client, &node_id, &name, &payload, ack).await;
                    });
                }
                Some(Incoming::Disconnected(why)) => break why,
                None => break "the connection ended".into(),
            }
        };
        beat.abort();
        why
    }

    fn clone_for_task(&self) -> Upstream {
        Upstream {
            api_url: self.api_url.clone(),
            host_key: self.host_key.clone(),
            heartbeat: self.heartbeat,
            containers: self.containers.clone(),
            state: self.state.clone(),
        }
    }

    /// Runs one command and acknowledges it.
    async fn command(
        &self,
        client: &SioClient,
        node: &NodeId,
        name: &str,
        payload: &Value,
        ack: Option<u64>,
    ) {
        let reply = match BackendCommand::decode(name, payload) {
            Err(e) => {
                let detail = std::error::Error::source(&e).map(|s| format!(": {s}"));
                Ack::refused(format!("{e}{}", detail.unwrap_or_default()))
            }
            Ok(BackendCommand::DrainNode(d)) if &d.node_id != node => {
                Ack::refused(format!("this is node {node}, not {}", d.node_id))
            }
            Ok(BackendCommand::DrainNode(d)) => {
                tracing::warn!(reason = %d.reason, "draining: no new rentals");
                self.state.draining.store(true, Ordering::SeqCst);
                Ack::ok()
            }
            Ok(BackendCommand::UndrainNode(u)) if &u.node_id != node => {
                Ack::refused(format!("this is node {node}, not {}", u.node_id))
            }
            Ok(BackendCommand::UndrainNode(_)) => {
                tracing::info!("drain ended: taking new rentals again");
                self.state.draining.store(false, Ordering::SeqCst);
                Ack::ok()
            }
            Ok(BackendCommand::StartInstance(req)) => self.start(client, req).await,
            Ok(BackendCommand::StopInstance(req)) => self.stop(client, req).await,
        };
        if let Some(id) = ack {
            let _ = client.ack(id, &to_value(&reply)).await;
        }
    }

    async fn start(&self, client: &SioClient, req: StartInstance) -> Ack {
        let refuse = |message: String| InstanceStopped {
            rental_id: req.rental_id.clone(),
            // No container was made; seed 001 still wants the field.
            container_id: vmfleet_core::ContainerId::new("none")
                .expect("\"none\" is a valid container id"),
            reason: StopReason::Error,
            error_message: Some(message),
        };
        let outcome = if self.state.is_draining() {
            Err("the node is draining and takes no new rentals".to_owned())
        } else {
            match &self.containers {
                None => Err("this node has no container engine".to_owned()),
                Some(docker) => match self.fits(docker, &req).await {
                    Err(why) => Err(why),
                    Ok(()) => docker.start(&req).await.map_err(|e| e.to_string()),
                },
            }
        };
        match outcome {
            Ok(started) => {
                let ev = AgentEvent::InstanceStarted(started.instance_started(req.rental_id));
                emit(client, &ev).await;
                Ack::ok()
            }
            Err(message) => {
                emit(
                    client,
                    &AgentEvent::InstanceStopped(refuse(message.clone())),
                )
                .await;
                Ack::refused(message)
            }
        }
    }

    /// Whether the rental fits beside what already runs here, within the node's capacity.
    async fn fits(&self, docker: &DockerRuntime, req: &StartInstance) -> Result<(), String> {
        let running = docker.list().await.map_err(|e| e.to_string())?;
        // A repeated start of a running rental needs no more room.
        if running.iter().any(|c| {
            c.rental_id.as_ref() == Some(&req.rental_id) && c.state == ContainerState::Running
        }) {
            return Ok(());
        }
        let metrics = self
            .state
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample();
        let cap = capacity(&metrics, self.state.overcommit);
        let live = running
            .iter()
            .filter(|c| c.state == ContainerState::Running);
        let (cpu, mem) = live.fold((0.0f64, 0u64), |(c, m), x| {
            (
                c + x.nano_cpus as f64 / 1e9,
                m + u64::try_from(x.memory_bytes).unwrap_or(0),
            )
        });
        let want_cpu = cpu + req.resource_limits.cpu_cores;
        let want_mem_mb = (mem + req.resource_limits.ram_limit.as_bytes()) >> 20;
        if want_cpu > f64::from(cap.vcpus) {
            return Err(format!(
                "insufficient capacity: {want_cpu} CPU cores wanted in all, the node allocates {}",
                cap.vcpus
            ));
        }
        if want_mem_mb > cap.memory_mb {
            return Err(format!(
                "insufficient capacity: {want_mem_mb} MiB of memory wanted in all, the node allocates {}",
                cap.memory_mb
            ));
        }
        let gpus = req.resource_limits.gpu_indices.len();
        if gpus > cap.gpus as usize {
            return Err(format!(
                "insufficient capacity: {gpus} GPUs wanted, the node has {}",
                cap.gpus
            ));
        }
        Ok(())
    }

    async fn stop(&self, client: &SioClient, req: StopInstance) -> Ack {
        let Some(docker) = &self.containers else {
            return Ack::refused("this node has no container engine");
        };
        let ev = match docker.stop(&req).await {
            Ok(_) => InstanceStopped {
                rental_id: req.rental_id,
                container_id: req.container_id,
                reason: StopReason::Requested,
                error_message: None,
            },
            Err(e) => {
                let message = e.to_string();
                emit(
                    client,
                    &AgentEvent::InstanceStopped(InstanceStopped {
                        rental_id: req.rental_id,
                        container_id: req.container_id,
                        reason: StopReason::Error,
                        error_message: Some(message.clone()),
                    }),
                )
                .await;
                return Ack::refused(message);
            }
        };
        emit(client, &AgentEvent::InstanceStopped(ev)).await;
        Ack::ok()
    }

    /// Tells the control plane what runs here: every rental container, started or ended.
    async fn report_instances(&self, client: &SioClient) {
        let Some(docker) = &self.containers else {
            return;
        };
        let Ok(list) = docker.list().await else {
            return;
        };
        for c in list {
            let Some(rental_id) = c.rental_id.clone() else {
                continue;
            };
            let ev = if c.state == ContainerState::Running {
                let mut additional: BTreeMap<u16, u16> = c.ports.clone();
                let ssh_port = additional.remove(&22).unwrap_or(0);
                AgentEvent::InstanceStarted(InstanceStarted {
                    rental_id,
                    container_id: c.id.clone(),
                    connection_info: ConnectionInfo {
                        ssh_host: docker.config().public_host.clone(),
                        ssh_port,
                        additional_ports: additional,
                    },
                })
            } else {
                AgentEvent::InstanceStopped(InstanceStopped {
                    rental_id,
                    container_id: c.id.clone(),
                    reason: StopReason::Error,
                    error_message: Some(format!(
                        "the container ended (exit code {}) while the control plane was out of reach",
                        c.exit_code
                    )),
                })
            };
            emit(client, &ev).await;
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(t) = &self.0 {
            t.abort();
        }
    }
}

/// Every second, stops the rentals whose time is up (graceful, then forced) and queues their
/// `instance_stopped` with reason `timeout` for the control plane.
async fn expiry_sweep(docker: DockerRuntime, state: Arc<AgentState>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    loop {
        tick.tick().await;
        let now = vmfleet_core::Timestamp::now().unix_seconds();
        let Ok(list) = docker.list().await else {
            continue;
        };
        for c in list {
            let (Some(rental_id), Some(at)) = (c.rental_id.clone(), c.expires_at) else {
                continue;
            };
            if at > now || c.state != ContainerState::Running {
                continue;
            }
            tracing::info!(rental = %rental_id, "the rental's time is up: stopping it");
            let req = StopInstance {
                rental_id: rental_id.clone(),
                container_id: c.id.clone(),
                graceful: true,
                timeout_seconds: 10,
            };
            let error_message = docker.stop(&req).await.err().map(|e| e.to_string());
            state.outbox.lock().unwrap_or_else(|p| p.into_inner()).push(
                AgentEvent::InstanceStopped(InstanceStopped {
                    rental_id,
                    container_id: c.id,
                    reason: StopReason::Timeout,
                    error_message,
                }),
            );
        }
    }
}

/// Emits an agent event and waits for the control plane's acknowledgement; false when it was
/// not acknowledged (the connection is gone or the control plane did not answer).
async fn emit(client: &SioClient, ev: &AgentEvent) -> bool {
    match client
        .emit_with_ack(ev.name(), &ev.payload(), Duration::from_secs(10))
        .await
    {
        Ok(reply) if reply.get("success") == Some(&json!(true)) => true,
        Ok(reply) => {
            tracing::warn!(event = ev.name(), %reply, "the control plane refused an event");
            true
        }
        Err(e) => {
            tracing::warn!(event = ev.name(), error = %e, "an event was not acknowledged");
            false
        }
    }
}

/// Delivers the queued events, keeping those the control plane did not acknowledge.
async fn flush_outbox(client: &SioClient, state: &AgentState) {
    let pending: Vec<AgentEvent> =
        std::mem::take(&mut *state.outbox.lock().unwrap_or_else(|p| p.into_inner()));
    let mut undelivered = Vec::new();
    for ev in pending {
        if !undelivered.is_empty() || !emit(client, &ev).await {
            undelivered.push(ev);
        }
    }
    if !undelivered.is_empty() {
        let mut outbox = state.outbox.lock().unwrap_or_else(|p| p.into_inner());
        undelivered.append(&mut outbox);
        *outbox = undelivered;
    }
}

/// Heartbeats at once and then every `period`, until aborted.
async fn heartbeats(
    client: SioClient,
    node: NodeId,
    state: Arc<AgentState>,
    containers: Option<DockerRuntime>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let busy = match &containers {
            Some(d) => d
                .list()
                .await
                .map(|l| l.iter().any(|c| c.state == ContainerState::Running))
                .unwrap_or(false),
            None => false,
        };
        let status = if state.is_draining() {
            NodeStatus::Maintenance
        } else if busy {
            NodeStatus::Busy
        } else {
            NodeStatus::Online
        };
        let metrics = state
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample();
        let hb = AgentEvent::Heartbeat(Heartbeat {
            node_id: node.clone(),
            status,
            capacity: Some(capacity(&metrics, state.overcommit)),
            metrics,
        });
        emit(&client, &hb).await;
        flush_outbox(&client, &state).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_grows_to_its_cap_with_jitter() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for n in 0..10 {
            let d = b.next_delay();
            let ceiling = Duration::from_millis(100 * (1 << n)).min(Duration::from_secs(2));
            assert!(d <= ceiling, "{n}: {d:?} > {ceiling:?}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
