//! Port forwarding over real loopback sockets: a distinct 127.77.x.y address plays the pod IP and
//! the apps listen on 127.0.0.1, as in a pod. The memory bound is checked on the real binary.

mod common;

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use lumie_agent::forward::{self, Bind, CopyMode, ForwardStats, PortForward};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;

fn pod_ip(n: u8) -> IpAddr {
    IpAddr::from([127, 77, 1, n])
}

/// Starts forwarding `pod_ip:port` to `127.0.0.1:port` and waits until it accepts.
async fn forwarding(
    pod: IpAddr,
    port: u16,
    max: usize,
    copy_mode: CopyMode,
) -> (SocketAddr, Arc<ForwardStats>) {
    let stats = Arc::new(ForwardStats::default());
    let listen = SocketAddr::new(pod, port);
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    tokio::spawn(forward::run_port(
        PortForward {
            slug: "test".into(),
            listen,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            max_connections: max,
            copy_mode,
        },
        Duration::from_millis(50),
        stats.clone(),
        events_tx,
    ));
    let event = events_rx.recv().await.unwrap();
    assert_eq!(event.state, forward::PortState::Forwarding);
    wait_until_connects(listen).await;
    (listen, stats)
}

async fn wait_until_connects(addr: SocketAddr) {
    for _ in 0..200 {
        if TcpStream::connect(addr).await.is_ok() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("nothing listens on {addr}");
}

/// An app on 127.0.0.1 that echoes each connection back until EOF, then closes.
async fn echo_app() -> u16 {
    // The apps' own accept queue must hold the test's burst as well as the agent's does.
    let l = forward::listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
    port
}

fn pattern(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

async fn data_flows_both_ways_and_a_client_half_close_reaches_the_app(mode: CopyMode, pod: IpAddr) {
    // The app reads until EOF (which it only sees if the half-close is passed on), then answers
    // with the bytes reversed and closes.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                got.reverse();
                let _ = s.write_all(&got).await;
            });
        }
    });
    let (listen, stats) = forwarding(pod, port, 16, mode).await;

    let data = pattern(3 << 20, 7);
    let mut c = TcpStream::connect(listen).await.unwrap();
    let (mut r, mut w) = c.split();
    let send = async {
        w.write_all(&data).await.unwrap();
        w.shutdown().await.unwrap();
    };
    let mut back = Vec::new();
    let recv = r.read_to_end(&mut back);
    let ((), n) = tokio::join!(send, recv);
    assert_eq!(n.unwrap(), data.len());
    let mut want = data.clone();
    want.reverse();
    assert!(back == want, "reversed data came back");
    let s = stats.snapshot();
    assert!(s.bytes >= 2 * data.len() as u64, "{s:?}");
}

async fn an_app_half_close_reaches_the_client_and_the_other_direction_keeps_flowing(
    mode: CopyMode,
    pod: IpAddr,
) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    let (got_tx, mut got_rx) = mpsc::unbounded_channel::<Vec<u8>>();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let got_tx = got_tx.clone();
            tokio::spawn(async move {
                let _ = s.write_all(b"greeting").await;
                let _ = s.shutdown().await;
                let mut got = Vec::new();
                let _ = s.read_to_end(&mut got).await;
                let _ = got_tx.send(got);
            });
        }
    });
    let (listen, _) = forwarding(pod, port, 16, mode).await;

    let mut c = TcpStream::connect(listen).await.unwrap();
    let mut greeting = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), c.read_to_end(&mut greeting))
        .await
        .expect("the app's half-close reaches the client as EOF")
        .unwrap();
    assert_eq!(greeting, b"greeting");
    c.write_all(b"still here after your EOF").await.unwrap();
    c.shutdown().await.unwrap();
    // Connections made while waiting for the port to open carried nothing; skip them.
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            let got = got_rx.recv().await.unwrap();
            if !got.is_empty() {
                return got;
            }
        }
    })
    .await
    .unwrap();
    assert_eq!(got, b"still here after your EOF");
}

