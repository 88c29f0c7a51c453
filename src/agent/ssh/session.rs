//! One SSH `session` channel: waits for its request (exec, shell or the sftp subsystem,
//! with or without a pty), runs the child, relays input, output, window changes and
//! signals, and ends with the child's exit status or exit signal.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use nix::sys::signal::{Signal, killpg};
use nix::unistd::Pid;
use russh::server::{Handle, Msg};
use russh::{Channel, ChannelId, ChannelMsg};
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::process::{Child, ChildStdin};
use tokio::task::JoinSet;

use super::Shared;
use super::signals::{to_sig, to_signal};
use crate::agent::audit;
use crate::agent::child::Session;
use crate::agent::pty::{self, Master, Size};

/// How long output may still drain after the child exited (a background process that
/// keeps the pipes or the pty open does not hold the channel open for longer).
const DRAIN: Duration = Duration::from_secs(2);

/// What the client asked the channel to run.
enum Request {
    Exec(OsString),
    Shell,
    Sftp,
}

/// The client's pty request.
struct PtyRequest {
    term: String,
    size: Size,
}

/// A started child and the ends of its stdio.
struct Running {
    child: Child,
    /// `exec`, `shell` or `sftp`, and the program, for the audit events.
    what: &'static str,
    program: PathBuf,
    /// The child's pid, which is also its process group (it leads a new session).
    pid: Option<Pid>,
    input: Input,
    pumps: JoinSet<()>,
}

enum Input {
    Pipe(Option<ChildStdin>),
    Pty(Arc<Master>),
}

/// Serves one session channel until the child has exited or the client closed it.
pub(super) async fn serve(mut channel: Channel<Msg>, handle: Handle, shared: Arc<Shared>) {
    let id = channel.id();
    let mut pty: Option<PtyRequest> = None;
    let mut running: Option<Running> = None;
    loop {
        tokio::select! {
            status = wait(&mut running) => {
                let Some(mut run) = running.take() else { continue };
                drain(&mut run.pumps).await;
                if let Ok(status) = &status {
                    audit::ended(run.what, &run.program, run.pid.map(|p| p.as_raw() as u32), status);
                }
                report(&channel, &handle, id, status).await;
                let _ = channel.eof().await;
                let _ = channel.close().await;
                return;
            }
            msg = channel.wait() => {
                let Some(msg) = msg else { break };
                let request = match msg {
                    ChannelMsg::RequestPty { term, col_width, row_height, pix_width, pix_height, .. } => {
                        let size = Size { cols: col_width, rows: row_height, width: pix_width, height: pix_height };
                        pty = Some(PtyRequest { term, size });
                        None
                    }
                    ChannelMsg::Exec { command, .. } => Some(Request::Exec(OsString::from_vec(command))),
                    ChannelMsg::RequestShell { .. } => Some(Request::Shell),
                    // Other subsystems were refused by the handler already.
                    ChannelMsg::RequestSubsystem { name, .. } if name == "sftp" && shared.sftp_server.is_some() => {
                        Some(Request::Sftp)
                    }
                    ChannelMsg::Data { data } => {
                        if let Some(run) = running.as_mut() {
                            run.input(data).await;
                        }
                        None
                    }
                    ChannelMsg::Eof => {
                        if let Some(Running { input: Input::Pipe(stdin), .. }) = running.as_mut() {
                            stdin.take();
                        }
                        None
                    }
                    ChannelMsg::WindowChange { col_width, row_height, pix_width, pix_height } => {
                        let size = Size { cols: col_width, rows: row_height, width: pix_width, height: pix_height };
                        match (running.as_ref(), pty.as_mut()) {
                            (Some(Running { input: Input::Pty(master), .. }), _) => {
                                if let Err(e) = master.resize(size) {
                                    tracing::debug!("window change: {e}");
                                }
                            }
                            // Before the shell starts: it starts with the new size.
                            (None, Some(pty)) => pty.size = size,
                            _ => {}
                        }
                        None
                    }
                    ChannelMsg::Signal { signal } => {
                        if let (Some(run), Some(signal)) = (running.as_ref(), to_signal(&signal)) {
                            run.signal(signal);
                        }
                        None
                    }
                    ChannelMsg::Close => break,
                    _ => None,
                };
                if let Some(request) = request {
                    if running.is_some() {
                        continue;
                    }
                    match start(&shared, &channel, request, pty.as_ref()) {
                        Ok(run) => running = Some(run),
                        Err(e) => {
                            let message = format!("openshell-sandbox: cannot start the command: {e}\r\n");
                            let _ = channel.extended_data_bytes(1, Bytes::from(message)).await;
                            let _ = channel.exit_status(127).await;
                            let _ = channel.eof().await;
                            let _ = channel.close().await;
                            return;
                        }
                    }
                }
            }
        }
    }
    // The client went away first: hang up the child's session, then make sure it ends.
    if let Some(mut run) = running {
        run.signal(Signal::SIGHUP);
        if tokio::time::timeout(DRAIN, run.child.wait()).await.is_err() {
            run.signal(Signal::SIGKILL);
            let _ = run.child.wait().await;
        }
    }
}

