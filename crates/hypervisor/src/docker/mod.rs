//! The Docker driver: seed 001's `start_instance` / `stop_instance` as containers, through the
//! Engine API on its Unix socket.
//!
//! - A rental has at most one container, named `vmfleet-<rentalId>` and labelled
//!   `vmfleet.rental=<rentalId>`; starting a rental again returns the container it has.
//! - Limits are the engine's: `NanoCpus`, `Memory`, `StorageOpt.size` (only where the storage
//!   driver enforces it; refused with [`HypervisorError::DiskLimitUnsupported`] otherwise),
//!   NVIDIA `DeviceRequests`. Ports are published on one host address (loopback by default).
//! - A start that fails leaves no container behind.
//! - Stopping is graceful (the engine's stop with a timeout) or a kill, and reports which
//!   happened; the container is removed afterwards.
//! - The console is the container's attach stream in a [`Console`]; metrics come from the
//!   engine's one-shot stats.

mod api;
mod attach;
mod client;
pub mod scratch;
mod spec;
mod stats;

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr};
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use hyper::{Method, StatusCode};
use tokio::sync::Mutex;
use vmfleet_core::{ContainerId, ImageRef, RentalId};
use vmfleet_wire::fleet::{ConnectionInfo, InstanceStarted, StartInstance, StopInstance};

use crate::HypervisorError;
use crate::backend::GuestMetrics;
use crate::console::Console;
use client::{Engine, Payload, Refusal, segment};

pub use scratch::{ScratchDaemon, import_busybox};
pub use spec::{
    ContainerInfo, ContainerSpec, ContainerState, DiskLimitSupport, NAME_PREFIX, RENTAL_LABEL,
    SSH_PORT,
};

/// Where the engine is and how containers are published.
#[derive(Debug, Clone, PartialEq)]
pub struct DockerConfig {
    /// The engine's Unix socket.
    pub socket: PathBuf,
    /// The host renters connect to: `sshHost` of the connection info.
    pub public_host: String,
    /// The host address published ports are bound to.
    pub bind_ip: IpAddr,
    /// Pull an image that is not on the node before creating the container.
    pub pull_missing_images: bool,
    /// The longest any single engine request may take (stop adds its own timeout to it).
    pub request_timeout: Duration,
    /// The longest an image pull may take.
    pub pull_timeout: Duration,
}

impl Default for DockerConfig {
    fn default() -> Self {
        DockerConfig {
            socket: PathBuf::from("/var/run/docker.sock"),
            public_host: "localhost".to_owned(),
            bind_ip: IpAddr::V4(Ipv4Addr::LOCALHOST),
            pull_missing_images: true,
            request_timeout: Duration::from_secs(30),
            pull_timeout: Duration::from_secs(30 * 60),
        }
    }
}

impl DockerConfig {
    pub fn new(socket: impl Into<PathBuf>, public_host: impl Into<String>) -> Self {
        DockerConfig {
            socket: socket.into(),
            public_host: public_host.into(),
            ..DockerConfig::default()
        }
    }
}

/// A running rental container and how renters reach it.
#[derive(Debug, Clone, PartialEq)]
pub struct StartedContainer {
    pub container: ContainerInfo,
    pub connection_info: ConnectionInfo,
    /// The rental already had this container: nothing was created.
    pub reused: bool,
}

impl StartedContainer {
    pub fn container_id(&self) -> &ContainerId {
        &self.container.id
    }

    /// Seed 001's `instance_started` for this container.
    pub fn instance_started(&self, rental_id: RentalId) -> InstanceStarted {
        InstanceStarted {
            rental_id,
            container_id: self.container.id.clone(),
            connection_info: self.connection_info.clone(),
        }
    }
}

/// How a stopped container ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum StopEnd {
    /// It exited within the graceful timeout after the stop signal.
    ExitedByItself,
    /// It did not exit within the graceful timeout and was killed.
    TimedOut,
    /// It was killed at once (a stop that was not graceful).
    Killed,
    /// It was not running when the stop came.
    AlreadyStopped,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StopReport {
    pub container_id: ContainerId,
    pub ended: StopEnd,
    pub exit_code: i64,
}

