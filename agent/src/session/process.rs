//! Starting the user's shell for a session: a login shell on a PTY (terminal, SSH `shell` with
//! `pty-req`, SSH `exec` with a PTY) or `shell -c COMMAND` on pipes (SSH `exec`), with the
//! session's environment.

use std::ffi::OsString;
use std::path::PathBuf;
use std::process::{ExitStatus, Stdio};

/// Variables never handed to a session's shell: the agent's own credentials.
const HIDDEN_ENV: &[&str] = &["CODER_AGENT_TOKEN"];

/// Who the shell runs as and where.
#[derive(Clone, Debug)]
pub struct ShellInfo {
    /// The login shell.
    pub shell: PathBuf,
    /// Home directory (the working directory).
    pub home: PathBuf,
    /// User name.
    pub user: String,
}

impl ShellInfo {
    /// The current user's shell and home: `$SHELL` and `$HOME`, else `/etc/passwd`, else
    /// `/bin/sh` and `/`.
    pub fn detect() -> ShellInfo {
        let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
        let user = std::env::var("USER").ok();
        let uid = std::fs::metadata("/proc/self")
            .ok()
            .map(|m| std::os::unix::fs::MetadataExt::uid(&m));
        let entry = passwd_entry(&passwd, user.as_deref(), uid);
        let shell = std::env::var_os("SHELL")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| entry.as_ref().map(|e| PathBuf::from(&e.2)))
            .filter(|p| p.exists())
            .unwrap_or_else(|| PathBuf::from("/bin/sh"));
        let home = std::env::var_os("HOME")
            .filter(|s| !s.is_empty())
            .map(PathBuf::from)
            .or_else(|| entry.as_ref().map(|e| PathBuf::from(&e.1)))
            .unwrap_or_else(|| PathBuf::from("/"));
        let user = user
            .or_else(|| entry.map(|e| e.0))
            .unwrap_or_else(|| "coder".into());
        ShellInfo { shell, home, user }
    }

    /// `-bash` for `/bin/bash`: what makes a shell a login shell.
    fn login_arg0(&self) -> OsString {
        let name = self
            .shell
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_else(|| "sh".into());
        format!("-{name}").into()
    }

    /// The environment of a session: the agent's own minus its credentials, then the user's
    /// basics, then what the client asked for.
    fn env(&self, term: Option<&str>, extra: &[(String, String)]) -> Vec<(OsString, OsString)> {
        let mut env: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !HIDDEN_ENV.iter().any(|h| k == h))
            .collect();
        if term.is_none() {
            env.retain(|(k, _)| k != "TERM");
        }
        let mut set = |k: &str, v: OsString| {
            env.retain(|(ek, _)| ek != k);
            env.push((k.into(), v));
        };
        set("HOME", self.home.clone().into());
        set("USER", self.user.clone().into());
        set("LOGNAME", self.user.clone().into());
        set("SHELL", self.shell.clone().into());
        if std::env::var_os("LANG").is_none() {
            set("LANG", "C.UTF-8".into());
        }
        if let Some(t) = term {
            set("TERM", t.into());
        }
        for (k, v) in extra {
            set(k, v.into());
        }
        env
    }

    /// A login shell, or `shell -c command`, on a new PTY of `rows` × `cols`.
    pub fn spawn_pty(
        &self,
        command: Option<&str>,
        term: &str,
        rows: u16,
        cols: u16,
        extra_env: &[(String, String)],
    ) -> std::io::Result<(pty_process::Pty, tokio::process::Child)> {
        let (pty, pts) = pty_process::open().map_err(std::io::Error::other)?;
        pty.resize(pty_process::Size::new(rows.max(1), cols.max(1)))
            .map_err(std::io::Error::other)?;
        let mut cmd = pty_process::Command::new(&self.shell);
        cmd = match command {
            Some(c) => cmd.arg("-c").arg(c),
            None => cmd.arg0(self.login_arg0()),
        };
        let child = cmd
            .env_clear()
            .envs(self.env(Some(term), extra_env))
            .current_dir(self.working_dir())
            .kill_on_drop(true)
            .spawn(pts)
            .map_err(std::io::Error::other)?;
        Ok((pty, child))
    }

    /// `shell -c command`, or without a command a login shell, on pipes (stdin, stdout,
    /// stderr): `ssh -T` and IDEs that drive a shell without a terminal.
    pub fn spawn_pipes(
        &self,
        command: Option<&str>,
        extra_env: &[(String, String)],
    ) -> std::io::Result<tokio::process::Child> {
        let mut cmd = tokio::process::Command::new(&self.shell);
        match command {
            Some(c) => cmd.arg("-c").arg(c),
            None => cmd.arg0(self.login_arg0()),
        };
        cmd.env_clear()
            .envs(self.env(None, extra_env))
            .current_dir(self.working_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
    }

    fn working_dir(&self) -> PathBuf {
        if self.home.is_dir() {
            self.home.clone()
        } else {
            PathBuf::from("/")
        }
    }
}

/// The `(name, home, shell)` of `user` (else of `uid`) in an `/etc/passwd` text.
pub fn passwd_entry(
    passwd: &str,
    user: Option<&str>,
    uid: Option<u32>,
) -> Option<(String, String, String)> {
    let entries: Vec<Vec<&str>> = passwd
        .lines()
        .map(|l| l.split(':').collect::<Vec<_>>())
        .filter(|f| f.len() >= 7)
        .collect();
    let by_name = user.and_then(|u| entries.iter().find(|f| f[0] == u));
    let by_uid = || {
        let uid = uid?.to_string();
        entries.iter().find(|f| f[2] == uid)
    };
    let f = by_name.or_else(by_uid)?;
    Some((f[0].to_string(), f[5].to_string(), f[6].to_string()))
}

/// The exit code a shell reports for a status: the code, or 128 + the signal.
pub fn exit_code(status: ExitStatus) -> i32 {
    use std::os::unix::process::ExitStatusExt;
    status
        .code()
        .or_else(|| status.signal().map(|s| 128 + s))
        .unwrap_or(255)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn passwd_lookup() {
        let text =
            "root:x:0:0:root:/root:/bin/bash\ncoder:x:1000:1000::/home/coder:/bin/zsh\nbad line\n";
        assert_eq!(
            passwd_entry(text, Some("coder"), None),
            Some(("coder".into(), "/home/coder".into(), "/bin/zsh".into()))
        );
        assert_eq!(
            passwd_entry(text, Some("nobody"), Some(0)).map(|e| e.0),
            Some("root".into())
        );
        assert_eq!(passwd_entry(text, None, Some(42)), None);
    }

    #[tokio::test]
    async fn pipes_carry_output_and_the_exit_code() {
        let info = ShellInfo {
            shell: "/bin/sh".into(),
            home: std::env::temp_dir(),
            user: "t".into(),
        };
        let child = info
            .spawn_pipes(
                Some("echo $((6*7)) $GREETING; echo err >&2; exit 3"),
                &[("GREETING".into(), "hi".into())],
            )
            .unwrap();
        let out = child.wait_with_output().await.unwrap();
        assert_eq!(String::from_utf8_lossy(&out.stdout), "42 hi\n");
        assert_eq!(String::from_utf8_lossy(&out.stderr), "err\n");
        assert_eq!(exit_code(out.status), 3);
    }
}
