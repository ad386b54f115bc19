//! `meterpki ceremony …`: the key ceremonies' commands and arguments (a quorum of officers'
//! shares opens the root token or the key-backup key).

use std::path::PathBuf;

use ca_core::CaKind;
use clap::{Args, Subcommand};

#[derive(Subcommand, Debug)]
pub(crate) enum CeremonyCommand {
    /// Create the root token with a random PIN split into N shares (M needed), the P-384 root key and the self-signed root certificate.
    #[command(
        after_help = "Example:\n  meterpki ceremony root --officers 5 --quorum 3 --shares-dir /media/officers \\\n      --officer alice --officer bob --officer carol --officer dave --officer erin\n\nEach officer receives one file DIR/<officer>.share (mode 0600). Any QUORUM of them open the root\ntoken at a later ceremony; fewer reveal nothing."
    )]
    Root(RootArgs),
    /// Generate an issuing CA key on the online token and certify it with the root key, opened by a quorum of shares.
    #[command(
        name = "issuing-ca",
        after_help = "Examples:\n  meterpki ceremony issuing-ca --kind device \\\n      --share /media/alice.share --share /media/bob.share --share /media/carol.share\n  meterpki ceremony issuing-ca --kind device --renew \\\n      --share /media/alice.share --share /media/bob.share --share /media/carol.share\n\nWith --renew: generation N+1 gets a new key (meterpki-device-ca-g2, ...) and name (\"... G2\"),\nca/device.pem becomes its certificate and the previous one moves to ca/generations/device-N.pem.\nThe previous key stays: it keeps signing the CRLs of what it issued, at their unchanged URLs."
    )]
    IssuingCa(IssuingArgs),
    /// Re-sign the root's ARL (the CRL of the CA certificates the root issued) with a quorum of shares.
    #[command(
        name = "root-crl",
        after_help = "Example:\n  meterpki ceremony root-crl --share /media/alice.share --share /media/bob.share --share /media/carol.share\n\nThe ARL (<home>/crl/root/arl.crl) is signed at every ceremony that opens the root and lives\ncrl.arl_next_update_days (default 365); `meterpki status` warns when a quarter of it is left.\nHomes made before the ARL existed get it, and their CA certificates recorded, at this ceremony."
    )]
    RootCrl(RootCrlArgs),
    /// Roll the root over (RFC 4210 §4.4): a new root key in the root token, its certificate, the two link certificates, and every issuing CA and the audit signer certified again under it; opened by a quorum of the current root's shares.
    #[command(
        name = "root-rollover",
        after_help = "Example:\n  meterpki ceremony root-rollover --share /media/alice.share --share /media/bob.share --share /media/carol.share \\\n      --contingency-shares-dir /media/contingency-g2\n\nAfterwards ca/root.pem is the new root (the same name, a new key meterpki-root-ca-g2); the previous one is\nca/generations/root-1.pem and keeps signing its ARL. ca/links/new-with-old.pem (the new key certified\nby the old root) lets meters that trust the old root accept what the new hierarchy issues;\nca/links/old-with-new.pem the other way round, except once an issuing CA was revoked for a\ncompromise (meters check no CRL: nothing may link it to the new root). The issuing CAs keep their keys and names: their\ncertificates under the old root are kept in ca/generations/root-1/. The same shares open the new root.\nThe apex update updates/apex-<seq>.der (RFC 5934 §4.5, signed by the previous root) installs the new\nroot in meters: head ends deliver it; `meterpki update verify` checks it as a meter would."
    )]
    RootRollover(RootRolloverArgs),
    /// Replace a root whose key can no longer be trusted: a new root as at a rollover, but no link to the old one, and the apex update signed with the old root's contingency key (RFC 5934 §4.5), opened by the contingency quorum.
    #[command(
        name = "apex-recover",
        after_help = "Example:\n  meterpki ceremony apex-recover --share /media/alice.share --share /media/bob.share \\\n      --contingency-share /safe/dave.share --contingency-share /safe/erin.share \\\n      --contingency-shares-dir /media/new-contingency\n\nThe apex update updates/apex-<seq>.der carries the key that decrypts the contingency public key\nwrapped in the meters' current root certificate (id-pe-wrappedApexContinKey): a meter accepts it\nwithout trusting the old root key. Once recorded, the old root key and the spent contingency key\nare destroyed. The issuing CAs are certified again under the new root."
    )]
    ApexRecover(ApexRecoverArgs),
    /// Revoke an issuing CA's certificate in the root's ARL (every certificate below it stops validating).
    #[command(
        name = "revoke-ca",
        after_help = "Example:\n  meterpki ceremony revoke-ca --kind organisation --reason cACompromise \\\n      --share /media/alice.share --share /media/bob.share --share /media/carol.share\n\nReasons: cACompromise (the CA's key is compromised), keyCompromise, affiliationChanged,\nsuperseded, cessationOfOperation, unspecified. The ARL is published before the command returns;\nthe revoked CA signs nothing more.\nAn earlier generation of a renewed CA: add --generation N."
    )]
    RevokeCa(RevokeCaArgs),
    /// Create the key-backup key (AES-256) of a home made with --key-backup quorum: split into N shares (M needed), put into every online token as a trusted key (each token's SO PIN then replaced by one only the quorum rebuilds).
    #[command(
        name = "backup-key",
        after_help = "Example:\n  meterpki ceremony backup-key --officers 5 --quorum 3 --shares-dir /media/officers \\\n      --officer alice --officer bob --officer carol --officer dave --officer erin\n\nEach officer receives DIR/<officer>.share (0600). Any QUORUM of them can later copy the online\nkeys to another token (replicate), back them up to a file (backup) or restore them (restore).\nThe key's value exists in memory only during a ceremony; the tokens never let it out."
    )]
    BackupKey(RootArgs),
    /// Copy every online key pair from the online token into another token (listed in [[hsm.tokens]]), wrapped inside the tokens under the key-backup key opened by a quorum of shares.
    #[command(
        after_help = "Example:\n  meterpki hsm init-token --label meterpki-online-b\n  meterpki ceremony replicate --to-token meterpki-online-b \\\n      --share /media/alice.share --share /media/bob.share --share /media/carol.share\n\nThe private keys leave the online token only wrapped (CKM_AES_KEY_WRAP_PAD) and are unwrapped\ninside the target: sensitive, extractable only by trusted wrapping. Run again, it copies only\nwhat is missing."
    )]
    Replicate(ReplicateArgs),
    /// Write every online key pair, wrapped under the key-backup key, to a backup file (with a MAC only the quorum's key makes), for a later `ceremony restore`.
    #[command(
        after_help = "Example:\n  meterpki ceremony backup --out /media/vault/meterpki-keys.backup \\\n      --share /media/alice.share --share /media/bob.share --share /media/carol.share\n\nThe file holds no key in clear: without M shares it is of no use. Keep it off-site."
    )]
    Backup(BackupArgs),
    /// Restore the keys of a backup file into a fresh token (listed in [[hsm.tokens]]); any M shares, not necessarily those that wrote it.
    #[command(
        after_help = "Example:\n  meterpki hsm init-token --label meterpki-online-c\n  meterpki ceremony restore --from /media/vault/meterpki-keys.backup --to-token meterpki-online-c \\\n      --share /media/bob.share --share /media/dave.share --share /media/erin.share\n\nThe file's MAC is checked before anything changes: one altered byte and nothing is restored."
    )]
    Restore(RestoreArgs),
    /// Copy the root key into a new SoftHSM root token (same PINs as the root token), in a ceremony that takes both quorums: the root officers' shares and the key-backup officers'.
    #[command(
        name = "replicate-root",
        after_help = "Example:\n  meterpki ceremony replicate-root --to-token meterpki-root-b \\\n      --share /media/root/alice.share --share /media/root/bob.share --share /media/root/carol.share \\\n      --backup-share /media/kb/dave.share --backup-share /media/kb/erin.share --backup-share /media/kb/alice.share\n\nThe root key leaves the root token only wrapped under the key-backup key and is unwrapped inside\nthe new token. If the root token is lost, set hsm.root_token = \"meterpki-root-b\" in meterpki.toml:\nevery root ceremony then opens the copy with the same shares."
    )]
    ReplicateRoot(ReplicateRootArgs),
}

