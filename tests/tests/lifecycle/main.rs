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
