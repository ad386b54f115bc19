//! `meterpki crl publish`.

use std::sync::Arc;

use anyhow::Result;
use ca_core::crl::{publish_all, Published};
use ca_core::issue::IssuerCtx;
use ca_core::CaKind;
use hsm_bridge::Token;
use serde_json::json;

use crate::args::IssuingKind;
use crate::cmd::ceremony::AUDIT_KEY_LABEL;
use crate::cmd::print_json;
use crate::ctx::{os_user, Ctx};
use crate::errors::input;

/// The issuing CAs of this home, each bound to its HSM key.
pub(crate) fn issuers(
    ctx: &Ctx,
    online: &Arc<Token>,
    only: Option<CaKind>,
) -> Result<Vec<IssuerCtx>> {
    let mut out = Vec::new();
    for (kind, ikind) in [
        (CaKind::Device, policies::IssuerKind::Device),
        (CaKind::Organisation, policies::IssuerKind::Organisation),
        (CaKind::Access, policies::IssuerKind::Access),
    ] {
        if only.is_some_and(|o| o != kind) || !ctx.home.ca_cert(kind).exists() {
            continue;
        }
        let (signer, cert) = ctx.issuer(online, kind)?;
        out.push(IssuerCtx::new(ikind, cert, Arc::new(signer))?);
    }
    if out.is_empty() {
        return Err(input(match only {
            Some(k) => format!("there is no {k} CA in this home"),
            None => {
                "there is no issuing CA in this home yet: run `meterpki ceremony issuing-ca`".into()
            }
        }));
    }
    Ok(out)
}

/// Publishes the CRLs of `issuers` (all shards, or only `shards` when given) and records it in
/// the audit log, whose head the audit key then signs.
pub(crate) fn publish_issuers(
    ctx: &Ctx,
    online: &Arc<Token>,
    issuers: &[IssuerCtx],
    full: bool,
    only_shards: Option<&std::collections::BTreeSet<(String, u32)>>,
) -> Result<Vec<Published>> {
    let store = ctx.store()?;
    let settings = ctx.crl_settings();
    ca_core::crl::check_shards(store.as_ref(), &settings).map_err(|e| input(e.to_string()))?;
    let mut published = Vec::new();
    for issuer in issuers {
        let dir = ctx.home.crl_dir().join(issuer.kind().name());
        match only_shards {
            None => published.extend(publish_all(issuer, store.as_ref(), &settings, &dir, full)?),
            Some(set) => {
                for (_, shard) in set.iter().filter(|(n, _)| n == issuer.kind().name()) {
                    let scope = if settings.base_url.is_some() {
                        ca_core::crl::CrlScope::Shard(*shard)
                    } else {
                        ca_core::crl::CrlScope::Full
                    };
                    published.push(ca_core::crl::publish(
                        issuer,
                        store.as_ref(),
                        &settings,
                        scope,
                        &dir,
                    )?);
                }
            }
        }
    }
    let audit = ctx.audit(store);
    audit.append(
        "crl.publish",
        &os_user(),
        json!({"crls": published.iter().map(|p| json!({"issuer": p.issuer, "scope": p.scope, "crl_number": p.crl_number, "entries": p.entries})).collect::<Vec<_>>()}),
    )?;
    audit.sign_head(
        &online.signer(AUDIT_KEY_LABEL)?,
        AUDIT_KEY_LABEL,
        &os_user(),
    )?;
    Ok(published)
}

pub(crate) fn print_published(ctx: &Ctx, published: &[Published]) -> Result<()> {
    if ctx.json {
        return print_json(&published);
    }
    for p in published {
        println!(
            "published {:<13} {:>4}  cRLNumber {:<6} {:>7} entries {:>9} bytes  next update {}  {}",
            p.issuer,
            p.scope,
            p.crl_number,
            p.entries,
            p.bytes,
            time::OffsetDateTime::from_unix_timestamp(p.next_update)
                .ok()
                .and_then(|t| t
                    .format(&time::format_description::well_known::Rfc3339)
                    .ok())
                .unwrap_or_default(),
            p.path.display()
        );
    }
    Ok(())
}

pub fn publish(ctx: &Ctx, issuer: Option<IssuingKind>, full: bool) -> Result<()> {
    let only = issuer.map(|k| match k {
        IssuingKind::Device => CaKind::Device,
        IssuingKind::Organisation => CaKind::Organisation,
        IssuingKind::Access => CaKind::Access,
    });
    let hsm = ctx.hsm()?;
    let online = ctx.online(&hsm)?;
    let issuers = issuers(ctx, &online, only)?;
    let published = publish_issuers(ctx, &online, &issuers, full, None)?;
    print_published(ctx, &published)
}
