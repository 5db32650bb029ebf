//! Port forwarding from the pod IP to the apps on localhost, so the `dev-workspace` Service and
//! the server's app proxy reach apps (Tilt, code-server) that listen on 127.0.0.1 only.
//!
//! One task per port and one per connection on the agent's runtime (no thread per connection).
//! Each connection moves bytes both ways through a bounded buffer per direction (or, with
//! `--copy-mode splice`, a bounded pipe per direction with splice(2)), so a slow reader slows
//! the writer (backpressure), and passes a half-close on: when one side stops sending, the other side's
//! write half is shut down while the opposite direction keeps flowing. Connections beyond the
//! per-port limit are closed at once. A port the app already serves on the pod IP itself is
//! detected (the bind reports the address in use; a probe connect confirms) and left alone.
//!
//! What a connection costs (see [`Direction`]): a buffer is allocated on a direction's first
//! bytes, at [`INITIAL_BUFFER`] (what haproxy and nginx use), never zeroed; it doubles while reads
//! keep filling it, up to [`BUFFER_SIZE`], and a grown one is freed after [`SHRINK_AFTER`] of
//! quiet. Short connections (a browser loading a dev server's assets) so cost two small
//! allocations; a long stream gets large reads after a few; an idle connection at most 2 × 16 KiB.
//!
//! System calls per message are nginx's: a read that leaves room in the buffer, or a write that
//! is taken only in part, ends that direction's turn without the extra call that would only say
//! EAGAIN ([`recv_some`], [`send_some`]): 6.4 calls per keep-alive request instead of 8.75, and
//! one fewer per short connection (counted with `strace -c` in `benches/agent.rs`). Nearly all of
//! a forwarded connection's CPU is the kernel's (95 % under `perf`), so calls and segments are
//! what counts: with other connections open, an answer's last bytes and the app's close leave in
//! one segment (see [`Direction::poll`]).

use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use rustix::pipe::{self, PipeFlags, SpliceFlags};
use std::os::fd::OwnedFd;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{Semaphore, mpsc};
use tokio::task::JoinSet;

/// Time allowed to connect to the app for one forwarded connection.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often a port the app serves itself is looked at again.
pub const ALREADY_SERVED_RECHECK: Duration = Duration::from_secs(30);

/// Forwarding counters, shared by every port, read for heartbeats.
#[derive(Debug, Default)]
pub struct ForwardStats {
    open: AtomicU64,
    total: AtomicU64,
    bytes: AtomicU64,
    rejected: AtomicU64,
}

/// A reading of [`ForwardStats`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForwardSnapshot {
    /// Connections open now.
    pub open: u64,
    /// Connections accepted (and admitted) since start.
    pub total: u64,
    /// Bytes copied, both directions.
    pub bytes: u64,
    /// Connections closed at once because the limit was reached.
    pub rejected: u64,
}

impl ForwardStats {
    /// The counters now.
    pub fn snapshot(&self) -> ForwardSnapshot {
        ForwardSnapshot {
            open: self.open.load(Ordering::Relaxed),
            total: self.total.load(Ordering::Relaxed),
            bytes: self.bytes.load(Ordering::Relaxed),
            rejected: self.rejected.load(Ordering::Relaxed),
        }
    }
}

/// How forwarded bytes are moved. Buffers are the default, best overall in `benches/agent.rs`
/// (2 cores): on short connections they cost less CPU per connection than splice (which needs
/// two pipes per connection: pipe2, fcntl and four closes) and answer more requests per second,
/// with keep-alive too; on one long stream they move more bytes per second. Splice costs the
/// agent itself less CPU per byte on a long stream and no memory per connection, but the app
/// reading the forwarded bytes more, by about as much; in a pod that app shares the agent's CPUs.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum CopyMode {
    /// read/write through a buffer per direction, allocated on demand and grown under load.
    #[default]
    Buffers,
    /// splice(2) through a pipe per direction: the bytes stay in the kernel.
    Splice,
}

impl std::str::FromStr for CopyMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "splice" => Ok(Self::Splice),
            "buffers" => Ok(Self::Buffers),
            _ => Err(format!("{s:?}: expected splice or buffers")),
        }
    }
}

