//! The workspace page's resource graphs: CPU, memory and disk over the last hour, drawn as small
//! inline SVG on the server (no chart library, no script), from the samples the heartbeats
//! leave in the database ([`crate::db::SampleGate`], [`crate::db::ResourceSample`]).
//!
//! Each graph has a fixed box, so a refresh (`/_dashboard/resources/{id}`, every
//! [`REFRESH_MS`]) swaps the markup without moving anything on the page.

use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use lumie_contract::agent_api::ResourceStats;
use maud::{Markup, html};

use super::html_response;
use crate::api::visible_workspace;
use crate::caller::Principal;
use crate::db::{ResourceSample, SAMPLE_BUCKET_MS, SAMPLE_RETENTION_MS};
use crate::model::now_ms;
use crate::state::AppState;

/// How often the page reloads the graphs (one new sample per bucket at most).
pub const REFRESH_MS: i64 = SAMPLE_BUCKET_MS;
/// The graphs' drawing box (viewBox units; the SVG is stretched to the card's width).
pub const WIDTH: f64 = 240.0;
/// Height of the drawing box.
pub const HEIGHT: f64 = 48.0;
/// Samples further apart than this are drawn with a gap (the agent was not reporting).
pub const GAP_MS: i64 = 3 * SAMPLE_BUCKET_MS;

/// Called for every accepted heartbeat that carries stats: stores a sample when it is the
/// first of its bucket ([`crate::db::SampleGate`]), off the heartbeat's path, and now and then
/// prunes samples past the hour. A failed write only costs a point on a graph.
pub fn offer_sample(state: &AppState, workspace_id: &str, stats: ResourceStats) {
    let now = now_ms();
    let Some(admission) = state.samples.admit(workspace_id, now) else {
        return;
    };
    let db = state.db.clone();
    let id = workspace_id.to_string();
    tokio::spawn(async move {
        if let Err(e) = db.record_sample(&id, admission.bucket, now, &stats).await {
            tracing::debug!(workspace = %id, error = %e, "resource sample not stored");
        }
        if admission.prune
            && let Err(e) = db.prune_samples(now - SAMPLE_RETENTION_MS).await
        {
            tracing::debug!(error = %e, "old resource samples not pruned");
        }
    });
}

/// One graph's line and the area under it (SVG path data) over the window
/// `[end - SAMPLE_RETENTION_MS, end]`, values scaled to `0..=max` (clamped), broken where
/// samples are more than [`GAP_MS`] apart. Each run starts a bucket before its first sample, so
/// a lone sample is a short flat step rather than an invisible point.
pub fn paths(points: &[(i64, f64)], end: i64, max: f64) -> (String, String) {
    let start = end - SAMPLE_RETENTION_MS;
    let max = if max.is_finite() && max > 0.0 {
        max
    } else {
        1.0
    };
    let x_of = |at: i64| (at.max(start) - start) as f64 / SAMPLE_RETENTION_MS as f64 * WIDTH;
    let y_of = |v: f64| {
        let v = if v.is_finite() { v } else { 0.0 };
        HEIGHT - (v / max).clamp(0.0, 1.0) * (HEIGHT - 2.0) - 1.0
    };
    let mut runs: Vec<Vec<(f64, f64)>> = vec![];
    let mut prev: Option<i64> = None;
    for &(at, v) in points.iter().filter(|(at, _)| *at >= start && *at <= end) {
        let y = y_of(v);
        match runs.last_mut() {
            Some(run) if prev.is_some_and(|p| at - p <= GAP_MS) => run.push((x_of(at), y)),
            _ => runs.push(vec![(x_of(at - SAMPLE_BUCKET_MS), y), (x_of(at), y)]),
        }
        prev = Some(at);
    }
    let mut line = vec![];
    let mut area = vec![];
    for run in &runs {
        let (x0, _) = run[0];
        let (xn, _) = run[run.len() - 1];
        let pts: Vec<String> = run.iter().map(|(x, y)| format!("{x:.1} {y:.1}")).collect();
        line.push(format!("M{}", pts.join(" L")));
        area.push(format!(
            "M{x0:.1} {HEIGHT:.1} L{} L{xn:.1} {HEIGHT:.1} Z",
            pts.join(" L")
        ));
    }
    (line.join(" "), area.join(" "))
}

/// Bytes for people: `512 B`, `3.4 MiB`, `1.2 GiB`.
pub fn bytes(n: i64) -> String {
    const UNITS: [&str; 5] = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = n.max(0) as f64;
    let mut unit = 0;
    while v >= 1024.0 && unit < UNITS.len() - 1 {
        v /= 1024.0;
        unit += 1;
    }
    match unit {
        0 => format!("{v:.0} {}", UNITS[0]),
        _ if v >= 100.0 => format!("{v:.0} {}", UNITS[unit]),
        _ => format!("{v:.1} {}", UNITS[unit]),
    }
}

