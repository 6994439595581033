//! Containment of the processes the backend runs for the event pipeline (`pipe` handlers), so
//! that a namespace editor's handler cannot reach what makes a cluster admin (issue 13): the
//! data dir with the TLS and JWT keys and the embedded store, the etcd client key, and the
//! backend's own memory and environment.
//!
//! - The backend marks itself non-dumpable at start ([`Containment::new`]), so processes of its
//!   user cannot read its memory or environment through `/proc`.
//! - A handler gets a clean environment: [`HANDLER_PATH`] and what the pipeline adds (the
//!   handler's `env_vars` and secrets), nothing of the backend's.
//! - A handler runs as `--handler-user` when given (supplementary groups dropped). A backend
//!   running as root refuses to run handlers as root unless `--allow-root-handlers` says so
//!   ([`ContainError::RootRefused`]): a root handler could read anything.
//! - Where the kernel has Landlock, the handler can read, write and execute everything except
//!   the protected paths. Landlock is an allow-list, so the rules allow every entry of each
//!   directory on the way from `/` to a protected path, except the next step of that way: a
//!   handler cannot list or create entries directly in those directories (`/var/lib` for
//!   `/var/lib/cairn`), and everything beside them works as before. The same domain keeps the
//!   handler from signalling or tracing the backend (Landlock scopes `ptrace` and, from ABI 6,
//!   signals and abstract Unix sockets to the domain).
//!
//! The workspace forbids `unsafe`, and the rules are built from directory listings, which a
//! forked child of a threaded process must not do before `exec`. So the backend does not
//! configure the child between `fork` and `exec`: it runs its own binary (`/proc/self/exe`) as a
//! small helper ([`EXEC_ARG`], [`exec_main`]), a fresh single-threaded process that builds the
//! rules (so they see the directories as they are at that run), drops to the handler user,
//! restricts itself and then executes `sh -c COMMAND`. The helper's own environment holds only
//! the handler's variables under encoded names ([`ENV_CONTAINED_PREFIX`]), so that nothing in
//! them (`LD_PRELOAD`, say) acts on the helper before it is contained.

use std::collections::BTreeSet;
use std::ffi::{OsStr, OsString};
use std::fmt;
use std::io::Write as _;
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use landlock::{
    Access, AccessFs, CompatLevel, Compatible, PathBeneath, PathFd, Ruleset, RulesetAttr,
    RulesetCreatedAttr, RulesetStatus, Scope, ABI,
};
use nix::sys::signal::Signal;
use nix::unistd::{Gid, Uid, User};

/// The `PATH` of every handler (unless its `env_vars` set another).
pub const HANDLER_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The first argument that makes `cairn-backend` the containment helper ([`exec_main`]).
pub const EXEC_ARG: &str = "contained-exec";

/// The prefix of the helper's environment variables: `CAIRN_CONTAINED_ENV_<n>=KEY=VALUE`, one
/// per variable of the handler, in order.
pub const ENV_CONTAINED_PREFIX: &str = "CAIRN_CONTAINED_ENV_";

/// The Landlock ABI whose rights the rules handle; a kernel with an older one gets the rights
/// it has (best effort), a newer one gets no more.
const LANDLOCK_ABI: ABI = ABI::V6;

/// What the helper prints in probe mode, followed by the Landlock ABI it enforced (0: none).
const PROBE_REPORT: &str = "landlock abi ";

/// The helper's exit status when it could not contain the handler (like a shell's "cannot
/// execute"): the handler did not run.
const EXIT_NOT_CONTAINED: u8 = 126;

/// The helper's exit status when the contained command could not be executed.
const EXIT_EXEC_FAILED: u8 = 127;

/// The uid of root.
const ROOT: u32 = 0;

/// How handler processes are to be contained: the `start` flags and the paths to protect.
#[derive(Debug, Clone, Default)]
pub struct ContainConfig {
    /// Run handlers as this user (a name or a numeric uid), `--handler-user`.
    pub handler_user: Option<String>,
    /// Run handlers as root when the backend is root and no handler user is given,
    /// `--allow-root-handlers`.
    pub allow_root_handlers: bool,
}

