//! Exponential backoff with jitter, for every retry loop (drain reconnects, archive uploads):
//! each delay is drawn from `[d/2, d]`, `d` doubling from `min` up to `max`.

use std::time::Duration;

use crate::envelope::now_ns;

#[derive(Debug, Clone)]
pub struct Backoff {
    min: Duration,
    max: Duration,
    current: Duration,
    rng: u64,
}

impl Backoff {
    /// Settings are checked where they are read (`min` > 0, `min` ≤ `max`); here a zero `min`
    /// or a `max` below it still yields sane delays.
    pub fn new(min: Duration, max: Duration) -> Backoff {
        let min = min.max(Duration::from_millis(1));
        Backoff {
            min,
            max: max.max(min),
            current: min,
            rng: (now_ns() as u64) | 1,
        }
    }

    /// After a success: the next failure waits `min` again.
    pub fn reset(&mut self) {
        self.current = self.min;
    }

    /// The delay before the next try.
    pub fn next_delay(&mut self) -> Duration {
        // xorshift64: jitter needs spread, not cryptographic quality.
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let d = self.current;
        self.current = (self.current * 2).min(self.max);
        let half = d / 2;
        half + Duration::from_nanos(self.rng % (half.as_nanos() as u64 + 1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn doubles_to_the_cap_with_jitter_and_resets() {
        let mut b = Backoff::new(Duration::from_millis(100), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..8).map(|_| b.next_delay()).collect();
        let caps = [100, 200, 400, 800, 1000, 1000, 1000, 1000];
        for (d, cap) in delays.iter().zip(caps) {
            let cap = Duration::from_millis(cap);
            assert!(
                *d >= cap / 2 && *d <= cap,
                "{d:?} not in [{:?}, {cap:?}]",
                cap / 2
            );
        }
        b.reset();
        assert!(b.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn delays_spread_so_that_retries_do_not_march_in_step() {
        let mut b = Backoff::new(Duration::from_secs(8), Duration::from_secs(8));
        let distinct: std::collections::HashSet<Duration> =
            (0..16).map(|_| b.next_delay()).collect();
        assert!(distinct.len() > 8, "{distinct:?}");
    }
}
