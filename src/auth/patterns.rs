//! Channel patterns, the syntax shared by `auth.public_channels` and a
//! token's `channels` claim.
//!
//! - `"user.42"` matches that channel only;
//! - a trailing `*` matches any suffix, the empty one included:
//!   `"team.7.*"` matches `team.7.x` and `team.7.`, not `team.8.x`;
//! - `"*"` alone matches every channel.
//!
//! A `*` anywhere else is not a wildcard. In config it is an error (it is
//! almost certainly a mistake); in a token it makes that one pattern match
//! nothing, silently: a token is the issuer's word, and one odd entry should
//! not cost its holder the others, nor Herald a log line per request.

use std::collections::HashSet;

/// A set of channel patterns, checked in time independent of how many
/// patterns it holds: exact names are one hash lookup, and prefixes are one
/// hash lookup per distinct prefix length (at most the channel's length), so a
/// token with thousands of patterns does not make a check per channel
/// proportional to their number.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    /// `"*"` was among the patterns: every channel matches.
    all: bool,
    /// Patterns without a wildcard.
    exact: HashSet<Box<str>>,
    /// Patterns with a trailing `*`, without it (`"team.7."`).
    prefixes: HashSet<Box<str>>,
    /// The distinct lengths in `prefixes`, ascending: the only places a
    /// channel name needs cutting to look its prefix up.
    prefix_lens: Vec<usize>,
}

/// A pattern that config refuses.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PatternError {
    #[error("pattern \"{0}\" has a `*` before its end; only a trailing `*` is a wildcard")]
    InnerStar(String),
    #[error("the empty pattern matches no channel")]
    Empty,
}

impl Patterns {
    /// No pattern: matches nothing.
    pub fn none() -> Patterns {
        Patterns::default()
    }

    /// Strict parse, for config: a non-trailing `*` or an empty pattern is an
    /// error naming the pattern.
    pub fn parse<S: AsRef<str>>(patterns: &[S]) -> Result<Patterns, PatternError> {
        for pattern in patterns {
            let pattern = pattern.as_ref();
            if pattern.is_empty() {
                return Err(PatternError::Empty);
            }
            if pattern.strip_suffix('*').unwrap_or(pattern).contains('*') {
                return Err(PatternError::InnerStar(pattern.to_owned()));
            }
        }
        Ok(Patterns::from_claim(patterns))
    }

    /// Lenient parse, for a token's `channels` claim: a pattern with a `*`
    /// before its end is skipped (it matches nothing).
    pub fn from_claim<S: AsRef<str>>(patterns: &[S]) -> Patterns {
        let mut set = Patterns::default();
        for pattern in patterns {
            let pattern = pattern.as_ref();
            match pattern.strip_suffix('*') {
                Some(prefix) if prefix.contains('*') => {}
                Some("") => set.all = true,
                Some(prefix) => {
                    set.prefixes.insert(prefix.into());
                }
                None if pattern.contains('*') => {}
                None => {
                    set.exact.insert(pattern.into());
                }
            }
        }
        let mut lens: Vec<usize> = set.prefixes.iter().map(|p| p.len()).collect();
        lens.sort_unstable();
        lens.dedup();
        set.prefix_lens = lens;
        set
    }

    /// Whether `channel` matches one of the patterns.
    pub fn matches(&self, channel: &str) -> bool {
        if self.all || self.exact.contains(channel) {
            return true;
        }
        for &len in &self.prefix_lens {
            if len > channel.len() {
                break; // and so are all the lengths after it
            }
            // `get` is None at a cut inside a UTF-8 sequence, where no
            // prefix (itself valid UTF-8) can end.
            if let Some(head) = channel.get(..len)
                && self.prefixes.contains(head)
            {
                return true;
            }
        }
        false
    }

    /// Whether no channel can match.
    pub fn is_empty(&self) -> bool {
        !self.all && self.exact.is_empty() && self.prefixes.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exact_names_match_only_themselves() {
        let p = Patterns::parse(&["user.42"]).unwrap();
        assert!(p.matches("user.42"));
        assert!(!p.matches("user.421"));
        assert!(!p.matches("user.4"));
        assert!(!p.matches(""));
    }

    #[test]
    fn trailing_star_matches_any_suffix() {
        let p = Patterns::parse(&["team.7.*"]).unwrap();
        assert!(p.matches("team.7.x"));
        assert!(p.matches("team.7."));
        assert!(p.matches("team.7.x.y"));
        assert!(!p.matches("team.8.x"));
        assert!(!p.matches("team.7"));
        assert!(!p.matches("team."));
    }

    #[test]
    fn lone_star_matches_everything() {
        let p = Patterns::parse(&["*"]).unwrap();
        assert!(p.matches("anything"));
        assert!(p.matches(""));
    }

    #[test]
    fn config_refuses_inner_star_and_names_it() {
        let err = Patterns::parse(&["news", "team.*.admin"]).unwrap_err();
        assert_eq!(err, PatternError::InnerStar("team.*.admin".into()));
        assert!(err.to_string().contains("team.*.admin"));
        assert!(Patterns::parse(&["**"]).is_err());
        assert_eq!(Patterns::parse(&[""]).unwrap_err(), PatternError::Empty);
        assert!(Patterns::parse(&["é", "é.*"]).is_ok());
    }

    #[test]
    fn claim_skips_inner_star_and_keeps_the_rest() {
        let p = Patterns::from_claim(&["team.*.admin", "a*b*", "user.1"]);
        assert!(!p.matches("team.*.admin"));
        assert!(!p.matches("team.7.admin"));
        assert!(!p.matches("a*b"));
        assert!(!p.matches("a*bc"));
        assert!(p.matches("user.1"));
    }

    #[test]
    fn prefixes_of_several_lengths_and_multibyte_names() {
        let p = Patterns::from_claim(&["a.*", "é.*", "long.prefix.*"]);
        assert!(p.matches("a.1"));
        assert!(p.matches("é.1"));
        assert!(p.matches("long.prefix.z"));
        // Cut at byte 2, inside "é": no panic, no match.
        assert!(!p.matches("éx"));
        assert!(!p.matches("long"));
    }

    #[test]
    fn many_patterns_stay_cheap() {
        // 5,000 prefixes of one length and 5,000 exact names: a check is a
        // handful of hash lookups, so 10,000 checks finish at once even in a
        // debug build (a linear scan would be 10^8 comparisons).
        let mut claim: Vec<String> = (0..5_000).map(|i| format!("team.{i:05}.*")).collect();
        claim.extend((0..5_000).map(|i| format!("user.{i}")));
        let p = Patterns::from_claim(&claim);
        assert_eq!(p.prefix_lens.len(), 1);
        let start = std::time::Instant::now();
        let mut hits = 0;
        for i in 0..10_000 {
            hits += usize::from(p.matches(&format!("team.{:05}.x", i % 6_000)));
        }
        // i % 6_000 below 5_000: 5_000 of the first 6_000, 4_000 of the rest.
        assert_eq!(hits, 9_000);
        assert!(start.elapsed() < std::time::Duration::from_secs(1));
    }
}
