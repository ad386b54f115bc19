//! Issuance end to end: CSRs made by openssl, certificates issued by the CLI on SoftHSM, checked
//! by openssl (chain, content) and pkilint (RFC 5280); batches, retries and a crash mid-batch.

use std::collections::{BTreeMap, BTreeSet};

use meterpki_tests::{openssl_csr, pkilint, tool, Scratch};

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

fn setup() -> Scratch {
    let s = Scratch::new(EXE);
    s.ceremonies("h", 3, 2, &["device", "organisation"]);
    s.supplier("h", "90-B3-D5-1F-30-00-00-02", "Example Energy");
    s
}

fn p(s: &Scratch, rel: &str) -> String {
    s.path(rel).display().to_string()
}

#[test]
fn every_certificate_kind_verifies_with_openssl_and_lints_clean() {
    let s = setup();
    let dir = s.path("");
    let root = p(&s, "h/ca/root.pem");
    let cases = [
        (
            "meter-signing",
            vec!["--device-id", "00-DB-12-34-56-78-90-01"],
            "device",
            "Digital Signature",
        ),
        (
            "meter-key-agreement",
            vec!["--device-id", "00DB123456789001"],
            "device",
            "Key Agreement",
        ),
        (
            "supplier-signing",
            vec![
                "--entity-id",
                "90-B3-D5-1F-30-00-00-02",
                "--name",
                "Example Energy",
            ],
            "organisation",
            "Digital Signature",
        ),
        (
            "supplier-key-agreement",
            vec![
                "--entity-id",
                "90:B3:D5:1F:30:00:00:02",
                "--name",
                "Example Energy",
            ],
            "organisation",
            "Key Agreement",
        ),
    ];
    for (profile, ids, issuer, usage) in cases {
        let (_, csr) = openssl_csr(&dir, profile, "prime256v1");
        let out = p(&s, &format!("{profile}.pem"));
        let mut args = vec!["issue", "--profile", profile];
        args.extend(ids.iter().copied());
        let csr = csr.display().to_string();
        args.extend(["--csr", &csr, "--out", &out]);
        s.run("h", &args).ok();
        let issuing = p(&s, &format!("h/ca/{issuer}.pem"));
        let v = tool(
            "openssl",
            &[
                "verify",
                "-x509_strict",
                "-CAfile",
                &root,
                "-untrusted",
                &issuing,
                &out,
            ],
            &[],
        );
        assert_eq!(v.code, 0, "{profile}: {} {}", v.stdout, v.stderr);
        let text = tool("openssl", &["x509", "-in", &out, "-noout", "-text"], &[])
            .ok()
            .stdout;
        assert!(
            text.contains(&format!(
                "X509v3 Key Usage: critical\n                {usage}\n"
            )),
            "{profile}: {text}"
        );
        // Non-critical by default: embedded stacks refuse a critical policies extension.
        assert!(
            text.contains("X509v3 Certificate Policies: \n")
                && !text.contains("X509v3 Certificate Policies: critical"),
            "{text}"
        );
        assert!(!text.contains("Basic Constraints"), "{text}");
        let lint = tool(&pkilint(), &["lint", "-s", "WARNING", &out], &[]);
        let findings = pkilint_findings(&lint.stdout);
        assert!(
            findings.is_empty(),
            "pkilint findings for {profile}:\n{}",
            lint.stdout
        );
        if profile.starts_with("meter") {
            assert!(
                text.contains("Subject: \n")
                    || text.contains("Subject:\n")
                    || !text.contains("Subject: C"),
                "{text}"
            );
            assert!(
                text.contains("X509v3 Subject Alternative Name: critical"),
                "{text}"
            );
            assert!(
                text.contains("Not After : Dec 31 23:59:59 9999 GMT"),
                "{text}"
            );
            // The hardwareModuleName, read with openssl's own ASN.1 parser.
            let parsed = tool("openssl", &["asn1parse", "-in", &out], &[])
                .ok()
                .stdout;
            let san_line = parsed
                .lines()
                .skip_while(|l| !l.contains("X509v3 Subject Alternative Name"))
                .find(|l| l.contains("OCTET STRING"))
                .unwrap();
            let offset = san_line.split(':').next().unwrap().trim().to_string();
            let san = tool(
                "openssl",
                &["asn1parse", "-in", &out, "-strparse", &offset],
                &[],
            )
            .ok()
            .stdout;
            assert!(san.contains(":1.3.6.1.5.5.7.8.4"), "{san}");
            assert!(
                san.contains("[HEX DUMP]:00DB123456789001"),
                "hwSerialNum is the EUI-64:\n{san}"
            );
        } else {
            // The shipped form: the entity ID as serialNumber (Go and embedded stacks parse
            // it; the GB x500UniqueIdentifier form is a profile option, ca-core/tests/issue.rs).
            assert!(
                text.contains(
                    "CN = Example Energy, OU = 02, serialNumber = 90-B3-D5-1F-30-00-00-02"
                ),
                "{text}"
            );
        }
    }
    // A bare public key, as the meter profiles allow (keys made inside a meter's secure element).
    let (key, _) = openssl_csr(&dir, "bare", "prime256v1");
    let spki = p(&s, "bare.spki.der");
    tool(
        "openssl",
        &[
            "ec",
            "-in",
            &key.display().to_string(),
            "-pubout",
            "-outform",
            "DER",
            "-out",
            &spki,
        ],
        &[],
    )
    .ok();
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            "00-DB-12-34-56-78-90-02",
            "--public-key",
            &spki,
            "--out",
            &p(&s, "bare.pem"),
        ],
    )
    .ok();
    let v = tool(
        "openssl",
        &[
            "verify",
            "-CAfile",
            &root,
            "-untrusted",
            &p(&s, "h/ca/device.pem"),
            &p(&s, "bare.pem"),
        ],
        &[],
    );
    assert_eq!(v.code, 0, "{}", v.stderr);
    // And refused where the profile wants proof of possession.
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "supplier-signing",
            "--entity-id",
            "90-B3-D5-1F-30-00-00-09",
            "--name",
            "X",
            "--public-key",
            &spki,
        ],
    )
    .fails(2, "requires a CSR");
}

