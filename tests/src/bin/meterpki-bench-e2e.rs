//! The `meterpki-bench` binary, built inside the tests package so that the tests find it beside
//! `meterpki-e2e`.
fn main() -> std::process::ExitCode {
    meterpki_bench::main()
}