/// Why containment could not be set up (at start), or a handler may not run.
#[derive(Debug, thiserror::Error)]
pub enum ContainError {
    /// `--handler-user` names no user of this host. A configuration error.
    #[error("handler user \"{0}\" not found")]
    UserNotFound(String),
    /// The user database could not be read. Retrying may help.
    #[error("cannot look up handler user \"{user}\"")]
    UserLookup {
        /// The user asked for.
        user: String,
        /// Why.
        #[source]
        source: nix::Error,
    },
    /// `--handler-user` names root: that is what `--allow-root-handlers` is for.
    #[error("handler user \"{0}\" is root; pass --allow-root-handlers to run handlers as root")]
    UserIsRoot(String),
    /// Only root can run handlers as another user.
    #[error("--handler-user {user} needs the backend to run as root (it runs as uid {uid})")]
    NotRoot {
        /// The user asked for.
        user: String,
        /// The backend's uid.
        uid: u32,
    },
    /// The backend could not mark itself non-dumpable.
    #[error("cannot mark the backend non-dumpable")]
    NonDumpable(#[source] nix::Error),
    /// The backend runs as root, and neither a handler user nor root handlers were allowed: the
    /// handler is not run. Expected until the operator chooses; retrying does not help.
    #[error("pipe handlers do not run as root without --handler-user or --allow-root-handlers")]
    RootRefused,
}

/// The user handlers run as, resolved at start.
#[derive(Debug, Clone, PartialEq, Eq)]
struct HandlerUser {
    name: String,
    uid: u32,
    gid: u32,
}

/// Whose identity handlers get.
#[derive(Debug, Clone, PartialEq, Eq)]
enum RunAs {
    /// The backend's own (not root).
    Backend { uid: u32 },
    /// `--handler-user`.
    User(HandlerUser),
    /// Root, allowed by `--allow-root-handlers`.
    Root,
    /// Root, not allowed: handlers are refused.
    Refused,
}

/// The containment of handler processes, set up once at start.
#[derive(Debug, Clone)]
pub struct Containment {
    run_as: RunAs,
    /// The Landlock ABI the helper will apply, `None` without Landlock.
    landlock: Option<ABI>,
    /// The canonical protected paths, none beneath another.
    protected: Vec<PathBuf>,
    /// The helper binary; `None` runs the command directly, with a clean environment only
    /// (the pipeline's unit tests, whose test binary has no helper).
    helper: Option<PathBuf>,
}

// === impl Containment ===

impl Containment {
    /// Marks the backend non-dumpable, resolves the handler user, finds whether the kernel has
    /// Landlock, and canonicalises `protected`: what handlers must not reach (the data dir,
    /// the etcd TLS files).
    ///
    /// # Errors
    /// The handler user is unknown, is root, or the backend cannot switch to it (it is not
    /// root); the backend cannot be made non-dumpable.
    pub fn new(config: &ContainConfig, protected: &[PathBuf]) -> Result<Containment, ContainError> {
        nix::sys::prctl::set_dumpable(false).map_err(ContainError::NonDumpable)?;
        let uid = Uid::effective().as_raw();
        let run_as = match &config.handler_user {
            Some(name) => {
                let user = lookup_user(name)?;
                if user.uid == ROOT {
                    return Err(ContainError::UserIsRoot(name.clone()));
                }
                match uid {
                    ROOT => RunAs::User(user),
                    // Already that user: nothing to switch.
                    uid if uid == user.uid => RunAs::Backend { uid },
                    uid => {
                        return Err(ContainError::NotRoot {
                            user: name.clone(),
                            uid,
                        })
                    }
                }
            }
            None if uid != ROOT => RunAs::Backend { uid },
            None if config.allow_root_handlers => RunAs::Root,
            None => RunAs::Refused,
        };
        let helper = PathBuf::from("/proc/self/exe");
        let protected = outermost(protected.iter().map(|path| canonical(path)));
        let landlock = probe_landlock(&helper, &protected);
        Ok(Containment {
            run_as,
            landlock,
            protected,
            helper: Some(helper),
        })
    }

