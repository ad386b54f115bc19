//! One module per command group: each parses its arguments, calls one use case of
//! `ca_core::service` and renders the result (text, or JSON with `--json`).

mod account;
mod audit;
mod ceremony;
pub(crate) mod churn;
mod crl;
mod hsm;
mod init;
mod issue;
mod meter;
mod revoke;
mod serve;
mod show;
mod status;
mod store;
mod supplier;
mod update;

use anyhow::Result;
use ca_core::Home;

use crate::args::{
    AccountCommand, AuditCommand, CeremonyCommand, Cli, Command, CrlCommand, HsmCommand,
    StoreCommand, UpdateCommand,
};
use crate::ctx::{absolute, ensure_process_env, Ctx, Watchdog};

/// Dispatches a parsed command line.
pub(crate) fn run(cli: Cli) -> Result<()> {
    let home = Home::new(absolute(&cli.home));
    let json = cli.json;
    match cli.command {
        Command::Init(a) => init::run(home, a, json),
        Command::Audit(AuditCommand::Verify) => {
            audit::verify(&Ctx::open(home, json, Watchdog::On)?)
        }
        Command::Audit(AuditCommand::List) => audit::list(&Ctx::open(home, json, Watchdog::On)?),
        Command::Update(UpdateCommand::Verify {
            file,
            root,
            device_id,
            after,
            policy_oid,
            hw_type,
        }) => update::verify(
            &home,
            json,
            &file,
            &root,
            update::Meter {
                device: device_id.as_deref(),
                after,
                policy_oid: policy_oid.as_deref(),
                hw_type: hw_type.as_deref(),
            },
        ),
        other => {
            let server = matches!(other, Command::Serve { .. });
            let watchdog = if server { Watchdog::Off } else { Watchdog::On };
            let ctx = Ctx::open(home, json, watchdog)?;
            ensure_process_env(ctx.config().hsm.softhsm.then_some(ctx.home()), server)?;
            // The store is checked against the audit log before anything else happens (a key
            // made, a file written): a missing, foreign or older store stops every command
            // here. The commands a running server takes over check it where they run.
            let forwardable = matches!(
                other,
                Command::Revoke(_)
                    | Command::Crl(_)
                    | Command::Account(AccountCommand::Disable { .. })
            );
            // A PostgreSQL store whose schema is not there yet is what `store migrate` makes.
            let schema = matches!(
                other,
                Command::Store(StoreCommand::Migrate { to: None, .. })
            );
            if !forwardable && !schema && !matches!(other, Command::Hsm(_)) {
                ctx.service.check_store()?;
            }
            match other {
                Command::Ceremony(CeremonyCommand::Root(a)) => ceremony::root(&ctx, a),
                Command::Ceremony(CeremonyCommand::IssuingCa(a)) => ceremony::issuing(&ctx, a),
                Command::Ceremony(CeremonyCommand::RootCrl(a)) => ceremony::root_crl(&ctx, a),
                Command::Ceremony(CeremonyCommand::RevokeCa(a)) => ceremony::revoke_ca(&ctx, a),
                Command::Ceremony(CeremonyCommand::RootRollover(a)) => {
                    ceremony::root_rollover(&ctx, a)
                }
                Command::Ceremony(CeremonyCommand::ApexRecover(a)) => {
                    ceremony::apex_recover(&ctx, a)
                }
                Command::Ceremony(CeremonyCommand::BackupKey(a)) => ceremony::backup_key(&ctx, a),
                Command::Ceremony(CeremonyCommand::Replicate(a)) => ceremony::replicate(&ctx, a),
                Command::Ceremony(CeremonyCommand::Backup(a)) => ceremony::backup(&ctx, a),
                Command::Ceremony(CeremonyCommand::Restore(a)) => ceremony::restore(&ctx, a),
                Command::Ceremony(CeremonyCommand::ReplicateRoot(a)) => {
                    ceremony::replicate_root(&ctx, a)
                }
                Command::Status => status::run(&ctx),
                Command::Issue(a) => issue::run(&ctx, a),
                Command::Show(a) => show::run(&ctx, a),
                Command::Revoke(a) => revoke::run(&ctx, a),
                Command::Account(a) => account::run(&ctx, a),
                Command::Supplier(a) => supplier::run(&ctx, a),
                Command::Meter(a) => meter::run(&ctx, a),
                Command::Serve {
                    listen,
                    crl_listen,
                    dns,
                    ips,
                    per_account_limit,
                } => serve::run(ctx, listen, crl_listen, dns, ips, per_account_limit),
                Command::Crl(CrlCommand::Publish { issuer, full }) => {
                    crl::publish(&ctx, issuer, full)
                }
                Command::Hsm(HsmCommand::Bench { seconds }) => hsm::bench(&ctx, seconds),
                Command::Hsm(HsmCommand::InitToken { label }) => hsm::init_token(&ctx, &label),
                Command::Store(StoreCommand::Migrate { to, url_file }) => {
                    store::migrate(&ctx, to.as_deref(), url_file.as_deref())
                }
                Command::Store(StoreCommand::Check) => store::check(&ctx),
                Command::Init(_) | Command::Audit(_) | Command::Update(_) => {
                    unreachable!("handled above")
                }
            }
        }
    }
}

/// Prints `value` as pretty JSON.
pub(crate) fn print_json(value: &impl serde::Serialize) -> Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// A serial as typed by a user: hex, with or without `0x` and colons.
pub(crate) fn parse_serial(s: &str) -> Result<Vec<u8>> {
    let t = s.trim().trim_start_matches("0x").replace(':', "");
    let b = hex::decode(&t)
        .map_err(|e| crate::errors::input(format!("serial {s:?} is not hex: {e}")))?;
    if b.is_empty() || b.len() > 20 {
        return Err(crate::errors::input(format!(
            "serial {s:?}: 1 to 20 octets"
        )));
    }
    Ok(b)
}

/// An EUI-64 flag, or an input error naming the flag.
pub(crate) fn parse_id(flag: &str, s: &str) -> Result<ca_core::Eui64> {
    s.parse()
        .map_err(|e| crate::errors::input(format!("{flag}: {e}")))
}

/// The most a CSR, key or certificate file given on the command line may hold.
pub(crate) const BLOB_LIMIT: u64 = 64 * 1024;

/// A CSR or key file for a request item: PEM stays text, DER becomes base64. Read bounded.
pub(crate) fn read_blob(flag: &str, p: &std::path::Path) -> Result<String> {
    use base64::Engine as _;
    let bytes = ca_core::read_bounded(p, BLOB_LIMIT)
        .map_err(|e| crate::errors::input(format!("{flag} {}: {e}", p.display())))?;
    Ok(match String::from_utf8(bytes.clone()) {
        Ok(t) if t.contains("-----BEGIN") => t,
        _ => base64::engine::general_purpose::STANDARD.encode(bytes),
    })
}

/// A certificate as PEM.
pub(crate) fn pem(der: &[u8]) -> Result<String> {
    Ok(ca_core::der_to_pem(der)?)
}

/// Unix seconds as RFC 3339.
pub(crate) fn rfc3339(t: i64) -> String {
    time::OffsetDateTime::from_unix_timestamp(t)
        .ok()
        .and_then(|t| {
            t.format(&time::format_description::well_known::Rfc3339)
                .ok()
        })
        .unwrap_or_default()
}
