//! What the API server needs from the CA: its identity and the Access CA's CRLs at start, a
//! readiness probe over every key it signs with, and CRLs republished on a schedule.

use std::sync::Arc;
use std::time::Duration;

use serde_json::json;

use super::{Actor, Service, ServiceError};
use crate::crl::CrlScope;
use crate::hsm::HsmToken;
use crate::signer::{verify_signature_fast, Signer};
use crate::CaKind;

/// What the server starts with.
#[derive(Debug)]
pub struct ServerStart {
    /// Its TLS identity.
    pub identity: super::ServerIdentity,
    /// Every CRL of the Access CA (DER), for the client-certificate verifier.
    pub access_crls: Vec<Vec<u8>>,
    /// The certificates (DER) of every Access CA generation not revoked: the trust anchors of
    /// client certificates (an account certified before a renewal keeps working).
    pub client_anchors: Vec<Vec<u8>>,
    /// What was published at start (CRLs missing or past half their lifetime).
    pub published: Vec<crate::crl::Published>,
}

/// Whether the HSM can sign now with every key the server uses.
///
/// A probe signs once with every key, so it is not made per request: `/readyz` is public, and
/// a flood of it would take the HSM from real work. [`Readiness::ready_cached`] answers from
/// the last probe while it is younger than the probe interval, and only one probe runs at a
/// time (the others answer from the last result).
#[derive(Debug)]
pub struct Readiness {
    signers: Vec<Arc<dyn Signer>>,
    /// With several tokens, each online key's set: each probe also tries the tokens out of
    /// the rotation, and brings back those that sign correctly again.
    sets: Vec<Arc<crate::SignerSet>>,
    token: Arc<dyn HsmToken>,
    store: Arc<dyn crate::store::Store>,
    /// Whether the last probe reached the store.
    store_reached: std::sync::atomic::AtomicBool,
    interval: Duration,
    last: std::sync::Mutex<Option<(std::time::Instant, bool)>>,
    probing: std::sync::Mutex<()>,
    probes: std::sync::atomic::AtomicU64,
    /// Bumped by [`Readiness::invalidate`]: a probe started before keeps its result to itself.
    generation: std::sync::atomic::AtomicU64,
}

impl Readiness {
    /// Ready = the store answers (one read: a database server that is down or failing over
    /// is not ready), nothing stuck in the HSM past its sign timeout, and every key signs now
    /// with a signature that verifies (a module returning garbage is not ready either). Probes
    /// every time: see [`Readiness::ready_cached`].
    pub fn ready(&self) -> bool {
        const PROBE: &[u8] = b"meterpki readiness probe";
        let reached = self.store.audit_head().is_ok();
        self.store_reached
            .store(reached, std::sync::atomic::Ordering::Release);
        if !reached || self.stuck() {
            return false;
        }
        self.probes
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        for set in &self.sets {
            for token in set.probe(Duration::ZERO) {
                tracing::info!(%token, "a token signs correctly again: back in the rotation");
            }
        }
        self.signers.iter().all(|signer| {
            signer
                .sign(PROBE)
                .is_ok_and(|sig| verify_signature_fast(signer.public_key(), PROBE, &sig).is_ok())
        })
    }

    /// [`Readiness::ready`] made at most once per probe interval (`server.ready_probe_interval_ms`)
    /// and by one caller at a time; a hung HSM ([`Readiness::stuck`]) is seen at once.
    pub fn ready_cached(&self) -> bool {
        if self.stuck() {
            return false;
        }
        let fresh = |last: &Option<(std::time::Instant, bool)>| {
            last.filter(|(at, _)| at.elapsed() < self.interval)
                .map(|(_, ok)| ok)
        };
        if let Some(ok) = fresh(&self.lock_last()) {
            return ok;
        }
        let probing = match self.probing.try_lock() {
            Ok(g) => Some(g),
            // A probe that panicked poisoned the lock; it is free again.
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        };
        match probing {
            Some(_probing) => {
                // Another caller may have probed while this one waited for the lock.
                if let Some(ok) = fresh(&self.lock_last()) {
                    return ok;
                }
                let generation = self.generation.load(std::sync::atomic::Ordering::Acquire);
                let ok = self.ready();
                let mut last = self.lock_last();
                if self.generation.load(std::sync::atomic::Ordering::Acquire) == generation {
                    *last = Some((std::time::Instant::now(), ok));
                }
                ok
            }
            // A probe is running: the last result, or not ready when there is none yet.
            None => self.lock_last().is_some_and(|(_, ok)| ok),
        }
    }