/// The Docker driver. Cheap to clone; clones share the consoles.
#[derive(Clone)]
pub struct DockerRuntime {
    inner: Arc<Inner>,
}

struct Inner {
    engine: Engine,
    config: DockerConfig,
    consoles: Mutex<HashMap<ContainerId, Console>>,
}

impl std::fmt::Debug for DockerRuntime {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DockerRuntime")
            .field("config", &self.inner.config)
            .finish_non_exhaustive()
    }
}

const START_ATTEMPTS: usize = 3;
const LOG_LINES_IN_ERRORS: &str = "20";

impl DockerRuntime {
    pub fn new(config: DockerConfig) -> Self {
        DockerRuntime {
            inner: Arc::new(Inner {
                engine: Engine::new(config.socket.clone(), config.request_timeout),
                config,
                consoles: Mutex::new(HashMap::new()),
            }),
        }
    }

    pub fn config(&self) -> &DockerConfig {
        &self.inner.config
    }

    fn engine(&self) -> &Engine {
        &self.inner.engine
    }

    /// Checks that the engine answers and speaks an API version this driver knows.
    pub async fn ping(&self) -> Result<(), HypervisorError> {
        self.engine()
            .request(Method::GET, "/_ping", &[], Payload::Empty, None)
            .await?
            .map(|_| ())
            .map_err(|r| r.into_error("answer a ping"))
    }

    /// Whether this engine's storage driver can enforce a disk limit.
    pub async fn disk_limit_support(&self) -> Result<DiskLimitSupport, HypervisorError> {
        let info: api::Info = self
            .engine()
            .get("/info", &[])
            .await?
            .map_err(|r| r.into_error("report its configuration"))?;
        Ok(DiskLimitSupport::of(&info))
    }

    /// Seed 001's `start_instance`: the rental's container, created and started, or the one it
    /// already has.
    pub async fn start(&self, req: &StartInstance) -> Result<StartedContainer, HypervisorError> {
        self.start_spec(&ContainerSpec::from_start(req)).await
    }

    /// Starts the container `spec` describes, or returns the rental's existing container.
    pub async fn start_spec(
        &self,
        spec: &ContainerSpec,
    ) -> Result<StartedContainer, HypervisorError> {
        spec.validate()?;
        let name = spec.name();
        for _ in 0..START_ATTEMPTS {
            if let Some(existing) = self.inspect_opt(&name).await? {
                return self.reuse(spec, existing).await;
            }
            if spec.disk.is_some() {
                self.check_disk_limit().await?;
            }
            self.ensure_image(&spec.image).await?;
            let body = spec.create_body(self.inner.config.bind_ip)?;
            let created: api::Created = match self
                .engine()
                .post_json("/containers/create", &[("name", &name)], &body)
                .await?
            {
                Ok(c) => c,
                // Another start of the same rental created it meanwhile: use that one.
                Err(r) if r.status == 409 => continue,
                Err(r) => return Err(self.create_refused(spec, r).await),
            };
            for w in created.warnings.iter().flatten() {
                tracing::warn!(container = %name, warning = %w, "the Docker engine warns");
            }
            return self.start_created(spec, &created.id).await;
        }
        Err(HypervisorError::Engine {
            op: "create a container",
            status: 409,
            message: format!("the name {name} is taken and released again repeatedly"),
        })
    }

