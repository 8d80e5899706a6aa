//! The one error type of `ssectl`, and its exit code.

/// Everything that stops a command.
#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The command line or a setting is wrong (exit 2).
    #[error("{0}")]
    Usage(String),
    /// Admin or a node answered with a refusal (exit 1).
    #[error("{code}: {message} (HTTP {status})")]
    Refused {
        /// The HTTP status.
        status: u16,
        /// The stable error code from the answer, e.g. `topic_exists`.
        code: String,
        /// What the server said.
        message: String,
    },
    /// A check that did not pass, or work that failed here (exit 1).
    #[error("{0}")]
    Failed(String),
    /// Nothing answered (exit 3).
    #[error("{0}")]
    Unreachable(String),
}

impl Error {
    /// The process exit code for this error.
    pub fn exit_code(&self) -> u8 {
        match self {
            Error::Usage(_) => 2,
            Error::Refused { .. } | Error::Failed(_) => 1,
            Error::Unreachable(_) => 3,
        }
    }
}
