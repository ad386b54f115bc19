//! Supplier churn (DESIGN §6): meter assignment, change of supplier, takeover, exit, supplier key
//! rotation and key revocation, each producing per affected meter a signed trust-anchor update
//! ([`crate::tamp`]).
//!
//! The flow of one chunk of meters:
//!
//! ```text
//! Plan (validated, read-only) -> sequence numbers reserved (durable) -> TAMPUpdate built, signed in
//! the HSM and verified (in parallel) -> update files written and synced -> assignments moved and the
//! update recorded, one atomic store write -> answered
//! ```
//!
//! A crash anywhere leaves every meter either moved with its update written, or not moved: the
//! re-run plans it again with a new sequence number (reserved numbers are never handed out twice,
//! so a number is skipped, never reused). Operations over many meters (takeover, exit, rotation)
//! keep a journal record so that a re-run resumes the same operation with the same key lists.

use std::collections::HashSet;
use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use der::asn1::ObjectIdentifier;
use der::Decode;
use serde::{Deserialize, Serialize};
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::ext::pkix::name::GeneralName;
use x509_cert::ext::pkix::SubjectAltName;
use x509_cert::Certificate;

use crate::eui64::Eui64;
use crate::issue::{HardwareModuleName, ID_ON_HARDWARE_MODULE_NAME};
use crate::revocation::{Reason, Revocation};
use crate::store::{CertRecord, MeterMove, MoveOutcome, Revoked, Store, StoreError, UpdateMark};
use crate::supplier::{Supplier, SupplierState};
use crate::tamp::{PreparedUpdates, TampError, UpdateSigner};

/// The store counter behind TAMP sequence numbers.
pub const SEQ_COUNTER: &str = "tamp.seq";

/// Why a churn operation, or one meter of it, was refused or failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ChurnError {
    /// The request is wrong (unknown meter, same supplier, inactive supplier, ...): nothing changed.
    #[error("{code}: {detail}")]
    Refused {
        /// Stable code, e.g. `unknown-meter`.
        code: &'static str,
        /// What was wrong, naming the field.
        detail: String,
    },
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// Building or signing an update failed.
    #[error("trust-anchor update: {0}")]
    Tamp(#[from] TampError),
    /// Writing the updates failed.
    #[error("writing updates: {0}")]
    Io(#[from] io::Error),
    /// Something inside meterpki is inconsistent.
    #[error("internal: {0}")]
    Internal(String),
}

impl ChurnError {
    fn refused(code: &'static str, detail: impl Into<String>) -> ChurnError {
        ChurnError::Refused {
            code,
            detail: detail.into(),
        }
    }

    /// The stable code of a refusal, `None` for failures of the system.
    pub fn code(&self) -> Option<&'static str> {
        match self {
            ChurnError::Refused { code, .. } => Some(code),
            _ => None,
        }
    }
}

/// One meter's planned update: where it goes and which keys change.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The meter.
    pub device: Eui64,
    /// Its hwType, from its certificate's hardwareModuleName.
    pub hw_type: ObjectIdentifier,
    /// The supplier serving it now.
    pub from: Option<String>,
    /// The supplier serving it after (equal to `from` for a key change).
    pub to: String,
    /// The keys the meter drops and the certificates it adds, encoded once for many meters.
    pub updates: Arc<PreparedUpdates>,
}

/// One meter done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Done {
    /// The meter.
    pub device: String,
    /// Supplier before.
    pub from: Option<String>,
    /// Supplier after.
    pub to: String,
    /// The update's sequence number (none for an assignment made without updates).
    pub seq: Option<u64>,
}

/// A chunk's updates, signed and verified, not yet written or stored.
#[derive(Debug, Default)]
pub struct SignedChunk {
    seqs: Vec<u64>,
    ders: Vec<Vec<u8>>,
}

