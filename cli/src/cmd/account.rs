//! `meterpki account add | list | disable`.

use std::path::Path;

use anyhow::{Context, Result};
use ca_core::issue::{tls_request, KeySource, Subject};
use ca_core::{
    check_account_name, Account, CaKind, DeviceRange, Eui64, Reason, Revocation, Role, Store,
};
use serde_json::json;

use crate::args::AccountCommand;
use crate::cmd::print_json;
use crate::ctx::{os_user, Ctx};
use crate::errors::{input, issue_error};

pub fn run(ctx: &Ctx, cmd: AccountCommand) -> Result<()> {
    match cmd {
        AccountCommand::Add {
            role,
            name,
            device_range,
            supplier,
            csr,
            out,
        } => add(
            ctx,
            &role,
            &name,
            device_range,
            supplier,
            csr.as_deref(),
            &out,
        ),
        AccountCommand::List => list(ctx),
        AccountCommand::Disable { name } => disable(ctx, &name),
    }
}

fn add(
    ctx: &Ctx,
    role: &str,
    name: &str,
    device_range: Option<String>,
    supplier: Option<String>,
    csr: Option<&Path>,
    out: &Path,
) -> Result<()> {
    let role = Role::parse(role).map_err(|e| input(format!("--role: {e}")))?;
    check_account_name(name).map_err(|e| input(format!("--name: {e}")))?;
    let device_range =
        match (role, device_range) {
            (Role::Factory, Some(r)) => {
                let r: DeviceRange = r
                    .parse()
                    .map_err(|e| input(format!("--device-range: {e}")))?;
                Some(r.to_string())
            }
            (Role::Factory, None) => return Err(input(
                "a factory account needs --device-range PREFIX/BITS: the devices its line may name",
            )),
            (_, Some(_)) => return Err(input("--device-range is for factory accounts only")),
            (_, None) => None,
        };
    let supplier = match (role, supplier) {
        (Role::Supplier, Some(s)) => {
            let id: Eui64 = s.parse().map_err(|e| input(format!("--supplier: {e}")))?;
            Some(id.to_string())
        }
        (Role::Supplier, None) => {
            return Err(input("a supplier account needs --supplier ENTITY-ID"))
        }
        (_, Some(_)) => return Err(input("--supplier is for supplier accounts only")),
        (_, None) => None,
    };
    if !ctx.home.ca_cert(CaKind::Access).exists() {
        return Err(input(
            "there is no Access CA yet: run `meterpki ceremony issuing-ca --kind access`",
        ));
    }
    let store = ctx.store()?;
    if let Some(id) = &supplier {
        match store.supplier(id)? {
            None => {
                return Err(input(format!(
                    "--supplier {id} is not a registered supplier: run `meterpki supplier register --id {id} --name NAME` first"
                )))
            }
            Some(s) if s.state != ca_core::SupplierState::Active => {
                return Err(input(format!(
                    "--supplier {id} ({}) is {}: it cannot have an API account",
                    s.name, s.state
                )))
            }
            Some(_) => {}
        }
    }
    if store.account(name)?.is_some() {
        return Err(input(format!(
            "account {name:?} already exists; nothing changed"
        )));
    }
    let cert_path = out.join(format!("{name}.pem"));
    let key_path = out.join(format!("{name}.key"));
    let ca_path = out.join("ca.pem");
    for p in [&cert_path, &key_path] {
        if p.exists() {
            return Err(input(format!(
                "{} already exists; it is never overwritten",
                p.display()
            )));
        }
    }
    // The key: from the client's CSR, or generated here for the client (written 0600).
    let (key_source, key_pem) = match csr {
        Some(path) => {
            let bytes =
                std::fs::read(path).map_err(|e| input(format!("--csr {}: {e}", path.display())))?;
            let text = match String::from_utf8(bytes.clone()) {
                Ok(t) if t.contains("-----BEGIN") => t,
                _ => {
                    use base64::Engine as _;
                    base64::engine::general_purpose::STANDARD.encode(bytes)
                }
            };
            (KeySource::Csr(text), None)
        }
        None => {
            use p256::pkcs8::EncodePrivateKey;
            let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
            let pem = key
                .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
                .map_err(|e| anyhow::anyhow!("encoding the client key: {e}"))?;
            use p256::elliptic_curve::sec1::ToEncodedPoint;
            let point = key.public_key().to_encoded_point(false);
            let spki = ca_core::spki_from_point(ca_core::KeyAlgorithm::EcP256, point.as_bytes())?;
            (KeySource::Spki(spki), Some(pem))
        }
    };
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let engine = ctx.engine(&online, store.clone())?;
    let subject = Subject::Tls {
        common_name: name.to_string(),
        unit: Some(role.name().to_string()),
        dns: Vec::new(),
        ips: Vec::new(),
    };
    let request = tls_request(engine.profiles(), "api-client", subject, key_source, false)
        .map_err(|e| input(e.to_string()))?;
    let outcome = engine.issue_request(request).map_err(issue_error)?;
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let access = std::fs::read_to_string(ctx.home.ca_cert(CaKind::Access))?;
    let root = std::fs::read_to_string(ctx.home.ca_cert(CaKind::Root))?;
    let leaf =
        der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &outcome.record.der)
            .map_err(|e| anyhow::anyhow!("encoding PEM: {e}"))?;
    if let Some(pem) = &key_pem {
        ca_core::write_new_secret(&key_path, pem.as_bytes())
            .with_context(|| format!("writing {}", key_path.display()))?;
    }
    ca_core::write_atomic(&cert_path, format!("{leaf}{access}").as_bytes(), 0o644)?;
    ca_core::write_atomic(&ca_path, format!("{root}{access}").as_bytes(), 0o644)?;
    let account = Account {
        name: name.to_string(),
        role,
        device_range: device_range.clone(),
        supplier: supplier.clone(),
        cert_serial: outcome.record.serial.clone(),
        disabled: false,
        created: outcome.record.issued_at,
    };
    store.put_account(&account)?;
    ctx.audit(store).append(
        "account.add",
        &os_user(),
        json!({"account": name, "role": role.name(), "device_range": device_range, "supplier": supplier, "certificate_serial": outcome.record.serial_hex()}),
    )?;
    let summary = json!({
        "account": name,
        "role": role.name(),
        "device_range": device_range,
        "supplier": supplier,
        "serial": outcome.record.serial_hex(),
        "certificate": cert_path,
        "key": key_pem.as_ref().map(|_| key_path.clone()),
        "ca": ca_path,
    });
    if ctx.json {
        print_json(&summary)?;
    } else {
        println!(
            "account {name} ({}) created; client certificate serial {}",
            role.name(),
            outcome.record.serial_hex()
        );
        println!("  certificate  {}", cert_path.display());
        if key_pem.is_some() {
            println!("  key          {} (0600)", key_path.display());
        }
        println!("  trust        {}", ca_path.display());
    }
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let store = ctx.store()?;
    let accounts = store.accounts()?;
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
        println!(
            "{:<24} {:<9} {:<30} certificate {}{}",
            a.name,
            a.role.name(),
            a.device_range
                .as_deref()
                .or(a.supplier.as_deref())
                .unwrap_or("-"),
            hex::encode(&a.cert_serial),
            if a.disabled { "  DISABLED" } else { "" }
        );
    }
    Ok(())
}

