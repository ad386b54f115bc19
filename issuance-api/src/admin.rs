//! The operator's socket: `<home>/run/admin.sock`, a Unix socket only the home's OS user can
//! reach (mode 0600 in a 0700 directory, and the peer's uid checked against the socket's
//! owner). The CLI sends one JSON line `{"operator": NAME, "request": AdminRequest}` and gets
//! one line back: `{"ok": AdminAnswer}` or `{"error": {"code", "detail", "client_error"}}`.
//! This is how `meterpki revoke`, `account disable` and `crl publish` work while the server
//! holds the embedded store; see `ca_core::service::AdminRequest`.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ca_core::service::{Actor, AdminRequest, Service};
use serde::Deserialize;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{UnixListener, UnixStream};

/// The largest request line: a revocation of many serials fits.
const MAX_LINE: u64 = 8 * 1024 * 1024;

#[derive(Deserialize)]
struct Envelope {
    operator: String,
    request: AdminRequest,
}

/// The socket, bound and ready; removed when dropped.
pub struct AdminSocket {
    listener: UnixListener,
    path: PathBuf,
    owner: u32,
}

impl Drop for AdminSocket {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

impl AdminSocket {
    /// Binds `path` (its directory made 0700; a socket left by a server that died is
    /// replaced, a live one refused).
    pub fn bind(path: &Path) -> std::io::Result<AdminSocket> {
        let dir = path.parent().unwrap_or(Path::new("."));
        std::fs::create_dir_all(dir)?;
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
        if path.exists() {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    format!(
                        "{} answers: another `meterpki serve` runs on this home",
                        path.display()
                    ),
                ));
            }
            std::fs::remove_file(path)?;
        }
        let listener = UnixListener::bind(path)?;
        std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
        let owner = std::fs::metadata(path)?.uid();
        Ok(AdminSocket {
            listener,
            path: path.to_path_buf(),
            owner,
        })
    }

    /// Serves operators until `shutdown` resolves.
    pub async fn serve(
        self,
        service: Arc<Service>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        tokio::pin!(shutdown);
        loop {
            let stream = tokio::select! {
                r = self.listener.accept() => match r {
                    Ok((s, _)) => s,
                    Err(e) => {
                        tracing::warn!(error = %e, "admin socket: accept failed");
                        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                        continue;
                    }
                },
                _ = &mut shutdown => break,
            };
            let service = service.clone();
            let owner = self.owner;
            tokio::spawn(async move {
                if let Err(e) = one(stream, service, owner).await {
                    tracing::info!(error = %e, "admin socket: connection ended");
                }
            });
        }
    }
}

async fn one(stream: UnixStream, service: Arc<Service>, owner: u32) -> std::io::Result<()> {
    let peer = stream.peer_cred()?.uid();
    let (read, mut write) = stream.into_split();
    if peer != owner {
        tracing::warn!(
            peer,
            owner,
            "admin socket: refused a caller of another OS user"
        );
        return Ok(());
    }
    let mut line = String::new();
    BufReader::new(read.take(MAX_LINE))
        .read_line(&mut line)
        .await?;
    let answer = match serde_json::from_str::<Envelope>(&line) {
        Err(e) => {
            serde_json::json!({"error": {"code": "request", "detail": format!("not an admin request: {e}"), "client_error": true}})
        }
        Ok(env) if !valid_operator(&env.operator) => {
            serde_json::json!({"error": {"code": "operator", "detail": "the operator's name is 1 to 64 printable characters", "client_error": true}})
        }
        Ok(env) => {
            let actor = Actor::Operator(env.operator);
            match tokio::task::spawn_blocking(move || service.admin(&actor, env.request)).await {
                Ok(Ok(a)) => serde_json::json!({"ok": a}),
                Ok(Err(e)) => {
                    serde_json::json!({"error": {"code": e.code(), "detail": e.to_string(), "client_error": e.class().is_client_error()}})
                }
                Err(e) => {
                    serde_json::json!({"error": {"code": "internal", "detail": e.to_string(), "client_error": false}})
                }
            }
        }
    };
    let mut text = serde_json::to_vec(&answer).unwrap_or_default();
    text.push(b'\n');
    write.write_all(&text).await?;
    write.shutdown().await
}

fn valid_operator(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.chars().all(|c| !c.is_control())
}
