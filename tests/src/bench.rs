//! What the load benchmarks (`benches/agents.rs`, `benches/secrets.rs`) share: knobs from the
//! environment, the wall clock in unix seconds, a process's CPU time and RSS from `/proc`, and
//! order statistics.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A positive number from the environment variable `name`, else `default`.
pub fn env_number<T>(name: &str, default: T) -> T
where
    T: std::str::FromStr + PartialOrd + Default,
{
    std::env::var(name)
        .ok()
        .and_then(|text| text.trim().parse().ok())
        .filter(|value| *value > T::default())
        .unwrap_or(default)
}

/// Now, in unix seconds.
pub fn unix_now() -> f64 {
    unix(SystemTime::now())
}

/// `at` in unix seconds.
pub fn unix(at: SystemTime) -> f64 {
    at.duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .as_secs_f64()
}

/// Sleeps this thread until the unix time `at` (at once when it passed).
pub fn sleep_until_unix(at: f64) {
    let left = at - unix_now();
    if left > 0.0 {
        std::thread::sleep(Duration::from_secs_f64(left));
    }
}

/// `VmRSS` of a process, KiB.
pub fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    status_field(&status, "VmRSS:")
}

/// A KiB field (`VmRSS:`, `VmHWM:`) of `/proc/<pid>/status`; 0 when absent.
pub fn status_field(status: &str, field: &str) -> u64 {
    status
        .lines()
        .find_map(|line| line.strip_prefix(field))
        .and_then(|rest| rest.split_whitespace().next())
        .and_then(|kib| kib.parse().ok())
        .unwrap_or(0)
}

/// User + system CPU time of a process, seconds (clock ticks of 1/100 s, Linux's USER_HZ).
pub fn cpu_seconds(pid: u32) -> f64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after_name = stat.rsplit_once(')').map_or("", |(_, rest)| rest);
    let fields: Vec<&str> = after_name.split_whitespace().collect();
    let ticks = |idx: usize| {
        fields
            .get(idx)
            .and_then(|text| text.parse::<u64>().ok())
            .unwrap_or(0)
    };
    // Fields 14 and 15 of stat (utime, stime); `after_name` starts at field 3.
    (ticks(11) + ticks(12)) as f64 / 100.0
}

/// The value at quantile `q` of sorted values (nearest rank); NaN when there are none.
pub fn percentile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = (q * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

/// `values` in ascending order.
pub fn sorted(mut values: Vec<f64>) -> Vec<f64> {
    values.sort_by(f64::total_cmp);
    values
}

/// The median (upper middle for an even count); NaN when there are none.
pub fn median(values: Vec<f64>) -> f64 {
    let values = sorted(values);
    values.get(values.len() / 2).copied().unwrap_or(f64::NAN)
}
