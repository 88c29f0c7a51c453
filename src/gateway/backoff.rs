//! Retry delays: the contract's fixed startup schedule for `GetSandboxConfig`, and the
//! capped, jittered exponential backoff of reconnecting streams. Both are plain values
//! so tests inject millisecond delays.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::time::Duration;

/// A fixed schedule: one try, then one more try after each delay.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RetrySchedule {
    /// The waits between tries; `delays.len() + 1` tries in all.
    pub delays: Vec<Duration>,
}

impl RetrySchedule {
    /// The contract's `GetSandboxConfig` schedule: 5 tries, waiting 1, 2, 4 and 4 s.
    pub fn startup() -> Self {
        RetrySchedule { delays: [1, 2, 4, 4].map(Duration::from_secs).to_vec() }
    }

    /// How many tries the schedule allows.
    pub fn tries(&self) -> usize {
        self.delays.len() + 1
    }
}

impl Default for RetrySchedule {
    fn default() -> Self {
        RetrySchedule::startup()
    }
}

/// Exponential backoff between `initial` and `max`, each delay jittered down by up to a
/// half so that many sandboxes do not reconnect in lock step.
#[derive(Clone, Debug)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    next: Duration,
}

impl Backoff {
    /// Starts at `initial`, doubles up to `max`.
    pub fn new(initial: Duration, max: Duration) -> Self {
        let max = max.max(initial);
        Backoff { initial, max, next: initial }
    }

    /// The default for gateway streams: 1 s doubling to 30 s.
    pub fn reconnect() -> Self {
        Backoff::new(Duration::from_secs(1), Duration::from_secs(30))
    }

    /// The next delay (jittered), and doubles the one after.
    pub fn next_delay(&mut self) -> Duration {
        let base = self.next;
        self.next = (self.next * 2).min(self.max);
        jitter(base)
    }

    /// Back to the initial delay, after a success.
    pub fn reset(&mut self) {
        self.next = self.initial;
    }
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::reconnect()
    }
}

/// A delay in `[d/2, d]`.
fn jitter(d: Duration) -> Duration {
    // RandomState is seeded randomly per instance: enough randomness for jitter without
    // pulling in a random number crate.
    let random = RandomState::new().hash_one(0u8);
    let half = d / 2;
    let nanos = half.as_nanos().max(1);
    half + Duration::from_nanos((u128::from(random) % nanos) as u64)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_startup_schedule_is_the_contracts() {
        let s = RetrySchedule::startup();
        assert_eq!(s.tries(), 5);
        assert_eq!(s.delays, [1, 2, 4, 4].map(Duration::from_secs));
    }

    #[test]
    fn backoff_doubles_up_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_millis(400));
        let bounds = [(50, 100), (100, 200), (200, 400), (200, 400), (200, 400)];
        for (low, high) in bounds {
            let d = b.next_delay();
            assert!(d >= Duration::from_millis(low) && d <= Duration::from_millis(high), "{d:?} not in {low}..{high}");
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }
}
