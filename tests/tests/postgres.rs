//! The shared store end to end, on the PostgreSQL cluster `make test` starts: an embedded store
//! moved into PostgreSQL (`store migrate --to postgres`), every command working on it after,
//! `store check` on both backends, and the refusals (a database of another store, a database
//! without the schema, a URL that does not connect).

use meterpki_tests::{pg_database, Scratch};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

fn config(s: &Scratch) -> String {
    std::fs::read_to_string(s.path("h/meterpki.toml")).unwrap()
}

#[test]
fn an_embedded_store_moves_to_postgres_and_everything_goes_on_there() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation", "access"]);
    for i in 1..=3 {
        s.issue_one(
            "h",
            &format!("00-DB-12-34-56-78-90-0{i}"),
            None,
            &format!("m{i}.pem"),
        )
        .ok();
    }
    s.run(
        "h",
        &[
            "revoke",
            "--device-id",
            "00-DB-12-34-56-78-90-02",
            "--reason",
            "keyCompromise",
        ],
    )
    .ok();
    let before = s.run("h", &["store", "check", "--json"]).ok().json();
    assert!(before["certificates"].as_u64().unwrap() >= 3, "{before}");
    assert_eq!(before["problems"].as_array().unwrap().len(), 0, "{before}");
    // Without --to on an embedded store: nothing to migrate, said so.
    s.run("h", &["store", "migrate"]).fails(2, "embedded");

    let url_file = s.path("db.url");
    std::fs::write(&url_file, format!("{}\n", pg_database("move"))).unwrap();
    let log_before = std::fs::read(s.path("h/audit/audit.log")).unwrap();
    let records_before = s.run("h", &["audit", "list", "--json"]).ok().json();
    // Killed half-way, twice: in the copy, and after its audit record was written to the
    // database but before the home was switched. Each time the home still runs on its
    // embedded store, and a re-run completes.
    for point in ["store.copy-chunk:1", "store.before-switch:1"] {
        let r = s.run_env(
            "h",
            &[
                "store",
                "migrate",
                "--to",
                "postgres",
                "--url-file",
                &url_file.display().to_string(),
            ],
            &[("METERPKI_FAILPOINT", point)],
        );
        assert_ne!(r.code, 0, "{point}: {}", r.stderr);
        assert!(config(&s).contains("backend = \"sled\""), "{point}");
        s.run("h", &["audit", "verify"]).ok();
    }
    let moved = s
        .migrate_to_postgres("h", &url_file, &["--json"])
        .ok()
        .json();
    assert_eq!(moved["switched"], true, "{moved}");
    assert_eq!(moved["certificates"], before["certificates"], "{moved}");
    assert_eq!(moved["revocations"], 1, "{moved}");
    assert!(
        config(&s).contains("backend = \"postgres\""),
        "{}",
        config(&s)
    );

    // Everything goes on, on PostgreSQL.
    let after = s.run("h", &["store", "check", "--json"]).ok().json();
    assert_eq!(after["problems"].as_array().unwrap().len(), 0, "{after}");
    assert_eq!(after["certificates"], before["certificates"]);
    s.run("h", &["audit", "verify"]).ok();
    // The audit chain went with it: every record of the file, then one `store.migrate` (the
    // interrupted runs' records were replaced), kept in the database from now on; the file is
    // left as it was.
    let records = s.run("h", &["audit", "list", "--json"]).ok().json();
    let (old, new) = (
        records_before.as_array().unwrap(),
        records.as_array().unwrap(),
    );
    assert_eq!(
        &new[..old.len()],
        &old[..],
        "the file's records, as they were"
    );
    assert_eq!(new.len(), old.len() + 1, "{records}");
    assert_eq!(new[old.len()]["event"], "store.migrate");
    s.run("h", &["status"]).ok();
    let shown = s
        .run(
            "h",
            &["show", "--device-id", "00-DB-12-34-56-78-90-02", "--json"],
        )
        .ok()
        .json();
    assert!(shown.to_string().contains("keyCompromise"), "{shown}");
    s.issue_one("h", "00-DB-12-34-56-78-90-04", None, "m4.pem")
        .ok();
    s.run("h", &["crl", "publish"]).ok();
    // Two publications at once (two processes on the shared store): both publish, and each
    // scope's cRLNumber of the second is above the first's.
    let publish = || {
        std::process::Command::new(EXE)
            .current_dir(s.path(""))
            .args(["--home", "h", "--json", "crl", "publish"])
            .env_remove("SOFTHSM2_CONF")
            .env_remove("METERPKI_REEXEC")
            .output()
            .unwrap()
    };
    let (x, y) = std::thread::scope(|t| {
        let x = t.spawn(publish);
        let y = t.spawn(publish);
        (x.join().unwrap(), y.join().unwrap())
    });
    let numbers = |o: &std::process::Output| -> Vec<u64> {
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let text = String::from_utf8_lossy(&o.stdout).replace(char::is_whitespace, "");
        text.split("\"crl_number\":")
            .skip(1)
            .map(|t| {
                t.split(|c: char| !c.is_ascii_digit())
                    .next()
                    .unwrap()
                    .parse()
                    .unwrap()
            })
            .collect()
    };
    let (nx, ny) = (numbers(&x), numbers(&y));
    assert!(!nx.is_empty() && nx.len() == ny.len(), "{nx:?} {ny:?}");
    let (lo, hi) = if nx[0] < ny[0] { (nx, ny) } else { (ny, nx) };
    assert!(lo.iter().zip(&hi).all(|(a, b)| a < b), "{lo:?} {hi:?}");
    let records = s.run("h", &["audit", "list", "--json"]).ok().json();
    assert!(
        records.as_array().unwrap().len() > old.len() + 4,
        "{records}"
    );
    assert_eq!(
        std::fs::read(s.path("h/audit/audit.log")).unwrap(),
        log_before
    );
    s.run("h", &["audit", "verify"]).ok();
    s.run("h", &["store", "migrate"]).ok();
    // Moved once: a second move is refused.
    s.migrate_to_postgres("h", &url_file, &[])
        .fails(2, "already PostgreSQL");
}

