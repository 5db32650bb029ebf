//! The stored login: the server URL and session token in `<config dir>/session.json`, written
//! with mode 0600 in a 0700 folder (the token is a password), replaced atomically so a crash
//! never leaves half a file; and the URL rules shared by `login` and `--url`.

use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The file inside the config folder.
pub const FILE_NAME: &str = "session.json";

/// A server URL and a token for it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Credentials {
    /// The access URL, without a trailing slash.
    pub url: String,
    /// The session (API) token.
    pub token: String,
    /// Who the token belonged to when it was stored (shown by `logout`).
    #[serde(default)]
    pub username: String,
}

/// `$XDG_CONFIG_HOME/lumie`, else `$HOME/.config/lumie` (what `--config-dir` defaults to).
pub fn default_config_dir(xdg_config_home: Option<&str>, home: Option<&str>) -> Option<PathBuf> {
    match (xdg_config_home, home) {
        (Some(x), _) if Path::new(x).is_absolute() => Some(Path::new(x).join("lumie")),
        (_, Some(h)) if !h.is_empty() => Some(Path::new(h).join(".config").join("lumie")),
        _ => None,
    }
}

/// A server URL as typed, made canonical: a scheme (`https://` when none is given), no path
/// beyond `/`, no trailing slash. Anything else is a usage error naming the URL.
pub fn normalize_url(input: &str) -> Result<String> {
    let s = input.trim();
    if s.is_empty() {
        return Err(Error::Usage("the server URL is empty".into()));
    }
    let with_scheme = if s.contains("://") {
        s.to_string()
    } else {
        format!("https://{s}")
    };
    let parsed = reqwest::Url::parse(&with_scheme)
        .map_err(|e| Error::Usage(format!("{s:?} is not a URL: {e}")))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(Error::Usage(format!(
            "{s:?}: the server URL must be http:// or https://"
        )));
    }
    if parsed.host_str().is_none_or(str::is_empty) {
        return Err(Error::Usage(format!("{s:?} has no host")));
    }
    if parsed.query().is_some() || parsed.fragment().is_some() {
        return Err(Error::Usage(format!(
            "{s:?}: give the server's address only, without ?query or #fragment"
        )));
    }
    Ok(parsed.as_str().trim_end_matches('/').to_string())
}

/// The stored login in `dir`, if any.
pub fn load(dir: &Path) -> Result<Option<Credentials>> {
    let path = dir.join(FILE_NAME);
    match std::fs::read(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes).map(Some).map_err(|e| {
            Error::Usage(format!(
                "{} is not a lumie login file ({e}): run `lumie login <url>` to write it again",
                path.display()
            ))
        }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::file("reading", path)(e)),
    }
}

/// Stores `creds` in `dir` (created 0700), as a 0600 file; returns its path.
pub fn save(dir: &Path, creds: &Credentials) -> Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(Error::file("creating", dir))?;
    std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))
        .map_err(Error::file("setting the mode of", dir))?;
    let path = dir.join(FILE_NAME);
    let tmp = dir.join(format!(".{FILE_NAME}.{}", std::process::id()));
    let body = serde_json::to_vec_pretty(creds).expect("credentials serialize");
    let write = || -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o600)
            .open(&tmp)?;
        // The mode given at creation is masked by the umask; say it again.
        f.set_permissions(std::fs::Permissions::from_mode(0o600))?;
        f.write_all(&body)?;
        f.write_all(b"\n")?;
        f.sync_all()?;
        std::fs::rename(&tmp, &path)
    };
    write().map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        Error::file("writing", &path)(e)
    })?;
    Ok(path)
}

/// Removes the stored login; whether there was one.
pub fn remove(dir: &Path) -> Result<bool> {
    let path = dir.join(FILE_NAME);
    match std::fs::remove_file(&path) {
        Ok(()) => Ok(true),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(false),
        Err(e) => Err(Error::file("removing", path)(e)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_are_made_canonical_or_refused() {
        let cases: &[(&str, Option<&str>)] = &[
            (
                "https://coder.example.com",
                Some("https://coder.example.com"),
            ),
            (
                "https://coder.example.com/",
                Some("https://coder.example.com"),
            ),
            ("coder.example.com", Some("https://coder.example.com")),
            ("http://127.0.0.1:3000/", Some("http://127.0.0.1:3000")),
            ("  http://localhost:8080  ", Some("http://localhost:8080")),
            (
                "https://example.com/lumie/",
                Some("https://example.com/lumie"),
            ),
            ("ftp://example.com", None),
            ("", None),
            ("https://", None),
            ("https://example.com/?x=1", None),
            ("https://example.com/#top", None),
        ];
        for (input, want) in cases {
            let got = normalize_url(input).ok();
            assert_eq!(got.as_deref(), *want, "{input:?}");
        }
    }

    #[test]
    fn config_dir_follows_xdg_then_home() {
        let cases: &[(Option<&str>, Option<&str>, Option<&str>)] = &[
            (Some("/x/cfg"), Some("/home/a"), Some("/x/cfg/lumie")),
            (None, Some("/home/a"), Some("/home/a/.config/lumie")),
            // XDG says a relative value is to be ignored.
            (Some("rel"), Some("/home/a"), Some("/home/a/.config/lumie")),
            (Some(""), Some("/home/a"), Some("/home/a/.config/lumie")),
            (None, None, None),
            (None, Some(""), None),
        ];
        for (xdg, home, want) in cases {
            assert_eq!(
                default_config_dir(*xdg, *home),
                want.map(PathBuf::from),
                "{xdg:?} {home:?}"
            );
        }
    }

    #[test]
    fn saved_login_is_private_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let cfg = dir.path().join("deep/lumie");
        assert_eq!(load(&cfg).unwrap(), None);
        let creds = Credentials {
            url: "https://coder.example.com".into(),
            token: "abc".into(),
            username: "alice".into(),
        };
        let path = save(&cfg, &creds).unwrap();
        let mode = std::fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(load(&cfg).unwrap(), Some(creds.clone()));
        // Saving again replaces it (no leftover temporary file).
        let other = Credentials {
            token: "def".into(),
            ..creds
        };
        save(&cfg, &other).unwrap();
        assert_eq!(load(&cfg).unwrap(), Some(other));
        assert_eq!(std::fs::read_dir(&cfg).unwrap().count(), 1);
        assert!(remove(&cfg).unwrap());
        assert!(!remove(&cfg).unwrap());
        std::fs::write(cfg.join(FILE_NAME), "not json").unwrap();
        let e = load(&cfg).unwrap_err().to_string();
        assert!(e.contains("lumie login"), "{e}");
    }
}
