//! The CA lifecycle end to end (docs/lifecycle.md): chains that outlive today's CA end dates,
//! issuing-CA renewal into generations whose CRLs keep being signed by their own keys, checked
//! as a strict relying party checks them (`openssl verify -crl_check_all` with every CRL of
//! the path, the root's ARL included).

mod recertify;
mod recover;
mod renewal;
mod rollover;
mod rp;
mod whole_life;

const EXE: &str = env!("CARGO_BIN_EXE_meterpki-e2e");

use meterpki_tests::Scratch;

/// `--share` arguments for the root shares `n` of the home `h`.
fn shares(s: &Scratch, n: &[u8]) -> Vec<String> {
    n.iter()
        .flat_map(|i| {
            [
                "--share".to_string(),
                s.share("h", *i).display().to_string(),
            ]
        })
        .collect()
}

/// `meterpki` on the home `h` with `args` then `more`.
fn run(s: &Scratch, args: &[&str], more: &[String]) -> meterpki_tests::Run {
    let mut all: Vec<&str> = args.to_vec();
    all.extend(more.iter().map(String::as_str));
    s.run("h", &all)
}

/// `meterpki update verify FILE --root ROOT --json` (and `extra`) on the home `h`: the update
/// checked as a meter holding ROOT checks it; its JSON answer.
fn meter_verifies(
    s: &Scratch,
    file: &std::path::Path,
    root: &std::path::Path,
    extra: &[&str],
) -> serde_json::Value {
    let (file, root) = (file.display().to_string(), root.display().to_string());
    let mut args = vec!["update", "verify", &file, "--root", &root, "--json"];
    args.extend_from_slice(extra);
    s.run("h", &args).ok().json()
}

/// The strings at `field` of the objects in the array `list` of `v`, sorted.
fn sorted(v: &serde_json::Value, list: &str, field: &str) -> Vec<String> {
    let mut out: Vec<String> = v[list]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x[field].as_str().unwrap().to_string())
        .collect();
    out.sort();
    out
}
