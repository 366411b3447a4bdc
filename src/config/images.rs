//! `"images": {...}`: building and importing images (docs/images.md).

use std::path::PathBuf;

use serde::{Deserialize, Serialize};

/// Which program builds a Dockerfile.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageBuilder {
    /// `buildah bud --isolation chroot`, no daemon needed.
    #[default]
    Buildah,
    /// `podman build`, into the same storage buildah reads.
    Podman,
    /// `docker build`, then `docker save` into the import path.
    Docker,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ImagesConfig {
    pub builder: ImageBuilder,
    /// containers/storage's root for fcm's builds (`--root`); unset: the
    /// builder's default storage.
    pub storage: Option<PathBuf>,
    /// Deadline of each builder run (a build, a pull); killed past it.
    pub build_timeout_secs: u64,
    /// The largest upload (build context or archive) the daemon receives.
    pub max_upload_bytes: u64,
    /// The largest an image may unpack to (every layer counted).
    pub max_unpacked_bytes: u64,
}

impl Default for ImagesConfig {
    fn default() -> Self {
        Self {
            builder: ImageBuilder::Buildah,
            storage: None,
            build_timeout_secs: 1800,
            max_upload_bytes: 4 << 30,
            max_unpacked_bytes: 8 << 30,
        }
    }
}

impl ImagesConfig {
    /// What is wrong with these values, if anything.
    pub fn problem(&self) -> Option<&'static str> {
        if self.build_timeout_secs == 0 {
            return Some("images.build_timeout_secs must be at least 1");
        }
        if self.max_upload_bytes < 1 << 20 || self.max_unpacked_bytes < 1 << 20 {
            return Some(
                "images.max_upload_bytes and images.max_unpacked_bytes must be at least 1 MiB",
            );
        }
        if self.storage.as_ref().is_some_and(|s| !s.is_absolute()) {
            return Some("images.storage must be an absolute path");
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_and_a_file() {
        let c = ImagesConfig::default();
        assert_eq!(c.problem(), None);
        assert_eq!(
            (c.max_upload_bytes, c.max_unpacked_bytes),
            (4 << 30, 8 << 30)
        );
        let c: ImagesConfig = serde_json::from_str(
            r#"{"builder":"podman","storage":"/srv/fcm-images","build_timeout_secs":60}"#,
        )
        .expect("parse");
        assert_eq!(
            (c.builder, c.build_timeout_secs),
            (ImageBuilder::Podman, 60)
        );
        assert_eq!(c.problem(), None);
        assert!(serde_json::from_str::<ImagesConfig>(r#"{"builder":"kaniko"}"#).is_err());
        let bad = ImagesConfig {
            build_timeout_secs: 0,
            ..Default::default()
        };
        assert!(bad.problem().is_some());
        let rel = ImagesConfig {
            storage: Some("rel".into()),
            ..Default::default()
        };
        assert!(rel.problem().is_some());
    }
}
