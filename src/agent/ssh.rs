//! The agent's SSH server (russh): `none` authentication on the Unix socket (its owner and
//! mode are the gate), public keys only on the optional TCP listener. Session channels run
//! children through the [`Launcher`]; `direct-tcpip` reaches loopback only; no remote
//! forwarding, no agent or X11 forwarding.

mod forward;
mod handler;
mod keys;
mod session;
mod signals;

use std::future::Future;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use russh::keys::PublicKey;
use russh::server::Config;
use russh::{MethodKind, MethodSet};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpListener, UnixListener};

use super::audit;
use super::child::Launcher;
use crate::config::AgentConfig;
use crate::shutdown::Shutdown;
use crate::telemetry::ocsf::{Scope, scoped};
use crate::{Exit, ExitStatus};

/// Where a system sftp-server may live.
const SFTP_SERVERS: &[&str] = &[
    "/usr/lib/openssh/sftp-server",
    "/usr/libexec/openssh/sftp-server",
    "/usr/libexec/sftp-server",
    "/usr/lib/ssh/sftp-server",
];

/// How long a connection may take to close once shutdown starts.
const CLOSE_GRACE: Duration = Duration::from_secs(2);

/// Failures of setting up the SSH server.
#[derive(Debug, thiserror::Error)]
pub enum SshError {
    /// The host key cannot be loaded or created.
    #[error("SSH host key {path}: {message}")]
    HostKey {
        /// The key file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The authorized_keys file cannot be used.
    #[error("authorized keys {path}: {message}")]
    AuthorizedKeys {
        /// The file.
        path: PathBuf,
        /// What is wrong.
        message: String,
    },
    /// The Unix socket cannot be created.
    #[error("cannot listen on the SSH socket {path}: {source}")]
    BindUnix {
        /// The socket path.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
}

impl ExitStatus for SshError {
    fn exit_status(&self) -> Exit {
        Exit::Usage
    }
}

/// What every connection shares.
struct Shared {
    launcher: Arc<Launcher>,
    authorized: Vec<PublicKey>,
    sftp_server: Option<PathBuf>,
}

/// The SSH server, ready to serve already-bound listeners.
pub struct SshServer {
    shared: Arc<Shared>,
    host_key: russh::keys::PrivateKey,
}

impl SshServer {
    /// Loads (or creates) the host key and the authorized keys the configuration names.
    pub fn new(config: &AgentConfig, launcher: Arc<Launcher>) -> Result<Self, SshError> {
        let host_key = keys::host_key(config.host_key.as_deref())?;
        let authorized = match (&config.ssh_listen, &config.authorized_keys) {
            (Some(_), Some(path)) => keys::authorized_keys(path)?,
            _ => Vec::new(),
        };
        let sftp_server = SFTP_SERVERS.iter().map(PathBuf::from).find(|p| p.is_file());
        if sftp_server.is_none() {
            tracing::info!("no sftp-server on this system: the sftp subsystem is refused");
        }
        Ok(SshServer { shared: Arc::new(Shared { launcher, authorized, sftp_server }), host_key })
    }

    fn config(&self, methods: &[MethodKind]) -> Arc<Config> {
        Arc::new(Config {
            methods: MethodSet::from(methods),
            keys: vec![self.host_key.clone()],
            auth_rejection_time: Duration::from_millis(500),
            auth_rejection_time_initial: Some(Duration::ZERO),
            inactivity_timeout: None,
            keepalive_interval: Some(Duration::from_secs(60)),
            ..Config::default()
        })
    }

    /// Serves both listeners until `shutdown`; connections are tracked by `shutdown`.
    pub async fn serve(self, unix: UnixListener, tcp: Option<TcpListener>, shutdown: Shutdown) {
        let unix_config = self.config(&[MethodKind::None]);
        let tcp_config = self.config(&[MethodKind::PublicKey]);
        let tcp_loop = async {
            let Some(tcp) = tcp else { return };
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.signalled() => return,
                    accepted = tcp.accept() => accepted,
                };
                match accepted {
                    Ok((stream, peer)) => {
                        // russh applies `Config::nodelay` only to sockets it accepts itself;
                        // with Nagle on, each handshake step waits for a delayed ACK.
                        if let Err(e) = stream.set_nodelay(true) {
                            tracing::debug!("TCP_NODELAY: {e}");
                        }
                        let scope = Scope::new(Some(peer));
                        let handler = handler::Connection {
                            shared: self.shared.clone(),
                            tcp: true,
                            shutdown: shutdown.clone(),
                            scope: scope.clone(),
                        };
                        shutdown.spawn(audited(scope, run(tcp_config.clone(), stream, handler, shutdown.clone())));
                    }
                    Err(e) => accept_failed("TCP", e).await,
                }
            }
        };
        let unix_loop = async {
            loop {
                let accepted = tokio::select! {
                    _ = shutdown.signalled() => return,
                    accepted = unix.accept() => accepted,
                };
                match accepted {
                    Ok((stream, _)) => {
                        let scope = Scope::new(None);
                        let handler = handler::Connection {
                            shared: self.shared.clone(),
                            tcp: false,
                            shutdown: shutdown.clone(),
                            scope: scope.clone(),
                        };
                        shutdown.spawn(audited(scope, run(unix_config.clone(), stream, handler, shutdown.clone())));
                    }
                    Err(e) => accept_failed("Unix socket", e).await,
                }
            }
        };
        tokio::join!(tcp_loop, unix_loop);
    }
}

