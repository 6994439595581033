//! The command allow list (Sensu's agent `allow-list`): when `agent.yaml` names one, a check or
//! hook command runs only when an entry allows it.
//!
//! The file is a YAML (`.yaml`, `.yml`) or JSON (`.json`) list of entries, loaded once at start;
//! a file that cannot be read or used stops the start with an error naming the file, the entry
//! and the field. Matching follows sensu-go (`agent/allow_list.go`, `check_handler.go`,
//! `hook.go`), on the command after token substitution:
//!
//! - **Match.** An entry matches when the command contains its `exec` (text, not a parsed
//!   program name: `exec: /usr/lib/nagios/plugins/check_disk` allows that path only, `exec:
//!   check_disk` allows the command `check_disk …` run from `PATH`), and what is left after
//!   removing every occurrence of `exec` and of each of its `args` is blank. `args` are plain
//!   text, not patterns (sensu-go replaces them literally: `.*` means a dot and a star), in any
//!   order, each optional; `""` in `args` allows the command with no arguments. The first
//!   matching entry wins.
//! - **`sha512`.** When the matching entry has one, the command's first word (up to the first
//!   space, as sensu-go splits it) is resolved as the shell would, on the `PATH` the command
//!   gets, and the file's SHA-512 must equal it (hex, any case); a file that is not found or
//!   cannot be read does not run either.
//! - **`enable_env`.** Only with `enable_env: true` does a check get its `env_vars`; without,
//!   it runs with the agent's environment and its secrets only (sensu-go's rule). Hooks never
//!   get `env_vars`, so it does not concern them.
//! - **Refused.** A check not allowed is not run: its event has status 3 and the output
//!   `check command denied by the agent allow list: <why>`; a hook not allowed gets status 3 and
//!   `check hook command denied by the agent allow list: <why>` (sensu-go's outputs, with the
//!   reason added).
//!
//! Where this is stricter than sensu-go, on purpose: an entry's unknown fields are errors (a
//! mistyped `sha512` would otherwise verify nothing), a `sha512` must be 128 hex digits, and a
//! file with no entries is refused (sensu-go then allows everything).

use std::io::Read;
use std::path::{Path, PathBuf};

use serde::Deserialize;
use sha2::{Digest, Sha512};

/// Prefix of the output of a check the allow list refuses (sensu-go's output).
pub const CHECK_DENIED: &str = "check command denied by the agent allow list";
/// Prefix of the output of a hook the allow list refuses (sensu-go's output).
pub const HOOK_DENIED: &str = "check hook command denied by the agent allow list";

/// The entries of an allow list file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AllowList {
    entries: Vec<Entry>,
}

/// One entry: what a command may be.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Entry {
    /// Text the command must contain: the program, by path or by name.
    pub exec: String,
    /// Texts the rest of the command may consist of; `""` allows no arguments.
    #[serde(default)]
    pub args: Vec<String>,
    /// The SHA-512 of the program file, hex; empty for none.
    #[serde(default)]
    pub sha512: String,
    /// Whether a check allowed by this entry gets its `env_vars`.
    #[serde(default)]
    pub enable_env: bool,
}

/// Why an allow list file cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum AllowListError {
    /// The file cannot be read. Expected when the path is wrong; fix it and start again.
    #[error("cannot read the allow list {}: {source}", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The file's name ends in neither `.yaml`, `.yml` nor `.json`.
    #[error("{}: an allow list must be a .yaml, .yml or .json file", path.display())]
    Extension {
        /// The file.
        path: PathBuf,
    },
    /// Not YAML or JSON, or not a list of entries (the parser's message names the entry or
    /// the line).
    #[error("{}: {message}", path.display())]
    Parse {
        /// The file.
        path: PathBuf,
        /// The parser's message.
        message: String,
    },
    /// An entry has a field the agent cannot use.
    #[error("{}: entry {index} ({exec:?}): {field}: {message}", path.display())]
    Invalid {
        /// The file.
        path: PathBuf,
        /// The entry's position, from 0.
        index: usize,
        /// Its `exec`.
        exec: String,
        /// The field.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// The file lists no entries.
    #[error(
        "{}: the allow list has no entries; list the commands to allow, or remove allow_list \
         from agent.yaml to allow every command",
        path.display()
    )]
    Empty {
        /// The file.
        path: PathBuf,
    },
}

/// Why a command may not run; see [`Denied::check_output`] and [`Denied::hook_output`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Denied {
    reason: String,
}

