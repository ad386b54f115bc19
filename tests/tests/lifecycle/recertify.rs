//! After an Organisation CA renewal, `supplier recertify` certifies every active supplier key
//! again under the new generation and gives every meter the update that replaces its
//! supplier's certificates; sending the same key again anywhere else still answers the
//! certificate it has.

use std::path::Path;

use meterpki_tests::{openssl_csr, Scratch};
use serde_json::Value;

use crate::rp::{accepts, crls, refuses};
use crate::{run, shares, EXE};

const A: &str = "90-B3-D5-1F-30-00-00-0A";
const B: &str = "90-B3-D5-1F-30-00-00-0B";
const C: &str = "90-B3-D5-1F-30-00-00-0C";

fn p(x: &Path) -> String {
    x.display().to_string()
}

/// Enrols `profile` for `supplier` from the CSR `<name>.csr` (made if missing); the answer.
fn enrol(s: &Scratch, supplier: &str, profile: &str, name: &str) -> Value {
    s.enrol("h", supplier, profile, name).ok().json()
}

fn certs(s: &Scratch, id: &str) -> Vec<Value> {
    s.run("h", &["show", "--device-id", id, "--json"])
        .ok()
        .json()
        .as_array()
        .unwrap()
        .clone()
}

fn recertify(s: &Scratch, extra: &[&str]) -> meterpki_tests::Run {
    let mut args = vec!["supplier", "recertify", "--json"];
    args.extend_from_slice(extra);
    s.run("h", &args)
}

/// `n` meters with certificates, the first three served by A, the rest by B.
fn meters_of_a_and_b(s: &Scratch, n: usize) -> Vec<String> {
    let meters: Vec<String> = (1..=n)
        .map(|i| format!("00-DB-12-34-56-78-90-{i:02}"))
        .collect();
    for (i, d) in meters.iter().enumerate() {
        s.issue_one("h", d, None, &format!("m{i}.pem")).ok();
        let to = if i < 3 { A } else { B };
        s.run(
            "h",
            &["meter", "assign", "--device-id", d, "--supplier", to],
        )
        .ok();
    }
    meters
}

fn renew_organisation_ca(s: &Scratch) {
    run(
        s,
        &[
            "ceremony",
            "issuing-ca",
            "--kind",
            "organisation",
            "--renew",
        ],
        &shares(s, &[1, 2]),
    )
    .ok();
}

