//! Validation of decoded resources against Sensu's rules (and a few stricter ones of Cairn's),
//! each problem named by its field path.

use std::sync::LazyLock;

use regex::Regex;

use crate::kind::{Kind, Resolved};
use crate::model::{
    Asset, AssetBuild, CheckConfig, Cluster, Entity, EtcdReplicator, Event, EventFilter, Handler,
    HookConfig, Mutator, Pipeline, ResourceReference, Role, RoleBinding, SecretRef, Silenced, Spec,
    User, VaultProvider,
};
use crate::problem::{FieldPath, Issue};
use crate::resource::Resource;

/// The longest resource name accepted. Names become REST path segments and store keys.
pub const MAX_NAME_LEN: usize = 64;

// Sensu's name rules are Go regular expressions, whose `\w` is ASCII only: `[0-9A-Za-z_]`.
// Rust's `\w` is Unicode, which would let look-alikes (`dеv` with a Cyrillic `е`, full-width
// `ｐrod`) pass as names distinct from the ones they imitate, so the classes are spelled out.

/// Sensu's default name rule.
static DEFAULT_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[0-9A-Za-z_.\-:]+\z").expect("static regex"));
/// Sensu's rule for user names.
static STRICT_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[a-z0-9_.\-]+\z").expect("static regex"));
/// Sensu's rule for subscriptions and RBAC names.
static SUBSCRIPTION_NAME: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A[0-9A-Za-z_.\-]+(:?[0-9A-Za-z_.\-]+)?\z").expect("static regex")
});
/// Sensu's rule for asset names, which may hold `/`.
static ASSET_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[0-9A-Za-z_/.\-:]+\z").expect("static regex"));
static ENV_NAME: LazyLock<Regex> =
    LazyLock::new(|| Regex::new(r"\A[A-Za-z_][A-Za-z0-9_]*\z").expect("static regex"));
static UUID: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}\z")
        .expect("static regex")
});
static DURATION: LazyLock<Regex> = LazyLock::new(|| {
    Regex::new(r"\A([0-9]+(\.[0-9]+)?(ns|us|µs|ms|s|m|h))+\z").expect("static regex")
});

const OUTPUT_METRIC_FORMATS: [&str; 5] = [
    "nagios_perfdata",
    "graphite_plaintext",
    "opentsdb_line",
    "influxdb_line",
    "prometheus_text",
];
const HOOK_SEVERITIES: [&str; 5] = ["ok", "warning", "critical", "unknown", "non-zero"];
const VERBS: [&str; 6] = ["get", "list", "create", "update", "delete", "*"];

/// Which name rule applies.
#[derive(Clone, Copy)]
enum NameRule {
    Default,
    Strict,
    Subscription,
    Asset,
}

/// Checks `resource` and returns every problem found (errors and warnings), in field order.
pub fn validate(resource: &Resource) -> Vec<Issue> {
    let mut checker = Checker::default();
    checker.metadata(resource);
    match &resource.spec {
        Spec::Namespace(_) => {}
        Spec::ClusterRole(role) | Spec::Role(role) => checker.role(role),
        Spec::ClusterRoleBinding(binding) => checker.role_binding(binding, true),
        Spec::RoleBinding(binding) => checker.role_binding(binding, false),
        Spec::User(user) => checker.user(user, resource),
        Spec::ApiKey(key) => {
            if key.username.is_empty() {
                checker.error(spec_path("username"), "missing field \"username\"");
            }
        }
        Spec::EnvProvider(env) => {
            if resource.name() != "env" {
                checker.error(
                    FieldPath::keys(&["metadata", "name"]),
                    "the env secrets provider must be named \"env\"",
                );
            }
            checker.env_allow_list(env);
        }
        Spec::VaultProvider(vault) => checker.vault(vault),
        Spec::Secret(secret) => {
            if secret.id.is_empty() {
                checker.error(spec_path("id"), "missing field \"id\"");
            }
            if secret.provider.is_empty() {
                checker.error(spec_path("provider"), "missing field \"provider\"");
            }
        }
        Spec::Asset(asset) => checker.asset(asset),
        Spec::EventFilter(filter) => checker.filter(filter),
        Spec::Mutator(mutator) => checker.mutator(mutator),
        Spec::HookConfig(hook) => checker.hook(hook),
        Spec::Handler(handler) => checker.handler(handler),
        Spec::Pipeline(pipeline) => checker.pipeline(pipeline),
        Spec::CheckConfig(check) => checker.check(check, &FieldPath::keys(&["spec"])),
        Spec::Entity(entity) => checker.entity(entity, &FieldPath::keys(&["spec"])),
        Spec::Silenced(silenced) => checker.silenced(silenced),
        Spec::Event(event) => checker.event(event),
        Spec::Cluster(cluster) => checker.cluster(cluster),
        Spec::Replicator(replicator) => checker.replicator(replicator),
        Spec::EtcdReplicator(replicator) => checker.etcd_replicator(replicator),
    }
    for inert in crate::inert::inert_fields(resource) {
        checker.warning(
            inert.path,
            format!("{}: {}", crate::inert::INERT_PREFIX, inert.consequence),
        );
    }
    checker.issues
}

