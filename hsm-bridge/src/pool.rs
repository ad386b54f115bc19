//! A logged-in token and its pool of sessions.
//!
//! cryptoki's `Session` is `Send` but not `Sync`, so each worker borrows a whole session for the
//! duration of one operation. Private key handles are looked up once per session (a
//! `C_FindObjects` costs about as much as a signature) and cached with it.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

/// How long one signature may take by default before it counts as a failure.
pub const DEFAULT_SIGN_TIMEOUT: Duration = Duration::from_secs(10);

use ca_core::{spki_from_point, KeyAlgorithm};
use cryptoki::context::Function;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use der::{Decode, Encode};
use secrecy::SecretString;

use crate::error::{module_not_initialised, session_is_dead, HsmError};
use ca_core::hsm::{KeyInfo, KeyProtection, ObjectSummary};

use crate::module::{list_objects, Hsm};
use crate::signer::HsmSigner;

/// One session and the key handles found through it.
pub(crate) struct PooledSession {
    pub(crate) session: Session,
    keys: HashMap<String, CachedKey>,
    /// Set when the session answered too slowly: it is discarded rather than reused.
    poisoned: bool,
}

impl PooledSession {
    /// The private key labelled `label`, as this session's own session-object copy when the
    /// token allows it (see [`session_copy`]). The token object is looked up once, and again at
    /// most every [`KEY_RECHECK`] while the copy is used: a key destroyed in the token (by this
    /// process or another) stops being used within that time, and a key re-created under the
    /// same label is copied afresh.
    pub(crate) fn private_key(&mut self, label: &str) -> Result<Option<ObjectHandle>, CkError> {
        if let Some(k) = self.keys.get(label) {
            if k.checked.elapsed() < KEY_RECHECK {
                return Ok(Some(k.handle));
            }
        }
        let found = self.session.find_objects(&[
            Attribute::Token(true),
            Attribute::Class(ObjectClass::PRIVATE_KEY),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?;
        let token_object = found.first().copied();
        // The key's CKA_ID as well as its handle: a token may give a re-created key the handle
        // number of the one it replaced.
        let id = match token_object {
            Some(h) => object_id(&self.session, h)?,
            None => None,
        };
        if let Some(k) = self.keys.remove(label) {
            if Some(k.token_object) == token_object && k.id == id {
                self.keys.insert(
                    label.to_string(),
                    CachedKey {
                        checked: Instant::now(),
                        ..k
                    },
                );
                return Ok(Some(k.handle));
            }
            // Gone or replaced: the copy of the old key is not used again.
            k.discard(&self.session);
        }
        match token_object {
            Some(h) => {
                let handle = session_copy(&self.session, h);
                self.keys.insert(
                    label.to_string(),
                    CachedKey {
                        handle,
                        token_object: h,
                        id,
                        checked: Instant::now(),
                    },
                );
                Ok(Some(handle))
            }
            None => Ok(None),
        }
    }

    /// Forgets (and destroys, if a copy) the key labelled `label`.
    fn forget_key(&mut self, label: &str) {
        if let Some(k) = self.keys.remove(label) {
            k.discard(&self.session);
        }
    }
}

/// How long a session signs with its copy of a key before checking that the token object is
/// still there (one `C_FindObjects`, negligible at this interval).
pub const KEY_RECHECK: Duration = Duration::from_secs(1);

/// A key a session signs with: its handle (the session copy, or the token object when the
/// token refused a copy), the token object it came from, and when that was last checked.
pub(crate) struct CachedKey {
    handle: ObjectHandle,
    token_object: ObjectHandle,
    id: Option<Vec<u8>>,
    checked: Instant,
}

impl CachedKey {
    /// Destroys the session copy (a failure only means it is already gone); a token object
    /// used directly is left alone.
    fn discard(self, session: &Session) {
        if self.handle != self.token_object {
            let _ = session.destroy_object(self.handle);
        }
    }
}

/// An object's CKA_ID, if it has one.
fn object_id(session: &Session, h: ObjectHandle) -> Result<Option<Vec<u8>>, CkError> {
    Ok(session
        .get_attributes(h, &[AttributeType::Id])?
        .into_iter()
        .find_map(|a| match a {
            Attribute::Id(v) => Some(v),
            _ => None,
        }))
}

/// A copy of the token key `key` as a session object of `session`, or `key` itself when the
/// token refuses the copy (`CKA_COPYABLE` false, `C_CopyObject` unsupported).
///
/// Why: SoftHSM re-reads a token object's file (open, lock, read, close) for every attribute
/// it consults, several times per `C_SignInit`, while a session object lives in its memory;
/// signing with a session copy measured 25,400 -> 38,200 signatures/s on 2 sessions (SoftHSM
/// 2.6.1, this project's 2-core machine). The copy stays inside the token: only `CKA_TOKEN`
/// changes, and a copy cannot relax `CKA_SENSITIVE` or `CKA_EXTRACTABLE` (PKCS#11 v2.40
/// §4.1.1, §10.9); it is destroyed when its session closes (or the application logs out, as
/// every private session object is), and a stale handle is looked up and copied again.
pub(crate) fn session_copy(session: &Session, key: ObjectHandle) -> ObjectHandle {
    match session.copy_object(key, &[Attribute::Token(false)]) {
        Ok(copy) => copy,
        Err(e) => {
            tracing::debug!(error = %e, "the token refused a session copy of a key; signing with the token object");
            key
        }
    }
}

impl PooledSession {
    /// A private key that cannot be found is either gone or hidden because the application was
    /// logged out (private objects are invisible to a public session): tell the two apart, so
    /// that a logout leads to a fresh, logged-in session rather than a false "no such key".
    fn why_missing(&self) -> CkError {
        use cryptoki::session::SessionState;
        match self.session.get_session_info() {
            Ok(info)
                if matches!(
                    info.session_state(),
                    SessionState::RoPublic | SessionState::RwPublic
                ) =>
            {
                CkError::Pkcs11(RvError::UserNotLoggedIn, Function::SignInit)
            }
            Ok(_) => CkError::Pkcs11(RvError::KeyHandleInvalid, Function::SignInit),
            Err(e) => e,
        }
    }
}

struct PoolState {
    idle: Vec<PooledSession>,
    open: usize,
}

/// A token, logged in, with a pool of sessions.
pub struct Token {
    hsm: Hsm,
    label: String,
    pin: SecretString,
    size: usize,
    state: Mutex<PoolState>,
    available: Condvar,
    /// A signature slower than this is an error (the HSM hung or is failing).
    sign_timeout: Mutex<Duration>,
    /// Start times of the signatures in progress, by ticket.
    in_flight: Mutex<HashMap<u64, Instant>>,
    next_ticket: std::sync::atomic::AtomicU64,
}

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Token")
            .field("label", &self.label)
            .field("pin", &"[secret elided]")
            .field("sessions", &self.size)
            .finish()
    }
}

