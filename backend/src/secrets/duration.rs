//! Go's duration strings (`60s`, `1m30s`, `500ms`, `1.5h`), as a `VaultProvider`'s `timeout`
//! is written; `cairn_api::validate` checks the same grammar with a regex.

use std::time::Duration;

/// Nanoseconds per unit, longest spelling first so that `ms` is not read as `m`.
const UNITS: [(&str, u128); 8] = [
    ("ns", 1),
    ("us", 1_000),
    ("µs", 1_000),
    ("μs", 1_000),
    ("ms", 1_000_000),
    ("s", 1_000_000_000),
    ("m", 60_000_000_000),
    ("h", 3_600_000_000_000),
];

/// Parses a Go duration string: `0`, or numbers (with an optional fraction) each followed by
/// one of `ns`, `us`, `µs`, `ms`, `s`, `m`, `h`.
///
/// # Errors
/// A message naming the text and what is wrong with it; negative durations are refused.
pub(super) fn parse_duration(text: &str) -> Result<Duration, String> {
    let invalid = |why: &str| format!("invalid duration \"{text}\": {why}");
    let rest = text.strip_prefix('+').unwrap_or(text);
    if rest.starts_with('-') {
        return Err(invalid("must not be negative"));
    }
    if rest == "0" {
        return Ok(Duration::ZERO);
    }
    if rest.is_empty() {
        return Err(invalid("empty (write e.g. 60s)"));
    }
    let mut rest = rest;
    let mut nanos: u128 = 0;
    while !rest.is_empty() {
        let whole_len = rest.bytes().take_while(u8::is_ascii_digit).count();
        let (whole, after) = rest.split_at(whole_len);
        let (fraction, after) = match after.strip_prefix('.') {
            Some(after) => {
                let fraction_len = after.bytes().take_while(u8::is_ascii_digit).count();
                after.split_at(fraction_len)
            }
            None => ("", after),
        };
        if whole.is_empty() && fraction.is_empty() {
            return Err(invalid("expected a number"));
        }
        let Some(&(unit, scale)) = UNITS.iter().find(|(unit, _)| after.starts_with(unit)) else {
            return Err(invalid("each number needs a unit (ns, us, ms, s, m or h)"));
        };
        rest = &after[unit.len()..];
        let whole: u128 = if whole.is_empty() {
            0
        } else {
            whole.parse().map_err(|_| invalid("too long"))?
        };
        // Digits past the 18th cannot change a nanosecond count of these units.
        let fraction = &fraction[..fraction.len().min(18)];
        let fraction_nanos = if fraction.is_empty() {
            0
        } else {
            let digits: u128 = fraction.parse().map_err(|_| invalid("bad fraction"))?;
            let exponent = u32::try_from(fraction.len()).expect("at most 18 digits");
            digits * scale / 10u128.pow(exponent)
        };
        nanos = whole
            .checked_mul(scale)
            .and_then(|part| part.checked_add(fraction_nanos))
            .and_then(|part| part.checked_add(nanos))
            .filter(|total| *total <= u128::from(u64::MAX))
            .ok_or_else(|| invalid("too long"))?;
    }
    let nanos = u64::try_from(nanos).map_err(|_| invalid("too long"))?;
    Ok(Duration::from_nanos(nanos))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expect: Result<Duration, &str>) {
        let got = parse_duration(text);
        match expect {
            Ok(duration) => assert_eq!(got, Ok(duration), "{text}"),
            Err(fragment) => {
                let message = got.expect_err(text);
                assert!(message.contains(fragment), "{text}: {message}");
            }
        }
    }

    #[test]
    fn parses_go_durations() {
        check("60s", Ok(Duration::from_secs(60)));
        check("20s", Ok(Duration::from_secs(20)));
        check("500ms", Ok(Duration::from_millis(500)));
        check("1m", Ok(Duration::from_secs(60)));
        check("1m30s", Ok(Duration::from_secs(90)));
        check("1.5h", Ok(Duration::from_secs(5400)));
        check(".5s", Ok(Duration::from_millis(500)));
        check("250us", Ok(Duration::from_micros(250)));
        check("250µs", Ok(Duration::from_micros(250)));
        check("10ns", Ok(Duration::from_nanos(10)));
        check("0", Ok(Duration::ZERO));
        check("+2s", Ok(Duration::from_secs(2)));
        check("1h2m3s4ms", Ok(Duration::from_millis(3_723_004)));
    }

    #[test]
    fn refuses_bad_durations() {
        check("", Err("empty"));
        check("60", Err("needs a unit"));
        check("s", Err("expected a number"));
        check("10d", Err("needs a unit"));
        check("-1s", Err("negative"));
        check("1.s5", Err("needs a unit"));
        check("99999999999999999999h", Err("too long"));
    }
}
