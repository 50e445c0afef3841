//! The publish API's keys (`publish.api_keys`, `publish.api_keys_file`),
//! and the one way to check a presented key against them: in constant
//! time, against every key.
//!
//! Each key is kept padded to [`MAX_API_KEY_LEN`] bytes beside its length.
//! A presented key is padded the same way and compared with every
//! configured key in full, the results combined with `subtle`'s `Choice`
//! (no early exit, no branch on a byte): the time taken depends only on how
//! many keys are configured, never on which one matched, how many bytes of
//! a key were right, or how long the keys are.

use std::fmt;

use subtle::{Choice, ConstantTimeEq};

/// Longest API key accepted, in bytes. Bounds the padded comparison; the
/// bound is public, so refusing a longer presented key at once tells an
/// attacker nothing about the keys.
pub const MAX_API_KEY_LEN: usize = 256;

/// Shortest API key accepted, in bytes: a key is a secret shared with
/// backends, and a short one can be guessed.
pub const MIN_API_KEY_LEN: usize = 16;

/// Why a configured key is refused. Never says what the key is.
pub fn key_problem(key: &str) -> Option<String> {
    if key.is_empty() {
        return Some("an API key is empty".into());
    }
    if key.len() < MIN_API_KEY_LEN {
        return Some(format!(
            "an API key is {} bytes long; at least {MIN_API_KEY_LEN} are needed",
            key.len()
        ));
    }
    if key.len() > MAX_API_KEY_LEN {
        return Some(format!(
            "an API key is {} bytes long; at most {MAX_API_KEY_LEN} are allowed",
            key.len()
        ));
    }
    if !key.bytes().all(|b| b.is_ascii_graphic()) {
        return Some(
            "an API key has a character other than visible ASCII (it must fit in an Authorization header)"
                .into(),
        );
    }
    None
}

/// The configured API keys. Its `Debug` shows how many there are, never
/// the keys.
pub struct ApiKeys {
    keys: Vec<PaddedKey>,
}

struct PaddedKey {
    bytes: Box<[u8; MAX_API_KEY_LEN]>,
    len: u64,
}

fn pad(key: &[u8]) -> Box<[u8; MAX_API_KEY_LEN]> {
    let mut bytes = Box::new([0u8; MAX_API_KEY_LEN]);
    bytes[..key.len()].copy_from_slice(key);
    bytes
}

impl ApiKeys {
    /// Keys longer than [`MAX_API_KEY_LEN`] are left out (config
    /// validation refuses them before this).
    pub fn new<S: AsRef<str>>(keys: impl IntoIterator<Item = S>) -> ApiKeys {
        let keys = keys
            .into_iter()
            .filter(|k| !k.as_ref().is_empty() && k.as_ref().len() <= MAX_API_KEY_LEN)
            .map(|k| PaddedKey {
                bytes: pad(k.as_ref().as_bytes()),
                len: k.as_ref().len() as u64,
            })
            .collect();
        ApiKeys { keys }
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Whether `presented` is one of the keys, compared in constant time
    /// with every one of them.
    pub fn admits(&self, presented: &[u8]) -> bool {
        if presented.is_empty() || presented.len() > MAX_API_KEY_LEN {
            return false;
        }
        let given = pad(presented);
        let given_len = presented.len() as u64;
        let mut found = Choice::from(0);
        for key in &self.keys {
            found |= key.bytes[..].ct_eq(&given[..]) & key.len.ct_eq(&given_len);
        }
        found.into()
    }
}

impl fmt::Debug for ApiKeys {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKeys({} keys, not shown)", self.keys.len())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "key-aaaaaaaaaaaaaaaa";
    const B: &str = "key-bbbbbbbbbbbbbbbbbbbbbb";

    #[test]
    fn every_configured_key_is_admitted_and_nothing_else() {
        let keys = ApiKeys::new([A, B]);
        assert!(keys.admits(A.as_bytes()));
        assert!(keys.admits(B.as_bytes()));
        for wrong in [
            "",
            "key-",
            "key-aaaaaaaaaaaaaaa",   // one short
            "key-aaaaaaaaaaaaaaaaa", // one long
            "key-aaaaaaaaaaaaaaab",
            "KEY-AAAAAAAAAAAAAAAA",
        ] {
            assert!(!keys.admits(wrong.as_bytes()), "{wrong:?}");
        }
        // A presented key padded with the zeros the keys are padded with is
        // still a different key.
        let mut padded = A.as_bytes().to_vec();
        padded.push(0);
        assert!(!keys.admits(&padded));
        assert!(!keys.admits(&[b'x'; MAX_API_KEY_LEN + 1]));
        let longest = "k".repeat(MAX_API_KEY_LEN);
        assert!(ApiKeys::new([&longest]).admits(longest.as_bytes()));
    }

    #[test]
    fn debug_never_shows_a_key() {
        let shown = format!("{:?}", ApiKeys::new([A]));
        assert!(!shown.contains(A) && shown.contains('1'), "{shown}");
    }

    #[test]
    fn configured_keys_are_checked_without_showing_them() {
        assert!(key_problem(A).is_none());
        for (bad, why) in [
            ("", "empty"),
            ("short-key", "at least 16"),
            ("has a space in the middle", "visible ASCII"),
        ] {
            let problem = key_problem(bad).unwrap();
            assert!(problem.contains(why), "{bad:?}: {problem}");
            assert!(bad.is_empty() || !problem.contains(bad), "{problem}");
        }
        assert!(key_problem(&"k".repeat(MAX_API_KEY_LEN + 1)).is_some());
    }
}
