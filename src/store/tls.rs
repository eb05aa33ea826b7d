//! TLS to PostgreSQL with rustls, in libpq's four `sslmode`s.
//!
//! - `disable`: plaintext.
//! - `require`: encrypted, the server's certificate not checked (libpq's
//!   `require` without a root certificate).
//! - `verify-ca`: the chain must lead to a CA of `WFM_DATABASE_CA_FILE`; the host
//!   name is not checked.
//! - `verify-full`: the chain and the host name are checked (the right mode for
//!   RDS, with the RDS CA bundle).
//!
//! tokio-postgres's own `prefer` would silently fall back to plaintext, so it is
//! not offered.

use std::{path::Path, sync::Arc};

use rustls::{
    ClientConfig, DigitallySignedStruct, Error as TlsError, RootCertStore, SignatureScheme,
    client::{
        WebPkiServerVerifier,
        danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier},
    },
    pki_types::{CertificateDer, ServerName, UnixTime, pem::PemObject},
};
use tokio_postgres_rustls::MakeRustlsConnect;

use crate::config::SslMode;

#[derive(Debug, thiserror::Error)]
pub enum TlsConfigError {
    #[error("WFM_DATABASE_CA_FILE is required with WFM_DATABASE_SSLMODE={0}")]
    MissingCa(&'static str),
    #[error("WFM_DATABASE_CA_FILE {path}: {reason}")]
    BadCa { path: String, reason: String },
}

/// Installs the process's rustls crypto provider (ring) once.
pub fn install_crypto_provider() {
    // Err: already installed (by an earlier call, or an embedding program).
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// The connector for `mode`, or `None` for `disable`.
pub fn connector(
    mode: SslMode,
    ca_file: Option<&Path>,
) -> Result<Option<MakeRustlsConnect>, TlsConfigError> {
    install_crypto_provider();
    let verifier: Arc<dyn ServerCertVerifier> = match mode {
        SslMode::Disable => return Ok(None),
        SslMode::Require => Arc::new(AcceptAnyCertificate(provider())),
        SslMode::VerifyCa | SslMode::VerifyFull => {
            let path = ca_file.ok_or(TlsConfigError::MissingCa(mode.as_str()))?;
            let roots = load_roots(path)?;
            let full =
                WebPkiServerVerifier::builder_with_provider(Arc::new(roots), Arc::new(provider()))
                    .build()
                    .map_err(|e| bad_ca(path, e.to_string()))?;
            if mode == SslMode::VerifyCa {
                Arc::new(IgnoreHostName(full))
            } else {
                full
            }
        }
    };
    let config = ClientConfig::builder_with_provider(Arc::new(provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .dangerous()
        .with_custom_certificate_verifier(verifier)
        .with_no_client_auth();
    Ok(Some(MakeRustlsConnect::new(config)))
}

fn provider() -> rustls::crypto::CryptoProvider {
    rustls::crypto::ring::default_provider()
}

fn bad_ca(path: &Path, reason: String) -> TlsConfigError {
    TlsConfigError::BadCa {
        path: path.display().to_string(),
        reason,
    }
}

/// Every certificate of a PEM bundle (the RDS global bundle has over a hundred).
pub fn load_roots(path: &Path) -> Result<RootCertStore, TlsConfigError> {
    let certificates: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(path)
        .map_err(|e| bad_ca(path, e.to_string()))?
        .collect::<Result<_, _>>()
        .map_err(|e| bad_ca(path, e.to_string()))?;
    if certificates.is_empty() {
        return Err(bad_ca(path, "no certificate in the file".to_owned()));
    }
    let mut roots = RootCertStore::empty();
    let (_, ignored) = roots.add_parsable_certificates(certificates);
    if roots.is_empty() {
        return Err(bad_ca(
            path,
            format!("none of the {ignored} certificates could be used"),
        ));
    }
    Ok(roots)
}

/// `verify-ca`: the chain is verified as in `verify-full`; only a name mismatch
/// is forgiven. (rustls checks the chain before the name, so a name error means
/// the chain was good.)
#[derive(Debug)]
struct IgnoreHostName(Arc<WebPkiServerVerifier>);

impl ServerCertVerifier for IgnoreHostName {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        server_name: &ServerName<'_>,
        ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        match self
            .0
            .verify_server_cert(end_entity, intermediates, server_name, ocsp_response, now)
        {
            Err(TlsError::InvalidCertificate(
                rustls::CertificateError::NotValidForName
                | rustls::CertificateError::NotValidForNameContext { .. },
            )) => Ok(ServerCertVerified::assertion()),
            other => other,
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        self.0.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.supported_verify_schemes()
    }
}

/// `require`: encryption without authentication of the server, as libpq does.
/// Handshake signatures are still checked, so the session key is the server's.
#[derive(Debug)]
struct AcceptAnyCertificate(rustls::crypto::CryptoProvider);

impl ServerCertVerifier for AcceptAnyCertificate {
    fn verify_server_cert(
        &self,
        _: &CertificateDer<'_>,
        _: &[CertificateDer<'_>],
        _: &ServerName<'_>,
        _: &[u8],
        _: UnixTime,
    ) -> Result<ServerCertVerified, TlsError> {
        Ok(ServerCertVerified::assertion())
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls12_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, TlsError> {
        rustls::crypto::verify_tls13_signature(
            message,
            cert,
            dss,
            &self.0.signature_verification_algorithms,
        )
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.0.signature_verification_algorithms.supported_schemes()
    }
}
