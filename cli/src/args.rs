//! Command-line arguments. Every command's `--help` carries an example.

use std::path::PathBuf;

use ca_core::CaKind;
use clap::{Args, Parser, Subcommand};

mod ceremony;
pub(crate) use ceremony::*;

#[derive(Parser, Debug)]
#[command(
    name = "meterpki",
    version,
    about = "PKI and key management for smart metering: keys in HSMs, quorum ceremonies, audit.",
    after_help = "Examples:\n  meterpki init\n  meterpki ceremony root --officers 5 --quorum 3 --shares-dir shares\n  meterpki ceremony issuing-ca --kind device --share shares/officer-1.share --share shares/officer-2.share --share shares/officer-3.share\n  meterpki status --json\n\nPINs are never taken from the command line: the online token's PIN comes from\nMETERPKI_HSM_PIN, the file named in meterpki.toml (secrets/online.pin for SoftHSM homes) or a prompt."
)]
pub(crate) struct Cli {
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
pub(crate) enum Command {
    /// Create a home: config, store, audit log and, for SoftHSM, a token directory and the online token.
    #[command(
        after_help = "Examples:\n  meterpki --home /srv/meterpki init\n  meterpki init --module /usr/lib/vendor/libpkcs11.so --online-token CA-ONLINE   # a vendor HSM; PIN from METERPKI_HSM_PIN"
    )]
    Init(InitArgs),
    /// Key ceremonies: the root (quorum of officers) and the issuing CAs.
    #[command(subcommand)]
    Ceremony(CeremonyCommand),
    /// Issue meter or supplier certificates: one from a CSR, or a batch from an NDJSON file.
    #[command(
        after_help = "Examples:\n  meterpki issue --profile meter-signing --device-id 00-DB-12-34-56-78-90-01 --csr meter.csr --out meter.pem\n  meterpki issue --profile supplier-signing --entity-id 90-B3-D5-1F-30-00-00-02 --name \"Example Energy\" --csr s.csr\n  meterpki issue --batch line-7.ndjson --out line-7.results.ndjson\n\nA batch line is one request item:\n  {\"profile\": \"meter-signing\", \"device_id\": \"00-DB-12-34-56-78-90-01\", \"csr\": \"<base64 DER or PEM>\"}\nwith \"public_key\" (base64 SubjectPublicKeyInfo) instead of \"csr\" where the profile allows it, and an\noptional \"replace\": true. Each result line: {\"index\", \"line\", \"status\": \"issued\"|\"rejected\", \"serial\",\n\"certificate\" (base64 DER), \"existing\"} or {\"error\": {\"code\", \"detail\"}}. Re-running a batch issues nothing twice."
    )]
    Issue(IssueArgs),
    /// Revoke certificates by serial, by device, or every certificate of a supplier.
    #[command(
        after_help = "Examples:\n  meterpki revoke --serial 4f1c2a9b0d3e5f6071 --reason keyCompromise --invalidity-date 2026-11-20T08:00:00Z\n  meterpki revoke --device-id 00-DB-12-34-56-78-90-01 --reason cessationOfOperation\n  meterpki revoke --supplier 90-B3-D5-1F-30-00-00-02 --reason affiliationChanged\n  meterpki revoke --serials-file compromised.txt --reason keyCompromise\n\nReasons (RFC 5280): unspecified, keyCompromise, cACompromise, affiliationChanged, superseded,\ncessationOfOperation, privilegeWithdrawn, aACompromise. Revoking twice is harmless: the first\nrevocation stands and is reported. The affected CRLs are published before the command returns."
    )]
    Revoke(RevokeArgs),
    /// Certificate revocation lists.
    #[command(subcommand)]
    Crl(CrlCommand),
    /// API accounts: each bound to a client certificate from the Access CA.
    #[command(subcommand)]
    Account(AccountCommand),
    /// Run the issuance API: axum over rustls with client certificates (mTLS).
    #[command(
        after_help = "Example:\n  meterpki serve --listen 127.0.0.1:8443 --crl-listen 127.0.0.1:8080\n  openssl verify -crl_check_all -crl_download -CAfile root.pem -untrusted device.pem meter.pem\n  curl --cert creds/line-7.pem --key creds/line-7.key --cacert creds/ca.pem \\\n       -H 'content-type: application/json' -d @batch.json https://127.0.0.1:8443/v1/batches\n\nThe server's TLS key is generated in the online token (meterpki-api-server) and its certificate\nissued by the Access CA at first start (<home>/ca/api-server.pem). SIGTERM or Ctrl-C: stop\naccepting, finish in-flight batches, exit."
    )]
    Serve {
        /// Address to listen on (default: server.listen from meterpki.toml).
        #[arg(long)]
        listen: Option<String>,
        /// Address of the plain-HTTP listener that serves CRLs and CA certificates to relying parties (default: server.crl_listen, 127.0.0.1:8080; "" for none).
        #[arg(long)]
        crl_listen: Option<String>,
        /// DNS names for the server certificate (default: localhost).
        #[arg(long = "dns")]
        dns: Vec<String>,
        /// IP addresses for the server certificate (default: 127.0.0.1).
        #[arg(long = "ip")]
        ips: Vec<std::net::IpAddr>,
        /// Requests one account may have in flight; more get 429.
        #[arg(long, default_value_t = 4)]
        per_account_limit: usize,
    },
    /// Energy suppliers: registry, key enrolment, rotation and revocation, takeover and exit.
    #[command(subcommand)]
    Supplier(SupplierCommand),
    /// Meters: assignment to a supplier and change of supplier, with trust-anchor updates.
    #[command(subcommand)]
    Meter(MeterCommand),
    /// Trust-anchor updates (CMS SignedData carrying an RFC 5934 TAMPUpdate).
    #[command(subcommand)]
    Update(UpdateCommand),
    /// Show stored certificates by serial or by device / entity ID.
    #[command(
        after_help = "Examples:\n  meterpki show --serial 4f1c2a9b0d3e5f6071\n  meterpki show --device-id 00-DB-12-34-56-78-90-01 --json"
    )]
    Show(ShowArgs),
    /// Tokens, keys, CA certificates with fingerprints, audit head.
    #[command(after_help = "Example:\n  meterpki status --json | jq '.cas'")]
    Status,
    /// The hash-chained audit log.
    #[command(subcommand)]
    Audit(AuditCommand),
    /// The HSM: the raw signing rate of the online token.
    #[command(subcommand)]
    Hsm(HsmCommand),
    /// The store: PostgreSQL schema migrations, moving an embedded store to PostgreSQL, checking indexes and counters.
    #[command(subcommand)]
    Store(StoreCommand),
}

