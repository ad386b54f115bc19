//! What a published CRL says of itself (for `status`, `/metrics`, HTTP caching and a server's
//! start), read without decoding its entries: a full CRL of a million entries is read from
//! its file in one pass, holding only its header fields and extensions. Its structure is
//! checked to the last byte (a damaged or cut file is not a CRL); its signature is not.
//!
//! The `der` crate decodes from a slice held whole; this walks the DER's tags and lengths from
//! a reader (X.690 §8.1: one-byte tags, definite lengths), counts the entries by their headers
//! and hands the small fields (the times, the extensions) to `der` and `x509-cert`.

use std::io::Read;
use std::path::Path;

use der::Decode;
use serde::Serialize;

/// What a published CRL says of itself.
#[derive(Debug, Clone, Serialize)]
pub struct CrlFacts {
    /// cRLNumber (0 when absent).
    pub crl_number: u64,
    /// Revoked certificates listed.
    pub entries: usize,
    /// thisUpdate, Unix seconds.
    pub this_update: i64,
    /// nextUpdate, Unix seconds (None when absent).
    pub next_update: Option<i64>,
}

/// Why a file is not a readable CRL.
#[derive(Debug, thiserror::Error)]
#[error("not a CRL: {0}")]
pub struct CrlFactsError(String);

fn bad(what: impl Into<String>) -> CrlFactsError {
    CrlFactsError(what.into())
}

/// The largest field read whole (the crlExtensions): our own are a few hundred bytes.
const MAX_FIELD: u64 = 1 << 20;

struct Walker<R> {
    r: R,
}

impl<R: Read> Walker<R> {
    fn byte(&mut self) -> Result<u8, CrlFactsError> {
        let mut b = [0u8];
        self.r
            .read_exact(&mut b)
            .map_err(|e| bad(format!("truncated ({e})")))?;
        Ok(b[0])
    }

    /// A tag and a definite length; the header's own size.
    fn header(&mut self) -> Result<(u8, u64, u64), CrlFactsError> {
        let tag = self.byte()?;
        if tag & 0x1f == 0x1f {
            return Err(bad("a multi-byte tag"));
        }
        let first = self.byte()?;
        if first < 0x80 {
            return Ok((tag, u64::from(first), 2));
        }
        let n = first & 0x7f;
        if n == 0 || n > 8 {
            return Err(bad("an indefinite or oversized length"));
        }
        let mut len = 0u64;
        for _ in 0..n {
            len = (len << 8) | u64::from(self.byte()?);
        }
        Ok((tag, len, 2 + u64::from(n)))
    }

    /// The next field's tag and length within a SEQUENCE of which `left` bytes are unread.
    fn field(&mut self, left: &mut u64) -> Result<Option<(u8, u64)>, CrlFactsError> {
        if *left == 0 {
            return Ok(None);
        }
        let (tag, len, hlen) = self.header()?;
        *left = left
            .checked_sub(hlen + len)
            .ok_or_else(|| bad("a field runs past the SEQUENCE that holds it"))?;
        Ok(Some((tag, len)))
    }

    fn skip(&mut self, len: u64) -> Result<(), CrlFactsError> {
        let copied = std::io::copy(&mut (&mut self.r).take(len), &mut std::io::sink())
            .map_err(|e| bad(e.to_string()))?;
        if copied != len {
            return Err(bad("truncated"));
        }
        Ok(())
    }

    fn content(&mut self, len: u64) -> Result<Vec<u8>, CrlFactsError> {
        if len > MAX_FIELD {
            return Err(bad(format!("a field of {len} bytes")));
        }
        let mut v = vec![0u8; len as usize];
        self.r
            .read_exact(&mut v)
            .map_err(|e| bad(format!("truncated ({e})")))?;
        Ok(v)
    }

    /// A time field's value in Unix seconds (the tag and length already read).
    fn time(&mut self, tag: u8, len: u64) -> Result<i64, CrlFactsError> {
        let mut tlv = vec![tag, len as u8];
        if len >= 0x80 {
            return Err(bad("a time field too long"));
        }
        tlv.extend(self.content(len)?);
        let t = x509_cert::time::Time::from_der(&tlv).map_err(|e| bad(e.to_string()))?;
        Ok(t.to_unix_duration().as_secs() as i64)
    }
}

const SEQUENCE: u8 = 0x30;
const BIT_STRING: u8 = 0x03;
const INTEGER: u8 = 0x02;
const UTC_TIME: u8 = 0x17;
const GENERALIZED_TIME: u8 = 0x18;
const EXTENSIONS: u8 = 0xa0;

