//! `lumie-ws-pipe URL`: pipes standard input and output to a session WebSocket (binary messages
//! both ways), with the token from `LUMIE_SESSION_TOKEN`. A stand-in for `lumie ssh --stdio` as
//! OpenSSH's `ProxyCommand` in the sessions test, so the agent's SSH server is checked with the
//! real OpenSSH client without the CLI.

use std::process::ExitCode;

#[tokio::main(flavor = "current_thread")]
async fn main() -> ExitCode {
    let Some(url) = std::env::args().nth(1) else {
        eprintln!("usage: lumie-ws-pipe URL (token in LUMIE_SESSION_TOKEN)");
        return ExitCode::from(2);
    };
    let token = std::env::var("LUMIE_SESSION_TOKEN").unwrap_or_default();
    let socket = match lumie_tests::ws::connect(&url, &token).await {
        Ok(s) => s,
        Err(e) => {
            match lumie_tests::ws::refusal(&e) {
                Some((status, body)) => eprintln!("lumie-ws-pipe: {url}: HTTP {status}: {body}"),
                None => eprintln!("lumie-ws-pipe: {url}: {e}"),
            }
            return ExitCode::from(1);
        }
    };
    lumie_tests::ws::pipe(socket, tokio::io::stdin(), tokio::io::stdout()).await;
    ExitCode::SUCCESS
}
