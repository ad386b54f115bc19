//! `meterpki-bench crl`: a scratch store (never the home's) with N certificate records written
//! straight to it (unsigned: a CRL needs only serials and shards; issuing a million through the
//! HSM would measure issuance, not CRLs), M of them revoked by list, then every shard and the
//! full CRL built and signed with the Device CA's HSM key by the same code as `crl publish`.

use anyhow::Result;
use ca_core::issue::shard_of;
use ca_core::service::Actor;
use ca_core::store::Store;
use ca_core::{CaKind, CertRecord, Op, Reason, Revocation, Txn};
use meterpki_cli::support::input;
use serde_json::json;

use crate::figures::{peak_rss_kb, rss_kb};
use crate::Bench;

pub(crate) fn run(b: &Bench, certs: usize, revoke: usize) -> Result<()> {
    if revoke > certs {
        return Err(input("--revoke cannot exceed --certs"));
    }
    let dir = tempfile::tempdir()?;
    // The home's CAs and HSM over a scratch store: the publication runs the code of
    // `crl publish`, and writes its CRLs and audit records into the scratch folder.
    let service = b.service.scratch(dir.path())?;
    let store = service.store()?;
    let settings = service.crl_settings();
    eprintln!("writing {certs} certificate records to a scratch store...");
    let (revoke_list, revoke_secs) = fill_store(store.as_ref(), settings.shards, certs, revoke)?;
    // The issuer (and its HSM sessions) ready before the clock starts.
    service.issuer(CaKind::Device)?;
    crate::figures::reset_peak_rss();
    let baseline = rss_kb("VmRSS:");
    let start = std::time::Instant::now();
    let published = service.publish_crls(&Actor::local(), Some(CaKind::Device), true, None)?;
    let publish_secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_kb();
    let entries: usize = published
        .iter()
        .filter(|p| p.scope != "full")
        .map(|p| p.entries)
        .sum();
    let full = published.iter().find(|p| p.scope == "full");
    let largest_shard = published
        .iter()
        .filter(|p| p.scope != "full")
        .map(|p| p.bytes)
        .max()
        .unwrap_or(0);
    let out = json!({
        "certificates": certs,
        "revoked": revoke_list.len(),
        "revocations_per_second": revoke_list.len() as f64 / revoke_secs,
        "shards": settings.shards,
        "crls_signed": published.len(),
        "shard_entries_total": entries,
        "largest_shard_bytes": largest_shard,
        "full_crl_bytes": full.map(|p| p.bytes),
        "publish_seconds": publish_secs,
        "peak_rss_mb_while_publishing": rss.map(|k| k as f64 / 1024.0),
        "rss_mb_before_publishing": baseline.map(|k| k as f64 / 1024.0),
        "peak_rss_growth_mb_while_publishing": rss.zip(baseline).map(|(p, b)| p.saturating_sub(b) as f64 / 1024.0),
    });
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!("certificates           {certs} (records in a scratch store)");
        println!(
            "revoked by list        {} in {revoke_secs:.2} s ({:.0} revocations/s)",
            revoke_list.len(),
            revoke_list.len() as f64 / revoke_secs
        );
        println!("CRLs signed            {} ({} shards + full), {} shard entries, largest shard {} bytes, full CRL {} bytes", published.len(), settings.shards, entries, largest_shard, full.map(|p| p.bytes).unwrap_or(0));
        println!("all CRLs rebuilt+signed {publish_secs:.2} s (target <= 2 s)");
        if let (Some(p), Some(b)) = (rss, baseline) {
            println!(
                "RSS                    {:.1} MB before publishing (the scratch store), peak {:.1} MB: publishing added {:.1} MB",
                b as f64 / 1024.0,
                p as f64 / 1024.0,
                p.saturating_sub(b) as f64 / 1024.0
            );
        }
    }
    Ok(())
}

