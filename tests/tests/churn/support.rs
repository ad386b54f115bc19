//! What the churn tests share: a home with suppliers and meters, enrolment and assignment, and
//! the checks of an update (`meterpki update verify`, `openssl cms -verify`) and of the state.

use meterpki_tests::{tool, Scratch};
use serde_json::Value;

pub(crate) const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");
pub(crate) const A: &str = "90-B3-D5-1F-30-00-00-0A";
pub(crate) const B: &str = "90-B3-D5-1F-30-00-00-0B";
pub(crate) const X: &str = "90-B3-D5-1F-30-00-00-0C";

pub(crate) fn p(s: &Scratch, rel: &str) -> String {
    s.path(rel).display().to_string()
}

/// Enrols a key for `supplier` from an openssl CSR; returns the certificate's PEM path.
pub(crate) fn enrol(s: &Scratch, supplier: &str, profile: &str, name: &str) -> String {
    s.enrol("h", supplier, profile, name).ok();
    p(s, &format!("{name}.pem"))
}

/// A home with suppliers A and B (two keys each), X (one key), and `n` meters with
/// certificates; returns the meters' IDs.
pub(crate) fn setup(n: usize) -> (Scratch, Vec<String>) {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.supplier("h", A, "Alpha Energy");
    s.supplier("h", B, "Beta Power");
    s.supplier("h", X, "Gamma Gas");
    enrol(&s, A, "supplier-signing", "a-sign");
    enrol(&s, A, "supplier-key-agreement", "a-ka");
    enrol(&s, B, "supplier-signing", "b-sign");
    enrol(&s, B, "supplier-key-agreement", "b-ka");
    enrol(&s, X, "supplier-signing", "x-sign");
    let batch = p(&s, "meters.ndjson");
    s.bench(
        "h",
        &["make-batch", "--count", &n.to_string(), "--out", &batch],
    )
    .ok();
    s.run(
        "h",
        &["issue", "--batch", &batch, "--out", &p(&s, "meters.out")],
    )
    .ok();
    let ids = std::fs::read_to_string(s.path("meters.ndjson"))
        .unwrap()
        .lines()
        .map(|l| {
            serde_json::from_str::<Value>(l).unwrap()["device_id"]
                .as_str()
                .unwrap()
                .to_string()
        })
        .collect();
    (s, ids)
}

pub(crate) fn assign_all(s: &Scratch, ids: &[String], supplier: &str) {
    let csv: String = ids.iter().map(|d| format!("{d},{supplier}\n")).collect();
    std::fs::write(s.path("assign.csv"), csv).unwrap();
    s.run("h", &["meter", "assign", "--file", &p(s, "assign.csv")])
        .ok();
}

/// `meterpki update verify` as JSON, or the failure.
pub(crate) fn verify(s: &Scratch, file: &str, extra: &[&str]) -> Result<Value, String> {
    let mut args = vec![
        "update",
        "verify",
        file,
        "--root",
        "h/ca/root.pem",
        "--json",
    ];
    args.extend_from_slice(extra);
    let r = s.run("h", &args);
    if r.code == 0 {
        Ok(r.json())
    } else {
        Err(format!("exit {}: {}", r.code, r.stderr))
    }
}

/// openssl's CMS verification against our root; on success the DER TAMPUpdate content.
pub(crate) fn openssl_verify(s: &Scratch, file: &str) -> Result<Vec<u8>, String> {
    let out = s.path("content.der");
    let _ = std::fs::remove_file(&out);
    let r = tool(
        "openssl",
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-in",
            file,
            "-CAfile",
            &p(s, "h/ca/root.pem"),
            "-purpose",
            "any",
            "-binary",
            "-out",
            &out.display().to_string(),
        ],
        &[],
    );
    if r.code != 0 {
        return Err(r.stderr);
    }
    Ok(std::fs::read(out).unwrap())
}

pub(crate) fn meter(s: &Scratch, d: &str) -> Value {
    s.run("h", &["meter", "show", "--device-id", d, "--json"])
        .ok()
        .json()
}

pub(crate) fn suppliers(s: &Scratch) -> Vec<Value> {
    s.run("h", &["supplier", "list", "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

pub(crate) fn supplier(s: &Scratch, id: &str) -> Value {
    suppliers(s)
        .into_iter()
        .find(|v| v["id"] == id)
        .unwrap_or_else(|| panic!("no supplier {id}"))
}
