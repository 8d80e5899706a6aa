//! `ssectl token mint|check`, with the rules of `sse-token`: the same code a
//! node runs decides what `check` says.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use serde_json::json;
use sse_protocol::SubjectPath;
use sse_token::{JwtConfig, Secret, SigningKey, TokenRequest, Verifier};

use crate::{
    Error,
    args::{Check, Mint, SigningKeyArgs, TokenCommand},
    output::{self, Output},
};

/// The environment variable that may hold the HS256 secret itself.
pub const HS256_SECRET_ENV: &str = "SSECTL_HS256_SECRET";
/// The variable that may name the HS256 secret's file.
pub const HS256_SECRET_FILE_ENV: &str = "SSECTL_HS256_SECRET_FILE";
/// The variable that may name the RS256 private key's file.
pub const RS256_KEY_ENV: &str = "SSECTL_RS256_KEY";
/// The variable that may name the ES256 private key's file.
pub const ES256_KEY_ENV: &str = "SSECTL_ES256_KEY";

/// Runs one token command.
pub fn run(out: Output, command: TokenCommand) -> Result<(), Error> {
    match command {
        TokenCommand::Mint(mint) => run_mint(out, mint),
        TokenCommand::Check(check) => run_check(out, check),
    }
}

fn run_mint(out: Output, mint: Mint) -> Result<(), Error> {
    let key = signing_key(&mint.key)?;
    let request = TokenRequest {
        subject: mint.sub,
        grants: mint.grant,
        lifetime: mint.ttl,
        audience: mint.aud,
        issuer: mint.iss,
        key_id: mint.kid,
    };
    let minted = sse_token::mint::mint(&key, &request).map_err(|e| Error::Usage(e.to_string()))?;
    if out.json() {
        out.print_json(&json!({
            "token": minted.token,
            "algorithm": key.algorithm(),
            "expires_at": minted.expires_at,
        }));
    } else {
        crate::outln!("{}", minted.token);
    }
    Ok(())
}

fn read(path: &Path, what: &str) -> Result<String, Error> {
    std::fs::read_to_string(path)
        .map_err(|e| Error::Usage(format!("cannot read {what} {}: {e}", path.display())))
}

/// Where a signing key was given: a file of one of the three kinds, or
/// the HS256 secret itself.
enum KeySource {
    Hs256File(PathBuf),
    Rs256File(PathBuf),
    Es256File(PathBuf),
    Hs256Secret(String),
}

fn signing_key(args: &SigningKeyArgs) -> Result<SigningKey, Error> {
    let flags: Vec<KeySource> = [
        args.hs256_secret_file.clone().map(KeySource::Hs256File),
        args.rs256_key.clone().map(KeySource::Rs256File),
        args.es256_key.clone().map(KeySource::Es256File),
    ]
    .into_iter()
    .flatten()
    .collect();
    let source = match flags.len() {
        0 => key_from_environment()?,
        1 => flags.into_iter().next().expect("one flag"),
        _ => {
            return Err(Error::Usage(
                "give one key: --hs256-secret-file, --rs256-key or --es256-key".to_owned(),
            ));
        }
    };
    let key = match source {
        KeySource::Hs256File(path) => {
            let bytes = std::fs::read(&path).map_err(|e| {
                Error::Usage(format!(
                    "cannot read the HS256 secret file {}: {e}",
                    path.display()
                ))
            })?;
            SigningKey::hs256(sse_token::verify::secret_from_file(&bytes))
        }
        KeySource::Rs256File(path) => {
            SigningKey::rs256_pem(read(&path, "the RS256 key")?.as_bytes())
        }
        KeySource::Es256File(path) => {
            SigningKey::es256_pem(read(&path, "the ES256 key")?.as_bytes())
        }
        KeySource::Hs256Secret(secret) => SigningKey::hs256(secret.as_bytes()),
    };
    key.map_err(|e| Error::Usage(e.to_string()))
}

