use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    vmfleet_cli::main(vmfleet_cli::Cli::parse())
}
