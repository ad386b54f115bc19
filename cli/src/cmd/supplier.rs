//! `meterpki supplier ...`: the registry, key enrolment, rotation and revocation,
//! re-certification, takeover, exit.

use anyhow::{Context, Result};
use base64::Engine as _;
use ca_core::churn::UpdateSink;
use ca_core::{OpKind, Reason};
use serde_json::json;

use crate::args::{ChurnOut, EnrolArgs, SupplierCommand};
use crate::cmd::churn::{bar, report, required_sink, Bar};
use crate::cmd::{parse_id, parse_serial, pem, print_json, read_blob};
use crate::ctx::{operator, Ctx};
use crate::errors::input;

pub(super) fn run(ctx: &Ctx, cmd: SupplierCommand) -> Result<()> {
    match cmd {
        SupplierCommand::Register { id, name } => register(ctx, &id, &name),
        SupplierCommand::List => list(ctx),
        SupplierCommand::Enrol(a) => enrol(ctx, &a),
        SupplierCommand::Rotate { enrol, out } => rotate(ctx, &enrol, &out),
        SupplierCommand::RevokeKey {
            serial,
            reason,
            out,
        } => revoke_key(ctx, &serial, &reason, &out),
        SupplierCommand::Takeover { from, to, out } => end(
            ctx,
            OpKind::Takeover,
            ("--from", &from),
            ("--to", &to),
            &out,
        ),
        SupplierCommand::Recertify { supplier, out } => recertify(ctx, supplier.as_deref(), &out),
        SupplierCommand::Exit { id, successor, out } => end(
            ctx,
            OpKind::Exit,
            ("--id", &id),
            ("--successor", &successor),
            &out,
        ),
    }
}

fn register(ctx: &Ctx, id: &str, name: &str) -> Result<()> {
    let id = parse_id("--id", id)?;
    let (s, existing) = ctx.service.register_supplier(&operator(), &id, name)?;
    if ctx.json {
        return print_json(&json!({"supplier": s, "existing": existing}));
    }
    if existing {
        println!("supplier {id} ({name}) is already registered");
    } else {
        println!("registered supplier {id} ({name}), active");
    }
    Ok(())
}

fn list(ctx: &Ctx) -> Result<()> {
    let rows = ctx.service.suppliers(&operator())?;
    if ctx.json {
        return print_json(&rows);
    }
    if rows.is_empty() {
        println!("no supplier registered (meterpki supplier register --id ID --name NAME)");
    }
    for r in &rows {
        let s = &r.supplier;
        println!(
            "{}  {:<9} {:>9} meters  {} key(s)  {}{}",
            s.id,
            s.state,
            r.meters,
            r.active_keys.len(),
            s.name,
            s.successor
                .as_deref()
                .map(|x| format!("  (meters went to {x})"))
                .unwrap_or_default()
        );
    }
    Ok(())
}

