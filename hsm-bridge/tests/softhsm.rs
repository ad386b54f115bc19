//! hsm-bridge against a real SoftHSM token, one token directory per test (each test runs in a
//! child process of its own, see `softhsm_config::isolated`).

use std::path::Path;
use std::sync::Arc;

use ca_core::{verify_signature, KeyAlgorithm, Signer};
use hsm_bridge::{Hsm, HsmError, SecretString};

const USER_PIN: &str = "test-user-pin-1234";

fn setup(_dir: &Path) -> (Hsm, Arc<hsm_bridge::Token>) {
    let module = softhsm_config::find_module().expect("SoftHSM is installed");
    let hsm = Hsm::load(&module).expect("load module");
    hsm.init_token(
        "test-online",
        &SecretString::from("test-so-pin-5678"),
        &SecretString::from(USER_PIN),
    )
    .expect("init token");
    let token = hsm
        .open("test-online", SecretString::from(USER_PIN), 2)
        .expect("open");
    (hsm, token)
}

#[test]
fn keys_are_generated_sensitive_and_signatures_verify_independently() {
    softhsm_config::isolated(
        "keys_are_generated_sensitive_and_signatures_verify_independently",
        |dir| {
            let (_hsm, token) = setup(dir);
            for (label, alg) in [
                ("k256", KeyAlgorithm::EcP256),
                ("k384", KeyAlgorithm::EcP384),
            ] {
                let info = token.generate_ec_key(label, alg).unwrap();
                assert_eq!(info.algorithm, alg);
                assert_eq!(info.id.len(), 8);
                assert_eq!(KeyAlgorithm::of_spki(&info.spki), Some(alg));
                let objects = token.objects().unwrap();
                let private = objects
                    .iter()
                    .find(|o| o.label == label && o.class == "private-key")
                    .expect("private key listed");
                assert_eq!(private.sensitive, Some(true));
                assert_eq!(private.extractable, Some(false));
                assert_eq!(private.token, Some(true));
                assert_eq!(private.id, hex::encode(&info.id));
                // Generating the same label twice is refused, not duplicated.
                assert!(matches!(
                    token.generate_ec_key(label, alg),
                    Err(HsmError::KeyExists { .. })
                ));
                let signer = token.signer(label).unwrap();
                for i in 0..20u8 {
                    let msg = vec![i; 100 + usize::from(i)];
                    let sig = signer.sign(&msg).unwrap();
                    // p256/p384 crates, not the HSM, check the signature.
                    verify_signature(signer.public_key(), &msg, &sig).unwrap();
                    assert!(verify_signature(signer.public_key(), b"other", &sig).is_err());
                }
            }
        },
    );
}

#[test]
fn bad_pin_missing_token_and_missing_module_are_named() {
    softhsm_config::isolated(
        "bad_pin_missing_token_and_missing_module_are_named",
        |_dir| {
            let module = softhsm_config::find_module().expect("SoftHSM is installed");
            let hsm = Hsm::load(&module).unwrap();
            hsm.init_token(
                "test-online",
                &SecretString::from("test-so-pin-5678"),
                &SecretString::from(USER_PIN),
            )
            .unwrap();
            // Checked before anything logs in: PKCS#11 login state is per application, so once a
            // session is logged in a second C_Login cannot tell a wrong PIN from a right one.
            let err = hsm
                .open("test-online", SecretString::from("wrong-pin"), 1)
                .unwrap_err();
            assert!(matches!(err, HsmError::PinIncorrect { .. }), "{err}");
            assert!(err.to_string().contains("CKR_PIN_INCORRECT"), "{err}");
            let err = hsm
                .open("no-such-token", SecretString::from(USER_PIN), 1)
                .unwrap_err();
            assert!(matches!(err, HsmError::TokenNotFound { .. }), "{err}");
            assert!(
                err.to_string().contains("test-online"),
                "lists what exists: {err}"
            );
            let err = Hsm::load(Path::new("/nonexistent/libpkcs11.so")).unwrap_err();
            assert!(matches!(err, HsmError::ModuleLoad { .. }), "{err}");
            assert!(
                err.to_string().contains("/nonexistent/libpkcs11.so"),
                "{err}"
            );
            let err = token_signer_missing(&hsm);
            assert!(matches!(err, HsmError::KeyNotFound { .. }), "{err}");
        },
    );
}