impl Token {
    pub(crate) fn open(
        hsm: Hsm,
        label: &str,
        pin: SecretString,
        size: usize,
    ) -> Result<Arc<Token>, HsmError> {
        let token = Arc::new(Token {
            hsm,
            label: label.to_string(),
            pin,
            size: size.max(1),
            state: Mutex::new(PoolState {
                idle: Vec::new(),
                open: 0,
            }),
            available: Condvar::new(),
            sign_timeout: Mutex::new(DEFAULT_SIGN_TIMEOUT),
            in_flight: Mutex::new(HashMap::new()),
            next_ticket: std::sync::atomic::AtomicU64::new(0),
        });
        // Open and log in one session now, so a wrong PIN or a missing token fails here.
        let first = token.new_session()?;
        {
            let mut st = token.lock();
            st.open = 1;
            st.idle.push(first);
        }
        Ok(token)
    }

    /// Sets how long one signature may take before it counts as a failure (default 10 s).
    pub fn set_sign_timeout(&self, limit: Duration) {
        *self.sign_timeout.lock().unwrap_or_else(|p| p.into_inner()) = limit;
    }

    /// How long one signature may take.
    pub fn sign_timeout(&self) -> Duration {
        *self.sign_timeout.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long the oldest signature still in progress has been waiting for the HSM: a hung
    /// `C_Sign` shows here (a watchdog can act on it) while its thread is stuck in the module.
    pub fn oldest_sign_in_progress(&self) -> Option<Duration> {
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .min()
            .map(Instant::elapsed)
    }

    /// The token's label.
    pub fn label(&self) -> &str {
        &self.label
    }

    /// The module this token lives in.
    pub fn hsm(&self) -> &Hsm {
        &self.hsm
    }

    /// Sessions the pool may open.
    pub fn pool_size(&self) -> usize {
        self.size
    }

    /// Sessions currently open (idle or in use).
    pub fn sessions_open(&self) -> usize {
        self.lock().open
    }

    /// Sessions currently lent to a caller.
    pub fn sessions_in_use(&self) -> usize {
        let st = self.lock();
        st.open - st.idle.len()
    }

    fn lock(&self) -> MutexGuard<'_, PoolState> {
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn new_session(&self) -> Result<PooledSession, HsmError> {
        // Looked up and logged in to under the exclusive token lock: no other process of the
        // home reads the token while this login rewrites it (see `Hsm::with_token_lock`).
        let _lock = self.hsm.token_lock(true)?;
        let slot = self.hsm.find_token_once(&self.label)?;
        let session =
            self.hsm.pkcs11().open_rw_session(slot).map_err(|e| {
                HsmError::from_ck(e, format!("opening a session on {:?}", self.label))
            })?;
        match session.login(UserType::User, Some(&self.pin)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(HsmError::PinIncorrect {
                    label: self.label.clone(),
                })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(HsmError::PinLocked {
                    label: self.label.clone(),
                })
            }
            Err(e) => {
                return Err(HsmError::from_ck(
                    e,
                    format!("logging in to {:?}", self.label),
                ))
            }
        }
        Ok(PooledSession {
            session,
            keys: HashMap::new(),
            poisoned: false,
        })
    }

