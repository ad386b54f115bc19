//! One request item (the JSON of an NDJSON line or of an API batch's `items`), then the whole
//! request step: base64/PEM, the PKCS#10 CSR's DER, its signature (proof of possession), the key.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let profiles = policies::ProfileSet::builtin();
    if let Ok(item) = serde_json::from_slice::<ca_core::issue::RequestItem>(data) {
        let _ = ca_core::issue::parse_request(&item, &profiles);
    }
});
