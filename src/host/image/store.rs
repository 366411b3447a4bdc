//! The image store, `<state>/images/` (0700): one directory per image,
//! named by a hash of its name (names hold `/` and `:`), holding
//! `rootfs.img` and `image.json` ([`ImageMeta`]). An image is made in
//! `.new-<random>/`, synced, and renamed into place (a replaced one is
//! renamed aside to `.trash-<random>` first and then removed), so a crash
//! leaves an image whole or absent; `open` removes the leftovers.

use std::fs;
use std::io::Write;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use fcm_proto::ImageConfig;
use rand::Rng;
use serde::{Deserialize, Serialize};

use super::convert::Tools;
use super::{ImageError, ImageName};

/// How an image came to be.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Source {
    Build,
    OciArchive,
    DockerArchive,
    RootfsTar,
}

/// An image's record, `image.json` beside its `rootfs.img`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ImageMeta {
    pub name: ImageName,
    /// `sha256:…`, the builder's image id.
    pub digest: String,
    /// The allocated size of `rootfs.img`.
    pub size_bytes: u64,
    /// Unix seconds.
    pub created_at: u64,
    pub source: Source,
    pub config: ImageConfig,
    pub tools: Tools,
}

/// `<state>/images/`.
#[derive(Debug)]
pub struct Store {
    root: PathBuf,
    /// Held while an image is renamed into or out of place.
    commit: Mutex<()>,
}

fn random() -> String {
    format!("{:016x}", rand::thread_rng().r#gen::<u64>())
}

fn dir_name(name: &ImageName) -> String {
    let d = ring::digest::digest(&ring::digest::SHA256, name.as_str().as_bytes());
    d.as_ref()[..16]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect()
}

fn sync_dir(dir: &Path) -> Result<(), ImageError> {
    fs::File::open(dir)
        .and_then(|f| f.sync_all())
        .map_err(ImageError::io("could not sync", dir))
}

impl Store {
    /// Opens (making it 0700 if needed) `<state_dir>/images`, removing
    /// what a crash mid-build or mid-replace left (`.new-*`, `.trash-*`).
    pub fn open(state_dir: &Path) -> Result<Self, ImageError> {
        let root = state_dir.join("images");
        fs::create_dir_all(&root).map_err(ImageError::io("could not make", &root))?;
        crate::host::set_mode(&root, 0o700).map_err(ImageError::io("could not protect", &root))?;
        let entries = fs::read_dir(&root).map_err(ImageError::io("could not read", &root))?;
        for e in entries.flatten() {
            let n = e.file_name();
            let n = n.to_string_lossy();
            if n.starts_with(".new-") || n.starts_with(".trash-") {
                let _ = fs::remove_dir_all(e.path());
            }
        }
        Ok(Self {
            root,
            commit: Mutex::new(()),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.root
    }

    /// Every stored image, by name.
    pub fn list(&self) -> Vec<ImageMeta> {
        let mut out: Vec<ImageMeta> = fs::read_dir(&self.root)
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| !e.file_name().to_string_lossy().starts_with('.'))
            .filter_map(|e| fs::read(e.path().join("image.json")).ok())
            .filter_map(|b| serde_json::from_slice(&b).ok())
            .collect();
        out.sort_by(|a, b| a.name.cmp(&b.name));
        out
    }

    fn read(&self, name: &ImageName) -> Option<ImageMeta> {
        let b = fs::read(self.root.join(dir_name(name)).join("image.json")).ok()?;
        serde_json::from_slice::<ImageMeta>(&b)
            .ok()
            .filter(|m| m.name == *name)
    }

    /// The image of this name: exactly, else `name:latest`, else the name
    /// without its `:latest`.
    pub fn get(&self, name: &str) -> Option<ImageMeta> {
        let exact = ImageName::parse_any(name).ok()?;
        self.read(&exact)
            .or_else(|| {
                ImageName::parse_any(&format!("{name}:latest"))
                    .ok()
                    .and_then(|n| self.read(&n))
            })
            .or_else(|| {
                name.strip_suffix(":latest")
                    .and_then(|n| ImageName::parse_any(n).ok())
                    .and_then(|n| self.read(&n))
            })
    }

    /// The image's `rootfs.img`.
    pub fn rootfs(&self, meta: &ImageMeta) -> PathBuf {
        self.root.join(dir_name(&meta.name)).join("rootfs.img")
    }

    /// Removes an image (the daemon checks first that no VM uses it).
    pub fn remove(&self, name: &str) -> Result<ImageMeta, ImageError> {
        let meta = self
            .get(name)
            .ok_or_else(|| ImageError::NotFound(name.to_owned()))?;
        let _held = self.commit.lock().unwrap_or_else(|p| p.into_inner());
        let dir = self.root.join(dir_name(&meta.name));
        let trash = self.root.join(format!(".trash-{}", random()));
        fs::rename(&dir, &trash).map_err(ImageError::io("could not remove", &dir))?;
        let _ = sync_dir(&self.root);
        let _ = fs::remove_dir_all(&trash);
        Ok(meta)
    }

    /// A new stage directory, `.new-<random>/` (0700), removed on drop
    /// unless committed.
    pub fn stage(&self) -> Result<Stage<'_>, ImageError> {
        let dir = self.root.join(format!(".new-{}", random()));
        fs::create_dir(&dir).map_err(ImageError::io("could not make", &dir))?;
        crate::host::set_mode(&dir, 0o700).map_err(ImageError::io("could not protect", &dir))?;
        Ok(Stage { store: self, dir })
    }
}

/// An image being made; gone on drop unless [`Stage::commit`]ted.
#[derive(Debug)]
pub struct Stage<'a> {
    store: &'a Store,
    dir: PathBuf,
}