    /// Forgets the last probe (real work just saw the HSM fail): the next
    /// [`Readiness::ready_cached`] probes again.
    pub fn invalidate(&self) {
        let mut last = self.lock_last();
        self.generation
            .fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        *last = None;
    }

    /// Whether the last probe reached the store (when not ready, the store or the HSM is why).
    pub fn store_reached(&self) -> bool {
        self.store_reached
            .load(std::sync::atomic::Ordering::Acquire)
    }

    /// HSM probes made since start.
    pub fn probes(&self) -> u64 {
        self.probes.load(std::sync::atomic::Ordering::Relaxed)
    }

    fn lock_last(&self) -> std::sync::MutexGuard<'_, Option<(std::time::Instant, bool)>> {
        self.last.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// True while a signature has been in the HSM longer than the sign timeout (a hung HSM).
    pub fn stuck(&self) -> bool {
        self.token
            .oldest_sign_in_progress()
            .is_some_and(|d| d > self.token.sign_timeout())
    }

    /// The token's sign timeout.
    pub fn sign_timeout(&self) -> Duration {
        self.token.sign_timeout()
    }

    /// HSM sessions lent out now, and in the pool.
    pub fn sessions(&self) -> (usize, usize) {
        (self.token.sessions_in_use(), self.token.pool_size())
    }

    /// With several tokens (`[[hsm.tokens]]`): each online key and its tokens' states.
    pub fn token_states(&self) -> Vec<(String, Vec<crate::TokenState>)> {
        self.sets
            .iter()
            .map(|s| (s.key().to_string(), s.states()))
            .collect()
    }

    /// With several tokens: a thread that, every probe interval, tries each token out of the
    /// rotation for at least that long and brings back those that sign correctly, whether or
    /// not anyone asks `/readyz`.
    pub fn spawn_token_probes(self: &Arc<Self>) {
        if self.sets.is_empty() {
            return;
        }
        let me = Arc::downgrade(self);
        let interval = self.interval;
        let spawned = std::thread::Builder::new()
            .name("token-probes".into())
            .spawn(move || loop {
                std::thread::sleep(interval);
                let Some(me) = me.upgrade() else { return };
                for set in &me.sets {
                    for token in set.probe(interval) {
                        tracing::info!(key = %set.key(), %token, "a token signs correctly again: back in the rotation");
                    }
                }
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no background token probes: tokens come back when /readyz is asked");
        }
    }
}

impl Service {
    /// The server's start: its identity (key and certificate made on first start), every CRL
    /// that is missing or past half its lifetime published before the first client connects,
    /// and an `api.start` record.
    pub fn start_server(
        &self,
        actor: &Actor,
        listen: &str,
        dns: Vec<String>,
        ips: Vec<std::net::IpAddr>,
    ) -> Result<ServerStart, ServiceError> {
        let identity = self.server_identity(actor, dns.clone(), ips.clone())?;
        let published = self.publish_stale_crls(actor)?;
        self.sync_crls_of(CaKind::Access)?;
        let mut access_crls = Vec::new();
        for id in self.generations(CaKind::Access) {
            let dir = self.crl_dir().join(id.name());
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries {
                let path = entry
                    .map_err(|e| ServiceError::io(format!("reading {}", dir.display()), e))?
                    .path();
                if path.extension().is_some_and(|e| e == "crl") {
                    let der = std::fs::read(&path)
                        .map_err(|e| ServiceError::io(format!("reading {}", path.display()), e))?;
                    // A file that is not a CRL (damaged, or put there by hand) is left out rather
                    // than stopping the server; the store is what client checks rely on.
                    match crate::crl::CrlFacts::parse(&der) {
                        Ok(_) => access_crls.push(der),
                        Err(e) => {
                            tracing::warn!(path = %path.display(), error = %e, "not a CRL: left out of the TLS client verifier")
                        }
                    }
                }
            }
        }
        self.audit()?.append(
            "api.start",
            actor.name(),
            json!({"listen": listen, "dns": dns, "ips": ips}),
        )?;
        use der::Encode;
        let client_anchors = self
            .live_generation_certs(CaKind::Access)?
            .iter()
            .map(|c| c.to_der().map_err(crate::certs::CertError::from))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(ServerStart {
            identity,
            access_crls,
            client_anchors,
            published,
        })
    }

