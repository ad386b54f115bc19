//! `meterpki ceremony root`, `issuing-ca`, `root-crl` and `revoke-ca`.

use anyhow::Result;
use ca_core::service::{Actor, IssuingCeremony, RootCeremony};
use ca_core::CaKind;

use crate::args::{IssuingArgs, RevokeCaArgs, RootArgs, RootCrlArgs};
use crate::cmd::print_json;
use crate::ctx::{absolute, operator, Ctx};
use crate::errors::input;

fn actor(named: &Option<String>) -> Actor {
    named.clone().map(Actor::Operator).unwrap_or_else(operator)
}

pub(super) fn root(ctx: &Ctx, a: RootArgs) -> Result<()> {
    let summary = ctx.service.root_ceremony(
        &actor(&a.operator),
        &RootCeremony {
            officers: a.officers,
            quorum: a.quorum,
            officer_names: a.officer_names.clone(),
            shares_dir: absolute(&a.shares_dir),
        },
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    let s = |path: &[&str]| {
        path.iter()
            .fold(&summary, |v, k| &v[*k])
            .as_str()
            .unwrap_or("")
            .to_string()
    };
    println!("Root ceremony {} complete.", s(&["ceremony_id"]));
    println!(
        "  root certificate  {}",
        ctx.home().ca_cert(CaKind::Root).display()
    );
    println!("  SHA-256           {}", s(&["root", "sha256_fingerprint"]));
    println!(
        "  root key          {} on token {} (EC P-384, sensitive, not extractable)",
        CaKind::Root.key_label(),
        ctx.config().hsm.root_token
    );
    println!("  quorum            {} of {}", a.quorum, a.officers);
    for f in summary["share_files"].as_array().into_iter().flatten() {
        println!(
            "  share             {} (0600)",
            f["file"].as_str().unwrap_or("")
        );
    }
    println!("  transcript        {}", s(&["transcript"]));
    println!("Hand each officer their share file and remove it from this machine.");
    Ok(())
}

pub(super) fn issuing(ctx: &Ctx, a: IssuingArgs) -> Result<()> {
    let kind = a.kind;
    let summary = ctx.service.issuing_ca_ceremony(
        &actor(&a.operator),
        IssuingCeremony {
            kind,
            shares: a.shares.clone(),
        },
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    let home = ctx.home();
    let name = kind.name();
    println!("{}{} CA created.", name[..1].to_uppercase(), &name[1..]);
    println!("  certificate  {}", home.ca_cert(kind).display());
    println!(
        "  SHA-256      {}",
        summary["certificate"]["sha256_fingerprint"]
            .as_str()
            .unwrap_or("")
    );
    println!(
        "  key          {} on token {} (EC P-256, sensitive, not extractable)",
        kind.key_label(),
        ctx.config().hsm.online_token
    );
    println!(
        "  signed by    {} (quorum {})",
        summary["certificate"]["issuer"]
            .as_str()
            .unwrap_or("the root"),
        summary["quorum"]
    );
    println!(
        "  verify with  openssl verify -CAfile {} {}",
        home.ca_cert(CaKind::Root).display(),
        home.ca_cert(kind).display()
    );
    Ok(())
}

/// The ARL line of a ceremony's summary.
fn print_arl(ctx: &Ctx, published: &serde_json::Value) {
    for p in published.as_array().into_iter().flatten() {
        println!(
            "  ARL          {} (cRLNumber {}, {} entries)",
            ctx.home().crl_dir().join("root").join("arl.crl").display(),
            p["crl_number"],
            p["entries"]
        );
    }
}

pub(super) fn root_crl(ctx: &Ctx, a: RootCrlArgs) -> Result<()> {
    let summary = ctx
        .service
        .root_crl_ceremony(&actor(&a.operator), &absolute_all(&a.shares))?;
    if ctx.json {
        return print_json(&summary);
    }
    println!("Root ARL re-signed.");
    for r in summary["recorded"].as_array().into_iter().flatten() {
        println!(
            "  recorded     {} (issued by the root before the ARL existed)",
            r.as_str().unwrap_or("")
        );
    }
    print_arl(ctx, &summary["published"]);
    Ok(())
}

pub(super) fn revoke_ca(ctx: &Ctx, a: RevokeCaArgs) -> Result<()> {
    let reason = ca_core::Reason::parse(&a.reason).map_err(|e| input(format!("--reason: {e}")))?;
    let summary = ctx.service.revoke_ca_ceremony(
        &actor(&a.operator),
        a.kind,
        reason,
        &absolute_all(&a.shares),
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "{} CA certificate {} {} ({}).",
        a.kind,
        summary["serial"].as_str().unwrap_or(""),
        summary["status"].as_str().unwrap_or(""),
        summary["reason"].as_str().unwrap_or("")
    );
    print_arl(ctx, &summary["published"]);
    println!(
        "Every certificate below the {} CA now fails revocation checking.",
        a.kind
    );
    Ok(())
}

fn absolute_all(paths: &[std::path::PathBuf]) -> Vec<std::path::PathBuf> {
    paths.iter().map(|p| absolute(p)).collect()
}