async fn many_concurrent_connections_each_get_their_own_bytes_back(mode: CopyMode, pod: IpAddr) {
    let port = echo_app().await;
    let (listen, stats) = forwarding(pod, port, 1024, mode).await;
    // The connection that found the port open is counted once the agent accepted it.
    while stats.snapshot().total < 1 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let before = stats.snapshot();
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..300u32 {
        tasks.spawn(async move {
            let data = pattern(32 * 1024 + i as usize, i as u8);
            let mut c = TcpStream::connect(listen).await.unwrap();
            let (mut r, mut w) = c.split();
            let mut back = Vec::new();
            let send = async {
                w.write_all(&data).await.unwrap();
                w.shutdown().await.unwrap();
            };
            let ((), n) = tokio::join!(send, r.read_to_end(&mut back));
            n.unwrap();
            back == data
        });
    }
    let mut ok = 0;
    while let Some(r) = tasks.join_next().await {
        ok += usize::from(r.unwrap());
    }
    assert_eq!(ok, 300);
    // Counters settle once every connection task has finished.
    for _ in 0..100 {
        if stats.snapshot().open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let after = stats.snapshot();
    assert_eq!(after.open, 0, "{after:?}");
    assert_eq!(after.total - before.total, 300);
    assert_eq!(after.rejected, 0);
}

/// Request and answer, one at a time, as a browser's keep-alive connection to a dev server: each
/// message is read short (less than the buffer), which is where the buffers mode takes the
/// socket for drained without asking again; a wake-up lost there would stall the exchange. The
/// sizes straddle the first buffer (16 KiB), and some messages are written in pieces, so bytes
/// also arrive while the agent is reading.
async fn request_and_answer_one_at_a_time_never_stall(mode: CopyMode, pod: IpAddr) {
    let port = echo_app().await;
    let (listen, _) = forwarding(pod, port, 16, mode).await;
    let mut c = TcpStream::connect(listen).await.unwrap();
    c.set_nodelay(true).unwrap();
    let mut seed = 7u32;
    let mut next = move || {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        (seed >> 8) as usize
    };
    let exchange = async {
        for i in 0..2_000usize {
            let len = 1 + next() % 40_000;
            let data = pattern(len, i as u8);
            let pieces = 1 + next() % 3;
            for piece in data.chunks(len.div_ceil(pieces)) {
                c.write_all(piece).await.unwrap();
                tokio::task::yield_now().await;
            }
            let mut back = vec![0u8; len];
            c.read_exact(&mut back).await.unwrap();
            assert!(back == data, "message {i} ({len} bytes) came back intact");
        }
    };
    tokio::time::timeout(Duration::from_secs(30), exchange)
        .await
        .expect("2,000 exchanges within 30 s: a stall means a lost wake-up");
}

/// An app that answers and closes at once, as a dev server answering `Connection: close`, while
/// another connection is open: with the agent busy, the answer's last bytes wait for the FIN
/// (MSG_MORE) and leave with it. Every answer must still arrive whole, followed by the EOF.
async fn an_answer_and_the_close_right_behind_it_arrive_whole(mode: CopyMode, pod: IpAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut len = [0u8; 4];
                if s.read_exact(&mut len).await.is_ok() {
                    let len = u32::from_be_bytes(len) as usize;
                    let _ = s.write_all(&pattern(len, len as u8)).await;
                }
                // Dropped: the close follows the answer at once.
            });
        }
    });
    let (listen, stats) = forwarding(pod, port, 16, mode).await;
    let _other = TcpStream::connect(listen).await.unwrap();
    while stats.snapshot().open < 1 {
        tokio::task::yield_now().await;
    }
    let answers = async {
        for i in 0..300u32 {
            let len = 1 + (i * 7_919) % 70_000;
            let mut c = TcpStream::connect(listen).await.unwrap();
            c.write_all(&len.to_be_bytes()).await.unwrap();
            let mut back = Vec::new();
            c.read_to_end(&mut back).await.unwrap();
            assert_eq!(back.len(), len as usize, "answer {i} whole, then the EOF");
            assert!(
                back == pattern(len as usize, len as u8),
                "answer {i} intact"
            );
        }
    };
    tokio::time::timeout(Duration::from_secs(30), answers)
        .await
        .expect("300 answers within 30 s: a stall means held bytes never left");
}

