//! The sled store's key layout and value encodings, including the records of schema 1.
//!
//! One tree (`pki`) holds everything under one-byte key prefixes, so that any transaction is one
//! atomic `apply_batch` (sled's multi-tree transactions cost several times more):
//!
//! ```text
//! c<serial>                          CertRecord      (0xC2 + bincode; schema 1: bincode, no tag)
//! a<subject>\0<profile>              serial of the active certificate
//! s<subject>\0<issued_at BE><serial> ()              certificates of a subject, oldest first
//! r<serial>                          Revocation (bincode)
//! v<issuer>\0<shard BE><serial>      Revocation      revocations by CRL shard
//! u<name>                            Account (JSON)
//! k<client certificate serial>       account name
//! b<account>\0<request_id>           BatchRecord (JSON)
//! p<id>                              Supplier (JSON)
//! m<device>                          supplier serving the meter
//! g<supplier>\0<device>              ()              meters of a supplier
//! t<device>                          UpdateMark (bincode)
//! o<id>                              OpRecord (JSON)
//! y<SHA-256 of the SPKI>              serial of the certificate that bound the key (schema 3)
//! x<SHA-256 of the SPKI>              serial of a certificate of the key revoked for keyCompromise
//! n/certs                            certificate count (u64 BE)
//! M<name>                            counters and settings (u64 BE), the audit head, the schema
//! Mtext/<name>                       text settings (UTF-8)
//! ```

use const_oid::ObjectIdentifier;
use der::Decode;
use serde::de::DeserializeOwned;
use serde::Serialize;

use crate::model::Revocation;
use crate::store::{AuditHead, CertRecord, StoreError};
use crate::{CaKind, IssuerId};

pub(crate) const CERT: u8 = b'c';
pub(crate) const ACTIVE: u8 = b'a';
pub(crate) const BY_SUBJECT: u8 = b's';
pub(crate) const REVOKED: u8 = b'r';
pub(crate) const REVOKED_BY_SHARD: u8 = b'v';
pub(crate) const ACCOUNT: u8 = b'u';
pub(crate) const ACCOUNT_BY_CERT: u8 = b'k';
pub(crate) const BATCH: u8 = b'b';
pub(crate) const SUPPLIER: u8 = b'p';
pub(crate) const METER: u8 = b'm';
pub(crate) const METERS_OF: u8 = b'g';
pub(crate) const METER_UPDATE: u8 = b't';
pub(crate) const OPERATION: u8 = b'o';
pub(crate) const META: u8 = b'M';
pub(crate) const KEY_OF: u8 = b'y';
pub(crate) const COMPROMISED: u8 = b'x';
/// An audit record of a log kept in the store (a shared store's: one chain for every server),
/// by its sequence number (big-endian): the record's JSON line as the audit log file holds it.
pub(crate) const AUDIT_RECORD: u8 = b'L';

/// A published CRL in a shared store, by its file name (`device/3.crl`): its cRLNumber, the
/// SHA-256 of its DER, its length and how many parts hold it (see [`encode_crl_meta`]), read by
/// every server to tell whether its own copy is current.
pub(crate) const CRL_META: u8 = b'C';
/// A part of a published CRL's DER (at most a mebibyte, so that no value, and no write or read
/// of one, grows with the CRL): by its file name, a zero byte, the cRLNumber and the part's
/// index (both big-endian).
pub(crate) const CRL_DER: u8 = b'D';

/// The key of part `index` of version `number` of the published CRL `name`.
pub(crate) fn crl_part_key(name: &str, number: u64, index: u32) -> Vec<u8> {
    key(
        CRL_DER,
        &[
            name.as_bytes(),
            &[0],
            &number.to_be_bytes(),
            &index.to_be_bytes(),
        ],
    )
}

/// A published CRL's entry: cRLNumber (8 bytes), SHA-256 (32), length (8), parts (4).
pub(crate) fn encode_crl_meta(c: &crate::store::PublishedCrl) -> Vec<u8> {
    let mut v = c.number.to_be_bytes().to_vec();
    v.extend_from_slice(&c.sha256);
    v.extend_from_slice(&c.len.to_be_bytes());
    v.extend_from_slice(&c.parts.to_be_bytes());
    v
}

/// The entry the first PostgreSQL builds wrote: cRLNumber and SHA-256 of a DER kept whole
/// under `D<name>`.
pub(crate) const LEGACY_CRL_META_LEN: usize = 40;