    /// The rental already has a container: make sure it runs, and return it.
    async fn reuse(
        &self,
        spec: &ContainerSpec,
        existing: ContainerInfo,
    ) -> Result<StartedContainer, HypervisorError> {
        if existing.rental_id.as_ref() != Some(&spec.rental_id) {
            return Err(HypervisorError::NotRentalContainer {
                container: existing.name,
                rental: spec.rental_id.to_string(),
            });
        }
        let id = existing.id.clone();
        let info = match &existing.state {
            ContainerState::Running | ContainerState::Restarting => existing,
            ContainerState::Created | ContainerState::Exited => {
                tracing::info!(container = %id, "restarting the rental's stopped container");
                self.engine()
                    .post(
                        &format!("/containers/{}/start", segment(id.as_str())),
                        &[],
                        None,
                    )
                    .await?
                    .map_err(|r| start_refused(spec, r))?;
                self.inspect(&id).await?
            }
            ContainerState::Paused => {
                self.engine()
                    .post(
                        &format!("/containers/{}/unpause", segment(id.as_str())),
                        &[],
                        None,
                    )
                    .await?
                    .map_err(|r| r.into_error("unpause a container"))?;
                self.inspect(&id).await?
            }
            other => {
                return Err(HypervisorError::Engine {
                    op: "start a container",
                    status: 409,
                    message: format!("the rental's container {} is {other:?}", existing.name),
                });
            }
        };
        Ok(StartedContainer {
            connection_info: info.connection_info(&self.inner.config.public_host),
            container: info,
            reused: true,
        })
    }

    async fn start_created(
        &self,
        spec: &ContainerSpec,
        id: &str,
    ) -> Result<StartedContainer, HypervisorError> {
        let started = self
            .engine()
            .post(&format!("/containers/{}/start", segment(id)), &[], None)
            .await;
        let failure = match started {
            Ok(Ok(_)) => None,
            Ok(Err(r)) => Some(start_refused(spec, r)),
            Err(e) => Some(e),
        };
        if let Some(e) = failure {
            self.remove_after_failure(id).await;
            return Err(e);
        }
        let info = self
            .inspect_opt(id)
            .await?
            .ok_or_else(|| HypervisorError::ContainerNotFound(id.to_owned()))?;
        // A program that ends at once (a crashing entrypoint) is a failed start too. This sees
        // it only when it has ended by the time of the inspect: best effort, no added wait.
        if matches!(info.state, ContainerState::Exited | ContainerState::Dead) {
            let output = self.logs_tail(&info).await.unwrap_or_default();
            self.remove_after_failure(id).await;
            return Err(HypervisorError::GuestFailed(format!(
                "container {} exited at once with code {}{}{}",
                info.name,
                info.exit_code,
                if output.trim().is_empty() { "" } else { ": " },
                output.trim()
            )));
        }
        Ok(StartedContainer {
            connection_info: info.connection_info(&self.inner.config.public_host),
            container: info,
            reused: false,
        })
    }

    async fn remove_after_failure(&self, id: &str) {
        if let Err(e) = self.remove(id).await {
            tracing::warn!(container = %id, error = %e, "cannot remove a container that failed to start");
        }
    }

    async fn check_disk_limit(&self) -> Result<(), HypervisorError> {
        match self.disk_limit_support().await? {
            DiskLimitSupport::No { driver, backing_fs } => {
                Err(HypervisorError::DiskLimitUnsupported { driver, backing_fs })
            }
            DiskLimitSupport::Yes | DiskLimitSupport::IfProjectQuota => Ok(()),
        }
    }

    async fn create_refused(&self, spec: &ContainerSpec, r: Refusal) -> HypervisorError {
        let lower = r.message.to_ascii_lowercase();
        if spec.disk.is_some() && (lower.contains("storage-opt") || lower.contains("quota")) {
            let backing_fs = match self.disk_limit_support().await {
                Ok(DiskLimitSupport::No { backing_fs, .. }) => backing_fs,
                _ => "a file system without project quotas".to_owned(),
            };
            let driver = self
                .engine()
                .get::<api::Info>("/info", &[])
                .await
                .ok()
                .and_then(Result::ok)
                .map(|i| i.driver)
                .unwrap_or_else(|| "its storage driver".to_owned());
            return HypervisorError::DiskLimitUnsupported { driver, backing_fs };
        }
        match r.status {
            404 => HypervisorError::ImageUnavailable {
                image: spec.image.to_string(),
                reason: r.message,
            },
            400 => HypervisorError::InvalidSpec(format!(
                "the Docker engine refused the container: {}",
                r.message
            )),
            _ => r.into_error("create a container"),
        }
    }