/// Checks a resource name against the rule for `kind`; `None` when it is fine.
pub fn check_name(kind: Kind, name: &str) -> Option<String> {
    let rule = match kind {
        Kind::Asset => NameRule::Asset,
        Kind::Role | Kind::RoleBinding | Kind::ClusterRole | Kind::ClusterRoleBinding => {
            NameRule::Subscription
        }
        Kind::User => NameRule::Strict,
        _ => NameRule::Default,
    };
    name_problem(name, rule)
}

fn name_problem(name: &str, rule: NameRule) -> Option<String> {
    if name.is_empty() {
        return Some("must not be empty".to_owned());
    }
    if name == "." || name == ".." {
        return Some(format!("\"{name}\" is not a valid name"));
    }
    if name.chars().count() > MAX_NAME_LEN {
        return Some(format!(
            "is {} characters long; the limit is {MAX_NAME_LEN}",
            name.chars().count()
        ));
    }
    let (regex, allowed): (&Regex, &str) = match rule {
        NameRule::Default => (&DEFAULT_NAME, "ASCII letters, digits, _ . - :"),
        NameRule::Strict => (&STRICT_NAME, "lower-case ASCII letters, digits, _ . -"),
        NameRule::Subscription => (&SUBSCRIPTION_NAME, "ASCII letters, digits, _ . - and one :"),
        NameRule::Asset => (&ASSET_NAME, "ASCII letters, digits, _ . - : /"),
    };
    if regex.is_match(name) {
        None
    } else {
        Some(format!(
            "\"{name}\" cannot contain spaces or special characters (allowed: {allowed})"
        ))
    }
}

fn spec_path(field: &str) -> FieldPath {
    FieldPath::keys(&["spec", field])
}

#[derive(Default)]
struct Checker {
    issues: Vec<Issue>,
}

// === impl Checker ===

impl Checker {
    fn error(&mut self, path: FieldPath, message: impl Into<String>) {
        self.issues.push(Issue::error(path, message));
    }

    fn warning(&mut self, path: FieldPath, message: impl Into<String>) {
        self.issues.push(Issue::warning(path, message));
    }

