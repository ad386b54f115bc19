//! The database behind a server going away: stopped (503 `store-unavailable` with a problem
//! document, `/readyz` red, nothing half-stored, recovery without a restart) and the primary
//! killed mid-load with a synchronous standby promoted (the servers reconnect by themselves,
//! every request in flight fails cleanly and its retry answers, and no answered certificate
//! is lost).

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use meterpki_tests::PgCluster;
use serde_json::{json, Value};

use super::support::{curl, items, setup, Server};

/// Batch `n` of `size` items for fresh devices.
fn batch(s: &meterpki_tests::Scratch, n: usize, size: usize) -> String {
    let ids: Vec<String> = (0..size)
        .map(|i| format!("00-DB-12-00-00-{:02X}-{:02X}-{i:02X}", n / 256, n % 256))
        .collect();
    let refs: Vec<&str> = ids.iter().map(String::as_str).collect();
    json!({"request_id": format!("db-{n}"), "items": items(s, size, &refs)}).to_string()
}

fn serials(answer: &str) -> Vec<String> {
    let v: Value = serde_json::from_str(answer).unwrap();
    v["results"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["status"], "issued", "{r}");
            r["serial"].as_str().unwrap().to_string()
        })
        .collect()
}

fn wait_ready(s: &meterpki_tests::Scratch, srv: &Server, within: Duration) {
    let start = Instant::now();
    loop {
        let (code, body) = curl(s, srv, None, "GET", "/readyz", None, &[]);
        if code == 200 {
            return;
        }
        assert!(
            start.elapsed() < within,
            "not ready again after {within:?}: {code} {body}"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn stored_certificates(s: &meterpki_tests::Scratch) -> u64 {
    let check = s.run("h", &["store", "check", "--json"]).ok().json();
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    check["certificates"].as_u64().unwrap()
}

#[test]
fn a_server_answers_503_while_its_database_is_down_and_recovers_without_a_restart() {
    let s = setup();
    let pg = PgCluster::primary();
    let url_file = s.path("db.url");
    std::fs::write(&url_file, pg.database("down")).unwrap();
    s.migrate_to_postgres("h", &url_file, &[]).ok();
    let srv = Server::start(&s);
    // The store as the server left it after starting (with its own TLS certificate).
    let before = stored_certificates(&s);
    let first = batch(&s, 1, 5);
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&first),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    let mut answered: BTreeSet<String> = serials(&body).into_iter().collect();

    pg.ctl("stop", "primary");
    let second = batch(&s, 2, 5);
    for _ in 0..2 {
        let (code, body) = curl(
            &s,
            &srv,
            Some("line-7"),
            "POST",
            "/v1/batches",
            Some(&second),
            &[],
        );
        assert_eq!(code, 503, "{body}");
        let problem: Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            problem["type"], "urn:meterpki:problem:store-unavailable",
            "{problem}"
        );
        assert_eq!(problem["status"], 503, "{problem}");
        assert!(
            problem["detail"].as_str().unwrap().contains("retry"),
            "{problem}"
        );
    }
    // Reads too, and the readiness probe: the request that failed made it probe again.
    let (code, body) = curl(&s, &srv, Some("ops"), "GET", "/v1/batches/db-1", None, &[]);
    assert_eq!(code, 503, "{body}");
    let (code, body) = curl(&s, &srv, None, "GET", "/readyz", None, &[]);
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("store-unavailable"), "{body}");

    // Back: the same server, no restart.
    pg.ctl("start", "primary");
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&second),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    answered.extend(serials(&body));
    wait_ready(&s, &srv, Duration::from_secs(30));
    // The replay of the first batch answers what was stored before the outage.
    let (code, body) = curl(
        &s,
        &srv,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&first),
        &[],
    );
    assert_eq!(code, 200, "{body}");
    assert!(serials(&body).iter().all(|x| answered.contains(x)));
    drop(srv);
    // Nothing half-stored: exactly the certificates answered, every index consistent, the
    // audit chain whole.
    assert_eq!(stored_certificates(&s), before + answered.len() as u64);
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn the_primary_killed_mid_load_and_the_standby_promoted_loses_nothing_answered() {
    let s = setup();
    let pg = PgCluster::primary();
    pg.standby();
    let url_file = s.path("db.url");
    std::fs::write(&url_file, pg.database("failover")).unwrap();
    s.migrate_to_postgres("h", &url_file, &[]).ok();
    let servers = [Server::start(&s), Server::start(&s)];
    let before = stored_certificates(&s);

    // Batches go to both servers in turn from a client thread; a 503 is retried with the same
    // request_id and body (the contract), and every serial answered is kept. Meanwhile the
    // primary dies as a crash does (requests in flight), and a second later the standby,
    // synchronous and so holding every commit, is promoted.
    let bodies: Vec<String> = (0..16).map(|n| batch(&s, 100 + n, 10)).collect();
    let answered = std::sync::Mutex::new(BTreeSet::new());
    let unavailable = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|scope| {
        scope.spawn(|| {
            for (n, body) in bodies.iter().enumerate() {
                let start = Instant::now();
                loop {
                    let srv = &servers[n % 2];
                    let (code, answer) = curl(
                        &s,
                        srv,
                        Some("line-7"),
                        "POST",
                        "/v1/batches",
                        Some(body),
                        &[],
                    );
                    if code == 200 {
                        answered.lock().unwrap().extend(serials(&answer));
                        break;
                    }
                    assert_eq!(code, 503, "batch {n}: {answer}");
                    assert!(answer.contains("store-unavailable"), "{answer}");
                    unavailable.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    assert!(
                        start.elapsed() < Duration::from_secs(90),
                        "batch {n} still refused after 90 s: {answer}"
                    );
                    std::thread::sleep(Duration::from_millis(100));
                }
            }
        });
        while answered.lock().unwrap().len() < 50 {
            std::thread::sleep(Duration::from_millis(20));
        }
        pg.ctl("kill", "primary");
        std::thread::sleep(Duration::from_secs(1));
        pg.ctl("promote", "standby");
    });
    let answered = answered.into_inner().unwrap();
    let unavailable = unavailable.into_inner();
    assert_eq!(answered.len(), 160);
    assert!(unavailable >= 1);
    for srv in &servers {
        wait_ready(&s, srv, Duration::from_secs(30));
    }
    drop(servers);
    // On the promoted standby: every certificate answered, and nothing else.
    assert_eq!(stored_certificates(&s), before + answered.len() as u64);
    s.run("h", &["audit", "verify"]).ok();
}

