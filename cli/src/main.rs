// mimalloc instead of glibc's malloc: sled, the DER encoders and the signing threads allocate
// from several threads at once, where glibc's arenas cost a fifth of the CPU in `bench takeover`
// and grow the peak RSS.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    meterpki_cli::main()
}
