//! Agent benchmarks, on the real binary: `make bench-agent` (installs haproxy and nginx, then
//! `cargo bench -p lumie-agent`, release build).
//!
//! Forwarding through the agent (default mode, and `--copy-mode splice`) against haproxy (TCP
//! mode, one thread) and nginx's stream module (one process), and a direct loopback connection,
//! all in the same run, interleaved in rounds (every arm once per round; medians over rounds,
//! ratios to the direct run of the same round), on traffic of three kinds:
//! - HTTP with a new connection per request (what a browser does to a dev server) at 1, 16 and
//!   64 clients: requests/s and the proxy's CPU per request;
//! - HTTP keep-alive, one client: requests/s;
//! - one long stream (`BULK_BYTES`): MiB/s and the proxy's CPU per GiB.
//!
//! Then memory: each proxy's RSS with `IDLE_CONNECTIONS` idle open connections (each has carried
//! a few bytes once, like a WebSocket after its handshake), and the agent's idle RSS and CPU with
//! heartbeats every second, and the binary's size.
//!
//! One client at a time (a new connection per request, and keep-alive) is bound by latency, not
//! CPU: in a VM whose idle vCPUs halt at once (the bench prints the guest's cpuidle setting), each
//! hop that wakes a sleeping party costs a halt and a wake-up, and whether a round pays them
//! swings with where the scheduler puts the parties. Such rounds come out in two clusters (about
//! 14k and 19k req/s with keep-alive, for every arm, `direct` too), so many short rounds are run
//! and the median is read beside the spread (`LUMIE_AGENT_BENCH_EVERY_ROUND` prints each round).
//! The runs with 16 and 64 clients and the long stream keep the CPUs busy and vary little.
//!
//! CPU figures come from /proc/PID/task/*/schedstat (nanoseconds on CPU), the most robust figure
//! on a shared machine; how busy the machine was, and how much of that was other people's work,
//! is printed with every table (rates are only comparable between runs under like load).
//! A stand-in control plane (axum on loopback) answers heartbeats; the apps (an HTTP server, a
//! byte sink) run in this process on 127.0.0.1; 127.0.0.9/.10 play the agents' pod IPs,
//! 127.0.0.11/.12 are haproxy's and nginx's. Every loop is bounded in time and count, and every
//! process started is stopped at the end (or on a panic). `LUMIE_AGENT_BENCH_ROUNDS` and
//! `LUMIE_AGENT_BENCH_SECS` change the rounds and the seconds per HTTP run,
//! `LUMIE_AGENT_BENCH_KINDS` (`short1,short16,short64,keepalive,bulk`) keeps some kinds only; to
//! profile another build of the agent (`cargo build --profile profiling`), name it in
//! `LUMIE_AGENT_BENCH_BIN`; to compare with an older build in the same run, name it in
//! `LUMIE_AGENT_BENCH_BASELINE_BIN` (127.0.0.13).

use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

const AGENT: &str = env!("CARGO_BIN_EXE_lumie-agent");
/// Runs another build of the agent instead (e.g. `target/profiling/lumie-agent` under perf).
const AGENT_OVERRIDE: &str = "LUMIE_AGENT_BENCH_BIN";
/// Adds an arm: another build of the agent (`cargo build --release` of an older commit), in its
/// default mode.
const BASELINE: &str = "LUMIE_AGENT_BENCH_BASELINE_BIN";
/// Prints every round's rate under each median (to see how much the rounds spread).
const EVERY_ROUND: &str = "LUMIE_AGENT_BENCH_EVERY_ROUND";
/// Bytes of the one long stream.
const BULK_BYTES: u64 = 1 << 30;
/// Rounds (one run of each arm); `LUMIE_AGENT_BENCH_ROUNDS` sets another number.
const ROUNDS: usize = 9;
/// Seconds per HTTP run; `LUMIE_AGENT_BENCH_SECS` sets another number.
const HTTP_SECS: f64 = 1.0;
/// Most requests one HTTP run makes, whatever the time (a bound, not the usual stop).
const MAX_REQUESTS: u64 = 2_000_000;
const CHUNK: usize = 256 * 1024;
/// Idle connections held open for the memory figures: the agent's per-port limit.
const IDLE_CONNECTIONS: usize = 512;
/// Client counts of the new-connection-per-request runs.
const CLIENTS: [usize; 3] = [1, 16, 64];
/// Threads of the HTTP app, each serving one connection at a time.
const APP_THREADS: usize = 96;
/// The app's answer body: a small dev-server asset.
const BODY_LEN: usize = 512;

