//! `healthcheck`: exit 0 only when this mode is really serving. Proxy: `.ready` exists
//! and the proxy port accepts a connection. Agent: the SSH socket answers an SSH banner.

use std::io::Read;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

use crate::Exit;
use crate::config::{AgentConfig, ProxyConfig};
use crate::volume::READY_FILE;

/// How long each probe may take.
const PROBE_TIMEOUT: Duration = Duration::from_secs(3);

/// Proxy mode: `.ready` present and the listener accepting.
pub fn proxy(config: &ProxyConfig) -> Exit {
    let ready = config.common.tls_dir.join(READY_FILE);
    if !ready.exists() {
        return unhealthy(&format!("{} does not exist: the proxy is not ready", ready.display()));
    }
    let addr = reachable(config.listen);
    match TcpStream::connect_timeout(&addr, PROBE_TIMEOUT) {
        Ok(_) => Exit::Success,
        Err(e) => unhealthy(&format!("the proxy port {addr} does not accept connections: {e}")),
    }
}

/// Agent mode: the SSH socket accepts and sends an `SSH-2.0-` banner.
pub fn agent(config: &AgentConfig) -> Exit {
    match ssh_banner(&config.ssh_socket) {
        Ok(banner) if banner.starts_with(b"SSH-2.0-") => Exit::Success,
        Ok(banner) => unhealthy(&format!(
            "{} answered {:?}, not an SSH banner",
            config.ssh_socket.display(),
            String::from_utf8_lossy(&banner)
        )),
        Err(e) => unhealthy(&format!("the SSH socket {} does not answer: {e}", config.ssh_socket.display())),
    }
}

fn ssh_banner(path: &Path) -> std::io::Result<Vec<u8>> {
    let mut stream = UnixStream::connect(path)?;
    stream.set_read_timeout(Some(PROBE_TIMEOUT))?;
    let mut buf = [0u8; 8];
    stream.read_exact(&mut buf)?;
    Ok(buf.to_vec())
}

/// A wildcard listen address is probed on loopback.
fn reachable(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        IpAddr::V4(v4) if v4.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(v6) if v6.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}

fn unhealthy(why: &str) -> Exit {
    eprintln!("openshell-sandbox: unhealthy: {why}");
    Exit::No
}
