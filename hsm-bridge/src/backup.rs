//! Key backup and replication with PKCS#11 (docs/hsms.md#key-replication-and-backup-under-a-quorum).
//!
//! * The key-backup key is an AES-256 secret key created by the token's security officer with
//!   `CKA_TRUSTED` (only an SO login may set it), usable only to wrap, not modifiable,
//!   sensitive and never extractable. It is public (`CKA_PRIVATE` false) because an SO session
//!   cannot create private objects; its value can still never be read through PKCS#11.
//! * Online keys of a home with key backup are generated `CKA_EXTRACTABLE` and
//!   `CKA_WRAP_WITH_TRUSTED`: the token wraps them only under a trusted key, with
//!   `CKM_AES_KEY_WRAP_PAD` (RFC 5649), so a private key leaves a token only encrypted under
//!   the key-backup key.
//! * The key-backup key never unwraps (`CKA_UNWRAP` false, and not modifiable so no user can
//!   turn it on): whoever unwraps chooses the new key's attributes, `CKA_SENSITIVE` false
//!   included, and PKCS#11's `CKA_UNWRAP_TEMPLATE`, which would forbid that, is not in
//!   cryptoki. Unwrapping is done with a *session* object of the same value (`<label>-unwrap`),
//!   made in the ceremony's own session from the quorum's secret and gone when that session
//!   ends, crash or not: between ceremonies no token can unwrap anything.
//! * A key already in a token under the key-backup key's label is taken only after the token
//!   shows it holds the same value (a key wrapped under it unwraps under ours): someone who knew
//!   a fresh token's SO PIN could otherwise plant a trusted key of their own under that label.

use std::sync::Arc;

use ca_core::hsm::{KeyInfo, WrappedKey};
use ca_core::verify_signature;
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, KeyType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use der::Encode;
use secrecy::SecretString;
use zeroize::Zeroize;

use crate::error::HsmError;
use crate::module::Hsm;
use crate::pool::{private_key_template, public_key_template, Token};

impl Hsm {
    /// See `ca_core::hsm::HsmModule::install_backup_key`.
    pub fn install_backup_key(
        &self,
        token: &str,
        so_pin: &SecretString,
        key_label: &str,
        value: &[u8],
        new_so_pin: Option<&SecretString>,
    ) -> Result<(), HsmError> {
        if value.len() != 32 {
            return Err(HsmError::Unexpected {
                token: token.into(),
                detail: format!(
                    "a key-backup key is 32 bytes (AES-256), got {}",
                    value.len()
                ),
            });
        }
        // The SO login and the PIN change rewrite the token's file: under the exclusive lock.
        let _lock = self.token_lock(true)?;
        let slot = self.find_token_once(token)?;
        let session = self
            .pkcs11()
            .open_rw_session(slot)
            .map_err(|e| HsmError::from_ck(e, format!("opening token {token:?}")))?;
        match session.login(UserType::So, Some(so_pin)) {
            Ok(()) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                return Err(HsmError::PinIncorrect {
                    label: format!("{token} (security officer)"),
                })
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => {
                return Err(HsmError::PinLocked {
                    label: format!("{token} (security officer)"),
                })
            }
            Err(e) => {
                return Err(HsmError::from_ck(
                    e,
                    format!("security-officer login to {token:?}"),
                ))
            }
        }
        let mut created = None;
        let out = check_trusted_keys(&session, token, key_label)
            .and_then(|()| ensure_backup_key(&session, token, key_label, value))
            .and_then(|made| {
                created = made;
                match new_so_pin {
                    Some(new) => session.set_pin(so_pin, new).map_err(|e| {
                        HsmError::from_ck(e, format!("changing the SO PIN of {token:?}"))
                    }),
                    None => Ok(()),
                }
            });
        if out.is_err() {
            // The SO PIN did not change: the key made in this call goes too, so the token is as
            // it was (a ceremony run again makes it afresh).
            if let Some(h) = created {
                let _ = session.destroy_object(h);
            }
        }
        let _ = session.logout();
        out
    }
}