#[derive(Subcommand, Debug)]
pub(crate) enum StoreCommand {
    /// Without --to: apply the PostgreSQL schema migrations this meterpki ships to the home's database (store.backend = "postgres"; run before the first `serve` and after an upgrade). With --to postgres --url-file FILE: copy the embedded store into an empty PostgreSQL database, check both hold the same entries (counts and a SHA-256 of every entry), record it in the audit log, and only then switch meterpki.toml to the database. Interrupted, run it again.
    #[command(
        after_help = "Examples:\n  meterpki store migrate                                   # the schema of the configured PostgreSQL store\n  meterpki store migrate --to postgres --url-file /etc/meterpki/db.url   # move this home's embedded store (server stopped)\n\nThe URL file holds one line, e.g. postgresql://meterpki@db1,db2/meterpki?target_session_attrs=read-write (keep it 0600 if it holds a password)."
    )]
    Migrate {
        /// The backend to move the store to: postgres.
        #[arg(long, value_parser = ["postgres"], requires = "url_file")]
        to: Option<String>,
        /// A file holding the target database's connection URL (first line).
        #[arg(long, value_name = "FILE", requires = "to")]
        url_file: Option<PathBuf>,
    },
    /// Check every index and counter of the store against the records it points at (either backend); exit 1 on a problem.
    #[command(after_help = "Example:\n  meterpki store check --json")]
    Check,
}

#[derive(Args, Debug)]
pub(crate) struct InitArgs {
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
    /// none: online keys never leave their token. quorum: they can be copied to other tokens
    /// and backed up, wrapped under a key-backup key that only M of N officers can rebuild
    /// (`ceremony backup-key`, `replicate`, `backup`, `restore`; docs/hsms.md). Fixed for
    /// the home's life.
    #[arg(long, value_enum, default_value = "none")]
    pub key_backup: KeyBackupArg,
}

/// `--key-backup`.
#[derive(clap::ValueEnum, Clone, Copy, Debug)]
pub(crate) enum KeyBackupArg {
    /// Keys never leave their token.
    None,
    /// Keys leave their token only wrapped under the quorum's key-backup key.
    Quorum,
}

