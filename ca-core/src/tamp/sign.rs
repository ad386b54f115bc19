//! Signing: [`UpdateSigner`] puts a DER `TAMPUpdate` in a CMS `SignedData` (the signed
//! attributes, the signature from the [`Signer`], the envelope around them).

use std::sync::Arc;

use cms::cert::CertificateChoices;
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use der::asn1::{OctetString, SetOfVec};
use der::{Any, Decode, Encode, Reader};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;
use x509_cert::Certificate;

use super::asn1::decode_update;
use super::encode::tlv;
use super::error::TampError;
use super::{
    ECDSA_WITH_SHA256, ID_CONTENT_TYPE, ID_CT_TAMP_UPDATE, ID_MESSAGE_DIGEST, ID_SHA256,
    ID_SIGNED_DATA,
};
use crate::certs::check_key_matches;
use crate::signer::{verify_signature_fast, KeyAlgorithm, Signer};

/// Signs TAMP updates: the HSM key behind a [`Signer`], its certificate and the certificates
/// between it and the root (for example the Organisation CA's), which travel in the message.
#[derive(Debug)]
pub struct UpdateSigner {
    signer: Arc<dyn Signer>,
    cert: Certificate,
    sid: SignerIdentifier,
    certificates: CertificateSet,
    /// DER pieces of the envelope that are the same in every message.
    sid_der: Vec<u8>,
    certificates_der: Vec<u8>,
    sha256_der: Vec<u8>,
    signature_algorithm_der: Vec<u8>,
    content_type_der: Vec<u8>,
    signed_data_type_der: Vec<u8>,
    /// The DER signed attributes but for the message digest, their last 32 bytes: the same for
    /// every content (see [`UpdateSigner::attributes_for`]).
    signed_attrs_prefix: Vec<u8>,
}

