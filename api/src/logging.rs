//! The tracing subscriber every Cairn binary installs once, from `CAIRN_LOG` and
//! `CAIRN_LOG_FORMAT`.

use tracing_subscriber::EnvFilter;

/// Log filter in `EnvFilter` syntax, e.g. `info,cairn_backend=debug`.
pub const ENV_LOG: &str = "CAIRN_LOG";
/// `plain` (default) or `json`.
pub const ENV_LOG_FORMAT: &str = "CAIRN_LOG_FORMAT";

/// Installs the global subscriber, writing to stderr. `default_filter` applies when `CAIRN_LOG`
/// is unset.
///
/// # Errors
/// When `CAIRN_LOG` does not parse or `CAIRN_LOG_FORMAT` is neither `plain` nor `json`.
pub fn init(default_filter: &str) -> Result<(), String> {
    let filter = match std::env::var(ENV_LOG) {
        Ok(directives) => EnvFilter::try_new(&directives)
            .map_err(|err| format!("{ENV_LOG}={directives:?} is not a valid filter: {err}"))?,
        Err(_) => EnvFilter::new(default_filter),
    };
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    let result = match std::env::var(ENV_LOG_FORMAT).as_deref() {
        Ok("json") => builder.json().try_init(),
        Ok("plain") | Err(_) => builder.try_init(),
        Ok(other) => {
            return Err(format!(
                "{ENV_LOG_FORMAT}={other:?} is not one of plain, json"
            ));
        }
    };
    result.map_err(|err| format!("failed to install the log subscriber: {err}"))
}