fn write_cert(a: &EnrolArgs, der: &[u8]) -> Result<String> {
    let pem = pem(der)?;
    if let Some(out) = &a.out {
        ca_core::write_atomic(out, pem.as_bytes(), 0o644)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(pem)
}

fn enrol(ctx: &Ctx, a: &EnrolArgs) -> Result<()> {
    let id = parse_id("--id", &a.id)?;
    let csr = read_blob("--csr", &a.csr)?;
    let o = ctx
        .service
        .enrol_key(&operator(), &id, &a.profile, csr, None, false)?;
    let pem = write_cert(a, &o.record.der)?;
    if ctx.json {
        return print_json(
            &json!({"serial": o.record.serial_hex(), "profile": o.record.profile, "supplier": o.record.subject_id, "existing": o.existing, "certificate": base64::engine::general_purpose::STANDARD.encode(&o.record.der)}),
        );
    }
    eprintln!(
        "{} {} certificate for supplier {}: serial {}",
        if o.existing {
            "already issued:"
        } else {
            "issued"
        },
        o.record.profile,
        o.record.subject_id,
        o.record.serial_hex()
    );
    if a.out.is_none() {
        print!("{pem}");
    }
    Ok(())
}

/// Runs a journaled operation with a progress bar over the meters it updates.
fn with_progress<T>(
    ctx: &Ctx,
    out: &ChurnOut,
    run: impl FnOnce(&mut dyn UpdateSink, &Bar) -> Result<T>,
) -> Result<T> {
    let mut sink = required_sink(&out.updates)?;
    let bar = Bar(bar(ctx, || 0, "meters"));
    let r = run(sink.as_mut(), &bar);
    bar.finish();
    r
}

fn rotate(ctx: &Ctx, a: &EnrolArgs, out: &ChurnOut) -> Result<()> {
    let id = parse_id("--id", &a.id)?;
    let csr = read_blob("--csr", &a.csr)?;
    let (r, new) = with_progress(ctx, out, |sink, progress| {
        Ok(ctx.service.rotate_key(
            &operator(),
            &id,
            &a.profile,
            csr,
            out.chunk as usize,
            sink,
            progress,
        )?)
    })?;
    write_cert(a, &new.der)?;
    report(ctx, &r)
}

fn revoke_key(ctx: &Ctx, serial: &str, reason: &str, out: &ChurnOut) -> Result<()> {
    let serial = parse_serial(serial)?;
    let reason = Reason::parse(reason).map_err(|e| input(format!("--reason: {e}")))?;
    let r = with_progress(ctx, out, |sink, progress| {
        Ok(ctx.service.revoke_key(
            &operator(),
            &serial,
            reason,
            out.chunk as usize,
            sink,
            progress,
        )?)
    })?;
    report(ctx, &r)
}

fn recertify(ctx: &Ctx, supplier: Option<&str>, out: &ChurnOut) -> Result<()> {
    let only = supplier.map(|s| parse_id("--supplier", s)).transpose()?;
    let r = with_progress(ctx, out, |sink, progress| {
        Ok(ctx.service.recertify_suppliers(
            &operator(),
            only.as_ref(),
            out.chunk as usize,
            sink,
            progress,
        )?)
    })?;
    let refused: usize = r.operations.iter().map(|o| o.refused.len()).sum();
    if ctx.json {
        print_json(&r)?;
    } else {
        if r.operations.is_empty() && r.failed.is_empty() {
            match &only {
                Some(id) => println!("supplier {id}'s keys already come from Organisation CA generation {}; nothing to do", r.organisation_generation),
                None => println!("every active supplier's keys already come from Organisation CA generation {}; nothing to do", r.organisation_generation),
            }
        }
        for c in &r.closed {
            println!(
                "closed {}: {}",
                c["operation"].as_str().unwrap_or(""),
                c["why"].as_str().unwrap_or("")
            );
        }
        for o in &r.operations {
            // Each operation's refused meters are listed by `report`; the exit status is
            // decided below, once every supplier is shown.
            let _ = report(ctx, o);
        }
        for f in &r.failed {
            eprintln!(
                "supplier {}: {}",
                f["supplier"].as_str().unwrap_or(""),
                f["detail"].as_str().unwrap_or("")
            );
        }
    }
    let mut problems = Vec::new();
    if !r.failed.is_empty() {
        problems.push(format!(
            "{} supplier(s) could not be re-certified (the others were)",
            r.failed.len()
        ));
    }
    if refused > 0 {
        problems.push(format!(
            "{refused} meter(s) could not be updated (their operations stay open)"
        ));
    }
    if problems.is_empty() {
        return Ok(());
    }
    let message = format!(
        "{}: see above, fix the cause and run the command again",
        problems.join("; ")
    );
    // A failure of meterpki, its HSM or its store exits 1; a refusal exits 2.
    if r.failed.iter().any(|f| f["client"] == false) {
        anyhow::bail!(message);
    }
    Err(input(message))
}

/// Takeover and exit.
fn end(
    ctx: &Ctx,
    kind: OpKind,
    from: (&str, &str),
    to: (&str, &str),
    out: &ChurnOut,
) -> Result<()> {
    let from = parse_id(from.0, from.1)?;
    let to = parse_id(to.0, to.1)?;
    let r = with_progress(ctx, out, |sink, progress| {
        Ok(ctx.service.end_supplier(
            &operator(),
            kind,
            &from,
            &to,
            out.chunk as usize,
            sink,
            progress,
        )?)
    })?;
    report(ctx, &r)
}
