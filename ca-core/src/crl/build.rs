//! One X.509 v2 CRL (RFC 5280 §5): built, signed in the HSM and verified before it is returned.
//!
//! A CRL is written as a stream, so that a full CRL of millions of entries never sits in memory:
//! the entries are read from the store a page at a time, encoded and spooled (in memory up to
//! [`SPILL_BYTES`], then to an unnamed temporary file) while they are counted; with the length
//! known, the TBSCertList's header is encoded, the whole TBS hashed from its pieces and the
//! spool, the digest signed in the HSM and the signature verified; then the CertificateList
//! is written from the same pieces. Memory is bounded by a page and the spool's buffer, not by
//! the CRL. The fields around the entries are encoded by `x509-cert`; a test checks that the
//! pieces put together are byte for byte what `x509-cert` encodes for the whole CRL.

use std::io::{Read, Seek, Write};
use std::path::Path;
use std::time::{Duration, UNIX_EPOCH};

use der::asn1::{ContextSpecific, GeneralizedTime, Ia5String, OctetString, Uint};
use der::{Encode, TagMode, TagNumber};
use x509_cert::crl::RevokedCert;
use x509_cert::ext::pkix::crl::dp::IssuingDistributionPoint;
use x509_cert::ext::pkix::crl::{CrlNumber, CrlReason};
use x509_cert::ext::pkix::name::{DistributionPointName, GeneralName};
use x509_cert::ext::pkix::AuthorityKeyIdentifier;
use x509_cert::ext::Extension;
use x509_cert::serial_number::SerialNumber;
use x509_cert::Version;

use super::{CrlError, CrlScope};
use crate::certs::x509_time;
use crate::issue::{CrlSettings, IssuerCtx};
use crate::model::{Reason, Revocation};

fn ext(
    oid: der::asn1::ObjectIdentifier,
    critical: bool,
    value: &impl Encode,
) -> Result<Extension, der::Error> {
    Ok(Extension {
        extn_id: oid,
        critical,
        extn_value: OctetString::new(value.to_der()?)?,
    })
}

fn time(secs: i64) -> Result<x509_cert::time::Time, CrlError> {
    x509_time(UNIX_EPOCH + Duration::from_secs(secs.max(0) as u64))
        .map_err(|e| CrlError::Verify(e.to_string()))
}

/// Entries spooled in memory up to this many bytes (a shard of ~60,000 entries), then in a
/// temporary file.
pub(crate) const SPILL_BYTES: usize = 4 << 20;

/// Revoked certificates, a page at a time: `Ok(None)` after the last page.
pub(crate) type Pages<'a> =
    dyn FnMut() -> Result<Option<Vec<(Vec<u8>, Revocation)>>, CrlError> + 'a;

/// What [`write_crl`] wrote.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Written {
    /// Revoked certificates listed.
    pub(crate) entries: usize,
    /// The CRL's size in bytes.
    pub(crate) bytes: u64,
}

/// One revoked certificate as the CRL lists it.
fn revoked_cert(serial: &[u8], rev: &Revocation) -> Result<RevokedCert, CrlError> {
    let mut exts = Vec::new();
    // reasonCode unspecified SHOULD be absent (RFC 5280 §5.3.1).
    if rev.reason != Reason::Unspecified {
        let reason = match rev.reason {
            Reason::Unspecified => CrlReason::Unspecified,
            Reason::KeyCompromise => CrlReason::KeyCompromise,
            Reason::CaCompromise => CrlReason::CaCompromise,
            Reason::AffiliationChanged => CrlReason::AffiliationChanged,
            Reason::Superseded => CrlReason::Superseded,
            Reason::CessationOfOperation => CrlReason::CessationOfOperation,
            Reason::PrivilegeWithdrawn => CrlReason::PrivilegeWithdrawn,
            Reason::AaCompromise => CrlReason::AaCompromise,
        };
        exts.push(ext(
            const_oid::db::rfc5280::ID_CE_CRL_REASONS,
            false,
            &reason,
        )?);
    }
    if let Some(inv) = rev.invalidity_date {
        // invalidityDate is a GeneralizedTime (RFC 5280 §5.3.2).
        let t = GeneralizedTime::from_unix_duration(Duration::from_secs(inv.max(0) as u64))?;
        exts.push(ext(
            const_oid::db::rfc5280::ID_CE_INVALIDITY_DATE,
            false,
            &t,
        )?);
    }
    Ok(RevokedCert {
        serial_number: SerialNumber::new(serial)?,
        revocation_date: time(rev.revoked_at)?,
        crl_entry_extensions: (!exts.is_empty()).then_some(exts),
    })
}

