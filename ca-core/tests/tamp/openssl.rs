//! The cross-check with openssl: `openssl cms -verify` accepts a signed update, extracts the
//! same content, and refuses an altered one.

use std::process::Command;

use ca_core::certificate_to_pem;
use ca_core::tamp::{encode_update, verify_update};

use crate::fixtures::{content, opts, pki};

fn openssl_verify(dir: &std::path::Path, name: &str, der: &[u8]) -> Option<Vec<u8>> {
    let input = dir.join(format!("{name}.der"));
    let out = dir.join(format!("{name}.content"));
    std::fs::write(&input, der).unwrap();
    let status = Command::new("openssl")
        .args(["cms", "-verify", "-inform", "DER", "-in"])
        .arg(&input)
        .arg("-CAfile")
        .arg(dir.join("root.pem"))
        .args(["-purpose", "any", "-binary", "-out"])
        .arg(&out)
        .output()
        .expect("openssl runs");
    if status.status.success() {
        Some(std::fs::read(&out).unwrap())
    } else {
        None
    }
}

#[test]
fn openssl_cms_verify_agrees() {
    // `make test` installs openssl; a machine without it fails here rather than skipping.
    Command::new("openssl")
        .arg("version")
        .output()
        .expect("openssl must be installed (apt-get install openssl)");
    let p = pki();
    let c = encode_update(&content(7, &p)).unwrap();
    let der = p.signer().sign(&c).unwrap();
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(
        dir.path().join("root.pem"),
        certificate_to_pem(&p.root).unwrap(),
    )
    .unwrap();

    assert_eq!(
        openssl_verify(dir.path(), "update", &der).as_deref(),
        Some(&c[..]),
        "openssl cms -verify refused the update or extracted other content"
    );
    // The last byte is in the signature: openssl refuses it too.
    let mut bad = der.clone();
    let n = bad.len();
    bad[n - 5] ^= 0x01;
    assert!(openssl_verify(dir.path(), "altered", &bad).is_none());
    assert!(verify_update(&bad, &p.root, &opts()).is_err());
}
