//! A TCP relay from a loopback port to PostgreSQL that a test stops (every relayed connection
//! closed, the port then refusing connections) and starts again on the same port: a real
//! outage from the server's side, without stopping the test binary's PostgreSQL.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::task::JoinHandle;

/// A TCP relay from a loopback port to PostgreSQL that can be stopped and started again.
pub struct Relay {
    /// Where the relay listens.
    pub addr: SocketAddr,
    upstream: SocketAddr,
    running: Mutex<Option<RelayTasks>>,
}

struct RelayTasks {
    accept: JoinHandle<()>,
    connections: Arc<Mutex<Vec<JoinHandle<()>>>>,
}

fn bind_reusable(addr: SocketAddr) -> TcpListener {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_reuseaddr(true).unwrap();
    socket.bind(addr).unwrap();
    socket.listen(64).unwrap()
}

impl Relay {
    pub fn start(upstream: SocketAddr) -> Relay {
        let listener = bind_reusable("127.0.0.1:0".parse().unwrap());
        let relay = Relay {
            addr: listener.local_addr().unwrap(),
            upstream,
            running: Mutex::new(None),
        };
        relay.serve(listener);
        relay
    }

    fn serve(&self, listener: TcpListener) {
        let connections: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let upstream = self.upstream;
        let conns = connections.clone();
        let accept = tokio::spawn(async move {
            while let Ok((mut client, _)) = listener.accept().await {
                let task = tokio::spawn(async move {
                    if let Ok(mut server) = TcpStream::connect(upstream).await {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }
                });
                conns.lock().unwrap().push(task);
            }
        });
        *self.running.lock().unwrap() = Some(RelayTasks {
            accept,
            connections,
        });
    }

    /// PostgreSQL "goes down": every open connection is closed and the port refuses new ones.
    pub async fn stop(&self) {
        let tasks = self.running.lock().unwrap().take().expect("running");
        tasks.accept.abort();
        let _ = tasks.accept.await;
        for c in tasks.connections.lock().unwrap().drain(..) {
            c.abort();
        }
        // The listener is dropped with the accept task: connecting now is refused.
        assert!(
            TcpStream::connect(self.addr).await.is_err(),
            "the relay's port refuses connections while stopped"
        );
    }

    /// PostgreSQL is back, on the same address.
    pub fn restart(&self) {
        self.serve(bind_reusable(self.addr));
    }
}

pub fn host_port(url: &str) -> SocketAddr {
    // postgres://user:password@127.0.0.1:PORT/db
    let after_at = url.rsplit_once('@').expect("credentials in the url").1;
    let host_port = after_at.split('/').next().unwrap();
    host_port.parse().expect("a loopback ip:port")
}
