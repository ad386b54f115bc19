//! `meterpki crl publish`.

use anyhow::Result;
use ca_core::crl::Published;
use ca_core::service::{AdminAnswer, AdminRequest};
use ca_core::CaKind;

use crate::cmd::{print_json, rfc3339};
use crate::ctx::Ctx;

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
            rfc3339(p.next_update),
            p.path.display()
        );
    }
    Ok(())
}

pub(super) fn publish(ctx: &Ctx, issuer: Option<CaKind>, full: bool) -> Result<()> {
    let answer = crate::remote::run(
        ctx,
        AdminRequest::PublishCrls {
            issuer: issuer.map(|k| k.name().to_string()),
            full,
        },
    )?;
    let AdminAnswer::Published { crls } = answer else {
        anyhow::bail!("the server answered another command");
    };
    print_published(ctx, &crls)
}
