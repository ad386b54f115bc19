//! One key on several tokens (`SignerSet`): signatures spread over the tokens in the rotation,
//! a token that fails or returns a signature that does not verify leaves it and the signature
//! is made on another, every token failing is an error, and a probe brings a token back.

mod common;

use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Duration;

use ca_core::{verify_signature, SignError, Signer, SignerSet, SignerSetError};
use common::SoftSigner;
use spki::SubjectPublicKeyInfoOwned;

const OK: u8 = 0;
const FAIL: u8 = 1;
const CORRUPT: u8 = 2;

/// A token holding a copy of one key, told to work, fail or corrupt; each signature takes a
/// few milliseconds, as a device's does, so that concurrent signatures overlap.
#[derive(Debug)]
struct Token {
    key: SoftSigner,
    mode: AtomicU8,
}

impl Token {
    fn new(key: &SoftSigner) -> Arc<Token> {
        Arc::new(Token {
            key: SoftSigner {
                p256: key.p256.clone(),
                p384: None,
                spki: key.spki.clone(),
                corrupt: false,
            },
            mode: AtomicU8::new(OK),
        })
    }

    fn set(&self, mode: u8) {
        self.mode.store(mode, Ordering::SeqCst);
    }

    fn answer(&self, sig: Result<Vec<u8>, SignError>) -> Result<Vec<u8>, SignError> {
        std::thread::sleep(Duration::from_millis(3));
        match self.mode.load(Ordering::SeqCst) {
            FAIL => Err(SignError::Backend {
                key: "device-ca".into(),
                source: "C_Sign failed with CKR_DEVICE_ERROR".into(),
            }),
            CORRUPT => sig.map(|mut s| {
                let n = s.len();
                s[n - 3] ^= 1;
                s
            }),
            _ => sig,
        }
    }
}

impl Signer for Token {
    fn algorithm(&self) -> ca_core::KeyAlgorithm {
        self.key.algorithm()
    }
    fn public_key(&self) -> &SubjectPublicKeyInfoOwned {
        self.key.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, SignError> {
        self.answer(self.key.sign(message))
    }
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, SignError> {
        self.answer(self.key.sign_digest(digest))
    }
}

fn set_of(tokens: &[(&str, &Arc<Token>)]) -> SignerSet {
    SignerSet::new(
        "device-ca",
        tokens
            .iter()
            .map(|(l, t)| (l.to_string(), (*t).clone() as Arc<dyn Signer>))
            .collect(),
    )
    .unwrap()
}

#[test]
fn a_token_holding_another_key_is_refused_by_name() {
    let (a, b) = (SoftSigner::p256(), SoftSigner::p256());
    let r = SignerSet::new(
        "device-ca",
        vec![
            ("a".into(), Token::new(&a) as Arc<dyn Signer>),
            ("a2".into(), Token::new(&a) as Arc<dyn Signer>),
            ("b".into(), Token::new(&b) as Arc<dyn Signer>),
        ],
    );
    match r {
        Err(e @ SignerSetError::KeyDiffers { .. }) => {
            let text = e.to_string();
            assert!(
                text.contains("\"b\"") && text.contains("device-ca"),
                "{text}"
            );
        }
        other => panic!("{other:?}"),
    }
    assert!(matches!(
        SignerSet::new("device-ca", Vec::new()),
        Err(SignerSetError::Empty { .. })
    ));
}

#[test]
fn concurrent_signatures_spread_over_the_tokens() {
    let key = SoftSigner::p256();
    let (a, b) = (Token::new(&key), Token::new(&key));
    let set = set_of(&[("a", &a), ("b", &b)]);
    std::thread::scope(|s| {
        for t in 0..4u8 {
            let set = &set;
            s.spawn(move || {
                for i in 0..25u8 {
                    let msg = [t, i];
                    let sig = set.sign(&msg).unwrap();
                    verify_signature(set.public_key(), &msg, &sig).unwrap();
                }
            });
        }
    });
    let states = set.states();
    assert_eq!(states.iter().map(|s| s.signatures).sum::<u64>(), 100);
    assert!(
        states.iter().all(|s| s.signatures > 0 && s.up),
        "{states:?}"
    );
}

#[test]
fn a_failing_token_leaves_the_rotation_its_signature_is_made_on_another_and_a_probe_brings_it_back()
{
    let key = SoftSigner::p256();
    let (a, b) = (Token::new(&key), Token::new(&key));
    let set = set_of(&[("a", &a), ("b", &b)]);
    for (mode, why) in [(FAIL, "CKR_DEVICE_ERROR"), (CORRUPT, "does not verify")] {
        let failed_before = set.states()[0].failures;
        a.set(mode);
        for i in 0..5u8 {
            let sig = set.sign(&[i]).unwrap();
            verify_signature(set.public_key(), &[i], &sig).unwrap();
            let digest = [i; 32];
            set.sign_digest(&digest).unwrap();
        }
        let states = set.states();
        assert!(!states[0].up, "{states:?}");
        assert!(
            states[0].reason.as_deref().unwrap().contains(why),
            "{states:?}"
        );
        // Tried once, then out of the rotation: the other signatures went to b alone.
        assert_eq!(states[0].failures, failed_before + 1, "{states:?}");
        // Still failing: the probe leaves it out.
        assert!(set.probe(Duration::ZERO).is_empty());
        a.set(OK);
        assert_eq!(set.probe(Duration::ZERO), vec!["a".to_string()]);
        assert!(set.states()[0].up);
        // A probe waits its interval for a token that failed just now.
        a.set(FAIL);
        set.sign(b"x").unwrap();
        a.set(OK);
        assert!(set.probe(Duration::from_secs(3600)).is_empty());
        assert!(!set.states()[0].up);
        set.probe(Duration::ZERO);
    }
}

#[test]
fn every_token_failing_is_an_error_naming_each_and_they_recover() {
    let key = SoftSigner::p256();
    let (a, b) = (Token::new(&key), Token::new(&key));
    let set = set_of(&[("a", &a), ("b", &b)]);
    a.set(FAIL);
    b.set(CORRUPT);
    let e = set.sign(b"m").unwrap_err().to_string();
    assert!(e.contains("a: ") && e.contains("b: "), "{e}");
    assert!(!set.any_up());
    let e = set.sign(b"m").unwrap_err().to_string();
    assert!(e.contains("no token is in the rotation"), "{e}");
    b.set(OK);
    assert_eq!(set.probe(Duration::ZERO), vec!["b".to_string()]);
    let sig = set.sign(b"m").unwrap();
    verify_signature(set.public_key(), b"m", &sig).unwrap();
}
