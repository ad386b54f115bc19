//! `meterpki init`.

use std::path::PathBuf;

use anyhow::Result;
use ca_core::service::{Service, ServiceError};
use ca_core::{CaConfig, Config, Home, HsmConfig, ServerConfig};

use crate::args::{InitArgs, KeyBackupArg};
use crate::cmd::print_json;
use crate::ctx::{ensure_softhsm_env, hsm_access, Watchdog};
use crate::errors::input;

pub(super) fn run(home: Home, a: InitArgs, json: bool) -> Result<()> {
    let module = match a.module {
        Some(m) => m,
        None => softhsm_config::find_module().ok_or_else(|| {
            input("no --module given and SoftHSM2 is not installed (apt-get install softhsm2)")
        })?,
    };
    if !module.exists() {
        return Err(input(format!(
            "PKCS#11 module {} does not exist (--module)",
            module.display()
        )));
    }
    let softhsm = softhsm_config::is_softhsm(&module);
    let config = Config {
        hsm: HsmConfig {
            module: module.clone(),
            softhsm,
            online_token: a.online_token.clone(),
            root_token: a.root_token.clone(),
            online_pin_env: None,
            online_pin_file: softhsm.then(|| PathBuf::from("secrets/online.pin")),
            sessions: a.sessions,
            sign_timeout_ms: 10_000,
            tokens: Vec::new(),
            key_backup: match a.key_backup {
                KeyBackupArg::None => ca_core::KeyBackup::None,
                KeyBackupArg::Quorum => ca_core::KeyBackup::Quorum,
            },
        },
        ca: CaConfig {
            organisation: a.org.clone(),
            ..CaConfig::default()
        },
        crl: ca_core::CrlConfig::default(),
        server: ServerConfig::default(),
        store: Default::default(),
    };
    config
        .validate(&home.config_path())
        .map_err(|e| input(e.to_string()))?;
    if softhsm && !home.config_path().exists() {
        // Before anything is created: this may re-execute the process with SOFTHSM2_CONF set.
        ensure_softhsm_env(&home)?;
    }
    let details = Service::init_home(
        home.clone(),
        config.clone(),
        hsm_access(&home, Watchdog::On),
        |home| {
            if softhsm {
                softhsm_config::write_config(&home.softhsm_dir()).map_err(|e| {
                    ServiceError::io(format!("writing {}", home.softhsm_conf().display()), e)
                })?;
            }
            Ok(())
        },
    )?;
    if json {
        return print_json(&details);
    }
    println!("Initialised meterpki home {}", home.root().display());
    println!(
        "  PKCS#11 module  {} ({})",
        module.display(),
        details["manufacturer"].as_str().unwrap_or("")
    );
    println!("  online token    {}", config.hsm.online_token);
    if softhsm {
        println!("  SoftHSM tokens  {}", home.softhsm_tokens().display());
        println!(
            "  online PIN      {} (mode 0600)",
            home.online_pin().display()
        );
    }
    println!(
        "Next: meterpki --home {} ceremony root --officers 5 --quorum 3 --shares-dir DIR",
        home.root().display()
    );
    Ok(())
}
