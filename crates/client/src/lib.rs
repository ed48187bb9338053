//! A typed client for the control plane: every request and answer is a wire-crate type, no
//! hand-written JSON. Used by the CLI and by the integration tests.

use serde::Serialize;
use serde::de::DeserializeOwned;
use vmfleet_wire::api::{ErrorBody, Health, PingRequest, PingResponse};
use vmfleet_wire::decode_body;

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
        if !base.starts_with("http://") {
            return Err(ClientError::BadUrl(base.to_owned()));
        }
        Ok(Client {
            base: base.trim_end_matches('/').to_owned(),
            http: reqwest::Client::new(),
            token: None,
        })
    }

    /// Sends `token` as `Authorization: Bearer` on every request.
    pub fn with_token(mut self, token: impl Into<String>) -> Self {
        self.token = Some(token.into());
        self
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    /// `GET /health`.
    pub async fn health(&self) -> Result<Health, ClientError> {
        let req = self.http.get(format!("{}/health", self.base));
        self.send(req).await
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
            req = req.bearer_auth(token);
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
