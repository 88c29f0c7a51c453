//! An interactive shell through the agent's SSH server: the real `ssh -tt` runs on a pty the
//! test owns (as a user's terminal), so resizing that pty makes ssh send `window-change`,
//! and the remote shell's `stty size`, `tty` and `TERM` show what the server did.

use crate::support::agent as agent_support;
use crate::support::agent::terminal;

use std::time::{Duration, Instant};

use agent_support::{Fixture, wait_exit};
use terminal::Terminal;

#[test]
fn pty_shell_with_window_change_terminal_and_exit_status() {
    let fixture = Fixture::new();
    let agent = fixture.start(|_| {});
    let tty = Terminal::new(30, 100);
    let mut ssh = agent.ssh(&["-tt", "sandbox@agent"]);
    ssh.env("TERM", "xterm-256color");
    // ssh gets the test's pty as its controlling terminal, so it receives SIGWINCH when
    // the test resizes it.
    let mut child = tty.spawn(&mut ssh);
    drop(ssh);
    let mut screen = tty.screen();
    let type_line = |line: &str| tty.type_text(&format!("{line}\n"));

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

    tty.resize(50, 132);
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
    assert_eq!(wait_exit(&mut child, Duration::from_secs(20)), Some(7));
}