    fn checkout(&self) -> Result<PooledSession, HsmError> {
        let mut st = self.lock();
        loop {
            if let Some(s) = st.idle.pop() {
                return Ok(s);
            }
            if st.open < self.size {
                st.open += 1;
                drop(st);
                return match self.new_session() {
                    Ok(s) => Ok(s),
                    Err(e) => {
                        let mut st = self.lock();
                        st.open -= 1;
                        self.available.notify_one();
                        Err(e)
                    }
                };
            }
            st = self.available.wait(st).unwrap_or_else(|p| p.into_inner());
        }
    }

    fn checkin(&self, s: PooledSession) {
        self.lock().idle.push(s);
        self.available.notify_one();
    }

    /// Drops a dead session without calling `C_CloseSession` on its stale handle: after a module
    /// re-initialisation that handle number may belong to a live session of someone else.
    fn discard(&self, s: PooledSession) {
        std::mem::forget(s.session);
        let mut st = self.lock();
        st.open -= 1;
        self.available.notify_one();
    }

    /// Runs `f` on a pooled session. When the session turns out dead (closed, token removed,
    /// module re-initialised, logged out), it is thrown away, a fresh one is opened and logged
    /// in, and `f` runs once more; every later call gets a healthy session.
    pub(crate) fn with_session<T>(
        &self,
        what: &str,
        mut f: impl FnMut(&mut PooledSession) -> Result<T, CkError>,
    ) -> Result<T, HsmError> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut s = self.checkout()?;
            match f(&mut s) {
                Ok(_) if s.poisoned => {
                    tracing::warn!(token = %self.label, "HSM session answered too slowly; replacing it");
                    self.discard(s);
                    return Err(HsmError::Timeout {
                        label: self.label.clone(),
                        elapsed_ms: 0,
                        limit_ms: self.sign_timeout().as_millis(),
                    });
                }
                Ok(v) => {
                    self.checkin(s);
                    return Ok(v);
                }
                Err(e) if session_is_dead(&e) => {
                    tracing::warn!(token = %self.label, error = %HsmError::from_ck(e.clone_lossy(), what), "HSM session lost; replacing it");
                    self.discard(s);
                    if module_not_initialised(&e) {
                        self.hsm.initialize()?;
                    }
                    if attempt >= 2 {
                        return Err(HsmError::from_ck(e, what));
                    }
                }
                Err(e) => {
                    self.checkin(s);
                    return Err(HsmError::from_ck(e, what));
                }
            }
        }
    }

    /// Generates an EC key pair inside the token: `CKA_TOKEN`, `CKA_SENSITIVE`, not
    /// `CKA_EXTRACTABLE`, label and a random 8-byte id set on both halves.
    pub fn generate_ec_key(&self, label: &str, alg: KeyAlgorithm) -> Result<KeyInfo, HsmError> {
        self.generate_ec_key_as(label, alg, KeyProtection::NeverExtractable)
    }

    /// [`Token::generate_ec_key`] with the home's protection: never extractable, or (a home
    /// with key backup) extractable only by wrapping with a `CKA_TRUSTED` key
    /// (`CKA_WRAP_WITH_TRUSTED`), which only the token's security officer can create.
    pub fn generate_ec_key_as(
        &self,
        label: &str,
        alg: KeyAlgorithm,
        protection: KeyProtection,
    ) -> Result<KeyInfo, HsmError> {
        let backup = protection == KeyProtection::TrustedWrapOnly;
        if self.find_key(label)?.is_some() {
            return Err(HsmError::KeyExists {
                label: label.into(),
                token: self.label.clone(),
            });
        }
        let params = alg.curve_oid().to_der().map_err(|e| HsmError::Unexpected {
            token: self.label.clone(),
            detail: format!("encoding curve: {e}"),
        })?;
        let what = format!("generating {} key {label:?}", alg.name());
        let (_, public) = self.with_session(&what, |s| {
            let id = s.session.generate_random_vec(8)?;
            let mut public_tpl = public_key_template(label, &id);
            public_tpl.push(Attribute::EcParams(params.clone()));
            let private_tpl = private_key_template(label, &id, backup);
            let (public, private) = s.session.generate_key_pair(
                &Mechanism::EccKeyPairGen,
                &public_tpl,
                &private_tpl,
            )?;
            // Not cached here: the first signature looks it up and makes the session's copy.
            s.keys.remove(label);
            Ok((private, public))
        })?;
        self.key_info_of(public, label)
    }

    pub(crate) fn key_info_of(
        &self,
        public: ObjectHandle,
        label: &str,
    ) -> Result<KeyInfo, HsmError> {
        let attrs = self.with_session("reading a public key", |s| {
            s.session.get_attributes(
                public,
                &[
                    AttributeType::EcParams,
                    AttributeType::EcPoint,
                    AttributeType::Id,
                ],
            )
        })?;
        let unexpected = |detail: String| HsmError::Unexpected {
            token: self.label.clone(),
            detail: format!("key {label:?}: {detail}"),
        };
        let (mut params, mut point, mut id) = (None, None, Vec::new());
        for a in attrs {
            match a {
                Attribute::EcParams(p) => params = Some(p),
                Attribute::EcPoint(p) => point = Some(p),
                Attribute::Id(i) => id = i,
                _ => {}
            }
        }
        let params = params.ok_or_else(|| unexpected("no CKA_EC_PARAMS".into()))?;
        let curve = const_oid::ObjectIdentifier::from_der(&params)
            .map_err(|e| unexpected(format!("CKA_EC_PARAMS is not a named curve: {e}")))?;
        let alg = [KeyAlgorithm::EcP256, KeyAlgorithm::EcP384]
            .into_iter()
            .find(|a| a.curve_oid() == curve)
            .ok_or_else(|| unexpected(format!("unsupported curve {curve}")))?;
        let point = point.ok_or_else(|| unexpected("no CKA_EC_POINT".into()))?;
        let raw = ec_point_bytes(&point, alg).map_err(unexpected)?;
        let spki = spki_from_point(alg, &raw).map_err(|e| unexpected(e.to_string()))?;
        Ok(KeyInfo {
            label: label.to_string(),
            id,
            algorithm: alg,
            spki,
        })
    }

    /// The key pair labelled `label`, found by its public half.
    pub fn find_key(&self, label: &str) -> Result<Option<KeyInfo>, HsmError> {
        let found = self.with_session("finding a public key", |s| {
            s.session.find_objects(&[
                Attribute::Class(ObjectClass::PUBLIC_KEY),
                Attribute::Label(label.as_bytes().to_vec()),
            ])
        })?;
        match found.first() {
            Some(h) => Ok(Some(self.key_info_of(*h, label)?)),
            None => Ok(None),
        }
    }

    /// Destroys both halves of the key pair labelled `label` (used to undo a failed ceremony).
    pub fn destroy_key(&self, label: &str) -> Result<usize, HsmError> {
        let n = self.with_session("destroying a key", |s| {
            let handles = s
                .session
                .find_objects(&[Attribute::Label(label.as_bytes().to_vec())])?;
            for h in &handles {
                s.session.destroy_object(*h)?;
            }
            s.keys.remove(label);
            Ok(handles.len())
        })?;
        // Other pooled sessions may still cache the old handle.
        for s in self.lock().idle.iter_mut() {
            s.keys.remove(label);
        }
        Ok(n)
    }

    /// Every object the logged-in user can see.
    pub fn objects(&self) -> Result<Vec<ObjectSummary>, HsmError> {
        let label = self.label.clone();
        let mut out = None;
        self.with_session("listing objects", |s| {
            out = Some(list_objects(&s.session, &label));
            Ok(())
        })?;
        out.unwrap_or_else(|| Ok(Vec::new()))
    }

    /// A signer for the key pair labelled `label`.
    pub fn signer(self: &Arc<Self>, label: &str) -> Result<HsmSigner, HsmError> {
        let info = self.find_key(label)?.ok_or_else(|| HsmError::KeyNotFound {
            label: label.into(),
            token: self.label.clone(),
        })?;
        // Fail now, not at the first signature, when the private half is missing.
        let present = self.with_session("finding a private key", |s| s.private_key(label))?;
        if present.is_none() {
            return Err(HsmError::KeyNotFound {
                label: format!("{label} (private half)"),
                token: self.label.clone(),
            });
        }
        Ok(HsmSigner::new(self.clone(), info))
    }

    /// Signs `digest` with raw `CKM_ECDSA` and the key labelled `label`; returns raw r||s.
    pub(crate) fn sign_digest(&self, label: &str, digest: &[u8]) -> Result<Vec<u8>, HsmError> {
        let ticket = self
            .next_ticket
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let start = Instant::now();
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(ticket, start);
        let limit = self.sign_timeout();
        let out = self.sign_digest_untimed(label, digest, limit);
        self.in_flight
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .remove(&ticket);
        match out {
            Err(HsmError::Timeout {
                label, limit_ms, ..
            }) => Err(HsmError::Timeout {
                label,
                elapsed_ms: start.elapsed().as_millis(),
                limit_ms,
            }),
            other => other,
        }
    }

    fn sign_digest_untimed(
        &self,
        label: &str,
        digest: &[u8],
        limit: Duration,
    ) -> Result<Vec<u8>, HsmError> {
        self.with_session("signing", |s| {
            let started = Instant::now();
            let out = Self::sign_on(s, label, digest);
            // Too slow: whatever came back is not used, and the session is not trusted again.
            if out.is_ok() && started.elapsed() > limit {
                s.poisoned = true;
            }
            out
        })
    }

    fn sign_on(s: &mut PooledSession, label: &str, digest: &[u8]) -> Result<Vec<u8>, CkError> {
        {
            let key = match s.private_key(label)? {
                Some(k) => k,
                None => return Err(s.why_missing()),
            };
            match s.session.sign(&Mechanism::Ecdsa, key, digest) {
                // A cached handle can go stale (module re-initialised, key re-created by another
                // process): look the key up again once before giving up.
                Err(CkError::Pkcs11(
                    RvError::ObjectHandleInvalid | RvError::KeyHandleInvalid,
                    _,
                )) => {
                    s.forget_key(label);
                    let key = match s.private_key(label)? {
                        Some(k) => k,
                        None => return Err(s.why_missing()),
                    };
                    s.session.sign(&Mechanism::Ecdsa, key, digest)
                }
                other => other,
            }
        }
    }
}