/// Writes `certs` unsigned meter-certificate records (a device and key each, no DER) into
/// `store` in chunks of 10,000, every (certs / revoke)-th revoked for keyCompromise after, with a
/// progress bar on standard error. Returns the serials revoked and the seconds the revocations
/// took.
pub(crate) fn fill_store(
    store: &dyn Store,
    shards: u32,
    certs: usize,
    revoke: usize,
) -> Result<(Vec<Vec<u8>>, f64)> {
    let start = std::time::Instant::now();
    let bar = indicatif::ProgressBar::new(certs as u64).with_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bar:40} {pos}/{len} ({per_sec}, {eta} left)",
        )
        .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    bar.set_message("records");
    let mut revoke_list = Vec::with_capacity(revoke);
    let every = certs.checked_div(revoke).unwrap_or(usize::MAX);
    let mut chunk = Vec::with_capacity(10_000);
    let now = time::OffsetDateTime::now_utc().unix_timestamp();
    let commit = |chunk: Vec<(CertRecord, bool)>| {
        store.apply(
            Txn::new().with(Op::CommitIssued {
                items: chunk,
                all_or_nothing: false,
            }),
            None,
        )
    };
    for i in 0..certs {
        let serial = ca_core::random_serial_bytes();
        let c = (i as u64).to_be_bytes();
        if revoke_list.len() < revoke && i % every == 0 {
            revoke_list.push(serial.to_vec());
        }
        chunk.push((
            CertRecord {
                serial: serial.to_vec(),
                issuer: CaKind::Device,
                profile: "meter-signing".into(),
                // Devices 00-00-00-..: outside the OUIs the benchmarks' requests use.
                subject_id: ca_core::Eui64(c).to_string(),
                key_hash: ca_core::sha256(&c),
                shard: shard_of(&serial, shards),
                issued_at: now,
                der: Vec::new(),
                replaced_by: None,
                hw_type: None,
                issuer_generation: 1,
            },
            false,
        ));
        if chunk.len() == 10_000 {
            commit(std::mem::take(&mut chunk))?;
            bar.inc(10_000);
        }
    }
    commit(chunk)?;
    bar.finish_and_clear();
    eprintln!(
        "  {certs} records in {:.1} s",
        start.elapsed().as_secs_f64()
    );
    let start = std::time::Instant::now();
    let rev = Revocation {
        reason: Reason::KeyCompromise,
        revoked_at: now,
        invalidity_date: None,
    };
    for part in revoke_list.chunks(10_000) {
        store.apply(
            Txn::new().with(Op::Revoke {
                serials: part.to_vec(),
                revocation: rev,
            }),
            None,
        )?;
    }
    let revoke_secs = start.elapsed().as_secs_f64();
    eprintln!("  {} revoked in {revoke_secs:.1} s", revoke_list.len());
    Ok((revoke_list, revoke_secs))
}

/// `meterpki-bench fill`: unsigned records written into the home's own store (either backend),
/// for measuring issuance, the server's memory and CRL publication on a large store. Only for
/// a scratch copy of a home: the records are not certificates anybody holds.
pub(crate) fn fill(b: &Bench, certs: usize, revoke: usize, scratch: bool) -> Result<()> {
    if !scratch {
        return Err(input(
            "fill writes unsigned records into this home's store, which a real CA must never hold: run it on a copy of a home and say so with --scratch-copy",
        ));
    }
    if revoke > certs {
        return Err(input("--revoke cannot exceed --certs"));
    }
    let store = b.service.store()?;
    let shards = b.service.crl_settings().shards;
    let start = std::time::Instant::now();
    let (revoked, _) = fill_store(store.as_ref(), shards, certs, revoke)?;
    let secs = start.elapsed().as_secs_f64();
    let out = json!({
        "records": certs,
        "revoked": revoked.len(),
        "seconds": secs,
        "records_per_second": certs as f64 / secs,
        "store_certificates": store.cert_count()?,
        "peak_rss_mb": peak_rss_kb().map(|k| k as f64 / 1024.0),
    });
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "wrote {certs} records ({} revoked) in {secs:.0} s ({:.0}/s); the store holds {} certificates; peak RSS {:.0} MB",
            revoked.len(),
            certs as f64 / secs,
            store.cert_count()?,
            peak_rss_kb().map_or(0.0, |k| k as f64 / 1024.0)
        );
    }
    Ok(())
}
