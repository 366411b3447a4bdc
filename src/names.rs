//! Validated identifiers: everything user-supplied passes through these
//! newtypes before it reaches a path, an interface name, a command line or a
//! Caddy file.

use std::fmt;

use rand::Rng;
use rand::seq::SliceRandom;
use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Adjectives for generated VM names (from the product spec).
pub const ADJECTIVES: &[&str] = &[
    "cosmic", "quantum", "stellar", "solar", "lunar", "orbital", "nebula", "cyber", "digital",
    "neural", "binary", "atomic", "photon", "plasma", "misty", "crystal", "amber", "coral",
    "forest", "arctic", "alpine",
];

/// Nouns for generated VM names (from the product spec).
pub const NOUNS: &[&str] = &[
    "nova", "comet", "pulsar", "quasar", "aurora", "eclipse", "meteor", "circuit", "matrix",
    "nexus", "vertex", "tensor", "vector", "cipher", "river", "canyon", "glacier", "meadow",
    "reef", "grove", "peak",
];

const ID_LEN: usize = 8;
const NAME_MAX: usize = 48;
const SESSION_MAX: usize = 32;

#[derive(Debug, Error, PartialEq, Eq)]
pub enum NameError {
    #[error("invalid VM id {0:?}: expected 8 characters of [a-z0-9]")]
    Id(String),
    #[error(
        "invalid VM name {0:?}: use 1-48 characters of [a-z0-9-], starting with a letter and not ending with '-'"
    )]
    Name(String),
    #[error("invalid session id {0:?}: use 1-32 characters of [a-z0-9-]")]
    Session(String),
    #[error(
        "invalid checkpoint {0:?}: an id (8 characters of [a-z0-9]) or a name (1-48 characters of [a-z0-9-], starting with a letter, not ending with '-')"
    )]
    Checkpoint(String),
}

fn is_lower_alnum(c: u8) -> bool {
    c.is_ascii_lowercase() || c.is_ascii_digit()
}

/// An 8-character VM id, `[a-z0-9]{8}`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmId(String);

impl VmId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        if s.len() == ID_LEN && s.bytes().all(is_lower_alnum) {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Id(truncate(s)))
        }
    }

    pub fn random() -> Self {
        const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
        let mut rng = rand::thread_rng();
        let s = (0..ID_LEN)
            .map(|_| ALPHABET[rng.gen_range(0..ALPHABET.len())] as char)
            .collect();
        Self(s)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The host tap device of this VM: `tap_<id>` (12 characters, under IFNAMSIZ).
    pub fn tap_name(&self) -> String {
        format!("tap_{}", self.0)
    }
}

/// A VM name: `[a-z0-9-]`, 1-48 characters, starting with a letter.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct VmName(String);

