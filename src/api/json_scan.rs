//! Bounds a JSON body before any tree is built. One pass over the raw bytes with a small state
//! machine (inside a string or not, escaped or not) counts values and nesting, so a body of
//! millions of tiny elements (`"Identity":[1,1,1,…]`) or a deep `[[[[…` is refused having cost
//! only its own bytes — serde never sees it. The real grammar is checked afterwards by serde on
//! bodies that passed; this scan only needs to be right about strings, commas and brackets.

/// What one body may hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct JsonLimits {
    /// Values at most: every `,` outside strings separates two, every `[`/`{` opens one more, so
    /// their sum bounds the array elements and object members of the whole body.
    pub max_values: usize,
    /// Nesting of arrays and objects at most (the body's own object is level 1).
    pub max_depth: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ScanError {
    #[error("the body holds more than {0} JSON values")]
    TooManyValues(usize),
    #[error("the body nests arrays and objects deeper than {0} levels")]
    TooDeep(usize),
}

/// Scans `bytes` (one JSON document, or several separated by whitespace, as NDJSON is) and
/// returns how many values it counted, or the first limit it crossed. Stops at that point.
pub fn scan(bytes: &[u8], limits: JsonLimits) -> Result<usize, ScanError> {
    let (mut values, mut depth) = (0usize, 0usize);
    let (mut in_string, mut escaped) = (false, false);
    for &b in bytes {
        if in_string {
            if escaped {
                escaped = false;
            } else if b == b'\\' {
                escaped = true;
            } else if b == b'"' {
                in_string = false;
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                if depth > limits.max_depth {
                    return Err(ScanError::TooDeep(limits.max_depth));
                }
                values += 1;
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' => values += 1,
            _ => continue,
        }
        if values > limits.max_values {
            return Err(ScanError::TooManyValues(limits.max_values));
        }
    }
    Ok(values)
}

#[cfg(test)]
mod tests {
    use super::*;

    const WIDE: JsonLimits = JsonLimits { max_values: 1000, max_depth: 20 };

    #[test]
    fn counts_elements_and_members_outside_strings() {
        // Three opening brackets, four commas: 7 for the 7 members and elements.
        assert_eq!(scan(br#"{"a":[1,2,3],"b":{"c":1,"d":2}}"#, WIDE), Ok(7));
        assert_eq!(scan(br#"{"a":"[,,,{{{\"],,"}"#, WIDE), Ok(1), "brackets and commas in strings do not count");
        assert_eq!(scan(br#"{"a":"x\\"}"#, WIDE), Ok(1), "an escaped backslash ends before the quote");
        assert_eq!(scan(b"{\"a\":1}\n{\"a\":2}\n", WIDE), Ok(2), "NDJSON: one document per line");
    }

    #[test]
    fn stops_at_the_first_limit_crossed() {
        let wide = format!("{{\"Identity\":[{}1]}}", "1,".repeat(5000));
        assert_eq!(scan(wide.as_bytes(), WIDE), Err(ScanError::TooManyValues(1000)));
        let deep = "[".repeat(100_000);
        assert_eq!(scan(deep.as_bytes(), WIDE), Err(ScanError::TooDeep(20)));
        let ok = format!("{}1{}", "[".repeat(20), "]".repeat(20));
        assert_eq!(scan(ok.as_bytes(), WIDE), Ok(20));
    }
}
