//! Published CRLs as relying parties fetch them: read once per file version (a publication
//! renames a new file into place, so its inode, modification time and size tell a new version) and
//! answered with the headers HTTP caches need: `application/pkix-crl`, `ETag` (and 304 for
//! `If-None-Match`), `Last-Modified` from thisUpdate, `Expires` and `Cache-Control` from
//! nextUpdate (RFC 5280 §4.2.1.13 relying parties fetch CRLs over plain HTTP; RFC 9111 caches).
//!
//! A CRL up to [`IN_MEMORY_MAX`] (a shard's) is held in memory; a larger one (a full CRL of a
//! million entries is 42 MB) is read once for its facts and digest, without holding it, and
//! streamed from its file to each client, so that a server's memory does not grow with the
//! number of revocations.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// The largest CRL held in memory: larger ones are streamed from their file.
pub(crate) const IN_MEMORY_MAX: u64 = 4 << 20;

type Version = (SystemTime, u64, u64);

fn version_of(meta: &std::fs::Metadata) -> Option<Version> {
    // A publication renames a new file into place: a new inode, whatever the clock's
    // resolution and the size.
    Some((
        meta.modified().ok()?,
        meta.len(),
        std::os::unix::fs::MetadataExt::ino(meta),
    ))
}

/// One CRL file's current content and its HTTP metadata.
#[derive(Debug)]
pub(crate) struct CachedCrl {
    version: Version,
    path: PathBuf,
    /// The DER, when small enough to hold; else it is streamed from `path`.
    der: Option<axum::body::Bytes>,
    etag: String,
    this_update: i64,
    next_update: Option<i64>,
    /// What the CRL says of itself.
    pub(crate) facts: ca_core::crl::CrlFacts,
}

/// The CRLs read so far, by path.
#[derive(Debug, Default)]
pub struct CrlCache {
    files: Mutex<HashMap<PathBuf, Arc<CachedCrl>>>,
}

fn http_date(unix: i64) -> Option<HeaderValue> {
    let f = time::macros::format_description!(
        "[weekday repr:short], [day] [month repr:short] [year] [hour]:[minute]:[second] GMT"
    );
    let t = time::OffsetDateTime::from_unix_timestamp(unix).ok()?;
    HeaderValue::from_str(&t.format(&f).ok()?).ok()
}

impl CrlCache {
    /// The CRL at `path` as published now, None when there is none, or why the file is not a
    /// CRL (damaged).
    pub(crate) async fn get(&self, path: &Path) -> Result<Option<Arc<CachedCrl>>, String> {
        let Ok(meta) = tokio::fs::metadata(path).await else {
            return Ok(None);
        };
        let Some(mut version) = version_of(&meta) else {
            return Ok(None);
        };
        if let Some(c) = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .filter(|c| c.version == version)
        {
            return Ok(Some(c.clone()));
        }
        // The file is opened once: its version, facts, digest and (when small) bytes all come
        // from that one handle, whatever a publication renames into place meanwhile.
        let file = path.to_path_buf();
        let read = tokio::task::spawn_blocking(move || read_crl(&file))
            .await
            .map_err(|e| e.to_string())?;
        let Some((read_version, der, facts, digest)) = read? else {
            return Ok(None);
        };
        version = read_version;
        let entry = Arc::new(CachedCrl {
            version,
            path: path.to_path_buf(),
            etag: format!("\"{}\"", hex::encode(&digest[..16])),
            der,
            this_update: facts.this_update,
            next_update: facts.next_update,
            facts,
        });
        self.files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(path.to_path_buf(), entry.clone());
        Ok(Some(entry))
    }
}

/// What one open of a CRL file gives: its version, its bytes when small, its facts and SHA-256.
type Read = (
    Version,
    Option<axum::body::Bytes>,
    ca_core::crl::CrlFacts,
    [u8; 32],
);