#[derive(Args, Debug)]
pub(crate) struct ReplicateRootArgs {
    /// The new root token to create and copy the root key into.
    #[arg(long)]
    pub to_token: String,
    /// A root-ceremony share file; give at least the root quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// A key-backup share file; give at least the key-backup quorum.
    #[arg(long = "backup-share", required = true)]
    pub backup_shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ReplicateArgs {
    /// The token to copy the keys into (in [[hsm.tokens]]).
    #[arg(long)]
    pub to_token: String,
    /// A key-backup share file; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct BackupArgs {
    /// The backup file to write (never overwritten; 0600).
    #[arg(long)]
    pub out: PathBuf,
    /// A key-backup share file; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RestoreArgs {
    /// The backup file written by `ceremony backup`.
    #[arg(long)]
    pub from: PathBuf,
    /// The token to restore the keys into (in [[hsm.tokens]]; a fresh one from `hsm init-token`).
    #[arg(long)]
    pub to_token: String,
    /// A key-backup share file; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RootCrlArgs {
    /// A share file; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RootRolloverArgs {
    /// A share file of the current root; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Where the new root's contingency shares go (one per officer, created 0700; keep them apart from the root's).
    #[arg(long)]
    pub contingency_shares_dir: PathBuf,
    /// The apex update targets only the meters of this hardware type (OID); default: every meter.
    #[arg(long)]
    pub hw_type: Option<String>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct ApexRecoverArgs {
    /// A share file of the current root; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// A contingency share file of the current root; give at least the quorum.
    #[arg(long = "contingency-share", required = true)]
    pub contingency_shares: Vec<PathBuf>,
    /// Where the new root's contingency shares go (one per officer, created 0700).
    #[arg(long)]
    pub contingency_shares_dir: PathBuf,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RevokeCaArgs {
    /// Which issuing CA: device, organisation or access.
    #[arg(long, value_parser = CaKind::parse_issuing)]
    pub kind: CaKind,
    /// Which generation (default: the current one); `meterpki status` lists them.
    #[arg(long)]
    pub generation: Option<u32>,
    /// RFC 5280 reason, e.g. cACompromise.
    #[arg(long)]
    pub reason: String,
    /// A share file; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct RootArgs {
    /// Number of officers N (one share each).
    #[arg(long)]
    pub officers: u8,
    /// Shares needed, M (2 <= M <= N).
    #[arg(long)]
    pub quorum: u8,
    /// Directory to write the share files to (created 0700 if missing).
    #[arg(long)]
    pub shares_dir: PathBuf,
    /// Officer names, one per officer, in order (default officer-1 ... officer-N).
    #[arg(long = "officer")]
    pub officer_names: Vec<String>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Args, Debug)]
pub(crate) struct IssuingArgs {
    /// Which issuing CA: device (meter certificates), organisation (supplier certificates, the trust-update signer) or access (TLS certificates for the API).
    #[arg(long, value_parser = CaKind::parse_issuing)]
    pub kind: CaKind,
    /// Make the next generation of an existing CA: a new key and name ("... G2"); new issuance moves to it, the previous generation keeps signing the CRLs of what it issued.
    #[arg(long)]
    pub renew: bool,
    /// A share file; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}
