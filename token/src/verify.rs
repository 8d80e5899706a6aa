//! Verification: a token's signature against the configured keys, then its
//! claims.
//!
//! [`Verifier::verify`] checks the signature against the configured keys
//! (HS256 secret, RS256 and ES256 public keys, a JWKS file), then `exp`
//! (always required), `nbf`, and `aud` and `iss` when configured. Only
//! algorithms with a configured key are accepted: `alg: none` has no key and
//! can never pass, and a token signed with a public key as an HMAC secret
//! finds no HS256 key of that kind.
//!
//! The claim `sse.subscribe` lists the subject patterns the holder may read;
//! [`Authorized::allows`] checks a requested path against them (see
//! `sse_protocol::grant`). The time the token expires is kept so the stream
//! it opens is closed then.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{
    Algorithm, DecodingKey, Validation,
    errors::ErrorKind,
    jwk::{AlgorithmParameters, EllipticCurve, JwkSet},
};
use serde::Deserialize;
use sse_protocol::{Grants, SubjectPath, grant::SUBSCRIBE_CLAIM};

use crate::config::JwtConfig;

/// Longest a token keeps a stream open, however far its `exp`: the stream
/// deadline must stay a representable instant.
const MAX_STREAM_AUTHORIZATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// The shortest HS256 secret a node accepts: shorter ones are guessable.
pub const MIN_HS256_SECRET_BYTES: usize = 32;

/// The secret held in a file: a file of text (written by hand, or by a
/// Kubernetes Secret) may end in a line end, which is not part of it; a
/// file of random bytes (`openssl rand 32 > secret`) is taken whole.
pub fn secret_from_file(bytes: &[u8]) -> &[u8] {
    match std::str::from_utf8(bytes) {
        Ok(text) => text.trim_end_matches(['\r', '\n']).as_bytes(),
        Err(_) => bytes,
    }
}

/// Why a token was refused. Every variant but [`AuthError::Forbidden`] is a
/// 401; that one is a 403.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    /// No token in any accepted place.
    #[error("this topic is private; send a token (Authorization: Bearer, access_token or cookie)")]
    Missing,
    /// The `Authorization` header is not a bearer token.
    #[error("the Authorization header is not a Bearer token")]
    NotBearer,
    /// Not a well-formed JWT, or a claim has the wrong shape.
    #[error("the token is malformed: {0}")]
    Malformed(String),
    /// The token names an algorithm no key is configured for.
    #[error("the token's algorithm is not accepted")]
    Algorithm,
    /// No configured key verifies the signature.
    #[error("the token's signature does not verify")]
    Signature,
    /// The token's `kid` names no configured key of its algorithm: often a
    /// key the issuer rotated in that the node has not loaded yet.
    #[error(
        "the token's kid names no key of its algorithm here; keys are read at start (a key rotated in at the issuer needs a restart)"
    )]
    UnknownKey,
    /// `exp` has passed.
    #[error("the token has expired")]
    Expired,
    /// `nbf` is still to come.
    #[error("the token is not valid yet")]
    NotYetValid,
    /// `aud` is not the configured audience.
    #[error("the token is not meant for this audience: its aud is missing or names another")]
    Audience,
    /// `iss` is not the configured issuer.
    #[error(
        "the token does not come from the expected issuer: its iss is missing or names another"
    )]
    Issuer,
    /// The token does not grant a requested path.
    #[error("the token does not grant {0:?}")]
    Forbidden(String),
}

impl AuthError {
    /// The reason label of `sse_auth_failures_total`.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Missing => "missing",
            Self::NotBearer | Self::Malformed(_) => "malformed",
            Self::Algorithm => "algorithm",
            Self::Signature => "signature",
            Self::UnknownKey => "unknown_key",
            Self::Expired => "expired",
            Self::NotYetValid => "not_yet_valid",
            Self::Audience => "audience",
            Self::Issuer => "issuer",
            Self::Forbidden(_) => "forbidden",
        }
    }

    /// The RFC 6750 error code for `WWW-Authenticate`; none when the
    /// request carried no token at all.
    pub fn bearer_error(&self) -> Option<&'static str> {
        match self {
            Self::Missing => None,
            Self::Forbidden(_) => Some("insufficient_scope"),
            _ => Some("invalid_token"),
        }
    }
}