/// Reads the CRL at `path` through one handle (None when it is gone): a small one whole; a
/// large one twice in a stream, for its facts and for its digest, without holding it.
fn read_crl(path: &Path) -> Result<Option<Read>, String> {
    use sha2::Digest;
    use std::io::Read as _;
    let Ok(mut file) = std::fs::File::open(path) else {
        return Ok(None);
    };
    let Some(version) = file.metadata().ok().as_ref().and_then(version_of) else {
        return Ok(None);
    };
    if version.1 <= IN_MEMORY_MAX {
        let mut der = Vec::new();
        file.read_to_end(&mut der).map_err(|e| e.to_string())?;
        let facts = ca_core::crl::CrlFacts::parse(&der).map_err(|e| e.to_string())?;
        let digest = ca_core::sha256(&der);
        return Ok(Some((version, Some(der.into()), facts, digest)));
    }
    let facts = ca_core::crl::CrlFacts::from_reader(std::io::BufReader::new(&file))
        .map_err(|e| e.to_string())?;
    let mut hasher = sha2::Sha256::new();
    std::io::Seek::rewind(&mut file).map_err(|e| e.to_string())?;
    std::io::copy(&mut file, &mut hasher).map_err(|e| e.to_string())?;
    Ok(Some((version, None, facts, hasher.finalize().into())))
}

impl CachedCrl {
    /// The CRL's content for one response: the bytes held, or its file opened, if the file is
    /// still this version (else None: a publication replaced it, and the caller reads it again).
    pub(crate) async fn body(&self) -> Option<axum::body::Body> {
        if let Some(der) = &self.der {
            return Some(axum::body::Body::from(der.clone()));
        }
        let file = tokio::fs::File::open(&self.path).await.ok()?;
        let meta = file.metadata().await.ok()?;
        // The open file is the one whose facts and ETag are cached, or it is not served.
        if version_of(&meta)? != self.version {
            return None;
        }
        Some(axum::body::Body::from_stream(
            tokio_util::io::ReaderStream::with_capacity(file, 1 << 16),
        ))
    }

