//! The `ldsync` binary: parses the command line and hands it to the library.

use clap::Parser;

fn main() -> std::process::ExitCode {
    ldsync::cli::run(ldsync::cli::Cli::parse())
}