#[test]
fn cli_refusals_name_the_code_and_store_nothing() {
    let s = setup();
    let dir = s.path("");
    let (_, p384) = openssl_csr(&dir, "p384", "secp384r1");
    let (_, k1) = openssl_csr(&dir, "k1", "secp256k1");
    let (_, good) = openssl_csr(&dir, "good", "prime256v1");
    let (_, other) = openssl_csr(&dir, "other", "prime256v1");
    let rsa_key = p(&s, "rsa.key");
    let rsa_csr = p(&s, "rsa.csr");
    tool("openssl", &["genrsa", "-out", &rsa_key, "2048"], &[]).ok();
    tool(
        "openssl",
        &[
            "req", "-new", "-key", &rsa_key, "-subj", "/", "-out", &rsa_csr,
        ],
        &[],
    )
    .ok();
    let garbage = p(&s, "garbage.csr");
    std::fs::write(&garbage, b"\x30\x82\x01\x00 this is not a CSR").unwrap();
    let truncated = p(&s, "truncated.csr");
    let der = tool(
        "openssl",
        &["req", "-in", &good.display().to_string(), "-outform", "DER"],
        &[],
    )
    .ok();
    let _ = der;
    let good_der = std::process::Command::new("openssl")
        .args(["req", "-in", &good.display().to_string(), "-outform", "DER"])
        .output()
        .unwrap()
        .stdout;
    std::fs::write(&truncated, &good_der[..good_der.len() - 20]).unwrap();

    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            "00-DB-12-34-56-78-90-03",
            "--csr",
            &good.display().to_string(),
        ],
    )
    .ok();
    let count = |s: &Scratch| {
        s.run("h", &["status", "--json"]).ok().json()["certificates"]
            .as_u64()
            .unwrap()
    };
    let before = count(&s);
    let cases: Vec<(Vec<String>, &str)> = vec![
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90-04".into(),
                "--csr".into(),
                p384.display().to_string(),
            ],
            "curve: curve P-384",
        ),
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90-04".into(),
                "--csr".into(),
                k1.display().to_string(),
            ],
            "curve: curve secp256k1",
        ),
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90-04".into(),
                "--csr".into(),
                rsa_csr.clone(),
            ],
            "key-type: an RSA key",
        ),
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90-04".into(),
                "--csr".into(),
                garbage.clone(),
            ],
            "csr-malformed",
        ),
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90-04".into(),
                "--csr".into(),
                truncated.clone(),
            ],
            "csr-malformed",
        ),
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90".into(),
                "--csr".into(),
                good.display().to_string(),
            ],
            "device-id",
        ),
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90-0X".into(),
                "--csr".into(),
                good.display().to_string(),
            ],
            "device-id",
        ),
        (
            vec![
                "--device-id".into(),
                "00-DB-12-34-56-78-90-03".into(),
                "--csr".into(),
                other.display().to_string(),
            ],
            "existing-certificate",
        ),
    ];
    for (extra, needle) in cases {
        let mut args = vec!["issue", "--profile", "meter-signing"];
        args.extend(extra.iter().map(String::as_str));
        s.run("h", &args).fails(2, needle);
        assert_eq!(count(&s), before, "{needle}: nothing stored");
    }
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "no-such-profile",
            "--device-id",
            "00-DB-12-34-56-78-90-04",
            "--csr",
            &good.display().to_string(),
        ],
    )
    .fails(2, "profile-unknown");
    // replace: a new key for the same device and usage.
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            "00-DB-12-34-56-78-90-03",
            "--csr",
            &other.display().to_string(),
            "--replace",
        ],
    )
    .ok();
    let shown = s
        .run("h", &["show", "--device-id", "00DB123456789003", "--json"])
        .ok()
        .json();
    let statuses: Vec<&str> = shown
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["status"].as_str().unwrap())
        .collect();
    assert_eq!(statuses.len(), 2);
    assert!(
        statuses.contains(&"active") && statuses.contains(&"revoked (superseded)"),
        "{statuses:?}"
    );
}

