//! Planning a meter's update: where it goes and which keys it drops and adds. Read-only.

use std::sync::Arc;

use der::asn1::ObjectIdentifier;
use der::Decode;
use spki::SubjectPublicKeyInfoOwned;
use x509_cert::Certificate;

use super::{active, Churn, ChurnError};
use crate::model::Eui64;
use crate::store::{CertRecord, Store};
use crate::tamp::PreparedUpdates;
use crate::CaKind;

/// One meter's planned update: where it goes and which keys change.
#[derive(Clone, Debug)]
pub struct Plan {
    /// The meter.
    pub device: Eui64,
    /// Its hwType, from its certificate's record.
    pub hw_type: ObjectIdentifier,
    /// The supplier serving it now.
    pub from: Option<String>,
    /// The supplier serving it after (equal to `from` for a key change).
    pub to: String,
    /// The keys the meter drops and the certificates it adds, encoded once for many meters.
    pub updates: Arc<PreparedUpdates>,
}

/// The hwType of a meter: kept with its first meter certificate's record.
pub(super) fn meter_hw_type(
    store: &dyn Store,
    device: &Eui64,
) -> Result<ObjectIdentifier, ChurnError> {
    let id = device.to_string();
    let certs = store.certs_of_subject(&id)?;
    let Some(rec) = certs.iter().find(|r| r.issuer == CaKind::Device) else {
        return Err(ChurnError::refused(
            "unknown-meter",
            format!("device_id {id}: no meter certificate was ever issued to it"),
        ));
    };
    rec.hw_type.ok_or_else(|| {
        ChurnError::Internal(format!("the certificate record of {id} names no hwType"))
    })
}

fn cert_of(rec: &CertRecord) -> Result<Certificate, ChurnError> {
    Certificate::from_der(&rec.der)
        .map_err(|e| ChurnError::Internal(format!("stored certificate {}: {e}", rec.serial_hex())))
}

impl Churn {
    /// A supplier meters can be moved to: registered, active, with at least one key.
    pub(crate) fn target(&self, to: &str, field: &str) -> Result<Vec<CertRecord>, ChurnError> {
        active(self.store.as_ref(), to, field)?;
        let certs = self.active_certs(to)?;
        if certs.is_empty() {
            return Err(ChurnError::refused(
                "supplier-no-keys",
                format!("supplier {to} has no active certificate: enrol its keys first (meterpki supplier enrol), or its meters would trust no supplier"),
            ));
        }
        Ok(certs)
    }

    /// The update list: drop the keys of `remove`, add the certificates of `add`.
    pub(crate) fn prepare(
        remove: &[CertRecord],
        add: &[CertRecord],
    ) -> Result<Arc<PreparedUpdates>, ChurnError> {
        let keys: Vec<SubjectPublicKeyInfoOwned> = remove
            .iter()
            .map(|r| cert_of(r).map(|c| c.tbs_certificate.subject_public_key_info))
            .collect::<Result<_, _>>()?;
        let certs: Vec<Certificate> = add.iter().map(cert_of).collect::<Result<_, _>>()?;
        Ok(Arc::new(PreparedUpdates::new(&keys, &certs)?))
    }

    /// Plans the first assignment of a meter. Assigning it again to the supplier that already
    /// serves it is harmless (`Ok(None)`); to another is refused (that is a change of supplier).
    pub fn plan_assign(&self, device: &Eui64, to: &str) -> Result<Option<Plan>, ChurnError> {
        let hw_type = meter_hw_type(self.store.as_ref(), device)?;
        match self.store.meter_supplier(&device.to_string())? {
            Some(cur) if cur == to => return Ok(None),
            Some(cur) => {
                return Err(ChurnError::refused(
                    "meter-assigned",
                    format!("device_id {device} is served by supplier {cur}: use `meterpki meter change-supplier`"),
                ))
            }
            None => {}
        }
        let add = self.target(to, "--to")?;
        Ok(Some(Plan {
            device: *device,
            hw_type,
            from: None,
            to: to.to_string(),
            updates: Churn::prepare(&[], &add)?,
        }))
    }

    /// Plans a change of supplier for one meter.
    pub fn plan_change(&self, device: &Eui64, to: &str) -> Result<Plan, ChurnError> {
        let hw_type = meter_hw_type(self.store.as_ref(), device)?;
        let Some(from) = self.store.meter_supplier(&device.to_string())? else {
            return Err(ChurnError::refused(
                "meter-unassigned",
                format!("device_id {device} has no supplier yet: use `meterpki meter assign`"),
            ));
        };
        if from == to {
            return Err(ChurnError::refused(
                "same-supplier",
                format!("device_id {device} is already served by supplier {to}"),
            ));
        }
        let add = self.target(to, "--to")?;
        let remove = self.active_certs(&from)?;
        Ok(Plan {
            device: *device,
            hw_type,
            from: Some(from),
            to: to.to_string(),
            updates: Churn::prepare(&remove, &add)?,
        })
    }
}
