use std::process::ExitCode;

fn main() -> ExitCode {
    vmfleet_cli::main(vmfleet_cli::parse())
}
