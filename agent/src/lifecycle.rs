//! The agent's lifecycle as a pure state machine: which event moves which state where.
//!
//! `created → starting → ready` once every required app is healthy (and, with a `blocking`
//! startup script, the script has exited 0: the agent only sends `AppsHealthy` then);
//! `start_timeout` (with the apps still unhealthy, or the blocking script still running, named)
//! if that takes longer than the start timeout, and `start_error` when start-up cannot go on (the
//! pod IP cannot be listened on, the startup script exited non-zero). A script failing after
//! `ready` (a non-blocking one) leaves the agent `ready`: the apps' health says the rest. Apps that turn healthy
//! after a `start_timeout` still take the agent to `ready`: a slow Tilt should not need a restart.
//! `ready` stays `ready` when an app later fails; app health is reported separately. Any state
//! before `off` moves to `shutting_down` on SIGTERM, then `off`, `shutdown_timeout` or
//! `shutdown_error`.

use lumie_contract::agent_api::LifecycleState;

/// What happened to the agent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    /// The agent began checking its apps.
    Started,
    /// Every required app is healthy now.
    AppsHealthy,
    /// The start timeout passed; these required apps are not healthy yet.
    StartDeadline {
        /// Slugs of the apps still not healthy.
        unhealthy: Vec<String>,
        /// Why the (blocking) startup script holds the start, when it does.
        script: Option<String>,
    },
    /// Start-up cannot go on.
    StartFailed(String),
    /// SIGTERM (or SIGINT) received.
    Terminate,
    /// Shutdown finished in time.
    ShutdownComplete,
    /// Shutdown did not finish within the shutdown timeout.
    ShutdownDeadline,
    /// Shutdown failed.
    ShutdownFailed(String),
}

/// The lifecycle state and, for failure states, why.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Lifecycle {
    /// Current state.
    pub state: LifecycleState,
    /// Why the agent is in a failure state.
    pub reason: Option<String>,
}

impl Lifecycle {
    /// Applies `event`; returns whether the state (or reason) changed. Events that do not apply
    /// to the current state are ignored.
    pub fn apply(&mut self, event: &Event) -> bool {
        match transition(self.state, event) {
            Some(next) if next != *self => {
                *self = next;
                true
            }
            _ => false,
        }
    }
}

/// The state `event` leads to from `state`, or `None` when the event does not apply.
pub fn transition(state: LifecycleState, event: &Event) -> Option<Lifecycle> {
    use Event as E;
    use LifecycleState as S;
    let to = |state| {
        Some(Lifecycle {
            state,
            reason: None,
        })
    };
    let with = |state, reason: String| {
        Some(Lifecycle {
            state,
            reason: Some(reason),
        })
    };
    match (state, event) {
        (S::Created, E::Started) => to(S::Starting),
        (S::Created | S::Starting | S::StartTimeout, E::AppsHealthy) => to(S::Ready),
        (S::Starting, E::StartDeadline { unhealthy, script }) => with(
            S::StartTimeout,
            deadline_reason(unhealthy, script.as_deref()),
        ),
        (S::Created | S::Starting | S::StartTimeout, E::StartFailed(why)) => {
            with(S::StartError, why.clone())
        }
        (S::Created | S::Starting | S::StartTimeout | S::StartError | S::Ready, E::Terminate) => {
            to(S::ShuttingDown)
        }
        (S::ShuttingDown, E::ShutdownComplete) => to(S::Off),
        (S::ShuttingDown, E::ShutdownDeadline) => {
            with(S::ShutdownTimeout, "shutdown did not finish in time".into())
        }
        (S::ShuttingDown, E::ShutdownFailed(why)) => with(S::ShutdownError, why.clone()),
        _ => None,
    }
}

fn deadline_reason(unhealthy: &[String], script: Option<&str>) -> String {
    match (script, unhealthy.is_empty()) {
        (Some(why), true) => why.to_string(),
        (Some(why), false) => format!("{why}; apps not healthy: {}", unhealthy.join(", ")),
        (None, _) => format!("apps not healthy in time: {}", unhealthy.join(", ")),
    }
}

