//! Stream patterns: a stream name (`news`), or a prefix ending in `*` (`room:*`); `*` alone
//! matches every stream, a session's private stream (`@session:<id>`) included.

use std::fmt;
use std::str::FromStr;

/// One pattern of a grant (`sse.subscribe`, `sse.publish`) or of `--public-streams`.
#[derive(Clone, PartialEq, Eq)]
pub(crate) enum Pattern {
    /// Exactly this stream.
    Exact(String),
    /// Every stream whose name starts with this (empty: every stream).
    Prefix(String),
}

impl Pattern {
    /// The pattern a token's grant names. Never fails: a pattern that is no stream name
    /// (a `*` in the middle, a space) matches nothing, since no stream has such a name.
    pub(crate) fn lenient(text: &str) -> Self {
        match text.strip_suffix('*') {
            Some(prefix) => Pattern::Prefix(prefix.to_owned()),
            None => Pattern::Exact(text.to_owned()),
        }
    }

    /// Whether `stream` (a stream's name) matches.
    pub(crate) fn matches(&self, stream: &str) -> bool {
        match self {
            Pattern::Exact(name) => name == stream,
            Pattern::Prefix(prefix) => stream.starts_with(prefix.as_str()),
        }
    }
}

/// Whether any of `patterns` matches `stream`.
pub(crate) fn any_matches(patterns: &[Pattern], stream: &str) -> bool {
    patterns.iter().any(|p| p.matches(stream))
}

impl fmt::Debug for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl fmt::Display for Pattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pattern::Exact(name) => f.write_str(name),
            Pattern::Prefix(prefix) => write!(f, "{prefix}*"),
        }
    }
}

/// Strict, for patterns given on the command line: what precedes the optional final `*` is
/// made of stream-name characters (`[A-Za-z0-9_.:/@-]`), at most 128 bytes.
impl FromStr for Pattern {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, Self::Err> {
        let text = text.trim();
        let body = text.strip_suffix('*').unwrap_or(text);
        if text.is_empty() {
            return Err("a stream pattern may not be empty".into());
        }
        if body.len() > 128 {
            return Err(format!(
                "`{text}`: a stream name is at most 128 bytes, and so is a prefix"
            ));
        }
        if let Some(bad) = body
            .chars()
            .find(|c| !(c.is_ascii_alphanumeric() || "_.:/@-".contains(*c)))
        {
            return Err(format!(
                "`{text}`: `{bad}` cannot be in a stream name; a pattern is a stream name, or a \
                 prefix ending in `*` (`room:*`; `*` alone: every stream)"
            ));
        }
        Ok(Pattern::lenient(text))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_prefixes_and_everything() {
        let room: Pattern = "room:*".parse().unwrap();
        assert!(room.matches("room:1") && room.matches("room:") && !room.matches("rooms"));
        let news: Pattern = "news".parse().unwrap();
        assert!(news.matches("news") && !news.matches("news2"));
        let all: Pattern = "*".parse().unwrap();
        assert!(all.matches("anything") && all.matches("@session:00ff"));
        let sessions: Pattern = "@session:*".parse().unwrap();
        assert!(sessions.matches("@session:00ff") && !sessions.matches("news"));
    }

    #[test]
    fn command_line_patterns_are_checked() {
        assert!("".parse::<Pattern>().is_err());
        assert!("ro*m".parse::<Pattern>().is_err());
        assert!("a b".parse::<Pattern>().is_err());
        assert!("x".repeat(129).parse::<Pattern>().is_err());
        // From a token: never an error, and a star inside matches no valid name.
        assert!(!Pattern::lenient("ro*m").matches("room"));
        assert_eq!(Pattern::lenient("room:*").to_string(), "room:*");
    }
}
