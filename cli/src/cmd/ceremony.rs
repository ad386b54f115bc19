//! `meterpki ceremony root`, `issuing-ca`, `root-crl`, `revoke-ca` and the key-backup
//! ceremonies (`backup-key`, `replicate`, `backup`, `restore`).

use anyhow::Result;
use ca_core::service::{Actor, BackupKeyCeremony, IssuingCeremony, RootCeremony};
use ca_core::CaKind;

use crate::args::{
    ApexRecoverArgs, BackupArgs, IssuingArgs, ReplicateArgs, ReplicateRootArgs, RestoreArgs,
    RevokeCaArgs, RootArgs, RootCrlArgs, RootRolloverArgs,
};
use crate::cmd::print_json;
use crate::ctx::{absolute, operator, Ctx};
use crate::errors::input;

/// How the home's keys are made, in words.
fn protection(ctx: &Ctx) -> &'static str {
    match ctx.config().hsm.key_backup {
        ca_core::KeyBackup::None => "sensitive, not extractable",
        ca_core::KeyBackup::Quorum => {
            "sensitive, extractable only wrapped under the quorum's key-backup key"
        }
    }
}

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
        "  root key          {} on token {} (EC P-384, {})",
        CaKind::Root.key_label(),
        ctx.config().hsm.root_token,
        protection(ctx)
    );
    println!("  quorum            {} of {}", a.quorum, a.officers);
    for f in summary["share_files"].as_array().into_iter().flatten() {
        println!(
            "  share             {} (0600)",
            f["file"].as_str().unwrap_or("")
        );
    }
    for f in summary["contingency"]["share_files"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  contingency share {} (0600; the contingency key's own quorum)",
            f.as_str().unwrap_or("")
        );
    }
    println!("  transcript        {}", s(&["transcript"]));
    println!("Hand each officer their share file and remove it from this machine; keep the");
    println!("contingency shares apart from the root's (another safe): they are used only by");
    println!("`meterpki ceremony apex-recover`, when the root key can no longer be trusted.");
    Ok(())
}