/// The key-backup key under `key_label`: made when absent (returns its handle), or, when
/// present, checked to be trusted, wrap-only and of `value`.
fn ensure_backup_key(
    session: &Session,
    token: &str,
    key_label: &str,
    value: &[u8],
) -> Result<Option<ObjectHandle>, HsmError> {
    let ck = |e, what: &str| HsmError::from_ck(e, format!("{what} on {token:?}"));
    let existing = session
        .find_objects(&[
            Attribute::Token(true),
            Attribute::Label(key_label.as_bytes().to_vec()),
        ])
        .map_err(|e| ck(e, "looking for the key-backup key"))?;
    let Some(&k) = existing.first() else {
        return create_backup_key(session, token, key_label, value).map(Some);
    };
    let mismatch = |why: &str| HsmError::BackupKeyMismatch {
        token: token.into(),
        label: key_label.into(),
        why: why.into(),
    };
    if existing.len() > 1 {
        return Err(mismatch("several objects carry its label"));
    }
    let attrs = session
        .get_attributes(
            k,
            &[
                AttributeType::Class,
                AttributeType::Trusted,
                AttributeType::Unwrap,
                AttributeType::Modifiable,
            ],
        )
        .map_err(|e| ck(e, "reading the key-backup key"))?;
    let mut ok = 0;
    for a in attrs {
        ok += match a {
            Attribute::Class(c) => usize::from(c == ObjectClass::SECRET_KEY),
            Attribute::Trusted(t) => usize::from(t),
            Attribute::Unwrap(u) => usize::from(!u),
            Attribute::Modifiable(m) => usize::from(!m),
            _ => 0,
        };
    }
    if ok != 4 {
        return Err(mismatch(
            "it is not a trusted, wrap-only, unmodifiable secret key",
        ));
    }
    if !same_value(session, k, value).map_err(|e| ck(e, "checking the key-backup key"))? {
        return Err(mismatch("it holds another value"));
    }
    Ok(None)
}

/// Whether the key `k` (which may wrap) holds `value`: a fresh session key wrapped under `k`
/// must unwrap under a session copy of `value` (the AES key wrap's integrity check) to the same
/// bytes. Everything made here is a session object, destroyed before returning.
fn same_value(session: &Session, k: ObjectHandle, value: &[u8]) -> Result<bool, CkError> {
    let probe = session.generate_key(
        &Mechanism::AesKeyGen,
        &[
            Attribute::Class(ObjectClass::SECRET_KEY),
            Attribute::KeyType(KeyType::AES),
            Attribute::ValueLen(32.into()),
            Attribute::Token(false),
            Attribute::Private(false),
            Attribute::Sensitive(false),
            Attribute::Extractable(true),
        ],
    )?;
    let outcome = (|| -> Result<bool, CkError> {
        let wrapped = session.wrap_key(&Mechanism::AesKeyWrapPad, k, probe)?;
        let ours = create_secret(session, "meterpki-value-check", value, false, false, false)?;
        let back = session.unwrap_key(
            &Mechanism::AesKeyWrapPad,
            ours,
            &wrapped,
            &[
                Attribute::Class(ObjectClass::SECRET_KEY),
                Attribute::KeyType(KeyType::AES),
                Attribute::Token(false),
                Attribute::Private(false),
                Attribute::Sensitive(false),
                Attribute::Extractable(true),
            ],
        );
        let _ = session.destroy_object(ours);
        // The integrity check failed: another value.
        let back = match back {
            Ok(b) => b,
            // The key wrap's integrity check failed: another value (SoftHSM 2.6 answers
            // CKR_GENERAL_ERROR for it). Any other failure is an error, not a verdict.
            Err(CkError::Pkcs11(
                RvError::GeneralError | RvError::WrappedKeyInvalid | RvError::EncryptedDataInvalid,
                _,
            )) => return Ok(false),
            Err(e) => return Err(e),
        };
        let read = |h| -> Result<Vec<u8>, CkError> {
            Ok(session
                .get_attributes(h, &[AttributeType::Value])?
                .into_iter()
                .find_map(|a| match a {
                    Attribute::Value(v) => Some(v),
                    _ => None,
                })
                .unwrap_or_default())
        };
        let same = read(probe)? == read(back)?;
        let _ = session.destroy_object(back);
        Ok(same)
    })();
    let _ = session.destroy_object(probe);
    outcome
}

