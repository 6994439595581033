//! Token substitution: `{{ .name }}`, `{{ .labels.region }}`, `{{ .annotations.x | default "y" }}`
//! in check fields, evaluated against the agent's entity as Sensu's agent does (its `token`
//! package: Go's `text/template` over the entity "synthesized" into a map).
//!
//! The data is the entity in Sensu's wire form with its metadata (`name`, `namespace`, `labels`,
//! `annotations`, `created_by`) lifted to the top: `.name`, `.entity_class`, `.system.os`,
//! `.system.network.interfaces`, `.labels.x`, … A field that Sensu leaves out when empty
//! (`omitempty`) is missing when empty here too.
//!
//! The supported subset of the template language, the one Sensu documents:
//!
//! - text outside `{{ … }}` is copied; `{{- ` and ` -}}` trim the white space beside them;
//!   `{{/* comment */}}` writes nothing;
//! - a pipeline of commands separated by `|`, the value of each passed as the last argument of
//!   the next; a command is a field chain (`.`, `.a.b`), a string (`"…"` with Go escapes, or a
//!   raw `` `…` ``), a number, `true`/`false`, or `default ARG [ARG]`;
//! - `default D X` is `X` unless `X` is missing or null, then `D` (`{{ .labels.x | default "y" }}`,
//!   `{{ .labels.n | default 1 }}`).
//!
//! A value is written as Go's `fmt` writes it: strings as they are, integers in decimal, floats
//! in `%v` form, lists as `[a b]`, objects as `map[k:v …]` with sorted keys, null as `<nil>`.
//!
//! # Errors
//! A missing field that is written out (not defaulted) is [`TokenError::Unmatched`], naming
//! the token and the missing key, as Sensu's `unmatched token` error does. Anything outside the
//! subset (`if`, `range`, other functions, …) is [`TokenError::Unsupported`]; a malformed action
//! is [`TokenError::Parse`]. A field reached through a non-object is [`TokenError::Execute`].

use std::fmt::Write as _;

use serde_json::{Map, Value};

use crate::metrics::go_format_float;
use crate::model::{Entity, Wire};

/// Why a template could not be substituted; expected for a check whose tokens do not fit the
/// entity, and retrying does not help until the entity or the check changes.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    /// A token names a field the entity does not have, and has no `default`.
    #[error("unmatched token: {token}: map has no entry for key \"{key}\"")]
    Unmatched {
        /// The field chain as written, e.g. `.labels.region`.
        token: String,
        /// The key that was missing, e.g. `region`.
        key: String,
    },
    /// The template is not well formed.
    #[error("could not parse the template: {0}")]
    Parse(String),
    /// The template uses something outside the supported subset.
    #[error("unsupported template action: {0}")]
    Unsupported(String),
    /// Evaluation failed, e.g. a field of a string.
    #[error("could not execute the template: {0}")]
    Execute(String),
    /// A token in a command would write a value holding a shell metacharacter (see
    /// [`substitute_command`]).
    #[error(
        "token {token} holds {found:?}, a shell metacharacter: values substituted into a command \
         may not hold any of {SHELL_METACHARACTERS:?} or a line break (they could run other commands)"
    )]
    ShellMetacharacter {
        /// The action as written, e.g. `.labels.disk`.
        token: String,
        /// The first metacharacter found.
        found: char,
    },
}

/// What a value substituted into a command may not hold, besides line breaks: with them an
/// entity's label (which whoever may update the entity sets, through the API) could end the
/// check's command and start another (`; rm -rf ~`), quote its way out, or expand variables.
/// Spaces, dashes, `=`, `/`, `:`, `,`, `.`, `%`, `*`, `?`, `#` are fine, so labels that carry
/// several arguments (`-w 80 -c 90`) still work as in Sensu.
pub const SHELL_METACHARACTERS: &str = ";&|$`()<>\\'\"";

/// Whether `template` contains an action (`{{`); a string without one comes back unchanged.
pub fn has_tokens(template: &str) -> bool {
    template.contains("{{")
}

/// Substitutes the tokens of `template` with the fields of `entity`.
///
/// # Errors
/// See the module documentation; the error names the unmatched token.
pub fn substitute(template: &str, entity: &Entity) -> Result<String, TokenError> {
    if !has_tokens(template) {
        return Ok(template.to_owned());
    }
    substitute_value(template, &entity_data(entity))
}

