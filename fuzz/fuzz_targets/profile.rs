//! A certificate profile's TOML, validated as at start-up.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = policies::Profile::from_toml(std::path::Path::new("fuzz.toml"), text);
    }
});
