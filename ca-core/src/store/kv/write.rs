//! One transaction of the store: the operations read the committed state through what the transaction
//! has written so far (an overlay), which becomes the one batch the store applies.

use std::collections::HashMap;

use super::codec::*;
use super::{KvRead, WriteSet};
use crate::model::{Account, Reason, Revocation, Supplier};
use crate::store::{
    Applied, BatchRecord, BatchState, CertRecord, Claim, Commit, Committed, MeterMove, MoveOutcome,
    Op, OpOutcome, Revoked, StoreError, Txn, UpdateMark,
};

pub(super) struct Writer<'a> {
    view: &'a dyn KvRead,
    /// What this transaction wrote, the last write of each key (None: removed): what later
    /// reads see, and the batch the store applies.
    overlay: HashMap<Vec<u8>, Option<Vec<u8>>>,
    /// Committed values read ahead in one go ([`Writer::prefetch`]): a database server answers
    /// a thousand keys in one round trip as fast as one.
    read: HashMap<Vec<u8>, Option<Vec<u8>>>,
    written: bool,
}

impl<'a> Writer<'a> {
    pub(super) fn new(view: &'a dyn KvRead) -> Writer<'a> {
        Writer {
            view,
            overlay: HashMap::new(),
            read: HashMap::new(),
            written: true,
        }
    }

    /// True when the operations wrote nothing (found everything as asked).
    pub(super) fn is_empty(&self) -> bool {
        self.overlay.is_empty()
    }

    pub(super) fn into_writes(self) -> WriteSet {
        self.overlay.into_iter().collect()
    }

    fn get(&self, k: &[u8]) -> Result<Option<Vec<u8>>, StoreError> {
        match self.overlay.get(k).or_else(|| self.read.get(k)) {
            Some(v) => Ok(v.clone()),
            None => self.view.get(k),
        }
    }

    /// Reads the committed values of `keys` (those not read or written yet) in one go.
    fn prefetch(&mut self, keys: Vec<Vec<u8>>) -> Result<(), StoreError> {
        let mut keys: Vec<Vec<u8>> = keys
            .into_iter()
            .filter(|k| !self.overlay.contains_key(k) && !self.read.contains_key(k))
            .collect();
        keys.sort_unstable();
        keys.dedup();
        if keys.len() < 2 {
            return Ok(());
        }
        let values = self.view.get_many(&keys)?;
        self.read.extend(keys.into_iter().zip(values));
        Ok(())
    }

    fn insert(&mut self, k: Vec<u8>, v: Vec<u8>) {
        self.overlay.insert(k, Some(v));
    }

    fn remove(&mut self, k: Vec<u8>) {
        self.overlay.insert(k, None);
    }

    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError> {
        let k = cert_key(serial);
        self.get(&k)?.map(|v| decode_cert(&k, &v)).transpose()
    }

    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError> {
        let k = revoked_key(serial);
        self.get(&k)?.map(|v| decode_rev(&k, &v)).transpose()
    }

    fn u64_at(&self, k: &[u8]) -> Result<Option<u64>, StoreError> {
        self.get(k)?.map(|v| decode_u64(k, &v)).transpose()
    }

    /// Runs every operation; the batch holds their writes. `written` is false when a
    /// conditional operation holds the whole transaction back.
    pub(super) fn run(&mut self, txn: Txn) -> Result<Applied, StoreError> {
        let mut outcomes = Vec::with_capacity(txn.ops.len());
        for op in txn.ops {
            outcomes.push(match op {
                Op::CommitIssued {
                    items,
                    all_or_nothing,
                } => OpOutcome::Committed(self.commit_issued(&items, all_or_nothing)?),
                Op::RecordCertificates(items) => {
                    self.record_certificates(&items)?;
                    OpOutcome::Done
                }
                Op::Revoke {
                    serials,
                    revocation,
                } => OpOutcome::Revoked(self.revoke(&serials, &revocation)?),
                Op::InsertAccount(a) => self.put_account(&a, true).map(|()| OpOutcome::Done)?,
                Op::UpdateAccount(a) => self.put_account(&a, false).map(|()| OpOutcome::Done)?,
                Op::InsertSupplier(s) => self.put_supplier(&s, true).map(|()| OpOutcome::Done)?,
                Op::UpdateSupplier(s) => self.put_supplier(&s, false).map(|()| OpOutcome::Done)?,
                Op::MoveMeters(moves) => OpOutcome::Moved(self.move_meters(&moves)?),
                Op::PutOperation(op) => {
                    self.insert(key(OPERATION, &[op.id.as_bytes()]), encode_json(&op));
                    OpOutcome::Done
                }
                Op::ClaimBatch {
                    account,
                    request_id,
                    body_sha256,
                } => OpOutcome::Claimed(self.claim(&account, &request_id, body_sha256)?),
                Op::CompleteBatch {
                    account,
                    request_id,
                    record,
                } => self
                    .complete(&account, &request_id, record)
                    .map(|()| OpOutcome::Done)?,
                Op::AdvanceCounter { name, to } => {
                    let k = meta_key(&name);
                    let now = self.u64_at(&k)?.unwrap_or(0);
                    if to <= now {
                        return Err(StoreError::Refused(format!(
                            "counter {name} is at {now}; it only grows (asked to set {to})"
                        )));
                    }
                    self.insert(k, encode_u64(to).to_vec());
                    OpOutcome::Done
                }
                Op::BindText { name, value } => {
                    let k = text_key(&name);
                    match self.get(&k)? {
                        Some(v) if v.as_slice() != value.as_bytes() => {
                            return Err(StoreError::Refused(format!(
                                "setting {name} is {:?}; it cannot become {value:?}",
                                String::from_utf8_lossy(&v)
                            )))
                        }
                        Some(_) => {}
                        None => self.insert(k, value.into_bytes()),
                    }
                    OpOutcome::Done
                }
                Op::BindSetting { name, value } => {
                    let k = meta_key(&name);
                    match self.u64_at(&k)? {
                        Some(v) if v != value => {
                            return Err(StoreError::Refused(format!(
                                "setting {name} is {v}; it cannot become {value}"
                            )))
                        }
                        Some(_) => {}
                        None => self.insert(k, encode_u64(value).to_vec()),
                    }
                    OpOutcome::Done
                }
            });
        }
        Ok(Applied {
            written: self.written,
            outcomes,
        })
    }

    fn commit_issued(
        &mut self,
        items: &[(CertRecord, bool)],
        all_or_nothing: bool,
    ) -> Result<Committed, StoreError> {
        let mut out = Vec::with_capacity(items.len());
        let mut stored = 0u64;
        // Everything the loop reads first, in one go; then the certificates those name.
        let mut keys = Vec::with_capacity(items.len() * 4 + 1);
        for (rec, _) in items {
            keys.push(active_key(&rec.subject_id, &rec.profile));
            keys.push(cert_key(&rec.serial));
            keys.push(compromised_key(&rec.key_hash));
            keys.push(key_of_key(&rec.key_hash));
        }
        keys.push(CERT_COUNT.to_vec());
        self.prefetch(keys.clone())?;
        let named: Vec<Vec<u8>> = keys
            .iter()
            .filter(|k| matches!(k.first(), Some(&ACTIVE) | Some(&KEY_OF)))
            .filter_map(|k| self.read.get(k).cloned().flatten())
            .map(|serial| cert_key(&serial))
            .collect();
        self.prefetch(named)?;
        for (rec, replace) in items {
            let akey = active_key(&rec.subject_id, &rec.profile);
            let current = match self.get(&akey)? {
                Some(serial) => Some(self.cert(&serial)?.ok_or_else(|| {
                    StoreError::corrupt(
                        hex::encode(&serial),
                        "the active index names a missing certificate",
                    )
                })?),
                None => None,
            };
            let current = match current {
                // The same key from a newer CA generation re-certifies it (after a renewal):
                // the earlier certificate is superseded like a replaced one.
                Some(existing)
                    if existing.key_hash == rec.key_hash
                        && existing.issuer_generation >= rec.issuer_generation =>
                {
                    out.push(Commit::Existing(Box::new(existing)));
                    continue;
                }
                Some(existing) if !replace && existing.key_hash != rec.key_hash => {
                    out.push(Commit::Conflict(Box::new(existing)));
                    continue;
                }
                current => current,
            };
            // A serial stored before, or earlier in this transaction (the overlay holds it).
            let ckey = cert_key(&rec.serial);
            if self.get(&ckey)?.is_some() {
                return Err(StoreError::Refused(format!(
                    "serial {} is already used",
                    rec.serial_hex()
                )));
            }
            // A key revoked for keyCompromise is never certified again.
            if let Some(serial) = self.get(&compromised_key(&rec.key_hash))? {
                let revoked = self.cert(&serial)?.ok_or_else(|| {
                    StoreError::corrupt(
                        hex::encode(&serial),
                        "the compromised-key index names a missing certificate",
                    )
                })?;
                out.push(Commit::KeyCompromised(Box::new(revoked)));
                continue;
            }
            // A key is bound to one subject and usage while that subject's active certificate
            // for that usage has it; then (revoked, replaced) it may be bound again.
            let kkey = key_of_key(&rec.key_hash);
            let mut bind = true;
            if let Some(serial) = self.get(&kkey)? {
                let holder = self.cert(&serial)?.ok_or_else(|| {
                    StoreError::corrupt(
                        hex::encode(&serial),
                        "the key index names a missing certificate",
                    )
                })?;
                if holder.subject_id == rec.subject_id && holder.profile == rec.profile {
                    bind = false;
                } else if let Some(active) =
                    self.get(&active_key(&holder.subject_id, &holder.profile))?
                {
                    let active = self.cert(&active)?.ok_or_else(|| {
                        StoreError::corrupt(
                            hex::encode(&active),
                            "the active index names a missing certificate",
                        )
                    })?;
                    if active.key_hash == rec.key_hash {
                        out.push(Commit::KeyReused(Box::new(active)));
                        continue;
                    }
                }
            }
            if let Some(mut prev) = current {
                prev.replaced_by = Some(rec.serial.clone());
                self.insert(cert_key(&prev.serial), encode_cert(&prev));
                // The replaced certificate is revoked as superseded in the same write.
                if self.revocation(&prev.serial)?.is_none() {
                    let rev = encode_rev(&Revocation {
                        reason: Reason::Superseded,
                        revoked_at: rec.issued_at,
                        invalidity_date: None,
                    });
                    self.insert(revoked_key(&prev.serial), rev.clone());
                    self.insert(
                        revoked_shard_key(prev.issuer_id(), prev.shard, &prev.serial),
                        rev,
                    );
                }
            }
            self.insert(ckey, encode_cert(rec));
            self.insert(akey, rec.serial.clone());
            if bind {
                self.insert(kkey, rec.serial.clone());
            }
            self.insert(
                subject_key(&rec.subject_id, rec.issued_at, &rec.serial),
                Vec::new(),
            );
            stored += 1;
            out.push(Commit::Stored);
        }
        let all = !all_or_nothing || out.iter().all(|c| matches!(c, Commit::Stored));
        if !all {
            self.written = false;
        } else if stored > 0 {
            let count = self.u64_at(CERT_COUNT)?.unwrap_or(0) + stored;
            self.insert(CERT_COUNT.to_vec(), encode_u64(count).to_vec());
        }
        Ok(Committed {
            stored: all,
            items: out,
        })
    }

    /// See [`Op::RecordCertificates`].
    fn record_certificates(&mut self, items: &[CertRecord]) -> Result<(), StoreError> {
        if items.is_empty() {
            return Ok(());
        }
        for rec in items {
            let ckey = cert_key(&rec.serial);
            if self.get(&ckey)?.is_some() {
                return Err(StoreError::Refused(format!(
                    "serial {} is already used",
                    rec.serial_hex()
                )));
            }
            self.insert(ckey, encode_cert(rec));
            self.insert(
                subject_key(&rec.subject_id, rec.issued_at, &rec.serial),
                Vec::new(),
            );
        }
        let count = self.u64_at(CERT_COUNT)?.unwrap_or(0) + items.len() as u64;
        self.insert(CERT_COUNT.to_vec(), encode_u64(count).to_vec());
        Ok(())
    }

    fn revoke(
        &mut self,
        serials: &[Vec<u8>],
        revocation: &Revocation,
    ) -> Result<Vec<Revoked>, StoreError> {
        let mut out = Vec::with_capacity(serials.len());
        let rev = encode_rev(revocation);
        self.prefetch(
            serials
                .iter()
                .flat_map(|s| [cert_key(s), revoked_key(s)])
                .collect(),
        )?;
        for serial in serials {
            let Some(rec) = self.cert(serial)? else {
                out.push(Revoked::Unknown(serial.clone()));
                continue;
            };
            if let Some(earlier) = self.revocation(serial)? {
                out.push(Revoked::Already(Box::new(rec), earlier));
                continue;
            }
            self.insert(revoked_key(serial), rev.clone());
            self.insert(
                revoked_shard_key(rec.issuer_id(), rec.shard, serial),
                rev.clone(),
            );
            if revocation.reason == Reason::KeyCompromise {
                self.insert(compromised_key(&rec.key_hash), serial.clone());
            }
            let akey = active_key(&rec.subject_id, &rec.profile);
            if self.get(&akey)?.as_deref() == Some(serial.as_slice()) {
                self.remove(akey);
            }
            out.push(Revoked::Now(Box::new(rec)));
        }
        Ok(out)
    }

    fn put_account(&mut self, account: &Account, insert: bool) -> Result<(), StoreError> {
        let k = key(ACCOUNT, &[account.name.as_bytes()]);
        let old: Option<Account> = self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()?;
        match (&old, insert) {
            (Some(_), true) => {
                return Err(StoreError::Refused(format!(
                    "account {:?} already exists",
                    account.name
                )))
            }
            (None, false) => {
                return Err(StoreError::Refused(format!(
                    "there is no account {:?}",
                    account.name
                )))
            }
            _ => {}
        }
        let by_cert = key(ACCOUNT_BY_CERT, &[&account.cert_serial]);
        if let Some(owner) = self.get(&by_cert)? {
            if &*owner != account.name.as_bytes() {
                return Err(StoreError::Refused(format!(
                    "client certificate {} is bound to account {:?}",
                    hex::encode(&account.cert_serial),
                    String::from_utf8_lossy(&owner)
                )));
            }
        }
        if let Some(old) = old.filter(|o| o.cert_serial != account.cert_serial) {
            self.remove(key(ACCOUNT_BY_CERT, &[&old.cert_serial]));
        }
        self.insert(k, encode_json(account));
        self.insert(by_cert, account.name.as_bytes().to_vec());
        Ok(())
    }

    fn put_supplier(&mut self, supplier: &Supplier, insert: bool) -> Result<(), StoreError> {
        let k = key(SUPPLIER, &[supplier.id.as_bytes()]);
        match (self.get(&k)?.is_some(), insert) {
            (true, true) => {
                return Err(StoreError::Refused(format!(
                    "supplier {} is already registered",
                    supplier.id
                )))
            }
            (false, false) => {
                return Err(StoreError::Refused(format!(
                    "supplier {} is not registered",
                    supplier.id
                )))
            }
            _ => {}
        }
        self.insert(k, encode_json(supplier));
        Ok(())
    }

    fn move_meters(&mut self, moves: &[MeterMove]) -> Result<Vec<MoveOutcome>, StoreError> {
        let mut out = Vec::with_capacity(moves.len());
        for m in moves {
            let mk = key(METER, &[m.device.as_bytes()]);
            let uk = key(METER_UPDATE, &[m.device.as_bytes()]);
            let current = self
                .get(&mk)?
                .map(|v| {
                    String::from_utf8(v.to_vec())
                        .map_err(|e| StoreError::corrupt(printable(&mk), e))
                })
                .transpose()?;
            let last: Option<UpdateMark> =
                self.get(&uk)?.map(|v| decode_bin(&uk, &v)).transpose()?;
            if current != m.from {
                out.push(MoveOutcome::Stale(current));
                continue;
            }
            if let (Some(u), Some(last)) = (&m.update, &last) {
                if u.op == last.op {
                    out.push(MoveOutcome::AlreadyDone);
                    continue;
                }
            }
            if let Some(from) = &m.from {
                self.remove(meters_of_key(from, &m.device));
            }
            self.insert(mk, m.to.as_bytes().to_vec());
            self.insert(meters_of_key(&m.to, &m.device), Vec::new());
            if let Some(u) = &m.update {
                self.insert(uk, encode_bin(u));
            }
            out.push(MoveOutcome::Applied);
        }
        Ok(out)
    }

    fn claim(
        &mut self,
        account: &str,
        request_id: &str,
        body_sha256: String,
    ) -> Result<Claim, StoreError> {
        let k = batch_key(account, request_id);
        let Some(v) = self.get(&k)? else {
            let record = BatchRecord {
                body_sha256,
                state: BatchState::Pending,
                results: Vec::new(),
            };
            self.insert(k, encode_json(&record));
            return Ok(Claim::New);
        };
        let record: BatchRecord = decode_json(&k, &v)?;
        // Nothing to write whatever was found: the claim holds nothing else back.
        Ok(if record.body_sha256 != body_sha256 {
            Claim::Conflict
        } else if record.state == BatchState::Complete {
            Claim::Complete(record)
        } else {
            Claim::Pending
        })
    }

    fn complete(
        &mut self,
        account: &str,
        request_id: &str,
        mut record: BatchRecord,
    ) -> Result<(), StoreError> {
        let k = batch_key(account, request_id);
        let claimed: Option<BatchRecord> =
            self.get(&k)?.map(|v| decode_json(&k, &v)).transpose()?;
        match claimed {
            // Answered already (a retry that raced the first): the first answer stands.
            Some(c) if c.body_sha256 == record.body_sha256 && c.state == BatchState::Complete => {
                return Ok(())
            }
            Some(c) if c.body_sha256 == record.body_sha256 => {}
            Some(_) => {
                return Err(StoreError::Refused(format!(
                    "request_id {request_id:?} of account {account} is bound to another body"
                )))
            }
            None => {
                return Err(StoreError::Refused(format!(
                    "request_id {request_id:?} of account {account} was never claimed"
                )))
            }
        }
        record.state = BatchState::Complete;
        self.insert(k, encode_json(&record));
        Ok(())
    }
}
