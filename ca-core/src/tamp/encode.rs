//! Building the DER `TAMPUpdate`: [`UpdateContent`] and [`encode_update`] for one meter,
//! [`PreparedUpdates`] for many meters that share the same changes, and the hand-written DER
//! TLV the envelope is concatenated from.

use der::asn1::{ObjectIdentifier, OctetString};
use der::Encode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::anchor::TrustAnchorChoice;
use x509_cert::Certificate;

use super::asn1::{
    HardwareModules, HardwareSerialEntry, SeqNumber, TampMsgRef, TampUpdate, TargetIdentifier,
    TerseOrVerbose, TrustAnchorUpdate,
};
use super::error::TampError;
use crate::model::Eui64;

/// What one update says: for the meter `device` of type `hw_type`, remove these trust anchors
/// and add these, as message number `seq`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UpdateContent {
    /// The meter's hardware type (`hwType`).
    pub hw_type: ObjectIdentifier,
    /// The meter.
    pub device: Eui64,
    /// The message's sequence number, at most 2^63 - 1.
    pub seq: u64,
    /// Trust anchors to remove, by public key.
    pub remove: Vec<SubjectPublicKeyInfoOwned>,
    /// Trust anchors to add.
    pub add: Vec<Certificate>,
}

/// The DER `TAMPUpdate` for `c`: version omitted (its default, v2), `terse [1] terse(1)`
/// stated (meters answer with a terse TAMPUpdateConfirm: a status per update, RFC 5934 §4.4,
/// which is all a head end needs and a meter sends cheaply), target
/// `hwModules [{ hwType, [single(EUI-64)] }]`, the removals first then the additions. Refuses an
/// update that changes nothing and a sequence number above 2^63 - 1.
pub fn encode_update(c: &UpdateContent) -> Result<Vec<u8>, TampError> {
    if c.remove.is_empty() && c.add.is_empty() {
        return Err(TampError::EmptyUpdates);
    }
    TampUpdate {
        version: None,
        terse: Some(TerseOrVerbose::Terse),
        msg_ref: msg_ref(c.hw_type, &c.device, c.seq)?,
        updates: anchor_updates(&c.remove, &c.add),
        tamp_seq_numbers: None,
    }
    .to_der_checked()
}

/// `updates`: the removals first, then the additions.
fn anchor_updates(
    remove: &[SubjectPublicKeyInfoOwned],
    add: &[Certificate],
) -> Vec<TrustAnchorUpdate> {
    remove
        .iter()
        .cloned()
        .map(TrustAnchorUpdate::Remove)
        .chain(
            add.iter()
                .cloned()
                .map(|cert| TrustAnchorUpdate::Add(TrustAnchorChoice::Certificate(cert))),
        )
        .collect()
}

/// `msgRef` for one meter: target `hwModules [{ hwType, [single(EUI-64)] }]`, number `seq`.
fn msg_ref(hw_type: ObjectIdentifier, device: &Eui64, seq: u64) -> Result<TampMsgRef, TampError> {
    Ok(TampMsgRef {
        target: TargetIdentifier::HwModules(vec![HardwareModules {
            hw_type,
            hw_serial_entries: vec![HardwareSerialEntry::Single(OctetString::new(
                device.bytes().to_vec(),
            )?)],
        }]),
        seq_num: SeqNumber::new(seq).ok_or(TampError::SeqOutOfRange { seq })?,
    })
}

/// The `updates` of many messages that differ only in target and sequence number (every meter
/// of a takeover drops the same keys and adds the same certificates): encoded once.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PreparedUpdates {
    /// DER `SEQUENCE SIZE (1..MAX) OF TrustAnchorUpdate`.
    der: Vec<u8>,
}

impl PreparedUpdates {
    /// Removals first, then additions, as [`encode_update`] orders them.
    pub fn new(
        remove: &[SubjectPublicKeyInfoOwned],
        add: &[Certificate],
    ) -> Result<PreparedUpdates, TampError> {
        if remove.is_empty() && add.is_empty() {
            return Err(TampError::EmptyUpdates);
        }
        Ok(PreparedUpdates {
            der: anchor_updates(remove, add).to_der()?,
        })
    }

    /// The DER `TAMPUpdate` for one meter: the same bytes [`encode_update`] makes (a test holds
    /// the two together), without re-encoding the certificates for every meter.
    pub fn encode_for(
        &self,
        hw_type: ObjectIdentifier,
        device: &Eui64,
        seq: u64,
    ) -> Result<Vec<u8>, TampError> {
        let msg_ref = msg_ref(hw_type, device, seq)?.to_der()?;
        // terse [1] IMPLICIT ENUMERATED terse(1).
        Ok(tlv(0x30, &[&[0x81, 0x01, 0x01], &msg_ref, &self.der]))
    }
}

/// One DER TLV: `tag`, the definite length of the concatenated `parts`, the parts. Written by
/// hand because the envelope of every update is the same but for three fields: concatenating
/// pre-encoded pieces saves re-encoding (and cloning) the certificates for each of a million
/// meters. Tests check the result against the `cms` crate's encoding and openssl.
pub(super) fn tlv(tag: u8, parts: &[&[u8]]) -> Vec<u8> {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    let mut out = Vec::with_capacity(len + 6);
    out.push(tag);
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes = len.to_be_bytes();
        let skip = bytes.iter().take_while(|b| **b == 0).count();
        out.push(0x80 | (bytes.len() - skip) as u8);
        out.extend_from_slice(&bytes[skip..]);
    }
    for p in parts {
        out.extend_from_slice(p);
    }
    out
}
