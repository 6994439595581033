//! Percent-decoding of URL parts: the one decoder of the API. A path segment keeps `+` as it
//! is (Go's `url.PathUnescape`); a query component reads `+` as a space (HTML forms, Go's
//! `url.ParseQuery`, which Sensu's API reads its query with). An escape that is not `%`
//! followed by two hex digits is kept as written; bytes that do not form UTF-8 become U+FFFD.

/// Decodes one path segment.
pub(crate) fn decode_path_segment(text: &str) -> String {
    decode(text, false)
}

/// Decodes one query key or value.
pub(crate) fn decode_query_component(text: &str) -> String {
    decode(text, true)
}

fn decode(text: &str, plus_is_space: bool) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut idx = 0;
    while idx < bytes.len() {
        match bytes[idx] {
            b'+' if plus_is_space => out.push(b' '),
            b'%' => match (hex(bytes.get(idx + 1)), hex(bytes.get(idx + 2))) {
                (Some(high), Some(low)) => {
                    out.push(high << 4 | low);
                    idx += 2;
                }
                _ => out.push(b'%'),
            },
            byte => out.push(byte),
        }
        idx += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex(byte: Option<&u8>) -> Option<u8> {
    let digit = char::from(*byte?).to_digit(16)?;
    u8::try_from(digit).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plus_is_a_space_only_in_a_query() {
        assert_eq!(decode_query_component("team%20%3D%3D+ops"), "team == ops");
        assert_eq!(decode_path_segment("a+b%2Fc"), "a+b/c");
    }

    #[test]
    fn bad_escapes_stay_as_written() {
        // `from_str_radix` would read `+1` as a number: not a hex escape.
        assert_eq!(decode_path_segment("%+1%2"), "%+1%2");
        assert_eq!(decode_path_segment("%zz%"), "%zz%");
        assert_eq!(decode_path_segment("%41%e2%82%ac"), "A€");
        assert_eq!(decode_path_segment("%ff"), "\u{fffd}");
    }
}
