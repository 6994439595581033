//! The one wall clock of the backend: unix seconds.
//!
//! Sensu's timestamps (`timestamp`, `issued`, `executed`, `last_seen`, `expire_at`) are signed
//! 64-bit seconds, so [`unix_now`] is an `i64`; token expiries (`exp`, `iat`) are unsigned in
//! JWT, [`unix_now_u64`] gives the same instant as a `u64`. A clock before 1970 reads as 0.

use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch (0 before it, `i64::MAX` past the year 292 billion).
pub(crate) fn unix_now() -> i64 {
    i64::try_from(unix_now_u64()).unwrap_or(i64::MAX)
}

/// [`unix_now`] as unsigned seconds, for token claims.
pub(crate) fn unix_now_u64() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |elapsed| elapsed.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_forms_read_the_same_clock() {
        let signed = unix_now();
        let unsigned = unix_now_u64();
        // After 2020 and within a second of each other.
        assert!(signed > 1_577_836_800, "{signed}");
        assert!(unsigned.abs_diff(u64::try_from(signed).expect("positive")) <= 1);
    }
}
