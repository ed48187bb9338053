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
use vmfleet_hypervisor::Hypervisor;
use vmfleet_hypervisor::docker::{ContainerInfo, ContainerState, DockerRuntime};
use vmfleet_wire::fleet::{
    Ack, AgentEvent, BackendCommand, ConnectionInfo, CreateVmSpec, Heartbeat, InstanceStarted,
    InstanceStopped, NAMESPACE, NODE_INFO, NodeInfo, NodeStatus, StartInstance, StopInstance,
    StopReason, VmCommandReply, VmErrorCode, VmOperation,
};

use crate::consoles::Consoles;
use crate::host::{HostSampler, Overcommit, capacity};
use crate::sio::{Incoming, SioClient, SioError};
use crate::vms::{VmService, check_labels, committed, report};

/// How the agent reaches the control plane and what it runs.
pub struct Upstream {
    api_url: String,
    host_key: String,
    heartbeat: Duration,
    containers: Option<DockerRuntime>,
    vms: Option<Arc<VmService>>,
    state: Arc<AgentState>,
}

/// What a connection holds: the client, the node it is, the consoles it streams.
struct Session {
    client: SioClient,
    node: NodeId,
    consoles: Consoles,
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
            vms: None,
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

    /// Runs the REST API's VM operations (`vm_command`) on `vmm` and reports its VMs.
    pub fn with_vms(mut self, vmm: Arc<dyn Hypervisor>) -> Self {
        self.vms = Some(Arc::new(VmService::new(vmm)));
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
        let session = Arc::new(Session {
            consoles: Consoles::new(
                client.clone(),
                self.vms.as_ref().map(|v| v.hypervisor().clone()),
            ),
            client: client.clone(),
            node: node_id.clone(),
        });
        // Subscribed before the report, so no change falls between the two.
        let vm_states = self
            .vms
            .as_ref()
            .map(|v| tokio::spawn(forward_vm_states(v.hypervisor().clone(), session.clone())));
        let _vm_states = AbortOnDrop(vm_states);
        self.report_instances(&client).await;
        self.report_vms(&client).await;
        let beat = tokio::spawn(heartbeats(
            client.clone(),
            node_id.clone(),
            self.state.clone(),
            self.containers.clone(),
            self.vms.clone(),
            self.heartbeat,
        ));
        let why = loop {
            match incoming.recv().await {
                Some(Incoming::Event { name, payload, ack }) => {
                    let me = self.clone_for_task();
                    let session = session.clone();
                    tokio::spawn(async move {
                        me.command(&session, &name, &payload, ack).await;
                    });
                }
                Some(Incoming::Disconnected(why)) => break why,
                None => break "the connection ended".into(),
            }
        };
        beat.abort();
        session.consoles.detach_all();
        why
    }

    fn clone_for_task(&self) -> Upstream {
        Upstream {
            api_url: self.api_url.clone(),
            host_key: self.host_key.clone(),
            heartbeat: self.heartbeat,
            containers: self.containers.clone(),
            vms: self.vms.clone(),
            state: self.state.clone(),
        }
    }

    /// Runs one command and acknowledges it.
    async fn command(&self, session: &Session, name: &str, payload: &Value, ack: Option<u64>) {
        let client = &session.client;
        let reply = match BackendCommand::decode(name, payload) {
            Err(e) => {
                let detail = std::error::Error::source(&e).map(|s| format!(": {s}"));
                let message = format!("{e}{}", detail.unwrap_or_default());
                if name == "vm_command" {
                    to_value(&VmCommandReply::refused(VmErrorCode::BadRequest, message))
                } else {
                    to_value(&Ack::refused(message))
                }
            }
            Ok(BackendCommand::VmCommand(cmd)) => to_value(&self.vm_command(cmd).await),
            Ok(BackendCommand::ConsoleAttach(c)) => {
                to_value(&session.consoles.attach(&c.vm_id).await)
            }
            Ok(BackendCommand::ConsoleDetach(c)) => to_value(&session.consoles.detach(&c.vm_id)),
            Ok(BackendCommand::ConsoleInput(c)) => {
                to_value(&session.consoles.input(&c.vm_id, &c.data.0).await)
            }
            Ok(other) => to_value(&self.node_command(session, other).await),
        };
        if let Some(id) = ack {
            let _ = client.ack(id, &reply).await;
        }
    }

    /// Runs one VM operation, once per request id.
    async fn vm_command(&self, cmd: vmfleet_wire::fleet::VmCommand) -> VmCommandReply {
        let Some(vms) = &self.vms else {
            return VmCommandReply::refused(
                VmErrorCode::NoHypervisor,
                "this node runs no VMs (it has no hypervisor)",
            );
        };
        let admit = async {
            let (VmOperation::Create(spec) | VmOperation::ImportBegin { spec, .. }) = &cmd.op
            else {
                return Ok(());
            };
            self.admit_vm(spec).await
        };
        vms.run(cmd.clone(), admit).await
    }