/// Substitutes the tokens of `template` with the fields of `data` (the entity as [`entity_data`]
/// gives it, or any JSON object).
///
/// # Errors
/// As [`substitute`].
pub fn substitute_value(template: &str, data: &Value) -> Result<String, TokenError> {
    substitute_inner(template, data, false)
}

/// [`substitute`] for a command run by `sh -c` (a check's or hook's `command`): a token whose
/// value holds a shell metacharacter ([`SHELL_METACHARACTERS`], or a line break) is an error,
/// so an entity's labels and annotations cannot inject shell syntax into the commands of the
/// checks it runs. Sensu substitutes them as they are; this is Cairn's stricter rule.
///
/// # Errors
/// As [`substitute`], and [`TokenError::ShellMetacharacter`] naming the token.
pub fn substitute_command(template: &str, entity: &Entity) -> Result<String, TokenError> {
    if !has_tokens(template) {
        return Ok(template.to_owned());
    }
    substitute_command_value(template, &entity_data(entity))
}

/// [`substitute_command`] over prepared data (see [`substitute_value`]).
///
/// # Errors
/// As [`substitute_command`].
pub fn substitute_command_value(template: &str, data: &Value) -> Result<String, TokenError> {
    substitute_inner(template, data, true)
}

fn substitute_inner(template: &str, data: &Value, shell: bool) -> Result<String, TokenError> {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(start) = rest.find("{{") {
        let mut text = &rest[..start];
        let after = &rest[start + 2..];
        let trim_left = after.starts_with('-') && after[1..].starts_with([' ', '\t', '\n', '\r']);
        if trim_left {
            text = text.trim_end_matches([' ', '\t', '\n', '\r']);
        }
        out.push_str(text);
        let body_start = if trim_left { 1 } else { 0 };
        let Some(end) = find_action_end(&after[body_start..]) else {
            return Err(TokenError::Parse("unclosed action".to_owned()));
        };
        let mut body = &after[body_start..body_start + end];
        let mut next = &after[body_start + end + 2..];
        let trim_right =
            body.ends_with('-') && body[..body.len() - 1].ends_with([' ', '\t', '\n', '\r']);
        if trim_right {
            body = &body[..body.len() - 1];
            next = next.trim_start_matches([' ', '\t', '\n', '\r']);
        }
        let action = body.trim();
        if !(action.starts_with("/*") && action.ends_with("*/")) {
            let value = evaluate(action, data)?;
            let start = out.len();
            write_value(&mut out, &value)?;
            if shell {
                let written = &out[start..];
                if let Some(found) = written
                    .chars()
                    .find(|c| SHELL_METACHARACTERS.contains(*c) || matches!(c, '\n' | '\r'))
                {
                    return Err(TokenError::ShellMetacharacter {
                        token: action.to_owned(),
                        found,
                    });
                }
            }
        }
        rest = next;
    }
    out.push_str(rest);
    // Sensu reads `<no value>` in the result as an undefined value it could not name.
    if out.contains("<no value>") {
        return Err(TokenError::Execute(
            "unmatched token: found an undefined value but could not identify the token".to_owned(),
        ));
    }
    Ok(out)
}

/// The entity as token substitution sees it: its wire form with `metadata` lifted to the top.
pub fn entity_data(entity: &Entity) -> Value {
    let mut data = serde_json::to_value(Wire(entity)).unwrap_or(Value::Null);
    if let Value::Object(fields) = &mut data {
        if let Some(Value::Object(metadata)) = fields.remove("metadata") {
            for (key, value) in metadata {
                fields.insert(key, value);
            }
        }
    }
    data
}

/// The end of the action starting at `text` (after `{{`): the first `}}` outside a string.
fn find_action_end(text: &str) -> Option<usize> {
    let bytes = text.as_bytes();
    let mut idx = 0;
    while idx < bytes.len() {
        match bytes[idx] {
            b'"' => {
                idx += 1;
                while idx < bytes.len() && bytes[idx] != b'"' {
                    if bytes[idx] == b'\\' {
                        idx += 1;
                    }
                    idx += 1;
                }
            }
            b'`' => {
                idx += 1;
                while idx < bytes.len() && bytes[idx] != b'`' {
                    idx += 1;
                }
            }
            b'}' if bytes.get(idx + 1) == Some(&b'}') => return Some(idx),
            _ => {}
        }
        idx += 1;
    }
    None
}

