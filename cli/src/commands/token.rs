//! `ssectl token mint|check`, with the rules of `sse-token`: the same code a
//! node runs decides what `check` says.

use std::{path::Path, time::Duration};

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

fn signing_key(args: &SigningKeyArgs) -> Result<SigningKey, Error> {
    let env_secret = std::env::var(HS256_SECRET_ENV)
        .ok()
        .filter(|s| !s.is_empty());
    let given = [
        args.hs256_secret_file.is_some(),
        args.rs256_key.is_some(),
        args.es256_key.is_some(),
    ]
    .iter()
    .filter(|g| **g)
    .count();
    if given > 1 {
        return Err(Error::Usage(
            "give one key: --hs256-secret-file, --rs256-key or --es256-key".to_owned(),
        ));
    }
    let key = if let Some(path) = &args.hs256_secret_file {
        let bytes = std::fs::read(path).map_err(|e| {
            Error::Usage(format!(
                "cannot read the HS256 secret file {}: {e}",
                path.display()
            ))
        })?;
        SigningKey::hs256(sse_token::verify::secret_from_file(&bytes))
    } else if let Some(path) = &args.rs256_key {
        SigningKey::rs256_pem(read(path, "the RS256 key")?.as_bytes())
    } else if let Some(path) = &args.es256_key {
        SigningKey::es256_pem(read(path, "the ES256 key")?.as_bytes())
    } else if let Some(secret) = env_secret {
        SigningKey::hs256(secret.as_bytes())
    } else {
        return Err(Error::Usage(format!(
            "no signing key: give --hs256-secret-file, --rs256-key or --es256-key, or set \
             {HS256_SECRET_ENV}"
        )));
    };
    key.map_err(|e| Error::Usage(e.to_string()))
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
