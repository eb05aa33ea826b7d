//! Certificates made on the fly for the TLS tests: a CA and a server
//! certificate for `localhost` signed by it.

use std::path::{Path, PathBuf};

use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, Issuer, KeyPair};

pub struct TestPki {
    pub ca_pem: String,
    pub server_cert_pem: String,
    pub server_key_pem: String,
}

impl TestPki {
    /// A CA named `name`, and a certificate for `localhost` it signed.
    pub fn new(name: &str) -> TestPki {
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params.distinguished_name.push(DnType::CommonName, name);
        let ca_key = KeyPair::generate().unwrap();
        let ca_cert = ca_params.self_signed(&ca_key).unwrap();
        let issuer = Issuer::new(ca_params, ca_key);
        let mut params = CertificateParams::new(vec!["localhost".to_owned()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, "localhost");
        let key = KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &issuer).unwrap();
        TestPki {
            ca_pem: ca_cert.pem(),
            server_cert_pem: cert.pem(),
            server_key_pem: key.serialize_pem(),
        }
    }

    /// The CA certificate in a file of its own, removed when the returned
    /// guard is dropped.
    pub fn ca_file(&self) -> CaFile {
        let path =
            std::env::temp_dir().join(format!("wfm-test-ca-{}.pem", uuid::Uuid::new_v4().simple()));
        std::fs::write(&path, &self.ca_pem).unwrap();
        CaFile(path)
    }
}

/// A file holding a CA certificate; deleted on drop.
pub struct CaFile(PathBuf);

impl CaFile {
    pub fn as_path(&self) -> &Path {
        &self.0
    }
}

impl Drop for CaFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}