    /// Makes sure the image is on the node, pulling it when allowed.
    async fn ensure_image(&self, image: &ImageRef) -> Result<(), HypervisorError> {
        let path = format!("/images/{}/json", segment(image.as_str()));
        match self
            .engine()
            .request(Method::GET, &path, &[], Payload::Empty, None)
            .await?
        {
            Ok(_) => return Ok(()),
            Err(r) if r.status == 404 => {}
            Err(r) => return Err(r.into_error("inspect an image")),
        }
        if !self.inner.config.pull_missing_images {
            return Err(HypervisorError::ImageUnavailable {
                image: image.to_string(),
                reason: "pulling images is turned off".to_owned(),
            });
        }
        let (from, tag) = pull_params(image.as_str());
        let mut query = vec![("fromImage", from)];
        if let Some(tag) = tag {
            query.push(("tag", tag));
        }
        tracing::info!(image = %image, "pulling an image");
        self.engine()
            .progress_stream(
                "/images/create",
                &query,
                Payload::Empty,
                self.inner.config.pull_timeout,
            )
            .await?
            .map_err(|r| HypervisorError::ImageUnavailable {
                image: image.to_string(),
                reason: r.message,
            })
    }

    /// Imports a root file system (a tar stream) as image `reference` (`repo:tag`), as
    /// `docker import` does; `changes` are Dockerfile instructions such as `CMD ["sh"]`.
    pub async fn import_image(
        &self,
        reference: &str,
        tar: Bytes,
        changes: &[&str],
    ) -> Result<(), HypervisorError> {
        let (repo, tag) = pull_params(reference);
        let mut query = vec![("fromSrc", "-"), ("repo", repo)];
        if let Some(tag) = tag {
            query.push(("tag", tag));
        }
        query.extend(changes.iter().map(|c| ("changes", *c)));
        self.engine()
            .progress_stream(
                "/images/create",
                &query,
                Payload::Tar(tar),
                self.inner.config.pull_timeout,
            )
            .await?
            .map_err(|r| r.into_error("import an image"))
    }

    /// Seed 001's `stop_instance`: stops the rental's container (gracefully within
    /// `timeoutSeconds`, or a kill), then removes it.
    pub async fn stop(&self, req: &StopInstance) -> Result<StopReport, HypervisorError> {
        self.stop_container(
            &req.rental_id,
            &req.container_id,
            req.graceful,
            req.timeout_seconds,
        )
        .await
    }

    pub async fn stop_container(
        &self,
        rental: &RentalId,
        id: &ContainerId,
        graceful: bool,
        timeout_seconds: u32,
    ) -> Result<StopReport, HypervisorError> {
        let info = self.inspect(id).await?;
        if info.rental_id.as_ref() != Some(rental) {
            return Err(HypervisorError::NotRentalContainer {
                container: id.to_string(),
                rental: rental.to_string(),
            });
        }
        let path = |what: &str| format!("/containers/{}/{what}", segment(info.id.as_str()));
        let running = matches!(
            info.state,
            ContainerState::Running | ContainerState::Paused | ContainerState::Restarting
        );
        let ended = if !running {
            StopEnd::AlreadyStopped
        } else if graceful {
            let since = unix_now();
            let t = timeout_seconds.to_string();
            let limit =
                self.inner.config.request_timeout + Duration::from_secs(timeout_seconds.into());
            match self
                .engine()
                .post(&path("stop"), &[("t", &t)], Some(limit))
                .await?
            {
                Ok(StatusCode::NOT_MODIFIED) => StopEnd::AlreadyStopped,
                Ok(_) => {
                    if self.was_killed(&info.id, &since, &unix_now()).await? {
                        StopEnd::TimedOut
                    } else {
                        StopEnd::ExitedByItself
                    }
                }
                Err(r) if r.status == 404 => {
                    return Err(HypervisorError::ContainerNotFound(id.to_string()));
                }
                Err(r) => return Err(r.into_error("stop a container")),
            }
        } else {
            match self
                .engine()
                .post(&path("kill"), &[("signal", "KILL")], None)
                .await?
            {
                Ok(_) => {
                    self.engine()
                        .post(&path("wait"), &[("condition", "not-running")], None)
                        .await?
                        .map_err(|r| r.into_error("wait for a container"))?;
                    StopEnd::Killed
                }
                // Not running any more.
                Err(r) if r.status == 409 => StopEnd::AlreadyStopped,
                Err(r) if r.status == 404 => {
                    return Err(HypervisorError::ContainerNotFound(id.to_string()));
                }
                Err(r) => return Err(r.into_error("kill a container")),
            }
        };
        let exit_code = match self.inspect_opt(info.id.as_str()).await? {
            Some(after) => after.exit_code,
            None => info.exit_code,
        };
        if let Some(console) = self.inner.consoles.lock().await.remove(&info.id) {
            console.close();
        }
        self.remove(info.id.as_str()).await?;
        Ok(StopReport {
            container_id: info.id,
            ended,
            exit_code,
        })
    }