#[derive(Args, Debug)]
pub(crate) struct IssueArgs {
    /// Profile of a single certificate (meter-signing, meter-key-agreement, supplier-signing, supplier-key-agreement).
    #[arg(long, conflicts_with = "batch")]
    pub profile: Option<String>,
    /// The meter's EUI-64 (meter profiles).
    #[arg(long, conflicts_with = "batch")]
    pub device_id: Option<String>,
    /// The party's EUI-64 entity ID (supplier profiles).
    #[arg(long, conflicts_with = "batch")]
    pub entity_id: Option<String>,
    /// The party's registered name (supplier profiles).
    #[arg(long, conflicts_with = "batch")]
    pub name: Option<String>,
    /// PKCS#10 CSR file (PEM or DER).
    #[arg(long, conflicts_with_all = ["batch", "public_key"])]
    pub csr: Option<PathBuf>,
    /// SubjectPublicKeyInfo file (PEM or DER), where the profile allows a bare key.
    #[arg(long, conflicts_with = "batch")]
    pub public_key: Option<PathBuf>,
    /// Replace the active certificate of this device and usage held for another key.
    #[arg(long, conflicts_with = "batch")]
    pub replace: bool,
    /// An NDJSON file of request items, one per line.
    #[arg(long)]
    pub batch: Option<PathBuf>,
    /// Output: the certificate (PEM) for one request; the results (NDJSON) for a batch.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Items per transaction in a batch: stored and flushed together before their results are written.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub chunk: u32,
}

#[derive(Args, Debug)]
pub(crate) struct RevokeArgs {
    #[command(flatten)]
    pub which: RevokeWhich,
    /// RFC 5280 reason.
    #[arg(long)]
    pub reason: String,
    /// When the key is known or suspected to have been compromised (RFC 3339), for the CRL entry's invalidityDate.
    #[arg(long)]
    pub invalidity_date: Option<String>,
    /// The CRLs of the affected shards (and the full CRL) are republished before the command returns; kept for scripts written when this was optional.
    #[arg(long, hide = true)]
    pub publish: bool,
    /// Do not republish now (a mass revocation to be published by one `meterpki crl publish` after it); refused for keyCompromise and cACompromise.
    #[arg(long, conflicts_with = "publish")]
    pub no_publish: bool,
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct RevokeWhich {
    /// Serial number(s), hex.
    #[arg(long)]
    pub serial: Vec<String>,
    /// Every active certificate of this device.
    #[arg(long)]
    pub device_id: Option<String>,
    /// Every certificate of this supplier (entity ID).
    #[arg(long)]
    pub supplier: Option<String>,
    /// A file of serials, one hex serial per line.
    #[arg(long)]
    pub serials_file: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AccountCommand {
    /// Create an account and issue its api-client certificate: writes DIR/<name>.pem (certificate and Access CA), DIR/<name>.key (0600, unless --csr) and DIR/ca.pem (the chain to trust the server).
    #[command(
        after_help = "Examples:\n  meterpki account add --role factory --name line-7 --device-range 00-DB-12-00-00-00-00-00/24 --out creds/\n  meterpki account add --role supplier --name example-energy --supplier 90-B3-D5-1F-30-00-00-02 --out creds/\n  meterpki account add --role operator --name ops-1 --csr ops-1.csr --out creds/"
    )]
    Add {
        /// factory, supplier or operator.
        #[arg(long)]
        role: String,
        /// Account name (the certificate's CN; names the files).
        #[arg(long)]
        name: String,
        /// Factory accounts: the EUI-64 range the line may name, PREFIX/BITS.
        #[arg(long)]
        device_range: Option<String>,
        /// Supplier accounts: the supplier's entity ID (EUI-64).
        #[arg(long)]
        supplier: Option<String>,
        /// Use the key in this CSR instead of generating one (no key file is written).
        #[arg(long)]
        csr: Option<PathBuf>,
        /// Factory accounts: may send bare public keys instead of CSRs (keys made in a meter's secure element on an authenticated line). Off by default.
        #[arg(long)]
        allow_bare_public_key: bool,
        /// Where to write the credentials.
        #[arg(long)]
        out: PathBuf,
    },
    /// List the accounts.
    #[command(after_help = "Example:\n  meterpki account list --json")]
    List,
    /// Disable an account: refused from now on, its certificate revoked (privilegeWithdrawn) and the Access CA's CRLs republished.
    #[command(after_help = "Example:\n  meterpki account disable --name line-7")]
    Disable {
        /// Account name.
        #[arg(long)]
        name: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum CrlCommand {
    /// Build, sign (in the HSM) and write every shard's CRL to <home>/crl/<issuer>/<shard>.crl, and the full CRL with --full.
    #[command(
        after_help = "Examples:\n  meterpki crl publish\n  meterpki crl publish --issuer device --full --json\n\nVerify a shard: openssl crl -in <home>/crl/device/3.crl -inform DER -CAfile <chain.pem> -noout"
    )]
    Publish {
        /// Only this issuer: device, organisation or access.
        #[arg(long, value_parser = CaKind::parse_issuing)]
        issuer: Option<CaKind>,
        /// Also publish the full (unsharded) CRL, <home>/crl/<issuer>/full.crl.
        #[arg(long)]
        full: bool,
    },
}

