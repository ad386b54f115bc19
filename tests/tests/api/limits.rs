//! Per-account limits (429 while the account's slots are busy) and SIGTERM, which lets a batch
//! in flight finish and be answered.

use std::process::{Command, Stdio};

use meterpki_tests::Scratch;
use serde_json::{json, Value};

use crate::support::{curl, curl_args, items, Server, EXE};

#[test]
fn the_api_limits_each_account_and_finishes_in_flight_batches_at_sigterm() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "access"]);
    s.account(
        "h",
        "factory",
        "line-all",
        &["--device-range", "00-00-00-00-00-00-00-00/0"],
    );
    let small = json!({"request_id": "small-1", "items": items(&s, 1, &[])}).to_string();
    let srv = Server::start_with(&s, &["--per-account-limit", "1"]);
    let port = srv.port;
    let bg = |file: &str| {
        let body = s.path(&format!("{file}.json"));
        let args = curl_args(
            &s,
            port,
            Some("line-all"),
            "POST",
            "/v1/batches",
            Some(&body),
            &s.path(&format!("{file}.out")),
        );
        Command::new("curl")
            .args(args)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap()
    };
    // While a big batch is being issued, another request of the same account gets 429. On a
    // loaded machine the probe can reach the server before the big batch (its upload is 3 MB):
    // then the big batch is the one refused with 429, and it is sent again under a new ID.
    let mut saw_429 = false;
    for attempt in 0..5 {
        // The largest batch the API takes, so that it is still in flight when the probe arrives.
        let big = json!({"request_id": format!("big-{attempt}"), "items": items(&s, 10_000, &[])})
            .to_string();
        std::fs::write(s.path("big.json"), &big).unwrap();
        let mut first = bg("big");
        for _ in 0..1000 {
            std::thread::sleep(std::time::Duration::from_millis(10));
            let (code, body) = curl(
                &s,
                &srv,
                Some("line-all"),
                "POST",
                "/v1/batches",
                Some(&small),
                &[],
            );
            if code == 429 {
                assert!(body.contains("too-many-requests"), "{body}");
                saw_429 = true;
                break;
            }
            assert_eq!(code, 200, "{body}");
            if first.try_wait().unwrap().is_some() {
                break;
            }
        }
        let out = first.wait_with_output().unwrap();
        let status = String::from_utf8_lossy(&out.stdout).to_string();
        if saw_429 {
            assert_eq!(status, "200");
            break;
        }
        assert_eq!(
            status,
            "429",
            "the big batch was answered before any probe saw 429: {}",
            std::fs::read_to_string(s.path("big.out")).unwrap_or_default()
        );
    }
    assert!(
        saw_429,
        "a second request while the account's only slot is busy gets 429"
    );
    // SIGTERM while a batch is in flight: it finishes, is answered, and the server exits 0.
    let second_big = json!({"request_id": "big-2nd", "items": items(&s, 4000, &[])}).to_string();
    std::fs::write(s.path("big2.json"), &second_big).unwrap();
    let inflight = bg("big2");
    std::thread::sleep(std::time::Duration::from_millis(300));
    let code = srv.stop();
    assert_eq!(code, 0, "the server exits cleanly");
    let out = inflight.wait_with_output().unwrap();
    let status = String::from_utf8_lossy(&out.stdout).to_string();
    if status == "200" {
        let r: Value =
            serde_json::from_str(&std::fs::read_to_string(s.path("big2.out")).unwrap()).unwrap();
        assert!(r["results"]
            .as_array()
            .unwrap()
            .iter()
            .all(|x| x["status"] == "issued"));
    }
    // Whatever the client saw, nothing is half-stored: a retry answers every item, issued once.
    let srv = Server::start(&s);
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-all"),
        "POST",
        "/v1/batches",
        Some(&second_big),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let r: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(r["results"].as_array().unwrap().len(), 4000);
    assert!(r["results"]
        .as_array()
        .unwrap()
        .iter()
        .all(|x| x["status"] == "issued"));
    let (_, metrics) = curl(&s, &srv, None, "GET", "/metrics", None, &[]);
    assert!(
        metrics.contains("meterpki_hsm_sessions_max 2")
            && metrics.contains("meterpki_hsm_sign_seconds_count"),
        "{metrics}"
    );
    assert_eq!(srv.stop(), 0);
}
