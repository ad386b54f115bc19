//! Handing an operator's command to the `meterpki serve` that holds the home's store (see
//! `ca_core::service::AdminRequest`): through `<home>/run/admin.sock`, when a server answers
//! there; otherwise the command runs here.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::time::Duration;

use anyhow::{Context, Result};
use ca_core::service::{AdminAnswer, AdminRequest};
use ca_core::Home;

use crate::ctx::{operator, Ctx};
use crate::errors::input;

/// Runs `request` in the running server if there is one, else here.
pub(crate) fn run(ctx: &Ctx, request: AdminRequest) -> Result<AdminAnswer> {
    match forward(ctx.home(), &request)? {
        Some(answer) => Ok(answer),
        None => Ok(ctx.service.admin(&operator(), request)?),
    }
}

/// The server's answer, or None when no server listens on this home.
fn forward(home: &Home, request: &AdminRequest) -> Result<Option<AdminAnswer>> {
    let path = home.admin_socket();
    let mut stream = match UnixStream::connect(&path) {
        Ok(s) => s,
        // No server (or one that stopped without removing its socket): run here.
        Err(e)
            if matches!(
                e.kind(),
                std::io::ErrorKind::NotFound | std::io::ErrorKind::ConnectionRefused
            ) =>
        {
            return Ok(None)
        }
        Err(e) => {
            anyhow::bail!(
                "{} exists but cannot be reached ({e}): is `meterpki serve` run by another OS user? \
                 Run this command as the server's user",
                path.display()
            )
        }
    };
    tracing::info!(socket = %path.display(), "a server holds this home's store: the command runs there");
    // A revocation publishes CRLs before it answers; the HSM's own timeout bounds that.
    stream.set_read_timeout(Some(Duration::from_secs(600)))?;
    let mut line = serde_json::to_vec(&serde_json::json!({
        "operator": operator().name(),
        "request": request,
    }))?;
    line.push(b'\n');
    stream
        .write_all(&line)
        .with_context(|| format!("sending the command to the server at {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| format!("reading the server's answer from {}", path.display()))?;
    if answer.is_empty() {
        anyhow::bail!(
            "the server at {} closed the connection without answering (is it run by another OS user?)",
            path.display()
        );
    }
    let v: serde_json::Value = serde_json::from_str(&answer)
        .with_context(|| format!("the server's answer is not JSON: {answer:?}"))?;
    if let Some(e) = v.get("error") {
        let detail = e["detail"].as_str().unwrap_or("refused").to_string();
        return Err(if e["client_error"].as_bool().unwrap_or(false) {
            input(detail)
        } else {
            anyhow::anyhow!(detail)
        });
    }
    Ok(Some(serde_json::from_value(v["ok"].clone()).context(
        "the server's answer is not one this meterpki understands (are both the same version?)",
    )?))
}