/// An AES secret key of `value`: trusted and wrap-only (`trusted`), or unwrap-only; sensitive,
/// never extractable, not modifiable; on the token (`token`) or a session object; `private`
/// only from a user session. The template's copy
/// of the value is wiped after the call (cryptoki keeps it in a plain `Vec`).
fn create_secret(
    session: &Session,
    label: &str,
    value: &[u8],
    token: bool,
    trusted: bool,
    private: bool,
) -> Result<ObjectHandle, CkError> {
    let unwrap = !trusted;
    let mut template = vec![
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::KeyType(KeyType::AES),
        Attribute::Token(token),
        // An SO session cannot create private objects; the unwrap-only session key is made in
        // the ceremony's user session, where it is private.
        Attribute::Private(private),
        Attribute::Trusted(trusted),
        Attribute::Wrap(!unwrap),
        Attribute::Unwrap(unwrap),
        Attribute::Modifiable(false),
        Attribute::Encrypt(false),
        Attribute::Decrypt(false),
        Attribute::Sign(false),
        Attribute::Verify(false),
        Attribute::Derive(false),
        Attribute::Sensitive(true),
        Attribute::Extractable(false),
        Attribute::Label(label.as_bytes().to_vec()),
        Attribute::Value(value.to_vec()),
    ];
    let out = session.create_object(&template);
    for a in template.iter_mut() {
        if let Attribute::Value(v) = a {
            v.zeroize();
        }
    }
    out
}

/// The label of the unwrap-only copy of the key-backup key labelled `key_label`.
pub(crate) fn unwrap_label(key_label: &str) -> String {
    format!("{key_label}-unwrap")
}

/// The labels of the trusted objects visible to `session`, of any class (a trusted public key
/// can wrap too, with mechanisms such as `CKM_RSA_AES_KEY_WRAP`); every one is public: only
/// an SO session can create one, and it cannot create private objects.
fn trusted_labels(session: &Session) -> Result<Vec<String>, CkError> {
    let mut out = Vec::new();
    for h in session.find_objects(&[Attribute::Trusted(true)])? {
        for a in session.get_attributes(h, &[AttributeType::Label])? {
            if let Attribute::Label(l) = a {
                out.push(String::from_utf8_lossy(&l).into_owned());
            }
        }
    }
    Ok(out)
}

/// Refuses a token holding a trusted key other than the key-backup key: whoever knew its SO
/// PIN could have made one whose value they know, and wrap every key out under it.
fn check_trusted_keys(session: &Session, token: &str, key_label: &str) -> Result<(), HsmError> {
    let labels = trusted_labels(session)
        .map_err(|e| HsmError::from_ck(e, format!("listing the trusted keys of {token:?}")))?;
    let foreign: Vec<String> = labels.into_iter().filter(|l| l != key_label).collect();
    if foreign.is_empty() {
        return Ok(());
    }
    Err(HsmError::ForeignTrustedKey {
        token: token.into(),
        labels: foreign.join(", "),
    })
}

/// Makes the wrap-only, trusted key-backup key on the token; returns its handle.
fn create_backup_key(
    session: &Session,
    token: &str,
    key_label: &str,
    value: &[u8],
) -> Result<ObjectHandle, HsmError> {
    create_secret(session, key_label, value, true, true, false).map_err(|e| {
        HsmError::from_ck(
            e,
            format!("creating the key-backup key {key_label:?} on {token:?}"),
        )
    })
}

/// The secret session objects labelled `label`.
fn session_keys(session: &Session, label: &str) -> Result<Vec<ObjectHandle>, CkError> {
    session.find_objects(&[
        Attribute::Token(false),
        Attribute::Class(ObjectClass::SECRET_KEY),
        Attribute::Label(label.as_bytes().to_vec()),
    ])
}

