//! Persistent state behind one trait, so that a server database can take over from the embedded
//! `sled` store when one machine is not enough. The contract every backend keeps (and the
//! conformance suite in [`conformance`] checks) is written down in docs/design.md#the-store.
//!
//! Reads are plain methods. Every write that changes what meterpki has issued, revoked or
//! decided goes through [`Store::apply`]: a [`Txn`] of typed operations applied atomically, with
//! the audit record that describes it (see [`AuditStage`]): the record is written once the
//! outcome is known and before anything is stored, and the store moves its audit head to it in
//! the same write. Bookkeeping that changes nothing a relying party sees (reserving sequence
//! numbers, claiming a request ID) needs no record.

mod error;
pub(crate) mod kv;
mod open;
pub mod postgres;
mod records;
pub(crate) mod sled;
mod txn;

#[cfg(any(test, feature = "conformance"))]
pub mod conformance;

use std::fmt;

pub use error::{ApplyError, StoreError};
pub use kv::check::{check, CheckReport};
pub use open::{embedded_dir, open, postgres_config, StoreBackend, StoreConfig, STORE_URL_ENV};
pub use records::{
    AuditHead, BatchItem, BatchRecord, BatchState, CertRecord, Claim, Commit, Committed, MeterMove,
    MoveOutcome, Revoked, UpdateMark,
};
pub use txn::{Applied, AuditStage, Op, OpOutcome, Txn};

use crate::model::{Account, OpRecord, Revocation, Supplier};

/// Keys and values as stored, in key order.
pub type RawEntries = Vec<(Vec<u8>, Vec<u8>)>;

/// A published CRL as a shared store keeps it: its DER in parts (see
/// [`Store::put_published_crl`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PublishedCrl {
    /// Its cRLNumber.
    pub number: u64,
    /// The SHA-256 of its DER.
    pub sha256: [u8; 32],
    /// Its DER's length.
    pub len: u64,
    /// How many parts hold the DER.
    pub parts: u32,
}

/// One page of an issuer's revoked certificates (see [`Store::revoked_of_issuer`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RevokedPage {
    /// Serial numbers and their revocations.
    pub entries: Vec<(Vec<u8>, Revocation)>,
    /// Where the next page starts: None when this is the last.
    pub next: Option<Vec<u8>>,
}

/// What meterpki keeps between runs. See the module documentation for the write rules.
pub trait Store: Send + Sync + fmt::Debug {
    /// The backend's name for messages: `sled`, `postgres`.
    fn backend(&self) -> &'static str;

    // ---- certificates ---------------------------------------------------------------------

    /// A certificate by serial.
    fn cert(&self, serial: &[u8]) -> Result<Option<CertRecord>, StoreError>;
    /// Whether a serial was ever used (by any certificate, revoked or not).
    fn serial_taken(&self, serial: &[u8]) -> Result<bool, StoreError>;
    /// The active (latest, not revoked, not replaced) certificate of `subject_id` for `profile`.
    fn active_cert(
        &self,
        subject_id: &str,
        profile: &str,
    ) -> Result<Option<CertRecord>, StoreError>;
    /// The certificate that bound the key with this SHA-256 of its SubjectPublicKeyInfo to a
    /// subject and usage. The binding holds while that subject's active certificate for that
    /// usage has the key; once it does not (revoked, replaced), another subject may bind it.
    fn cert_with_key(&self, key_hash: &[u8; 32]) -> Result<Option<CertRecord>, StoreError>;
    /// A certificate for the key revoked for keyCompromise, if any: the key is never certified
    /// again.
    fn compromised_key(&self, key_hash: &[u8; 32]) -> Result<Option<CertRecord>, StoreError>;
    /// Every certificate of a subject, oldest first.
    fn certs_of_subject(&self, subject_id: &str) -> Result<Vec<CertRecord>, StoreError>;
    /// Whether any certificate was ever issued to `subject_id`.
    fn subject_known(&self, subject_id: &str) -> Result<bool, StoreError>;
    /// How many certificates are stored.
    fn cert_count(&self) -> Result<u64, StoreError>;

    // ---- revocations ----------------------------------------------------------------------

    /// The revocation of a certificate, if revoked.
    fn revocation(&self, serial: &[u8]) -> Result<Option<Revocation>, StoreError>;
    /// The revoked certificates bound to one CRL shard of an issuer: only that shard is read.
    fn revoked_in_shard(
        &self,
        issuer: crate::IssuerId,
        shard: u32,
    ) -> Result<Vec<(Vec<u8>, Revocation)>, StoreError>;
    /// Up to `limit` revoked certificates of an issuer (the full CRL's entries), in the store's
    /// order, after `after` (None: from the first; else the `next` of the page before). A full
    /// CRL is read a page at a time, so that memory stays bounded by a page whatever the count.
    fn revoked_of_issuer(
        &self,
        issuer: crate::IssuerId,
        after: Option<&[u8]>,
        limit: usize,
    ) -> Result<RevokedPage, StoreError>;
    /// How many certificates of an issuer are revoked.
    fn count_revoked_of_issuer(&self, issuer: crate::IssuerId) -> Result<u64, StoreError>;

    // ---- counters, settings, the audit head ----------------------------------------------

