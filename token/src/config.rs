//! The keys and claims a verifier checks: the node's `[auth.jwt]` section.
//!
//! Defined here rather than in the node's config so that `ssectl token check`
//! builds the very same verifier from the same fields.

use serde::Deserialize;

/// `[auth.jwt]`
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JwtConfig {
    /// Shared secret for HS256; empty = HS256 refused.
    pub hs256_secret: Secret,
    /// Shared secret for HS256, path of a file holding it.
    pub hs256_secret_file: String,
    /// RS256 public key, PEM text.
    pub rs256_public_key_pem: String,
    /// RS256 public key, path of a PEM file.
    pub rs256_public_key_file: String,
    /// ES256 (P-256) public key, PEM text.
    pub es256_public_key_pem: String,
    /// ES256 (P-256) public key, path of a PEM file.
    pub es256_public_key_file: String,
    /// Path of a JWKS file (RS256, ES256 or HS256 keys, chosen by `kid`).
    pub jwks_file: String,
    /// Required `aud`; empty = not checked.
    pub audience: String,
    /// Required `iss`; empty = not checked.
    pub issuer: String,
    /// Clock skew allowed on `exp` and `nbf`, in seconds.
    pub leeway_seconds: u64,
}

/// A node's `auth.jwt.leeway_seconds` unless configured, which `ssectl
/// token check` assumes too, so that both judge a token's expiry alike.
pub const DEFAULT_LEEWAY_SECONDS: u64 = 30;

/// The most clock skew a node takes on `exp` and `nbf`: ten minutes. Beyond
/// it, leeway is an expired token taken, not a skewed clock.
pub const MAX_LEEWAY_SECONDS: u64 = 600;

/// A value kept out of `Debug` output and logs.
#[derive(Clone, Default, Deserialize)]
#[serde(transparent)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.0.is_empty() {
            "\"\""
        } else {
            "<redacted>"
        })
    }
}
