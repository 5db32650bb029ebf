//! Agent benchmarks, on the real binary: `cargo bench -p lumie-agent` (release build).
//!
//! - forwarding throughput through the agent (splice, and read/write buffers) vs a direct
//!   loopback connection, alternating in the same run (ratio to the direct run of the same
//!   round), with the CPU time each party costs, how busy the machine was and how much of that
//!   was someone else's work (on a shared machine a figure is only comparable to another taken
//!   under like load);
//! - idle RSS (VmRSS of the running agent) and idle CPU with heartbeats every second;
//! - binary size.
//!
//! A stand-in control plane (axum on loopback) answers heartbeats; a sink app on 127.0.0.1
//! swallows bytes; 127.0.0.9 and 127.0.0.10 play the pod IPs of two agents. Targets: ≥ 0.9×
//! direct, ≤ 8 MiB RSS, ≤ 10 MiB binary, idle CPU ≈ 0. Throughput on a shared 2-core machine
//! depends on what else runs; the load average is printed with the figures. To profile another
//! build of the agent (`cargo build --profile profiling`), name it in `LUMIE_AGENT_BENCH_BIN`.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_lumie-agent");
/// Runs another build of the agent instead (e.g. `target/profiling/lumie-agent` under perf).
const AGENT_OVERRIDE: &str = "LUMIE_AGENT_BENCH_BIN";
const BYTES_PER_RUN: u64 = 1 << 30;
/// Rounds (one run of each arm); `LUMIE_AGENT_BENCH_ROUNDS` sets another number.
const ROUNDS: usize = 5;
const CHUNK: usize = 256 * 1024;

struct Agent {
    child: Child,
    pid: u32,
    addr: SocketAddr,
}

fn agent_bin() -> String {
    std::env::var(AGENT_OVERRIDE).unwrap_or_else(|_| AGENT.to_string())
}

fn start_agent(cp: SocketAddr, sink: u16, pod_ip: [u8; 4], copy_mode: &str) -> Agent {
    let (free_a, free_b) = (free_port(), free_port());
    let ip = std::net::IpAddr::from(pod_ip);
    let child = Command::new(agent_bin())
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
    let bin = agent_bin();
    let size = std::fs::metadata(&bin).unwrap().len();
    println!("binary: {bin}");
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
    let mut runs: [Vec<Run>; 3] = Default::default();
    let rounds = std::env::var("LUMIE_AGENT_BENCH_ROUNDS")
        .ok()
        .and_then(|r| r.parse().ok())
        .unwrap_or(ROUNDS);
    for _ in 0..rounds {
        runs[0].push(push(direct, None));
        runs[1].push(push(splice.addr, Some(splice.pid)));
        runs[2].push(push(buffers.addr, Some(buffers.pid)));
    }
    println!("load average after: {}", load_average());
    for (name, r) in ["direct", "agent (splice)", "agent (buffers)"]
        .iter()
        .zip(&runs)
    {
        let m = |f: fn(&Run) -> f64| median(r.iter().map(f).collect());
        let rate = m(|r| r.rate);
        // Against the direct run of the same round: the machine's other load changes between
        // rounds more than within one.
        let ratio = median(
            r.iter()
                .zip(&runs[0])
                .map(|(r, d)| r.rate / d.rate)
                .collect(),
        );
        println!(
            "throughput {name:>16}: {rate:>6.0} MiB/s = {:.2}x direct; CPU per GiB: client {:.2} s + sink {:.2} s, agent {:.2} s; machine {:.2} of {} cores busy ({:.2} by others), agent {:.0} context switches per MiB",
            ratio,
            m(|r| r.client),
            m(|r| r.own - r.client),
            m(|r| r.agent),
            m(|r| r.busy),
            cores(),
            m(|r| r.others),
            m(|r| r.switches),
        );
    }
    println!(
        "(1 GiB per run, median of {rounds} alternating runs, ratio per round; target >= 0.9x direct)"
    );
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

/// Figures of one run of [`push`].
#[derive(Clone, Copy)]
struct Run {
    /// MiB/s until the sink confirmed the count.
    rate: f64,
    /// CPU seconds per GiB of this process (client and sink).
    own: f64,
    /// Of which the client (this thread); the rest is mostly the sink.
    client: f64,
    /// CPU seconds per GiB of the agent.
    agent: f64,
    /// Cores busy on the whole machine (from /proc/stat): tells whether the run was short of
    /// CPU or waited on something else.
    busy: f64,
    /// Of those, cores busy with work other than the client, sink and agent (another build on a
    /// shared machine): the figures are only comparable between runs when this is alike.
    others: f64,
    /// Context switches of the agent per MiB: how often it slept waiting for bytes or room.
    switches: f64,
}

/// Sends BYTES_PER_RUN to the sink at `addr`, through `agent` when given.
fn push(addr: SocketAddr, agent: Option<u32>) -> Run {
    let buf = vec![0x5au8; CHUNK];
    let me = std::process::id();
    let (own0, client0, agent0, sw0) = (
        cpu_ticks(me),
        thread_ticks(),
        agent.map_or(0, cpu_ticks),
        agent.map_or(0, switches),
    );
    let machine0 = machine_ticks();
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
    let machine1 = machine_ticks();
    assert_eq!(u64::from_be_bytes(count), sent);
    let tck = clock_ticks();
    let own = (cpu_ticks(me) - own0) as f64 / tck;
    let client = (thread_ticks() - client0) as f64 / tck;
    let agent_cpu = agent.map_or(0, cpu_ticks).saturating_sub(agent0) as f64 / tck;
    let sw = agent.map_or(0, switches).saturating_sub(sw0) as f64;
    let gib = sent as f64 / (1u64 << 30) as f64;
    let (busy, total) = (machine1.0 - machine0.0, machine1.1 - machine0.1);
    let busy = busy as f64 / total.max(1) as f64 * cores() as f64;
    Run {
        rate: mib(sent) / secs,
        own: own / gib,
        client: client / gib,
        agent: agent_cpu / gib,
        busy,
        others: (busy - (own + agent_cpu) / secs).max(0.0),
        switches: sw / mib(sent),
    }
}

/// (busy, total) jiffies of all CPUs, from the first line of /proc/stat.
fn machine_ticks() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap();
    let f: Vec<u64> = stat
        .lines()
        .next()
        .unwrap()
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().unwrap())
        .collect();
    // user nice system idle iowait irq softirq steal (guest time is already in user).
    let total: u64 = f.iter().take(8).sum();
    (total - f[3] - f[4], total)
}

fn cores() -> usize {
    std::thread::available_parallelism().map_or(1, |n| n.get())
}

/// Voluntary + involuntary context switches of `pid`'s threads.
fn switches(pid: u32) -> u64 {
    let mut n = 0;
    for t in std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .flatten()
    {
        let status = std::fs::read_to_string(t.path().join("status")).unwrap_or_default();
        n += status
            .lines()
            .filter_map(|l| {
                l.strip_prefix("voluntary_ctxt_switches:")
                    .or_else(|| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            })
            .filter_map(|v| v.trim().parse::<u64>().ok())
            .sum::<u64>();
    }
    n
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
    stat_ticks(&format!("/proc/{pid}/stat"))
}

/// utime + stime of the calling thread, in clock ticks.
fn thread_ticks() -> u64 {
    stat_ticks("/proc/thread-self/stat")
}

fn stat_ticks(path: &str) -> u64 {
    let stat = std::fs::read_to_string(path).unwrap();
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
