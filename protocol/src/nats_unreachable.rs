//! Saying why NATS cannot be reached, while it cannot.
//!
//! async-nats reports each failed attempt to connect by its kind alone
//! (`nats: IO error`), which reads the same for a closed port, a server
//! that does not speak TLS and a certificate the client does not trust; the
//! cause it drops is what an operator needs to tell a wrong CA from a
//! network fault. So, at most every [`SAY_EVERY`], a failed attempt is
//! followed by one attempt of our own, over a short-lived connection with
//! the same options, whose error carries its cause; and that is what is
//! logged, with where.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_nats::{ConnectOptions, ServerAddr};
use tracing::warn;

/// Least time between two reports.
pub const SAY_EVERY: Duration = Duration::from_secs(10);
/// How long the attempt of our own may take to connect to each server.
const ATTEMPT_TIMEOUT: Duration = Duration::from_secs(2);

/// Reports, at warn and at most every [`SAY_EVERY`], that NATS cannot be
/// reached, and why.
#[derive(Clone)]
pub struct UnreachableReport {
    inner: Arc<Inner>,
}

struct Inner {
    options: ConnectOptions,
    servers: Vec<ServerAddr>,
    shown_url: String,
    said: Mutex<Option<Instant>>,
}

impl UnreachableReport {
    /// A report for `servers`, connected to with `options` (credentials and
    /// TLS, no callbacks: [`ConnectOptions`] that a probe may use), shown
    /// as `shown_url` (credentials redacted).
    pub fn new(options: ConnectOptions, servers: Vec<ServerAddr>, shown_url: String) -> Self {
        Self {
            inner: Arc::new(Inner {
                options,
                servers,
                shown_url,
                said: Mutex::new(None),
            }),
        }
    }

    /// Called with each failed attempt the client reports while it is not
    /// connected; `reported` is the client's own text, said when the
    /// attempt of our own connects after all (the server came back). The
    /// attempt runs on a task of its own, so that the client's next events
    /// (its connection, at last) are not held up behind it.
    pub fn attempt_failed(&self, reported: String) {
        {
            let now = Instant::now();
            let mut said = self
                .inner
                .said
                .lock()
                .unwrap_or_else(|poisoned| poisoned.into_inner());
            if said.is_some_and(|at| now.duration_since(at) < SAY_EVERY) {
                return;
            }
            *said = Some(now);
        }
        let report = self.clone();
        tokio::spawn(async move {
            let why = report.why().await.unwrap_or(reported);
            warn!(
                nats.url = %report.inner.shown_url,
                error = %why,
                "cannot reach nats; not ready until it answers (said every 10 s)"
            );
        });
    }

    /// The cause of a failed connect to every server in turn, or `None`
    /// when one answers.
    async fn why(&self) -> Option<String> {
        let attempt = self
            .inner
            .options
            .clone()
            .connection_timeout(ATTEMPT_TIMEOUT)
            .reconnect_delay_callback(|_| Duration::ZERO)
            .retain_servers_order()
            .connect(self.inner.servers.clone());
        // Bounded beyond the per-server timeout, for a server that takes
        // the connection and then says nothing in its TLS handshake.
        let bound = ATTEMPT_TIMEOUT * (u32::try_from(self.inner.servers.len()).unwrap_or(8) + 1);
        match tokio::time::timeout(bound, attempt).await {
            Ok(Ok(_client)) => None,
            Ok(Err(error)) => Some(chain(&error)),
            Err(_) => Some(format!("no server answered within {} s", bound.as_secs())),
        }
    }
}

/// `error` and each of its sources not already in its text, joined by
/// `: `.
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let said = cause.to_string();
        if !text.contains(&said) {
            text.push_str(": ");
            text.push_str(&said);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_closed_port_is_said_with_its_cause() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        drop(listener);
        let server: ServerAddr = format!("nats://127.0.0.1:{port}").parse().unwrap();
        let report = UnreachableReport::new(ConnectOptions::new(), vec![server], String::new());
        let why = report.why().await.expect("nothing listens there");
        assert!(why.contains("IO error"), "{why}");
        assert!(why.to_lowercase().contains("refused"), "{why}");
    }

    #[tokio::test]
    async fn a_server_that_does_not_speak_tls_is_told_apart() {
        // Greets as a NATS server that wants TLS, then answers the client's
        // TLS hello with plain text, as a TLS port of something else would.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let server = tokio::spawn(async move {
            use tokio::io::{AsyncReadExt, AsyncWriteExt};
            loop {
                let (mut socket, _) = listener.accept().await.unwrap();
                tokio::spawn(async move {
                    let info = b"INFO {\"server_id\":\"x\",\"version\":\"2.12.0\",\"max_payload\":1048576,\"tls_required\":true}\r\n";
                    let _ = socket.write_all(info).await;
                    let mut hello = [0u8; 512];
                    let _ = socket.read(&mut hello).await;
                    let _ = socket.write_all(b"-ERR 'not TLS'\r\n\r\n").await;
                    tokio::time::sleep(Duration::from_secs(5)).await;
                });
            }
        });
        let server_addr: ServerAddr = format!("tls://127.0.0.1:{port}").parse().unwrap();
        let report =
            UnreachableReport::new(ConnectOptions::new(), vec![server_addr], String::new());
        let why = report.why().await.expect("no TLS there");
        server.abort();
        // The client's own report would say only "IO error".
        assert!(why.starts_with("IO error: "), "{why}");
        assert!(why.contains("corrupt message"), "{why}");
    }
}