/// Cores for people: `0.42 cores`, `1 core`.
pub fn cores(c: f64) -> String {
    if (c - 1.0).abs() < 0.005 {
        "1 core".into()
    } else {
        format!("{c:.2} cores")
    }
}

/// One graph: what it shows, the current value in words, and the line.
struct Graph {
    id: &'static str,
    title: &'static str,
    now: String,
    peak: String,
    /// (line, area).
    d: (String, String),
}

fn graphs(samples: &[ResourceSample], end: i64) -> Vec<Graph> {
    let last = samples.last();
    let cpu: Vec<(i64, f64)> = samples.iter().map(|s| (s.at, s.cpu_cores)).collect();
    let cpu_peak = cpu.iter().map(|p| p.1).fold(0.0, f64::max);
    // CPU has no total in the stats: the scale is the hour's peak (at least a tenth of a core).
    let cpu_max = (cpu_peak * 1.25).max(0.1);
    let of_total = |used: fn(&ResourceSample) -> i64, total: fn(&ResourceSample) -> i64| {
        let pts: Vec<(i64, f64)> = samples.iter().map(|s| (s.at, used(s) as f64)).collect();
        let peak = samples.iter().map(used).max().unwrap_or(0);
        let max = last
            .map(total)
            .filter(|t| *t > 0)
            .unwrap_or(peak.max(1) * 5 / 4);
        let now = match last {
            Some(s) if total(s) > 0 => format!(
                "{} of {} ({:.0} %)",
                bytes(used(s)),
                bytes(total(s)),
                used(s) as f64 / total(s) as f64 * 100.0
            ),
            Some(s) => bytes(used(s)),
            None => "—".into(),
        };
        let peak = if samples.is_empty() {
            "—".into()
        } else {
            bytes(peak)
        };
        (paths(&pts, end, max as f64), now, peak)
    };
    let (mem_d, mem_now, mem_peak) = of_total(|s| s.memory_used_bytes, |s| s.memory_total_bytes);
    let (disk_d, disk_now, disk_peak) = of_total(|s| s.disk_used_bytes, |s| s.disk_total_bytes);
    vec![
        Graph {
            id: "cpu",
            title: "CPU",
            now: last
                .map(|s| cores(s.cpu_cores))
                .unwrap_or_else(|| "—".into()),
            peak: if samples.is_empty() {
                "—".into()
            } else {
                cores(cpu_peak)
            },
            d: paths(&cpu, end, cpu_max),
        },
        Graph {
            id: "memory",
            title: "Memory",
            now: mem_now,
            peak: mem_peak,
            d: mem_d,
        },
        Graph {
            id: "disk",
            title: "Disk (home volume)",
            now: disk_now,
            peak: disk_peak,
            d: disk_d,
        },
    ]
}

/// The graphs alone (what the refresh swaps in).
pub fn panel(samples: &[ResourceSample], end: i64) -> Markup {
    html! {
        div.graphs {
            @for g in graphs(samples, end) {
                figure.graph #{ "graph-" (g.id) } {
                    figcaption {
                        span.graph-title { (g.title) }
                        span.graph-now { (g.now) }
                    }
                    svg.spark viewBox={ "0 0 " (WIDTH) " " (HEIGHT) } preserveAspectRatio="none"
                        role="img" aria-label={ (g.title) " over the last hour: now " (g.now) ", peak " (g.peak) } {
                        path.axis d={ "M0 " (HEIGHT - 0.5) "H" (WIDTH) } vector-effect="non-scaling-stroke" {}
                        path.area d=(g.d.1) {}
                        path.line d=(g.d.0) vector-effect="non-scaling-stroke" {}
                    }
                    div.graph-scale { span { "1 h ago" } span { "peak " (g.peak) } span { "now" } }
                }
            }
        }
        @if samples.is_empty() {
            p.hint { "No samples yet: the agent reports CPU, memory and disk with its heartbeats, \
                and the graphs fill in as they arrive." }
        } @else {
            p.hint {
                (samples.len()) @if samples.len() == 1 { " sample" } @else { " samples" }
                ", one per " (SAMPLE_BUCKET_MS / 1000) " s."
            }
        }
    }
}

