//! `meterpki supplier ...`: the registry, key enrolment, rotation and revocation, takeover, exit.

use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use base64::Engine as _;
use ca_core::churn::{Churn, ChurnError, OpRecord, UpdateSink};
use ca_core::issue::{parse_request, AccountLimits, Engine, RequestItem};
use ca_core::{
    check_supplier_name, CaKind, CertRecord, Eui64, Reason, Revocation, Store, Supplier,
    SupplierState,
};
use hsm_bridge::Token;
use serde_json::json;

use crate::args::{EnrolArgs, SupplierCommand, UpdatesOut};
use crate::cmd::churn::{
    churn, churn_err, is_supplier_profile, required_sink, run_op, supplier_profiles,
};
use crate::cmd::print_json;
use crate::ctx::{os_user, Ctx};
use crate::errors::{input, issue_error};

const B64: base64::engine::GeneralPurpose = base64::engine::general_purpose::STANDARD;

pub fn run(ctx: &Ctx, cmd: SupplierCommand) -> Result<()> {
    match cmd {
        SupplierCommand::Register { id, name } => register(ctx, &id, &name),
        SupplierCommand::List => list(ctx),
        SupplierCommand::Enrol(a) => enrol(ctx, &a),
        SupplierCommand::Rotate { enrol, out } => {
            rotate(ctx, &enrol, &out.updates, out.chunk as usize)
        }
        SupplierCommand::RevokeKey {
            serial,
            reason,
            out,
        } => revoke_key(ctx, &serial, &reason, &out.updates, out.chunk as usize),
        SupplierCommand::Takeover { from, to, out } => end(
            ctx,
            "takeover",
            &from,
            &to,
            &out.updates,
            out.chunk as usize,
        ),
        SupplierCommand::Exit { id, successor, out } => end(
            ctx,
            "exit",
            &id,
            &successor,
            &out.updates,
            out.chunk as usize,
        ),
    }
}

fn parse_id(flag: &str, s: &str) -> Result<Eui64> {
    s.parse().map_err(|e| input(format!("{flag}: {e}")))
}