/// The cRLNumber of a published CRL's entry, of either form.
pub(crate) fn crl_meta_number(key: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    if v.len() == LEGACY_CRL_META_LEN {
        return decode_u64(key, &v[..8]);
    }
    Ok(decode_crl_meta(key, v)?.number)
}

pub(crate) fn decode_crl_meta(
    key: &[u8],
    v: &[u8],
) -> Result<crate::store::PublishedCrl, StoreError> {
    if v.len() != 52 {
        return Err(StoreError::corrupt(
            printable(key),
            format!("a published CRL's entry is 52 bytes, not {}", v.len()),
        ));
    }
    let u64_at = |i: usize| u64::from_be_bytes(v[i..i + 8].try_into().unwrap_or_default());
    Ok(crate::store::PublishedCrl {
        number: u64_at(0),
        sha256: v[8..40].try_into().unwrap_or_default(),
        len: u64_at(40),
        parts: u32::from_be_bytes(v[48..52].try_into().unwrap_or_default()),
    })
}

/// The key of audit record `seq`.
pub(crate) fn audit_record_key(seq: u64) -> Vec<u8> {
    let mut k = vec![AUDIT_RECORD];
    k.extend_from_slice(&seq.to_be_bytes());
    k
}
// b'h' (every certificate by issuer and shard) was written by early versions and never read:
// the CRLs need only the revoked ones (REVOKED_BY_SHARD). Stores that have it keep it, unused.
pub(crate) const CERT_COUNT: &[u8] = b"n/certs";
/// The audit head's name among the meta keys.
pub(crate) const AUDIT_HEAD: &str = "audit.head";
/// The schema version's name among the meta keys.
pub(crate) const SCHEMA: &str = "schema";

/// Tag of a schema-2 certificate record. A schema-1 record starts with its serial's length as
/// a little-endian u64, and a serial is at most 20 octets, so it never starts with this byte.
const CERT_V2: u8 = 0xC2;
/// Tag of a certificate record with its issuer's generation (a renewed CA's).
const CERT_V3: u8 = 0xC3;

/// A certificate record of schema 2: a first-generation issuer's, without the generation.
#[derive(serde::Serialize, serde::Deserialize)]
struct CertRecordV2 {
    serial: Vec<u8>,
    issuer: CaKind,
    profile: String,
    subject_id: String,
    key_hash: [u8; 32],
    shard: u32,
    issued_at: i64,
    der: Vec<u8>,
    replaced_by: Option<Vec<u8>>,
    hw_type: Option<String>,
}

impl CertRecordV2 {
    fn of(r: &CertRecord) -> CertRecordV2 {
        CertRecordV2 {
            serial: r.serial.clone(),
            issuer: r.issuer,
            profile: r.profile.clone(),
            subject_id: r.subject_id.clone(),
            key_hash: r.key_hash,
            shard: r.shard,
            issued_at: r.issued_at,
            der: r.der.clone(),
            replaced_by: r.replaced_by.clone(),
            hw_type: r.hw_type.map(|o| o.to_string()),
        }
    }

    fn upgrade(self) -> Result<CertRecord, String> {
        let hw_type = self
            .hw_type
            .map(|t| ObjectIdentifier::new(&t).map_err(|e| format!("hwType {t:?}: {e}")))
            .transpose()?;
        Ok(CertRecord {
            serial: self.serial,
            issuer: self.issuer,
            profile: self.profile,
            subject_id: self.subject_id,
            key_hash: self.key_hash,
            shard: self.shard,
            issued_at: self.issued_at,
            der: self.der,
            replaced_by: self.replaced_by,
            hw_type,
            issuer_generation: 1,
        })
    }
}

/// A key: one prefix byte, then the parts.
pub(crate) fn key(prefix: u8, parts: &[&[u8]]) -> Vec<u8> {
    let mut k = vec![prefix];
    for p in parts {
        k.extend_from_slice(p);
    }
    k
}

pub(crate) fn cert_key(serial: &[u8]) -> Vec<u8> {
    key(CERT, &[serial])
}

pub(crate) fn key_of_key(key_hash: &[u8; 32]) -> Vec<u8> {
    key(KEY_OF, &[key_hash])
}

pub(crate) fn compromised_key(key_hash: &[u8; 32]) -> Vec<u8> {
    key(COMPROMISED, &[key_hash])
}

pub(crate) fn active_key(subject_id: &str, profile: &str) -> Vec<u8> {
    key(ACTIVE, &[subject_id.as_bytes(), &[0], profile.as_bytes()])
}

