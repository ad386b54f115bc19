//! API accounts: created with their client certificate in one write, disabled with their
//! certificate's revocation in one write, and found from a client certificate on every request.

use std::path::PathBuf;

use der::Decode;
use serde::Serialize;
use serde_json::json;

use super::error::io_at;
use super::{authorize, unix_now, Action, Actor, Service, ServiceError};
use crate::audit::AuditEntry;
use crate::fsutil::{write_new_secret, StagedFile};
use crate::issue::{tls_request, KeySource, Subject};
use crate::model::{Account, DeviceRange, Eui64, Reason, Revocation, Role, SupplierState};
use crate::store::{Op, Revoked, Txn};
use crate::CaKind;

/// Where an account's client key comes from.
#[derive(Clone, Debug)]
pub enum ClientKey {
    /// The client's own CSR (PEM, or base64 DER): no key file is written.
    Csr(String),
    /// Generated here for the client and written 0600 beside its certificate.
    Generate,
}

/// What `account add` is asked for (already parsed: role, range and supplier are typed).
#[derive(Clone, Debug)]
pub struct NewAccount {
    /// Its role.
    pub role: Role,
    /// Unique name: the certificate's CN, and the credentials' file names.
    pub name: String,
    /// Factory accounts: the devices the line may name.
    pub device_range: Option<DeviceRange>,
    /// Supplier accounts: the supplier's entity ID.
    pub supplier: Option<Eui64>,
    /// The key.
    pub key: ClientKey,
    /// Factory accounts: allow bare public keys instead of CSRs.
    pub bare_public_key: bool,
    /// Where the credentials go.
    pub out: PathBuf,
}

/// An account made, and where its credentials are.
#[derive(Clone, Debug, Serialize)]
pub struct AccountCreated {
    /// Name.
    pub account: String,
    /// Role.
    pub role: Role,
    /// Factory range.
    pub device_range: Option<DeviceRange>,
    /// Supplier entity ID.
    pub supplier: Option<String>,
    /// Client certificate serial, hex.
    pub serial: String,
    /// `DIR/<name>.pem`: the certificate and the Access CA.
    pub certificate: PathBuf,
    /// `DIR/<name>.key` (0600), when generated here.
    pub key: Option<PathBuf>,
    /// `DIR/ca.pem`: the chain that certifies the server.
    pub ca: PathBuf,
}

/// What disabling did.
#[derive(Clone, Debug, Serialize, serde::Deserialize)]
pub struct Disabled {
    /// Name.
    pub account: String,
    /// True when this run disabled it (false: it was disabled before).
    pub disabled_now: bool,
    /// The client certificate, revoked (privilegeWithdrawn).
    pub certificate_revoked: String,
    /// The Access CA's CRLs republished.
    pub published: Vec<crate::crl::Published>,
}

