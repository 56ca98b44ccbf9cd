//! dataId patterns of the access rules: `*` matches any run of characters (none included),
//! every other character matches itself. Pure.

/// A compiled pattern: the literal pieces between the `*`s.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pattern {
    source: String,
    /// The pieces between stars; `pieces.len() == stars + 1`.
    pieces: Vec<String>,
}

impl Pattern {
    /// Compiles a pattern (already checked by `registry_types::access::check_pattern`).
    pub fn new(source: &str) -> Pattern {
        Pattern {
            source: source.to_owned(),
            pieces: source.split('*').map(str::to_owned).collect(),
        }
    }

    pub fn as_str(&self) -> &str {
        &self.source
    }

    /// What every matching dataId starts with: the text before the first `*` (the whole
    /// pattern when it has none).
    pub fn literal_prefix(&self) -> &str {
        &self.pieces[0]
    }

    /// Whether `data_id` matches the whole pattern.
    pub fn matches(&self, data_id: &str) -> bool {
        let (first, rest) = self.pieces.split_first().expect("split yields one piece");
        let Some(mut tail) = data_id.strip_prefix(first.as_str()) else {
            return false;
        };
        let Some((last, middle)) = rest.split_last() else {
            // No star: the whole dataId must be the literal.
            return tail.is_empty();
        };
        // Each middle piece at its leftmost place (greedy from the left is exact for `*`
        // alone), then the last piece at the very end.
        for piece in middle {
            match tail.find(piece.as_str()) {
                Some(at) => tail = &tail[at + piece.len()..],
                None => return false,
            }
        }
        tail.len() >= last.len() && tail.ends_with(last.as_str())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(p: &str, s: &str) -> bool {
        Pattern::new(p).matches(s)
    }

    #[test]
    fn a_star_is_any_run_of_characters() {
        assert!(m("com.shop.pay.*", "com.shop.pay.card"));
        assert!(m("com.shop.pay.*", "com.shop.pay."));
        assert!(m("com.shop.pay.*", "com.shop.pay.a.b.c"));
        assert!(!m("com.shop.pay.*", "com.shop.pay"));
        assert!(!m("com.shop.pay.*", "com.shop.payments"));
        assert!(!m("com.shop.pay.*", "xcom.shop.pay.a"));
        assert!(m("*", ""));
        assert!(m("*", "anything at all"));
        assert!(m("*.Echo", "com.example.Echo"));
        assert!(!m("*.Echo", "com.example.Echo2"));
        assert!(m("com.*.pay.*", "com.shop.pay.card"));
        assert!(m("com.*.pay.*", "com.a.b.pay.c"));
        assert!(!m("com.*.pay.*", "com.shop.card"));
        assert!(m("a*b*c", "abc"));
        assert!(m("a*b*c", "aXbYbZc"));
        assert!(!m("a*b*c", "aXbYbZ"));
        assert!(m("a**b", "ab"));
        // The last piece must not overlap the middle ones.
        assert!(!m("ab*ba", "aba"));
        assert!(m("ab*ba", "abba"));
    }

    #[test]
    fn without_a_star_only_the_exact_dataid_matches() {
        assert!(m("com.example.Echo", "com.example.Echo"));
        assert!(!m("com.example.Echo", "com.example.Echo2"));
        assert!(!m("com.example.Echo", "com.example.Ech"));
        // Only `*` is special.
        assert!(!m("com.example.?", "com.example.a"));
        assert!(m("com.example.?", "com.example.?"));
    }

    #[test]
    fn the_literal_prefix_is_what_precedes_the_first_star() {
        assert_eq!(Pattern::new("com.shop.*").literal_prefix(), "com.shop.");
        assert_eq!(Pattern::new("*x").literal_prefix(), "");
        assert_eq!(Pattern::new("exact").literal_prefix(), "exact");
    }
}