/// Whether the agent is done and should exit.
pub fn is_final(state: LifecycleState) -> bool {
    matches!(
        state,
        LifecycleState::Off | LifecycleState::ShutdownTimeout | LifecycleState::ShutdownError
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use Event as E;
    use LifecycleState as S;

    fn deadline() -> Event {
        E::StartDeadline {
            unhealthy: vec!["tilt".into(), "agents".into()],
            script: None,
        }
    }

    fn script_deadline(unhealthy: &[&str]) -> Event {
        E::StartDeadline {
            unhealthy: unhealthy.iter().map(|s| s.to_string()).collect(),
            script: Some("startup script still running after 300s".into()),
        }
    }

    /// The state and reason expected, or `None` when the event does not apply.
    type Expected = Option<(S, Option<&'static str>)>;

    #[test]
    fn transition_table() {
        let failed = || E::StartFailed("cannot listen on 10.0.0.5:3000".into());
        #[rustfmt::skip]
        let cases: Vec<(S, Event, Expected)> = vec![
            (S::Created, E::Started, Some((S::Starting, None))),
            (S::Created, E::AppsHealthy, Some((S::Ready, None))),
            (S::Starting, E::AppsHealthy, Some((S::Ready, None))),
            (S::Starting, deadline(), Some((S::StartTimeout, Some("apps not healthy in time: tilt, agents")))),
            (S::StartTimeout, E::AppsHealthy, Some((S::Ready, None))),
            (S::Starting, failed(), Some((S::StartError, Some("cannot listen on 10.0.0.5:3000")))),
            (S::Created, failed(), Some((S::StartError, Some("cannot listen on 10.0.0.5:3000")))),
            (S::StartError, E::AppsHealthy, None),
            (S::Ready, deadline(), None),
            (S::Ready, failed(), None),
            (S::Ready, E::Started, None),
            (S::StartTimeout, deadline(), None),
            (S::Created, E::Terminate, Some((S::ShuttingDown, None))),
            (S::Starting, E::Terminate, Some((S::ShuttingDown, None))),
            (S::StartError, E::Terminate, Some((S::ShuttingDown, None))),
            (S::Ready, E::Terminate, Some((S::ShuttingDown, None))),
            (S::ShuttingDown, E::Terminate, None),
            (S::ShuttingDown, E::AppsHealthy, None),
            (S::ShuttingDown, E::ShutdownComplete, Some((S::Off, None))),
            (S::ShuttingDown, E::ShutdownDeadline, Some((S::ShutdownTimeout, Some("shutdown did not finish in time")))),
            (S::ShuttingDown, E::ShutdownFailed("x".into()), Some((S::ShutdownError, Some("x")))),
            (S::Ready, E::ShutdownComplete, None),
            (S::Off, E::Terminate, None),
            (S::Off, E::Started, None),
            // The startup script (see `scripts::gate_open` for when `AppsHealthy` is sent).
            (S::Starting, E::StartFailed("startup script exited 127: code-server: not found".into()), Some((S::StartError, Some("startup script exited 127: code-server: not found")))),
            (S::StartTimeout, E::StartFailed("startup script exited 1: x".into()), Some((S::StartError, Some("startup script exited 1: x")))),
            (S::Ready, E::StartFailed("startup script exited 1: late".into()), None),
            (S::Starting, script_deadline(&[]), Some((S::StartTimeout, Some("startup script still running after 300s")))),
            (S::Starting, script_deadline(&["tilt"]), Some((S::StartTimeout, Some("startup script still running after 300s; apps not healthy: tilt")))),
            (S::Ready, script_deadline(&[]), None),
        ];
        for (from, event, want) in cases {
            let got = transition(from, &event).map(|l| (l.state, l.reason));
            let want = want.map(|(s, r)| (s, r.map(str::to_string)));
            assert_eq!(got, want, "{from:?} + {event:?}");
        }
    }

    #[test]
    fn apply_reports_changes_only() {
        let mut l = Lifecycle::default();
        assert!(l.apply(&E::Started));
        assert!(!l.apply(&E::Started));
        assert!(l.apply(&deadline()));
        assert_eq!(l.state, S::StartTimeout);
        assert!(l.reason.is_some());
        assert!(l.apply(&E::AppsHealthy));
        assert_eq!(
            l,
            Lifecycle {
                state: S::Ready,
                reason: None
            }
        );
        assert!(!l.apply(&E::AppsHealthy));
        assert!(l.apply(&E::Terminate));
        assert!(!is_final(l.state));
        assert!(l.apply(&E::ShutdownComplete));
        assert!(is_final(l.state));
    }

    #[test]
    fn final_states() {
        let finals: Vec<_> = S::ALL.iter().copied().filter(|s| is_final(*s)).collect();
        assert_eq!(finals, vec![S::ShutdownTimeout, S::ShutdownError, S::Off]);
    }
}
