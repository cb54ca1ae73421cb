// mimalloc: the hot path allocates and frees a few small blocks per envelope on one thread and
// frees them on another; glibc's malloc spent a fifth of the server's time there (BENCHMARKS.md).
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> std::process::ExitCode {
    sluice::cli::main()
}
