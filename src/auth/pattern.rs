//! Case-insensitive glob patterns (`*` matches any run of characters, nothing else is special),
//! as written in token scopes: comma-separated lists such as `Get-*,Set-Mailbox`.

use std::fmt;

/// One glob, kept lower-case.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Glob(String);

impl Glob {
    pub fn new(text: &str) -> Glob {
        Glob(text.trim().to_lowercase())
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Matches the whole of `text`, ignoring case. Cmdlet and tenant names are ASCII: those are
    /// folded byte by byte, without a lower-case copy (this runs for every batch item against
    /// every deny-list entry).
    pub fn matches(&self, text: &str) -> bool {
        if !text.is_ascii() {
            return wildcard(self.0.as_bytes(), text.to_lowercase().as_bytes(), |b| *b);
        }
        let (pattern, text) = (self.0.as_bytes(), text.as_bytes());
        let Some(first_star) = pattern.iter().position(|&c| c == b'*') else {
            return pattern.eq_ignore_ascii_case(text);
        };
        // The literal ends of the pattern must be the ends of the text: nearly every text fails
        // one of these two comparisons at once, before any backtracking.
        let last_star = pattern.iter().rposition(|&c| c == b'*').unwrap_or(first_star);
        let (head, tail) = (&pattern[..first_star], &pattern[last_star + 1..]);
        text.len() >= head.len() + tail.len()
            && text[..head.len()].eq_ignore_ascii_case(head)
            && text[text.len() - tail.len()..].eq_ignore_ascii_case(tail)
            && wildcard(
                &pattern[first_star..=last_star],
                &text[head.len()..text.len() - tail.len()],
                u8::to_ascii_lowercase,
            )
    }
}

/// Classic two-pointer wildcard match with backtracking to the last `*`: linear in practice,
/// never exponential. `fold` lower-cases a byte of `text`.
fn wildcard(pattern: &[u8], text: &[u8], fold: fn(&u8) -> u8) -> bool {
    let (mut p, mut t) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while t < text.len() {
        if p < pattern.len() && pattern[p] == b'*' {
            star = Some((p, t));
            p += 1;
        } else if p < pattern.len() && pattern[p] == fold(&text[t]) {
            p += 1;
            t += 1;
        } else if let Some((sp, st)) = star {
            p = sp + 1;
            t = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    pattern[p..].iter().all(|&c| c == b'*')
}

/// A list of globs; a text is in the list when any glob matches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Patterns(Vec<Glob>);

impl Patterns {
    /// Everything (`*`).
    pub fn any() -> Patterns {
        Patterns(vec![Glob::new("*")])
    }

    /// Parses `a,b,c`. Empty items are refused so a typo like `Get-*,` does not widen anything
    /// silently; an empty list is refused too (a token that may do nothing is a mistake).
    pub fn parse(text: &str) -> Result<Patterns, String> {
        let items: Vec<&str> = text.split(',').map(str::trim).collect();
        if items.iter().any(|i| i.is_empty()) {
            return Err(format!("'{text}' has an empty pattern (comma-separated globs, e.g. Get-*,Set-Mailbox)"));
        }
        if let Some(bad) = items.iter().find(|i| i.chars().any(|c| c.is_control() || c.is_whitespace())) {
            return Err(format!("pattern '{bad}' contains whitespace or control characters"));
        }
        Ok(Patterns(items.into_iter().map(Glob::new).collect()))
    }

    pub fn matches(&self, text: &str) -> bool {
        self.0.iter().any(|g| g.matches(text))
    }

    pub fn is_any(&self) -> bool {
        self.0.iter().any(|g| g.as_str().bytes().all(|c| c == b'*'))
    }
}

impl fmt::Display for Patterns {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let parts: Vec<&str> = self.0.iter().map(Glob::as_str).collect();
        f.write_str(&parts.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn globs_match_whole_text_ignoring_case() {
        let g = Glob::new("Get-*");
        assert!(g.matches("get-mailbox"));
        assert!(g.matches("Get-"));
        assert!(!g.matches("Set-Mailbox"));
        assert!(!g.matches("xGet-Mailbox"));
        assert!(Glob::new("*.onmicrosoft.com").matches("Contoso.OnMicrosoft.com"));
        assert!(!Glob::new("*.onmicrosoft.com").matches("contoso.onmicrosoft.com.evil.example"));
        assert!(Glob::new("*-Job").matches("Receive-Job"));
        assert!(Glob::new("*a*b*c").matches("xaxxbxxc"));
        assert!(!Glob::new("*a*b*c").matches("xaxxbxxcx"));
        assert!(Glob::new("exact").matches("EXACT"));
        assert!(!Glob::new("exact").matches("exactly"));
        assert!(Glob::new("*").matches(""));
    }

    #[test]
    fn names_beyond_ascii_ignore_case_too() {
        let g = Glob::new("Müller-*");
        assert!(g.matches("MÜLLER-Contoso") && g.matches("müller-x") && !g.matches("Muller-x"));
        assert!(Glob::new("tenant-Ä.example").matches("TENANT-ä.EXAMPLE"));
    }

    #[test]
    fn lists_parse_and_refuse_empty_items() {
        let p = Patterns::parse("Get-*, Set-Mailbox").unwrap();
        assert!(p.matches("Get-User") && p.matches("set-mailbox") && !p.matches("Set-User"));
        assert_eq!(p.to_string(), "get-*,set-mailbox");
        assert!(Patterns::parse("Get-*,").is_err());
        assert!(Patterns::parse("").is_err());
        assert!(Patterns::parse("a b").is_err());
        assert!(Patterns::any().is_any() && !p.is_any());
    }

    proptest::proptest! {
        /// The shortcut on the pattern's literal ends decides as the plain match would.
        #[test]
        fn literal_ends_shortcut_agrees_with_the_plain_match(pattern in "[ab*-]{0,7}", text in "[abAB-]{0,9}") {
            let plain = wildcard(pattern.to_lowercase().as_bytes(), text.as_bytes(), u8::to_ascii_lowercase);
            proptest::prop_assert_eq!(Glob::new(&pattern).matches(&text), plain);
        }
    }

    #[test]
    fn pathological_patterns_stay_fast() {
        let g = Glob::new(&"*a".repeat(50));
        let text = "a".repeat(5000) + "b";
        let t = std::time::Instant::now();
        assert!(!g.matches(&text));
        assert!(t.elapsed() < std::time::Duration::from_secs(2));
    }
}