impl Service {
    /// Creates an account and its `api-client` certificate from the Access CA. The certificate
    /// and the account are stored in one write with their audit record; the credential files
    /// are written first and removed again if that write fails.
    pub fn add_account(
        &self,
        actor: &Actor,
        a: NewAccount,
    ) -> Result<AccountCreated, ServiceError> {
        authorize(actor, Action::Administer)?;
        crate::model::check_account_name(&a.name)
            .map_err(|e| ServiceError::invalid("name", format!("--name: {e}")))?;
        match (a.role, &a.device_range, &a.supplier) {
            (Role::Factory, None, _) => return Err(ServiceError::invalid(
                "device-range",
                "a factory account needs --device-range PREFIX/BITS: the devices its line may name",
            )),
            (Role::Factory, _, Some(_)) | (Role::Operator, _, Some(_)) => {
                return Err(ServiceError::invalid(
                    "supplier",
                    "--supplier is for supplier accounts only",
                ))
            }
            (Role::Supplier, _, None) => {
                return Err(ServiceError::invalid(
                    "supplier",
                    "a supplier account needs --supplier ENTITY-ID",
                ))
            }
            (Role::Supplier | Role::Operator, Some(_), _) => {
                return Err(ServiceError::invalid(
                    "device-range",
                    "--device-range is for factory accounts only",
                ))
            }
            _ => {}
        }
        if a.bare_public_key && a.role != Role::Factory {
            return Err(ServiceError::invalid(
                "bare-public-key",
                "--allow-bare-public-key is for factory accounts only",
            ));
        }
        if !self.has_ca(CaKind::Access) {
            return Err(ServiceError::invalid(
                "no-ca",
                "there is no Access CA yet: run `meterpki ceremony issuing-ca --kind access`",
            ));
        }
        let store = self.store()?;
        if let Some(id) = &a.supplier {
            match store.supplier(&id.to_string())? {
                None => {
                    return Err(ServiceError::invalid(
                        "supplier-unknown",
                        format!("--supplier {id} is not a registered supplier: run `meterpki supplier register --id {id} --name NAME` first"),
                    ))
                }
                Some(s) if s.state != SupplierState::Active => {
                    return Err(ServiceError::invalid(
                        "supplier-inactive",
                        format!("--supplier {id} ({}) is {}: it cannot have an API account", s.name, s.state),
                    ))
                }
                Some(_) => {}
            }
        }
        if store.account(&a.name)?.is_some() {
            return Err(ServiceError::conflict(
                "account-exists",
                format!("account {:?} already exists; nothing changed", a.name),
            ));
        }
        let cert_path = a.out.join(format!("{}.pem", a.name));
        let key_path = a.out.join(format!("{}.key", a.name));
        let ca_path = a.out.join("ca.pem");
        for p in [&cert_path, &key_path] {
            if p.exists() {
                return Err(ServiceError::conflict(
                    "file-exists",
                    format!("{} already exists; it is never overwritten", p.display()),
                ));
            }
        }
        let (key_source, key_pem) = match &a.key {
            ClientKey::Csr(text) => (KeySource::Csr(text.clone()), None),
            ClientKey::Generate => {
                let (spki, pem) = client_key()?;
                (KeySource::Spki(spki), Some(pem))
            }
        };
        let engine = self.engine()?;
        let subject = Subject::Tls {
            common_name: a.name.clone(),
            unit: Some(a.role.name().to_string()),
            dns: Vec::new(),
            ips: Vec::new(),
        };
        let request = tls_request(engine.profiles(), "api-client", subject, key_source, false)
            .map_err(ServiceError::Issue)?;
        let signed = engine.sign_request(request);
        // The files first (the key never leaves this process any other way), removed again
        // unless the account is stored.
        let mut written = Written::default();
        let result = self.commit_account(actor, &a, signed, |rec_der| {
            std::fs::create_dir_all(&a.out)
                .map_err(io_at(format!("creating {}", a.out.display())))?;
            if let Some(pem) = &key_pem {
                write_new_secret(&key_path, pem.as_bytes())
                    .map_err(io_at(format!("writing {}", key_path.display())))?;
                written.key = Some(key_path.clone());
            }
            let access = std::fs::read_to_string(self.home.ca_cert(CaKind::Access))
                .map_err(io_at("reading the Access CA certificate".into()))?;
            let root = std::fs::read_to_string(self.home.ca_cert(CaKind::Root))
                .map_err(io_at("reading the root certificate".into()))?;
            let leaf = crate::certs::der_to_pem(rec_der)?;
            written.files.push(
                StagedFile::write(&cert_path, format!("{leaf}{access}").as_bytes(), 0o644)
                    .map_err(io_at(format!("writing {}", cert_path.display())))?,
            );
            written.files.push(
                StagedFile::write(&ca_path, format!("{root}{access}").as_bytes(), 0o644)
                    .map_err(io_at(format!("writing {}", ca_path.display())))?,
            );
            Ok(())
        });
        let serial = match result {
            Ok(serial) => serial,
            Err(e) => {
                if let Some(k) = &written.key {
                    let _ = std::fs::remove_file(k);
                }
                return Err(e);
            }
        };
        for f in written.files {
            f.commit()
                .map_err(io_at("putting the credentials in place".into()))?;
        }
        Ok(AccountCreated {
            account: a.name.clone(),
            role: a.role,
            device_range: a.device_range,
            supplier: a.supplier.map(|s| s.to_string()),
            serial,
            certificate: cert_path,
            key: key_pem.map(|_| key_path),
            ca: ca_path,
        })
    }