/// The page's section: title, the graphs, refreshed in place.
pub fn section(workspace_id: &str, samples: &[ResourceSample], end: i64) -> Markup {
    html! {
        section.card aria-labelledby="resources-title" {
            h2 #resources-title { "Resources, last hour" }
            div #resources data-refresh={ "/_dashboard/resources/" (workspace_id) } data-every=(REFRESH_MS) {
                (panel(samples, end))
            }
        }
    }
}

/// The last hour's samples of a workspace.
pub async fn recent(
    state: &AppState,
    workspace_id: &str,
    now: i64,
) -> crate::Result<Vec<ResourceSample>> {
    state
        .db
        .samples_since(workspace_id, now - SAMPLE_RETENTION_MS)
        .await
}

/// `GET /_dashboard/resources/{id}`: the graphs alone.
pub async fn fragment(
    State(state): State<AppState>,
    p: Principal,
    Path(id): Path<String>,
) -> Response {
    let now = now_ms();
    let result = async {
        let ws = visible_workspace(&state, &p, &id).await?;
        recent(&state, &ws.id, now).await
    }
    .await;
    match result {
        Ok(samples) => html_response(StatusCode::OK, panel(&samples, now)),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// (case, points, max, the line wanted).
    type PathCase = (&'static str, Vec<(i64, f64)>, f64, &'static str);

    #[test]
    fn paths_scale_clamp_and_break_at_gaps() {
        let end = 10 * SAMPLE_RETENTION_MS;
        let start = end - SAMPLE_RETENTION_MS;
        let half = start + SAMPLE_RETENTION_MS / 2;
        let cases: &[PathCase] = &[
            ("none", vec![], 1.0, ""),
            (
                "one sample is a step over its bucket",
                vec![(half, 0.5)],
                1.0,
                "M118.0 24.0 L120.0 24.0",
            ),
            (
                "joined, the first step clamped to the window",
                vec![(start, 0.0), (start + SAMPLE_BUCKET_MS, 1.0)],
                1.0,
                "M0.0 47.0 L0.0 47.0 L2.0 1.0",
            ),
            (
                "gap starts a new line",
                vec![(start, 0.0), (start + GAP_MS + 1, 0.0)],
                1.0,
                "M0.0 47.0 L0.0 47.0 M4.0 47.0 L6.0 47.0",
            ),
            (
                "above max is clamped",
                vec![(end, 9.0)],
                1.0,
                "M238.0 1.0 L240.0 1.0",
            ),
            (
                "older than the hour is left out",
                vec![(start - 1, 1.0)],
                1.0,
                "",
            ),
            (
                "zero max does not divide by zero",
                vec![(end, 0.0)],
                0.0,
                "M238.0 47.0 L240.0 47.0",
            ),
            (
                "NaN is drawn as zero",
                vec![(end, f64::NAN)],
                1.0,
                "M238.0 47.0 L240.0 47.0",
            ),
        ];
        for (name, points, max, want) in cases {
            assert_eq!(paths(points, end, *max).0, *want, "{name}");
        }
        assert_eq!(
            paths(&[(half, 0.5)], end, 1.0).1,
            "M118.0 48.0 L118.0 24.0 L120.0 24.0 L120.0 48.0 Z"
        );
    }

    #[test]
    fn numbers_for_people() {
        let cases = [
            (0, "0 B"),
            (512, "512 B"),
            (1536, "1.5 KiB"),
            (3 * 1024 * 1024 + 400 * 1024, "3.4 MiB"),
            (200 * 1024 * 1024 * 1024, "200 GiB"),
            (-5, "0 B"),
        ];
        for (n, want) in cases {
            assert_eq!(bytes(n), want, "{n}");
        }
        assert_eq!(cores(1.0), "1 core");
        assert_eq!(cores(0.421), "0.42 cores");
    }

    #[test]
    fn the_panel_keeps_its_three_boxes_with_or_without_samples() {
        let end = 10 * SAMPLE_RETENTION_MS;
        let empty = panel(&[], end).into_string();
        let one = panel(
            &[ResourceSample {
                at: end - 1000,
                cpu_cores: 0.5,
                memory_used_bytes: 1 << 30,
                memory_total_bytes: 4 << 30,
                disk_used_bytes: 1 << 30,
                disk_total_bytes: 10 << 30,
            }],
            end,
        )
        .into_string();
        for page in [&empty, &one] {
            for id in ["graph-cpu", "graph-memory", "graph-disk"] {
                assert!(page.contains(id), "{id}: {page}");
            }
        }
        assert!(empty.contains("No samples yet"));
        assert!(one.contains("1.0 GiB of 4.0 GiB (25 %)"), "{one}");
        assert!(one.contains("0.50 cores"), "{one}");
    }
}
