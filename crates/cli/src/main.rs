use std::process::ExitCode;

/// mimalloc: the control plane allocates a few small buffers per `/fleet` frame and per
/// request; with glibc's allocator that was about 6% of a heartbeat's CPU.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    vmfleet_cli::main(vmfleet_cli::parse())
}
