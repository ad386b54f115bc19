//! Looking certificates up: one view of a stored certificate and its status, for `show` and the
//! API's lookups, each filtered by what the caller may see.

use serde::Serialize;

use super::{authorize, Action, Actor, Service, ServiceError};
use crate::model::{Eui64, Revocation};
use crate::store::{CertRecord, Store};
use crate::CaKind;

/// A stored certificate and where it stands.
#[derive(Clone, Debug, Serialize)]
pub struct CertView {
    /// The record.
    #[serde(skip)]
    pub record: CertRecord,
    /// Its revocation, if revoked.
    pub revocation: Option<Revocation>,
    /// Whether it is the active certificate of its subject and usage.
    pub active: bool,
}

impl CertView {
    /// `active`, `revoked` or `inactive` (replaced, or superseded without revocation).
    pub fn status(&self) -> &'static str {
        match (self.revocation, self.active) {
            (Some(_), _) => "revoked",
            (None, true) => "active",
            (None, false) => "inactive",
        }
    }

    fn of(store: &dyn Store, record: CertRecord) -> Result<CertView, ServiceError> {
        let revocation = store.revocation(&record.serial)?;
        let active = store
            .active_cert(&record.subject_id, &record.profile)?
            .is_some_and(|a| a.serial == record.serial);
        Ok(CertView {
            record,
            revocation,
            active,
        })
    }
}

impl Service {
    /// A certificate by serial, if the caller may see it ("not found" otherwise).
    pub fn certificate(&self, actor: &Actor, serial: &[u8]) -> Result<CertView, ServiceError> {
        let store = self.store()?;
        let rec = store
            .cert(serial)?
            .ok_or_else(|| ServiceError::not_found("no such certificate"))?;
        authorize(actor, Action::See(&rec))?;
        CertView::of(store.as_ref(), rec)
    }

    /// Every certificate of a subject (a device or a party), oldest first: an operator's view.
    pub fn certificates_of(
        &self,
        actor: &Actor,
        id: &Eui64,
    ) -> Result<Vec<CertView>, ServiceError> {
        authorize(actor, Action::Administer)?;
        self.views(id, |_| true)
    }

    /// The meter certificates of a device that the caller may see.
    pub fn device_certificates(
        &self,
        actor: &Actor,
        id: &Eui64,
    ) -> Result<Vec<CertView>, ServiceError> {
        authorize(actor, Action::ListDevice)?;
        self.views(id, |r| {
            r.issuer == CaKind::Device && authorize(actor, Action::See(r)).is_ok()
        })
    }

    /// The certificates of a supplier, for an operator or the supplier itself.
    pub fn supplier_certificates(
        &self,
        actor: &Actor,
        id: &Eui64,
    ) -> Result<Vec<CertView>, ServiceError> {
        authorize(actor, Action::ListSupplier(id))?;
        self.views(id, |r| r.issuer == CaKind::Organisation)
    }

    fn views(
        &self,
        id: &Eui64,
        keep: impl Fn(&CertRecord) -> bool,
    ) -> Result<Vec<CertView>, ServiceError> {
        let store = self.store()?;
        store
            .certs_of_subject(&id.to_string())?
            .into_iter()
            .filter(|r| keep(r))
            .map(|r| CertView::of(store.as_ref(), r))
            .collect()
    }
}
