//! A private certificate authority for tests: its certificate, and
//! certificates it signs, as PEM files in a fresh folder. Shared with the
//! ssectl tests, which include this file.

use std::path::PathBuf;

/// A CA whose files live as long as it does: `ca.pem`, and `<name>.pem`
/// with `<name>.key` for each certificate it issued.
pub(crate) struct PrivateCa {
    dir: tempfile::TempDir,
    issuer: rcgen::Issuer<'static, rcgen::KeyPair>,
}

impl PrivateCa {
    /// A new CA, its certificate written as `ca.pem`.
    pub(crate) fn new() -> Self {
        let key = rcgen::KeyPair::generate().expect("CA key");
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).expect("CA params");
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, "sse-cluster test CA");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.key_usages = vec![
            rcgen::KeyUsagePurpose::KeyCertSign,
            rcgen::KeyUsagePurpose::DigitalSignature,
        ];
        let certificate = params.self_signed(&key).expect("CA certificate");
        let dir = tempfile::tempdir().expect("temp dir");
        std::fs::write(dir.path().join("ca.pem"), certificate.pem()).expect("write ca.pem");
        Self {
            dir,
            issuer: rcgen::Issuer::new(params, key),
        }
    }

    /// Issues a certificate for `names` (host names or IP addresses), good
    /// for servers and clients alike, written as `<name>.pem` and
    /// `<name>.key`.
    pub(crate) fn issue(&self, name: &str, names: &[&str]) {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(
            names.iter().map(|n| (*n).to_owned()).collect::<Vec<_>>(),
        )
        .expect("params");
        params.extended_key_usages = vec![
            rcgen::ExtendedKeyUsagePurpose::ServerAuth,
            rcgen::ExtendedKeyUsagePurpose::ClientAuth,
        ];
        let certificate = params.signed_by(&key, &self.issuer).expect("certificate");
        std::fs::write(self.path(&format!("{name}.pem")), certificate.pem()).expect("write pem");
        std::fs::write(self.path(&format!("{name}.key")), key.serialize_pem()).expect("write key");
    }

    /// A file in the CA's folder.
    pub(crate) fn path(&self, file: &str) -> PathBuf {
        self.dir.path().join(file)
    }
}
