//! Raw signing rates, measured the same way later issues measure issuance so that ratios compare
//! like with like: through [`HsmSigner`](crate::HsmSigner) with N worker threads (one pooled
//! session each), and through a bare `cryptoki` loop (find the key once, `C_Sign` in a loop).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use ca_core::Signer;
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, ObjectClass};

use crate::error::HsmError;
use crate::pool::Token;

/// One measured rate.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BenchFigure {
    /// What was measured.
    pub name: String,
    /// Worker threads (one session each).
    pub threads: usize,
    /// Signatures made.
    pub signatures: u64,
    /// Wall time in seconds.
    pub seconds: f64,
    /// Signatures per second.
    pub per_second: f64,
}

/// Signs a 32- or 48-byte message through `signer` from `threads` threads for `duration`.
pub fn bench_signer(
    name: &str,
    signer: Arc<dyn Signer>,
    threads: usize,
    duration: Duration,
) -> Result<BenchFigure, HsmError> {
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for t in 0..threads {
        let signer = signer.clone();
        let count = count.clone();
        handles.push(std::thread::spawn(move || -> Result<(), String> {
            let mut msg = [0u8; 64];
            let mut i: u64 = 0;
            while Instant::now() < deadline {
                msg[..8].copy_from_slice(&i.to_be_bytes());
                msg[8] = t as u8;
                signer.sign(&msg).map_err(|e| e.to_string())?;
                count.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join()
            .map_err(|_| HsmError::Unexpected {
                token: "bench".into(),
                detail: "a bench thread panicked".into(),
            })?
            .map_err(|detail| HsmError::Unexpected {
                token: "bench".into(),
                detail,
            })?;
    }
    let seconds = start.elapsed().as_secs_f64();
    let signatures = count.load(Ordering::Relaxed);
    Ok(BenchFigure {
        name: name.into(),
        threads,
        signatures,
        seconds,
        per_second: signatures as f64 / seconds,
    })
}

/// The floor: one session per thread opened straight from cryptoki, the key found once and
/// copied into the session as the pool does, then `C_Sign(CKM_ECDSA)` over a fixed digest in a
/// tight loop. No pool, no DER conversion.
pub fn bench_bare_cryptoki(
    token: &Arc<Token>,
    key_label: &str,
    digest_len: usize,
    threads: usize,
    duration: Duration,
) -> Result<BenchFigure, HsmError> {
    bench_bare_cryptoki_with(token, key_label, digest_len, threads, duration, true)
}

/// [`bench_bare_cryptoki`], choosing whether to sign with a session copy of the key (what the
/// pool does) or with the token object itself (`session_copy` false: SoftHSM's slower path,
/// for comparison).
pub fn bench_bare_cryptoki_with(
    token: &Arc<Token>,
    key_label: &str,
    digest_len: usize,
    threads: usize,
    duration: Duration,
    session_copy: bool,
) -> Result<BenchFigure, HsmError> {
    let slot = token.hsm().find_token(token.label())?;
    let count = Arc::new(AtomicU64::new(0));
    let start = Instant::now();
    let deadline = start + duration;
    let mut handles = Vec::new();
    for _ in 0..threads {
        let pkcs11 = token.hsm().pkcs11().clone();
        let count = count.clone();
        let label = key_label.to_string();
        handles.push(std::thread::spawn(move || -> Result<(), HsmError> {
            // The token is already logged in by the pool: login state is per application.
            let session = pkcs11
                .open_rw_session(slot)
                .map_err(|e| HsmError::from_ck(e, "bench: opening a session"))?;
            let key = *session
                .find_objects(&[
                    Attribute::Token(true),
                    Attribute::Class(ObjectClass::PRIVATE_KEY),
                    Attribute::Label(label.clone().into_bytes()),
                ])
                .map_err(|e| HsmError::from_ck(e, "bench: finding the key"))?
                .first()
                .ok_or_else(|| HsmError::KeyNotFound {
                    label: label.clone(),
                    token: "bench".into(),
                })?;
            // The same key handle the pool signs with: this session's own copy (see
            // `pool::session_copy`), so the raw rate is that of the server's configuration.
            let key = if session_copy {
                crate::pool::session_copy(&session, key)
            } else {
                key
            };
            let digest = vec![0x5au8; digest_len];
            while Instant::now() < deadline {
                session
                    .sign(&Mechanism::Ecdsa, key, &digest)
                    .map_err(|e| HsmError::from_ck(e, "bench: signing"))?;
                count.fetch_add(1, Ordering::Relaxed);
            }
            Ok(())
        }));
    }
    for h in handles {
        h.join().map_err(|_| HsmError::Unexpected {
            token: "bench".into(),
            detail: "a bench thread panicked".into(),
        })??;
    }
    let seconds = start.elapsed().as_secs_f64();
    let signatures = count.load(Ordering::Relaxed);
    Ok(BenchFigure {
        name: if session_copy {
            "bare cryptoki C_Sign loop (session copy)".into()
        } else {
            "bare cryptoki, token object".into()
        },
        threads,
        signatures,
        seconds,
        per_second: signatures as f64 / seconds,
    })
}
