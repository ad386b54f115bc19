//! Revocation reasons and records (RFC 5280 §5.3.1).

use std::fmt;

use serde::{Deserialize, Serialize};

/// Why a certificate was revoked: the RFC 5280 CRLReason values meterpki issues.
/// `certificateHold` and `removeFromCRL` are not offered: a revocation here is final.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Reason {
    /// unspecified (0): the CRL entry then carries no reasonCode (RFC 5280 §5.3.1).
    Unspecified,
    /// keyCompromise (1).
    KeyCompromise,
    /// cACompromise (2).
    CaCompromise,
    /// affiliationChanged (3).
    AffiliationChanged,
    /// superseded (4).
    Superseded,
    /// cessationOfOperation (5).
    CessationOfOperation,
    /// privilegeWithdrawn (9).
    PrivilegeWithdrawn,
    /// aACompromise (10).
    AaCompromise,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Reason; 8] = [
        Reason::Unspecified,
        Reason::KeyCompromise,
        Reason::CaCompromise,
        Reason::AffiliationChanged,
        Reason::Superseded,
        Reason::CessationOfOperation,
        Reason::PrivilegeWithdrawn,
        Reason::AaCompromise,
    ];

    /// The CRLReason code.
    pub fn code(self) -> u32 {
        match self {
            Reason::Unspecified => 0,
            Reason::KeyCompromise => 1,
            Reason::CaCompromise => 2,
            Reason::AffiliationChanged => 3,
            Reason::Superseded => 4,
            Reason::CessationOfOperation => 5,
            Reason::PrivilegeWithdrawn => 9,
            Reason::AaCompromise => 10,
        }
    }

    /// The RFC 5280 name, e.g. `keyCompromise`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Unspecified => "unspecified",
            Reason::KeyCompromise => "keyCompromise",
            Reason::CaCompromise => "cACompromise",
            Reason::AffiliationChanged => "affiliationChanged",
            Reason::Superseded => "superseded",
            Reason::CessationOfOperation => "cessationOfOperation",
            Reason::PrivilegeWithdrawn => "privilegeWithdrawn",
            Reason::AaCompromise => "aACompromise",
        }
    }

    /// Parses a name (case-insensitive; `key-compromise` and `key_compromise` too).
    pub fn parse(s: &str) -> Result<Reason, String> {
        let norm: String = s
            .chars()
            .filter(|c| *c != '-' && *c != '_')
            .collect::<String>()
            .to_ascii_lowercase();
        Reason::ALL
            .into_iter()
            .find(|r| r.name().to_ascii_lowercase() == norm)
            .ok_or_else(|| {
                let names: Vec<&str> = Reason::ALL.iter().map(|r| r.name()).collect();
                format!(
                    "{s:?} is not a revocation reason; use one of {} (certificateHold is not offered: revocation is final)",
                    names.join(", ")
                )
            })
    }
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A revocation as stored.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revocation {
    /// Why.
    pub reason: Reason,
    /// When, Unix seconds (the CRL entry's revocationDate).
    pub revoked_at: i64,
    /// When the key is known or suspected to have been compromised (invalidityDate), Unix seconds.
    pub invalidity_date: Option<i64>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_bad_ones_list_the_good() {
        for r in Reason::ALL {
            assert_eq!(Reason::parse(r.name()), Ok(r));
        }
        assert_eq!(Reason::parse("key-compromise"), Ok(Reason::KeyCompromise));
        assert_eq!(
            Reason::parse("CESSATION_OF_OPERATION"),
            Ok(Reason::CessationOfOperation)
        );
        let e = Reason::parse("certificateHold").unwrap_err();
        assert!(e.contains("keyCompromise") && e.contains("final"), "{e}");
        assert!(Reason::parse("stolen").is_err());
    }
}
