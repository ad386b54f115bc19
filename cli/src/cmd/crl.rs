//! `meterpki crl publish`.

use anyhow::Result;
use ca_core::crl::Published;
use ca_core::CaKind;

use crate::cmd::{print_json, rfc3339};
use crate::ctx::{operator, Ctx};

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
    let published = ctx.service.publish_crls(&operator(), issuer, full, None)?;
    print_published(ctx, &published)
}