/// A process started by the benchmark, stopped (SIGTERM, then SIGKILL) when dropped.
struct Proc {
    name: String,
    child: Child,
}

impl Proc {
    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-TERM", &self.child.id().to_string()])
            .status();
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(5) {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        eprintln!("{} did not stop on SIGTERM; killing it", self.name);
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// One proxy (or none) in front of the apps: where its two forwarded ports are.
struct Arm {
    name: &'static str,
    proc: Option<Proc>,
    http: SocketAddr,
    bulk: SocketAddr,
}

impl Arm {
    fn pid(&self) -> Option<u32> {
        self.proc.as_ref().map(Proc::pid)
    }
}

fn agent_bin() -> String {
    std::env::var(AGENT_OVERRIDE).unwrap_or_else(|_| AGENT.to_string())
}

fn start_agent(
    name: &'static str,
    bin: &str,
    cp: SocketAddr,
    apps: Apps,
    pod_ip: [u8; 4],
    copy_mode: Option<&str>,
) -> Arm {
    let ip = IpAddr::from(pod_ip);
    let mut cmd = Command::new(bin);
    cmd.env("CODER_AGENT_URL", format!("http://{cp}"))
        .env("CODER_AGENT_TOKEN", "bench")
        .env("POD_IP", ip.to_string())
        .env(
            "LUMIE_AGENT_APP_PORTS",
            format!(
                "tilt={},code-server={},agents={}",
                apps.bulk,
                apps.http,
                free_port()
            ),
        )
        .env("LUMIE_AGENT_APP_HEALTH", "agents=disabled")
        .env("LUMIE_AGENT_REPORT_INTERVAL", "1s")
        .env("LUMIE_AGENT_HOME_DIR", std::env::temp_dir())
        .env("LUMIE_AGENT_LOG", "warn")
        .env_remove("LUMIE_AGENT_COPY_MODE")
        .stdout(Stdio::null());
    if let Some(mode) = copy_mode {
        cmd.env("LUMIE_AGENT_COPY_MODE", mode);
    }
    let child = cmd.spawn().expect("start lumie-agent");
    arm(name, child, ip, apps)
}

fn arm(name: &'static str, child: Child, ip: IpAddr, apps: Apps) -> Arm {
    let proc = Proc {
        name: name.to_string(),
        child,
    };
    let arm = Arm {
        name,
        proc: Some(proc),
        http: SocketAddr::new(ip, apps.http),
        bulk: SocketAddr::new(ip, apps.bulk),
    };
    let start = Instant::now();
    while TcpStream::connect(arm.http).is_err() || TcpStream::connect(arm.bulk).is_err() {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{name} never forwarded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    arm
}

fn found(bin: &str) -> bool {
    Command::new(bin)
        .arg("-v")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok()
}

/// haproxy in TCP mode, one thread, in the foreground.
fn start_haproxy(dir: &std::path::Path, apps: Apps) -> Option<Arm> {
    if !found("haproxy") {
        println!("haproxy not found (scripts/install-bench-deps.sh installs it); skipped");
        return None;
    }
    let ip = IpAddr::from([127, 0, 0, 11]);
    let cfg = dir.join("haproxy.cfg");
    std::fs::write(
        &cfg,
        format!(
            "global\n  nbthread 1\n  maxconn 8192\n\
             defaults\n  mode tcp\n  timeout connect 5s\n  timeout client 60s\n  timeout server 60s\n\
             listen http\n  bind {ip}:{h}\n  server app 127.0.0.1:{h}\n\
             listen bulk\n  bind {ip}:{b}\n  server app 127.0.0.1:{b}\n",
            h = apps.http,
            b = apps.bulk
        ),
    )
    .unwrap();
    let child = Command::new("haproxy")
        .arg("-db")
        .arg("-f")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start haproxy");
    Some(arm("haproxy (tcp)", child, ip, apps))
}

/// nginx's stream module, one process (no master), in the foreground.
fn start_nginx(dir: &std::path::Path, apps: Apps) -> Option<Arm> {
    let module = "/usr/lib/nginx/modules/ngx_stream_module.so";
    if !found("nginx") || !std::path::Path::new(module).exists() {
        println!(
            "nginx with its stream module not found (scripts/install-bench-deps.sh installs it); skipped"
        );
        return None;
    }
    let ip = IpAddr::from([127, 0, 0, 12]);
    let cfg = dir.join("nginx.conf");
    let d = dir.display();
    std::fs::write(
        &cfg,
        format!(
            "load_module {module};\ndaemon off;\nmaster_process off;\nworker_processes 1;\n\
             pid {d}/nginx.pid;\nerror_log {d}/nginx-error.log warn;\n\
             events {{ worker_connections 8192; }}\n\
             stream {{\n  proxy_half_close on;\n  server {{ listen {ip}:{h}; proxy_pass 127.0.0.1:{h}; }}\n  \
             server {{ listen {ip}:{b}; proxy_pass 127.0.0.1:{b}; }}\n}}\n",
            h = apps.http,
            b = apps.bulk
        ),
    )
    .unwrap();
    let child = Command::new("nginx")
        .arg("-p")
        .arg(dir)
        .arg("-e")
        .arg(dir.join("nginx-error.log"))
        .arg("-c")
        .arg(&cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nginx");
    Some(arm("nginx stream", child, ip, apps))
}

/// The ports of the apps on 127.0.0.1.
#[derive(Clone, Copy)]
struct Apps {
    http: u16,
    bulk: u16,
}

fn main() {
    let heartbeats = Arc::new(AtomicUsize::new(0));
    let cp = control_plane(heartbeats.clone());
    let apps = Apps {
        http: http_app(),
        bulk: sink_app(),
    };
    let bin = agent_bin();
    let size = std::fs::metadata(&bin).unwrap().len();
    println!("binary: {bin}");
    println!("binary size: {:.2} MiB (target <= 10 MiB)", mib(size));
    let rounds = env_or("LUMIE_AGENT_BENCH_ROUNDS", ROUNDS as f64) as usize;
    let secs = env_or("LUMIE_AGENT_BENCH_SECS", HTTP_SECS);
    let dir = tempfile::tempdir().unwrap();

    let mut arms = vec![Arm {
        name: "direct",
        proc: None,
        http: SocketAddr::from(([127, 0, 0, 1], apps.http)),
        bulk: SocketAddr::from(([127, 0, 0, 1], apps.bulk)),
    }];
    arms.push(start_agent(
        "agent (default)",
        &bin,
        cp,
        apps,
        [127, 0, 0, 9],
        None,
    ));
    if std::env::var_os("LUMIE_AGENT_BENCH_KINDS").is_none() {
        idle_agent(&arms[1], &heartbeats);
    }
    arms.push(start_agent(
        "agent (splice)",
        &bin,
        cp,
        apps,
        [127, 0, 0, 10],
        Some("splice"),
    ));
    // Another build in its default mode, e.g. the one before a change, in the same rounds.
    if let Ok(baseline) = std::env::var(BASELINE) {
        println!("baseline: {baseline}");
        arms.push(start_agent(
            "baseline agent",
            &baseline,
            cp,
            apps,
            [127, 0, 0, 13],
            None,
        ));
    }
    arms.extend(start_haproxy(dir.path(), apps));
    arms.extend(start_nginx(dir.path(), apps));

    // What each run measures, in the order of a round (`LUMIE_AGENT_BENCH_KINDS`, e.g.
    // `short16,bulk`, keeps some: for profiling one arm under one load).
    let only = std::env::var("LUMIE_AGENT_BENCH_KINDS").ok();
    let kinds: Vec<Kind> = CLIENTS
        .iter()
        .map(|&c| Kind::Short(c))
        .chain([Kind::KeepAlive, Kind::Bulk])
        .filter(|k| {
            only.as_deref()
                .is_none_or(|o| o.split(',').any(|o| o == k.key()))
        })
        .collect();
    // results[kind][arm][round]
    let mut results = vec![vec![Vec::<Run>::new(); arms.len()]; kinds.len()];
    println!("cpuidle: {}", cpuidle());
    println!(
        "{rounds} rounds; every round runs each kind of traffic through every arm in turn; load average before: {}",
        load_average()
    );
    for _ in 0..rounds {
        for (k, kind) in kinds.iter().enumerate() {
            for (a, arm) in arms.iter().enumerate() {
                results[k][a].push(run(*kind, arm, secs));
            }
        }
    }
    println!("load average after: {}", load_average());
    let every_round = std::env::var_os(EVERY_ROUND).is_some();
    for (k, kind) in kinds.iter().enumerate() {
        println!("\n{}", kind.title());
        for (a, arm) in arms.iter().enumerate() {
            let r = &results[k][a];
            let m = |f: fn(&Run) -> f64| median(r.iter().map(f).collect());
            let ratio = median(
                r.iter()
                    .zip(&results[k][0])
                    .map(|(r, d)| r.rate / d.rate)
                    .collect(),
            );
            let cpu = match kind {
                Kind::Bulk => format!("proxy CPU {:>5.2} s per GiB", m(|r| r.proxy_cpu)),
                _ => format!("proxy CPU {:>5.1} µs per request", m(|r| r.proxy_cpu * 1e6)),
            };
            let cpu = if arm.proc.is_some() {
                cpu
            } else {
                " ".repeat(cpu.chars().count())
            };
            println!(
                "  {:<16} {:>9.0} {} = {ratio:.2}x direct; {cpu}; machine {:.2} of {} cores busy ({:.2} by others)",
                arm.name,
                m(|r| r.rate),
                kind.unit(),
                m(|r| r.busy),
                cores(),
                m(|r| r.others),
            );
            if every_round {
                let rates: Vec<String> = r.iter().map(|r| format!("{:.0}", r.rate)).collect();
                println!("  {:<16} rounds: {}", "", rates.join(" "));
            }
        }
    }
    println!(
        "\n(medians of {rounds} rounds; HTTP runs {secs} s each, bulk runs {} MiB)",
        mib(BULK_BYTES)
    );

    println!(
        "\nmemory with {IDLE_CONNECTIONS} idle open connections (each carried a few bytes once):"
    );
    for arm in arms.iter().filter(|a| a.proc.is_some()) {
        let pid = arm.pid().unwrap();
        let before = rss_kib(pid);
        let held = hold_idle(arm.bulk, IDLE_CONNECTIONS);
        std::thread::sleep(Duration::from_millis(300));
        let during = rss_kib(pid);
        drop(held);
        println!(
            "  {:<16} RSS {:>7.2} MiB with them ({:>7.2} MiB before; {:>5.1} KiB per connection)",
            arm.name,
            during as f64 / 1024.0,
            before as f64 / 1024.0,
            during.saturating_sub(before) as f64 / IDLE_CONNECTIONS as f64
        );
    }
    drop(arms);
}

/// The agent's idle RSS and CPU with heartbeats every second, nothing forwarded.
fn idle_agent(arm: &Arm, heartbeats: &AtomicUsize) {
    let pid = arm.pid().unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let (cpu0, beats0, t0) = (
        cpu_ns(pid),
        heartbeats.load(Ordering::SeqCst),
        Instant::now(),
    );
    std::thread::sleep(Duration::from_secs(8));
    let (cpu1, beats1, wall) = (cpu_ns(pid), heartbeats.load(Ordering::SeqCst), t0.elapsed());
    let idle_cpu = (cpu1 - cpu0) as f64 / 1e9 / wall.as_secs_f64() * 100.0;
    println!(
        "idle: RSS {:.2} MiB (target <= 8 MiB), CPU {idle_cpu:.2} % of one core over {:.0} s with {} heartbeats (1 s interval)",
        rss_kib(pid) as f64 / 1024.0,
        wall.as_secs_f64(),
        beats1 - beats0
    );
}

/// Opens `n` connections to the sink through `addr`, sends a few bytes on each, and holds them.
fn hold_idle(addr: SocketAddr, n: usize) -> Vec<TcpStream> {
    (0..n)
        .map(|_| {
            let mut s = TcpStream::connect(addr).unwrap();
            s.write_all(b"hello, then nothing for a while").unwrap();
            s
        })
        .collect()
}

#[derive(Clone, Copy)]
enum Kind {
    /// HTTP, a new connection per request, this many clients at once.
    Short(usize),
    /// HTTP keep-alive, one client.
    KeepAlive,
    /// One long stream.
    Bulk,
}

impl Kind {
    fn title(&self) -> String {
        match self {
            Kind::Short(c) => {
                format!("HTTP, new connection per request, {c} client(s):")
            }
            Kind::KeepAlive => "HTTP keep-alive, 1 client:".into(),
            Kind::Bulk => format!("one {} MiB stream:", mib(BULK_BYTES)),
        }
    }

    /// Its name in `LUMIE_AGENT_BENCH_KINDS`.
    fn key(&self) -> String {
        match self {
            Kind::Short(c) => format!("short{c}"),
            Kind::KeepAlive => "keepalive".into(),
            Kind::Bulk => "bulk".into(),
        }
    }

    fn unit(&self) -> &'static str {
        match self {
            Kind::Bulk => "MiB/s",
            _ => "req/s",
        }
    }
}

/// Figures of one run.
#[derive(Clone, Copy)]
struct Run {
    /// Requests/s, or MiB/s for bulk.
    rate: f64,
    /// Proxy CPU seconds per request, or per GiB for bulk.
    proxy_cpu: f64,
    /// Cores busy on the whole machine (from /proc/stat).
    busy: f64,
    /// Of those, cores busy with work other than this process and the proxy.
    others: f64,
}

fn run(kind: Kind, arm: &Arm, secs: f64) -> Run {
    let me = std::process::id();
    let pid = arm.pid();
    let (own0, proxy0, machine0) = (own_ticks(me), pid.map_or(0, cpu_ns), machine_ticks());
    let start = Instant::now();
    let done = match kind {
        Kind::Short(clients) => http_load(arm.http, clients, false, secs),
        Kind::KeepAlive => http_load(arm.http, 1, true, secs),
        Kind::Bulk => push(arm.bulk),
    };
    let wall = start.elapsed().as_secs_f64();
    let machine1 = machine_ticks();
    let own = (own_ticks(me) - own0) as f64 / clock_ticks();
    let proxy = pid.map_or(0, cpu_ns).saturating_sub(proxy0) as f64 / 1e9;
    let (busy, total) = (machine1.0 - machine0.0, machine1.1 - machine0.1);
    let busy = busy as f64 / total.max(1) as f64 * cores() as f64;
    let per = match kind {
        Kind::Bulk => done as f64 / (1u64 << 30) as f64,
        _ => done as f64,
    };
    Run {
        rate: match kind {
            Kind::Bulk => mib(done) / wall,
            _ => done as f64 / wall,
        },
        proxy_cpu: proxy / per.max(1e-9),
        busy,
        others: (busy - (own + proxy) / wall).max(0.0),
    }
}

fn env_or(var: &str, default: f64) -> f64 {
    std::env::var(var)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn mib(b: u64) -> f64 {
    b as f64 / (1024.0 * 1024.0)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap());
    v[v.len() / 2]
}

/// The guest's idle driver and, for haltpoll, how long an idle vCPU polls before it halts: what
/// a wake-up costs, and so the one-client figures.
fn cpuidle() -> String {
    let read = |p: &str| {
        std::fs::read_to_string(p)
            .map(|s| s.trim().to_string())
            .unwrap_or_else(|_| "unknown".into())
    };
    let driver = read("/sys/devices/system/cpu/cpuidle/current_driver");
    if driver == "haltpoll" {
        format!(
            "haltpoll, guest_halt_poll_ns {}",
            read("/sys/module/haltpoll/parameters/guest_halt_poll_ns")
        )
    } else {
        driver
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

const REQUEST_CLOSE: &[u8] =
    b"GET /assets/app.js HTTP/1.1\r\nHost: dev\r\nConnection: close\r\n\r\n";
const REQUEST_KEEP: &[u8] = b"GET /assets/app.js HTTP/1.1\r\nHost: dev\r\n\r\n";

fn response() -> Vec<u8> {
    let mut r = format!(
        "HTTP/1.1 200 OK\r\nContent-Type: text/javascript\r\nContent-Length: {BODY_LEN}\r\n\r\n"
    )
    .into_bytes();
    r.extend(std::iter::repeat_n(b'x', BODY_LEN));
    r
}

/// `clients` threads making requests to `addr` for `secs` seconds (at most `MAX_REQUESTS` in
/// all): each on a new connection read to EOF, or all on one keep-alive connection. Returns the
/// requests answered.
fn http_load(addr: SocketAddr, clients: usize, keep_alive: bool, secs: f64) -> u64 {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let count = Arc::new(AtomicU64::new(0));
    let want = response();
    std::thread::scope(|scope| {
        for _ in 0..clients {
            let (count, want) = (count.clone(), &want);
            scope.spawn(move || {
                let mut buf = vec![0u8; 4096];
                if keep_alive {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_nodelay(true).unwrap();
                    while Instant::now() < until && count.load(Ordering::Relaxed) < MAX_REQUESTS {
                        s.write_all(REQUEST_KEEP).unwrap();
                        s.read_exact(&mut buf[..want.len()]).unwrap();
                        assert_eq!(&buf[..want.len()], &want[..]);
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                    return;
                }
                while Instant::now() < until && count.load(Ordering::Relaxed) < MAX_REQUESTS {
                    let mut s = TcpStream::connect(addr).unwrap();
                    s.set_nodelay(true).unwrap();
                    s.write_all(REQUEST_CLOSE).unwrap();
                    let mut got = 0;
                    loop {
                        match s.read(&mut buf[got..]) {
                            Ok(0) => break,
                            Ok(n) => got += n,
                            Err(e) => panic!("reading an answer through {addr}: {e}"),
                        }
                    }
                    assert_eq!(&buf[..got], &want[..], "answer through {addr}");
                    count.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
    });
    count.load(Ordering::Relaxed)
}

/// An HTTP/1.1 app on 127.0.0.1: `APP_THREADS` threads, each serving one connection at a time,
/// answering every request with `response()`, closing after the answer when asked to.
fn http_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let l = Arc::new(l);
    let answer: Arc<[u8]> = response().into();
    for _ in 0..APP_THREADS {
        let (l, answer) = (l.clone(), answer.clone());
        std::thread::spawn(move || {
            let mut buf = vec![0u8; 8192];
            loop {
                let Ok((mut s, _)) = l.accept() else { continue };
                let _ = s.set_nodelay(true);
                let mut have = 0;
                loop {
                    let n = match s.read(&mut buf[have..]) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => n,
                    };
                    have += n;
                    let Some(end) = buf[..have].windows(4).position(|w| w == b"\r\n\r\n") else {
                        if have == buf.len() {
                            break;
                        }
                        continue;
                    };
                    let close = buf[..end]
                        .windows(17)
                        .any(|w| w.eq_ignore_ascii_case(b"connection: close"));
                    if s.write_all(&answer).is_err() || close {
                        break;
                    }
                    buf.copy_within(end + 4..have, 0);
                    have -= end + 4;
                }
            }
        });
    }
    port
}

/// Sends `BULK_BYTES` to the sink at `addr` and waits for its count; returns the bytes.
fn push(addr: SocketAddr) -> u64 {
    let buf = vec![0x5au8; CHUNK];
    let mut s = TcpStream::connect(addr).unwrap();
    let mut sent = 0u64;
    while sent < BULK_BYTES {
        s.write_all(&buf).unwrap();
        sent += CHUNK as u64;
    }
    s.shutdown(std::net::Shutdown::Write).unwrap();
    let mut count = [0u8; 8];
    s.read_exact(&mut count)
        .unwrap_or_else(|e| panic!("the sink's count through {addr}: {e}"));
    assert_eq!(u64::from_be_bytes(count), sent);
    sent
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

/// An app on 127.0.0.1 that reads each connection to EOF and answers the byte count.
fn sink_app() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { continue };
            std::thread::Builder::new()
                .stack_size(64 * 1024)
                .spawn(move || {
                    let mut buf = vec![0u8; CHUNK];
                    let mut n = 0u64;
                    loop {
                        match s.read(&mut buf) {
                            Ok(0) | Err(_) => break,
                            Ok(k) => n += k as u64,
                        }
                    }
                    let _ = s.write_all(&n.to_be_bytes());
                })
                .unwrap();
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
                            ..Default::default()
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

/// Nanoseconds on CPU of every thread of `pid` (from /proc/PID/task/*/schedstat).
fn cpu_ns(pid: u32) -> u64 {
    let Ok(tasks) = std::fs::read_dir(format!("/proc/{pid}/task")) else {
        return 0;
    };
    tasks
        .flatten()
        .filter_map(|t| std::fs::read_to_string(t.path().join("schedstat")).ok())
        .filter_map(|s| s.split_whitespace().next()?.parse::<u64>().ok())
        .sum()
}

/// utime + stime of `pid` in clock ticks, exited threads included (the load's clients).
fn own_ticks(pid: u32) -> u64 {
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