    /// The `Env` provider's `spec.allow`: variable patterns are environment variable names
    /// with `*`; a pattern that only matches `CAIRN_*` variables (never served) is a warning,
    /// and so is `*` (every other variable of the backend's environment).
    fn env_allow_list(&mut self, env: &crate::model::EnvProvider) {
        use crate::model::ENV_NEVER_SERVED_PREFIX;
        let allow = spec_path("allow");
        for (idx, entry) in env.allow.iter().enumerate() {
            let item = allow.index(idx);
            if entry.variables.is_empty() {
                self.error(item.key("variables"), "missing field \"variables\"");
            }
            for (position, pattern) in entry.variables.iter().enumerate() {
                let path = item.key("variables").index(position);
                let valid = !pattern.is_empty()
                    && pattern
                        .chars()
                        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '*');
                if !valid {
                    self.error(
                        path,
                        format!(
                            "\"{pattern}\" is not an environment variable name (letters, digits, `_`, and `*` for any run)"
                        ),
                    );
                } else if pattern.starts_with(ENV_NEVER_SERVED_PREFIX) {
                    self.warning(
                        path,
                        format!(
                            "\"{pattern}\" allows nothing: {ENV_NEVER_SERVED_PREFIX}* variables are never served"
                        ),
                    );
                } else if pattern.chars().all(|c| c == '*') {
                    self.warning(
                        path,
                        "\"*\" serves every variable of the backend's environment (but CAIRN_*)",
                    );
                }
            }
            for (position, namespace) in entry.namespaces.iter().enumerate() {
                if namespace.is_empty() {
                    self.error(
                        item.key("namespaces").index(position),
                        "empty namespace (leave out `namespaces` for every namespace)",
                    );
                }
            }
        }
    }

    fn name(&mut self, path: FieldPath, name: &str, rule: NameRule) {
        if let Some(problem) = name_problem(name, rule) {
            self.error(path, problem);
        }
    }

    fn names(&mut self, path: &FieldPath, names: &[String], rule: NameRule) {
        for (idx, name) in names.iter().enumerate() {
            self.name(path.index(idx), name, rule);
        }
    }

    fn metadata(&mut self, resource: &Resource) {
        let kind = resource.kind();
        let name_path = FieldPath::keys(&["metadata", "name"]);
        match kind {
            // Events are identified by entity and check; silences and users are named by
            // their spec, checked below.
            Kind::Event | Kind::Silenced | Kind::User => {}
            Kind::ApiKey => {
                if !UUID.is_match(resource.name()) {
                    self.error(
                        name_path,
                        "an API key's name is the key itself and must be a UUID",
                    );
                }
            }
            // A namespace's name is its spec.
            Kind::Namespace => {
                if let Some(problem) = check_name(kind, resource.name()) {
                    self.error(spec_path("name"), problem);
                }
            }
            _ => {
                if let Some(problem) = check_name(kind, resource.name()) {
                    self.error(name_path, problem);
                }
            }
        }
        let namespace = resource.namespace();
        if !kind.is_namespaced() && !namespace.is_empty() {
            self.error(
                FieldPath::keys(&["metadata", "namespace"]),
                format!("{kind} is cluster-wide and cannot have a namespace"),
            );
        } else if !namespace.is_empty() {
            if let Some(problem) = check_name(Kind::Namespace, namespace) {
                self.error(FieldPath::keys(&["metadata", "namespace"]), problem);
            }
        }
    }

    fn non_negative(&mut self, path: FieldPath, value: i64) {
        if value < 0 {
            self.error(path, format!("must not be negative, found {value}"));
        }
    }

    fn env_vars(&mut self, path: &FieldPath, env_vars: &[String]) {
        for (idx, entry) in env_vars.iter().enumerate() {
            match entry.split_once('=') {
                Some((key, value)) if !key.is_empty() && !value.is_empty() => {}
                _ => self.error(
                    path.index(idx),
                    format!("\"{entry}\" must be KEY=VALUE with both sides non-empty"),
                ),
            }
        }
    }

    fn secrets(&mut self, path: &FieldPath, secrets: &[SecretRef]) {
        for (idx, secret) in secrets.iter().enumerate() {
            let item = path.index(idx);
            if secret.name.is_empty() {
                self.error(
                    item.key("name"),
                    "missing field \"name\" (the environment variable)",
                );
            } else if !ENV_NAME.is_match(&secret.name) {
                self.error(
                    item.key("name"),
                    format!(
                        "\"{}\" is not a valid environment variable name",
                        secret.name
                    ),
                );
            }
            if secret.secret.is_empty() {
                self.error(
                    item.key("secret"),
                    "missing field \"secret\" (the Secret's name)",
                );
            } else if let Some(problem) = name_problem(&secret.secret, NameRule::Default) {
                // Sensu does not check the reference itself; no Secret can have such a name.
                self.warning(
                    item.key("secret"),
                    format!("{problem}; no Secret can have this name"),
                );
            }
        }
    }

    fn check(&mut self, check: &CheckConfig, spec: &FieldPath) {
        let at = |field: &str| spec.key(field);
        if !check.cron.is_empty() && check.interval > 0 {
            self.error(
                at("cron"),
                "must only specify either an interval or a cron schedule",
            );
        } else if check.cron.is_empty() && check.interval <= 0 {
            if check.interval < 0 {
                self.error(
                    at("interval"),
                    format!("must be greater than 0, found {}", check.interval),
                );
            } else {
                self.error(
                    at("interval"),
                    "check interval must be greater than 0 or a valid cron schedule must be provided",
                );
            }
        }
        if check.interval > i64::from(u32::MAX) {
            self.error(at("interval"), format!("must be at most {}", u32::MAX));
        }
        if !check.cron.is_empty() {
            if let Err(problem) = crate::schedule::CronSchedule::parse(&check.cron) {
                self.error(at("cron"), problem);
            }
        }
        if let Err((index, problem)) = crate::schedule::parse_subdues(&check.subdues) {
            self.error(at("subdues").index(index), problem);
        }
        self.non_negative(at("timeout"), check.timeout);
        self.non_negative(at("ttl"), check.ttl);
        if check.ttl > 0 && check.interval > 0 && check.ttl <= check.interval {
            self.error(at("ttl"), "ttl must be greater than check interval");
        }
        for (idx, subscription) in check.subscriptions.iter().enumerate() {
            if subscription.is_empty() {
                self.error(at("subscriptions").index(idx), "must not be empty");
            }
        }
        self.names(&at("handlers"), &check.handlers, NameRule::Default);
        for (idx, pipeline) in check.pipelines.iter().enumerate() {
            self.reference(&at("pipelines").index(idx), pipeline, &["Pipeline"], true);
        }
        if !check.proxy_entity_name.is_empty() {
            self.name(
                at("proxy_entity_name"),
                &check.proxy_entity_name,
                NameRule::Default,
            );
        }
        if let Some(proxy) = &check.proxy_requests {
            if proxy.splay && (proxy.splay_coverage == 0 || proxy.splay_coverage > 100) {
                self.error(
                    at("proxy_requests").key("splay_coverage"),
                    "must be between 1 and 100 when splay is true",
                );
            }
        }
        self.names(
            &at("runtime_assets"),
            &check.runtime_assets,
            NameRule::Asset,
        );
        self.env_vars(&at("env_vars"), &check.env_vars);
        self.secrets(&at("secrets"), &check.secrets);
        for (idx, hooks) in check.check_hooks.iter().enumerate() {
            let item = at("check_hooks").index(idx);
            if hooks.len() != 1 {
                self.error(
                    item.clone(),
                    "each entry maps one severity to a list of hooks",
                );
            }
            for (severity, names) in hooks {
                // As the agent reads it (`exec::hook_selected`): trimmed, any case.
                let normal = severity.trim().to_ascii_lowercase();
                let known =
                    HOOK_SEVERITIES.contains(&normal.as_str()) || normal.parse::<u8>().is_ok();
                // Sensu accepts any type here; one that names no status never selects its
                // hooks, which is worth a warning but not a refusal.
                if severity.trim().is_empty() {
                    self.error(item.key(severity), "the hook type must not be empty");
                } else if !known {
                    self.warning(
                        item.key(severity),
                        format!(
                            "hook type \"{severity}\" matches no check status, so these hooks never run; the types that do are 0-255, ok, warning, critical, unknown and non-zero"
                        ),
                    );
                }
                self.names(&item.key(severity), names, NameRule::Default);
            }
        }
        if !check.output_metric_format.is_empty()
            && !OUTPUT_METRIC_FORMATS.contains(&check.output_metric_format.as_str())
        {
            self.error(
                at("output_metric_format"),
                format!(
                    "unknown format \"{}\"; use one of {}",
                    check.output_metric_format,
                    OUTPUT_METRIC_FORMATS.join(", ")
                ),
            );
        }
        self.names(
            &at("output_metric_handlers"),
            &check.output_metric_handlers,
            NameRule::Default,
        );
        if check.high_flap_threshold > 100 {
            self.error(at("high_flap_threshold"), "must be a percentage (0-100)");
        }
        if check.low_flap_threshold > 100 {
            self.error(at("low_flap_threshold"), "must be a percentage (0-100)");
        }
        if check.high_flap_threshold != 0
            && check.low_flap_threshold != 0
            && check.low_flap_threshold >= check.high_flap_threshold
        {
            self.error(
                at("low_flap_threshold"),
                "invalid flap thresholds: low must be below high",
            );
        }
        self.non_negative(at("max_output_size"), check.max_output_size);
        if check.subdue.is_some() {
            self.warning(
                at("subdue"),
                "legacy field; ignored (sensuctl strips it too)",
            );
        }
        if check.fallback_pipeline.is_some() {
            self.warning(
                at("fallback_pipeline"),
                "unsupported: core/v2/FallbackPipeline; the field is ignored",
            );
        }
        if check.scheduler.is_some() {
            self.warning(at("scheduler"), "set by the server; ignored");
        }
    }

    fn reference(
        &mut self,
        path: &FieldPath,
        reference: &ResourceReference,
        types: &[&str],
        type_optional: bool,
    ) {
        if reference.name.is_empty() {
            self.error(path.key("name"), "missing field \"name\"");
        }
        if reference.type_name.is_empty() {
            if !type_optional {
                self.error(
                    path.key("type"),
                    format!("missing field \"type\"; one of {}", types.join(", ")),
                );
            }
            return;
        }
        if !types.contains(&reference.type_name.as_str()) {
            self.error(
                path.key("type"),
                format!(
                    "\"{}\" is not one of {}",
                    reference.type_name,
                    types.join(", ")
                ),
            );
            return;
        }
        let api_version = if reference.api_version.is_empty() {
            "core/v2"
        } else {
            &reference.api_version
        };
        match Kind::resolve(api_version, &reference.type_name) {
            Ok(Resolved::Modelled(_)) => {}
            Ok(Resolved::Unsupported) => self.warning(
                path.key("type"),
                format!(
                    "unsupported: {api_version}/{}; Cairn will not run it",
                    reference.type_name
                ),
            ),
            Err(err) => self.error(path.key("api_version"), err.to_string()),
        }
    }

    fn handler(&mut self, handler: &Handler) {
        match handler.handler_type.as_str() {
            "" => self.error(
                spec_path("type"),
                "missing handler type; one of pipe, tcp, udp, set",
            ),
            "pipe" => {
                if handler.command.trim().is_empty() {
                    self.error(spec_path("command"), "a pipe handler needs a command");
                }
            }
            "tcp" | "udp" => match &handler.socket {
                None => self.error(
                    spec_path("socket"),
                    format!(
                        "a {} handler needs a socket with host and port",
                        handler.handler_type
                    ),
                ),
                Some(socket) => {
                    if socket.host.is_empty() {
                        self.error(spec_path("socket").key("host"), "missing field \"host\"");
                    }
                    if socket.port == 0 || socket.port > 65535 {
                        self.error(spec_path("socket").key("port"), "must be a port (1-65535)");
                    }
                }
            },
            "set" => {}
            other => self.error(
                spec_path("type"),
                format!("unknown handler type \"{other}\"; one of pipe, tcp, udp, set"),
            ),
        }
        self.non_negative(spec_path("timeout"), handler.timeout);
        self.names(&spec_path("handlers"), &handler.handlers, NameRule::Default);
        self.names(&spec_path("filters"), &handler.filters, NameRule::Default);
        if !handler.mutator.is_empty() {
            self.name(spec_path("mutator"), &handler.mutator, NameRule::Default);
        }
        self.env_vars(&spec_path("env_vars"), &handler.env_vars);
        self.names(
            &spec_path("runtime_assets"),
            &handler.runtime_assets,
            NameRule::Asset,
        );
        self.secrets(&spec_path("secrets"), &handler.secrets);
    }

    fn filter(&mut self, filter: &EventFilter) {
        match filter.action.as_str() {
            "allow" | "deny" => {}
            "" => self.error(
                spec_path("action"),
                "missing field \"action\"; one of allow, deny",
            ),
            other => self.error(
                spec_path("action"),
                format!("unknown action \"{other}\"; one of allow, deny"),
            ),
        }
        if filter.expressions.is_empty() {
            self.error(
                spec_path("expressions"),
                "at least one expression is required",
            );
        }
        for (idx, expression) in filter.expressions.iter().enumerate() {
            if expression.trim().is_empty() {
                self.error(spec_path("expressions").index(idx), "must not be empty");
            }
            #[cfg(feature = "js")]
            if let Err(error) =
                crate::js::check_syntax(expression, crate::js::SourceKind::Expression)
            {
                self.error(spec_path("expressions").index(idx), error);
            }
        }
        self.names(
            &spec_path("runtime_assets"),
            &filter.runtime_assets,
            NameRule::Asset,
        );
        if filter.when.is_some() {
            self.warning(
                spec_path("when"),
                "legacy field; ignored (sensuctl strips it too)",
            );
        }
    }

    fn mutator(&mut self, mutator: &Mutator) {
        match mutator.mutator_type.as_str() {
            "" | "pipe" => {
                if mutator.command.trim().is_empty() {
                    self.error(spec_path("command"), "a pipe mutator needs a command");
                }
                if !mutator.eval.is_empty() {
                    self.error(spec_path("eval"), "only a javascript mutator has eval");
                }
            }
            "javascript" => {
                if mutator.eval.trim().is_empty() {
                    self.error(spec_path("eval"), "a javascript mutator needs eval");
                }
                #[cfg(feature = "js")]
                if let Err(error) =
                    crate::js::check_syntax(&mutator.eval, crate::js::SourceKind::Script)
                {
                    self.error(spec_path("eval"), error);
                }
                if !mutator.command.is_empty() {
                    self.error(
                        spec_path("command"),
                        "a javascript mutator cannot have a command",
                    );
                }
            }
            other => self.error(
                spec_path("type"),
                format!("unknown mutator type \"{other}\"; one of pipe, javascript"),
            ),
        }
        self.non_negative(spec_path("timeout"), mutator.timeout);
        self.env_vars(&spec_path("env_vars"), &mutator.env_vars);
        self.names(
            &spec_path("runtime_assets"),
            &mutator.runtime_assets,
            NameRule::Asset,
        );
        self.secrets(&spec_path("secrets"), &mutator.secrets);
    }

    fn asset(&mut self, asset: &Asset) {
        if asset.builds.is_empty() {
            let build = AssetBuild {
                url: asset.url.clone(),
                sha512: asset.sha512.clone(),
                filters: Vec::new(),
                headers: Default::default(),
            };
            self.asset_build(&FieldPath::keys(&["spec"]), &build);
            return;
        }
        if !asset.url.is_empty() || !asset.sha512.is_empty() {
            self.error(
                spec_path("url"),
                "use either url and sha512, or builds, not both",
            );
        }
        for (idx, build) in asset.builds.iter().enumerate() {
            self.asset_build(&spec_path("builds").index(idx), build);
        }
    }

    fn asset_build(&mut self, path: &FieldPath, build: &AssetBuild) {
        if build.url.is_empty() {
            self.error(path.key("url"), "missing field \"url\"");
        } else if !(build.url.starts_with("http://")
            || build.url.starts_with("https://")
            || build.url.contains("{{"))
        {
            // Sensu substitutes entity tokens (`{{ .labels.x }}`) in asset URLs.
            self.error(
                path.key("url"),
                format!("\"{}\" is not an http(s) URL", build.url),
            );
        }
        if build.sha512.is_empty() {
            self.error(path.key("sha512"), "missing field \"sha512\"");
        } else if build.sha512.len() < 128 || !build.sha512.chars().all(|ch| ch.is_ascii_hexdigit())
        {
            self.error(
                path.key("sha512"),
                "must be a SHA-512 in hex (128 characters)",
            );
        }
    }

    fn hook(&mut self, hook: &HookConfig) {
        if hook.command.trim().is_empty() {
            self.error(spec_path("command"), "missing field \"command\"");
        }
        if hook.timeout <= 0 {
            self.error(
                spec_path("timeout"),
                format!("must be greater than 0, found {}", hook.timeout),
            );
        }
        self.names(
            &spec_path("runtime_assets"),
            &hook.runtime_assets,
            NameRule::Asset,
        );
        self.secrets(&spec_path("secrets"), &hook.secrets);
    }

    fn pipeline(&mut self, pipeline: &Pipeline) {
        for (idx, workflow) in pipeline.workflows.iter().enumerate() {
            let path = spec_path("workflows").index(idx);
            if workflow.name.is_empty() {
                self.error(path.key("name"), "missing field \"name\"");
            }
            for (filter_idx, filter) in workflow.filters.iter().enumerate() {
                self.reference(
                    &path.key("filters").index(filter_idx),
                    filter,
                    &["EventFilter"],
                    false,
                );
            }
            if let Some(mutator) = &workflow.mutator {
                self.reference(&path.key("mutator"), mutator, &["Mutator"], false);
            }
            match &workflow.handler {
                Some(handler) => self.reference(
                    &path.key("handler"),
                    handler,
                    &["Handler", "TCPStreamHandler", "SumoLogicMetricsHandler"],
                    false,
                ),
                None => self.error(path.key("handler"), "a workflow needs a handler"),
            }
        }
    }

    fn entity(&mut self, entity: &Entity, spec: &FieldPath) {
        if let Some(problem) = name_problem(&entity.entity_class, NameRule::Default) {
            self.error(spec.key("entity_class"), format!("entity class {problem}"));
        }
        for (idx, subscription) in entity.subscriptions.iter().enumerate() {
            if subscription.is_empty() {
                self.error(spec.key("subscriptions").index(idx), "must not be empty");
            }
        }
    }

    fn event(&mut self, event: &Event) {
        let metadata = event.metadata.as_ref();
        if metadata.is_some_and(|metadata| !metadata.name.is_empty()) {
            self.error(
                FieldPath::keys(&["metadata", "name"]),
                "events cannot be named",
            );
        }
        if !event.id.is_empty() && !UUID.is_match(&event.id) {
            self.error(spec_path("id"), "must be a UUID");
        }
        match &event.entity {
            None => self.error(spec_path("entity"), "an event needs an entity"),
            Some(entity) => {
                let path = spec_path("entity");
                let name = entity
                    .metadata
                    .as_ref()
                    .map_or("", |metadata| &metadata.name);
                self.name(path.key("metadata").key("name"), name, NameRule::Default);
                if !entity.entity_class.is_empty() {
                    self.entity(entity, &path);
                }
            }
        }
        match &event.check {
            None if event.metrics.is_none() => {
                self.error(spec_path("check"), "an event needs a check or metrics");
            }
            None => {}
            Some(check) => {
                let path = spec_path("check");
                let name = check
                    .metadata
                    .as_ref()
                    .map_or("", |metadata| &metadata.name);
                self.name(path.key("metadata").key("name"), name, NameRule::Default);
                self.non_negative(path.key("timeout"), check.timeout);
                self.non_negative(path.key("ttl"), check.ttl);
                self.env_vars(&path.key("env_vars"), &check.env_vars);
            }
        }
    }

    fn silenced(&mut self, silenced: &Silenced) {
        if silenced.subscription.is_empty() && silenced.check.is_empty() {
            self.error(
                FieldPath::keys(&["spec"]),
                "a silenced entry needs a subscription, a check, or both",
            );
            return;
        }
        if !silenced.subscription.is_empty() {
            self.name(
                spec_path("subscription"),
                &silenced.subscription,
                NameRule::Subscription,
            );
        }
        if !silenced.check.is_empty() {
            self.name(spec_path("check"), &silenced.check, NameRule::Default);
        }
        if silenced.expire < -1 {
            self.error(
                spec_path("expire"),
                "must be -1 (never) or a number of seconds",
            );
        }
    }

    fn role(&mut self, role: &Role) {
        if role.rules.is_empty() {
            self.error(spec_path("rules"), "at least one rule is required");
        }
        for (idx, rule) in role.rules.iter().enumerate() {
            let path = spec_path("rules").index(idx);
            if rule.verbs.is_empty() {
                self.error(path.key("verbs"), "at least one verb is required");
            }
            for (verb_idx, verbs) in rule.verbs.iter().enumerate() {
                for verb in verbs.split(',').map(str::trim) {
                    if !VERBS.contains(&verb) {
                        self.error(
                            path.key("verbs").index(verb_idx),
                            format!("unknown verb \"{verb}\"; one of {}", VERBS.join(", ")),
                        );
                    }
                }
            }
            if rule.resources.is_empty() {
                self.error(path.key("resources"), "at least one resource is required");
            }
            for (resource_idx, resources) in rule.resources.iter().enumerate() {
                if resources
                    .split(',')
                    .any(|resource| resource.trim().is_empty())
                {
                    self.error(
                        path.key("resources").index(resource_idx),
                        "must not be empty",
                    );
                }
            }
        }
    }

    fn role_binding(&mut self, binding: &RoleBinding, cluster: bool) {
        let role_type = binding.role_ref.type_name.to_ascii_lowercase();
        match role_type.as_str() {
            "clusterrole" => {}
            "role" if !cluster => {}
            "role" => self.error(
                spec_path("role_ref").key("type"),
                "a ClusterRoleBinding can only reference a ClusterRole",
            ),
            "" => self.error(spec_path("role_ref").key("type"), "missing field \"type\""),
            _ => self.error(
                spec_path("role_ref").key("type"),
                format!(
                    "\"{}\" is not one of Role, ClusterRole",
                    binding.role_ref.type_name
                ),
            ),
        }
        if binding.role_ref.name.is_empty() {
            self.error(spec_path("role_ref").key("name"), "missing field \"name\"");
        }
        if binding.subjects.is_empty() {
            self.error(spec_path("subjects"), "at least one subject is required");
        }
        for (idx, subject) in binding.subjects.iter().enumerate() {
            let path = spec_path("subjects").index(idx);
            match subject.type_name.to_ascii_lowercase().as_str() {
                "user" | "group" => {}
                _ => self.error(
                    path.key("type"),
                    format!("\"{}\" is not one of User, Group", subject.type_name),
                ),
            }
            if subject.name.is_empty() {
                self.error(path.key("name"), "missing field \"name\"");
            }
        }
    }

    fn user(&mut self, user: &User, resource: &Resource) {
        self.name(spec_path("username"), &user.username, NameRule::Strict);
        if !resource.name().is_empty() && resource.name() != user.username {
            self.error(
                FieldPath::keys(&["metadata", "name"]),
                format!(
                    "\"{}\" does not match spec.username \"{}\"",
                    resource.name(),
                    user.username
                ),
            );
        }
        if !user.password.is_empty() && user.password.chars().count() < 8 {
            self.error(spec_path("password"), "must be at least 8 characters");
        }
        for (idx, group) in user.groups.iter().enumerate() {
            if group.is_empty() {
                self.error(spec_path("groups").index(idx), "must not be empty");
            }
        }
    }

    fn vault(&mut self, vault: &VaultProvider) {
        let client = FieldPath::keys(&["spec", "client"]);
        if vault.client.address.is_empty() {
            self.error(client.key("address"), "missing field \"address\"");
        } else if !(vault.client.address.starts_with("http://")
            || vault.client.address.starts_with("https://"))
        {
            self.error(client.key("address"), "must be an http(s) URL");
        }
        if !matches!(vault.client.version.as_str(), "v1" | "v2") {
            self.error(
                client.key("version"),
                format!("\"{}\" is not one of v1, v2", vault.client.version),
            );
        }
        if !DURATION.is_match(&vault.client.timeout) {
            self.error(
                client.key("timeout"),
                format!("\"{}\" is not a duration like 60s", vault.client.timeout),
            );
        }
        if let Some(limiter) = &vault.client.rate_limiter {
            if limiter.limit < 0.0 || !limiter.limit.is_finite() {
                self.error(
                    client.key("rate_limiter").key("limit"),
                    "must be a positive rate",
                );
            }
        }
    }

    fn cluster(&mut self, cluster: &Cluster) {
        if cluster.api_urls.is_empty() {
            self.error(spec_path("api_urls"), "at least one API URL is required");
        }
        for (idx, url) in cluster.api_urls.iter().enumerate() {
            if let Some(problem) = cluster_url_problem(url) {
                self.error(spec_path("api_urls").index(idx), problem);
            }
        }
        if !cluster.ca_cert.is_empty() && !cluster.ca_cert.contains("-----BEGIN CERTIFICATE-----") {
            self.error(
                spec_path("ca_cert"),
                "must be the PEM of the cluster's CA certificate (-----BEGIN CERTIFICATE-----)",
            );
        }
    }

    /// Checks the type a replicator names. Cairn's replicators must name a type it models;
    /// an `EtcdReplicator` is only stored, so for it this is a warning.
    fn replicated_type(&mut self, api_version: &str, resource: &str, strict: bool) {
        if resource.is_empty() {
            self.error(spec_path("resource"), "missing field \"resource\"");
            return;
        }
        let problem = match Kind::resolve(api_version, resource) {
            Ok(Resolved::Modelled(_)) => return,
            Ok(Resolved::Unsupported) => {
                format!("unsupported: {api_version}/{resource} cannot be replicated")
            }
            Err(err) => err.to_string(),
        };
        if strict {
            self.error(spec_path("resource"), problem);
        } else {
            self.warning(spec_path("resource"), problem);
        }
    }

    fn replicator(&mut self, replicator: &crate::model::Replicator) {
        if replicator.cluster.is_empty() {
            self.error(spec_path("cluster"), "missing field \"cluster\"");
        }
        self.replicated_type(&replicator.api_version, &replicator.resource, true);
        if let Err(problem) = crate::selector::LabelSelector::parse(&replicator.label_selector) {
            self.error(spec_path("label_selector"), problem);
        }
        if replicator.replication_interval_seconds == 0 {
            self.error(
                spec_path("replication_interval_seconds"),
                "must be greater than 0",
            );
        }
    }

    fn etcd_replicator(&mut self, replicator: &EtcdReplicator) {
        if replicator.url.is_empty() {
            self.error(spec_path("url"), "missing field \"url\"");
        }
        if !replicator.insecure {
            for (field, value) in [
                ("ca_cert", &replicator.ca_cert),
                ("cert", &replicator.cert),
                ("key", &replicator.key),
            ] {
                if value.is_empty() {
                    self.error(
                        spec_path(field),
                        format!("missing field \"{field}\" (required unless insecure)"),
                    );
                }
            }
        }
        self.replicated_type(&replicator.api_version, &replicator.resource, false);
        if replicator.replication_interval_seconds == 0 {
            self.error(
                spec_path("replication_interval_seconds"),
                "must be greater than 0",
            );
        }
    }
}