    /// Handlers run directly as the calling process's user, allowed as root, with a clean
    /// environment and nothing else: for unit tests, whose binary cannot be the helper.
    #[cfg(test)]
    pub(crate) fn uncontained() -> Containment {
        Containment {
            run_as: RunAs::Root,
            landlock: None,
            protected: Vec::new(),
            helper: None,
        }
    }

    /// Whether pipe handlers are refused (root, no flag).
    pub fn refuses_handlers(&self) -> bool {
        self.run_as == RunAs::Refused
    }

    /// Logs, once at start, which containment is active.
    pub fn log_summary(&self) {
        let landlock = match self.landlock {
            Some(abi) => format!("abi {abi}"),
            None => "not available".to_owned(),
        };
        if self.refuses_handlers() {
            tracing::warn!(
                %landlock,
                non_dumpable = true,
                "handler containment: the backend runs as root, so pipe handlers are refused; \
                 pass --handler-user USER (or --allow-root-handlers) to run them"
            );
        } else {
            tracing::info!(
                %landlock,
                non_dumpable = true,
                handler_user = %self.run_as,
                protected = ?self.protected,
                "handler containment"
            );
            if self.run_as == RunAs::Root {
                tracing::warn!(
                    "pipe handlers run as root (--allow-root-handlers): landlock keeps them out \
                     of the data dir, but root can read the backend's memory; prefer \
                     --handler-user"
                );
            }
            if self.landlock.is_none() {
                tracing::warn!(
                    "landlock is not available: handlers can read whatever their user can"
                );
            }
        }
    }

    /// A command running `sh -c shell_command` contained, with exactly the environment `env`
    /// (later entries win). The caller sets stdio and the process group.
    ///
    /// # Errors
    /// [`ContainError::RootRefused`] when handlers are refused.
    pub fn command<K, V>(
        &self,
        shell_command: &str,
        env: impl IntoIterator<Item = (K, V)>,
    ) -> Result<tokio::process::Command, ContainError>
    where
        K: AsRef<OsStr>,
        V: AsRef<OsStr>,
    {
        if self.refuses_handlers() {
            return Err(ContainError::RootRefused);
        }
        let Some(helper) = &self.helper else {
            let mut command = tokio::process::Command::new("sh");
            command.arg("-c").arg(shell_command).env_clear().envs(env);
            return Ok(command);
        };
        let plan = ExecPlan {
            landlock: self.landlock.is_some(),
            probe: false,
            user: match &self.run_as {
                RunAs::User(user) => Some((user.uid, user.gid)),
                _ => None,
            },
            protected: self.protected.clone(),
            program: vec!["sh".into(), "-c".into(), shell_command.into()],
        };
        let mut command = tokio::process::Command::new(helper);
        command.arg(EXEC_ARG).args(plan.to_args()).env_clear();
        for (idx, (key, value)) in env.into_iter().enumerate() {
            let mut entry = key.as_ref().to_owned();
            entry.push("=");
            entry.push(value.as_ref());
            command.env(format!("{ENV_CONTAINED_PREFIX}{idx}"), entry);
        }
        Ok(command)
    }
}

impl fmt::Display for RunAs {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RunAs::Backend { uid } => write!(f, "the backend's user (uid {uid})"),
            RunAs::User(user) => write!(f, "{} (uid {}, gid {})", user.name, user.uid, user.gid),
            RunAs::Root => write!(f, "root (--allow-root-handlers)"),
            RunAs::Refused => write!(f, "none: refused as root"),
        }
    }
}

/// Runs the helper once as a handler would run (without switching users), to learn whether
/// the kernel enforces Landlock and at which ABI; `None` when it does not (or the helper could
/// not run, which the log says).
fn probe_landlock(helper: &Path, protected: &[PathBuf]) -> Option<ABI> {
    probe_landlock_within(helper, protected, PROBE_TIMEOUT)
}

/// How long the probe may take: a helper that does not answer (a binary that is not its own
/// helper and runs something else instead) is killed and counts as a failed probe.
const PROBE_TIMEOUT: Duration = Duration::from_secs(10);