    /// Whether the engine sent the container SIGKILL between `since` and `until`.
    async fn was_killed(
        &self,
        id: &ContainerId,
        since: &str,
        until: &str,
    ) -> Result<bool, HypervisorError> {
        let filters = serde_json::json!({
            "container": [id.as_str()],
            "type": ["container"],
            "event": ["kill"],
        })
        .to_string();
        let (_, body) = self
            .engine()
            .request(
                Method::GET,
                "/events",
                &[("since", since), ("until", until), ("filters", &filters)],
                Payload::Empty,
                None,
            )
            .await?
            .map_err(|r| r.into_error("report events"))?;
        Ok(body
            .split(|&b| b == b'\n')
            .filter_map(|line| serde_json::from_slice::<api::Event>(line).ok())
            .any(|e| {
                e.action == "kill"
                    && e.actor
                        .attributes
                        .get("signal")
                        .is_some_and(|s| matches!(s.as_str(), "9" | "KILL" | "SIGKILL"))
            }))
    }

    /// Removes a container, running or not, with its anonymous volumes. Gone already is fine.
    async fn remove(&self, id: &str) -> Result<(), HypervisorError> {
        match self
            .engine()
            .delete(
                &format!("/containers/{}", segment(id)),
                &[("force", "true"), ("v", "true")],
            )
            .await?
        {
            Ok(_) => Ok(()),
            Err(r) if r.status == 404 => Ok(()),
            // Removal already in progress.
            Err(r) if r.status == 409 && r.message.contains("in progress") => Ok(()),
            Err(r) => Err(r.into_error("remove a container")),
        }
    }

    /// Every container vmfleet made on this engine (running or not), for crash recovery.
    pub async fn list(&self) -> Result<Vec<ContainerInfo>, HypervisorError> {
        let filters = serde_json::json!({ "label": [RENTAL_LABEL] }).to_string();
        let entries: Vec<api::ListEntry> = self
            .engine()
            .get(
                "/containers/json",
                &[("all", "true"), ("filters", &filters)],
            )
            .await?
            .map_err(|r| r.into_error("list containers"))?;
        let mut out = Vec::with_capacity(entries.len());
        for e in entries {
            // One removed since the listing is simply not there any more.
            if let Some(info) = self.inspect_opt(&e.id).await? {
                out.push(info);
            }
        }
        Ok(out)
    }

    /// The rental's container, if it has one.
    pub async fn find_rental(
        &self,
        rental: &RentalId,
    ) -> Result<Option<ContainerInfo>, HypervisorError> {
        Ok(self
            .inspect_opt(&spec::container_name(rental))
            .await?
            .filter(|i| i.rental_id.as_ref() == Some(rental)))
    }

    pub async fn inspect(&self, id: &ContainerId) -> Result<ContainerInfo, HypervisorError> {
        self.inspect_opt(id.as_str())
            .await?
            .ok_or_else(|| HypervisorError::ContainerNotFound(id.to_string()))
    }

