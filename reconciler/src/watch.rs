//! `cairnctl watch SOURCE`: keeps the backend in sync with a source.

use crate::cli::WatchArgs;
use crate::config::EnvSource;
use crate::ctl::{CtlError, Report};

/// Runs the watcher until interrupted.
///
/// # Errors
/// Configuration errors, or a listener that cannot bind.
pub async fn run(_env: &dyn EnvSource, _args: &WatchArgs) -> Result<Report, CtlError> {
    Err(CtlError::Usage("watch is not built yet".to_owned()))
}
