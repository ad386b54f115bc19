//! Command-line arguments. Every command's `--help` carries an example.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand, ValueEnum};

#[derive(Parser, Debug)]
#[command(
    name = "meterpki",
    version,
    about = "PKI and key management for smart metering: keys in HSMs, quorum ceremonies, audit.",
    after_help = "Examples:\n  meterpki init\n  meterpki ceremony root --officers 5 --quorum 3 --shares-dir shares\n  meterpki ceremony issuing-ca --kind device --share shares/officer-1.share --share shares/officer-2.share --share shares/officer-3.share\n  meterpki status --json\n\nPINs are never taken from the command line: the online token's PIN comes from\nMETERPKI_HSM_PIN, the file named in meterpki.toml (secrets/online.pin for SoftHSM homes) or a prompt."
)]
pub struct Cli {
    /// The meterpki home directory.
    #[arg(
        long,
        global = true,
        env = "METERPKI_HOME",
        default_value = "./meterpki-home"
    )]
    pub home: PathBuf,
    /// Print machine-readable JSON instead of text.
    #[arg(long, global = true)]
    pub json: bool,
    /// More log output on stderr (-v info, -vv debug); METERPKI_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Create a home: config, store, audit log and, for SoftHSM, a token directory and the online token.
    #[command(
        after_help = "Examples:\n  meterpki --home /srv/meterpki init\n  meterpki init --module /usr/lib/vendor/libpkcs11.so --online-token CA-ONLINE   # a vendor HSM; PIN from METERPKI_HSM_PIN"
    )]
    Init(InitArgs),
    /// Key ceremonies: the root (quorum of officers) and the issuing CAs.
    #[command(subcommand)]
    Ceremony(CeremonyCommand),
    /// Tokens, keys, CA certificates with fingerprints, audit head.
    #[command(after_help = "Example:\n  meterpki status --json | jq '.cas'")]
    Status,
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// Benchmarks (figures, not tests).
    #[command(subcommand)]
    Bench(BenchCommand),
}

#[derive(Args, Debug)]
pub struct InitArgs {
    /// PKCS#11 module. Default: the installed SoftHSM2 module.
    #[arg(long)]
    pub module: Option<PathBuf>,
    /// Label of the online token (issuing CA keys). For SoftHSM it is created.
    #[arg(long, default_value = "meterpki-online")]
    pub online_token: String,
    /// Label of the root token, created at the root ceremony.
    #[arg(long, default_value = "meterpki-root")]
    pub root_token: String,
    /// Organisation name (O=) in the CA certificates.
    #[arg(long, default_value = "meterpki")]
    pub org: String,
    /// Sessions in the signing pool.
    #[arg(long, default_value_t = 2)]
    pub sessions: usize,
}

#[derive(Subcommand, Debug)]
pub enum CeremonyCommand {
    /// Create the root token with a random PIN split into N shares (M needed), the P-384 root key and the self-signed root certificate.
    #[command(
        after_help = "Example:\n  meterpki ceremony root --officers 5 --quorum 3 --shares-dir /media/officers \\\n      --officer alice --officer bob --officer carol --officer dave --officer erin\n\nEach officer receives one file DIR/<officer>.share (mode 0600). Any QUORUM of them open the root\ntoken at a later ceremony; fewer reveal nothing."
    )]
    Root(RootArgs),
    /// Generate an issuing CA key on the online token and certify it with the root key, opened by a quorum of shares.
    #[command(
        name = "issuing-ca",
        after_help = "Example:\n  meterpki ceremony issuing-ca --kind device \\\n      --share /media/alice.share --share /media/bob.share --share /media/carol.share"
    )]
    IssuingCa(IssuingArgs),
}

#[derive(Args, Debug)]
pub struct RootArgs {
    /// Number of officers N (one share each).
    #[arg(long)]
    pub officers: u8,
    /// Shares needed to open the root token, M (2 <= M <= N).
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

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum IssuingKind {
    /// Device CA: meter certificates.
    Device,
    /// Organisation CA: supplier certificates, trust-update signer.
    Organisation,
    /// Access CA: TLS certificates for the API.
    Access,
}

#[derive(Args, Debug)]
pub struct IssuingArgs {
    /// Which issuing CA.
    #[arg(long, value_enum)]
    pub kind: IssuingKind,
    /// A share file; give at least the quorum.
    #[arg(long = "share", required = true)]
    pub shares: Vec<PathBuf>,
    /// Who runs the ceremony (default: $USER).
    #[arg(long)]
    pub operator: Option<String>,
}

#[derive(Subcommand, Debug)]
pub enum AuditCommand {
    /// Check every record's hash, link and sequence number and every signed head; name the first altered, removed or reordered record.
    #[command(after_help = "Example:\n  meterpki audit verify && echo intact")]
    Verify,
    /// Print the records.
    #[command(after_help = "Example:\n  meterpki audit list --json | jq '.[] | .event'")]
    List,
}

#[derive(Subcommand, Debug)]
pub enum BenchCommand {
    /// Raw signing rates of the online token: bare cryptoki loop vs hsm-bridge, 1 and 2 sessions, P-256 and P-384.
    #[command(after_help = "Example:\n  meterpki bench hsm --seconds 5")]
    Hsm {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
}
