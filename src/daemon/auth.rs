//! The API token: made once, kept in `<state>/.token` (0600), compared in
//! constant time by both transports (HTTP and the terminal stream).

use std::fs;
use std::path::Path;

use rand::Rng;

use crate::host;

/// What a client with a missing or wrong token should do.
pub const TOKEN_HINT: &str = "set FCM_TOKEN or copy the daemon's <state>/.token to ~/.fcm-token";

/// Reads or creates the API token (32 random alphanumerics, mode 0600).
/// An existing token file that others can read is refused.
pub fn ensure_token(path: &Path) -> std::io::Result<String> {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(t) = fs::read_to_string(path) {
        let t = t.trim().to_owned();
        if !t.is_empty() {
            let mode = fs::metadata(path)?.permissions().mode() & 0o777;
            if mode & 0o077 != 0 {
                return Err(std::io::Error::new(
                    std::io::ErrorKind::PermissionDenied,
                    format!(
                        "the token file can be read by others (mode {mode:o}); make it private: chmod 600 {}",
                        path.display()
                    ),
                ));
            }
            return Ok(t);
        }
    }
    // rand's ThreadRng is a CSPRNG seeded from the OS.
    let token: String = rand::thread_rng()
        .sample_iter(&rand::distributions::Alphanumeric)
        .take(32)
        .map(char::from)
        .collect();
    host::write_atomic(path, format!("{token}\n").as_bytes(), 0o600)?;
    Ok(token)
}

/// Constant-time comparison of the presented token with the daemon's.
pub fn token_matches(presented: &str, expected: &str) -> bool {
    let (a, b) = (presented.as_bytes(), expected.as_bytes());
    let mut diff = a.len() ^ b.len();
    for i in 0..a.len().max(b.len()) {
        let x = a.get(i).copied().unwrap_or(0);
        let y = b.get(i).copied().unwrap_or(0);
        diff |= usize::from(x ^ y);
    }
    diff == 0 && !b.is_empty()
}

/// The bearer token from an `Authorization` header value.
pub fn bearer(header: Option<&str>) -> Option<&str> {
    let h = header?.trim();
    let (scheme, tok) = h.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| tok.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_compare() {
        assert!(token_matches("abc", "abc"));
        assert!(!token_matches("abd", "abc"));
        assert!(!token_matches("ab", "abc"));
        assert!(!token_matches("", ""));
        assert_eq!(bearer(Some("Bearer xyz")), Some("xyz"));
        assert_eq!(bearer(Some("bearer  xyz ")), Some("xyz"));
        assert_eq!(bearer(Some("Basic xyz")), None);
        assert_eq!(bearer(None), None);
    }

    #[test]
    fn a_token_file_others_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".token");
        ensure_token(&p).expect("token");
        fs::set_permissions(&p, fs::Permissions::from_mode(0o644)).expect("chmod");
        let e = ensure_token(&p).expect_err("too open");
        assert!(e.to_string().contains("chmod 600"), "{e}");
    }

    #[test]
    fn token_is_made_once_with_mode_0600() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().expect("tempdir");
        let p = dir.path().join(".token");
        let a = ensure_token(&p).expect("token");
        let b = ensure_token(&p).expect("token");
        assert_eq!(a, b);
        assert_eq!(a.len(), 32);
        assert!(a.chars().all(|c| c.is_ascii_alphanumeric()));
        assert_eq!(
            fs::metadata(&p).expect("meta").permissions().mode() & 0o777,
            0o600
        );
    }
}
