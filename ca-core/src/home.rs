//! The home directory's layout: the one place that knows where things live, so users
//! and scripts can rely on the same paths the code uses.

use std::path::{Path, PathBuf};

/// A meterpki home directory.
#[derive(Debug, Clone)]
pub struct Home {
    root: PathBuf,
}

/// A file or folder of a home that another user could change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exposed {
    /// The path.
    pub path: PathBuf,
    /// What is wrong with it.
    pub why: String,
}

impl Home {
    /// Refuses a home another user could change: the home, and everything meterpki keeps in
    /// it but the published CRLs and trust-anchor updates (signed, and checked by whoever reads
    /// them), must belong to this user (or root) and not be writable by group or others.
    /// Whoever could write meterpki.toml, the policies, the store, the audit log or SoftHSM's
    /// tokens could change what this CA signs. Returns every such path (at most 20).
    pub fn check_permissions(&self) -> Result<(), Vec<Exposed>> {
        use std::os::unix::fs::MetadataExt;
        let me = rustix::process::geteuid().as_raw();
        let mut found = Vec::new();
        let check = |path: &Path, meta: &std::fs::Metadata| -> Option<Exposed> {
            if meta.uid() != me && meta.uid() != 0 {
                Some(Exposed {
                    path: path.to_path_buf(),
                    why: format!(
                        "belongs to user id {}, not to you ({me}) or root",
                        meta.uid()
                    ),
                })
            } else if !meta.file_type().is_symlink() && meta.mode() & 0o022 != 0 {
                Some(Exposed {
                    path: path.to_path_buf(),
                    why: format!(
                        "is writable by {} (mode {:o})",
                        if meta.mode() & 0o002 != 0 {
                            "every user"
                        } else {
                            "its group"
                        },
                        meta.mode() & 0o7777
                    ),
                })
            } else {
                None
            }
        };
        // The home itself, through a symlink if it is one.
        if let Ok(meta) = std::fs::metadata(&self.root) {
            found.extend(check(&self.root, &meta));
        }
        // Its entries; the folders meterpki keeps its state in, all the way down.
        let deep = [
            self.policies_dir(),
            self.store_dir(),
            self.root.join("audit"),
            self.softhsm_dir(),
            self.secrets_dir(),
            self.ca_dir(),
            self.ceremonies_dir(),
            self.root.join("run"),
        ];
        let mut stack = vec![(self.root.clone(), true)];
        while let Some((dir, descend)) = stack.pop() {
            let Ok(entries) = std::fs::read_dir(&dir) else {
                continue;
            };
            for entry in entries.flatten() {
                let path = entry.path();
                let Ok(meta) = std::fs::symlink_metadata(&path) else {
                    continue;
                };
                found.extend(check(&path, &meta));
                if found.len() >= 20 {
                    return Err(found);
                }
                if meta.is_dir() && (deep.contains(&path) || (descend && dir != self.root)) {
                    stack.push((path, true));
                }
            }
        }
        if found.is_empty() {
            Ok(())
        } else {
            Err(found)
        }
    }

