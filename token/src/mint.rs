//! Minting: a signed token with the claims a node checks.
//!
//! The claims are `sub`, `iat`, `exp` (always: a node refuses a token
//! without one), `aud` and `iss` when given, and [`sse_protocol::grant::SUBSCRIBE_CLAIM`] with the
//! granted patterns. Every grant must parse as a [`GrantPattern`]: a node
//! silently drops an invalid grant, so minting one would only hand out a
//! token that grants less than its holder thinks.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use serde::Serialize;
use sse_protocol::GrantPattern;

use crate::verify::MIN_HS256_SECRET_BYTES;

/// Why no token was minted.
#[derive(Debug, thiserror::Error)]
pub enum MintError {
    /// The HS256 secret is shorter than a node accepts.
    #[error(
        "the HS256 secret is {0} bytes long; nodes accept only {MIN_HS256_SECRET_BYTES} or more"
    )]
    SecretTooShort(usize),
    /// The PEM text is not a private key of the algorithm.
    #[error("not a usable {algorithm} private key: {reason}")]
    Key {
        /// `RS256` or `ES256`.
        algorithm: &'static str,
        /// What the parser said.
        reason: String,
    },
    /// A grant a node would drop.
    #[error("grant {0:?} is not a subject pattern (dotted [A-Za-z0-9_-] tokens, `*`, a last `>`)")]
    Grant(String),
    /// No grant at all: the token would open nothing.
    #[error("at least one grant is needed")]
    NoGrants,
    /// A lifetime of zero, or one past what a clock can hold.
    #[error("the lifetime must be at least one second and at most 100 years")]
    Lifetime,
    /// Signing failed.
    #[error("cannot sign: {0}")]
    Sign(String),
}

/// A key to sign with.
pub struct SigningKey {
    algorithm: Algorithm,
    key: EncodingKey,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "SigningKey({:?})", self.algorithm)
    }
}

impl SigningKey {
    /// An HS256 shared secret, as long as nodes demand.
    pub fn hs256(secret: &[u8]) -> Result<Self, MintError> {
        if secret.len() < MIN_HS256_SECRET_BYTES {
            return Err(MintError::SecretTooShort(secret.len()));
        }
        Ok(Self {
            algorithm: Algorithm::HS256,
            key: EncodingKey::from_secret(secret),
        })
    }

    /// An RS256 private key, PEM.
    pub fn rs256_pem(pem: &[u8]) -> Result<Self, MintError> {
        let key = EncodingKey::from_rsa_pem(pem).map_err(|e| MintError::Key {
            algorithm: "RS256",
            reason: e.to_string(),
        })?;
        Ok(Self {
            algorithm: Algorithm::RS256,
            key,
        })
    }

    /// An ES256 (P-256) private key, PEM (PKCS#8).
    pub fn es256_pem(pem: &[u8]) -> Result<Self, MintError> {
        let key = EncodingKey::from_ec_pem(pem).map_err(|e| MintError::Key {
            algorithm: "ES256",
            reason: e.to_string(),
        })?;
        Ok(Self {
            algorithm: Algorithm::ES256,
            key,
        })
    }

    /// `HS256`, `RS256` or `ES256`.
    pub fn algorithm(&self) -> &'static str {
        match self.algorithm {
            Algorithm::RS256 => "RS256",
            Algorithm::ES256 => "ES256",
            _ => "HS256",
        }
    }
}

/// What the token says.
#[derive(Debug, Clone)]
pub struct TokenRequest {
    /// `sub`: who holds it.
    pub subject: String,
    /// Patterns the holder may read.
    pub grants: Vec<String>,
    /// How long it is valid from now.
    pub lifetime: Duration,
    /// `aud`, when the nodes check one.
    pub audience: Option<String>,
    /// `iss`, when the nodes check one.
    pub issuer: Option<String>,
    /// `kid`, to pick a key from a node's JWKS.
    pub key_id: Option<String>,
}