/// A chunk names each meter once: two moves of one meter in one write would be planned from
/// the same state.
fn check_distinct(plans: &[Plan]) -> Result<(), ChurnError> {
    let mut seen = HashSet::new();
    match plans.iter().find(|p| !seen.insert(p.device)) {
        Some(p) => Err(ChurnError::Internal(format!(
            "device {} planned twice in one chunk",
            p.device
        ))),
        None => Ok(()),
    }
}

/// Where updates go: one file per meter, or one NDJSON stream.
pub trait UpdateSink: Send {
    /// Writes one meter's update.
    fn put(&mut self, device: &Eui64, seq: u64, der: &[u8]) -> io::Result<()>;
    /// Makes everything put so far durable.
    fn sync(&mut self) -> io::Result<()>;
    /// Withdraws an update that was written but not recorded (best effort).
    fn discard(&mut self, device: &Eui64);
    /// Where the updates are, for messages.
    fn location(&self) -> String;
}

/// `DIR/<DEVICE-ID>.tamp.der`, one file per meter (DESIGN §7), each written through a temporary
/// file and a rename; synced once per chunk (`syncfs`) rather than once per file. The folder is
/// created with the first update, so a refused command leaves nothing behind.
#[derive(Debug)]
pub struct DirSink {
    dir: PathBuf,
    dir_file: Option<File>,
}

impl DirSink {
    /// A sink writing into `dir`; refuses a path that exists and is not a folder.
    pub fn create(dir: &Path) -> io::Result<DirSink> {
        if dir.exists() && !dir.is_dir() {
            return Err(io::Error::new(
                io::ErrorKind::AlreadyExists,
                "exists and is not a folder",
            ));
        }
        Ok(DirSink {
            dir: dir.to_path_buf(),
            dir_file: None,
        })
    }

    /// The file of one meter's update.
    pub fn path_of(dir: &Path, device: &Eui64) -> PathBuf {
        dir.join(format!("{device}.tamp.der"))
    }
}

impl UpdateSink for DirSink {
    fn put(&mut self, device: &Eui64, _seq: u64, der: &[u8]) -> io::Result<()> {
        if self.dir_file.is_none() {
            std::fs::create_dir_all(&self.dir)?;
            self.dir_file = Some(File::open(&self.dir)?);
        }
        let path = DirSink::path_of(&self.dir, device);
        let tmp = self.dir.join(format!(".{device}.tamp.der.tmp"));
        std::fs::write(&tmp, der)?;
        std::fs::rename(&tmp, &path)
    }

    fn sync(&mut self) -> io::Result<()> {
        // One filesystem sync per chunk: every file and rename above is on disk after it.
        match &self.dir_file {
            Some(f) => rustix::fs::syncfs(f).map_err(io::Error::from),
            None => Ok(()),
        }
    }

    fn discard(&mut self, device: &Eui64) {
        let _ = std::fs::remove_file(DirSink::path_of(&self.dir, device));
    }

    fn location(&self) -> String {
        self.dir.display().to_string()
    }
}

/// One NDJSON line per update, `{"device_id", "seq", "update": <base64 DER>}`, appended (a re-run
/// after a crash adds to the stream; a meter keeps the update with the highest sequence number).
#[derive(Debug)]
pub struct NdjsonSink {
    path: PathBuf,
    file: io::BufWriter<File>,
}

impl NdjsonSink {
    /// Opens `path` for appending, creating it. A last line cut short by a crash (the process
    /// died while writing a chunk, before the chunk was synced and stored) is removed first, so
    /// that the next line does not fuse with it.
    pub fn open(path: &Path) -> io::Result<NdjsonSink> {
        let file = OpenOptions::new()
            .create(true)
            .append(true)
            .read(true)
            .open(path)?;
        let len = file.metadata()?.len();
        if len > 0 {
            use std::io::{Read, Seek, SeekFrom};
            let mut f = &file;
            let mut keep = 0u64;
            let mut pos = len;
            let mut buf = vec![0u8; 64 * 1024];
            // Find the last newline, reading backwards in blocks.
            'scan: while pos > 0 {
                let n = buf.len().min(pos as usize);
                pos -= n as u64;
                f.seek(SeekFrom::Start(pos))?;
                f.read_exact(&mut buf[..n])?;
                if let Some(i) = buf[..n].iter().rposition(|b| *b == b'\n') {
                    keep = pos + i as u64 + 1;
                    break 'scan;
                }
            }
            if keep < len {
                file.set_len(keep)?;
                file.sync_data()?;
            }
        }
        Ok(NdjsonSink {
            path: path.to_path_buf(),
            file: io::BufWriter::new(file),
        })
    }
}

