//! The process runner (feature `process`): runs a command in a process group of its own, feeds
//! its stdin, captures its output up to a bound and kills the whole group when it is done.
//! The agent's checks and hooks and the backend's `pipe` handlers run on it.
//!
//! # Guarantees
//!
//! - **One group.** The child is the leader of a new process group, and everything it starts
//!   stays in that group unless it leaves on purpose (`setsid`, `setpgid`). The whole group gets
//!   `SIGKILL` on timeout, after the leader exits (what it left behind, "leftovers", dies with
//!   it) and when the future of [`run`] is dropped (cancellation).
//! - **No signal to a stranger.** POSIX keeps a group id reserved while its leader is not
//!   reaped, whatever the other members do. The runner waits for the leader's exit without
//!   reaping it (`waitid(P_PID, pid, WEXITED | WNOWAIT)`), kills the group and only then reaps
//!   the leader, so `killpg` never reaches a group that reused the id.
//! - **Bounded output.** Of each stream, at most [`RunConfig::max_output`] bytes are kept (plus
//!   up to [`Redactor::longest`] + 4 bytes while reading, to see a secret across the cut and to
//!   find a UTF-8 boundary); the rest is read and counted, never stored.
//! - **Stdin never blocks.** The payload is written while the child runs; a child that exits,
//!   or only never reads it, does not hang the run: writing stops when the leader exits.
//!
//! # Caveats
//!
//! A process that left the group, or any process outside it holding a copy of the output pipe,
//! is not killed; its output is read for at most [`RunConfig::grace`] after the group was
//! killed, then abandoned.

use std::future::Future;
use std::io;
use std::process::{ExitStatus, Stdio};
use std::sync::Arc;
use std::time::Duration;

use nix::errno::Errno;
use nix::sys::signal::{killpg, Signal};
use nix::sys::wait::{waitid, Id, WaitPidFlag, WaitStatus};
use nix::unistd::Pid;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::unix::pipe;
use tokio::process::{Child, ChildStdin, Command};
use tokio::signal::unix::{signal, SignalKind};
use tokio::time::Instant;
use tracing::{debug, warn};

use crate::redact::Redactor;

/// How often the leader's state is polled when `SIGCHLD` cannot be listened to.
const EXIT_POLL: Duration = Duration::from_millis(50);

/// Bytes read from a pipe at a time.
const READ_CHUNK: usize = 16 * 1024;

/// `sh -c command`: a command for [`run`], to which the caller adds the environment.
pub fn shell(command: &str) -> Command {
    let mut shell = Command::new("sh");
    shell.arg("-c").arg(command);
    shell
}

/// How [`run`] runs a command.
#[derive(Debug, Clone)]
pub struct RunConfig<'a> {
    /// Written to stdin, which is then closed; `None` gives the command `/dev/null`.
    pub stdin: Option<Arc<[u8]>>,
    /// From the start to the whole group killed, the output drain after the exit included;
    /// `None` for no limit.
    pub timeout: Option<Duration>,
    /// Output bytes kept of each stream (see the module's guarantees for the exact bound).
    pub max_output: usize,
    /// Whether stderr shares stdout's pipe or has its own.
    pub streams: Streams,
    /// How long output is still read after the leader exited (never past the timeout) and,
    /// again, after the group was killed, while something still holds a pipe open.
    pub grace: Duration,
    /// Secret values replaced in the output, before it is cut.
    pub redactor: Option<&'a Redactor>,
}

/// Where stdout and stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Streams {
    /// One pipe: they interleave as the command writes them, in [`Finished::output`].
    Combined,
    /// Two pipes: stdout in [`Finished::output`], stderr in [`Finished::stderr`].
    Separate,
}

/// A command that was started and has ended.
#[derive(Debug)]
pub struct Finished {
    /// How it ended.
    pub ended: Ended,
    /// stdout, or stdout and stderr with [`Streams::Combined`].
    pub output: Output,
    /// stderr with [`Streams::Separate`].
    pub stderr: Option<Output>,
}

