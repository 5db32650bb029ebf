//! `lumie config-ssh`: the marked block of `Host lumie.WS` entries in an OpenSSH config, as pure
//! text functions (render the block, put it in or take it out of a file's text, say what
//! changed), and the file write at the edge.
//!
//! Everything outside the markers is kept byte for byte; the block replaces an older one where
//! it stood, or is appended. Rendering is deterministic (workspaces sorted), so running it again
//! changes nothing.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// The first line of the block.
pub const START: &str = "# ------------START-LUMIE-----------";
/// The last line of the block.
pub const END: &str = "# ------------END-LUMIE-------------";
/// The host alias prefix.
pub const HOST_PREFIX: &str = "lumie.";

/// Quotes a word for `sh -c` (what OpenSSH runs a ProxyCommand with) and doubles `%` (OpenSSH
/// expands `%h`, `%p`… in a ProxyCommand).
pub fn proxy_word(word: &str) -> String {
    let safe = !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "/._-+=:,@".contains(c));
    let quoted = if safe {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    };
    quoted.replace('%', "%%")
}

/// The block for these workspaces (names as `lumie ssh` takes them), sorted.
pub fn render_block(lumie: &Path, config_dir: &Path, workspaces: &[String]) -> String {
    let mut names: Vec<&String> = workspaces.iter().collect();
    names.sort();
    names.dedup();
    let mut s = String::new();
    s.push_str(START);
    s.push('\n');
    s.push_str("# Written by `lumie config-ssh`; it rewrites everything between these markers.\n");
    s.push_str("# Remove it with `lumie config-ssh --remove`.\n");
    for name in names {
        s.push_str(&format!("Host {HOST_PREFIX}{name}\n"));
        s.push_str(&format!(
            "  ProxyCommand {} --config-dir {} ssh --stdio {}\n",
            proxy_word(&lumie.to_string_lossy()),
            proxy_word(&config_dir.to_string_lossy()),
            proxy_word(name)
        ));
        // The tunnel is authenticated by the server (TLS and the session token); the workspace's
        // host key is new at every start, so checking it would only ever warn.
        s.push_str("  StrictHostKeyChecking no\n");
        s.push_str("  UserKnownHostsFile /dev/null\n");
        s.push_str("  LogLevel ERROR\n");
    }
    s.push_str(END);
    s.push('\n');
    s
}

/// A config's text split around its block: (before, block, after).
pub fn split(text: &str) -> Result<(&str, Option<&str>, &str), String> {
    let starts: Vec<usize> = line_starts(text, START);
    let ends: Vec<usize> = line_starts(text, END);
    match (starts.as_slice(), ends.as_slice()) {
        ([], []) => Ok((text, None, "")),
        ([s], [e]) if s < e => {
            let after = text[*e..]
                .find('\n')
                .map(|i| e + i + 1)
                .unwrap_or(text.len());
            Ok((&text[..*s], Some(&text[*s..after]), &text[after..]))
        }
        _ => Err(format!(
            "it has {} `{START}` and {} `{END}` lines; fix it by hand so there is one of each \
             (start first), or none",
            starts.len(),
            ends.len()
        )),
    }
}

fn line_starts(text: &str, line: &str) -> Vec<usize> {
    let mut at = 0;
    let mut found = vec![];
    for l in text.split_inclusive('\n') {
        if l.trim_end() == line {
            found.push(at);
        }
        at += l.len();
    }
    found
}

/// The text with `block` in place of the old one (or appended), or without a block for `None`.
pub fn apply(text: &str, block: Option<&str>) -> Result<String, String> {
    let (before, old, after) = split(text)?;
    let mut out = String::with_capacity(text.len() + block.map_or(0, str::len));
    match (old, block) {
        (Some(_), Some(b)) => {
            out.push_str(before);
            out.push_str(b);
            out.push_str(after);
        }
        (Some(_), None) => {
            // Also drop the blank line put before an appended block.
            out.push_str(
                before
                    .strip_suffix("\n\n")
                    .map_or(before, |b| &before[..b.len() + 1]),
            );
            out.push_str(after);
        }
        (None, Some(b)) => {
            out.push_str(before);
            if !before.is_empty() {
                if !before.ends_with('\n') {
                    out.push('\n');
                }
                out.push('\n');
            }
            out.push_str(b);
        }
        (None, None) => out.push_str(text),
    }
    Ok(out)
}

