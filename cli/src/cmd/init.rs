//! `meterpki init`.

use std::path::PathBuf;

use anyhow::{Context, Result};
use ca_core::{CaConfig, CaKind, Config, Home, HsmConfig, ServerConfig};
use hsm_bridge::{Hsm, SecretString};
use zeroize::Zeroizing;

use crate::args::InitArgs;
use crate::cmd::{print_json, random_hex};
use crate::ctx::{ensure_softhsm_env, os_user, Ctx};
use crate::errors::input;

const DIRS: &[&str] = &[
    "ca",
    "crl",
    "store",
    "secrets",
    "audit",
    "ceremonies",
    "softhsm",
];

pub fn run(home: Home, a: InitArgs, json: bool) -> Result<()> {
    let root = home.root().to_path_buf();
    if home.config_path().exists() {
        if home.ca_cert(CaKind::Root).exists() || home.root_ceremony().exists() {
            return Err(input(format!(
                "{} already holds a root CA ({}); init changed nothing. Use another --home for a new hierarchy",
                root.display(),
                home.ca_cert(CaKind::Root).display()
            )));
        }
        return Err(input(format!(
            "{} is already initialised ({} exists); init changed nothing",
            root.display(),
            home.config_path().display()
        )));
    }
    if root.exists() {
        let mut entries =
            std::fs::read_dir(&root).with_context(|| format!("reading {}", root.display()))?;
        if entries.next().is_some() {
            return Err(input(format!(
                "{} exists and is not empty; init wants a new or empty directory",
                root.display()
            )));
        }
    }
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
        },
        ca: CaConfig {
            organisation: a.org.clone(),
            ..CaConfig::default()
        },
        crl: ca_core::CrlConfig::default(),
        server: ServerConfig::default(),
    };
    config
        .validate(&home.config_path())
        .map_err(|e| input(e.to_string()))?;
    if softhsm {
        // Before anything is created: this may re-execute the process with SOFTHSM2_CONF set.
        ensure_softhsm_env(&home)?;
    }

    let created_root = !root.exists();
    let result = create(&home, &config, softhsm);
    if result.is_err() {
        // Nothing half-done: remove what this run created.
        if created_root {
            let _ = std::fs::remove_dir_all(&root);
        } else {
            for d in DIRS {
                let _ = std::fs::remove_dir_all(root.join(d));
            }
            let _ = std::fs::remove_file(home.config_path());
        }
    }
    let summary = result?;
    if json {
        print_json(&summary)?;
    } else {
        println!("Initialised meterpki home {}", root.display());
        println!(
            "  PKCS#11 module  {} ({})",
            module.display(),
            summary["manufacturer"].as_str().unwrap_or("")
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
            root.display()
        );
    }
    Ok(())
}

fn create(home: &Home, config: &Config, softhsm: bool) -> Result<serde_json::Value> {
    use std::os::unix::fs::PermissionsExt;
    let root = home.root();
    std::fs::create_dir_all(root).with_context(|| format!("creating {}", root.display()))?;
    for d in DIRS {
        if *d == "softhsm" && !softhsm {
            continue;
        }
        let p = root.join(d);
        std::fs::create_dir_all(&p).with_context(|| format!("creating {}", p.display()))?;
    }
    std::fs::set_permissions(home.secrets_dir(), std::fs::Permissions::from_mode(0o700))?;
    // The shipped certificate profiles, for the operator to adapt (validated at every load).
    policies::ProfileSet::write_builtin(&home.policies_dir())?;
    if softhsm {
        softhsm_config::write_config(&home.softhsm_dir())
            .with_context(|| format!("writing {}", home.softhsm_conf().display()))?;
    }
    let hsm = Hsm::load(&config.hsm.module)?;
    let manufacturer = hsm.manufacturer().unwrap_or_default();
    if softhsm {
        let user = Zeroizing::new(random_hex(16));
        let so = Zeroizing::new(random_hex(16));
        hsm.init_token(
            &config.hsm.online_token,
            &SecretString::from(so.to_string()),
            &SecretString::from(user.to_string()),
        )?;
        ca_core::write_new_secret(
            &home.online_pin(),
            format!("{}\n", user.as_str()).as_bytes(),
        )
        .with_context(|| format!("writing {}", home.online_pin().display()))?;
        let so_path = home.secrets_dir().join("online-so.pin");
        ca_core::write_new_secret(&so_path, format!("{}\n", so.as_str()).as_bytes())
            .with_context(|| format!("writing {}", so_path.display()))?;
    }
    ca_core::write_atomic(&home.config_path(), config.to_toml().as_bytes(), 0o644)
        .with_context(|| format!("writing {}", home.config_path().display()))?;
    // Log in once now, so a wrong PIN or a missing token label fails init, not a ceremony.
    let ctx = Ctx {
        home: home.clone(),
        config: config.clone(),
        json: false,
        store: std::sync::OnceLock::new(),
    };
    let token = ctx.online(&hsm)?;
    let store = ctx.store()?;
    let audit = ctx.audit(store.clone());
    let details = serde_json::json!({
        "module": config.hsm.module,
        "manufacturer": manufacturer,
        "online_token": config.hsm.online_token,
        "root_token": config.hsm.root_token,
        "softhsm": softhsm,
    });
    audit.append("home.init", &os_user(), details.clone())?;
    store.flush()?;
    drop(token);
    Ok(details)
}
