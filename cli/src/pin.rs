//! Where the online token's PIN comes from: an environment variable, a file, or a prompt —
//! never the command line. The PIN is held in a `SecretString` (zeroized on drop).

use std::io::IsTerminal;
use std::path::Path;

use anyhow::{Context, Result};
use ca_core::hsm::SecretString;
use ca_core::{Config, Home, PinSource};
use zeroize::Zeroizing;

use crate::errors::input;

/// The variable that overrides every configured source.
pub(crate) const PIN_ENV: &str = "METERPKI_HSM_PIN";
/// Set by meterpki itself when it runs again without `METERPKI_HSM_PIN` in its environment:
/// the file descriptor of a pipe holding the PIN.
pub(crate) const PIN_FD_ENV: &str = "METERPKI_PIN_FD";

/// The PIN handed over through a pipe by the process that ran this one (read once).
fn pin_from_pipe() -> Option<Zeroizing<String>> {
    use std::io::Read;
    static TAKEN: std::sync::Mutex<Option<Zeroizing<String>>> = std::sync::Mutex::new(None);
    let mut slot = TAKEN.lock().unwrap_or_else(|p| p.into_inner());
    if slot.is_none() {
        let fd: u32 = std::env::var(PIN_FD_ENV).ok()?.parse().ok()?;
        // Through /proc: no unsafe code to own a raw descriptor.
        let mut pin = Zeroizing::new(String::new());
        std::fs::File::open(format!("/proc/self/fd/{fd}"))
            .ok()?
            .read_to_string(&mut pin)
            .ok()?;
        *slot = Some(pin);
    }
    slot.clone()
}

/// Resolves the online PIN: `METERPKI_HSM_PIN`, the configured variable, the configured file,
/// then a prompt when a terminal is attached.
pub(crate) fn online_pin(home: &Home, config: &Config) -> Result<SecretString> {
    let mut sources = vec![PinSource::Env(PIN_ENV.to_string())];
    sources.extend(config.online_pin_sources());
    pin_from(
        home,
        &config.hsm.online_token,
        sources,
        "set METERPKI_HSM_PIN, or configure hsm.online_pin_file",
    )
}

/// Resolves the PIN of one of `[[hsm.tokens]]`: its `pin_env`, then its `pin_file` (the online
/// token's own settings for the online token), then a prompt when a terminal is attached.
pub(crate) fn token_pin(
    home: &Home,
    config: &Config,
    token: &ca_core::TokenConfig,
) -> Result<SecretString> {
    if token.label == config.hsm.online_token {
        return online_pin(home, config);
    }
    pin_from(
        home,
        &token.label,
        config.token_pin_sources(token),
        "configure its pin_file or pin_env in [[hsm.tokens]]",
    )
}

fn pin_from(home: &Home, label: &str, sources: Vec<PinSource>, hint: &str) -> Result<SecretString> {
    let mut tried = Vec::new();
    for source in sources {
        match source {
            PinSource::Env(name) => {
                if name == PIN_ENV {
                    if let Some(v) = pin_from_pipe().filter(|v| !v.is_empty()) {
                        return Ok(SecretString::from(
                            v.trim_end_matches(['\r', '\n']).to_string(),
                        ));
                    }
                }
                if let Ok(v) = std::env::var(&name) {
                    let v = Zeroizing::new(v);
                    if !v.is_empty() {
                        return Ok(SecretString::from(
                            v.trim_end_matches(['\r', '\n']).to_string(),
                        ));
                    }
                }
                tried.push(format!("${name}"));
            }
            PinSource::File(path) => {
                let path = home.resolve(&path);
                if path.exists() {
                    return read_pin_file(&path);
                }
                tried.push(path.display().to_string());
            }
        }
    }
    if std::io::stdin().is_terminal() {
        let pin = Zeroizing::new(
            rpassword::prompt_password(format!("PIN for token {label}: "))
                .context("reading the PIN from the terminal")?,
        );
        return Ok(SecretString::from(pin.to_string()));
    }
    Err(input(format!(
        "no PIN for the token {label:?}: {hint} (tried {})",
        tried.join(", ")
    )))
}

/// Reads a PIN file: the first line, without its newline. Refuses a file others can read.
pub(crate) fn read_pin_file(path: &Path) -> Result<SecretString> {
    use std::os::unix::fs::PermissionsExt;
    let meta = std::fs::metadata(path).with_context(|| format!("PIN file {}", path.display()))?;
    if meta.permissions().mode() & 0o077 != 0 {
        return Err(input(format!(
            "PIN file {} is readable by others (mode {:o}); chmod 600 it",
            path.display(),
            meta.permissions().mode() & 0o777
        )));
    }
    // A PIN file is a line: read bounded, and the bytes wiped whatever happens next.
    let bytes = Zeroizing::new(
        ca_core::read_bounded(path, 4096)
            .with_context(|| format!("PIN file {}", path.display()))?,
    );
    let text = Zeroizing::new(
        std::str::from_utf8(&bytes)
            .map_err(|_| input(format!("PIN file {}: not UTF-8 text", path.display())))?
            .to_string(),
    );
    let pin = text.lines().next().unwrap_or_default();
    if pin.is_empty() {
        return Err(input(format!("PIN file {} is empty", path.display())));
    }
    Ok(SecretString::from(pin.to_string()))
}
