//! A typed client for the control plane: every request and answer is a wire-crate type, no
//! hand-written JSON. Used by the CLI and by the integration tests.
//!
//! [`Client`] speaks the REST API (seed 002, `shared/CONTRACT.md`'s sign-in and nodes);
//! [`Client::monitor`] and [`Client::console`] open seeds 003/004's WebSocket API as a
//! [`WsSession`] of [`WsMessage`]s.

use futures_util::{SinkExt, StreamExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::client::IntoClientRequest;
use tokio_tungstenite::tungstenite::http::HeaderValue;
use vmfleet_auth::siwe::{SiweError, Wallet, sign_in_message};
use vmfleet_core::{NodeId, RequestId, Timestamp, VmName, WalletAddress};
use vmfleet_wire::DecodeError;
use vmfleet_wire::api::{
    ActionResponse, AddDeviceRequest, AddDeviceResponse, AddFsRequest, CreateNodeRequest,
    CreateNodeResponse, CreateVmRequest, CreateVmResponse, DeleteSnapshotRequest, ErrorBody,
    Health, ListVmsRequest, LoginRequest, LoginResponse, MigrateFromRequest, MigrateToRequest,
    MigrateToResponse, MigrationTicket, NodeView, NonceResponse, PingRequest, PingResponse,
    RemoveDeviceRequest, ResizeMemoryRequest, ResizeVcpuRequest, RestoreRequest, SnapshotRequest,
    SnapshotResponse, SnapshotView, StopVmRequest, VmInfo, VmRef,
};
use vmfleet_wire::decode_body;
use vmfleet_wire::ws::{
    CommandAction, CommandData, ConsoleInputData, ErrorData, ResponseData, WsBody, WsErrorCode,
    WsMessage,
};

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("the server URL {0:?} is not an http:// URL")]
    BadUrl(String),
    #[error("the control plane could not be reached")]
    Transport(#[from] reqwest::Error),
    /// The API answered with its error body.
    #[error("{} (HTTP {status})", body.message)]
    Api { status: u16, body: ErrorBody },
    /// The server answered something that is not the API's.
    #[error("unexpected answer, HTTP {status}: {snippet}")]
    Unexpected { status: u16, snippet: String },
    #[error("the WebSocket connection failed")]
    WebSocket(#[from] Box<tokio_tungstenite::tungstenite::Error>),
    /// The WebSocket API sent its `error` message.
    #[error("{message} ({code:?})")]
    Ws { code: WsErrorCode, message: String },
    #[error("the server sent a WebSocket message that is not the API's")]
    Decode(#[from] DecodeError),
    #[error("the WebSocket connection closed before {0}")]
    Closed(&'static str),
    #[error("the sign-in message could not be signed")]
    Sign(#[from] SiweError),
}

impl ClientError {
    /// The HTTP status of an API refusal.
    pub fn status(&self) -> Option<u16> {
        match self {
            ClientError::Api { status, .. } | ClientError::Unexpected { status, .. } => {
                Some(*status)
            }
            _ => None,
        }
    }
}

impl From<tokio_tungstenite::tungstenite::Error> for ClientError {
    fn from(e: tokio_tungstenite::tungstenite::Error) -> Self {
        ClientError::WebSocket(Box::new(e))
    }
}

/// A connection to one control plane.
#[derive(Debug, Clone)]
pub struct Client {
    base: String,
    http: reqwest::Client,
    token: Option<String>,
}

impl Client {
    /// `base` is the control plane's root URL, such as `http://127.0.0.1:8080`.
    pub fn new(base: &str) -> Result<Self, ClientError> {
        let rest = base
            .strip_prefix("http://")
            .ok_or_else(|| ClientError::BadUrl(base.to_owned()))?;
        let host = rest.split('/').next().unwrap_or_default();
        if host.is_empty() || host.contains(char::is_whitespace) {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            token: None,
        })
    }

    /// Sends `token` as `Authorization: Bearer` on every request (and on WebSockets as the
    /// `token.<JWT>` subprotocol).
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// The host and port of the server, as a sign-in message names it (`127.0.0.1:8080`).
    pub fn domain(&self) -> &str {
        let rest = self.base.strip_prefix("http://").unwrap_or(&self.base);
        rest.split('/').next().unwrap_or(rest)
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        self.get("/health").await
    }

    /// `POST /ping`.
    pub async fn ping(&self) -> Result<PingResponse, ClientError> {
        self.post(
            "/ping",
            &PingRequest {
                message: "ping".into(),
            },
        )
        .await
    }

    /// `GET /auth/nonce`.
    pub async fn nonce(&self) -> Result<NonceResponse, ClientError> {
        self.get("/auth/nonce").await
    }

    /// The EIP-4361 message `address` signs to sign in here with `nonce`, issued now.
    pub fn sign_in_message(&self, address: &WalletAddress, nonce: &str) -> String {
        sign_in_message(
            self.domain(),
            &self.base,
            address,
            nonce,
            Timestamp::now().as_str(),
        )
    }

    /// `POST /auth/login`.
    pub async fn login(&self, req: &LoginRequest) -> Result<LoginResponse, ClientError> {
        self.post("/auth/login", req).await
    }

    /// The whole sign-in with a key at hand: a nonce, the message, its signature, the login.
    pub async fn sign_in(&self, wallet: &Wallet) -> Result<LoginResponse, ClientError> {
        let nonce = self.nonce().await?;
        let message = self.sign_in_message(&wallet.address(), &nonce.nonce);
        let signature = wallet.sign(&message)?;
        self.login(&LoginRequest { message, signature }).await
    }

    /// `POST /vm/create`.
    pub async fn create_vm(&self, req: &CreateVmRequest) -> Result<CreateVmResponse, ClientError> {
        self.post("/vm/create", req).await
    }

    /// `POST /vm/boot`: the scheduler places the VM and its node boots it.
    pub async fn boot_vm(&self, vm: &VmRef) -> Result<ActionResponse, ClientError> {
        self.post("/vm/boot", vm).await
    }

    /// `POST /vm/start`.
    pub async fn start_vm(&self, vm: &VmRef) -> Result<ActionResponse, ClientError> {
        self.post("/vm/start", vm).await
    }

    /// `POST /vm/stop`.
    pub async fn stop_vm(&self, req: &StopVmRequest) -> Result<ActionResponse, ClientError> {
        self.post("/vm/stop", req).await
    }

    /// `POST /vm/reboot`.
    pub async fn reboot_vm(&self, vm: &VmRef) -> Result<ActionResponse, ClientError> {
        self.post("/vm/reboot", vm).await
    }

    /// `POST /vm/power-button`.
    pub async fn power_button(&self, vm: &VmRef) -> Result<ActionResponse, ClientError> {
        self.post("/vm/power-button", vm).await
    }

    /// `POST /vm/delete`.
    pub async fn delete_vm(&self, vm: &VmRef) -> Result<ActionResponse, ClientError> {
        self.post("/vm/delete", vm).await
    }

    /// `POST /vm/info`.
    pub async fn vm_info(&self, vm: &VmRef) -> Result<VmInfo, ClientError> {
        self.post("/vm/info", vm).await
    }

    /// `POST /vm/list`.
    pub async fn list_vms(&self, req: &ListVmsRequest) -> Result<Vec<VmInfo>, ClientError> {
        self.post("/vm/list", req).await
    }

    /// `POST /vm/snapshot`.
    pub async fn snapshot_vm(
        &self,
        req: &SnapshotRequest,
    ) -> Result<SnapshotResponse, ClientError> {
        self.post("/vm/snapshot", req).await
    }

    /// `POST /vm/snapshot/list`: the VM's snapshots, oldest first.
    pub async fn list_snapshots(&self, vm: &VmRef) -> Result<Vec<SnapshotView>, ClientError> {
        self.post("/vm/snapshot/list", vm).await
    }

    /// `POST /vm/snapshot/delete`.
    pub async fn delete_snapshot(
        &self,
        req: &DeleteSnapshotRequest,
    ) -> Result<ActionResponse, ClientError> {
        self.post("/vm/snapshot/delete", req).await
    }

    /// `POST /vm/restore`.
    pub async fn restore_vm(&self, req: &RestoreRequest) -> Result<ActionResponse, ClientError> {
        self.post("/vm/restore", req).await
    }

    /// `POST /vm/resize/vcpu`.
    pub async fn resize_vcpu(
        &self,
        req: &ResizeVcpuRequest,
    ) -> Result<ActionResponse, ClientError> {
        self.post("/vm/resize/vcpu", req).await
    }

    /// `POST /vm/resize/memory`.
    pub async fn resize_memory(
        &self,
        req: &ResizeMemoryRequest,
    ) -> Result<ActionResponse, ClientError> {
        self.post("/vm/resize/memory", req).await
    }

    /// `POST /vm/device/add`: the answer names the device's id.
    pub async fn add_device(
        &self,
        req: &AddDeviceRequest,
    ) -> Result<AddDeviceResponse, ClientError> {
        self.post("/vm/device/add", req).await
    }

    /// `POST /vm/device/remove`.
    pub async fn remove_device(
        &self,
        req: &RemoveDeviceRequest,
    ) -> Result<ActionResponse, ClientError> {
        self.post("/vm/device/remove", req).await
    }

    /// `POST /vm/fs/add`: the answer names the share's device id.
    pub async fn add_fs(&self, req: &AddFsRequest) -> Result<AddDeviceResponse, ClientError> {
        self.post("/vm/fs/add", req).await
    }

    /// `POST /vm/migrate/from`: a ticket reserving room for the VM on a node.
    pub async fn migrate_from(
        &self,
        req: &MigrateFromRequest,
    ) -> Result<MigrationTicket, ClientError> {
        self.post("/vm/migrate/from", req).await
    }

    /// `POST /vm/migrate/to`: starts moving the VM (to its ticket's node, or one the scheduler
    /// picks); the answer comes at once with state `migrating`.
    pub async fn migrate_to(
        &self,
        req: &MigrateToRequest,
    ) -> Result<MigrateToResponse, ClientError> {
        self.post("/vm/migrate/to", req).await
    }

    /// `POST /nodes` (admin): the host key is in the answer, once.
    pub async fn create_node(
        &self,
        req: &CreateNodeRequest,
    ) -> Result<CreateNodeResponse, ClientError> {
        self.post("/nodes", req).await
    }

    /// `GET /nodes` (admin).
    pub async fn list_nodes(&self) -> Result<Vec<NodeView>, ClientError> {
        self.get("/nodes").await
    }

    /// `POST /nodes/{id}/drain` (admin).
    pub async fn drain_node(&self, id: &NodeId) -> Result<NodeView, ClientError> {
        let req = self.http.post(format!("{}/nodes/{id}/drain", self.base));
        self.send(req).await
    }

    /// `POST /nodes/{id}/undrain` (admin).
    pub async fn undrain_node(&self, id: &NodeId) -> Result<NodeView, ClientError> {
        let req = self.http.post(format!("{}/nodes/{id}/undrain", self.base));
        self.send(req).await
    }

    /// `DELETE /nodes/{id}` (admin).
    pub async fn remove_node(&self, id: &NodeId) -> Result<ActionResponse, ClientError> {
        let req = self.http.delete(format!("{}/nodes/{id}", self.base));
        self.send(req).await
    }

    /// Opens `/ws/vms/{name}` (status on every change, metrics every `metrics_interval`
    /// seconds, commands) and waits for its `connection` message. `owner` is needed only by
    /// an admin looking at another owner's VM. A refusal (`AUTH_ERROR`, `VM_NOT_FOUND`, ...) is
    /// [`ClientError::Ws`].
    pub async fn monitor(
        &self,
        name: &VmName,
        owner: Option<&WalletAddress>,
        metrics_interval: Option<u64>,
    ) -> Result<WsSession, ClientError> {
        let mut query = Vec::new();
        if let Some(o) = owner {
            query.push(format!("owner={o}"));
        }
        if let Some(s) = metrics_interval {
            query.push(format!("metrics_interval={s}"));
        }
        self.open_ws(&format!("/ws/vms/{name}"), &query).await
    }

    /// Opens `/ws/vms/{name}/console` and waits for its `connection` message; the scrollback
    /// comes next, as `console` messages.
    pub async fn console(
        &self,
        name: &VmName,
        owner: Option<&WalletAddress>,
    ) -> Result<WsSession, ClientError> {
        let query: Vec<String> = owner.map(|o| format!("owner={o}")).into_iter().collect();
        self.open_ws(&format!("/ws/vms/{name}/console"), &query)
            .await
    }

    async fn open_ws(&self, path: &str, query: &[String]) -> Result<WsSession, ClientError> {
        let rest = self.base.strip_prefix("http://").unwrap_or(&self.base);
        let mut url = format!("ws://{rest}{path}");
        if !query.is_empty() {
            url.push('?');
            url.push_str(&query.join("&"));
        }
        let mut req = url.into_client_request()?;
        if let Some(token) = &self.token {
            let protocols = HeaderValue::from_str(&format!("vmfleet.v1, token.{}", token.trim()))
                .map_err(|e| {
                ClientError::from(tokio_tungstenite::tungstenite::Error::HttpFormat(e.into()))
            })?;
            req.headers_mut()
                .insert("sec-websocket-protocol", protocols);
        }
        let (stream, _) = tokio_tungstenite::connect_async(req).await?;
        let mut session = WsSession { stream };
        loop {
            match session.next().await? {
                Some(WsMessage {
                    body: WsBody::Connection(_),
                    ..
                }) => return Ok(session),
                Some(WsMessage {
                    body: WsBody::Error(ErrorData { code, message }),
                    ..
                }) => return Err(ClientError::Ws { code, message }),
                Some(_) => {}
                None => return Err(ClientError::Closed("it was opened")),
            }
        }
    }

    async fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T, ClientError> {
        let req = self.http.get(format!("{}{path}", self.base));
        self.send(req).await
    }

    async fn post<B: Serialize, T: DeserializeOwned>(
        &self,
        path: &str,
        body: &B,
    ) -> Result<T, ClientError> {
        let req = self.http.post(format!("{}{path}", self.base)).json(body);
        self.send(req).await
    }

    async fn send<T: DeserializeOwned>(
        &self,
        mut req: reqwest::RequestBuilder,
    ) -> Result<T, ClientError> {
        if let Some(token) = &self.token {
            req = req.bearer_auth(token.trim());
        }
        let resp = req.send().await?;
        let status = resp.status();
        let text = resp.text().await?;
        if status.is_success() {
            if let Ok(v) = decode_body::<T>("response", &text) {
                return Ok(v);
            }
        } else if let Ok(body) = decode_body::<ErrorBody>("error", &text) {
            return Err(ClientError::Api {
                status: status.as_u16(),
                body,
            });
        }
        Err(ClientError::Unexpected {
            status: status.as_u16(),
            snippet: text.chars().take(200).collect(),
        })
    }
}

type Stream =
    tokio_tungstenite::WebSocketStream<tokio_tungstenite::MaybeTlsStream<tokio::net::TcpStream>>;

/// An open WebSocket of seeds 003/004: typed messages in and out.
pub struct WsSession {
    stream: Stream,
}

impl WsSession {
    /// The next message from the server; `None` once the connection has closed. Pings are
    /// answered underneath.
    pub async fn next(&mut self) -> Result<Option<WsMessage>, ClientError> {
        loop {
            match self.stream.next().await {
                None | Some(Ok(Message::Close(_))) => return Ok(None),
                Some(Ok(Message::Text(t))) => return Ok(Some(WsMessage::decode(t.as_str())?)),
                Some(Ok(_)) => {}
                Some(Err(e)) => return Err(e.into()),
            }
        }
    }

    /// Sends a message (`command`, `console_input` or `heartbeat`).
    pub async fn send(&mut self, body: WsBody) -> Result<(), ClientError> {
        let text = WsMessage::now(body).to_json();
        self.stream.send(Message::text(text)).await?;
        Ok(())
    }

    /// Sends `console_input`.
    pub async fn send_input(&mut self, content: impl Into<String>) -> Result<(), ClientError> {
        self.send(WsBody::ConsoleInput(ConsoleInputData {
            content: content.into(),
        }))
        .await
    }

    /// Sends a `command` with a fresh request id and waits for its `response` (other
    /// messages are skipped); an `error` message in between is the answer too.
    pub async fn command(&mut self, action: CommandAction) -> Result<ResponseData, ClientError> {
        let id = RequestId::generate();
        self.send(WsBody::Command(CommandData {
            action,
            request_id: Some(id.clone()),
        }))
        .await?;
        loop {
            match self.next().await? {
                Some(WsMessage {
                    body: WsBody::Response(r),
                    ..
                }) if r.request_id == id => return Ok(r),
                Some(WsMessage {
                    body: WsBody::Error(ErrorData { code, message }),
                    ..
                }) => return Err(ClientError::Ws { code, message }),
                Some(_) => {}
                None => return Err(ClientError::Closed("the command was answered")),
            }
        }
    }

    /// Closes the connection politely.
    pub async fn close(mut self) {
        let _ = self.stream.close(None).await;
    }
}
