//! `cairnctl lint`: validates manifests and reports every problem, not just the first.

use std::io::Read;
use std::path::Path;

use cairn_api::codec::{self, Manifests};
use cairn_api::model::EnvProvider;
use cairn_api::{FieldPath, Issue, Problem, Spec};

use crate::cli::LintArgs;
use crate::exit::Outcome;

/// What a lint run found, ready to print.
#[derive(Debug)]
pub struct LintReport {
    /// One line per problem and per unsupported document, in file order.
    pub lines: Vec<String>,
    /// `N documents, M types, K errors`.
    pub summary: String,
    /// How the run ends.
    pub outcome: Outcome,
}

/// Reads every path and validates what it holds.
pub fn run(args: &LintArgs) -> LintReport {
    if let (Some(git_dir), Some(reference)) = (&args.git_dir, &args.git_ref) {
        let source = crate::source::Source::Git {
            repo: git_dir.display().to_string(),
            reference: reference.clone(),
        };
        let options = crate::source::ReadOptions {
            subdir: args.path.clone(),
            ..crate::source::ReadOptions::default()
        };
        return match source.read(&options) {
            Ok(snapshot) => {
                let mut report = report(&snapshot.manifests, args.allow_unsupported);
                if let Some(commit) = &snapshot.commit {
                    report.summary = format!("{}: {}", crate::plan::short(commit), report.summary);
                }
                report
            }
            Err(err) => LintReport {
                lines: vec![err.to_string()],
                summary: "0 documents, 0 types, 1 errors".to_owned(),
                outcome: Outcome::Failure,
            },
        };
    }
    let mut manifests = Manifests::default();
    for path in &args.paths {
        if path == Path::new("-") {
            manifests.extend(read_stdin());
        } else {
            manifests.extend(codec::load_path(path));
        }
    }
    report(&manifests, args.allow_unsupported)
}

/// Turns what was read into report lines, a summary and an outcome.
pub fn report(manifests: &Manifests, allow_unsupported: bool) -> LintReport {
    let mut lines: Vec<(String, usize, usize, String)> = Vec::new();
    let refused = refused_env_secrets(manifests);
    for problem in manifests.problems.iter().chain(&refused) {
        let location = &problem.location;
        lines.push((
            location.file.clone(),
            location.document,
            location.line,
            problem.to_string(),
        ));
    }
    for document in &manifests.unsupported {
        let location = &document.location;
        let line = if allow_unsupported {
            format!("warning: {location}: skipped {}", document.unsupported)
        } else {
            format!("{} ({location})", document.unsupported)
        };
        lines.push((
            location.file.clone(),
            location.document,
            location.line,
            line,
        ));
    }
    lines.sort_by(|left, right| (&left.0, left.1, left.2).cmp(&(&right.0, right.1, right.2)));

    let mut errors = manifests.error_count();
    if !allow_unsupported {
        errors += manifests.unsupported.len();
    }
    let summary = format!(
        "{} documents, {} types, {errors} errors",
        manifests.documents,
        manifests.types.len()
    );
    LintReport {
        lines: lines.into_iter().map(|(_, _, _, line)| line).collect(),
        summary,
        outcome: if errors == 0 {
            Outcome::Success
        } else {
            Outcome::Failure
        },
    }
}

/// The namespace of a document that names none and is not under a `namespaces/<ns>/` folder.
const DEFAULT_NAMESPACE: &str = "default";

/// A warning for each `Env` Secret that the repository's own `Env` provider would refuse (its
/// allow list leaves the variable out for the Secret's namespace, or the variable is a
/// `CAIRN_*` one, issue 13). Without an `Env` provider in the repository, the live one decides,
/// and nothing is said.
fn refused_env_secrets(manifests: &Manifests) -> Vec<Problem> {
    let providers: Vec<(&str, &EnvProvider)> = manifests
        .resources
        .iter()
        .filter_map(|loaded| match &loaded.resource.spec {
            Spec::EnvProvider(env) => Some((loaded.resource.name(), env)),
            _ => None,
        })
        .collect();
    let mut warnings = Vec::new();
    for loaded in &manifests.resources {
        let Spec::Secret(secret) = &loaded.resource.spec else {
            continue;
        };
        let Some((provider, env)) = providers.iter().find(|(name, _)| *name == secret.provider)
        else {
            continue;
        };
        // As `apply` will place it: its own namespace, else its SensuFlow folder's, else
        // Sensu's default.
        let namespace = Some(loaded.resource.namespace())
            .filter(|namespace| !namespace.is_empty())
            .or_else(|| crate::source::layout_namespace(&loaded.location.file))
            .unwrap_or(DEFAULT_NAMESPACE);
        if let Err(refusal) = env.check(namespace, &secret.id) {
            warnings.push(Problem {
                location: loaded.location.clone(),
                issue: Issue::warning(
                    FieldPath::keys(&["spec", "id"]),
                    format!(
                        "secret \"{}\" will not resolve: {}",
                        loaded.resource.name(),
                        refusal.reason(provider, namespace, &secret.id)
                    ),
                ),
            });
        }
    }
    warnings
}

fn read_stdin() -> Manifests {
    let mut text = String::new();
    match std::io::stdin()
        .take(codec::MAX_FILE_BYTES)
        .read_to_string(&mut text)
    {
        Ok(_) => codec::load_str("-", &text),
        Err(err) => {
            let mut manifests = Manifests::default();
            manifests.problems.push(cairn_api::Problem {
                location: cairn_api::Location::file("-"),
                issue: cairn_api::Issue::error(
                    cairn_api::FieldPath::root(),
                    format!("cannot read standard input: {err}"),
                ),
            });
            manifests
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 13, finding 6: a Secret the repository's own Env provider refuses is a warning
    /// (not an error: the live provider may differ until the repository is applied).
    #[test]
    fn warns_for_env_secrets_the_repositorys_provider_refuses() {
        let text = "\
type: Env
api_version: secrets/v1
metadata: {name: env}
spec:
  allow:
    - variables: [SLACK_*]
      namespaces: [prod]
---
type: Secret
api_version: secrets/v1
metadata: {name: slack, namespace: prod}
spec: {provider: env, id: SLACK_WEBHOOK}
---
type: Secret
api_version: secrets/v1
metadata: {name: slack, namespace: dev}
spec: {provider: env, id: SLACK_WEBHOOK}
---
type: Secret
api_version: secrets/v1
metadata: {name: own, namespace: prod}
spec: {provider: env, id: CAIRN_ADMIN_PASSWORD}
";
        let mut manifests = codec::load_str("repo.yaml", text);
        // A Secret without a namespace in SensuFlow's `namespaces/prod/` folder is prod's.
        manifests.extend(codec::load_str(
            "namespaces/prod/secrets/slack.yaml",
            "type: Secret\napi_version: secrets/v1\nmetadata: {name: slack-too}\nspec: {provider: env, id: SLACK_URL}\n",
        ));
        let report = report(&manifests, false);
        assert_eq!(report.outcome, Outcome::Success, "{:?}", report.lines);
        let warnings: Vec<&String> = report
            .lines
            .iter()
            .filter(|line| line.starts_with("warning:"))
            .collect();
        assert_eq!(warnings.len(), 2, "{:?}", report.lines);
        assert!(
            warnings[0].contains("secret \"slack\" will not resolve")
                && warnings[0].contains("allow list")
                && warnings[0].contains("namespace \"dev\""),
            "{}",
            warnings[0]
        );
        assert!(warnings[1].contains("never served"), "{}", warnings[1]);
    }
}