fn probe_landlock_within(helper: &Path, protected: &[PathBuf], limit: Duration) -> Option<ABI> {
    let plan = ExecPlan {
        landlock: true,
        probe: true,
        user: None,
        protected: protected.to_vec(),
        program: vec!["true".into()],
    };
    let spawned = std::process::Command::new(helper)
        .arg(EXEC_ARG)
        .args(plan.to_args())
        .env_clear()
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn();
    let child = match spawned {
        Ok(child) => child,
        Err(err) => {
            tracing::error!(error = %err, "cannot run the handler containment helper");
            return None;
        }
    };
    let pid = child.id();
    let (done, waited) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        // The receiver may be gone after a timeout; nothing is left to tell.
        let _ = done.send(child.wait_with_output());
    });
    let output = match waited.recv_timeout(limit) {
        Ok(output) => output,
        Err(_) => {
            if let Ok(pid) = i32::try_from(pid) {
                let _ = nix::sys::signal::kill(nix::unistd::Pid::from_raw(pid), Signal::SIGKILL);
            }
            tracing::error!(
                helper = %helper.display(),
                limit = ?limit,
                "the handler containment helper did not answer its probe in time (a binary that runs handlers must call contain::exec_main first); killed"
            );
            return None;
        }
    };
    let reported = match &output {
        Ok(output) if output.status.success() => String::from_utf8_lossy(&output.stdout)
            .trim()
            .strip_prefix(PROBE_REPORT)
            .and_then(|abi| abi.parse::<i32>().ok()),
        _ => None,
    };
    match (reported, output) {
        (Some(abi), _) => Some(ABI::from(abi)).filter(|abi| *abi != ABI::Unsupported),
        (None, Ok(output)) => {
            tracing::error!(
                status = %output.status,
                stderr = %String::from_utf8_lossy(&output.stderr).trim(),
                "the handler containment helper failed its probe"
            );
            None
        }
        (None, Err(err)) => {
            tracing::error!(error = %err, "cannot run the handler containment helper");
            None
        }
    }
}

fn lookup_user(name: &str) -> Result<HandlerUser, ContainError> {
    let found = match name.parse::<u32>() {
        Ok(uid) => User::from_uid(Uid::from_raw(uid)),
        Err(_) => User::from_name(name),
    };
    match found {
        Ok(Some(user)) => Ok(HandlerUser {
            name: user.name,
            uid: user.uid.as_raw(),
            gid: user.gid.as_raw(),
        }),
        Ok(None) => Err(ContainError::UserNotFound(name.to_owned())),
        Err(source) => Err(ContainError::UserLookup {
            user: name.to_owned(),
            source,
        }),
    }
}

/// `path` made absolute and without links where it exists, else as given.
fn canonical(path: &Path) -> PathBuf {
    std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned())
}

/// The paths of `paths` that no other one contains, sorted and deduplicated.
fn outermost(paths: impl Iterator<Item = PathBuf>) -> Vec<PathBuf> {
    let all: BTreeSet<PathBuf> = paths.collect();
    all.iter()
        .filter(|path| {
            !all.iter()
                .any(|other| other != *path && path.starts_with(other))
        })
        .cloned()
        .collect()
}

// === the helper ===

/// What the helper does: its arguments, as [`Containment::command`] writes them and
/// [`exec_main`] reads them.
#[derive(Debug, Clone, PartialEq, Eq)]
struct ExecPlan {
    landlock: bool,
    /// Contain, report the Landlock ABI enforced on stdout, and exit instead of executing.
    probe: bool,
    user: Option<(u32, u32)>,
    protected: Vec<PathBuf>,
    program: Vec<OsString>,
}

