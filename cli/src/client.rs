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
            http: http_client(Some(CALL_TIMEOUT), &settings.trusted)?,
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

/// A reqwest client for `http://` and `https://` URLs; `timeout` bounds a
/// whole call (none for streams). Over https it trusts the system's
/// certificate authorities and `trusted`.
pub fn http_client(
    timeout: Option<Duration>,
    trusted: &[reqwest::Certificate],
) -> Result<reqwest::Client, Error> {
    // ring, as everywhere in the workspace; a second call finds it set.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let builder = || {
        let mut builder = reqwest::Client::builder()
            .connect_timeout(CONNECT_TIMEOUT)
            .user_agent(concat!("ssectl/", env!("CARGO_PKG_VERSION")));
        if let Some(timeout) = timeout {
            builder = builder.timeout(timeout);
        }
        builder
    };
    let mut with_system_roots = builder();
    if !trusted.is_empty() {
        with_system_roots = with_system_roots.tls_certs_merge(trusted.iter().cloned());
    }
    // A system without certificate authorities (a minimal container) must
    // not stop plain http: trust only the CA file's then, and an https
    // server's certificate is refused as of an unknown issuer.
    with_system_roots
        .build()
        .or_else(|_| builder().tls_certs_only(trusted.iter().cloned()).build())
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
        // The innermost cause says why: refused, or a certificate the
        // client does not trust (TLS fails while connecting).
        let mut cause = None;
        let mut tls = None;
        let mut source = std::error::Error::source(error);
        while let Some(s) = source {
            cause = Some(s);
            tls = tls.or_else(|| tls_error(s));
            source = s.source();
        }
        match cause {
            Some(cause) if refused_certificate(tls) => format!(
                "cannot connect: {cause} (a private CA or a self-signed certificate: \
                 trust it with --ca-file or SSECTL_CA_FILE)"
            ),
            Some(cause) if plain_http_answered(tls) => format!(
                "cannot connect: {cause} (the server does not speak TLS: use an http:// URL)"
            ),
            Some(cause) => format!("cannot connect: {cause}"),
            None => "cannot connect".to_owned(),
        }
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

/// Whether TLS refused the server's certificate.
fn refused_certificate(tls: Option<&rustls::Error>) -> bool {
    matches!(tls, Some(rustls::Error::InvalidCertificate(_)))
}

/// Whether what came back to a TLS hello was not TLS: a plain http server.
fn plain_http_answered(tls: Option<&rustls::Error>) -> bool {
    matches!(
        tls,
        Some(rustls::Error::InvalidMessage(
            rustls::InvalidMessage::InvalidContentType
        ))
    )
}

/// The TLS error in `cause`, itself or inside I/O errors, which hide what
/// they wrap from `source()`.
fn tls_error<'a>(mut cause: &'a (dyn std::error::Error + 'static)) -> Option<&'a rustls::Error> {
    loop {
        if let Some(tls) = cause.downcast_ref::<rustls::Error>() {
            return Some(tls);
        }
        cause = cause.downcast_ref::<std::io::Error>()?.get_ref()?;
    }
}