impl UpdateSink for NdjsonSink {
    fn put(&mut self, device: &Eui64, seq: u64, der: &[u8]) -> io::Result<()> {
        use base64::Engine as _;
        let line = serde_json::json!({
            "device_id": device.to_string(),
            "seq": seq,
            "update": base64::engine::general_purpose::STANDARD.encode(der),
        });
        serde_json::to_writer(&mut self.file, &line)?;
        self.file.write_all(b"\n")
    }

    fn sync(&mut self) -> io::Result<()> {
        self.file.flush()?;
        self.file.get_ref().sync_data()
    }

    fn discard(&mut self, _device: &Eui64) {
        // A line cannot be withdrawn from a stream; the summary reports the meter as failed.
    }

    fn location(&self) -> String {
        self.path.display().to_string()
    }
}

/// A multi-step operation's journal (takeover, exit, rotation, key revocation), so that a re-run
/// after a crash resumes it with the same key lists.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpRecord {
    /// `takeover:<A>`, `exit:<A>`, `rotate:<old serial>`, `revoke-key:<serial>`.
    pub id: String,
    /// `takeover`, `exit`, `rotate`, `revoke-key`.
    pub kind: String,
    /// The supplier whose meters are updated (A).
    pub from: String,
    /// The supplier serving them after (B; A itself for key changes).
    pub to: String,
    /// Serials (hex) of the certificates whose keys the meters drop.
    pub remove: Vec<String>,
    /// Serials (hex) of the certificates the meters add.
    pub add: Vec<String>,
    /// `running` or `complete`.
    pub state: String,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    #[serde(default)]
    pub completed_at: Option<i64>,
}

impl OpRecord {
    /// Whether it finished.
    pub fn is_complete(&self) -> bool {
        self.state == "complete"
    }
}

/// The churn engine: the store, the trust-update signer and the supplier profiles.
pub struct Churn {
    store: Arc<dyn Store>,
    signer: Arc<UpdateSigner>,
    supplier_profiles: Vec<String>,
    workers: usize,
}

impl std::fmt::Debug for Churn {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Churn({} workers)", self.workers)
    }
}

fn unix_now() -> i64 {
    time::OffsetDateTime::now_utc().unix_timestamp()
}

/// A supplier by ID, refused when unknown.
pub fn registered(store: &dyn Store, id: &str) -> Result<Supplier, ChurnError> {
    store.supplier(id)?.ok_or_else(|| {
        ChurnError::refused(
            "supplier-unknown",
            format!("supplier {id} is not registered (meterpki supplier register)"),
        )
    })
}

/// A supplier that must be active.
pub fn active(store: &dyn Store, id: &str, field: &str) -> Result<Supplier, ChurnError> {
    let s = registered(store, id)?;
    if s.state != SupplierState::Active {
        return Err(ChurnError::refused(
            "supplier-inactive",
            format!("{field}: supplier {id} ({}) is {}", s.name, s.state),
        ));
    }
    Ok(s)
}

