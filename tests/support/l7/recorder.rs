//! An HTTP/1.1 upstream written by hand that records the exact bytes of every request head it
//! gets, and every byte that reaches it after a `101`: what an attacker's upstream would
//! see. It answers `/fake101*` (and any request with an `Upgrade` header) with a `101`,
//! then echoes and records whatever follows; everything else gets `200` with the target as
//! body. Plain TCP or TLS (a leaf for `localhost`, HTTP/1.1 only).

#![allow(dead_code)]

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::TcpListener;

use super::{Ca, https_server};

/// What the upstream received, in order: request heads as sent (`GET / HTTP/1.1\r\n...`) and,
/// after a `101`, each chunk of bytes as `AFTER 101: ...`.
#[derive(Clone, Default)]
pub struct Received(Arc<Mutex<Vec<String>>>);

impl Received {
    /// Everything so far.
    pub fn all(&self) -> Vec<String> {
        self.0.lock().unwrap().clone()
    }

    /// Everything so far as one text (for `contains` checks).
    pub fn text(&self) -> String {
        self.all().concat()
    }

    /// How many request heads arrived.
    pub fn heads(&self) -> usize {
        self.all().iter().filter(|r| !r.starts_with("AFTER 101")).count()
    }

    /// The last request head.
    pub fn last_head(&self) -> String {
        self.all().into_iter().rev().find(|r| !r.starts_with("AFTER 101")).unwrap_or_default()
    }

    fn push(&self, record: String) {
        self.0.lock().unwrap().push(record);
    }
}

/// A recording upstream on 127.0.0.1:0.
pub struct Recorder {
    /// Its address.
    pub addr: SocketAddr,
    /// What it received.
    pub received: Received,
}

impl Recorder {
    /// Over TLS with a leaf for `localhost` from `ca`.
    pub async fn tls(ca: &Ca) -> Recorder {
        let received = Received::default();
        let served = received.clone();
        let addr = https_server(ca, "localhost", &[], || {}, move |tls| serve(tls, served.clone())).await;
        Recorder { addr, received }
    }

    /// Plain HTTP.
    pub async fn plain() -> Recorder {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Received::default();
        let served = received.clone();
        tokio::spawn(async move {
            while let Ok((tcp, _)) = listener.accept().await {
                tokio::spawn(serve(tcp, served.clone()));
            }
        });
        Recorder { addr, received }
    }
}

async fn serve<IO: AsyncRead + AsyncWrite + Unpin>(mut io: IO, received: Received) {
    let mut buffered = Vec::new();
    while let Some(head) = read_head(&mut io, &mut buffered).await {
        received.push(head.clone());
        if read_body(&mut io, &mut buffered, &head).await.is_none() {
            return;
        }
        let target = head.split(' ').nth(1).unwrap_or_default().to_owned();
        let upgrade = header(&head, "upgrade");
        if target.starts_with("/fake101") || upgrade.is_some() {
            let protocol = if target.starts_with("/fake101-h2c") {
                "h2c".to_owned()
            } else {
                upgrade.unwrap_or("websocket".into())
            };
            let answer =
                format!("HTTP/1.1 101 Switching Protocols\r\nconnection: upgrade\r\nupgrade: {protocol}\r\n\r\n");
            if io.write_all(answer.as_bytes()).await.is_err() {
                return;
            }
            if !buffered.is_empty() {
                received.push(format!("AFTER 101: {}", String::from_utf8_lossy(&buffered)));
                let _ = io.write_all(&buffered).await;
            }
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = io.read(&mut buf).await {
                received.push(format!("AFTER 101: {}", String::from_utf8_lossy(&buf[..n])));
                if io.write_all(&buf[..n]).await.is_err() {
                    return;
                }
            }
            return;
        }
        let answer =
            format!("HTTP/1.1 200 OK\r\ncontent-type: text/plain\r\ncontent-length: {}\r\n\r\n{target}", target.len());
        if io.write_all(answer.as_bytes()).await.is_err() {
            return;
        }
    }
}

/// The value of the first header `name` of `head`, if any.
pub fn header(head: &str, name: &str) -> Option<String> {
    head.lines()
        .skip(1)
        .filter_map(|l| l.split_once(':'))
        .find(|(k, _)| k.trim().eq_ignore_ascii_case(name))
        .map(|(_, v)| v.trim().to_owned())
}

/// Reads through the next blank line; bytes past it stay in `buffered`. `None` at EOF.
async fn read_head<IO: AsyncRead + Unpin>(io: &mut IO, buffered: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffered.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buffered.drain(..end + 4).collect();
            return Some(String::from_utf8_lossy(&head).into_owned());
        }
        fill(io, buffered).await?;
    }
}

/// Reads (and drops) the body `head` announces: `content-length` or chunked.
async fn read_body<IO: AsyncRead + Unpin>(io: &mut IO, buffered: &mut Vec<u8>, head: &str) -> Option<()> {
    if header(head, "transfer-encoding").is_some_and(|v| v.eq_ignore_ascii_case("chunked")) {
        loop {
            let line = read_line(io, buffered).await?;
            let size = usize::from_str_radix(line.split(';').next()?.trim(), 16).ok()?;
            take(io, buffered, size).await?;
            read_line(io, buffered).await?;
            if size == 0 {
                return Some(());
            }
        }
    }
    let length = header(head, "content-length").and_then(|v| v.parse().ok()).unwrap_or(0);
    take(io, buffered, length).await
}

async fn read_line<IO: AsyncRead + Unpin>(io: &mut IO, buffered: &mut Vec<u8>) -> Option<String> {
    loop {
        if let Some(end) = buffered.windows(2).position(|w| w == b"\r\n") {
            let line: Vec<u8> = buffered.drain(..end + 2).collect();
            return Some(String::from_utf8_lossy(&line[..end]).into_owned());
        }
        fill(io, buffered).await?;
    }
}

async fn take<IO: AsyncRead + Unpin>(io: &mut IO, buffered: &mut Vec<u8>, n: usize) -> Option<()> {
    while buffered.len() < n {
        fill(io, buffered).await?;
    }
    buffered.drain(..n);
    Some(())
}

async fn fill<IO: AsyncRead + Unpin>(io: &mut IO, buffered: &mut Vec<u8>) -> Option<()> {
    let mut buf = [0u8; 8192];
    match io.read(&mut buf).await {
        Ok(n @ 1..) => {
            buffered.extend_from_slice(&buf[..n]);
            Some(())
        }
        _ => None,
    }
}
