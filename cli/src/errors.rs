//! Which failures are the user's input (exit 2) and which are the system's (exit 1).

use ca_core::QuorumError;
use hsm_bridge::HsmError;

/// A usage or input error: bad arguments, bad files, a state that forbids the command.
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

/// An issuance refusal as the CLI reports it: the requester's mistakes are input errors (exit
/// 2), HSM and internal failures runtime errors (exit 1).
pub fn issue_error(e: ca_core::issue::IssueError) -> anyhow::Error {
    if e.code.is_client_error() {
        input(e.to_string())
    } else {
        anyhow::anyhow!("{e}")
    }
}

/// 2 for input errors anywhere in the chain, else 1.
pub fn exit_code(e: &anyhow::Error) -> u8 {
    for cause in e.chain() {
        if cause.downcast_ref::<InputError>().is_some() {
            return 2;
        }
        if let Some(q) = cause.downcast_ref::<QuorumError>() {
            return match q {
                QuorumError::Io { .. } => 1,
                _ => 2,
            };
        }
        if let Some(h) = cause.downcast_ref::<HsmError>() {
            return match h {
                HsmError::PinIncorrect { .. }
                | HsmError::PinLocked { .. }
                | HsmError::TokenNotFound { .. }
                | HsmError::ModuleLoad { .. }
                | HsmError::TokenExists { .. } => 2,
                _ => 1,
            };
        }
        if cause.downcast_ref::<ca_core::ConfigError>().is_some() {
            return 2;
        }
    }
    1
}