/// Why the helper could not run the handler; it prints this and exits with
/// [`EXIT_NOT_CONTAINED`].
#[derive(Debug, thiserror::Error)]
enum HelperError {
    #[error("bad arguments: {0}")]
    Usage(String),
    #[error("cannot list {path} for the landlock rules")]
    List {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("cannot build the landlock rules")]
    Landlock(#[from] landlock::RulesetError),
    #[error("landlock is not enforced on this handler")]
    NotEnforced,
    #[error("cannot switch to uid {uid}, gid {gid}")]
    SwitchUser {
        uid: u32,
        gid: u32,
        #[source]
        source: nix::Error,
    },
    #[error("cannot set no_new_privs")]
    NoNewPrivs(#[source] nix::Error),
}

// === impl ExecPlan ===

impl ExecPlan {
    fn to_args(&self) -> Vec<OsString> {
        let mut args: Vec<OsString> = Vec::new();
        if self.landlock {
            args.push("--landlock".into());
        }
        if self.probe {
            args.push("--probe".into());
        }
        if let Some((uid, gid)) = self.user {
            args.push("--user".into());
            args.push(format!("{uid}:{gid}").into());
        }
        for path in &self.protected {
            args.push("--protect".into());
            args.push(path.clone().into());
        }
        args.push("--".into());
        args.extend(self.program.iter().cloned());
        args
    }

    fn from_args(args: impl IntoIterator<Item = OsString>) -> Result<ExecPlan, HelperError> {
        let mut plan = ExecPlan {
            landlock: false,
            probe: false,
            user: None,
            protected: Vec::new(),
            program: Vec::new(),
        };
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.to_str() {
                Some("--landlock") => plan.landlock = true,
                Some("--probe") => plan.probe = true,
                Some("--user") => {
                    let value = args.next().unwrap_or_default();
                    let parsed = value.to_str().and_then(|value| {
                        let (uid, gid) = value.split_once(':')?;
                        Some((uid.parse().ok()?, gid.parse().ok()?))
                    });
                    let Some(user) = parsed else {
                        return Err(HelperError::Usage(format!("--user {value:?}")));
                    };
                    plan.user = Some(user);
                }
                Some("--protect") => match args.next() {
                    Some(path) => plan.protected.push(PathBuf::from(path)),
                    None => return Err(HelperError::Usage("--protect needs a path".to_owned())),
                },
                Some("--") => {
                    plan.program = args.collect();
                    break;
                }
                _ => return Err(HelperError::Usage(format!("unexpected {arg:?}"))),
            }
        }
        if plan.program.is_empty() {
            return Err(HelperError::Usage("no command".to_owned()));
        }
        Ok(plan)
    }
}

/// The helper's `main` (`cairn-backend contained-exec ...`, the arguments after [`EXEC_ARG`]
/// in `args`): contains itself as its arguments say, then executes the command with the
/// environment decoded from [`ENV_CONTAINED_PREFIX`] variables. Returns only on failure, with
/// the exit status; the message is on stderr (which the pipeline logs as handler output).
pub fn exec_main(args: impl IntoIterator<Item = OsString>) -> std::process::ExitCode {
    let plan = match ExecPlan::from_args(args) {
        Ok(plan) => plan,
        Err(err) => return helper_failed(&err),
    };
    let enforced = match contain_self(&plan) {
        Ok(enforced) => enforced,
        Err(err) => return helper_failed(&err),
    };
    if plan.probe {
        let abi = enforced.map_or(0, |abi| abi as i32);
        // The probe's one line of output, read by `probe_landlock`.
        let mut stdout = std::io::stdout().lock();
        return match writeln!(stdout, "{PROBE_REPORT}{abi}") {
            Ok(()) => std::process::ExitCode::SUCCESS,
            Err(_) => std::process::ExitCode::from(EXIT_NOT_CONTAINED),
        };
    }
    if plan.landlock && enforced.is_none() {
        return helper_failed(&HelperError::NotEnforced);
    }
    let env = contained_env(std::env::vars_os());
    let err = std::process::Command::new(&plan.program[0])
        .args(&plan.program[1..])
        .env_clear()
        .envs(env)
        .exec();
    eprintln!(
        "cairn-backend: cannot run {:?}: {err}",
        plan.program[0].to_string_lossy()
    );
    std::process::ExitCode::from(EXIT_EXEC_FAILED)
}

fn helper_failed(err: &HelperError) -> std::process::ExitCode {
    eprintln!(
        "cairn-backend: handler not contained, not run: {}",
        cairn_api::problem::cause_chain(err)
    );
    std::process::ExitCode::from(EXIT_NOT_CONTAINED)
}

/// Builds the Landlock rules (as the backend's user, who can list the directories), drops to
/// the handler user, then restricts itself (which sets `no_new_privs`); returns the Landlock
/// ABI enforced, `None` when the kernel enforced none.
fn contain_self(plan: &ExecPlan) -> Result<Option<ABI>, HelperError> {
    let ruleset = if plan.landlock {
        let access = AccessFs::from_all(LANDLOCK_ABI);
        let mut ruleset = Ruleset::default()
            .set_compatibility(CompatLevel::BestEffort)
            .handle_access(access)?
            .scope(Scope::from_all(LANDLOCK_ABI))?
            .create()?;
        for path in allowed_paths(&plan.protected)? {
            // An entry that went away since the listing is no loss.
            if let Ok(fd) = PathFd::new(&path) {
                let rights = if path.is_dir() {
                    access
                } else {
                    AccessFs::from_file(LANDLOCK_ABI)
                };
                ruleset = ruleset.add_rule(PathBeneath::new(fd, rights))?;
            }
        }
        Some(ruleset)
    } else {
        None
    };
    if let Some((uid, gid)) = plan.user {
        let switch = |source| HelperError::SwitchUser { uid, gid, source };
        nix::unistd::setgroups(&[]).map_err(switch)?;
        nix::unistd::setgid(Gid::from_raw(gid)).map_err(switch)?;
        nix::unistd::setuid(Uid::from_raw(uid)).map_err(switch)?;
    }
    match ruleset {
        Some(ruleset) => {
            let status = ruleset.restrict_self()?;
            Ok((status.ruleset != RulesetStatus::NotEnforced).then(|| ABI::from(status.landlock)))
        }
        None => {
            nix::sys::prctl::set_no_new_privs().map_err(HelperError::NoNewPrivs)?;
            Ok(None)
        }
    }
}

/// What the rules allow: every entry of each directory on the way from `/` to a protected path,
/// except the directories on such a way and the protected paths themselves, and except entries
/// that resolve (through links) into a protected path or onto such a way.
fn allowed_paths(protected: &[PathBuf]) -> Result<Vec<PathBuf>, HelperError> {
    let mut ways: BTreeSet<&Path> = BTreeSet::new();
    for path in protected {
        ways.extend(path.ancestors().skip(1));
    }
    if ways.is_empty() {
        // Nothing to go around (no protected path, or only `/`, which `start` never asks).
        return Ok(if protected.is_empty() {
            vec![PathBuf::from("/")]
        } else {
            Vec::new()
        });
    }
    let denied = |path: &Path| {
        ways.contains(path)
            || protected
                .iter()
                .any(|protected| path.starts_with(protected))
    };
    let mut allowed = Vec::new();
    for dir in &ways {
        let entries = std::fs::read_dir(dir).map_err(|source| HelperError::List {
            path: dir.to_path_buf(),
            source,
        })?;
        for entry in entries.flatten() {
            let path = entry.path();
            if denied(&path) {
                continue;
            }
            match std::fs::canonicalize(&path) {
                Ok(resolved) if !denied(&resolved) => allowed.push(path),
                // A link onto the way or into a protected path, or a dangling one.
                _ => {}
            }
        }
    }
    Ok(allowed)
}

/// The handler's environment, decoded from the helper's [`ENV_CONTAINED_PREFIX`] variables in
/// their order; everything else of the helper's environment is dropped.
fn contained_env(vars: impl Iterator<Item = (OsString, OsString)>) -> Vec<(OsString, OsString)> {
    let mut numbered: Vec<(usize, OsString, OsString)> = vars
        .filter_map(|(key, entry)| {
            let idx = key
                .to_str()?
                .strip_prefix(ENV_CONTAINED_PREFIX)?
                .parse()
                .ok()?;
            let bytes = entry.into_vec();
            let split = bytes.iter().position(|byte| *byte == b'=')?;
            let name = OsStr::from_bytes(&bytes[..split]).to_owned();
            let value = OsStr::from_bytes(&bytes[split + 1..]).to_owned();
            Some((idx, name, value))
        })
        .collect();
    numbered.sort_by_key(|(idx, _, _)| *idx);
    numbered
        .into_iter()
        .map(|(_, name, value)| (name, value))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_helper_that_never_answers_its_probe_is_killed_in_time() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        // A binary that is not its own helper: it ignores `contained-exec` and runs on.
        let helper = dir.path().join("not-a-helper");
        std::fs::write(&helper, "#!/bin/sh\necho $$ > \"$0.pid\"\nexec sleep 300\n").unwrap();
        std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
        let started = std::time::Instant::now();
        assert_eq!(
            probe_landlock_within(&helper, &[], Duration::from_millis(500)),
            None
        );
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        let pid: i32 = std::fs::read_to_string(dir.path().join("not-a-helper.pid"))
            .unwrap()
            .trim()
            .parse()
            .unwrap();
        // Killed, and reaped by the waiting thread.
        crate::testing::until_blocking("the helper to die", Duration::from_secs(5), || {
            !Path::new(&format!("/proc/{pid}")).exists()
        });
    }