pub(super) fn issuing(ctx: &Ctx, a: IssuingArgs) -> Result<()> {
    let kind = a.kind;
    let summary = ctx.service.issuing_ca_ceremony(
        &actor(&a.operator),
        IssuingCeremony {
            kind,
            renew: a.renew,
            shares: a.shares.clone(),
        },
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    let home = ctx.home();
    let name = kind.name();
    if a.renew {
        println!(
            "{}{} CA renewed: generation {} ({}) issues from now on.",
            name[..1].to_uppercase(),
            &name[1..],
            summary["generation"],
            summary["certificate"]["subject"].as_str().unwrap_or("")
        );
        println!(
            "  previous     generation {} kept as {}: its key keeps signing its CRLs",
            summary["previous"]["generation"],
            summary["previous"]["file"].as_str().unwrap_or("")
        );
    } else {
        println!("{}{} CA created.", name[..1].to_uppercase(), &name[1..]);
    }
    println!("  certificate  {}", home.ca_cert(kind).display());
    println!(
        "  SHA-256      {}",
        summary["certificate"]["sha256_fingerprint"]
            .as_str()
            .unwrap_or("")
    );
    println!(
        "  key          {} on token {} (EC P-256, {})",
        summary["key"]["label"].as_str().unwrap_or(""),
        ctx.config().hsm.online_token,
        protection(ctx)
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
            ctx.home()
                .crl_dir()
                .join(p["issuer"].as_str().unwrap_or("root"))
                .join("arl.crl")
                .display(),
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

fn apex_target(hw_type: &Option<String>) -> Result<ca_core::tamp::ApexTarget> {
    Ok(match hw_type {
        None => ca_core::tamp::ApexTarget::All,
        Some(o) => ca_core::tamp::ApexTarget::HwType(
            o.parse()
                .map_err(|e| input(format!("--hw-type {o:?}: not an OID: {e}")))?,
        ),
    })
}

pub(super) fn apex_recover(ctx: &Ctx, a: ApexRecoverArgs) -> Result<()> {
    let summary = ctx.service.apex_recover_ceremony(
        &actor(&a.operator),
        &absolute_all(&a.shares),
        &absolute_all(&a.contingency_shares),
        // A recovery reaches every meter: the untrusted key is destroyed after it.
        ca_core::tamp::ApexTarget::All,
        &absolute(&a.contingency_shares_dir),
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    print_new_root(ctx, &summary, "Root recovered with the contingency key")
}

pub(super) fn root_rollover(ctx: &Ctx, a: RootRolloverArgs) -> Result<()> {
    let summary = ctx.service.root_rollover_ceremony(
        &actor(&a.operator),
        &absolute_all(&a.shares),
        apex_target(&a.hw_type)?,
        &absolute(&a.contingency_shares_dir),
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    print_new_root(ctx, &summary, "Root rolled over")
}

fn print_new_root(ctx: &Ctx, summary: &serde_json::Value, what: &str) -> Result<()> {
    let home = ctx.home();
    let root = &summary["root"];
    println!(
        "{what}: generation {} ({}) is the root from now on.",
        root["generation"],
        root["certificate"]["subject"].as_str().unwrap_or("")
    );
    println!(
        "  root         {} (key {}, EC P-384)",
        home.ca_cert(CaKind::Root).display(),
        root["key"]["label"].as_str().unwrap_or("")
    );
    println!(
        "  previous     {} (keeps signing its ARL)",
        summary["previous"]["file"].as_str().unwrap_or("")
    );
    for c in summary["certified"].as_array().into_iter().flatten() {
        println!(
            "  certified    {:<13} {}",
            c["what"].as_str().unwrap_or(""),
            c["file"].as_str().unwrap_or("")
        );
    }
    println!(
        "  kept         {} (the previous root's certificates of them)",
        summary["previous_certificates_kept_in"]
            .as_str()
            .unwrap_or("")
    );
    if let Some(why) = summary["old_with_new"]["why"].as_str() {
        println!("  no OldWithNew: {why}");
    }
    print_arl(ctx, &summary["arl"]);
    for c in summary["contingency"]["share_files"]
        .as_array()
        .into_iter()
        .flatten()
    {
        println!(
            "  contingency  {} (0600; keep apart from the root's shares)",
            c.as_str().unwrap_or("")
        );
    }
    for d in summary["destroyed"].as_array().into_iter().flatten() {
        println!("  destroyed    {}", d.as_str().unwrap_or(""));
    }
    println!(
        "  apex update  {} (seq {}, for {}): deliver it to the meters, which still trust the previous root",
        summary["apex_update"]["file"].as_str().unwrap_or(""),
        summary["apex_update"]["seq"],
        summary["apex_update"]["target"].as_str().unwrap_or("")
    );
    Ok(())
}

pub(super) fn revoke_ca(ctx: &Ctx, a: RevokeCaArgs) -> Result<()> {
    let reason = ca_core::Reason::parse(&a.reason).map_err(|e| input(format!("--reason: {e}")))?;
    let summary = ctx.service.revoke_ca_ceremony(
        &actor(&a.operator),
        a.kind,
        a.generation,
        reason,
        &absolute_all(&a.shares),
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "{} CA certificate {} {} ({}).",
        summary["name"].as_str().unwrap_or(a.kind.name()),
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

pub(super) fn backup_key(ctx: &Ctx, a: RootArgs) -> Result<()> {
    let summary = ctx.service.backup_key_ceremony(
        &actor(&a.operator),
        &BackupKeyCeremony {
            officers: a.officers,
            quorum: a.quorum,
            officer_names: a.officer_names.clone(),
            shares_dir: absolute(&a.shares_dir),
        },
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "Key-backup ceremony {} complete.",
        summary["ceremony_id"].as_str().unwrap_or("")
    );
    println!(
        "  key-backup key  {} (AES-256, trusted, wrap only, never extractable)",
        summary["key_label"].as_str().unwrap_or("")
    );
    for t in summary["tokens"].as_array().into_iter().flatten() {
        println!(
            "  installed in    {} (its SO PIN is now the quorum's)",
            t.as_str().unwrap_or("")
        );
    }
    println!("  quorum          {} of {}", a.quorum, a.officers);
    for f in summary["share_files"].as_array().into_iter().flatten() {
        println!(
            "  share           {} (0600)",
            f["file"].as_str().unwrap_or("")
        );
    }
    println!("Hand each officer their share file and remove it from this machine.");
    Ok(())
}

fn print_keys(summary: &serde_json::Value) {
    for k in summary["keys"].as_array().into_iter().flatten() {
        match k.as_str() {
            Some(label) => println!("  key          {label}"),
            None => println!(
                "  key          {} ({}, id {})",
                k["label"].as_str().unwrap_or(""),
                k["algorithm"].as_str().unwrap_or(""),
                k["id"].as_str().unwrap_or("")
            ),
        }
    }
    let officers: Vec<&str> = summary["officers"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|o| o.as_str())
        .collect();
    println!("  officers     {}", officers.join(", "));
}

pub(super) fn replicate(ctx: &Ctx, a: ReplicateArgs) -> Result<()> {
    let summary = ctx.service.replicate_ceremony(
        &actor(&a.operator),
        &a.to_token,
        &absolute_all(&a.shares),
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "Online keys copied from {} to {} (wrapped under the key-backup key, inside the tokens).",
        summary["from_token"].as_str().unwrap_or(""),
        a.to_token
    );
    print_keys(&summary);
    Ok(())
}

pub(super) fn backup(ctx: &Ctx, a: BackupArgs) -> Result<()> {
    let out = absolute(&a.out);
    let summary =
        ctx.service
            .backup_ceremony(&actor(&a.operator), &out, &absolute_all(&a.shares))?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "Backup written: {} (SHA-256 {}).",
        out.display(),
        summary["file_sha256"].as_str().unwrap_or("")
    );
    print_keys(&summary);
    println!("It holds no key in clear; restoring needs M shares. Keep it off-site.");
    Ok(())
}

pub(super) fn restore(ctx: &Ctx, a: RestoreArgs) -> Result<()> {
    let summary = ctx.service.restore_ceremony(
        &actor(&a.operator),
        &absolute(&a.from),
        &a.to_token,
        &absolute_all(&a.shares),
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "Keys restored into {} from {}.",
        a.to_token,
        absolute(&a.from).display()
    );
    print_keys(&summary);
    Ok(())
}

pub(super) fn replicate_root(ctx: &Ctx, a: ReplicateRootArgs) -> Result<()> {
    let summary = ctx.service.replicate_root_ceremony(
        &actor(&a.operator),
        &a.to_token,
        &absolute_all(&a.shares),
        &absolute_all(&a.backup_shares),
    )?;
    if ctx.json {
        return print_json(&summary);
    }
    println!(
        "Root key copied from {} to {} (wrapped under the key-backup key, inside the tokens).",
        summary["from_token"].as_str().unwrap_or(""),
        a.to_token
    );
    let names = |v: &serde_json::Value| -> String {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|o| o.as_str())
            .collect::<Vec<_>>()
            .join(", ")
    };
    println!(
        "  root officers        {}",
        names(&summary["root_officers"])
    );
    println!("  key-backup officers  {}", names(&summary["officers"]));
    println!(
        "If {} is lost: set hsm.root_token = \"{}\" in meterpki.toml.",
        summary["from_token"].as_str().unwrap_or(""),
        a.to_token
    );
    Ok(())
}