/// One port to forward.
#[derive(Clone, Debug)]
pub struct PortForward {
    /// App slug, for logs.
    pub slug: String,
    /// Pod IP and port to listen on.
    pub listen: SocketAddr,
    /// Where the app listens.
    pub target: SocketAddr,
    /// Most connections open at once.
    pub max_connections: usize,
    /// How bytes are moved.
    pub copy_mode: CopyMode,
}

/// Connections the kernel queues on a forwarded port before the agent accepts them. tokio's
/// `bind` asks for 128; a browser loading a dev server's page (dozens of assets, several tabs)
/// can open more at once, and an overflowing queue drops SYNs (a one-second stall each) and,
/// once SYN cookies kick in, resets connections. The kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 1024;

/// Listens on `addr` with [`LISTEN_BACKLOG`]. SO_REUSEADDR as tokio's `bind` sets it: a restarted
/// agent can take its port back from connections in TIME_WAIT, never from a live listener.
/// TCP_NODELAY on the listener is inherited by every accepted connection (Linux copies it), one
/// setsockopt(2) per connection saved.
pub fn listen(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = if addr.is_ipv4() {
        TcpSocket::new_v4()?
    } else {
        TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_nodelay(true)?;
    socket.bind(addr)?;
    socket.listen(LISTEN_BACKLOG)
}

/// What binding the pod IP port found.
#[derive(Debug)]
pub enum Bind {
    /// The agent listens there now.
    Listening(TcpListener),
    /// Something (the app itself) serves there already; why we think so.
    AlreadyServed(String),
}

/// Listens on `listen` unless something already serves there: the bind failing with "address
/// in use" means the app listens on the pod IP (or on every address) itself; a probe connect then
/// says whether it answers. Other bind errors (the address is not on this host, permission) are
/// returned. Binding comes first so nothing is ever sent to an address that is not local.
pub async fn bind_or_detect(listen: SocketAddr, probe_timeout: Duration) -> io::Result<Bind> {
    match self::listen(listen) {
        Ok(l) => Ok(Bind::Listening(l)),
        Err(e) if e.kind() == io::ErrorKind::AddrInUse => {
            let answers = matches!(
                tokio::time::timeout(probe_timeout, TcpStream::connect(listen)).await,
                Ok(Ok(_))
            );
            Ok(Bind::AlreadyServed(if answers {
                format!("{listen} is in use and a listener answers there")
            } else {
                format!("{listen} is in use")
            }))
        }
        Err(e) => Err(e),
    }
}

/// Accepts on `listener` (from [`listen`], which sets TCP_NODELAY for the accepted connections)
/// forever, forwarding each connection to `target`. Dropping (aborting) the future closes the
/// listener and every connection it opened.
pub async fn serve(
    listener: TcpListener,
    target: SocketAddr,
    max_connections: usize,
    copy_mode: CopyMode,
    stats: Arc<ForwardStats>,
) {
    let limit = Arc::new(Semaphore::new(max_connections.max(1)));
    let mut connections = JoinSet::new();
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            Some(_) = connections.join_next() => continue,
        };
        let (inbound, peer) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // Out of file descriptors and the like: wait instead of spinning.
                tracing::warn!(%target, "accept failed: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
        };
        let Ok(permit) = limit.clone().try_acquire_owned() else {
            stats.rejected.fetch_add(1, Ordering::Relaxed);
            tracing::warn!(%peer, %target, max_connections, "connection limit reached; closing");
            drop(inbound);
            continue;
        };
        stats.total.fetch_add(1, Ordering::Relaxed);
        stats.open.fetch_add(1, Ordering::Relaxed);
        let stats = stats.clone();
        connections.spawn(async move {
            if let Err(e) = forward_one(inbound, target, copy_mode, &stats).await {
                tracing::debug!(%peer, %target, "forwarded connection ended: {e}");
            }
            stats.open.fetch_sub(1, Ordering::Relaxed);
            drop(permit);
        });
    }
}