impl Running {
    /// Signals the child's process group (all it started in its session).
    fn signal(&self, signal: Signal) {
        if let Some(pid) = self.pid {
            let _ = killpg(pid, signal);
        }
    }

    /// Writes client input to the child. A write that cannot finish (nobody reads) does
    /// not hold up the end: when the child exits meanwhile, its input is dropped.
    async fn input(&mut self, data: Bytes) {
        let write = async {
            match &mut self.input {
                Input::Pipe(Some(stdin)) => stdin.write_all(&data).await,
                Input::Pipe(None) => Ok(()),
                Input::Pty(master) => master.write_all(&data).await,
            }
        };
        let result = tokio::select! {
            result = write => result,
            // Cancel safe: the status is kept for the main loop's wait().
            _ = self.child.wait() => Err(std::io::ErrorKind::BrokenPipe.into()),
        };
        if let Err(e) = result {
            tracing::debug!("child input: {e}");
            if let Input::Pipe(stdin) = &mut self.input {
                stdin.take();
            }
        }
    }
}

async fn wait(running: &mut Option<Running>) -> std::io::Result<std::process::ExitStatus> {
    match running {
        Some(run) => run.child.wait().await,
        None => std::future::pending().await,
    }
}

/// Starts the child for `request`: with the pty when one was requested, else with pipes.
fn start(
    shared: &Shared,
    channel: &Channel<Msg>,
    request: Request,
    pty: Option<&PtyRequest>,
) -> std::io::Result<Running> {
    let launcher = &shared.launcher;
    let term = pty.map(|p| p.term.as_str());
    let session = if pty.is_some() { Session::Terminal } else { Session::New };
    let mut command = match &request {
        Request::Exec(line) => launcher.shell_command(line, term, session),
        Request::Shell => launcher.login_shell(term, session),
        Request::Sftp => match &shared.sftp_server {
            Some(path) => launcher.command(path, term, session),
            None => return Err(std::io::Error::new(std::io::ErrorKind::NotFound, "no sftp-server on this system")),
        },
    };
    let program = PathBuf::from(command.get_program());
    let what = match &request {
        Request::Exec(_) => "exec",
        Request::Shell => "shell",
        Request::Sftp => "sftp",
    };
    let mut pumps = JoinSet::new();
    let (child, input) = match pty {
        Some(pty) => {
            let (master, slave) = launcher.open_pty(pty.size, None)?;
            command.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave);
            let child = tokio::process::Command::from(command).kill_on_drop(true).spawn()?;
            // `command` is gone: the parent holds no slave fd, so the master reads EIO at the end.
            let master = Arc::new(master);
            pumps.spawn(pty::copy_output(master.clone(), channel.make_writer()));
            (child, Input::Pty(master))
        }
        None => {
            command.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
            let mut child = tokio::process::Command::from(command).kill_on_drop(true).spawn()?;
            if let Some(out) = child.stdout.take() {
                pumps.spawn(pump(out, channel.make_writer()));
            }
            if let Some(err) = child.stderr.take() {
                pumps.spawn(pump(err, channel.make_writer_ext(Some(1))));
            }
            let stdin = child.stdin.take();
            (child, Input::Pipe(stdin))
        }
    };
    // A child just spawned has a pid; without one there is nothing to signal.
    let pid = child.id().and_then(|p| i32::try_from(p).ok()).filter(|p| *p > 1).map(Pid::from_raw);
    audit::launched(what, &program, pid.map(|p| p.as_raw() as u32));
    Ok(Running { child, what, program, pid, input, pumps })
}

async fn pump(mut from: impl AsyncRead + Unpin, mut to: impl AsyncWrite + Unpin) {
    let _ = tokio::io::copy(&mut from, &mut to).await;
    let _ = to.flush().await;
}

/// Waits, bounded, for the output pumps to reach the end of the child's output.
async fn drain(pumps: &mut JoinSet<()>) {
    let all = async { while pumps.join_next().await.is_some() {} };
    if tokio::time::timeout(DRAIN, all).await.is_err() {
        pumps.abort_all();
    }
}

/// Sends `exit-status`, or `exit-signal` when a signal ended the child.
async fn report(
    channel: &Channel<Msg>,
    handle: &Handle,
    id: ChannelId,
    status: std::io::Result<std::process::ExitStatus>,
) {
    use std::os::unix::process::ExitStatusExt;
    match status {
        Ok(status) => match (status.code(), status.signal()) {
            (Some(code), _) => {
                let _ = channel.exit_status(u32::try_from(code).unwrap_or(255)).await;
            }
            (None, Some(signal)) => {
                let _ = handle
                    .exit_signal_request(id, to_sig(signal), status.core_dumped(), String::new(), String::new())
                    .await;
            }
            (None, None) => {
                let _ = channel.exit_status(255).await;
            }
        },
        Err(e) => {
            tracing::warn!("waiting for an SSH child: {e}");
            let _ = channel.exit_status(255).await;
        }
    }
}
