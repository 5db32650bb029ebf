//! Retry timing, pure: exponential backoff with jitter while the control plane is unreachable,
//! and jitter on the regular heartbeat schedule, so a restarted server is not hit by every agent
//! at the same instant. Randomness comes in as a number in `[0, 1)` so the maths is table-tested.

use std::time::Duration;

/// First retry delay.
pub const BASE: Duration = Duration::from_millis(100);
/// Longest retry delay.
pub const CAP: Duration = Duration::from_secs(10);

/// Exponential backoff, 100 ms doubling to a 10 s cap, with "equal jitter": each delay is drawn
/// from the upper half of the current step, so agents spread out but none retries at once.
#[derive(Clone, Debug)]
pub struct Backoff {
    base: Duration,
    cap: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Self::new(BASE, CAP)
    }
}

impl Backoff {
    /// Backoff from `base` doubling up to `cap`.
    pub fn new(base: Duration, cap: Duration) -> Self {
        Self {
            base,
            cap,
            attempt: 0,
        }
    }

    /// Failed attempts since the last success.
    pub fn attempt(&self) -> u32 {
        self.attempt
    }

    /// The step before jitter for the current attempt.
    pub fn step(&self) -> Duration {
        let factor = 1u32 << self.attempt.min(20);
        self.base.saturating_mul(factor).min(self.cap)
    }

    /// The delay before the next retry, given `r` uniform in `[0, 1)`; counts the attempt.
    pub fn next_delay(&mut self, r: f64) -> Duration {
        let step = self.step();
        self.attempt = self.attempt.saturating_add(1);
        step / 2 + step.mul_f64(r.clamp(0.0, 1.0) / 2.0)
    }

    /// Back to the first step after a success.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

/// A regular interval spread by ±10 % given `r` uniform in `[0, 1)`.
pub fn jittered(interval: Duration, r: f64) -> Duration {
    interval.mul_f64(0.9 + 0.2 * r.clamp(0.0, 1.0))
}

/// A uniform number in `[0, 1)` for the functions above.
pub fn random() -> f64 {
    rand::random::<f64>()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn backoff_table() {
        // (r for each attempt, expected delays)
        let cases: Vec<(Vec<f64>, Vec<Duration>)> = vec![
            (vec![0.0; 4], vec![ms(50), ms(100), ms(200), ms(400)]),
            (vec![1.0; 3], vec![ms(100), ms(200), ms(400)]),
            (vec![0.5; 2], vec![ms(75), ms(150)]),
        ];
        for (rs, want) in cases {
            let mut b = Backoff::default();
            let got: Vec<_> = rs.iter().map(|r| b.next_delay(*r)).collect();
            assert_eq!(got, want, "{rs:?}");
        }
    }

    #[test]
    fn backoff_caps_at_ten_seconds_and_resets() {
        let mut b = Backoff::default();
        let delays: Vec<_> = (0..40).map(|_| b.next_delay(1.0)).collect();
        assert_eq!(*delays.last().unwrap(), CAP);
        assert!(delays.windows(2).all(|w| w[0] <= w[1]));
        assert_eq!(delays.iter().filter(|d| **d == CAP).count(), 33);
        let mut low = b.clone();
        assert_eq!(low.next_delay(0.0), CAP / 2);
        b.reset();
        assert_eq!(b.attempt(), 0);
        assert_eq!(b.next_delay(1.0), BASE);
    }

    #[test]
    fn schedule_jitter_stays_within_ten_percent() {
        let i = Duration::from_secs(15);
        assert_eq!(jittered(i, 0.0), Duration::from_millis(13_500));
        assert_eq!(jittered(i, 0.5), i);
        assert_eq!(jittered(i, 1.0), Duration::from_millis(16_500));
        for _ in 0..1000 {
            let d = jittered(i, random());
            assert!(d >= ms(13_500) && d <= ms(16_500), "{d:?}");
        }
    }
}