    async fn inspect_opt(
        &self,
        id_or_name: &str,
    ) -> Result<Option<ContainerInfo>, HypervisorError> {
        match self
            .engine()
            .get::<api::Inspect>(&format!("/containers/{}/json", segment(id_or_name)), &[])
            .await?
        {
            Ok(i) => ContainerInfo::from_inspect(i).map(Some),
            Err(r) if r.status == 404 => Ok(None),
            Err(r) => Err(r.into_error("inspect a container")),
        }
    }

    /// The container's console: its output so far and from now on (attach stream with logs),
    /// and its stdin when the container was created with an open stdin. Shared: every caller
    /// gets the same console while the container runs. A stopped container's console holds
    /// its logs and is closed.
    pub async fn console(&self, id: &ContainerId) -> Result<Console, HypervisorError> {
        let mut consoles = self.inner.consoles.lock().await;
        if let Some(c) = consoles.get(id)
            && !c.is_closed()
        {
            return Ok(c.clone());
        }
        let info = self.inspect(id).await?;
        let console = Console::new();
        if info.is_running() {
            let stdin = if info.open_stdin { "1" } else { "0" };
            let io = self
                .engine()
                .upgrade(
                    &format!("/containers/{}/attach", segment(info.id.as_str())),
                    &[
                        ("stream", "1"),
                        ("logs", "1"),
                        ("stdout", "1"),
                        ("stderr", "1"),
                        ("stdin", stdin),
                    ],
                )
                .await?
                .map_err(|r| match r.status {
                    404 => HypervisorError::ContainerNotFound(id.to_string()),
                    _ => r.into_error("attach to a container"),
                })?;
            let (read, write) = tokio::io::split(io);
            if info.open_stdin {
                console.set_input(Box::new(write)).await;
            }
            tokio::spawn(attach::pump(read, info.tty, console.clone()));
        } else {
            console.push(&self.logs(&info, None).await?);
            console.close();
        }
        // Consoles of containers that ended and were never stopped through here.
        consoles.retain(|_, c| !c.is_closed());
        consoles.insert(info.id, console.clone());
        Ok(console)
    }

    /// The container's output (stdout and stderr), the last `tail` lines or all of it.
    async fn logs(
        &self,
        info: &ContainerInfo,
        tail: Option<&str>,
    ) -> Result<Bytes, HypervisorError> {
        let (_, body) = self
            .engine()
            .request(
                Method::GET,
                &format!("/containers/{}/logs", segment(info.id.as_str())),
                &[
                    ("stdout", "1"),
                    ("stderr", "1"),
                    ("tail", tail.unwrap_or("all")),
                ],
                Payload::Empty,
                None,
            )
            .await?
            .map_err(|r| r.into_error("read a container's logs"))?;
        if info.tty {
            return Ok(body);
        }
        let mut out = Vec::with_capacity(body.len());
        attach::Demux::default().feed(&body, |p| out.extend_from_slice(p));
        Ok(Bytes::from(out))
    }

    async fn logs_tail(&self, info: &ContainerInfo) -> Result<String, HypervisorError> {
        let b = self.logs(info, Some(LOG_LINES_IN_ERRORS)).await?;
        Ok(String::from_utf8_lossy(&b).into_owned())
    }

    /// One reading of the container's counters (the engine samples twice, about a second
    /// apart, for the CPU share).
    pub async fn metrics(&self, id: &ContainerId) -> Result<GuestMetrics, HypervisorError> {
        let info = self.inspect(id).await?;
        let stats: api::Stats = self
            .engine()
            .get(
                &format!("/containers/{}/stats", segment(info.id.as_str())),
                &[("stream", "false")],
            )
            .await?
            .map_err(|r| match r.status {
                404 => HypervisorError::ContainerNotFound(id.to_string()),
                _ => r.into_error("report a container's stats"),
            })?;
        Ok(stats::to_metrics(&stats, info.nano_cpus))
    }
}