impl Stage<'_> {
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes `image.json` beside the stage's `rootfs.img`, syncs both and
    /// renames the stage into place (replacing an image of the same name).
    pub fn commit(
        self,
        name: &ImageName,
        source: Source,
        digest: String,
        config: ImageConfig,
        tools: Tools,
    ) -> Result<ImageMeta, ImageError> {
        let img = self.dir.join("rootfs.img");
        let f = fs::File::open(&img).map_err(ImageError::io("could not open", &img))?;
        f.sync_all()
            .map_err(ImageError::io("could not sync", &img))?;
        let size_bytes = f
            .metadata()
            .map_err(ImageError::io("could not stat", &img))?
            .blocks()
            * 512;
        let meta = ImageMeta {
            name: name.clone(),
            digest,
            size_bytes,
            created_at: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_secs())
                .unwrap_or_default(),
            source,
            config,
            tools,
        };
        let json_path = self.dir.join("image.json");
        let json =
            serde_json::to_vec_pretty(&meta).map_err(|e| ImageError::BadOutput(e.to_string()))?;
        let mut jf =
            fs::File::create(&json_path).map_err(ImageError::io("could not write", &json_path))?;
        jf.write_all(&json)
            .and_then(|()| jf.sync_all())
            .map_err(ImageError::io("could not write", &json_path))?;
        sync_dir(&self.dir)?;
        let root = &self.store.root;
        let dest = root.join(dir_name(name));
        let _held = self.store.commit.lock().unwrap_or_else(|p| p.into_inner());
        let trash = root.join(format!(".trash-{}", random()));
        let replaced = match fs::rename(&dest, &trash) {
            Ok(()) => true,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
            Err(e) => return Err(ImageError::io("could not replace", &dest)(e)),
        };
        if let Err(e) = fs::rename(&self.dir, &dest) {
            if replaced {
                let _ = fs::rename(&trash, &dest);
            }
            return Err(ImageError::io("could not store", &dest)(e));
        }
        sync_dir(root)?;
        if replaced {
            let _ = fs::remove_dir_all(&trash);
        }
        Ok(meta)
    }
}

impl Drop for Stage<'_> {
    fn drop(&mut self) {
        // After a commit the stage was renamed away: nothing is there.
        let _ = fs::remove_dir_all(&self.dir);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stage_image(store: &Store, name: &str, cmd: &str) -> ImageMeta {
        let s = store.stage().expect("stage");
        fs::write(s.dir().join("rootfs.img"), b"ext4").expect("img");
        s.commit(
            &ImageName::new(name).expect("name"),
            Source::Build,
            "sha256:00".into(),
            ImageConfig {
                cmd: vec![cmd.into()],
                ..Default::default()
            },
            Tools::default(),
        )
        .expect("commit")
    }

    #[test]
    fn leftovers_go_at_open_and_images_are_whole() {
        let t = tempfile::tempdir().expect("tmp");
        let store = Store::open(t.path()).expect("open");
        // A crash mid-build: a stage and a half-replaced image's trash.
        let half = store.dir().join(".new-deadbeef");
        fs::create_dir(&half).expect("mk");
        fs::write(half.join("rootfs.img"), b"half").expect("w");
        fs::create_dir(store.dir().join(".trash-1")).expect("mk");
        let store = Store::open(t.path()).expect("reopen");
        let left: Vec<_> = fs::read_dir(store.dir()).expect("ls").flatten().collect();
        assert!(left.is_empty(), "{left:?}");
        let mode = fs::metadata(store.dir()).expect("stat").mode() & 0o777;
        assert_eq!(mode, 0o700);
        // A stage dropped without commit (a failed build) leaves nothing.
        let s = store.stage().expect("stage");
        let p = s.dir().to_path_buf();
        drop(s);
        assert!(!p.exists());
        assert!(store.list().is_empty());
    }

    #[test]
    fn names_resolve_replace_and_remove() {
        let t = tempfile::tempdir().expect("tmp");
        let store = Store::open(t.path()).expect("open");
        stage_image(&store, "acme/web:latest", "one");
        stage_image(&store, "plain", "p");
        assert_eq!(store.get("acme/web").expect("by short").config.cmd, ["one"]);
        assert_eq!(
            store.get("plain:latest").expect("by long").name.as_str(),
            "plain"
        );
        assert!(store.get("acme").is_none() && store.get("../x").is_none());
        stage_image(&store, "acme/web:latest", "two");
        let all = store.list();
        assert_eq!(all.len(), 2);
        assert_eq!(
            store.get("acme/web:latest").expect("get").config.cmd,
            ["two"]
        );
        let rootfs = store.rootfs(&all[0]);
        assert_eq!(fs::read(&rootfs).expect("rootfs"), b"ext4");
        assert!(rootfs.starts_with(store.dir()));
        store.remove("acme/web").expect("rm");
        assert!(store.get("acme/web").is_none());
        assert!(!rootfs.exists());
        assert!(matches!(
            store.remove("acme/web"),
            Err(ImageError::NotFound(_))
        ));
        let left: Vec<_> = fs::read_dir(store.dir()).expect("ls").flatten().collect();
        assert_eq!(left.len(), 1, "{left:?}");
    }
}
