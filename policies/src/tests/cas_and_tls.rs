//! The rules for the trust-update signer, TLS and CA profiles, and the fields only TLS (extended
//! key usage) or CAs (path length) may have.

use super::{load_edited, oid, refused};

#[test]
fn trust_update_signer_rules() {
    refused(
        "trust-update-signer",
        &[("issuer", Some("\"root\""))],
        "issuer",
    );
    refused(
        "trust-update-signer",
        &[("key-usage", Some("[\"key-agreement\"]"))],
        "key-usage",
    );
    refused("trust-update-signer", &[("policy-oid", None)], "policy-oid");
}

#[test]
fn tls_rules() {
    for name in ["api-server", "api-client"] {
        refused(name, &[("issuer", Some("\"organisation\""))], "issuer");
        refused(
            name,
            &[(
                "key-usage",
                Some("[\"digital-signature\", \"key-agreement\"]"),
            )],
            "key-usage",
        );
        refused(name, &[("extended-key-usage", None)], "extended-key-usage");
        refused(
            name,
            &[(
                "extended-key-usage",
                Some("[\"server-auth\", \"client-auth\"]"),
            )],
            "extended-key-usage",
        );
    }
    refused(
        "api-server",
        &[("extended-key-usage", Some("[\"client-auth\"]"))],
        "extended-key-usage",
    );
    refused(
        "api-client",
        &[("extended-key-usage", Some("[\"server-auth\"]"))],
        "extended-key-usage",
    );
    // policy-oid is optional for TLS.
    let p = load_edited("api-server", &[("policy-oid", None)]).expect("no policy OID is fine");
    assert_eq!(p.policy_oid(), None);
    // Default CRL pointer for TLS is on.
    let p = load_edited("api-client", &[("crl-distribution-point", None)]).expect("default");
    assert!(p.crl_distribution_point());
}

#[test]
fn extended_key_usage_is_forbidden_outside_tls() {
    for name in [
        "meter-signing",
        "supplier-signing",
        "trust-update-signer",
        "root-ca",
        "device-ca",
    ] {
        refused(
            name,
            &[("extended-key-usage", Some("[\"server-auth\"]"))],
            "extended-key-usage",
        );
    }
}

#[test]
fn ca_rules() {
    refused("root-ca", &[("issuer", Some("\"device\""))], "issuer");
    refused(
        "device-ca",
        &[("issuer", Some("\"organisation\""))],
        "issuer",
    );
    refused("root-ca", &[("path-len", None)], "path-len");
    refused("access-ca", &[("path-len", None)], "path-len");
    refused("access-ca", &[("path-len", Some("-1"))], "path-len");
    refused("access-ca", &[("path-len", Some("256"))], "path-len");
    refused(
        "root-ca",
        &[("key-usage", Some("[\"key-cert-sign\"]"))],
        "key-usage",
    );
    refused(
        "organisation-ca",
        &[(
            "key-usage",
            Some("[\"key-cert-sign\", \"crl-sign\", \"digital-signature\"]"),
        )],
        "key-usage",
    );
    refused(
        "device-ca",
        &[("device-type-oid", Some("\"1.3.6.1.4.1.32473.2.1\""))],
        "device-type-oid",
    );
    // Order of the two bits does not matter; policy-oid is optional for CAs.
    let p = load_edited(
        "root-ca",
        &[
            ("key-usage", Some("[\"crl-sign\", \"key-cert-sign\"]")),
            ("policy-oid", Some("\"2.5.29.32.0\"")),
            ("crl-distribution-point", None),
        ],
    )
    .expect("valid");
    assert_eq!(p.policy_oid(), Some(oid("2.5.29.32.0")));
    assert!(
        p.crl_distribution_point(),
        "CAs point at the root's ARL by default"
    );
}

#[test]
fn path_len_is_forbidden_outside_cas() {
    for name in [
        "meter-signing",
        "supplier-signing",
        "api-server",
        "trust-update-signer",
    ] {
        refused(name, &[("path-len", Some("0"))], "path-len");
    }
}

#[test]
fn a_ca_profile_may_name_its_subject_and_nothing_else_may() {
    let p = load_edited("device-ca", &[("subject", Some("\"CN=MDCA2\""))]).expect("valid");
    assert_eq!(p.subject(), Some("CN=MDCA2"));
    assert_eq!(
        load_edited("root-ca", &[]).expect("shipped").subject(),
        None,
        "the shipped profiles leave the name to meterpki.toml"
    );
    let e = refused("meter-signing", &[("subject", Some("\"CN=x\""))], "subject");
    assert!(e.reason.contains("only CA profiles"), "{e}");
    refused(
        "access-ca",
        &[("subject", Some("\"not a name\""))],
        "subject",
    );
}

#[test]
fn policy_criticality_is_a_profile_field() {
    let p = load_edited("meter-signing", &[]).expect("shipped");
    assert!(
        !p.policy_critical(),
        "shipped meters parse on embedded stacks"
    );
    let p = load_edited("meter-signing", &[("policy-critical", Some("true"))]).expect("GB form");
    assert!(p.policy_critical());
    refused(
        "device-ca",
        &[("policy-critical", Some("true"))],
        "policy-critical",
    );
    refused(
        "api-server",
        &[("policy-oid", None), ("policy-critical", Some("false"))],
        "policy-critical",
    );
}

#[test]
fn the_entity_id_form_is_a_supplier_profile_field() {
    use crate::EntityIdForm;
    for name in ["supplier-signing", "supplier-key-agreement"] {
        let p = load_edited(name, &[]).expect("shipped");
        assert_eq!(
            p.entity_id_form(),
            EntityIdForm::SerialNumber,
            "shipped suppliers parse on Go and embedded stacks"
        );
        let p = load_edited(name, &[("entity-id-form", None)]).expect("written before the field");
        assert_eq!(p.entity_id_form(), EntityIdForm::X500UniqueIdentifier);
        let p = load_edited(
            name,
            &[("entity-id-form", Some("\"x500-unique-identifier\""))],
        )
        .expect("GB form");
        assert_eq!(p.entity_id_form(), EntityIdForm::X500UniqueIdentifier);
    }
    refused(
        "meter-signing",
        &[("entity-id-form", Some("\"serial-number\""))],
        "entity-id-form",
    );
}

#[test]
fn meters_may_shorten_their_key_identifier() {
    assert_eq!(
        load_edited("meter-signing", &[])
            .unwrap()
            .key_identifier_bytes(),
        8
    );
    let p = load_edited("meter-signing", &[("key-identifier-bytes", Some("4"))]).unwrap();
    assert_eq!(p.key_identifier_bytes(), 4);
    for bad in ["3", "9", "0"] {
        refused(
            "meter-key-agreement",
            &[("key-identifier-bytes", Some(bad))],
            "key-identifier-bytes",
        );
    }
    refused(
        "supplier-signing",
        &[("key-identifier-bytes", Some("4"))],
        "key-identifier-bytes",
    );
}
