//! The `meterpki` command line: a thin layer over `ca-core` and `hsm-bridge`.
//!
//! Exit codes: 0 success, 1 runtime failure, 2 usage or input error.
#![forbid(unsafe_code)]

mod args;
mod cmd;
mod ctx;
mod errors;
mod pin;
mod remote;

use std::process::ExitCode;

use clap::Parser;

pub use errors::InputError;

/// What other front ends of a home (the benchmark binary) share with the CLI: opening the
/// service with the home's HSM and PIN sources, and the process environment SoftHSM needs.
pub mod support {
    pub use crate::cmd::churn::{progress_bar, Bar};
    pub use crate::ctx::{
        absolute, ensure_process_env, hsm_access, raw_online_token, raw_online_tokens, Watchdog,
    };
    pub use crate::errors::{check_seconds, input};
    pub use crate::run_main;
}

/// Runs the CLI with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    run_main(|cli: args::Cli| {
        init_tracing(cli.verbose);
        cmd::run(cli)
    })
}

/// A binary's `main`: parses the process's arguments as `C` (help and version exit 0, a usage
/// error 2), runs `run` and prints its error, exiting with the code of its class (2 for the
/// caller's input, 1 for everything else).
pub fn run_main<C: Parser>(run: impl FnOnce(C) -> anyhow::Result<()>) -> ExitCode {
    harden_process();
    let cli = match C::try_parse() {
        Ok(c) => c,
        Err(e) => {
            let _ = e.print();
            return match e.kind() {
                clap::error::ErrorKind::DisplayHelp | clap::error::ErrorKind::DisplayVersion => {
                    ExitCode::SUCCESS
                }
                _ => ExitCode::from(2),
            };
        }
    };
    match run(cli) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::from(errors::exit_code(&e))
        }
    }
}

fn init_tracing(verbose: u8) {
    let default = match verbose {
        0 => "warn",
        1 => "info",
        _ => "debug",
    };
    let filter = tracing_subscriber::EnvFilter::try_from_env("METERPKI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let _ = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .try_init();
}

/// A process that holds PINs and talks to the HSM writes no core dump and cannot be read by
/// other processes of the same user (ptrace, /proc/<pid>/mem and environ): RLIMIT_CORE 0 and
/// PR_SET_DUMPABLE 0. Failing to set either is logged, not fatal (a container may forbid it).
/// Everything it creates (the home, its store, log, policies, SoftHSM's token files, keys and
/// certificates written for clients) is for its user alone whatever the caller's umask: 077.
fn harden_process() {
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    use rustix::process::{setrlimit, Resource, Rlimit};
    if let Err(e) = setrlimit(
        Resource::Core,
        Rlimit {
            current: Some(0),
            maximum: Some(0),
        },
    ) {
        eprintln!("warning: could not disable core dumps: {e}");
    }
    if let Err(e) =
        rustix::process::set_dumpable_behavior(rustix::process::DumpableBehavior::NotDumpable)
    {
        eprintln!("warning: could not mark the process non-dumpable: {e}");
    }
}
