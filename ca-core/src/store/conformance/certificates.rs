//! Rules for certificates and revocations: a serial is stored once, one active certificate per
//! device and usage (even under concurrent writers), replacement revokes the old certificate in
//! the same write, all-or-nothing commits, and revocations are final and listed by shard.

use std::path::Path;

use crate::model::Reason;
use crate::store::{Commit, Op, Revoked, RevokedPage, Txn};
use crate::CaKind;

use super::helpers::{
    apply, cert, commit, refused, revocation, revoke, supplier, together, DEV, DEV2,
};
use super::Harness;

/// Stored certificates are read back by serial, by subject (oldest first) and as the active one.
pub fn certificates_round_trip_and_are_indexed(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    assert_eq!(s.cert_count().unwrap(), 0);
    assert!(!s.subject_known(DEV).unwrap());
    let a = cert(1, DEV, "meter-signing", 1);
    let b = cert(2, DEV, "meter-key-agreement", 2);
    assert_eq!(
        commit(
            s.as_ref(),
            vec![(a.clone(), false), (b.clone(), false)],
            false
        ),
        vec![Commit::Stored, Commit::Stored]
    );
    assert_eq!(s.cert(&a.serial).unwrap().as_ref(), Some(&a));
    assert!(s.serial_taken(&b.serial).unwrap());
    assert!(!s.serial_taken(&[9, 9]).unwrap());
    assert_eq!(
        s.active_cert(DEV, "meter-signing").unwrap(),
        Some(a.clone())
    );
    assert_eq!(s.certs_of_subject(DEV).unwrap(), vec![a, b]);
    assert!(s.subject_known(DEV).unwrap());
    assert_eq!(s.cert_count().unwrap(), 2);
}

/// A serial ever used is refused, within one commit or across commits, and nothing is stored.
pub fn a_serial_is_never_stored_twice(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let a = cert(1, DEV, "meter-signing", 1);
    commit(s.as_ref(), vec![(a.clone(), false)], false);
    let mut again = cert(1, DEV2, "meter-signing", 1);
    again.serial = a.serial.clone();
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::CommitIssued {
            items: vec![(again, false)],
            all_or_nothing: false,
        }),
    ));
    let x = cert(7, "00-DB-12-34-56-78-90-07", "meter-signing", 7);
    let mut y = cert(8, "00-DB-12-34-56-78-90-08", "meter-signing", 8);
    y.serial = x.serial.clone();
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::CommitIssued {
            items: vec![(x, false), (y, false)],
            all_or_nothing: false,
        }),
    ));
    assert_eq!(s.cert_count().unwrap(), 1);
    assert!(!s.subject_known(DEV2).unwrap());
    assert!(!s.subject_known("00-DB-12-34-56-78-90-07").unwrap());
}

/// Concurrent writers for one device and usage: one certificate stored, the others told who
/// won (another key: a conflict; the same key: the existing certificate).
pub fn one_active_certificate_per_device_and_usage_under_concurrency(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let n = 8;
    let outcomes = together(n, |i| {
        commit(
            s.as_ref(),
            vec![(cert(i as u8, DEV, "meter-signing", 10 + i as u8), false)],
            false,
        )
        .remove(0)
    });
    let stored = outcomes.iter().filter(|c| **c == Commit::Stored).count();
    let conflicts = outcomes
        .iter()
        .filter(|c| matches!(c, Commit::Conflict(_)))
        .count();
    assert_eq!((stored, conflicts), (1, n - 1), "{outcomes:?}");
    assert_eq!(s.cert_count().unwrap(), 1);
    let winner = s.active_cert(DEV, "meter-signing").unwrap().unwrap();
    for c in &outcomes {
        if let Commit::Conflict(active) = c {
            assert_eq!(**active, winner);
        }
    }
    // The same key from every writer: one stored, the rest answered with it.
    let outcomes = together(n, |i| {
        commit(
            s.as_ref(),
            vec![(cert(100 + i as u8, DEV2, "meter-signing", 99), false)],
            false,
        )
        .remove(0)
    });
    let stored = outcomes.iter().filter(|c| **c == Commit::Stored).count();
    let existing = outcomes
        .iter()
        .filter(|c| matches!(c, Commit::Existing(_)))
        .count();
    assert_eq!((stored, existing), (1, n - 1), "{outcomes:?}");
    assert_eq!(s.cert_count().unwrap(), 2);
    assert_eq!(s.certs_of_subject(DEV2).unwrap().len(), 1);
}