/// Copies one connection both ways until both directions are done: through buffers, or with
/// splice(2) through a pipe per direction (the bytes never enter the agent's memory; buffers
/// again when the pipes cannot be had, e.g. out of file descriptors).
async fn forward_one(
    inbound: TcpStream,
    target: SocketAddr,
    copy_mode: CopyMode,
    stats: &ForwardStats,
) -> io::Result<()> {
    let bytes = &stats.bytes;
    let outbound = tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target))
        .await
        .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "connect to the app timed out"))??;
    // The inbound side has TCP_NODELAY from the listener (see [`listen`]).
    outbound.set_nodelay(true)?;
    if copy_mode == CopyMode::Splice
        && let (Ok(up), Ok(down)) = (Pipe::new(), Pipe::new())
    {
        tokio::try_join!(
            splice_one_way(&inbound, &outbound, &up, bytes),
            splice_one_way(&outbound, &inbound, &down, bytes),
        )?;
        return Ok(());
    }
    let mut up = Direction::default();
    let mut down = Direction::default();
    std::future::poll_fn(|cx| {
        let busy = stats.open.load(Ordering::Relaxed) > 1;
        let a = up.poll(cx, &inbound, &outbound, bytes, down.done, busy);
        let b = down.poll(cx, &outbound, &inbound, bytes, up.done, busy);
        match (a, b) {
            (Poll::Ready(Err(e)), _) | (_, Poll::Ready(Err(e))) => Poll::Ready(Err(e)),
            (Poll::Ready(Ok(())), Poll::Ready(Ok(()))) => Poll::Ready(Ok(())),
            _ => Poll::Pending,
        }
    })
    .await
}

/// First buffer of a direction, allocated on the first bytes to move (an idle connection that
/// never carried anything holds none): as large as haproxy's and nginx's, enough for a request
/// or a small answer in one read.
pub const INITIAL_BUFFER: usize = 16 * 1024;
/// A direction whose reads keep filling its buffer doubles it up to this, for long streams.
pub const BUFFER_SIZE: usize = 256 * 1024;
/// A buffer grown past [`INITIAL_BUFFER`] is freed when its direction has had nothing to move
/// for this long, so a WebSocket that once carried a burst costs little while idle.
pub const SHRINK_AFTER: Duration = Duration::from_secs(1);

/// One direction of a forwarded connection: a buffer that is read into only when empty (what a
/// slow reader has not taken yet stays there: backpressure) and grows under sustained throughput.
/// Buffers are never zeroed: reads fill the spare capacity of a `Vec`.
#[derive(Default)]
struct Direction {
    buf: Vec<u8>,
    /// Bytes of `buf` already written.
    written: usize,
    /// Capacity of the next buffer to allocate.
    next: usize,
    /// The source reached EOF.
    eof: bool,
    /// EOF passed on (or the other direction made that unnecessary): nothing left to do.
    done: bool,
    /// Frees a grown buffer once the source has been quiet for [`SHRINK_AFTER`].
    shrink: Option<Pin<Box<tokio::time::Sleep>>>,
    /// The quiet spell `shrink` times has begun (reset by the next bytes read).
    shrink_armed: bool,
}

