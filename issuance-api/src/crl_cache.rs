//! Published CRLs as relying parties fetch them: read once per file version (a publication
//! renames a new file into place, so its inode, modification time and size tell a new version) and
//! answered with the headers HTTP caches need: `application/pkix-crl`, `ETag` (and 304 for
//! `If-None-Match`), `Last-Modified` from thisUpdate, `Expires` and `Cache-Control` from
//! nextUpdate (RFC 5280 §4.2.1.13 relying parties fetch CRLs over plain HTTP; RFC 9111 caches).

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};

/// One CRL file's current content and its HTTP metadata.
#[derive(Debug)]
pub(crate) struct CachedCrl {
    version: (SystemTime, u64, u64),
    der: axum::body::Bytes,
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
        let Ok(modified) = meta.modified() else {
            return Ok(None);
        };
        // A publication renames a new file into place: a new inode, whatever the clock's
        // resolution and the size.
        let version = (
            modified,
            meta.len(),
            std::os::unix::fs::MetadataExt::ino(&meta),
        );
        if let Some(c) = self
            .files
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .filter(|c| c.version == version)
        {
            return Ok(Some(c.clone()));
        }
        let Ok(der) = tokio::fs::read(path).await else {
            return Ok(None);
        };
        // A file renamed into place between the metadata and the read is simply read again
        // on the next request: the version recorded is the one checked before reading, so
        // it can only be older than the content, never newer.
        let facts = ca_core::crl::CrlFacts::parse(&der).map_err(|e| e.to_string())?;
        let entry = Arc::new(CachedCrl {
            version,
            etag: format!("\"{}\"", hex::encode(&ca_core::sha256(&der)[..16])),
            der: der.into(),
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

impl CachedCrl {
    /// The answer to a GET: 304 when the client's `If-None-Match` names this version.
    pub(crate) fn respond(&self, request: &HeaderMap) -> Response {
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
        (headers, self.der.clone()).into_response()
    }
}
