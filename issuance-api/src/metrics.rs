//! Counters for `/metrics` (Prometheus text format) and the signer wrapper that times HSM
//! signatures into them.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ca_core::service::ItemResult;

/// What the server counts.
#[derive(Debug, Default)]
pub struct Metrics {
    /// HSM signatures made through [`TimedSigner`].
    pub signatures: AtomicU64,
    /// Their total time, microseconds.
    pub sign_micros: AtomicU64,
    issued: AtomicU64,
    existing: AtomicU64,
    refused: Mutex<BTreeMap<String, u64>>,
    batches: AtomicU64,
    batch_micros: AtomicU64,
}

impl Metrics {
    /// A refused request or item, by its code.
    pub fn refused(&self, code: &str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(code.to_string())
            .or_default() += 1;
    }

    /// A certificate issued (`existing`: answered from an earlier issuance).
    pub fn issued(&self, existing: bool) {
        let c = if existing {
            &self.existing
        } else {
            &self.issued
        };
        c.fetch_add(1, Ordering::Relaxed);
    }

    /// Each item of a batch's answer.
    pub fn items(&self, results: &[ItemResult]) {
        for r in results {
            match (&r.error, r.existing) {
                (None, existing) => self.issued(existing.unwrap_or(false)),
                (Some(e), _) => self.refused(e["code"].as_str().unwrap_or("internal")),
            }
        }
    }

    /// A batch answered after `took`.
    pub fn batch(&self, took: Duration) {
        self.batches.fetch_add(1, Ordering::Relaxed);
        self.batch_micros
            .fetch_add(took.as_micros() as u64, Ordering::Relaxed);
    }

    /// The Prometheus text exposition; `sessions` is (in use, in the pool), `probes` the
    /// readiness probes made of the HSM.
    pub fn render(&self, sessions: (usize, usize), probes: u64) -> String {
        let mut out = String::new();
        let mut metric = |name: &str, kind: &str, help: &str, lines: &[(String, String)]| {
            let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
            for (suffix, value) in lines {
                let _ = writeln!(out, "{name}{suffix} {value}");
            }
        };
        let load = |a: &AtomicU64| a.load(Ordering::Relaxed).to_string();
        metric(
            "meterpki_certificates_issued_total",
            "counter",
            "Certificates issued through the API.",
            &[(String::new(), load(&self.issued))],
        );
        metric(
            "meterpki_certificates_existing_total",
            "counter",
            "Requests answered with a certificate issued before.",
            &[(String::new(), load(&self.existing))],
        );
        let refused: Vec<(String, String)> = self
            .refused
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|(k, v)| (format!("{{reason=\"{k}\"}}"), v.to_string()))
            .collect();
        metric(
            "meterpki_refused_total",
            "counter",
            "Refused requests and items, by reason.",
            &refused,
        );
        metric(
            "meterpki_hsm_sign_seconds",
            "summary",
            "Time the HSM takes to sign.",
            &[
                ("_count".into(), load(&self.signatures)),
                (
                    "_sum".into(),
                    (self.sign_micros.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
                ),
            ],
        );
        metric(
            "meterpki_hsm_sessions_in_use",
            "gauge",
            "HSM sessions lent to a request now.",
            &[(String::new(), sessions.0.to_string())],
        );
        metric(
            "meterpki_hsm_sessions_max",
            "gauge",
            "HSM sessions in the pool.",
            &[(String::new(), sessions.1.to_string())],
        );
        metric(
            "meterpki_hsm_readiness_probes_total",
            "counter",
            "Readiness probes made of the HSM (each signs with every key; /readyz answers from the last one while it is younger than server.ready_probe_interval_ms).",
            &[(String::new(), probes.to_string())],
        );
        metric(
            "meterpki_batch_seconds",
            "summary",
            "Time to answer a batch.",
            &[
                ("_count".into(), load(&self.batches)),
                (
                    "_sum".into(),
                    (self.batch_micros.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
                ),
            ],
        );
        out
    }
}

/// A `Signer` that times every signature into [`Metrics`] (the HSM sign latency on /metrics).
#[derive(Debug)]
pub struct TimedSigner {
    /// The signer.
    pub inner: Arc<dyn ca_core::Signer>,
    /// Where the time goes.
    pub metrics: Arc<Metrics>,
}

impl ca_core::Signer for TimedSigner {
    fn algorithm(&self) -> ca_core::KeyAlgorithm {
        self.inner.algorithm()
    }
    fn public_key(&self) -> &spki::SubjectPublicKeyInfoOwned {
        self.inner.public_key()
    }
    fn sign(&self, message: &[u8]) -> Result<Vec<u8>, ca_core::SignError> {
        self.timed(|| self.inner.sign(message))
    }
    fn sign_digest(&self, digest: &[u8]) -> Result<Vec<u8>, ca_core::SignError> {
        self.timed(|| self.inner.sign_digest(digest))
    }
    fn verifies_signatures(&self) -> bool {
        self.inner.verifies_signatures()
    }
}

impl TimedSigner {
    fn timed(
        &self,
        sign: impl FnOnce() -> Result<Vec<u8>, ca_core::SignError>,
    ) -> Result<Vec<u8>, ca_core::SignError> {
        let t = Instant::now();
        let r = sign();
        self.metrics.signatures.fetch_add(1, Ordering::Relaxed);
        self.metrics
            .sign_micros
            .fetch_add(t.elapsed().as_micros() as u64, Ordering::Relaxed);
        r
    }
}
