//! `meterpki store migrate` and `meterpki store check`.

use anyhow::Result;

use crate::cmd::print_json;
use crate::ctx::{operator, Ctx};

pub(super) fn migrate(
    ctx: &Ctx,
    to: Option<&str>,
    url_file: Option<&std::path::Path>,
) -> Result<()> {
    let Some(file) = url_file.filter(|_| to == Some("postgres")) else {
        let m = ctx.service.store_migrate_schema(&operator())?;
        if ctx.json {
            return print_json(&m);
        }
        if m.from == m.to {
            println!("the PostgreSQL schema is at version {} already", m.to);
        } else {
            println!(
                "the PostgreSQL schema moved from version {} to {}",
                m.from, m.to
            );
        }
        return Ok(());
    };
    // Entries are counted as they are copied: a spinner with the count, on a terminal.
    let bar = super::churn::bar(ctx, || 0, "entries copied");
    if let Some(b) = &bar {
        b.set_style(
            indicatif::ProgressStyle::with_template("{spinner} {pos} entries copied  {per_sec}")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_spinner()),
        );
    }
    let copied = ctx
        .service
        .store_copy_to_postgres(&operator(), file, &|n| {
            if let Some(b) = &bar {
                b.set_position(n);
            }
        })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if ctx.json {
        return print_json(&copied);
    }
    println!(
        "copied {} entries ({} certificates, {} revocations) into PostgreSQL; both hold the same (SHA-256 {}). meterpki.toml now names the database (store.url_file = {}).",
        copied.entries,
        copied.certificates,
        copied.revocations,
        copied.digest,
        file.display()
    );
    Ok(())
}

pub(super) fn check(ctx: &Ctx) -> Result<()> {
    let r = ctx.service.store_check(&operator())?;
    if ctx.json {
        print_json(&r)?;
    } else {
        println!(
            "{} entries: {} certificates, {} revocations, {} active-certificate and {} key index entries",
            r.entries, r.certificates, r.revocations, r.active, r.keys
        );
        for p in &r.problems {
            println!("problem: {p}");
        }
    }
    if !r.problems.is_empty() {
        anyhow::bail!("the store has {} problem(s)", r.problems.len());
    }
    if !ctx.json {
        println!("store check: clean");
    }
    Ok(())
}
