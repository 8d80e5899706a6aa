//! How node and admin secure their NATS connection beyond the credentials
//! of `nats.url` (see `nats_url`): TLS with certificate authorities of
//! one's own (`nats.tls_ca_file`), and a client certificate for servers
//! that verify their clients (`nats.tls_cert_file`, `nats.tls_key_file`).
//! Both services read these keys here, once, so they agree on what each
//! means. Needs the `nats` feature.
//!
//! Any of them asks for TLS: the connection is refused rather than made
//! in the clear, whatever the URL's scheme (`tls://` asks for it too).
//! With a CA file, the server's certificate must chain to one of its
//! authorities, instead of the system's.

use std::path::{Path, PathBuf};

use async_nats::ConnectOptions;

/// The keys as configured: paths, empty when unset.
#[derive(Debug, Clone, Copy, Default)]
pub struct NatsTlsFiles<'a> {
    /// `nats.tls_ca_file`: PEM certificates of the authorities to trust.
    pub ca_file: &'a str,
    /// `nats.tls_cert_file`: PEM certificate chain shown to the server.
    pub cert_file: &'a str,
    /// `nats.tls_key_file`: PEM private key of that certificate.
    pub key_file: &'a str,
}

/// The checked settings, ready to apply to a connection.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct NatsTls {
    ca_file: Option<PathBuf>,
    client: Option<(PathBuf, PathBuf)>,
}

impl NatsTls {
    /// Checks the files (present, readable, PEM of the right kind);
    /// every problem names its key.
    pub fn load(files: NatsTlsFiles<'_>) -> Result<Self, Vec<String>> {
        let mut problems = Vec::new();
        let mut file = |key: &str, path: &str, wants: &[&str], what: &str| {
            if path.is_empty() {
                return None;
            }
            match pem_holds(Path::new(path), wants) {
                Ok(true) => Some(PathBuf::from(path)),
                Ok(false) => {
                    problems.push(format!("{key}: {path} holds no {what}"));
                    None
                }
                Err(error) => {
                    problems.push(format!("{key}: cannot read {path}: {error}"));
                    None
                }
            }
        };
        let certificate = ["-----BEGIN CERTIFICATE-----"];
        let ca_file = file(
            "nats.tls_ca_file",
            files.ca_file,
            &certificate,
            "PEM certificate",
        );
        let cert = file(
            "nats.tls_cert_file",
            files.cert_file,
            &certificate,
            "PEM certificate",
        );
        let key = file(
            "nats.tls_key_file",
            files.key_file,
            &[
                "-----BEGIN PRIVATE KEY-----",
                "-----BEGIN RSA PRIVATE KEY-----",
                "-----BEGIN EC PRIVATE KEY-----",
            ],
            "PEM private key",
        );
        if files.cert_file.is_empty() != files.key_file.is_empty() {
            problems.push(
                "nats.tls_cert_file, nats.tls_key_file: set both (a client certificate and its \
                 key) or neither"
                    .to_owned(),
            );
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        Ok(Self {
            ca_file,
            client: cert.zip(key),
        })
    }

    /// Whether any TLS setting is given, and so TLS is required.
    pub fn is_set(&self) -> bool {
        self.ca_file.is_some() || self.client.is_some()
    }

    /// `options` with these settings: the CA file's authorities, the client
    /// certificate, and TLS required when either is set.
    pub fn apply(&self, mut options: ConnectOptions) -> ConnectOptions {
        if let Some(ca_file) = &self.ca_file {
            options = options.add_root_certificates(ca_file.clone());
        }
        if let Some((cert, key)) = &self.client {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        if self.is_set() {
            options = options.require_tls(true);
        }
        options
    }
}

/// Whether the file at `path` holds one of the PEM headers `wants`.
fn pem_holds(path: &Path, wants: &[&str]) -> std::io::Result<bool> {
    let text = std::fs::read(path)?;
    let text = String::from_utf8_lossy(&text);
    Ok(wants.iter().any(|header| text.contains(header)))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CERT: &str = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n";
    const KEY: &str = "-----BEGIN PRIVATE KEY-----\nMIIE\n-----END PRIVATE KEY-----\n";

    fn files(dir: &Path) -> (String, String, String) {
        let write = |name: &str, text: &str| {
            let path = dir.join(name);
            std::fs::write(&path, text).unwrap();
            path.to_str().unwrap().to_owned()
        };
        (
            write("ca.pem", CERT),
            write("cert.pem", CERT),
            write("key.pem", KEY),
        )
    }

    fn temp_dir(name: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("sse-nats-tls-{name}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn nothing_set_asks_for_nothing() {
        let tls = NatsTls::load(NatsTlsFiles::default()).unwrap();
        assert!(!tls.is_set());
        assert_eq!(tls, NatsTls::default());
    }

    #[test]
    fn a_ca_file_or_a_client_certificate_asks_for_tls() {
        let dir = temp_dir("set");
        let (ca, cert, key) = files(&dir);
        let only_ca = NatsTls::load(NatsTlsFiles {
            ca_file: &ca,
            ..Default::default()
        })
        .unwrap();
        assert!(only_ca.is_set());
        let client = NatsTls::load(NatsTlsFiles {
            ca_file: "",
            cert_file: &cert,
            key_file: &key,
        })
        .unwrap();
        assert!(client.is_set());
        assert_eq!(
            client.client,
            Some((PathBuf::from(&cert), PathBuf::from(&key)))
        );
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn each_bad_file_is_named_by_its_key() {
        let dir = temp_dir("bad");
        let (ca, cert, key) = files(&dir);
        let problems = NatsTls::load(NatsTlsFiles {
            ca_file: &key,
            cert_file: &cert,
            key_file: "",
        })
        .unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(
            problems[0].starts_with("nats.tls_ca_file:")
                && problems[0].contains("holds no PEM certificate"),
            "{problems:?}"
        );
        assert!(problems[1].contains("set both"), "{problems:?}");
        let missing = dir.join("absent.pem");
        let problems = NatsTls::load(NatsTlsFiles {
            ca_file: &ca,
            cert_file: missing.to_str().unwrap(),
            key_file: &ca,
        })
        .unwrap_err();
        assert!(
            problems[0].starts_with("nats.tls_cert_file: cannot read"),
            "{problems:?}"
        );
        assert!(
            problems[1].starts_with("nats.tls_key_file:")
                && problems[1].contains("holds no PEM private key"),
            "{problems:?}"
        );
        std::fs::remove_dir_all(dir).unwrap();
    }
}
