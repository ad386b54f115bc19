//! An officer's share file, parsed and checked as at a ceremony.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let text = String::from_utf8_lossy(data);
    let _ = ca_core::ShareFile::parse(&text, std::path::Path::new("fuzz.share"));
});