/// A signed token and when it expires.
#[derive(Debug, Clone)]
pub struct Minted {
    /// The compact JWT.
    pub token: String,
    /// `exp`, seconds since the Unix epoch.
    pub expires_at: u64,
}

#[derive(Serialize)]
struct Claims<'a> {
    sub: &'a str,
    iat: u64,
    exp: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    aud: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    iss: Option<&'a str>,
    #[serde(rename = "sse.subscribe")]
    subscribe: &'a [String],
}

/// Longest lifetime minted: far enough for any operator, near enough to
/// stay a sensible `exp`.
const MAX_LIFETIME: Duration = Duration::from_secs(100 * 365 * 24 * 3600);

/// Signs a token for `request` with `key`.
pub fn mint(key: &SigningKey, request: &TokenRequest) -> Result<Minted, MintError> {
    if request.grants.is_empty() {
        return Err(MintError::NoGrants);
    }
    if let Some(bad) = request
        .grants
        .iter()
        .find(|g| GrantPattern::parse(g).is_none())
    {
        return Err(MintError::Grant(bad.clone()));
    }
    if request.lifetime < Duration::from_secs(1) || request.lifetime > MAX_LIFETIME {
        return Err(MintError::Lifetime);
    }
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs();
    let expires_at = now + request.lifetime.as_secs();
    let claims = Claims {
        sub: &request.subject,
        iat: now,
        exp: expires_at,
        aud: request.audience.as_deref(),
        iss: request.issuer.as_deref(),
        subscribe: &request.grants,
    };
    let mut header = Header::new(key.algorithm);
    header.kid = request.key_id.clone();
    let token = jsonwebtoken::encode(&header, &claims, &key.key)
        .map_err(|e| MintError::Sign(e.to_string()))?;
    Ok(Minted { token, expires_at })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{JwtConfig, Secret, Verifier};
    use sse_protocol::SubjectPath;

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn request(grants: &[&str]) -> TokenRequest {
        TokenRequest {
            subject: "alice".into(),
            grants: grants.iter().map(|g| g.to_string()).collect(),
            lifetime: Duration::from_secs(60),
            audience: Some("sse".into()),
            issuer: None,
            key_id: None,
        }
    }

    #[test]
    fn a_minted_token_passes_the_verifier() {
        let key = SigningKey::hs256(SECRET.as_bytes()).unwrap();
        let minted = mint(&key, &request(&["orders.alice.>"])).unwrap();
        let verifier = Verifier::from_config(&JwtConfig {
            hs256_secret: Secret(SECRET.into()),
            audience: "sse".into(),
            ..JwtConfig::default()
        })
        .unwrap();
        let authorized = verifier.verify(&minted.token).unwrap();
        assert!(authorized.allows(&SubjectPath::parse_pattern("orders.alice.1").unwrap()));
        assert!(!authorized.allows(&SubjectPath::parse_pattern("orders.bob").unwrap()));
        let other_audience = Verifier::from_config(&JwtConfig {
            hs256_secret: Secret(SECRET.into()),
            audience: "other".into(),
            ..JwtConfig::default()
        })
        .unwrap();
        assert_eq!(
            other_audience.verify(&minted.token).unwrap_err(),
            crate::AuthError::Audience
        );
    }

    #[test]
    fn refuses_what_a_node_would_not_honour() {
        assert!(matches!(
            SigningKey::hs256(b"short"),
            Err(MintError::SecretTooShort(5))
        ));
        let key = SigningKey::hs256(SECRET.as_bytes()).unwrap();
        assert!(matches!(
            mint(&key, &request(&["orders.>.x"])),
            Err(MintError::Grant(g)) if g == "orders.>.x"
        ));
        assert!(matches!(
            mint(&key, &request(&[])),
            Err(MintError::NoGrants)
        ));
        let mut zero = request(&["orders"]);
        zero.lifetime = Duration::ZERO;
        assert!(matches!(mint(&key, &zero), Err(MintError::Lifetime)));
        assert!(matches!(
            SigningKey::rs256_pem(b"not pem"),
            Err(MintError::Key { .. })
        ));
    }
}
