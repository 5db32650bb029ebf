//! `lumie port-forward WS --tcp LOCAL:REMOTE…`: listens on 127.0.0.1:LOCAL and carries each
//! accepted connection through its own tunnel to 127.0.0.1:REMOTE inside the workspace, so one
//! slow or broken connection never holds up another.

use std::net::{Ipv4Addr, SocketAddr};

use tokio::net::TcpListener;

use crate::credentials::Credentials;
use crate::error::{Error, Result};
use crate::tunnel::{self, Route};

/// One `--tcp` forward.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Forward {
    /// Port on 127.0.0.1 here (0: any free one).
    pub local: u16,
    /// Port inside the workspace.
    pub remote: u16,
}

/// Parses `LOCAL:REMOTE` or `PORT` (the same on both sides).
pub fn parse_forward(s: &str) -> Result<Forward> {
    let bad = |why: &str| Error::Usage(format!("--tcp {s:?}: {why} (like 8080:8080 or 9000:3000)"));
    let port = |p: &str| -> Result<u16> { p.trim().parse::<u16>().map_err(|_| bad("not a port")) };
    let f = match s.split_once(':') {
        Some((l, r)) => Forward {
            local: port(l)?,
            remote: port(r)?,
        },
        None => {
            let p = port(s)?;
            Forward {
                local: p,
                remote: p,
            }
        }
    };
    if f.remote == 0 {
        return Err(bad("the workspace port cannot be 0"));
    }
    Ok(f)
}

/// The listeners, bound (so a port in use fails before anything runs).
pub async fn bind(forwards: &[Forward]) -> Result<Vec<(Forward, TcpListener)>> {
    let mut out = vec![];
    for f in forwards {
        let addr = SocketAddr::from((Ipv4Addr::LOCALHOST, f.local));
        let l = TcpListener::bind(addr)
            .await
            .map_err(Error::io(format!("listening on {addr}")))?;
        out.push((*f, l));
    }
    Ok(out)
}

/// Serves the listeners until the process is stopped.
pub async fn serve(
    creds: Credentials,
    name: String,
    id: String,
    listeners: Vec<(Forward, TcpListener)>,
) {
    let mut tasks = tokio::task::JoinSet::new();
    for (f, listener) in listeners {
        let (creds, name, id) = (creds.clone(), name.clone(), id.clone());
        tasks.spawn(async move {
            loop {
                let Ok((tcp, peer)) = listener.accept().await else {
                    continue;
                };
                let _ = tcp.set_nodelay(true);
                let (creds, name, id) = (creds.clone(), name.clone(), id.clone());
                tokio::spawn(async move {
                    let tunnel = match tunnel::open(&creds, &name, &id, Route::Tcp(f.remote)).await
                    {
                        Ok(t) => t,
                        Err(e) => {
                            eprintln!("lumie: {peer} → {name}:{}: {e}", f.remote);
                            return;
                        }
                    };
                    let (r, w) = tcp.into_split();
                    if let Err(e) = tunnel::pump(tunnel, r, w).await {
                        eprintln!("lumie: {peer} → {name}:{}: {e}", f.remote);
                    }
                });
            }
        });
    }
    while tasks.join_next().await.is_some() {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn forwards() {
        let cases: &[(&str, Option<(u16, u16)>)] = &[
            ("8080:8080", Some((8080, 8080))),
            ("9000:3000", Some((9000, 3000))),
            ("5432", Some((5432, 5432))),
            ("0:80", Some((0, 80))),
            ("80:0", None),
            ("x:80", None),
            ("70000:80", None),
            ("", None),
            ("1:2:3", None),
        ];
        for (s, want) in cases {
            let got = parse_forward(s).ok().map(|f| (f.local, f.remote));
            assert_eq!(got, *want, "{s:?}");
        }
    }
}
