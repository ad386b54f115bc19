//! `meterpki-bench crl`: a scratch store (never the home's) with N certificate records written
//! straight to it (unsigned: a CRL needs only serials and shards; issuing a million through the
//! HSM would measure issuance, not CRLs), M of them revoked by list, then every shard and the
//! full CRL built and signed with the Device CA's HSM key by the same code as `crl publish`.

use anyhow::Result;
use ca_core::issue::shard_of;
use ca_core::service::Actor;
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
    let start = std::time::Instant::now();
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
                subject_id: ca_core::Eui64(c).to_string(),
                key_hash: [0; 32],
                shard: shard_of(&serial, settings.shards),
                issued_at: now,
                der: Vec::new(),
                replaced_by: None,
                hw_type: None,
            },
            false,
        ));
        if chunk.len() == 10_000 {
            commit(std::mem::take(&mut chunk))?;
        }
    }
    commit(chunk)?;
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
