//! The doctor's report: one [`Check`] per line (ok / warning / failure, with the fix), rendered
//! as text for operators or JSON for machines, and the process exit code.

use serde::Serialize;

/// How a check came out. Ordered: a report is as bad as its worst check.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Status {
    /// Works as it should.
    Ok,
    /// Works, or could not be checked from here; read the line.
    Warning,
    /// Broken: something will not work until it is fixed.
    Failure,
}

impl Status {
    /// The word used in text output and JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            Status::Ok => "ok",
            Status::Warning => "warning",
            Status::Failure => "failure",
        }
    }
}

/// One check's result.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable machine name (`workspace-service`, `webhook-ca-bundle`, …).
    pub id: &'static str,
    /// The verdict.
    pub status: Status,
    /// What was observed, naming the object at fault.
    pub summary: String,
    /// What to do about it (absent when ok).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub fix: Option<String>,
}

impl Check {
    /// A passing check.
    pub fn ok(id: &'static str, summary: impl Into<String>) -> Self {
        Check {
            id,
            status: Status::Ok,
            summary: summary.into(),
            fix: None,
        }
    }

    /// A warning with what to do.
    pub fn warning(id: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            id,
            status: Status::Warning,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }

    /// A failure with the fix.
    pub fn failure(id: &'static str, summary: impl Into<String>, fix: impl Into<String>) -> Self {
        Check {
            id,
            status: Status::Failure,
            summary: summary.into(),
            fix: Some(fix.into()),
        }
    }
}

/// Output format of `lumie-server doctor`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum)]
pub enum OutputFormat {
    /// One line per check, for people.
    #[default]
    Text,
    /// One JSON document, for machines.
    Json,
}

/// Every check, in the order they ran.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize)]
pub struct Report {
    /// The checks.
    pub checks: Vec<Check>,
}

#[derive(Serialize)]
struct Counts {
    ok: usize,
    warning: usize,
    failure: usize,
}

#[derive(Serialize)]
struct JsonReport<'a> {
    status: Status,
    counts: Counts,
    checks: &'a [Check],
}

impl Report {
    /// The check with this id, if it ran.
    pub fn check(&self, id: &str) -> Option<&Check> {
        self.checks.iter().find(|c| c.id == id)
    }

    /// The worst status (ok for an empty report).
    pub fn status(&self) -> Status {
        self.checks
            .iter()
            .map(|c| c.status)
            .max()
            .unwrap_or(Status::Ok)
    }

    fn count(&self, status: Status) -> usize {
        self.checks.iter().filter(|c| c.status == status).count()
    }

    /// 1 when any check failed, else 0 (warnings do not fail the run).
    pub fn exit_code(&self) -> u8 {
        u8::from(self.status() == Status::Failure)
    }

    /// One line per check — `failure  workspace-service  <summary> — fix: <fix>` — then a
    /// count line.
    pub fn render_text(&self) -> String {
        let width = self.checks.iter().map(|c| c.id.len()).max().unwrap_or(0);
        let mut out = String::new();
        for c in &self.checks {
            out.push_str(&format!(
                "{:<7}  {:<width$}  {}",
                c.status.as_str(),
                c.id,
                one_line(&c.summary)
            ));
            if let Some(fix) = &c.fix {
                out.push_str(" — fix: ");
                out.push_str(&one_line(fix));
            }
            out.push('\n');
        }
        out.push_str(&format!(
            "{} checks: {} ok, {} warning(s), {} failure(s)\n",
            self.checks.len(),
            self.count(Status::Ok),
            self.count(Status::Warning),
            self.count(Status::Failure)
        ));
        out
    }

    /// `{"status": "...", "counts": {...}, "checks": [{id, status, summary, fix?}, ...]}`.
    pub fn render_json(&self) -> String {
        let doc = JsonReport {
            status: self.status(),
            counts: Counts {
                ok: self.count(Status::Ok),
                warning: self.count(Status::Warning),
                failure: self.count(Status::Failure),
            },
            checks: &self.checks,
        };
        serde_json::to_string_pretty(&doc).expect("the report serializes")
    }

    /// Renders in `format`.
    pub fn render(&self, format: OutputFormat) -> String {
        match format {
            OutputFormat::Text => self.render_text(),
            OutputFormat::Json => {
                let mut s = self.render_json();
                s.push('\n');
                s
            }
        }
    }
}

/// Keeps a check on one line: messages from the API can carry newlines.
fn one_line(s: &str) -> String {
    s.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn report(statuses: &[Status]) -> Report {
        Report {
            checks: statuses
                .iter()
                .enumerate()
                .map(|(i, s)| Check {
                    id: ["a", "bb", "ccc"][i % 3],
                    status: *s,
                    summary: format!("summary {i}"),
                    fix: (*s != Status::Ok).then(|| format!("fix {i}")),
                })
                .collect(),
        }
    }

    #[test]
    fn exit_code_and_status_follow_the_worst_check() {
        use Status::*;
        let cases: &[(&[Status], Status, u8)] = &[
            (&[], Ok, 0),
            (&[Ok, Ok], Ok, 0),
            (&[Ok, Warning], Warning, 0),
            (&[Warning, Failure, Ok], Failure, 1),
            (&[Failure], Failure, 1),
        ];
        for (statuses, worst, code) in cases {
            let r = report(statuses);
            assert_eq!(r.status(), *worst, "{statuses:?}");
            assert_eq!(r.exit_code(), *code, "{statuses:?}");
        }
    }

    #[test]
    fn text_is_one_aligned_line_per_check_with_the_fix() {
        let mut r = report(&[Status::Ok, Status::Failure, Status::Warning]);
        r.checks[1].summary = "two\nlines".into();
        let text = r.render_text();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 4, "{text}");
        assert_eq!(lines[0], "ok       a    summary 0");
        assert_eq!(lines[1], "failure  bb   two lines — fix: fix 1");
        assert_eq!(lines[2], "warning  ccc  summary 2 — fix: fix 2");
        assert_eq!(lines[3], "3 checks: 1 ok, 1 warning(s), 1 failure(s)");
    }

    #[test]
    fn json_carries_status_counts_and_checks() {
        let r = report(&[Status::Ok, Status::Warning]);
        let v: serde_json::Value = serde_json::from_str(&r.render_json()).unwrap();
        assert_eq!(v["status"], "warning");
        assert_eq!(v["counts"]["ok"], 1);
        assert_eq!(v["counts"]["warning"], 1);
        assert_eq!(v["counts"]["failure"], 0);
        assert_eq!(v["checks"][0]["id"], "a");
        assert_eq!(v["checks"][0]["status"], "ok");
        assert!(v["checks"][0].get("fix").is_none(), "no fix when ok");
        assert_eq!(v["checks"][1]["fix"], "fix 1");
        assert!(r.render(OutputFormat::Json).ends_with("}\n"));
        assert_eq!(r.render(OutputFormat::Text), r.render_text());
    }
}