/// An app that reads slowly: the agent's writes to it fill its receive buffer and come back
/// short, which is where the buffers mode stops writing until the kernel says there is room.
async fn a_slow_reader_gets_every_byte_in_order(mode: CopyMode, pod: IpAddr) {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let mut got = Vec::new();
                let mut buf = vec![0u8; 8 * 1024];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => break,
                        Ok(n) => got.extend_from_slice(&buf[..n]),
                    }
                    // The slowness under test, not a wait for something.
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                let _ = s.write_all(&(got.len() as u64).to_be_bytes()).await;
                let _ = s.write_all(&got[got.len().saturating_sub(64)..]).await;
                let _ = s.write_all(&crc(&got).to_be_bytes()).await;
            });
        }
    });
    let (listen, _) = forwarding(pod, port, 16, mode).await;
    let data = pattern(2 << 20, 3);
    let mut c = TcpStream::connect(listen).await.unwrap();
    let transfer = async {
        c.write_all(&data).await.unwrap();
        c.shutdown().await.unwrap();
        let mut back = Vec::new();
        c.read_to_end(&mut back).await.unwrap();
        back
    };
    let back = tokio::time::timeout(Duration::from_secs(30), transfer)
        .await
        .expect("2 MiB to a slow reader within 30 s: a stall means a lost wake-up");
    assert_eq!(back.len(), 8 + 64 + 4, "count, tail and checksum came back");
    assert_eq!(
        u64::from_be_bytes(back[..8].try_into().unwrap()),
        data.len() as u64
    );
    assert_eq!(&back[8..72], &data[data.len() - 64..]);
    assert_eq!(
        u32::from_be_bytes(back[72..].try_into().unwrap()),
        crc(&data),
        "every byte, in order"
    );
}

/// An order-sensitive checksum (Adler-32), enough to tell reordered or lost bytes.
fn crc(data: &[u8]) -> u32 {
    let (mut a, mut b) = (1u32, 0u32);
    for &x in data {
        a = (a + u32::from(x)) % 65_521;
        b = (b + a) % 65_521;
    }
    (b << 16) | a
}

async fn connections_over_the_limit_are_closed_and_room_frees_up(mode: CopyMode, pod: IpAddr) {
    let port = echo_app().await;
    let (listen, stats) = forwarding(pod, port, 3, mode).await;
    // Let the connection that found the port open be accepted and finish.
    for _ in 0..500 {
        let s = stats.snapshot();
        if s.total >= 1 && s.open == 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }

    let mut held = Vec::new();
    for i in 0..3u8 {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(&[i; 4]).await.unwrap();
        let mut buf = [0u8; 4];
        c.read_exact(&mut buf).await.unwrap();
        assert_eq!(buf, [i; 4]);
        held.push(c);
    }
    assert_eq!(stats.snapshot().open, 3);

    let mut over = TcpStream::connect(listen).await.unwrap();
    let _ = over.write_all(b"x").await;
    let mut buf = [0u8; 1];
    let n = tokio::time::timeout(Duration::from_secs(5), over.read(&mut buf))
        .await
        .expect("the connection over the limit is closed at once");
    assert!(matches!(n, Ok(0) | Err(_)), "{n:?}");
    assert_eq!(stats.snapshot().rejected, 1);

    drop(held.pop());
    for _ in 0..100 {
        if stats.snapshot().open == 2 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut again = TcpStream::connect(listen).await.unwrap();
    again.write_all(b"room").await.unwrap();
    let mut buf = [0u8; 4];
    again.read_exact(&mut buf).await.unwrap();
    assert_eq!(&buf, b"room");
    assert_eq!(stats.snapshot().rejected, 1);
}

#[tokio::test]
async fn a_port_the_app_serves_on_the_pod_ip_is_left_alone() {
    // The app listens on every address, like the agents UI container.
    let l = TcpListener::bind("0.0.0.0:0").await.unwrap();
    let port = l.local_addr().unwrap().port();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            tokio::spawn(async move {
                let _ = s.write_all(b"the app itself").await;
            });
        }
    });
    let listen = SocketAddr::new(pod_ip(5), port);
    match forward::bind_or_detect(listen, Duration::from_secs(1))
        .await
        .unwrap()
    {
        Bind::AlreadyServed(why) => assert!(why.contains("a listener answers"), "{why}"),
        Bind::Listening(_) => panic!("bound over the app's own listener"),
    }

    let stats = Arc::new(ForwardStats::default());
    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(forward::run_port(
        PortForward {
            slug: "agents".into(),
            listen,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            max_connections: 8,
            copy_mode: CopyMode::Splice,
        },
        Duration::from_millis(20),
        stats.clone(),
        events_tx,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut c = TcpStream::connect(listen).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"the app itself");
    assert_eq!(stats.snapshot().total, 0, "the agent forwarded nothing");
    assert!(!task.is_finished(), "it keeps looking, quietly");
    let event = events_rx.try_recv().unwrap();
    assert!(
        matches!(&event.state, forward::PortState::LeftAlone(why) if why.contains("in use")),
        "{event:?}"
    );
    assert!(events_rx.try_recv().is_err(), "said once");
    task.abort();
}

