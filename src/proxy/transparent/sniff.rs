//! The first bytes of a transparent connection to an endpoint that is not `protocol: tcp`:
//! a TLS ClientHello (its SNI read by rustls, never by hand) or an HTTP request line; what
//! was read is replayed to whoever serves the connection next ([`Replay`]).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};

/// The most read while looking for the end of a ClientHello (one TLS record and then some).
const MAX_HELLO: usize = 16 * 1024 + 512;
/// The longest method token taken for HTTP.
const MAX_METHOD: usize = 16;

/// What the client opened with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Opening {
    /// A TLS ClientHello, with its SNI when it sends one.
    Tls {
        /// The server name asked for.
        sni: Option<String>,
    },
    /// A request line of plain HTTP (it starts with a method token).
    Http,
    /// Something else (or a ClientHello rustls refuses): not served unless `protocol: tcp`.
    Other,
}

/// Reads the opening of `stream` within `timeout`; the bytes read are in the returned
/// [`Replay`]. `Err` when the client sent nothing in time or closed first.
pub async fn opening<S>(mut stream: S, timeout: Duration) -> io::Result<(Opening, Replay<S>)>
where
    S: AsyncRead + Unpin,
{
    let mut seen = Vec::with_capacity(2048);
    let read = async {
        let mut acceptor: Option<rustls::server::Acceptor> = None;
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the client closed before sending"));
            }
            seen.extend_from_slice(&chunk[..n]);
            match seen[0] {
                // A TLS handshake record.
                0x16 => {
                    let acceptor = acceptor.get_or_insert_with(Default::default);
                    acceptor.read_tls(&mut &chunk[..n])?;
                    match acceptor.accept() {
                        Ok(Some(accepted)) => {
                            let sni = accepted.client_hello().server_name().map(str::to_owned);
                            return Ok(Opening::Tls { sni });
                        }
                        Ok(None) if seen.len() < MAX_HELLO => continue,
                        Ok(None) | Err(_) => return Ok(Opening::Other),
                    }
                }
                // A method token (upper-case letters) and a space: `GET `, `OPTIONS `.
                b'A'..=b'Z' => match seen.iter().position(|b| !b.is_ascii_uppercase()) {
                    Some(at) if seen[at] == b' ' && at <= MAX_METHOD => return Ok(Opening::Http),
                    None if seen.len() <= MAX_METHOD => continue,
                    _ => return Ok(Opening::Other),
                },
                _ => return Ok(Opening::Other),
            }
        }
    };
    let opening = tokio::time::timeout(timeout, read)
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "the client sent no opening in time"))??;
    Ok((opening, Replay { prefix: seen, offset: 0, inner: stream }))
}

/// A stream whose first bytes, already read, are read again first.
#[derive(Debug)]
pub struct Replay<S> {
    prefix: Vec<u8>,
    offset: usize,
    inner: S,
}

impl<S: AsyncRead + Unpin> AsyncRead for Replay<S> {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        if self.offset < self.prefix.len() {
            let n = buf.remaining().min(self.prefix.len() - self.offset);
            buf.put_slice(&self.prefix[self.offset..self.offset + n]);
            self.offset += n;
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut self.inner).poll_read(cx, buf)
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Replay<S> {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A real ClientHello, from rustls's client, for `name` (None: an IP, so no SNI).
    fn client_hello(name: &str) -> Vec<u8> {
        let roots = rustls::RootCertStore::empty();
        let provider = std::sync::Arc::new(rustls::crypto::ring::default_provider());
        let config = rustls::ClientConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_root_certificates(roots)
            .with_no_client_auth();
        let server = rustls::pki_types::ServerName::try_from(name.to_owned()).unwrap();
        let mut conn = rustls::ClientConnection::new(std::sync::Arc::new(config), server).unwrap();
        let mut out = Vec::new();
        conn.write_tls(&mut out).unwrap();
        out
    }

    async fn open(bytes: Vec<u8>, split: usize) -> (Opening, Vec<u8>) {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let (a, b) = bytes.split_at(split.min(bytes.len()));
            client.write_all(a).await.unwrap();
            tokio::time::sleep(Duration::from_millis(20)).await;
            client.write_all(b).await.unwrap();
            client.shutdown().await.unwrap();
        });
        let (opening, mut replay) = opening(server, Duration::from_secs(5)).await.unwrap();
        let mut all = Vec::new();
        replay.read_to_end(&mut all).await.unwrap();
        writer.await.unwrap();
        (opening, all)
    }

    #[tokio::test]
    async fn a_client_hello_gives_its_sni_even_in_pieces_and_is_replayed_whole() {
        let hello = client_hello("api.example.com");
        for split in [hello.len(), 3, 100] {
            let (opening, replayed) = open(hello.clone(), split).await;
            assert_eq!(opening, Opening::Tls { sni: Some("api.example.com".into()) }, "split at {split}");
            assert_eq!(replayed, hello, "split at {split}");
        }
        let (opening, _) = open(client_hello("198.18.0.5"), usize::MAX).await;
        assert_eq!(opening, Opening::Tls { sni: None }, "an IP address is never an SNI");
    }

    #[tokio::test]
    async fn http_and_anything_else() {
        let get = b"GET / HTTP/1.1\r\nHost: a\r\n\r\n".to_vec();
        assert_eq!(open(get.clone(), 2).await, (Opening::Http, get));
        let options = b"OPTIONS * HTTP/1.1\r\n\r\n".to_vec();
        assert_eq!(open(options.clone(), 3).await, (Opening::Http, options), "a method read in pieces");
        // Postgres' SSLRequest, an SSH banner, a lower-case or overlong "method".
        for other in [
            &b"\x00\x00\x00\x08\x04\xd2\x16\x2f"[..],
            b"SSH-2.0-x\r\n",
            b"get / HTTP/1.1\r\n",
            b"ABCDEFGHIJKLMNOPQRSTU / x",
        ] {
            let (opening, replayed) = open(other.to_vec(), usize::MAX).await;
            assert_eq!((opening, replayed), (Opening::Other, other.to_vec()));
        }
        let mut bad_tls = vec![0x16, 0x03, 0x01, 0x00, 0x05];
        bad_tls.extend_from_slice(b"hello");
        assert_eq!(open(bad_tls, usize::MAX).await.0, Opening::Other, "not a ClientHello rustls reads");
    }

    #[tokio::test]
    async fn silence_and_early_close_are_errors() {
        let (_client, server) = tokio::io::duplex(64);
        let err = opening(server, Duration::from_millis(50)).await.unwrap_err();
        assert_eq!(err.kind(), io::ErrorKind::TimedOut);
        let (client, server) = tokio::io::duplex(64);
        drop(client);
        assert_eq!(opening(server, Duration::from_secs(1)).await.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