/// The signing key the environment names, when no flag does: exactly one
/// of its variables.
fn key_from_environment() -> Result<KeySource, Error> {
    let set = |name: &str| std::env::var_os(name).filter(|v| !v.is_empty());
    let mut found: Vec<(&str, KeySource)> = Vec::new();
    if let Some(path) = set(HS256_SECRET_FILE_ENV) {
        found.push((HS256_SECRET_FILE_ENV, KeySource::Hs256File(path.into())));
    }
    if let Some(path) = set(RS256_KEY_ENV) {
        found.push((RS256_KEY_ENV, KeySource::Rs256File(path.into())));
    }
    if let Some(path) = set(ES256_KEY_ENV) {
        found.push((ES256_KEY_ENV, KeySource::Es256File(path.into())));
    }
    if let Some(secret) = std::env::var(HS256_SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty())
    {
        found.push((HS256_SECRET_ENV, KeySource::Hs256Secret(secret)));
    }
    match found.len() {
        1 => Ok(found.pop().expect("one").1),
        0 => Err(Error::Usage(format!(
            "no signing key: give --hs256-secret-file, --rs256-key or --es256-key, or set one of \
             {HS256_SECRET_FILE_ENV}, {RS256_KEY_ENV}, {ES256_KEY_ENV}, {HS256_SECRET_ENV}"
        ))),
        _ => Err(Error::Usage(format!(
            "the environment names {} signing keys ({}): give one with a flag, which wins, or \
             leave one variable set",
            found.len(),
            found
                .iter()
                .map(|(name, _)| *name)
                .collect::<Vec<_>>()
                .join(", ")
        ))),
    }
}

fn path_text(path: &Option<std::path::PathBuf>) -> String {
    path.as_ref()
        .map(|p| p.to_string_lossy().into_owned())
        .unwrap_or_default()
}

fn run_check(out: Output, check: Check) -> Result<(), Error> {
    let keys = &check.keys;
    let config = JwtConfig {
        hs256_secret: Secret(if keys.hs256_secret_file.is_none() {
            std::env::var(HS256_SECRET_ENV).unwrap_or_default()
        } else {
            String::new()
        }),
        hs256_secret_file: path_text(&keys.hs256_secret_file),
        rs256_public_key_file: path_text(&keys.rs256_public_key),
        es256_public_key_file: path_text(&keys.es256_public_key),
        jwks_file: path_text(&keys.jwks_file),
        audience: keys.aud.clone().unwrap_or_default(),
        issuer: keys.iss.clone().unwrap_or_default(),
        leeway_seconds: keys.leeway,
        ..JwtConfig::default()
    };
    let verifier = Verifier::from_config(&config).map_err(|problems| {
        Error::Usage(
            problems
                .iter()
                .map(|(key, why)| format!("{key}: {why}"))
                .collect::<Vec<_>>()
                .join("; "),
        )
    })?;
    if !verifier.has_keys() {
        return Err(Error::Usage(format!(
            "no key to check against: give --hs256-secret-file, --rs256-public-key, \
             --es256-public-key or --jwks-file, or set {HS256_SECRET_ENV}"
        )));
    }
    let mut paths = Vec::with_capacity(check.path.len());
    for path in &check.path {
        paths.push(
            SubjectPath::parse_pattern(path)
                .map_err(|e| Error::Usage(format!("--path {path:?}: {e}")))?,
        );
    }
    let verdict = verifier.verify(&check.token).and_then(|authorized| {
        match paths.iter().find(|p| !authorized.allows(p)) {
            Some(path) => Err(sse_token::AuthError::Forbidden(path.to_string())),
            None => Ok(authorized.remaining()),
        }
    });
    match verdict {
        Ok(remaining) => {
            if out.json() {
                out.print_json(&json!({
                    "valid": true,
                    "expires_in_seconds": remaining.as_secs(),
                    "paths": check.path,
                }));
            } else {
                crate::outln!(
                    "valid: a node with these keys accepts it{} (expires in {})",
                    if check.path.is_empty() {
                        String::new()
                    } else {
                        format!(" for {}", check.path.join(", "))
                    },
                    output::age(remaining.max(Duration::from_secs(1)).as_secs())
                );
            }
            Ok(())
        }
        Err(refusal) => {
            if out.json() {
                out.print_json(&json!({
                    "valid": false,
                    "reason": refusal.reason(),
                    "message": refusal.to_string(),
                }));
            }
            Err(Error::Failed(format!(
                "invalid: {}: {refusal}",
                refusal.reason()
            )))
        }
    }
}