#[test]
fn a_database_of_another_store_or_without_the_schema_is_refused() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    s.issue_one("h", "00-DB-12-34-56-78-90-01", None, "m1.pem")
        .ok();
    let before = config(&s);
    // Another home's store in the database: refused, nothing switched.
    let other = Scratch::new(EXE);
    other.ceremonies("h", 3, 2, &["device"]);
    other
        .issue_one("h", "00-DB-12-34-56-78-90-09", None, "o.pem")
        .ok();
    let shared = s.path("shared.url");
    std::fs::write(&shared, pg_database("shared")).unwrap();
    other.migrate_to_postgres("h", &shared, &[]).ok();
    s.migrate_to_postgres("h", &shared, &[])
        .fails(2, "another store's data");
    assert_eq!(config(&s), before, "the home was switched");
    s.run("h", &["status"]).ok();
    // A database whose schema a newer meterpki migrated: this one refuses to serve on it (and
    // to run anything else), naming both versions.
    let mut db = postgres::Client::connect(
        std::fs::read_to_string(&shared).unwrap().trim(),
        postgres::NoTls,
    )
    .unwrap();
    db.execute("INSERT INTO meterpki_schema (version) VALUES (99)", &[])
        .unwrap();
    let r = other.run("h", &["serve", "--listen", "127.0.0.1:0"]);
    assert_ne!(r.code, 0, "{}", r.stdout);
    assert!(
        r.stderr.contains("schema version 99 is newer"),
        "{}",
        r.stderr
    );
    other
        .run("h", &["status"])
        .fails(1, "schema version 99 is newer");

    // A URL that does not connect (no such database): a clear error, nothing switched.
    let bad = s.path("bad.url");
    let url = pg_database("gone");
    let missing = format!("{}_missing", url);
    std::fs::write(&bad, &missing).unwrap();
    let r = s.migrate_to_postgres("h", &bad, &[]);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("does not exist"), "{}", r.stderr);
    assert_eq!(config(&s), before);

    // A home configured for a database without the schema: every command says to migrate.
    let fresh = s.path("fresh.url");
    std::fs::write(&fresh, pg_database("fresh")).unwrap();
    let text = before.replace(
        "backend = \"sled\"",
        &format!("backend = \"postgres\"\nurl_file = \"{}\"", fresh.display()),
    );
    assert_ne!(text, before, "{before}");
    std::fs::write(s.path("h/meterpki.toml"), text).unwrap();
    let r = s.run("h", &["status"]);
    assert_ne!(r.code, 0);
    assert!(r.stderr.contains("store migrate"), "{}", r.stderr);
}

