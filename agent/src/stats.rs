//! Resource usage for heartbeats: CPU and memory of the container's cgroup (v2) when readable,
//! else of the host (sysinfo); disk of the home volume; network bytes since the agent started
//! (loopback excluded, so forwarded traffic is not counted twice); forwarding counters.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

use lumie_contract::agent_api::ResourceStats;
use sysinfo::{Disks, Networks, System};

use crate::forward::ForwardStats;

/// Where cgroup v2 is mounted inside a container with its own cgroup namespace.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

/// Collects [`ResourceStats`]; keeps the previous readings CPU usage is computed from.
pub struct StatsCollector {
    cgroup_root: PathBuf,
    home_dir: PathBuf,
    forward: Arc<ForwardStats>,
    system: System,
    disks: Disks,
    networks: Networks,
    net_baseline: (u64, u64),
    last_cgroup_cpu: Option<(u64, Instant)>,
}

impl StatsCollector {
    /// A collector reading cgroup files under `cgroup_root` and disk usage of `home_dir`.
    pub fn new(cgroup_root: PathBuf, home_dir: PathBuf, forward: Arc<ForwardStats>) -> Self {
        let mut system = System::new();
        system.refresh_cpu_usage();
        let networks = Networks::new_with_refreshed_list();
        let net_baseline = network_totals(&networks);
        let last_cgroup_cpu = read_cgroup_cpu_usec(&cgroup_root).map(|u| (u, Instant::now()));
        Self {
            cgroup_root,
            home_dir,
            forward,
            system,
            disks: Disks::new_with_refreshed_list(),
            networks,
            net_baseline,
            last_cgroup_cpu,
        }
    }

    /// Reads everything once. Never fails: what cannot be read is reported as 0.
    pub fn collect(&mut self) -> ResourceStats {
        let cpu_cores = self.cpu_cores();
        let (memory_used_bytes, memory_total_bytes) = self.memory();
        let (disk_used_bytes, disk_total_bytes) = self.disk();
        self.networks.refresh(true);
        let (rx, tx) = network_totals(&self.networks);
        let forward = self.forward.snapshot();
        ResourceStats {
            cpu_cores,
            memory_used_bytes,
            memory_total_bytes,
            disk_used_bytes,
            disk_total_bytes,
            network_rx_bytes: rx.saturating_sub(self.net_baseline.0),
            network_tx_bytes: tx.saturating_sub(self.net_baseline.1),
            forwarded_connections_open: forward.open,
            forwarded_connections_total: forward.total,
            forwarded_bytes: forward.bytes,
        }
    }

    fn cpu_cores(&mut self) -> f64 {
        if let Some(usec) = read_cgroup_cpu_usec(&self.cgroup_root) {
            let now = Instant::now();
            let cores = match self.last_cgroup_cpu {
                Some((prev, at)) => {
                    cores_between(prev, usec, now.duration_since(at).as_micros() as u64)
                }
                None => 0.0,
            };
            self.last_cgroup_cpu = Some((usec, now));
            return cores;
        }
        self.system.refresh_cpu_usage();
        f64::from(self.system.global_cpu_usage()) / 100.0 * self.system.cpus().len() as f64
    }

    fn memory(&mut self) -> (u64, u64) {
        let current = read_trimmed(&self.cgroup_root.join("memory.current"))
            .and_then(|s| s.parse::<u64>().ok());
        let limit =
            read_trimmed(&self.cgroup_root.join("memory.max")).map(|s| parse_memory_max(&s));
        if let (Some(used), Some(limit)) = (current, limit) {
            let total = match limit {
                Some(l) => l,
                None => {
                    self.system.refresh_memory();
                    self.system.total_memory()
                }
            };
            return (used, total);
        }
        self.system.refresh_memory();
        (self.system.used_memory(), self.system.total_memory())
    }

    fn disk(&mut self) -> (u64, u64) {
        self.disks.refresh(true);
        let home = self
            .home_dir
            .canonicalize()
            .unwrap_or_else(|_| self.home_dir.clone());
        let mounts: Vec<&Path> = self.disks.iter().map(|d| d.mount_point()).collect();
        match volume_for(&mounts, &home) {
            Some(i) => {
                let d = &self.disks.list()[i];
                (
                    d.total_space().saturating_sub(d.available_space()),
                    d.total_space(),
                )
            }
            None => (0, 0),
        }
    }
}

fn network_totals(networks: &Networks) -> (u64, u64) {
    networks
        .iter()
        .filter(|(name, _)| name.as_str() != "lo")
        .fold((0, 0), |(rx, tx), (_, d)| {
            (rx + d.total_received(), tx + d.total_transmitted())
        })
}

