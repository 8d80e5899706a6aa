//! Calls to admin's HTTP API (`/v1/…`).
//!
//! Every refusal becomes [`Error::Refused`] with the `error` code and
//! `message` of admin's JSON body; a connection that cannot be made, or an
//! answer that does not come in time, becomes [`Error::Unreachable`].

use std::time::Duration;

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::{Error, settings::Settings};

/// How long one admin call may take.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A client for admin.
#[derive(Debug, Clone)]
pub struct Admin {
    http: reqwest::Client,
    base: String,
    token: Option<String>,
}

impl Admin {
    /// A client for the admin named in `settings`.
    pub fn new(settings: &Settings) -> Result<Self, Error> {
        Ok(Self {
            http: http_client(Some(CALL_TIMEOUT))?,
            base: settings.admin_url.clone(),
            token: settings.admin_token.clone(),
        })
    }

    /// Admin's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// `GET path`, JSON answer.
    pub async fn get(&self, path: &str) -> Result<Value, Error> {
        self.call(Method::GET, path, None).await
    }

    /// `method path` with an optional JSON body; `Null` for an empty answer.
    pub async fn call(
        &self,
        method: Method,
        path: &str,
        body: Option<&Value>,
    ) -> Result<Value, Error> {
        let url = format!("{}{path}", self.base);
        let mut request = self.http.request(method, &url);
        if let Some(token) = &self.token {
            request = request.bearer_auth(token);
        }
        if let Some(body) = body {
            request = request.json(body);
        }
        let response = request
            .send()
            .await
            .map_err(|e| unreachable("admin", &self.base, &e))?;
        let status = response.status();
        let bytes = response
            .bytes()
            .await
            .map_err(|e| unreachable("admin", &self.base, &e))?;
        if status.is_success() {
            if bytes.is_empty() {
                return Ok(Value::Null);
            }
            return serde_json::from_slice(&bytes).map_err(|e| {
                Error::Failed(format!(
                    "admin at {} answered with bad JSON: {e}",
                    self.base
                ))
            });
        }
        let refusal = refusal(status, &bytes);
        if status == StatusCode::UNAUTHORIZED
            && self.token.is_none()
            && let Error::Refused { message, .. } = &refusal
        {
            return Err(Error::Refused {
                status: status.as_u16(),
                code: "unauthorized".to_owned(),
                message: format!("{message}; set SSECTL_TOKEN or --admin-token"),
            });
        }
        Err(refusal)
    }
}

/// A reqwest client without TLS; `timeout` bounds a whole call (none for
/// streams).
pub fn http_client(timeout: Option<Duration>) -> Result<reqwest::Client, Error> {
    let mut builder = reqwest::Client::builder()
        .connect_timeout(CONNECT_TIMEOUT)
        .user_agent(concat!("ssectl/", env!("CARGO_PKG_VERSION")));
    if let Some(timeout) = timeout {
        builder = builder.timeout(timeout);
    }
    builder
        .build()
        .map_err(|e| Error::Failed(format!("cannot build the HTTP client: {e}")))
}

/// A refusal from admin's or a node's JSON error body
/// (`{"error": code, "message": text}`), or from the status alone.
pub fn refusal(status: StatusCode, body: &[u8]) -> Error {
    let json: Option<Value> = serde_json::from_slice(body).ok();
    let field = |name: &str| {
        json.as_ref()
            .and_then(|v| v.get(name))
            .and_then(Value::as_str)
            .map(str::to_owned)
    };
    let code = field("error").unwrap_or_else(|| format!("http_{}", status.as_u16()));
    let message = field("message").unwrap_or_else(|| {
        let text = String::from_utf8_lossy(body);
        let text = text.trim();
        if text.is_empty() {
            status.canonical_reason().unwrap_or("refused").to_owned()
        } else {
            text.chars().take(300).collect()
        }
    });
    Error::Refused {
        status: status.as_u16(),
        code,
        message,
    }
}

/// A transport failure as [`Error::Unreachable`], naming what was called.
pub fn unreachable(what: &str, base: &str, error: &reqwest::Error) -> Error {
    Error::Unreachable(transport_failure(what, base, error))
}

/// What went wrong reaching `what` at `base`, for people.
pub fn transport_failure(what: &str, base: &str, error: &reqwest::Error) -> String {
    let why = if error.is_timeout() {
        "no answer in time".to_owned()
    } else if error.is_connect() {
        "cannot connect".to_owned()
    } else {
        let mut text = error.to_string();
        let mut source = std::error::Error::source(error);
        while let Some(s) = source {
            text.push_str(": ");
            text.push_str(&s.to_string());
            source = s.source();
        }
        text
    };
    format!("{what} at {base}: {why}")
}
