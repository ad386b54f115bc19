//! Benchmark input: meter requests with fresh software P-256 keys, as a factory line would send
//! them (the keys are discarded).

use anyhow::Result;
use meterpki_cli::support::input;
use serde_json::json;

/// One meter request with a fresh software P-256 key: a CSR (RFC 2986) signed by that key.
pub(crate) fn meter_request(profile: &str, device_id: &str) -> Result<String> {
    use base64::Engine as _;
    Ok(serde_json::to_string(&json!({
        "profile": profile,
        "device_id": device_id,
        "csr": base64::engine::general_purpose::STANDARD.encode(software_csr()?),
    }))?)
}

/// A CSR (RFC 2986, DER) for a fresh software P-256 key, signed by that key.
pub(crate) fn software_csr() -> Result<Vec<u8>> {
    use der::asn1::{BitString, SetOfVec};
    use der::{Decode, Encode};
    use p256::ecdsa::signature::Signer as _;
    use x509_cert::request::{CertReq, CertReqInfo, Version};
    let key = p256::ecdsa::SigningKey::random(&mut rand::rngs::OsRng);
    let point = key.verifying_key().to_encoded_point(false);
    let spki = ca_core::spki_from_point(ca_core::KeyAlgorithm::EcP256, point.as_bytes())?;
    let info = CertReqInfo {
        version: Version::V1,
        subject: x509_cert::name::Name::default(),
        public_key: spki,
        attributes: SetOfVec::new(),
    };
    let sig: p256::ecdsa::Signature = key.sign(&info.to_der()?);
    let csr = CertReq {
        info,
        algorithm: ca_core::KeyAlgorithm::EcP256.signature_algorithm(),
        signature: BitString::from_bytes(sig.to_der().as_bytes())?,
    };
    let der = csr.to_der()?;
    debug_assert!(CertReq::from_der(&der).is_ok());
    Ok(der)
}

/// Writes `count` requests for distinct devices (a random 32-bit prefix and a counter).
pub(crate) fn write_batch(count: usize, out: &std::path::Path, profile: &str) -> Result<()> {
    use rand::RngCore;
    use std::io::Write;
    let prefix = rand::rngs::OsRng.next_u32().to_be_bytes();
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2);
    let per = count.div_ceil(workers);
    let parts: Vec<Result<Vec<String>>> = std::thread::scope(|s| {
        (0..workers)
            .map(|w| {
                s.spawn(move || {
                    let lo = w * per;
                    let hi = (lo + per).min(count);
                    (lo..hi)
                        .map(|i| {
                            let c = (i as u32).to_be_bytes();
                            let id = [
                                prefix[0], prefix[1], prefix[2], prefix[3], c[0], c[1], c[2], c[3],
                            ];
                            meter_request(profile, &ca_core::Eui64(id).to_string())
                        })
                        .collect()
                })
            })
            .collect::<Vec<_>>()
            .into_iter()
            .map(|h| h.join().map_err(|_| anyhow::anyhow!("a worker panicked"))?)
            .collect()
    });
    let mut f = std::io::BufWriter::new(std::fs::File::create(out)?);
    for part in parts {
        for line in part? {
            f.write_all(line.as_bytes())?;
            f.write_all(b"\n")?;
        }
    }
    f.flush()?;
    Ok(())
}

pub(crate) fn make_batch(count: usize, out: &std::path::Path, profile: &str) -> Result<()> {
    if count == 0 {
        return Err(input("--count must be at least 1"));
    }
    write_batch(count, out, profile)?;
    eprintln!("wrote {count} requests to {}", out.display());
    Ok(())
}
