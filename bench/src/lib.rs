//! `meterpki-bench`: the benchmarks and the load generator, out of the production binary. Each
//! runs the same code paths as the commands it measures (through `ca_core::service`, or the
//! real `meterpki serve` process for the API) and prints its rate beside the raw HSM signing
//! rate and the P-256 verification rate measured in the same run (docs/benchmarks.md).
#![forbid(unsafe_code)]

mod api;
mod crl;
mod figures;
mod hostile;
mod input;
mod issue;
mod sizes;
mod takeover;

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Result;
use ca_core::service::Service;
use ca_core::Home;
use clap::{Parser, Subcommand};
use meterpki_cli::support::{
    absolute, check_seconds, ensure_process_env, hsm_access, raw_online_token, Watchdog,
};

#[derive(Parser, Debug)]
#[command(
    name = "meterpki-bench",
    version,
    about = "meterpki benchmarks: issuance through the CLI path and the API, CRLs at scale, trust-anchor updates, each beside the raw HSM rate of the same run.",
    after_help = "Examples:\n  meterpki-bench --home demo/home issue --count 100000\n  meterpki-bench make-batch --count 1000000 --out req.ndjson && meterpki-bench --home copy-of-home api --requests req.ndjson\n\nThe raw signing rate alone: meterpki hsm bench. See docs/benchmarks.md for every figure and how it was measured."
)]
struct Cli {
    /// The meterpki home (as for `meterpki`).
    #[arg(
        long,
        global = true,
        env = "METERPKI_HOME",
        default_value = "./meterpki-home"
    )]
    home: PathBuf,
    /// Print machine-readable JSON.
    #[arg(long, global = true)]
    json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Load the API: start `meterpki serve` on this home, send N meter requests in batches over mTLS from a factory account made for the run, and print certificates/s, the raw signing rate measured before the server started, their ratio, wall time, the server's peak RSS and batch latency percentiles.
    #[command(
        after_help = "Examples:\n  meterpki-bench api --count 1000000 --batch 5000 --in-flight 2\n  meterpki-bench make-batch --count 1000000 --out req.ndjson && meterpki-bench api --requests req.ndjson"
    )]
    Api(api::ApiArgs),
    /// Hostile callers without an account beside a real batch: refused 16 MiB uploads, idle TLS and HTTP/2 connections, TCP without TLS, trickled bodies and a /readyz flood from several client addresses; print the batch's latency alone and under attack and the server's peak RSS.
    #[command(
        after_help = "Example:\n  meterpki-bench --home COPY hostile --batch 1000 --idle 400 --uploads 64"
    )]
    Hostile(hostile::HostileArgs),
    /// CRLs at scale: N certificate records written straight to a scratch store, M revoked by list, every shard (and the full CRL) rebuilt and signed with the Device CA key.
    #[command(after_help = "Example:\n  meterpki-bench crl --certs 1000000 --revoke 100000")]
    Crl {
        /// Certificate records in the scratch store.
        #[arg(long, default_value_t = 1_000_000)]
        certs: usize,
        /// How many of them to revoke.
        #[arg(long, default_value_t = 100_000)]
        revoke: usize,
    },
    /// Write N unsigned meter-certificate records (M of them revoked) into this home's own store, either backend, to measure issuance, server memory and CRL publication on a large store. Only on a scratch copy of a home (--scratch-copy).
    #[command(
        after_help = "Example:\n  cp -a demo/home /tmp/big && meterpki-bench --home /tmp/big fill --certs 10000000 --revoke 1000000 --scratch-copy"
    )]
    Fill {
        /// Certificate records to write.
        #[arg(long)]
        certs: usize,
        /// How many of them to revoke (keyCompromise).
        #[arg(long, default_value_t = 0)]
        revoke: usize,
        /// Confirms that this home is a scratch copy: the records are not real certificates.
        #[arg(long)]
        scratch_copy: bool,
    },
    /// Write an NDJSON batch of N meter-signing requests with fresh P-256 keys made in software (for benchmarks and line tests; the keys are discarded).
    #[command(
        name = "make-batch",
        after_help = "Example:\n  meterpki-bench make-batch --count 10000 --out line-7.ndjson"
    )]
    MakeBatch {
        /// Requests to write.
        #[arg(long)]
        count: usize,
        /// The NDJSON file to write.
        #[arg(long)]
        out: PathBuf,
        /// Profile of the requests.
        #[arg(long, default_value = "meter-signing")]
        profile: String,
    },
    /// Issue N meter certificates from freshly made CSRs through the `issue --batch` path; print certificates/s next to the raw signing rate measured in the same run, their ratio, and peak RSS.
    #[command(after_help = "Example:\n  meterpki-bench issue --count 100000")]
    Issue {
        /// Certificates to issue.
        #[arg(long, default_value_t = 100_000)]
        count: usize,
        /// Seconds for the raw signing-rate measurement.
        #[arg(long, default_value_t = 5.0)]
        raw_seconds: f64,
    },
    /// Meter certificate sizes as this home issues them (its profiles, its Device CA's name and HSM key), N fresh keys without and N with a CRL pointer, on a scratch store: min, p50, p99, max and the histogram, against the 410 / 460-byte limits.
    #[command(after_help = "Example:\n  meterpki-bench sizes --count 10000")]
    Sizes(sizes::SizesArgs),
    /// Trust-anchor updates at scale: a takeover of N meters in a scratch store (suppliers with real certificates, the home's trust-update signer key), updates/s beside the raw signing rate of that key in the same run, their ratio, and peak RSS.
    #[command(after_help = "Example:\n  meterpki-bench takeover --meters 100000")]
    Takeover {
        /// Meters supplier A serves.
        #[arg(long, default_value_t = 100_000)]
        meters: usize,
        /// Seconds for the raw signing-rate measurement.
        #[arg(long, default_value_t = 5.0)]
        raw_seconds: f64,
        /// Meters per chunk.
        #[arg(long, default_value_t = 1000)]
        chunk: usize,
        /// Write the updates as one NDJSON stream instead of one file per meter.
        #[arg(long)]
        ndjson: bool,
    },
}