    /// Publishes every CRL of each issuing CA whose set is incomplete, past half its lifetime
    /// (a server that was down for a while) or behind the store's revocations (a crash between
    /// a revocation and its publication).
    pub fn publish_stale_crls(
        &self,
        actor: &Actor,
    ) -> Result<Vec<crate::crl::Published>, ServiceError> {
        let settings = self.crl_settings();
        let now = crate::unix_now();
        let mut published = Vec::new();
        for kind in CaKind::ISSUING {
            if !self.has_ca(kind) {
                continue;
            }
            // Another server of a shared store may have published them.
            self.sync_crls_of(kind)?;
            let mut scopes = crate::crl::all_scopes(&settings, true);
            scopes.dedup();
            let mut stale = false;
            // Every generation: the earlier ones keep publishing for what they issued.
            for id in self.generations(kind) {
                let dir = self.crl_dir().join(id.name());
                let revoked = self.store()?.count_revoked_of_issuer(id)? as usize;
                stale |= scopes.iter().any(|scope| {
                    let facts = crate::crl::CrlFacts::read(&dir.join(scope.file_name(kind))).ok();
                    match facts {
                        // A revocation committed but not published (a crash between the two):
                        // the full CRL lists fewer than the store holds.
                        Some(f) if *scope == CrlScope::Full && f.entries < revoked => true,
                        Some(f) => match f.next_update {
                            Some(next) => now >= f.this_update + (next - f.this_update) / 2,
                            None => true,
                        },
                        None => true,
                    }
                });
            }
            if stale {
                published.extend(self.publish_crls(actor, Some(kind), true, None)?);
            }
        }
        Ok(published)
    }

    /// The readiness probe over `server_key` and every issuing CA's key. The probe's test
    /// signatures use the keys directly, not through the signing metrics' wrapper: they are
    /// not issuance.
    pub fn readiness(&self, server_key: Arc<dyn Signer>) -> Result<Readiness, ServiceError> {
        let token = self.online()?;
        let mut signers = vec![server_key];
        // Every generation's key: the earlier ones still sign their CRLs.
        for kind in CaKind::ISSUING {
            for id in self.generations(kind) {
                signers.push(self.online_signer(&id.key_label())?);
            }
        }
        Ok(Readiness {
            signers,
            sets: self.signer_sets(),
            token,
            store: self.store()?,
            store_reached: std::sync::atomic::AtomicBool::new(true),
            interval: Duration::from_millis(self.config.server.ready_probe_interval_ms),
            last: Default::default(),
            probing: Default::default(),
            probes: Default::default(),
            generation: Default::default(),
        })
    }

    /// Republishes every issuer's CRLs before they reach nextUpdate (at half their lifetime),
    /// for as long as the process runs. A failed publication leaves the previous CRLs in place
    /// and is logged; the next round tries again.
    pub fn spawn_crl_schedule(self: &Arc<Self>) -> Result<(), ServiceError> {
        let every =
            Duration::from_secs((u64::from(self.config.crl.next_update_hours) * 3600 / 2).max(60));
        let service = self.clone();
        std::thread::Builder::new()
            .name("crl-republish".into())
            .spawn(move || loop {
                std::thread::sleep(every);
                if let Err(e) =
                    service.publish_crls(&Actor::System("meterpki-serve"), None, false, None)
                {
                    tracing::error!(error = %e, "scheduled CRL publication failed; the previous CRLs stay in place");
                }
            })
            .map_err(|e| ServiceError::io("starting the CRL schedule", e))?;
        Ok(())
    }
}
