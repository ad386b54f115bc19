//! `meterpki-bench takeover`: a scratch store (never the home's) with suppliers A and B, each
//! with real signing and key-agreement certificates from the Organisation CA, and N meters of A
//! (records sharing one real meter certificate, so each has its hwType); then a takeover A -> B
//! through the same use case as `supplier takeover`: one signed, verified update per meter.
//! Prints updates/s beside the raw signing rate of the trust-update signer key measured in the
//! same run with the same sessions, their ratio, and peak RSS.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Result;
use base64::Engine as _;
use ca_core::churn::{DirSink, NdjsonSink, UpdateSink};
use ca_core::issue::RequestItem;
use ca_core::service::{Actor, UPDATE_KEY_LABEL};
use ca_core::{CaKind, CertRecord, Eui64, MeterMove, Op, OpKind, Txn};
use hsm_bridge::{bench_bare_cryptoki, bench_signer};
use rand::RngCore;
use serde_json::json;

use crate::figures::{peak_rss_kb, print_ceiling, print_rates, rates_json, verify_rate};
use crate::input::{meter_request, software_csr};
use crate::Bench;

pub(crate) fn run(
    b: &Bench,
    meters: usize,
    raw_seconds: f64,
    chunk: usize,
    ndjson: bool,
) -> Result<()> {
    let b64 = |d: Vec<u8>| base64::engine::general_purpose::STANDARD.encode(d);
    let actor = Actor::local();
    let sessions = b.service.config().hsm.sessions;
    // The home's trust-update signer (made in the home if missing); then only the scratch.
    b.service.update_signer(&actor)?;
    let dir = tempfile::tempdir()?;
    let scratch = b.service.scratch(dir.path())?;
    let (a_id, b_id): (Eui64, Eui64) = (
        "90-B3-D5-1F-30-00-0B-0A"
            .parse()
            .map_err(anyhow::Error::msg)?,
        "90-B3-D5-1F-30-00-0B-0B"
            .parse()
            .map_err(anyhow::Error::msg)?,
    );
    for (id, name) in [(&a_id, "Bench Supplier A"), (&b_id, "Bench Supplier B")] {
        scratch.register_supplier(&actor, id, name)?;
        for profile in ["supplier-signing", "supplier-key-agreement"] {
            scratch.enrol_key(&actor, id, profile, b64(software_csr()?), None, false)?;
        }
    }
    let item: RequestItem =
        serde_json::from_str(&meter_request("meter-signing", "00-DB-BE-00-00-00-00-00")?)?;
    let meter: CertRecord = scratch.issue_one(&actor, item)?.record;
    eprintln!("writing {meters} meters of supplier A to a scratch store...");
    let store = scratch.store()?;
    let mut prefix = [0u8; 4];
    rand::rngs::OsRng.fill_bytes(&mut prefix);
    let mut certs = Vec::with_capacity(10_000);
    let mut moves = Vec::with_capacity(10_000);
    for i in 0..meters {
        let mut id = [0u8; 8];
        id[..4].copy_from_slice(&prefix);
        id[4..].copy_from_slice(&(i as u32).to_be_bytes());
        let device = Eui64(id).to_string();
        let serial = ca_core::random_serial_bytes();
        certs.push((
            CertRecord {
                serial: serial.to_vec(),
                subject_id: device.clone(),
                key_hash: ca_core::sha256(&id),
                ..meter.clone()
            },
            false,
        ));
        moves.push(MeterMove {
            device,
            from: None,
            to: a_id.to_string(),
            update: None,
        });
        if certs.len() == 10_000 || i + 1 == meters {
            let txn = Txn::new()
                .with(Op::CommitIssued {
                    items: std::mem::take(&mut certs),
                    all_or_nothing: false,
                })
                .with(Op::MoveMeters(std::mem::take(&mut moves)));
            store.apply(txn, None)?;
        }
    }
    let d = Duration::from_secs_f64(raw_seconds);
    eprintln!("raw signing rate of the trust-update signer key, {sessions} session(s), {raw_seconds} s each...");
    let token = b.raw_token(sessions)?;
    let bare = bench_bare_cryptoki(&token, UPDATE_KEY_LABEL, 32, sessions, d)?;
    let bridge = bench_signer(
        "hsm-bridge",
        Arc::new(token.signer(UPDATE_KEY_LABEL)?),
        sessions,
        d,
    )?;
    drop(token);
    let verify = verify_rate(sessions, d)?;
    // The churn engine's signer ready before the clock starts.
    scratch.update_signer(&actor)?;
    crate::figures::reset_peak_rss();
    eprintln!("taking over {meters} meters (A -> B)...");
    let updates = dir.path().join("updates");
    let stream = dir.path().join("updates.ndjson");
    let mut sink: Box<dyn UpdateSink> = if ndjson {
        Box::new(NdjsonSink::open(&stream)?)
    } else {
        Box::new(DirSink::create(&updates)?)
    };
    let start = std::time::Instant::now();
    let report = scratch.end_supplier(
        &actor,
        OpKind::Takeover,
        &a_id,
        &b_id,
        chunk,
        sink.as_mut(),
        &ca_core::service::Quiet,
    )?;
    let secs = start.elapsed().as_secs_f64();
    let rss = peak_rss_kb();
    drop(sink);
    let sample = sample_update(ndjson, &stream, &updates)?;
    let root = b.service.ca_cert(CaKind::Root)?;
    let policy = scratch
        .profiles()?
        .get("trust-update-signer")
        .and_then(|p| p.policy_oid())
        .ok_or_else(|| anyhow::anyhow!("no trust-update-signer policy"))?;
    let checked = ca_core::tamp::verify_update(
        &sample,
        &root,
        &ca_core::tamp::VerifyOptions {
            signer_policy: policy,
            device: None,
            after_seq: None,
            now: std::time::SystemTime::now(),
        },
    )?;
    let done = report.meters_updated;
    let rate = done as f64 / secs;
    let mut out = json!({
        "meters": meters,
        "updates": done,
        "refused": report.refused.len(),
        "certificates_revoked": report.extra.get("revoked"),
        "seconds": secs,
        "updates_per_second": rate,
        "sessions": sessions,
        "sample_update_bytes": sample.len(),
        "sink": if ndjson { "ndjson" } else { "one file per meter" },
        "sample_update_seq": checked.seq,
    });
    if let Some(o) = out.as_object_mut() {
        o.extend(rates_json(rate, &bare, &bridge, verify, 1, rss));
    }
    if b.json {
        println!("{}", serde_json::to_string_pretty(&out)?);
    } else {
        println!(
            "takeover               {done} meters moved, {done} updates in {secs:.1} s ({} refused)",
            report.refused.len()
        );
        print_rates(
            ("update rate", "updates/s", rate),
            &bare,
            &bridge,
            sessions,
            60,
        );
        print_ceiling(
            bare.per_second,
            verify,
            1,
            "the verification of that signature before the update is written",
        );
        println!(
            "share of the ceiling   {:>7.0} % (target >= 80 %)",
            100.0 * out["share_of_ceiling"].as_f64().unwrap_or(0.0)
        );
        if let Some(k) = rss {
            println!("peak RSS (takeover)    {:>8.1} MB", k as f64 / 1024.0);
        }
        println!(
            "sample update          {} bytes, seq {}, verified against the root",
            out["sample_update_bytes"], checked.seq
        );
    }
    Ok(())
}

/// One update written by the run, to check as a meter would.
fn sample_update(
    ndjson: bool,
    stream: &std::path::Path,
    updates: &std::path::Path,
) -> Result<Vec<u8>> {
    if ndjson {
        use std::io::BufRead;
        let line = std::io::BufReader::new(std::fs::File::open(stream)?)
            .lines()
            .next()
            .ok_or_else(|| anyhow::anyhow!("no update written"))??;
        let v: serde_json::Value = serde_json::from_str(&line)?;
        Ok(base64::engine::general_purpose::STANDARD
            .decode(v["update"].as_str().unwrap_or_default())?)
    } else {
        let f = std::fs::read_dir(updates)?
            .filter_map(|e| e.ok())
            .find(|e| e.file_name().to_string_lossy().ends_with(".tamp.der"))
            .ok_or_else(|| anyhow::anyhow!("no update written"))?;
        Ok(std::fs::read(f.path())?)
    }
}
