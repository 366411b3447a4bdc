//! The daemon's TLS identity: a self-signed certificate made on first run
//! and kept in `<state>/.tls/` (`cert.pem` 0644, `key.pem` 0600, the
//! directory 0700), and the rustls server configuration both ports use.
//! Clients pin the certificate's fingerprint (`wire::tls::fingerprint`),
//! so its names do not matter; it names `localhost`, the host name and
//! the listening addresses for tools that look.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use thiserror::Error;

use crate::config::DaemonConfig;
use crate::host;
use crate::wire::tls::{fingerprint, provider};

#[derive(Debug, Error)]
pub enum TlsError {
    #[error("could not write the daemon's TLS certificate in {path}")]
    Write {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("could not make a TLS certificate: {0}")]
    Generate(String),
    #[error("the daemon's TLS certificate or key in {path} is not usable: {message}")]
    Load { path: PathBuf, message: String },
}

/// The certificate and key the daemon serves.
pub struct Identity {
    pub cert: CertificateDer<'static>,
    key: PrivateKeyDer<'static>,
    pub fingerprint: String,
}

impl Identity {
    /// The rustls configuration of both ports.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, TlsError> {
        let load = |message: String| TlsError::Load {
            path: PathBuf::new(),
            message,
        };
        let cfg = rustls::ServerConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| load(e.to_string()))?
            .with_no_client_auth()
            .with_single_cert(vec![self.cert.clone()], self.key.clone_key())
            .map_err(|e| load(e.to_string()))?;
        Ok(Arc::new(cfg))
    }
}

fn paths(dir: &Path) -> (PathBuf, PathBuf) {
    (dir.join("cert.pem"), dir.join("key.pem"))
}

/// Loads the certificate from `cfg.tls_dir()`, making one if there is none
/// (or only half of one).
pub fn ensure_identity(cfg: &DaemonConfig) -> Result<Identity, TlsError> {
    let dir = cfg.tls_dir();
    let (cert_path, key_path) = paths(&dir);
    if cert_path.is_file() && key_path.is_file() {
        return load(&cert_path, &key_path);
    }
    let write_err = |path: &Path| {
        let path = path.to_owned();
        move |source| TlsError::Write { path, source }
    };
    fs::create_dir_all(&dir).map_err(write_err(&dir))?;
    host::set_mode(&dir, 0o700).map_err(write_err(&dir))?;
    let mut names = vec!["localhost".to_owned()];
    if let Ok(h) = fs::read_to_string("/proc/sys/kernel/hostname") {
        let h = h.trim();
        if !h.is_empty() && h != "localhost" {
            names.push(h.to_owned());
        }
    }
    for a in [cfg.listen, cfg.stream_listen] {
        if !a.ip().is_unspecified() && !names.contains(&a.ip().to_string()) {
            names.push(a.ip().to_string());
        }
    }
    let made =
        rcgen::generate_simple_self_signed(names).map_err(|e| TlsError::Generate(e.to_string()))?;
    // The key first: a crash between the two writes leaves no certificate,
    // so the next start makes a whole new pair.
    host::write_atomic(&key_path, made.key_pair.serialize_pem().as_bytes(), 0o600)
        .map_err(write_err(&key_path))?;
    host::write_atomic(&cert_path, made.cert.pem().as_bytes(), 0o644)
        .map_err(write_err(&cert_path))?;
    load(&cert_path, &key_path)
}

fn load(cert_path: &Path, key_path: &Path) -> Result<Identity, TlsError> {
    let bad = |path: &Path, message: String| TlsError::Load {
        path: path.to_owned(),
        message,
    };
    let cert =
        CertificateDer::from_pem_file(cert_path).map_err(|e| bad(cert_path, e.to_string()))?;
    let key = PrivateKeyDer::from_pem_file(key_path).map_err(|e| bad(key_path, e.to_string()))?;
    Ok(Identity {
        fingerprint: fingerprint(&cert),
        cert,
        key,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_certificate_is_made_once_and_its_key_is_private() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let cfg = DaemonConfig {
            state_dir: dir.path().to_owned(),
            ..Default::default()
        };
        let a = ensure_identity(&cfg).expect("make");
        let b = ensure_identity(&cfg).expect("load");
        assert_eq!(a.fingerprint, b.fingerprint);
        a.server_config().expect("server config");
        let mode = |p: PathBuf| fs::metadata(p).expect("meta").permissions().mode() & 0o777;
        assert_eq!(mode(cfg.tls_dir().join("key.pem")), 0o600);
        assert_eq!(mode(cfg.tls_dir()), 0o700);
        fs::remove_file(cfg.tls_dir().join("cert.pem")).expect("rm");
        let c = ensure_identity(&cfg).expect("remake");
        assert_ne!(a.fingerprint, c.fingerprint);
    }
}