    /// A counter or a setting (`crl.number/<issuer>/<scope>`, `tamp.seq`, `crl.shards`).
    fn counter(&self, name: &str) -> Result<Option<u64>, StoreError>;
    /// A text setting bound with [`Op::BindText`] (`crl.base_url`).
    fn setting_text(&self, name: &str) -> Result<Option<String>, StoreError>;
    /// Reserves `n` numbers of a counter that only grows and returns the first (at least 1).
    /// Durable before it returns, so a number is never handed out twice; numbers reserved by
    /// a run that then fails are skipped, never reused.
    fn reserve(&self, counter: &str, n: u64) -> Result<u64, StoreError>;
    /// The audit record the last write committed (see [`AuditStage`]).
    fn audit_head(&self) -> Result<Option<AuditHead>, StoreError>;

    // ---- accounts, suppliers, meters, journals, API batches ------------------------------

    /// An account by name.
    fn account(&self, name: &str) -> Result<Option<Account>, StoreError>;
    /// The account a client certificate belongs to.
    fn account_by_cert(&self, serial: &[u8]) -> Result<Option<Account>, StoreError>;
    /// Every account, by name.
    fn accounts(&self) -> Result<Vec<Account>, StoreError>;
    /// A registered supplier.
    fn supplier(&self, id: &str) -> Result<Option<Supplier>, StoreError>;
    /// Every registered supplier, by ID.
    fn suppliers(&self) -> Result<Vec<Supplier>, StoreError>;
    /// The supplier currently serving a meter.
    fn meter_supplier(&self, device: &str) -> Result<Option<String>, StoreError>;
    /// The last trust-anchor update made for a meter.
    fn meter_update(&self, device: &str) -> Result<Option<UpdateMark>, StoreError>;
    /// Up to `limit` meters served by `supplier`, in ID order, starting after `after`.
    fn meters_of_supplier(
        &self,
        supplier: &str,
        after: Option<&str>,
        limit: usize,
    ) -> Result<Vec<String>, StoreError>;
    /// How many meters `supplier` serves.
    fn count_meters_of_supplier(&self, supplier: &str) -> Result<u64, StoreError>;
    /// The journal of a multi-step operation.
    fn operation(&self, id: &str) -> Result<Option<OpRecord>, StoreError>;
    /// The record of an API batch, by account and request ID.
    fn batch(&self, account: &str, request_id: &str) -> Result<Option<BatchRecord>, StoreError>;

    /// Holds the lease `name` until the returned guard is dropped: one holder at a time among
    /// every process using the store (CRL publication, so that cRLNumbers are read and
    /// advanced by one publisher at a time). An embedded store is one process's: its guard is
    /// nothing, and callers keep their in-process lock.
    fn lease(&self, name: &str) -> Result<Box<dyn std::any::Any + Send>, StoreError>;

    // ---- raw entries: copying a store to another backend, checking it ---------------------

    /// Keys and values after `after` (from the first without it), in key order, at most
    /// `limit`: every record and index as stored.
    fn raw_entries(&self, after: Option<&[u8]>, limit: usize) -> Result<RawEntries, StoreError>;
    /// The value stored under one key.
    fn raw_get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, StoreError>;
    /// The values stored under `keys`, in their order, in one read.
    fn raw_get_many(&self, keys: &[Vec<u8>]) -> Result<Vec<Option<Vec<u8>>>, StoreError>;
    /// True for a store several processes and machines share (PostgreSQL): it keeps the audit
    /// log and the published CRLs, which every server reads from it.
    fn is_shared(&self) -> bool;
    /// Stores part `index` of version `number` of the published CRL `name` (`device/3.crl`),
    /// not yet visible: [`Store::put_published_crl`] makes a version visible once all its parts
    /// are stored (`crate::crl` writes and reads them).
    fn put_published_crl_part(
        &self,
        name: &str,
        number: u64,
        index: u32,
        bytes: &[u8],
    ) -> Result<(), StoreError>;
    /// Makes version `crl.number` of the published CRL `name`, its parts stored, the one every
    /// server reads, and removes the parts of every other version but the one it replaces
    /// (kept until the next, so that a server reading it now can finish); unless the store has
    /// a version of that name with this number or a higher one (then false, nothing changed).
    /// Callers hold the `crl.publish` lease.
    fn put_published_crl(&self, name: &str, crl: &PublishedCrl) -> Result<bool, StoreError>;
    /// The version of the published CRL `name` every server should serve, if any (one small
    /// read).
    fn published_crl(&self, name: &str) -> Result<Option<PublishedCrl>, StoreError>;
    /// Part `index` of version `number` of the published CRL `name`: None when there is no such
    /// part (a newer version has replaced that one).
    fn published_crl_part(
        &self,
        name: &str,
        number: u64,
        index: u32,
    ) -> Result<Option<Vec<u8>>, StoreError>;
    /// The records of an audit log kept in the store (a shared store's), in order: each the
    /// JSON line the record's writer stored.
    fn audit_record_lines(&self) -> Result<Vec<Vec<u8>>, StoreError>;
    /// Writes entries as they are, in one write: only for copying a store into an empty one
    /// (`meterpki store migrate --to`), never to change a store in use.
    fn raw_import(&self, entries: RawEntries) -> Result<(), StoreError>;

    // ---- the one way to change state -----------------------------------------------------

    /// Applies `txn` atomically and durably: every operation, or none. Conditional operations
    /// (a certificate whose device already has another active key, a meter that moved
    /// meanwhile, ...) report their outcome; a refused operation ([`StoreError::Refused`])
    /// aborts the whole transaction.
    ///
    /// With `audit`, the record that describes the change is written once the outcomes are
    /// known and before anything is stored; the store's audit head moves to it in the same
    /// write. If the record cannot be written, nothing is stored.
    fn apply(&self, txn: Txn, audit: Option<&mut dyn AuditStage>) -> Result<Applied, ApplyError>;
}