/// pkilint's findings, less one it cannot get right: it reads every attribute type it does not
/// know as a DirectoryString, but x500UniqueIdentifier (2.5.4.45) is a BIT STRING (X.520
/// `UniqueIdentifier`, RFC 4519 §2.39), which is how the supplier subject carries its EUI-64.
fn pkilint_findings(report: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut block = String::new();
    for line in report.lines().chain(std::iter::once("")) {
        if line.trim().is_empty() {
            let known_false_positive =
                block.contains("rdnSequence.2.0") && block.contains("type OID 2.5.4.45");
            if !block.is_empty() && !known_false_positive {
                out.push(block.clone());
            }
            block.clear();
        } else {
            block.push_str(line);
            block.push('\n');
        }
    }
    out
}

/// `meterpki issue --batch BATCH --out OUT` on home `h`.
fn issue_batch(s: &Scratch, batch: &std::path::Path, out: &std::path::Path) -> meterpki_tests::Run {
    s.run(
        "h",
        &[
            "issue",
            "--batch",
            &batch.display().to_string(),
            "--out",
            &out.display().to_string(),
        ],
    )
}

fn results(path: &std::path::Path) -> Vec<serde_json::Value> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    // Only complete lines count as answered.
    let complete = match text.rfind('\n') {
        Some(i) => &text[..=i],
        None => "",
    };
    complete
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