pub(crate) fn subject_prefix(subject_id: &str) -> Vec<u8> {
    key(BY_SUBJECT, &[subject_id.as_bytes(), &[0]])
}

pub(crate) fn subject_key(subject_id: &str, issued_at: i64, serial: &[u8]) -> Vec<u8> {
    key(
        BY_SUBJECT,
        &[
            subject_id.as_bytes(),
            &[0],
            &issued_at.to_be_bytes(),
            serial,
        ],
    )
}

pub(crate) fn revoked_key(serial: &[u8]) -> Vec<u8> {
    key(REVOKED, &[serial])
}

pub(crate) fn shard_prefix(issuer: IssuerId) -> Vec<u8> {
    key(REVOKED_BY_SHARD, &[issuer.name().as_bytes(), &[0]])
}

pub(crate) fn revoked_shard_key(issuer: IssuerId, shard: u32, serial: &[u8]) -> Vec<u8> {
    let mut k = shard_prefix(issuer);
    k.extend_from_slice(&shard.to_be_bytes());
    k.extend_from_slice(serial);
    k
}

pub(crate) fn meters_of_prefix(supplier: &str) -> Vec<u8> {
    key(METERS_OF, &[supplier.as_bytes(), &[0]])
}

pub(crate) fn meters_of_key(supplier: &str, device: &str) -> Vec<u8> {
    key(METERS_OF, &[supplier.as_bytes(), &[0], device.as_bytes()])
}

pub(crate) fn batch_key(account: &str, request_id: &str) -> Vec<u8> {
    key(BATCH, &[account.as_bytes(), &[0], request_id.as_bytes()])
}

pub(crate) fn meta_key(name: &str) -> Vec<u8> {
    key(META, &[name.as_bytes()])
}

/// The key of a text setting: among the meta keys, under `text/`.
pub(crate) fn text_key(name: &str) -> Vec<u8> {
    key(META, &[b"text/", name.as_bytes()])
}

/// A printable form of a key for error messages.
pub(crate) fn printable(key: &[u8]) -> String {
    String::from_utf8(key.to_vec()).unwrap_or_else(|_| hex::encode(key))
}

/// Certificates of a CA's first generation keep the schema-2 form (no generation), so that a
/// store without a renewed CA reads the same in every build; a later generation's are tagged
/// [`CERT_V3`] and carry it.
pub(crate) fn encode_cert(r: &CertRecord) -> Vec<u8> {
    if r.issuer_generation > 1 {
        let mut v = vec![CERT_V3];
        bincode::serialize_into(&mut v, r).expect("a CertRecord always serialises");
        return v;
    }
    let mut v = vec![CERT_V2];
    bincode::serialize_into(&mut v, &CertRecordV2::of(r)).expect("a CertRecord always serialises");
    v
}

pub(crate) fn decode_cert(key: &[u8], v: &[u8]) -> Result<CertRecord, StoreError> {
    match v.split_first() {
        Some((&CERT_V3, rest)) => {
            bincode::deserialize(rest).map_err(|e| StoreError::corrupt(printable(key), e))
        }
        Some((&CERT_V2, rest)) => bincode::deserialize::<CertRecordV2>(rest)
            .map_err(|e| StoreError::corrupt(printable(key), e))?
            .upgrade()
            .map_err(|e| StoreError::corrupt(printable(key), e)),
        _ => {
            let old: CertRecordV1 =
                bincode::deserialize(v).map_err(|e| StoreError::corrupt(printable(key), e))?;
            old.upgrade()
                .map_err(|e| StoreError::corrupt(printable(key), e))
        }
    }
}

pub(crate) fn encode_bin(v: &impl Serialize) -> Vec<u8> {
    bincode::serialize(v).expect("store values always serialise")
}

pub(crate) fn decode_bin<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    bincode::deserialize(v).map_err(|e| StoreError::corrupt(printable(key), e))
}

pub(crate) fn encode_json(v: &impl Serialize) -> Vec<u8> {
    serde_json::to_vec(v).expect("store values always serialise")
}

pub(crate) fn decode_json<T: DeserializeOwned>(key: &[u8], v: &[u8]) -> Result<T, StoreError> {
    serde_json::from_slice(v).map_err(|e| StoreError::corrupt(printable(key), e))
}

pub(crate) fn encode_rev(r: &Revocation) -> Vec<u8> {
    encode_bin(r)
}

pub(crate) fn decode_rev(key: &[u8], v: &[u8]) -> Result<Revocation, StoreError> {
    decode_bin(key, v)
}

