//! Which failures are the user's input (exit 2) and which are the system's (exit 1).

use ca_core::service::ServiceError;

/// A usage or input error found while parsing the command line: bad arguments, bad files.
#[derive(Debug)]
pub struct InputError(pub String);

impl std::fmt::Display for InputError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for InputError {}

/// Shorthand: an input error as `anyhow::Error`.
pub fn input(msg: impl Into<String>) -> anyhow::Error {
    anyhow::Error::new(InputError(msg.into()))
}

/// A benchmark's measuring time in seconds, `flag` given: 0.1 to 600.
pub fn check_seconds(flag: &str, seconds: f64) -> anyhow::Result<()> {
    if !(0.1..=600.0).contains(&seconds) {
        return Err(input(format!("{flag} must be between 0.1 and 600")));
    }
    Ok(())
}

/// 2 for the requester's mistakes anywhere in the chain (bad input, a refusal, a state that
/// forbids the command), else 1 (the HSM, the audit log, the store, meterpki itself).
pub(crate) fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<InputError>().is_some() {
            return 2;
        }
        if let Some(q) = cause.downcast_ref::<ca_core::QuorumError>() {
            return match q {
                ca_core::QuorumError::Io { .. } => 1,
                _ => 2,
            };
        }
        if let Some(s) = cause.downcast_ref::<ServiceError>() {
            return if s.class().is_client_error() { 2 } else { 1 };
        }
        if let Some(h) = cause.downcast_ref::<ca_core::hsm::HsmError>() {
            return if h.kind.is_input() { 2 } else { 1 };
        }
        if let Some(h) = cause.downcast_ref::<hsm_bridge::HsmError>() {
            return if h.kind().is_input() { 2 } else { 1 };
        }
        if cause.downcast_ref::<ca_core::ConfigError>().is_some() {
            return 2;
        }
    }
    1
}