/// An opened home, as the CLI opens it.
pub(crate) struct Bench {
    service: Service,
    json: bool,
}

impl Bench {
    fn open(home: &std::path::Path, json: bool) -> Result<Bench> {
        let home = Home::new(absolute(home));
        let service = Service::open(home.clone(), hsm_access(&home, Watchdog::On))?;
        ensure_process_env(service.config().hsm.softhsm.then_some(&home), false)?;
        Ok(Bench { service, json })
    }

    /// A raw-rate session pool on every token holding the online keys.
    fn raw_tokens(&self, sessions: usize) -> Result<Vec<std::sync::Arc<hsm_bridge::Token>>> {
        meterpki_cli::support::raw_online_tokens(
            self.service.home(),
            self.service.config(),
            sessions,
        )
    }

    /// A raw-rate session pool on the online token, opened as `meterpki hsm bench` does.
    fn raw_token(&self, sessions: usize) -> Result<std::sync::Arc<hsm_bridge::Token>> {
        let (_, token) = raw_online_token(self.service.home(), self.service.config(), sessions)?;
        Ok(token)
    }
}

/// Runs the benchmark binary with the process's arguments and returns its exit code.
pub fn main() -> ExitCode {
    meterpki_cli::support::run_main(run)
}

fn run(cli: Cli) -> Result<()> {
    match cli.command {
        Command::MakeBatch {
            count,
            out,
            profile,
        } => input::make_batch(count, &out, &profile),
        Command::Api(a) => {
            check_seconds("--raw-seconds", a.raw_seconds)?;
            api::run(&Bench::open(&cli.home, cli.json)?, &a)
        }
        Command::Sizes(a) => sizes::run(&Bench::open(&cli.home, cli.json)?, &a),
        Command::Hostile(a) => hostile::run(&Bench::open(&cli.home, cli.json)?, &a),
        Command::Issue { count, raw_seconds } => {
            check_seconds("--raw-seconds", raw_seconds)?;
            issue::run(&Bench::open(&cli.home, cli.json)?, count, raw_seconds)
        }
        Command::Fill {
            certs,
            revoke,
            scratch_copy,
        } => crl::fill(
            &Bench::open(&cli.home, cli.json)?,
            certs,
            revoke,
            scratch_copy,
        ),
        Command::Crl { certs, revoke } => {
            crl::run(&Bench::open(&cli.home, cli.json)?, certs, revoke)
        }
        Command::Takeover {
            meters,
            raw_seconds,
            chunk,
            ndjson,
        } => {
            check_seconds("--raw-seconds", raw_seconds)?;
            takeover::run(
                &Bench::open(&cli.home, cli.json)?,
                meters,
                raw_seconds,
                chunk,
                ndjson,
            )
        }
    }
}
