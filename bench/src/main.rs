//! The `meterpki-bench` binary: see docs/benchmarks.md.

// The same allocator as `meterpki` (see cli/src/main.rs), so that the figures of the
// benchmarks that run in this process (issue, takeover, crl) compare with the server's.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    meterpki_bench::main()
}
