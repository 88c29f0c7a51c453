//! The workload's own terminal: when any of the supervisor's stdin, stdout and stderr is a
//! terminal, the workload gets a new pty in its place (never a descriptor of the
//! supervisor's terminal, so `TIOCSTI` can only type into its own), and the supervisor
//! relays: its terminal raw meanwhile, the window size copied at start and on SIGWINCH.

use std::io;
use std::os::fd::{AsFd, OwnedFd};
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::fcntl::OFlag;
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::termios::{self, SetArg, Termios};
use tokio::signal::unix::{SignalKind, signal};
use tokio::sync::mpsc;
use tokio::task::JoinSet;

use super::child::Launcher;
use super::pty::{self, Master, Size};

/// How long the workload's output may still drain after it exited (a background process
/// that keeps the pty open does not hold the supervisor up for longer).
const DRAIN: Duration = Duration::from_secs(2);

/// Which of the supervisor's stdin, stdout and stderr are terminals.
#[derive(Clone, Copy, Debug)]
pub struct Outer {
    stdin: bool,
    stdout: bool,
    stderr: bool,
}

impl Outer {
    /// `None` when none of the supervisor's stdio is a terminal.
    pub fn detect() -> Option<Self> {
        let outer = Outer {
            stdin: nix::unistd::isatty(io::stdin()).unwrap_or(false),
            stdout: nix::unistd::isatty(io::stdout()).unwrap_or(false),
            stderr: nix::unistd::isatty(io::stderr()).unwrap_or(false),
        };
        (outer.stdin || outer.stdout || outer.stderr).then_some(outer)
    }

    /// The window size of the first of the three that is a terminal.
    fn size(self) -> io::Result<Size> {
        match (self.stdin, self.stdout) {
            (true, _) => Size::of_terminal(io::stdin()),
            (false, true) => Size::of_terminal(io::stdout()),
            (false, false) => Size::of_terminal(io::stderr()),
        }
    }

    /// Opens the workload's pty with the supervisor's window size (and terminal modes, when
    /// stdin is a terminal) and gives its slave to `command` in place of each stdio that is
    /// a terminal; the others (pipes, files) are passed on as they are.
    pub fn attach(self, launcher: &Launcher, command: &mut std::process::Command) -> io::Result<Pty> {
        let modes = if self.stdin { Some(termios::tcgetattr(io::stdin())?) } else { None };
        let (master, slave) = launcher.open_pty(self.size().unwrap_or_default(), modes.as_ref())?;
        let stdio = |terminal: bool| -> io::Result<Stdio> {
            Ok(if terminal { slave.try_clone()?.into() } else { Stdio::inherit() })
        };
        command.stdin(stdio(self.stdin)?).stdout(stdio(self.stdout)?).stderr(stdio(self.stderr)?);
        Ok(Pty { outer: self, master: Arc::new(master), modes })
    }
}

/// The workload's pty, before the relay starts.
pub struct Pty {
    outer: Outer,
    master: Arc<Master>,
    /// The supervisor's terminal modes (stdin's), restored when the relay ends.
    modes: Option<Termios>,
}

impl Pty {
    /// Starts relaying: output to the supervisor's stdout (its stderr when only that is a
    /// terminal), window changes, and stdin when it is a terminal (read by a thread: the
    /// terminal's flags are shared with other processes, so it is never made non-blocking).
    pub fn relay(self) -> io::Result<Relay> {
        let Pty { outer, master, modes } = self;
        let mut tasks = JoinSet::new();
        let mut winch = signal(SignalKind::window_change())?;
        let resized = master.clone();
        tasks.spawn(async move {
            while winch.recv().await.is_some() {
                if let Err(e) = outer.size().and_then(|size| resized.resize(size)) {
                    tracing::debug!("window change: {e}");
                }
            }
        });
        let mut stop_input = None;
        if outer.stdin {
            let (stopped, stop) = nix::unistd::pipe2(OFlag::O_CLOEXEC).map_err(io::Error::from)?;
            let (tx, mut rx) = mpsc::channel::<Vec<u8>>(16);
            std::thread::Builder::new().name("workload-input".into()).spawn(move || read_input(&stopped, &tx))?;
            let input = master.clone();
            tasks.spawn(async move {
                while let Some(chunk) = rx.recv().await {
                    if input.write_all(&chunk).await.is_err() {
                        break;
                    }
                }
            });
            stop_input = Some(stop);
        }
        let mut output = JoinSet::new();
        if outer.stdout || !outer.stderr {
            output.spawn(pty::copy_output(master, tokio::io::stdout()));
        } else {
            output.spawn(pty::copy_output(master, tokio::io::stderr()));
        }
        Ok(Relay { output, tasks, stop_input, modes, raw: None })
    }
}