    /// Stores the client certificate and the account in one write with their audit record,
    /// once `files` has written the credentials for the signed certificate's DER.
    fn commit_account(
        &self,
        actor: &Actor,
        a: &NewAccount,
        signed: crate::issue::SignedBatch,
        files: impl FnOnce(&[u8]) -> Result<(), ServiceError>,
    ) -> Result<String, ServiceError> {
        // The certificate as signed: its serial binds the account.
        let record = match signed.items().next() {
            Some(Ok((record, false))) => record.clone(),
            Some(Ok((record, true))) => {
                return Err(ServiceError::conflict(
                    "key-in-use",
                    format!(
                    "this key already has client certificate {}; an account needs a key of its own",
                    record.serial_hex()
                ),
                ))
            }
            Some(Err(e)) => return Err(ServiceError::Issue(e.clone())),
            None => return Err(ServiceError::Internal("no certificate was signed".into())),
        };
        let mut txn = Txn::new();
        let plan = signed.into_txn(&mut txn, true);
        files(&record.der)?;
        let account = Account {
            name: a.name.clone(),
            role: a.role,
            device_range: a.device_range,
            supplier: a.supplier.map(|s| s.to_string()),
            cert_serial: record.serial.clone(),
            disabled: false,
            created: record.issued_at,
            bare_public_key: a.bare_public_key,
        };
        txn.push(Op::InsertAccount(account));
        let serial = record.serial_hex();
        let (applied, _) = self.audit()?.commit(txn, |applied| {
            // Held back (another request stored a certificate for this key meanwhile): no record.
            applied.written.then(|| AuditEntry::new(
                "account.add",
                actor.name(),
                json!({"account": a.name, "role": a.role, "device_range": a.device_range, "supplier": a.supplier, "bare_public_key": a.bare_public_key, "certificate_serial": serial}),
            ))
        })?;
        match plan.results(&applied).into_iter().next() {
            Some(Ok(o)) if !o.existing && applied.written => Ok(serial),
            Some(Err(e)) => Err(ServiceError::Issue(e)),
            _ => Err(ServiceError::conflict(
                "key-in-use",
                "another request stored a certificate for this account meanwhile; nothing changed",
            )),
        }
    }

    /// Every account, by name.
    pub fn accounts(&self, actor: &Actor) -> Result<Vec<Account>, ServiceError> {
        authorize(actor, Action::Administer)?;
        Ok(self.store()?.accounts()?)
    }

    /// Disables an account: refused from now on, its certificate revoked (privilegeWithdrawn),
    /// both in one write with the audit record; then the Access CA's CRLs republished. Run
    /// again on a disabled account, it makes sure of both and republishes.
    pub fn disable_account(&self, actor: &Actor, name: &str) -> Result<Disabled, ServiceError> {
        authorize(actor, Action::Administer)?;
        let store = self.store()?;
        let mut account = store.account(name)?.ok_or_else(|| {
            ServiceError::invalid("no-account", format!("no account named {name:?}"))
        })?;
        let disabled_now = !account.disabled;
        account.disabled = true;
        let txn = Txn::new()
            .with(Op::UpdateAccount(account.clone()))
            .with(Op::Revoke {
                serials: vec![account.cert_serial.clone()],
                revocation: Revocation {
                    reason: Reason::PrivilegeWithdrawn,
                    revoked_at: unix_now(),
                    invalidity_date: None,
                },
            });
        let serial = hex::encode(&account.cert_serial);
        let (applied, _) = self.audit()?.commit(txn, |applied| {
            let revoked_now = matches!(applied.revoked(1), Some([Revoked::Now(_)]));
            (disabled_now || revoked_now).then(|| {
                AuditEntry::new(
                    "account.disable",
                    actor.name(),
                    json!({"account": name, "certificate_serial": serial, "reason": "privilegeWithdrawn"}),
                )
            })
        })?;
        crate::failpoint("account.disable.after-commit");
        let shards = super::crls::shards_of(applied.revoked(1).unwrap_or_default(), true);
        let published = self.publish_crls(actor, Some(CaKind::Access), false, Some(&shards))?;
        Ok(Disabled {
            account: name.to_string(),
            disabled_now,
            certificate_revoked: serial,
            published,
        })
    }

