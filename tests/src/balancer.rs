//! A real TCP load balancer in front of several `lumie-server` processes: Debian's `haproxy`
//! (installed by `scripts/install-deps.sh`) in TCP mode, round-robin, health-checking each
//! replica's `/healthz` every 200 ms, so a killed or draining replica leaves the rotation as
//! behind a Kubernetes Service. The config is generated in a temp dir; haproxy runs as a child
//! process in the foreground and is stopped when the [`Balancer`] is dropped.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::control_plane::free_loopback_addr;
use crate::{HarnessError, io_error};

/// How often haproxy checks each replica (and after how many failures it takes one out).
pub const CHECK_INTERVAL: Duration = Duration::from_millis(200);

/// haproxy in front of `backends`.
pub struct Balancer {
    /// Where clients connect.
    pub addr: SocketAddr,
    child: Child,
    _dir: tempfile::TempDir,
}

/// The haproxy configuration: TCP mode, round-robin over `backends`, an HTTP check of
/// `/healthz` on each (out after one failed check, back after one good one), and a connection
/// refused by a replica (stopped, restarting) retried on another before any byte is relayed.
pub fn config(listen: SocketAddr, backends: &[SocketAddr]) -> String {
    let ms = CHECK_INTERVAL.as_millis();
    let mut c = format!(
        "global\n  maxconn 2000\n\n\
         defaults\n  mode tcp\n  timeout connect 1s\n  timeout client 120s\n  timeout server 120s\n  \
         retries 3\n  option redispatch\n\n\
         frontend lumie\n  bind {listen}\n  default_backend replicas\n\n\
         backend replicas\n  balance roundrobin\n  option httpchk GET /healthz\n  \
         http-check expect status 200\n  default-server inter {ms}ms fastinter {ms}ms downinter {ms}ms fall 1 rise 1\n"
    );
    for (i, b) in backends.iter().enumerate() {
        c.push_str(&format!("  server r{i} {b} check\n"));
    }
    c
}

impl Balancer {
    /// Starts haproxy on a free loopback port in front of `backends`; returns once it accepts.
    pub fn start(backends: &[SocketAddr]) -> Result<Balancer, HarnessError> {
        let dir = tempfile::tempdir().map_err(io_error("a temp dir for haproxy"))?;
        let addr = free_loopback_addr()?;
        let cfg = dir.path().join("haproxy.cfg");
        std::fs::write(&cfg, config(addr, backends))
            .map_err(io_error(format!("writing {}", cfg.display())))?;
        let child = Command::new(haproxy())
            .args(["-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .spawn()
            .map_err(io_error(
                "running haproxy (scripts/install-deps.sh installs it)",
            ))?;
        let mut b = Balancer {
            addr,
            child,
            _dir: dir,
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(addr).is_err() {
            if let Ok(Some(status)) = b.child.try_wait() {
                return Err(HarnessError::Balancer(format!("exited at start: {status}")));
            }
            if Instant::now() > deadline {
                return Err(HarnessError::Balancer(
                    "no connection accepted within 10 s".into(),
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(b)
    }

    /// The balancer's URL.
    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn haproxy() -> PathBuf {
    ["/usr/sbin/haproxy", "/usr/bin/haproxy"]
        .iter()
        .map(PathBuf::from)
        .find(|p| p.exists())
        .unwrap_or_else(|| PathBuf::from("haproxy"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_lists_every_backend_with_a_health_check() {
        let listen: SocketAddr = "127.0.0.1:8000".parse().unwrap();
        let backends: Vec<SocketAddr> = ["127.0.0.1:9001", "127.0.0.1:9002"]
            .iter()
            .map(|s| s.parse().unwrap())
            .collect();
        let c = config(listen, &backends);
        for w in [
            "mode tcp",
            "balance roundrobin",
            "bind 127.0.0.1:8000",
            "option httpchk GET /healthz",
            "server r0 127.0.0.1:9001 check",
            "server r1 127.0.0.1:9002 check",
            "inter 200ms",
        ] {
            assert!(c.contains(w), "{w:?} in\n{c}");
        }
    }
}
