//! The benchmark: `bench api` end to end on a small request file, and its refusals.

use meterpki_tests::tool;
use serde_json::Value;

use crate::support::{setup, EXE};

/// `bench api` end to end on a small request file (`--requests`): it starts the server on the
/// home, every request is issued over mTLS and stored (one checked with `show` and openssl), the
/// figures are in its JSON with the verification rate and the ceiling it derives; bad input is
/// refused before anything starts.
#[test]
fn bench_api_issues_a_request_file_over_mtls_and_reports_its_figures() {
    let s = setup();
    let req = s.path("bench-req.ndjson").display().to_string();
    s.bench("h", &["make-batch", "--count", "30", "--out", &req])
        .ok();
    let first: Value = serde_json::from_str(
        std::fs::read_to_string(&req)
            .unwrap()
            .lines()
            .next()
            .unwrap(),
    )
    .unwrap();
    let device = first["device_id"].as_str().unwrap().to_string();
    let v = s
        .bench(
            "h",
            &[
                "--json",
                "api",
                "--requests",
                &req,
                "--batch",
                "8",
                "--raw-seconds",
                "0.3",
                "--meterpki",
                EXE,
            ],
        )
        .ok()
        .json();
    assert_eq!(v["certificates"], 30, "{v}");
    assert_eq!(v["rejected"], 0, "{v}");
    for f in [
        "certificates_per_second",
        "raw_signing_per_second",
        "verify_per_second",
        "server_peak_rss_mb",
    ] {
        assert!(v[f].as_f64().unwrap() > 0.0, "{f}: {v}");
    }
    let (raw, verify, ceiling) = (
        v["raw_signing_per_second"].as_f64().unwrap(),
        v["verify_per_second"].as_f64().unwrap(),
        v["ratio_ceiling"].as_f64().unwrap(),
    );
    assert!(
        (ceiling - 1.0 / (1.0 + 2.0 * raw / verify)).abs() < 1e-9,
        "{v}"
    );
    // The first request's certificate is in the home's store and chains to the root.
    let shown = s
        .run("h", &["show", "--device-id", &device, "--json"])
        .ok()
        .json();
    let shown = if shown.is_array() {
        shown[0].clone()
    } else {
        shown
    };
    assert_eq!(shown["profile"], "meter-signing", "{shown}");
    std::fs::write(
        s.path("bench-cert.pem"),
        shown["certificate"].as_str().unwrap(),
    )
    .unwrap();
    let chain = s.path("bench-chain.pem");
    let mut pem = std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap();
    pem += &std::fs::read_to_string(s.path("h/ca/device.pem")).unwrap();
    std::fs::write(&chain, pem).unwrap();
    let r = tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            &chain.display().to_string(),
            &s.path("bench-cert.pem").display().to_string(),
        ],
        &[],
    );
    assert_eq!(r.code, 0, "{}{}", r.stdout, r.stderr);
    // Refusals: a missing file, an empty one, a nonsense measurement time, both inputs at once.
    s.bench("h", &["api", "--requests", "nope.ndjson"])
        .fails(2, "--requests");
    std::fs::write(s.path("empty.ndjson"), "\n").unwrap();
    s.bench(
        "h",
        &[
            "api",
            "--requests",
            &s.path("empty.ndjson").display().to_string(),
        ],
    )
    .fails(2, "no request lines");
    s.bench("h", &["api", "--count", "5", "--raw-seconds", "0"])
        .fails(2, "--raw-seconds");
    s.bench("h", &["api", "--count", "5", "--requests", &req])
        .fails(2, "cannot be used with");
}

/// `bench hostile` end to end, small: the batch issues alone and under the attack, the attack
/// reaches the server (connections made and ended, uploads refused, /readyz answered), and the
/// figures are in its JSON.
#[test]
fn bench_hostile_runs_a_batch_beside_an_attack_and_reports_its_figures() {
    let s = setup();
    let v = s
        .bench(
            "h",
            &[
                "--json",
                "hostile",
                "--batch",
                "5",
                "--addresses",
                "2",
                "--idle",
                "6",
                "--uploads",
                "2",
                "--trickle",
                "2",
                "--readyz",
                "1",
                "--warmup",
                "2",
                "--meterpki",
                EXE,
            ],
        )
        .ok()
        .json();
    assert_eq!(v["issued"], 10, "{v}");
    for f in [
        "batch_seconds_alone",
        "batch_seconds_under_attack",
        "server_peak_rss_mb",
        "attack_connections_made",
        "uploads_refused",
        "readyz_answered",
    ] {
        assert!(v[f].as_f64().unwrap() > 0.0, "{f}: {v}");
    }
    // Answered from the probe cache: at most one probe per 5 s interval (and the batch's).
    assert!(
        v["readiness_hsm_probes_during_attack"].as_u64().unwrap() <= 2,
        "{v}"
    );
    let bad = s.bench("h", &["hostile", "--batch", "0"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("--batch"), "{}", bad.stderr);
}

/// `bench sizes` end to end, small: the home's meter certificates without and with a CRL
/// pointer, within the design's limits with the shipped profiles' headroom.
#[test]
fn bench_sizes_reports_the_meter_certificate_sizes_of_the_home() {
    let s = setup();
    let v = s
        .bench("h", &["--json", "sizes", "--count", "40"])
        .ok()
        .json();
    let variants = v["variants"].as_array().unwrap();
    assert_eq!(variants.len(), 2, "{v}");
    for (variant, max) in variants.iter().zip([407, 455]) {
        assert_eq!(variant["certificates"], 40, "{v}");
        assert!(variant["max"].as_u64().unwrap() <= max, "{v}");
        assert!(variant["headroom_bytes"].as_i64().unwrap() >= 3, "{v}");
    }
    assert!(
        variants[1]["longest_crl_url"].as_u64().unwrap() <= 30,
        "{v}"
    );
    let bad = s.bench("h", &["sizes", "--count", "0"]);
    assert_ne!(bad.code, 0);
    assert!(bad.stderr.contains("--count"), "{}", bad.stderr);
}
