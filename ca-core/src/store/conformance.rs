//! The store contract as tests, written once against [`Store`] and run by every backend:
//! `store_conformance!(|dir| open_my_backend(dir))` in the backend's tests expands to one
//! `#[test]` per rule. Each test gets a fresh scratch directory; `open` may be called again on
//! the same directory to reopen the store.
//!
//! The rules: a serial is stored once; at most one active certificate per device and usage,
//! even under concurrent writers; a replaced certificate is revoked in the same write;
//! all-or-nothing commits; revocations are final and listed by shard; a request ID is bound to
//! one body, even under concurrent claims; counters never go back and reservations never
//! overlap; meter moves are compare-and-swap; accounts and suppliers are created once; journals
//! round-trip; a refused operation aborts its whole transaction; the audit record commits with
//! the change (and nothing is written without it); everything survives a reopen.

use std::path::Path;
use std::sync::{Arc, Barrier};

use crate::audit::AuditError;
use crate::model::{
    Account, DeviceRange, OpKind, OpRecord, OpState, Reason, Revocation, Role, Supplier,
    SupplierState,
};
use crate::store::{
    Applied, ApplyError, AuditHead, AuditStage, BatchItem, BatchRecord, BatchState, CertRecord,
    Claim, Commit, MeterMove, MoveOutcome, Op, OpOutcome, Revoked, Store, StoreError, Txn,
    UpdateMark,
};
use crate::CaKind;

/// Opens (creating) a store of the backend under test in a scratch directory.
pub trait Harness: Sync {
    /// The store kept in `dir` (a fresh, empty directory the first time).
    fn open(&self, dir: &Path) -> Arc<dyn Store>;
}

impl<F: Fn(&Path) -> Arc<dyn Store> + Sync> Harness for F {
    fn open(&self, dir: &Path) -> Arc<dyn Store> {
        self(dir)
    }
}

/// Expands to one `#[test]` per rule of the store contract, for the backend `harness` opens.
#[macro_export]
macro_rules! store_conformance {
    ($harness:expr) => {
        $crate::store_conformance!(@tests $harness;
            certificates_round_trip_and_are_indexed,
            a_serial_is_never_stored_twice,
            one_active_certificate_per_device_and_usage_under_concurrency,
            replace_supersedes_and_revokes_the_old_certificate,
            all_or_nothing_commits_store_nothing_when_one_item_is_refused,
            revocation_is_final_and_listed_by_shard,
            batch_claims_bind_a_request_id_to_one_body_under_concurrency,
            counters_never_go_back_and_reservations_never_overlap,
            meter_moves_are_compare_and_swap,
            accounts_are_created_once_and_found_by_certificate,
            suppliers_are_registered_once,
            operation_journals_round_trip,
            a_refused_operation_aborts_the_whole_transaction,
            the_audit_record_commits_with_the_change,
            everything_survives_a_reopen
        );
    };
    (@tests $harness:expr; $($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                let dir = ::tempfile::tempdir().expect("scratch directory");
                $crate::store::conformance::$name(&$harness, dir.path());
            }
        )*
    };
}

// ---- helpers ---------------------------------------------------------------------------------

fn cert(serial: u8, subject: &str, profile: &str, key: u8) -> CertRecord {
    CertRecord {
        serial: vec![0x40, serial, key],
        issuer: CaKind::Device,
        profile: profile.into(),
        subject_id: subject.into(),
        key_hash: [key; 32],
        shard: u32::from(serial % 4),
        issued_at: 1_700_000_000 + i64::from(serial),
        der: vec![0x30, serial],
        replaced_by: None,
        hw_type: Some(const_oid::ObjectIdentifier::new_unwrap(
            "1.3.6.1.4.1.32473.1.1",
        )),
    }
}

fn apply(store: &dyn Store, txn: Txn) -> Result<Applied, ApplyError> {
    store.apply(txn, None)
}