/// `replace` makes the new certificate active and revokes the old one as superseded, at once.
pub fn replace_supersedes_and_revokes_the_old_certificate(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let old = cert(1, DEV, "meter-signing", 1);
    let new = cert(2, DEV, "meter-signing", 2);
    commit(s.as_ref(), vec![(old.clone(), false)], false);
    assert!(matches!(
        commit(s.as_ref(), vec![(new.clone(), false)], false)[0],
        Commit::Conflict(_)
    ));
    assert_eq!(
        commit(s.as_ref(), vec![(new.clone(), true)], false),
        vec![Commit::Stored]
    );
    assert_eq!(
        s.active_cert(DEV, "meter-signing").unwrap(),
        Some(new.clone())
    );
    let old_now = s.cert(&old.serial).unwrap().unwrap();
    assert_eq!(old_now.replaced_by, Some(new.serial.clone()));
    let rev = s.revocation(&old.serial).unwrap().unwrap();
    assert_eq!(rev.reason, Reason::Superseded);
    assert_eq!(
        s.revoked_in_shard(crate::IssuerId::first(CaKind::Device), old.shard)
            .unwrap(),
        vec![(old.serial.clone(), rev)]
    );
}

/// With all-or-nothing, one refused item stores nothing of the transaction.
pub fn all_or_nothing_commits_store_nothing_when_one_item_is_refused(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    commit(
        s.as_ref(),
        vec![(cert(1, DEV, "meter-signing", 1), false)],
        false,
    );
    let a = apply(
        s.as_ref(),
        Txn::new()
            .with(Op::CommitIssued {
                items: vec![
                    (cert(2, DEV2, "meter-signing", 2), false),
                    (cert(3, DEV, "meter-signing", 3), false),
                ],
                all_or_nothing: true,
            })
            .with(Op::InsertSupplier(supplier("90-B3-D5-1F-30-00-00-0A"))),
    )
    .unwrap();
    assert!(!a.written);
    let c = a.committed(0).unwrap();
    assert!(!c.stored);
    assert_eq!(c.items[0], Commit::Stored, "would have been stored");
    assert!(matches!(c.items[1], Commit::Conflict(_)));
    assert_eq!(s.cert_count().unwrap(), 1);
    assert!(!s.subject_known(DEV2).unwrap());
    assert!(s.supplier("90-B3-D5-1F-30-00-00-0A").unwrap().is_none());
}

/// A revocation stands once made: revoking again reports the first; the certificate is no
/// longer active; each shard lists its own revocations.
pub fn revocation_is_final_and_listed_by_shard(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let a = cert(1, DEV, "meter-signing", 1);
    let b = cert(2, DEV2, "meter-signing", 2);
    commit(
        s.as_ref(),
        vec![(a.clone(), false), (b.clone(), false)],
        false,
    );
    let first = revocation(Reason::KeyCompromise, 10);
    let out = revoke(s.as_ref(), vec![a.serial.clone(), vec![0xEE]], first);
    assert!(matches!(&out[0], Revoked::Now(r) if r.serial == a.serial));
    assert_eq!(out[1], Revoked::Unknown(vec![0xEE]));
    let out = revoke(
        s.as_ref(),
        vec![a.serial.clone()],
        revocation(Reason::Superseded, 20),
    );
    assert!(matches!(&out[0], Revoked::Already(_, r) if *r == first));
    assert_eq!(s.revocation(&a.serial).unwrap(), Some(first));
    assert_eq!(s.revocation(&b.serial).unwrap(), None);
    assert_eq!(s.active_cert(DEV, "meter-signing").unwrap(), None);
    assert_eq!(
        s.revoked_in_shard(crate::IssuerId::first(CaKind::Device), a.shard)
            .unwrap(),
        vec![(a.serial.clone(), first)]
    );
    assert!(s
        .revoked_in_shard(crate::IssuerId::first(CaKind::Device), b.shard)
        .unwrap()
        .is_empty());
    assert_eq!(
        s.revoked_of_issuer(crate::IssuerId::first(CaKind::Organisation), None, 100)
            .unwrap(),
        RevokedPage::default()
    );
    assert_eq!(
        s.count_revoked_of_issuer(crate::IssuerId::first(CaKind::Organisation))
            .unwrap(),
        0
    );
    assert_eq!(
        s.revoked_of_issuer(crate::IssuerId::first(CaKind::Device), None, 100)
            .unwrap(),
        RevokedPage {
            entries: vec![(a.serial, first)],
            next: None
        }
    );
    assert_eq!(
        s.count_revoked_of_issuer(crate::IssuerId::first(CaKind::Device))
            .unwrap(),
        1
    );
}

