//! Sharded CRLs (docs/design.md#revocation-and-crls): X.509 v2 CRLs (RFC 5280 §5), one per
//! shard of each issuer, each with a critical issuingDistributionPoint naming the URL its
//! certificates carry, an authorityKeyIdentifier and a cRLNumber that only grows; plus a full
//! CRL on request. Signed in the HSM through the same [`Signer`](crate::Signer) as
//! certificates and verified before they are written.
//!
//! A publication signs every CRL it makes into a temporary file, then commits the new cRLNumbers
//! with its audit record in one store write, then renames the files into place: a failed
//! signature or audit record consumes no number and changes no file; a crash after the commit
//! leaves the old files, and the next publication uses greater numbers.

mod build;
mod facts;

use std::path::{Path, PathBuf};
use std::sync::Mutex;

use serde::Serialize;

pub use build::build_crl;
pub use facts::{CrlFacts, CrlFactsError};

use crate::audit::{AuditEntry, AuditLog};
use crate::fsutil::StagedFile;
use crate::issue::{CrlSettings, IssuerCtx};
use crate::model::Revocation;
use crate::store::{ApplyError, Op, PublishedCrl, Store, StoreError, Txn};
use crate::{CaKind, IssuerId};

/// Which CRL.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CrlScope {
    /// One shard: the certificates bound to it at issuance.
    Shard(u32),
    /// Every certificate of the issuer, no issuingDistributionPoint.
    Full,
}

impl CrlScope {
    /// `3` or `full`: the counter's name.
    pub fn name(self) -> String {
        match self {
            CrlScope::Shard(n) => n.to_string(),
            CrlScope::Full => "full".into(),
        }
    }

    /// The file's name under `<home>/crl/<issuer>/`: `3.crl`, `full.crl`, and the root's one
    /// CRL, its ARL, `arl.crl`.
    pub fn file_name(self, issuer: CaKind) -> String {
        match (issuer, self) {
            (CaKind::Root, _) => "arl.crl".into(),
            (_, s) => format!("{}.crl", s.name()),
        }
    }
}