impl CrlFacts {
    /// Reads the facts from a CRL's DER.
    pub fn parse(der: &[u8]) -> Result<CrlFacts, CrlFactsError> {
        CrlFacts::from_reader(der)
    }

    /// Reads the facts from a CRL file, in one pass, without holding its entries.
    pub fn read(path: &Path) -> Result<CrlFacts, CrlFactsError> {
        let f = std::fs::File::open(path).map_err(|e| bad(format!("{}: {e}", path.display())))?;
        CrlFacts::from_reader(std::io::BufReader::with_capacity(1 << 16, f))
    }

    /// Reads the facts from a CRL's DER, from any reader.
    pub fn from_reader(r: impl Read) -> Result<CrlFacts, CrlFactsError> {
        let mut w = Walker { r };
        let (tag, outer_len, _) = w.header()?;
        if tag != SEQUENCE {
            return Err(bad("the CertificateList is not a SEQUENCE"));
        }
        // The CertificateList's three fields (RFC 5280 §5.1), counting what is left of it.
        let mut outer = outer_len;
        let Some((SEQUENCE, tbs_len)) = w.field(&mut outer)? else {
            return Err(bad("the TBSCertList is not a SEQUENCE"));
        };
        // Each field of the TBSCertList in turn (RFC 5280 §5.1), counting what is left of it.
        let mut left = tbs_len;
        let mut field = w.field(&mut left)?;
        if let Some((INTEGER, len)) = field {
            w.skip(len)?;
            field = w.field(&mut left)?;
        }
        for what in ["signature", "issuer"] {
            match field {
                Some((SEQUENCE, len)) => w.skip(len)?,
                _ => return Err(bad(format!("no {what}"))),
            }
            field = w.field(&mut left)?;
        }
        let this_update = match field {
            Some((tag @ (UTC_TIME | GENERALIZED_TIME), len)) => w.time(tag, len)?,
            _ => return Err(bad("no thisUpdate")),
        };
        field = w.field(&mut left)?;
        let mut next_update = None;
        if let Some((tag @ (UTC_TIME | GENERALIZED_TIME), len)) = field {
            next_update = Some(w.time(tag, len)?);
            field = w.field(&mut left)?;
        }
        let mut entries = 0usize;
        if let Some((SEQUENCE, len)) = field {
            let mut list = len;
            while list > 0 {
                let (tag, len, hlen) = w.header()?;
                if tag != SEQUENCE {
                    return Err(bad("a revoked certificate is not a SEQUENCE"));
                }
                list = list
                    .checked_sub(hlen + len)
                    .ok_or_else(|| bad("an entry runs past the revoked certificates"))?;
                w.skip(len)?;
                entries += 1;
            }
            field = w.field(&mut left)?;
        }
        let mut crl_number = 0;
        if let Some((EXTENSIONS, len)) = field {
            let exts = x509_cert::ext::Extensions::from_der(&w.content(len)?)
                .map_err(|e| bad(format!("crlExtensions: {e}")))?;
            crl_number = exts
                .iter()
                .find(|e| e.extn_id == const_oid::db::rfc5280::ID_CE_CRL_NUMBER)
                .and_then(|e| der::asn1::Uint::from_der(e.extn_value.as_bytes()).ok())
                .map(|u| {
                    u.as_bytes()
                        .iter()
                        .fold(0u64, |n, b| n.wrapping_shl(8) | u64::from(*b))
                })
                .unwrap_or(0);
            field = w.field(&mut left)?;
        }
        if field.is_some() {
            return Err(bad("an unexpected field in the TBSCertList"));
        }
        // Then signatureAlgorithm and signatureValue, and nothing after: a file damaged or
        // cut anywhere is not a CRL (its signature is the relying party's to check).
        match w.field(&mut outer)? {
            Some((SEQUENCE, len)) => w.skip(len)?,
            _ => return Err(bad("no signatureAlgorithm")),
        }
        match w.field(&mut outer)? {
            Some((BIT_STRING, len)) if len >= 2 => w.skip(len)?,
            _ => return Err(bad("no signatureValue")),
        }
        if outer != 0 {
            return Err(bad("an unexpected field after the signature"));
        }
        if w.r.read(&mut [0u8]).map_err(|e| bad(e.to_string()))? != 0 {
            return Err(bad("bytes after the CertificateList"));
        }
        Ok(CrlFacts {
            crl_number,
            entries,
            this_update,
            next_update,
        })
    }
}