#[test]
fn after_an_organisation_ca_renewal_every_meter_gets_its_suppliers_new_certificates() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.supplier("h", A, "Alpha Energy");
    s.supplier("h", B, "Beta Power");
    s.supplier("h", C, "Gamma Gas");
    enrol(&s, A, "supplier-signing", "a-sign");
    enrol(&s, A, "supplier-key-agreement", "a-ka");
    enrol(&s, B, "supplier-signing", "b-sign");
    let meters = meters_of_a_and_b(&s, 5);
    // Nothing to re-certify before a renewal.
    let r = recertify(&s, &["--updates-out", "u0"]).ok().json();
    assert_eq!(r["operations"], serde_json::json!([]));

    renew_organisation_ca(&s);
    // The same key sent again by the supplier (or by a factory for a meter after a Device
    // CA renewal) answers the certificate it has: only the campaign re-certifies.
    let again = enrol(&s, A, "supplier-signing", "a-sign");
    assert_eq!(again["existing"], true, "{again}");
    // Refused, changing nothing: no destination for the updates, an unknown supplier.
    let before = s.snapshot();
    s.run("h", &["supplier", "recertify"])
        .fails(2, "--updates-out");
    recertify(
        &s,
        &[
            "--supplier",
            "90-B3-D5-1F-30-00-00-99",
            "--updates-out",
            "u1",
        ],
    )
    .fails(2, "not registered");
    recertify(&s, &["--supplier", "not-an-id", "--updates-out", "u1"]).fails(2, "--supplier");
    assert_eq!(before, s.snapshot());

    // One supplier first, then the rest; B's meters are not touched by A's run.
    let r = recertify(&s, &["--supplier", A, "--updates-out", "u1"])
        .ok()
        .json();
    let ops = r["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1);
    assert_eq!(
        ops[0]["operation"],
        format!("recertify:{A}:organisation-g2")
    );
    assert_eq!(ops[0]["meters_updated"], 3);
    assert!(!s.path(&format!("u1/{}.tamp.der", meters[3])).exists());
    let r = recertify(&s, &["--updates-out", "u1"]).ok().json();
    let ops = r["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "A is done, C has no key: {r}");
    assert_eq!(ops[0]["from"], B);
    assert_eq!(ops[0]["meters_updated"], 2);
    assert_eq!(
        recertify(&s, &["--updates-out", "u1"]).ok().json()["operations"],
        serde_json::json!([])
    );

    // Each supplier: its earlier certificates superseded, new ones from generation 2 for the
    // same keys; a strict relying party accepts the new and refuses the old.
    s.run("h", &["crl", "publish"]).ok();
    let crl = crls(&s, "h");
    let root = s.path("h/ca/root.pem");
    let cas = [
        s.path("h/ca/organisation.pem"),
        s.path("h/ca/generations/organisation-1.pem"),
    ];
    let mut new_serials = std::collections::BTreeMap::new();
    for (supplier, n) in [(A, 2), (B, 1)] {
        let all = certs(&s, supplier);
        let (new, old): (Vec<&Value>, Vec<&Value>) =
            all.iter().partition(|c| c["issuer_generation"] == 2);
        assert_eq!((new.len(), old.len()), (n, n), "{all:?}");
        for c in &old {
            assert_eq!(c["revocation"]["reason"], "superseded");
            let f = s.path(&format!("old-{}.pem", c["serial"].as_str().unwrap()));
            std::fs::write(&f, c["certificate"].as_str().unwrap()).unwrap();
            refuses(&root, &cas, &crl, &f, "revoked");
        }
        for c in &new {
            assert_eq!(c["status"], "active");
            let f = s.path(&format!("new-{}.pem", c["serial"].as_str().unwrap()));
            std::fs::write(&f, c["certificate"].as_str().unwrap()).unwrap();
            accepts(&root, &cas, &crl, &f);
        }
        let mut serials: Vec<String> = new
            .iter()
            .map(|c| c["serial"].as_str().unwrap().to_string())
            .collect();
        serials.sort();
        new_serials.insert(supplier, serials);
    }
    // Every meter: the update adds its supplier's new certificates in place of the earlier
    // ones (the same keys), checked as a meter would and by openssl; recorded as its last.
    for (i, d) in meters.iter().enumerate() {
        let supplier = if i < 3 { A } else { B };
        let file = s.path(&format!("u1/{d}.tamp.der"));
        let v = crate::meter_verifies(&s, &file, &root, &["--device-id", d]);
        let added = crate::sorted(&v, "add", "serial");
        assert_eq!(added, new_serials[supplier], "{d}");
        assert_eq!(
            v["remove_key_ids"].as_array().unwrap().len(),
            added.len(),
            "{d}"
        );
        assert!(!crate::rp::cms_verify(&file, &root).is_empty());
        let m = s
            .run("h", &["meter", "show", "--device-id", d, "--json"])
            .ok()
            .json();
        assert_eq!(
            m["last_update"]["op"],
            format!("recertify:{supplier}:organisation-g2")
        );
        assert_eq!(m["last_update"]["seq"], v["seq"]);
    }
    // The trust-update signer was certified again by generation 2 before signing them.
    accepts(&root, &cas, &crl, &s.path("h/ca/trust-update-signer.pem"));
    assert_eq!(
        crate::rp::x509_field(&s.path("h/ca/trust-update-signer.pem"), "issuer"),
        crate::rp::x509_field(&s.path("h/ca/organisation.pem"), "subject")
            .replace("subject", "issuer")
    );
    // A compromised key after re-certification: revoking only its superseded certificate
    // would leave it active in meters, so that is refused naming the active one.
    let (old_a, new_a) = {
        let all = certs(&s, A);
        let old = all
            .iter()
            .find(|c| c["issuer_generation"] == 1 && c["profile"] == "supplier-signing")
            .unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_string();
        let new = all
            .iter()
            .find(|c| c["issuer_generation"] == 2 && c["profile"] == "supplier-signing")
            .unwrap()["serial"]
            .as_str()
            .unwrap()
            .to_string();
        (old, new)
    };
    let before = s.snapshot();
    s.run(
        "h",
        &["revoke", "--serial", &old_a, "--reason", "keyCompromise"],
    )
    .fails(2, &new_a);
    s.run(
        "h",
        &[
            "supplier",
            "revoke-key",
            "--serial",
            &old_a,
            "--reason",
            "keyCompromise",
            "--updates-out",
            "u2",
        ],
    )
    .fails(2, &new_a);
    assert_eq!(before, s.snapshot());
    s.run("h", &["store", "check"]).ok();
    s.run("h", &["audit", "verify"]).ok();
}

/// A re-certification killed half-way is closed, not refused for ever, when a rotation replaces
/// the certificate it installs, or when a newer generation's re-certification overtakes it;
/// the other suppliers go on.
#[test]
fn a_running_recertification_is_closed_when_a_later_change_replaces_it() {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.supplier("h", A, "Alpha Energy");
    s.supplier("h", B, "Beta Power");
    enrol(&s, A, "supplier-signing", "a-sign");
    enrol(&s, B, "supplier-signing", "b-sign");
    let meters = meters_of_a_and_b(&s, 6);
    let renew = || renew_organisation_ca(&s);
    let crash = |dir: &str| {
        let r = s.run_env(
            "h",
            &[
                "supplier",
                "recertify",
                "--updates-out",
                dir,
                "--chunk",
                "1",
            ],
            &[("METERPKI_FAILPOINT", "churn.before-commit:2")],
        );
        assert!(r.stderr.contains("failpoint"), "{r:?}");
    };
    let op = |d: &str| {
        s.run("h", &["meter", "show", "--device-id", d, "--json"])
            .ok()
            .json()["last_update"]["op"]
            .as_str()
            .unwrap_or("")
            .to_string()
    };

    // A's journal (A comes first) killed after its first meter; then A rotates its key.
    renew();
    crash("u1");
    assert_eq!(op(&meters[0]), format!("recertify:{A}:organisation-g2"));
    let (_, csr) = openssl_csr(&s.path(""), "a-sign-2", "prime256v1");
    s.run(
        "h",
        &[
            "supplier",
            "rotate",
            "--id",
            A,
            "--profile",
            "supplier-signing",
            "--csr",
            &p(&csr),
            "--updates-out",
            "u-rot",
        ],
    )
    .ok();
    let r = recertify(&s, &["--updates-out", "u1"]).ok().json();
    let closed = r["closed"].as_array().unwrap();
    assert_eq!(closed.len(), 1, "{r}");
    assert_eq!(
        closed[0]["operation"],
        format!("recertify:{A}:organisation-g2")
    );
    assert!(closed[0]["why"].as_str().unwrap().contains("superseded"));
    let ops = r["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 1, "{r}");
    assert_eq!(ops[0]["from"], B);
    assert_eq!(ops[0]["meters_updated"], 3);
    for d in &meters[..3] {
        assert!(op(d).starts_with("rotate:"), "{d}");
    }

    // A newer generation overtakes a journal killed half-way.
    renew();
    crash("u3");
    assert_eq!(op(&meters[0]), format!("recertify:{A}:organisation-g3"));
    renew();
    let r = recertify(&s, &["--updates-out", "u4"]).ok().json();
    assert_eq!(r["organisation_generation"], 4);
    let closed = r["closed"].as_array().unwrap();
    assert_eq!(closed.len(), 1, "{r}");
    assert_eq!(
        closed[0]["operation"],
        format!("recertify:{A}:organisation-g3")
    );
    assert!(closed[0]["why"].as_str().unwrap().contains("overtaken"));
    let ops = r["operations"].as_array().unwrap();
    assert_eq!(ops.len(), 2, "{r}");
    for (i, d) in meters.iter().enumerate() {
        let supplier = if i < 3 { A } else { B };
        assert_eq!(op(d), format!("recertify:{supplier}:organisation-g4"));
        s.run(
            "h",
            &[
                "update",
                "verify",
                &p(&s.path(&format!("u4/{d}.tamp.der"))),
                "--root",
                "h/ca/root.pem",
                "--device-id",
                d,
            ],
        )
        .ok();
    }
    for supplier in [A, B] {
        let active: Vec<Value> = certs(&s, supplier)
            .into_iter()
            .filter(|c| c["status"] == "active")
            .collect();
        assert_eq!(active.len(), 1);
        assert_eq!(active[0]["issuer_generation"], 4);
    }

    // A certificate the journal installs, revoked without an operation that updates the
    // meters: the journal is refused (the key would stay in meters) with what to do, while B
    // goes on; once `supplier revoke-key` removes the key from the meters, it is closed.
    renew();
    crash("u5");
    let a5 = certs(&s, A)
        .into_iter()
        .find(|c| c["issuer_generation"] == 5)
        .unwrap()["serial"]
        .as_str()
        .unwrap()
        .to_string();
    s.run("h", &["revoke", "--serial", &a5, "--reason", "superseded"])
        .ok();
    let r = s.run(
        "h",
        &["supplier", "recertify", "--updates-out", "u5", "--json"],
    );
    assert_eq!(r.code, 2, "{r:?}");
    let out = r.json();
    assert_eq!(out["failed"][0]["supplier"], A, "{out}");
    assert!(out["failed"][0]["detail"]
        .as_str()
        .unwrap()
        .contains("supplier revoke-key"));
    assert_eq!(out["operations"][0]["from"], B);
    assert_eq!(out["operations"][0]["state"], "complete");
    s.run(
        "h",
        &[
            "supplier",
            "revoke-key",
            "--serial",
            &a5,
            "--reason",
            "superseded",
            "--updates-out",
            "u5-revoke",
        ],
    )
    .ok();
    let r = recertify(&s, &["--updates-out", "u5"]).ok().json();
    assert_eq!(
        r["closed"][0]["operation"],
        format!("recertify:{A}:organisation-g5"),
        "{r}"
    );
    assert_eq!(r["operations"], serde_json::json!([]));
    s.run("h", &["store", "check"]).ok();
    s.run("h", &["audit", "verify"]).ok();
}