fn register(ctx: &Ctx, id: &str, name: &str) -> Result<()> {
    let id = parse_id("--id", id)?;
    check_supplier_name(name).map_err(|e| input(format!("--{e}")))?;
    let store = ctx.store()?;
    if let Some(s) = store.supplier(&id.to_string())? {
        if s.name == name && s.state == SupplierState::Active {
            if ctx.json {
                print_json(&json!({"supplier": s, "existing": true}))?;
            } else {
                println!("supplier {id} ({name}) is already registered");
            }
            return Ok(());
        }
        return Err(input(format!(
            "--id: supplier {id} is already registered as {:?} ({})",
            s.name, s.state
        )));
    }
    let s = Supplier {
        id: id.to_string(),
        name: name.into(),
        state: SupplierState::Active,
        registered_at: time::OffsetDateTime::now_utc().unix_timestamp(),
        ended_at: None,
        successor: None,
    };
    store.put_supplier(&s)?;
    ctx.audit(store.clone()).append(
        "supplier.register",
        &os_user(),
        json!({"supplier": s.id, "name": s.name}),
    )?;
    if ctx.json {
        print_json(&json!({"supplier": s, "existing": false}))?;
    } else {
        println!("registered supplier {id} ({name}), active");
    }
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let store = ctx.store()?;
    let profiles = ctx.profiles()?;
    let supplier_profiles = supplier_profiles(&profiles);
    let mut rows = Vec::new();
    for s in store.suppliers()? {
        let mut keys = Vec::new();
        for p in &supplier_profiles {
            if let Some(r) = store.active_cert(&s.id, p)? {
                keys.push(json!({"profile": p, "serial": r.serial_hex()}));
            }
        }
        let meters = store.count_meters_of_supplier(&s.id)?;
        rows.push(json!({
            "id": s.id, "name": s.name, "state": s.state, "registered_at": s.registered_at,
            "ended_at": s.ended_at, "successor": s.successor, "active_keys": keys, "meters": meters,
        }));
    }
    if ctx.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no supplier registered (meterpki supplier register --id ID --name NAME)");
    }
    for r in &rows {
        println!(
            "{}  {:<9} {:>9} meters  {} key(s)  {}{}",
            r["id"].as_str().unwrap_or(""),
            r["state"].as_str().unwrap_or(""),
            r["meters"],
            r["active_keys"].as_array().map(Vec::len).unwrap_or(0),
            r["name"].as_str().unwrap_or(""),
            r["successor"]
                .as_str()
                .map(|s| format!("  (meters went to {s})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn read_csr(p: &Path) -> Result<String> {
    let bytes = std::fs::read(p).map_err(|e| input(format!("--csr {}: {e}", p.display())))?;
    Ok(match String::from_utf8(bytes.clone()) {
        Ok(t) if t.contains("-----BEGIN") => t,
        _ => B64.encode(bytes),
    })
}

fn enrol_item(engine: &Engine, a: &EnrolArgs, replace: bool) -> Result<RequestItem> {
    let id = parse_id("--id", &a.id)?;
    if !is_supplier_profile(engine.profiles(), &a.profile) {
        return Err(input(format!(
            "--profile {:?} is not a supplier profile (supplier-signing, supplier-key-agreement)",
            a.profile
        )));
    }
    Ok(RequestItem {
        profile: a.profile.clone(),
        device_id: None,
        entity_id: Some(id.to_string()),
        name: None,
        csr: Some(read_csr(&a.csr)?),
        public_key: None,
        replace,
    })
}

fn write_cert(a: &EnrolArgs, rec: &CertRecord) -> Result<String> {
    let pem = der::pem::encode_string("CERTIFICATE", der::pem::LineEnding::LF, &rec.der)
        .map_err(|e| anyhow::anyhow!("encoding PEM: {e}"))?;
    if let Some(out) = &a.out {
        ca_core::write_atomic(out, pem.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(pem)
}

fn open(ctx: &Ctx) -> Result<(Arc<Token>, Engine)> {
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let engine = ctx.engine(&online, ctx.store()?)?;
    Ok((online, engine))
}

fn enrol(ctx: &Ctx, a: &EnrolArgs) -> Result<()> {
    let (_online, engine) = open(ctx)?;
    let item = enrol_item(&engine, a, false)?;
    let out = engine
        .issue(&item, &AccountLimits::default())
        .map_err(issue_error)?;
    ctx.audit(ctx.store()?).append(
        "supplier.enrol",
        &os_user(),
        json!({"supplier": out.record.subject_id, "profile": out.record.profile, "serial": out.record.serial_hex(), "existing": out.existing}),
    )?;
    let pem = write_cert(a, &out.record)?;
    if ctx.json {
        print_json(
            &json!({"serial": out.record.serial_hex(), "profile": out.record.profile, "supplier": out.record.subject_id, "existing": out.existing, "certificate": B64.encode(&out.record.der)}),
        )?;
    } else {
        eprintln!(
            "{} {} certificate for supplier {}: serial {}",
            if out.existing {
                "already issued:"
            } else {
                "issued"
            },
            out.record.profile,
            out.record.subject_id,
            out.record.serial_hex()
        );
        if a.out.is_none() {
            print!("{pem}");
        }
    }
    Ok(())
}

/// Republishes every shard of the Organisation CA's CRLs (after revocations that must be seen
/// at once).
fn republish_org(ctx: &Ctx, online: &Arc<Token>) -> Result<Vec<ca_core::crl::Published>> {
    let issuers = crate::cmd::crl::issuers(ctx, online, Some(CaKind::Organisation))?;
    crate::cmd::crl::publish_issuers(ctx, online, &issuers, false, None)
}

fn report(
    ctx: &Ctx,
    op: &OpRecord,
    done: u64,
    refused: &[(String, ChurnError)],
    sink: &dyn UpdateSink,
    extra: serde_json::Value,
) -> Result<()> {
    let refusals: Vec<_> = refused
        .iter()
        .map(|(d, e)| json!({"device_id": d, "code": e.code().unwrap_or("internal"), "detail": e.to_string()}))
        .collect();
    if ctx.json {
        let mut v = json!({"operation": op.id, "kind": op.kind, "from": op.from, "to": op.to, "state": op.state, "meters_updated": done, "refused": refusals, "updates": sink.location()});
        if let (Some(o), Some(e)) = (v.as_object_mut(), extra.as_object()) {
            o.extend(e.clone());
        }
        print_json(&v)?;
    } else {
        println!(
            "{} {}: {done} meter(s) updated in this run, updates in {}; operation {}",
            op.kind,
            op.id,
            sink.location(),
            op.state
        );
        for r in refusals.iter().take(100) {
            eprintln!(
                "  {}: {}",
                r["device_id"].as_str().unwrap_or(""),
                r["detail"].as_str().unwrap_or("")
            );
        }
    }
    if !refused.is_empty() {
        return Err(input(format!(
            "{} meter(s) could not be updated; the operation stays open: re-run the command to complete it",
            refused.len()
        )));
    }
    Ok(())
}

fn rotate(ctx: &Ctx, a: &EnrolArgs, updates: &UpdatesOut, chunk: usize) -> Result<()> {
    let mut sink = required_sink(updates)?;
    let (online, engine) = open(ctx)?;
    let item = enrol_item(&engine, a, true)?;
    let request = parse_request(&item, engine.profiles()).map_err(|e| input(e.to_string()))?;
    let supplier = item.entity_id.clone().unwrap_or_default();
    let churn: Churn = churn(ctx, &online, &engine)?;
    let store = ctx.store()?;
    // The journal is named after the new key, so a re-run with the same CSR resumes it.
    let id = format!(
        "rotate:{supplier}:{}:{}",
        a.profile,
        hex::encode(&request.key_hash[..8])
    );
    let mut op = match churn.op(&id).map_err(churn_err)? {
        Some(op) => op,
        None => {
            let old = store.active_cert(&supplier, &a.profile)?.ok_or_else(|| {
                input(format!(
                    "supplier {supplier} has no active {} certificate to rotate: use `meterpki supplier enrol`",
                    a.profile
                ))
            })?;
            if old.key_hash == request.key_hash {
                return Err(input(format!(
                    "--csr: this key is already supplier {supplier}'s active {} key (serial {}); a rotation needs a new key",
                    a.profile,
                    old.serial_hex()
                )));
            }
            churn
                .begin_key_change(&id, "rotate", &supplier, &old)
                .map_err(churn_err)?
        }
    };
    if op.add.is_empty() {
        // The new certificate; the old one is revoked as superseded in the same store write.
        let out = engine
            .issue(&item, &AccountLimits::default())
            .map_err(issue_error)?;
        op.add = vec![out.record.serial_hex()];
        churn.save_op(&op).map_err(churn_err)?;
        ctx.audit(store.clone()).append(
            "supplier.rotate",
            &os_user(),
            json!({"supplier": supplier, "profile": a.profile, "old": op.remove, "new": op.add, "operation": op.id}),
        )?;
        write_cert(a, &out.record)?;
    }
    let extra = json!({"new_serial": op.add.first(), "superseded_serial": op.remove.first()});
    finish(ctx, &online, &churn, op, chunk, sink.as_mut(), extra)
}

/// The end of every journaled operation: the Organisation CA's CRLs republished (its
/// revocations must be seen at once), the meters updated unless a run already completed it, an
/// audit event, the report.
fn finish(
    ctx: &Ctx,
    online: &Arc<Token>,
    churn: &Churn,
    mut op: OpRecord,
    chunk: usize,
    sink: &mut dyn UpdateSink,
    mut extra: serde_json::Value,
) -> Result<()> {
    let published = republish_org(ctx, online)?;
    let (done, refused) = if op.is_complete() {
        (0, Vec::new())
    } else {
        run_op(ctx, churn, &mut op, chunk, sink)?
    };
    ctx.audit(ctx.store()?).append(
        &format!("supplier.{}.updates", op.kind),
        &os_user(),
        json!({"operation": op.id, "meters_updated": done, "refused": refused.len(), "state": op.state, "updates": sink.location()}),
    )?;
    extra["crls_published"] = json!(published.len());
    report(ctx, &op, done, &refused, sink, extra)
}

fn revoke_key(
    ctx: &Ctx,
    serial: &str,
    reason: &str,
    updates: &UpdatesOut,
    chunk: usize,
) -> Result<()> {
    let serial = crate::cmd::revoke::parse_serial(serial)?;
    let reason = Reason::parse(reason).map_err(|e| input(format!("--reason: {e}")))?;
    let mut sink = required_sink(updates)?;
    let (online, engine) = open(ctx)?;
    let store = ctx.store()?;
    let rec = store
        .cert(&serial)?
        .ok_or_else(|| input(format!("--serial: no certificate {}", hex::encode(&serial))))?;
    if !is_supplier_profile(engine.profiles(), &rec.profile) {
        return Err(input(format!(
            "--serial {} is a {} certificate, not a supplier key (use `meterpki revoke`)",
            rec.serial_hex(),
            rec.profile
        )));
    }
    let churn = churn(ctx, &online, &engine)?;
    let id = format!("revoke-key:{}", rec.serial_hex());
    let op = churn
        .begin_key_change(&id, "revoke-key", &rec.subject_id, &rec)
        .map_err(churn_err)?;
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let revoked = store.revoke(
        std::slice::from_ref(&serial),
        &Revocation {
            reason,
            revoked_at: now,
            invalidity_date: None,
        },
    )?;
    let first_time = matches!(revoked.first(), Some(ca_core::Revoked::Now(_)));
    if first_time {
        ctx.audit(store.clone()).append(
            "supplier.revoke-key",
            &os_user(),
            json!({"supplier": rec.subject_id, "serial": rec.serial_hex(), "profile": rec.profile, "reason": reason.name(), "operation": op.id}),
        )?;
    }
    let extra = json!({"serial": rec.serial_hex(), "reason": reason.name(), "already_revoked": !first_time});
    finish(ctx, &online, &churn, op, chunk, sink.as_mut(), extra)
}

/// Takeover and exit.
fn end(
    ctx: &Ctx,
    kind: &str,
    from: &str,
    to: &str,
    updates: &UpdatesOut,
    chunk: usize,
) -> Result<()> {
    let (from_flag, to_flag) = if kind == "takeover" {
        ("--from", "--to")
    } else {
        ("--id", "--successor")
    };
    let from = parse_id(from_flag, from)?.to_string();
    let to = parse_id(to_flag, to)?.to_string();
    let mut sink = required_sink(updates)?;
    let (online, engine) = open(ctx)?;
    let store = ctx.store()?;
    let churn = churn(ctx, &online, &engine)?;
    if let Some(op) = churn
        .op(&format!("{kind}:{from}"))
        .map_err(churn_err)?
        .filter(OpRecord::is_complete)
    {
        if op.to == to {
            if ctx.json {
                print_json(
                    &json!({"operation": op.id, "kind": op.kind, "from": op.from, "to": op.to, "state": op.state, "meters_updated": 0, "refused": [], "completed_at": op.completed_at}),
                )?;
            } else {
                println!("{kind} of supplier {from} to {to} was already completed; nothing to do");
            }
            return Ok(());
        }
    }
    let (op, revoked) = churn
        .begin_supplier_end(kind, &from, &to)
        .map_err(churn_err)?;
    ctx.audit(store.clone()).append(
        &format!("supplier.{kind}"),
        &os_user(),
        json!({"from": from, "to": to, "operation": op.id, "revoked_now": revoked.iter().map(CertRecord::serial_hex).collect::<Vec<_>>(), "reason": "cessationOfOperation"}),
    )?;
    // A's certificates are revoked: every relying party sees it now, not at the next refresh.
    let extra = json!({"revoked": revoked.len()});
    finish(ctx, &online, &churn, op, chunk, sink.as_mut(), extra)
}