    /// Whether a new VM may be defined here: the node is not draining and has room for it.
    async fn admit_vm(&self, spec: &CreateVmSpec) -> Result<(), (VmErrorCode, String)> {
        check_labels(&spec.labels)?;
        if self.state.is_draining() {
            return Err((
                VmErrorCode::Draining,
                "the node is draining and takes no new VMs".to_owned(),
            ));
        }
        let containers = match &self.containers {
            Some(docker) => docker
                .list()
                .await
                .map_err(|e| (VmErrorCode::InsufficientCapacity, e.to_string()))?,
            None => Vec::new(),
        };
        self.room_for(
            &containers,
            f64::from(spec.vcpu_count),
            spec.mem_size_mib,
            0,
        )
        .await
        .map_err(|why| (VmErrorCode::InsufficientCapacity, why))
    }

    /// The node commands of seed 001 (and undrain).
    async fn node_command(&self, session: &Session, cmd: BackendCommand) -> Ack {
        let (client, node) = (&session.client, &session.node);
        match cmd {
            BackendCommand::DrainNode(d) if &d.node_id != node => {
                Ack::refused(format!("this is node {node}, not {}", d.node_id))
            }
            BackendCommand::DrainNode(d) => {
                tracing::warn!(reason = %d.reason, "draining: no new rentals");
                self.state.draining.store(true, Ordering::SeqCst);
                Ack::ok()
            }
            BackendCommand::UndrainNode(u) if &u.node_id != node => {
                Ack::refused(format!("this is node {node}, not {}", u.node_id))
            }
            BackendCommand::UndrainNode(_) => {
                tracing::info!("drain ended: taking new rentals again");
                self.state.draining.store(false, Ordering::SeqCst);
                Ack::ok()
            }
            BackendCommand::StartInstance(req) => self.start(client, req).await,
            BackendCommand::StopInstance(req) => self.stop(client, req).await,
            BackendCommand::VmCommand(_)
            | BackendCommand::ConsoleAttach(_)
            | BackendCommand::ConsoleDetach(_)
            | BackendCommand::ConsoleInput(_) => Ack::refused("not a node command"),
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
        let limits = &req.resource_limits;
        self.room_for(
            &running,
            limits.cpu_cores,
            limits.ram_limit.as_bytes() >> 20,
            limits.gpu_indices.len(),
        )
        .await
    }

    /// Whether `cpu` cores, `mem_mb` MiB and `gpus` GPUs fit beside the rental `containers`
    /// (as just listed) that run and the defined VMs, within the node's capacity (its
    /// overcommit applied).
    async fn room_for(
        &self,
        containers: &[ContainerInfo],
        cpu: f64,
        mem_mb: u64,
        gpus: usize,
    ) -> Result<(), String> {
        let (mut used_cpu, mut used_mem) = (0.0f64, 0u64);
        for c in containers
            .iter()
            .filter(|c| c.state == ContainerState::Running)
        {
            used_cpu += c.nano_cpus as f64 / 1e9;
            used_mem += u64::try_from(c.memory_bytes).unwrap_or(0) >> 20;
        }
        if let Some(vms) = &self.vms {
            let (c, m) = committed(&vms.hypervisor().list().await);
            used_cpu += c;
            used_mem += m;
        }
        let metrics = self
            .state
            .sampler
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .sample();
        let cap = capacity(&metrics, self.state.overcommit);
        let want_cpu = used_cpu + cpu;
        let want_mem_mb = used_mem + mem_mb;
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

    /// Tells the control plane the state of every VM here (those that died while the agent
    /// was down included: the hypervisor layer found them in `error` when it recovered).
    async fn report_vms(&self, client: &SioClient) {
        let Some(vms) = &self.vms else {
            return;
        };
        for st in vms.hypervisor().list().await {
            emit(client, &AgentEvent::VmState(report(&st))).await;
        }
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

/// Reports every VM state change to the control plane, and streams again the consoles it
/// follows when their VM boots anew.
async fn forward_vm_states(vmm: Arc<dyn Hypervisor>, session: Arc<Session>) {
    let mut changes = vmm.subscribe();
    loop {
        match changes.recv().await {
            Ok(st) => {
                if st.state == vmfleet_core::VmState::Running {
                    session.consoles.reattach(&st.id).await;
                }
                emit(&session.client, &AgentEvent::VmState(report(&st))).await;
            }
            Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                // Changes were lost: the current state of every VM makes up for them.
                tracing::warn!(missed = n, "VM state changes came too fast; reporting all");
                for st in vmm.list().await {
                    emit(&session.client, &AgentEvent::VmState(report(&st))).await;
                }
            }
            Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
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
    vms: Option<Arc<VmService>>,
    period: Duration,
) {
    let mut tick = tokio::time::interval(period);
    loop {
        tick.tick().await;
        let busy_containers = match &containers {
            Some(d) => d
                .list()
                .await
                .map(|l| l.iter().any(|c| c.state == ContainerState::Running))
                .unwrap_or(false),
            None => false,
        };
        let busy_vms = match &vms {
            Some(v) => v
                .hypervisor()
                .list()
                .await
                .iter()
                .any(|st| st.state.has_process()),
            None => false,
        };
        let busy = busy_containers || busy_vms;
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
