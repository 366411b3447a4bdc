//! The image a VM was made from (`fcm image build|import`): its
//! [`ImageConfig`], which the guest's boot puts at
//! [`fcm_proto::IMAGE_CONFIG_PATH`]. fcm's init runs its `entrypoint` +
//! `cmd` as the VM's service; the agent takes its `env`, `workdir` and
//! `user` as the defaults of every `Exec`, as `docker exec` does. A VM of
//! the base image has no such file, and nothing here applies to it.

use fcm_proto::ImageConfig;
use std::io::ErrorKind;
use std::path::Path;

/// The image config at `path`: `Ok(None)` when there is none (not an
/// image VM), an error (a sentence) when it cannot be read or parsed.
pub fn load(path: &Path) -> Result<Option<ImageConfig>, String> {
    let text = match std::fs::read(path) {
        Ok(t) => t,
        Err(e) if e.kind() == ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    serde_json::from_slice(&text)
        .map(Some)
        .map_err(|e| format!("{} is not an image config: {e}", path.display()))
}

/// The image's `env` as pairs, in order; an entry without `=` or with an
/// empty name, or holding a NUL, is skipped (the OCI spec calls it invalid).
pub fn env_pairs(image: &ImageConfig) -> Vec<(String, String)> {
    image
        .env
        .iter()
        .filter_map(|entry| {
            let (k, v) = entry.split_once('=')?;
            (!k.is_empty() && !entry.contains('\0')).then(|| (k.to_string(), v.to_string()))
        })
        .collect()
}

/// Sets `name` in `env` to `value`: in place when it is there (the order
/// stays), else at the end.
pub fn set_env(env: &mut Vec<(String, String)>, name: &str, value: &str) {
    match env.iter_mut().find(|(k, _)| k == name) {
        Some(slot) => slot.1 = value.to_string(),
        None => env.push((name.to_string(), value.to_string())),
    }
}

/// `base`, then each layer over it in turn (a later one wins).
pub fn layer_env(
    base: Vec<(String, String)>,
    layers: &[&[(String, String)]],
) -> Vec<(String, String)> {
    let mut env = base;
    for layer in layers {
        for (k, v) in *layer {
            set_env(&mut env, k, v);
        }
    }
    env
}

/// The service's argv: `entrypoint` then `cmd`; none when both are empty.
pub fn service_argv(image: &ImageConfig) -> Option<Vec<String>> {
    let argv: Vec<String> = image.entrypoint.iter().chain(&image.cmd).cloned().collect();
    (!argv.is_empty()).then_some(argv)
}

/// The image's working directory: its `workdir`, `/` when unset or empty.
pub fn workdir(image: &ImageConfig) -> &str {
    match image.workdir.as_deref() {
        Some(w) if !w.is_empty() => w,
        _ => "/",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn image(json: &str) -> ImageConfig {
        serde_json::from_str(json).expect("an image config")
    }

    #[test]
    fn the_config_is_read_from_json_with_defaults() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("image.json");
        assert_eq!(load(&path), Ok(None), "no file: not an image VM");
        std::fs::write(
            &path,
            r#"{"cmd":["httpd","-f"],"env":["A=1"],"workdir":"/www"}"#,
        )
        .expect("write");
        let got = load(&path).expect("parsed").expect("present");
        assert_eq!(got.cmd, ["httpd", "-f"]);
        assert!(got.entrypoint.is_empty());
        assert_eq!(got.user, None);
        assert_eq!(workdir(&got), "/www");
        std::fs::write(&path, "{not json").expect("write");
        assert!(load(&path).is_err());
        assert_eq!(workdir(&image("{}")), "/");
    }

    #[test]
    fn the_service_is_entrypoint_then_cmd() {
        assert_eq!(service_argv(&image("{}")), None);
        assert_eq!(
            service_argv(&image(
                r#"{"entrypoint":["/bin/tini","--"],"cmd":["app","-v"]}"#
            )),
            Some(vec![
                "/bin/tini".into(),
                "--".into(),
                "app".into(),
                "-v".into()
            ])
        );
        assert_eq!(
            service_argv(&image(r#"{"entrypoint":["/app"]}"#)),
            Some(vec!["/app".into()])
        );
    }

    #[test]
    fn env_layers_and_the_later_one_wins() {
        let img = image(r#"{"env":["PATH=/opt/bin","GREETING=hi","BAD","=x","EMPTY="]}"#);
        let pairs = env_pairs(&img);
        assert_eq!(
            pairs,
            [
                ("PATH".to_string(), "/opt/bin".to_string()),
                ("GREETING".into(), "hi".into()),
                ("EMPTY".into(), "".into())
            ]
        );
        let base = vec![
            ("PATH".to_string(), "/bin".to_string()),
            ("HOME".into(), "/root".into()),
        ];
        let request = vec![("GREETING".to_string(), "hello".to_string())];
        let env = layer_env(base, &[&pairs, &request]);
        assert_eq!(
            env,
            [
                ("PATH".to_string(), "/opt/bin".to_string()),
                ("HOME".into(), "/root".into()),
                ("GREETING".into(), "hello".into()),
                ("EMPTY".into(), "".into())
            ]
        );
    }
}
