//! What the rules share: test records (certificates, accounts, suppliers, revocations, meter
//! moves), the store calls they make, a test audit stage, and running a closure on threads
//! released together.

use std::sync::Barrier;

use crate::audit::AuditError;
use crate::model::{Account, DeviceRange, Reason, Revocation, Role, Supplier, SupplierState};
use crate::store::{
    Applied, ApplyError, AuditHead, AuditStage, CertRecord, Commit, MeterMove, MoveOutcome, Op,
    Revoked, Store, StoreError, Txn, UpdateMark,
};
use crate::CaKind;

pub(super) fn cert(serial: u8, subject: &str, profile: &str, key: u8) -> CertRecord {
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
        issuer_generation: 1,
    }
}

pub(super) fn apply(store: &dyn Store, txn: Txn) -> Result<Applied, ApplyError> {
    store.apply(txn, None)
}

pub(super) fn commit(store: &dyn Store, items: Vec<(CertRecord, bool)>, all: bool) -> Vec<Commit> {
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

pub(super) fn revocation(reason: Reason, at: i64) -> Revocation {
    Revocation {
        reason,
        revoked_at: at,
        invalidity_date: None,
    }
}

pub(super) fn revoke(store: &dyn Store, serials: Vec<Vec<u8>>, r: Revocation) -> Vec<Revoked> {
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

pub(super) fn account(name: &str, serial: u8) -> Account {
    Account {
        name: name.into(),
        role: Role::Factory,
        device_range: Some(DeviceRange::ALL),
        supplier: None,
        cert_serial: vec![0x50, serial],
        disabled: false,
        created: 1,
        bare_public_key: false,
    }
}

pub(super) fn supplier(id: &str) -> Supplier {
    Supplier {
        id: id.into(),
        name: format!("Supplier {id}"),
        state: SupplierState::Active,
        registered_at: 1,
        ended_at: None,
        successor: None,
    }
}

pub(super) fn refused<T: std::fmt::Debug>(r: Result<T, ApplyError>) {
    match r {
        Err(ApplyError::Store(StoreError::Refused(_))) => {}
        other => panic!("expected a refusal, got {other:?}"),
    }
}

/// Runs `f` on `n` threads released together; returns their results.
pub(super) fn together<T: Send>(n: usize, f: impl Fn(usize) -> T + Sync) -> Vec<T> {
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

pub(super) const DEV: &str = "00-DB-12-34-56-78-90-01";
pub(super) const DEV2: &str = "00-DB-12-34-56-78-90-02";

pub(super) fn moves(s: &dyn Store, m: Vec<MeterMove>) -> Vec<MoveOutcome> {
    apply(s, Txn::new().with(Op::MoveMeters(m)))
        .unwrap()
        .moved(0)
        .unwrap()
        .to_vec()
}

pub(super) fn mv(device: &str, from: Option<&str>, to: &str, op: Option<(&str, u64)>) -> MeterMove {
    MeterMove {
        device: device.into(),
        from: from.map(String::from),
        to: to.into(),
        update: op.map(|(op, seq)| UpdateMark { seq, op: op.into() }),
    }
}

/// A test stage: records what the store showed it, answers as told.
pub(super) struct Stage {
    pub(super) seen: Vec<(Option<AuditHead>, Applied)>,
    pub(super) answer: Option<Result<Option<AuditHead>, ()>>,
    pub(super) rolled_back: bool,
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

pub(super) fn head(seq: u64) -> AuditHead {
    AuditHead {
        seq,
        hash: format!("{seq:064x}"),
    }
}
