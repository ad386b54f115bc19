//! Rules for batches, counters and meters: a request ID is bound to one body (even under
//! concurrent claims), counters never go back and reservations never overlap, and meter moves
//! are compare-and-swap.

use std::path::Path;

use crate::store::{
    BatchItem, BatchRecord, BatchState, Claim, MoveOutcome, Op, Store, Txn, UpdateMark,
};

use super::helpers::{apply, moves, mv, refused, together, DEV, DEV2};
use super::Harness;

fn claim(s: &dyn Store, body: &str) -> Claim {
    let a = apply(
        s,
        Txn::new().with(Op::ClaimBatch {
            account: "line-1".into(),
            request_id: "r-1".into(),
            body_sha256: body.into(),
        }),
    )
    .unwrap();
    a.claim(0).unwrap().clone()
}

/// Concurrent claims of one request ID with different bodies: exactly one wins; the same body
/// again finds it pending, then complete; a completion with another body is refused.
pub fn batch_claims_bind_a_request_id_to_one_body_under_concurrency(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let n = 8;
    let claims = together(n, |i| (i, claim(s.as_ref(), &format!("body-{i}"))));
    let winners: Vec<usize> = claims
        .iter()
        .filter(|(_, c)| *c == Claim::New)
        .map(|(i, _)| *i)
        .collect();
    assert_eq!(winners.len(), 1, "{claims:?}");
    assert!(claims
        .iter()
        .all(|(_, c)| *c == Claim::New || *c == Claim::Conflict));
    let body = format!("body-{}", winners[0]);
    assert_eq!(claim(s.as_ref(), &body), Claim::Pending);
    let pending = s.batch("line-1", "r-1").unwrap().unwrap();
    assert_eq!(pending.state, BatchState::Pending);
    let record = BatchRecord {
        body_sha256: body.clone(),
        state: BatchState::Complete,
        results: vec![BatchItem::Issued {
            serial: "4001".into(),
            existing: false,
        }],
    };
    let mut other = record.clone();
    other.body_sha256 = "another body".into();
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::CompleteBatch {
            account: "line-1".into(),
            request_id: "r-1".into(),
            record: other,
        }),
    ));
    refused(apply(
        s.as_ref(),
        Txn::new().with(Op::CompleteBatch {
            account: "line-1".into(),
            request_id: "never-claimed".into(),
            record: record.clone(),
        }),
    ));
    apply(
        s.as_ref(),
        Txn::new().with(Op::CompleteBatch {
            account: "line-1".into(),
            request_id: "r-1".into(),
            record: record.clone(),
        }),
    )
    .unwrap();
    assert_eq!(claim(s.as_ref(), &body), Claim::Complete(record.clone()));
    // A second answer to the same body leaves the first in place.
    let mut second = record.clone();
    second.results = Vec::new();
    apply(
        s.as_ref(),
        Txn::new().with(Op::CompleteBatch {
            account: "line-1".into(),
            request_id: "r-1".into(),
            record: second,
        }),
    )
    .unwrap();
    assert_eq!(claim(s.as_ref(), &body), Claim::Complete(record.clone()));
    assert_eq!(claim(s.as_ref(), "body-x"), Claim::Conflict);
    assert_eq!(s.batch("line-1", "r-1").unwrap(), Some(record));
    assert_eq!(s.batch("line-2", "r-1").unwrap(), None);
}

