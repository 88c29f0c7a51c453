//! The agent started on a terminal the test owns (as `podman run -it` or a developer's
//! shell would): the workload gets a pty of its own, relayed (input, output, window size,
//! exit status, SIGTERM, the terminal's modes put back), and nothing a child does with
//! TIOCSTI or TIOCLINUX reaches the operator's terminal, from the workload or from SSH.

use crate::support::agent as agent_support;
use crate::support::agent::terminal;

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use agent_support::{Fixture, inherit_fd, run, wait_exit};
use nix::sys::termios::LocalFlags;
use terminal::Terminal;

const INJECT: &str = include_str!("../support/agent/inject.py");
const UID: u32 = 54321;

/// Waits (bounded) until the agent has put the terminal in raw mode.
fn wait_raw(tty: &Terminal) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while tty.modes().local_flags.contains(LocalFlags::ICANON) {
        assert!(Instant::now() < deadline, "the agent never put its terminal in raw mode");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// The terminal's modes are what they were before the agent started.
fn assert_modes_restored(tty: &Terminal, before: &nix::sys::termios::Termios) {
    let now = tty.modes();
    assert_eq!(
        (now.input_flags, now.output_flags, now.local_flags, now.control_chars),
        (before.input_flags, before.output_flags, before.local_flags, before.control_chars)
    );
}

/// The agent on `tty`, with a second handle on that terminal as descriptor 50 (not
/// close-on-exec), as a careless parent would pass it.
fn agent_on(tty: &Terminal, mut cmd: Command) -> std::process::Child {
    inherit_fd(&mut cmd, tty.slave.try_clone().unwrap(), 50);
    tty.spawn(&mut cmd)
}

#[test]
fn the_workload_gets_a_pty_of_its_own_with_input_output_size_and_exit_status() {
    let fixture = Fixture::new();
    let tty = Terminal::new(30, 100);
    let before = tty.modes();
    let mut cmd = fixture.agent_command();
    cmd.args(["--", "sh"]);
    let mut agent = tty.spawn(&mut cmd);
    drop(cmd);
    let mut screen = tty.screen();
    wait_raw(&tty);
    // Quotes split the markers, so the echoed command line never matches them.
    let type_line = |line: &str| tty.type_text(&format!("{line}\n"));
    type_line(r#"echo "size""=$(stty size) tty=$(tty) sid=$(cut -d' ' -f6 /proc/$$/stat) pid=$$""#);
    let line = screen.line_after("size=");
    let fields: BTreeMap<&str, &str> = line.split_whitespace().filter_map(|f| f.split_once('=')).collect();
    assert!(line.starts_with("30 100 "), "the window size is copied: {line}");
    assert!(fields["tty"].starts_with("/dev/pts/") && fields["tty"] != tty.path(), "a pty of its own: {line}");
    assert_eq!(fields["sid"], fields["pid"], "the workload leads its own session: {line}");
    assert_ne!(fields["sid"], agent.id().to_string(), "{line}");

    // Input reaches the workload through the relay, its output reaches the terminal.
    type_line(r#"read v; echo "got""=$v""#);
    type_line("hello there");
    assert_eq!(screen.line_after("got="), "hello there");

    tty.resize(50, 132);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        type_line(r#"echo "resized""=$(stty size)""#);
        if screen.line_after("resized=") == "50 132" {
            break;
        }
        assert!(Instant::now() < deadline, "the window change never reached the workload's pty");
        std::thread::sleep(Duration::from_millis(100));
    }

    type_line("exit 7");
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(20)), Some(7));
    assert_modes_restored(&tty, &before);
}

#[test]
fn sigterm_reaches_the_workload_on_its_pty_and_the_terminal_gets_its_modes_back() {
    let fixture = Fixture::new();
    let tty = Terminal::new(24, 80);
    let before = tty.modes();
    let mut cmd = fixture.agent_command();
    cmd.args(["--", "sh", "-c", "trap 'exit 42' TERM; echo ready; while :; do sleep 0.05; done"]);
    let mut agent = tty.spawn(&mut cmd);
    let mut screen = tty.screen();
    screen.expect("ready");
    wait_raw(&tty);
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(agent.id() as i32), nix::sys::signal::SIGTERM).unwrap();
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(20)), Some(42));
    assert_modes_restored(&tty, &before);
}

/// Puts the injection script in the work dir (children cannot reach the fixture's dir).
fn install_script(fixture: &Fixture) {
    std::fs::write(fixture.work().join("inject.py"), INJECT).unwrap();
}

/// The script's results, by name, from `path`.
fn results(path: &Path) -> BTreeMap<String, String> {
    let text = std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.lines().filter_map(|l| l.split_once(' ')).map(|(k, v)| (k.to_owned(), v.to_owned())).collect()
}