/// The hwType of a meter, from the hardwareModuleName of its first meter certificate.
pub fn meter_hw_type(store: &dyn Store, device: &Eui64) -> Result<ObjectIdentifier, ChurnError> {
    let id = device.to_string();
    let certs = store.certs_of_subject(&id)?;
    let Some(rec) = certs.iter().find(|r| r.issuer == "device") else {
        return Err(ChurnError::refused(
            "unknown-meter",
            format!("device_id {id}: no meter certificate was ever issued to it"),
        ));
    };
    let cert = Certificate::from_der(&rec.der)
        .map_err(|e| ChurnError::Internal(format!("stored certificate of {id}: {e}")))?;
    for ext in cert
        .tbs_certificate
        .extensions
        .as_deref()
        .unwrap_or_default()
    {
        if ext.extn_id != const_oid::db::rfc5280::ID_CE_SUBJECT_ALT_NAME {
            continue;
        }
        let san = SubjectAltName::from_der(ext.extn_value.as_bytes())
            .map_err(|e| ChurnError::Internal(format!("SAN of {id}: {e}")))?;
        for name in san.0 {
            if let GeneralName::OtherName(on) = name {
                if on.type_id == ID_ON_HARDWARE_MODULE_NAME {
                    let hmn: HardwareModuleName = on
                        .value
                        .decode_as()
                        .map_err(|e| ChurnError::Internal(format!("hwModuleName of {id}: {e}")))?;
                    return Ok(hmn.hw_type);
                }
            }
        }
    }
    Err(ChurnError::Internal(format!(
        "the certificate of {id} names no hardwareModuleName"
    )))
}

fn cert_of(rec: &CertRecord) -> Result<Certificate, ChurnError> {
    Certificate::from_der(&rec.der)
        .map_err(|e| ChurnError::Internal(format!("stored certificate {}: {e}", rec.serial_hex())))
}

impl Churn {
    /// A churn engine; `workers` threads sign in parallel (one per HSM session).
    pub fn new(
        store: Arc<dyn Store>,
        signer: Arc<UpdateSigner>,
        supplier_profiles: Vec<String>,
        workers: usize,
    ) -> Churn {
        Churn {
            store,
            signer,
            supplier_profiles,
            workers: workers.max(1),
        }
    }

    /// The store.
    pub fn store(&self) -> &Arc<dyn Store> {
        &self.store
    }

