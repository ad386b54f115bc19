//! The journal of an operation over many meters (takeover, exit, key rotation, key revocation):
//! written before anything else happens, so that a re-run after a crash resumes the same
//! operation with the same key lists.

use std::fmt;

use serde::{Deserialize, Serialize};

/// What a journaled operation does.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpKind {
    /// Supplier B takes over supplier A: A's meters move to B.
    Takeover,
    /// Supplier A leaves the market: its meters move to a supplier of last resort.
    Exit,
    /// A supplier replaces one of its keys: its meters swap the key.
    Rotate,
    /// A supplier key is revoked: its meters drop it.
    RevokeKey,
    /// A supplier's keys are certified again by a new Organisation CA generation: its meters
    /// swap the certificates.
    Recertify,
}

impl OpKind {
    /// The name used in journal IDs, audit events and output: `takeover`, `exit`, `rotate`,
    /// `revoke-key`.
    pub fn name(self) -> &'static str {
        match self {
            OpKind::Takeover => "takeover",
            OpKind::Exit => "exit",
            OpKind::Rotate => "rotate",
            OpKind::RevokeKey => "revoke-key",
            OpKind::Recertify => "recertify",
        }
    }

    /// Whether the operation moves meters to another supplier (takeover, exit) rather than
    /// changing the keys of their current one.
    pub fn moves_meters(self) -> bool {
        matches!(self, OpKind::Takeover | OpKind::Exit)
    }
}

impl fmt::Display for OpKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Where a journaled operation stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OpState {
    /// Started; some meters may still lack their update.
    Running,
    /// Every meter has its update.
    Complete,
    /// Ended without updating every meter, because later operations' updates reach the rest
    /// (a re-certification overtaken by a newer generation's, or whose certificates a rotation
    /// or key revocation replaced); its audit record says why.
    Closed,
}

impl OpState {
    /// `running` or `complete`.
    pub fn name(self) -> &'static str {
        match self {
            OpState::Running => "running",
            OpState::Complete => "complete",
            OpState::Closed => "closed",
        }
    }
}

impl fmt::Display for OpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// One journaled operation.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq, Eq)]
pub struct OpRecord {
    /// `takeover:<A>`, `exit:<A>`, `rotate:<supplier>:<profile>:<new key id>`,
    /// `revoke-key:<serial>`.
    pub id: String,
    /// What it does.
    pub kind: OpKind,
    /// The supplier whose meters are updated (A).
    pub from: String,
    /// The supplier serving them after (B; A itself for key changes).
    pub to: String,
    /// Serials (hex) of the certificates whose keys the meters drop.
    pub remove: Vec<String>,
    /// Serials (hex) of the certificates the meters add.
    pub add: Vec<String>,
    /// Where it stands.
    pub state: OpState,
    /// Start, Unix seconds.
    pub started_at: i64,
    /// End, Unix seconds.
    #[serde(default)]
    pub completed_at: Option<i64>,
}

impl OpRecord {
    /// Whether it ended: complete, or closed (nothing more to run for it).
    pub fn is_complete(&self) -> bool {
        matches!(self.state, OpState::Complete | OpState::Closed)
    }

    /// The journal ID of a takeover or an exit of supplier `from`.
    pub fn supplier_end_id(kind: OpKind, from: &str) -> String {
        format!("{}:{from}", kind.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn journals_written_with_strings_still_read() {
        // Records written before the kinds were typed spelled them as these strings.
        let old = r#"{"id":"revoke-key:0a","kind":"revoke-key","from":"A","to":"A","remove":["0a"],"add":[],"state":"running","started_at":1}"#;
        let op: OpRecord = serde_json::from_str(old).unwrap();
        assert_eq!(op.kind, OpKind::RevokeKey);
        assert_eq!(op.state, OpState::Running);
        assert_eq!(serde_json::to_value(&op).unwrap()["kind"], "revoke-key");
    }
}
