//! The `meterpki` binary: see the README for every command.

// mimalloc instead of glibc's malloc: sled, the DER encoders and the signing threads allocate
// from several threads at once, where glibc's arenas cost a fifth of the CPU in `bench takeover`
// and grow the peak RSS. Built with mimalloc's `no_thp` feature: transparent huge pages rounded
// the API server's partly used arena pages up to 2 MiB (`bench api` peak RSS 310 -> 226 MB at
// 300,000 certificates, no slower).
// Without the `mimalloc` feature (heap profiling) the system allocator is used.
#[cfg(feature = "mimalloc")]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    meterpki_cli::main()
}
