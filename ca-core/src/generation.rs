//! CA generations: a CA renewed with a new key is a new generation of the same kind, with its
//! own name, key label, CRLs and store records, while the generations before it keep signing
//! the CRLs of what they issued (docs/lifecycle.md).
//!
//! Generation 1 keeps the names every home had before generations existed (`device`,
//! `meterpki-device-ca`, `ca:device`), so that a home and its store need no migration; a later
//! generation N adds `-gN` to each.

use std::fmt;

use crate::CaKind;

/// One generation of one CA: which CA issued a certificate, which key signs its CRLs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct IssuerId {
    /// The CA.
    pub kind: CaKind,
    /// Its generation, from 1.
    pub generation: u32,
}

impl IssuerId {
    /// The first generation of `kind`: every CA made before renewal existed.
    pub const fn first(kind: CaKind) -> IssuerId {
        IssuerId {
            kind,
            generation: 1,
        }
    }

    /// Generation `generation` (at least 1) of `kind`.
    pub fn new(kind: CaKind, generation: u32) -> IssuerId {
        IssuerId {
            kind,
            generation: generation.max(1),
        }
    }

    /// The next generation.
    pub fn next(self) -> IssuerId {
        IssuerId::new(self.kind, self.generation + 1)
    }

    fn suffix(self) -> String {
        if self.generation <= 1 {
            String::new()
        } else {
            format!("-g{}", self.generation)
        }
    }

    /// The name in CRL paths and URLs, counters and store keys: `device`, `device-g2`.
    pub fn name(self) -> String {
        format!("{}{}", self.kind.name(), self.suffix())
    }

    /// The CKA_LABEL of its key pair: `meterpki-device-ca`, `meterpki-device-ca-g2`.
    pub fn key_label(self) -> String {
        format!("{}{}", self.kind.key_label(), self.suffix())
    }

    /// The store's subject for the CA certificate of this generation (a certificate the root
    /// issued): `ca:device`, `ca:device-g2`.
    pub fn store_subject(self) -> String {
        format!("ca:{}", self.name())
    }

    /// Parses [`IssuerId::name`]: `device`, `device-g2` (never `device-g1` or `device-g02`:
    /// one name per generation).
    pub fn parse(name: &str) -> Option<IssuerId> {
        if let Some(kind) = CaKind::from_name(name) {
            return (kind.name() == name).then_some(IssuerId::first(kind));
        }
        let (kind, generation) = name.rsplit_once("-g")?;
        let kind = CaKind::from_name(kind).filter(|k| k.name() == kind)?;
        if generation.starts_with('0') || generation.len() > 9 {
            return None;
        }
        let generation: u32 = generation.parse().ok()?;
        (generation >= 2).then_some(IssuerId { kind, generation })
    }
}

impl fmt::Display for IssuerId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())
    }
}

impl serde::Serialize for IssuerId {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_generation_one_keeps_the_old_names() {
        let d1 = IssuerId::first(CaKind::Device);
        assert_eq!(d1.name(), "device");
        assert_eq!(d1.key_label(), "meterpki-device-ca");
        assert_eq!(d1.store_subject(), "ca:device");
        let d2 = d1.next();
        assert_eq!(d2.name(), "device-g2");
        assert_eq!(d2.key_label(), "meterpki-device-ca-g2");
        for id in [d1, d2, IssuerId::new(CaKind::Root, 17)] {
            assert_eq!(IssuerId::parse(&id.name()), Some(id));
        }
        for bad in [
            "device-g1",
            "device-g02",
            "device-g",
            "organization",
            "device-g2x",
            "devices-g2",
            "device-g99999999999",
        ] {
            assert_eq!(IssuerId::parse(bad), None, "{bad}");
        }
    }
}