fn token_signer_missing(hsm: &Hsm) -> HsmError {
    let token = hsm
        .open("test-online", SecretString::from(USER_PIN), 1)
        .unwrap();
    token.signer("no-such-key").unwrap_err()
}

#[test]
fn sessions_are_replaced_after_module_reinitialisation_and_logout() {
    softhsm_config::isolated(
        "sessions_are_replaced_after_module_reinitialisation_and_logout",
        |dir| {
            let (hsm, token) = setup(dir);
            token.generate_ec_key("k", KeyAlgorithm::EcP256).unwrap();
            let signer = token.signer("k").unwrap();
            let sig = signer.sign(b"before").unwrap();
            verify_signature(signer.public_key(), b"before", &sig).unwrap();

            // Someone finalises and re-initialises the module under us: every session handle
            // the pool holds is now invalid (CKR_SESSION_HANDLE_INVALID / NOT_INITIALIZED).
            hsm.pkcs11().clone().finalize().unwrap();
            let sig = signer.sign(b"after finalize").expect("recovered");
            verify_signature(signer.public_key(), b"after finalize", &sig).unwrap();

            // Another session logs the application out: the pool logs in again.
            let slot = hsm.find_token("test-online").unwrap();
            let other = hsm.pkcs11().open_ro_session(slot).unwrap();
            other.logout().unwrap();
            let sig = signer.sign(b"after logout").expect("recovered");
            verify_signature(signer.public_key(), b"after logout", &sig).unwrap();
            assert!(token.sessions_open() <= token.pool_size());
        },
    );
}

#[test]
fn the_pool_serves_more_threads_than_sessions() {
    softhsm_config::isolated("the_pool_serves_more_threads_than_sessions", |dir| {
        let (_hsm, token) = setup(dir);
        token.generate_ec_key("k", KeyAlgorithm::EcP256).unwrap();
        let signer = Arc::new(token.signer("k").unwrap());
        let handles: Vec<_> = (0..6)
            .map(|t| {
                let s = signer.clone();
                std::thread::spawn(move || {
                    for i in 0..25u32 {
                        let msg = format!("{t}-{i}");
                        let sig = s.sign(msg.as_bytes()).unwrap();
                        verify_signature(s.public_key(), msg.as_bytes(), &sig).unwrap();
                    }
                })
            })
            .collect();
        for h in handles {
            h.join().unwrap();
        }
        assert_eq!(
            token.sessions_open(),
            2,
            "never more sessions than the pool size"
        );
    });
}

#[test]
fn async_signing_leaves_the_runtime_free() {
    softhsm_config::isolated("async_signing_leaves_the_runtime_free", |dir| {
        let (_hsm, token) = setup(dir);
        token.generate_ec_key("k", KeyAlgorithm::EcP256).unwrap();
        let signer = token.signer("k").unwrap();
        // A single-threaded runtime: if signing blocked it, the ticker below could not run
        // while a signature is in flight.
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let in_flight = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let ticks_during = Arc::new(std::sync::atomic::AtomicU64::new(0));
            let (flag, ticks) = (in_flight.clone(), ticks_during.clone());
            let ticker = tokio::spawn(async move {
                loop {
                    if flag.load(std::sync::atomic::Ordering::SeqCst) {
                        ticks.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                    }
                    tokio::task::yield_now().await;
                }
            });
            for i in 0..50u32 {
                let msg = i.to_be_bytes().to_vec();
                in_flight.store(true, std::sync::atomic::Ordering::SeqCst);
                let sig = signer.sign_async(msg.clone()).await.unwrap();
                in_flight.store(false, std::sync::atomic::Ordering::SeqCst);
                verify_signature(signer.public_key(), &msg, &sig).unwrap();
            }
            ticker.abort();
            assert!(
                ticks_during.load(std::sync::atomic::Ordering::SeqCst) > 0,
                "the runtime ran other tasks while signatures were being made"
            );
        });
    });
}

