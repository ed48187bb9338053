use std::process::ExitCode;

/// mimalloc: the control plane allocates a few small buffers per `/fleet` frame and per
/// request; with glibc's allocator that was about 6% of a heartbeat's CPU (the fleet
/// benchmark measured 12% less with mimalloc). Built without transparent huge pages
/// (`no_thp`): with them its arenas added about 15 MiB of RSS to a server of 1,000 agents.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    vmfleet_cli::main(vmfleet_cli::parse())
}