/// The host aliases in a block.
pub fn hosts(block: &str) -> Vec<String> {
    block
        .lines()
        .filter_map(|l| l.strip_prefix("Host "))
        .map(|h| h.trim().to_string())
        .collect()
}

/// What changed between two blocks, for people: `added lumie.a`, `removed lumie.b`, or the
/// lines that differ when the hosts are the same (a moved binary).
pub fn summary(old: Option<&str>, new: Option<&str>) -> Vec<String> {
    let (o, n) = (
        old.map(hosts).unwrap_or_default(),
        new.map(hosts).unwrap_or_default(),
    );
    let mut out: Vec<String> = vec![];
    out.extend(
        n.iter()
            .filter(|h| !o.contains(h))
            .map(|h| format!("+ Host {h}")),
    );
    out.extend(
        o.iter()
            .filter(|h| !n.contains(h))
            .map(|h| format!("- Host {h}")),
    );
    if out.is_empty() && old != new {
        let (ol, nl): (Vec<&str>, Vec<&str>) = (
            old.unwrap_or("").lines().collect(),
            new.unwrap_or("").lines().collect(),
        );
        out.extend(
            ol.iter()
                .filter(|l| !nl.contains(l))
                .map(|l| format!("- {l}")),
        );
        out.extend(
            nl.iter()
                .filter(|l| !ol.contains(l))
                .map(|l| format!("+ {l}")),
        );
    }
    out
}

/// Reads a config file ("" when there is none yet).
pub fn read(path: &Path) -> Result<String> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(s),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(String::new()),
        Err(e) => Err(Error::file("reading", path)(e)),
    }
}