/// An evaluated value: present (possibly null), or missing with the token that missed.
#[derive(Debug, Clone)]
enum Evaluated {
    Present(Value),
    Missing { token: String, key: String },
}

/// One lexical item of an action.
#[derive(Debug, Clone, PartialEq)]
enum Item {
    Field(Vec<String>),
    Text(String),
    Number(Value),
    Bool(bool),
    Word(String),
    Pipe,
}

fn evaluate(action: &str, data: &Value) -> Result<Evaluated, TokenError> {
    let items = lex(action)?;
    let commands: Vec<&[Item]> = items.split(|item| *item == Item::Pipe).collect();
    let mut piped: Option<Evaluated> = None;
    for command in commands {
        let Some((head, args)) = command.split_first() else {
            return Err(TokenError::Parse("missing value for command".to_owned()));
        };
        let value = match head {
            Item::Word(word) if word == "default" => {
                let mut values = args
                    .iter()
                    .map(|arg| operand(arg, data))
                    .collect::<Result<Vec<_>, _>>()?;
                values.extend(piped.take());
                default(values, action)?
            }
            Item::Word(word) => return Err(TokenError::Unsupported(word.clone())),
            operand_item => {
                if !args.is_empty() || piped.is_some() {
                    return Err(TokenError::Execute(format!(
                        "can't give argument to non-function {action}"
                    )));
                }
                operand(operand_item, data)?
            }
        };
        piped = Some(value);
    }
    piped.ok_or_else(|| TokenError::Parse("missing value for command".to_owned()))
}

/// Sensu's `default`: the last argument unless it is missing or null, then the first.
fn default(mut values: Vec<Evaluated>, action: &str) -> Result<Evaluated, TokenError> {
    let is_nil = |value: &Evaluated| {
        matches!(
            value,
            Evaluated::Missing { .. } | Evaluated::Present(Value::Null)
        )
    };
    let count = values.len();
    let (fallback, given) = match (values.pop(), values.pop(), count) {
        (Some(only), None, 1) => (only, None),
        (Some(given), Some(fallback), 2) => (fallback, Some(given)),
        _ => {
            return Err(TokenError::Execute(format!(
                "default takes 1 or 2 arguments, got {count} in {action}"
            )))
        }
    };
    Ok(match given {
        Some(given) if !is_nil(&given) => given,
        _ => match fallback {
            Evaluated::Missing { .. } => Evaluated::Present(Value::Null),
            present => present,
        },
    })
}

fn operand(item: &Item, data: &Value) -> Result<Evaluated, TokenError> {
    match item {
        Item::Field(path) => field(path, data),
        Item::Text(text) => Ok(Evaluated::Present(Value::String(text.clone()))),
        Item::Number(number) => Ok(Evaluated::Present(number.clone())),
        Item::Bool(value) => Ok(Evaluated::Present(Value::Bool(*value))),
        Item::Word(word) => Err(TokenError::Unsupported(word.clone())),
        Item::Pipe => Err(TokenError::Parse("unexpected |".to_owned())),
    }
}

/// Follows a field chain; a missing key gives `Missing` (Go's invalid value), and so does every
/// field after it.
fn field(path: &[String], data: &Value) -> Result<Evaluated, TokenError> {
    let token = if path.is_empty() {
        ".".to_owned()
    } else {
        path.iter().map(|key| format!(".{key}")).collect()
    };
    let mut current = data;
    for key in path {
        match current {
            Value::Object(fields) => match fields.get(key) {
                Some(value) => current = value,
                None => {
                    return Ok(Evaluated::Missing {
                        token,
                        key: key.clone(),
                    })
                }
            },
            Value::Null => {
                return Err(TokenError::Execute(format!(
                    "nil pointer evaluating interface {{}}.{key} in {token}"
                )))
            }
            other => {
                return Err(TokenError::Execute(format!(
                    "can't evaluate field {key} in type {} in {token}",
                    go_type(other)
                )))
            }
        }
    }
    Ok(Evaluated::Present(current.clone()))
}