impl VmName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= NAME_MAX
            && b[0].is_ascii_lowercase()
            && b[b.len() - 1] != b'-'
            && b.iter().all(|&c| is_lower_alnum(c) || c == b'-');
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Name(truncate(s)))
        }
    }

    /// An adjective-noun name such as `cosmic-nova`.
    pub fn random() -> Self {
        let mut rng = rand::thread_rng();
        let adj = ADJECTIVES.choose(&mut rng).copied().unwrap_or("cosmic");
        let noun = NOUNS.choose(&mut rng).copied().unwrap_or("nova");
        Self(format!("{adj}-{noun}"))
    }

    /// A random name not in `taken`; after the word lists are exhausted by
    /// chance, a numeric suffix keeps names unique.
    pub fn random_unique(taken: &dyn Fn(&VmName) -> bool) -> Self {
        for _ in 0..200 {
            let n = Self::random();
            if !taken(&n) {
                return n;
            }
        }
        let mut rng = rand::thread_rng();
        loop {
            let base = Self::random();
            let n = Self(format!("{}-{}", base.0, rng.gen_range(2..10_000)));
            if !taken(&n) {
                return n;
            }
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A console session id (a tmux session name): `[a-z0-9-]`, 1-32 characters.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SessionId(String);

impl SessionId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        let b = s.as_bytes();
        if !b.is_empty()
            && b.len() <= SESSION_MAX
            && b.iter().all(|&c| is_lower_alnum(c) || c == b'-')
        {
            Ok(Self(s.to_owned()))
        } else {
            Err(NameError::Session(truncate(s)))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A checkpoint id, `[a-z0-9]{8}` (the same shape as a VM id).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CheckpointId(String);

impl CheckpointId {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        VmId::parse(s)
            .map(|v| Self(v.0))
            .map_err(|_| NameError::Checkpoint(truncate(s)))
    }

    pub fn random() -> Self {
        Self(VmId::random().0)
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// A checkpoint's name: the rules of a VM name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct CheckpointName(String);

impl CheckpointName {
    pub fn parse(s: &str) -> Result<Self, NameError> {
        VmName::parse(s)
            .map(|v| Self(v.0))
            .map_err(|_| NameError::Checkpoint(truncate(s)))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

/// Shortens hostile input before it is echoed back in an error.
fn truncate(s: &str) -> String {
    s.chars().take(64).collect()
}

macro_rules! string_newtype_impls {
    ($t:ty) => {
        impl fmt::Display for $t {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
        impl TryFrom<String> for $t {
            type Error = NameError;
            fn try_from(s: String) -> Result<Self, NameError> {
                Self::parse(&s)
            }
        }
        impl From<$t> for String {
            fn from(v: $t) -> String {
                v.0
            }
        }
    };
}
string_newtype_impls!(VmId);
string_newtype_impls!(VmName);
string_newtype_impls!(SessionId);
string_newtype_impls!(CheckpointId);
string_newtype_impls!(CheckpointName);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_eight_lowercase_alnum() {
        for _ in 0..100 {
            let id = VmId::random();
            assert!(VmId::parse(id.as_str()).is_ok(), "{id}");
        }
        assert_eq!(VmId::random().tap_name().len(), 12);
        for bad in [
            "",
            "ABCDEFGH",
            "abc",
            "abcdefghi",
            "../../et",
            "abcd efg",
            "abcdéfgh",
        ] {
            assert!(VmId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn names_reject_hostile_input() {
        for good in ["cosmic-nova", "a", "web1", "quantum-reef-2"] {
            assert!(VmName::parse(good).is_ok(), "{good:?} rejected");
        }
        let long = "a".repeat(49);
        for bad in [
            "",
            "../../etc",
            "a;rm -rf /",
            "$(reboot)",
            "Cosmic",
            "-x",
            "x-",
            "a b",
            "ünï",
            "a/b",
            "a\nb",
            &long,
        ] {
            assert!(VmName::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn random_names_come_from_the_word_lists() {
        let n = VmName::random();
        let (a, b) = n.as_str().split_once('-').expect("adjective-noun");
        assert!(ADJECTIVES.contains(&a) && NOUNS.contains(&b), "{n}");
    }

    #[test]
    fn random_unique_avoids_taken_names() {
        // Every plain adjective-noun is taken: the suffix path must still find one.
        let n = VmName::random_unique(&|n: &VmName| n.as_str().matches('-').count() == 1);
        assert_eq!(n.as_str().matches('-').count(), 2, "{n}");
    }

    #[test]
    fn session_ids() {
        assert!(SessionId::parse("main").is_ok());
        assert!(SessionId::parse("s-1").is_ok());
        for bad in ["", "a;b", "$(x)", "A", "a b", &"x".repeat(33)] {
            assert!(SessionId::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn serde_validates() {
        assert!(serde_json::from_str::<VmName>("\"../x\"").is_err());
        let n: VmName = serde_json::from_str("\"cosmic-nova\"").expect("valid");
        assert_eq!(n.as_str(), "cosmic-nova");
    }
}
