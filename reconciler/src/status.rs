//! `cairnctl status`: the last sync of a running watcher.

use crate::cli::StatusArgs;
use crate::ctl::{CtlError, Report};

/// Reads and prints the watcher's last sync.
///
/// # Errors
/// When neither the file nor the URL can be read.
pub async fn run(_args: &StatusArgs) -> Result<Report, CtlError> {
    Err(CtlError::Usage("status is not built yet".to_owned()))
}