/// What a wrap or unwrap did not find.
enum Missing {
    BackupKey,
    PrivateKey,
}

fn find_one(
    session: &Session,
    class: ObjectClass,
    label: &str,
) -> Result<Option<ObjectHandle>, CkError> {
    Ok(session
        .find_objects(&[
            Attribute::Token(true),
            Attribute::Class(class),
            Attribute::Label(label.as_bytes().to_vec()),
        ])?
        .first()
        .copied())
}

impl Token {
    /// Whether a secret key labelled `label` is on the token.
    pub fn has_secret_key(&self, label: &str) -> Result<bool, HsmError> {
        self.with_session("looking for the key-backup key", |s| {
            Ok(find_one(&s.session, ObjectClass::SECRET_KEY, label)?.is_some())
        })
    }

    /// The labels of the trusted secret keys on the token.
    pub fn trusted_keys(&self) -> Result<Vec<String>, HsmError> {
        self.with_session("listing trusted keys", |s| trusted_labels(&s.session))
    }

    /// Makes the unwrap-only copy of the key-backup key `key_label` from `value`, as a session
    /// object of this pool's session (private, sensitive, never extractable, not modifiable):
    /// it is gone when the session ends, whatever ends it.
    pub fn load_unwrap_key(&self, key_label: &str, value: &[u8]) -> Result<(), HsmError> {
        let label = unwrap_label(key_label);
        self.with_session("loading the unwrap key", |s| {
            for h in session_keys(&s.session, &label)? {
                s.session.destroy_object(h)?;
            }
            create_secret(&s.session, &label, value, false, false, true).map(|_| ())
        })
    }

    /// Destroys the unwrap-only copy of the key-backup key `key_label` (after a ceremony).
    /// Returns how many objects went.
    pub fn remove_unwrap_key(&self, key_label: &str) -> Result<usize, HsmError> {
        let label = unwrap_label(key_label);
        self.with_session("removing the unwrap key", |s| {
            let found = session_keys(&s.session, &label)?;
            for h in &found {
                s.session.destroy_object(*h)?;
            }
            Ok(found.len())
        })
    }

    fn missing(&self, what: Missing, wrapping: &str, label: &str) -> HsmError {
        match what {
            Missing::BackupKey => HsmError::BackupKeyMissing {
                label: wrapping.into(),
                token: self.label().into(),
            },
            Missing::PrivateKey => HsmError::KeyNotFound {
                label: format!("{label} (private half)"),
                token: self.label().into(),
            },
        }
    }

    /// See `ca_core::hsm::HsmToken::wrap_key`.
    pub fn wrap_key(&self, wrapping: &str, label: &str) -> Result<WrappedKey, HsmError> {
        let key = self.find_key(label)?.ok_or_else(|| HsmError::KeyNotFound {
            label: label.into(),
            token: self.label().into(),
        })?;
        let what = format!("wrapping key {label:?} under {wrapping:?}");
        let out = self.with_session(&what, |s| {
            let Some(w) = find_one(&s.session, ObjectClass::SECRET_KEY, wrapping)? else {
                return Ok(Err(Missing::BackupKey));
            };
            let Some(k) = find_one(&s.session, ObjectClass::PRIVATE_KEY, label)? else {
                return Ok(Err(Missing::PrivateKey));
            };
            Ok(Ok(s.session.wrap_key(&Mechanism::AesKeyWrapPad, w, k)))
        })?;
        match out {
            Err(m) => Err(self.missing(m, wrapping, label)),
            Ok(Ok(wrapped)) => Ok(WrappedKey { key, wrapped }),
            Ok(Err(CkError::Pkcs11(
                rv @ (RvError::KeyUnextractable | RvError::KeyNotWrappable),
                _,
            ))) => Err(HsmError::NotExportable {
                label: label.into(),
                token: self.label().into(),
                reason: if rv == RvError::KeyUnextractable {
                    "it was generated never extractable (CKR_KEY_UNEXTRACTABLE): a home created with --key-backup none, or a key made before key backup was chosen".into()
                } else {
                    format!("the token refused to wrap it under {wrapping:?} (CKR_KEY_NOT_WRAPPABLE): the wrapping key is not trusted")
                },
            }),
            Ok(Err(e)) => Err(HsmError::from_ck(e, what)),
        }
    }

