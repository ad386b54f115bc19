//! Rules for accounts, suppliers, operation journals, transactions and the audit stage: each is
//! created once, journals round-trip, a refused operation aborts its whole transaction, and the
//! audit record commits with the change (nothing is written without it).

use std::path::Path;

use crate::model::{OpKind, OpRecord, OpState, Reason, SupplierState};
use crate::store::{ApplyError, Commit, Op, OpOutcome, Txn};

use super::helpers::{
    account, apply, cert, commit, head, refused, revocation, supplier, Stage, DEV,
};
use super::Harness;

/// An account is created once, found by name and by its client certificate; a new certificate
/// moves the certificate index.
pub fn accounts_are_created_once_and_found_by_certificate(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let a = account("line-1", 1);
    apply(s.as_ref(), Txn::new().with(Op::InsertAccount(a.clone()))).unwrap();
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::InsertAccount(a.clone())),
    ));
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::UpdateAccount(account("nobody", 9))),
    ));
    // Another account cannot take the same client certificate.
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::InsertAccount(account("line-2", 1))),
    ));
    assert_eq!(s.account("line-1").unwrap(), Some(a.clone()));
    assert_eq!(s.account_by_cert(&a.cert_serial).unwrap(), Some(a.clone()));
    let mut b = a.clone();
    b.cert_serial = vec![0x50, 2];
    b.disabled = true;
    apply(s.as_ref(), Txn::new().with(Op::UpdateAccount(b.clone()))).unwrap();
    assert_eq!(s.account_by_cert(&a.cert_serial).unwrap(), None);
    assert_eq!(s.account_by_cert(&b.cert_serial).unwrap(), Some(b.clone()));
    apply(
        s.as_ref(),
        Txn::new().with(Op::InsertAccount(account("line-0", 3))),
    )
    .unwrap();
    let names: Vec<String> = s.accounts().unwrap().into_iter().map(|a| a.name).collect();
    assert_eq!(names, vec!["line-0", "line-1"]);
}

/// A supplier is registered once and updated in place.
pub fn suppliers_are_registered_once(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let a = supplier("90-B3-D5-1F-30-00-00-0A");
    apply(s.as_ref(), Txn::new().with(Op::InsertSupplier(a.clone()))).unwrap();
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::InsertSupplier(a.clone())),
    ));
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::UpdateSupplier(supplier("90-B3-D5-1F-30-00-00-0B"))),
    ));
    let mut ended = a.clone();
    ended.state = SupplierState::Acquired;
    ended.successor = Some("90-B3-D5-1F-30-00-00-0B".into());
    apply(
        s.as_ref(),
        Txn::new().with(Op::UpdateSupplier(ended.clone())),
    )
    .unwrap();
    assert_eq!(s.supplier(&a.id).unwrap(), Some(ended.clone()));
    assert_eq!(s.suppliers().unwrap(), vec![ended]);
}

/// A journal is read back as written.
pub fn operation_journals_round_trip(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    assert_eq!(s.operation("takeover:A").unwrap(), None);
    let mut op = OpRecord {
        id: "takeover:A".into(),
        kind: OpKind::Takeover,
        from: "A".into(),
        to: "B".into(),
        remove: vec!["0a".into()],
        add: vec!["0b".into(), "0c".into()],
        state: OpState::Running,
        started_at: 5,
        completed_at: None,
    };
    apply(s.as_ref(), Txn::new().with(Op::PutOperation(op.clone()))).unwrap();
    assert_eq!(s.operation("takeover:A").unwrap(), Some(op.clone()));
    op.state = OpState::Complete;
    op.completed_at = Some(6);
    apply(s.as_ref(), Txn::new().with(Op::PutOperation(op.clone()))).unwrap();
    assert_eq!(s.operation("takeover:A").unwrap(), Some(op));
}

/// One refused operation leaves every other operation of its transaction unwritten.
pub fn a_refused_operation_aborts_the_whole_transaction(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let c = cert(1, DEV, "meter-signing", 1);
    commit(s.as_ref(), vec![(c.clone(), false)], false);
    apply(
        s.as_ref(),
        Txn::new().with(Op::InsertAccount(account("line-1", 1))),
    )
    .unwrap();
    let mut disabled = account("line-1", 1);
    disabled.disabled = true;
    refused(apply(
        s.as_ref(),
        Txn::new()
            .with(Op::UpdateAccount(disabled))
            .with(Op::Revoke {
                serials: vec![c.serial.clone()],
                revocation: revocation(Reason::PrivilegeWithdrawn, 3),
            })
            .with(Op::InsertAccount(account("line-1", 2))),
    ));
    assert!(!s.account("line-1").unwrap().unwrap().disabled);
    assert_eq!(s.revocation(&c.serial).unwrap(), None);
}

