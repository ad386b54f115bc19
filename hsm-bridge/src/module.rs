//! Loading a PKCS#11 module and finding its tokens.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, OnceLock};

use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::object::{Attribute, AttributeType, ObjectClass};
use cryptoki::session::UserType;
use cryptoki::slot::Slot;
use secrecy::SecretString;

use ca_core::hsm::{ObjectSummary, TokenSummary};

use crate::error::HsmError;
use crate::pool::Token;

/// A loaded PKCS#11 module. Cheap to clone.
#[derive(Clone)]
pub struct Hsm {
    pkcs11: Pkcs11,
    module: PathBuf,
    /// For a SoftHSM home: the file whose lock orders this home's processes' logins and token
    /// reads (see [`Hsm::with_token_lock`]).
    token_lock: Option<PathBuf>,
}

impl std::fmt::Debug for Hsm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Hsm").field("module", &self.module).finish()
    }
}

fn registry() -> &'static Mutex<HashMap<PathBuf, Pkcs11>> {
    static REG: OnceLock<Mutex<HashMap<PathBuf, Pkcs11>>> = OnceLock::new();
    REG.get_or_init(|| Mutex::new(HashMap::new()))
}

impl Hsm {
    /// Loads and initialises `module`, once per process: a second call returns the same module.
    pub fn load(module: &Path) -> Result<Hsm, HsmError> {
        let load_err = |reason: String| HsmError::ModuleLoad {
            path: module.display().to_string(),
            reason,
        };
        if !module.exists() {
            return Err(load_err("no such file".into()));
        }
        let key = module.canonicalize().map_err(|e| load_err(e.to_string()))?;
        let mut reg = registry().lock().unwrap_or_else(|p| p.into_inner());
        if let Some(p) = reg.get(&key) {
            return Ok(Hsm {
                pkcs11: p.clone(),
                module: module.to_path_buf(),
                token_lock: None,
            });
        }
        let pkcs11 = Pkcs11::new(&key).map_err(|e| load_err(e.to_string()))?;
        let hsm = Hsm {
            pkcs11,
            module: module.to_path_buf(),
            token_lock: None,
        };
        hsm.initialize()?;
        reg.insert(key, hsm.pkcs11.clone());
        Ok(hsm)
    }

    /// Orders this process's logins and token reads with every other process's that uses the
    /// same `path` (an advisory lock on it: exclusive around a login, shared around reading
    /// which tokens there are). For SoftHSM, whose file store rewrites a token's file at every
    /// login (truncated to nothing, then written): another process reading the token in
    /// between sees an error, an uninitialised PIN or no token at all. A SoftHSM home's
    /// processes all use `<home>/softhsm/token.lock`. A network HSM needs none of this.
    pub fn with_token_lock(mut self, path: PathBuf) -> Hsm {
        self.token_lock = Some(path);
        self
    }

    /// Holds the token lock (if any) until the returned file is dropped.
    pub(crate) fn token_lock(&self, exclusive: bool) -> Result<Option<std::fs::File>, HsmError> {
        use std::os::unix::fs::OpenOptionsExt;
        let Some(path) = &self.token_lock else {
            return Ok(None);
        };
        let failed = |e: std::io::Error| HsmError::Unexpected {
            token: "(all)".into(),
            detail: format!("locking {}: {e}", path.display()),
        };
        let file = std::fs::OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .mode(0o600)
            .open(path)
            .map_err(failed)?;
        let op = if exclusive {
            rustix::fs::FlockOperation::LockExclusive
        } else {
            rustix::fs::FlockOperation::LockShared
        };
        rustix::fs::flock(&file, op).map_err(|e| failed(e.into()))?;
        Ok(Some(file))
    }