    /// A home rooted at `root` (which may not exist yet).
    pub fn new(root: impl Into<PathBuf>) -> Home {
        Home { root: root.into() }
    }
    /// The home directory itself.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `meterpki.toml`.
    pub fn config_path(&self) -> PathBuf {
        self.root.join("meterpki.toml")
    }
    /// `ca/`: CA certificates, PEM.
    pub fn ca_dir(&self) -> PathBuf {
        self.root.join("ca")
    }
    /// `ca/<kind>.pem`.
    pub fn ca_cert(&self, kind: policies::CaKind) -> PathBuf {
        self.ca_dir().join(format!("{}.pem", kind.name()))
    }
    /// `ca/generations/`: the certificates of earlier generations of the CAs.
    pub fn ca_generations_dir(&self) -> PathBuf {
        self.ca_dir().join("generations")
    }
    /// `ca/generations/<kind>-<N>.pem`: generation N of a CA once a later one replaced it.
    pub fn ca_generation_cert(&self, kind: policies::CaKind, generation: u32) -> PathBuf {
        self.ca_generations_dir()
            .join(format!("{}-{generation}.pem", kind.name()))
    }
    /// `ca/links/`: the root rollover's link certificates (RFC 4210 §4.4).
    pub fn ca_links_dir(&self) -> PathBuf {
        self.ca_dir().join("links")
    }
    /// `updates/`: the apex trust-anchor updates ceremonies write (`apex-<seq>.der`).
    pub fn updates_dir(&self) -> PathBuf {
        self.root.join("updates")
    }
    /// `ca/audit.pem`: the audit signer's certificate (issued by the root).
    pub fn audit_cert(&self) -> PathBuf {
        self.ca_dir().join("audit.pem")
    }
    /// `policies/`: the certificate profiles this home issues with (TOML).
    pub fn policies_dir(&self) -> PathBuf {
        self.root.join("policies")
    }
    /// `crl/`: published CRLs.
    pub fn crl_dir(&self) -> PathBuf {
        self.root.join("crl")
    }
    /// `store/`: the sled database.
    pub fn store_dir(&self) -> PathBuf {
        self.root.join("store")
    }
    /// `run/admin.sock`: the running server's socket for the operator's commands (only
    /// while `meterpki serve` runs; reachable only by the home's OS user).
    pub fn admin_socket(&self) -> PathBuf {
        self.root.join("run").join("admin.sock")
    }
    /// `softhsm/`: SoftHSM config and tokens, for SoftHSM homes.
    pub fn softhsm_dir(&self) -> PathBuf {
        self.root.join("softhsm")
    }
    /// `softhsm/softhsm2.conf`.
    pub fn softhsm_conf(&self) -> PathBuf {
        self.softhsm_dir().join("softhsm2.conf")
    }
    /// `softhsm/tokens/`.
    pub fn softhsm_tokens(&self) -> PathBuf {
        self.softhsm_dir().join("tokens")
    }
    /// `secrets/`: 0700, files 0600.
    pub fn secrets_dir(&self) -> PathBuf {
        self.root.join("secrets")
    }
    /// `secrets/online.pin`.
    pub fn online_pin(&self) -> PathBuf {
        self.secrets_dir().join("online.pin")
    }
    /// `audit/audit.log`: the hash-chained audit log, one JSON record a line.
    pub fn audit_log(&self) -> PathBuf {
        self.root.join("audit").join("audit.log")
    }
    /// `ceremonies/`: ceremony records and transcripts.
    pub fn ceremonies_dir(&self) -> PathBuf {
        self.root.join("ceremonies")
    }
    /// `ceremonies/root.json`: the public record of the root ceremony (quorum, share digests).
    pub fn root_ceremony(&self) -> PathBuf {
        self.ceremonies_dir().join("root.json")
    }
    /// `ceremonies/key-backup.json`: the public record of the key-backup ceremony.
    pub fn key_backup_ceremony(&self) -> PathBuf {
        self.ceremonies_dir().join("key-backup.json")
    }
    /// `secrets/<label>.pin`: the user PIN of a token made by `hsm init-token`.
    pub fn token_pin(&self, label: &str) -> PathBuf {
        self.secrets_dir().join(format!("{label}.pin"))
    }
    /// The security-officer PIN file of an online token until it holds the key-backup key:
    /// `secrets/online-so.pin` for the online token (made at init), `secrets/<label>-so.pin`
    /// for a token made by `hsm init-token`.
    pub fn token_so_pin(&self, label: &str, online_token: &str) -> PathBuf {
        if label == online_token {
            self.secrets_dir().join("online-so.pin")
        } else {
            self.secrets_dir().join(format!("{label}-so.pin"))
        }
    }
    /// Resolves a path from the config: relative paths are relative to the home.
    pub fn resolve(&self, p: &Path) -> PathBuf {
        if p.is_absolute() {
            p.to_path_buf()
        } else {
            self.root.join(p)
        }
    }
}
