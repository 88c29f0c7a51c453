//! Pseudo-terminals for children (SSH sessions with a pty, the workload on a terminal):
//! open a pair with a window size, resize it (TIOCSWINSZ), and read and write the master
//! side without blocking.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::sync::Arc;

use nix::fcntl::{FcntlArg, FdFlag, OFlag, fcntl};
use nix::pty::{Winsize, openpty};
use nix::sys::termios::Termios;
use tokio::io::unix::AsyncFd;
use tokio::io::{AsyncWrite, AsyncWriteExt};

/// A window size: an SSH client's (`pty-req`, `window-change`) or a terminal's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Size {
    /// Columns.
    pub cols: u32,
    /// Rows.
    pub rows: u32,
    /// Width in pixels.
    pub width: u32,
    /// Height in pixels.
    pub height: u32,
}

impl Size {
    /// The window size of the terminal `fd` (TIOCGWINSZ).
    #[allow(unsafe_code)]
    pub fn of_terminal(fd: impl AsFd) -> io::Result<Self> {
        let mut ws = Winsize { ws_row: 0, ws_col: 0, ws_xpixel: 0, ws_ypixel: 0 };
        // SAFETY: `fd` is open for the duration of the call and `ws` is a writable
        // `struct winsize` that outlives it.
        unsafe { get_winsize(fd.as_fd().as_raw_fd(), &mut ws) }.map_err(io::Error::from)?;
        Ok(Size {
            cols: ws.ws_col.into(),
            rows: ws.ws_row.into(),
            width: ws.ws_xpixel.into(),
            height: ws.ws_ypixel.into(),
        })
    }

    fn winsize(self) -> Winsize {
        let clamp = |v: u32| u16::try_from(v).unwrap_or(u16::MAX);
        Winsize {
            ws_row: clamp(self.rows),
            ws_col: clamp(self.cols),
            ws_xpixel: clamp(self.width),
            ws_ypixel: clamp(self.height),
        }
    }
}

/// A new pty pair: the master for the supervisor, the slave for the child's stdio;
/// `modes` are the slave's terminal settings (the kernel's defaults when `None`).
#[allow(unsafe_code)]
pub fn open(size: Size, modes: Option<&Termios>) -> io::Result<(Master, OwnedFd)> {
    let pair = openpty(&size.winsize(), modes).map_err(io::Error::from)?;
    // openpty(3) does not set close-on-exec: children get the slave through their stdio only.
    for fd in [&pair.master, &pair.slave] {
        fcntl(fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC)).map_err(io::Error::from)?;
    }
    let flags = OFlag::from_bits_truncate(fcntl(&pair.master, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(&pair.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    // SAFETY: `pair.master` is an `OwnedFd`: its descriptor is open and stays the same
    // until the `AsyncFd` (which owns it) is dropped.
    let master = unsafe { AsyncFd::register(pair.master) }?;
    Ok((Master(master), pair.slave))
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);
nix::ioctl_read_bad!(get_winsize, libc::TIOCGWINSZ, Winsize);

/// The master side of a pty, readable and writable from async code.
#[derive(Debug)]
pub struct Master(AsyncFd<OwnedFd>);

impl Master {
    /// Sets the terminal's window size; the kernel sends SIGWINCH to its foreground group.
    #[allow(unsafe_code)]
    pub fn resize(&self, size: Size) -> io::Result<()> {
        let winsize = size.winsize();
        // SAFETY: the fd is an open pty master owned by `self`, and `winsize` is a valid
        // `struct winsize` that outlives the call.
        unsafe { set_winsize(self.0.get_ref().as_raw_fd(), &winsize) }.map(drop).map_err(io::Error::from)
    }

    /// Reads output; `Ok(0)` once the slave side is closed by every process (EIO).
    pub async fn read(&self, buf: &mut [u8]) -> io::Result<usize> {
        loop {
            let mut guard = self.0.readable().await?;
            match guard.try_io(|fd| nix::unistd::read(fd.get_ref().as_fd(), buf).map_err(io::Error::from)) {
                Ok(Err(e)) if e.raw_os_error() == Some(libc::EIO) => return Ok(0),
                Ok(result) => return result,
                Err(_would_block) => continue,
            }
        }
    }

    /// Writes all of `data` as terminal input.
    pub async fn write_all(&self, mut data: &[u8]) -> io::Result<()> {
        while !data.is_empty() {
            let mut guard = self.0.writable().await?;
            match guard.try_io(|fd| nix::unistd::write(fd.get_ref(), data).map_err(io::Error::from)) {
                Ok(Ok(n)) => data = &data[n..],
                Ok(Err(e)) => return Err(e),
                Err(_would_block) => continue,
            }
        }
        Ok(())
    }
}

/// Copies the pty's output to `to` until every slave descriptor is closed (or `to` fails),
/// flushing each chunk so that output shows as it is produced.
pub async fn copy_output(master: Arc<Master>, mut to: impl AsyncWrite + Unpin) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        match master.read(&mut buf).await {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                if to.write_all(&buf[..n]).await.is_err() || to.flush().await.is_err() {
                    break;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_sees_the_size_and_its_output_reaches_the_master() {
        let (master, slave) = open(Size { cols: 91, rows: 17, ..Size::default() }, None).unwrap();
        assert_eq!(Size::of_terminal(&slave).unwrap(), Size { cols: 91, rows: 17, ..Size::default() });
        let mut child = tokio::process::Command::new("stty")
            .arg("size")
            .stdin(slave.try_clone().unwrap())
            .stdout(slave.try_clone().unwrap())
            .stderr(slave)
            .spawn()
            .unwrap();
        let mut out = Vec::new();
        let mut buf = [0u8; 256];
        loop {
            match master.read(&mut buf).await.unwrap() {
                0 => break,
                n => out.extend_from_slice(&buf[..n]),
            }
        }
        assert!(child.wait().await.unwrap().success());
        assert_eq!(String::from_utf8_lossy(&out).trim(), "17 91");
        master.resize(Size { cols: 120, rows: 40, ..Size::default() }).unwrap();
    }
}