#[derive(Args, Debug)]
#[group(required = true, multiple = false)]
pub(crate) struct ShowArgs {
    /// Serial number, hex.
    #[arg(long)]
    pub serial: Option<String>,
    /// Device or entity ID (EUI-64).
    #[arg(long)]
    pub device_id: Option<String>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum AuditCommand {
    /// Check every record's hash, link, sequence number and audit-key signature; name the first altered, removed, reordered or unsigned record.
    #[command(after_help = "Example:\n  meterpki audit verify && echo intact")]
    Verify,
    /// Print the records.
    #[command(after_help = "Example:\n  meterpki audit list --json | jq '.[] | .event'")]
    List,
}

#[derive(Subcommand, Debug)]
pub(crate) enum HsmCommand {
    /// Raw signing rates of the online token: a bare cryptoki loop (with the token object, and with a session copy of the key as the pool signs) vs hsm-bridge, 1 and 2 sessions, P-256 and P-384. The figures the issuance benchmarks (the meterpki-bench binary) compare against.
    #[command(after_help = "Example:\n  meterpki hsm bench --seconds 5")]
    Bench {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 3.0)]
        seconds: f64,
    },
    /// Create a SoftHSM token in this home (random PINs in secrets/<label>.pin and secrets/<label>-so.pin, 0600) and list it in [[hsm.tokens]]; `ceremony replicate` or `ceremony restore` then puts the online keys in it.
    #[command(
        name = "init-token",
        after_help = "Example:\n  meterpki hsm init-token --label meterpki-online-b\n  meterpki ceremony replicate --to-token meterpki-online-b --share ... --share ...\n\nUntil it holds the keys, commands that sign refuse to start, naming the token."
    )]
    InitToken {
        /// The new token's label (1 to 32 letters, digits, '-', '_', '.').
        #[arg(long)]
        label: String,
    },
}

/// Where a churn command writes its trust-anchor updates.
#[derive(Args, Debug, Clone)]
#[group(required = false, multiple = false)]
pub(crate) struct UpdatesOut {
    /// Write one update per meter as DIR/<DEVICE-ID>.tamp.der (DER CMS SignedData).
    #[arg(long, value_name = "DIR")]
    pub updates_out: Option<PathBuf>,
    /// Append one NDJSON line per meter, {"device_id", "seq", "update": <base64 DER>}, to FILE.
    #[arg(long, value_name = "FILE")]
    pub updates_ndjson: Option<PathBuf>,
}

/// What every churn command shares: where the updates go, and the chunk size.
#[derive(Args, Debug, Clone)]
pub(crate) struct ChurnOut {
    #[command(flatten)]
    pub updates: UpdatesOut,
    /// Meters (or lines of a bulk file) per chunk: signed, written and stored together.
    #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
    pub chunk: u32,
}

