//! Every fuzz seed and every input a fuzzer once crashed on (`fuzz/seeds/<target>/`,
//! `fuzz/regressions/<target>/`), replayed through the same calls as the cargo-fuzz targets in
//! `fuzz/fuzz_targets/`: on stable, in every `make test`, so a fixed crash stays fixed.

use std::path::{Path, PathBuf};

fn inputs(target: &str) -> Vec<PathBuf> {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz");
    let mut out = Vec::new();
    for dir in ["seeds", "regressions"] {
        if let Ok(entries) = std::fs::read_dir(root.join(dir).join(target)) {
            for e in entries {
                out.push(e.unwrap().path());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn request_and_ndjson_inputs() {
    let profiles = policies::ProfileSet::builtin();
    let mut n = 0;
    for f in inputs("request").into_iter().chain(inputs("ndjson")) {
        let data = std::fs::read(&f).unwrap();
        for line in data.split(|b| *b == b'\n') {
            if let Ok(item) = serde_json::from_slice::<ca_core::issue::RequestItem>(line) {
                let _ = ca_core::issue::parse_request(&item, &profiles);
            }
            let _ = serde_json::from_slice::<serde_json::Value>(line);
        }
        n += 1;
    }
    assert!(n >= 2, "the seeds are missing");
    // Deep nesting fails cleanly (serde_json's recursion limit), it does not overflow.
    let deep = "[".repeat(100_000);
    assert!(serde_json::from_str::<ca_core::issue::RequestItem>(&deep).is_err());
    assert!(serde_json::from_str::<serde_json::Value>(&deep).is_err());
}

#[test]
fn profile_share_and_tamp_inputs() {
    let mut n = 0;
    for f in inputs("profile") {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        let _ = policies::Profile::from_toml(Path::new("fuzz.toml"), &text);
        n += 1;
    }
    for f in inputs("share") {
        let text = String::from_utf8_lossy(&std::fs::read(&f).unwrap()).into_owned();
        let _ = ca_core::ShareFile::parse(&text, Path::new("fuzz.share"));
        n += 1;
    }
    let root_pem = include_str!("../../fuzz/seeds/root.pem");
    let root = ca_core::certificate_from_pem(root_pem).unwrap();
    let opts = ca_core::tamp::VerifyOptions {
        signer_policy: const_oid::ObjectIdentifier::new_unwrap("1.3.6.1.4.1.32473.1.5"),
        device: None,
        after_seq: None,
        now: std::time::SystemTime::now(),
    };
    let mut verified = 0;
    for f in inputs("tamp") {
        let data = std::fs::read(&f).unwrap();
        verified += ca_core::tamp::verify_update(&data, &root, &opts).is_ok() as usize;
        let _ = ca_core::tamp::decode_update(&data);
        n += 1;
    }
    assert!(n >= 14, "the seeds are missing");
    assert_eq!(verified, 2, "the two real updates among the seeds verify");
}
