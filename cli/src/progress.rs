//! Waiting for a build, as pure decisions over the workspace the server's watch sends: which
//! line to print for a state (status and the server's reason verbatim: the scheduler's message
//! while pending), and whether the wait is over, succeeded or failed.

use std::time::Duration;

use crate::wire::Workspace;

/// What a build is waited for until.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Goal {
    /// `create`, `start`: running (pod running and agent ready).
    Running,
    /// `stop`.
    Stopped,
    /// `delete`.
    Deleted,
}

impl Goal {
    /// The workspace status that ends the wait.
    pub fn status(self) -> &'static str {
        match self {
            Goal::Running => "running",
            Goal::Stopped => "stopped",
            Goal::Deleted => "deleted",
        }
    }
}

/// Where a wait is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Step {
    /// Not there yet.
    Wait,
    /// The goal is reached.
    Done,
    /// It will not get there: why.
    Failed(String),
}

/// Whether the wait for `goal`, after build `build_id` (number `build_number`) was made, is
/// over given the workspace as it is now.
pub fn step(goal: Goal, build_id: &str, build_number: i64, ws: &Workspace) -> Step {
    if ws.status == "deleted" {
        return if goal == Goal::Deleted {
            Step::Done
        } else {
            Step::Failed("the workspace was deleted".into())
        };
    }
    if let Some(latest) = &ws.latest_build
        && latest.id != build_id
        && latest.build_number > build_number
    {
        return Step::Failed(format!(
            "a newer build (#{} {}) took over; `lumie show {}/{}` says where it is",
            latest.build_number, latest.transition, ws.owner_name, ws.name
        ));
    }
    let ours = ws.latest_build.as_ref().filter(|b| b.id == build_id);
    if let Some(b) = ours
        && matches!(b.status.as_str(), "failed" | "canceled")
    {
        let why = b
            .error
            .clone()
            .filter(|e| !e.is_empty())
            .unwrap_or_else(|| ws.status_reason.clone());
        return Step::Failed(format!("the {} build {}: {why}", b.transition, b.status));
    }
    // A failure shown before the server picked our build up is the previous build's.
    if ws.status == "failed" && ours.is_some_and(|b| b.status != "pending") {
        return Step::Failed(format!("failed: {}", ws.status_reason));
    }
    if ws.status == goal.status() {
        return Step::Done;
    }
    Step::Wait
}

/// The progress line for a state, or none when it says what the last one said.
pub fn line(last: Option<&(String, String)>, ws: &Workspace, elapsed: Duration) -> Option<String> {
    let now = (ws.status.clone(), ws.status_reason.clone());
    if last == Some(&now) {
        return None;
    }
    let secs = elapsed.as_secs();
    Some(if ws.status_reason.is_empty() {
        format!("[{secs:>4}s] {}", ws.status)
    } else {
        format!("[{secs:>4}s] {}: {}", ws.status, ws.status_reason)
    })
}

/// `90`, `90s`, `10m`, `1h`; `0` for no limit.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (digits, unit) = match s.find(|c: char| !c.is_ascii_digit()) {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: u64 = digits
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (like 90s, 10m, 1h)"))?;
    let secs = match unit {
        "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        _ => return Err(format!("{s:?}: the unit is s, m or h")),
    };
    Ok(Duration::from_secs(secs))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::Build;

    fn ws(status: &str, reason: &str, build: Option<(&str, i64, &str, &str)>) -> Workspace {
        Workspace {
            id: "w".into(),
            owner_name: "alice".into(),
            name: "dev".into(),
            desired_state: String::new(),
            status: status.into(),
            status_reason: reason.into(),
            created_at: String::new(),
            status_changed_at: String::new(),
            latest_build: build.map(|(id, n, t, s)| Build {
                id: id.into(),
                build_number: n,
                transition: t.into(),
                status: s.into(),
                error: None,
            }),
            agent: None,
            apps: vec![],
        }
    }

    #[test]
    fn waits_end_on_the_goal_or_a_failure_of_ours() {
        use Goal::*;
        let mine = Some(("b2", 2, "start", "running"));
        let cases: Vec<(&str, Goal, Workspace, Step)> = vec![
            (
                "pending waits",
                Running,
                ws("pending", "0/4 nodes", mine),
                Step::Wait,
            ),
            (
                "starting waits",
                Running,
                ws("starting", "", mine),
                Step::Wait,
            ),
            (
                "running is done",
                Running,
                ws("running", "", mine),
                Step::Done,
            ),
            (
                "failed under our build",
                Running,
                ws("failed", "crash", mine),
                Step::Failed("failed: crash".into()),
            ),
            (
                "the previous failure, our build not picked up yet",
                Running,
                ws("failed", "crash", Some(("b2", 2, "start", "pending"))),
                Step::Wait,
            ),
            (
                "a failed build of ours",
                Running,
                ws("stopped", "quota", Some(("b2", 2, "start", "failed"))),
                Step::Failed("the start build failed: quota".into()),
            ),
            (
                "a newer build took over",
                Stopped,
                ws("running", "", Some(("b3", 3, "start", "pending"))),
                Step::Failed(
                    "a newer build (#3 start) took over; `lumie show alice/dev` says where it is"
                        .into(),
                ),
            ),
            (
                "stopping waits",
                Stopped,
                ws("stopping", "", Some(("b2", 2, "stop", "running"))),
                Step::Wait,
            ),
            (
                "stopped is done",
                Stopped,
                ws("stopped", "", Some(("b2", 2, "stop", "succeeded"))),
                Step::Done,
            ),
            (
                "deleting waits",
                Deleted,
                ws("deleting", "", Some(("b2", 2, "delete", "running"))),
                Step::Wait,
            ),
            (
                "deleted is done",
                Deleted,
                ws("deleted", "", None),
                Step::Done,
            ),
            (
                "deleted under a start",
                Running,
                ws("deleted", "", None),
                Step::Failed("the workspace was deleted".into()),
            ),
        ];
        for (name, goal, w, want) in cases {
            assert_eq!(step(goal, "b2", 2, &w), want, "{name}");
        }
    }

    #[test]
    fn a_line_per_change_with_the_reason_verbatim() {
        let pending = ws(
            "pending",
            "0/4 nodes are available: 3 node(s) were unschedulable.",
            None,
        );
        let first = line(None, &pending, Duration::from_secs(2)).unwrap();
        assert_eq!(
            first,
            "[   2s] pending: 0/4 nodes are available: 3 node(s) were unschedulable."
        );
        let last = (pending.status.clone(), pending.status_reason.clone());
        assert_eq!(line(Some(&last), &pending, Duration::from_secs(3)), None);
        let running = ws("running", "", None);
        assert_eq!(
            line(Some(&last), &running, Duration::from_secs(12)).unwrap(),
            "[  12s] running"
        );
    }

    #[test]
    fn durations() {
        let cases: &[(&str, Option<u64>)] = &[
            ("90", Some(90)),
            ("90s", Some(90)),
            ("10m", Some(600)),
            ("1h", Some(3600)),
            ("0", Some(0)),
            ("", None),
            ("5d", None),
            ("m", None),
            ("-1", None),
        ];
        for (s, want) in cases {
            assert_eq!(parse_duration(s).ok().map(|d| d.as_secs()), *want, "{s:?}");
        }
    }
}
