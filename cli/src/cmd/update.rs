//! `meterpki update verify`: checks a trust-anchor update as a meter would.

use std::path::Path;

use anyhow::Result;
use ca_core::tamp::{verify_update, VerifyOptions};
use ca_core::Eui64;
use der::asn1::ObjectIdentifier;
use der::Encode;
use serde_json::json;

use crate::cmd::print_json;
use crate::errors::input;

/// What the verifying meter knows of itself.
pub(super) struct Meter<'a> {
    pub(super) device: Option<&'a str>,
    pub(super) after: Option<u64>,
    pub(super) policy_oid: Option<&'a str>,
    pub(super) hw_type: Option<&'a str>,
}

/// Runs without a home: a head end or a test bench has only the file and the root.
pub(super) fn verify(
    home: &ca_core::Home,
    json_out: bool,
    file: &Path,
    root: &Path,
    meter: Meter<'_>,
) -> Result<()> {
    let Meter {
        device,
        after,
        policy_oid,
        hw_type,
    } = meter;
    // An update carries a few certificates: 1 MiB is far beyond any.
    let der = ca_core::read_bounded(file, 1024 * 1024)
        .map_err(|e| input(format!("{}: {e}", file.display())))?;
    let root_bytes = ca_core::read_bounded(root, super::BLOB_LIMIT)
        .map_err(|e| input(format!("--root {}: {e}", root.display())))?;
    let root_cert = ca_core::certificate_from_bytes(&root_bytes)
        .map_err(|e| input(format!("--root {}: not a certificate: {e}", root.display())))?;
    if ca_core::tamp::is_apex_update(&der) {
        return verify_apex(json_out, file, &der, &root_bytes, after, hw_type);
    }
    let signer_policy = match policy_oid {
        Some(o) => {
            ObjectIdentifier::new(o).map_err(|e| input(format!("--policy-oid {o:?}: {e}")))?
        }
        None => {
            let dir = home.policies_dir();
            let profiles = if dir.is_dir() {
                policies::ProfileSet::load_dir(&dir).map_err(|e| input(e.to_string()))?
            } else {
                policies::ProfileSet::builtin()
            };
            profiles
                .get("trust-update-signer")
                .and_then(|p| p.policy_oid())
                .ok_or_else(|| {
                    input("no trust-update-signer profile with a policy-oid: give --policy-oid")
                })?
        }
    };
    let device: Option<Eui64> = device
        .map(|d| d.parse().map_err(|e| input(format!("--device-id: {e}"))))
        .transpose()?;
    let opts = VerifyOptions {
        signer_policy,
        device,
        after_seq: after,
        now: std::time::SystemTime::now(),
    };
    let v = verify_update(&der, &root_cert, &opts).map_err(|e| {
        input(format!(
            "{}: the update does not verify: {e}",
            file.display()
        ))
    })?;
    let removed: Vec<String> = v
        .removed
        .iter()
        .map(|k| hex::encode(ca_core::key_identifier(k)))
        .collect();
    let added: Vec<serde_json::Value> = v
        .added
        .iter()
        .map(|c| {
            json!({
                "serial": hex::encode(c.tbs_certificate.serial_number.as_bytes()),
                "subject": c.tbs_certificate.subject.to_string(),
                "key_id": hex::encode(ca_core::key_identifier(&c.tbs_certificate.subject_public_key_info)),
            })
        })
        .collect();
    let devices: Vec<String> = v.devices.iter().map(|d| d.to_string()).collect();
    let signer_serial = hex::encode(v.signer.tbs_certificate.serial_number.as_bytes());
    if json_out {
        print_json(&json!({
            "verified": true, "seq": v.seq, "hw_type": v.hw_type.to_string(), "devices": devices,
            "remove_key_ids": removed, "add": added, "signer": v.signer.tbs_certificate.subject.to_string(),
            "signer_serial": signer_serial, "content_bytes": v.content.len(), "bytes": der.len(),
            "root_sha256": hex::encode(ca_core::sha256(&root_cert.to_der()?)),
        }))?;
    } else {
        println!(
            "verified: seq {} for {} (hwType {}), signed by {} (serial {signer_serial})",
            v.seq,
            devices.join(", "),
            v.hw_type,
            v.signer.tbs_certificate.subject
        );
        for k in &removed {
            println!("  remove key {k}");
        }
        for a in &added {
            println!(
                "  add certificate {} {}",
                a["serial"].as_str().unwrap_or(""),
                a["subject"].as_str().unwrap_or("")
            );
        }
    }
    Ok(())
}

/// An apex update, checked against `current` as the meter's apex trust anchor.
fn verify_apex(
    json_out: bool,
    file: &Path,
    der: &[u8],
    current: &[u8],
    after: Option<u64>,
    hw_type: Option<&str>,
) -> Result<()> {
    let current = ca_core::certificate_from_bytes(current)
        .map_err(|e| input(format!("--root: not a certificate: {e}")))?;
    let hw_type = hw_type
        .map(|o| ObjectIdentifier::new(o).map_err(|e| input(format!("--hw-type {o:?}: {e}"))))
        .transpose()?;
    let opts = ca_core::tamp::ApexOptions {
        hw_type,
        after_seq: after,
    };
    let v = ca_core::tamp::verify_apex(der, &current, &opts).map_err(|e| {
        input(format!(
            "{}: the apex update does not verify: {e}",
            file.display()
        ))
    })?;
    let target = match &v.target {
        ca_core::tamp::ApexTarget::All => "all meters".to_string(),
        ca_core::tamp::ApexTarget::HwType(o) => format!("every meter of hwType {o}"),
    };
    let fingerprint = ca_core::fingerprint_sha256(&v.new_apex);
    if json_out {
        print_json(&json!({
            "verified": true, "kind": "apex", "seq": v.seq, "target": target,
            "signed_by": v.signed_by, "clear_trust_anchors": v.clear_trust_anchors,
            "clear_communities": v.clear_communities, "apex_seq_number": v.apex_seq_number,
            "new_apex": {"subject": v.new_apex.tbs_certificate.subject.to_string(), "sha256_fingerprint": fingerprint,
                "key_id": hex::encode(ca_core::key_identifier(&v.new_apex.tbs_certificate.subject_public_key_info))},
            "bytes": der.len(),
        }))?;
    } else {
        println!(
            "verified: apex update seq {} for {target}, signed by the {} key: new apex {} (SHA-256 {fingerprint})",
            v.seq, v.signed_by, v.new_apex.tbs_certificate.subject
        );
    }
    Ok(())
}