fn go_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "interface {}",
        Value::Bool(_) => "bool",
        Value::Number(number) if number.is_f64() => "float64",
        Value::Number(_) => "int64",
        Value::String(_) => "string",
        Value::Array(_) => "[]interface {}",
        Value::Object(_) => "map[string]interface {}",
    }
}

fn lex(action: &str) -> Result<Vec<Item>, TokenError> {
    let mut items = Vec::new();
    let chars: Vec<char> = action.chars().collect();
    let mut idx = 0;
    while idx < chars.len() {
        let c = chars[idx];
        match c {
            ' ' | '\t' | '\n' | '\r' => idx += 1,
            '|' => {
                items.push(Item::Pipe);
                idx += 1;
            }
            '.' if !chars.get(idx + 1).is_some_and(char::is_ascii_digit) => {
                let mut path = Vec::new();
                while idx < chars.len() && chars[idx] == '.' {
                    idx += 1;
                    let start = idx;
                    while idx < chars.len() && (chars[idx].is_alphanumeric() || chars[idx] == '_') {
                        idx += 1;
                    }
                    if start == idx {
                        // `.` alone is the data itself; `.a.` is malformed.
                        if !path.is_empty()
                            || chars
                                .get(idx)
                                .is_some_and(|c| !c.is_whitespace() && *c != '|')
                        {
                            return Err(TokenError::Parse(format!("bad field in {action}")));
                        }
                        break;
                    }
                    path.push(chars[start..idx].iter().collect());
                }
                if chars
                    .get(idx)
                    .is_some_and(|c| !c.is_whitespace() && *c != '|')
                {
                    return Err(TokenError::Parse(format!(
                        "bad character {:?} in {action}",
                        chars[idx]
                    )));
                }
                items.push(Item::Field(path));
            }
            '"' => {
                let (text, next) = lex_quoted(&chars, idx + 1)?;
                items.push(Item::Text(text));
                idx = next;
            }
            '`' => {
                let start = idx + 1;
                let Some(len) = chars[start..].iter().position(|c| *c == '`') else {
                    return Err(TokenError::Parse(
                        "unterminated raw quoted string".to_owned(),
                    ));
                };
                items.push(Item::Text(chars[start..start + len].iter().collect()));
                idx = start + len + 1;
            }
            c if c.is_ascii_digit() || c == '-' || c == '+' || c == '.' => {
                let start = idx;
                while idx < chars.len() && !chars[idx].is_whitespace() && chars[idx] != '|' {
                    idx += 1;
                }
                let text: String = chars[start..idx].iter().collect();
                items.push(Item::Number(number(&text)?));
            }
            c if c.is_alphabetic() || c == '_' => {
                let start = idx;
                while idx < chars.len() && (chars[idx].is_alphanumeric() || chars[idx] == '_') {
                    idx += 1;
                }
                let word: String = chars[start..idx].iter().collect();
                items.push(match word.as_str() {
                    "true" => Item::Bool(true),
                    "false" => Item::Bool(false),
                    _ => Item::Word(word),
                });
            }
            other => {
                return Err(TokenError::Parse(format!(
                    "unexpected {other:?} in {action}"
                )))
            }
        }
    }
    Ok(items)
}

/// A Go template number: an integer, or a float when written with `.` or an exponent.
fn number(text: &str) -> Result<Value, TokenError> {
    let bad = || TokenError::Parse(format!("bad number syntax: {text:?}"));
    if !text.contains(['.', 'e', 'E']) {
        return text.parse::<i64>().map(Value::from).map_err(|_| bad());
    }
    let value = crate::metrics::go_parse_float(text).ok_or_else(bad)?;
    serde_json::Number::from_f64(value)
        .map(Value::Number)
        .ok_or_else(bad)
}