/// A URL that asks for TLS gets it, with the database server's certificate verified against
/// `sslrootcert`; a server the CA did not certify, a URL without the CA, and plain TCP to a
/// server that requires TLS are refused with a clear error (exit 2), and nothing is switched.
#[test]
fn the_database_is_reached_over_verified_tls_when_the_url_asks() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    s.issue_one("h", "00-DB-12-34-56-78-91-01", None, "m1.pem")
        .ok();
    let before = config(&s);
    let pg = meterpki_tests::PgCluster::primary();
    let url = pg.database("tls");
    let ca = pg.tls();
    let url_file = s.path("db.url");
    let attempt = |url: &str| {
        std::fs::write(&url_file, url).unwrap();
        {
            use std::os::unix::fs::PermissionsExt;
            std::fs::set_permissions(&url_file, std::fs::Permissions::from_mode(0o600)).unwrap();
        }
        s.migrate_to_postgres("h", &url_file, &[])
    };
    // Plain TCP: the server refuses it.
    let r = attempt(&url);
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("no encryption"), "{}", r.stderr);
    // TLS without saying which CA to trust: refused before connecting.
    let r = attempt(&format!("{url}&sslmode=verify-full"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("needs sslrootcert"), "{}", r.stderr);
    // prefer would fall back to plain TCP under attack: refused.
    let r = attempt(&format!("{url}&sslmode=prefer"));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("not accepted"), "{}", r.stderr);
    // Another CA: the server is not authenticated.
    let other = s.path("other-ca.pem");
    meterpki_tests::tool(
        "openssl",
        &[
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:P-256",
            "-nodes",
            "-days",
            "1",
            "-subj",
            "/CN=not the database's CA",
            "-keyout",
            &s.path("other-ca.key").display().to_string(),
            "-out",
            &other.display().to_string(),
        ],
        &[],
    )
    .ok();
    let r = attempt(&format!(
        "{url}&sslmode=verify-full&sslrootcert={}",
        other.display()
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(r.stderr.contains("TLS"), "{}", r.stderr);
    assert_eq!(config(&s), before, "the home was switched");
    // A wrong password: a clear error naming the cause, never the password; exit 2.
    pg.user("meterpki", "right-horse-battery");
    let r = attempt(&format!(
        "{}&sslmode=verify-full&sslrootcert={}",
        url.replacen("postgres@", "meterpki:wrong-staple@", 1),
        ca.display()
    ));
    assert_eq!(r.code, 2, "{}", r.stderr);
    assert!(
        r.stderr.contains("password authentication failed"),
        "{}",
        r.stderr
    );
    assert!(!r.stderr.contains("wrong-staple"), "{}", r.stderr);
    assert_eq!(config(&s), before, "the home was switched");
    // The right CA: moved, and everything goes on over TLS (the server refuses anything else).
    attempt(&format!(
        "{url}&sslmode=verify-full&sslrootcert={}",
        ca.display()
    ))
    .ok();
    assert!(config(&s).contains("backend = \"postgres\""));
    s.issue_one("h", "00-DB-12-34-56-78-91-02", None, "m2.pem")
        .ok();
    s.run("h", &["audit", "verify"]).ok();
    let check = s.run("h", &["store", "check", "--json"]).ok().json();
    assert_eq!(check["problems"].as_array().unwrap().len(), 0, "{check}");
    assert!(check["certificates"].as_u64().unwrap() >= 2, "{check}");
}

/// A full CRL larger than a page of revocations and than a part of the database's copy: its
/// 30,000 revocations are read a page at a time and streamed into the file, which openssl
/// verifies and pkilint passes, listing every one; the database keeps it in parts, and another
/// machine's copy of the home, brought up to date from the database, is byte for byte the same.
#[test]
fn a_full_crl_larger_than_a_page_is_streamed_and_another_machine_gets_it_whole() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device"]);
    let url_file = s.path("db.url");
    std::fs::write(&url_file, format!("{}\n", pg_database("bigcrl"))).unwrap();
    s.migrate_to_postgres("h", &url_file, &[]).ok();
    s.bench(
        "h",
        &[
            "fill",
            "--certs",
            "31000",
            "--revoke",
            "30000",
            "--scratch-copy",
        ],
    )
    .ok();
    // The other machine, before the publication: its files are older than the database's.
    s.copy_home("h", "h2");
    let published = s
        .run("h", &["crl", "publish", "--issuer", "device", "--json"])
        .ok()
        .json();
    let full = published
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["scope"] == "full")
        .unwrap_or_else(|| panic!("no full CRL in {published}"))
        .clone();
    let entries = full["entries"].as_u64().unwrap();
    assert!(entries >= 30_000, "{full}");
    assert!(full["bytes"].as_u64().unwrap() > 1 << 20, "{full}");
    let crl = s.path("h/crl/device/full.crl").display().to_string();
    let chain = s.path("chain.pem");
    std::fs::write(
        &chain,
        std::fs::read_to_string(s.path("h/ca/device.pem")).unwrap()
            + &std::fs::read_to_string(s.path("h/ca/root.pem")).unwrap(),
    )
    .unwrap();
    let text = meterpki_tests::tool(
        "openssl",
        &[
            "crl",
            "-inform",
            "DER",
            "-in",
            &crl,
            "-CAfile",
            &chain.display().to_string(),
            "-noout",
            "-text",
        ],
        &[],
    )
    .ok();
    assert!(
        text.stderr.contains("verify OK") || text.stdout.contains("verify OK"),
        "{}",
        text.stderr
    );
    assert_eq!(
        text.stdout.matches("Serial Number:").count() as u64,
        entries
    );
    let pem = s.path("full.pem").display().to_string();
    meterpki_tests::tool(
        "openssl",
        &["crl", "-inform", "DER", "-in", &crl, "-out", &pem],
        &[],
    )
    .ok();
    meterpki_tests::tool(
        &meterpki_tests::pkilint().replace("lint_pkix_cert", "lint_crl"),
        &["lint", "-t", "CRL", "-p", "PKIX", "-s", "WARNING", &pem],
        &[],
    )
    .ok();
    // `status` on the other machine brings its CRL files up to the database's.
    assert_ne!(
        std::fs::read(s.path("h2/crl/device/full.crl")).ok(),
        std::fs::read(s.path("h/crl/device/full.crl")).ok()
    );
    s.run("h2", &["status"]).ok();
    assert_eq!(
        std::fs::read(s.path("h2/crl/device/full.crl")).unwrap(),
        std::fs::read(s.path("h/crl/device/full.crl")).unwrap()
    );
    assert_eq!(
        std::fs::read(s.path("h2/crl/device/0.crl")).unwrap(),
        std::fs::read(s.path("h/crl/device/0.crl")).unwrap()
    );
}
