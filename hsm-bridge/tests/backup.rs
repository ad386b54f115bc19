//! Key backup with PKCS#11 against real SoftHSM tokens: a trusted AES key made by the SO,
//! keys wrapped only under it, unwrapped into another token, and every refusal the token
//! itself gives (docs/hsms.md).

use ca_core::hsm::KeyProtection;
use ca_core::{verify_signature, KeyAlgorithm, Signer};
use hsm_bridge::{Hsm, HsmError, SecretString};

const SO: &str = "test-so-pin-5678";
const USER: &str = "test-user-pin-1234";
const KBK: &str = "meterpki-key-backup";

#[test]
fn a_key_wrapped_under_the_trusted_backup_key_moves_to_another_token_and_nowhere_else() {
    softhsm_config::isolated(
        "a_key_wrapped_under_the_trusted_backup_key_moves_to_another_token_and_nowhere_else",
        |_| {
            let module = softhsm_config::find_module().expect("SoftHSM is installed");
            let hsm = Hsm::load(&module).expect("load module");
            let value = [7u8; 32];
            // The SO installs the key-backup key on A and B (before any user login here),
            // and the SO PIN of A changes with it.
            for label in ["a", "b", "c", "other"] {
                hsm.init_token(label, &SecretString::from(SO), &SecretString::from(USER))
                    .unwrap();
            }
            let new_so = SecretString::from("a-new-so-pin-0000");
            hsm.install_backup_key("a", &SecretString::from(SO), KBK, &value, Some(&new_so))
                .unwrap();
            hsm.install_backup_key("b", &SecretString::from(SO), KBK, &value, None)
                .unwrap();
            // Run again: the key is left as it is (no duplicate), the old SO PIN is gone.
            let err = hsm
                .install_backup_key("a", &SecretString::from(SO), KBK, &value, None)
                .unwrap_err();
            assert!(matches!(err, HsmError::PinIncorrect { .. }), "{err}");
            hsm.install_backup_key("a", &new_so, KBK, &value, None)
                .unwrap();
            // A token holding a trusted key someone else made (its SO PIN was known): refused.
            hsm.install_backup_key("c", &SecretString::from(SO), "rogue", &[1u8; 32], None)
                .unwrap();
            let err = hsm
                .install_backup_key("c", &SecretString::from(SO), KBK, &value, None)
                .unwrap_err();
            assert!(matches!(err, HsmError::ForeignTrustedKey { .. }), "{err}");
            // A key planted under the key-backup key's own label with another value (by whoever
            // knew a fresh token's SO PIN): the ceremony's install refuses it.
            let err = hsm
                .install_backup_key("other", &SecretString::from(SO), KBK, &[9u8; 32], None)
                .and_then(|()| {
                    hsm.install_backup_key("other", &SecretString::from(SO), KBK, &value, None)
                })
                .unwrap_err();
            assert!(matches!(err, HsmError::BackupKeyMismatch { .. }), "{err}");
            // "other" holds a different key-backup key under the same label (made just above).

            let a = hsm.open("a", SecretString::from(USER), 2).unwrap();
            let b = hsm.open("b", SecretString::from(USER), 2).unwrap();
            let c = hsm.open("c", SecretString::from(USER), 2).unwrap();
            let other = hsm.open("other", SecretString::from(USER), 2).unwrap();
            assert!(a.has_secret_key(KBK).unwrap());
            assert!(!c.has_secret_key(KBK).unwrap());
            let kbk: Vec<_> = a
                .objects()
                .unwrap()
                .into_iter()
                .filter(|o| o.label == KBK)
                .collect();
            assert_eq!(kbk.len(), 1, "{kbk:?}");

            let info = a
                .generate_ec_key_as(
                    "device-ca",
                    KeyAlgorithm::EcP256,
                    KeyProtection::TrustedWrapOnly,
                )
                .unwrap();
            a.generate_ec_key("locked", KeyAlgorithm::EcP256).unwrap();

            let wrapped = a.wrap_key(KBK, "device-ca").unwrap();
            assert!(wrapped.wrapped.len() > 64, "{}", wrapped.wrapped.len());
            // The attack an unwrap template would stop: with the user PIN, unwrap the wrapped
            // key on A as a key that is not sensitive, and read it. A's key-backup key cannot
            // unwrap, and cannot be made to.
            {
                use cryptoki::mechanism::Mechanism;
                use cryptoki::object::{Attribute, KeyType, ObjectClass};
                use cryptoki::session::UserType;
                let slot = hsm
                    .pkcs11()
                    .get_slots_with_initialized_token()
                    .unwrap()
                    .into_iter()
                    .find(|s| hsm.pkcs11().get_token_info(*s).unwrap().label() == "a")
                    .unwrap();
                let session = hsm.pkcs11().open_rw_session(slot).unwrap();
                let _ = session.login(UserType::User, Some(&SecretString::from(USER)));
                let k = session
                    .find_objects(&[Attribute::Label(KBK.as_bytes().to_vec())])
                    .unwrap()[0];
                let readable = session.unwrap_key(
                    &Mechanism::AesKeyWrapPad,
                    k,
                    &wrapped.wrapped,
                    &[
                        Attribute::Class(ObjectClass::PRIVATE_KEY),
                        Attribute::KeyType(KeyType::EC),
                        Attribute::Token(false),
                        Attribute::Sensitive(false),
                        Attribute::Extractable(true),
                    ],
                );
                assert!(
                    readable.is_err(),
                    "the key-backup key unwrapped a readable key"
                );
                assert!(
                    session
                        .update_attributes(k, &[Attribute::Unwrap(true)])
                        .is_err(),
                    "the key-backup key was made to unwrap"
                );
            }
            // Nothing unwraps before the ceremony's session copy of the value is loaded.
            let err = b.unwrap_key(KBK, &wrapped).unwrap_err();
            assert!(matches!(err, HsmError::BackupKeyMissing { .. }), "{err}");
            b.load_unwrap_key(KBK, &value).unwrap();
            let got = b.unwrap_key(KBK, &wrapped).unwrap();
            assert_eq!(got.spki, info.spki);
            assert_eq!(got.id, info.id);
            let sig = b.signer("device-ca").unwrap().sign(b"on b").unwrap();
            verify_signature(&info.spki, b"on b", &sig).unwrap();
            // Run again: the same key is already there.
            b.unwrap_key(KBK, &wrapped).unwrap();
            assert_eq!(b.trusted_keys().unwrap(), vec![KBK.to_string()]);
            let private = b
                .objects()
                .unwrap()
                .into_iter()
                .find(|o| o.label == "device-ca" && o.class == "private-key")
                .unwrap();
            assert_eq!(private.sensitive, Some(true));

            // A key generated never extractable is refused by the token.
            let err = a.wrap_key(KBK, "locked").unwrap_err();
            assert!(matches!(err, HsmError::NotExportable { .. }), "{err}");
            assert!(err.to_string().contains("CKR_KEY_UNEXTRACTABLE"), "{err}");
            // A token without the key-backup key can neither wrap nor unwrap.
            let err = c.unwrap_key(KBK, &wrapped).unwrap_err();
            assert!(matches!(err, HsmError::BackupKeyMissing { .. }), "{err}");
            assert!(c.find_key("device-ca").unwrap().is_none());
            // A token holding another key-backup key refuses the wrapped key; nothing is left.
            other.load_unwrap_key(KBK, &[9u8; 32]).unwrap();
            let err = other.unwrap_key(KBK, &wrapped).unwrap_err();
            assert!(matches!(err, HsmError::WrappedKeyRefused { .. }), "{err}");
            assert!(other
                .objects()
                .unwrap()
                .iter()
                .all(|o| o.label != "device-ca"));
            // One altered byte in the wrapped key: refused by B too.
            let mut altered = wrapped.clone();
            altered.wrapped[10] ^= 1;
            altered.key.label = "altered".into();
            let err = b.unwrap_key(KBK, &altered).unwrap_err();
            assert!(matches!(err, HsmError::WrappedKeyRefused { .. }), "{err}");
            assert!(b.find_key("altered").unwrap().is_none());
            // A key under the same label but another public key: refused, not replaced.
            let mut foreign = wrapped.clone();
            foreign.key.spki = a.find_key("locked").unwrap().unwrap().spki;
            let err = b.unwrap_key(KBK, &foreign).unwrap_err();
            assert!(matches!(err, HsmError::KeyExists { .. }), "{err}");
            // The ceremony over, B's unwrap-only key goes: B can no longer unwrap anything.
            assert_eq!(b.remove_unwrap_key(KBK).unwrap(), 1);
            let mut later = wrapped.clone();
            later.key.label = "later".into();
            let err = b.unwrap_key(KBK, &later).unwrap_err();
            assert!(matches!(err, HsmError::BackupKeyMissing { .. }), "{err}");
        },
    );
}