/// Reservations hand out disjoint ranges even to concurrent callers; a counter never moves
/// back; a setting is bound once.
pub fn counters_never_go_back_and_reservations_never_overlap(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    assert_eq!(s.counter("tamp.seq").unwrap(), None);
    assert_eq!(s.reserve("tamp.seq", 3).unwrap(), 1);
    assert_eq!(s.reserve("tamp.seq", 1).unwrap(), 4);
    let firsts = together(8, |_| s.reserve("tamp.seq", 100).unwrap());
    let mut ranges: Vec<u64> = firsts;
    ranges.sort_unstable();
    for w in ranges.windows(2) {
        assert!(w[1] >= w[0] + 100, "overlapping reservations {ranges:?}");
    }
    assert_eq!(s.counter("tamp.seq").unwrap(), Some(804));
    let advance = |to| {
        apply(
            s.as_ref(),
            Txn::new().with(Op::AdvanceCounter {
                name: "crl.number/device/3".into(),
                to,
            }),
        )
    };
    advance(5).unwrap();
    refused(advance(5));
    refused(advance(4));
    assert_eq!(s.counter("crl.number/device/3").unwrap(), Some(5));
    advance(6).unwrap();
    let bind = |value| {
        apply(
            s.as_ref(),
            Txn::new().with(Op::BindSetting {
                name: "crl.shards".into(),
                value,
            }),
        )
    };
    bind(16).unwrap();
    bind(16).unwrap();
    refused(bind(8));
    assert_eq!(s.counter("crl.shards").unwrap(), Some(16));
    let bind_text = |value: &str| {
        apply(
            s.as_ref(),
            Txn::new().with(Op::BindText {
                name: "crl.base_url".into(),
                value: value.into(),
            }),
        )
    };
    assert_eq!(s.setting_text("crl.base_url").unwrap(), None);
    bind_text("http://a.example/crl").unwrap();
    bind_text("http://a.example/crl").unwrap();
    refused(bind_text("http://b.example/crl"));
    assert_eq!(
        s.setting_text("crl.base_url").unwrap().as_deref(),
        Some("http://a.example/crl")
    );
}

/// A move applies only if the meter is where the caller saw it, and an operation's update is
/// recorded once; of concurrent moves from one state, exactly one applies.
pub fn meter_moves_are_compare_and_swap(h: &dyn Harness, dir: &Path) {
    let s = h.open(dir);
    let (a, b) = ("SUP-A", "SUP-B");
    assert_eq!(
        moves(
            s.as_ref(),
            vec![mv(DEV, None, a, None), mv(DEV2, None, a, None)]
        ),
        vec![MoveOutcome::Applied, MoveOutcome::Applied]
    );
    assert_eq!(s.meter_supplier(DEV).unwrap().as_deref(), Some(a));
    assert_eq!(
        moves(s.as_ref(), vec![mv(DEV, None, b, None)]),
        vec![MoveOutcome::Stale(Some(a.into()))]
    );
    assert_eq!(
        moves(s.as_ref(), vec![mv(DEV, Some(a), a, Some(("rotate:x", 7)))]),
        vec![MoveOutcome::Applied]
    );
    assert_eq!(
        moves(s.as_ref(), vec![mv(DEV, Some(a), a, Some(("rotate:x", 8)))]),
        vec![MoveOutcome::AlreadyDone]
    );
    assert_eq!(
        s.meter_update(DEV).unwrap(),
        Some(UpdateMark {
            seq: 7,
            op: "rotate:x".into()
        })
    );
    // Later moves of one meter in one transaction see the earlier ones.
    assert_eq!(
        moves(
            s.as_ref(),
            vec![mv(DEV2, Some(a), b, None), mv(DEV2, Some(b), a, None)]
        ),
        vec![MoveOutcome::Applied, MoveOutcome::Applied]
    );
    let outcomes = together(8, |i| {
        moves(
            s.as_ref(),
            vec![mv(DEV, Some(a), &format!("SUP-{i}"), None)],
        )
        .remove(0)
    });
    assert_eq!(
        outcomes
            .iter()
            .filter(|o| **o == MoveOutcome::Applied)
            .count(),
        1,
        "{outcomes:?}"
    );
    let winner = s.meter_supplier(DEV).unwrap().unwrap();
    assert_eq!(s.meters_of_supplier(&winner, None, 10).unwrap(), vec![DEV]);
    assert_eq!(s.meters_of_supplier(a, None, 10).unwrap(), vec![DEV2]);
    assert_eq!(s.count_meters_of_supplier(a).unwrap(), 1);
    for i in 3..8 {
        moves(
            s.as_ref(),
            vec![mv(&format!("00-DB-12-34-56-78-90-0{i}"), None, b, None)],
        );
    }
    let first = s.meters_of_supplier(b, None, 2).unwrap();
    assert_eq!(first.len(), 2);
    let rest = s.meters_of_supplier(b, Some(&first[1]), 10).unwrap();
    assert_eq!(rest.len(), 3);
    assert!(rest.iter().all(|d| d > &first[1]));
}
