//! A strict relying party: every certificate of a path checked against the CRL its issuer
//! publishes (`-crl_check_all`), with the home's published CRL files rather than a download,
//! so that a step's state is checked exactly as it was published.

use std::path::{Path, PathBuf};

use meterpki_tests::{tool, Run, Scratch};

/// Every CRL the home `h` has published (each issuer's full CRL and every root generation's
/// ARL), converted to PEM beside the scratch directory's other files.
pub(crate) fn crls(s: &Scratch, h: &str) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let dir = s.path(&format!("{h}/crl"));
    let mut issuers: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    issuers.sort();
    for issuer in issuers {
        let name = issuer.file_name().unwrap().to_string_lossy().into_owned();
        for file in ["full.crl", "arl.crl"] {
            let der = issuer.join(file);
            if !der.exists() {
                continue;
            }
            let pem = s.path(&format!("{h}-crl-{name}-{file}.pem"));
            tool(
                "openssl",
                &[
                    "crl",
                    "-inform",
                    "DER",
                    "-in",
                    &der.display().to_string(),
                    "-out",
                    &pem.display().to_string(),
                ],
                &[],
            )
            .ok();
            out.push(pem);
        }
    }
    out
}

/// `openssl verify -crl_check_all` of `cert` with `anchor` trusted, `untrusted` as the
/// intermediates to build the path from and every CRL in `crls` (no CRL check without any:
/// how a meter, which fetches no CRL, checks a chain); `-attime` when given.
pub(crate) fn verify(
    anchor: &Path,
    untrusted: &[PathBuf],
    crls: &[PathBuf],
    attime: Option<i64>,
    cert: &Path,
) -> Run {
    let mut args: Vec<String> = vec!["verify".into()];
    if !crls.is_empty() {
        args.push("-crl_check_all".into());
    }
    if let Some(t) = attime {
        args.extend(["-attime".into(), t.to_string()]);
    }
    args.extend(["-CAfile".into(), anchor.display().to_string()]);
    for u in untrusted {
        args.extend(["-untrusted".into(), u.display().to_string()]);
    }
    for c in crls {
        args.extend(["-CRLfile".into(), c.display().to_string()]);
    }
    args.push(cert.display().to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    tool("openssl", &args, &[])
}

/// Asserts `verify` accepts `cert`.
pub(crate) fn accepts(anchor: &Path, untrusted: &[PathBuf], crls: &[PathBuf], cert: &Path) {
    let r = verify(anchor, untrusted, crls, None, cert);
    assert!(
        r.code == 0 && r.stdout.contains(": OK"),
        "{} should verify under {}: {}{}",
        cert.display(),
        anchor.display(),
        r.stdout,
        r.stderr
    );
}

/// Asserts `verify` refuses `cert` with an error mentioning `why`.
pub(crate) fn refuses(
    anchor: &Path,
    untrusted: &[PathBuf],
    crls: &[PathBuf],
    cert: &Path,
    why: &str,
) {
    let r = verify(anchor, untrusted, crls, None, cert);
    assert!(
        r.code != 0 && format!("{}{}", r.stdout, r.stderr).contains(why),
        "{} should fail with {why:?}: {}{}",
        cert.display(),
        r.stdout,
        r.stderr
    );
}

/// Unix time of a UTC date (`2045-06-01`).
pub(crate) fn unix(date: &str) -> i64 {
    let out = tool("date", &["-u", "-d", date, "+%s"], &[]).ok().stdout;
    out.trim().parse().unwrap()
}

/// A certificate's serial, lowercase hex.
pub(crate) fn serial(cert: &Path) -> String {
    let out = tool(
        "openssl",
        &[
            "x509",
            "-noout",
            "-serial",
            "-in",
            &cert.display().to_string(),
        ],
        &[],
    )
    .ok()
    .stdout;
    out.trim()
        .trim_start_matches("serial=")
        .to_ascii_lowercase()
}

/// One field of `openssl x509 -noout -<field>`, e.g. `enddate`, `subject`, `issuer`.
pub(crate) fn x509_field(cert: &Path, field: &str) -> String {
    tool(
        "openssl",
        &[
            "x509",
            "-noout",
            &format!("-{field}"),
            "-nameopt",
            "RFC2253",
            "-in",
            &cert.display().to_string(),
        ],
        &[],
    )
    .ok()
    .stdout
    .trim()
    .to_string()
}

/// `scripts/tamp-asn1-decode.py` (pyasn1-modules' RFC 5652 and RFC 5934 modules, installed
/// by `make test` into `.tools/venv`): the message decoded strictly by an independent ASN.1
/// decoder, its summary as JSON.
pub(crate) fn asn1_decode(file: &Path) -> serde_json::Value {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let python = root.join(".tools/venv/bin/python");
    assert!(
        python.exists(),
        "{} is missing: run `make test` (scripts/install-deps.sh installs pyasn1-modules)",
        python.display()
    );
    let r = tool(
        &python.display().to_string(),
        &[
            &root
                .join("scripts/tamp-asn1-decode.py")
                .display()
                .to_string(),
            &file.display().to_string(),
        ],
        &[],
    );
    assert_eq!(
        r.code,
        0,
        "pyasn1-modules refuses {}: {r:?}",
        file.display()
    );
    serde_json::from_str(&r.stdout).unwrap()
}

/// `openssl cms -verify` of a DER SignedData with `ca` trusted; returns the content.
/// `-purpose any`: openssl's default purpose is S/MIME e-mail, which asks the signer for
/// digitalSignature; a TAMP apex update is signed by the root's own key (keyCertSign, cRLSign),
/// as RFC 5934 §4.5 has it. The signature and the path are checked all the same.
pub(crate) fn cms_verify(file: &Path, ca: &Path) -> Vec<u8> {
    let out = file.with_extension("content");
    let r = tool(
        "openssl",
        &[
            "cms",
            "-verify",
            "-inform",
            "DER",
            "-binary",
            "-purpose",
            "any",
            "-in",
            &file.display().to_string(),
            "-CAfile",
            &ca.display().to_string(),
            "-out",
            &out.display().to_string(),
        ],
        &[],
    );
    assert!(
        r.code == 0 && r.stderr.contains("Verification successful"),
        "openssl cms -verify {}: {r:?}",
        file.display()
    );
    std::fs::read(out).unwrap()
}
