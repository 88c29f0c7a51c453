//! Pseudo-terminals for SSH sessions: open a pair with the client's window size, resize it
//! on `window-change` (TIOCSWINSZ), and read and write the master side without blocking.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};

use nix::fcntl::{FcntlArg, OFlag, fcntl};
use nix::pty::{Winsize, openpty};
use tokio::io::unix::AsyncFd;

/// The client's window size, from `pty-req` or `window-change`.
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

/// A new pty pair: the master for the supervisor, the slave for the child's stdio.
#[allow(unsafe_code)]
pub fn open(size: Size) -> io::Result<(Master, OwnedFd)> {
    let pair = openpty(&size.winsize(), None).map_err(io::Error::from)?;
    let flags = OFlag::from_bits_truncate(fcntl(&pair.master, FcntlArg::F_GETFL).map_err(io::Error::from)?);
    fcntl(&pair.master, FcntlArg::F_SETFL(flags | OFlag::O_NONBLOCK)).map_err(io::Error::from)?;
    // SAFETY: `pair.master` is an `OwnedFd`: its descriptor is open and stays the same
    // until the `AsyncFd` (which owns it) is dropped.
    let master = unsafe { AsyncFd::register(pair.master) }?;
    Ok((Master(master), pair.slave))
}

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_child_sees_the_size_and_its_output_reaches_the_master() {
        let (master, slave) = open(Size { cols: 91, rows: 17, ..Size::default() }).unwrap();
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