/// The stage sees the outcome before anything is written; its head is stored with the change;
/// a stage that fails leaves nothing written.
pub fn the_audit_record_commits_with_the_change(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let c = cert(1, DEV, "meter-signing", 1);
    let txn = || {
        Txn::new().with(Op::CommitIssued {
            items: vec![(c.clone(), false)],
            all_or_nothing: false,
        })
    };
    let mut failing = Stage {
        seen: Vec::new(),
        answer: Some(Err(())),
        rolled_back: false,
    };
    match s.apply(txn(), Some(&mut failing)) {
        Err(ApplyError::Audit(_)) => {}
        other => panic!("expected the audit failure, got {other:?}"),
    }
    assert_eq!(failing.seen.len(), 1);
    assert_eq!(failing.seen[0].0, None);
    assert_eq!(
        failing.seen[0].1.outcomes,
        vec![OpOutcome::Committed(crate::store::Committed {
            stored: true,
            items: vec![Commit::Stored]
        })]
    );
    assert_eq!(
        s.cert_count().unwrap(),
        0,
        "nothing written without its record"
    );
    assert_eq!(s.audit_head().unwrap(), None);
    let mut ok = Stage {
        seen: Vec::new(),
        answer: Some(Ok(Some(head(1)))),
        rolled_back: false,
    };
    s.apply(txn(), Some(&mut ok)).unwrap();
    assert!(!ok.rolled_back);
    assert_eq!(s.cert_count().unwrap(), 1);
    assert_eq!(s.audit_head().unwrap(), Some(head(1)));
    // A record with no change of its own (a ceremony's transcript) moves the head alone.
    let mut alone = Stage {
        seen: Vec::new(),
        answer: Some(Ok(Some(head(2)))),
        rolled_back: false,
    };
    s.apply(Txn::new(), Some(&mut alone)).unwrap();
    assert_eq!(alone.seen[0].0, Some(head(1)));
    assert_eq!(s.audit_head().unwrap(), Some(head(2)));
    // Nothing to record: the head stays.
    let mut none = Stage {
        seen: Vec::new(),
        answer: Some(Ok(None)),
        rolled_back: false,
    };
    s.apply(
        Txn::new().with(Op::InsertSupplier(supplier("90-B3-D5-1F-30-00-00-0A"))),
        Some(&mut none),
    )
    .unwrap();
    assert_eq!(s.audit_head().unwrap(), Some(head(2)));
}

/// A published CRL is kept in parts: a version becomes the one read only once its parts are
/// stored, never replaces a newer one, and takes the parts of every other version with it.
pub fn published_crls_replace_only_older_versions(h: &dyn Harness, dir: &Path) {
    use crate::store::PublishedCrl;
    let s = h.open(dir);
    let name = "device/full.crl";
    assert_eq!(s.published_crl(name).unwrap(), None);
    let version = |number: u64, parts: u32| PublishedCrl {
        number,
        sha256: [number as u8; 32],
        len: u64::from(parts) * 3,
        parts,
    };
    for i in 0..3 {
        s.put_published_crl_part(name, 5, i, &[5, 5, i as u8])
            .unwrap();
    }
    // A crashed writer's parts of version 6, never made visible.
    s.put_published_crl_part(name, 6, 0, &[6]).unwrap();
    assert_eq!(s.published_crl(name).unwrap(), None);
    assert!(s.put_published_crl(name, &version(5, 3)).unwrap());
    assert_eq!(s.published_crl(name).unwrap(), Some(version(5, 3)));
    assert_eq!(
        s.published_crl_part(name, 5, 2).unwrap(),
        Some(vec![5, 5, 2])
    );
    assert_eq!(s.published_crl_part(name, 6, 0).unwrap(), None);
    // The same or an older number changes nothing.
    s.put_published_crl_part(name, 4, 0, &[4]).unwrap();
    assert!(!s.put_published_crl(name, &version(4, 1)).unwrap());
    assert!(!s.put_published_crl(name, &version(5, 1)).unwrap());
    assert_eq!(s.published_crl(name).unwrap(), Some(version(5, 3)));
    // A newer one replaces it: the replaced version keeps its parts (a server may be reading
    // them), every other version's go.
    s.put_published_crl_part(name, 9, 0, &[9]).unwrap();
    assert!(s.put_published_crl(name, &version(9, 1)).unwrap());
    assert_eq!(s.published_crl(name).unwrap(), Some(version(9, 1)));
    assert_eq!(s.published_crl_part(name, 4, 0).unwrap(), None);
    assert_eq!(
        s.published_crl_part(name, 5, 2).unwrap(),
        Some(vec![5, 5, 2])
    );
    // And they go with the next.
    s.put_published_crl_part(name, 11, 0, &[11]).unwrap();
    assert!(s.put_published_crl(name, &version(11, 1)).unwrap());
    for (n, i) in [(5, 0), (5, 2), (4, 0)] {
        assert_eq!(s.published_crl_part(name, n, i).unwrap(), None, "{n}/{i}");
    }
    assert_eq!(s.published_crl_part(name, 9, 0).unwrap(), Some(vec![9]));
    s.put_published_crl_part(name, 12, 0, &[12]).unwrap();
    assert!(s.put_published_crl(name, &version(12, 1)).unwrap());
    assert_eq!(s.published_crl_part(name, 9, 0).unwrap(), None);
    assert_eq!(s.published_crl_part(name, 11, 0).unwrap(), Some(vec![11]));
    // Another CRL's name is another CRL, even one that begins the same way.
    assert_eq!(s.published_crl("device/full.crl2").unwrap(), None);
    drop(s);
    let s = h.open(dir);
    assert_eq!(s.published_crl(name).unwrap(), Some(version(12, 1)));
}