/// Accept errors (out of file descriptors) are logged and slowed down, never fatal.
async fn accept_failed(listener: &str, e: std::io::Error) {
    tracing::warn!("SSH {listener} accept failed: {e}");
    tokio::time::sleep(Duration::from_millis(100)).await;
}

/// Binds the Unix socket: creates the parent directory, removes a stale socket, and
/// creates the new one with mode 0600 (the umask is narrowed around bind()).
pub fn bind_unix(path: &Path) -> Result<UnixListener, SshError> {
    use std::os::unix::fs::FileTypeExt;
    let fail = |source| SshError::BindUnix { path: path.to_owned(), source };
    if let Some(parent) = path.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).map_err(fail)?;
    }
    match std::fs::symlink_metadata(path) {
        Ok(meta) if meta.file_type().is_socket() => {
            if std::os::unix::net::UnixStream::connect(path).is_ok() {
                return Err(fail(std::io::Error::new(
                    std::io::ErrorKind::AddrInUse,
                    "another process serves this socket; stop it or choose another OPENSHELL_SSH_SOCKET_PATH",
                )));
            }
            // A stale socket from an earlier run.
            std::fs::remove_file(path).map_err(fail)?
        }
        Ok(_) => {
            return Err(fail(std::io::Error::new(
                std::io::ErrorKind::AlreadyExists,
                "a file that is not a socket is in the way; remove it or choose another OPENSHELL_SSH_SOCKET_PATH",
            )));
        }
        Err(_) => {}
    }
    let old = nix::sys::stat::umask(nix::sys::stat::Mode::from_bits_truncate(0o177));
    let bound = std::os::unix::net::UnixListener::bind(path);
    nix::sys::stat::umask(old);
    let listener = bound.map_err(fail)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)).map_err(fail)?;
    listener.set_nonblocking(true).map_err(fail)?;
    UnixListener::from_std(listener).map_err(fail)
}

/// Runs one connection until it ends or shutdown asks it to close.
/// Serves one SSH connection in its audit scope (its events and its children's share one
/// uid; the handler enters the same scope), between its open and close events.
async fn audited(scope: Scope, serve: impl Future<Output = ()>) {
    let peer = scope.peer;
    let connection = async move {
        let started = std::time::Instant::now();
        audit::ssh_opened(peer);
        serve.await;
        audit::ssh_closed(peer, started.elapsed());
    };
    scoped(scope, connection).await
}

async fn run<S>(config: Arc<Config>, stream: S, handler: handler::Connection, shutdown: Shutdown)
where
    S: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let session = match russh::server::run_stream(config, stream, handler).await {
        Ok(session) => session,
        Err(e) => {
            tracing::debug!("SSH handshake failed: {e}");
            return;
        }
    };
    let handle = session.handle();
    tokio::pin!(session);
    let result = tokio::select! {
        result = &mut session => result,
        _ = shutdown.signalled() => {
            let _ = handle
                .disconnect(russh::Disconnect::ByApplication, "the sandbox is shutting down".into(), String::new())
                .await;
            tokio::time::timeout(CLOSE_GRACE, &mut session).await.unwrap_or(Ok(()))
        }
    };
    if let Err(e) = result {
        tracing::debug!("SSH connection ended: {e}");
    }
}