    /// The active certificates of a supplier, one per supplier profile that has one.
    pub fn active_certs(&self, supplier: &str) -> Result<Vec<CertRecord>, ChurnError> {
        let mut out = Vec::new();
        for p in &self.supplier_profiles {
            if let Some(r) = self.store.active_cert(supplier, p)? {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn certs_by_serial(&self, serials: &[String]) -> Result<Vec<CertRecord>, ChurnError> {
        let mut out = Vec::new();
        for s in serials {
            let b = hex::decode(s).map_err(|e| ChurnError::Internal(e.to_string()))?;
            out.push(
                self.store
                    .cert(&b)?
                    .ok_or_else(|| ChurnError::Internal(format!("certificate {s} missing")))?,
            );
        }
        Ok(out)
    }

    /// A supplier meters can be moved to: registered, active, with at least one key.
    fn target(&self, to: &str) -> Result<Vec<CertRecord>, ChurnError> {
        active(self.store.as_ref(), to, "--to")?;
        let certs = self.active_certs(to)?;
        if certs.is_empty() {
            return Err(ChurnError::refused(
                "supplier-no-keys",
                format!("supplier {to} has no active certificate: enrol its keys first (meterpki supplier enrol), or its meters would trust no supplier"),
            ));
        }
        Ok(certs)
    }

    /// The update list: drop the keys of `remove`, add the certificates of `add`.
    fn prepare(
        remove: &[CertRecord],
        add: &[CertRecord],
    ) -> Result<Arc<PreparedUpdates>, ChurnError> {
        let keys: Vec<SubjectPublicKeyInfoOwned> = remove
            .iter()
            .map(|r| cert_of(r).map(|c| c.tbs_certificate.subject_public_key_info))
            .collect::<Result<_, _>>()?;
        let certs: Vec<Certificate> = add.iter().map(cert_of).collect::<Result<_, _>>()?;
        Ok(Arc::new(PreparedUpdates::new(&keys, &certs)?))
    }

    /// Plans the first assignment of a meter. Assigning it again to the supplier that already
    /// serves it is harmless (`Ok(None)`); to another is refused (that is a change of supplier).
    pub fn plan_assign(&self, device: &Eui64, to: &str) -> Result<Option<Plan>, ChurnError> {
        let hw_type = meter_hw_type(self.store.as_ref(), device)?;
        match self.store.meter_supplier(&device.to_string())? {
            Some(cur) if cur == to => return Ok(None),
            Some(cur) => {
                return Err(ChurnError::refused(
                    "meter-assigned",
                    format!("device_id {device} is served by supplier {cur}: use `meterpki meter change-supplier`"),
                ))
            }
            None => {}
        }
        let add = self.target(to)?;
        Ok(Some(Plan {
            device: *device,
            hw_type,
            from: None,
            to: to.to_string(),
            updates: Churn::prepare(&[], &add)?,
        }))
    }

    /// Plans a change of supplier for one meter.
    pub fn plan_change(&self, device: &Eui64, to: &str) -> Result<Plan, ChurnError> {
        let hw_type = meter_hw_type(self.store.as_ref(), device)?;
        let Some(from) = self.store.meter_supplier(&device.to_string())? else {
            return Err(ChurnError::refused(
                "meter-unassigned",
                format!("device_id {device} has no supplier yet: use `meterpki meter assign`"),
            ));
        };
        if from == to {
            return Err(ChurnError::refused(
                "same-supplier",
                format!("device_id {device} is already served by supplier {to}"),
            ));
        }
        let add = self.target(to)?;
        let remove = self.active_certs(&from)?;
        Ok(Plan {
            device: *device,
            hw_type,
            from: Some(from),
            to: to.to_string(),
            updates: Churn::prepare(&remove, &add)?,
        })
    }

    /// Runs one chunk of plans: sequence numbers reserved, updates signed in parallel and
    /// written to `sink` (synced), then the moves stored in one write. With no sink (first
    /// assignments only) nothing is signed. Results in order.
    pub fn execute(
        &self,
        plans: &[Plan],
        op: &str,
        sink: Option<&mut dyn UpdateSink>,
    ) -> Result<Vec<Result<Done, ChurnError>>, ChurnError> {
        let signed = match sink.is_some() {
            true => Some(self.sign_chunk(plans)?),
            false => {
                check_distinct(plans)?;
                None
            }
        };
        self.commit_chunk(plans, signed, op, sink)
    }

    /// First half of [`Churn::execute`]: sequence numbers reserved (durably: a chunk that fails
    /// later skips its numbers, never reuses them), then one update built, signed and verified
    /// per plan.
    pub fn sign_chunk(&self, plans: &[Plan]) -> Result<SignedChunk, ChurnError> {
        check_distinct(plans)?;
        if plans.is_empty() {
            return Ok(SignedChunk::default());
        }
        let first = self
            .store
            .reserve_counter(SEQ_COUNTER, plans.len() as u64)?;
        let seqs: Vec<u64> = (0..plans.len() as u64).map(|i| first + i).collect();
        let ders = self.sign_all(plans, &seqs)?;
        Ok(SignedChunk { seqs, ders })
    }

    /// Second half: the updates written to `sink` and synced, then the moves stored in one
    /// write, flushed. Only then are the meters reported done.
    pub fn commit_chunk(
        &self,
        plans: &[Plan],
        signed: Option<SignedChunk>,
        op: &str,
        mut sink: Option<&mut dyn UpdateSink>,
    ) -> Result<Vec<Result<Done, ChurnError>>, ChurnError> {
        if plans.is_empty() {
            return Ok(Vec::new());
        }
        let seqs = match (signed, sink.as_mut()) {
            (Some(signed), Some(sink)) => {
                if signed.seqs.len() != plans.len() {
                    return Err(ChurnError::Internal(
                        "signed chunk does not match its plans".into(),
                    ));
                }
                for ((p, seq), der) in plans.iter().zip(&signed.seqs).zip(&signed.ders) {
                    sink.put(&p.device, *seq, der)?;
                }
                sink.sync()?;
                crate::failpoint("churn.before-commit");
                Some(signed.seqs)
            }
            (None, None) => None,
            _ => return Err(ChurnError::Internal("updates without a sink".into())),
        };
        let moves: Vec<MeterMove> = plans
            .iter()
            .enumerate()
            .map(|(i, p)| MeterMove {
                device: p.device.to_string(),
                from: p.from.clone(),
                to: p.to.clone(),
                update: seqs.as_ref().map(|s| UpdateMark {
                    seq: s[i],
                    op: op.to_string(),
                }),
            })
            .collect();
        let outcomes = self.store.move_meters(&moves)?;
        let mut out = Vec::with_capacity(plans.len());
        for (i, (p, o)) in plans.iter().zip(outcomes).enumerate() {
            out.push(match o {
                MoveOutcome::Applied => Ok(Done {
                    device: p.device.to_string(),
                    from: p.from.clone(),
                    to: p.to.clone(),
                    seq: seqs.as_ref().map(|s| s[i]),
                }),
                MoveOutcome::Stale(cur) => {
                    if let Some(sink) = sink.as_mut() {
                        sink.discard(&p.device);
                    }
                    Err(ChurnError::refused(
                        "meter-changed",
                        format!(
                            "device_id {}: its supplier changed meanwhile (now {}); its update was withdrawn",
                            p.device,
                            cur.as_deref().unwrap_or("none")
                        ),
                    ))
                }
                MoveOutcome::AlreadyDone => Err(ChurnError::refused(
                    "already-updated",
                    format!("device_id {} already has this operation's update", p.device),
                )),
            });
        }
        Ok(out)
    }

    /// Builds and signs one update per plan, `workers` threads in parallel (the HSM session pool
    /// serves them); each signature is verified before it leaves [`UpdateSigner::sign`].
    fn sign_all(&self, plans: &[Plan], seqs: &[u64]) -> Result<Vec<Vec<u8>>, ChurnError> {
        let jobs: Vec<(&Plan, u64)> = plans.iter().zip(seqs.iter().copied()).collect();
        crate::par::par_map(&jobs, self.workers, |(p, seq)| {
            let content = p.updates.encode_for(p.hw_type, &p.device, *seq)?;
            Ok(self.signer.sign_encoded(&content)?)
        })
        .into_iter()
        .collect()
    }

    // ---- operations over all meters of a supplier ------------------------------------------

    /// The journal of an operation, if one was started.
    pub fn op(&self, id: &str) -> Result<Option<OpRecord>, ChurnError> {
        match self.store.op_record(id)? {
            Some(b) => {
                Ok(Some(serde_json::from_slice(&b).map_err(|e| {
                    ChurnError::Internal(format!("journal {id}: {e}"))
                })?))
            }
            None => Ok(None),
        }
    }

    /// Writes an operation's journal, durably.
    pub fn save_op(&self, op: &OpRecord) -> Result<(), ChurnError> {
        self.store.put_op_record(
            &op.id,
            &serde_json::to_vec(op).expect("an OpRecord serialises"),
        )?;
        Ok(())
    }

    /// Starts, or finds to resume, a takeover (`kind` = `takeover`) or an exit (`exit`): A's
    /// meters go to B. On start: B checked (active, with keys), A's and B's key lists journaled,
    /// A marked acquired/exited and every certificate of A revoked `cessationOfOperation`, so A
    /// loses its power at once. Returns the journal and the certificates revoked now (their CRL
    /// shards must be republished at once).
    pub fn begin_supplier_end(
        &self,
        kind: &str,
        from: &str,
        to: &str,
    ) -> Result<(OpRecord, Vec<CertRecord>), ChurnError> {
        let (field_to, end_state) = match kind {
            "takeover" => ("--to", SupplierState::Acquired),
            "exit" => ("--successor", SupplierState::Exited),
            _ => return Err(ChurnError::Internal(format!("unknown operation {kind}"))),
        };
        if from == to {
            return Err(ChurnError::refused(
                "same-supplier",
                format!("{field_to}: supplier {from} cannot take over its own meters"),
            ));
        }
        let id = format!("{kind}:{from}");
        let a = registered(self.store.as_ref(), from)?;
        let op = match self.op(&id)? {
            Some(op) if op.to != to => {
                return Err(ChurnError::refused(
                    "operation-running",
                    format!("a {kind} of supplier {from} to {} was started on {}; re-run it with {field_to} {} to complete it", op.to, op.started_at, op.to),
                ))
            }
            Some(op) => op,
            None => {
                if a.state != SupplierState::Active {
                    return Err(ChurnError::refused(
                        "supplier-inactive",
                        format!("--from: supplier {from} ({}) is already {}", a.name, a.state),
                    ));
                }
                // B must be able to serve meters before A loses them.
                active(self.store.as_ref(), to, field_to)?;
                let add = self.target(to)?;
                let mut remove = Vec::new();
                for r in self.store.certs_of_subject(from)? {
                    if self.supplier_profiles.contains(&r.profile)
                        && self.store.revocation(&r.serial)?.is_none()
                    {
                        remove.push(r.serial_hex());
                    }
                }
                let op = OpRecord {
                    id: id.clone(),
                    kind: kind.into(),
                    from: from.into(),
                    to: to.into(),
                    remove,
                    add: add.iter().map(CertRecord::serial_hex).collect(),
                    state: "running".into(),
                    started_at: unix_now(),
                    completed_at: None,
                };
                self.save_op(&op)?;
                op
            }
        };
        // Idempotent steps, repeated on a resume: A's state, A's certificates revoked.
        let mut a = a;
        if a.state == SupplierState::Active {
            a.state = end_state;
            a.ended_at = Some(op.started_at);
            a.successor = Some(to.into());
            self.store.put_supplier(&a)?;
        }
        let serials: Vec<Vec<u8>> = self
            .store
            .certs_of_subject(from)?
            .into_iter()
            .filter(|r| self.supplier_profiles.contains(&r.profile))
            .map(|r| r.serial)
            .collect();
        let revoked = self.store.revoke(
            &serials,
            &Revocation {
                reason: Reason::CessationOfOperation,
                revoked_at: unix_now(),
                invalidity_date: None,
            },
        )?;
        let now: Vec<CertRecord> = revoked
            .into_iter()
            .filter_map(|r| match r {
                Revoked::Now(rec) => Some(*rec),
                _ => None,
            })
            .collect();
        Ok((op, now))
    }

    /// Starts, or finds to resume, the key change journaled as `id`: `rotate` (the certificate
    /// `old` replaced; the new one is added to the journal with [`Churn::save_op`] once issued) or
    /// `revoke-key` (`old` revoked, no replacement). The journal is written before anything
    /// else happens, so a re-run after a crash knows which key the meters must drop.
    pub fn begin_key_change(
        &self,
        id: &str,
        kind: &str,
        supplier: &str,
        old: &CertRecord,
    ) -> Result<OpRecord, ChurnError> {
        if let Some(op) = self.op(id)? {
            return Ok(op);
        }
        let op = OpRecord {
            id: id.into(),
            kind: kind.into(),
            from: supplier.into(),
            to: supplier.into(),
            remove: vec![old.serial_hex()],
            add: Vec::new(),
            state: "running".into(),
            started_at: unix_now(),
            completed_at: None,
        };
        self.save_op(&op)?;
        Ok(op)
    }

    /// How many meters an operation still has to update (for a progress bar).
    pub fn remaining(&self, op: &OpRecord) -> Result<u64, ChurnError> {
        if op.from != op.to {
            return Ok(self.store.count_meters_of_supplier(&op.from)?);
        }
        let mut n = 0;
        let mut after: Option<String> = None;
        loop {
            let page = self
                .store
                .meters_of_supplier(&op.from, after.as_deref(), 10_000)?;
            let Some(last) = page.last().cloned() else {
                break;
            };
            for d in &page {
                if self.store.meter_update(d)?.map(|u| u.op).as_deref() != Some(op.id.as_str()) {
                    n += 1;
                }
            }
            after = Some(last);
        }
        Ok(n)
    }

    /// Runs a journaled operation over every meter it still has to update, in chunks of
    /// `chunk`, calling `progress` with the meters done after each chunk. Returns the meters
    /// updated by this run and the refusals (meters that could not be planned).
    pub fn run_op(
        &self,
        op: &OpRecord,
        chunk: usize,
        sink: &mut dyn UpdateSink,
        progress: &mut (dyn FnMut(u64) + Send),
    ) -> Result<(u64, Vec<(String, ChurnError)>), ChurnError> {
        let updates = Churn::prepare(
            &self.certs_by_serial(&op.remove)?,
            &self.certs_by_serial(&op.add)?,
        )?;
        let moving = op.from != op.to;
        let mut refused = Vec::new();
        // Two stages: this thread plans and signs chunk k+1 while the committer writes chunk k's
        // updates, syncs them and stores its moves, in chunk order.
        let (tx, rx) = std::sync::mpsc::sync_channel::<(Vec<Plan>, SignedChunk)>(1);
        let (done, commit_refused) = std::thread::scope(|scope| {
            let committer = scope.spawn(
                move || -> Result<(u64, Vec<(String, ChurnError)>), ChurnError> {
                    let mut done = 0u64;
                    let mut refused = Vec::new();
                    for (plans, signed) in rx {
                        let results =
                            self.commit_chunk(&plans, Some(signed), &op.id, Some(&mut *sink))?;
                        for (p, r) in plans.iter().zip(results) {
                            match r {
                                Ok(_) => done += 1,
                                Err(e) => refused.push((p.device.to_string(), e)),
                            }
                        }
                        progress(done);
                    }
                    Ok((done, refused))
                },
            );
            let produced = (|| -> Result<(), ChurnError> {
                let mut after: Option<String> = None;
                loop {
                    // The cursor steps over meters already planned (moved ones leave A's index
                    // behind it) and over meters that could not be planned.
                    let page = self
                        .store
                        .meters_of_supplier(&op.from, after.as_deref(), chunk)?;
                    if page.is_empty() {
                        return Ok(());
                    }
                    after = page.last().cloned();
                    let mut plans = Vec::with_capacity(page.len());
                    for d in &page {
                        if !moving
                            && self.store.meter_update(d)?.map(|u| u.op).as_deref()
                                == Some(op.id.as_str())
                        {
                            continue;
                        }
                        let device: Eui64 = d
                            .parse()
                            .map_err(|e| ChurnError::Internal(format!("stored meter {d}: {e}")))?;
                        match meter_hw_type(self.store.as_ref(), &device) {
                            Ok(hw_type) => plans.push(Plan {
                                device,
                                hw_type,
                                from: Some(op.from.clone()),
                                to: op.to.clone(),
                                updates: updates.clone(),
                            }),
                            Err(e) => refused.push((d.clone(), e)),
                        }
                    }
                    let signed = self.sign_chunk(&plans)?;
                    if tx.send((plans, signed)).is_err() {
                        // The committer stopped on an error; it is reported below.
                        return Ok(());
                    }
                }
            })();
            drop(tx);
            let committed = committer
                .join()
                .map_err(|_| ChurnError::Internal("the committer thread panicked".into()))??;
            produced.map(|()| committed)
        })?;
        refused.extend(commit_refused);
        Ok((done, refused))
    }

    /// Marks an operation complete.
    pub fn complete(&self, op: &mut OpRecord) -> Result<(), ChurnError> {
        op.state = "complete".into();
        op.completed_at = Some(unix_now());
        self.save_op(op)
    }
}
