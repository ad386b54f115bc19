fn main() -> std::process::ExitCode {
    meterpki_cli::main()
}