    /// The answer to a GET: 304 when the client's `If-None-Match` names this version.
    pub(crate) fn respond(&self, request: &HeaderMap, body: axum::body::Body) -> Response {
        let now = time::OffsetDateTime::now_utc().unix_timestamp();
        let mut headers = HeaderMap::new();
        if let Ok(v) = HeaderValue::from_str(&self.etag) {
            headers.insert(header::ETAG, v);
        }
        // Fresh until nextUpdate at most, and never longer than an hour: a revocation is
        // published at once and relying parties behind a cache must see it soon.
        let max_age = self.next_update.map_or(0, |n| (n - now).clamp(0, 3600));
        if let Ok(v) = HeaderValue::from_str(&format!("public, max-age={max_age}, no-transform")) {
            headers.insert(header::CACHE_CONTROL, v);
        }
        if let Some(v) = self.next_update.and_then(http_date) {
            headers.insert(header::EXPIRES, v);
        }
        if let Some(v) = http_date(self.this_update) {
            headers.insert(header::LAST_MODIFIED, v);
        }
        let matches = request
            .get_all(header::IF_NONE_MATCH)
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(','))
            .any(|t| {
                let t = t.trim();
                t == "*" || t.trim_start_matches("W/") == self.etag
            });
        if matches {
            return (StatusCode::NOT_MODIFIED, headers).into_response();
        }
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/pkix-crl"),
        );
        let len = self.der.as_ref().map_or(self.version.1, |d| d.len() as u64);
        if let Ok(v) = HeaderValue::from_str(&len.to_string()) {
            headers.insert(header::CONTENT_LENGTH, v);
        }
        (headers, body).into_response()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use der::Encode;
    use x509_cert::crl::{CertificateList, RevokedCert, TbsCertList};

    /// A CRL-shaped DER of `n` entries (the cache reads its facts; nothing here checks the
    /// signature, which is a placeholder).
    fn crl_der(n: usize, number: u8) -> Vec<u8> {
        let t = x509_cert::time::Time::UtcTime(
            der::asn1::UtcTime::from_unix_duration(std::time::Duration::from_secs(1_790_000_000))
                .unwrap(),
        );
        let alg = spki::AlgorithmIdentifierOwned {
            oid: der::asn1::ObjectIdentifier::new_unwrap("1.2.840.10045.4.3.2"),
            parameters: None,
        };
        let revoked = (0..n)
            .map(|i| RevokedCert {
                serial_number: x509_cert::serial_number::SerialNumber::new(
                    &(i as u64 + 1).to_be_bytes(),
                )
                .unwrap(),
                revocation_date: t,
                crl_entry_extensions: None,
            })
            .collect();
        let number = x509_cert::ext::pkix::crl::CrlNumber(der::asn1::Uint::new(&[number]).unwrap());
        CertificateList {
            tbs_cert_list: TbsCertList {
                version: x509_cert::Version::V2,
                signature: alg.clone(),
                issuer: Default::default(),
                this_update: t,
                next_update: Some(t),
                revoked_certificates: Some(revoked),
                crl_extensions: Some(vec![x509_cert::ext::Extension {
                    extn_id: const_oid_crl_number(),
                    critical: false,
                    extn_value: der::asn1::OctetString::new(number.to_der().unwrap()).unwrap(),
                }]),
            },
            signature_algorithm: alg,
            signature: der::asn1::BitString::from_bytes(&[1, 2, 3]).unwrap(),
        }
        .to_der()
        .unwrap()
    }

    fn const_oid_crl_number() -> der::asn1::ObjectIdentifier {
        der::asn1::ObjectIdentifier::new_unwrap("2.5.29.20")
    }

    /// Every frame of a body, in order: what a client receives.
    async fn body_bytes(mut body: axum::body::Body) -> Vec<u8> {
        let mut out = Vec::new();
        while let Some(frame) = std::future::poll_fn(|cx| {
            http_body::Body::poll_frame(std::pin::Pin::new(&mut body), cx)
        })
        .await
        {
            if let Ok(data) = frame.unwrap().into_data() {
                out.extend_from_slice(&data);
            }
        }
        out
    }

    /// A small CRL is held in memory; a large one (past `IN_MEMORY_MAX`) is streamed from its
    /// file, byte for byte, with the same facts and ETag rules; a file replaced after its facts
    /// were read is never served under the old version's ETag.
    #[tokio::test]
    async fn a_large_crl_is_streamed_from_its_file_and_a_replaced_one_is_read_again() {
        let dir = tempfile::tempdir().unwrap();
        let cache = CrlCache::default();
        let small = dir.path().join("0.crl");
        std::fs::write(&small, crl_der(10, 1)).unwrap();
        let c = cache.get(&small).await.unwrap().unwrap();
        assert!(c.der.is_some());
        assert_eq!(c.facts.entries, 10);
        assert_eq!(body_bytes(c.body().await.unwrap()).await, crl_der(10, 1));

        let large = dir.path().join("full.crl");
        let der = crl_der(400_000, 2);
        assert!(der.len() as u64 > IN_MEMORY_MAX, "{}", der.len());
        std::fs::write(&large, &der).unwrap();
        let c = cache.get(&large).await.unwrap().unwrap();
        assert!(c.der.is_none(), "a large CRL is not held in memory");
        assert_eq!((c.facts.entries, c.facts.crl_number), (400_000, 2));
        assert_eq!(
            c.etag,
            format!("\"{}\"", hex::encode(&ca_core::sha256(&der)[..16]))
        );
        let resp = c.respond(&HeaderMap::new(), c.body().await.unwrap());
        assert_eq!(
            resp.headers()[header::CONTENT_LENGTH],
            der.len().to_string().as_str()
        );
        assert_eq!(body_bytes(resp.into_body()).await, der);

        // A publication renames a new file into place: the old entry no longer serves it.
        let newer = crl_der(400_001, 3);
        let tmp = dir.path().join(".full.crl.tmp");
        std::fs::write(&tmp, &newer).unwrap();
        std::fs::rename(&tmp, &large).unwrap();
        assert!(c.body().await.is_none());
        let c = cache.get(&large).await.unwrap().unwrap();
        assert_eq!(c.facts.crl_number, 3);
        assert_eq!(body_bytes(c.body().await.unwrap()).await, newer);
    }
}