/// A verified token: what it grants and until when.
#[derive(Debug, Clone)]
pub struct Authorized {
    grants: Grants,
    /// When the token stops being accepted (`exp` plus the leeway).
    pub expires_at: SystemTime,
    /// The clock that judged it ([`Verifier::with_clock`]).
    clock: Clock,
}

impl Authorized {
    /// Whether the token grants every subject `path` can match.
    pub fn allows(&self, path: &SubjectPath) -> bool {
        self.grants.covers(path)
    }

    /// Time left before the token expires, at most a year; zero if it
    /// already has.
    pub fn remaining(&self) -> Duration {
        self.expires_at
            .duration_since((self.clock)())
            .unwrap_or_default()
            .min(MAX_STREAM_AUTHORIZATION)
    }
}

#[derive(Deserialize)]
struct Claims {
    /// Required by the validation; kept to compute the stream's end. A
    /// number of seconds, which RFC 7519 lets carry a fraction. Optional
    /// here so that a token without it is refused as missing `exp`, by the
    /// validation, rather than as JSON this struct cannot read.
    exp: Option<f64>,
    /// Not before: checked here, by the verifier's clock, as `exp` is.
    nbf: Option<f64>,
    #[serde(rename = "sse.subscribe", default)]
    subscribe: Vec<String>,
}

struct Key {
    algorithm: Algorithm,
    kid: Option<String>,
    key: DecodingKey,
}

/// Verifies tokens against the configured keys and claims.
pub struct Verifier {
    keys: Vec<Key>,
    audience: Option<String>,
    issuer: Option<String>,
    leeway: u64,
    clock: Clock,
}

/// Where a verifier reads the time: the system's clock unless told
/// otherwise ([`Verifier::with_clock`]).
pub type Clock = fn() -> SystemTime;

impl std::fmt::Debug for Verifier {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verifier")
            .field("keys", &self.keys.len())
            .field("audience", &self.audience)
            .field("issuer", &self.issuer)
            .finish()
    }
}