/// The running relay. [`Relay::finish`] ends it after the workload; dropping it on any
/// other path stops it too and restores the terminal.
pub struct Relay {
    output: JoinSet<()>,
    tasks: JoinSet<()>,
    /// The write end of a pipe the input thread polls: closing it ends that thread.
    stop_input: Option<OwnedFd>,
    /// The terminal's modes (stdin's) before raw mode.
    modes: Option<Termios>,
    /// Set once raw mode is on: puts `modes` back when dropped.
    raw: Option<RawMode>,
}

impl Relay {
    /// Puts the supervisor's terminal (stdin) in raw mode, so every key reaches the
    /// workload's pty, whose own line discipline then echoes, edits and sends signals.
    pub fn raw_mode(&mut self) -> io::Result<()> {
        let Some(saved) = &self.modes else { return Ok(()) };
        let mut raw = saved.clone();
        termios::cfmakeraw(&mut raw);
        // Output processing stays on: the supervisor's own log lines (plain `\n`) start at
        // the left margin; the pty's `\r\n` becomes `\r\r\n`, which shows the same.
        raw.output_flags |= termios::OutputFlags::OPOST | termios::OutputFlags::ONLCR;
        termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &raw).map_err(io::Error::from)?;
        self.raw = Some(RawMode(saved.clone()));
        Ok(())
    }

    /// After the workload exited: its output drains (bounded), input stops, and the
    /// terminal gets its modes back.
    pub async fn finish(mut self) {
        let drained = async { while self.output.join_next().await.is_some() {} };
        if tokio::time::timeout(DRAIN, drained).await.is_err() {
            tracing::debug!("the workload's pty is still open (a background process?): output no longer relayed");
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.stop_input.take();
        self.tasks.abort_all();
        self.output.abort_all();
    }
}

/// The supervisor's terminal modes from before raw mode, put back when dropped.
struct RawMode(Termios);

impl Drop for RawMode {
    fn drop(&mut self) {
        if let Err(e) = termios::tcsetattr(io::stdin(), SetArg::TCSADRAIN, &self.0) {
            tracing::warn!("cannot restore the terminal's modes: {e}");
        }
    }
}

/// Reads the supervisor's stdin (a terminal) into `tx` until it ends or hangs up, nobody
/// takes the input any more, or `stopped` reports that its write end was closed.
fn read_input(stopped: &OwnedFd, tx: &mpsc::Sender<Vec<u8>>) {
    let stdin = io::stdin();
    let mut buf = [0u8; 4096];
    loop {
        let mut fds = [PollFd::new(stdin.as_fd(), PollFlags::POLLIN), PollFd::new(stopped.as_fd(), PollFlags::POLLIN)];
        match poll(&mut fds, PollTimeout::NONE) {
            Ok(_) => {}
            Err(Errno::EINTR) => continue,
            Err(_) => return,
        }
        if fds[1].any().unwrap_or(true) {
            return;
        }
        if !fds[0].any().unwrap_or(true) {
            continue;
        }
        match nix::unistd::read(stdin.as_fd(), &mut buf) {
            // End of input, or the terminal hung up (EIO): the workload keeps running.
            Ok(0) => return,
            Ok(n) => {
                if tx.blocking_send(buf[..n].to_vec()).is_err() {
                    return;
                }
            }
            Err(Errno::EINTR | Errno::EAGAIN) => {}
            Err(_) => return,
        }
    }
}
