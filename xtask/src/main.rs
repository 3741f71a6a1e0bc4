//! `cargo xtask <command>`: see `cargo xtask help`, and the library
//! (`xtask/src/lib.rs`) for where each piece lives.

use std::process::ExitCode;
use xtask::cli::{self, Task};
use xtask::commands;

fn main() -> ExitCode {
    match run(std::env::args().skip(1)) {
        Ok(status) => ExitCode::from(status),
        Err(error) => {
            eprintln!("xtask: {error}");
            ExitCode::FAILURE
        }
    }
}

fn run(args: impl Iterator<Item = String>) -> xtask::Result<u8> {
    match cli::parse(args)? {
        Task::Help => {
            print!("{}", cli::USAGE);
            Ok(0)
        }
        Task::Build(common) => commands::build(&common),
        Task::Run(args) => commands::run(&args),
        Task::Test(args) => commands::test(&args),
        Task::BootTimes(args) => commands::boot_times(&args),
        Task::Image(args) => commands::image(&args),
        Task::Pxe(args) => commands::pxe(&args),
        Task::Bench(common) => xtask::bench::run(common.profile, common.accel),
        Task::Fuzz(args) => xtask::fuzz::run(&args),
    }
}