#[derive(Subcommand, Debug)]
pub(crate) enum SupplierCommand {
    /// Register a supplier (active from now on).
    #[command(
        after_help = "Example:\n  meterpki supplier register --id 90-B3-D5-1F-30-00-00-02 --name \"Example Energy\""
    )]
    Register {
        /// The supplier's EUI-64 entity ID.
        #[arg(long)]
        id: String,
        /// Registered name: the CN of its certificates.
        #[arg(long)]
        name: String,
    },
    /// List the registered suppliers with their state, keys and meter counts.
    #[command(after_help = "Example:\n  meterpki supplier list --json")]
    List,
    /// Issue a supplier certificate from its CSR (signing or key agreement).
    #[command(
        after_help = "Example:\n  meterpki supplier enrol --id 90-B3-D5-1F-30-00-00-02 --profile supplier-signing --csr sign.csr --out sign.pem\n\nA supplier that is not active cannot enrol. To replace an enrolled key, use `supplier rotate`."
    )]
    Enrol(EnrolArgs),
    /// Replace a supplier key: issue the new certificate, revoke the old one as superseded, and make the updates that swap the key in every meter the supplier serves.
    #[command(
        after_help = "Example:\n  meterpki supplier rotate --id 90-B3-D5-1F-30-00-00-02 --profile supplier-signing --csr new-sign.csr --updates-out updates/\n\nRe-running after a crash completes the same rotation: meters already updated are skipped."
    )]
    Rotate {
        #[command(flatten)]
        enrol: EnrolArgs,
        #[command(flatten)]
        out: ChurnOut,
    },
    /// Revoke one supplier certificate, republish the Organisation CA's CRLs and make the updates that remove the key from every meter the supplier serves.
    #[command(
        name = "revoke-key",
        after_help = "Example:\n  meterpki supplier revoke-key --serial 4f1c2a9b0d3e5f6071 --reason keyCompromise --updates-out updates/"
    )]
    RevokeKey {
        /// Serial of the supplier certificate, hex.
        #[arg(long)]
        serial: String,
        /// RFC 5280 reason (keyCompromise, superseded, affiliationChanged, ...).
        #[arg(long)]
        reason: String,
        #[command(flatten)]
        out: ChurnOut,
    },
    /// Supplier B takes over supplier A: A becomes acquired, A's certificates are revoked (cessationOfOperation) and the CRLs republished at once, every meter of A moves to B with its update.
    #[command(
        after_help = "Example:\n  meterpki supplier takeover --from 90-B3-D5-1F-30-00-00-02 --to 90-B3-D5-1F-30-00-00-03 --updates-out updates/\n\nRe-running after a crash completes the takeover: every meter moves exactly once."
    )]
    Takeover {
        /// The supplier taken over (A).
        #[arg(long)]
        from: String,
        /// The acquiring supplier (B).
        #[arg(long)]
        to: String,
        #[command(flatten)]
        out: ChurnOut,
    },
    /// After an Organisation CA renewal (or a compromise of its earlier generation): certify every active supplier key again under the current generation (the earlier certificates superseded) and make the updates that replace the supplier's certificates in every meter it serves.
    #[command(
        after_help = "Example:\n  meterpki supplier recertify --updates-out updates/\n  meterpki supplier recertify --supplier 90-B3-D5-1F-30-00-00-02 --updates-ndjson recertify.ndjson --json\n\nThe trust-update signer is certified again first. Re-running after a crash completes the\nsame operations: every meter gets its update once, and a supplier whose certificates already\ncome from the current generation is left alone."
    )]
    Recertify {
        /// Only this supplier (entity ID); every active supplier when absent.
        #[arg(long)]
        supplier: Option<String>,
        #[command(flatten)]
        out: ChurnOut,
    },
    /// A supplier leaves the market: as a takeover, its meters going to the named supplier of last resort; it becomes exited.
    #[command(
        after_help = "Example:\n  meterpki supplier exit --id 90-B3-D5-1F-30-00-00-02 --successor 90-B3-D5-1F-30-00-00-09 --updates-ndjson exit-updates.ndjson"
    )]
    Exit {
        /// The supplier leaving.
        #[arg(long)]
        id: String,
        /// The supplier of last resort that takes its meters.
        #[arg(long)]
        successor: String,
        #[command(flatten)]
        out: ChurnOut,
    },
}

#[derive(Args, Debug, Clone)]
pub(crate) struct EnrolArgs {
    /// The supplier's entity ID.
    #[arg(long)]
    pub id: String,
    /// supplier-signing or supplier-key-agreement.
    #[arg(long)]
    pub profile: String,
    /// The supplier's PKCS#10 CSR (PEM or DER).
    #[arg(long)]
    pub csr: PathBuf,
    /// Write the certificate (PEM) here.
    #[arg(long)]
    pub out: Option<PathBuf>,
}