/// The attributes of an online key pair's public half (the curve and point added by the caller):
/// one place for keys generated here and keys unwrapped into a token (`backup.rs`).
pub(crate) fn public_key_template(label: &str, id: &[u8]) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PUBLIC_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(false),
        Attribute::Verify(true),
        Attribute::Encrypt(false),
        Attribute::Wrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// The attributes of an online private key: sign only, sensitive, and extractable only by
/// trusted wrapping when `backup`; the same for a key generated here or unwrapped elsewhere.
pub(crate) fn private_key_template(label: &str, id: &[u8], backup: bool) -> Vec<Attribute> {
    vec![
        Attribute::Class(ObjectClass::PRIVATE_KEY),
        Attribute::KeyType(KeyType::EC),
        Attribute::Token(true),
        Attribute::Private(true),
        Attribute::Sensitive(true),
        Attribute::Extractable(backup),
        Attribute::WrapWithTrusted(backup),
        Attribute::Sign(true),
        Attribute::Derive(false),
        Attribute::Decrypt(false),
        Attribute::Unwrap(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Id(id.to_vec()),
    ]
}

/// CKA_EC_POINT is a DER OCTET STRING around the SEC1 point (PKCS#11 v2.40 §2.3.3); a few modules
/// return the bare point. Accept both, return the bare uncompressed point.
pub(crate) fn ec_point_bytes(value: &[u8], alg: KeyAlgorithm) -> Result<Vec<u8>, String> {
    let want = 1 + 2 * alg.field_len();
    if value.len() == want && value[0] == 0x04 {
        return Ok(value.to_vec());
    }
    let os = der::asn1::OctetString::from_der(value)
        .map_err(|e| format!("CKA_EC_POINT is neither a point nor a DER OCTET STRING: {e}"))?;
    let p = os.as_bytes();
    if p.len() != want || p[0] != 0x04 {
        return Err(format!(
            "CKA_EC_POINT holds {} bytes, expected an uncompressed {} point of {want}",
            p.len(),
            alg.name()
        ));
    }
    Ok(p.to_vec())
}

/// cryptoki's error is not `Clone`; this keeps what the log line needs.
trait CloneLossy {
    fn clone_lossy(&self) -> CkError;
}

impl CloneLossy for CkError {
    fn clone_lossy(&self) -> CkError {
        match self {
            CkError::Pkcs11(rv, f) => CkError::Pkcs11(*rv, *f),
            _ => CkError::NotSupported,
        }
    }
}