#[test]
fn a_batch_reports_bad_lines_and_a_rerun_issues_nothing_new() {
    let s = setup();
    let batch = s.path("b.ndjson");
    s.bench(
        "h",
        &[
            "make-batch",
            "--count",
            "40",
            "--out",
            &batch.display().to_string(),
        ],
    )
    .ok();
    let mut lines: Vec<String> = std::fs::read_to_string(&batch)
        .unwrap()
        .lines()
        .map(String::from)
        .collect();
    lines.insert(5, "{this is not json".into());
    lines.insert(9, String::new());
    let mut bad: serde_json::Value = serde_json::from_str(&lines[12]).unwrap();
    bad["device_id"] = "00-DB-12".into();
    lines[12] = bad.to_string();
    std::fs::write(&batch, lines.join("\n") + "\n").unwrap();
    let out1 = s.path("r1.ndjson");
    let r = issue_batch(&s, &batch, &out1);
    r.fails(2, "2 of 41 items were rejected");
    let res = results(&out1);
    assert_eq!(res.len(), 41);
    let json_err = &res[5];
    assert_eq!(json_err["status"], "rejected");
    assert_eq!(json_err["line"], 6);
    assert_eq!(json_err["error"]["code"], "json");
    assert!(json_err["error"]["detail"]
        .as_str()
        .unwrap()
        .starts_with("line 6:"));
    let id_err = res.iter().find(|r| r["line"] == 13).unwrap();
    assert_eq!(id_err["error"]["code"], "device-id");
    let issued: Vec<&serde_json::Value> = res.iter().filter(|r| r["status"] == "issued").collect();
    assert_eq!(issued.len(), 39);
    assert!(issued.iter().all(|r| r["existing"] == false));
    for (i, r) in res.iter().enumerate() {
        assert_eq!(r["index"], i, "results in request order");
    }
    // Again: the same serials, nothing new signed or stored.
    let out2 = s.path("r2.ndjson");
    issue_batch(&s, &batch, &out2).fails(2, "rejected");
    let res2 = results(&out2);
    for (a, b) in res.iter().zip(&res2) {
        assert_eq!(a["serial"], b["serial"]);
        assert_eq!(a["certificate"], b["certificate"]);
        if a["status"] == "issued" {
            assert_eq!(b["existing"], true);
        }
    }
    let st = s.run("h", &["status", "--json"]).ok().json();
    assert_eq!(st["certificates"], 39);
    // The audit log has the batch, and still verifies.
    let audit = s.run("h", &["audit", "list", "--json"]).ok().json();
    assert!(
        audit
            .as_array()
            .unwrap()
            .iter()
            .filter(|r| r["event"] == "certificate.batch")
            .count()
            == 2
    );
    s.run("h", &["audit", "verify"]).ok();
}