#[derive(Subcommand, Debug)]
pub(crate) enum MeterCommand {
    /// Assign meters to their first supplier: one, or a bulk file of millions of lines (NDJSON {"device_id", "supplier"} or CSV device_id,supplier).
    #[command(
        after_help = "Examples:\n  meterpki meter assign --device-id 00-DB-12-34-56-78-90-01 --supplier 90-B3-D5-1F-30-00-00-02\n  meterpki meter assign --file rollout.csv --updates-out updates/\n\nLines that are wrong are reported with their line numbers; the rest are applied. Re-running a\nfile is harmless: meters already with that supplier are counted as such. Updates (adding the\nsupplier's certificates) are made only when --updates-out or --updates-ndjson is given."
    )]
    Assign {
        /// The meter (EUI-64).
        #[arg(long, requires = "supplier", conflicts_with = "file")]
        device_id: Option<String>,
        /// The supplier (entity ID).
        #[arg(long, conflicts_with = "file")]
        supplier: Option<String>,
        /// A bulk file: NDJSON or CSV.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        out: ChurnOut,
    },
    /// Change the supplier of meters: one, or a bulk file (NDJSON {"device_id", "to"} or CSV device_id,to); each gets an update removing the old supplier's keys and adding the new supplier's certificates.
    #[command(
        name = "change-supplier",
        after_help = "Examples:\n  meterpki meter change-supplier --device-id 00-DB-12-34-56-78-90-01 --to 90-B3-D5-1F-30-00-00-03 --updates-out updates/\n  meterpki meter change-supplier --file switches.csv --updates-ndjson switches.ndjson"
    )]
    ChangeSupplier {
        /// The meter (EUI-64).
        #[arg(long, requires = "to", conflicts_with = "file")]
        device_id: Option<String>,
        /// The new supplier (entity ID).
        #[arg(long, conflicts_with = "file")]
        to: Option<String>,
        /// A bulk file: NDJSON or CSV.
        #[arg(long)]
        file: Option<PathBuf>,
        #[command(flatten)]
        out: ChurnOut,
    },
    /// Re-issuance campaign after a Device CA compromise and renewal: replace the certificates of meters already in service with certificates from the current Device CA generation, from the CSRs their head ends collect (NDJSON {"device_id", "profile", "csr"}).
    #[command(
        after_help = "Example:\n  meterpki meter reissue --file collected-csrs.ndjson --out reissued.ndjson\n\nEach line names a meter that already has a certificate and a meter profile (meter-signing,\nmeter-key-agreement); its certificate for that usage is replaced (the earlier one revoked as\nsuperseded). A CSR for the meter's existing key re-certifies it. Results go to --out, one NDJSON\nline per input line, {\"line\", \"serial\", \"certificate\"} or {\"line\", \"error\"}. Re-running the file\nafter a crash answers the certificates already issued; nothing is issued twice."
    )]
    Reissue {
        /// The NDJSON file of collected CSRs.
        #[arg(long)]
        file: PathBuf,
        /// Where the results go (NDJSON).
        #[arg(long)]
        out: PathBuf,
        /// Lines per transaction.
        #[arg(long, default_value_t = 1000, value_parser = clap::value_parser!(u32).range(1..=10000))]
        chunk: u32,
    },
    /// A meter's current supplier and last update.
    #[command(
        after_help = "Example:\n  meterpki meter show --device-id 00-DB-12-34-56-78-90-01 --json"
    )]
    Show {
        /// The meter (EUI-64).
        #[arg(long)]
        device_id: String,
    },
}

#[derive(Subcommand, Debug)]
pub(crate) enum UpdateCommand {
    /// Check an update (a TAMP update or an apex update) as a meter would: CMS signature, signer chain to the root, the signer's policy OID and key usage, the target, and a sequence number greater than the last one seen.
    #[command(
        after_help = "Examples:\n  meterpki update verify updates/00-DB-12-34-56-78-90-01.tamp.der --root meterpki-home/ca/root.pem\n  meterpki update verify u.der --root root.pem --device-id 00-DB-12-34-56-78-90-01 --after 41 --json\n  meterpki update verify meterpki-home/updates/apex-1.der --root meterpki-home/ca/generations/root-1.pem\n\nAn apex update (RFC 5934 §4.5, written by `ceremony root-rollover`) is checked against --root as\nthe meter's current apex trust anchor: signed by it, for this meter (--hw-type), a sequence number\nabove --after, a self-signed new root.\n\nExit 0 when the update verifies, 2 when it does not (the reason is printed)."
    )]
    Verify {
        /// The update (DER).
        file: PathBuf,
        /// The root CA certificate (PEM or DER) the meter trusts.
        #[arg(long)]
        root: PathBuf,
        /// The meter: the update must target it.
        #[arg(long)]
        device_id: Option<String>,
        /// The last sequence number the meter accepted: the update's must be greater.
        #[arg(long)]
        after: Option<u64>,
        /// The trust-update signer's policy OID (default: the trust-update-signer profile's).
        #[arg(long)]
        policy_oid: Option<String>,
        /// The meter's hardware type (an apex update for one hwType must name it).
        #[arg(long)]
        hw_type: Option<String>,
    },
}