    /// `C_Initialize`; already initialised is fine.
    pub(crate) fn initialize(&self) -> Result<(), HsmError> {
        match self
            .pkcs11
            .initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK))
        {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => Ok(()),
            Err(e) => Err(HsmError::ModuleLoad {
                path: self.module.display().to_string(),
                reason: HsmError::from_ck(e, "initialising the module").to_string(),
            }),
        }
    }

    /// The module path.
    pub fn module(&self) -> &Path {
        &self.module
    }

    /// The underlying cryptoki context, for benchmarks and fault tests.
    pub fn pkcs11(&self) -> &Pkcs11 {
        &self.pkcs11
    }

    /// The library's manufacturer, e.g. `SoftHSM`.
    pub fn manufacturer(&self) -> Result<String, HsmError> {
        let info = self
            .pkcs11
            .get_library_info()
            .map_err(|e| HsmError::from_ck(e, "reading library info"))?;
        Ok(info.manufacturer_id().trim().to_string())
    }

    /// `C_GetTokenInfo`, read again after a short pause when it fails with
    /// `CKR_GENERAL_ERROR` (see [`read_again`]).
    fn token_info(&self, slot: Slot) -> Result<cryptoki::slot::TokenInfo, HsmError> {
        read_again(|| self.pkcs11.get_token_info(slot))
            .map_err(|e| HsmError::from_ck(e, "reading token info"))
    }

    /// Every initialised token's slot and info, and what could not be read. One token that
    /// cannot be read (its device gone, its SoftHSM directory removed) does not hide the
    /// others: `C_GetSlotList`, then `C_GetTokenInfo` of each slot on its own (cryptoki's
    /// `get_slots_with_initialized_token` fails whole when one slot fails). A slot that fails
    /// is read again (see [`read_again`]) only when `wanted` is not found among the others.
    fn slot_infos(&self, wanted: Option<&str>) -> Result<(Vec<SlotInfo>, Vec<String>), HsmError> {
        let slots = read_again(|| self.pkcs11.get_slots_with_token())
            .map_err(|e| HsmError::from_ck(e, "listing slots"))?;
        let mut found = Vec::new();
        let mut failed = Vec::new();
        for slot in slots {
            match self.pkcs11.get_token_info(slot) {
                Ok(info) => {
                    let hit = wanted == Some(info.label().trim_end());
                    if info.token_initialized() {
                        found.push((slot, info));
                    }
                    if hit {
                        return Ok((found, Vec::new()));
                    }
                }
                Err(_) => failed.push(slot),
            }
        }
        let mut unreadable = Vec::new();
        for slot in failed {
            match self.token_info(slot) {
                Ok(info) if info.token_initialized() => found.push((slot, info)),
                Ok(_) => {}
                Err(e) => unreadable.push(format!("slot {}: {e}", slot.id())),
            }
        }
        Ok((found, unreadable))
    }

    /// Every initialised token (a token that cannot be read is left out, with a warning).
    pub fn tokens(&self) -> Result<Vec<TokenSummary>, HsmError> {
        let _lock = self.token_lock(false)?;
        let (slots, unreadable) = self.slot_infos(None)?;
        for u in unreadable {
            tracing::warn!(module = %self.module.display(), "a token cannot be read: {u}");
        }
        Ok(slots
            .into_iter()
            .map(|(slot, info)| TokenSummary {
                slot: slot.id(),
                label: info.label().trim_end().to_string(),
                serial: info.serial_number().trim_end().to_string(),
                manufacturer: info.manufacturer_id().trim_end().to_string(),
                model: info.model().trim_end().to_string(),
                user_pin_initialized: info.user_pin_initialized(),
            })
            .collect())
    }

    /// The slot holding the token labelled `label`. Not found is looked for again for up to a
    /// second: while another process logs in, SoftHSM's file store can show its token as not
    /// initialised (its file is rewritten from empty; see [`read_again`]).
    pub fn find_token(&self, label: &str) -> Result<Slot, HsmError> {
        let mut tries = 0;
        loop {
            let found = {
                let _lock = self.token_lock(false)?;
                self.find_token_once(label)
            };
            match found {
                Err(HsmError::TokenNotFound { .. }) if tries < 20 => {
                    tries += 1;
                    std::thread::sleep(std::time::Duration::from_millis(50));
                }
                r => return r,
            }
        }
    }

    /// [`Hsm::find_token`] once, the token lock held by the caller (or not needed).
    pub(crate) fn find_token_once(&self, label: &str) -> Result<Slot, HsmError> {
        let (slots, unreadable) = self.slot_infos(Some(label))?;
        let mut seen = Vec::new();
        for (slot, info) in slots {
            let l = info.label().trim_end().to_string();
            if l == label {
                return Ok(slot);
            }
            seen.push(format!("{l:?}"));
        }
        seen.extend(unreadable.into_iter().map(|u| format!("unreadable ({u})")));
        Err(HsmError::TokenNotFound {
            label: label.to_string(),
            module: self.module.display().to_string(),
            available: if seen.is_empty() {
                "none".into()
            } else {
                seen.join(", ")
            },
        })
    }

    /// Creates a token labelled `label` in a free slot with the given SO and user PINs.
    pub fn init_token(
        &self,
        label: &str,
        so_pin: &SecretString,
        user_pin: &SecretString,
    ) -> Result<(), HsmError> {
        // The SO login and the PIN setting rewrite the token's file: under the exclusive lock.
        let _lock = self.token_lock(true)?;
        if self.find_token_once(label).is_ok() {
            return Err(HsmError::TokenExists {
                label: label.into(),
                module: self.module.display().to_string(),
            });
        }
        let free = self
            .pkcs11
            .get_slots_with_token()
            .map_err(|e| HsmError::from_ck(e, "listing slots"))?
            .into_iter()
            .find(|s| {
                self.pkcs11
                    .get_token_info(*s)
                    .map(|i| !i.token_initialized())
                    .unwrap_or(false)
            })
            .ok_or_else(|| HsmError::NoFreeSlot {
                label: label.into(),
                module: self.module.display().to_string(),
            })?;
        self.pkcs11
            .init_token(free, so_pin, label)
            .map_err(|e| HsmError::from_ck(e, format!("creating token {label:?}")))?;
        // SoftHSM moves a freshly initialised token to a new slot id: find it again by label.
        let slot = self.find_token_once(label)?;
        let session = self
            .pkcs11
            .open_rw_session(slot)
            .map_err(|e| HsmError::from_ck(e, format!("opening token {label:?}")))?;
        session
            .login(UserType::So, Some(so_pin))
            .map_err(|e| HsmError::from_ck(e, format!("SO login to {label:?}")))?;
        session
            .init_pin(user_pin)
            .map_err(|e| HsmError::from_ck(e, format!("setting the user PIN of {label:?}")))?;
        session
            .logout()
            .map_err(|e| HsmError::from_ck(e, format!("SO logout from {label:?}")))?;
        Ok(())
    }

    /// Opens the token labelled `label`, logs in with `pin` and keeps a pool of up to `sessions`
    /// sessions. A wrong PIN is reported as [`HsmError::PinIncorrect`].
    pub fn open(
        &self,
        label: &str,
        pin: SecretString,
        sessions: usize,
    ) -> Result<Arc<Token>, HsmError> {
        Token::open(self.clone(), label, pin, sessions)
    }

    /// The public objects of a token (no login needed): what `status` can show of the root token.
    pub fn public_objects(&self, label: &str) -> Result<Vec<ObjectSummary>, HsmError> {
        let slot = self.find_token(label)?;
        let session = self
            .pkcs11
            .open_ro_session(slot)
            .map_err(|e| HsmError::from_ck(e, format!("opening token {label:?}")))?;
        list_objects(&session, label)
    }
}