    /// The account of an API request, from its client certificate (already verified against
    /// the root and the Access CA's CRLs by the TLS handshake): refused when no account is bound
    /// to it, when the account is disabled or its certificate revoked, and for a supplier that
    /// is no longer active.
    pub fn authenticate(&self, client_cert: Option<&[u8]>) -> Result<Actor, ServiceError> {
        let Some(der) = client_cert else {
            return Err(ServiceError::refused(
                super::ErrorClass::Denied,
                "client-certificate-required",
                "this endpoint needs a client certificate from the Access CA",
            ));
        };
        let cert = x509_cert::Certificate::from_der(der)
            .map_err(|e| ServiceError::Internal(format!("client certificate: {e}")))?;
        let serial = cert.tbs_certificate.serial_number.as_bytes();
        let store = self.store()?;
        let Some(a) = store.account_by_cert(serial)? else {
            return Err(ServiceError::denied(
                "unknown-account",
                "no account is bound to this client certificate",
            ));
        };
        // The account is bound to one certificate: the one the Access CA issued with this
        // serial, byte for byte. A certificate from another issuer that happens to carry the
        // serial (or any other certificate) is not that account's.
        let bound = store.cert(serial)?;
        let same = bound
            .as_ref()
            .is_some_and(|r| r.issuer == CaKind::Access && r.der == der);
        if !same {
            return Err(ServiceError::denied(
                "unknown-account",
                "no account is bound to this client certificate (its serial names an account, but the certificate is not the one the Access CA issued to it)",
            ));
        }
        if a.disabled || store.revocation(serial)?.is_some() {
            return Err(ServiceError::denied(
                "account-disabled",
                format!("account {} is disabled", a.name),
            ));
        }
        if a.role == Role::Supplier {
            // A supplier that was taken over or left the market loses its power at once.
            let id = a.supplier.clone().unwrap_or_default();
            match store.supplier(&id)? {
                Some(s) if s.state == SupplierState::Active => {}
                Some(s) => {
                    return Err(ServiceError::denied(
                        "supplier-inactive",
                        format!("supplier {} ({}) is {}", s.id, s.name, s.state),
                    ))
                }
                None => {
                    return Err(ServiceError::denied(
                        "supplier-unknown",
                        format!("account {} names no registered supplier", a.name),
                    ))
                }
            }
        }
        Ok(Actor::Account(a))
    }
}

/// Files written for a new account, undone if it is not stored.
#[derive(Default)]
struct Written {
    key: Option<PathBuf>,
    files: Vec<StagedFile>,
}

/// A client key made here: its public key, and the private key as PKCS#8 PEM for the client's
/// key file. API clients are not HSM keys: the client holds its key, we never keep it.
fn client_key(
) -> Result<(spki::SubjectPublicKeyInfoOwned, zeroize::Zeroizing<String>), ServiceError> {
    use p256::elliptic_curve::sec1::ToEncodedPoint;
    use p256::pkcs8::EncodePrivateKey;
    let key = p256::SecretKey::random(&mut rand::rngs::OsRng);
    let pem = key
        .to_pkcs8_pem(p256::pkcs8::LineEnding::LF)
        .map_err(|e| ServiceError::Internal(format!("encoding the client key: {e}")))?;
    let point = key.public_key().to_encoded_point(false);
    let spki =
        crate::signer::spki_from_point(crate::signer::KeyAlgorithm::EcP256, point.as_bytes())
            .map_err(|e| ServiceError::Internal(e.to_string()))?;
    Ok((spki, pem))
}
