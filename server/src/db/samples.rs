//! Resource samples for the dashboard's graphs: CPU, memory and disk of each workspace over the
//! last hour, taken from the agents' heartbeats.
//!
//! At most one row per workspace per [`SAMPLE_BUCKET_MS`]: the bucket is part of the primary
//! key and the insert is `ON CONFLICT DO NOTHING`, so replicas receiving heartbeats of the same
//! workspace keep the same single sample, and every replica draws the same graph. Rows older
//! than [`SAMPLE_RETENTION_MS`] are pruned by [`SampleGate`]'s callers.

use std::collections::HashMap;
use std::sync::Mutex;

use lumie_contract::agent_api::ResourceStats;
use sqlx::Row;

use super::Db;
use crate::error::Result;

/// One sample per workspace per this many milliseconds.
pub const SAMPLE_BUCKET_MS: i64 = 30_000;
/// Samples are kept this long (the graphs show the last hour).
pub const SAMPLE_RETENTION_MS: i64 = 3_600_000;
/// How often one replica prunes old samples.
pub const PRUNE_EVERY_MS: i64 = 60_000;

/// One stored sample.
#[derive(Clone, Debug, PartialEq)]
pub struct ResourceSample {
    /// When the heartbeat carrying it arrived, ms since the epoch.
    pub at: i64,
    /// CPU in use, cores.
    pub cpu_cores: f64,
    /// Memory in use, bytes.
    pub memory_used_bytes: i64,
    /// Memory limit or total, bytes.
    pub memory_total_bytes: i64,
    /// Home volume in use, bytes.
    pub disk_used_bytes: i64,
    /// Home volume size, bytes.
    pub disk_total_bytes: i64,
}

fn clamp(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

/// Which heartbeats become a database write: the first of each workspace's bucket, as far as
/// this replica knows (the primary key settles it between replicas), and once a minute a prune.
/// Keeps heartbeats at no database write in the common case.
#[derive(Debug, Default)]
pub struct SampleGate {
    inner: Mutex<GateState>,
}

#[derive(Debug, Default)]
struct GateState {
    last_bucket: HashMap<String, i64>,
    last_prune: i64,
}

/// What [`SampleGate::admit`] decided.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Admission {
    /// The bucket the sample goes in.
    pub bucket: i64,
    /// Whether to prune old samples too.
    pub prune: bool,
}

impl SampleGate {
    /// Whether a heartbeat of `workspace_id` at `now` (ms) should be stored.
    pub fn admit(&self, workspace_id: &str, now: i64) -> Option<Admission> {
        let bucket = now.div_euclid(SAMPLE_BUCKET_MS);
        let mut g = self.inner.lock().expect("sample gate lock");
        if g.last_bucket.get(workspace_id) == Some(&bucket) {
            return None;
        }
        g.last_bucket.insert(workspace_id.to_string(), bucket);
        let prune = now - g.last_prune >= PRUNE_EVERY_MS;
        if prune {
            g.last_prune = now;
            // Forget workspaces not heard from for two buckets (deleted or stopped).
            g.last_bucket.retain(|_, b| bucket - *b <= 2);
        }
        Some(Admission { bucket, prune })
    }
}

impl Db {
    /// Stores a sample in `bucket` unless that bucket has one already. Returns whether it did.
    pub async fn record_sample(
        &self,
        workspace_id: &str,
        bucket: i64,
        at: i64,
        stats: &ResourceStats,
    ) -> Result<bool> {
        let cpu = if stats.cpu_cores.is_finite() {
            (stats.cpu_cores.max(0.0) * 1000.0).round() as i64
        } else {
            0
        };
        let r = sqlx::query(
            "INSERT INTO resource_samples (workspace_id, bucket, at, cpu_millicores, \
             memory_used_bytes, memory_total_bytes, disk_used_bytes, disk_total_bytes) \
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (workspace_id, bucket) DO NOTHING",
        )
        .bind(workspace_id)
        .bind(bucket)
        .bind(at)
        .bind(cpu)
        .bind(clamp(stats.memory_used_bytes))
        .bind(clamp(stats.memory_total_bytes))
        .bind(clamp(stats.disk_used_bytes))
        .bind(clamp(stats.disk_total_bytes))
        .execute(&self.pool)
        .await?;
        Ok(r.rows_affected() == 1)
    }

    /// A workspace's samples from `since` on, oldest first.
    pub async fn samples_since(
        &self,
        workspace_id: &str,
        since: i64,
    ) -> Result<Vec<ResourceSample>> {
        let rows = sqlx::query(
            "SELECT at, cpu_millicores, memory_used_bytes, memory_total_bytes, disk_used_bytes, \
             disk_total_bytes FROM resource_samples WHERE workspace_id = $1 AND at >= $2 \
             ORDER BY at",
        )
        .bind(workspace_id)
        .bind(since)
        .fetch_all(&self.pool)
        .await?;
        rows.iter()
            .map(|r| {
                Ok(ResourceSample {
                    at: r.try_get("at")?,
                    cpu_cores: r.try_get::<i64, _>("cpu_millicores")? as f64 / 1000.0,
                    memory_used_bytes: r.try_get("memory_used_bytes")?,
                    memory_total_bytes: r.try_get("memory_total_bytes")?,
                    disk_used_bytes: r.try_get("disk_used_bytes")?,
                    disk_total_bytes: r.try_get("disk_total_bytes")?,
                })
            })
            .collect()
    }

    /// Deletes samples taken before `before`. Returns how many.
    pub async fn prune_samples(&self, before: i64) -> Result<u64> {
        let r = sqlx::query("DELETE FROM resource_samples WHERE at < $1")
            .bind(before)
            .execute(&self.pool)
            .await?;
        Ok(r.rows_affected())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gate_admits_one_heartbeat_per_bucket_and_prunes_once_a_minute() {
        let g = SampleGate::default();
        let t0 = 1_000 * SAMPLE_BUCKET_MS;
        // (workspace, now, admitted, prune)
        let cases = [
            ("a", t0, true, true),
            ("a", t0 + 1_000, false, false),
            ("b", t0 + 2_000, true, false),
            ("a", t0 + SAMPLE_BUCKET_MS, true, false),
            ("a", t0 + SAMPLE_BUCKET_MS + 15_000, false, false),
            ("a", t0 + 2 * SAMPLE_BUCKET_MS, true, true),
        ];
        for (ws, now, admitted, prune) in cases {
            let got = g.admit(ws, now);
            assert_eq!(got.is_some(), admitted, "{ws} at {now}");
            if let Some(a) = got {
                assert_eq!(a.prune, prune, "{ws} at {now}");
                assert_eq!(a.bucket, now / SAMPLE_BUCKET_MS);
            }
        }
    }
}