// === impl AllowList ===

impl AllowList {
    /// Reads and checks the allow list at `path`.
    ///
    /// # Errors
    ///
    /// [`AllowListError`] naming the file, and the entry and field when one is wrong.
    pub fn load(path: &Path) -> Result<AllowList, AllowListError> {
        let name = path.to_string_lossy();
        let json = name.ends_with(".json");
        if !json && !name.ends_with(".yaml") && !name.ends_with(".yml") {
            return Err(AllowListError::Extension {
                path: path.to_owned(),
            });
        }
        let text = std::fs::read_to_string(path).map_err(|source| AllowListError::Read {
            path: path.to_owned(),
            source,
        })?;
        AllowList::parse(&text, json).map_err(|problem| problem.in_file(path))
    }

    /// Parses the text of an allow list, JSON when `json`, else YAML.
    ///
    /// # Errors
    ///
    /// [`AllowListError`] with an empty path.
    pub fn parse(text: &str, json: bool) -> Result<AllowList, AllowListError> {
        let parse_error = |message: String| AllowListError::Parse {
            path: PathBuf::new(),
            message,
        };
        let entries: Vec<Entry> = if json {
            serde_json::from_str(text).map_err(|err| parse_error(err.to_string()))?
        } else if text.trim().is_empty() {
            Vec::new()
        } else {
            serde_yaml::from_str(text).map_err(|err| parse_error(err.to_string()))?
        };
        if entries.is_empty() {
            return Err(AllowListError::Empty {
                path: PathBuf::new(),
            });
        }
        for (index, entry) in entries.iter().enumerate() {
            if let Some((field, message)) = entry.problem() {
                return Err(AllowListError::Invalid {
                    path: PathBuf::new(),
                    index,
                    exec: entry.exec.clone(),
                    field,
                    message,
                });
            }
        }
        Ok(AllowList { entries })
    }

    /// The entries, in file order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The first entry that allows `command` (sensu-go's `matchAllowList`).
    pub fn matching(&self, command: &str) -> Option<&Entry> {
        self.entries.iter().find(|entry| entry.matches(command))
    }
}

// === impl Entry ===

impl Entry {
    /// The first unusable field and why, as sensu-go's `validate` and more.
    fn problem(&self) -> Option<(&'static str, String)> {
        if self.exec.trim().is_empty() {
            return Some(("exec", "must not be empty".to_owned()));
        }
        if self.args.is_empty() {
            return Some((
                "args",
                "must list at least one argument text (\"\" allows the command without \
                 arguments)"
                    .to_owned(),
            ));
        }
        if !self.sha512.is_empty()
            && (self.sha512.len() != 128 || !self.sha512.bytes().all(|b| b.is_ascii_hexdigit()))
        {
            return Some((
                "sha512",
                "must be the 128 hexadecimal digits of a SHA-512 (sha512sum FILE)".to_owned(),
            ));
        }
        None
    }

    /// Whether the command is `exec` and these `args`, and nothing else.
    fn matches(&self, command: &str) -> bool {
        if !command.contains(&self.exec) {
            return false;
        }
        let mut rest = command.replace(&self.exec, "");
        for arg in self.args.iter().filter(|arg| !arg.is_empty()) {
            if command.contains(arg.as_str()) {
                rest = rest.replace(arg.as_str(), "");
            }
        }
        rest.trim().is_empty()
    }
}

// === impl Denied ===

impl Denied {
    fn new(reason: String) -> Denied {
        Denied { reason }
    }

    /// The output of the refused check's event.
    pub fn check_output(&self) -> String {
        format!("{CHECK_DENIED}: {}", self.reason)
    }

    /// The output of the refused hook's result.
    pub fn hook_output(&self) -> String {
        format!("{HOOK_DENIED}: {}", self.reason)
    }
}

impl AllowListError {
    fn in_file(self, file: &Path) -> AllowListError {
        let path = file.to_owned();
        match self {
            AllowListError::Parse { message, .. } => AllowListError::Parse { path, message },
            AllowListError::Invalid {
                index,
                exec,
                field,
                message,
                ..
            } => AllowListError::Invalid {
                path,
                index,
                exec,
                field,
                message,
            },
            AllowListError::Empty { .. } => AllowListError::Empty { path },
            other => other,
        }
    }
}