    #[test]
    fn exec_plan_round_trips_through_arguments() {
        let plan = ExecPlan {
            landlock: true,
            probe: false,
            user: Some((65534, 65533)),
            protected: vec!["/var/lib/cairn".into(), "/etc/etcd/client.key".into()],
            program: vec!["sh".into(), "-c".into(), "echo -- --landlock".into()],
        };
        assert_eq!(ExecPlan::from_args(plan.to_args()).unwrap(), plan);
        assert!(ExecPlan::from_args(["--".into()]).is_err());
        assert!(
            ExecPlan::from_args(["--user".into(), "x".into(), "--".into(), "sh".into()]).is_err()
        );
    }

    #[test]
    fn protected_paths_beneath_another_are_left_to_it() {
        let paths = [
            "/var/lib/cairn/tls/key.pem",
            "/var/lib/cairn",
            "/etc/etcd/key.pem",
        ];
        assert_eq!(
            outermost(paths.iter().map(PathBuf::from)),
            [
                PathBuf::from("/etc/etcd/key.pem"),
                PathBuf::from("/var/lib/cairn")
            ]
        );
    }

    #[test]
    fn allowed_paths_go_around_the_protected_ones() {
        let root = tempfile::tempdir().unwrap();
        let root = std::fs::canonicalize(root.path()).unwrap();
        for dir in ["var/lib/cairn/tls", "var/lib/other", "var/log", "home"] {
            std::fs::create_dir_all(root.join(dir)).unwrap();
        }
        std::fs::write(root.join("var/lib/notes"), "").unwrap();
        std::os::unix::fs::symlink(root.join("var/lib/cairn"), root.join("var/lib/link")).unwrap();
        std::os::unix::fs::symlink(root.join("var"), root.join("home/var")).unwrap();
        let allowed = allowed_paths(&[root.join("var/lib/cairn")]).unwrap();
        let under_root: BTreeSet<PathBuf> = allowed
            .iter()
            .filter_map(|path| path.strip_prefix(&root).ok().map(Path::to_path_buf))
            .collect();
        assert_eq!(
            under_root,
            ["home", "var/lib/notes", "var/lib/other", "var/log"]
                .into_iter()
                .map(PathBuf::from)
                .collect()
        );
        // Beside the temporary root, the rest of the machine stays reachable.
        assert!(allowed.iter().any(|path| path == Path::new("/usr")));
    }

    #[test]
    fn the_handler_environment_is_decoded_in_order() {
        let vars = [
            ("HOME", "/root"),
            ("CAIRN_CONTAINED_ENV_1", "PATH=/bin"),
            ("CAIRN_CONTAINED_ENV_0", "PATH=/usr/bin"),
            ("CAIRN_CONTAINED_ENV_2", "TOKEN=a=b"),
            ("CAIRN_CONTAINED_ENV_x", "BAD=1"),
        ]
        .map(|(key, value)| (OsString::from(key), OsString::from(value)));
        let env = contained_env(vars.into_iter());
        let pairs: Vec<(&str, &str)> = env
            .iter()
            .map(|(key, value)| (key.to_str().unwrap(), value.to_str().unwrap()))
            .collect();
        assert_eq!(
            pairs,
            [("PATH", "/usr/bin"), ("PATH", "/bin"), ("TOKEN", "a=b")]
        );
    }
}
