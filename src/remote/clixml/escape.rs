//! The `_xHHHH_` string encoding of MS-PSRP 2.2.5.3.2, plus XML text/attribute escaping.
//!
//! PowerShell encodes, as `_x` + four hex digits of the UTF-16 code unit + `_`:
//! C0 controls (U+0000–U+001F, so also TAB, LF and CR), U+007F–U+009F, every surrogate code
//! unit (so a character outside the BMP becomes two escapes, e.g. `_xD83D__xDE00_`), U+FFFE and
//! U+FFFF, and the `_` of any `_x`/`_X` so that literal text is never mistaken for an escape
//! (`_x` → `_x005F_x`). Decoding turns every `_xHHHH_` (lower-case `x`, hex digits of either
//! case) back into its code unit; a lone surrogate left over becomes U+FFFD.

use std::borrow::Cow;

fn must_encode(c: char) -> bool {
    let u = c as u32;
    u <= 0x1F || (0x7F..=0x9F).contains(&u) || u > 0xFFFF || u == 0xFFFE || u == 0xFFFF
}

fn push_unit(out: &mut String, unit: u16) {
    use std::fmt::Write as _;
    let _ = write!(out, "_x{unit:04X}_");
}

/// Applies the `_xHHHH_` encoding (not XML escaping).
pub fn encode_string(s: &str) -> Cow<'_, str> {
    let bytes = s.as_bytes();
    let needs = s.chars().any(must_encode) || bytes.windows(2).any(|w| w[0] == b'_' && (w[1] == b'x' || w[1] == b'X'));
    if !needs {
        return Cow::Borrowed(s);
    }
    let mut out = String::with_capacity(s.len() + 16);
    let mut chars = s.chars().peekable();
    while let Some(c) = chars.next() {
        if c == '_' && matches!(chars.peek(), Some('x') | Some('X')) {
            push_unit(&mut out, 0x5F);
        } else if must_encode(c) {
            let mut buf = [0u16; 2];
            for unit in c.encode_utf16(&mut buf) {
                push_unit(&mut out, *unit);
            }
        } else {
            out.push(c);
        }
    }
    Cow::Owned(out)
}

fn hex_unit(b: &[u8]) -> Option<u16> {
    let mut v: u16 = 0;
    for &d in b {
        let n = (d as char).to_digit(16)?;
        v = (v << 4) | n as u16;
    }
    Some(v)
}

/// Reverses [`encode_string`]. Never fails: malformed escapes stay literal text.
pub fn decode_string(s: &str) -> Cow<'_, str> {
    if !s.contains("_x") {
        return Cow::Borrowed(s);
    }
    let bytes = s.as_bytes();
    let mut units: Vec<u16> = Vec::with_capacity(s.len());
    let mut i = 0;
    // Copies of plain text go through a char iterator so multi-byte UTF-8 stays intact.
    let mut plain_start = 0;
    let flush = |units: &mut Vec<u16>, from: usize, to: usize| {
        units.extend(s[from..to].encode_utf16());
    };
    while i < bytes.len() {
        if bytes[i] == b'_' && i + 7 <= bytes.len() && bytes[i + 1] == b'x' && bytes[i + 6] == b'_' {
            if let Some(unit) = hex_unit(&bytes[i + 2..i + 6]) {
                flush(&mut units, plain_start, i);
                units.push(unit);
                i += 7;
                plain_start = i;
                continue;
            }
        }
        i += 1;
    }
    flush(&mut units, plain_start, bytes.len());
    Cow::Owned(String::from_utf16_lossy(&units))
}

/// Escapes XML metacharacters for element text.
pub fn escape_text(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            _ => out.push(c),
        }
    }
}

/// Escapes XML metacharacters for a double-quoted attribute value.
pub fn escape_attr(s: &str, out: &mut String) {
    for c in s.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            _ => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodes_controls_underscores_and_astral_chars() {
        assert_eq!(encode_string("a\r\nb\tc"), "a_x000D__x000A_b_x0009_c");
        assert_eq!(encode_string("_x000A_"), "_x005F_x000A_");
        assert_eq!(encode_string("my_X"), "my_x005F_X");
        assert_eq!(encode_string("a_b_"), "a_b_");
        assert_eq!(encode_string("😀"), "_xD83D__xDE00_");
        assert_eq!(encode_string("\u{85}\u{7f}\u{fffe}"), "_x0085__x007F__xFFFE_");
        assert_eq!(encode_string("é ü ñ 日本"), "é ü ñ 日本");
        assert!(matches!(encode_string("plain"), Cow::Borrowed(_)));
    }

    #[test]
    fn decodes_escapes_and_leaves_malformed_ones() {
        assert_eq!(decode_string("a_x000D__x000A_b"), "a\r\nb");
        assert_eq!(decode_string("_x005F_x000A_"), "_x000A_");
        assert_eq!(decode_string("_xd83d__xde00_!"), "😀!");
        assert_eq!(decode_string("_xZZZZ_ _x12_ _x"), "_xZZZZ_ _x12_ _x");
        assert_eq!(decode_string("_xD83D_"), "\u{FFFD}");
        assert_eq!(decode_string("日_x0041_本"), "日A本");
    }

    #[test]
    fn round_trips() {
        for s in ["", "_", "__x", "_x_x005F_", "a\u{0}b", "😀_X😀", "\u{1F}\u{9F}\u{A0}", "$(rm -rf /); `whoami`"] {
            assert_eq!(decode_string(&encode_string(s)), s, "{s:?}");
        }
    }
}
