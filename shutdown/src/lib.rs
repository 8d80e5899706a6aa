//! SIGTERM and SIGINT as a graceful stop, shared by `sse-node` and
//! `sse-admin`.
//!
//! A binary installs [`ShutdownSignals`] before it opens its port (anyone
//! who sees the port listening may send SIGTERM and expect a drain), then
//! spawns [`ShutdownSignals::cancel_on_signal`], which cancels the token its
//! `run` watches. This is process life cycle, not a wire contract, so it
//! lives in its own small crate rather than in `sse-protocol`.

use tokio::signal::unix::{Signal, SignalKind, signal};
use tokio_util::sync::CancellationToken;

/// SIGTERM and SIGINT, registered with the runtime.
#[derive(Debug)]
pub struct ShutdownSignals {
    terminate: Signal,
    interrupt: Signal,
}

impl ShutdownSignals {
    /// Registers both signals; from now on neither ends the process by
    /// itself. Must run inside a Tokio runtime.
    pub fn install() -> std::io::Result<Self> {
        Ok(Self {
            terminate: signal(SignalKind::terminate())?,
            interrupt: signal(SignalKind::interrupt())?,
        })
    }

    /// Waits for either signal, then cancels `shutdown`.
    pub async fn cancel_on_signal(mut self, shutdown: CancellationToken) {
        tokio::select! {
            _ = self.terminate.recv() => {}
            _ = self.interrupt.recv() => {}
        }
        tracing::info!("shutdown signal received");
        shutdown.cancel();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[tokio::test]
    async fn sigterm_cancels_the_token() {
        let signals = ShutdownSignals::install().unwrap();
        let shutdown = CancellationToken::new();
        let waiter = tokio::spawn(signals.cancel_on_signal(shutdown.clone()));
        let status = std::process::Command::new("kill")
            .args(["-TERM", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        tokio::time::timeout(Duration::from_secs(10), shutdown.cancelled())
            .await
            .expect("SIGTERM did not cancel the token");
        waiter.await.unwrap();
    }
}