#[test]
fn a_batch_killed_mid_run_loses_nothing_and_reuses_no_serial() {
    let s = setup();
    let n = 2500;
    let batch = s.path("b.ndjson").display().to_string();
    s.bench(
        "h",
        &["make-batch", "--count", &n.to_string(), "--out", &batch],
    )
    .ok();
    let out1 = s.path("killed.ndjson");
    let mut child = std::process::Command::new(EXE)
        .args([
            "--home",
            &p(&s, "h"),
            "issue",
            "--batch",
            &batch,
            "--out",
            &out1.display().to_string(),
            "--chunk",
            "100",
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Kill it once some results are answered but well before the end.
    let start = std::time::Instant::now();
    loop {
        let answered = results(&out1).len();
        if answered >= 300 {
            break;
        }
        assert!(
            child.try_wait().unwrap().is_none(),
            "the batch finished before it could be killed"
        );
        assert!(start.elapsed().as_secs() < 120, "no progress");
        std::thread::sleep(std::time::Duration::from_millis(5));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let answered = results(&out1);
    assert!(answered.len() < n, "killed mid-run");

    let out2 = s.path("rerun.ndjson");
    s.run(
        "h",
        &[
            "issue",
            "--batch",
            &batch,
            "--out",
            &out2.display().to_string(),
        ],
    )
    .ok();
    let rerun = results(&out2);
    assert_eq!(rerun.len(), n);
    // Every certificate answered before the kill is stored and answered again, identical.
    for a in &answered {
        let i = a["index"].as_u64().unwrap() as usize;
        assert_eq!(rerun[i]["serial"], a["serial"]);
        assert_eq!(rerun[i]["certificate"], a["certificate"]);
        assert_eq!(rerun[i]["existing"], true);
    }
    // The rest issued exactly once: every device has one certificate, no serial twice.
    let serials: BTreeSet<&str> = rerun
        .iter()
        .map(|r| r["serial"].as_str().unwrap())
        .collect();
    assert_eq!(serials.len(), n);
    let st = s.run("h", &["status", "--json"]).ok().json();
    assert_eq!(
        st["certificates"], n as u64,
        "no certificate stored twice or left over"
    );
    // A third run answers the same again.
    let out3 = s.path("third.ndjson");
    s.run(
        "h",
        &[
            "issue",
            "--batch",
            &batch,
            "--out",
            &out3.display().to_string(),
        ],
    )
    .ok();
    let by_index: BTreeMap<u64, &str> = rerun
        .iter()
        .map(|r| (r["index"].as_u64().unwrap(), r["serial"].as_str().unwrap()))
        .collect();
    for r in results(&out3) {
        assert_eq!(
            by_index[&r["index"].as_u64().unwrap()],
            r["serial"].as_str().unwrap()
        );
    }
}

/// One canonical spelling of a request item, as documented: standard padded base64 on one
/// line (or PEM), an EUI-64 with nothing around it. URL-safe, unpadded or spaced base64 and a
/// device ID with a leading space are refused, naming the field; the canonical items issue.
#[test]
fn request_items_take_one_canonical_form_and_refuse_the_rest() {
    let s = setup();
    let batch = s.path("b.ndjson");
    s.bench(
        "h",
        &[
            "make-batch",
            "--count",
            "30",
            "--out",
            &batch.display().to_string(),
        ],
    )
    .ok();
    let all: Vec<serde_json::Value> = std::fs::read_to_string(&batch)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let b64 = |v: &serde_json::Value| v["csr"].as_str().unwrap().to_string();
    // Item 2's base64 must end in padding, for an unpadded copy to differ from it.
    let padded = all.iter().position(|i| b64(i).ends_with('=')).unwrap();
    let mut items: Vec<serde_json::Value> = all
        .iter()
        .enumerate()
        .filter(|(n, _)| *n != padded)
        .map(|(_, i)| i.clone())
        .take(5)
        .collect();
    items.insert(2, all[padded].clone());
    // Item 0 stays canonical; item 5 is PEM (accepted).
    let url_safe = b64(&items[1]).replace('+', "-").replace('/', "_");
    assert!(url_safe.contains(['-', '_']), "the CSR's base64 has + or /");
    items[1]["csr"] = url_safe.into();
    items[2]["csr"] = b64(&items[2]).trim_end_matches('=').to_string().into();
    let spaced = b64(&items[3]);
    items[3]["csr"] = format!("{} {}", &spaced[..40], &spaced[40..]).into();
    items[4]["device_id"] = format!(" {}", items[4]["device_id"].as_str().unwrap()).into();
    let der =
        base64::Engine::decode(&base64::engine::general_purpose::STANDARD, b64(&items[5])).unwrap();
    let body = base64::Engine::encode(&base64::engine::general_purpose::STANDARD, &der);
    let lines: Vec<&str> = body
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).unwrap())
        .collect();
    items[5]["csr"] = format!(
        "-----BEGIN CERTIFICATE REQUEST-----\n{}\n-----END CERTIFICATE REQUEST-----\n",
        lines.join("\n")
    )
    .into();
    let text: String = items.iter().map(|i| format!("{i}\n")).collect();
    std::fs::write(&batch, text).unwrap();
    let out = s.path("r.ndjson");
    let r = issue_batch(&s, &batch, &out);
    let res = results(&out);
    assert_eq!(res[0]["status"], "issued", "{res:#?}");
    assert_eq!(res[5]["status"], "issued", "PEM is accepted: {}", res[5]);
    for (i, needle) in [
        (1, "csr: URL-safe base64"),
        (2, "csr: not standard padded base64"),
        (3, "csr: base64 with spaces"),
        (4, "device_id: "),
    ] {
        assert_eq!(
            res[i]["status"], "rejected",
            "item {i}: {} sent {}",
            res[i], items[i]
        );
        let detail = res[i]["error"]["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "item {i}: {detail}");
    }
    r.fails(2, "4 of 6 items were rejected");
}

/// A batch file is read a bounded line at a time: a line that is not UTF-8, or longer than
/// 1 MiB, is refused as that line (code `json`, naming it) and the other lines are issued.
#[test]
fn a_line_that_is_not_text_or_too_long_is_refused_as_a_line() {
    let s = setup();
    let batch = s.path("b.ndjson");
    s.bench(
        "h",
        &[
            "make-batch",
            "--count",
            "3",
            "--out",
            &batch.display().to_string(),
        ],
    )
    .ok();
    let good = std::fs::read(&batch).unwrap();
    let mut bytes = Vec::new();
    let mut lines = good.split(|b| *b == b'\n').filter(|l| !l.is_empty());
    bytes.extend_from_slice(lines.next().unwrap());
    bytes.extend_from_slice(b"\n{\"profile\": \"meter-signing\", \"device_id\": \"\xff\xfe\"}\n");
    bytes.extend_from_slice(&vec![b'x'; 2 * 1024 * 1024]);
    bytes.push(b'\n');
    for l in lines {
        bytes.extend_from_slice(l);
        bytes.push(b'\n');
    }
    std::fs::write(&batch, bytes).unwrap();
    let out = s.path("r.ndjson");
    issue_batch(&s, &batch, &out).fails(2, "2 of 5 items were rejected");
    let res = results(&out);
    assert_eq!(res.len(), 5);
    for (i, line, needle) in [(1, 2, "not UTF-8"), (2, 3, "longer than")] {
        assert_eq!(res[i]["status"], "rejected");
        assert_eq!(res[i]["line"], line);
        assert_eq!(res[i]["error"]["code"], "json");
        let detail = res[i]["error"]["detail"].as_str().unwrap();
        assert!(detail.contains(needle), "{detail}");
    }
    for i in [0, 3, 4] {
        assert_eq!(res[i]["status"], "issued", "{}", res[i]);
    }
}

/// Files named on the command line are read bounded, with an error naming the flag and the
/// limit: a CSR, an update to verify, a list of serials (a line at a time).
#[test]
fn command_line_files_are_read_bounded() {
    let s = setup();
    s.run(
        "h",
        &[
            "issue",
            "--profile",
            "meter-signing",
            "--device-id",
            "00-DB-12-34-56-78-90-77",
            "--csr",
            "/dev/zero",
            "--out",
            "x.pem",
        ],
    )
    .fails(2, "--csr /dev/zero: larger than 64 KiB");
    s.run(
        "h",
        &["update", "verify", "/dev/zero", "--root", "h/ca/root.pem"],
    )
    .fails(2, "larger than 1 MiB");
    let list = s.path("serials.txt");
    std::fs::write(&list, b"# serials\n\xff\xfe\n").unwrap();
    s.run(
        "h",
        &[
            "revoke",
            "--serials-file",
            &list.display().to_string(),
            "--reason",
            "superseded",
        ],
    )
    .fails(2, "line 2: not UTF-8");
}
