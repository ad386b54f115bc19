//! The `meterpki` CLI, built inside the tests package (see Cargo.toml).
fn main() -> std::process::ExitCode {
    meterpki_cli::main()
}
