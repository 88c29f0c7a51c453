//! An interactive shell through the agent's SSH server: the real `ssh -tt` runs on a pty the
//! test owns (as a user's terminal), so resizing that pty makes ssh send `window-change`,
//! and the remote shell's `stty size`, `tty` and `TERM` show what the server did.

#[path = "agent_support/lib.rs"]
mod agent_support;

use std::fs::File;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::process::CommandExt;
use std::sync::mpsc;
use std::time::{Duration, Instant};

use agent_support::Fixture;
use nix::pty::{Winsize, openpty};

nix::ioctl_write_ptr_bad!(set_winsize, libc::TIOCSWINSZ, Winsize);

fn winsize(rows: u16, cols: u16) -> Winsize {
    Winsize { ws_row: rows, ws_col: cols, ws_xpixel: 0, ws_ypixel: 0 }
}

/// Everything the terminal shows, read by a thread.
struct Screen {
    rx: mpsc::Receiver<Vec<u8>>,
    seen: String,
}

impl Screen {
    fn new(master: &OwnedFd) -> Self {
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

    /// Waits (bounded) until the screen shows `needle` after everything already consumed.
    fn expect(&mut self, needle: &str) {
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            if let Some(at) = self.seen.find(needle) {
                self.seen.drain(..at + needle.len());
                return;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok(chunk) => self.seen.push_str(&String::from_utf8_lossy(&chunk)),
                Err(_) => panic!("the terminal never showed {needle:?}; it shows {:?}", self.seen),
            }
        }
    }
}

#[test]
fn pty_shell_with_window_change_terminal_and_exit_status() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let pair = openpty(&winsize(30, 100), None).unwrap();
    let mut ssh = agent.ssh(&["-tt", "sandbox@agent"]);
    ssh.env("TERM", "xterm-256color")
        .stdin(pair.slave.try_clone().unwrap())
        .stdout(pair.slave.try_clone().unwrap())
        .stderr(pair.slave.try_clone().unwrap());
    // SAFETY: only async-signal-safe calls between fork and exec: ssh gets the test's pty as
    // its controlling terminal, so it receives SIGWINCH when the test resizes it.
    unsafe {
        ssh.pre_exec(|| {
            if libc::setsid() < 0 || libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let mut child = ssh.spawn().unwrap();
    drop(ssh);
    drop(pair.slave);
    let mut screen = Screen::new(&pair.master);
    let mut keyboard = File::from(pair.master.try_clone().unwrap());
    let mut type_line = |line: &str| keyboard.write_all(format!("{line}\n").as_bytes()).unwrap();

    type_line("echo size=$(stty size)");
    screen.expect("size=30 100");
    type_line("echo term=$TERM tty=$(tty)");
    screen.expect("term=xterm-256color tty=/dev/pts/");
    // The controlling terminal is set: /dev/tty opens, and the shell leads its session.
    type_line(
        "echo ctty=$(test -r /dev/tty -a -w /dev/tty && echo yes); echo sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$",
    );
    screen.expect("ctty=yes");
    screen.expect("sid=");
    let rest = screen.seen.clone();
    let (sid, pid) = {
        let line = rest.lines().next().unwrap_or_default();
        let sid = line.split_whitespace().next().unwrap_or_default().to_owned();
        let pid = line.split("pid=").nth(1).unwrap_or_default().trim().to_owned();
        (sid, pid)
    };
    assert_eq!(sid, pid, "the shell leads its session: {rest:?}");

    // SAFETY: a valid winsize on the test's own open pty master.
    unsafe { set_winsize(pair.master.as_raw_fd(), &winsize(50, 132)) }.unwrap();
    // ssh forwards SIGWINCH as window-change; ask until the new size shows (bounded).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        type_line("echo resized=$(stty size)");
        screen.expect("resized=");
        if screen.seen.starts_with("50 132") {
            break;
        }
        assert!(Instant::now() < deadline, "the window change never arrived: {:?}", screen.seen);
        std::thread::sleep(Duration::from_millis(100));
    }

    type_line("exit 7");
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < deadline, "ssh did not end after `exit 7`");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(status.code(), Some(7));
}