#[tokio::test]
async fn a_free_address_is_bound() {
    let port = echo_app().await;
    let listen = SocketAddr::new(pod_ip(6), port);
    match forward::bind_or_detect(listen, Duration::from_secs(1))
        .await
        .unwrap()
    {
        Bind::Listening(l) => assert_eq!(l.local_addr().unwrap(), listen),
        Bind::AlreadyServed(why) => panic!("{why}"),
    }
}

#[tokio::test]
async fn accepted_connections_have_nodelay_from_the_listener() {
    // serve() leaves the inbound side's TCP_NODELAY to the listener: small writes (a WebSocket
    // message, an HTTP answer) go out at once.
    let l = forward::listen(SocketAddr::new(pod_ip(8), 0)).unwrap();
    let c = TcpStream::connect(l.local_addr().unwrap()).await.unwrap();
    let (s, _) = l.accept().await.unwrap();
    assert!(s.nodelay().unwrap());
    drop(c);
}

#[tokio::test]
async fn forwarding_waits_for_the_app_before_taking_the_port() {
    let port = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap().port()
    };
    let listen = SocketAddr::new(pod_ip(7), port);
    let (events_tx, _events_rx) = mpsc::unbounded_channel();
    let task = tokio::spawn(forward::run_port(
        PortForward {
            slug: "tilt".into(),
            listen,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            max_connections: 8,
            copy_mode: CopyMode::Splice,
        },
        Duration::from_millis(20),
        Arc::new(ForwardStats::default()),
        events_tx,
    ));
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(
        TcpStream::connect(listen).await.is_err(),
        "the pod IP port stays free while the app is down"
    );
    // The app comes up on every address: the agent must not have taken the port first.
    let app = TcpListener::bind(SocketAddr::from(([0, 0, 0, 0], port)))
        .await
        .expect("the app can still bind every address");
    drop(app);
    // The app comes up on loopback only: now the agent forwards.
    let l = TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], port)))
        .await
        .unwrap();
    tokio::spawn(async move {
        loop {
            let (mut s, _) = l.accept().await.unwrap();
            let _ = s.write_all(b"tilt").await;
        }
    });
    wait_until_connects(listen).await;
    let mut c = TcpStream::connect(listen).await.unwrap();
    let mut got = Vec::new();
    c.read_to_end(&mut got).await.unwrap();
    assert_eq!(got, b"tilt");
    task.abort();
}

#[tokio::test]
async fn an_address_not_on_this_host_is_a_start_failure() {
    let port = echo_app().await;
    // TEST-NET-3: never assigned here. Binding fails locally; nothing is sent to it.
    let listen = SocketAddr::from(([203, 0, 113, 7], port));
    let err = forward::bind_or_detect(listen, Duration::from_secs(1))
        .await
        .unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::AddrNotAvailable);

    let (events_tx, mut events_rx) = mpsc::unbounded_channel();
    forward::run_port(
        PortForward {
            slug: "code-server".into(),
            listen,
            target: SocketAddr::from(([127, 0, 0, 1], port)),
            max_connections: 8,
            copy_mode: CopyMode::Splice,
        },
        Duration::from_millis(20),
        Arc::new(ForwardStats::default()),
        events_tx,
    )
    .await;
    let event = events_rx.recv().await.unwrap();
    assert_eq!(event.slug, "code-server");
    match event.state {
        forward::PortState::Failed(why) => assert!(
            why.starts_with(&format!("cannot listen on {listen} for code-server")),
            "{why}"
        ),
        other => panic!("{other:?}"),
    }
}

#[tokio::test]
async fn data_flows_both_ways_and_a_client_half_close_reaches_the_app_splice() {
    data_flows_both_ways_and_a_client_half_close_reaches_the_app(CopyMode::Splice, pod_ip(1)).await;
}

#[tokio::test]
async fn data_flows_both_ways_and_a_client_half_close_reaches_the_app_buffers() {
    data_flows_both_ways_and_a_client_half_close_reaches_the_app(CopyMode::Buffers, pod_ip(101))
        .await;
}

#[tokio::test]
async fn an_app_half_close_reaches_the_client_and_the_other_direction_keeps_flowing_splice() {
    an_app_half_close_reaches_the_client_and_the_other_direction_keeps_flowing(
        CopyMode::Splice,
        pod_ip(2),
    )
    .await;
}

