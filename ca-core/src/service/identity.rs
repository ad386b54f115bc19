//! The CA's own identities, each an HSM key with a certificate: the audit signer (certified by
//! the root at the root ceremony), the API server's TLS key and the trust-update signer (both
//! certified on first use, by the Access and Organisation CAs).

use std::path::Path;
use std::sync::Arc;

use der::{Decode, Encode};
use serde_json::json;
use spki::SubjectPublicKeyInfoOwned;

use super::{unix_now, Actor, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::certs::certificate_from_pem;
use crate::issue::{tls_request, KeySource, Subject};
use crate::signer::{KeyAlgorithm, Signer};
use crate::tamp::UpdateSigner;
use crate::CaKind;

/// Label of the key that signs the audit chain head (on the online token).
pub const AUDIT_KEY_LABEL: &str = "meterpki-audit";
/// Label of the API server's TLS key (on the online token).
pub const SERVER_KEY_LABEL: &str = "meterpki-api-server";
/// Label of the trust-update signer's key (on the online token).
pub const UPDATE_KEY_LABEL: &str = "meterpki-trust-update-signer";
const UPDATE_PROFILE: &str = "trust-update-signer";

/// The API server's TLS identity: its key in the HSM and its certificate chain.
#[derive(Debug)]
pub struct ServerIdentity {
    /// Signs the handshakes.
    pub signer: Arc<dyn Signer>,
    /// The server certificate, then the Access CA's (DER).
    pub chain: Vec<Vec<u8>>,
    /// The root certificate (DER), which client certificates chain to.
    pub root: Vec<u8>,
}

impl Service {
    /// The audit key's signer.
    pub fn audit_signer(&self) -> Result<Arc<dyn Signer>, ServiceError> {
        self.online_signer(AUDIT_KEY_LABEL)
    }

    /// The key labelled `label` on the online token, generated the first time.
    fn service_key(&self, label: &str) -> Result<SubjectPublicKeyInfoOwned, ServiceError> {
        let online = self.online()?;
        Ok(match online.find_key(label)? {
            Some(k) => k.spki,
            None => {
                online
                    .generate_key_as(label, KeyAlgorithm::EcP256, self.key_protection())?
                    .spki
            }
        })
    }

    /// The certificate of a service key: the one in `path` while it certifies this key, has
    /// more than 30 days left and was signed by the current generation of `ca`, else one issued
    /// now from `profile` (committed with an `identity.issue` audit record) and written to
    /// `path`. After a renewal of `ca` (or a compromise of its earlier generation) the same key
    /// is certified again by the new generation, superseding the earlier certificate. Returns
    /// its DER.
    fn service_certificate(
        &self,
        actor: &Actor,
        path: &Path,
        spki: &SubjectPublicKeyInfoOwned,
        (ca, profile): (CaKind, &str),
        subject: Subject,
    ) -> Result<Vec<u8>, ServiceError> {
        let current = self.ca_cert(ca)?.tbs_certificate.subject_public_key_info;
        let reuse = std::fs::read_to_string(path)
            .ok()
            .and_then(|pem| certificate_from_pem(&pem).ok())
            .filter(|c| {
                let left = c
                    .tbs_certificate
                    .validity
                    .not_after
                    .to_unix_duration()
                    .as_secs() as i64
                    - unix_now();
                c.tbs_certificate.subject_public_key_info.to_der().ok() == spki.to_der().ok()
                    && left > 30 * 86_400
                    && crate::certs::verify_certificate_signature(c, &current).is_ok()
            });
        if let Some(c) = reuse {
            return c
                .to_der()
                .map_err(|e| ServiceError::Internal(e.to_string()));
        }
        let engine = self.engine()?;
        let mut request = tls_request(
            engine.profiles(),
            profile,
            subject,
            KeySource::Spki(spki.clone()),
            true,
        )?;
        // A certificate from an earlier generation of `ca` is replaced, the same key certified
        // again by the current one.
        request.recertify = true;
        let mut results = engine.commit_signed(engine.sign_request(request), false, &|r| {
            // A certificate stored before (same key, same profile) is reused, not issued.
            let issued = r.first()?.as_ref().ok().filter(|o| !o.existing)?;
            let serial = issued.record.serial_hex();
            Some(AuditEntry::new(
                "identity.issue",
                actor.name(),
                json!({"profile": profile, "serial": serial, "certificate": path}),
            ))
        })?;
        let out = results.pop().unwrap_or_else(|| {
            Err(crate::issue::IssueError::new(
                crate::issue::ErrorCode::Internal,
                "no result",
            ))
        })?;
        let pem = crate::certs::der_to_pem(&out.record.der)?;
        crate::fsutil::write_atomic(path, pem.as_bytes(), 0o600)
            .map_err(|e| ServiceError::io(format!("writing {}", path.display()), e))?;
        tracing::info!(path = %path.display(), serial = %out.record.serial_hex(), "issued a service certificate");
        Ok(out.record.der)
    }

    /// The API server's identity: its key (made in the online token the first time) and its
    /// certificate from the Access CA naming `dns` and `ips` (`<home>/ca/api-server.pem`).
    pub fn server_identity(
        &self,
        actor: &Actor,
        dns: Vec<String>,
        ips: Vec<std::net::IpAddr>,
    ) -> Result<ServerIdentity, ServiceError> {
        if !self.has_ca(CaKind::Access) {
            return Err(ServiceError::invalid(
                "no-ca",
                "there is no Access CA yet: run `meterpki ceremony issuing-ca --kind access`",
            ));
        }
        let spki = self.service_key(SERVER_KEY_LABEL)?;
        let leaf = self.service_certificate(
            actor,
            &self.home.ca_dir().join("api-server.pem"),
            &spki,
            (CaKind::Access, "api-server"),
            Subject::Tls {
                common_name: "meterpki API".into(),
                unit: None,
                dns,
                ips,
            },
        )?;
        let der = |c: x509_cert::Certificate| {
            c.to_der()
                .map_err(|e| ServiceError::Internal(e.to_string()))
        };
        // The intermediate is the Access CA generation that issued the leaf (a service
        // certificate issued before a renewal stays in use until it is renewed).
        let leaf_cert = x509_cert::Certificate::from_der(&leaf)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        let access = self.issuing_generation_cert(CaKind::Access, &leaf_cert)?;
        Ok(ServerIdentity {
            signer: self.online_signer(SERVER_KEY_LABEL)?,
            chain: vec![leaf, der(access)?],
            root: der(self.ca_cert(CaKind::Root)?)?,
        })
    }

    /// The signer of trust-anchor updates: its key made in the online token and its certificate
    /// issued by the Organisation CA the first time it is needed
    /// (`<home>/ca/trust-update-signer.pem`), renewed when the key changed or fewer than 30
    /// days are left.
    pub fn update_signer(&self, actor: &Actor) -> Result<UpdateSigner, ServiceError> {
        if !self.has_ca(CaKind::Organisation) {
            return Err(ServiceError::invalid(
                "no-ca",
                format!(
                    "no Organisation CA ({} missing): run `meterpki ceremony issuing-ca --kind organisation` first",
                    self.home.ca_cert(CaKind::Organisation).display()
                ),
            ));
        }
        let spki = self.service_key(UPDATE_KEY_LABEL)?;
        let der = self.service_certificate(
            actor,
            &self.home.ca_dir().join("trust-update-signer.pem"),
            &spki,
            (CaKind::Organisation, UPDATE_PROFILE),
            Subject::Tls {
                common_name: "meterpki trust-update signer".into(),
                unit: None,
                dns: Vec::new(),
                ips: Vec::new(),
            },
        )?;
        let cert = x509_cert::Certificate::from_der(&der)
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
        // The chain meters need: the Organisation CA generation that issued the signer's
        // certificate, and after a root rollover the new root certified by the old one
        // (NewWithOld), for meters that still hold the old root.
        let mut chain = vec![self.issuing_generation_cert(CaKind::Organisation, &cert)?];
        let link = self.home.ca_links_dir().join("new-with-old.pem");
        if let Ok(pem) = std::fs::read_to_string(&link) {
            chain.push(
                certificate_from_pem(&pem).map_err(|e| {
                    ServiceError::Internal(format!("reading {}: {e}", link.display()))
                })?,
            );
        }
        let signer = self.online_signer(UPDATE_KEY_LABEL)?;
        UpdateSigner::new(signer, cert, chain)
            .map_err(|e| ServiceError::Internal(format!("the trust-update signer: {e}")))
    }
}
