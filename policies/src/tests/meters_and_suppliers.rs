//! The rules for meter and supplier profiles: P-256 only, one keyUsage bit, their OIDs and
//! issuers.

use super::refused;

#[test]
fn meters_and_suppliers_are_p256_only() {
    for name in ["meter-signing", "supplier-key-agreement"] {
        let e = refused(name, &[("curves", Some("[\"p384\"]"))], "curves");
        assert!(e.reason.contains("P-256 only"), "{e}");
        refused(name, &[("curves", Some("[\"p256\", \"p384\"]"))], "curves");
    }
}

#[test]
fn meters_and_suppliers_have_one_key_usage_bit() {
    for name in ["meter-key-agreement", "supplier-signing"] {
        let e = refused(
            name,
            &[(
                "key-usage",
                Some("[\"digital-signature\", \"key-agreement\"]"),
            )],
            "key-usage",
        );
        assert!(e.reason.contains("one keyUsage bit per certificate"), "{e}");
        refused(
            name,
            &[("key-usage", Some("[\"key-cert-sign\"]"))],
            "key-usage",
        );
    }
}

#[test]
fn meter_rules() {
    let e = refused(
        "meter-signing",
        &[("device-type-oid", None)],
        "device-type-oid",
    );
    assert!(e.reason.contains("hardwareModuleName"), "{e}");
    refused("meter-signing", &[("policy-oid", None)], "policy-oid");
    refused(
        "meter-signing",
        &[("issuer", Some("\"organisation\""))],
        "issuer",
    );
}

#[test]
fn supplier_rules() {
    refused("supplier-signing", &[("policy-oid", None)], "policy-oid");
    refused(
        "supplier-signing",
        &[("device-type-oid", Some("\"1.3.6.1.4.1.32473.2.1\""))],
        "device-type-oid",
    );
    refused(
        "supplier-signing",
        &[("issuer", Some("\"device\""))],
        "issuer",
    );
}
