//! `direct-tcpip` channels (`ssh -L`, `ssh -W`): to loopback only. Any other destination is
//! refused and logged; name resolution is never done (only `localhost` is understood).

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::Duration;

use russh::server::Msg;
use russh::{Channel, ChannelOpenFailure};
use tokio::net::TcpStream;

use crate::agent::audit;
use crate::policy::host::unbracketed;

/// Bound on connecting to the loopback destination.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// The loopback address `host:port` names, or `None` when it is anything else.
pub fn loopback(host: &str, port: u32) -> Option<SocketAddr> {
    let port = u16::try_from(port).ok().filter(|p| *p != 0)?;
    let host = unbracketed(host);
    let ip =
        if host.eq_ignore_ascii_case("localhost") { IpAddr::V4(Ipv4Addr::LOCALHOST) } else { host.parse().ok()? };
    let ip = match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(IpAddr::V6(v6), IpAddr::V4),
        v4 => v4,
    };
    ip.is_loopback().then_some(SocketAddr::new(ip, port))
}

/// Decides, connects and relays one `direct-tcpip` channel.
pub async fn open(channel: Channel<Msg>, host: String, port: u32, reply: russh::server::ChannelOpenHandle) {
    let Some(addr) = loopback(&host, port) else {
        let to = u16::try_from(port).ok().map(|port| (host.as_str(), port));
        audit::ssh_refused(to, "refused an SSH forward: only loopback destinations are allowed");
        reply.reject(ChannelOpenFailure::AdministrativelyProhibited).await;
        return;
    };
    let stream = match tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(addr)).await {
        Ok(Ok(stream)) => stream,
        Ok(Err(e)) => {
            tracing::info!(%addr, "SSH forward: cannot connect: {e}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
        Err(_) => {
            tracing::info!(%addr, "SSH forward: no answer within {CONNECT_TIMEOUT:?}");
            reply.reject(ChannelOpenFailure::ConnectFailed).await;
            return;
        }
    };
    reply.accept().await;
    let mut stream = stream;
    let mut channel = channel.into_stream();
    if let Err(e) = tokio::io::copy_bidirectional(&mut channel, &mut stream).await {
        tracing::debug!(%addr, "SSH forward ended: {e}");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_loopback_destinations_pass() {
        assert_eq!(loopback("127.0.0.1", 80), Some("127.0.0.1:80".parse().unwrap()));
        assert_eq!(loopback("127.9.9.9", 8080), Some("127.9.9.9:8080".parse().unwrap()));
        assert_eq!(loopback("localhost", 22), Some("127.0.0.1:22".parse().unwrap()));
        assert_eq!(loopback("::1", 443), Some("[::1]:443".parse().unwrap()));
        assert_eq!(loopback("[::ffff:127.0.0.1]", 443), Some("127.0.0.1:443".parse().unwrap()));
        for refused in ["10.255.255.1", "0.0.0.0", "::", "169.254.169.254", "example.com", "localhost.evil.com", ""] {
            assert_eq!(loopback(refused, 80), None, "{refused}");
        }
        assert_eq!(loopback("127.0.0.1", 0), None);
        assert_eq!(loopback("127.0.0.1", 70000), None);
    }
}