fn disable(ctx: &Ctx, name: &str) -> Result<()> {
    let store = ctx.store()?;
    let mut account = store
        .account(name)?
        .ok_or_else(|| input(format!("no account named {name:?}")))?;
    if account.disabled {
        println!("account {name} is already disabled");
        return Ok(());
    }
    account.disabled = true;
    store.put_account(&account)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let revoked = store.revoke(
        std::slice::from_ref(&account.cert_serial),
        &Revocation {
            reason: Reason::PrivilegeWithdrawn,
            revoked_at: now,
            invalidity_date: None,
        },
    )?;
    let shards: std::collections::BTreeSet<(String, u32)> = revoked
        .iter()
        .filter_map(|r| match r {
            ca_core::Revoked::Now(rec) | ca_core::Revoked::Already(rec, _) => {
                Some((rec.issuer.clone(), rec.shard))
            }
            ca_core::Revoked::Unknown(_) => None,
        })
        .collect();
    ctx.audit(store.clone()).append(
        "account.disable",
        &os_user(),
        json!({"account": name, "certificate_serial": hex::encode(&account.cert_serial), "reason": "privilegeWithdrawn"}),
    )?;
    drop(store);
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let issuers = crate::cmd::crl::issuers(ctx, &online, Some(CaKind::Access))?;
    let published = crate::cmd::crl::publish_issuers(ctx, &online, &issuers, false, Some(&shards))?;
    if ctx.json {
        print_json(
            &json!({"account": name, "disabled": true, "certificate_revoked": hex::encode(&account.cert_serial), "published": published}),
        )?;
    } else {
        println!(
            "account {name} disabled; certificate {} revoked (privilegeWithdrawn)",
            hex::encode(&account.cert_serial)
        );
        crate::cmd::crl::print_published(ctx, &published)?;
    }
    Ok(())
}
