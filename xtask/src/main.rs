//! `cargo xtask <command>`: the project's developer and CI tasks. Wiring only; each command lives
//! in its own module.

mod bench;
mod bench_collector;
mod bench_memory;
mod bench_overhead;
mod bench_pipeline;
mod fuzz;
mod run;
mod setup;
mod test;
mod util;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "xtask",
    bin_name = "cargo xtask",
    about = "Tenantscope developer and CI tasks"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what this machine needs to build, run and test the project (idempotent)
    Setup,
    /// Run the whole suite, as CI does: setup, fmt, clippy (userspace and eBPF), build, tests
    Test,
    /// Set up, build the release agent and collector, start the collector and run the agent
    /// in the foreground, exporting to it
    Run {
        /// Arguments for tenantscope-agent (after `--`)
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Print an SLA report from the local collector's store (default: every tenant, this month)
    Report {
        /// Arguments for `tenantscope-collector report` (after `--`), e.g. --tenant acme --format html
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run one benchmark: syscalls, tcp, overhead (nginx under wrk, agent vs bpftrace; alias
    /// http), pipeline (recorded records replayed without a kernel), memory, collector
    Bench {
        probe: String,
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run the cargo-fuzz targets (fuzz/, docs/fuzzing.md): [--seconds N] (default 600 per
    /// target) [--jobs N] (default 2 at once) [--record] (append to docs/fuzzing.md) [TARGET...]
    Fuzz {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> ExitCode {
    let result = match Cli::parse().command {
        Cmd::Setup => setup::setup(),
        Cmd::Test => test::test(),
        Cmd::Run { args } => run::run(args),
        Cmd::Report { args } => run::report(args),
        Cmd::Bench { probe, args } => bench::bench(probe, args),
        Cmd::Fuzz { args } => fuzz::fuzz(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("xtask: error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