pub(crate) fn encode_u64(v: u64) -> [u8; 8] {
    v.to_be_bytes()
}

pub(crate) fn decode_u64(key: &[u8], v: &[u8]) -> Result<u64, StoreError> {
    let b: [u8; 8] = v
        .try_into()
        .map_err(|_| StoreError::corrupt(printable(key), "not a u64"))?;
    Ok(u64::from_be_bytes(b))
}

/// The audit head: seq (u64 BE) then the hash's text.
pub(crate) fn encode_head(h: &AuditHead) -> Vec<u8> {
    let mut v = h.seq.to_be_bytes().to_vec();
    v.extend_from_slice(h.hash.as_bytes());
    v
}

pub(crate) fn decode_head(key: &[u8], v: &[u8]) -> Result<AuditHead, StoreError> {
    if v.len() < 8 {
        return Err(StoreError::corrupt(printable(key), "too short"));
    }
    let seq = decode_u64(key, &v[..8])?;
    let hash = String::from_utf8(v[8..].to_vec())
        .map_err(|_| StoreError::corrupt(printable(key), "hash"))?;
    Ok(AuditHead { seq, hash })
}

/// A certificate record as schema 1 stored it: the issuer as text and no hwType.
#[derive(serde::Deserialize)]
#[cfg_attr(test, derive(serde::Serialize))]
pub(crate) struct CertRecordV1 {
    pub(crate) serial: Vec<u8>,
    pub(crate) issuer: String,
    pub(crate) profile: String,
    pub(crate) subject_id: String,
    pub(crate) key_hash: [u8; 32],
    pub(crate) shard: u32,
    pub(crate) issued_at: i64,
    pub(crate) der: Vec<u8>,
    pub(crate) replaced_by: Option<Vec<u8>>,
}

impl CertRecordV1 {
    fn upgrade(self) -> Result<CertRecord, String> {
        let issuer = CaKind::from_name(&self.issuer)
            .ok_or_else(|| format!("unknown issuer {:?}", self.issuer))?;
        let hw_type = if issuer == CaKind::Device {
            hw_type_of(&self.der)?
        } else {
            None
        };
        Ok(CertRecord {
            serial: self.serial,
            issuer,
            profile: self.profile,
            subject_id: self.subject_id,
            key_hash: self.key_hash,
            shard: self.shard,
            issued_at: self.issued_at,
            der: self.der,
            replaced_by: self.replaced_by,
            hw_type,
            issuer_generation: 1,
        })
    }
}

/// The hwType of a meter certificate's hardwareModuleName, read once when a schema-1 record is
/// upgraded (schema-2 records carry it).
fn hw_type_of(der: &[u8]) -> Result<Option<ObjectIdentifier>, String> {
    use x509_cert::ext::pkix::name::GeneralName;
    use x509_cert::ext::pkix::SubjectAltName;
    let cert = x509_cert::Certificate::from_der(der).map_err(|e| e.to_string())?;
    for ext in cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
    {
        if ext.extn_id != const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes()).map_err(|e| e.to_string())?;
        for name in san.0 {
            if let GeneralName::OtherName(on) = name {
                if on.type_id == crate::issue::ID_ON_HARDWARE_MODULE_NAME {
                    let hmn: crate::issue::HardwareModuleName =
                        on.value.decode_as().map_err(|e| e.to_string())?;
                    return Ok(Some(hmn.hw_type));
                }
            }
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schema_one_records_read_and_schema_two_records_round_trip() {
        for len in [1usize, 2, 9, 20] {
            let v1 = bincode::serialize(&CertRecordV1 {
                serial: vec![0x42; len],
                issuer: "organisation".into(),
                profile: "supplier-signing".into(),
                subject_id: "00-DB-12-34-56-78-90-01".into(),
                key_hash: [7; 32],
                shard: 3,
                issued_at: 1_700_000_000,
                der: vec![0x30, 0x00],
                replaced_by: None,
            })
            .unwrap();
            assert_ne!(
                v1[0], CERT_V2,
                "a schema-1 record never starts with the tag"
            );
            let rec = decode_cert(b"c", &v1).unwrap();
            assert_eq!(rec.issuer, CaKind::Organisation);
            assert_eq!(rec.serial.len(), len);
            assert_eq!(rec.hw_type, None);
            let v2 = encode_cert(&rec);
            assert_eq!(decode_cert(b"c", &v2).unwrap(), rec);
        }
    }
}
