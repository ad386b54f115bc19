//! Publishing CRLs: on demand, after revocations that must be seen at once, and on the
//! server's schedule; every publication audited and the audit head signed after it.

use std::collections::BTreeSet;
use std::path::PathBuf;

use serde_json::json;

use super::{authorize, Action, Actor, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::crl::{all_scopes, scope_of, CrlScope, Published};
use crate::store::Revoked;
use crate::{CaKind, IssuerId};

/// The CRL shards a set of revocations touches: (issuer, shard) of each certificate revoked
/// now (and, with `already`, of those revoked before too).
pub(crate) fn shards_of(revoked: &[Revoked], already: bool) -> BTreeSet<(IssuerId, u32)> {
    revoked
        .iter()
        .filter_map(|r| match r {
            Revoked::Now(rec) => Some((rec.issuer_id(), rec.shard)),
            Revoked::Already(rec, _) if already => Some((rec.issuer_id(), rec.shard)),
            _ => None,
        })
        .collect()
}

/// Above this many CRLs a publication's record summarises them instead of listing each: a
/// thousand shards would otherwise make one record of a hundred kilobytes.
const LISTED_CRLS: usize = 64;

/// The `crl.publish` record's details: every CRL with its number and entries, or for a large
/// publication the count, the numbers' range, the entries in all and the SHA-256 of the full
/// listing (which the published files reproduce).
///
/// With them the store's certificate count when the publication began, and (always listed) the
/// full CRL's number and entries, which is the issuer's revocation count: `status` and
/// `audit verify` hold the store to these (a store's counts never go back).
fn publication_details(
    scheduled: bool,
    certificates: u64,
    published: &[Published],
) -> serde_json::Value {
    let list: Vec<_> = published
        .iter()
        .map(|p| json!({"issuer": p.issuer, "scope": p.scope, "crl_number": p.crl_number, "entries": p.entries}))
        .collect();
    if list.len() <= LISTED_CRLS {
        return json!({"scheduled": scheduled, "store_certificates": certificates, "crls": list});
    }
    let full: Vec<_> = published
        .iter()
        .filter(|p| p.scope == "full")
        .map(|p| json!({"issuer": p.issuer, "scope": p.scope, "crl_number": p.crl_number, "entries": p.entries}))
        .collect();
    let numbers = published.iter().map(|p| p.crl_number);
    let listing = serde_json::to_vec(&list).unwrap_or_default();
    json!({
        "scheduled": scheduled,
        "store_certificates": certificates,
        "crls": full,
        "issuer": published.first().map(|p| p.issuer.as_str()),
        "crl_count": list.len(),
        "crl_number_min": numbers.clone().min(),
        "crl_number_max": numbers.max(),
        "entries": published.iter().map(|p| p.entries).sum::<usize>(),
        "listing_sha256": hex::encode(crate::sha256(&listing)),
    })
}

impl Service {
    /// Publishes the CRLs of every issuing CA (or `only`): every shard, or only `shards` when
    /// given (the full CRL is refreshed with them when it exists), the full CRL too with `full`.
    /// Each issuer's publication commits its cRLNumbers with a `crl.publish` record; the audit
    /// head is signed after.
    pub fn publish_crls(
        &self,
        actor: &Actor,
        only: Option<CaKind>,
        full: bool,
        shards: Option<&BTreeSet<(IssuerId, u32)>>,
    ) -> Result<Vec<Published>, ServiceError> {
        match actor {
            Actor::System(_) => authorize(actor, Action::Republish)?,
            _ => authorize(actor, Action::Administer)?,
        }
        let settings = self.crl_settings();
        let audit = self.audit()?;
        let certificates = self.store()?.cert_count()?;
        let mut published = Vec::new();
        for issuer in self.issuers(only)? {
            let id = issuer.id();
            let scopes: Vec<CrlScope> = match shards {
                None => all_scopes(&settings, full),
                Some(set) => {
                    let mut s: Vec<CrlScope> = set
                        .iter()
                        .filter(|(k, _)| *k == id)
                        .map(|(_, shard)| scope_of(&settings, *shard))
                        .collect();
                    s.dedup();
                    s
                }
            };
            if scopes.is_empty() {
                continue;
            }
            let dir = self.crl_dir().join(id.name());
            published.extend(crate::crl::publish(
                &issuer,
                &audit,
                &settings,
                &scopes,
                &dir,
                &|p| {
                    AuditEntry::new(
                        "crl.publish",
                        actor.name(),
                        publication_details(matches!(actor, Actor::System(_)), certificates, p),
                    )
                },
            )?);
        }
        Ok(published)
    }

    /// The published CRL file `<issuer>/<name>` (`3.crl`, `full.crl`, `root/arl.crl`), when the
    /// name is one this home publishes; never a path outside `<home>/crl`.
    pub fn crl_file(&self, issuer: &str, name: &str) -> Option<PathBuf> {
        let id = IssuerId::parse(issuer)?;
        let stem = name.strip_suffix(".crl")?;
        let ok = if id.kind == CaKind::Root {
            stem == "arl"
        } else {
            stem == "full"
                || (!stem.is_empty() && stem.len() <= 5 && stem.chars().all(|c| c.is_ascii_digit()))
        };
        ok.then(|| self.crl_dir().join(id.name()).join(format!("{stem}.crl")))
    }

    /// For a shared store: brings this machine's copy of the published CRL at `path` (a
    /// [`Service::crl_file`] path) up to the one in the store, which any server may have
    /// published. The store is asked at most once a second per CRL (one small read); a newer
    /// CRL is fetched once and written in place of the file. An embedded store's files are the
    /// publication itself: nothing to do.
    pub fn sync_crl(&self, path: &std::path::Path) -> Result<(), ServiceError> {
        if !self.audit_in_store() {
            return Ok(());
        }
        let Some(id) = path
            .parent()
            .and_then(|d| d.file_name())
            .and_then(|n| IssuerId::parse(&n.to_string_lossy()))
        else {
            return Ok(());
        };
        let name = crate::crl::stored_name(id, path);
        let mut synced = self.crl_synced.lock().unwrap_or_else(|p| p.into_inner());
        let now = std::time::Instant::now();
        let known = match synced.get(&name) {
            Some((_, at)) if now.duration_since(*at) < std::time::Duration::from_secs(1) => {
                return Ok(())
            }
            Some((n, _)) => Some(*n),
            None => None,
        };
        let store = self.store()?;
        let Some(number) = store.published_crl(&name)?.map(|c| c.number) else {
            return Ok(());
        };
        if known == Some(number) {
            synced.insert(name, (number, now));
            return Ok(());
        }
        let local = crate::crl::CrlFacts::read(path).ok().map(|f| f.crl_number);
        if local.is_some_and(|l| l >= number) {
            synced.insert(name, (local.unwrap_or(number), now));
            return Ok(());
        }
        if let Some(number) = crate::crl::fetch_published(store.as_ref(), &name, path)? {
            synced.insert(name, (number, now));
        }
        Ok(())
    }

    /// Every CRL file of `kind` this home publishes, each brought up to the shared store's
    /// (see [`Service::sync_crl`]).
    pub(crate) fn sync_crls_of(&self, kind: CaKind) -> Result<(), ServiceError> {
        if !self.audit_in_store() {
            return Ok(());
        }
        let settings = self.crl_settings();
        let mut scopes = all_scopes(&settings, true);
        scopes.dedup();
        if kind == CaKind::Root {
            scopes = vec![CrlScope::Full];
        }
        for id in self.generations(kind) {
            for scope in &scopes {
                self.sync_crl(&self.crl_dir().join(id.name()).join(scope.file_name(kind)))?;
            }
        }
        Ok(())
    }

    /// A CA certificate file for relying parties: `root.pem`, `device.der`, ... (PEM or DER
    /// by the extension), an earlier generation's (`device-1.pem`, `root-1.der`), the last
    /// rollover's link certificates (`new-with-old.pem`, `old-with-new.pem`), or None for any
    /// other name.
    pub fn ca_cert_file(&self, name: &str) -> Option<(PathBuf, bool)> {
        let (stem, pem) = match name.rsplit_once('.')? {
            (stem, "pem") => (stem, true),
            (stem, "der" | "crt" | "cer") => (stem, false),
            _ => return None,
        };
        // The link certificates of the last root rollover.
        if matches!(stem, "new-with-old" | "old-with-new") {
            return Some((self.home.ca_links_dir().join(format!("{stem}.pem")), pem));
        }
        if let Some(kind) = CaKind::from_name(stem).filter(|k| k.name() == stem) {
            return Some((self.home.ca_cert(kind), pem));
        }
        // An earlier generation, kept for relying parties: `device-1`, `root-2`.
        let (kind, n) = stem.rsplit_once('-')?;
        let kind = CaKind::from_name(kind).filter(|k| k.name() == kind)?;
        let number: u32 = n.parse().ok().filter(|n| *n >= 1)?;
        let id = IssuerId::new(kind, number);
        // One name per file: `device-1`, never `device-01` or `device-+1`.
        (number.to_string() == n && self.generations(kind).contains(&id))
            .then(|| (self.generation_cert_path(id), pem))
    }
}
