//! EUI-64 identifiers of devices and parties: accepted as `00-DB-12-34-56-78-90-01`,
//! `00:DB:12:34:56:78:90:01` or `00DB123456789001`, stored and shown normalised.

use std::fmt;
use std::str::FromStr;

/// An 8-byte EUI-64.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Eui64(pub [u8; 8]);

impl Eui64 {
    /// The 8 bytes.
    pub fn bytes(&self) -> &[u8; 8] {
        &self.0
    }
}

impl fmt::Display for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // By hand rather than `format!` per byte and a join: a device ID is formatted several
        // times for every certificate issued, and the allocations showed in the API's profile.
        const HEX: &[u8; 16] = b"0123456789ABCDEF";
        let mut out = [b'-'; 23];
        for (i, b) in self.0.iter().enumerate() {
            out[3 * i] = HEX[usize::from(b >> 4)];
            out[3 * i + 1] = HEX[usize::from(b & 0x0f)];
        }
        f.write_str(std::str::from_utf8(&out).map_err(|_| fmt::Error)?)
    }
}

impl fmt::Debug for Eui64 {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Eui64({self})")
    }
}

impl FromStr for Eui64 {
    type Err = String;

    /// Parses the three accepted spellings; the error says what is wrong.
    fn from_str(s: &str) -> Result<Eui64, String> {
        let t = s.trim();
        let hex: String = if t.contains('-') || t.contains(':') {
            let sep = if t.contains('-') { '-' } else { ':' };
            let groups: Vec<&str> = t.split(sep).collect();
            if groups.len() != 8 || groups.iter().any(|g| g.len() != 2) {
                return Err(format!(
                    "{s:?} is not an EUI-64: expected 8 groups of 2 hex digits separated by '{sep}', got {} group(s)",
                    groups.len()
                ));
            }
            groups.concat()
        } else {
            t.to_string()
        };
        if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
            return Err(format!("{s:?} is not an EUI-64: {c:?} is not a hex digit"));
        }
        if hex.len() != 16 {
            return Err(format!(
                "{s:?} is not an EUI-64: {} byte(s), an EUI-64 has 8",
                hex.len() / 2
            ));
        }
        let mut b = [0u8; 8];
        hex::decode_to_slice(&hex, &mut b).map_err(|e| format!("{s:?}: {e}"))?;
        Ok(Eui64(b))
    }
}

impl serde::Serialize for Eui64 {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> serde::Deserialize<'de> for Eui64 {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Eui64, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A device range: the EUI-64s whose first `bits` bits equal those of `prefix` (`PREFIX/BITS`).
/// Parsed once, where it enters (a CLI flag, a stored account), and kept as this type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceRange {
    prefix: u64,
    bits: u8,
}

impl DeviceRange {
    /// Every EUI-64 (`00-00-00-00-00-00-00-00/0`).
    pub const ALL: DeviceRange = DeviceRange { prefix: 0, bits: 0 };

    /// Whether `id` is inside the range.
    pub fn contains(&self, id: &Eui64) -> bool {
        if self.bits == 0 {
            return true;
        }
        let v = u64::from_be_bytes(id.0);
        let mask = u64::MAX << (64 - u32::from(self.bits));
        v & mask == self.prefix & mask
    }
}

impl fmt::Display for DeviceRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Eui64(self.prefix.to_be_bytes()), self.bits)
    }
}

impl FromStr for DeviceRange {
    type Err = String;
    fn from_str(s: &str) -> Result<DeviceRange, String> {
        let (p, b) = s
            .split_once('/')
            .ok_or_else(|| format!("{s:?} is not a device range: expected PREFIX/BITS"))?;
        let prefix: Eui64 = p.parse()?;
        let bits: u8 = b
            .parse()
            .map_err(|_| format!("{s:?}: BITS must be a number from 0 to 64"))?;
        if bits > 64 {
            return Err(format!("{s:?}: BITS must be a number from 0 to 64"));
        }
        let v = u64::from_be_bytes(prefix.0);
        if bits < 64 && v << u32::from(bits) != 0 {
            return Err(format!(
                "{s:?}: the prefix has bits set beyond the first {bits}"
            ));
        }
        Ok(DeviceRange { prefix: v, bits })
    }
}

impl serde::Serialize for DeviceRange {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> serde::Deserialize<'de> for DeviceRange {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<DeviceRange, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_normalise() {
        for s in [
            "00-DB-12-34-56-78-90-01",
            "00:db:12:34:56:78:90:01",
            "00DB123456789001",
            " 00db123456789001 ",
        ] {
            assert_eq!(
                s.parse::<Eui64>().unwrap().to_string(),
                "00-DB-12-34-56-78-90-01"
            );
        }
    }

    #[test]
    fn bad_ids_say_why() {
        let e = "00-DB-12-34-56-78-90".parse::<Eui64>().unwrap_err();
        assert!(e.contains("7 group"), "{e}");
        let e = "00DB1234567890".parse::<Eui64>().unwrap_err();
        assert!(e.contains("7 byte"), "{e}");
        let e = "00-DB-12-34-56-78-90-0G".parse::<Eui64>().unwrap_err();
        assert!(e.contains("'G'"), "{e}");
        assert!("".parse::<Eui64>().is_err());
        assert!("00-DB-12-34-56-78-90-01-02".parse::<Eui64>().is_err());
    }

    #[test]
    fn ranges() {
        let r: DeviceRange = "00-DB-12-00-00-00-00-00/24".parse().unwrap();
        assert!(r.contains(&"00-DB-12-FF-00-00-00-01".parse().unwrap()));
        assert!(!r.contains(&"00-DB-13-00-00-00-00-01".parse().unwrap()));
        assert!("00-DB-12-00-00-00-00-01/24".parse::<DeviceRange>().is_err());
        assert!("00-DB-12-00-00-00-00-00/65".parse::<DeviceRange>().is_err());
        let all: DeviceRange = "00-00-00-00-00-00-00-00/0".parse().unwrap();
        assert!(all.contains(&"FF-FF-FF-FF-FF-FF-FF-FF".parse().unwrap()));
    }
}