/// The crlExtensions: authorityKeyIdentifier, cRLNumber and, for a shard, its critical
/// issuingDistributionPoint.
fn crl_extensions(
    issuer: &IssuerCtx,
    settings: &CrlSettings,
    scope: CrlScope,
    number: u64,
) -> Result<Vec<Extension>, CrlError> {
    let mut crl_exts = vec![
        ext(
            const_oid::db::rfc5280::ID_CE_AUTHORITY_KEY_IDENTIFIER,
            false,
            &AuthorityKeyIdentifier {
                key_identifier: Some(OctetString::new(issuer.key_id.clone())?),
                authority_cert_issuer: None,
                authority_cert_serial_number: None,
            },
        )?,
        ext(
            const_oid::db::rfc5280::ID_CE_CRL_NUMBER,
            false,
            &CrlNumber(Uint::new(&number.to_be_bytes())?),
        )?,
    ];
    if let CrlScope::Shard(shard) = scope {
        let url = settings
            .url(&issuer.id().name(), shard)
            .ok_or(CrlError::NoBaseUrl)?;
        let idp = IssuingDistributionPoint {
            distribution_point: Some(DistributionPointName::FullName(vec![
                GeneralName::UniformResourceIdentifier(Ia5String::new(&url)?),
            ])),
            only_contains_user_certs: false,
            only_contains_ca_certs: false,
            only_some_reasons: None,
            indirect_crl: false,
            only_contains_attribute_certs: false,
        };
        // Critical, so a relying party that cannot read it does not treat a shard as complete.
        crl_exts.push(ext(
            const_oid::db::rfc5280::ID_CE_ISSUING_DISTRIBUTION_POINT,
            true,
            &idp,
        )?);
    }
    Ok(crl_exts)
}

/// A DER tag and definite length. Written here because `der::Length` stops at 256 MiB, which a
/// full CRL of several million entries passes (X.690 §8.1.3 has no such limit).
fn header(tag: u8, len: u64) -> Vec<u8> {
    let mut out = vec![tag];
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (8 - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    out
}

/// The encoded entries: in memory while small, then in an unnamed temporary file.
struct Spool<'a> {
    dir: &'a Path,
    memory: Vec<u8>,
    file: Option<std::io::BufWriter<std::fs::File>>,
    len: u64,
}

impl Spool<'_> {
    fn write(&mut self, bytes: &[u8]) -> Result<(), CrlError> {
        self.len += bytes.len() as u64;
        if self.file.is_none() && self.memory.len() + bytes.len() > SPILL_BYTES {
            let mut f =
                std::io::BufWriter::new(tempfile::tempfile_in(self.dir).map_err(|e| self.io(e))?);
            f.write_all(&self.memory).map_err(|e| self.io(e))?;
            self.memory = Vec::new();
            self.file = Some(f);
        }
        match &mut self.file {
            Some(f) => f.write_all(bytes).map_err(|source| CrlError::Io {
                path: self.dir.to_path_buf(),
                source,
            }),
            None => {
                self.memory.extend_from_slice(bytes);
                Ok(())
            }
        }
    }

    fn io(&self, source: std::io::Error) -> CrlError {
        CrlError::Io {
            path: self.dir.to_path_buf(),
            source,
        }
    }

    /// Hands every spooled byte, in order, to `f` (again from the start at each call).
    fn replay(&mut self, f: &mut dyn FnMut(&[u8]) -> Result<(), CrlError>) -> Result<(), CrlError> {
        let dir = self.dir;
        let io = |source| CrlError::Io {
            path: dir.to_path_buf(),
            source,
        };
        let Some(w) = &mut self.file else {
            return f(&self.memory);
        };
        w.flush().map_err(io)?;
        let file = w.get_mut();
        file.rewind().map_err(io)?;
        let mut buf = vec![0u8; 1 << 16];
        let mut left = self.len;
        while left > 0 {
            let n = file.read(&mut buf).map_err(io)?;
            if n == 0 {
                return Err(io(std::io::Error::new(
                    std::io::ErrorKind::UnexpectedEof,
                    "the CRL's spool file is shorter than what was written to it",
                )));
            }
            let n = n.min(left as usize);
            f(&buf[..n])?;
            left -= n as u64;
        }
        file.seek(std::io::SeekFrom::End(0)).map_err(io)?;
        Ok(())
    }
}