/// A Go interpreted string literal after its opening quote; the index after its closing one.
fn lex_quoted(chars: &[char], mut idx: usize) -> Result<(String, usize), TokenError> {
    let mut text = String::new();
    let unterminated = || TokenError::Parse("unterminated quoted string".to_owned());
    loop {
        let c = *chars.get(idx).ok_or_else(unterminated)?;
        idx += 1;
        match c {
            '"' => return Ok((text, idx)),
            '\n' => return Err(unterminated()),
            '\\' => {
                let escape = *chars.get(idx).ok_or_else(unterminated)?;
                idx += 1;
                let simple = match escape {
                    'a' => Some('\u{7}'),
                    'b' => Some('\u{8}'),
                    'f' => Some('\u{c}'),
                    'n' => Some('\n'),
                    'r' => Some('\r'),
                    't' => Some('\t'),
                    'v' => Some('\u{b}'),
                    '\\' => Some('\\'),
                    '"' => Some('"'),
                    _ => None,
                };
                if let Some(simple) = simple {
                    text.push(simple);
                    continue;
                }
                let digits = match escape {
                    'x' => 2,
                    'u' => 4,
                    'U' => 8,
                    '0'..='7' => 3,
                    other => {
                        return Err(TokenError::Parse(format!(
                            "invalid syntax: unknown escape \\{other}"
                        )))
                    }
                };
                let (start, radix) = if escape.is_ascii_digit() {
                    (idx - 1, 8)
                } else {
                    (idx, 16)
                };
                let end = start + digits;
                let code: String = chars
                    .get(start..end)
                    .ok_or_else(unterminated)?
                    .iter()
                    .collect();
                let value = u32::from_str_radix(&code, radix)
                    .map_err(|_| TokenError::Parse(format!("invalid syntax: \\{escape}{code}")))?;
                let decoded = char::from_u32(value).ok_or_else(|| {
                    TokenError::Parse(format!("invalid syntax: \\{escape}{code}"))
                })?;
                text.push(decoded);
                idx = end;
            }
            other => text.push(other),
        }
    }
}

/// Writes `value` as Go's `fmt.Fprint` would; a missing value is the unmatched token error.
fn write_value(out: &mut String, value: &Evaluated) -> Result<(), TokenError> {
    match value {
        Evaluated::Present(value) => {
            write_go(out, value);
            Ok(())
        }
        Evaluated::Missing { token, key } => Err(TokenError::Unmatched {
            token: token.clone(),
            key: key.clone(),
        }),
    }
}

fn write_go(out: &mut String, value: &Value) {
    match value {
        Value::Null => out.push_str("<nil>"),
        Value::Bool(value) => out.push_str(if *value { "true" } else { "false" }),
        Value::Number(number) => match (number.as_i64(), number.as_u64(), number.as_f64()) {
            (Some(int), _, _) => {
                let _ = write!(out, "{int}");
            }
            (None, Some(uint), _) => {
                let _ = write!(out, "{uint}");
            }
            (None, None, Some(float)) => out.push_str(&go_format_float(float)),
            (None, None, None) => out.push_str(&number.to_string()),
        },
        Value::String(text) => out.push_str(text),
        Value::Array(items) => {
            out.push('[');
            for (idx, item) in items.iter().enumerate() {
                if idx > 0 {
                    out.push(' ');
                }
                write_go(out, item);
            }
            out.push(']');
        }
        Value::Object(fields) => write_map(out, fields),
    }
}

fn write_map(out: &mut String, fields: &Map<String, Value>) {
    let mut keys: Vec<&String> = fields.keys().collect();
    keys.sort();
    out.push_str("map[");
    for (idx, key) in keys.into_iter().enumerate() {
        if idx > 0 {
            out.push(' ');
        }
        out.push_str(key);
        out.push(':');
        write_go(out, &fields[key]);
    }
    out.push(']');
}

#[cfg(test)]
mod tests {

    #[test]
    fn command_tokens_may_not_write_shell_metacharacters() {
        let data = serde_json::json!({
            "name": "web-1",
            "labels": {"args": "-w 80 -c 90", "evil": "x; rm -rf ~", "sub": "$(id)", "nl": "a\nb"},
        });
        assert_eq!(
            substitute_command_value("check-disk {{ .labels.args }} --host {{ .name }}", &data)
                .unwrap(),
            "check-disk -w 80 -c 90 --host web-1"
        );
        // The template's own text may use the shell; only substituted values are checked.
        assert_eq!(
            substitute_command_value("ps aux | grep {{ .name }}", &data).unwrap(),
            "ps aux | grep web-1"
        );
        for (template, token, found) in [
            ("echo {{ .labels.evil }}", ".labels.evil", ';'),
            ("echo {{ .labels.sub }}", ".labels.sub", '$'),
            ("echo {{ .labels.nl }}", ".labels.nl", '\n'),
            (
                "echo {{ .labels.none | default \"a|b\" }}",
                ".labels.none | default \"a|b\"",
                '|',
            ),
        ] {
            assert_eq!(
                substitute_command_value(template, &data),
                Err(TokenError::ShellMetacharacter {
                    token: token.to_owned(),
                    found
                }),
                "{template}"
            );
        }
        // Elsewhere (metric tags, asset headers) values are written as they are.
        assert_eq!(
            substitute_value("{{ .labels.evil }}", &data).unwrap(),
            "x; rm -rf ~"
        );
    }

