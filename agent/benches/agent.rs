//! Agent benchmarks, on the real binary: `cargo bench -p lumie-agent` (release build).
//!
//! - forwarding throughput through the agent (splice, and read/write buffers) vs a direct
//!   loopback connection, alternating in the same run, with the CPU time each path costs;
//! - idle RSS (VmRSS of the running agent) and idle CPU with heartbeats every second;
//! - binary size.
//!
//! A stand-in control plane (axum on loopback) answers heartbeats; a sink app on 127.0.0.1
//! swallows bytes; 127.0.0.9 and 127.0.0.10 play the pod IPs of two agents. Targets: ≥ 0.9×
//! direct, ≤ 8 MiB RSS, ≤ 10 MiB binary, idle CPU ≈ 0. Throughput on a shared 2-core machine
//! depends on what else runs; the load average is printed with the figures.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_lumie-agent");
const BYTES_PER_RUN: u64 = 1 << 30;
const ROUNDS: usize = 5;
const CHUNK: usize = 256 * 1024;

struct Agent {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

fn start_agent(cp: SocketAddr, sink: u16, pod_ip: [u8; 4], copy_mode: &str) -> Agent {
    let (free_a, free_b) = (free_port(), free_port());
    let ip = std::net::IpAddr::from(pod_ip);
    let child = Command::new(AGENT)
        .env("CODER_AGENT_URL", format!("http://{cp}"))
        .env("CODER_AGENT_TOKEN", "bench")
        .env("POD_IP", ip.to_string())
        .env(
            "LUMIE_AGENT_APP_PORTS",
            format!("tilt={sink},code-server={free_a},agents={free_b}"),
        )
        .env(
            "LUMIE_AGENT_APP_HEALTH",
            "code-server=disabled,agents=disabled",
        )
        .env("LUMIE_AGENT_REPORT_INTERVAL", "1s")
        .env("LUMIE_AGENT_HOME_DIR", std::env::temp_dir())
        .env("LUMIE_AGENT_COPY_MODE", copy_mode)
        .env("LUMIE_AGENT_LOG", "warn")
        .stdout(Stdio::null())
        .spawn()
        .expect("start lumie-agent");
    let pid = child.id();
    let addr = SocketAddr::new(ip, sink);
    let start = Instant::now();
    while TcpStream::connect(addr).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "agent never forwarded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    Agent { child, pid, addr }
}

fn main() {
    let heartbeats = Arc::new(AtomicUsize::new(0));
    let cp = control_plane(heartbeats.clone());
    let sink = sink_app();
    let size = std::fs::metadata(AGENT).unwrap().len();
    println!("binary: {AGENT}");
    println!("binary size: {:.2} MiB (target <= 10 MiB)", mib(size));

    let mut splice = start_agent(cp, sink, [127, 0, 0, 9], "splice");
    // Idle: heartbeats every second, nothing forwarded.
    std::thread::sleep(Duration::from_secs(3));
    let (cpu0, beats0, t0) = (
        cpu_ticks(splice.pid),
        heartbeats.load(Ordering::SeqCst),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(10));
    let (cpu1, beats1, wall) = (
        cpu_ticks(splice.pid),
        heartbeats.load(Ordering::SeqCst),
        t0.elapsed(),
    );
    let idle_cpu = (cpu1 - cpu0) as f64 / clock_ticks() / wall.as_secs_f64() * 100.0;
    println!(
        "idle: RSS {:.2} MiB (target <= 8 MiB), CPU {idle_cpu:.2} % of one core over {:.0} s with {} heartbeats (1 s interval)",
        rss_kib(splice.pid) as f64 / 1024.0,
        wall.as_secs_f64(),
        beats1 - beats0
    );

    let mut buffers = start_agent(cp, sink, [127, 0, 0, 10], "buffers");
    let direct = SocketAddr::from(([127, 0, 0, 1], sink));
    println!("load average before: {}", load_average());
    // (rate MiB/s, CPU seconds of the bench process, CPU seconds of the agent) per run.
    let mut runs: [Vec<(f64, f64, f64)>; 3] = Default::default();
    for _ in 0..ROUNDS {
        runs[0].push(push(direct, None));
        runs[1].push(push(splice.addr, Some(splice.pid)));
        runs[2].push(push(buffers.addr, Some(buffers.pid)));
    }
    println!("load average after: {}", load_average());
    let d = median(runs[0].iter().map(|r| r.0).collect());
    for (name, r) in ["direct", "agent (splice)", "agent (buffers)"]
        .iter()
        .zip(&runs)
    {
        let rate = median(r.iter().map(|r| r.0).collect());
        let own = median(r.iter().map(|r| r.1).collect());
        let agent = median(r.iter().map(|r| r.2).collect());
        println!(
            "throughput {name:>16}: {rate:>6.0} MiB/s = {:.2}x direct; CPU per GiB: client+sink {own:.2} s, agent {agent:.2} s",
            rate / d
        );
    }
    println!("(1 GiB per run, median of {ROUNDS} alternating runs; target >= 0.9x direct)");
    println!(
        "RSS after forwarding: splice agent {:.2} MiB, buffers agent {:.2} MiB",
        rss_kib(splice.pid) as f64 / 1024.0,
        rss_kib(buffers.pid) as f64 / 1024.0
    );

    for a in [&mut splice, &mut buffers] {
        let _ = Command::new("kill")
            .args(["-TERM", &a.pid.to_string()])
            .status();
        let _ = a.child.wait();
    }
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

/// Sends BYTES_PER_RUN to the sink at `addr`; (MiB/s until the sink confirmed the count, CPU
/// seconds this process spent, CPU seconds `agent` spent).
fn push(addr: SocketAddr, agent: Option<u32>) -> (f64, f64, f64) {
    let buf = vec![0x5au8; CHUNK];
    let me = std::process::id();
    let (own0, agent0) = (cpu_ticks(me), agent.map_or(0, cpu_ticks));
    let start = Instant::now();
    let mut s = TcpStream::connect(addr).unwrap();
    let mut sent = 0u64;
    while sent < BYTES_PER_RUN {
        s.write_all(&buf).unwrap();
        sent += CHUNK as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count).unwrap();
    let secs = start.elapsed().as_secs_f64();
    assert_eq!(u64::from_be_bytes(count), sent);
    let tck = clock_ticks();
    let own = (cpu_ticks(me) - own0) as f64 / tck;
    let agent = agent.map_or(0, cpu_ticks).saturating_sub(agent0) as f64 / tck;
    let gib = sent as f64 / (1u64 << 30) as f64;
    (mib(sent) / secs, own / gib, agent / gib)
}

/// An app on 127.0.0.1 that reads each connection to EOF and answers the byte count.
fn sink_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::spawn(move || {
                let mut buf = vec![0u8; CHUNK];
                let mut n = 0u64;
                loop {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(k) => n += k as u64,
                    }
                }
                let _ = s.write_all(&n.to_be_bytes());
            });
        }
    });
    port
}

/// A stand-in control plane counting heartbeats; runs on its own thread.
fn control_plane(count: Arc<AtomicUsize>) -> SocketAddr {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    l.set_nonblocking(true).unwrap();
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async move {
            let app = axum::Router::new().route(
                lumie_contract::agent_api::HEARTBEAT_PATH,
                axum::routing::post(move || {
                    count.fetch_add(1, Ordering::SeqCst);
                    async {
                        axum::Json(lumie_contract::agent_api::HeartbeatResponse {
                            report_interval_seconds: 1,
                        })
                    }
                }),
            );
            let l = tokio::net::TcpListener::from_std(l).unwrap();
            axum::serve(l, app).await.unwrap();
        });
    });
    addr
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// utime + stime of `pid` (all its threads), in clock ticks.
fn cpu_ticks(pid: u32) -> u64 {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    // Fields after the command name (which is in parentheses).
    let rest = &stat[stat.rfind(')').unwrap() + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()
}

fn clock_ticks() -> f64 {
    let out = Command::new("getconf").arg("CLK_TCK").output().unwrap();
    String::from_utf8(out.stdout)
        .unwrap()
        .trim()
        .parse()
        .unwrap_or(100.0)
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