/// Builds, signs and verifies a CRL of the entries `pages` yields, and writes its DER to `out`
/// (`out_path` names it in errors), spooling large entry lists in `spool_dir`. Nothing reaches
/// `out` before the signature verifies with the issuer's certificate.
#[allow(clippy::too_many_arguments)]
pub(crate) fn write_crl(
    issuer: &IssuerCtx,
    settings: &CrlSettings,
    scope: CrlScope,
    number: u64,
    now: i64,
    pages: &mut Pages<'_>,
    spool_dir: &Path,
    out_path: &Path,
    out: &mut dyn Write,
) -> Result<Written, CrlError> {
    let this_update = time(now)?;
    let next_update = time(now + settings.lifetime_secs(issuer.kind))?;
    let mut spool = Spool {
        dir: spool_dir,
        memory: Vec::new(),
        file: None,
        len: 0,
    };
    let mut entries = 0usize;
    let mut buf = Vec::new();
    while let Some(page) = pages()? {
        for (serial, rev) in &page {
            buf.clear();
            revoked_cert(serial, rev)?.encode_to_vec(&mut buf)?;
            spool.write(&buf)?;
            entries += 1;
        }
    }
    // TBSCertList (RFC 5280 §5.1): version, signature, issuer, thisUpdate, nextUpdate, then the
    // entries (absent when there are none, RFC 5280 §5.1.2.6), then [0] crlExtensions.
    let mut prefix = Vec::new();
    Version::V2.encode_to_vec(&mut prefix)?;
    issuer
        .algorithm
        .signature_algorithm()
        .encode_to_vec(&mut prefix)?;
    issuer.subject.encode_to_vec(&mut prefix)?;
    this_update.encode_to_vec(&mut prefix)?;
    next_update.encode_to_vec(&mut prefix)?;
    let list_header = if entries > 0 {
        header(0x30, spool.len)
    } else {
        Vec::new()
    };
    let suffix = ContextSpecific {
        tag_number: TagNumber::N0,
        tag_mode: TagMode::Explicit,
        value: crl_extensions(issuer, settings, scope, number)?,
    }
    .to_der()?;
    let tbs_len = (prefix.len() + list_header.len() + suffix.len()) as u64 + spool.len;
    let tbs_header = header(0x30, tbs_len);

    let mut hasher = issuer.algorithm.hasher();
    for piece in [&tbs_header, &prefix, &list_header] {
        hasher.update(piece);
    }
    spool.replay(&mut |chunk| {
        hasher.update(chunk);
        Ok(())
    })?;
    hasher.update(&suffix);
    let digest = hasher.finalize();
    let signature = issuer.signer.sign_digest(&digest)?;
    crate::signer::verify_digest(
        &issuer.certificate().tbs_certificate.subject_public_key_info,
        &digest,
        &signature,
    )
    .map_err(|e| CrlError::Verify(e.to_string()))?;

    // CertificateList: the TBS, signatureAlgorithm, signatureValue (a BIT STRING, no unused bits).
    let mut tail = issuer.signature_algorithm_der.clone();
    tail.extend(header(0x03, signature.len() as u64 + 1));
    tail.push(0);
    tail.extend_from_slice(&signature);
    let total = tbs_header.len() as u64 + tbs_len + tail.len() as u64;
    let outer = header(0x30, total);
    let io = |source| CrlError::Io {
        path: out_path.to_path_buf(),
        source,
    };
    for piece in [&outer, &tbs_header, &prefix, &list_header] {
        out.write_all(piece).map_err(io)?;
    }
    spool.replay(&mut |chunk| out.write_all(chunk).map_err(io))?;
    out.write_all(&suffix).map_err(io)?;
    out.write_all(&tail).map_err(io)?;
    Ok(Written {
        entries,
        bytes: outer.len() as u64 + total,
    })
}

/// Builds and signs a CRL of `entries` in memory (see [`write_crl`] for a CRL of any size);
/// the signature is verified before it is returned.
pub fn build_crl(
    issuer: &IssuerCtx,
    settings: &CrlSettings,
    scope: CrlScope,
    number: u64,
    entries: &[(Vec<u8>, Revocation)],
    now: i64,
) -> Result<Vec<u8>, CrlError> {
    let mut out = Vec::new();
    let mut page = Some(entries.to_vec());
    write_crl(
        issuer,
        settings,
        scope,
        number,
        now,
        &mut || Ok(page.take()),
        &std::env::temp_dir(),
        Path::new("the CRL in memory"),
        &mut out,
    )?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::header;
    use der::Encode;

    /// The hand-written header is DER's (short form below 128, else the fewest length octets),
    /// as `der` encodes it where `der` can, and goes on past its 256 MiB limit.
    #[test]
    fn headers_are_der_at_every_length() {
        for len in [
            0u32,
            1,
            127,
            128,
            255,
            256,
            65_535,
            65_536,
            42_000_288,
            0x0FFF_FFFF,
        ] {
            let mut want = vec![0x30];
            der::Length::try_from(len)
                .unwrap()
                .encode_to_vec(&mut want)
                .unwrap();
            assert_eq!(header(0x30, u64::from(len)), want, "{len}");
        }
        assert_eq!(
            header(0x30, 400_000_000),
            vec![0x30, 0x84, 0x17, 0xd7, 0x84, 0x00]
        );
        assert_eq!(header(0x03, 1 << 40), vec![0x03, 0x86, 0x01, 0, 0, 0, 0, 0]);
    }
}
