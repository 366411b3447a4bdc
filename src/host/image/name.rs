//! Image names: `[a-z0-9]` first, then `[a-z0-9._/:-]`, at most 128
//! characters, no `..`; `fcm/base` is the built-in base image.

use std::fmt;

use serde::{Deserialize, Serialize};

use super::ImageError;
use super::base::BASE_IMAGE;

/// A checked image name, as the user gave it (`web`, `acme/web:1.2`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ImageName(String);

impl ImageName {
    /// A name a user may give a new image (not the base image's).
    pub fn new(s: &str) -> Result<Self, ImageError> {
        let n = Self::parse_any(s)?;
        if n.0 == BASE_IMAGE || n.0 == format!("{BASE_IMAGE}:latest") {
            return Err(ImageError::ReservedName(s.to_owned()));
        }
        Ok(n)
    }

    /// Any well-formed name, the base image's included (for look-ups).
    pub fn parse_any(s: &str) -> Result<Self, ImageError> {
        let b = s.as_bytes();
        let ok = !b.is_empty()
            && b.len() <= 128
            && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
            && b.iter()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || b"._/:-".contains(c))
            && !s.contains("..");
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ImageError::BadName(s.to_owned()))
        }
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for ImageName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl TryFrom<String> for ImageName {
    type Error = ImageError;
    fn try_from(s: String) -> Result<Self, ImageError> {
        Self::parse_any(&s)
    }
}

impl From<ImageName> for String {
    fn from(n: ImageName) -> String {
        n.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_checked() {
        for good in [
            "web",
            "acme/web:1.2",
            "a",
            "0x",
            "my-app_v2.1",
            &"a".repeat(128),
        ] {
            assert_eq!(
                ImageName::new(good).map(|n| n.to_string()).ok().as_deref(),
                Some(good)
            );
        }
        for bad in [
            "",
            "Web",
            "-x",
            ".x",
            "/x",
            "a..b",
            "web\n",
            "wéb",
            "a b",
            "a;b",
            &"a".repeat(129),
        ] {
            assert!(
                matches!(ImageName::new(bad), Err(ImageError::BadName(_))),
                "{bad:?} accepted"
            );
        }
        for reserved in ["fcm/base", "fcm/base:latest"] {
            let e = ImageName::new(reserved).expect_err("reserved");
            assert!(e.to_string().contains("built-in"), "{e}");
            assert!(ImageName::parse_any(reserved).is_ok());
        }
        let e = ImageName::new("Bad").expect_err("bad");
        assert!(e.to_string().contains("[a-z0-9]"), "{e}");
    }
}
