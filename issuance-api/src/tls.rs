//! rustls on top of the HSM: the server's TLS key stays in the token and signs through the same
//! `ca_core::Signer` as certificates; client certificates are verified against the root with the
//! Access CA's CRLs.

use std::sync::Arc;

use ca_core::{KeyAlgorithm, Signer};
use rustls::pki_types::{CertificateDer, CertificateRevocationListDer};
use rustls::server::{ClientHello, ResolvesServerCert, WebPkiClientVerifier};
use rustls::sign::CertifiedKey;
use rustls::{RootCertStore, ServerConfig, SignatureAlgorithm, SignatureScheme};

/// A `ca_core::Signer` as a rustls signing key.
#[derive(Debug)]
pub struct SignerKey(pub Arc<dyn Signer>);

#[derive(Debug)]
struct SignerScheme(Arc<dyn Signer>, SignatureScheme);

impl rustls::sign::Signer for SignerScheme {
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, rustls::Error> {
        // ECDSA in TLS is the DER signature over the message hashed with the scheme's hash,
        // which is what Signer::sign does for P-256/SHA-256 and P-384/SHA-384.
        self.0
            .sign(message)
            .map_err(|e| rustls::Error::General(format!("HSM signing failed: {e}")))
    }
    fn scheme(&self) -> SignatureScheme {
        self.1
    }
}

impl rustls::sign::SigningKey for SignerKey {
    fn choose_scheme(&self, offered: &[SignatureScheme]) -> Option<Box<dyn rustls::sign::Signer>> {
        let scheme = match self.0.algorithm() {
            KeyAlgorithm::EcP256 => SignatureScheme::ECDSA_NISTP256_SHA256,
            KeyAlgorithm::EcP384 => SignatureScheme::ECDSA_NISTP384_SHA384,
        };
        offered.contains(&scheme).then(|| {
            Box::new(SignerScheme(self.0.clone(), scheme)) as Box<dyn rustls::sign::Signer>
        })
    }
    fn algorithm(&self) -> SignatureAlgorithm {
        SignatureAlgorithm::ECDSA
    }
}

#[derive(Debug)]
struct OneCert(Arc<CertifiedKey>);

impl ResolvesServerCert for OneCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.0.clone())
    }
}

/// The server's TLS configuration: TLS 1.3 and 1.2, HTTP/2 and HTTP/1.1, the server key in the
/// HSM, client certificates optional at the handshake (the CRL and health endpoints are
/// public) but verified when presented — a certificate from another CA, expired or revoked
/// never completes the handshake; `/v1` then refuses a connection that presented none.
pub fn server_tls_config(
    chain: Vec<CertificateDer<'static>>,
    key: Arc<dyn Signer>,
    anchors: Vec<CertificateDer<'static>>,
    crls: Vec<CertificateRevocationListDer<'static>>,
) -> Result<ServerConfig, rustls::Error> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut roots = RootCertStore::empty();
    for anchor in anchors {
        roots
            .add(anchor)
            .map_err(|e| rustls::Error::General(format!("client trust anchor: {e}")))?;
    }
    let verifier = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider.clone())
        .with_crls(crls)
        .allow_unknown_revocation_status()
        .allow_unauthenticated()
        .build()
        .map_err(|e| rustls::Error::General(format!("client verifier: {e}")))?;
    let certified = Arc::new(CertifiedKey::new(chain, Arc::new(SignerKey(key))));
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_client_cert_verifier(verifier)
        .with_cert_resolver(Arc::new(OneCert(certified)));
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(config)
}
