//! The values of single fields: bare public keys, validity, OIDs, `max-der-bytes` and the CRL
//! distribution point.

use crate::Validity;

use super::{load_edited, refused};

#[test]
fn bare_public_key_is_for_meters_only() {
    for name in [
        "supplier-signing",
        "api-client",
        "trust-update-signer",
        "device-ca",
    ] {
        refused(
            name,
            &[("allow-bare-public-key", Some("true"))],
            "allow-bare-public-key",
        );
    }
    // Saying false explicitly is harmless.
    let p = load_edited(
        "supplier-signing",
        &[("allow-bare-public-key", Some("false"))],
    )
    .expect("false is fine");
    assert!(!p.allow_bare_public_key());
    // Meters default to false.
    let p = load_edited("meter-signing", &[("allow-bare-public-key", None)]).expect("default");
    assert!(!p.allow_bare_public_key());
}

#[test]
fn validity_rules() {
    // "unlimited" is for meters and CAs only.
    for name in [
        "supplier-signing",
        "api-client",
        "api-server",
        "trust-update-signer",
    ] {
        refused(
            name,
            &[("validity-days", None), ("validity", Some("\"unlimited\""))],
            "validity",
        );
    }
    // The CAs above meters may have no end date; the shipped root and Device CA have none.
    let p = load_edited(
        "organisation-ca",
        &[("validity-days", None), ("validity", Some("\"unlimited\""))],
    )
    .expect("a CA may be unlimited");
    assert_eq!(p.validity(), Validity::Unlimited);
    for name in ["root-ca", "device-ca"] {
        let p = load_edited(name, &[]).expect("shipped");
        assert_eq!(p.validity(), Validity::Unlimited, "{name}");
    }
    // Exactly one of the two.
    refused(
        "meter-signing",
        &[("validity-days", Some("365"))],
        "validity",
    );
    refused("meter-signing", &[("validity", None)], "validity-days");
    // Only "unlimited" is a word validity accepts.
    refused(
        "meter-signing",
        &[("validity", Some("\"forever\""))],
        "validity",
    );
    refused("meter-signing", &[("validity", Some("36500"))], "validity");
    // Days between 1 and 36500.
    refused(
        "supplier-signing",
        &[("validity-days", Some("0"))],
        "validity-days",
    );
    refused(
        "supplier-signing",
        &[("validity-days", Some("-5"))],
        "validity-days",
    );
    refused(
        "supplier-signing",
        &[("validity-days", Some("36501"))],
        "validity-days",
    );
    refused(
        "supplier-signing",
        &[("validity-days", Some("5000000000"))],
        "validity-days",
    );
    for days in [1, 36500] {
        let p = load_edited(
            "supplier-signing",
            &[("validity-days", Some(&days.to_string()))],
        )
        .expect("in range");
        assert_eq!(p.validity(), Validity::Days(days));
    }
    // A meter may have a fixed lifetime too.
    let p = load_edited(
        "meter-signing",
        &[("validity", None), ("validity-days", Some("3650"))],
    )
    .expect("fixed meter lifetime");
    assert_eq!(p.validity(), Validity::Days(3650));
}

#[test]
fn oids_must_be_well_formed() {
    for bad in [
        "\"\"",
        "\"1.3.6.1.4.1.32473.1.\"",
        "\"banana\"",
        "\"1.3.x.4\"",
        "\"9.1.2\"",
        "\"1.2\"",
    ] {
        refused("meter-signing", &[("policy-oid", Some(bad))], "policy-oid");
        refused(
            "meter-signing",
            &[("device-type-oid", Some(bad))],
            "device-type-oid",
        );
    }
    let e = refused(
        "meter-signing",
        &[("policy-oid", Some("\"banana\""))],
        "policy-oid",
    );
    assert!(e.reason.contains("not a valid OID"), "{e}");
    let e = refused(
        "supplier-signing",
        &[("policy-oid", Some("\"1.2\""))],
        "policy-oid",
    );
    assert!(e.reason.contains("3"), "{e}");
}

#[test]
fn max_der_bytes_range() {
    refused(
        "meter-signing",
        &[("max-der-bytes", Some("127"))],
        "max-der-bytes",
    );
    refused(
        "meter-signing",
        &[("max-der-bytes", Some("8193"))],
        "max-der-bytes",
    );
    refused(
        "meter-signing",
        &[("max-der-bytes", Some("-1"))],
        "max-der-bytes",
    );
    for n in [128, 8192] {
        let p = load_edited("meter-signing", &[("max-der-bytes", Some(&n.to_string()))])
            .expect("in range");
        assert_eq!(p.max_der_bytes(), Some(n));
    }
    let p = load_edited("meter-signing", &[("max-der-bytes", None)]).expect("optional");
    assert_eq!(p.max_der_bytes(), None);
}

#[test]
fn crl_distribution_point_can_be_switched_off() {
    let p = load_edited(
        "meter-signing",
        &[("crl-distribution-point", Some("false"))],
    )
    .expect("valid");
    assert!(!p.crl_distribution_point());
    let p = load_edited("meter-signing", &[("crl-distribution-point", None)]).expect("valid");
    assert!(
        p.crl_distribution_point(),
        "meters default to a CRL pointer"
    );
}