/// Lists the token objects visible to `session` (not the session copies the pool signs with).
pub(crate) fn list_objects(
    session: &cryptoki::session::Session,
    token: &str,
) -> Result<Vec<ObjectSummary>, HsmError> {
    let handles = session
        .find_objects(&[Attribute::Token(true)])
        .map_err(|e| HsmError::from_ck(e, format!("listing objects on {token:?}")))?;
    let mut out = Vec::new();
    for h in handles {
        let attrs = session
            .get_attributes(
                h,
                &[
                    AttributeType::Class,
                    AttributeType::Label,
                    AttributeType::Id,
                    AttributeType::Token,
                ],
            )
            .map_err(|e| HsmError::from_ck(e, "reading object attributes"))?;
        let mut s = ObjectSummary {
            class: String::new(),
            label: String::new(),
            id: String::new(),
            sensitive: None,
            extractable: None,
            wrap_with_trusted: None,
            trusted: None,
            token: None,
        };
        let mut private = false;
        let mut secret = false;
        for a in attrs {
            match a {
                Attribute::Class(c) => {
                    private = c == ObjectClass::PRIVATE_KEY;
                    secret = c == ObjectClass::SECRET_KEY;
                    s.class = match c {
                        ObjectClass::PRIVATE_KEY => "private-key".into(),
                        ObjectClass::PUBLIC_KEY => "public-key".into(),
                        ObjectClass::SECRET_KEY => "secret-key".into(),
                        ObjectClass::CERTIFICATE => "certificate".into(),
                        ObjectClass::DATA => "data".into(),
                        other => format!("{other}"),
                    }
                }
                Attribute::Label(l) => s.label = String::from_utf8_lossy(&l).into_owned(),
                Attribute::Id(id) => s.id = hex::encode(id),
                Attribute::Token(t) => s.token = Some(t),
                _ => {}
            }
        }
        if private || secret {
            let asked: &[AttributeType] = if private {
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::WrapWithTrusted,
                ]
            } else {
                &[
                    AttributeType::Sensitive,
                    AttributeType::Extractable,
                    AttributeType::Trusted,
                ]
            };
            let flags = session
                .get_attributes(h, asked)
                .map_err(|e| HsmError::from_ck(e, "reading key attributes"))?;
            for a in flags {
                match a {
                    Attribute::Sensitive(v) => s.sensitive = Some(v),
                    Attribute::Extractable(v) => s.extractable = Some(v),
                    Attribute::WrapWithTrusted(v) => s.wrap_with_trusted = Some(v),
                    Attribute::Trusted(v) => s.trusted = Some(v),
                    _ => {}
                }
            }
        }
        out.push(s);
    }
    out.sort_by(|a, b| (&a.label, &a.class).cmp(&(&b.label, &b.class)));
    Ok(out)
}

/// A slot and its token's info.
type SlotInfo = (Slot, cryptoki::slot::TokenInfo);

/// Runs a PKCS#11 call that only reads again, after a short pause, while it fails with
/// `CKR_GENERAL_ERROR`, for up to a second: SoftHSM 2.6 rewrites a token's `token.object` at
/// every login (truncated to nothing, then written; see `softhsm-config::heal_tokens`), and
/// another process reading the token in between gets that error, or does not see the token
/// (two `crl publish` at once on one home did, about one run in five). Reading again is safe;
/// a token still failing after a second is reported.
fn read_again<T>(mut call: impl FnMut() -> Result<T, CkError>) -> Result<T, CkError> {
    let mut tries = 0;
    loop {
        match call() {
            Err(CkError::Pkcs11(RvError::GeneralError, _)) if tries < 20 => {
                tries += 1;
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
            r => return r,
        }
    }
}
