//! Tokens for private topics.
//!
//! - [`config`]: the keys and claims a node checks (`[auth.jwt]`).
//! - [`verify`]: the node's rules for accepting a token. `sse-node` refuses
//!   streams with them, and `ssectl token check` reports with them, so the
//!   two always agree.
//! - [`mint`]: signing a token whose claims those rules accept, for
//!   operators (`ssectl token mint`).

pub mod config;
pub mod mint;
pub mod verify;

pub use config::{DEFAULT_LEEWAY_SECONDS, JwtConfig, MAX_LEEWAY_SECONDS, Secret};
pub use mint::{MintError, Minted, SigningKey, TokenRequest};
pub use verify::{AuthError, Authorized, ConfigProblems, Verifier};
