//! A batch file or an NDJSON request body: any bytes, split into lines, each parsed as a request
//! item and, when it is one, through the request step. Deeply nested or huge JSON must fail
//! cleanly (serde_json's recursion limit), never overflow the stack.
#![no_main]
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let profiles = policies::ProfileSet::builtin();
    for line in data.split(|b| *b == b'\n') {
        if let Ok(item) = serde_json::from_slice::<ca_core::issue::RequestItem>(line) {
            let _ = ca_core::issue::parse_request(&item, &profiles);
        }
        let _ = serde_json::from_slice::<serde_json::Value>(line);
    }
});