/// Admits a check command: the `env_vars` it runs with (all, or none when the matching entry
/// does not `enable_env`), or why it may not run. Without an allow list every command runs with
/// its `env_vars`.
///
/// # Errors
///
/// [`Denied`]: no entry allows the command, or its program's SHA-512 is not the entry's.
pub async fn admit_check<'a>(
    allow_list: Option<&AllowList>,
    command: &str,
    env_vars: &'a [String],
    assets_path: Option<&str>,
) -> Result<&'a [String], Denied> {
    let Some(allow_list) = allow_list else {
        return Ok(env_vars);
    };
    let entry = allow_list
        .matching(command)
        .ok_or_else(|| not_listed(command))?;
    let env_vars = if entry.enable_env { env_vars } else { &[] };
    verify_program(entry, command, search_path(env_vars, assets_path)).await?;
    Ok(env_vars)
}

/// Admits a hook command.
///
/// # Errors
///
/// [`Denied`], as [`admit_check`].
pub async fn admit_hook(
    allow_list: Option<&AllowList>,
    command: &str,
    assets_path: Option<&str>,
) -> Result<(), Denied> {
    let Some(allow_list) = allow_list else {
        return Ok(());
    };
    let entry = allow_list
        .matching(command)
        .ok_or_else(|| not_listed(command))?;
    verify_program(entry, command, search_path(&[], assets_path)).await
}

fn not_listed(command: &str) -> Denied {
    Denied::new(format!("command not on the allow list: {command}"))
}

/// The `PATH` a command runs with: the last `PATH=` of its `env_vars`, else the one its
/// runtime assets set (their `bin/` first), else the agent's.
fn search_path(env_vars: &[String], assets_path: Option<&str>) -> Option<String> {
    env_vars
        .iter()
        .rev()
        .find_map(|entry| entry.strip_prefix("PATH=").map(str::to_owned))
        .or_else(|| assets_path.map(str::to_owned))
        .or_else(|| std::env::var("PATH").ok())
}

/// Checks the entry's `sha512`, if it has one, against the command's program file.
async fn verify_program(entry: &Entry, command: &str, path: Option<String>) -> Result<(), Denied> {
    if entry.sha512.is_empty() {
        return Ok(());
    }
    let program = command.split(' ').next().unwrap_or_default().to_owned();
    let expected = entry.sha512.to_ascii_lowercase();
    let checked = tokio::task::spawn_blocking(move || {
        let file = locate(&program, path.as_deref()).ok_or_else(|| {
            format!("{program:?} is not found on PATH, so its sha512 cannot be verified")
        })?;
        let digest = sha512_of(&file)
            .map_err(|err| format!("cannot read {} to verify its sha512: {err}", file.display()))?;
        if digest == expected {
            Ok(())
        } else {
            Err(format!(
                "the sha512 of {} is {digest}, not the one the allow list names",
                file.display()
            ))
        }
    })
    .await;
    match checked {
        Ok(Ok(())) => Ok(()),
        Ok(Err(reason)) => Err(Denied::new(reason)),
        Err(err) => Err(Denied::new(format!("the sha512 check failed: {err}"))),
    }
}

/// Where the shell finds `program`: itself when it names a path, else the first executable
/// file of that name in a `PATH` directory.
fn locate(program: &str, path: Option<&str>) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |file: &Path| {
        std::fs::metadata(file)
            .is_ok_and(|meta| meta.is_file() && meta.permissions().mode() & 0o111 != 0)
    };
    if program.is_empty() {
        return None;
    }
    if program.contains('/') {
        let file = PathBuf::from(program);
        return file.is_file().then_some(file);
    }
    path?
        .split(':')
        .map(|dir| Path::new(if dir.is_empty() { "." } else { dir }).join(program))
        .find(|file| executable(file))
}