/// Why a CRL could not be published. Nothing was written and no cRLNumber consumed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum CrlError {
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The audit record could not be written: nothing was published.
    #[error("the audit record could not be written, so nothing was published: {0}")]
    Audit(#[from] crate::audit::AuditError),
    /// The HSM could not sign.
    #[error("signing the CRL: {0}")]
    Sign(#[from] crate::signer::SignError),
    /// The HSM's signature does not verify.
    #[error("the HSM's signature on the CRL does not verify with the issuer's key: {0}")]
    Verify(String),
    /// Encoding failed.
    #[error("DER: {0}")]
    Der(#[from] der::Error),
    /// Writing failed.
    #[error("writing {path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// Sharded CRLs need the URL certificates point at.
    #[error("sharded CRLs need crl.base_url (certificates name <base_url>/<issuer>/<shard>.crl); with no base URL only the full CRL is published")]
    NoBaseUrl,
    /// `crl.base_url` changed after certificates were issued naming the old one.
    #[error("crl.base_url is {configured:?} in meterpki.toml, but this home's certificates already name their CRLs under {bound:?}, and a certificate's CRL location never changes: relying parties fetch its CRL there for the certificate's whole life. Set crl.base_url = {bound:?} again and make that URL reach the server's plain-HTTP CRL listener (server.crl_listen) or a copy of <home>/crl; choose the base URL of a new home before its root ceremony")]
    BaseUrlChanged {
        /// The URL certificates name.
        bound: String,
        /// The URL configured now.
        configured: String,
    },
    /// The shard count changed after certificates were bound to shards.
    #[error("crl.shards is {configured} in meterpki.toml, but certificates are bound to {stored} shards; set crl.shards = {stored} again")]
    ShardsChanged {
        /// Shards certificates were issued with.
        stored: u64,
        /// Shards configured now.
        configured: u32,
    },
}

/// What one publication wrote.
#[derive(Debug, Clone, Serialize, serde::Deserialize)]
pub struct Published {
    /// Issuer name.
    pub issuer: String,
    /// Shard number or `full`.
    pub scope: String,
    /// The file written.
    pub path: PathBuf,
    /// Its cRLNumber.
    pub crl_number: u64,
    /// Revoked certificates listed.
    pub entries: usize,
    /// DER size.
    pub bytes: usize,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds.
    pub next_update: i64,
}

const SHARDS_KEY: &str = "crl.shards";
const BASE_URL_KEY: &str = "crl.base_url";

/// One publication at a time in this process: two (an API revocation's and the schedule's) that
/// overlapped could read the same cRLNumber, and the one committing second would be refused
/// after signing; or rename their files in the opposite order to their numbers. Publications
/// from other processes are ordered by the store's counters (a stale number is refused).
static PUBLISHING: Mutex<()> = Mutex::new(());

/// Serial numbers and their revocations, as the store reads them.
type Page = Vec<(Vec<u8>, Revocation)>;

/// Revocations read from the store at a time for a full CRL.
const FULL_CRL_PAGE: usize = 10_000;

/// The size of the parts a shared store keeps a published CRL in.
const PART_BYTES: u64 = 1 << 20;

impl From<ApplyError> for CrlError {
    fn from(e: ApplyError) -> CrlError {
        match e {
            ApplyError::Store(e) => CrlError::Store(e),
            ApplyError::Audit(e) => CrlError::Audit(e),
        }
    }
}

/// Binds the store to the configured shard count and CRL base URL the first time, and refuses
/// a change later: every certificate names its shard's URL, so neither moves once
/// certificates exist.
pub fn check_shards(store: &dyn Store, settings: &CrlSettings) -> Result<(), CrlError> {
    let configured = settings.base_url.clone().unwrap_or_default();
    match store.setting_text(BASE_URL_KEY)? {
        Some(bound) if bound != configured => {
            return Err(CrlError::BaseUrlChanged { bound, configured })
        }
        Some(_) => {}
        None => {
            store.apply(
                Txn::new().with(Op::BindText {
                    name: BASE_URL_KEY.into(),
                    value: configured,
                }),
                None,
            )?;
        }
    }
    match store.counter(SHARDS_KEY)? {
        Some(n) if n != u64::from(settings.shards) => Err(CrlError::ShardsChanged {
            stored: n,
            configured: settings.shards,
        }),
        Some(_) => Ok(()),
        None => {
            let bind = Txn::new().with(Op::BindSetting {
                name: SHARDS_KEY.into(),
                value: u64::from(settings.shards),
            });
            store.apply(bind, None)?;
            Ok(())
        }
    }
}

fn counter_key(issuer: IssuerId, scope: CrlScope) -> String {
    format!("crl.number/{}/{}", issuer.name(), scope.name())
}

/// The last cRLNumber published for a scope (0: none yet).
pub fn last_number(store: &dyn Store, issuer: IssuerId, scope: CrlScope) -> Result<u64, CrlError> {
    Ok(store.counter(&counter_key(issuer, scope))?.unwrap_or(0))
}

/// The shard's URL (the certificates' cRLDistributionPoints and the CRL's IDP).
pub fn shard_url(settings: &CrlSettings, issuer: IssuerId, shard: u32) -> Option<String> {
    settings.url(&issuer.name(), shard)
}

/// The scopes a publication of every CRL covers: each shard (when certificates point at
/// shards), and the full CRL when asked or when there are no shards.
pub fn all_scopes(settings: &CrlSettings, full: bool) -> Vec<CrlScope> {
    let mut out = Vec::new();
    if settings.base_url.is_some() {
        out.extend((0..settings.shards).map(CrlScope::Shard));
    }
    if full || settings.base_url.is_none() {
        out.push(CrlScope::Full);
    }
    out
}

/// The scope that lists a certificate bound to `shard`: the shard, or the full CRL when
/// certificates carry no pointer.
pub fn scope_of(settings: &CrlSettings, shard: u32) -> CrlScope {
    if settings.base_url.is_some() {
        CrlScope::Shard(shard)
    } else {
        CrlScope::Full
    }
}

/// Publishes the CRLs of `issuer` for `scopes` to `dir/<scope>.crl`, each written as a stream
/// (memory bounded by a shard's revocations, see `build.rs`): each built, signed and verified
/// into a temporary file; then the cRLNumbers committed
/// with the audit record `describe` makes of them; then the files renamed into place. Every
/// publication also refreshes the full CRL, so it never lags; the root publishes its ARL.
pub fn publish(
    issuer: &IssuerCtx,
    audit: &AuditLog,
    settings: &CrlSettings,
    scopes: &[CrlScope],
    dir: &Path,
    describe: &dyn Fn(&[Published]) -> AuditEntry,
) -> Result<Vec<Published>, CrlError> {
    let store = audit
        .store()
        .ok_or_else(|| CrlError::Audit(crate::audit::AuditError::ReadOnly(audit.path().into())))?;
    let id = issuer.id();
    let kind = id.kind;
    // Certificates name their shard: a changed shard count is refused before anything is built.
    check_shards(store.as_ref(), settings)?;
    let _one_at_a_time = PUBLISHING.lock().unwrap_or_else(|e| e.into_inner());
    // And one publisher among every server sharing the store: the numbers read below are then
    // the last ones committed.
    let _lease = store.lease("crl.publish")?;
    std::fs::create_dir_all(dir).map_err(|source| CrlError::Io {
        path: dir.to_path_buf(),
        source,
    })?;
    let mut scopes = scopes.to_vec();
    if kind == CaKind::Root {
        // The root publishes one CRL, of every certificate it issued: its ARL.
        scopes = vec![CrlScope::Full];
    } else if !scopes.contains(&CrlScope::Full) {
        // The full CRL is refreshed with every shard, so that it never lags behind them.
        scopes.push(CrlScope::Full);
    }
    let now = crate::unix_now();
    let mut staged = Vec::with_capacity(scopes.len());
    let mut published = Vec::with_capacity(scopes.len());
    let mut txn = Txn::new();
    for scope in scopes {
        let number = last_number(store.as_ref(), id, scope)? + 1;
        let path = dir.join(scope.file_name(kind));
        let io = |source| CrlError::Io {
            path: path.clone(),
            source,
        };
        // A shard is read whole (its size is what the shard count bounds); the full CRL a
        // page at a time, so that memory stays bounded by a shard whatever its size.
        let mut shard = match scope {
            CrlScope::Shard(s) => Some(store.revoked_in_shard(id, s)?),
            CrlScope::Full => None,
        };
        let mut cursor: Option<Vec<u8>> = None;
        let mut done = false;
        let mut pages = || -> Result<Option<Page>, CrlError> {
            if scope != CrlScope::Full {
                return Ok(shard.take());
            }
            if done {
                return Ok(None);
            }
            let page = store.revoked_of_issuer(id, cursor.as_deref(), FULL_CRL_PAGE)?;
            cursor = page.next;
            done = cursor.is_none();
            Ok(Some(page.entries))
        };
        let (file, f) = StagedFile::create(&path, 0o600).map_err(io)?;
        let mut w = std::io::BufWriter::with_capacity(1 << 16, f);
        let written = build::write_crl(
            issuer, settings, scope, number, now, &mut pages, dir, &path, &mut w,
        )?;
        w.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        staged.push(file);
        txn.push(Op::AdvanceCounter {
            name: counter_key(id, scope),
            to: number,
        });
        published.push(Published {
            issuer: id.name(),
            scope: scope.name(),
            path,
            crl_number: number,
            entries: written.entries,
            bytes: written.bytes as usize,
            this_update: now,
            next_update: now + settings.lifetime_secs(kind),
        });
    }
    audit.commit(txn, |_| Some(describe(&published)))?;
    crate::failpoint("crl.before-rename");
    StagedFile::commit_all(staged).map_err(|(path, source)| CrlError::Io { path, source })?;
    if store.is_shared() {
        // Every server of a shared store serves these: each CRL goes into the store too, a
        // part at a time from its file (so that memory stays bounded by a part), while the
        // lease is still held. A crash before this leaves the store's copies older than the
        // counters, which the next publication (a starting server's, at the latest) replaces.
        for p in &published {
            store_published(
                store.as_ref(),
                &stored_name(id, &p.path),
                p.crl_number,
                &p.path,
            )?;
        }
    }
    Ok(published)
}

/// The name a published CRL is kept under in a shared store: `<issuer>/<file>`.
pub fn stored_name(issuer: IssuerId, file: &Path) -> String {
    format!(
        "{}/{}",
        issuer.name(),
        file.file_name()
            .map(|f| f.to_string_lossy().into_owned())
            .unwrap_or_default()
    )
}

/// Puts the CRL file at `path` into a shared store as version `number` of `name`, a part at a
/// time, then makes it the version every server reads (unless the store has a newer one).
pub(crate) fn store_published(
    store: &dyn Store,
    name: &str,
    number: u64,
    path: &Path,
) -> Result<(), CrlError> {
    use sha2::Digest;
    use std::io::Read;
    if store
        .published_crl(name)?
        .is_some_and(|c| c.number >= number)
    {
        return Ok(());
    }
    let io = |source| CrlError::Io {
        path: path.to_path_buf(),
        source,
    };
    let mut file = std::fs::File::open(path).map_err(io)?;
    let mut hasher = sha2::Sha256::new();
    let (mut len, mut parts) = (0u64, 0u32);
    let mut part = Vec::with_capacity(PART_BYTES as usize);
    loop {
        part.clear();
        (&mut file)
            .take(PART_BYTES)
            .read_to_end(&mut part)
            .map_err(io)?;
        if part.is_empty() {
            break;
        }
        hasher.update(&part);
        store.put_published_crl_part(name, number, parts, &part)?;
        len += part.len() as u64;
        parts += 1;
    }
    // False when a newer version got there first: these parts are then removed by the next
    // publication of this CRL.
    store.put_published_crl(
        name,
        &PublishedCrl {
            number,
            sha256: hasher.finalize().into(),
            len,
            parts,
        },
    )?;
    Ok(())
}

/// Writes the version of the published CRL `name` a shared store holds to `path` (through a
/// temporary file renamed into place), a part at a time; its cRLNumber, or None when the store
/// has none. A version replaced while it is read is read again as the newer one.
pub fn fetch_published(
    store: &dyn Store,
    name: &str,
    path: &Path,
) -> Result<Option<u64>, CrlError> {
    use sha2::Digest;
    use std::io::Write;
    let io = |source| CrlError::Io {
        path: path.to_path_buf(),
        source,
    };
    for _ in 0..3 {
        let Some(crl) = store.published_crl(name)? else {
            return Ok(None);
        };
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(io)?;
        }
        let (staged, file) = StagedFile::create(path, 0o600).map_err(io)?;
        let mut w = std::io::BufWriter::new(file);
        let mut hasher = sha2::Sha256::new();
        let mut len = 0u64;
        let mut complete = true;
        for index in 0..crl.parts {
            let Some(part) = store.published_crl_part(name, crl.number, index)? else {
                // Two newer versions replaced this one while it was read (the one replaced
                // last keeps its parts), or the store lost a part: told apart below.
                complete = false;
                break;
            };
            hasher.update(&part);
            len += part.len() as u64;
            w.write_all(&part).map_err(io)?;
        }
        if !complete {
            if store.published_crl(name)?.map(|c| c.number) == Some(crl.number) {
                return Err(StoreError::corrupt(
                    format!("the published CRL {name}"),
                    format!("part missing from cRLNumber {}", crl.number),
                )
                .into());
            }
            continue;
        }
        if len != crl.len || <[u8; 32]>::from(hasher.finalize()) != crl.sha256 {
            return Err(StoreError::corrupt(
                format!("the published CRL {name}"),
                "its parts do not add up to its length and SHA-256",
            )
            .into());
        }
        w.into_inner()
            .map_err(|e| io(e.into_error()))?
            .sync_all()
            .map_err(io)?;
        staged.commit().map_err(io)?;
        return Ok(Some(crl.number));
    }
    // Replaced three times while being read: the next call reads the newest.
    Ok(None)
}
