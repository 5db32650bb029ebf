//! The election's pure decisions: what to do with the Lease as read (acquire, renew, stand by),
//! and until when a holder may act on its last renewal. No I/O; the loop in [`super`] reads and
//! writes the Lease and applies these.

use std::time::Duration;

/// The Lease as read, reduced to what the decision needs.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Observed {
    /// `spec.holderIdentity` (`None` or empty: released).
    pub holder: Option<String>,
    /// `spec.renewTime`, milliseconds since the epoch.
    pub renewed_ms: Option<i64>,
    /// `spec.leaseDurationSeconds`, as milliseconds.
    pub duration_ms: Option<i64>,
}

/// What to do next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Decision {
    /// There is no Lease: create it holding it.
    Create,
    /// It is free or expired: take it (a hand-over when it had a holder).
    Acquire {
        /// The previous holder, when there was one.
        from: Option<String>,
    },
    /// It is ours: renew it.
    Renew,
    /// Another holds it and it has not expired: do not act.
    StandBy {
        /// The holder.
        holder: String,
        /// Milliseconds until it expires, unless renewed.
        expires_in_ms: i64,
    },
}

/// Decides from the Lease as read, `me` and the time. A lease without a renew time or duration
/// counts as expired (someone wrote it by hand); a lease's own duration wins over ours, so a
/// replica started with other flags still respects the holder's promise.
pub fn decide(lease: Option<&Observed>, me: &str, now_ms: i64, our_duration: Duration) -> Decision {
    let Some(l) = lease else {
        return Decision::Create;
    };
    let holder = l.holder.as_deref().filter(|h| !h.is_empty());
    match holder {
        None => Decision::Acquire { from: None },
        Some(h) if h == me => Decision::Renew,
        Some(h) => {
            let duration = l
                .duration_ms
                .unwrap_or(our_duration.as_millis() as i64)
                .max(0);
            match l.renewed_ms {
                Some(r) if now_ms < r + duration => Decision::StandBy {
                    holder: h.to_string(),
                    expires_in_ms: r + duration - now_ms,
                },
                _ => Decision::Acquire {
                    from: Some(h.to_string()),
                },
            }
        }
    }
}

/// How long after sending a renewal that succeeded the holder may keep acting: the lease
/// duration less one renew interval. Others see the lease expire `duration` after the renew
/// time written (at most when the request was sent, on a clock in step with ours), so a holder
/// that cannot renew stops a full renew interval before anyone may take over.
pub fn acting_window(duration: Duration, renew: Duration) -> Duration {
    duration.saturating_sub(renew)
}

/// Checks the timing flags: the renew interval must leave room for at least one retry before
/// the holder has to stop.
pub fn check_timing(duration: Duration, renew: Duration) -> Result<(), String> {
    if renew.is_zero() {
        return Err("the renew interval must be at least 1 second".into());
    }
    if duration < renew * 2 {
        return Err(format!(
            "the lease duration ({}s) must be at least twice the renew interval ({}s)",
            duration.as_secs(),
            renew.as_secs()
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: Duration = Duration::from_secs(15);

    fn lease(holder: Option<&str>, renewed_ms: Option<i64>, duration_s: Option<i64>) -> Observed {
        Observed {
            holder: holder.map(str::to_string),
            renewed_ms,
            duration_ms: duration_s.map(|s| s * 1000),
        }
    }

    #[test]
    fn decision_table() {
        let now = 100_000;
        let cases: Vec<(&str, Option<Observed>, Decision)> = vec![
            ("no lease", None, Decision::Create),
            (
                "released (no holder)",
                Some(lease(None, Some(now), Some(15))),
                Decision::Acquire { from: None },
            ),
            (
                "released (empty holder)",
                Some(lease(Some(""), Some(now), Some(15))),
                Decision::Acquire { from: None },
            ),
            (
                "ours, fresh",
                Some(lease(Some("me"), Some(now), Some(15))),
                Decision::Renew,
            ),
            (
                "ours, expired: still ours to renew",
                Some(lease(Some("me"), Some(now - 60_000), Some(15))),
                Decision::Renew,
            ),
            (
                "other, fresh",
                Some(lease(Some("b"), Some(now - 5_000), Some(15))),
                Decision::StandBy {
                    holder: "b".into(),
                    expires_in_ms: 10_000,
                },
            ),
            (
                "other, one ms before expiry",
                Some(lease(Some("b"), Some(now - 14_999), Some(15))),
                Decision::StandBy {
                    holder: "b".into(),
                    expires_in_ms: 1,
                },
            ),
            (
                "other, exactly expired",
                Some(lease(Some("b"), Some(now - 15_000), Some(15))),
                Decision::Acquire {
                    from: Some("b".into()),
                },
            ),
            (
                "other, its own longer duration is respected",
                Some(lease(Some("b"), Some(now - 20_000), Some(30))),
                Decision::StandBy {
                    holder: "b".into(),
                    expires_in_ms: 10_000,
                },
            ),
            (
                "other, no duration: ours applies",
                Some(lease(Some("b"), Some(now - 16_000), None)),
                Decision::Acquire {
                    from: Some("b".into()),
                },
            ),
            (
                "other, never renewed",
                Some(lease(Some("b"), None, Some(15))),
                Decision::Acquire {
                    from: Some("b".into()),
                },
            ),
            (
                "other, renewed in the future (clock skew): stand by",
                Some(lease(Some("b"), Some(now + 2_000), Some(15))),
                Decision::StandBy {
                    holder: "b".into(),
                    expires_in_ms: 17_000,
                },
            ),
        ];
        for (what, l, want) in cases {
            assert_eq!(decide(l.as_ref(), "me", now, D), want, "{what}");
        }
    }

    #[test]
    fn the_holder_stops_a_renew_interval_before_others_may_take_over() {
        for (duration, renew, window) in [(15, 5, 10), (3, 1, 2), (10, 5, 5)] {
            let (d, r) = (Duration::from_secs(duration), Duration::from_secs(renew));
            assert_eq!(acting_window(d, r), Duration::from_secs(window));
            assert!(acting_window(d, r) < d);
        }
    }

    #[test]
    fn timing_flags_are_checked() {
        let s = Duration::from_secs;
        assert!(check_timing(s(15), s(5)).is_ok());
        assert!(check_timing(s(2), s(1)).is_ok());
        assert!(check_timing(s(15), s(0)).is_err());
        assert!(check_timing(s(9), s(5)).unwrap_err().contains("twice"));
    }
}
