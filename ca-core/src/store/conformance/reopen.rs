//! The durability rule: everything written is there after the store is closed and reopened.

use std::path::Path;

use crate::model::Reason;
use crate::store::{Op, Txn};

use super::helpers::{
    account, apply, cert, commit, head, mv, revocation, revoke, supplier, Stage, DEV,
};
use super::Harness;

/// Everything written is there after the store is closed and opened again.
pub fn everything_survives_a_reopen(h: &dyn Harness, dir: &Path) {
    let c = cert(1, DEV, "meter-signing", 1);
    {
        let s = h.open(dir);
        commit(s.as_ref(), vec![(c.clone(), false)], false);
        revoke(
            s.as_ref(),
            vec![c.serial.clone()],
            revocation(Reason::KeyCompromise, 5),
        );
        apply(
            s.as_ref(),
            Txn::new()
                .with(Op::InsertAccount(account("line-1", 1)))
                .with(Op::InsertSupplier(supplier("90-B3-D5-1F-30-00-00-0A")))
                .with(Op::MoveMeters(vec![mv(
                    DEV,
                    None,
                    "90-B3-D5-1F-30-00-00-0A",
                    None,
                )])),
        )
        .unwrap();
        s.reserve("tamp.seq", 41).unwrap();
        let mut st = Stage {
            seen: Vec::new(),
            answer: Some(Ok(Some(head(3)))),
            rolled_back: false,
        };
        s.apply(Txn::new(), Some(&mut st)).unwrap();
    }
    let s = h.open(dir);
    assert_eq!(s.cert(&c.serial).unwrap(), Some(c.clone()));
    assert_eq!(s.cert_count().unwrap(), 1);
    assert!(s.revocation(&c.serial).unwrap().is_some());
    assert!(s.account("line-1").unwrap().is_some());
    assert!(s.supplier("90-B3-D5-1F-30-00-00-0A").unwrap().is_some());
    assert_eq!(
        s.meter_supplier(DEV).unwrap().as_deref(),
        Some("90-B3-D5-1F-30-00-00-0A")
    );
    assert_eq!(s.reserve("tamp.seq", 1).unwrap(), 42);
    assert_eq!(s.audit_head().unwrap(), Some(head(3)));
}

/// A store checks clean; its raw entries copied into another store of the backend make the same
/// store, entry for entry; an index entry that names a missing certificate is reported.
pub fn a_store_checks_clean_and_copies_entry_for_entry(h: &dyn Harness, dir: &Path) {
    let s = h.open(&dir.join("a"));
    let c = cert(1, DEV, "meter-signing", 1);
    let d = cert(2, super::helpers::DEV2, "meter-signing", 2);
    commit(s.as_ref(), vec![(c.clone(), false), (d, false)], false);
    revoke(
        s.as_ref(),
        vec![c.serial.clone()],
        revocation(Reason::KeyCompromise, 5),
    );
    apply(
        s.as_ref(),
        Txn::new().with(Op::InsertAccount(account("line-1", 1))),
    )
    .unwrap();
    let report = crate::store::check(s.as_ref()).unwrap();
    assert!(report.problems.is_empty(), "{report:?}");
    assert_eq!((report.certificates, report.revocations), (2, 1));
    // Copied a chunk at a time.
    let t = h.open(&dir.join("b"));
    let mut after: Option<Vec<u8>> = None;
    let mut all = Vec::new();
    loop {
        let chunk = s.raw_entries(after.as_deref(), 3).unwrap();
        let Some((last, _)) = chunk.last() else { break };
        after = Some(last.clone());
        all.extend(chunk.clone());
        t.raw_import(chunk).unwrap();
    }
    assert_eq!(t.raw_entries(None, 1000).unwrap(), all);
    assert_eq!(t.cert(&c.serial).unwrap(), Some(c.clone()));
    assert!(crate::store::check(t.as_ref()).unwrap().problems.is_empty());
    // A broken index: the active entry of another device naming a missing certificate.
    let mut broken = b"a00-DB-12-34-56-78-90-99\0meter-signing".to_vec();
    broken.truncate(broken.len());
    t.raw_import(vec![(broken, vec![0x40, 9, 9])]).unwrap();
    let report = crate::store::check(t.as_ref()).unwrap();
    assert_eq!(report.problems.len(), 1, "{report:?}");
    assert!(
        report.problems[0].contains("missing certificate"),
        "{report:?}"
    );
}