/// How a command ended.
#[derive(Debug)]
pub enum Ended {
    /// The leader exited (or died of a signal) by itself before the timeout.
    Exited {
        /// The leader's status.
        status: ExitStatus,
        /// Processes it left behind still held the output open when the grace ran out (so the
        /// output may be cut short). The group is killed after every exit; this only says
        /// whether that was seen to matter.
        leftovers_killed: bool,
    },
    /// The timeout passed; the group was killed.
    TimedOut,
    /// Waiting for the leader failed (the group was killed unless the leader was already
    /// reaped elsewhere). Not expected; a retry may help.
    WaitFailed(io::Error),
}

/// Captured output of one stream.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Output {
    /// Redacted, cut to [`RunConfig::max_output`] bytes on a UTF-8 boundary (invalid UTF-8 is
    /// replaced, so the text may be a little longer than the bytes it came from).
    pub text: String,
    /// Bytes of the stream cut off.
    pub truncated_bytes: usize,
}

/// Why [`run`] could not run the command.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The output pipes could not be made (out of descriptors, usually); a retry may help.
    #[error("failed to create the output pipes")]
    PipeFailed(#[source] io::Error),
    /// The command could not be started (no such program, a bad environment entry, a failed
    /// `pre_exec`); expected for a bad command, a retry does not help.
    #[error("failed to start the command")]
    SpawnFailed(#[source] io::Error),
}

/// Runs `command` as [`RunConfig`] says and waits until it and its process group are gone.
///
/// The runner sets the command's stdio, its process group and `kill_on_drop`; everything else
/// (program, arguments, environment, user, `pre_exec`) is the caller's.
///
/// # Errors
/// [`RunError`] when nothing ran; once the command started, every outcome is a [`Finished`].
pub async fn run(mut command: Command, config: &RunConfig<'_>) -> Result<Finished, RunError> {
    let deadline = config.timeout.map(|timeout| Instant::now() + timeout);
    let (stdout_sender, mut stdout) = pipe::pipe().map_err(RunError::PipeFailed)?;
    let stdout_fd = stdout_sender
        .into_blocking_fd()
        .map_err(RunError::PipeFailed)?;
    let (stderr_fd, mut stderr) = match config.streams {
        Streams::Combined => (stdout_fd.try_clone().map_err(RunError::PipeFailed)?, None),
        Streams::Separate => {
            let (sender, receiver) = pipe::pipe().map_err(RunError::PipeFailed)?;
            let fd = sender.into_blocking_fd().map_err(RunError::PipeFailed)?;
            (fd, Some(receiver))
        }
    };
    command
        .stdin(if config.stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(stdout_fd)
        .stderr(stderr_fd)
        .process_group(0)
        .kill_on_drop(true);
    // Listening before the spawn, so that no exit goes unseen.
    let mut exits = ExitWatch::new();
    let spawned = command.spawn();
    // The command holds the parent's copies of the pipes' write ends: close them, so that the
    // output ends when the last process holding it closes it.
    drop(command);
    let mut group = Group::new(spawned.map_err(RunError::SpawnFailed)?);

    let no_secrets = Redactor::default();
    let redactor = config.redactor.unwrap_or(&no_secrets);
    let mut out_capture = Capture::new(config.max_output, redactor);
    let mut err_capture = Capture::new(config.max_output, redactor);
    let separate = stderr.is_some();
    let ended = {
        let feeding = feed(group.child.stdin.take(), config.stdin.clone());
        tokio::pin!(feeding);
        let reading = async {
            tokio::join!(
                read_into(Some(&mut stdout), &mut out_capture),
                read_into(stderr.as_mut(), &mut err_capture),
            );
        };
        tokio::pin!(reading);
        let mut fed = false;
        let mut read = false;
        let exited = loop {
            tokio::select! {
                exited = exits.exited(group.pid) => break Some(exited),
                () = &mut feeding, if !fed => fed = true,
                () = &mut reading, if !read => read = true,
                () = sleep_until(deadline) => break None,
            }
        };
        match exited {
            None => {
                group.kill();
                drop(group.reap().await);
                drain(reading, read, config.grace).await;
                Ended::TimedOut
            }
            Some(Err(error)) => {
                if error.raw_os_error() == Some(Errno::ECHILD as i32) {
                    // Reaped by someone else: the group id may be reused already.
                    group.disarm();
                } else {
                    group.kill();
                }
                drop(group.reap().await);
                drain(reading, read, config.grace).await;
                Ended::WaitFailed(error)
            }
            Some(Ok(())) => {
                let grace = deadline.map_or(config.grace, |deadline| {
                    deadline
                        .saturating_duration_since(Instant::now())
                        .min(config.grace)
                });
                let drained = drain(reading.as_mut(), read, grace).await;
                group.kill();
                if !drained {
                    drain(reading, false, config.grace).await;
                }
                match group.reap().await {
                    Ok(status) => Ended::Exited {
                        status,
                        leftovers_killed: !drained,
                    },
                    Err(error) => Ended::WaitFailed(error),
                }
            }
        }
    };
    let output = out_capture.finish(config.max_output, redactor);
    let stderr = separate.then(|| err_capture.finish(config.max_output, redactor));
    Ok(Finished {
        ended,
        output,
        stderr,
    })
}

/// The spawned leader and its group, killed on drop (cancellation) unless already killed.
struct Group {
    child: Child,
    /// The leader's pid, which is the group id (`process_group(0)`).
    pid: Pid,
    /// Whether the group may still be signalled: the leader is not reaped by us yet.
    armed: bool,
}

// === impl Group ===

impl Group {
    fn new(child: Child) -> Group {
        let pid = child.id().expect("a child not waited for yet has an id");
        let pid = Pid::from_raw(i32::try_from(pid).expect("a pid fits in pid_t"));
        Group {
            child,
            pid,
            armed: true,
        }
    }

    /// Never signals the group again.
    fn disarm(&mut self) {
        self.armed = false;
    }

    /// `SIGKILL` to the whole group. The leader is unreaped, so the id is still ours.
    fn kill(&mut self) {
        if !std::mem::take(&mut self.armed) {
            return;
        }
        match killpg(self.pid, Signal::SIGKILL) {
            Ok(()) | Err(Errno::ESRCH) => {}
            Err(errno) => warn!(%errno, "failed to kill a command's process group"),
        }
    }

    /// Reaps the leader; only after [`Group::kill`], so that the group id is never signalled
    /// once it may be reused.
    async fn reap(&mut self) -> io::Result<ExitStatus> {
        debug_assert!(
            !self.armed,
            "the group is killed before its leader is reaped"
        );
        let reaped = self.child.wait().await;
        if let Err(error) = &reaped {
            debug!(%error, "failed to reap a command");
        }
        reaped
    }
}

impl Drop for Group {
    fn drop(&mut self) {
        // Then `kill_on_drop` hands the leader to tokio, which reaps it.
        self.kill();
    }
}

/// Waits for the leader's exit without reaping it.
struct ExitWatch {
    /// `SIGCHLD`; `None` (polling) when it cannot be listened to.
    sigchld: Option<tokio::signal::unix::Signal>,
}

// === impl ExitWatch ===

impl ExitWatch {
    fn new() -> ExitWatch {
        let sigchld = signal(SignalKind::child())
            .inspect_err(|error| debug!(%error, "cannot listen to SIGCHLD; polling instead"))
            .ok();
        ExitWatch { sigchld }
    }

    /// Resolves once `pid` has exited, leaving it a zombie.
    ///
    /// # Errors
    /// What `waitid` says, `ECHILD` when another waiter reaped the leader.
    async fn exited(&mut self, pid: Pid) -> io::Result<()> {
        let flags = WaitPidFlag::WEXITED | WaitPidFlag::WNOWAIT | WaitPidFlag::WNOHANG;
        loop {
            match waitid(Id::Pid(pid), flags) {
                Ok(WaitStatus::StillAlive) | Err(Errno::EINTR) => {}
                Ok(_) => return Ok(()),
                Err(errno) => return Err(io::Error::from(errno)),
            }
            match &mut self.sigchld {
                Some(sigchld) => {
                    if sigchld.recv().await.is_none() {
                        self.sigchld = None;
                    }
                }
                None => tokio::time::sleep(EXIT_POLL).await,
            }
        }
    }
}

/// Output read so far: the first `keep` bytes, and how many came in all.
struct Capture {
    kept: Vec<u8>,
    keep: usize,
    total: usize,
}

// === impl Capture ===

impl Capture {
    /// Keeps enough past `limit` to see a secret that starts before it and to find a UTF-8
    /// boundary.
    fn new(limit: usize, redactor: &Redactor) -> Capture {
        Capture {
            kept: Vec::new(),
            keep: limit.saturating_add(redactor.longest().max(4)),
            total: 0,
        }
    }

    fn push(&mut self, bytes: &[u8]) {
        self.total = self.total.saturating_add(bytes.len());
        let room = self.keep.saturating_sub(self.kept.len());
        self.kept.extend_from_slice(&bytes[..bytes.len().min(room)]);
    }

    /// The redacted output cut to `limit` bytes of the command's output, and how many bytes of
    /// it were dropped.
    fn finish(&self, limit: usize, redactor: &Redactor) -> Output {
        let cut = if self.total > limit {
            utf8_boundary(&self.kept, limit)
        } else {
            self.kept.len()
        };
        let (redacted, consumed) = redactor.redact_cut(&self.kept, cut);
        Output {
            text: String::from_utf8_lossy(&redacted).into_owned(),
            truncated_bytes: self.total.saturating_sub(consumed),
        }
    }
}

/// The largest char boundary at or below `limit`, looking at most three bytes back (further
/// back the bytes are not UTF-8 anyway and the cut stays at `limit`).
fn utf8_boundary(bytes: &[u8], limit: usize) -> usize {
    if limit >= bytes.len() {
        return bytes.len();
    }
    let is_continuation = |byte: u8| byte & 0xC0 == 0x80;
    (limit.saturating_sub(3)..=limit)
        .rev()
        .find(|&idx| !is_continuation(bytes[idx]))
        .unwrap_or(limit)
}

/// Writes the payload and closes stdin; a command that exits without reading is fine.
async fn feed(stdin: Option<ChildStdin>, payload: Option<Arc<[u8]>>) {
    if let (Some(mut stdin), Some(payload)) = (stdin, payload) {
        if let Err(error) = stdin.write_all(&payload).await {
            debug!(%error, "command did not read all of its stdin");
        }
    }
}

/// Reads a pipe to its end (nothing for `None`).
async fn read_into(receiver: Option<&mut pipe::Receiver>, capture: &mut Capture) {
    let Some(receiver) = receiver else {
        return;
    };
    let mut buffer = vec![0_u8; READ_CHUNK];
    loop {
        match receiver.read(&mut buffer).await {
            Ok(0) => return,
            Ok(n_read) => capture.push(&buffer[..n_read]),
            Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
            Err(error) => {
                debug!(%error, "failed to read command output");
                return;
            }
        }
    }
}

/// Whether the output ended (before, or within `limit`).
async fn drain(reading: impl Future<Output = ()>, done: bool, limit: Duration) -> bool {
    done || tokio::time::timeout(limit, reading).await.is_ok()
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(deadline) => tokio::time::sleep_until(deadline).await,
        None => std::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use std::os::unix::process::ExitStatusExt;
    use std::path::PathBuf;
    use std::pin::Pin;

    use super::*;

    const GRACE: Duration = Duration::from_millis(500);

    fn config() -> RunConfig<'static> {
        RunConfig {
            stdin: None,
            timeout: Some(Duration::from_secs(20)),
            max_output: 1024,
            streams: Streams::Combined,
            grace: GRACE,
            redactor: None,
        }
    }

    /// Runs `command`, failing the test rather than hanging.
    async fn run_with(command: &str, config: &RunConfig<'_>) -> Finished {
        tokio::time::timeout(Duration::from_secs(60), run(shell(command), config))
            .await
            .expect("the run ends")
            .expect("the command starts")
    }

    fn exit_code(finished: &Finished) -> Option<i32> {
        match &finished.ended {
            Ended::Exited { status, .. } => status.code(),
            _ => None,
        }
    }

    /// `Some(leftovers_killed)` when the command exited by itself.
    fn leftovers_killed(finished: &Finished) -> Option<bool> {
        match finished.ended {
            Ended::Exited {
                leftovers_killed, ..
            } => Some(leftovers_killed),
            _ => None,
        }
    }

    /// A temporary file the command writes pids to, one a line.
    struct PidFile {
        _dir: tempfile::TempDir,
        path: PathBuf,
    }

    impl PidFile {
        fn new() -> PidFile {
            let dir = tempfile::tempdir().unwrap();
            let path = dir.path().join("pids");
            PidFile { _dir: dir, path }
        }

        /// The path, quoted for the shell.
        fn arg(&self) -> String {
            format!("'{}'", self.path.display())
        }

        fn pids(&self) -> Vec<i32> {
            std::fs::read_to_string(&self.path)
                .unwrap_or_default()
                .split_whitespace()
                .map(|pid| pid.parse().expect("a pid"))
                .collect()
        }
    }

    /// Starts `command` and polls it until it has written `n_pids` pids, still running.
    async fn started<'a>(
        command: &str,
        config: &'a RunConfig<'a>,
        pid_file: &PidFile,
        n_pids: usize,
    ) -> Pin<Box<impl Future<Output = Result<Finished, RunError>> + 'a>> {
        let mut running = Box::pin(run(shell(command), config));
        let waited = tokio::time::timeout(Duration::from_millis(300), &mut running).await;
        assert!(waited.is_err(), "the command is still running");
        wait_until("the pids", || pid_file.pids().len() == n_pids).await;
        running
    }

    /// Gone, or a zombie waiting for init to reap it.
    fn is_dead(pid: i32) -> bool {
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            return true;
        };
        let state = stat
            .rsplit_once(')')
            .and_then(|(_, rest)| rest.split_whitespace().next())
            .unwrap_or("X");
        state == "Z" || state == "X"
    }

    async fn wait_until(what: &str, mut condition: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !condition() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    async fn assert_all_die(pids: &[i32]) {
        for &pid in pids {
            wait_until(&format!("process {pid} to die"), || is_dead(pid)).await;
        }
    }

    #[tokio::test]
    async fn exit_status_and_interleaved_output() {
        let finished = run_with("echo one; echo two >&2; echo three; exit 3", &config()).await;
        assert_eq!(exit_code(&finished), Some(3));
        assert_eq!(finished.output.text, "one\ntwo\nthree\n");
        assert_eq!(finished.output.truncated_bytes, 0);
        assert!(finished.stderr.is_none());

        let finished = run_with("kill -TERM $$", &config()).await;
        let Ended::Exited { status, .. } = finished.ended else {
            panic!("{:?}", finished.ended);
        };
        assert_eq!(status.signal(), Some(Signal::SIGTERM as i32));
    }

    #[tokio::test]
    async fn separate_streams_are_captured_and_capped_each() {
        let separate = RunConfig {
            streams: Streams::Separate,
            max_output: 4,
            ..config()
        };
        let finished = run_with("printf out-123; printf err-4567 >&2", &separate).await;
        assert_eq!(exit_code(&finished), Some(0));
        assert_eq!(
            finished.output,
            Output {
                text: "out-".to_owned(),
                truncated_bytes: 3
            }
        );
        assert_eq!(
            finished.stderr,
            Some(Output {
                text: "err-".to_owned(),
                truncated_bytes: 4
            })
        );
    }

    #[tokio::test]
    async fn output_is_capped_on_a_char_boundary_and_redacted_before_the_cut() {
        let capped = RunConfig {
            max_output: 10,
            ..config()
        };
        let finished = run_with("printf 0123456789abcdef", &capped).await;
        assert_eq!(finished.output.text, "0123456789");
        assert_eq!(finished.output.truncated_bytes, 6);

        // "é" is two bytes; cutting at 5 would split it.
        let split = RunConfig {
            max_output: 5,
            ..config()
        };
        let finished = run_with("printf 'aaaa\\303\\251zz'", &split).await;
        assert_eq!(finished.output.text, "aaaa");
        assert_eq!(finished.output.truncated_bytes, 4);

        // Much more than the cap is read (the command is not blocked) and counted.
        let finished = run_with("head -c 3000000 /dev/zero", &capped).await;
        assert_eq!(exit_code(&finished), Some(0));
        assert_eq!(finished.output.truncated_bytes, 3_000_000 - 10);

        // A secret across the cut is replaced whole.
        let redactor = Redactor::new(["s3cr3tvalue"]);
        let redacted = RunConfig {
            max_output: 8,
            redactor: Some(&redactor),
            ..config()
        };
        let finished = run_with("printf 'abcs3cr3tvalue-tail'", &redacted).await;
        assert_eq!(finished.output.text, "abc*****");
        assert_eq!(finished.output.truncated_bytes, 5);
    }

    #[tokio::test]
    async fn stdin_is_fed_or_dev_null() {
        let with_stdin = RunConfig {
            stdin: Some(Arc::from(&b"payload"[..])),
            ..config()
        };
        let finished = run_with("cat; echo", &with_stdin).await;
        assert_eq!(finished.output.text, "payload\n");

        let finished = run_with("cat; echo end", &config()).await;
        assert_eq!(finished.output.text, "end\n", "stdin is /dev/null");
    }

    #[tokio::test]
    async fn a_command_that_never_reads_stdin_does_not_hang_the_run() {
        // Far more than a pipe buffer holds.
        let unread = RunConfig {
            stdin: Some(Arc::from(vec![b'x'; 4 * 1024 * 1024])),
            ..config()
        };
        let started = Instant::now();
        let finished = run_with("sleep 0.2; echo done", &unread).await;
        assert_eq!(exit_code(&finished), Some(0));
        assert_eq!(finished.output.text, "done\n");
        assert!(started.elapsed() < GRACE * 4, "{:?}", started.elapsed());

        // One that reads part of it and exits.
        let finished = run_with("head -c 3", &unread).await;
        assert_eq!(
            (exit_code(&finished), finished.output.text.as_str()),
            (Some(0), "xxx")
        );
    }

    #[tokio::test]
    async fn a_command_that_cannot_start_is_an_error() {
        let error = run(Command::new("/nonexistent/program"), &config())
            .await
            .expect_err("no such program");
        assert!(matches!(error, RunError::SpawnFailed(_)), "{error:?}");
    }

    #[tokio::test]
    async fn timeout_kills_the_whole_group_grandchildren_too() {
        let pid_file = PidFile::new();
        // The subshell is a child, its `sleep` a grandchild.
        let command = format!(
            "echo $$ > {file}; sleep 100 & echo $! >> {file}; \
             (sleep 100 & echo $! >> {file}; wait) & echo $! >> {file}; echo partial; wait",
            file = pid_file.arg()
        );
        let timed = RunConfig {
            timeout: Some(Duration::from_secs(1)),
            ..config()
        };
        let started = Instant::now();
        let finished = run_with(&command, &timed).await;
        assert!(
            matches!(finished.ended, Ended::TimedOut),
            "{:?}",
            finished.ended
        );
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(5), "{elapsed:?}");
        assert_eq!(finished.output.text, "partial\n");
        let pids = pid_file.pids();
        assert_eq!(pids.len(), 4, "{pids:?}");
        assert_all_die(&pids).await;
    }

    #[tokio::test]
    async fn leftovers_die_when_the_command_exits() {
        // Left behind with its output closed: killed at once, the output not held up.
        let pid_file = PidFile::new();
        let detached = format!(
            "sleep 100 > /dev/null 2>&1 & echo $! > {file}; echo done; exit 1",
            file = pid_file.arg()
        );
        let started = Instant::now();
        let finished = run_with(&detached, &config()).await;
        assert!(started.elapsed() < GRACE, "{:?}", started.elapsed());
        assert_eq!(leftovers_killed(&finished), Some(false));
        assert_eq!(exit_code(&finished), Some(1));
        assert_eq!(finished.output.text, "done\n");
        assert_all_die(&pid_file.pids()).await;

        // Left behind holding the output: read for the grace, then killed.
        let pid_file = PidFile::new();
        let holding = format!(
            "(sleep 0.1; echo late; sleep 100) & echo $! > {file}; echo done",
            file = pid_file.arg()
        );
        let started = Instant::now();
        let finished = run_with(&holding, &config()).await;
        let elapsed = started.elapsed();
        assert!(elapsed >= GRACE && elapsed < GRACE * 4, "{elapsed:?}");
        assert_eq!(leftovers_killed(&finished), Some(true));
        assert_eq!(finished.output.text, "done\nlate\n");
        assert_all_die(&pid_file.pids()).await;
    }

    #[tokio::test]
    async fn the_drain_after_the_exit_stops_at_the_timeout() {
        let timed = RunConfig {
            timeout: Some(Duration::from_millis(300)),
            grace: Duration::from_secs(30),
            ..config()
        };
        let started = Instant::now();
        let finished = run_with("sleep 100 & exit 0", &timed).await;
        let elapsed = started.elapsed();
        assert!(elapsed < Duration::from_secs(10), "{elapsed:?}");
        assert_eq!(leftovers_killed(&finished), Some(true));
    }

    #[tokio::test]
    async fn the_leader_stays_unreaped_until_the_group_is_killed() {
        let pid_file = PidFile::new();
        let command = format!(
            "echo $$ > {file}; sleep 100 & echo $! >> {file}",
            file = pid_file.arg()
        );
        let long_grace = RunConfig {
            grace: Duration::from_secs(30),
            ..config()
        };
        let running = started(&command, &long_grace, &pid_file, 2).await;
        let pids = pid_file.pids();
        // A zombie keeps its group id reserved, so the group cannot be a stranger's.
        assert!(is_dead(pids[0]), "the shell exited");
        assert!(
            std::fs::metadata(format!("/proc/{}", pids[0])).is_ok(),
            "the shell is not reaped"
        );
        assert!(!is_dead(pids[1]), "the leftover runs during the grace");
        drop(running);
        assert_all_die(&pids).await;
    }

    #[tokio::test]
    async fn cancelling_the_run_kills_the_group() {
        let pid_file = PidFile::new();
        let command = format!(
            "echo $$ > {file}; sleep 100 & echo $! >> {file}; \
             (sleep 100 & echo $! >> {file}; wait) & wait",
            file = pid_file.arg()
        );
        let config = config();
        let running = started(&command, &config, &pid_file, 3).await;
        drop(running);
        assert_all_die(&pid_file.pids()).await;
    }
}