#[tokio::test]
async fn an_app_half_close_reaches_the_client_and_the_other_direction_keeps_flowing_buffers() {
    an_app_half_close_reaches_the_client_and_the_other_direction_keeps_flowing(
        CopyMode::Buffers,
        pod_ip(102),
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_each_get_their_own_bytes_back_splice() {
    many_concurrent_connections_each_get_their_own_bytes_back(CopyMode::Splice, pod_ip(3)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_connections_each_get_their_own_bytes_back_buffers() {
    many_concurrent_connections_each_get_their_own_bytes_back(CopyMode::Buffers, pod_ip(103)).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_room_frees_up_splice() {
    connections_over_the_limit_are_closed_and_room_frees_up(CopyMode::Splice, pod_ip(4)).await;
}

#[tokio::test]
async fn connections_over_the_limit_are_closed_and_room_frees_up_buffers() {
    connections_over_the_limit_are_closed_and_room_frees_up(CopyMode::Buffers, pod_ip(104)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_answer_one_at_a_time_never_stall_splice() {
    request_and_answer_one_at_a_time_never_stall(CopyMode::Splice, pod_ip(9)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn request_and_answer_one_at_a_time_never_stall_buffers() {
    request_and_answer_one_at_a_time_never_stall(CopyMode::Buffers, pod_ip(109)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_in_order_splice() {
    a_slow_reader_gets_every_byte_in_order(CopyMode::Splice, pod_ip(10)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_reader_gets_every_byte_in_order_buffers() {
    a_slow_reader_gets_every_byte_in_order(CopyMode::Buffers, pod_ip(110)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_and_the_close_right_behind_it_arrive_whole_splice() {
    an_answer_and_the_close_right_behind_it_arrive_whole(CopyMode::Splice, pod_ip(11)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_answer_and_the_close_right_behind_it_arrive_whole_buffers() {
    an_answer_and_the_close_right_behind_it_arrive_whole(CopyMode::Buffers, pod_ip(111)).await;
}

/// VmRSS of `pid`, KiB.
fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// The real agent with its default copy mode and connection limit: 512 connections that each
/// carried a request and its answer, then stay open and idle (WebSockets between messages), cost
/// at most 64 KiB each, and the agent stays under 64 MiB RSS.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_connections_at_the_limit_stay_within_the_memory_bound() {
    const IDLE: usize = 512;
    let cp = common::StandIn::start(common::Recorder::new(15)).await;
    let port = echo_app().await;
    let pod = pod_ip(200);
    let mut agent = tokio::process::Command::new(env!("CARGO_BIN_EXE_lumie-agent"))
        .env("CODER_AGENT_URL", cp.url().as_str())
        .env("CODER_AGENT_TOKEN", "memory-test")
        .env("POD_IP", pod.to_string())
        .env(
            "LUMIE_AGENT_APP_PORTS",
            format!(
                "tilt={port},code-server={},agents={}",
                common::free_port(),
                common::free_port()
            ),
        )
        .env(
            "LUMIE_AGENT_APP_HEALTH",
            "code-server=disabled,agents=disabled",
        )
        .env("LUMIE_AGENT_HOME_DIR", std::env::temp_dir())
        .env("LUMIE_AGENT_LOG", "warn")
        .env_remove("LUMIE_AGENT_COPY_MODE")
        .env_remove("LUMIE_AGENT_MAX_CONNECTIONS")
        .stdout(std::process::Stdio::null())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let pid = agent.id().unwrap();
    let listen = SocketAddr::new(pod, port);
    wait_until_connects(listen).await;
    let before = rss_kib(pid);

    let request = pattern(2000, 9);
    let mut held = Vec::with_capacity(IDLE);
    for _ in 0..IDLE {
        let mut c = TcpStream::connect(listen).await.unwrap();
        c.write_all(&request).await.unwrap();
        let mut back = vec![0u8; request.len()];
        tokio::time::timeout(Duration::from_secs(5), c.read_exact(&mut back))
            .await
            .expect("answered through the agent")
            .unwrap();
        assert_eq!(back, request);
        held.push(c);
    }
    // Every connection is still open: one more byte each comes back.
    for c in &mut held {
        c.write_all(b"!").await.unwrap();
        let mut b = [0u8; 1];
        c.read_exact(&mut b).await.unwrap();
        assert_eq!(&b, b"!");
    }
    let during = rss_kib(pid);
    let per_connection = during.saturating_sub(before) as f64 / IDLE as f64;
    assert!(
        per_connection <= 64.0,
        "{per_connection:.1} KiB per idle connection (RSS {before} KiB before, {during} KiB with {IDLE})"
    );
    assert!(
        during < 64 * 1024,
        "the agent holds {during} KiB RSS with {IDLE} idle connections"
    );
    drop(held);
    agent.kill().await.unwrap();
    cp.stop().await;
}