/// A server killed (SIGKILL) in the middle of a batch while another serves: the retry of the
/// same batch to the survivor answers every certificate, those the dead server stored among
/// them, and nothing is stored twice.
#[test]
fn a_server_killed_mid_batch_leaves_the_retry_to_the_survivor() {
    let s = setup();
    let url_file = s.path("db.url");
    std::fs::write(&url_file, meterpki_tests::pg_database("killed")).unwrap();
    s.migrate_to_postgres("h", &url_file, &[]).ok();
    let mut doomed = Server::start(&s);
    let survivor = Server::start(&s);
    let before = stored_certificates(&s);
    let mut db = postgres::Client::connect(
        std::fs::read_to_string(&url_file).unwrap().trim(),
        postgres::NoTls,
    )
    .unwrap();
    let records_before = stored_count_quick(&mut db);
    let body = batch(&s, 300, 250);
    std::fs::write(s.path("big.json"), &body).unwrap();
    let mut inflight = std::process::Command::new("curl")
        .args(super::support::curl_args(
            &s,
            doomed.port,
            Some("line-7"),
            "POST",
            "/v1/batches",
            Some(&s.path("big.json")),
            &s.path("big.out"),
        ))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Killed while the batch is being signed and stored (chunk by chunk).
    let start = Instant::now();
    while stored_count_quick(&mut db) == records_before && start.elapsed() < Duration::from_secs(30)
    {
        std::thread::sleep(Duration::from_millis(20));
    }
    doomed.child.kill().unwrap();
    doomed.child.wait().unwrap();
    let _ = inflight.wait();
    let partial = stored_count_quick(&mut db) - records_before;
    let (code, answer) = curl(
        &s,
        &survivor,
        Some("line-7"),
        "POST",
        "/v1/batches",
        Some(&body),
        &[],
    );
    assert_eq!(code, 200, "{answer}");
    let v: Value = serde_json::from_str(&answer).unwrap();
    let results = v["results"].as_array().unwrap();
    assert_eq!(results.len(), 250);
    let serials: BTreeSet<&str> = results
        .iter()
        .map(|r| {
            assert!(
                r["status"] == "issued",
                "every item answered with its certificate: {r}"
            );
            r["serial"].as_str().unwrap()
        })
        .collect();
    assert_eq!(serials.len(), 250);
    drop(survivor);
    eprintln!("the killed server had stored {partial} of 250");
    assert_eq!(stored_certificates(&s), before + 250);
    s.run("h", &["audit", "verify"]).ok();
}

/// The certificate records in the database (prefix `c` of the key layout), read straight
/// from PostgreSQL: cheap enough to poll.
fn stored_count_quick(db: &mut postgres::Client) -> u64 {
    let n: i64 = db
        .query_one(
            "SELECT count(*) FROM meterpki_kv WHERE k >= 'c'::bytea AND k < 'd'::bytea",
            &[],
        )
        .unwrap()
        .get(0);
    n as u64
}