/// What is wrong with a federated cluster's API URL: it must be `https://HOST[:PORT][/PATH]`,
/// since the gateway sends tokens to it; plain `http://` would carry them in clear.
fn cluster_url_problem(url: &str) -> Option<String> {
    let Some(rest) = url.strip_prefix("https://") else {
        return Some(if url.starts_with("http://") {
            format!("\"{url}\" is plain http: a cluster's API must be served over https, since tokens are sent to it")
        } else {
            format!("\"{url}\" is not an https URL")
        });
    };
    let authority = rest.split(['/', '?', '#']).next().unwrap_or_default();
    if authority.is_empty() || authority.contains('@') || url.chars().any(char::is_whitespace) {
        return Some(format!(
            "\"{url}\" is not an https URL with a host (https://HOST[:PORT])"
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn name_rules() {
        assert_eq!(check_name(Kind::CheckConfig, "cpu-check.v2:a"), None);
        assert!(check_name(Kind::CheckConfig, "a/b").is_some());
        assert_eq!(check_name(Kind::Asset, "sensu/http-checks:0.7.0"), None);
        assert!(check_name(Kind::CheckConfig, "..").is_some());
        assert!(check_name(Kind::CheckConfig, &"a".repeat(65)).is_some());
        assert_eq!(check_name(Kind::CheckConfig, &"a".repeat(64)), None);
        assert!(check_name(Kind::User, "Admin").is_some());
    }
}