fn commit(store: &dyn Store, items: Vec<(CertRecord, bool)>, all: bool) -> Vec<Commit> {
    let a = apply(
        store,
        Txn::new().with(Op::CommitIssued {
            items,
            all_or_nothing: all,
        }),
    )
    .expect("commit");
    a.committed(0).expect("a commit outcome").items.clone()
}

fn revocation(reason: Reason, at: i64) -> Revocation {
    Revocation {
        reason,
        revoked_at: at,
        invalidity_date: None,
    }
}

fn revoke(store: &dyn Store, serials: Vec<Vec<u8>>, r: Revocation) -> Vec<Revoked> {
    let a = apply(
        store,
        Txn::new().with(Op::Revoke {
            serials,
            revocation: r,
        }),
    )
    .expect("revoke");
    a.revoked(0).expect("revocations").to_vec()
}

fn account(name: &str, serial: u8) -> Account {
    Account {
        name: name.into(),
        role: Role::Factory,
        device_range: Some(DeviceRange::ALL),
        supplier: None,
        cert_serial: vec![0x50, serial],
        disabled: false,
        created: 1,
    }
}

fn supplier(id: &str) -> Supplier {
    Supplier {
        id: id.into(),
        name: format!("Supplier {id}"),
        state: SupplierState::Active,
        registered_at: 1,
        ended_at: None,
        successor: None,
    }
}

fn refused<T: std::fmt::Debug>(r: Result<T, ApplyError>) {
    match r {
        Err(ApplyError::Store(StoreError::Refused(_))) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Runs `f` on `n` threads released together; returns their results.
fn together<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(n);
    std::thread::scope(|s| {
        let handles: Vec<_> = (0..n)
            .map(|i| {
                let (barrier, f) = (&barrier, &f);
                s.spawn(move || {
                    barrier.wait();
                    f(i)
                })
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("thread"))
            .collect()
    })
}

const DEV: &str = "00-DB-12-34-56-78-90-01";
const DEV2: &str = "00-DB-12-34-56-78-90-02";

// ---- the rules ---------------------------------------------------------------------------------

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
        s.revoked_in_shard(CaKind::Device, old.shard).unwrap(),
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
        s.revoked_in_shard(CaKind::Device, a.shard).unwrap(),
        vec![(a.serial.clone(), first)]
    );
    assert!(s
        .revoked_in_shard(CaKind::Device, b.shard)
        .unwrap()
        .is_empty());
    assert!(s
        .revoked_of_issuer(CaKind::Organisation)
        .unwrap()
        .is_empty());
    assert_eq!(
        s.revoked_of_issuer(CaKind::Device).unwrap(),
        vec![(a.serial, first)]
    );
}

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
}

fn moves(s: &dyn Store, m: Vec<MeterMove>) -> Vec<MoveOutcome> {
    apply(s, Txn::new().with(Op::MoveMeters(m)))
        .unwrap()
        .moved(0)
        .unwrap()
        .to_vec()
}

fn mv(device: &str, from: Option<&str>, to: &str, op: Option<(&str, u64)>) -> MeterMove {
    MeterMove {
        device: device.into(),
        from: from.map(String::from),
        to: to.into(),
        update: op.map(|(op, seq)| UpdateMark { seq, op: op.into() }),
    }
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

/// A test stage: records what the store showed it, answers as told.
struct Stage {
    seen: Vec<(Option<AuditHead>, Applied)>,
    answer: Option<Result<Option<AuditHead>, ()>>,
    rolled_back: bool,
}

impl AuditStage for Stage {
    fn stage(
        &mut self,
        store_head: Option<&AuditHead>,
        applied: &Applied,
    ) -> Result<Option<AuditHead>, AuditError> {
        self.seen.push((store_head.cloned(), applied.clone()));
        match self.answer.take().expect("staged once") {
            Ok(h) => Ok(h),
            Err(()) => Err(AuditError::Io {
                path: "audit.log".into(),
                source: std::io::Error::other("disk full"),
            }),
        }
    }

    fn rollback(&mut self) {
        self.rolled_back = true;
    }
}

fn head(seq: u64) -> AuditHead {
    AuditHead {
        seq,
        hash: format!("{seq:064x}"),
    }
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