fn start_refused(spec: &ContainerSpec, r: Refusal) -> HypervisorError {
    let lower = r.message.to_ascii_lowercase();
    if !spec.gpus.is_empty() && lower.contains("device driver") {
        let ids: Vec<&str> = spec.gpus.iter().map(|g| g.as_str()).collect();
        return HypervisorError::InsufficientResources(format!(
            "GPUs {} ({})",
            ids.join(", "),
            r.message
        ));
    }
    if lower.contains("port is already allocated") || lower.contains("address already in use") {
        return HypervisorError::InsufficientResources(format!(
            "the host ports asked for ({})",
            r.message
        ));
    }
    if r.status == 400 {
        // The runtime could not run the container's program (missing executable, bad
        // working directory): the image or the command is wrong, not the host.
        return HypervisorError::InvalidSpec(format!("the container cannot start: {}", r.message));
    }
    r.into_error("start a container")
}

/// `repo[:tag]` or `repo@digest` -> the image and the tag to pass (`latest` when there is
/// neither, as the docker CLI does; none for a digest).
fn pull_params(reference: &str) -> (&str, Option<&str>) {
    if reference.contains('@') {
        return (reference, None);
    }
    let name_start = reference.rfind('/').map_or(0, |i| i + 1);
    match reference[name_start..].rfind(':') {
        Some(i) => (
            &reference[..name_start + i],
            Some(&reference[name_start + i + 1..]),
        ),
        None => (reference, Some("latest")),
    }
}

/// Now as the engine's `since`/`until` take it: seconds and nanoseconds since the epoch.
fn unix_now() -> String {
    let d = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default();
    format!("{}.{:09}", d.as_secs(), d.subsec_nanos())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::ErrorClass;

    #[test]
    fn pull_params_split_the_tag() {
        assert_eq!(
            pull_params("pytorch/pytorch:2.0.1-cuda11.7-cudnn8-runtime"),
            ("pytorch/pytorch", Some("2.0.1-cuda11.7-cudnn8-runtime"))
        );
        assert_eq!(pull_params("busybox"), ("busybox", Some("latest")));
        assert_eq!(
            pull_params("registry:5000/team/img"),
            ("registry:5000/team/img", Some("latest"))
        );
        assert_eq!(
            pull_params("registry:5000/img:v1"),
            ("registry:5000/img", Some("v1"))
        );
        assert_eq!(pull_params("img@sha256:abc"), ("img@sha256:abc", None));
    }

    #[test]
    fn docker_errors_have_their_class() {
        let e = HypervisorError::DiskLimitUnsupported {
            driver: "overlay2".to_owned(),
            backing_fs: "extfs".to_owned(),
        };
        assert_eq!(e.class(), ErrorClass::Unsupported);
        assert!(e.to_string().contains("overlay2 on extfs"));
        assert!(!e.to_string().ends_with('.'));
        assert_eq!(
            HypervisorError::ContainerNotFound("x".to_owned()).class(),
            ErrorClass::NotFound
        );
        assert_eq!(
            HypervisorError::ImageUnavailable {
                image: "i".to_owned(),
                reason: "r".to_owned()
            }
            .class(),
            ErrorClass::BadRequest
        );
        assert_eq!(
            HypervisorError::NotRentalContainer {
                container: "c".to_owned(),
                rental: "r".to_owned()
            }
            .class(),
            ErrorClass::Conflict
        );
        assert_eq!(
            HypervisorError::Engine {
                op: "start a container",
                status: 500,
                message: "m".to_owned()
            }
            .class(),
            ErrorClass::Internal
        );
    }

    #[test]
    fn start_failures_name_their_cause() {
        let spec = ContainerSpec {
            rental_id: RentalId::generate(),
            image: ImageRef::new("img").unwrap(),
            cpu_cores: 1.0,
            memory: vmfleet_core::ByteSize::mib(64),
            disk: None,
            gpus: vec![vmfleet_core::GpuIndex::new("0").unwrap()],
            env: Default::default(),
            ports: Default::default(),
            cmd: None,
            tty: false,
            open_stdin: false,
            expires_at: None,
        };
        let e = start_refused(
            &spec,
            Refusal {
                status: 500,
                message: r#"could not select device driver "nvidia" with capabilities: [[gpu]]"#
                    .to_owned(),
            },
        );
        assert!(
            matches!(e, HypervisorError::InsufficientResources(ref m) if m.starts_with("GPUs 0"))
        );
    }
}
