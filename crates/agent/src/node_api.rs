//! Seed 000: the node-local WebSocket API (`ws://127.0.0.1:3030/ws` by default). A local
//! client sends `create_vm`, `stop_vm`, `terminate_vm`, `get_vm_status` and `get_buyer_vms`;
//! each gets one reply frame ([`NodeReply`]), errors included, and the connection stays open
//! whatever it sent.
//!
//! Authentication: the node token, as `Authorization: Bearer <token>` or `?token=<token>` on
//! the upgrade request; anything else is refused with HTTP 401 before the upgrade.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::{SinkExt, StreamExt};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use vmfleet_core::{BuyerId, ImageName, JobId, VmId, VmResources};
use vmfleet_hypervisor::{CreateVm, ErrorClass, Hypervisor, HypervisorError, VmStatus};
use vmfleet_wire::DecodeError;
use vmfleet_wire::api::{DEFAULT_KERNEL, DEFAULT_ROOTFS};
use vmfleet_wire::node::{NodeErrorCode, NodeReply, NodeRequest, NodeVm};

/// The labels a VM of the node API carries: who asked for it (they survive an agent restart
/// with the VM).
const JOB_LABEL: &str = "vmfleet.job_id";
const BUYER_LABEL: &str = "vmfleet.buyer_id";

/// Largest frame the API reads.
const MAX_FRAME: usize = 64 * 1024;

/// The node API over one hypervisor.
pub struct NodeApi {
    vmm: Arc<dyn Hypervisor>,
    token: String,
    stop_timeout: Duration,
}

impl NodeApi {
    pub fn new(vmm: Arc<dyn Hypervisor>, token: impl Into<String>) -> Arc<Self> {
        Self::with_stop_timeout(vmm, token, Duration::from_secs(30))
    }

    /// How long `stop_vm` waits for the guest after the power button before forcing it off.
    pub fn with_stop_timeout(
        vmm: Arc<dyn Hypervisor>,
        token: impl Into<String>,
        stop_timeout: Duration,
    ) -> Arc<Self> {
        Arc::new(NodeApi {
            vmm,
            token: token.into(),
            stop_timeout,
        })
    }

