//! What strict decoding refuses (DEFAULT values encoded, empty lists, out-of-range sequence
//! numbers, non-DER), and what [`encode_update`] refuses.

use ca_core::tamp::{decode_update, encode_update, TampError, UpdateContent};

use crate::fixtures::{test_spki, DEVICE, HW_TYPE};
use crate::vectors::{seq, vector, ALL_MODULES_REMOVE, MSG_REF, UPDATES};

fn with_prefix(prefix: &[u8]) -> Vec<u8> {
    seq(&[prefix, &vector(MSG_REF), &vector(UPDATES)])
}

fn with_msg_ref(msg_ref: &str) -> Vec<u8> {
    seq(&[&vector(msg_ref), &vector(UPDATES)])
}

/// `der` is refused as a malformed TAMPUpdate, with `because` in the reason.
fn assert_malformed(der: &[u8], because: &str) {
    match decode_update(der) {
        Err(TampError::Malformed { what, reason }) => {
            assert_eq!(what, "TAMPUpdate", "{reason}");
            assert!(reason.contains(because), "{reason:?} lacks {because:?}");
        }
        other => panic!("expected Malformed ({because}), got {other:?}"),
    }
}

#[test]
fn decoding_refuses_non_der_and_out_of_range() {
    // version v2 explicitly encoded: a DEFAULT value, not DER.
    assert_malformed(
        &with_prefix(&[0x80, 0x01, 0x02]),
        "version v2 is the DEFAULT",
    );
    // version v1: DER, but unsupported.
    assert!(matches!(
        decode_update(&with_prefix(&[0x80, 0x01, 0x01])),
        Err(TampError::Unsupported { .. })
    ));
    // terse = verbose explicitly encoded.
    assert_malformed(&with_prefix(&[0x81, 0x01, 0x02]), "verbose is the DEFAULT");
    // terse constructed instead of primitive.
    assert_malformed(
        &with_prefix(&[0xa1, 0x03, 0x0a, 0x01, 0x01]),
        "not canonically encoded",
    );
    // Empty updates.
    assert_malformed(&seq(&[&vector(MSG_REF), &[0x30, 0x00]]), "updates is empty");
    // seqNum 2^63, one more than SeqNumber allows; -1; 1 as a non-minimal INTEGER.
    assert_malformed(
        &with_msg_ref("30 0d 83 00 02 09 00 80 00 00 00 00 00 00 00"),
        "malformed ASN.1 DER value for INTEGER",
    );
    assert_malformed(
        &with_msg_ref("30 05 83 00 02 01 ff"),
        "malformed ASN.1 DER value for INTEGER",
    );
    assert_malformed(
        &with_msg_ref("30 06 83 00 02 02 00 01"),
        "INTEGER not canonically encoded",
    );
    // seqNum 2^63 - 1 is fine.
    let max = with_msg_ref("30 0c 83 00 02 08 7f ff ff ff ff ff ff ff");
    assert_eq!(
        decode_update(&max).unwrap().msg_ref.seq_num.value(),
        i64::MAX as u64
    );
    // Empty hwModules list, empty hwSerialEntries.
    assert_malformed(&with_msg_ref("30 05 a1 00 02 01 01"), "hwModules is empty");
    assert_malformed(
        &with_msg_ref("30 0e a1 09 30 07 06 03 2a 03 04 30 00 02 01 01"),
        "hwSerialEntries is empty",
    );
    // Empty tampSeqNumbers [2].
    assert_malformed(
        &seq(&[&vector(MSG_REF), &vector(UPDATES), &[0xa2, 0x00]]),
        "tampSeqNumbers is empty",
    );

    let good = vector(ALL_MODULES_REMOVE);
    // Trailing data after the SEQUENCE.
    assert_malformed(&[&good[..], &[0x00][..]].concat(), "trailing data");
    // An unknown [1] after updates: the der crate skips it looking for [2]; we must not.
    assert_malformed(
        &seq(&[&vector(MSG_REF), &vector(UPDATES), &[0x81, 0x01, 0x01]]),
        "not DER: re-encoding",
    );
    // Non-minimal length.
    assert_malformed(
        &[&[0x30, 0x81, 0x15][..], &good[2..]].concat(),
        "incorrect length",
    );
    // Truncated.
    assert_malformed(&good[..good.len() - 1], "incomplete");
}

#[test]
fn encode_update_refuses_empty_and_out_of_range() {
    let mut c = UpdateContent {
        hw_type: HW_TYPE,
        device: DEVICE,
        seq: 1,
        remove: vec![],
        add: vec![],
    };
    assert!(matches!(encode_update(&c), Err(TampError::EmptyUpdates)));
    c.remove.push(test_spki("1.2.3.4"));
    c.seq = i64::MAX as u64 + 1;
    assert!(matches!(
        encode_update(&c),
        Err(TampError::SeqOutOfRange { seq }) if seq == 1 << 63
    ));
    c.seq = i64::MAX as u64;
    assert!(encode_update(&c).is_ok());
}
