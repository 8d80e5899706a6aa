//! What start-up builds from the configuration, once, before the node
//! serves: the JWT verifier (reads the key files), the TLS acceptor (reads
//! the certificate and key), the CORS rules, and TLS and credentials for
//! NATS (reads their files).
//!
//! [`Startup::load`] reads the configuration layers, checks the values
//! ([`Config::validate`]) and builds these parts, and reports every problem
//! of either kind by its key, so `--check-config` proves what a start would.
//! [`crate::run`] takes the result and reads no file again. This module sits
//! above `config`, `auth`, `connection` and `http`; `config` imports none of
//! them.

use std::path::Path;

use sse_protocol::{
    nats_credentials::{NatsCredentialFiles, NatsCredentials},
    nats_tls::{NatsTls, NatsTlsFiles},
};
use tokio_rustls::TlsAcceptor;
use tower_http::cors::CorsLayer;

use crate::{
    auth::Verifier,
    config::{Config, ConfigError},
    connection, http,
};

/// A checked configuration and the parts built from it.
pub struct Startup {
    /// The configuration, its values checked.
    pub config: Config,
    /// Verifies tokens for private topics.
    pub verifier: Verifier,
    /// `Some` when `[tls]` names a certificate and key.
    pub tls: Option<TlsAcceptor>,
    /// `Some` when `[cors]` allows any origin.
    pub cors: Option<CorsLayer>,
    /// TLS to NATS (`nats.tls_*`).
    pub nats_tls: NatsTls,
    /// How to authenticate to NATS beyond `nats.url` (`nats.creds_file`,
    /// `nats.nkey_seed_file`).
    pub nats_credentials: NatsCredentials,
}

impl Startup {
    /// Loads defaults, then `file` if given, then `SSE_*` variables, and
    /// builds the parts; every problem is reported at once.
    pub fn load(file: Option<&Path>) -> Result<Self, ConfigError> {
        Self::build(Config::extract(Config::figment(file))?)
    }

    /// Checks `config` and builds its parts.
    pub fn build(config: Config) -> Result<Self, ConfigError> {
        let mut errors = config.validate().err().map(|e| e.0).unwrap_or_default();
        let verifier = match Verifier::from_config(&config.auth.jwt) {
            Ok(verifier) => Some(verifier.with_clock(crate::clock::nats_now)),
            Err(problems) => {
                errors.extend(
                    problems
                        .into_iter()
                        .map(|(key, why)| format!("{key}: {why}")),
                );
                None
            }
        };
        let tls = if config.tls.cert_file.is_empty() || config.tls.key_file.is_empty() {
            // Only one of the two set is refused by `validate`.
            None
        } else {
            match connection::tls_acceptor(&config.tls, config.http.h2) {
                Ok(acceptor) => Some(acceptor),
                Err(why) => {
                    errors.push(why);
                    None
                }
            }
        };
        let nats_tls = NatsTls::load(NatsTlsFiles {
            ca_file: &config.nats.tls_ca_file,
            cert_file: &config.nats.tls_cert_file,
            key_file: &config.nats.tls_key_file,
        })
        .unwrap_or_else(|problems| {
            errors.extend(problems);
            NatsTls::default()
        });
        let nats_credentials = NatsCredentials::load(
            NatsCredentialFiles {
                creds_file: &config.nats.creds_file,
                nkey_seed_file: &config.nats.nkey_seed_file,
            },
            config.nats.url_has_credentials(),
        )
        .unwrap_or_else(|problems| {
            errors.extend(problems);
            NatsCredentials::None
        });
        match verifier {
            Some(verifier) if errors.is_empty() => Ok(Self {
                cors: http::cors_layer(&config.cors),
                config,
                verifier,
                tls,
                nats_tls,
                nats_credentials,
            }),
            _ => Err(ConfigError(errors)),
        }
    }
}

#[cfg(test)]
mod tests {
    use figment::{
        Figment,
        providers::{Format, Serialized, Toml},
    };

    use super::*;
    use crate::config::DEFAULT_TOML;

    fn build_with(settings: &[(&str, &str)]) -> Result<Startup, ConfigError> {
        let mut figment = Figment::from(Toml::string(DEFAULT_TOML));
        for (key, value) in settings {
            figment = figment.merge(Serialized::default(key, value));
        }
        Startup::build(Config::extract(figment)?)
    }

    #[test]
    fn defaults_build() {
        let startup = build_with(&[]).unwrap();
        assert!(startup.tls.is_none());
        assert!(startup.cors.is_none());
    }

    #[test]
    fn keys_and_certificates_name_their_key() {
        for (key, value) in [
            ("auth.jwt.hs256_secret", "short"),
            ("auth.jwt.hs256_secret_file", "/no/such/file"),
            ("auth.jwt.rs256_public_key_file", "/no/such.pem"),
            ("auth.jwt.es256_public_key_pem", "not a key"),
            ("auth.jwt.jwks_file", "/no/such.json"),
        ] {
            let err = build_with(&[(key, value)]).err().expect(key).to_string();
            assert!(err.contains(key), "{key}: {err}");
        }
        let err = build_with(&[
            ("tls.cert_file", "/no/cert.pem"),
            ("tls.key_file", "/no/key.pem"),
        ])
        .err()
        .expect("missing certificate")
        .to_string();
        assert!(err.contains("tls.cert_file"), "{err}");

        // A good certificate beside a bad key names the key's file.
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".to_owned()]).unwrap();
        let dir = tempfile::tempdir().unwrap();
        let cert = dir.path().join("cert.pem");
        let key = dir.path().join("key.pem");
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, "not a key").unwrap();
        let err = build_with(&[
            ("tls.cert_file", cert.to_str().unwrap()),
            ("tls.key_file", key.to_str().unwrap()),
        ])
        .err()
        .expect("a bad key")
        .to_string();
        assert!(
            err.contains("tls.key_file") && !err.contains("tls.cert_file"),
            "{err}"
        );
    }

    #[test]
    fn value_and_file_problems_are_reported_together() {
        let err = build_with(&[
            ("auth.jwt.jwks_file", "/no/such.json"),
            ("log.format", "xml"),
        ])
        .err()
        .expect("two problems")
        .to_string();
        assert!(
            err.contains("auth.jwt.jwks_file") && err.contains("log.format"),
            "{err}"
        );
    }
}