/// Problems found in the `[auth.jwt]` section, each with the key it concerns.
pub type ConfigProblems = Vec<(&'static str, String)>;

impl Verifier {
    /// Loads every configured key; reports each key that cannot be used.
    pub fn from_config(jwt: &JwtConfig) -> Result<Self, ConfigProblems> {
        let mut keys = Vec::new();
        let mut problems = Vec::new();
        let secret = match (
            jwt.hs256_secret.0.is_empty(),
            jwt.hs256_secret_file.is_empty(),
        ) {
            (true, true) => None,
            (false, true) => Some((
                jwt.hs256_secret.0.clone().into_bytes(),
                "auth.jwt.hs256_secret",
            )),
            (true, false) => match std::fs::read(&jwt.hs256_secret_file) {
                Ok(bytes) => Some((
                    secret_from_file(&bytes).to_vec(),
                    "auth.jwt.hs256_secret_file",
                )),
                Err(e) => {
                    let file = &jwt.hs256_secret_file;
                    problems.push((
                        "auth.jwt.hs256_secret_file",
                        format!("cannot read {file:?}: {e}"),
                    ));
                    None
                }
            },
            (false, false) => {
                problems.push((
                    "auth.jwt.hs256_secret_file",
                    "set either auth.jwt.hs256_secret or auth.jwt.hs256_secret_file".to_owned(),
                ));
                None
            }
        };
        if let Some((secret, key_name)) = secret {
            if secret.len() < MIN_HS256_SECRET_BYTES {
                problems.push((key_name, "must be at least 32 bytes long".to_owned()));
            }
            keys.push(Key {
                algorithm: Algorithm::HS256,
                kid: None,
                key: DecodingKey::from_secret(&secret),
            });
        }
        let pem_keys: [(Algorithm, &str, &str, &'static str, &'static str); 2] = [
            (
                Algorithm::RS256,
                &jwt.rs256_public_key_pem,
                &jwt.rs256_public_key_file,
                "auth.jwt.rs256_public_key_pem",
                "auth.jwt.rs256_public_key_file",
            ),
            (
                Algorithm::ES256,
                &jwt.es256_public_key_pem,
                &jwt.es256_public_key_file,
                "auth.jwt.es256_public_key_pem",
                "auth.jwt.es256_public_key_file",
            ),
        ];
        for (algorithm, pem, file, pem_key, file_key) in pem_keys {
            let (text, key_name) = match (pem.is_empty(), file.is_empty()) {
                (true, true) => continue,
                (false, false) => {
                    problems.push((file_key, format!("set either {pem_key} or {file_key}")));
                    continue;
                }
                (false, true) => (pem.to_owned(), pem_key),
                (true, false) => match std::fs::read_to_string(file) {
                    Ok(text) => (text, file_key),
                    Err(e) => {
                        problems.push((file_key, format!("cannot read {file:?}: {e}")));
                        continue;
                    }
                },
            };
            let key = match algorithm {
                Algorithm::RS256 => DecodingKey::from_rsa_pem(text.as_bytes()),
                _ => DecodingKey::from_ec_pem(text.as_bytes()),
            };
            match key {
                Ok(key) => keys.push(Key {
                    algorithm,
                    kid: None,
                    key,
                }),
                Err(e) => problems.push((key_name, format!("not a usable public key: {e}"))),
            }
        }
        if !jwt.jwks_file.is_empty() {
            match load_jwks(&jwt.jwks_file) {
                Ok(mut loaded) => keys.append(&mut loaded),
                Err(why) => problems.push(("auth.jwt.jwks_file", why)),
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let non_empty = |s: &str| (!s.is_empty()).then(|| s.to_owned());
        Ok(Self {
            keys,
            audience: non_empty(&jwt.audience),
            issuer: non_empty(&jwt.issuer),
            leeway: jwt.leeway_seconds,
            clock: SystemTime::now,
        })
    }

    /// Judges `exp` and `nbf` by `clock`: a node whose own clock is off
    /// judges by NATS's, so that every node behind one load balancer
    /// accepts a token alike.
    pub fn with_clock(self, clock: Clock) -> Self {
        Self { clock, ..self }
    }

    /// Whether any key is configured; without one, private topics are
    /// refused to everyone.
    pub fn has_keys(&self) -> bool {
        !self.keys.is_empty()
    }

    /// Verifies a token: signature, `exp`, `nbf`, `aud`, `iss`.
    pub fn verify(&self, token: &str) -> Result<Authorized, AuthError> {
        // A compact JWS is three base64url parts and nothing else. Junk after
        // the signature (`Bearer <token> x`, a trailing comma) would reach
        // the signature check and count as a forged signature, which
        // operators read as someone trying tokens, not as a client's bug.
        if token.bytes().filter(|&b| b == b'.').count() != 2
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
        {
            return Err(AuthError::Malformed("not three base64url parts".to_owned()));
        }
        // An unknown `alg` (such as `none`) fails here: the enum has no such
        // variant.
        let header = jsonwebtoken::decode_header(token).map_err(|e| match e.kind() {
            ErrorKind::Json(_) if token_names_unknown_alg(token) => AuthError::Algorithm,
            ErrorKind::Json(_) => AuthError::Malformed(
                "the header (its first part) is not the JSON object expected, naming the alg"
                    .to_owned(),
            ),
            _ => AuthError::Malformed(describe(&e)),
        })?;
        if token_has_critical_extensions(token) {
            return Err(AuthError::Malformed(
                "the header names critical extensions (crit), which are not supported".to_owned(),
            ));
        }
        let candidates: Vec<&Key> = self
            .keys
            .iter()
            .filter(|k| k.algorithm == header.alg)
            .filter(|k| match (&header.kid, &k.kid) {
                (Some(wanted), Some(kid)) => wanted == kid,
                _ => true,
            })
            .collect();
        if candidates.is_empty() {
            let known_algorithm = self.keys.iter().any(|k| k.algorithm == header.alg);
            return Err(if known_algorithm {
                AuthError::UnknownKey
            } else {
                AuthError::Algorithm
            });
        }
        let mut validation = Validation::new(header.alg);
        // Checked below, by this verifier's clock; the library would read
        // the system's.
        validation.validate_exp = false;
        validation.validate_nbf = false;
        // The library checks `aud` and `iss` only when the token has them:
        // a token without them would pass an audience or issuer the
        // configuration asks for (one minted for another service with the
        // same key, say).
        let mut required = vec!["exp"];
        match &self.audience {
            Some(aud) => {
                validation.set_audience(&[aud]);
                required.push("aud");
            }
            None => validation.validate_aud = false,
        }
        if let Some(iss) = &self.issuer {
            validation.set_issuer(&[iss]);
            required.push("iss");
        }
        validation.set_required_spec_claims(&required);
        let now = (self.clock)();
        let mut last = AuthError::Signature;
        for key in candidates {
            match jsonwebtoken::decode::<Claims>(token, &key.key, &validation) {
                Ok(data) => {
                    let claims = data.claims;
                    // An absurd `exp` (year 10^11) must not overflow the clock.
                    let expires_at = claims
                        .exp
                        .and_then(|exp| Duration::try_from_secs_f64(exp).ok())
                        .and_then(|exp| exp.checked_add(Duration::from_secs(self.leeway)))
                        .and_then(|exp| UNIX_EPOCH.checked_add(exp))
                        .unwrap_or_else(|| now + MAX_STREAM_AUTHORIZATION);
                    // RFC 7519: the token is expired from `exp` on, and
                    // acceptance and the stream's end are kept in step.
                    if now >= expires_at {
                        return Err(AuthError::Expired);
                    }
                    let now_seconds = now
                        .duration_since(UNIX_EPOCH)
                        .unwrap_or_default()
                        .as_secs_f64();
                    if claims
                        .nbf
                        .is_some_and(|nbf| nbf > now_seconds + self.leeway as f64)
                    {
                        return Err(AuthError::NotYetValid);
                    }
                    return Ok(Authorized {
                        grants: Grants::new(claims.subscribe.iter().map(String::as_str)),
                        expires_at,
                        clock: self.clock,
                    });
                }
                Err(e) => {
                    last = match e.kind() {
                        ErrorKind::InvalidSignature => AuthError::Signature,
                        ErrorKind::ExpiredSignature => AuthError::Expired,
                        ErrorKind::ImmatureSignature => AuthError::NotYetValid,
                        ErrorKind::InvalidAudience => AuthError::Audience,
                        ErrorKind::InvalidIssuer => AuthError::Issuer,
                        ErrorKind::MissingRequiredClaim(claim) if claim == "aud" => {
                            AuthError::Audience
                        }
                        ErrorKind::MissingRequiredClaim(claim) if claim == "iss" => {
                            AuthError::Issuer
                        }
                        ErrorKind::InvalidAlgorithm => AuthError::Algorithm,
                        _ => AuthError::Malformed(describe_in(&e, token)),
                    };
                    // Another key of the same algorithm may still verify it.
                    if last != AuthError::Signature {
                        return Err(last);
                    }
                }
            }
        }
        Err(last)
    }
}

/// A token error described without echoing the token.
fn describe(error: &jsonwebtoken::errors::Error) -> String {
    match error.kind() {
        ErrorKind::MissingRequiredClaim(claim) => format!("the claim {claim:?} is missing"),
        ErrorKind::Json(_) => format!(
            "a part is not the JSON expected (exp and nbf are numbers, {SUBSCRIBE_CLAIM} a list of strings)"
        ),
        ErrorKind::Base64(_) | ErrorKind::Utf8(_) => "a part is not base64url".to_owned(),
        ErrorKind::InvalidToken => "not three base64url parts".to_owned(),
        _ => "cannot be read".to_owned(),
    }
}

/// Whether the token's header names an algorithm the library does not
/// know (`none` in any case, `foo`), to report it as a refused algorithm
/// rather than a malformed token.
fn token_names_unknown_alg(token: &str) -> bool {
    header_json(token)
        .and_then(|v| {
            v.get("alg")?
                .as_str()
                .map(|alg| alg.parse::<Algorithm>().is_err())
        })
        .unwrap_or(false)
}

/// [`describe`], telling a claim that is there but not a number of
/// seconds (`"exp": -1`, `1e30`) from one that is missing, which the
/// library does not.
fn describe_in(error: &jsonwebtoken::errors::Error, token: &str) -> String {
    if let ErrorKind::MissingRequiredClaim(claim) = error.kind()
        && token
            .split('.')
            .nth(1)
            .and_then(|part| base64_url_decode(part).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|claims| claims.get(claim).is_some())
    {
        return format!("the claim {claim:?} is not a time: seconds since 1970, from 0 to 2^64");
    }
    if let ErrorKind::Json(_) = error.kind()
        && !token
            .split('.')
            .nth(1)
            .and_then(|part| base64_url_decode(part).ok())
            .and_then(|bytes| serde_json::from_slice::<serde_json::Value>(&bytes).ok())
            .is_some_and(|claims| claims.is_object())
    {
        return "the claims (its second part) are not a JSON object".to_owned();
    }
    describe(error)
}

/// Whether the token's header names extensions that must be understood
/// (`crit`, RFC 7515 4.1.11): the node understands none, so such a token
/// is refused.
fn token_has_critical_extensions(token: &str) -> bool {
    header_json(token).is_some_and(|v| v.get("crit").is_some())
}

/// The token's header as JSON, if it reads.
fn header_json(token: &str) -> Option<serde_json::Value> {
    let first = token.split('.').next()?;
    let bytes = base64_url_decode(first).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Unpadded base64url, as JWT uses; small enough not to need a crate.
fn base64_url_decode(text: &str) -> Result<Vec<u8>, jsonwebtoken::errors::Error> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc = 0u32;
    let mut bits = 0;
    for b in text.bytes() {
        let v = match b {
            b'A'..=b'Z' => b - b'A',
            b'a'..=b'z' => b - b'a' + 26,
            b'0'..=b'9' => b - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            b'=' => break,
            _ => return Err(ErrorKind::InvalidToken.into()),
        };
        acc = (acc << 6) | u32::from(v);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Ok(out)
}

fn load_jwks(path: &str) -> Result<Vec<Key>, String> {
    let text = std::fs::read_to_string(path).map_err(|e| format!("cannot read {path:?}: {e}"))?;
    let set: JwkSet =
        serde_json::from_str(&text).map_err(|e| format!("{path:?} is not a JWKS: {e}"))?;
    let mut keys = Vec::new();
    for (i, jwk) in set.keys.iter().enumerate() {
        let algorithm = match &jwk.algorithm {
            AlgorithmParameters::RSA(_) => Algorithm::RS256,
            AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
                Algorithm::ES256
            }
            AlgorithmParameters::OctetKey(_) => Algorithm::HS256,
            _ => return Err(format!("key {i} is neither RSA, EC P-256 nor oct")),
        };
        if let Some(declared) = jwk.common.key_algorithm {
            let declared = format!("{declared:?}");
            if declared != format!("{algorithm:?}") {
                return Err(format!(
                    "key {i} declares alg {declared}; only RS256, ES256 and HS256 are accepted"
                ));
            }
        }
        let key = DecodingKey::from_jwk(jwk).map_err(|e| format!("key {i}: {e}"))?;
        keys.push(Key {
            algorithm,
            kid: jwk.common.key_id.clone(),
            key,
        });
    }
    if keys.is_empty() {
        return Err(format!("{path:?} holds no key"));
    }
    Ok(keys)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Secret;
    use jsonwebtoken::{EncodingKey, Header, encode};

    const SECRET: &str = "0123456789abcdef0123456789abcdef";

    fn config() -> JwtConfig {
        JwtConfig {
            hs256_secret: Secret(SECRET.into()),
            ..JwtConfig::default()
        }
    }

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    fn token(claims: serde_json::Value) -> String {
        encode(
            &Header::new(Algorithm::HS256),
            &claims,
            &EncodingKey::from_secret(SECRET.as_bytes()),
        )
        .unwrap()
    }

    #[test]
    fn verifies_and_grants() {
        let v = Verifier::from_config(&config()).unwrap();
        let t = token(serde_json::json!({"exp": now() + 60, "sse.subscribe": ["orders.alice.>"]}));
        let a = v.verify(&t).unwrap();
        assert!(a.allows(&SubjectPath::parse_pattern("orders.alice.1").unwrap()));
        assert!(!a.allows(&SubjectPath::parse_pattern("orders.>").unwrap()));
        assert!(a.remaining() > Duration::from_secs(50));
    }

    /// A node whose clock is off judges by the clock it is given: three
    /// minutes behind, a token expired a minute ago by the system's clock
    /// still has two to go; three minutes ahead, one valid from a minute
    /// from now is valid already. The leeway (30 s) covers neither.
    #[test]
    fn judges_exp_and_nbf_by_the_clock_it_is_given() {
        let mut c = config();
        c.leeway_seconds = 30;
        let system = Verifier::from_config(&c).unwrap();
        let behind = Verifier::from_config(&c)
            .unwrap()
            .with_clock(|| SystemTime::now() - Duration::from_secs(180));
        let ahead = Verifier::from_config(&c)
            .unwrap()
            .with_clock(|| SystemTime::now() + Duration::from_secs(180));
        let expired = token(serde_json::json!({"exp": now() - 60}));
        assert_eq!(system.verify(&expired).unwrap_err(), AuthError::Expired);
        let authorized = behind.verify(&expired).unwrap();
        let left = authorized.remaining();
        assert!(
            left > Duration::from_secs(140) && left <= Duration::from_secs(150),
            "{left:?}"
        );
        let early = token(serde_json::json!({"exp": now() + 600, "nbf": now() + 60}));
        assert_eq!(system.verify(&early).unwrap_err(), AuthError::NotYetValid);
        assert!(ahead.verify(&early).is_ok());
        assert_eq!(behind.verify(&early).unwrap_err(), AuthError::NotYetValid);
        let fresh = token(serde_json::json!({"exp": now() + 60}));
        assert_eq!(ahead.verify(&fresh).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn reads_the_hs256_secret_from_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, format!("{SECRET}\n")).unwrap();
        let mut c = config();
        c.hs256_secret = Secret(String::new());
        c.hs256_secret_file = path.to_str().unwrap().to_owned();
        let v = Verifier::from_config(&c).unwrap();
        let t = token(serde_json::json!({"exp": now() + 60}));
        assert!(v.verify(&t).is_ok());
        c.hs256_secret = Secret(SECRET.into());
        let problems = Verifier::from_config(&c).unwrap_err();
        assert_eq!(problems[0].0, "auth.jwt.hs256_secret_file");
    }

    /// A file of random bytes is a secret as it is, a line end included;
    /// only a file of text loses its line end.
    #[test]
    fn reads_an_hs256_secret_of_random_bytes_whole() {
        let secret: Vec<u8> = (0u8..40)
            .map(|i| i.wrapping_mul(97) | 0x80)
            .chain([b'\n'])
            .collect();
        assert!(std::str::from_utf8(&secret).is_err());
        assert_eq!(secret_from_file(&secret), &secret[..]);
        assert_eq!(secret_from_file(b"text\r\n"), b"text");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("secret");
        std::fs::write(&path, &secret).unwrap();
        let mut c = config();
        c.hs256_secret = Secret(String::new());
        c.hs256_secret_file = path.to_str().unwrap().to_owned();
        let v = Verifier::from_config(&c).unwrap();
        let signed = encode(
            &Header::new(Algorithm::HS256),
            &serde_json::json!({"exp": now() + 60}),
            &EncodingKey::from_secret(&secret),
        )
        .unwrap();
        assert!(v.verify(&signed).is_ok());
    }

    #[test]
    fn a_far_future_exp_does_not_overflow() {
        let v = Verifier::from_config(&config()).unwrap();
        let t = token(serde_json::json!({"exp": u64::MAX}));
        let a = v.verify(&t).unwrap();
        assert!(a.remaining() > MAX_STREAM_AUTHORIZATION - Duration::from_secs(60));
        let t = token(serde_json::json!({"exp": 99_999_999_999u64}));
        assert!(v.verify(&t).unwrap().remaining() <= MAX_STREAM_AUTHORIZATION);
    }

    #[test]
    fn an_exp_with_a_fraction_of_a_second_is_a_numeric_date() {
        // RFC 7519's NumericDate may be a non-integer number.
        let v = Verifier::from_config(&config()).unwrap();
        let t = token(serde_json::json!({"exp": now() as f64 + 60.5}));
        let remaining = v.verify(&t).unwrap().remaining();
        assert!(remaining > Duration::from_secs(59) && remaining <= Duration::from_millis(60_500));
        let past = token(serde_json::json!({"exp": now() as f64 - 10.5}));
        assert_eq!(v.verify(&past).unwrap_err(), AuthError::Expired);
    }

    #[test]
    fn refuses_bad_tokens_precisely() {
        let v = Verifier::from_config(&config()).unwrap();
        let expired = token(serde_json::json!({"exp": now() - 10}));
        assert_eq!(v.verify(&expired).unwrap_err(), AuthError::Expired);
        let early = token(serde_json::json!({"exp": now() + 60, "nbf": now() + 30}));
        assert_eq!(v.verify(&early).unwrap_err(), AuthError::NotYetValid);
        let no_exp = token(serde_json::json!({"sse.subscribe": ["a"]}));
        assert_eq!(
            v.verify(&no_exp).unwrap_err(),
            AuthError::Malformed("the claim \"exp\" is missing".into())
        );
        for exp in [serde_json::json!(-1), serde_json::json!(1e30)] {
            assert_eq!(
                v.verify(&token(serde_json::json!({ "exp": exp })))
                    .unwrap_err(),
                AuthError::Malformed(
                    "the claim \"exp\" is not a time: seconds since 1970, from 0 to 2^64".into()
                ),
                "{exp}"
            );
        }
        let text_exp = token(serde_json::json!({"exp": "tomorrow"}));
        assert!(
            matches!(v.verify(&text_exp), Err(AuthError::Malformed(m)) if m.contains("exp and nbf are numbers"))
        );
        // A critical extension the verifier does not understand (RFC 7515),
        // however well signed.
        use base64::Engine as _;
        let b64 = |bytes: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        let sign_parts = |header: &[u8], claims: &[u8]| {
            let signed = format!("{}.{}", b64(header), b64(claims));
            let signature = jsonwebtoken::crypto::sign(
                signed.as_bytes(),
                &EncodingKey::from_secret(SECRET.as_bytes()),
                Algorithm::HS256,
            )
            .unwrap();
            format!("{signed}.{signature}")
        };
        let claims = serde_json::json!({"exp": now() + 60}).to_string();
        let sign = |header: &[u8]| sign_parts(header, claims.as_bytes());
        let critical = sign(br#"{"alg":"HS256","typ":"JWT","crit":["exp2"],"exp2":1}"#);
        // The same token without `crit` verifies.
        assert!(v.verify(&sign(br#"{"alg":"HS256","typ":"JWT"}"#)).is_ok());
        assert!(
            matches!(v.verify(&critical), Err(AuthError::Malformed(m)) if m.contains("crit")),
            "{:?}",
            v.verify(&critical)
        );
        // alg: none, unsigned.
        let none = "eyJhbGciOiJub25lIiwidHlwIjoiSldUIn0.eyJleHAiOjQxMDI0NDQ4MDB9.";
        assert_eq!(v.verify(none).unwrap_err(), AuthError::Algorithm);
        // An algorithm nobody knows is refused as such, not as a token
        // whose claims are of the wrong kind.
        let unknown = sign(br#"{"alg":"foo","typ":"JWT"}"#);
        assert_eq!(v.verify(&unknown).unwrap_err(), AuthError::Algorithm);
        let forged = format!("{}x", &expired[..expired.len() - 1]);
        assert!(v.verify(&forged).is_err());
        assert!(matches!(v.verify("abc"), Err(AuthError::Malformed(_))));
        // Junk after a token that verifies is a malformed token, not a
        // forged signature.
        let valid = token(serde_json::json!({"exp": now() + 60}));
        assert!(v.verify(&valid).is_ok());
        for junk in [" x", ",", "=", " "] {
            assert_eq!(
                v.verify(&format!("{valid}{junk}")).unwrap_err(),
                AuthError::Malformed("not three base64url parts".into()),
                "{junk:?}"
            );
        }
        // Parts that are not JSON at all are said to be so, not to hold
        // claims of the wrong kind.
        assert_eq!(
            v.verify("abc.def.ghi").unwrap_err(),
            AuthError::Malformed(
                "the header (its first part) is not the JSON object expected, naming the alg"
                    .into()
            )
        );
        let signed_over_text = sign_parts(br#"{"alg":"HS256"}"#, b"not json");
        assert_eq!(
            v.verify(&signed_over_text).unwrap_err(),
            AuthError::Malformed("the claims (its second part) are not a JSON object".into())
        );
    }

    /// With an audience and an issuer configured, a token must name both:
    /// one without them was accepted, the library checking each only when
    /// the token has it.
    #[test]
    fn a_configured_audience_and_issuer_are_required() {
        let mut c = config();
        c.audience = "sse".into();
        c.issuer = "https://idp".into();
        let v = Verifier::from_config(&c).unwrap();
        let exp = now() + 60;
        let both = token(serde_json::json!({"exp": exp, "aud": "sse", "iss": "https://idp"}));
        assert!(v.verify(&both).is_ok());
        for (claims, refused) in [
            (
                serde_json::json!({"exp": exp, "iss": "https://idp"}),
                AuthError::Audience,
            ),
            (
                serde_json::json!({"exp": exp, "aud": "other", "iss": "https://idp"}),
                AuthError::Audience,
            ),
            (
                serde_json::json!({"exp": exp, "aud": "sse"}),
                AuthError::Issuer,
            ),
            (
                serde_json::json!({"exp": exp, "aud": "sse", "iss": "https://evil"}),
                AuthError::Issuer,
            ),
        ] {
            assert_eq!(
                v.verify(&token(claims.clone())).unwrap_err(),
                refused,
                "{claims}"
            );
        }
        let neither = token(serde_json::json!({"exp": exp}));
        assert!(v.verify(&neither).is_err());
        // Without them configured, tokens need neither.
        let open = Verifier::from_config(&config()).unwrap();
        assert!(open.verify(&neither).is_ok());
    }

    #[test]
    fn base64url_decodes() {
        assert_eq!(base64_url_decode("eyJhIjoxfQ").unwrap(), br#"{"a":1}"#);
        assert!(base64_url_decode("a+b").is_err());
    }
}