/// An issuer's revocations read a page at a time (a full CRL's) are every revocation of that
/// issuer once, whatever the page size and however the shards fall, and no other issuer's.
pub fn revocations_are_read_a_page_at_a_time(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let mut items = Vec::new();
    let mut serials = Vec::new();
    for i in 1..=23u8 {
        let mut c = cert(i, &format!("{DEV}-{i}"), "meter-signing", i);
        c.shard = u32::from(i % 4) * 7;
        if i % 3 != 0 {
            serials.push(c.serial.clone());
        }
        items.push((c, false));
    }
    let mut other = cert(99, DEV2, "meter-signing", 99);
    other.issuer = CaKind::Organisation;
    items.push((other.clone(), false));
    commit(s.as_ref(), items, true);
    let rev = revocation(Reason::KeyCompromise, 1_700_000_100);
    revoke(s.as_ref(), serials.clone(), rev);
    revoke(
        s.as_ref(),
        vec![other.serial],
        revocation(Reason::Superseded, 1_700_000_100),
    );
    let mut expected: Vec<_> = serials.into_iter().map(|s| (s, rev)).collect();
    expected.sort_by(|a, b| a.0.cmp(&b.0));
    for size in [1, 2, 5, 15, 16, 100] {
        let mut seen = Vec::new();
        let mut after: Option<Vec<u8>> = None;
        loop {
            let page = s
                .revoked_of_issuer(
                    crate::IssuerId::first(CaKind::Device),
                    after.as_deref(),
                    size,
                )
                .unwrap();
            assert!(page.entries.len() <= size);
            seen.extend(page.entries);
            match page.next {
                Some(n) => after = Some(n),
                None => break,
            }
        }
        seen.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(seen, expected, "pages of {size}");
    }
    assert_eq!(
        s.count_revoked_of_issuer(crate::IssuerId::first(CaKind::Device))
            .unwrap(),
        expected.len() as u64
    );
    assert_eq!(
        s.count_revoked_of_issuer(crate::IssuerId::first(CaKind::Organisation))
            .unwrap(),
        1
    );
}

/// A key is bound to one subject and usage while that subject's active certificate for that
/// usage has it: another subject, or the same subject's other usage, is refused with that
/// certificate (also within one commit). Once the binding's certificate is revoked, another
/// subject may bind the key; once any certificate of the key is revoked for keyCompromise, no
/// one may, not even its subject.
pub fn a_key_is_bound_to_one_subject_and_usage(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let a = cert(1, DEV, "meter-signing", 1);
    assert_eq!(
        commit(s.as_ref(), vec![(a.clone(), false)], false),
        vec![Commit::Stored]
    );
    assert_eq!(s.cert_with_key(&a.key_hash).unwrap(), Some(a.clone()));
    assert_eq!(s.cert_with_key(&[9; 32]).unwrap(), None);
    for other in [
        cert(2, DEV2, "meter-signing", 1),
        cert(3, DEV, "meter-key-agreement", 1),
        cert(4, DEV2, "meter-key-agreement", 1),
    ] {
        assert_eq!(
            commit(s.as_ref(), vec![(other.clone(), false)], false),
            vec![Commit::KeyReused(Box::new(a.clone()))]
        );
        assert_eq!(s.cert(&other.serial).unwrap(), None);
    }
    // Revoked (a certificate made for the wrong device, say): the key is free again, and the
    // subject that binds it next holds it.
    revoke(
        s.as_ref(),
        vec![a.serial.clone()],
        revocation(Reason::Superseded, 1_700_000_100),
    );
    let b = cert(5, DEV2, "meter-signing", 1);
    assert_eq!(
        commit(s.as_ref(), vec![(b.clone(), false)], false),
        vec![Commit::Stored]
    );
    assert_eq!(s.cert_with_key(&b.key_hash).unwrap(), Some(b.clone()));
    assert_eq!(
        commit(
            s.as_ref(),
            vec![(cert(6, DEV, "meter-signing", 1), false)],
            false
        ),
        vec![Commit::KeyReused(Box::new(b.clone()))]
    );
    // Compromised: never again, for anyone.
    revoke(
        s.as_ref(),
        vec![b.serial.clone()],
        revocation(Reason::KeyCompromise, 1_700_000_200),
    );
    assert_eq!(s.compromised_key(&b.key_hash).unwrap(), Some(b.clone()));
    for again in [
        cert(7, DEV2, "meter-signing", 1),
        cert(8, DEV, "meter-signing", 1),
    ] {
        assert_eq!(
            commit(s.as_ref(), vec![(again, false)], false),
            vec![Commit::KeyCompromised(Box::new(b.clone()))]
        );
    }
    // Two subjects with one new key in one commit: the first binds it.
    let d7 = "00-DB-12-34-56-78-90-07";
    let d8 = "00-DB-12-34-56-78-90-08";
    let first = cert(9, d7, "meter-signing", 7);
    assert_eq!(
        commit(
            s.as_ref(),
            vec![
                (first.clone(), false),
                (cert(10, d8, "meter-signing", 7), false)
            ],
            false
        ),
        vec![Commit::Stored, Commit::KeyReused(Box::new(first))]
    );
    assert!(!s.subject_known(d8).unwrap());
}

