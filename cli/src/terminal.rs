//! The local terminal: whether a stream is one, raw mode for an interactive session (restored
//! on drop, also when the session fails), the window size, reading a pasted token without
//! echoing it, a yes/no question, and opening a URL in the browser.

use std::io::{BufRead, IsTerminal, Write};

use rustix::termios::{self, OptionalActions, Termios};

use crate::error::{Error, Result};

/// Whether standard input is a terminal.
pub fn stdin_is_tty() -> bool {
    std::io::stdin().is_terminal()
}

/// Whether standard output is a terminal.
pub fn stdout_is_tty() -> bool {
    std::io::stdout().is_terminal()
}

/// The terminal's size as (columns, rows), when standard output (or input) is one.
pub fn window_size() -> Option<(u32, u32)> {
    let size = |w: termios::Winsize| {
        (w.ws_col > 0 && w.ws_row > 0).then(|| (u32::from(w.ws_col), u32::from(w.ws_row)))
    };
    termios::tcgetwinsize(std::io::stdout())
        .ok()
        .and_then(size)
        .or_else(|| termios::tcgetwinsize(std::io::stdin()).ok().and_then(size))
}

/// Standard input in raw mode until dropped.
pub struct RawMode {
    saved: Termios,
}

impl RawMode {
    /// Puts standard input in raw mode (no echo, no line editing, no signals from keys: ^C goes
    /// to the remote shell).
    pub fn enable() -> Result<RawMode> {
        let stdin = std::io::stdin();
        let saved = termios::tcgetattr(&stdin)
            .map_err(|e| Error::io("reading the terminal settings")(e.into()))?;
        let mut raw = saved.clone();
        raw.make_raw();
        termios::tcsetattr(&stdin, OptionalActions::Now, &raw)
            .map_err(|e| Error::io("putting the terminal in raw mode")(e.into()))?;
        Ok(RawMode { saved })
    }
}

impl Drop for RawMode {
    fn drop(&mut self) {
        let _ = termios::tcsetattr(std::io::stdin(), OptionalActions::Now, &self.saved);
    }
}

/// Prints `prompt` on stderr and reads a line from standard input, without echo when it is a
/// terminal (a token is a password).
pub fn read_secret(prompt: &str) -> Result<String> {
    eprint!("{prompt}");
    let _ = std::io::stderr().flush();
    let stdin = std::io::stdin();
    let saved = if stdin.is_terminal() {
        termios::tcgetattr(&stdin).ok().inspect(|t| {
            let mut quiet = t.clone();
            quiet.local_modes.remove(termios::LocalModes::ECHO);
            let _ = termios::tcsetattr(&stdin, OptionalActions::Now, &quiet);
        })
    } else {
        None
    };
    let mut line = String::new();
    let read = stdin.lock().read_line(&mut line);
    if let Some(t) = saved {
        let _ = termios::tcsetattr(&stdin, OptionalActions::Now, &t);
        eprintln!();
    }
    read.map_err(Error::io("reading the token from standard input"))?;
    Ok(line.trim().to_string())
}

/// Asks a yes/no question on the terminal; anything but `y`/`yes` is no.
pub fn confirm(question: &str) -> Result<bool> {
    eprint!("{question} [y/N] ");
    let _ = std::io::stderr().flush();
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .read_line(&mut line)
        .map_err(Error::io("reading the answer"))?;
    Ok(is_yes(&line))
}

/// Whether an answer means yes.
pub fn is_yes(answer: &str) -> bool {
    matches!(answer.trim().to_ascii_lowercase().as_str(), "y" | "yes")
}

/// Tries to open `url` in a browser: `$BROWSER` when set, else `xdg-open` (or macOS `open`).
/// Whether a program could be started; it is not waited for.
pub fn open_browser(url: &str) -> bool {
    let mut cmd = match std::env::var("BROWSER") {
        Ok(b) if !b.trim().is_empty() => {
            let mut c = std::process::Command::new("sh");
            c.arg("-c").arg(format!("{b} \"$1\"")).arg("sh").arg(url);
            c
        }
        _ if cfg!(target_os = "macos") => {
            let mut c = std::process::Command::new("open");
            c.arg(url);
            c
        }
        _ => {
            let mut c = std::process::Command::new("xdg-open");
            c.arg(url);
            c
        }
    };
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .is_ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers() {
        for (a, want) in [
            ("y\n", true),
            ("YES", true),
            (" yes \n", true),
            ("n", false),
            ("", false),
            ("yep", false),
        ] {
            assert_eq!(is_yes(a), want, "{a:?}");
        }
    }
}
