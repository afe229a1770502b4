//! The `usage` object of a provider's whole JSON reply, found without parsing the reply.
//!
//! Providers put `usage` last or nearly so, and a reply of a few kilobytes costs more to parse
//! than the rest of a wrapped call's work on the way back (the SDK parses it again anyway). The
//! last occurrence of `"usage"` followed by a colon is a key (inside a string its quotes would
//! be escaped). It is the root object's own member when what follows its value, strings aside,
//! closes exactly one object and opens none. Anything else declines: the caller then parses the
//! reply whole, so a decline is never wrong, only slower.

/// The byte range of the root object's `usage` object in `body` (a JSON object as UTF-8), or
/// None when that cannot be proved (the caller parses the reply whole). The range is not
/// validated as JSON: the caller parses it.
pub fn root_usage_span(body: &[u8]) -> Option<(usize, usize)> {
    if std::str::from_utf8(body).is_err() {
        return None;
    }
    if body.iter().find(|b| !b.is_ascii_whitespace()) != Some(&b'{') {
        return None;
    }
    let mut search_end = body.len();
    let value_at = loop {
        let at = rfind(&body[..search_end], b"\"usage\"")?;
        let after = skip_space(body, at + 7);
        if body.get(after) == Some(&b':') {
            break skip_space(body, after + 1);
        }
        search_end = at;
    };
    if body.get(value_at) != Some(&b'{') {
        return None;
    }
    let end = object_end(body, value_at)?;
    closes_exactly_one_object(&body[end..]).then_some((value_at, end))
}

fn rfind(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).rposition(|window| window == needle)
}

fn skip_space(body: &[u8], mut at: usize) -> usize {
    while matches!(body.get(at), Some(b' ' | b'\t' | b'\r' | b'\n')) {
        at += 1;
    }
    at
}

/// The index just past the string starting at `at` (a `"`), or None if it never ends.
fn string_end(body: &[u8], at: usize) -> Option<usize> {
    let mut i = at + 1;
    while i < body.len() {
        match body[i] {
            b'\\' => i += 2,
            b'"' => return Some(i + 1),
            _ => i += 1,
        }
    }
    None
}

/// The index just past the object or array opening at `at`, strings skipped; None when it
/// never closes, or closes with the other bracket.
fn object_end(body: &[u8], at: usize) -> Option<usize> {
    let mut open: Vec<u8> = Vec::new();
    let mut i = at;
    while i < body.len() {
        match body[i] {
            b'"' => {
                i = string_end(body, i)?;
                continue;
            }
            b'{' => open.push(b'}'),
            b'[' => open.push(b']'),
            close @ (b'}' | b']') => {
                if open.pop()? != close {
                    return None;
                }
                if open.is_empty() {
                    return Some(i + 1);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

/// Whether `rest`, strings aside, holds exactly one `}`, last but for whitespace, and no `{`
/// or `[`.
fn closes_exactly_one_object(rest: &[u8]) -> bool {
    let mut closes = 0;
    let mut last = None;
    let mut i = 0;
    while i < rest.len() {
        let byte = rest[i];
        match byte {
            b'"' => {
                let Some(end) = string_end(rest, i) else {
                    return false;
                };
                i = end;
                continue;
            }
            b'{' | b'[' => return false,
            b'}' => closes += 1,
            _ => {}
        }
        if !byte.is_ascii_whitespace() {
            last = Some(byte);
        }
        i += 1;
    }
    closes == 1 && last == Some(b'}')
}

#[cfg(test)]
mod tests {
    use super::*;

    fn usage_of(body: &str) -> Option<&str> {
        root_usage_span(body.as_bytes()).map(|(start, end)| &body[start..end])
    }

    #[test]
    fn the_root_usage_last_or_nearly() {
        assert_eq!(usage_of(r#"{"id":"x","usage":{"a":1}}"#), Some(r#"{"a":1}"#));
        assert_eq!(
            usage_of(r#"{"usage" : {"a":{"b":"}"}} , "s":"{[" }"#),
            Some(r#"{"a":{"b":"}"}}"#)
        );
        assert_eq!(usage_of(" {\"usage\":{}}\n"), Some("{}"));
    }

    #[test]
    fn declines_what_it_cannot_prove() {
        for body in [
            r#"{"choices":[{"usage":{"a":1}}]}"#,
            r#"{"meta":{"usage":{"a":1}},"x":1}"#,
            r#"{"usage":{"a":1},"more":{"b":2}}"#,
            r#"{"usage":3}"#,
            r#"{"text":"\"usage\":{}"}"#,
            r#"["usage",{"usage":{}}]"#,
            r#"{"usage":{"a":"unterminated}"#,
            r#"{"usage":{"a":1}"#,
            r#"{"usage":{"a":[1}]}"#,
            "{\"usage\":{\u{1}]'}",
        ] {
            assert_eq!(usage_of(body), None, "{body}");
        }
        assert_eq!(root_usage_span(b"{\"usage\":{\"a\":\"\xff\"}}"), None);
    }
}