/// Writes a config file atomically, through a symlink to its target, keeping its mode (0600 for
/// a new file, in a 0700 folder when the folder is new).
pub fn write(path: &Path, text: &str) -> Result<PathBuf> {
    let target = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_path_buf());
    let dir = target
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."));
    if !dir.exists() {
        std::fs::create_dir_all(&dir).map_err(Error::file("creating", &dir))?;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(Error::file("setting the mode of", &dir))?;
    }
    let mode = std::fs::metadata(&target)
        .map(|m| m.permissions().mode() & 0o7777)
        .unwrap_or(0o600);
    let name = target
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_else(|| "config".into());
    let tmp = dir.join(format!(".{name}.lumie-{}", std::process::id()));
    let result = std::fs::write(&tmp, text)
        .and_then(|()| std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(mode)))
        .and_then(|()| std::fs::rename(&tmp, &target));
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(Error::file("writing", &target)(e));
    }
    Ok(target)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn block(names: &[&str]) -> String {
        let names: Vec<String> = names.iter().map(|s| s.to_string()).collect();
        render_block(
            Path::new("/usr/bin/lumie"),
            Path::new("/home/a/.config/lumie"),
            &names,
        )
    }

    #[test]
    fn block_has_one_entry_per_workspace_sorted() {
        let b = block(&["web", "dev", "dev"]);
        assert_eq!(hosts(&b), ["lumie.dev", "lumie.web"]);
        assert!(b.contains(
            "Host lumie.dev\n  ProxyCommand /usr/bin/lumie --config-dir /home/a/.config/lumie ssh --stdio dev\n  StrictHostKeyChecking no\n  UserKnownHostsFile /dev/null\n  LogLevel ERROR\n"
        ), "{b}");
        assert!(b.starts_with(START) && b.ends_with(&format!("{END}\n")));
        assert_eq!(block(&["dev", "web"]), block(&["web", "dev"]));
    }

    #[test]
    fn proxy_words_are_quoted_for_sh_and_ssh() {
        let cases = [
            ("/usr/bin/lumie", "/usr/bin/lumie"),
            ("/home/a b/lumie", "'/home/a b/lumie'"),
            ("/tmp/it's", r"'/tmp/it'\''s'"),
            ("/tmp/100%", "'/tmp/100%%'"),
            ("dev", "dev"),
            ("", "''"),
        ];
        for (w, want) in cases {
            assert_eq!(proxy_word(w), want, "{w:?}");
        }
    }

    #[test]
    fn applying_is_idempotent_keeps_the_rest_and_removes_cleanly() {
        let b1 = block(&["dev"]);
        let b2 = block(&["dev", "web"]);
        let user = "Host *\n  ServerAliveInterval 30\n\nHost work\n  HostName 10.0.0.1\n";
        let cases: &[(&str, &str)] = &[
            ("empty file", ""),
            ("user config", user),
            ("no final newline", "Host x\n  User y"),
        ];
        for (name, original) in cases {
            let with = apply(original, Some(&b1)).unwrap();
            assert!(with.contains(&b1), "{name}");
            assert!(with.starts_with(original), "{name}: the rest kept");
            assert_eq!(apply(&with, Some(&b1)).unwrap(), with, "{name}: idempotent");
            let updated = apply(&with, Some(&b2)).unwrap();
            assert_eq!(
                hosts(split(&updated).unwrap().1.unwrap()),
                ["lumie.dev", "lumie.web"]
            );
            let removed = apply(&updated, None).unwrap();
            let want = if original.ends_with('\n') || original.is_empty() {
                original.to_string()
            } else {
                format!("{original}\n")
            };
            assert_eq!(removed, want, "{name}: removal gives the file back");
            assert_eq!(apply(&removed, None).unwrap(), removed, "{name}");
        }
        // A block in the middle is replaced where it stands.
        let middle = format!("Host a\n{b1}Host b\n");
        let replaced = apply(&middle, Some(&b2)).unwrap();
        assert_eq!(replaced, format!("Host a\n{b2}Host b\n"));
        assert_eq!(apply(&replaced, None).unwrap(), "Host a\nHost b\n");
    }

    #[test]
    fn broken_markers_are_refused_not_guessed() {
        for text in [
            format!("{START}\nHost lumie.x\n"),
            format!("{END}\n{START}\n"),
            format!("{START}\n{END}\n{START}\n{END}\n"),
        ] {
            assert!(apply(&text, None).is_err(), "{text}");
            assert!(apply(&text, Some(&block(&["a"]))).is_err(), "{text}");
        }
    }

    #[test]
    fn summaries_name_hosts_or_lines() {
        let (a, ab) = (block(&["a"]), block(&["a", "b"]));
        assert_eq!(summary(Some(&a), Some(&ab)), ["+ Host lumie.b"]);
        assert_eq!(summary(Some(&ab), Some(&a)), ["- Host lumie.b"]);
        assert_eq!(summary(None, Some(&a)), ["+ Host lumie.a"]);
        assert_eq!(summary(Some(&a), Some(&a)), Vec::<String>::new());
        let moved = render_block(
            Path::new("/opt/lumie"),
            Path::new("/home/a/.config/lumie"),
            &["a".into()],
        );
        let s = summary(Some(&a), Some(&moved));
        assert_eq!(s.len(), 2, "{s:?}");
        assert!(s[1].starts_with("+   ProxyCommand /opt/lumie"), "{s:?}");
    }

    #[test]
    fn writes_keep_mode_and_follow_symlinks() {
        let dir = tempfile::tempdir().unwrap();
        let ssh = dir.path().join(".ssh");
        let cfg = ssh.join("config");
        write(&cfg, "Host a\n").unwrap();
        assert_eq!(
            std::fs::metadata(&ssh).unwrap().permissions().mode() & 0o777,
            0o700
        );
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o600
        );
        std::fs::set_permissions(&cfg, std::fs::Permissions::from_mode(0o644)).unwrap();
        write(&cfg, "Host b\n").unwrap();
        assert_eq!(
            std::fs::metadata(&cfg).unwrap().permissions().mode() & 0o777,
            0o644
        );
        let link = dir.path().join("link");
        std::os::unix::fs::symlink(&cfg, &link).unwrap();
        write(&link, "Host c\n").unwrap();
        assert!(
            std::fs::symlink_metadata(&link)
                .unwrap()
                .file_type()
                .is_symlink()
        );
        assert_eq!(read(&cfg).unwrap(), "Host c\n");
        assert_eq!(read(&dir.path().join("none")).unwrap(), "");
    }
}
