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
