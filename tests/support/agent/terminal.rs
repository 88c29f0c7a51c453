//! A terminal the test owns, as a user's: a pty pair whose slave becomes a process's stdio
//! and controlling terminal, a reader of everything the screen (master) shows, and a look
//! at what is waiting in the terminal's input queue.

#![allow(dead_code)]

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::process::{Child, Command};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use nix::pty::{Winsize, openpty};

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);
nix::ioctl_read_bad!(input_queued, libc::FIONREAD, libc::c_int);

/// A user's terminal: the master is the screen and keyboard, the slave what programs get.
pub struct Terminal {
    pub master: OwnedFd,
    pub slave: OwnedFd,
}

impl Terminal {
    pub fn new(rows: u16, cols: u16) -> Self {
        let pair = openpty(&winsize(rows, cols), None).unwrap();
        Terminal { master: pair.master, slave: pair.slave }
    }

    /// The slave's path (`/dev/pts/N`).
    pub fn path(&self) -> String {
        std::fs::read_link(format!("/proc/self/fd/{}", self.slave.as_raw_fd())).unwrap().display().to_string()
    }

    /// Starts `cmd` with this terminal as its stdin, stdout, stderr and controlling
    /// terminal, as a shell would start a program in it.
    pub fn spawn(&self, cmd: &mut Command) -> Child {
        cmd.stdin(self.slave.try_clone().unwrap())
            .stdout(self.slave.try_clone().unwrap())
            .stderr(self.slave.try_clone().unwrap());
        // SAFETY: only async-signal-safe calls between fork and exec.
        unsafe {
            cmd.pre_exec(|| {
                if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        cmd.spawn().unwrap()
    }

    /// Types `text` on the keyboard.
    pub fn type_text(&self, text: &str) {
        File::from(self.master.try_clone().unwrap()).write_all(text.as_bytes()).unwrap();
    }

    /// Resizes the window: the terminal's foreground process group gets SIGWINCH.
    pub fn resize(&self, rows: u16, cols: u16) {
        // SAFETY: a valid winsize on the test's own open pty master.
        unsafe { set_winsize(self.master.as_raw_fd(), &winsize(rows, cols)) }.unwrap();
    }

    /// How many bytes wait in the terminal's input queue, unread by any program.
    pub fn pending_input(&self) -> usize {
        let mut n: libc::c_int = 0;
        // SAFETY: FIONREAD writes one int into `n`, on the test's own open pty slave.
        unsafe { input_queued(self.slave.as_raw_fd(), &mut n) }.unwrap();
        usize::try_from(n).unwrap()
    }

    /// The terminal's modes now.
    pub fn modes(&self) -> nix::sys::termios::Termios {
        nix::sys::termios::tcgetattr(&self.slave).unwrap()
    }

    /// A reader of the screen, from now on.
    pub fn screen(&self) -> Screen {
        Screen::new(&self.master)
    }
}

pub fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

/// Everything the terminal shows, read by a thread.
pub struct Screen {
    rx: mpsc::Receiver<Vec<u8>>,
    /// What was shown and not yet consumed by `expect`.
    pub seen: String,
}

impl Screen {
    pub fn new(master: &OwnedFd) -> Self {
        let mut reader = File::from(master.try_clone().unwrap());
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            let mut buf = [0u8; 4096];
            while let Ok(n @ 1..) = reader.read(&mut buf) {
                if tx.send(buf[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        Screen { rx, seen: String::new() }
    }

    /// Waits (bounded) until the screen shows `needle` after everything already consumed;
    /// consumes up to its end.
    pub fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.seen.contains(needle) {
            self.more(deadline, needle);
        }
        let at = self.seen.find(needle).unwrap();
        self.seen.drain(..at + needle.len());
    }

    /// Waits (bounded) for `prefix`, then returns the rest of its line.
    pub fn line_after(&mut self, prefix: &str) -> String {
        self.expect(prefix);
        let deadline = Instant::now() + Duration::from_secs(20);
        while !self.seen.contains('\n') {
            self.more(deadline, "the end of the line");
        }
        let end = self.seen.find('\n').unwrap();
        let line = self.seen[..end].trim_end_matches('\r').to_owned();
        self.seen.drain(..=end);
        line
    }

    fn more(&mut self, deadline: Instant, what: &str) {
        let left = deadline.saturating_duration_since(Instant::now());
        match self.rx.recv_timeout(left) {
            Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
            Err(_) => panic!("the terminal never showed {what:?}; it shows {:?}", self.seen),
        }
    }
}
