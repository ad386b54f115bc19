//! What the handlers share: the service, the metrics, the readiness probe, and the per-account
//! limit on requests in flight.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use axum::http::StatusCode;
use ca_core::service::{Readiness, Service};
use tokio::sync::Semaphore;

use crate::error::ApiError;
use crate::metrics::Metrics;

/// What the handlers share.
pub struct AppState {
    /// The CA's use cases.
    pub service: Arc<Service>,
    /// Counters.
    pub metrics: Arc<Metrics>,
    /// Whether the HSM signs now with every key the server uses.
    pub readiness: Arc<Readiness>,
    /// Requests one account may have in flight.
    pub per_account_limit: usize,
    /// How long a batch may take at most before the client gets a 503.
    pub batch_deadline: Duration,
    /// How long `/readyz` waits for its probe.
    pub ready_deadline: Duration,
    /// Published CRLs as served.
    pub crls: crate::crl_cache::CrlCache,
    permits: Mutex<HashMap<String, Arc<Semaphore>>>,
}

impl AppState {
    /// State for the router.
    pub fn new(
        service: Arc<Service>,
        readiness: Arc<Readiness>,
        per_account_limit: usize,
        metrics: Arc<Metrics>,
    ) -> AppState {
        AppState {
            ready_deadline: readiness.sign_timeout().min(Duration::from_secs(2)),
            service,
            metrics,
            readiness,
            per_account_limit: per_account_limit.max(1),
            batch_deadline: Duration::from_secs(120),
            crls: Default::default(),
            permits: Mutex::new(HashMap::new()),
        }
    }

    /// A permit for one more request of `account`, or 429 when it has too many in flight.
    pub(crate) fn permit(
        &self,
        account: &str,
    ) -> Result<tokio::sync::OwnedSemaphorePermit, ApiError> {
        let sem = self
            .permits
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(account.to_string())
            .or_insert_with(|| Arc::new(Semaphore::new(self.per_account_limit)))
            .clone();
        sem.try_acquire_owned().map_err(|_| {
            ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                format!(
                    "account {account} already has {} requests in flight",
                    self.per_account_limit
                ),
            )
        })
    }

    /// Runs blocking service work on tokio's blocking pool; a refusal or failure becomes its
    /// problem document (and is counted).
    pub(crate) async fn blocking<T: Send + 'static>(
        self: &Arc<Self>,
        f: impl FnOnce(&Service) -> Result<T, ca_core::service::ServiceError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let service = self.service.clone();
        let r = tokio::task::spawn_blocking(move || f(&service))
            .await
            .map_err(ApiError::internal)?;
        r.map_err(|e| self.refuse(e))
    }

    /// A use case's refusal as the API's answer, counted in the metrics.
    pub(crate) fn refuse(&self, e: ca_core::service::ServiceError) -> ApiError {
        self.metrics.refused(e.code());
        if matches!(e.code(), "hsm-unavailable" | "store-unavailable") {
            // Real work saw the HSM fail: /readyz probes again instead of answering from a
            // probe made before.
            self.readiness.invalidate();
        }
        ApiError::from(e)
    }
}
