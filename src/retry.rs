//! Delays between retries of steps that can fail transiently.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};

/// Capped exponential backoff with jitter (randomly seeded per process, so
/// that instances retrying against one remote spread apart), never giving up
/// by itself: the state timeouts and attempt counts of the callers bound the
/// retries.
pub struct Backoff {
    delays: backon::ExponentialBackoff,
    max: Duration,
}

impl Backoff {
    /// Delays start near `min` and double up to `max`.
    pub fn new(min: Duration, max: Duration) -> Self {
        let delays = ExponentialBuilder::default()
            .with_min_delay(min)
            .with_max_delay(max)
            .with_jitter()
            .without_max_times()
            .build();
        Backoff { delays, max }
    }

    /// The next delay.
    pub fn next_delay(&mut self) -> Duration {
        self.delays.next().unwrap_or(self.max).min(self.max)
    }

    /// Pause after losing push race number `attempt` to another instance:
    /// the first is retried at once (the fetch in between already spaces
    /// the instances), later ones after a short jitter that grows, so that
    /// instances that keep colliding spread apart.
    pub fn race_delay(attempt: u32) -> Duration {
        let spread = 40 * u64::from(attempt.saturating_sub(1).min(10));
        Duration::from_millis(fastrand::u64(..=spread))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn delays_are_capped() {
        let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(2));
        for _ in 0..50 {
            assert!(backoff.next_delay() <= Duration::from_secs(2));
        }
        assert_eq!(Backoff::race_delay(1), Duration::ZERO);
        assert!(Backoff::race_delay(3) <= Duration::from_millis(80));
    }
}
