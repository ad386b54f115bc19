//! `meterpki account add | list | disable`.

use std::path::Path;

use anyhow::Result;
use ca_core::service::{AdminAnswer, AdminRequest};
use ca_core::service::{ClientKey, NewAccount};
use ca_core::{DeviceRange, Role};
use serde_json::json;

use crate::args::AccountCommand;
use crate::cmd::{parse_id, print_json, read_blob};
use crate::ctx::{operator, Ctx};
use crate::errors::input;

pub(super) fn run(ctx: &Ctx, cmd: AccountCommand) -> Result<()> {
    match cmd {
        AccountCommand::Add {
            role,
            name,
            device_range,
            supplier,
            csr,
            allow_bare_public_key,
            out,
        } => add(
            ctx,
            &role,
            &name,
            device_range,
            supplier,
            csr.as_deref(),
            allow_bare_public_key,
            &out,
        ),
        AccountCommand::List => list(ctx),
        AccountCommand::Disable { name } => disable(ctx, &name),
    }
}

#[allow(clippy::too_many_arguments)]
fn add(
    ctx: &Ctx,
    role: &str,
    name: &str,
    device_range: Option<String>,
    supplier: Option<String>,
    csr: Option<&Path>,
    bare_public_key: bool,
    out: &Path,
) -> Result<()> {
    let role = Role::parse(role).map_err(|e| input(format!("--role: {e}")))?;
    let device_range: Option<DeviceRange> = device_range
        .map(|r| r.parse().map_err(|e| input(format!("--device-range: {e}"))))
        .transpose()?;
    let supplier = supplier.map(|s| parse_id("--supplier", &s)).transpose()?;
    let key = match csr {
        Some(p) => ClientKey::Csr(read_blob("--csr", p)?),
        None => ClientKey::Generate,
    };
    let made = ctx.service.add_account(
        &operator(),
        NewAccount {
            role,
            name: name.to_string(),
            device_range,
            supplier,
            key,
            bare_public_key,
            out: out.to_path_buf(),
        },
    )?;
    if ctx.json {
        return print_json(&made);
    }
    println!(
        "account {name} ({role}) created; client certificate serial {}",
        made.serial
    );
    println!("  certificate  {}", made.certificate.display());
    if let Some(k) = &made.key {
        println!("  key          {} (0600)", k.display());
    }
    println!("  trust        {}", made.ca.display());
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let accounts = ctx.service.accounts(&operator())?;
    if ctx.json {
        let rows: Vec<_> = accounts
            .iter()
            .map(|a| json!({"name": a.name, "role": a.role.name(), "device_range": a.device_range, "supplier": a.supplier, "certificate_serial": hex::encode(&a.cert_serial), "disabled": a.disabled, "created": a.created}))
            .collect();
        return print_json(&rows);
    }
    if accounts.is_empty() {
        println!("no accounts yet: meterpki account add --role ROLE --name NAME --out DIR");
    }
    for a in accounts {
        let scope = a
            .device_range
            .map(|r| r.to_string())
            .or(a.supplier.clone())
            .unwrap_or_else(|| "-".into());
        println!(
            "{:<24} {:<9} {:<30} certificate {}{}",
            a.name,
            a.role.name(),
            scope,
            hex::encode(&a.cert_serial),
            if a.disabled { "  DISABLED" } else { "" }
        );
    }
    Ok(())
}

fn disable(ctx: &Ctx, name: &str) -> Result<()> {
    let answer = crate::remote::run(
        ctx,
        AdminRequest::DisableAccount {
            name: name.to_string(),
        },
    )?;
    let AdminAnswer::Disabled(d) = answer else {
        anyhow::bail!("the server answered another command");
    };
    if ctx.json {
        return print_json(
            &json!({"account": d.account, "disabled": true, "disabled_now": d.disabled_now, "certificate_revoked": d.certificate_revoked, "published": d.published}),
        );
    }
    if d.disabled_now {
        println!(
            "account {name} disabled; certificate {} revoked (privilegeWithdrawn)",
            d.certificate_revoked
        );
    } else {
        println!(
            "account {name} is already disabled; certificate {} is revoked",
            d.certificate_revoked
        );
    }
    crate::cmd::crl::print_published(ctx, &d.published)
}
