//! A TLS client that trusts one certificate by its fingerprint, whatever
//! names it carries: the CLI against the daemon it pinned
//! (`client::trust`), and a cluster host against the certificate another
//! host registered (`daemon::cluster::forward`). The handshake's signatures
//! are still checked with that certificate's key.

use std::fmt;
use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};

use super::tls::{fingerprint, provider};

/// Decides on the certificate the server presented.
pub trait Pin: fmt::Debug + Send + Sync {
    /// Whether the certificate with this fingerprint is the expected one;
    /// the error is what the refusal says.
    fn accept(&self, fingerprint: String) -> Result<(), String>;
}

/// A rustls client configuration whose only trust is `pin`.
pub fn client_config(pin: Arc<dyn Pin>) -> Result<Arc<rustls::ClientConfig>, rustls::Error> {
    let p = provider();
    let algs = p.signature_verification_algorithms;
    let cfg = rustls::ClientConfig::builder_with_provider(p)
        .with_safe_default_protocol_versions()?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(PinVerifier { pin, algs }))
        .with_no_client_auth();
    Ok(Arc::new(cfg))
}

#[derive(Debug)]
struct PinVerifier {
    pin: Arc<dyn Pin>,
    algs: WebPkiSupportedAlgorithms,
}

impl ServerCertVerifier for PinVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.pin
            .accept(fingerprint(end_entity))
            .map(|()| ServerCertVerified::assertion())
            .map_err(rustls::Error::General)
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &self.algs)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &self.algs)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.algs.supported_schemes()
    }
}
