//! A trust-anchor update checked as a meter would (`update verify`): CMS SignedData, the signer's
//! chain to a real meterpki root, the signed attributes, the TAMPUpdate; and the strict
//! TAMPUpdate decoder on its own.
#![no_main]
use std::sync::OnceLock;

use libfuzzer_sys::fuzz_target;

fn root() -> &'static x509_cert::Certificate {
    static ROOT: OnceLock<x509_cert::Certificate> = OnceLock::new();
    ROOT.get_or_init(|| {
        ca_core::certificate_from_pem(include_str!("../seeds/root.pem")).expect("seed root")
    })
}

fuzz_target!(|data: &[u8]| {
    let opts = ca_core::tamp::VerifyOptions {
        signer_policy: const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.1.5"),
        device: None,
        after_seq: None,
        now: std::time::SystemTime::now(),
    };
    let _ = ca_core::tamp::verify_update(data, root(), &opts);
    let _ = ca_core::tamp::decode_update(data);
});
