//! One module per command group.

mod account;
mod audit;
mod bench;
pub(crate) mod ceremony;
mod churn;
mod crl;
mod init;
mod issue;
mod meter;
pub(crate) mod revoke;
mod serve;
mod show;
mod status;
mod supplier;
mod update;

use anyhow::Result;
use ca_core::Home;

use crate::args::{
    AuditCommand, BenchCommand, CeremonyCommand, Cli, Command, CrlCommand, UpdateCommand,
};
use crate::ctx::{absolute, ensure_process_env, Ctx};

/// Dispatches a parsed command line.
pub fn run(cli: Cli) -> Result<()> {
    let home = Home::new(absolute(&cli.home));
    let json = cli.json;
    match cli.command {
        Command::Init(a) => init::run(home, a, json),
        Command::Audit(AuditCommand::Verify) => audit::verify(&Ctx::open(home, json)?),
        Command::Audit(AuditCommand::List) => audit::list(&Ctx::open(home, json)?),
        Command::Bench(BenchCommand::MakeBatch {
            count,
            out,
            profile,
        }) => bench::make_batch(count, &out, &profile),
        Command::Update(UpdateCommand::Verify {
            file,
            root,
            device_id,
            after,
            policy_oid,
        }) => update::verify(
            &home,
            json,
            &file,
            &root,
            device_id.as_deref(),
            after,
            policy_oid.as_deref(),
        ),
        other => {
            let ctx = Ctx::open(home, json)?;
            let server = matches!(other, Command::Serve { .. });
            ensure_process_env(ctx.config.hsm.softhsm.then_some(&ctx.home), server)?;
            match other {
                Command::Ceremony(CeremonyCommand::Root(a)) => ceremony::root(&ctx, a),
                Command::Ceremony(CeremonyCommand::IssuingCa(a)) => ceremony::issuing(&ctx, a),
                Command::Status => status::run(&ctx),
                Command::Issue(a) => issue::run(&ctx, a),
                Command::Show(a) => show::run(&ctx, a),
                Command::Revoke(a) => revoke::run(&ctx, a),
                Command::Account(a) => account::run(&ctx, a),
                Command::Supplier(a) => supplier::run(&ctx, a),
                Command::Meter(a) => meter::run(&ctx, a),
                Command::Serve {
                    listen,
                    dns,
                    ips,
                    per_account_limit,
                } => serve::run(&ctx, listen, dns, ips, per_account_limit),
                Command::Crl(CrlCommand::Publish { issuer, full }) => {
                    crl::publish(&ctx, issuer, full)
                }
                Command::Bench(BenchCommand::Crl { certs, revoke }) => {
                    bench::crl(&ctx, certs, revoke)
                }
                Command::Bench(BenchCommand::Api {
                    count,
                    requests,
                    batch,
                    in_flight,
                    raw_seconds,
                }) => bench::api(
                    &ctx,
                    count,
                    requests.as_deref(),
                    batch,
                    in_flight,
                    raw_seconds,
                ),
                Command::Bench(BenchCommand::Issue { count, raw_seconds }) => {
                    bench::issue(&ctx, count, raw_seconds)
                }
                Command::Bench(BenchCommand::Hsm { seconds }) => bench::hsm(&ctx, seconds),
                Command::Bench(BenchCommand::Takeover {
                    meters,
                    raw_seconds,
                    chunk,
                    ndjson,
                }) => bench::takeover(&ctx, meters, raw_seconds, chunk, ndjson),
                Command::Init(_)
                | Command::Audit(_)
                | Command::Update(_)
                | Command::Bench(BenchCommand::MakeBatch { .. }) => unreachable!("handled above"),
            }
        }
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// Random bytes as lowercase hex, from the OS RNG.
pub(crate) fn random_hex(bytes: usize) -> String {
    use rand::RngCore;
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    let s = hex::encode(&b);
    zeroize::Zeroize::zeroize(&mut b);
    s
}

/// Now, RFC 3339 UTC.
pub(crate) fn now_rfc3339() -> String {
    time::OffsetDateTime::now_utc()
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_default()
}

/// Now, compact, for file names.
pub(crate) fn now_compact() -> String {
    let f = time::macros::format_description!("[year][month][day]T[hour][minute][second]Z");
    time::OffsetDateTime::now_utc()
        .format(&f)
        .unwrap_or_default()
}