impl UpdateSigner {
    /// Refuses a key that does not match `cert` and a key other than P-256 (meters verify
    /// ecdsa-with-SHA256). `chain` should not include the root; a copy of `cert` in it is
    /// dropped.
    pub fn new(
        signer: Arc<dyn Signer>,
        cert: Certificate,
        chain: Vec<Certificate>,
    ) -> Result<UpdateSigner, TampError> {
        check_key_matches(signer.as_ref(), &cert, "TAMP signer").map_err(TampError::KeyMismatch)?;
        if signer.algorithm() != KeyAlgorithm::EcP256 {
            return Err(TampError::Unsupported {
                what: format!(
                    "a {} TAMP signing key (meters verify ecdsa-with-SHA256 only)",
                    signer.algorithm().name()
                ),
            });
        }
        // RFC 5934 §2: the SignerInfo is version 3 and names the signer by its certificate's
        // subjectKeyIdentifier (the key a meter holds), not by issuer and serial.
        let ski = crate::certs::subject_key_identifier(&cert).ok_or_else(|| {
            TampError::Unsupported {
                what: "a TAMP signer certificate without a subjectKeyIdentifier (RFC 5934 §2 names the signer by it)".into(),
            }
        })?;
        let sid = SignerIdentifier::SubjectKeyIdentifier(ski);
        let mut all: Vec<Certificate> = vec![cert.clone()];
        for c in chain {
            if !all.contains(&c) {
                all.push(c);
            }
        }
        // A DER SET OF is sorted: the path order cannot be kept (verifiers build the path).
        let certificates = CertificateSet(SetOfVec::try_from(
            all.into_iter()
                .map(CertificateChoices::Certificate)
                .collect::<Vec<_>>(),
        )?);
        // [0] IMPLICIT CertificateSet: the SET OF's content under the context tag.
        let set_der = certificates.to_der()?;
        let set_content = der::SliceReader::new(&set_der)
            .and_then(|mut r| {
                let header = der::Header::decode(&mut r)?;
                r.read_slice(header.length)
            })?
            .to_vec();
        // contentType sorts before messageDigest in the DER SET OF (its SEQUENCE is shorter),
        // so the digest's 32 bytes end the encoding: checked here once, used for every update.
        let empty = signed_attributes(&[])?.to_der()?;
        let signed_attrs_prefix = empty[..empty.len() - 32].to_vec();
        let probe = b"meterpki";
        if signed_attributes(probe)?.to_der()?
            != [&signed_attrs_prefix[..], &crate::sha256(probe)[..]].concat()
        {
            return Err(TampError::Unsupported {
                what: "a signed-attributes encoding whose message digest is not its last 32 bytes"
                    .into(),
            });
        }
        Ok(UpdateSigner {
            signed_attrs_prefix,
            signer,
            cert,
            sid_der: sid.to_der()?,
            sid,
            certificates_der: tlv(0xA0, &[&set_content]),
            certificates,
            sha256_der: sha256_algorithm().to_der()?,
            signature_algorithm_der: AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            }
            .to_der()?,
            content_type_der: ID_CT_TAMP_UPDATE.to_der()?,
            signed_data_type_der: ID_SIGNED_DATA.to_der()?,
        })
    }

    /// The signer's certificate.
    pub fn signer_certificate(&self) -> &Certificate {
        &self.cert
    }

    /// The bytes the HSM signs for `content_der` (a DER `TAMPUpdate`, checked with
    /// [`decode_update`]): the DER SignedAttributes as a SET OF (tag `0x31`, RFC 5652 §5.4)
    /// holding contentType = id-ct-TAMP-update and messageDigest = SHA-256(content).
    pub fn to_be_signed(&self, content_der: &[u8]) -> Result<Vec<u8>, TampError> {
        decode_update(content_der)?;
        Ok(signed_attributes(content_der)?.to_der()?)
    }

    /// Verifies `signature` (a DER ECDSA-Sig-Value over `to_be_signed`) with the signer
    /// certificate's key and assembles the DER `ContentInfo`. Refuses `to_be_signed` bytes that
    /// are not [`UpdateSigner::to_be_signed`] of this content, and a signature that does not
    /// verify: nothing is returned that a meter would reject.
    pub fn assemble(
        &self,
        content_der: &[u8],
        to_be_signed: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, TampError> {
        if signed_attributes(content_der)?.to_der()? != to_be_signed {
            return Err(TampError::NotOurSignedAttributes);
        }
        verify_signature_fast(
            &self.cert.tbs_certificate.subject_public_key_info,
            to_be_signed,
            signature,
        )
        .map_err(|source| TampError::SignerSignature { source })?;
        self.envelope(content_der, to_be_signed, signature)
    }

    /// The `ContentInfo` around verified pieces, concatenated from DER (RFC 5652 §5.1-5.4):
    /// `SignedData { 3, {sha256}, { id-ct-TAMP-update, [0] content }, [0] certificates,
    /// { SignerInfo { 3, [0] subjectKeyIdentifier, sha256, [0] signedAttrs, ecdsa-with-SHA256,
    /// signature } } }`.
    fn envelope(
        &self,
        content_der: &[u8],
        to_be_signed: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, TampError> {
        // signedAttrs [0] IMPLICIT: the signed SET's content under 0xA0.
        let attrs_content = to_be_signed
            .get(header_len(to_be_signed)?..)
            .ok_or(TampError::NotOurSignedAttributes)?;
        let signer_info = tlv(
            0x30,
            &[
                &[0x02, 0x01, 0x03],
                &self.sid_der,
                &self.sha256_der,
                &tlv(0xA0, &[attrs_content]),
                &self.signature_algorithm_der,
                &tlv(0x04, &[signature]),
            ],
        );
        let encap = tlv(
            0x30,
            &[
                &self.content_type_der,
                &tlv(0xA0, &[&tlv(0x04, &[content_der])]),
            ],
        );
        let signed_data = tlv(
            0x30,
            &[
                &[0x02, 0x01, 0x03],
                &tlv(0x31, &[&self.sha256_der]),
                &encap,
                &self.certificates_der,
                &tlv(0x31, &[&signer_info]),
            ],
        );
        Ok(tlv(
            0x30,
            &[&self.signed_data_type_der, &tlv(0xA0, &[&signed_data])],
        ))
    }

    /// The same envelope built with the `cms` crate's types, for the test that holds the two
    /// encodings together.
    #[doc(hidden)]
    pub fn envelope_with_cms_types(
        &self,
        content_der: &[u8],
        signature: &[u8],
    ) -> Result<Vec<u8>, TampError> {
        let signer_info = SignerInfo {
            version: CmsVersion::V3,
            sid: self.sid.clone(),
            digest_alg: sha256_algorithm(),
            signed_attrs: Some(signed_attributes(content_der)?),
            signature_algorithm: AlgorithmIdentifierOwned {
                oid: ECDSA_WITH_SHA256,
                parameters: None,
            },
            signature: OctetString::new(signature)?,
            unsigned_attrs: None,
        };
        let signed_data = SignedData {
            version: CmsVersion::V3,
            digest_algorithms: SetOfVec::try_from(vec![sha256_algorithm()])?,
            encap_content_info: EncapsulatedContentInfo {
                econtent_type: ID_CT_TAMP_UPDATE,
                econtent: Some(Any::encode_from(&OctetString::new(content_der)?)?),
            },
            certificates: Some(self.certificates.clone()),
            crls: None,
            signer_infos: SignerInfos(SetOfVec::try_from(vec![signer_info])?),
        };
        Ok(ContentInfo {
            content_type: ID_SIGNED_DATA,
            content: Any::encode_from(&signed_data)?,
        }
        .to_der()?)
    }

    /// [`to_be_signed`](Self::to_be_signed), the signer, then [`assemble`](Self::assemble)
    /// (which verifies the signature): a faulty HSM signature is an error, never output.
    pub fn sign(&self, content_der: &[u8]) -> Result<Vec<u8>, TampError> {
        let tbs = self.to_be_signed(content_der)?;
        let signature = self.signer.sign(&tbs)?;
        self.assemble(content_der, &tbs, &signature)
    }

    /// [`sign`](Self::sign) for content this crate encoded itself
    /// ([`PreparedUpdates`](super::PreparedUpdates)): the content is not decoded again; the
    /// signature is verified all the same.
    pub fn sign_encoded(&self, content_der: &[u8]) -> Result<Vec<u8>, TampError> {
        let tbs = self.attributes_for(content_der);
        let signature = self.signer.sign(&tbs)?;
        verify_signature_fast(
            &self.cert.tbs_certificate.subject_public_key_info,
            &tbs,
            &signature,
        )
        .map_err(|source| TampError::SignerSignature { source })?;
        self.envelope(content_der, &tbs, &signature)
    }
}

impl UpdateSigner {
    /// The DER signed attributes of `content_der` (what [`signed_attributes`] encodes): the
    /// constant prefix and the content's SHA-256, without building and sorting the SET each
    /// time.
    fn attributes_for(&self, content_der: &[u8]) -> Vec<u8> {
        let mut tbs = Vec::with_capacity(self.signed_attrs_prefix.len() + 32);
        tbs.extend_from_slice(&self.signed_attrs_prefix);
        tbs.extend_from_slice(&crate::sha256(content_der));
        tbs
    }
}

/// The length of a DER TLV's header (tag and length octets).
fn header_len(der: &[u8]) -> Result<usize, TampError> {
    let mut r = der::SliceReader::new(der)?;
    let header = der::Header::decode(&mut r)?;
    Ok(header.encoded_len()?.try_into()?)
}

fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: ID_SHA256,
        parameters: None,
    }
}

fn signed_attributes(content_der: &[u8]) -> Result<SignedAttributes, TampError> {
    let content_type = Attribute {
        oid: ID_CONTENT_TYPE,
        values: SetOfVec::try_from(vec![Any::encode_from(&ID_CT_TAMP_UPDATE)?])?,
    };
    let digest = OctetString::new(crate::sha256(content_der).to_vec())?;
    let message_digest = Attribute {
        oid: ID_MESSAGE_DIGEST,
        values: SetOfVec::try_from(vec![Any::encode_from(&digest)?])?,
    };
    Ok(SetOfVec::try_from(vec![content_type, message_digest])?)
}