impl Direction {
    /// Moves bytes from `from` to `to` until `from` reaches EOF and everything read is written,
    /// then shuts `to`'s write side (the half-close passes on) unless the other direction is
    /// over already (`other_done`: both sockets are about to be closed, which says the same).
    fn poll(
        &mut self,
        cx: &mut Context<'_>,
        from: &TcpStream,
        to: &TcpStream,
        bytes: &AtomicU64,
        other_done: bool,
        busy: bool,
    ) -> Poll<io::Result<()>> {
        if self.done {
            return Poll::Ready(Ok(()));
        }
        loop {
            while self.written < self.buf.len() {
                std::task::ready!(to.poll_write_ready(cx))?;
                // The last bytes before a half-close wait for the FIN (MSG_MORE), which the
                // shutdown below adds to their segment: one segment (and its ACK) fewer per
                // short connection. That holds the bytes for one more system call, so only
                // when other connections are open (`busy`), where CPU decides the rate; a lone
                // connection is bound by latency and sends at once.
                let last = busy && self.eof && !other_done;
                match send_some(to, &self.buf[self.written..], last) {
                    Ok(0) => return Poll::Ready(Err(io::ErrorKind::WriteZero.into())),
                    Ok(n) => self.written += n,
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
            self.buf.clear();
            self.written = 0;
            if self.eof {
                self.done = true;
                if !other_done {
                    match rustix::net::shutdown(to, rustix::net::Shutdown::Write) {
                        Ok(()) | Err(rustix::io::Errno::NOTCONN) => {}
                        Err(e) => return Poll::Ready(Err(e.into())),
                    }
                }
                return Poll::Ready(Ok(()));
            }
            match from.poll_read_ready(cx) {
                Poll::Ready(r) => r?,
                Poll::Pending => {
                    self.poll_shrink(cx);
                    return Poll::Pending;
                }
            }
            self.next = self.next.clamp(INITIAL_BUFFER, BUFFER_SIZE);
            if self.buf.capacity() < self.next {
                self.buf = Vec::with_capacity(self.next);
            }
            loop {
                match recv_some(from, &mut self.buf) {
                    Ok(0) => {
                        self.eof = true;
                        break;
                    }
                    Ok(n) => {
                        bytes.fetch_add(n as u64, Ordering::Relaxed);
                        self.shrink_armed = false;
                        if self.buf.len() == self.buf.capacity() {
                            // Sustained throughput: a larger buffer for the next read, once
                            // this one is written out.
                            self.next = self.next.saturating_mul(2);
                            break;
                        }
                        // The short read cleared the readiness; it is back only when the FIN
                        // is in (closed readiness stays) or more bytes came: read on, so that
                        // an EOF right behind the last bytes is known before they are written.
                        if from.poll_read_ready(cx).is_pending() {
                            break;
                        }
                    }
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Poll::Ready(Err(e)),
                }
            }
        }
    }

    /// While the source is quiet: a grown buffer is freed after [`SHRINK_AFTER`], and the next
    /// bytes start again from [`INITIAL_BUFFER`].
    fn poll_shrink(&mut self, cx: &mut Context<'_>) {
        if self.buf.capacity() <= INITIAL_BUFFER {
            return;
        }
        let deadline = tokio::time::Instant::now() + SHRINK_AFTER;
        let sleep = match &mut self.shrink {
            Some(s) => s,
            None => self
                .shrink
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        if !self.shrink_armed {
            sleep.as_mut().reset(deadline);
            self.shrink_armed = true;
        }
        if sleep.as_mut().poll(cx).is_ready() {
            self.buf = Vec::new();
            self.next = INITIAL_BUFFER;
            self.shrink_armed = false;
        }
    }
}

/// Reads what `from` has into the spare capacity of `buf`. A read that fills less than that
/// found the socket's receive queue empty (TCP copies until the buffer is full or the queue is
/// drained), so it also clears the readiness, as nginx does: the edge-triggered epoll reports the
/// next bytes, and the read that would only have said EAGAIN is never made (one system call per
/// message saved). A readiness event that arrived meanwhile is kept (tokio clears only the event
/// it handed out), and a FIN is never lost (closed readiness is never cleared).
fn recv_some(from: &TcpStream, buf: &mut Vec<u8>) -> io::Result<usize> {
    let room = buf.capacity() - buf.len();
    let mut short = None;
    let read = from.try_io(Interest::READABLE, || {
        let (n, _) = rustix::net::recv(
            from,
            rustix::buffer::spare_capacity(buf),
            rustix::net::RecvFlags::empty(),
        )?;
        if 0 < n && n < room {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (read, short) {
        (_, Some(n)) => Ok(n),
        (read, None) => read,
    }
}

/// Writes what `to` takes of `bytes`, with MSG_MORE when a shutdown follows (the kernel holds a
/// partial segment until then). A write that takes less found the send buffer full, which
/// also asks the kernel for a wake-up once there is room again, so the readiness is cleared then
/// (as for [`recv_some`]): the write that would only have said EAGAIN is never made.
fn send_some(to: &TcpStream, bytes: &[u8], more: bool) -> io::Result<usize> {
    let flags = if more {
        rustix::net::SendFlags::NOSIGNAL | rustix::net::SendFlags::MORE
    } else {
        rustix::net::SendFlags::NOSIGNAL
    };
    let mut short = None;
    let sent = to.try_io(Interest::WRITABLE, || {
        let n = rustix::net::send(to, bytes, flags)?;
        if 0 < n && n < bytes.len() {
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (sent, short) {
        (_, Some(n)) => Ok(n),
        (sent, None) => sent,
    }
}

/// Bytes a splice pipe holds: what one direction of a connection has in flight in the agent.
pub const PIPE_SIZE: usize = 1 << 20;

/// A non-blocking pipe, the kernel-side buffer splice(2) moves bytes through.
struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    fn new() -> io::Result<Self> {
        let (read, write) = pipe::pipe_with(PipeFlags::NONBLOCK | PipeFlags::CLOEXEC)?;
        // Larger pipes mean fewer system calls; the default (64 KiB) still works.
        let _ = pipe::fcntl_setpipe_size(&write, PIPE_SIZE);
        Ok(Self { read, write })
    }
}

/// Moves bytes from `from` to `to` until `from` reaches EOF, then shuts `to`'s write side down
/// (the half-close passes on). The pipe holds at most one read's worth: nothing more is read
/// until it is written out, so a slow receiver slows the sender (backpressure).
async fn splice_one_way(
    from: &TcpStream,
    to: &TcpStream,
    pipe: &Pipe,
    bytes: &AtomicU64,
) -> io::Result<()> {
    let flags = SpliceFlags::MOVE | SpliceFlags::NONBLOCK;
    loop {
        let n = loop {
            from.readable().await?;
            match from.try_io(Interest::READABLE, || {
                Ok(pipe::splice(
                    from,
                    None,
                    &pipe.write,
                    None,
                    PIPE_SIZE,
                    flags,
                )?)
            }) {
                Ok(n) => break n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        };
        if n == 0 {
            return match rustix::net::shutdown(to, rustix::net::Shutdown::Write) {
                Ok(()) | Err(rustix::io::Errno::NOTCONN) => Ok(()),
                Err(e) => Err(e.into()),
            };
        }
        let mut left = n;
        while left > 0 {
            to.writable().await?;
            match to.try_io(Interest::WRITABLE, || {
                Ok(pipe::splice(&pipe.read, None, to, None, left, flags)?)
            }) {
                Ok(k) => {
                    left -= k;
                    bytes.fetch_add(k as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(e) => return Err(e),
            }
        }
    }
}

/// Where forwarding of one port stands, sent to the agent as it changes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PortState {
    /// The agent listens on the pod IP and forwards.
    Forwarding,
    /// The app serves on the pod IP itself; why the agent thinks so.
    LeftAlone(String),
    /// The pod IP port cannot be listened on (`start_error`); why.
    Failed(String),
}

/// A [`PortState`] change of the app `slug`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortEvent {
    /// App slug.
    pub slug: String,
    /// Its forwarding state.
    pub state: PortState,
}

/// Runs forwarding for one port: waits until the app answers on its local address (so the agent
/// never takes the pod IP port from an app that is about to listen on every address), then
/// listens on the pod IP, or leaves the port alone when the app serves there itself (looked at
/// again from time to time). A bind error that is not "in use" means the agent cannot do its job:
/// it is sent as [`PortState::Failed`] and ends the task.
pub async fn run_port(
    port: PortForward,
    recheck: Duration,
    stats: Arc<ForwardStats>,
    events: mpsc::UnboundedSender<PortEvent>,
) {
    let PortForward {
        slug,
        listen,
        target,
        max_connections,
        copy_mode,
    } = port;
    let send = |state| {
        let _ = events.send(PortEvent {
            slug: slug.clone(),
            state,
        });
    };
    let mut waiting_logged = false;
    let mut left_alone = false;
    loop {
        let app_up = matches!(
            tokio::time::timeout(CONNECT_TIMEOUT, TcpStream::connect(target)).await,
            Ok(Ok(_))
        );
        if !app_up {
            if !waiting_logged {
                tracing::info!(app = %slug, "waiting for the app on {target} before listening on {listen}");
                waiting_logged = true;
            }
            tokio::time::sleep(recheck).await;
            continue;
        }
        match bind_or_detect(listen, CONNECT_TIMEOUT).await {
            Ok(Bind::Listening(listener)) => {
                tracing::info!(app = %slug, "forwarding {listen} to {target}");
                send(PortState::Forwarding);
                serve(listener, target, max_connections, copy_mode, stats).await;
                return;
            }
            Ok(Bind::AlreadyServed(why)) => {
                if !left_alone {
                    tracing::info!(app = %slug, "the app serves on the pod IP itself ({why}); leaving {listen} alone");
                    send(PortState::LeftAlone(why));
                    left_alone = true;
                }
                tokio::time::sleep(ALREADY_SERVED_RECHECK.max(recheck)).await;
            }
            Err(e) => {
                let why = format!("cannot listen on {listen} for {slug}: {e}");
                tracing::error!(app = %slug, "{why}");
                send(PortState::Failed(why));
                return;
            }
        }
    }
}