/// A renewed CA's certificates keep their issuer's generation, and each generation's
/// revocations are its own: the CRLs of generation 1 never list generation 2's, and a
/// generation-1 record reads back as generation 1 after a reopen.
pub fn generations_keep_their_own_revocations(h: &dyn Harness, dir: &Path) {
    let (g1, g2) = (
        crate::IssuerId::first(CaKind::Device),
        crate::IssuerId::new(CaKind::Device, 2),
    );
    let s = h.open(dir);
    let a = cert(1, DEV, "meter-signing", 1);
    let mut b = cert(2, DEV2, "meter-signing", 2);
    b.issuer_generation = 2;
    b.shard = a.shard;
    commit(
        s.as_ref(),
        vec![(a.clone(), false), (b.clone(), false)],
        false,
    );
    assert_eq!(s.cert(&b.serial).unwrap().unwrap().issuer_id(), g2);
    assert_eq!(s.cert(&a.serial).unwrap().unwrap().issuer_id(), g1);
    let r = revocation(Reason::KeyCompromise, 10);
    revoke(s.as_ref(), vec![b.serial.clone()], r);
    assert!(s.revoked_in_shard(g1, a.shard).unwrap().is_empty());
    assert_eq!(s.count_revoked_of_issuer(g1).unwrap(), 0);
    assert_eq!(
        s.revoked_in_shard(g2, b.shard).unwrap(),
        vec![(b.serial.clone(), r)]
    );
    assert_eq!(
        s.revoked_of_issuer(g2, None, 10).unwrap().entries,
        vec![(b.serial.clone(), r)]
    );
    revoke(s.as_ref(), vec![a.serial.clone()], r);
    assert_eq!(s.count_revoked_of_issuer(g1).unwrap(), 1);
    assert_eq!(s.count_revoked_of_issuer(g2).unwrap(), 1);
    drop(s);
    let s = h.open(dir);
    assert_eq!(s.cert(&b.serial).unwrap().unwrap(), b);
    assert_eq!(s.cert(&a.serial).unwrap().unwrap(), a);
}

/// The same key certified again by a newer generation of its CA (after a renewal) replaces the
/// earlier certificate without `replace`: the earlier one is superseded (revoked, its
/// `replaced_by` set) in the same write. The same key from the same or an older generation is
/// still the existing certificate.
pub fn a_newer_generation_recertifies_the_same_key(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let a = cert(1, DEV, "meter-signing", 1);
    commit(s.as_ref(), vec![(a.clone(), false)], false);
    let mut b = cert(2, DEV, "meter-signing", 1);
    b.issuer_generation = 2;
    assert_eq!(
        commit(s.as_ref(), vec![(b.clone(), false)], false),
        vec![Commit::Stored]
    );
    assert_eq!(
        s.active_cert(DEV, "meter-signing").unwrap(),
        Some(b.clone())
    );
    let old = s.cert(&a.serial).unwrap().unwrap();
    assert_eq!(old.replaced_by.as_deref(), Some(b.serial.as_slice()));
    let rev = s.revocation(&a.serial).unwrap().expect("superseded");
    assert_eq!(rev.reason, Reason::Superseded);
    // The same key again, from generation 2 or from generation 1: the existing certificate.
    let mut c = cert(3, DEV, "meter-signing", 1);
    c.issuer_generation = 2;
    let mut d = cert(4, DEV, "meter-signing", 1);
    d.issuer_generation = 1;
    assert_eq!(
        commit(s.as_ref(), vec![(c, false), (d, false)], false),
        vec![
            Commit::Existing(Box::new(b.clone())),
            Commit::Existing(Box::new(b))
        ]
    );
    assert!(!s.serial_taken(&[0x40, 3, 1]).unwrap());
    // Another key without `replace` is still a conflict.
    let mut e = cert(5, DEV, "meter-signing", 5);
    e.issuer_generation = 2;
    assert!(matches!(
        commit(s.as_ref(), vec![(e, false)], false)[0],
        Commit::Conflict(_)
    ));
}