fn sha512_of(file: &Path) -> std::io::Result<String> {
    let mut reader = std::fs::File::open(file)?;
    let mut hasher = Sha512::new();
    let mut buffer = vec![0_u8; 64 * 1024];
    loop {
        let read = reader.read(&mut buffer)?;
        if read == 0 {
            break;
        }
        hasher.update(&buffer[..read]);
    }
    Ok(hex::encode(hasher.finalize()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(yaml: &str) -> AllowList {
        AllowList::parse(yaml, false).unwrap_or_else(|err| panic!("{yaml}: {err}"))
    }

    fn error(text: &str, json: bool) -> String {
        AllowList::parse(text, json).expect_err(text).to_string()
    }

    /// `(command, allowed)` against sensu-go's own cases (`allow_list_test.go`) and more.
    fn check(allow_list: &AllowList, cases: &[(&str, bool)]) {
        for (command, allowed) in cases {
            assert_eq!(
                allow_list.matching(command).is_some(),
                *allowed,
                "{command:?}"
            );
        }
    }

    #[test]
    fn matching_is_sensu_gos() {
        let allow_list = list(
            "- exec: my_script.sh\n  args: [\"-h foo.com\", \"-h bar.ca\"]\n\
             - exec: /usr/lib/nagios/plugins/check_disk\n  args: [\"\", \"-w 10%\"]\n",
        );
        check(
            &allow_list,
            &[
                // Any order, whitespace around, an argument left out.
                ("my_script.sh -h bar.ca -h foo.com", true),
                ("my_script.sh -h bar.ca  -h foo.com  ", true),
                ("my_script.sh -h foo.com", true),
                ("my_script.sh", true),
                // Anything not listed.
                ("my_script.sh -h foo.com -h evil.example", false),
                ("my_script.sh -h foo.com; rm -rf /", false),
                ("my_scripf.sh -h bar.ca", false),
                ("", false),
                // The exec is text: a path allows that path only.
                ("/usr/lib/nagios/plugins/check_disk", true),
                ("/usr/lib/nagios/plugins/check_disk -w 10%", true),
                ("check_disk -w 10%", false),
                ("/tmp/evil/usr/lib/nagios/plugins/check_disk", false),
                (
                    "/usr/lib/nagios/plugins/check_disk -w 10% && curl evil",
                    false,
                ),
            ],
        );
        // A name allows the command as run from PATH, not another path.
        let by_name = list("- exec: check_disk\n  args: [\"\"]\n");
        check(
            &by_name,
            &[
                ("check_disk", true),
                ("check_disk -w 1", false),
                ("/tmp/x/check_disk", false),
            ],
        );
    }

    #[test]
    fn args_are_text_not_regular_expressions() {
        let allow_list = list("- exec: check_http\n  args: [\"-u .*\", \"-t [0-9]+\"]\n");
        check(
            &allow_list,
            &[
                ("check_http -u .* -t [0-9]+", true),
                ("check_http -u https://example.com", false),
                ("check_http -t 5", false),
            ],
        );
    }

    #[test]
    fn the_first_match_wins_and_decides_env_vars() {
        let allow_list =
            list("- exec: with_env\n  args: [\"\"]\n  enable_env: true\n- exec: without_env\n  args: [\"\"]\n");
        assert!(allow_list.matching("with_env").unwrap().enable_env);
        assert!(!allow_list.matching("without_env").unwrap().enable_env);
    }

    #[tokio::test]
    async fn env_vars_pass_only_with_enable_env() {
        let env_vars = vec!["GREETING=hi".to_owned()];
        let allow_list =
            list("- exec: with_env\n  args: [\"\"]\n  enable_env: true\n- exec: without_env\n  args: [\"\"]\n");
        assert_eq!(
            admit_check(Some(&allow_list), "with_env", &env_vars, None).await,
            Ok(&env_vars[..])
        );
        assert_eq!(
            admit_check(Some(&allow_list), "without_env", &env_vars, None).await,
            Ok(&[][..])
        );
        // No allow list: everything runs, with its env_vars.
        assert_eq!(
            admit_check(None, "anything at all", &env_vars, None).await,
            Ok(&env_vars[..])
        );
        assert_eq!(admit_hook(None, "anything", None).await, Ok(()));
        let denied = admit_check(Some(&allow_list), "rm -rf /", &env_vars, None)
            .await
            .unwrap_err();
        assert_eq!(
            denied.check_output(),
            "check command denied by the agent allow list: command not on the allow list: rm -rf /"
        );
        let denied = admit_hook(Some(&allow_list), "ps aux", None)
            .await
            .unwrap_err();
        assert_eq!(
            denied.hook_output(),
            "check hook command denied by the agent allow list: command not on the allow list: ps aux"
        );
    }

    #[tokio::test]
    async fn sha512_is_the_programs_found_as_the_shell_finds_it() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let program = dir.path().join("probe.sh");
        std::fs::write(&program, "#!/bin/sh\necho ok\n").unwrap();
        std::fs::set_permissions(&program, std::fs::Permissions::from_mode(0o755)).unwrap();
        let right = sha512_of(&program).unwrap();
        let wrong = "0".repeat(128);
        let path_env = vec![format!("PATH={}", dir.path().display())];
        let yaml = |exec: &str, sha: &str| {
            list(&format!(
                "- exec: {exec}\n  args: [\"\", \"-v\"]\n  sha512: {sha}\n  enable_env: true\n"
            ))
        };
        let by_path = program.display().to_string();
        // By path: the file itself; upper-case hex is the same digest.
        let good = yaml(&by_path, &right.to_ascii_uppercase());
        assert!(
            admit_check(Some(&good), &format!("{by_path} -v"), &[], None)
                .await
                .is_ok()
        );
        assert!(admit_hook(Some(&good), &by_path, None).await.is_ok());
        let bad = yaml(&by_path, &wrong);
        let denied = admit_check(Some(&bad), &by_path, &[], None)
            .await
            .unwrap_err();
        assert!(
            denied.check_output().contains(&format!(
                "the sha512 of {by_path} is {right}, not the one the allow list names"
            )),
            "{denied:?}"
        );
        assert!(admit_hook(Some(&bad), &by_path, None).await.is_err());
        // By name: looked up on the PATH the command gets.
        let good = yaml("probe.sh", &right);
        assert!(admit_check(Some(&good), "probe.sh", &path_env, None)
            .await
            .is_ok());
        let denied = admit_check(Some(&good), "probe.sh", &["PATH=/nonexistent".into()], None)
            .await
            .unwrap_err();
        assert!(
            denied
                .check_output()
                .contains("\"probe.sh\" is not found on PATH"),
            "{denied:?}"
        );
        assert!(
            admit_check(Some(&yaml("probe.sh", &wrong)), "probe.sh", &path_env, None)
                .await
                .is_err()
        );
    }

    #[test]
    fn bad_files_are_refused_naming_entry_and_field() {
        assert_eq!(
            error("- exec: \"\"\n  args: [\"\"]\n", false),
            ": entry 0 (\"\"): exec: must not be empty"
        );
        assert_eq!(
            error("- exec: a\n  args: [\"\"]\n- exec: b\n", false),
            ": entry 1 (\"b\"): args: must list at least one argument text (\"\" allows the \
             command without arguments)"
        );
        assert_eq!(
            error(
                "[{\"exec\": \"a\", \"args\": [\"\"], \"sha512\": \"abc\"}]",
                true
            ),
            ": entry 0 (\"a\"): sha512: must be the 128 hexadecimal digits of a SHA-512 \
             (sha512sum FILE)"
        );
        let typo = error("- exec: a\n  args: [\"\"]\n  sha521: abc\n", false);
        assert!(typo.contains("unknown field `sha521`"), "{typo}");
        assert!(typo.contains("line 3"), "{typo}");
        let json = error("[{\"exec\": \"a\"", true);
        assert!(json.contains("line 1"), "{json}");
        assert!(error("exec: a\n", false).contains("invalid type"));
        assert!(error("", false).contains("has no entries"));
        assert!(error("[]", true).contains("has no entries"));
    }

    #[test]
    fn load_names_the_file_and_takes_yaml_or_json() {
        let dir = tempfile::tempdir().unwrap();
        let yaml = dir.path().join("allow.yaml");
        std::fs::write(&yaml, "- exec: a\n  args: [\"\"]\n").unwrap();
        assert_eq!(AllowList::load(&yaml).unwrap().entries().len(), 1);
        let json = dir.path().join("allow.json");
        std::fs::write(
            &json,
            "[{\"exec\": \"a\", \"args\": [\"\"], \"enable_env\": true}]",
        )
        .unwrap();
        assert!(AllowList::load(&json).unwrap().entries()[0].enable_env);
        std::fs::write(&json, "[{\"exec\": \"a\", \"args\": []}]").unwrap();
        let err = AllowList::load(&json).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("{}: entry 0 (\"a\"): args: ", json.display())),
            "{err}"
        );
        let missing = dir.path().join("missing.yml");
        let err = AllowList::load(&missing).unwrap_err().to_string();
        assert!(
            err.starts_with(&format!("cannot read the allow list {}", missing.display())),
            "{err}"
        );
        let other = dir.path().join("allow.txt");
        assert_eq!(
            AllowList::load(&other).unwrap_err().to_string(),
            format!(
                "{}: an allow list must be a .yaml, .yml or .json file",
                other.display()
            )
        );
    }
}