    use super::*;
    use crate::model::System;
    use crate::ObjectMeta;

    fn entity() -> Entity {
        let mut metadata = ObjectMeta::named("default", "web-01");
        metadata.labels.insert("region".into(), "us-west-1".into());
        metadata.annotations.insert("owner".into(), "ops".into());
        Entity {
            metadata: Some(metadata),
            entity_class: "agent".into(),
            subscriptions: vec!["linux".into(), "entity:web-01".into()],
            system: Some(System {
                os: "linux".into(),
                hostname: "web-01.example".into(),
                ..System::default()
            }),
            last_seen: 1_700_000_000,
            ..Entity::default()
        }
    }

    fn check(template: &str, expect: &str) {
        assert_eq!(
            substitute(template, &entity()).as_deref(),
            Ok(expect),
            "{template}"
        );
    }

    fn check_error(template: &str, expect: TokenError) {
        assert_eq!(substitute(template, &entity()), Err(expect), "{template}");
    }

    #[test]
    fn sensu_documented_tokens() {
        check("{{ .name }}", "web-01");
        check("{{.namespace}}", "default");
        check("echo {{ .labels.region }}", "echo us-west-1");
        check("{{ .annotations.owner }}", "ops");
        check(
            "{{ .system.os }}/{{ .system.hostname }}",
            "linux/web-01.example",
        );
        check("{{ .entity_class }}", "agent");
        check("{{ .last_seen }}", "1700000000");
        check("{{ .subscriptions }}", "[linux entity:web-01]");
        check(
            "{{ .name }}; {{ \"hello\" }}; {{ .entity_class }}",
            "web-01; hello; agent",
        );
        check(r#"{{ "\"hello\"" }}"#, "\"hello\"");
        check("no tokens at all", "no tokens at all");
    }

    #[test]
    fn default_values() {
        check(r#"{{ .labels.missing | default "bar" }}"#, "bar");
        check(r#"{{ .labels.region | default "bar" }}"#, "us-west-1");
        check("{{ .annotations.missing | default 1 }}", "1");
        check("{{ .annotations.missing | default 2.5 }}", "2.5");
        check("{{ .nothing.deeper.still | default `raw` }}", "raw");
        check(r#"{{ default "x" .labels.missing }}"#, "x");
        check(r#"{{- .name -}}  after"#, "web-01after");
        check("a {{/* note */}}b", "a b");
    }

    #[test]
    fn errors_name_the_token() {
        check_error(
            "{{ .labels.nope }}",
            TokenError::Unmatched {
                token: ".labels.nope".into(),
                key: "nope".into(),
            },
        );
        // `user` is `omitempty` in Sensu: an empty one is missing.
        check_error(
            "{{ .user }}",
            TokenError::Unmatched {
                token: ".user".into(),
                key: "user".into(),
            },
        );
        assert!(matches!(
            substitute("{{ if .name }}x{{ end }}", &entity()),
            Err(TokenError::Unsupported(_))
        ));
        assert!(matches!(
            substitute("{{ .name ", &entity()),
            Err(TokenError::Parse(_))
        ));
        assert!(matches!(
            substitute("{{ .name.first }}", &entity()),
            Err(TokenError::Execute(_))
        ));
        assert!(matches!(
            substitute(r#"{{ .name | default \"bar\" }}"#, &entity()),
            Err(TokenError::Parse(_))
        ));
        assert!(matches!(
            substitute("{{ }}", &entity()),
            Err(TokenError::Parse(_))
        ));
        assert_eq!(
            TokenError::Unmatched {
                token: ".labels.region".into(),
                key: "region".into()
            }
            .to_string(),
            "unmatched token: .labels.region: map has no entry for key \"region\""
        );
    }
}