/// The pool signs with its own session copy of a key (SoftHSM's token objects cost a file read
/// per attribute): the copy is sensitive and not extractable like the token key, listings show
/// only the token key, and a key destroyed in the token behind the pool's back (as another
/// process would) stops being used within the recheck interval; a key re-created under the same
/// label is the one used afterwards.
#[test]
fn the_pool_signs_with_a_sensitive_session_copy_that_follows_the_token_key() {
    use cryptoki::object::{Attribute, AttributeType, ObjectClass};
    softhsm_config::isolated(
        "the_pool_signs_with_a_sensitive_session_copy_that_follows_the_token_key",
        |dir| {
            let (hsm, token) = setup(dir);
            token.generate_ec_key("k", KeyAlgorithm::EcP256).unwrap();
            let signer = token.signer("k").unwrap();
            let sig = signer.sign(b"m").unwrap();
            verify_signature(signer.public_key(), b"m", &sig).unwrap();

            let slot = hsm.find_token("test-online").unwrap();
            let other = hsm.pkcs11().open_rw_session(slot).unwrap();
            let private_k = [
                Attribute::Class(ObjectClass::PRIVATE_KEY),
                Attribute::Label(b"k".to_vec()),
            ];
            let (mut copies, mut token_objects) = (0, Vec::new());
            for h in other.find_objects(&private_k).unwrap() {
                let attrs = other
                    .get_attributes(
                        h,
                        &[
                            AttributeType::Token,
                            AttributeType::Sensitive,
                            AttributeType::Extractable,
                        ],
                    )
                    .unwrap();
                let flag = |t: AttributeType| {
                    attrs.iter().find_map(|a| match (a, t) {
                        (Attribute::Token(v), AttributeType::Token)
                        | (Attribute::Sensitive(v), AttributeType::Sensitive)
                        | (Attribute::Extractable(v), AttributeType::Extractable) => Some(*v),
                        _ => None,
                    })
                };
                assert_eq!(flag(AttributeType::Sensitive), Some(true));
                assert_eq!(flag(AttributeType::Extractable), Some(false));
                if flag(AttributeType::Token) == Some(true) {
                    token_objects.push(h);
                } else {
                    copies += 1;
                }
            }
            assert_eq!(token_objects.len(), 1, "one token key");
            assert!(copies >= 1, "the pool signed with a session copy");
            let listed = token.objects().unwrap();
            assert_eq!(
                listed
                    .iter()
                    .filter(|o| o.label == "k" && o.class == "private-key")
                    .count(),
                1,
                "listings show the token key only: {listed:?}"
            );

            // The token key destroyed behind the pool's back: refused within the interval, and
            // the copy is gone too.
            other.destroy_object(token_objects[0]).unwrap();
            std::thread::sleep(hsm_bridge::KEY_RECHECK + std::time::Duration::from_millis(200));
            let err = signer.sign(b"after destroy").unwrap_err();
            assert!(err.to_string().contains('k'), "{err}");
            std::thread::sleep(hsm_bridge::KEY_RECHECK + std::time::Duration::from_millis(200));
            assert!(signer.sign(b"again").is_err());

            // A new key under the same label, made behind the pool's back while it holds no
            // copy, and then another while it does: each time the new key signs.
            for round in 0..2 {
                let old: Vec<_> = other
                    .find_objects(&[Attribute::Label(b"k".to_vec()), Attribute::Token(true)])
                    .unwrap();
                for h in old {
                    other.destroy_object(h).unwrap();
                }
                let fresh = token.generate_ec_key("k", KeyAlgorithm::EcP256).unwrap();
                std::thread::sleep(hsm_bridge::KEY_RECHECK + std::time::Duration::from_millis(200));
                let signer = token.signer("k").unwrap();
                assert_eq!(signer.public_key(), &fresh.spki);
                for i in 0..4u8 {
                    let msg = [round, i];
                    let sig = signer.sign(&msg).unwrap();
                    verify_signature(&fresh.spki, &msg, &sig).unwrap();
                }
            }
        },
    );
}