/// After the agent is gone, the operator's shell reads the terminal: nothing typed by a
/// child waits there, and nothing runs.
fn assert_nothing_typed_for_the_operator(tty: &Terminal, marker: &Path) {
    assert_eq!(tty.pending_input(), 0, "bytes wait in the operator's terminal input");
    let mut shell = Command::new("sh");
    shell.stdin(tty.slave.try_clone().unwrap()).stdout(Stdio::null()).stderr(Stdio::null());
    let mut shell = shell.spawn().unwrap();
    tty.type_text("\x04");
    wait_exit(&mut shell, Duration::from_secs(20));
    assert!(!marker.exists(), "a command typed by a child ran as the operator");
}

#[test]
fn a_workload_types_only_into_its_own_pty() {
    let fixture = Fixture::new();
    install_script(&fixture);
    let marker = fixture.path().join("typed-by-the-child");
    let tty = Terminal::new(24, 80);
    let mut cmd = fixture.agent_command();
    cmd.args(["--", "python3", "inject.py", "results"]).arg(&marker);
    let mut agent = agent_on(&tty, cmd);
    let _screen = tty.screen();
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(30)), Some(0));
    // Nested: no seccomp, and root may TIOCSTI any terminal it holds; it holds only its own.
    let got = results(&fixture.work().join("results"));
    for name in ["stdin", "stdout", "high_bits", "dev_tty"] {
        assert_eq!(got[name], "ok", "{name}: {got:?}");
    }
    assert_eq!(got["fd50"], "EBADF", "the inherited handle on the terminal is gone: {got:?}");
    assert_eq!(got["tioclinux"], "ENOTTY", "{got:?}");
    assert_eq!(got["own_input"], format!("touch {}", marker.display()), "{got:?}");
    assert_nothing_typed_for_the_operator(&tty, &marker);
}

#[test]
fn a_sandboxed_workload_with_the_baseline_profile_gets_eperm() {
    let Some(fixture) = Fixture::enforced_as(&UID.to_string(), UID) else { return };
    install_script(&fixture);
    let marker = fixture.path().join("typed-by-the-child");
    let tty = Terminal::new(24, 80);
    let mut cmd = fixture.agent_command();
    cmd.args(["--seccomp", "baseline", "--", "python3", "inject.py", "results"]).arg(&marker).arg(tty.path());
    let mut agent = agent_on(&tty, cmd);
    let _screen = tty.screen();
    assert_eq!(wait_exit(&mut agent, Duration::from_secs(30)), Some(0));
    let got = results(&fixture.work().join("results"));
    // The filter answers before the kernel looks at the descriptor, so fd 50 too.
    for name in ["stdin", "stdout", "high_bits", "fd50", "dev_tty", "tioclinux"] {
        assert_eq!(got[name], "EPERM", "{name}: {got:?}");
    }
    assert_eq!(got["by_name"], "EACCES", "the operator's terminal is not the child user's: {got:?}");
    assert_eq!(got["own_input"], "none", "{got:?}");
    assert_nothing_typed_for_the_operator(&tty, &marker);
}

#[test]
fn ssh_children_of_an_agent_on_a_terminal_cannot_type_into_it() {
    let fixture = Fixture::new();
    install_script(&fixture);
    let marker = fixture.path().join("typed-by-the-child");
    let tty = Terminal::new(24, 80);
    let agent_process = agent_on(&tty, fixture.agent_command());
    let _screen = tty.screen();
    let mut agent = fixture.serving(agent_process);
    let line = format!("python3 inject.py results {}", marker.display());

    // exec without a pty: a new session without a controlling terminal, pipes for stdio.
    let (code, _, err) = run(&mut agent.ssh(&["sandbox@agent", &line]));
    assert_eq!(code, 0, "{err}");
    let got = results(&fixture.work().join("results"));
    for name in ["stdin", "stdout", "high_bits", "tioclinux"] {
        assert_eq!(got[name], "ENOTTY", "{name}: {got:?}");
    }
    assert_eq!(got["dev_tty"], "ENXIO", "no controlling terminal: {got:?}");
    assert_eq!(got["fd50"], "EBADF", "{got:?}");

    // exec with a pty: the session's own pty takes what is typed.
    let (code, out, err) = run(&mut agent.ssh(&["-tt", "sandbox@agent", &line]));
    assert_eq!(code, 0, "{out} {err}");
    let got = results(&fixture.work().join("results"));
    for name in ["stdin", "stdout", "high_bits", "dev_tty"] {
        assert_eq!(got[name], "ok", "{name}: {got:?}");
    }
    assert_eq!(got["fd50"], "EBADF", "{got:?}");
    assert_eq!(got["own_input"], format!("touch {}", marker.display()), "{got:?}");

    assert_eq!(agent.stop(), Some(0));
    assert_nothing_typed_for_the_operator(&tty, &marker);
}
