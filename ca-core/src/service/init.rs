//! `init`: a new home with its config, profiles, store and audit log and, for a SoftHSM home,
//! the online token with random PINs kept in `secrets/` (0600). A failed init leaves nothing.

use serde_json::json;
use zeroize::Zeroizing;

use super::error::io_at;
use super::{random_hex, HsmAccess, Service, ServiceError};
use crate::config::Config;
use crate::fsutil::{write_atomic, write_new_secret};
use crate::home::Home;
use crate::hsm::SecretString;

/// The folders of a home (`softhsm` only for SoftHSM homes).
const DIRS: &[&str] = &[
    "ca",
    "crl",
    "store",
    "secrets",
    "audit",
    "ceremonies",
    "softhsm",
];

impl Service {
    /// Creates the home `home` configured with `config`. `prepare` runs once the folders exist
    /// and before the HSM module is loaded (a SoftHSM home writes its token configuration
    /// there). Returns the facts recorded in the `home.init` audit record.
    pub fn init_home(
        home: Home,
        config: Config,
        hsm: HsmAccess,
        prepare: impl FnOnce(&Home) -> Result<(), ServiceError>,
    ) -> Result<serde_json::Value, ServiceError> {
        let root = home.root().to_path_buf();
        if home.config_path().exists() {
            return Err(ServiceError::conflict(
                "home-exists",
                if home.ca_cert(crate::CaKind::Root).exists() || home.root_ceremony().exists() {
                    format!(
                        "{} already holds a root CA ({}); init changed nothing. Use another --home for a new hierarchy",
                        root.display(),
                        home.ca_cert(crate::CaKind::Root).display()
                    )
                } else {
                    format!(
                        "{} is already initialised ({} exists); init changed nothing",
                        root.display(),
                        home.config_path().display()
                    )
                },
            ));
        }
        if root.exists() {
            let mut entries =
                std::fs::read_dir(&root).map_err(io_at(format!("reading {}", root.display())))?;
            if entries.next().is_some() {
                return Err(ServiceError::invalid(
                    "home",
                    format!(
                        "{} exists and is not empty; init wants a new or empty directory",
                        root.display()
                    ),
                ));
            }
        }
        config.validate(&home.config_path())?;
        let created_root = !root.exists();
        let result = create(&home, config, hsm, prepare);
        if result.is_err() {
            // Nothing half-done: remove what this run created.
            if created_root {
                let _ = std::fs::remove_dir_all(&root);
            } else {
                for d in DIRS {
                    let _ = std::fs::remove_dir_all(root.join(d));
                }
                let _ = std::fs::remove_dir_all(home.policies_dir());
                let _ = std::fs::remove_file(home.config_path());
            }
        }
        result
    }
}

fn create(
    home: &Home,
    config: Config,
    hsm: HsmAccess,
    prepare: impl FnOnce(&Home) -> Result<(), ServiceError>,
) -> Result<serde_json::Value, ServiceError> {
    use std::os::unix::fs::PermissionsExt;
    let root = home.root();
    let softhsm = config.hsm.softhsm;
    std::fs::create_dir_all(root).map_err(io_at(format!("creating {}", root.display())))?;
    // The home is for its user alone, also when it existed before (every later command refuses
    // a home others can write).
    std::fs::set_permissions(root, std::fs::Permissions::from_mode(0o700))
        .map_err(io_at(format!("making {} private (0700)", root.display())))?;
    for d in DIRS {
        if *d == "softhsm" && !softhsm {
            continue;
        }
        let p = root.join(d);
        std::fs::create_dir_all(&p).map_err(io_at(format!("creating {}", p.display())))?;
    }
    std::fs::set_permissions(home.secrets_dir(), std::fs::Permissions::from_mode(0o700))
        .map_err(io_at("setting the mode of secrets/".into()))?;
    // The shipped certificate profiles, for the operator to adapt (validated at every load).
    policies::ProfileSet::write_builtin(&home.policies_dir())
        .map_err(|e| ServiceError::Internal(e.to_string()))?;
    prepare(home)?;
    let module = (hsm.load)(&config, &config.hsm.module)?;
    let manufacturer = module.manufacturer().unwrap_or_default();
    if softhsm {
        let user = Zeroizing::new(random_hex(16));
        let so = Zeroizing::new(random_hex(16));
        module.init_token(
            &config.hsm.online_token,
            &SecretString::from(so.to_string()),
            &SecretString::from(user.to_string()),
        )?;
        write_new_secret(
            &home.online_pin(),
            format!("{}\n", user.as_str()).as_bytes(),
        )
        .map_err(io_at(format!("writing {}", home.online_pin().display())))?;
        let so_path = home.secrets_dir().join("online-so.pin");
        write_new_secret(&so_path, format!("{}\n", so.as_str()).as_bytes())
            .map_err(io_at(format!("writing {}", so_path.display())))?;
    }
    write_atomic(&home.config_path(), config.to_toml().as_bytes(), 0o600)
        .map_err(io_at(format!("writing {}", home.config_path().display())))?;
    let details = json!({
        "module": config.hsm.module,
        "manufacturer": manufacturer,
        "online_token": config.hsm.online_token,
        "root_token": config.hsm.root_token,
        "softhsm": softhsm,
    });
    let service = Service::open(home.clone(), hsm)?;
    // Log in once now, so a wrong PIN or a missing token label fails init, not a ceremony.
    service.online()?;
    service
        .audit()?
        .append("home.init", super::Actor::local().name(), details.clone())?;
    Ok(details)
}