    /// See `ca_core::hsm::HsmToken::unwrap_key`.
    pub fn unwrap_key(
        self: &Arc<Self>,
        wrapping: &str,
        w: &WrappedKey,
    ) -> Result<KeyInfo, HsmError> {
        let label = w.key.label.as_str();
        if let Some(existing) = self.find_key(label)? {
            // A ceremony run again: the same key is already here; another one is refused.
            if existing.spki == w.key.spki && self.signer(label).is_ok() {
                return Ok(existing);
            }
            return Err(HsmError::KeyExists {
                label: label.into(),
                token: self.label().into(),
            });
        }
        let params = w
            .key
            .algorithm
            .curve_oid()
            .to_der()
            .and_then(|p| {
                let point = w.key.spki.subject_public_key.raw_bytes();
                Ok((p, der::asn1::OctetString::new(point)?.to_der()?))
            })
            .map_err(|e| HsmError::Unexpected {
                token: self.label().into(),
                detail: format!("encoding the public key of {label:?}: {e}"),
            })?;
        let what = format!("unwrapping key {label:?} under {wrapping:?}");
        let unwrapping = unwrap_label(wrapping);
        let out = self.with_session(&what, |s| {
            let Some(&wk) = session_keys(&s.session, &unwrapping)?.first() else {
                return Ok(Err(Missing::BackupKey));
            };
            let private = s.session.unwrap_key(
                &Mechanism::AesKeyWrapPad,
                wk,
                &w.wrapped,
                &private_key_template(label, &w.key.id, true),
            );
            let private = match private {
                Ok(p) => p,
                Err(e) => return Ok(Ok(Err(e))),
            };
            let mut public_tpl = public_key_template(label, &w.key.id);
            public_tpl.push(Attribute::EcParams(params.0.clone()));
            public_tpl.push(Attribute::EcPoint(params.1.clone()));
            let public = s.session.create_object(&public_tpl);
            if let Err(e) = public {
                let _ = s.session.destroy_object(private);
                return Ok(Ok(Err(e)));
            }
            Ok(Ok(Ok(())))
        })?;
        match out {
            Err(m) => return Err(self.missing(m, wrapping, label)),
            Ok(Err(CkError::Pkcs11(
                // SoftHSM 2.6 answers CKR_GENERAL_ERROR when the key wrap's integrity check
                // fails (a wrong unwrapping key, or altered bytes).
                rv @ (RvError::WrappedKeyInvalid
                | RvError::WrappedKeyLenRange
                | RvError::EncryptedDataInvalid
                | RvError::GeneralError),
                _,
            ))) => {
                return Err(HsmError::WrappedKeyRefused {
                    label: label.into(),
                    token: self.label().into(),
                    ckr: crate::error::ckr_name(rv),
                })
            }
            Ok(Err(e)) => return Err(HsmError::from_ck(e, what)),
            Ok(Ok(())) => {}
        }
        // The private key must be the public key's other half: sign and verify here, before
        // anything uses it. A mismatch removes both.
        let check = self
            .signer(label)
            .and_then(|signer| {
                use ca_core::Signer;
                let msg = b"meterpki: an unwrapped key signs for its public key";
                let sig = signer.sign(msg).map_err(|e| HsmError::Unexpected {
                    token: self.label().into(),
                    detail: e.to_string(),
                })?;
                verify_signature(&w.key.spki, msg, &sig).map_err(|e| HsmError::Unexpected {
                    token: self.label().into(),
                    detail: format!(
                        "the key unwrapped as {label:?} does not sign for its public key ({e})"
                    ),
                })
            })
            .and_then(|()| {
                self.find_key(label)?.ok_or_else(|| HsmError::KeyNotFound {
                    label: label.into(),
                    token: self.label().into(),
                })
            });
        if check.is_err() {
            let _ = self.destroy_key(label);
        }
        check
    }
}