    /// Accepts connections on `listener` until the task is dropped.
    pub async fn serve(self: Arc<Self>, listener: TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else {
                continue;
            };
            let api = self.clone();
            tokio::spawn(async move {
                if let Err(e) = api.connection(stream).await {
                    tracing::debug!(%peer, error = %e, "node API connection ended");
                }
            });
        }
    }

    /// Whether the upgrade request carries the node token, on path `/ws`.
    fn admit(&self, req: &Request) -> Result<(), (StatusCode, &'static str)> {
        let uri = req.uri();
        if uri.path() != "/ws" {
            return Err((StatusCode::NOT_FOUND, "the node API is at /ws"));
        }
        let bearer = req
            .headers()
            .get("authorization")
            .and_then(|h| h.to_str().ok())
            .and_then(|h| h.strip_prefix("Bearer "));
        let query = uri
            .query()
            .unwrap_or("")
            .split('&')
            .find_map(|kv| kv.strip_prefix("token="));
        let given = bearer.or(query).unwrap_or("");
        // Compare in time independent of where they differ.
        let same = given.len() == self.token.len()
            && given
                .bytes()
                .zip(self.token.bytes())
                .fold(0u8, |acc, (a, b)| acc | (a ^ b))
                == 0;
        if same {
            Ok(())
        } else {
            Err((StatusCode::UNAUTHORIZED, "a valid node token is required"))
        }
    }

    /// One client connection, over any byte stream.
    // The handshake callback's error type is tungstenite's, large as it is.
    #[allow(clippy::result_large_err)]
    pub async fn connection<S>(
        &self,
        stream: S,
    ) -> Result<(), tokio_tungstenite::tungstenite::Error>
    where
        S: AsyncRead + AsyncWrite + Unpin,
    {
        let check = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
            match self.admit(req) {
                Ok(()) => Ok(resp),
                Err((status, why)) => {
                    let mut e = ErrorResponse::new(Some(why.to_owned()));
                    *e.status_mut() = status;
                    Err(e)
                }
            }
        };
        let mut ws = tokio_tungstenite::accept_hdr_async(stream, check).await?;
        while let Some(msg) = ws.next().await {
            let reply = match msg? {
                Message::Text(t) if t.len() > MAX_FRAME => NodeReply::error(
                    NodeErrorCode::InvalidMessage,
                    format!("a frame is at most {MAX_FRAME} bytes"),
                ),
                Message::Text(t) => self.handle(&t).await,
                Message::Binary(_) => {
                    NodeReply::error(NodeErrorCode::InvalidMessage, "frames are JSON text")
                }
                Message::Close(_) => break,
                _ => continue,
            };
            let text = serde_json::to_string(&reply).unwrap_or_default();
            ws.send(Message::text(text)).await?;
        }
        Ok(())
    }

    /// Runs one request frame and returns its reply.
    pub async fn handle(&self, text: &str) -> NodeReply {
        let req = match NodeRequest::decode(text) {
            Ok(r) => r,
            Err(e) => return decode_error(&e),
        };
        let kind = req.type_name();
        let result = match req {
            NodeRequest::CreateVm {
                job_id,
                buyer_id,
                vcpu_count,
                mem_size_mib,
            } => {
                self.create(job_id, buyer_id, vcpu_count, mem_size_mib)
                    .await
            }
            NodeRequest::StopVm { vm_id } => self
                .vmm
                .stop(&vm_id, self.stop_timeout)
                .await
                .map(|st| NodeReply::VmStopped(self.view(st))),
            NodeRequest::TerminateVm { vm_id } => self
                .vmm
                .delete(&vm_id)
                .await
                .map(|()| NodeReply::VmTerminated { vm_id }),
            NodeRequest::GetVmStatus { vm_id } => self
                .vmm
                .status(&vm_id)
                .await
                .map(|st| NodeReply::VmStatus(self.view(st))),
            NodeRequest::GetBuyerVms { buyer_id } => {
                let vms = self
                    .vmm
                    .list()
                    .await
                    .into_iter()
                    .filter(|st| {
                        st.labels.get(BUYER_LABEL).map(String::as_str) == Some(buyer_id.as_str())
                    })
                    .map(|st| self.view(st))
                    .collect();
                Ok(NodeReply::BuyerVms { buyer_id, vms })
            }
        };
        result.unwrap_or_else(|e| NodeReply::Error {
            code: error_code(&e),
            message: e.to_string(),
            request_type: Some(kind.to_owned()),
        })
    }

    async fn create(
        &self,
        job_id: JobId,
        buyer_id: BuyerId,
        vcpu_count: u32,
        mem_size_mib: u64,
    ) -> Result<NodeReply, HypervisorError> {
        let id = VmId::generate();
        let image =
            |n: &str| ImageName::new(n).map_err(|e| HypervisorError::InvalidSpec(e.to_string()));
        self.vmm
            .create(CreateVm {
                id: id.clone(),
                resources: VmResources {
                    vcpu_count,
                    mem_size_mib,
                    disk_size: 1,
                },
                kernel: image(DEFAULT_KERNEL)?,
                initrd: None,
                rootfs: image(DEFAULT_ROOTFS)?,
                boot_args: None,
                labels: BTreeMap::from([
                    (JOB_LABEL.to_owned(), job_id.to_string()),
                    (BUYER_LABEL.to_owned(), buyer_id.to_string()),
                ]),
            })
            .await?;
        // The seed's lifecycle: a created VM runs the buyer's workload.
        let st = match self.vmm.boot(&id).await {
            Ok(st) => st,
            Err(e) => {
                let _ = self.vmm.delete(&id).await;
                return Err(e);
            }
        };
        Ok(NodeReply::VmCreated(self.view(st)))
    }

    fn view(&self, st: VmStatus) -> NodeVm {
        let job_id = st
            .labels
            .get(JOB_LABEL)
            .and_then(|j| j.parse().ok())
            .map_or(JobId(0), JobId);
        let buyer_id = st
            .labels
            .get(BUYER_LABEL)
            .and_then(|b| BuyerId::new(b.as_str()).ok())
            .unwrap_or_else(|| BuyerId::new("unknown").expect("\"unknown\" is a valid buyer id"));
        NodeVm {
            vm_id: st.id,
            job_id,
            buyer_id,
            vcpu_count: st.resources.vcpu_count,
            mem_size_mib: st.resources.mem_size_mib,
            state: st.state,
            ip_address: st.ip_address,
        }
    }
}

fn decode_error(e: &DecodeError) -> NodeReply {
    let code = match e {
        DecodeError::UnknownType(_) | DecodeError::WrongDirection(_) => NodeErrorCode::UnknownType,
        _ => NodeErrorCode::InvalidMessage,
    };
    let detail = std::error::Error::source(e).map(|s| format!(": {s}"));
    NodeReply::Error {
        code,
        message: format!("{e}{}", detail.unwrap_or_default()),
        request_type: e.kind().map(str::to_owned),
    }
}

fn error_code(e: &HypervisorError) -> NodeErrorCode {
    match (e, e.class()) {
        (HypervisorError::InsufficientResources(_), _) => NodeErrorCode::InsufficientCapacity,
        (_, ErrorClass::NotFound) => NodeErrorCode::VmNotFound,
        (_, ErrorClass::Conflict) => NodeErrorCode::InvalidState,
        (_, ErrorClass::BadRequest) => NodeErrorCode::InvalidMessage,
        _ => NodeErrorCode::InternalError,
    }
}