fn read_trimmed(path: &Path) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn read_cgroup_cpu_usec(root: &Path) -> Option<u64> {
    parse_cpu_usage_usec(&std::fs::read_to_string(root.join("cpu.stat")).ok()?)
}

/// `usage_usec` from a cgroup v2 `cpu.stat`.
pub fn parse_cpu_usage_usec(cpu_stat: &str) -> Option<u64> {
    cpu_stat.lines().find_map(|l| {
        let (k, v) = l.split_once(' ')?;
        (k == "usage_usec").then(|| v.trim().parse().ok())?
    })
}

/// A cgroup v2 `memory.max`: `None` for `max` (no limit) or anything unreadable.
pub fn parse_memory_max(s: &str) -> Option<u64> {
    s.trim().parse().ok()
}

/// Cores busy on average between two `usage_usec` readings `wall_usec` apart.
pub fn cores_between(prev_usec: u64, now_usec: u64, wall_usec: u64) -> f64 {
    if wall_usec == 0 {
        return 0.0;
    }
    now_usec.saturating_sub(prev_usec) as f64 / wall_usec as f64
}

/// Index of the mount holding `path`: the longest mount point that is a prefix of it.
pub fn volume_for(mount_points: &[&Path], path: &Path) -> Option<usize> {
    mount_points
        .iter()
        .enumerate()
        .filter(|(_, m)| path.starts_with(m))
        .max_by_key(|(_, m)| m.as_os_str().len())
        .map(|(i, _)| i)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_parsers() {
        let stat = "usage_usec 123456\nuser_usec 100000\nsystem_usec 23456\n";
        assert_eq!(parse_cpu_usage_usec(stat), Some(123_456));
        assert_eq!(parse_cpu_usage_usec("user_usec 1\n"), None);
        assert_eq!(parse_cpu_usage_usec("usage_usec x\n"), None);
        assert_eq!(parse_memory_max("max\n"), None);
        assert_eq!(parse_memory_max("1073741824\n"), Some(1 << 30));
        assert_eq!(cores_between(1_000_000, 1_500_000, 1_000_000), 0.5);
        assert_eq!(cores_between(1_000_000, 3_000_000, 1_000_000), 2.0);
        assert_eq!(cores_between(5, 1, 10), 0.0);
        assert_eq!(cores_between(1, 5, 0), 0.0);
    }

    #[test]
    fn home_volume_is_the_longest_mount_prefix() {
        let mounts = [
            Path::new("/"),
            Path::new("/home"),
            Path::new("/home/coder"),
            Path::new("/home/coderx"),
        ];
        let cases = [
            ("/home/coder/project", Some(2)),
            ("/home/coder", Some(2)),
            ("/home/other", Some(1)),
            ("/var", Some(0)),
        ];
        for (path, want) in cases {
            assert_eq!(volume_for(&mounts, Path::new(path)), want, "{path}");
        }
        assert_eq!(volume_for(&[Path::new("/mnt")], Path::new("/var")), None);
    }

    #[test]
    fn collector_reads_a_fake_cgroup_and_the_real_host() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 1000\n").unwrap();
        std::fs::write(dir.path().join("memory.current"), "52428800\n").unwrap();
        std::fs::write(dir.path().join("memory.max"), "104857600\n").unwrap();
        let forward = Arc::new(ForwardStats::default());
        let mut c = StatsCollector::new(dir.path().into(), "/".into(), forward.clone());
        std::fs::write(dir.path().join("cpu.stat"), "usage_usec 100001000\n").unwrap();
        let s = c.collect();
        assert_eq!(s.memory_used_bytes, 50 << 20);
        assert_eq!(s.memory_total_bytes, 100 << 20);
        // 100 s of CPU in a few milliseconds of wall time: many cores busy.
        assert!(s.cpu_cores > 1.0, "{s:?}");
        // The root file system is real and not empty.
        assert!(s.disk_total_bytes > 0 && s.disk_used_bytes > 0, "{s:?}");
        assert!(s.disk_used_bytes <= s.disk_total_bytes);

        // No cgroup files: the host's figures.
        let empty = tempfile::tempdir().unwrap();
        let mut host = StatsCollector::new(empty.path().into(), "/".into(), forward);
        let s = host.collect();
        assert!(
            s.memory_total_bytes > s.memory_used_bytes && s.memory_used_bytes > 0,
            "{s:?}"
        );
        assert!(s.cpu_cores >= 0.0);
    }
}
